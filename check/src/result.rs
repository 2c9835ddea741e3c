//! What one check attempt says: ok or a typed failure reason, plus how long it took.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

/// Which part of an attempt ran out of time, so an operator can tell "nothing listens / SYN dropped"
/// from "it accepted but never answered".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The TCP connection was not established within `connect_timeout`.
    Connect,
    /// Connected (or sent, for datagram checks) but the answer did not arrive within `read_timeout`.
    Read,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Read => "read",
        })
    }
}

/// Why a DNS check failed, kept apart from transport failures so the alert names the DNS problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsFailure {
    /// The server answered with a non-zero RCODE (RFC 1035 §4.1.1), e.g. 2 SERVFAIL, 3 NXDOMAIN.
    Rcode(u8),
    /// The answer lacks at least one expected address.
    WrongAnswer {
        /// Addresses the definition requires.
        expected: Vec<IpAddr>,
        /// Addresses the server returned (A and AAAA records only).
        got: Vec<IpAddr>,
    },
    /// The reply had the TC bit set, so the answer section cannot be checked (we only speak UDP).
    Truncated,
}

fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "error",
    }
}

fn addr_list(list: &[IpAddr]) -> String {
    if list.is_empty() {
        return "nothing".into();
    }
    list.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsFailure::Rcode(r) => write!(f, "server answered {} (rcode {r})", rcode_name(*r)),
            DnsFailure::WrongAnswer { expected, got } => {
                write!(f, "expected {} in the answer, got {}", addr_list(expected), addr_list(got))
            }
            DnsFailure::Truncated => f.write_str("answer truncated (TC bit), cannot check it over UDP"),
        }
    }
}

/// Why an attempt failed. Typed so the scheduler can count failures by kind and an operator reads a
/// plain sentence instead of an errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FailReason {
    /// TCP RST to our SYN, or ICMP port unreachable for a UDP probe: nothing listens there.
    #[error("connection refused")]
    Refused,
    /// The connect or the answer took longer than allowed.
    #[error("{0} timeout")]
    Timeout(Phase),
    /// No route, or an ICMP host/network unreachable came back.
    #[error("host or network unreachable")]
    Unreachable,
    /// The peer reset or closed the connection in the middle of the exchange.
    #[error("connection reset by peer")]
    Reset,
    /// HTTP status not in the accepted list.
    #[error("unexpected HTTP status {0}")]
    BadStatus(u16),
    /// The MD5 of the body (keepalived `genhash`) differs from the configured digest.
    #[error("body digest mismatch: expected {expected}, got {got}")]
    BadDigest {
        /// Digest from the definition (lowercase hex).
        expected: String,
        /// Digest of the body received (lowercase hex).
        got: String,
    },
    /// The peer answered something we cannot parse or that does not match what we asked.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// TLS handshake or certificate verification failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The DNS server answered, but not what we wanted.
    #[error("DNS: {0}")]
    Dns(DnsFailure),
    /// The script exited with a code meaning "down".
    #[error("script exited with status {0}")]
    ScriptExit(i32),
    /// The script was killed by a signal it did not get from us.
    #[error("script killed by signal {0}")]
    ScriptSignal(i32),
    /// The script ran past its timeout and was killed.
    #[error("script timed out and was killed")]
    ScriptTimeout,
    /// The node's script policy refused to run the script (`enable_script_security`): the
    /// message names the path someone other than root could change.
    #[error("{0}")]
    ScriptRefused(String),
    /// Any other local or network error, with the OS message.
    #[error("I/O error: {0}")]
    Io(String),
}

