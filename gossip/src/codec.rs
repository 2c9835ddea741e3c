//! The gossip wire format: postcard with a version byte in front of every SWIM packet and of
//! every custom broadcast item. postcard is not self-describing, so the byte is what lets a
//! future format be told apart (and refused clearly) instead of misparsed.

use bytes::{Buf, BufMut};
use foca::{Header, Member};
use serde::{Deserialize, Serialize};

use crate::member::NodeId;

/// Version of the SWIM packet format written by this build.
pub const WIRE_VERSION: u8 = 1;
/// Version of the broadcast item format written by this build.
pub const BROADCAST_VERSION: u8 = 1;

/// Why bytes could not be encoded or decoded; decoding garbage yields this, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Nothing to decode.
    #[error("empty gossip packet")]
    Empty,
    /// Written by a build speaking another format version.
    #[error("unsupported gossip wire version {found} (this node speaks {supported})")]
    UnsupportedVersion {
        /// The version byte received.
        found: u8,
        /// The one we speak.
        supported: u8,
    },
    /// postcard refused the bytes.
    #[error("malformed gossip {what}: {source}")]
    Decode {
        /// Which part.
        what: &'static str,
        /// postcard's reason.
        source: postcard::Error,
    },
    /// The input was not one contiguous slice.
    #[error("gossip packet buffer is not contiguous")]
    NotContiguous,
    /// Metadata for one node name more than a node keeps: refused rather than grown without end
    /// (a member could otherwise announce any number of made-up names).
    #[error("gossip metadata for a new node name {name:?} refused: this node already keeps {limit} names")]
    TooManyNames {
        /// The new name.
        name: String,
        /// How many names a node keeps.
        limit: usize,
    },
    /// The output buffer is full (packet larger than `max_packet_size`).
    #[error("encoding gossip {what}: {source}")]
    Encode {
        /// Which part.
        what: &'static str,
        /// postcard's reason.
        source: postcard::Error,
    },
}

/// foca's [`foca::Codec`] over postcard, with [`WIRE_VERSION`] in front of each header.
#[derive(Debug, Default, Clone, Copy)]
pub struct PostcardCodec;

fn encode<T: Serialize>(
    what: &'static str,
    value: &T,
    mut buf: impl BufMut,
) -> Result<(), CodecError> {
    let bytes =
        postcard::to_allocvec(value).map_err(|source| CodecError::Encode { what, source })?;
    if buf.remaining_mut() < bytes.len() {
        return Err(CodecError::Encode {
            what,
            source: postcard::Error::SerializeBufferFull,
        });
    }
    buf.put_slice(&bytes);
    Ok(())
}

impl foca::Codec<NodeId> for PostcardCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeId>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        if !buf.has_remaining_mut() {
            return Err(CodecError::Encode {
                what: "header",
                source: postcard::Error::SerializeBufferFull,
            });
        }
        buf.put_u8(WIRE_VERSION);
        encode("header", header, buf)
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<NodeId>, CodecError> {
        if !buf.has_remaining() {
            return Err(CodecError::Empty);
        }
        let version = buf.get_u8();
        if version != WIRE_VERSION {
            return Err(CodecError::UnsupportedVersion {
                found: version,
                supported: WIRE_VERSION,
            });
        }
        take(&mut buf, "header")
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeId>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        encode("member", member, buf)
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<NodeId>, CodecError> {
        take(&mut buf, "member")
    }
}

/// Decodes one value from the front of `buf` and advances past exactly what it used.
fn take<T: for<'de> Deserialize<'de>>(
    buf: &mut impl Buf,
    what: &'static str,
) -> Result<T, CodecError> {
    let chunk = buf.chunk();
    if chunk.len() != buf.remaining() {
        // foca always hands over one contiguous slice; anything else is a caller bug.
        return Err(CodecError::NotContiguous);
    }
    let (value, rest) =
        postcard::take_from_bytes(chunk).map_err(|source| CodecError::Decode { what, source })?;
    let used = chunk.len() - rest.len();
    buf.advance(used);
    Ok(value)
}

/// A custom broadcast item: gossiped node metadata, or a leave notice that lets receivers
/// tell a graceful leave from a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BroadcastItem {
    /// Latest-wins metadata of `node`.
    Metadata {
        /// The owner.
        node: NodeId,
        /// Owner's counter.
        version: u64,
        /// Opaque payload.
        data: Vec<u8>,
    },
    /// `node` is leaving on purpose.
    Leaving {
        /// The leaver.
        node: NodeId,
    },
}

