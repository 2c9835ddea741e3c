//! Versioned postcard records. postcard is not self-describing, so every persisted record and
//! wire message starts with a format version byte; a record this build does not know is an
//! error naming what was being read, never a guess.

use serde::{de::DeserializeOwned, Serialize};

use crate::depth::{self, Refused};

/// Format version written in front of every record.
pub const RECORD_V1: u8 = 1;

/// How deep a decoded record may nest (each struct field, element, variant and `Some` is a
/// level). Raft's messages nest about 12 levels; records come from peers, so a recursive type
/// in them (`Command::Batch`, openraft's error chains) must not decode thousands of levels deep
/// and overflow the stack (`depth.rs`).
pub const MAX_DEPTH: usize = 64;

/// Why a record could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Zero bytes where a record was expected.
    #[error("{what}: empty record")]
    Empty {
        /// What was being decoded.
        what: String,
    },
    /// Written by a newer (or foreign) format.
    #[error("{what}: unknown record format version {version} (this build reads version {RECORD_V1})")]
    Version {
        /// What was being decoded.
        what: String,
        /// The version byte found.
        version: u8,
    },
    /// Truncated or corrupt body.
    #[error("{what}: corrupt record: {reason}")]
    Corrupt {
        /// What was being decoded.
        what: String,
        /// postcard's reason.
        reason: String,
    },
    /// Could not encode (only for values postcard cannot represent).
    #[error("encoding {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// postcard's reason.
        reason: String,
    },
}

/// Encodes `value` as `[RECORD_V1, postcard...]`.
pub fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![RECORD_V1];
    let body = postcard::to_allocvec(value).map_err(|e| CodecError::Encode {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a record written by [`encode`]; trailing bytes are corruption too.
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or_else(|| CodecError::Empty {
        what: what.to_string(),
    })?;
    if version != RECORD_V1 {
        return Err(CodecError::Version {
            what: what.to_string(),
            version,
        });
    }
    let corrupt = |reason: String| CodecError::Corrupt {
        what: what.to_string(),
        reason,
    };
    let mut de = postcard::Deserializer::from_bytes(body);
    let value = depth::deserialize(&mut de, MAX_DEPTH).map_err(|e| match e {
        Refused::TooDeep => corrupt(format!("nested deeper than {MAX_DEPTH} levels")),
        Refused::Format(e) => corrupt(e.to_string()),
    })?;
    let rest = de.finalize().map_err(|e| corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} unexpected trailing bytes", rest.len())));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Command;

    #[test]
    fn round_trip_and_errors() {
        let c = Command::Put { ns: "a".into(), key: "b".into(), value: vec![1, 2, 3] };
        let b = encode("cmd", &c).unwrap();
        assert_eq!(decode::<Command>("cmd", &b).unwrap(), c);
        assert!(matches!(decode::<Command>("cmd", &[]), Err(CodecError::Empty { .. })));
        let mut v2 = b.clone();
        v2[0] = 2;
        assert!(matches!(decode::<Command>("cmd", &v2), Err(CodecError::Version { version: 2, .. })));
        for cut in 1..b.len() {
            assert!(decode::<Command>("cmd", &b[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(decode::<Command>("cmd", &long), Err(CodecError::Corrupt { .. })));
    }

    /// `Batch(vec![Batch(vec![… Put …])])`, `levels` deep, encoded by hand: two bytes a level
    /// (the variant index, a length of one), as a peer could send it.
    fn nested_batches(levels: usize) -> Vec<u8> {
        let put = encode("put", &Command::Put { ns: "a".into(), key: "b".into(), value: vec![1] }).unwrap();
        let batch_variant = 3; // Put, Delete, Replace, Batch
        let mut out = vec![RECORD_V1];
        for _ in 0..levels {
            out.extend_from_slice(&[batch_variant, 1]);
        }
        out.extend_from_slice(&put[1..]);
        out
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let three = nested_batches(3);
        let want = (0..3).fold(Command::Put { ns: "a".into(), key: "b".into(), value: vec![1] }, |c, _| Command::Batch(vec![c]));
        assert_eq!(decode::<Command>("cmd", &three).unwrap(), want);
        assert_eq!(encode("cmd", &want).unwrap(), three, "the hand encoding is postcard's");
        // Deep enough to overflow a 2-MiB stack without the limit (checked: the test aborts).
        let deep = nested_batches(200_000);
        let e = decode::<Command>("cmd", &deep).unwrap_err();
        assert!(e.to_string().contains("nested deeper than 64 levels"), "{e}");
        // The same inside a Raft message, and in an error chain of an answer.
        let rpc = crate::network::RpcRequest::AppendEntries(openraft::raft::AppendEntriesRequest {
            vote: Default::default(),
            prev_log_id: None,
            entries: vec![openraft::Entry { log_id: Default::default(), payload: openraft::EntryPayload::Normal(want) }],
            leader_commit: None,
        });
        let ok = encode("rpc", &rpc).unwrap();
        assert!(decode::<crate::network::RpcRequest>("rpc", &ok).is_ok());
        // anyerror's AnyError { typ: None, msg: "", source: Some(…), context: [], backtrace: None }
        let chain = |levels: usize| {
            let mut out = vec![RECORD_V1];
            out.extend(std::iter::repeat_n([0u8, 0, 1], levels).flatten());
            out.extend_from_slice(&[0, 0, 0, 0, 0]);
            out.extend(std::iter::repeat_n([0u8, 0], levels).flatten());
            out
        };
        assert!(decode::<openraft::AnyError>("chain", &chain(3)).is_ok());
        let e = decode::<openraft::AnyError>("chain", &chain(200_000)).unwrap_err();
        assert!(e.to_string().contains("nested deeper"), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u32 = 12345;
        for len in 0..200 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decode::<Command>("cmd", &buf);
            let _ = decode::<crate::network::RpcRequest>("rpc", &buf);
        }
    }
}
