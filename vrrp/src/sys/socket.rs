//! A raw IPv4 socket for protocol 112 on one interface: multicast group joined, TTL 255 out,
//! and the received IP header handed back so the caller can enforce TTL 255 (RFC 5798 §7.1).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

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
    v6: bool,
    /// IPv6: the link-local source every advert must carry (it is also in the checksum).
    src6: Option<std::net::Ipv6Addr>,
    /// IPv4 on a vmac: the source pinned per packet, because the vmac holds only VIPs and the
    /// kernel would pick one of them for a unicast advert.
    src4: Option<Ipv4Addr>,
    ifindex: u32,
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let r = unsafe {
        libc::setsockopt(fd, level, name, &value as *const _ as *const libc::c_void, std::mem::size_of::<libc::c_int>() as u32)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where one outgoing message's address, buffer pointer and control message live while
/// `sendmmsg` runs (its `msghdr` points into it, so it must not move in between).
struct MsgBuf {
    addr: libc::sockaddr_storage,
    iov: libc::iovec,
    /// Room for one IP_PKTINFO / IPV6_PKTINFO control message, aligned for `cmsghdr`.
    control: [u64; 8],
}

impl MsgBuf {
    fn new() -> MsgBuf {
        MsgBuf { addr: unsafe { std::mem::zeroed() }, iov: libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }, control: [0; 8] }
    }

    /// Puts one control message carrying `data` into `msg`.
    fn control<T>(&mut self, msg: &mut libc::msghdr, level: libc::c_int, kind: libc::c_int, data: &T) {
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<T>() as u32) } as usize;
        assert!(space <= std::mem::size_of_val(&self.control), "control message too large");
        msg.msg_control = self.control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        unsafe {
            let c = libc::CMSG_FIRSTHDR(msg);
            (*c).cmsg_level = level;
            (*c).cmsg_type = kind;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<T>() as u32) as _;
            std::ptr::copy_nonoverlapping(data as *const T as *const u8, libc::CMSG_DATA(c), std::mem::size_of::<T>());
        }
    }
}