impl BroadcastItem {
    /// Encodes with [`BROADCAST_VERSION`] in front.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = vec![BROADCAST_VERSION];
        encode("broadcast", self, &mut out)?;
        Ok(out)
    }

    /// Decodes one item; the whole slice must be used.
    pub fn from_bytes(data: &[u8]) -> Result<Self, CodecError> {
        let (&version, rest) = data.split_first().ok_or(CodecError::Empty)?;
        if version != BROADCAST_VERSION {
            return Err(CodecError::UnsupportedVersion {
                found: version,
                supported: BROADCAST_VERSION,
            });
        }
        postcard::from_bytes(rest).map_err(|source| CodecError::Decode {
            what: "broadcast",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::{Codec, Message, State};

    fn id(n: &str) -> NodeId {
        NodeId {
            name: n.into(),
            addr: "127.0.0.1:7000".parse().unwrap(),
            incarnation: 42,
        }
    }

    #[test]
    fn header_and_members_round_trip() {
        let mut c = PostcardCodec;
        let h = Header {
            src: id("a"),
            src_incarnation: 3,
            dst: id("b"),
            message: Message::Ping(9),
        };
        let m = Member::new(id("c"), 2, State::Suspect);
        let mut buf = Vec::new();
        c.encode_header(&h, &mut buf).unwrap();
        c.encode_member(&m, &mut buf).unwrap();
        assert_eq!(buf[0], WIRE_VERSION);
        let mut rd = &buf[..];
        assert_eq!(c.decode_header(&mut rd).unwrap(), h);
        assert_eq!(c.decode_member(&mut rd).unwrap(), m);
        assert!(rd.is_empty(), "decoder must consume exactly what it read");
    }

    #[test]
    fn garbage_is_a_clear_error_not_a_panic() {
        let mut c = PostcardCodec;
        assert!(matches!(c.decode_header(&b""[..]), Err(CodecError::Empty)));
        let e = c.decode_header(&b"\x07abc"[..]).unwrap_err();
        assert!(
            e.to_string().contains("unsupported gossip wire version 7"),
            "{e}"
        );
        let e = c.decode_header(&b"\x01\xff\xff\xff"[..]).unwrap_err();
        assert!(e.to_string().contains("malformed gossip header"), "{e}");
        // Deterministic pseudo-random garbage: no input may panic.
        let mut x: u32 = 0x1234_5678;
        for len in 0..300 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = c.decode_header(&data[..]);
            let _ = c.decode_member(&data[..]);
            let _ = BroadcastItem::from_bytes(&data);
        }
    }

    #[test]
    fn truncated_packets_are_errors() {
        let mut c = PostcardCodec;
        let h = Header {
            src: id("a"),
            src_incarnation: 3,
            dst: id("b"),
            message: Message::Announce,
        };
        let mut buf = Vec::new();
        c.encode_header(&h, &mut buf).unwrap();
        for cut in 1..buf.len() {
            assert!(c.decode_header(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn encode_into_a_full_buffer_fails() {
        let mut c = PostcardCodec;
        let h = Header {
            src: id("a"),
            src_incarnation: 3,
            dst: id("b"),
            message: Message::Gossip,
        };
        let mut small = bytes::BytesMut::new().limit(8);
        let e = c.encode_header(&h, &mut small).unwrap_err();
        assert!(e.to_string().contains("encoding gossip header"), "{e}");
    }

    #[test]
    fn broadcast_items_are_versioned() {
        let item = BroadcastItem::Metadata {
            node: id("a"),
            version: 5,
            data: vec![1, 2, 3],
        };
        let bytes = item.to_bytes().unwrap();
        assert_eq!(BroadcastItem::from_bytes(&bytes).unwrap(), item);
        let mut future = bytes.clone();
        future[0] = 2;
        let e = BroadcastItem::from_bytes(&future).unwrap_err();
        assert!(
            e.to_string().contains("unsupported gossip wire version 2"),
            "{e}"
        );
        assert!(BroadcastItem::from_bytes(&[]).is_err());
        assert!(BroadcastItem::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }
}
