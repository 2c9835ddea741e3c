//! Virtual addresses on an interface, through rtnetlink (`ip addr add/del` without the fork).

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::Handle;

/// Adds and removes VIPs; idempotent (an address already present or already gone is fine).
#[derive(Clone)]
pub struct Vips {
    handle: Handle,
    adder: std::sync::Arc<VipAdder>,
}

/// A VIP operation that the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("{op} {addr}/{prefix} on ifindex {ifindex}: {source}")]
pub struct VipError {
    pub op: &'static str,
    pub addr: IpAddr,
    pub prefix: u8,
    pub ifindex: u32,
    #[source]
    pub source: rtnetlink::Error,
}

impl Vips {
    /// Opens a route-netlink connection and spawns its driver on the current tokio runtime.
    pub fn new() -> std::io::Result<Vips> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Vips { handle, adder: std::sync::Arc::new(VipAdder::new()?) })
    }

    /// Adds `addr/prefix` now, for a takeover: see [`VipAdder`]. Await [`Vips::add_acks`] with
    /// the returned requests once the gratuitous ARP/NA are out.
    pub fn add_now(&self, ifindex: u32, addr: IpAddr, prefix: u8, extra: &AddrExtras) -> Result<PendingAdd, AddError> {
        self.adder.send(ifindex, addr, prefix, extra)
    }

    /// The kernel's answers to [`Vips::add_now`] requests, in their order (an address already
    /// present is success).
    pub async fn add_acks(&self, pending: Vec<PendingAdd>) -> Vec<Result<(), AddError>> {
        self.adder.acks(pending).await
    }

    fn errno(e: &rtnetlink::Error) -> Option<i32> {
        match e {
            rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
            _ => None,
        }
    }

    /// Adds `addr/prefix` (IPv6 with `nodad`, so it can source neighbour advertisements at once).
    pub async fn add(&self, ifindex: u32, addr: IpAddr, prefix: u8) -> Result<(), VipError> {
        let mut req = self.handle.address().add(ifindex, addr, prefix);
        if addr.is_ipv6() {
            use netlink_packet_route::address::{AddressAttribute, AddressFlags};
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if Self::errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(VipError { op: "add", addr, prefix, ifindex, source }),
        }
    }

    /// Removes `addr` from the interface if present.
    pub async fn del(&self, ifindex: u32, addr: IpAddr, prefix: u8) -> Result<(), VipError> {
        let mut stream = self.handle.address().get().set_link_index_filter(ifindex).set_address_filter(addr).execute();
        while let Some(msg) = stream.try_next().await.map_err(|source| VipError { op: "list", addr, prefix, ifindex, source })? {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if Self::errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(source) => return Err(VipError { op: "delete", addr, prefix, ifindex, source }),
            }
        }
        Ok(())
    }

    /// Whether `addr` is an address of one of this host's (this namespace's) interfaces.
    pub async fn is_local(&self, addr: IpAddr) -> bool {
        use netlink_packet_route::address::AddressAttribute;
        let mut stream = self.handle.address().get().set_address_filter(addr).execute();
        while let Ok(Some(msg)) = stream.try_next().await {
            if msg.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == addr)) {
                return true;
            }
        }
        false
    }

    /// The interface's first address of the family that is not one of `exclude`; for IPv6 its
    /// link-local address, which is what VRRPv3 adverts must come from.
    pub async fn primary(&self, ifindex: u32, v6: bool, exclude: &[IpAddr]) -> Option<IpAddr> {
        use netlink_packet_route::address::AddressAttribute;
        let mut stream = self.handle.address().get().set_link_index_filter(ifindex).execute();
        while let Ok(Some(msg)) = stream.try_next().await {
            for a in &msg.attributes {
                if let AddressAttribute::Address(ip) = a {
                    let link_local = matches!(ip, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
                    if ip.is_ipv6() == v6 && !exclude.contains(ip) && (!v6 || link_local) {
                        return Some(*ip);
                    }
                }
            }
        }
        None
    }
}

/// What keepalived's `virtual_ipaddress` lines may add to an address besides its prefix:
/// `label eth0:web` (IPv4; `ip addr` and old `ifconfig` tooling show aliases by it) and
/// `scope host|link|site|global|N` (a `scope host` VIP is answered locally and never ARPed for
/// by routes elsewhere, which DR setups use). Default: no label, scope global.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrExtras {
    pub label: Option<String>,
    pub scope: Option<u8>,
}

/// A VIP add the kernel refused (or that could not be sent or answered).
#[derive(Debug, thiserror::Error)]
#[error("add {addr}/{prefix} on ifindex {ifindex}: {source}")]
pub struct AddError {
    pub addr: IpAddr,
    pub prefix: u8,
    pub ifindex: u32,
    #[source]
    pub source: std::io::Error,
}

/// An address request sent by [`VipAdder::send`] whose acknowledgement is still to be read.
#[derive(Debug)]
pub struct PendingAdd {
    pub addr: IpAddr,
    pub prefix: u8,
    pub ifindex: u32,
    seq: u32,
}

impl PendingAdd {
    fn error(&self, source: std::io::Error) -> AddError {
        AddError { addr: self.addr, prefix: self.prefix, ifindex: self.ifindex, source }
    }
}

