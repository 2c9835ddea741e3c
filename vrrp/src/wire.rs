//! VRRP packets: VRRPv2 (RFC 3768) and VRRPv3 (RFC 5798 / RFC 9568), IPv4 and IPv6.
//!
//! Shaped like `smoltcp::wire`: [`Packet`] is a zero-copy view whose accessors cannot panic
//! once [`Packet::new_checked`] succeeded, and [`Repr`] is the parsed, validated form with
//! `parse`/`buffer_len`/`emit`. Every way a packet can be refused is a [`DropReason`], the
//! unit of the per-reason drop counters RFC 5798 §7.1 asks for.
//!
//! Checksums: v2 covers the VRRP message; v3 over IPv6 adds the IPv6 pseudo-header; v3 over
//! IPv4 is where vendors disagree (keepalived and FRR add the IPv4 pseudo-header, RFC 9568,
//! Cisco and Juniper do not), hence [`V3Checksum`] per instance, and the distinct
//! [`DropReason::ChecksumModeMismatch`] when a peer uses the other convention.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP (RFC 5798 §5.1.1.4).
pub const PROTOCOL: u8 = 112;
/// Adverts must arrive with TTL / hop limit 255 (RFC 5798 §5.1.1.3).
pub const TTL: u8 = 255;
/// IPv4 multicast group (RFC 5798 §5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// IPv6 multicast group (RFC 5798 §5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// The only packet type: ADVERTISEMENT (RFC 5798 §5.2.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;

mod field {
    use std::ops::Range;
    pub const VER_TYPE: usize = 0;
    pub const VRID: usize = 1;
    pub const PRIORITY: usize = 2;
    pub const COUNT: usize = 3;
    /// v2: auth type (byte 4) and advert interval in seconds (byte 5).
    pub const V2_AUTH_TYPE: usize = 4;
    pub const V2_ADVER: usize = 5;
    /// v3: 4 reserved bits and a 12-bit interval in centiseconds.
    pub const V3_ADVER: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const ADDRS: usize = 8;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 8;
/// Length of the VRRPv2 authentication data.
pub const V2_AUTH_LEN: usize = 8;

/// VRRP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Version {
    V2,
    V3,
}

impl Version {
    fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// How VRRPv3 over IPv4 computes its checksum (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum V3Checksum {
    /// With the IPv4 pseudo-header: keepalived's and FRR's default.
    #[default]
    PseudoHeader,
    /// Over the VRRP message only: RFC 9568, Cisco, Juniper.
    Plain,
}

/// VRRPv2 authentication (RFC 3768 §5.3.6); v3 removed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Auth {
    None,
    /// Type 1: up to 8 bytes of clear text, zero padded.
    SimpleText([u8; 8]),
    /// Any other type, kept so a packet can be counted and described, never accepted.
    Other(u8, [u8; 8]),
}

impl Auth {
    /// Type-1 authentication from a password of at most 8 bytes.
    pub fn simple(pass: &str) -> Option<Auth> {
        let b = pass.as_bytes();
        if b.is_empty() || b.len() > 8 {
            return None;
        }
        let mut data = [0u8; 8];
        data[..b.len()].copy_from_slice(b);
        Some(Auth::SimpleText(data))
    }
}

/// Why a received packet was dropped; each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than its header, its address list or its auth data.
    Truncated,
    /// TTL / hop limit was not 255: it did not come from this link.
    TtlNot255,
    /// Version field is not the instance's version.
    BadVersion,
    /// Type is not ADVERTISEMENT.
    BadType,
    /// Checksum wrong in both conventions.
    BadChecksum,
    /// Checksum right only in the other v3 IPv4 convention: the peer is configured differently.
    ChecksumModeMismatch,
    /// No instance with this VRID on this interface.
    VridMismatch,
    /// Address count does not match the length, or addresses of the wrong family.
    AddrCountMismatch,
    /// Advertisement interval 0.
    IntervalZero,
    /// VRRPv2 authentication type differs from ours.
    AuthTypeMismatch,
    /// VRRPv2 password differs from ours.
    AuthMismatch,
    /// Virtual addresses differ from our configuration (keepalived drops these too).
    AddressListMismatch,
}

impl DropReason {
    /// Every reason, for exporting a full set of counters.
    pub const ALL: [DropReason; 12] = [
        DropReason::Truncated,
        DropReason::TtlNot255,
        DropReason::BadVersion,
        DropReason::BadType,
        DropReason::BadChecksum,
        DropReason::ChecksumModeMismatch,
        DropReason::VridMismatch,
        DropReason::AddrCountMismatch,
        DropReason::IntervalZero,
        DropReason::AuthTypeMismatch,
        DropReason::AuthMismatch,
        DropReason::AddressListMismatch,
    ];

