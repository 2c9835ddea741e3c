//! DNS_CHECK: one query over UDP to the backend; the reply must carry our id, NOERROR and, when
//! configured, every expected address.
//!
//! The wire code is the small part of RFC 1035 a checker needs: encode one question, and read a
//! reply's header and answer records. Every read is bounds-checked (`Reader`), so a hostile reply
//! is an error, never a panic. Name compression is skipped, not followed, so no pointer loops.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};

use tokio::time::Instant;

use crate::checker::DefError;
use crate::def::{DnsCheck, RecordType, Timing};
use crate::result::{DnsFailure, FailReason, Phase};
use crate::udp::bound_to;

/// RFC 1035 §4.1.1 header length.
pub const HEADER_LEN: usize = 12;
/// Header flag: this is a response.
const FLAG_QR: u16 = 0x8000;
/// Header flag: truncated.
const FLAG_TC: u16 = 0x0200;
/// Header flag: recursion desired.
const FLAG_RD: u16 = 0x0100;
/// CLASS IN.
const CLASS_IN: u16 = 1;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
/// RFC 1035 §2.3.4 limits.
const MAX_LABEL: usize = 63;
const MAX_NAME: usize = 255;
/// Classic UDP DNS message limit without EDNS (RFC 1035 §4.2.1); we ask for no more.
const MAX_UDP: usize = 512;

/// Encode a standard query for `name`/`qtype` with recursion desired (RFC 1035 §4.1).
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DefError> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&FLAG_RD.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    out.extend_from_slice(&[0; 6]); // AN, NS, AR counts
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let mut encoded = 0usize;
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > MAX_LABEL {
                return Err(DefError::invalid("name", format!("{name:?}: labels must be 1 to 63 bytes")));
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
            encoded += label.len() + 1;
        }
    }
    if encoded + 1 > MAX_NAME {
        return Err(DefError::invalid("name", format!("{name:?} is longer than 255 bytes")));
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

/// Why a datagram could not be read as a DNS reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message ends before a field it announces.
    #[error("message truncated")]
    Truncated,
    /// A label length byte uses the reserved 01/10 prefixes.
    #[error("bad label type")]
    BadLabel,
    /// The QR bit is clear: this is a query, not a reply.
    #[error("not a response")]
    NotResponse,
}

/// The parts of a reply the checker looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Transaction id.
    pub id: u16,
    /// RCODE (low 4 bits of the flags).
    pub rcode: u8,
    /// TC bit.
    pub truncated: bool,
    /// Addresses from A and AAAA answer records, in order.
    pub addrs: Vec<IpAddr>,
    /// Number of answer records of any type.
    pub answers: u16,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Skip a (possibly compressed) name. A pointer ends the name, so nothing is followed.
    fn skip_name(&mut self) -> Result<(), WireError> {
        loop {
            let len = self.u8()?;
            match len & 0xC0 {
                0x00 if len == 0 => return Ok(()),
                0x00 => {
                    self.take(usize::from(len))?;
                }
                0xC0 => {
                    self.u8()?;
                    return Ok(());
                }
                _ => return Err(WireError::BadLabel),
            }
        }
    }
}

/// Parse a reply (RFC 1035 §4.1): header, skip the questions, collect A/AAAA answers.
pub fn parse_reply(buf: &[u8]) -> Result<Reply, WireError> {
    let mut r = Reader { buf, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    let qdcount = r.u16()?;
    let ancount = r.u16()?;
    r.take(4)?; // NSCOUNT, ARCOUNT: not needed
    if flags & FLAG_QR == 0 {
        return Err(WireError::NotResponse);
    }
    let truncated = flags & FLAG_TC != 0;
    let mut reply = Reply { id, rcode: (flags & 0x000F) as u8, truncated, addrs: Vec::new(), answers: ancount };
    let body = (|| {
        for _ in 0..qdcount {
            r.skip_name()?;
            r.take(4)?;
        }
        for _ in 0..ancount {
            r.skip_name()?;
            let rtype = r.u16()?;
            let class = r.u16()?;
            r.take(4)?; // TTL
            let rdlen = r.u16()?;
            let rdata = r.take(usize::from(rdlen))?;
            if class != CLASS_IN {
                continue;
            }
            match (rtype, rdata.len()) {
                (TYPE_A, 4) => {
                    let a: [u8; 4] = rdata.try_into().map_err(|_| WireError::Truncated)?;
                    reply.addrs.push(IpAddr::V4(Ipv4Addr::from(a)));
                }
                (TYPE_AAAA, 16) => {
                    let a: [u8; 16] = rdata.try_into().map_err(|_| WireError::Truncated)?;
                    reply.addrs.push(IpAddr::V6(Ipv6Addr::from(a)));
                }
                _ => {}
            }
        }
        Ok(())
    })();
    match body {
        Ok(()) => Ok(reply),
        // A truncated reply may legitimately stop mid-record; keep what was read.
        Err(WireError::Truncated) if truncated => Ok(reply),
        Err(e) => Err(e),
    }
}

static NEXT_ID: AtomicU16 = AtomicU16::new(0);

/// A query id nobody can guess from the previous one, without pulling in an RNG crate: a
/// counter mixed with per-process random keys.
fn query_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    h.write_u16(NEXT_ID.fetch_add(1, Ordering::Relaxed));
    h.finish() as u16
}

