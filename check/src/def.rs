//! Check definitions as they appear in configuration.
//!
//! A definition is plain data (`Eq + Hash`) so the scheduler can notice that two virtual servers
//! ask for the very same probe and run it once. Turning a definition into something runnable
//! ([`CheckDef::prepare`]) validates it and does the expensive work (parsing CA files, encoding the
//! DNS query, building the HTTP request) once, not on every attempt.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One health check, tagged by `type` so a TOML table can hold it:
///
/// ```toml
/// type = "http"
/// target = "10.0.0.5:80"
/// path = "/health"
/// digest = "9b3a0c85a887a256d6939da88aabd8cd"
/// interval = "5s"
/// retries = 2
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CheckDef {
    /// keepalived TCP_CHECK: a TCP connect that completes is a success.
    Tcp(TcpCheck),
    /// Half-open TCP (F5 `tcp_half_open`, nmap's SYN scan): a SYN answered by a SYN-ACK is a
    /// success; the handshake is never completed. Needs CAP_NET_RAW.
    TcpHalfOpen(TcpHalfOpenCheck),
    /// keepalived HTTP_GET.
    Http(HttpCheck),
    /// keepalived SSL_GET.
    Https(HttpsCheck),
    /// keepalived UDP_CHECK.
    Udp(UdpCheck),
    /// keepalived PING_CHECK: ICMP / ICMPv6 echo.
    Icmp(IcmpCheck),
    /// keepalived DNS_CHECK: one query over UDP.
    Dns(DnsCheck),
    /// keepalived SMTP_CHECK: greeting, HELO, QUIT.
    Smtp(SmtpCheck),
    /// keepalived MISC_CHECK: run an external program.
    Script(ScriptCheck),
}

impl CheckDef {
    /// The timing knobs, whatever the kind, so the scheduler needs no match.
    pub fn timing(&self) -> &Timing {
        match self {
            CheckDef::Tcp(c) => &c.timing,
            CheckDef::TcpHalfOpen(c) => &c.timing,
            CheckDef::Http(c) => &c.timing,
            CheckDef::Https(c) => &c.http.timing,
            CheckDef::Udp(c) => &c.timing,
            CheckDef::Icmp(c) => &c.timing,
            CheckDef::Dns(c) => &c.timing,
            CheckDef::Smtp(c) => &c.timing,
            CheckDef::Script(c) => &c.timing,
        }
    }

    /// Mutable timing knobs, for building definitions in code.
    pub fn timing_mut(&mut self) -> &mut Timing {
        match self {
            CheckDef::Tcp(c) => &mut c.timing,
            CheckDef::TcpHalfOpen(c) => &mut c.timing,
            CheckDef::Http(c) => &mut c.timing,
            CheckDef::Https(c) => &mut c.http.timing,
            CheckDef::Udp(c) => &mut c.timing,
            CheckDef::Icmp(c) => &mut c.timing,
            CheckDef::Dns(c) => &mut c.timing,
            CheckDef::Smtp(c) => &mut c.timing,
            CheckDef::Script(c) => &mut c.timing,
        }
    }

    /// Short kind name for logs and metrics labels.
    pub fn kind_name(&self) -> &'static str {
        match self {
            CheckDef::Tcp(_) => "tcp",
            CheckDef::TcpHalfOpen(_) => "tcp_half_open",
            CheckDef::Http(_) => "http",
            CheckDef::Https(_) => "https",
            CheckDef::Udp(_) => "udp",
            CheckDef::Icmp(_) => "icmp",
            CheckDef::Dns(_) => "dns",
            CheckDef::Smtp(_) => "smtp",
            CheckDef::Script(_) => "script",
        }
    }

    /// A TCP check of `target` with default timing: the common case made short.
    pub fn tcp(target: SocketAddr) -> Self {
        CheckDef::Tcp(TcpCheck { target, graceful_close: false, timing: Timing::default() })
    }
}

/// The state a check reports before its first round completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Initial {
    /// Unknown until the first round, which then decides alone (no rise/fall).
    #[default]
    Unknown,
    /// Start up: `fall` failed rounds take it down (keepalived's default).
    Up,
    /// Start down: `rise` good rounds bring it up (keepalived's `alpha`).
    Down,
}