/// Adds VIPs on a plain route-netlink socket of its own, outside the rtnetlink connection task.
///
/// Why: on a takeover the gratuitous ARP/NA should leave as soon as possible. The kernel handles
/// an `RTM_NEWADDR` inside the `sendmsg` call itself, so the address is in place when
/// [`VipAdder::send`] returns (and the kernel answers ARP for it); only the acknowledgement
/// waits in the socket. Through the rtnetlink handle the request would leave only when the
/// connection task next ran, and the GARP would wait for a round trip through the runtime.
pub struct VipAdder {
    sock: tokio::io::unix::AsyncFd<rtnetlink::sys::Socket>,
    next_seq: std::sync::atomic::AtomicU32,
}

impl VipAdder {
    /// Opens and connects the socket (non-blocking, registered with the current runtime).
    #[allow(deprecated)] // AsyncFd::new: the netlink Socket owns its fd and closes it on drop.
    pub fn new() -> std::io::Result<VipAdder> {
        let mut s = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
        s.bind_auto()?;
        s.connect(&rtnetlink::sys::SocketAddr::new(0, 0))?;
        s.set_non_blocking(true)?;
        Ok(VipAdder { sock: tokio::io::unix::AsyncFd::new(s)?, next_seq: std::sync::atomic::AtomicU32::new(1) })
    }

    /// Sends `RTM_NEWADDR` for `addr/prefix` (IPv6 with `nodad`); the kernel has acted on it
    /// when this returns. The acknowledgement is read by [`VipAdder::acks`].
    pub fn send(&self, ifindex: u32, addr: IpAddr, prefix: u8, extra: &AddrExtras) -> Result<PendingAdd, AddError> {
        use rtnetlink::packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
        use rtnetlink::packet_route::RouteNetlinkMessage;
        let seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pending = PendingAdd { addr, prefix, ifindex, seq };
        let mut msg = match addr {
            IpAddr::V4(a) => rtnetlink::AddressMessageBuilder::<std::net::Ipv4Addr>::new().index(ifindex).address(a, prefix).build(),
            IpAddr::V6(a) => rtnetlink::AddressMessageBuilder::<std::net::Ipv6Addr>::new().index(ifindex).address(a, prefix).build(),
        };
        if addr.is_ipv6() {
            use netlink_packet_route::address::{AddressAttribute, AddressFlags};
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        if let Some(l) = &extra.label {
            msg.attributes.push(netlink_packet_route::address::AddressAttribute::Label(l.clone()));
        }
        if let Some(sc) = extra.scope {
            msg.header.scope = netlink_packet_route::address::AddressScope::from(sc);
        }
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewAddress(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
        req.header.sequence_number = seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        match self.sock.get_ref().send(&buf, 0) {
            Ok(_) => Ok(pending),
            Err(e) => Err(pending.error(e)),
        }
    }

    /// Reads acknowledgements until every request in `pending` has one; answers to requests
    /// not asked about (an earlier, abandoned wait) are skipped.
    pub async fn acks(&self, pending: Vec<PendingAdd>) -> Vec<Result<(), AddError>> {
        let mut results: Vec<Option<Result<(), AddError>>> = pending.iter().map(|_| None).collect();
        let mut buf = vec![0u8; 8192];
        while results.iter().any(Option::is_none) {
            let n = match self.sock.get_ref().recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match self.sock.readable().await {
                        Ok(mut g) => g.clear_ready(),
                        Err(e) => return fail_rest(&pending, results, e),
                    }
                    continue;
                }
                Err(e) => return fail_rest(&pending, results, e),
            };
            for (seq, code) in parse_acks(&buf[..n.min(buf.len())]) {
                if let Some(k) = pending.iter().position(|p| p.seq == seq) {
                    results[k] = Some(match code {
                        0 => Ok(()),
                        c if -c == libc::EEXIST => Ok(()),
                        c => Err(pending[k].error(std::io::Error::from_raw_os_error(-c))),
                    });
                }
            }
        }
        results.into_iter().flatten().collect()
    }
}

fn fail_rest(pending: &[PendingAdd], results: Vec<Option<Result<(), AddError>>>, e: std::io::Error) -> Vec<Result<(), AddError>> {
    results
        .into_iter()
        .zip(pending)
        .map(|(r, p)| r.unwrap_or_else(|| Err(p.error(std::io::Error::new(e.kind(), e.to_string())))))
        .collect()
}

/// (sequence number, error code) of every `NLMSG_ERROR` message in a netlink datagram; code 0
/// is an acknowledgement. Stops at the first malformed header instead of trusting it.
fn parse_acks(mut data: &[u8]) -> Vec<(u32, i32)> {
    const HDR: usize = 16;
    let mut out = Vec::new();
    while data.len() >= HDR {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < HDR || len > data.len() {
            break;
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        if kind == libc::NLMSG_ERROR as u16 && len >= HDR + 4 {
            out.push((seq, i32::from_ne_bytes([data[16], data[17], data[18], data[19]])));
        }
        let step = (len + 3) & !3;
        data = data.get(step..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m
    }

    #[test]
    fn acks_are_read_and_bad_headers_stop_the_walk() {
        let mut d = msg(2, 7, 0);
        d.extend(msg(2, 8, -libc::EEXIST));
        d.extend(msg(16, 9, 0)); // not an error/ack message
        assert_eq!(parse_acks(&d), vec![(7, 0), (8, -libc::EEXIST)]);
        let mut bad = msg(2, 1, 0);
        bad[0] = 200; // length beyond the datagram
        assert!(parse_acks(&bad).is_empty());
        assert!(parse_acks(&d[..10]).is_empty());
        let mut zero = msg(2, 1, 0);
        zero[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse_acks(&zero).is_empty(), "a zero length must not loop forever");
    }
}
