//! The socket edge of the half-open check: raw TCP sockets with a classic BPF filter, the reserved
//! source ports, batched send and receive, and the route's source address.
//!
//! Public (under `check::halfopen::sys`) only so the `many_tcp` load tool can measure the bare
//! kernel cost of a half-open probe (its anchor) with the very same sockets and filter.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Socket, Type};

/// Bytes of each received datagram kept: an IPv4 header (≤ 60) and a TCP header (≤ 60). The BPF
/// filter cuts copies to this length too.
pub const SNAP: usize = 128;

/// A raw `IPPROTO_TCP` socket of one address family. IPv4 ones receive the IP header in front of
/// the TCP header; IPv6 ones receive the TCP header alone.
#[derive(Debug)]
pub struct RawTcp {
    fd: OwnedFd,
    v6: bool,
}

impl AsRawFd for RawTcp {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points at a live value of the size passed.
    cvt(unsafe { libc::setsockopt(fd, level, name, v as *const T as *const libc::c_void, size_of::<T>() as libc::socklen_t) }).map(|_| ())
}

impl RawTcp {
    /// Open a non-blocking raw TCP socket (`v6`: IPv6). Needs CAP_NET_RAW: a refusal comes back
    /// as `PermissionDenied` with a message naming it. No filter yet: until
    /// [`RawTcp::attach_filter`] it receives a copy of every TCP segment the host gets.
    pub fn open(v6: bool) -> io::Result<RawTcp> {
        let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain syscall, result checked.
        let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, libc::IPPROTO_TCP) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("raw TCP socket refused ({e}): the tcp_half_open check needs CAP_NET_RAW")));
            }
            return Err(e);
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = RawTcp { fd, v6 };
        // A grid step's SYNs go out in one burst and their answers come back in one: room for
        // thousands of each. The FORCE variants (root) go past rmem_max/wmem_max.
        let big: libc::c_int = 4 << 20;
        let fd = s.fd.as_raw_fd();
        if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &big).is_err() {
            let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &big);
        }
        if setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &big).is_err() {
            let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &big);
        }
        if !v6 {
            // DF on our SYNs, as the kernel's own TCP sets it; with DF the IP ID is 0 rather
            // than one from the global hashed generator (`__ip_select_ident`, 4 % of a profile's
            // samples; no difference above noise in an A/B of the whole checker).
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, &libc::IP_PMTUDISC_DO)?;
        }
        if v6 {
            // The kernel fills the TCP checksum at offset 16 (RFC 3542 §3.1), pseudo-header and all.
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, &16 as &libc::c_int)?;
        }
        Ok(s)
    }

    /// Whether this is the IPv6 socket.
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// Attach [`filter`] for `ports`, then throw away whatever was queued before it took effect.
    pub fn attach_filter(&self, ports: &[u16]) -> io::Result<()> {
        let prog = filter(self.v6, ports);
        let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
        setsockopt(self.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)?;
        let mut buf = [0u8; SNAP];
        loop {
            // SAFETY: a writable buffer of the length passed.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                return Ok(());
            }
        }
    }

    /// Send each `(destination, TCP segment)` with as few `sendmmsg` calls as the socket takes.
    /// Returns how many went out; fewer than `pkts.len()` when the send buffer is full (then
    /// `WouldBlock` is not an error: the caller waits for writability and sends the rest). A
    /// segment the device queue refused (`ENOBUFS`) counts as sent: it is lost, like a drop on
    /// the wire, and the probe's resend covers it.
    pub fn send_batch(&self, pkts: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < pkts.len() {
            let chunk = &pkts[sent..(sent + 256).min(pkts.len())];
            let names: Vec<socket2::SockAddr> = chunk.iter().map(|(a, _)| socket2::SockAddr::from(SocketAddr::new(a.ip(), 0))).collect();
            let mut iov: Vec<libc::iovec> = chunk.iter().map(|(_, b)| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }).collect();
            let mut msgs: Vec<libc::mmsghdr> = (0..chunk.len())
                .map(|i| {
                    // SAFETY: an all-zero msghdr is a valid empty one.
                    let mut h: libc::msghdr = unsafe { zeroed() };
                    h.msg_name = names[i].as_ptr() as *mut libc::c_void;
                    h.msg_namelen = names[i].len();
                    h.msg_iov = &mut iov[i];
                    h.msg_iovlen = 1;
                    libc::mmsghdr { msg_hdr: h, msg_len: 0 }
                })
                .collect();
            // SAFETY: `msgs` points into `names` and `iov`, which outlive the call; the segments
            // are borrowed for the call only.
            let n = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as libc::c_uint, libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    // The device queue dropped it (full qdisc): the socket's buffer is free
                    // again at once, so waiting for writability would spin. Count the SYN as
                    // sent and lost, as a congested link would lose it; the resend covers it.
                    sent += 1;
                    continue;
                }
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Ok(sent);
                }
                if sent > 0 {
                    return Ok(sent);
                }
                return Err(e);
            }
            sent += n as usize;
            if (n as usize) < chunk.len() {
                return Ok(sent);
            }
        }
        Ok(sent)
    }

    /// Read up to `bufs.len()` datagrams with one `recvmmsg`. `Ok(0)`: nothing queued.
    pub fn recv_batch(&self, bufs: &mut RecvBufs) -> io::Result<usize> {
        let n = bufs.bufs.len();
        let mut iov: Vec<libc::iovec> = bufs.bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: SNAP }).collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..n)
            .map(|i| {
                // SAFETY: an all-zero msghdr is a valid empty one.
                let mut h: libc::msghdr = unsafe { zeroed() };
                h.msg_name = (&mut bufs.names[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_iov = &mut iov[i];
                h.msg_iovlen = 1;
                libc::mmsghdr { msg_hdr: h, msg_len: 0 }
            })
            .collect();
        // SAFETY: every header points at buffers in `bufs` and `iov`, alive for the call.
        let r = unsafe { libc::recvmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
        }
        let r = r as usize;
        for (i, m) in msgs[..r].iter().enumerate() {
            bufs.lens[i] = (m.msg_len as usize).min(SNAP);
        }
        bufs.v6 = self.v6;
        bufs.filled = r;
        Ok(r)
    }
}