pub(crate) struct DnsProbe {
    target: SocketAddr,
    query: Vec<u8>,
    expect: Vec<IpAddr>,
}

impl DnsProbe {
    pub(crate) fn new(def: &DnsCheck) -> Result<Self, DefError> {
        let query = encode_query(0, &def.name, def.record.code())?;
        if !def.expect.is_empty() && !matches!(def.record, RecordType::A | RecordType::Aaaa | RecordType::Any) {
            return Err(DefError::invalid("expect", "addresses can only be expected for A, AAAA or ANY"));
        }
        Ok(DnsProbe { target: def.target, query, expect: def.expect.clone() })
    }

    pub(crate) async fn attempt(&self, timing: &Timing) -> Result<(), FailReason> {
        let id = query_id();
        let mut query = self.query.clone();
        query[..2].copy_from_slice(&id.to_be_bytes());
        let sock = bound_to(self.target).await?;
        sock.send(&query).await.map_err(|e| FailReason::from_io(&e, Phase::Read))?;
        let deadline = Instant::now() + timing.read_timeout();
        let mut buf = [0u8; MAX_UDP * 2];
        loop {
            let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => return Err(FailReason::Timeout(Phase::Read)),
                Ok(Err(e)) => return Err(FailReason::from_io(&e, Phase::Read)),
                Ok(Ok(n)) => n,
            };
            // Replies with another id are stale or forged: keep waiting for ours.
            let reply = match parse_reply(&buf[..n]) {
                Ok(r) if r.id == id => r,
                Ok(_) => continue,
                Err(e) if n >= 2 && buf[..2] == id.to_be_bytes() => {
                    return Err(FailReason::BadResponse(format!("DNS reply: {e}")))
                }
                Err(_) => continue,
            };
            return self.judge(reply);
        }
    }

    fn judge(&self, reply: Reply) -> Result<(), FailReason> {
        if reply.rcode != 0 {
            return Err(FailReason::Dns(DnsFailure::Rcode(reply.rcode)));
        }
        if self.expect.is_empty() {
            return Ok(());
        }
        if reply.truncated {
            return Err(FailReason::Dns(DnsFailure::Truncated));
        }
        if self.expect.iter().all(|a| reply.addrs.contains(a)) {
            Ok(())
        } else {
            Err(FailReason::Dns(DnsFailure::WrongAnswer { expected: self.expect.clone(), got: reply.addrs }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dig +noedns @… example.com A` query with id 0xbeef, as captured.
    const QUERY: &[u8] = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01";

    #[test]
    fn encodes_query_byte_exact() {
        assert_eq!(encode_query(0xbeef, "example.com.", 1).unwrap(), QUERY);
        assert_eq!(encode_query(0xbeef, "example.com", 1).unwrap(), QUERY);
        let root = encode_query(1, ".", 2).unwrap();
        assert_eq!(&root[HEADER_LEN..], b"\x00\x00\x02\x00\x01");
    }

    #[test]
    fn refuses_bad_names() {
        assert!(encode_query(1, "a..b", 1).is_err());
        assert!(encode_query(1, &"a".repeat(64), 1).is_err());
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(encode_query(1, &long, 1).is_err());
    }

    #[test]
    fn parses_reply_with_compression() {
        let mut msg = QUERY.to_vec();
        msg[2] = 0x81; // QR, RD
        msg[3] = 0x80; // RA
        msg[7] = 2; // ANCOUNT
        // answer 1: pointer to the question name, A 192.0.2.7
        msg.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\xc0\x00\x02\x07");
        // answer 2: AAAA 2001:db8::1
        msg.extend_from_slice(b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x0e\x10\x00\x10");
        msg.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        let r = parse_reply(&msg).unwrap();
        assert_eq!(r.id, 0xbeef);
        assert_eq!(r.rcode, 0);
        assert_eq!(r.addrs, vec!["192.0.2.7".parse::<IpAddr>().unwrap(), "2001:db8::1".parse().unwrap()]);
    }

    #[test]
    fn never_panics_on_prefixes_or_garbage() {
        let mut msg = QUERY.to_vec();
        msg[2] = 0x81;
        msg[7] = 1;
        msg.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\xc0\x00\x02\x07");
        for n in 0..msg.len() {
            let _ = parse_reply(&msg[..n]);
        }
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let mut junk = msg.clone();
            for b in junk.iter_mut() {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if x >> 28 == 0 {
                    *b = (x >> 16) as u8;
                }
            }
            let _ = parse_reply(&junk);
        }
        assert_eq!(parse_reply(QUERY), Err(WireError::NotResponse));
    }
}