    /// Counter name, e.g. `drop_bad_checksum`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "drop_truncated",
            DropReason::TtlNot255 => "drop_ttl_not_255",
            DropReason::BadVersion => "drop_bad_version",
            DropReason::BadType => "drop_bad_type",
            DropReason::BadChecksum => "drop_bad_checksum",
            DropReason::ChecksumModeMismatch => "drop_checksum_mode_mismatch",
            DropReason::VridMismatch => "drop_vrid_mismatch",
            DropReason::AddrCountMismatch => "drop_addr_count_mismatch",
            DropReason::IntervalZero => "drop_interval_zero",
            DropReason::AuthTypeMismatch => "drop_auth_type_mismatch",
            DropReason::AuthMismatch => "drop_auth_mismatch",
            DropReason::AddressListMismatch => "drop_address_list_mismatch",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for DropReason {}

/// A zero-copy view of a VRRP packet (the IP payload).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks (for building packets).
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a received buffer; afterwards no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, DropReason> {
        let p = Packet { buffer };
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        Ok(p)
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn version(&self) -> u8 {
        self.b()[field::VER_TYPE] >> 4
    }
    pub fn kind(&self) -> u8 {
        self.b()[field::VER_TYPE] & 0x0f
    }
    pub fn vrid(&self) -> u8 {
        self.b()[field::VRID]
    }
    pub fn priority(&self) -> u8 {
        self.b()[field::PRIORITY]
    }
    pub fn addr_count(&self) -> u8 {
        self.b()[field::COUNT]
    }
    /// v2 only.
    pub fn auth_type(&self) -> u8 {
        self.b()[field::V2_AUTH_TYPE]
    }
    /// v2: seconds.
    pub fn v2_adver_int(&self) -> u8 {
        self.b()[field::V2_ADVER]
    }
    /// v3: centiseconds (12 bits).
    pub fn v3_max_adver_int(&self) -> u16 {
        u16::from_be_bytes([self.b()[4], self.b()[5]]) & 0x0fff
    }
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[6], self.b()[7]])
    }
    /// The address bytes (however many the buffer holds after the header).
    pub fn addr_bytes(&self) -> &[u8] {
        &self.b()[field::ADDRS..]
    }

    /// Verifies the checksum as `mode` says; `src`/`dst` are the carrying IP header's addresses.
    pub fn verify_checksum(&self, version: Version, src: IpAddr, dst: IpAddr, mode: V3Checksum) -> bool {
        checksum(self.b(), version, src, dst, mode) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_version_type(&mut self, version: u8, kind: u8) {
        self.bm()[field::VER_TYPE] = (version << 4) | (kind & 0x0f);
    }
    pub fn set_vrid(&mut self, v: u8) {
        self.bm()[field::VRID] = v;
    }
    pub fn set_priority(&mut self, v: u8) {
        self.bm()[field::PRIORITY] = v;
    }
    pub fn set_addr_count(&mut self, v: u8) {
        self.bm()[field::COUNT] = v;
    }
    pub fn set_v2_auth_adver(&mut self, auth_type: u8, seconds: u8) {
        self.bm()[field::V2_AUTH_TYPE] = auth_type;
        self.bm()[field::V2_ADVER] = seconds;
    }
    pub fn set_v3_max_adver_int(&mut self, centis: u16) {
        self.bm()[field::V3_ADVER].copy_from_slice(&(centis & 0x0fff).to_be_bytes());
    }
    pub fn set_checksum(&mut self, v: u16) {
        self.bm()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }
    /// Computes and stores the checksum.
    pub fn fill_checksum(&mut self, version: Version, src: IpAddr, dst: IpAddr, mode: V3Checksum) {
        self.set_checksum(0);
        let c = checksum(self.b(), version, src, dst, mode);
        self.set_checksum(c);
    }
}

/// One's-complement sum of 16-bit words (RFC 1071).
pub(crate) fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