/// Buffers for [`RawTcp::recv_batch`], reused across calls.
pub struct RecvBufs {
    bufs: Vec<[u8; SNAP]>,
    names: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    filled: usize,
    v6: bool,
}

impl RecvBufs {
    /// Room for `n` datagrams per call.
    pub fn new(n: usize) -> Self {
        // SAFETY: an all-zero sockaddr_storage is valid (family AF_UNSPEC).
        RecvBufs { bufs: vec![[0; SNAP]; n], names: vec![unsafe { zeroed() }; n], lens: vec![0; n], filled: 0, v6: false }
    }

    /// The datagrams of the last call as (sender, TCP header bytes). Datagrams that are not
    /// well-formed IPv4-carrying-TCP come back as `None` (counted by the caller, never a panic).
    pub fn iter(&self) -> impl Iterator<Item = Option<(IpAddr, &[u8])>> + '_ {
        (0..self.filled).map(move |i| {
            let b = &self.bufs[i][..self.lens[i]];
            if self.v6 {
                let sa = &self.names[i];
                if sa.ss_family != libc::AF_INET6 as libc::sa_family_t {
                    return None;
                }
                // SAFETY: the family says it is a sockaddr_in6, which fits in the storage.
                let a = unsafe { &*(sa as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                Some((IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)), b))
            } else {
                let ihl = usize::from(*b.first()? & 0x0f) * 4;
                if b[0] >> 4 != 4 || ihl < 20 || b.len() < ihl || b[9] != libc::IPPROTO_TCP as u8 {
                    return None;
                }
                Some((IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15])), &b[ihl..]))
            }
        })
    }
}

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const IMM: u16 = 0x00;
const IND: u16 = 0x40;
const MSH: u16 = 0xa0;
const AND: u16 = 0x50;
const JEQ: u16 = 0x10;
const JSET: u16 = 0x40;
const K: u16 = 0x00;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The most ports [`filter`] takes (jump offsets are one byte).
pub const MAX_FILTER_PORTS: usize = 200;