impl FailReason {
    /// Map an I/O error to a reason; `phase` says which timeout a `TimedOut` error stands for.
    pub fn from_io(err: &io::Error, phase: Phase) -> Self {
        match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => return FailReason::Refused,
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN) => {
                return FailReason::Unreachable
            }
            Some(libc::ETIMEDOUT) => return FailReason::Timeout(phase),
            _ => {}
        }
        match err.kind() {
            io::ErrorKind::ConnectionRefused => FailReason::Refused,
            io::ErrorKind::TimedOut => FailReason::Timeout(phase),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => FailReason::Reset,
            _ => FailReason::Io(err.to_string()),
        }
    }

    /// The counter bucket this reason falls in.
    pub fn kind(&self) -> ReasonKind {
        match self {
            FailReason::Refused => ReasonKind::Refused,
            FailReason::Timeout(Phase::Connect) => ReasonKind::ConnectTimeout,
            FailReason::Timeout(Phase::Read) => ReasonKind::ReadTimeout,
            FailReason::Unreachable => ReasonKind::Unreachable,
            FailReason::Reset => ReasonKind::Reset,
            FailReason::BadStatus(_) => ReasonKind::BadStatus,
            FailReason::BadDigest { .. } => ReasonKind::BadDigest,
            FailReason::BadResponse(_) => ReasonKind::BadResponse,
            FailReason::Tls(_) => ReasonKind::Tls,
            FailReason::Dns(_) => ReasonKind::Dns,
            FailReason::ScriptExit(_) | FailReason::ScriptSignal(_) => ReasonKind::Script,
            FailReason::ScriptTimeout => ReasonKind::ScriptTimeout,
            FailReason::ScriptRefused(_) => ReasonKind::ScriptRefused,
            FailReason::Io(_) => ReasonKind::Io,
        }
    }
}

/// A fieldless copy of [`FailReason`]'s variants, so failures can be counted in a fixed array of
/// atomics and labelled in metrics without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum ReasonKind {
    Refused,
    ConnectTimeout,
    ReadTimeout,
    Unreachable,
    Reset,
    BadStatus,
    BadDigest,
    BadResponse,
    Tls,
    Dns,
    Script,
    ScriptTimeout,
    ScriptRefused,
    Io,
}

impl ReasonKind {
    /// Every kind, in counter order.
    pub const ALL: [ReasonKind; 14] = [
        ReasonKind::Refused,
        ReasonKind::ConnectTimeout,
        ReasonKind::ReadTimeout,
        ReasonKind::Unreachable,
        ReasonKind::Reset,
        ReasonKind::BadStatus,
        ReasonKind::BadDigest,
        ReasonKind::BadResponse,
        ReasonKind::Tls,
        ReasonKind::Dns,
        ReasonKind::Script,
        ReasonKind::ScriptTimeout,
        ReasonKind::ScriptRefused,
        ReasonKind::Io,
    ];

    /// Stable snake_case label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonKind::Refused => "refused",
            ReasonKind::ConnectTimeout => "connect_timeout",
            ReasonKind::ReadTimeout => "read_timeout",
            ReasonKind::Unreachable => "unreachable",
            ReasonKind::Reset => "reset",
            ReasonKind::BadStatus => "bad_status",
            ReasonKind::BadDigest => "bad_digest",
            ReasonKind::BadResponse => "bad_response",
            ReasonKind::Tls => "tls",
            ReasonKind::Dns => "dns",
            ReasonKind::Script => "script",
            ReasonKind::ScriptTimeout => "script_timeout",
            ReasonKind::ScriptRefused => "script_refused",
            ReasonKind::Io => "io",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The outcome of one attempt (or of a round, which is the last attempt of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Time from the start of the attempt to its verdict.
    pub latency: Duration,
    /// `None` when the attempt succeeded.
    pub error: Option<FailReason>,
    /// For MISC_CHECK with `misc_dynamic`: the weight the script asked for (exit code − 2).
    pub weight: Option<u32>,
}

impl CheckResult {
    /// A successful attempt.
    pub fn ok(latency: Duration) -> Self {
        CheckResult { latency, error: None, weight: None }
    }

    /// A failed attempt.
    pub fn failed(latency: Duration, reason: FailReason) -> Self {
        CheckResult { latency, error: Some(reason), weight: None }
    }

    /// True when the backend passed.
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.error, self.weight) {
            (None, None) => write!(f, "ok in {:?}", self.latency),
            (None, Some(w)) => write!(f, "ok (weight {w}) in {:?}", self.latency),
            (Some(e), _) => write!(f, "failed after {:?}: {e}", self.latency),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_index_matches_all() {
        for (i, k) in ReasonKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }

    #[test]
    fn display_is_plain() {
        assert_eq!(FailReason::Timeout(Phase::Read).to_string(), "read timeout");
        assert_eq!(FailReason::BadStatus(503).to_string(), "unexpected HTTP status 503");
        assert_eq!(
            FailReason::Dns(DnsFailure::Rcode(3)).to_string(),
            "DNS: server answered NXDOMAIN (rcode 3)"
        );
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(FailReason::from_io(&refused, Phase::Connect), FailReason::Refused);
    }
}