/// Folds a [`sum16`] accumulator into the final (complemented) checksum.
pub(crate) fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The checksum over `msg` (with its checksum field as it is): 0 means "verifies".
fn checksum(msg: &[u8], version: Version, src: IpAddr, dst: IpAddr, mode: V3Checksum) -> u16 {
    let pseudo = match (version, src, dst) {
        (Version::V2, _, _) => None,
        (Version::V3, IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut acc = sum16(&s.octets(), 0);
            acc = sum16(&d.octets(), acc);
            acc += (msg.len() as u32 >> 16) + (msg.len() as u32 & 0xffff);
            acc += PROTOCOL as u32;
            Some(acc)
        }
        (Version::V3, IpAddr::V4(s), IpAddr::V4(d)) if mode == V3Checksum::PseudoHeader => {
            let mut acc = sum16(&s.octets(), 0);
            acc = sum16(&d.octets(), acc);
            acc += PROTOCOL as u32 + msg.len() as u32;
            Some(acc)
        }
        _ => None,
    };
    fold(sum16(msg, pseudo.unwrap_or(0)))
}

/// A parsed, validated advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repr {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// Advertisement interval in centiseconds (v2's seconds are converted: 1 s = 100).
    pub adver_int_cs: u16,
    pub addrs: Vec<IpAddr>,
    /// Always `Auth::None` for v3.
    pub auth: Auth,
}

/// What a receiver checks a packet against: its own configuration, and the carrying IP header.
#[derive(Debug, Clone, Copy)]
pub struct RxContext {
    pub version: Version,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Received TTL / hop limit.
    pub ttl: u8,
    pub v3_checksum: V3Checksum,
}

