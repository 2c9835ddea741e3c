//! The TCP header, as much of it as a half-open probe sends and reads (RFC 9293 §3.1).
//!
//! Modelled on smoltcp's `wire/tcp.rs`: [`Packet`] is a zero-copy view over a buffer whose
//! accessors cannot panic once [`Packet::new_checked`] accepted it, and [`Repr`] is the typed form
//! with [`Repr::parse`] and [`Repr::emit`]. Only the MSS option is understood; other options are
//! skipped, and malformed options end the option walk rather than the parse (the probe needs the
//! ports, numbers and flags, never the options of a reply).

use std::net::IpAddr;

mod field {
    pub type Field = std::ops::Range<usize>;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ: Field = 4..8;
    pub const ACK: Field = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
    pub const OPTIONS_START: usize = 20;
}

/// The fixed header length (no options).
pub const HEADER_LEN: usize = field::OPTIONS_START;

/// A received or emitted buffer is not a TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Shorter than 20 bytes, or shorter than its own data offset says.
    #[error("truncated TCP header")]
    Truncated,
    /// Data offset below 5 words.
    #[error("TCP data offset below 5")]
    BadOffset,
}

/// TCP control bits (RFC 9293 §3.1). A plain byte so unknown combinations survive a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment field is significant.
    pub const ACK: u8 = 0x10;

    /// Whether every bit of `bits` is set.
    pub fn has(self, bits: u8) -> bool {
        self.0 & bits == bits
    }
}

/// A read/write view of a TCP header in a buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap a buffer without checking it (for emitting into a buffer of known size).
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wrap a buffer and check that every accessor is in bounds.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Packet { buffer };
        p.check_len()?;
        Ok(p)
    }

    /// At least the fixed header, a data offset of at least 5 words, and the whole header
    /// (options included) inside the buffer.
    pub fn check_len(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(Error::BadOffset);
        }
        if b.len() < hl {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    fn u16_at(&self, f: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[f];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn u32_at(&self, f: field::Field) -> u32 {
        let b = &self.buffer.as_ref()[f];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }
    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        self.u32_at(field::SEQ)
    }
    /// Acknowledgment number (meaningful only with ACK set).
    pub fn ack_number(&self) -> u32 {
        self.u32_at(field::ACK)
    }
    /// Header length in bytes, from the data offset.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }
    /// Control bits.
    pub fn flags(&self) -> Flags {
        Flags(self.buffer.as_ref()[field::FLAGS])
    }
    /// Receive window.
    pub fn window_len(&self) -> u16 {
        self.u16_at(field::WINDOW)
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }
    /// The options bytes.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS_START..self.header_len()]
    }

    /// The MSS option, if present and well-formed.
    pub fn mss(&self) -> Option<u16> {
        let mut o = self.options();
        while let Some((&kind, rest)) = o.split_first() {
            match kind {
                0 => return None,
                1 => o = rest,
                _ => {
                    let len = usize::from(*rest.first()?);
                    if len < 2 || len > o.len() {
                        return None;
                    }
                    if kind == 2 && len == 4 {
                        return Some(u16::from_be_bytes([o[2], o[3]]));
                    }
                    o = &o[len..];
                }
            }
        }
        None
    }

    /// Whether the checksum over the IPv4/IPv6 pseudo-header and the whole buffer (header and
    /// payload) is right.
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        checksum(src, dst, self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn put16(&mut self, f: field::Field, v: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&v.to_be_bytes());
    }
    fn put32(&mut self, f: field::Field, v: u32) {
        self.buffer.as_mut()[f].copy_from_slice(&v.to_be_bytes());
    }
    /// Set the source port.
    pub fn set_src_port(&mut self, v: u16) {
        self.put16(field::SRC_PORT, v)
    }
    /// Set the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        self.put16(field::DST_PORT, v)
    }
    /// Set the sequence number.
    pub fn set_seq_number(&mut self, v: u32) {
        self.put32(field::SEQ, v)
    }
    /// Set the acknowledgment number.
    pub fn set_ack_number(&mut self, v: u32) {
        self.put32(field::ACK, v)
    }
    /// Set the header length (a multiple of 4, 20..=60).
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFF] = ((len / 4) as u8) << 4;
    }
    /// Set the control bits.
    pub fn set_flags(&mut self, f: Flags) {
        self.buffer.as_mut()[field::FLAGS] = f.0;
    }
    /// Set the receive window.
    pub fn set_window_len(&mut self, v: u16) {
        self.put16(field::WINDOW, v)
    }
    /// Set the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.put16(field::CHECKSUM, v)
    }
    /// Compute and store the checksum over the pseudo-header and the whole buffer.
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let c = checksum(src, dst, self.buffer.as_ref());
        self.set_checksum(c);
    }
}

/// The typed form of a TCP header with no payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number; `Some` exactly when ACK is set.
    pub ack: Option<u32>,
    /// Control bits other than ACK (ACK is `ack.is_some()`).
    pub flags: Flags,
    /// Receive window.
    pub window: u16,
    /// The MSS option.
    pub mss: Option<u16>,
}

