//! Join tokens (k3s style): the CA fingerprint a joiner pins, plus a secret the cluster checks.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use super::TlsError;

const TOKEN_PREFIX: &str = "corral1";

/// SHA-256 of a CA certificate's DER. A joiner has no CA yet; the token carries this so the
/// first TLS handshake can still authenticate the server (no trust on first use).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        let bad = |why: &str| TlsError::BadToken(format!("CA fingerprint {s:?}: {why}"));
        if s.len() != 64 {
            return Err(bad("must be 64 hex digits (SHA-256)"));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(|| bad("not ASCII"))?, 16)
                    .map_err(|_| bad("not hexadecimal"))?;
        }
        Ok(Self(out))
    }
}

/// A join token: `corral1::<CA sha256 hex>::<secret>`. Handed to an operator by a member,
/// given to `corrald join`; the fingerprint authenticates the cluster, the secret the joiner.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The cluster CA the joiner will accept.
    pub fingerprint: Fingerprint,
    /// The secret the cluster's [`TokenValidator`] checks.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret into logs.
        f.debug_struct("JoinToken")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A new token for this CA with a random 128-bit secret from the OS RNG.
    pub fn generate(fingerprint: Fingerprint) -> Result<Self, TlsError> {
        use ring::rand::SecureRandom;
        let mut raw = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| TlsError::BadToken("the OS random number generator failed".into()))?;
        let secret = raw.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            fingerprint,
            secret,
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}::{}::{}", self.fingerprint, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        let mut parts = s.trim().splitn(3, "::");
        let (Some(prefix), Some(fp), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TlsError::BadToken(format!(
                "expected {TOKEN_PREFIX}::<ca-sha256>::<secret>"
            )));
        };
        if prefix != TOKEN_PREFIX {
            return Err(TlsError::BadToken(format!(
                "unknown prefix {prefix:?}, expected {TOKEN_PREFIX:?}"
            )));
        }
        if secret.is_empty() || secret.len() > 256 {
            return Err(TlsError::BadToken("secret must be 1 to 256 bytes".into()));
        }
        Ok(Self {
            fingerprint: fp.parse()?,
            secret: secret.to_string(),
        })
    }
}

/// Why a join secret was refused; sent back to the joiner verbatim, so keep it non-sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Why(pub String);

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decides whether a join secret is acceptable. The node implements it over its replicated
/// state (expiry, revocation); this crate only asks the question.
pub trait TokenValidator: Send + Sync + 'static {
    /// `Ok(())` admits the joiner; `Err(why)` refuses it and `why` is reported to it.
    fn validate(&self, secret: &str) -> Result<(), Why>;

    /// Whether a joiner from `remote` may take `name`: a cluster refuses the name of a member
    /// that is alive elsewhere (a cloned configuration would otherwise make two processes one
    /// node). Everything is admitted by default.
    fn admits_name(&self, _name: &str, _remote: std::net::SocketAddr) -> Result<(), Why> {
        Ok(())
    }
}

/// An in-memory token set, for tests and for a single bootstrap node before Raft holds tokens.
#[derive(Debug, Default)]
pub struct MemoryTokens {
    secrets: Mutex<HashSet<String>>,
}

impl MemoryTokens {
    /// Admits `secret` from now on.
    pub fn insert(&self, secret: &str) {
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(secret.to_string());
    }

    /// Stops admitting `secret` (revocation).
    pub fn revoke(&self, secret: &str) {
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(secret);
    }
}

impl TokenValidator for MemoryTokens {
    fn validate(&self, secret: &str) -> Result<(), Why> {
        // Compare digests, not the secrets, so timing cannot reveal a valid prefix.
        let digest = |s: &str| Fingerprint::of(s.as_bytes());
        let wanted = digest(secret);
        let set = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let ok = set.iter().any(|s| digest(s) == wanted);
        if ok {
            Ok(())
        } else {
            Err(Why("unknown or revoked join token".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_hides_secret_in_debug() {
        let t = JoinToken::generate(Fingerprint::of(b"ca")).unwrap();
        let s = t.to_string();
        assert!(s.starts_with("corral1::"));
        assert_eq!(s.parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn malformed_tokens_are_clear_errors() {
        for (bad, needle) in [
            ("", "expected corral1::"),
            ("k10::aa::b", "unknown prefix"),
            ("corral1::abcd::s", "64 hex digits"),
            (
                &format!("corral1::{}::s", "zz".repeat(32)),
                "not hexadecimal",
            ),
            (&format!("corral1::{}::", "ab".repeat(32)), "secret must be"),
            (&format!("corral1::{}é::s", "ab".repeat(31)), "fingerprint"),
        ] {
            let err = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

    #[test]
    fn memory_tokens_admit_and_revoke() {
        let v = MemoryTokens::default();
        assert!(v.validate("a").is_err());
        v.insert("a");
        assert!(v.validate("a").is_ok());
        assert!(v.validate("b").is_err());
        v.revoke("a");
        assert!(v.validate("a").is_err());
    }
}