/// When and how hard to probe, with keepalived's meaning for each knob.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Timing {
    /// Time between the starts of two rounds (keepalived `delay_loop`).
    #[serde(alias = "delay_loop", with = "dur")]
    pub interval: Duration,
    /// Limit on establishing the TCP connection (keepalived `connect_timeout`).
    #[serde(with = "dur")]
    pub connect_timeout: Duration,
    /// Limit on everything after connect within one attempt: TLS handshake, request, whole answer.
    /// For datagram checks it is how long to wait for the reply. Unset: same as `connect_timeout`,
    /// which is what keepalived uses for both.
    #[serde(with = "opt_dur", skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<Duration>,
    /// Extra attempts within a round before the round counts as failed (keepalived `retry`,
    /// formerly `nb_get_retry`).
    #[serde(alias = "retry", alias = "nb_get_retry")]
    pub retries: u32,
    /// Pause between a failed attempt and its retry (keepalived `delay_before_retry`).
    #[serde(with = "dur")]
    pub delay_before_retry: Duration,
    /// Consecutive good rounds needed to go from down to up.
    pub rise: u32,
    /// Consecutive failed rounds needed to go from up to down.
    pub fall: u32,
    /// State before the first round.
    pub initial: Initial,
}

impl Default for Timing {
    /// keepalived's defaults, so translated configurations behave the same.
    fn default() -> Self {
        Timing {
            interval: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            read_timeout: None,
            retries: 1,
            delay_before_retry: Duration::from_secs(1),
            rise: 1,
            fall: 1,
            initial: Initial::Unknown,
        }
    }
}

impl Timing {
    /// The effective read timeout (`read_timeout`, else `connect_timeout`).
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout.unwrap_or(self.connect_timeout)
    }

    /// Short timings for tests and examples: interval `every`, timeouts and retry delay of a fifth.
    pub fn quick(every: Duration) -> Self {
        Timing {
            interval: every,
            connect_timeout: every / 5,
            read_timeout: None,
            retries: 0,
            delay_before_retry: every / 5,
            rise: 1,
            fall: 1,
            initial: Initial::Unknown,
        }
    }
}

/// keepalived TCP_CHECK.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcpCheck {
    /// Address and port to connect to (keepalived `connect_ip` / `connect_port`).
    pub target: SocketAddr,
    /// Close the probe connection with a FIN instead of a reset. Off by default: a reset
    /// leaves no TIME_WAIT state behind on the director (see `tcp.rs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub graceful_close: bool,
    /// Timing knobs.
    #[serde(flatten)]
    pub timing: Timing,
}

/// Half-open TCP check: send a SYN, count a SYN-ACK as up and a RST as refused, never finish the
/// handshake (the director's kernel resets it). Cheaper than [`TcpCheck`] on both ends — no
/// socket, connect and close per check here, no accepted connection on the backend — and it
/// tells the same thing: something listens and its SYN queue answers. It does not prove the
/// application accepts connections (a listener whose accept queue is full still answers SYN-ACK
/// unless it is overflowing). The SYN is resent at 1 s and 3 s within `connect_timeout`, as a
/// kernel connect would. Needs CAP_NET_RAW (raw sockets).
///
/// ```toml
/// type = "tcp_half_open"
/// target = "10.0.0.5:80"
/// interval = "1s"
/// connect_timeout = "1s"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcpHalfOpenCheck {
    /// Address and port to probe (keepalived `connect_ip` / `connect_port`).
    pub target: SocketAddr,
    /// Timing knobs (`connect_timeout` bounds the wait for the SYN-ACK).
    #[serde(flatten)]
    pub timing: Timing,
}

fn default_path() -> String {
    "/".into()
}

/// keepalived HTTP_GET (one URL per check; several URLs are several checks).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HttpCheck {
    /// Address and port to connect to.
    pub target: SocketAddr,
    /// Request path, starting with `/` (keepalived `url { path }`).
    #[serde(default = "default_path")]
    pub path: String,
    /// Accepted status codes (keepalived `status_code`); empty means any 2xx.
    #[serde(default, alias = "status_code")]
    pub status: Vec<u16>,
    /// MD5 of the body as lowercase or uppercase hex, as printed by keepalived's `genhash`.
    #[serde(default)]
    pub digest: Option<String>,
    /// `Host` header value (keepalived `virtualhost`); unset sends `ip:port`.
    #[serde(default)]
    pub virtualhost: Option<String>,
    /// Timing knobs.
    #[serde(flatten)]
    pub timing: Timing,
}

fn yes() -> bool {
    true
}