/// The classic BPF program for a half-open prober's raw socket: accept only TCP segments whose
/// destination port is one of `ports` and that carry SYN+ACK or RST, cut to [`SNAP`] bytes; drop
/// everything else in the kernel. Without it an `IPPROTO_TCP` raw socket receives a copy of every
/// TCP segment the host receives. IPv4 raw sockets see the IP header first (the TCP header is at
/// 4 × IHL, loaded with the `MSH` form); IPv6 ones see the TCP header at offset 0.
///
/// Layout: `X = TCP offset; A = dst port; jeq port_i → flags ...; ret 0; flags: A = [x+13];
/// jset RST → accept; A &= SYN|ACK; jeq SYN|ACK → accept; ret 0; accept: ret SNAP`.
pub fn filter(v6: bool, ports: &[u16]) -> Vec<libc::sock_filter> {
    // The pool is a small constant; more ports would need a different filter shape.
    assert!(ports.len() <= MAX_FILTER_PORTS, "half-open filter: {} ports, at most {MAX_FILTER_PORTS}", ports.len());
    let mut p = Vec::with_capacity(ports.len() + 10);
    p.push(if v6 { ins(LDX | W | IMM, 0, 0, 0) } else { ins(LDX | B | MSH, 0, 0, 0) });
    p.push(ins(LD | H | IND, 0, 0, 2));
    let n = ports.len();
    for (i, &port) in ports.iter().enumerate() {
        // On a match jump over the remaining port tests and the `ret 0` behind them.
        let to_flags = (n - 1 - i + 1) as u8;
        p.push(ins(JMP | JEQ | K, to_flags, 0, u32::from(port)));
    }
    p.push(ins(RET | K, 0, 0, 0)); // no port matched
    p.push(ins(LD | B | IND, 0, 0, 13)); // flags
    p.push(ins(JMP | JSET | K, 3, 0, 0x04)); // RST → accept
    p.push(ins(ALU | AND | K, 0, 0, 0x12));
    p.push(ins(JMP | JEQ | K, 1, 0, 0x12)); // SYN+ACK → accept
    p.push(ins(RET | K, 0, 0, 0));
    p.push(ins(RET | K, 0, 0, SNAP as u32));
    p
}

/// `n` source ports for half-open probes of one family, held by ordinary TCP sockets that are
/// bound and nothing else: the kernel never gives those ports to a connection of its own (the
/// reservation), and since no socket listens or is connected on them it answers the backend's
/// SYN-ACK with a RST — which is what removes the backend's half-open entry.
pub fn reserve_ports(v6: bool, n: usize) -> io::Result<(Vec<Socket>, Vec<u16>)> {
    let mut socks = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Socket::new(if v6 { Domain::IPV6 } else { Domain::IPV4 }, Type::STREAM, None)?;
        let any: SocketAddr = if v6 {
            s.set_only_v6(true)?;
            SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into()
        } else {
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into()
        };
        s.bind(&any.into())?;
        let port = s.local_addr()?.as_socket().map_or(0, |a| a.port());
        if port == 0 {
            return Err(io::Error::other("bound port reads as 0"));
        }
        ports.push(port);
        socks.push(s);
    }
    Ok((socks, ports))
}

