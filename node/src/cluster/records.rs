//! The node's records inside the replicated key/value state, and where they live. Values are
//! versioned postcard (`raft::codec`), so a record this build cannot read is an error, never a
//! silent default.

use serde::{Deserialize, Serialize};

/// Namespace of cluster-wide singletons (the CA).
pub const NS_CLUSTER: &str = "cluster";
/// Key of the cluster CA in [`NS_CLUSTER`].
pub const KEY_CA: &str = "ca";
/// Namespace of join tokens, keyed by token id.
pub const NS_TOKENS: &str = "tokens";
/// Namespace of nodes removed by an operator, keyed by node name.
pub const NS_REMOVED: &str = "removed";
/// The opaque key/value section (until the director's rules replace it).
pub const NS_KV: &str = "kv";

/// The cluster CA, replicated so every member can issue certificates to joiners (as k3s keeps
/// its CA in the datastore). The Raft store is mode 0600 for this reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A join token: only a hash of its secret is stored, so the state (and its snapshots) never
/// reveals a usable token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Short public id (first 12 hex digits of the secret's SHA-256) for list/revoke.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    pub created_unix: u64,
    pub expires_unix: Option<u64>,
    pub revoked: bool,
    pub description: String,
}

/// A node an operator removed: gossip must not re-add that identity as a learner. A restart
/// (a newer incarnation) makes it eligible again, as after `kubectl delete node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedRecord {
    /// The gossip incarnation seen when it was removed (0 when unknown).
    pub incarnation: u64,
}

/// Seconds since the epoch (token expiry is wall-clock time, comparable across nodes).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The longest join-token lifetime `token create` accepts: ten years. Longer is a typo (a token
/// that should not expire leaves `ttl` out), and a lifetime near `u64::MAX` seconds would wrap
/// the expiry time around to the past.
pub const MAX_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);

/// When a token created at `now` with lifetime `ttl` (humantime, e.g. "24h") expires, in
/// seconds since the epoch; `None` without a ttl. At least one second, so a token is usable once.
pub fn token_expiry(now: u64, ttl: Option<&str>) -> Result<Option<u64>, String> {
    let Some(t) = ttl else { return Ok(None) };
    let d = humantime::parse_duration(t).map_err(|e| format!("ttl {t:?}: {e}"))?;
    if d > MAX_TOKEN_TTL {
        return Err(format!(
            "ttl {t:?}: longer than {} (leave ttl out for a token that does not expire)",
            humantime::format_duration(MAX_TOKEN_TTL)
        ));
    }
    now.checked_add(d.as_secs().max(1)).map(Some).ok_or_else(|| format!("ttl {t:?}: the expiry time overflows"))
}

/// SHA-256 of a token secret, hex.
pub fn secret_hash(secret: &str) -> String {
    gossip::tls::Fingerprint::of(secret.as_bytes()).to_string()
}

/// Decides a join secret against the token records.
pub fn check_token<'a>(
    records: impl Iterator<Item = &'a [u8]>,
    secret: &str,
    now: u64,
) -> Result<(), String> {
    let hash = secret_hash(secret);
    for bytes in records {
        let Ok(t) = raft::codec::decode::<TokenRecord>("token record", bytes) else {
            continue;
        };
        if t.secret_sha256 != hash {
            continue;
        }
        if t.revoked {
            return Err(format!("join token {} was revoked", t.id));
        }
        if let Some(exp) = t.expires_unix {
            if now >= exp {
                return Err(format!("join token {} expired", t.id));
            }
        }
        return Ok(());
    }
    Err("unknown join token".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(secret: &str, expires: Option<u64>, revoked: bool) -> Vec<u8> {
        raft::codec::encode(
            "t",
            &TokenRecord {
                id: secret_hash(secret)[..12].into(),
                secret_sha256: secret_hash(secret),
                created_unix: 100,
                expires_unix: expires,
                revoked,
                description: String::new(),
            },
        )
        .unwrap()
    }

    #[test]
    fn token_expiry_is_bounded_and_never_wraps() {
        assert_eq!(token_expiry(100, None), Ok(None));
        assert_eq!(token_expiry(100, Some("1h")), Ok(Some(3700)));
        assert_eq!(token_expiry(100, Some("0s")), Ok(Some(101)));
        assert_eq!(token_expiry(100, Some("3650days")), Ok(Some(100 + 3650 * 86_400)));
        for bad in ["18446744073709551615s", "3651days", "500years"] {
            let e = token_expiry(100, Some(bad)).unwrap_err();
            assert!(e.contains(bad) && e.contains("longer than"), "{e}");
        }
        assert!(token_expiry(u64::MAX, Some("1h")).unwrap_err().contains("overflows"));
        assert!(token_expiry(100, Some("soon")).unwrap_err().contains("\"soon\""));
    }

    #[test]
    fn tokens_expire_and_revoke() {
        let recs = [rec("a", None, false), rec("b", Some(200), false), rec("c", None, true)];
        let it = || recs.iter().map(|v| v.as_slice());
        assert!(check_token(it(), "a", 1000).is_ok());
        assert!(check_token(it(), "b", 199).is_ok());
        assert!(check_token(it(), "b", 200).unwrap_err().contains("expired"));
        assert!(check_token(it(), "c", 0).unwrap_err().contains("revoked"));
        assert!(check_token(it(), "zzz", 0).unwrap_err().contains("unknown"));
    }
}
