//! Versioned postcard records. postcard is not self-describing, so every persisted record and
//! wire message starts with a format version byte; a record this build does not know is an
//! error naming what was being read, never a guess.

use serde::{de::DeserializeOwned, Serialize};

/// Format version written in front of every record.
pub const RECORD_V1: u8 = 1;

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
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| CodecError::Corrupt {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CodecError::Corrupt {
            what: what.to_string(),
            reason: format!("{} unexpected trailing bytes", rest.len()),
        });
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