impl Repr {
    /// Parse a checked view. Checksums are not verified here: the kernel verified it before a raw
    /// socket sees the segment (and IPv4 raw sockets see it whatever its checksum).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr, Error> {
        p.check_len()?;
        let f = p.flags();
        Ok(Repr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq_number(),
            ack: f.has(Flags::ACK).then(|| p.ack_number()),
            flags: Flags(f.0 & !Flags::ACK),
            window: p.window_len(),
            mss: p.mss(),
        })
    }

    /// Bytes [`Repr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + if self.mss.is_some() { 4 } else { 0 }
    }

    /// Write the header into `p` (exactly [`Repr::buffer_len`] bytes). With `addrs` the checksum
    /// is filled in for that pseudo-header; without, it is left 0 (IPv6 raw sockets with
    /// `IPV6_CHECKSUM` have the kernel fill it).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>, addrs: Option<(IpAddr, IpAddr)>) {
        let len = self.buffer_len();
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq_number(self.seq);
        p.set_ack_number(self.ack.unwrap_or(0));
        p.set_header_len(len);
        p.set_flags(Flags(self.flags.0 | if self.ack.is_some() { Flags::ACK } else { 0 }));
        p.set_window_len(self.window);
        p.set_checksum(0);
        p.buffer.as_mut()[field::URGENT].fill(0);
        if let Some(mss) = self.mss {
            let o = &mut p.buffer.as_mut()[field::OPTIONS_START..field::OPTIONS_START + 4];
            o[0] = 2;
            o[1] = 4;
            o[2..4].copy_from_slice(&mss.to_be_bytes());
        }
        if let Some((src, dst)) = addrs {
            p.fill_checksum(src, dst);
        }
    }
}

/// RFC 1071 ones'-complement sum, folded, not inverted.
fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The TCP checksum of `segment` (checksum field included as it is) under the pseudo-header of
/// RFC 9293 §3.1 (IPv4) or RFC 8200 §8.1 (IPv6). Mixed families give 0xffff (never valid).
pub fn checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let len = segment.len() as u32;
    let mut acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum(sum(0, &s.octets()), &d.octets()) + 6 + (len & 0xffff),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum(sum(0, &s.octets()), &d.octets()) + (len >> 16) + (len & 0xffff) + 6,
        _ => return 0xffff,
    };
    acc = sum(acc, segment);
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN-ACK laid out the way Linux sends one (header only, checksum zeroed): 8080 → 40000,
    /// seq 0x1a2b3c4d, ack 0x65, options MSS 65495, SACK-permitted, timestamps, NOP, window
    /// scale 7 (the layout a loopback listener answers with).
    const SYN_ACK: [u8; 40] = [
        0x1f, 0x90, 0x9c, 0x40, 0x1a, 0x2b, 0x3c, 0x4d, 0x00, 0x00, 0x00, 0x65, 0xa0, 0x12, 0xff, 0xcb, 0x00, 0x00, 0x00, 0x00, // fixed
        0x02, 0x04, 0xff, 0xd7, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x01, 0x03, 0x03, 0x07, // options
    ];

    #[test]
    fn parses_a_syn_ack_with_options() {
        let p = Packet::new_checked(&SYN_ACK[..]).unwrap();
        let r = Repr::parse(&p).unwrap();
        assert_eq!(
            r,
            Repr { src_port: 8080, dst_port: 40000, seq: 0x1a2b_3c4d, ack: Some(0x65), flags: Flags(Flags::SYN), window: 0xffcb, mss: Some(65495) }
        );
        assert_eq!(p.header_len(), 40);
    }

    #[test]
    fn emit_parse_round_trip_with_a_valid_checksum() {
        let (src, dst): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "198.51.100.7".parse().unwrap());
        let r = Repr { src_port: 33000, dst_port: 80, seq: 0xdead_beef, ack: None, flags: Flags(Flags::SYN), window: 64240, mss: Some(1460) };
        let mut buf = vec![0xaa; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]), Some((src, dst)));
        assert_eq!(
            buf,
            [0x80, 0xe8, 0x00, 0x50, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0x60, 0x02, 0xfa, 0xf0, buf[16], buf[17], 0, 0, 2, 4, 0x05, 0xb4]
        );
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum(src, dst));
        assert!(!p.verify_checksum(dst, "192.0.2.2".parse().unwrap()));
        assert_eq!(Repr::parse(&p).unwrap(), r);
    }

    #[test]
    fn checksum_matches_a_known_value() {
        // Worked by hand: pseudo-header 10.0.0.1 → 10.0.0.2, proto 6, length 20, and a SYN
        // 1234 → 80, seq 1, data offset 5, window 0.
        let seg = [0x04, 0xd2, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0, 0, 0, 0, 0, 0];
        // pseudo 0x0a00+0x0001+0x0a00+0x0002+0x0006+0x0014 = 0x141d,
        // segment 0x04d2+0x0050+0x0001+0x5002 = 0x5525; sum 0x6942, complement 0x96bd.
        assert_eq!(checksum("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), &seg), 0x96bd);
    }

    #[test]
    fn v6_checksum_verifies() {
        let (src, dst): (IpAddr, IpAddr) = ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
        let r = Repr { src_port: 1, dst_port: 2, seq: 3, ack: Some(4), flags: Flags(Flags::RST), window: 0, mss: None };
        let mut buf = [0u8; 20];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]), Some((src, dst)));
        assert!(Packet::new_checked(&buf[..]).unwrap().verify_checksum(src, dst));
    }

    #[test]
    fn short_or_bad_offset_is_an_error_never_a_panic() {
        assert_eq!(Packet::new_checked(&SYN_ACK[..19]).unwrap_err(), Error::Truncated);
        assert_eq!(Packet::new_checked(&SYN_ACK[..39]).unwrap_err(), Error::Truncated, "header says 40 bytes");
        let mut b = SYN_ACK;
        b[12] = 0x40;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::BadOffset);
        // Every prefix and a set of corrupted option bytes: no panic anywhere.
        for n in 0..SYN_ACK.len() {
            if let Ok(p) = Packet::new_checked(&SYN_ACK[..n]) {
                let _ = Repr::parse(&p);
            }
        }
        for v in [0u8, 1, 2, 3, 0xff] {
            let mut b = SYN_ACK;
            b[21] = v;
            let _ = Repr::parse(&Packet::new_checked(&b[..]).unwrap());
        }
    }
}