impl Repr {
    /// Parses and validates a received packet (RFC 5798 §7.1, RFC 3768 §7.1 checks that do
    /// not need the instance: VRID, auth and address list are checked by the instance).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>, cx: &RxContext) -> Result<Repr, DropReason> {
        if cx.ttl != TTL {
            return Err(DropReason::TtlNot255);
        }
        if p.version() != cx.version.number() {
            return Err(DropReason::BadVersion);
        }
        if p.kind() != TYPE_ADVERTISEMENT {
            return Err(DropReason::BadType);
        }
        let alen = if cx.src.is_ipv6() { 16 } else { 4 };
        if cx.version == Version::V2 && cx.src.is_ipv6() {
            return Err(DropReason::BadVersion);
        }
        let count = p.addr_count() as usize;
        let auth_len = if cx.version == Version::V2 { V2_AUTH_LEN } else { 0 };
        let need = HEADER_LEN + count * alen + auth_len;
        let have = p.b().len();
        if have < need {
            return Err(if have >= HEADER_LEN + auth_len && (have - HEADER_LEN - auth_len) % alen == 0 {
                DropReason::AddrCountMismatch
            } else {
                DropReason::Truncated
            });
        }
        if have > need {
            // keepalived refuses trailing bytes too: a count that under-reports the list.
            return Err(DropReason::AddrCountMismatch);
        }
        if count == 0 {
            return Err(DropReason::AddrCountMismatch);
        }
        let msg = &p.b()[..need];
        let ok = checksum(msg, cx.version, cx.src, cx.dst, cx.v3_checksum) == 0;
        if !ok {
            let other = match cx.v3_checksum {
                V3Checksum::PseudoHeader => V3Checksum::Plain,
                V3Checksum::Plain => V3Checksum::PseudoHeader,
            };
            let v4v3 = cx.version == Version::V3 && cx.src.is_ipv4();
            if v4v3 && checksum(msg, cx.version, cx.src, cx.dst, other) == 0 {
                return Err(DropReason::ChecksumModeMismatch);
            }
            return Err(DropReason::BadChecksum);
        }
        let adver_int_cs = match cx.version {
            Version::V2 => p.v2_adver_int() as u16 * 100,
            Version::V3 => p.v3_max_adver_int(),
        };
        if adver_int_cs == 0 {
            return Err(DropReason::IntervalZero);
        }
        let addrs = p.addr_bytes()[..count * alen]
            .chunks_exact(alen)
            .map(|c| match alen {
                4 => IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3])),
                _ => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(c).unwrap())),
            })
            .collect();
        let auth = match cx.version {
            Version::V3 => Auth::None,
            Version::V2 => {
                let data: [u8; 8] = msg[need - 8..].try_into().unwrap();
                match p.auth_type() {
                    0 => Auth::None,
                    1 => Auth::SimpleText(data),
                    t => Auth::Other(t, data),
                }
            }
        };
        Ok(Repr { version: cx.version, vrid: p.vrid(), priority: p.priority(), adver_int_cs, addrs, auth })
    }

    /// Bytes `emit` writes.
    pub fn buffer_len(&self) -> usize {
        let alen: usize = self.addrs.iter().map(|a| if a.is_ipv6() { 16 } else { 4 }).sum();
        HEADER_LEN + alen + if self.version == Version::V2 { V2_AUTH_LEN } else { 0 }
    }

    /// Writes the packet with its checksum for the given carrying addresses.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>, src: IpAddr, dst: IpAddr, mode: V3Checksum) {
        p.set_version_type(self.version.number(), TYPE_ADVERTISEMENT);
        p.set_vrid(self.vrid);
        p.set_priority(self.priority);
        p.set_addr_count(self.addrs.len() as u8);
        match self.version {
            Version::V2 => {
                let (t, data) = match self.auth {
                    Auth::None => (0, [0; 8]),
                    Auth::SimpleText(d) => (1, d),
                    Auth::Other(t, d) => (t, d),
                };
                p.set_v2_auth_adver(t, (self.adver_int_cs / 100) as u8);
                let end = self.buffer_len();
                p.bm()[end - 8..end].copy_from_slice(&data);
            }
            Version::V3 => p.set_v3_max_adver_int(self.adver_int_cs),
        }
        let mut off = HEADER_LEN;
        for a in &self.addrs {
            match a {
                IpAddr::V4(v4) => {
                    p.bm()[off..off + 4].copy_from_slice(&v4.octets());
                    off += 4;
                }
                IpAddr::V6(v6) => {
                    p.bm()[off..off + 16].copy_from_slice(&v6.octets());
                    off += 16;
                }
            }
        }
        p.fill_checksum(self.version, src, dst, mode);
    }

    /// Convenience: the packet as a new byte vector.
    pub fn to_bytes(&self, src: IpAddr, dst: IpAddr, mode: V3Checksum) -> Vec<u8> {
        let mut buf = vec![0u8; self.buffer_len()];
        self.emit(&mut Packet::new_unchecked(&mut buf[..]), src, dst, mode);
        buf
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SRC4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const DST4: IpAddr = IpAddr::V4(MULTICAST_V4);

    fn cx(version: Version, src: IpAddr, dst: IpAddr) -> RxContext {
        RxContext { version, src, dst, ttl: 255, v3_checksum: V3Checksum::PseudoHeader }
    }

    /// VRRPv3, IPv4, VRID 51, priority 150, 1 s, VIP 192.0.2.100, pseudo-header checksum.
    /// Checksum computed independently (Python, RFC 1071 over pseudo-header + message).
    const V3_V4: [u8; 12] = [0x31, 51, 150, 1, 0x00, 0x64, 0xd3, 0x71, 192, 0, 2, 100];

    #[test]
    fn v3_ipv4_bytes_are_exact() {
        let repr = Repr {
            version: Version::V3,
            vrid: 51,
            priority: 150,
            adver_int_cs: 100,
            addrs: vec!["192.0.2.100".parse().unwrap()],
            auth: Auth::None,
        };
        let bytes = repr.to_bytes(SRC4, DST4, V3Checksum::PseudoHeader);
        assert_eq!(bytes, V3_V4);
        let parsed = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap(), &cx(Version::V3, SRC4, DST4)).unwrap();
        assert_eq!(parsed, repr);
    }

    #[test]
    fn v3_ipv4_checksum_convention_mismatch_is_its_own_reason() {
        let repr = Repr {
            version: Version::V3,
            vrid: 51,
            priority: 150,
            adver_int_cs: 100,
            addrs: vec!["192.0.2.100".parse().unwrap()],
            auth: Auth::None,
        };
        let plain = repr.to_bytes(SRC4, DST4, V3Checksum::Plain);
        let e = Repr::parse(&Packet::new_checked(&plain[..]).unwrap(), &cx(Version::V3, SRC4, DST4)).unwrap_err();
        assert_eq!(e, DropReason::ChecksumModeMismatch);
        let mut c = cx(Version::V3, SRC4, DST4);
        c.v3_checksum = V3Checksum::Plain;
        assert!(Repr::parse(&Packet::new_checked(&plain[..]).unwrap(), &c).is_ok());
        let mut bad = plain.clone();
        bad[7] ^= 0x55;
        assert_eq!(Repr::parse(&Packet::new_checked(&bad[..]).unwrap(), &c).unwrap_err(), DropReason::BadChecksum);
    }

    #[test]
    fn v2_with_simple_auth_round_trips() {
        let repr = Repr {
            version: Version::V2,
            vrid: 7,
            priority: 100,
            adver_int_cs: 100,
            addrs: vec!["192.0.2.100".parse().unwrap(), "192.0.2.101".parse().unwrap()],
            auth: Auth::simple("secret").unwrap(),
        };
        let bytes = repr.to_bytes(SRC4, DST4, V3Checksum::PseudoHeader);
        assert_eq!(bytes.len(), 8 + 8 + 8);
        assert_eq!(&bytes[..6], &[0x21, 7, 100, 2, 1, 1], "version 2, type 1, auth type 1, 1 second");
        assert_eq!(&bytes[16..], b"secret\0\0");
        // The v2 checksum covers only the message: it verifies whatever the IP addresses.
        let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
        let parsed = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap(), &cx(Version::V2, other, DST4)).unwrap();
        assert_eq!(parsed, repr);
    }

    #[test]
    fn v3_ipv6_round_trips_and_checks_the_pseudo_header() {
        let src: IpAddr = "fe80::1".parse().unwrap();
        let dst = IpAddr::V6(MULTICAST_V6);
        let repr = Repr {
            version: Version::V3,
            vrid: 9,
            priority: 200,
            adver_int_cs: 1,
            addrs: vec!["2001:db8::100".parse().unwrap()],
            auth: Auth::None,
        };
        let bytes = repr.to_bytes(src, dst, V3Checksum::Plain);
        assert_eq!(bytes.len(), 24);
        assert_eq!(Repr::parse(&Packet::new_checked(&bytes[..]).unwrap(), &cx(Version::V3, src, dst)).unwrap(), repr);
        let other: IpAddr = "fe80::2".parse().unwrap();
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bytes[..]).unwrap(), &cx(Version::V3, other, dst)).unwrap_err(),
            DropReason::BadChecksum
        );
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let good = V3_V4.to_vec();
        let parse = |b: &[u8], c: RxContext| Packet::new_checked(b).and_then(|p| Repr::parse(&p, &c));
        let c = cx(Version::V3, SRC4, DST4);
        assert_eq!(parse(&good[..5], c), Err(DropReason::Truncated));
        assert_eq!(parse(&good, RxContext { ttl: 64, ..c }), Err(DropReason::TtlNot255));
        assert_eq!(parse(&good, cx(Version::V2, SRC4, DST4)), Err(DropReason::BadVersion));
        let mut t = good.clone();
        t[0] = 0x32;
        assert_eq!(parse(&t, c), Err(DropReason::BadType));
        let mut n = good.clone();
        n[3] = 2;
        assert_eq!(parse(&n, c), Err(DropReason::AddrCountMismatch));
        let mut z = good.clone();
        z[4] = 0;
        z[5] = 0;
        let repr_zero = Repr { version: Version::V3, vrid: 51, priority: 150, adver_int_cs: 0, addrs: vec!["192.0.2.100".parse().unwrap()], auth: Auth::None };
        let z2 = repr_zero.to_bytes(SRC4, DST4, V3Checksum::PseudoHeader);
        assert_eq!(parse(&z, c), Err(DropReason::BadChecksum));
        assert_eq!(parse(&z2, c), Err(DropReason::IntervalZero));
        let mut long = good.clone();
        long.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse(&long, c), Err(DropReason::AddrCountMismatch));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80), v2 in any::<bool>(), v6 in any::<bool>(), ttl in any::<u8>()) {
            let (src, dst) = if v6 { ("fe80::1".parse().unwrap(), IpAddr::V6(MULTICAST_V6)) } else { (SRC4, DST4) };
            let version = if v2 { Version::V2 } else { Version::V3 };
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&p, &RxContext { version, src, dst, ttl, v3_checksum: V3Checksum::PseudoHeader });
            }
        }

        #[test]
        fn emit_then_parse_is_identity(vrid in 1u8.., prio in any::<u8>(), cs in 1u16..4096, n in 1usize..8, v6 in any::<bool>()) {
            let (src, dst) = if v6 { ("fe80::1".parse().unwrap(), IpAddr::V6(MULTICAST_V6)) } else { (SRC4, DST4) };
            let addrs = (0..n).map(|i| if v6 { IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16)) } else { IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8)) }).collect();
            let repr = Repr { version: Version::V3, vrid, priority: prio, adver_int_cs: cs, addrs, auth: Auth::None };
            let bytes = repr.to_bytes(src, dst, V3Checksum::PseudoHeader);
            let got = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap(), &cx(Version::V3, src, dst)).unwrap();
            prop_assert_eq!(got, repr);
        }
    }
}