/// The source address the kernel's routing picks for `dst` (a connected UDP socket's local
/// address: a route lookup, no packet sent). A raw IPv4 socket without `IP_HDRINCL` fills in the
/// same address, and the TCP checksum's pseudo-header needs it in advance.
pub fn route_source(dst: IpAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = match dst {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let u = UdpSocket::bind(any)?;
    u.connect((dst, 9))?;
    Ok(u.local_addr()?.ip())
}

#[cfg(test)]
pub(crate) mod tests {
    //! The filter attached to a real raw socket, fed real segments over loopback (root only;
    //! under CI=true a missing privilege fails instead of skipping).

    use super::*;
    use crate::halfopen::wire::{Flags, Packet, Repr};
    use std::time::{Duration, Instant};

    pub(crate) fn raw_or_skip(v6: bool) -> Option<RawTcp> {
        match RawTcp::open(v6) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: raw sockets need CAP_NET_RAW: {e}");
                eprintln!("SKIPPED (not root / no CAP_NET_RAW): {e}");
                None
            }
            Err(e) => panic!("raw socket: {e}"),
        }
    }

    fn segment(sport: u16, dport: u16, flags: u8, ack: Option<u32>, v6: bool) -> Vec<u8> {
        let r = Repr { src_port: sport, dst_port: dport, seq: 7, ack, flags: Flags(flags), window: 100, mss: None };
        let mut b = vec![0; r.buffer_len()];
        let lo: IpAddr = if v6 { Ipv6Addr::LOCALHOST.into() } else { Ipv4Addr::LOCALHOST.into() };
        r.emit(&mut Packet::new_unchecked(&mut b[..]), (!v6).then_some((lo, lo)));
        b
    }

    fn received(rx: &RawTcp, wait: Duration) -> Vec<Repr> {
        let mut bufs = RecvBufs::new(64);
        let mut out = Vec::new();
        let end = Instant::now() + wait;
        while Instant::now() < end {
            if rx.recv_batch(&mut bufs).unwrap() == 0 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            for (_, tcp) in bufs.iter().flatten() {
                if let Ok(p) = Packet::new_checked(tcp) {
                    out.push(Repr::parse(&p).unwrap());
                }
            }
        }
        out
    }

    fn filter_passes_only_syn_ack_and_rst_to_its_ports(v6: bool) {
        let (Some(rx), Some(tx)) = (raw_or_skip(v6), raw_or_skip(v6)) else { return };
        // Ports nobody uses on this host (reserved, so no real connection gets them meanwhile).
        let (_hold, ports) = reserve_ports(v6, 3).unwrap();
        let (mine, other) = (&ports[..2], ports[2]);
        rx.attach_filter(mine).unwrap();
        let lo: IpAddr = if v6 { Ipv6Addr::LOCALHOST.into() } else { Ipv4Addr::LOCALHOST.into() };
        let dst = SocketAddr::new(lo, 0);
        let cases = [
            (mine[0], Flags::SYN | Flags::ACK, true),
            (mine[1], Flags::RST | Flags::ACK, true),
            (mine[1], Flags::RST, true),
            (mine[0], Flags::SYN, false),
            (mine[0], Flags::ACK, false),
            (mine[0], Flags::FIN | Flags::ACK, false),
            (other, Flags::SYN | Flags::ACK, false),
            (other, Flags::RST, false),
        ];
        let segs: Vec<Vec<u8>> = cases.iter().enumerate().map(|(i, &(port, flags, _))| segment(50_000 + i as u16, port, flags & !Flags::ACK, (flags & Flags::ACK != 0).then_some(1), v6)).collect();
        let pkts: Vec<(SocketAddr, &[u8])> = segs.iter().map(|s| (dst, &s[..])).collect();
        assert_eq!(tx.send_batch(&pkts).unwrap(), pkts.len());
        let got = received(&rx, Duration::from_millis(300));
        let mut want: Vec<u16> = cases.iter().enumerate().filter(|c| c.1 .2).map(|(i, _)| 50_000 + i as u16).collect();
        let mut seen: Vec<u16> = got.iter().map(|r| r.src_port).collect();
        want.sort();
        seen.sort();
        assert_eq!(seen, want, "only SYN+ACK or RST to our ports pass: {got:?}");
    }

    #[test]
    fn filter_v4() {
        filter_passes_only_syn_ack_and_rst_to_its_ports(false);
    }

    #[test]
    fn filter_v6() {
        filter_passes_only_syn_ack_and_rst_to_its_ports(true);
    }

    #[test]
    fn filter_shape() {
        let f = filter(false, &[1000, 2000, 3000]);
        // ldx, ldh, 3 × jeq, ret 0, ldb, jset, and, jeq, ret 0, ret SNAP
        assert_eq!(f.len(), 12);
        // Each port test jumps to the flags load.
        for (i, j) in f[2..5].iter().enumerate() {
            assert_eq!(2 + i + 1 + usize::from(j.jt), 6);
        }
        assert_eq!(f[11].k, SNAP as u32);
    }

    #[test]
    fn route_source_of_loopback() {
        assert_eq!(route_source("127.0.0.9".parse().unwrap()).unwrap(), "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}