/// keepalived SSL_GET: an HTTP check over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HttpsCheck {
    /// The HTTP part.
    #[serde(flatten)]
    pub http: HttpCheck,
    /// Verify the server certificate chain and name. keepalived never verifies; we do by default
    /// and let the operator turn it off.
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// PEM file with the CA certificates to trust. Unset (and no `ca_pem`): the system bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The same as `ca_file`, inline.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Name sent in SNI and verified against the certificate. Unset: `virtualhost`, else the target
    /// IP (no SNI is sent for an IP, and the certificate must hold it as an IP SAN).
    #[serde(default)]
    pub sni: Option<String>,
}

/// keepalived UDP_CHECK.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UdpCheck {
    /// Address and port to send to.
    pub target: SocketAddr,
    /// Datagram to send, as text. Neither this nor `payload_hex`: an empty datagram.
    #[serde(default)]
    pub payload: Option<String>,
    /// Datagram to send, as hex (keepalived `payload`).
    #[serde(default)]
    pub payload_hex: Option<String>,
    /// Fail unless a reply arrives (keepalived `require_reply`). Without it, only an ICMP port
    /// unreachable within the read timeout fails the check.
    #[serde(default)]
    pub require_reply: bool,
    /// The reply must start with these bytes (hex); implies `require_reply`.
    #[serde(default)]
    pub reply_prefix_hex: Option<String>,
    /// Timing knobs.
    #[serde(flatten)]
    pub timing: Timing,
}

fn default_icmp_len() -> u16 {
    56
}

/// keepalived PING_CHECK.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IcmpCheck {
    /// IPv4 or IPv6 address to ping.
    pub target: IpAddr,
    /// Echo payload length in bytes (as `ping -s`), at least 8.
    #[serde(default = "default_icmp_len")]
    pub payload_len: u16,
    /// Timing knobs.
    #[serde(flatten)]
    pub timing: Timing,
}

/// DNS record types a check can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum RecordType {
    #[default]
    A,
    Ns,
    Cname,
    Soa,
    Ptr,
    Mx,
    Txt,
    Aaaa,
    Srv,
    Any,
}

impl RecordType {
    /// The TYPE value on the wire (RFC 1035 §3.2.2, RFC 3596, RFC 2782).
    pub fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Ns => 2,
            RecordType::Cname => 5,
            RecordType::Soa => 6,
            RecordType::Ptr => 12,
            RecordType::Mx => 15,
            RecordType::Txt => 16,
            RecordType::Aaaa => 28,
            RecordType::Srv => 33,
            RecordType::Any => 255,
        }
    }
}

/// keepalived DNS_CHECK.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DnsCheck {
    /// DNS server address and port.
    pub target: SocketAddr,
    /// Name to ask about (keepalived `name`, default `.`).
    #[serde(default = "root_name")]
    pub name: String,
    /// Query type (keepalived `type`, default A).
    #[serde(default, alias = "qtype")]
    pub record: RecordType,
    /// Every address listed must be in the answer. Empty: any NOERROR reply is good.
    #[serde(default)]
    pub expect: Vec<IpAddr>,
    /// Timing knobs.
    #[serde(flatten)]
    pub timing: Timing,
}

fn root_name() -> String {
    ".".into()
}

/// keepalived SMTP_CHECK: the greeting must be 220, the answer to `HELO helo_name` 250 and the
/// answer to `QUIT` 221 (RFC 5321), all within `read_timeout` after the connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SmtpCheck {
    /// Mail server address and port (keepalived `connect_ip` / `connect_port`).
    pub target: SocketAddr,
    /// The name the check gives in `HELO` (keepalived `helo_name`); default `localhost`, which
    /// every server takes. A relay that checks HELO names against DNS wants a real one.
    #[serde(default = "localhost")]
    pub helo_name: String,
    /// Timing knobs.
    #[serde(flatten)]
    pub timing: Timing,
}

fn localhost() -> String {
    "localhost".into()
}

/// How to start the program of a script check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// A command line run by `/bin/sh -c`, like keepalived's `misc_path "…"`.
    Line(String),
    /// Program and arguments, run directly (no shell quoting to get wrong).
    Argv(Vec<String>),
}

