//! A raw IPv4 socket for protocol 112 on one interface: multicast group joined, TTL 255 out,
//! and the received IP header handed back so the caller can enforce TTL 255 (RFC 5798 §7.1).

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};

use crate::wire::{MULTICAST_V4, PROTOCOL, TTL};

/// A received VRRP packet with the IP header fields the checks need.
#[derive(Debug, Clone)]
pub struct Received {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    /// The VRRP message (IP payload).
    pub payload: Vec<u8>,
}

/// Why a received datagram could not even be looked at.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("malformed IP header")]
    BadIpHeader,
}

/// One raw socket per (interface, family).
pub struct VrrpSocket {
    sock: Socket,
}

impl VrrpSocket {
    /// Opens the IPv4 socket on `ifname`; adverts leave from `primary`.
    pub fn open_v4(ifname: &str, primary: Ipv4Addr) -> io::Result<VrrpSocket> {
        let index = super::ifindex(ifname)?;
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(PROTOCOL as i32)))?;
        sock.bind_device(Some(ifname.as_bytes()))?;
        sock.set_multicast_if_v4(&primary)?;
        sock.set_multicast_ttl_v4(TTL as u32)?;
        sock.set_ttl_v4(TTL as u32)?;
        sock.set_multicast_loop_v4(false)?;
        sock.join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(index))?;
        sock.set_nonblocking(true)?;
        Ok(VrrpSocket { sock })
    }

    /// Sends one VRRP message to `dst` (the group or a unicast peer).
    pub fn send(&self, payload: &[u8], dst: IpAddr) -> io::Result<()> {
        let addr = SockAddr::from(SocketAddr::new(dst, 0));
        self.sock.send_to(payload, &addr)?;
        Ok(())
    }

    /// Receives one datagram (non-blocking: `WouldBlock` when none is queued).
    pub fn recv(&self) -> Result<Received, RecvError> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
        let (n, _) = self.sock.recv_from(&mut buf)?;
        // SAFETY: recv_from initialised the first n bytes.
        let data: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
        parse_ipv4(&data).ok_or(RecvError::BadIpHeader)
    }
}

impl AsRawFd for VrrpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Splits a raw IPv4 datagram into header fields and payload; `None` if the header is bad.
pub fn parse_ipv4(data: &[u8]) -> Option<Received> {
    if data.len() < 20 || data[0] >> 4 != 4 {
        return None;
    }
    let ihl = (data[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([data[2], data[3]]) as usize;
    if ihl < 20 || data.len() < ihl {
        return None;
    }
    // Linux hands raw sockets the datagram as received; trust the smaller of both lengths.
    let end = if total >= ihl && total <= data.len() { total } else { data.len() };
    let src = Ipv4Addr::new(data[12], data[13], data[14], data[15]);
    let dst = Ipv4Addr::new(data[16], data[17], data[18], data[19]);
    let _ = SocketAddrV4::new(src, 0);
    Some(Received { src: src.into(), dst: dst.into(), ttl: data[8], payload: data[ihl..end].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_is_split_and_checked() {
        let mut d = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 255, 112, 0, 0, 192, 0, 2, 1, 224, 0, 0, 18];
        d.extend_from_slice(&[1; 12]);
        let r = parse_ipv4(&d).unwrap();
        assert_eq!((r.ttl, r.src, r.dst, r.payload.len()), (255, "192.0.2.1".parse().unwrap(), "224.0.0.18".parse().unwrap(), 12));
        assert!(parse_ipv4(&d[..10]).is_none());
        let mut bad = d.clone();
        bad[0] = 0x4f; // IHL 60 > length
        assert!(parse_ipv4(&bad[..32]).is_none());
        bad[0] = 0x65;
        assert!(parse_ipv4(&bad).is_none());
    }
}