impl VrrpSocket {
    /// Opens the IPv4 socket on `ifname`; adverts leave from `primary`.
    pub fn open_v4(ifname: &str, primary: Ipv4Addr) -> io::Result<VrrpSocket> {
        let index = super::ifindex(ifname)?;
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(PROTOCOL as i32)))?;
        sock.bind_device(Some(ifname.as_bytes()))?;
        // ip_mreqn names the interface and the source: on a vmac the source (the parent's
        // primary) is not an address of the interface, and the address-only form would pick
        // the parent, which a socket bound to the vmac may not use.
        let mreqn = libc::ip_mreqn {
            imr_multiaddr: libc::in_addr { s_addr: 0 },
            imr_address: libc::in_addr { s_addr: u32::from(primary).to_be() },
            imr_ifindex: index as libc::c_int,
        };
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                &mreqn as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::ip_mreqn>() as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        sock.set_multicast_ttl_v4(TTL as u32)?;
        sock.set_ttl_v4(TTL as u32)?;
        sock.set_multicast_loop_v4(false)?;
        sock.join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(index))?;
        sock.set_nonblocking(true)?;
        Ok(VrrpSocket { sock, v6: false, src6: None, src4: None, ifindex: index })
    }

    /// Opens the IPv4 socket with every advert's source pinned to `primary` (IP_PKTINFO),
    /// unicast ones too: on a vmac (see [`super::vmac`]) whose source, the parent's address, is
    /// not its own, and for a configured `unicast_src_ip` the routing table would not choose.
    pub fn open_v4_pinned(ifname: &str, primary: Ipv4Addr) -> io::Result<VrrpSocket> {
        let mut s = VrrpSocket::open_v4(ifname, primary)?;
        s.src4 = Some(primary);
        Ok(s)
    }

    /// Opens the IPv6 socket on `ifname`; adverts leave from the link-local `primary`.
    pub fn open_v6(ifname: &str, primary: std::net::Ipv6Addr) -> io::Result<VrrpSocket> {
        let index = super::ifindex(ifname)?;
        let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(PROTOCOL as i32)))?;
        sock.bind_device(Some(ifname.as_bytes()))?;
        sock.set_multicast_if_v6(index)?;
        sock.set_multicast_hops_v6(TTL as u32)?;
        sock.set_unicast_hops_v6(TTL as u32)?;
        sock.set_multicast_loop_v6(false)?;
        sock.join_multicast_v6(&crate::wire::MULTICAST_V6, index)?;
        let fd = sock.as_raw_fd();
        // The hop limit and destination of each received packet come as control messages.
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        sock.set_nonblocking(true)?;
        Ok(VrrpSocket { sock, v6: true, src6: Some(primary), src4: None, ifindex: index })
    }

    /// Sends several VRRP messages with one `sendmmsg(2)`: a master of hundreds of instances
    /// sends dozens of adverts per wake-up, and one system call for all of them costs less than
    /// one each. Returns the messages that failed (index into `msgs`, error); the others went.
    pub fn send_many(&self, msgs: &[(&[u8], IpAddr)]) -> Vec<(usize, io::Error)> {
        let mut failed = Vec::new();
        let mut bufs: Vec<MsgBuf> = msgs.iter().map(|_| MsgBuf::new()).collect();
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(msgs.len());
        for ((payload, dst), buf) in msgs.iter().zip(bufs.iter_mut()) {
            hdrs.push(libc::mmsghdr { msg_hdr: self.fill(payload, *dst, buf), msg_len: 0 });
        }
        let mut at = 0;
        while at < hdrs.len() {
            let rest = &mut hdrs[at..];
            let n = unsafe { libc::sendmmsg(self.sock.as_raw_fd(), rest.as_mut_ptr(), rest.len() as libc::c_uint, 0) };
            if n < 0 {
                // The first message of the rest failed; skip it and send the others.
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                failed.push((at, e));
                at += 1;
            } else {
                at += n as usize;
            }
        }
        failed
    }

    /// The `msghdr` for one message, pointing into `buf`. IPv6 pins the source with
    /// IPV6_PKTINFO (the checksum was computed over it); IPv4 on a vmac pins it with
    /// IP_PKTINFO (`ipi_spec_dst` is the source, the interface the socket's own).
    fn fill(&self, payload: &[u8], dst: IpAddr, buf: &mut MsgBuf) -> libc::msghdr {
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        buf.iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
        msg.msg_iov = &mut buf.iov;
        msg.msg_iovlen = 1;
        msg.msg_name = &mut buf.addr as *mut _ as *mut libc::c_void;
        match dst {
            IpAddr::V6(d) => {
                let sa = unsafe { &mut *(&mut buf.addr as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6) };
                sa.sin6_family = libc::AF_INET6 as u16;
                sa.sin6_addr.s6_addr = d.octets();
                sa.sin6_scope_id = self.ifindex;
                msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
                if let Some(src) = self.src6 {
                    let info = libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: src.octets() }, ipi6_ifindex: self.ifindex };
                    buf.control(&mut msg, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info);
                }
            }
            IpAddr::V4(d) => {
                let sa = unsafe { &mut *(&mut buf.addr as *mut libc::sockaddr_storage as *mut libc::sockaddr_in) };
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_addr.s_addr = u32::from(d).to_be();
                msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                if let Some(src) = self.src4 {
                    let info = libc::in_pktinfo {
                        ipi_ifindex: self.ifindex as libc::c_int,
                        ipi_spec_dst: libc::in_addr { s_addr: u32::from(src).to_be() },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    buf.control(&mut msg, libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
                }
            }
        }
        msg
    }

    /// IPv6: the payload comes without the IP header; source from the address, hop limit and
    /// destination from control messages.
    fn recv_v6(&self) -> Result<Received, RecvError> {
        let mut buf = [0u8; 2048];
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut control = [0u8; 128];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = &mut sa as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len() as _;
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return Err(RecvError::Io(io::Error::last_os_error()));
        }
        let mut ttl = 0u8;
        let mut dst = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_HOPLIMIT {
                    let mut v: libc::c_int = 0;
                    std::ptr::copy_nonoverlapping(libc::CMSG_DATA(c), &mut v as *mut _ as *mut u8, 4);
                    ttl = v.clamp(0, 255) as u8;
                } else if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_PKTINFO {
                    let mut info: libc::in6_pktinfo = std::mem::zeroed();
                    std::ptr::copy_nonoverlapping(libc::CMSG_DATA(c), &mut info as *mut _ as *mut u8, std::mem::size_of::<libc::in6_pktinfo>());
                    dst = IpAddr::V6(std::net::Ipv6Addr::from(info.ipi6_addr.s6_addr));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let src = IpAddr::V6(std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr));
        Ok(Received { src, dst, ttl, payload: buf[..n as usize].to_vec() })
    }

    /// Receives what is queued, up to the batch's size, with one `recvmmsg(2)` for IPv4 (a
    /// backup of hundreds of instances hears dozens of adverts per millisecond). IPv6 takes
    /// one `recvmsg` per datagram (each carries its own control messages). `WouldBlock` when
    /// nothing is queued; a datagram with a bad IP header is returned as its error.
    pub fn recv_many(&self, batch: &mut RecvBatch) -> io::Result<Vec<Result<Received, RecvError>>> {
        let mut out = Vec::new();
        if self.v6 {
            while out.len() < batch.slots {
                match self.recv_v6() {
                    Ok(r) => out.push(Ok(r)),
                    Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock && !out.is_empty() => break,
                    Err(RecvError::Io(e)) => return Err(e),
                    Err(other) => out.push(Err(other)),
                }
            }
            return Ok(out);
        }
        let n = unsafe {
            libc::recvmmsg(self.sock.as_raw_fd(), batch.hdrs.as_mut_ptr(), batch.hdrs.len() as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for (h, slot) in batch.hdrs.iter().zip(batch.buf.chunks(RecvBatch::SLOT)).take(n as usize) {
            let len = (h.msg_len as usize).min(slot.len());
            out.push(parse_ipv4(&slot[..len]).ok_or(RecvError::BadIpHeader));
        }
        Ok(out)
    }
}

/// Receive buffers for [`VrrpSocket::recv_many`], kept by the reader between calls (a
/// 4 KiB header array allocated per call made glibc consolidate its heap every time).
pub struct RecvBatch {
    buf: Vec<u8>,
    /// One per slot, pointing into `iovs`; built once.
    hdrs: Vec<libc::mmsghdr>,
    /// One per slot, pointing into `buf`; built once, never read again but kept alive for `hdrs`.
    _iovs: Vec<libc::iovec>,
    slots: usize,
}

// SAFETY: the raw pointers in `hdrs` and `iovs` point into the heap buffers of `iovs` and
// `buf`, which this struct owns and never reallocates; moving the struct (or sending it to
// another thread) does not move those buffers.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Room per datagram: an IPv4 header with options and a VRRP message of 255 addresses.
    const SLOT: usize = 2048;

    /// Buffers for up to `slots` datagrams per call.
    pub fn new(slots: usize) -> RecvBatch {
        let slots = slots.max(1);
        let mut buf = vec![0u8; slots * Self::SLOT];
        let mut iovs: Vec<libc::iovec> =
            buf.chunks_mut(Self::SLOT).map(|c| libc::iovec { iov_base: c.as_mut_ptr() as *mut libc::c_void, iov_len: c.len() }).collect();
        let hdrs = iovs
            .iter_mut()
            .map(|iov| {
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        RecvBatch { buf, hdrs, _iovs: iovs, slots }
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