/// keepalived MISC_CHECK: exit 0 is up, anything else down; with `misc_dynamic`, 1 is down and
/// 2..=255 is up with weight `code - 2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScriptCheck {
    /// What to run (keepalived `misc_path`).
    #[serde(alias = "misc_path")]
    pub command: Command,
    /// Exit codes 2..=255 set the weight (keepalived `misc_dynamic`).
    #[serde(default)]
    pub misc_dynamic: bool,
    /// Kill the program (its whole process group) after this long (keepalived `misc_timeout`).
    /// Unset: the interval.
    #[serde(default, with = "opt_dur", skip_serializing_if = "Option::is_none")]
    pub misc_timeout: Option<Duration>,
    /// Timing knobs (the connect and read timeouts do not apply).
    #[serde(flatten)]
    pub timing: Timing,
}

/// Durations as `"1.5s"` / `"500ms"` (humantime) or a number of seconds.
mod dur {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurVisitor)
    }

    pub(super) struct DurVisitor;

    impl Visitor<'_> for DurVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"5s\" or \"250ms\", or a number of seconds")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v).map_err(|e| E::custom(format!("{v:?}: {e}")))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|e| E::custom(format!("{v}: {e}")))
        }
    }
}

/// `Option<Duration>` with the same forms as [`dur`].
mod opt_dur {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::dur::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(super::dur::DurVisitor).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_http_with_keepalived_names() {
        let def: CheckDef = toml::from_str(
            r#"
            type = "http"
            target = "10.0.0.5:80"
            path = "/health"
            status_code = [200, 204]
            digest = "9b3a0c85a887a256d6939da88aabd8cd"
            delay_loop = "5s"
            connect_timeout = 2
            nb_get_retry = 3
            delay_before_retry = "500ms"
            fall = 2
            "#,
        )
        .unwrap();
        let CheckDef::Http(h) = &def else { panic!("not http: {def:?}") };
        assert_eq!(h.target, "10.0.0.5:80".parse().unwrap());
        assert_eq!(h.status, vec![200, 204]);
        assert_eq!(h.timing.interval, Duration::from_secs(5));
        assert_eq!(h.timing.connect_timeout, Duration::from_secs(2));
        assert_eq!(h.timing.read_timeout(), Duration::from_secs(2));
        assert_eq!(h.timing.retries, 3);
        assert_eq!(h.timing.delay_before_retry, Duration::from_millis(500));
        assert_eq!(h.timing.fall, 2);
        assert_eq!(h.timing.rise, 1);
    }

    #[test]
    fn toml_https_script_dns() {
        let def: CheckDef = toml::from_str(
            r#"
            type = "https"
            target = "[::1]:443"
            virtualhost = "www.example.org"
            tls_verify = false
            read_timeout = 1.5
            "#,
        )
        .unwrap();
        let CheckDef::Https(h) = &def else { panic!() };
        assert!(!h.tls_verify);
        assert_eq!(h.http.path, "/");
        assert_eq!(h.http.timing.read_timeout(), Duration::from_millis(1500));

        let def: CheckDef =
            toml::from_str("type = \"script\"\nmisc_path = \"/bin/true x\"\nmisc_dynamic = true").unwrap();
        assert!(matches!(&def, CheckDef::Script(s) if s.misc_dynamic && s.command == Command::Line("/bin/true x".into())));

        let def: CheckDef = toml::from_str(
            "type = \"dns\"\ntarget = \"127.0.0.1:53\"\nname = \"a.test\"\nrecord = \"AAAA\"\nexpect = [\"::1\"]",
        )
        .unwrap();
        assert!(matches!(&def, CheckDef::Dns(d) if d.record == RecordType::Aaaa && d.expect.len() == 1));
    }

    #[test]
    fn equal_definitions_hash_equal() {
        use std::collections::HashSet;
        let a: CheckDef = toml::from_str("type = \"tcp\"\ntarget = \"127.0.0.1:80\"\ninterval = 3").unwrap();
        let mut b = CheckDef::tcp("127.0.0.1:80".parse().unwrap());
        b.timing_mut().interval = Duration::from_secs(3);
        let mut set = HashSet::new();
        set.insert(a.clone());
        assert!(set.contains(&b));
        b.timing_mut().fall = 3;
        assert!(!set.contains(&b), "timing is part of the identity");
    }

    #[test]
    fn round_trips_through_toml() {
        let mut def = CheckDef::tcp("127.0.0.1:80".parse().unwrap());
        def.timing_mut().read_timeout = Some(Duration::from_millis(1500));
        let text = toml::to_string(&def).unwrap();
        let back: CheckDef = toml::from_str(&text).unwrap();
        assert_eq!(back, def, "{text}");
    }
}
