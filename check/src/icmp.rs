//! PING_CHECK: ICMP echo (RFC 792) or ICMPv6 echo (RFC 4443 §4).
//!
//! First choice is the unprivileged "ping socket" (`SOCK_DGRAM` + `IPPROTO_ICMP[V6]`, allowed by
//! `net.ipv4.ping_group_range`): the kernel picks the identifier, filters replies for us and
//! strips the IP header. If the kernel refuses it (EACCES/EPERM, e.g. the range is `1 0`), we fall
//! back to a raw socket, which needs CAP_NET_RAW, and filter replies ourselves. The choice is
//! remembered per family so later attempts skip the refused call.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::checker::DefError;
use crate::def::{IcmpCheck, Timing};
use crate::result::{FailReason, Phase};

/// RFC 792: echo request / reply types.
const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
/// RFC 4443 §4.1, §4.2.
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// Type, code, checksum, identifier, sequence.
const ICMP_HEADER: usize = 8;
/// Bytes at the start of the payload that make a reply ours.
const COOKIE_LEN: usize = 8;

const MODE_UNKNOWN: u8 = 0;
const MODE_DGRAM: u8 = 1;
const MODE_RAW: u8 = 2;
static MODE_V4: AtomicU8 = AtomicU8::new(MODE_UNKNOWN);
static MODE_V6: AtomicU8 = AtomicU8::new(MODE_UNKNOWN);
static SEQ: AtomicU16 = AtomicU16::new(1);

pub(crate) struct IcmpProbe {
    target: IpAddr,
    payload_len: usize,
}

impl IcmpProbe {
    pub(crate) fn new(def: &IcmpCheck) -> Result<Self, DefError> {
        let len = usize::from(def.payload_len);
        if !(COOKIE_LEN..=1400).contains(&len) {
            return Err(DefError::invalid("payload_len", format!("must be {COOKIE_LEN} to 1400")));
        }
        if def.target.is_unspecified() || def.target.is_multicast() {
            return Err(DefError::invalid("target", "must be a unicast address"));
        }
        Ok(IcmpProbe { target: def.target, payload_len: len })
    }

    pub(crate) async fn attempt(&self, timing: &Timing) -> Result<(), FailReason> {
        let (sock, raw) = open(self.target).map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => FailReason::Io(format!(
                "cannot open an ICMP socket ({e}): allow ping sockets with sysctl \
                 net.ipv4.ping_group_range or grant CAP_NET_RAW"
            )),
            _ => FailReason::from_io(&e, Phase::Connect),
        })?;
        let v6 = self.target.is_ipv6();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let ident = (cookie() >> 48) as u16;
        let mut payload = vec![0u8; self.payload_len];
        payload[..COOKIE_LEN].copy_from_slice(&cookie().to_be_bytes());
        for (i, b) in payload.iter_mut().enumerate().skip(COOKIE_LEN) {
            *b = i as u8;
        }
        let packet = echo_request(v6, ident, seq, &payload);
        sock.send(&packet).await.map_err(|e| FailReason::from_io(&e, Phase::Read))?;

        let deadline = Instant::now() + timing.read_timeout();
        let mut buf = vec![0u8; self.payload_len + ICMP_HEADER + 60];
        loop {
            let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => return Err(FailReason::Timeout(Phase::Read)),
                Ok(Err(e)) => return Err(FailReason::from_io(&e, Phase::Read)),
                Ok(Ok(n)) => n,
            };
            let got = buf.get(..n).unwrap_or(&[]);
            // Raw IPv4 sockets hand us the IP header too; raw IPv6 and ping sockets do not.
            let icmp = if raw && !v6 { strip_ipv4_header(got) } else { Some(got) };
            let Some(icmp) = icmp else { continue };
            // Ping sockets rewrite the identifier to their own, so only raw sockets check it.
            if is_our_reply(icmp, v6, raw.then_some(ident), seq, &payload) {
                return Ok(());
            }
        }
    }
}

fn open(target: IpAddr) -> io::Result<(UdpSocket, bool)> {
    let (domain, proto, mode) = match target {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, &MODE_V4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, &MODE_V6),
    };
    let (sock, raw) = if mode.load(Ordering::Relaxed) == MODE_RAW {
        (Socket::new(domain, Type::RAW, Some(proto))?, true)
    } else {
        match Socket::new(domain, Type::DGRAM, Some(proto)) {
            Ok(s) => {
                mode.store(MODE_DGRAM, Ordering::Relaxed);
                (s, false)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EPROTONOSUPPORT)) => {
                let s = Socket::new(domain, Type::RAW, Some(proto))?;
                mode.store(MODE_RAW, Ordering::Relaxed);
                (s, true)
            }
            Err(e) => return Err(e),
        }
    };
    sock.set_nonblocking(true)?;
    // Connected: the kernel only hands us packets from the target (raw sockets too).
    sock.connect(&SocketAddr::new(target, 0).into())?;
    let std_sock: std::net::UdpSocket = sock.into();
    Ok((UdpSocket::from_std(std_sock)?, raw))
}

/// Random 64 bits per call, from std's per-process SipHash keys and a counter.
fn cookie() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::AtomicU64;
    use std::sync::OnceLock;
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Build an echo request. The ICMPv4 checksum is ours to compute (RFC 792); for ICMPv6 the kernel
/// fills it in, since it covers a pseudo-header with addresses only the kernel knows.
pub(crate) fn echo_request(v6: bool, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(ICMP_HEADER + payload.len());
    p.push(if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 });
    p.push(0);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    if !v6 {
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// RFC 1071 Internet checksum.
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn strip_ipv4_header(pkt: &[u8]) -> Option<&[u8]> {
    let first = *pkt.first()?;
    if first >> 4 != 4 {
        return None;
    }
    pkt.get(usize::from(first & 0x0F) * 4..)
}

fn is_our_reply(icmp: &[u8], v6: bool, ident: Option<u16>, seq: u16, payload: &[u8]) -> bool {
    let want_type = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    let (Some(head), Some(body)) = (icmp.get(..ICMP_HEADER), icmp.get(ICMP_HEADER..)) else {
        return false;
    };
    head[0] == want_type
        && head[1] == 0
        && ident.is_none_or(|id| head[4..6] == id.to_be_bytes())
        && head[6..8] == seq.to_be_bytes()
        && body == payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_request_verifies() {
        let p = echo_request(false, 0x1234, 7, b"abcdefgh");
        assert_eq!(checksum(&p), 0, "a packet including its checksum sums to zero");
        assert_eq!(&p[..2], &[8, 0]);
        // RFC 1071 §3 example.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }

    #[test]
    fn reply_matching() {
        let payload = b"cookie!!rest";
        let mut reply = echo_request(false, 9, 3, payload);
        reply[0] = ECHO_REPLY_V4;
        assert!(is_our_reply(&reply, false, Some(9), 3, payload));
        assert!(is_our_reply(&reply, false, None, 3, payload));
        assert!(!is_our_reply(&reply, false, Some(10), 3, payload));
        assert!(!is_our_reply(&reply, false, None, 4, payload));
        assert!(!is_our_reply(&reply[..10], false, None, 3, payload));
        assert!(!is_our_reply(&[], true, None, 3, payload));
        assert_eq!(strip_ipv4_header(&[0x45]), None);
    }
}
