//! Cluster-wide LVS rules: the `services.toml` operators `corralctl apply`, stored whole in the
//! Raft state, and the pure function from (rules, health verdicts) to the IPVS table every
//! director programs. Because the table is a function of replicated data only, every director
//! computes the same table and `ipvsadm -Sn` is byte-identical across them.
//!
//! ```toml
//! [[virtual_server]]
//! address = "192.0.2.100:80"      # or fwmark = 7 (family = "inet6" for IPv6 marks)
//! protocol = "tcp"                # tcp | udp | sctp
//! scheduler = "wlc"
//! forwarding = "nat"              # nat | dr | tunnel (per real server overridable)
//! persistence_timeout = "5m"      # optional; persistence_granularity = "255.255.255.0" or "/64"
//! # persistence_engine = "sip"    # --pe sip; scheduler_flags = ["sh-port", "sh-fallback"] (-b)
//! # tunnel = { type = "gue", port = 6080, checksum = "csum" }   # forwarding = "tunnel": ipip | gue | gre
//! sorry_server = "198.51.100.99:80"  # sorry_server_forwarding = "nat", sorry_server_inhibit = true
//! quorum = 1                      # keepalived: live weight below quorum - hysteresis → sorry server alone,
//! hysteresis = 0                  # back at quorum + hysteresis (the state between is committed in Raft)
//! [[virtual_server.real_server]]
//! address = "198.51.100.11:80"
//! weight = 1
//! inhibit_on_failure = false      # failed: weight 0 instead of removal
//! check = { type = "http", path = "/health", interval = "2s", fall = 3, rise = 2 }
//! notify_down = "/usr/local/bin/page-oncall"   # run once per cluster on a committed verdict
//! ```
//!
//! A health check is written without `target`: it probes the real server's own address (or
//! `port = N` of it, keepalived's `connect_port`). A `check` on the virtual server applies to
//! each of its real servers that has none. A list of checks (`check = [{ type = "http" },
//! { type = "tcp", port = 8443 }]`) must all pass for the real server to be up.
//! `[health] observers = 3` (top level) is how many directors check each real server.
//! `[timeouts] tcp = "15m", tcp_fin = "2m", udp = "5m"` (top level) sets IPVS's connection
//! timeouts on every director.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipvs::{Dest, DestKey, Family, Forward, Persistence, Protocol, Service, ServiceKey, Table, Tunnel};
use serde::{Deserialize, Serialize};

use crate::config::{parse_toml, ConfigError, KeySeg};

/// Schedulers the Linux kernel ships (`ip_vs_*.ko`).
pub const SCHEDULERS: &[&str] = &["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"];

/// The whole desired set of virtual servers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    #[serde(default, skip_serializing_if = "is_default")]
    pub health: HealthRules,
    /// IPVS connection timeouts on every director (keepalived's `lvs_timeouts`, `ipvsadm --set`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, rename = "virtual_server", skip_serializing_if = "Vec::is_empty")]
    pub virtual_servers: Vec<VirtualServer>,
}

/// `[timeouts]`: how long IPVS keeps an idle TCP connection, a closing one and a UDP "connection".
/// Part of the one table: every director sets them and repairs them like the services. A value
/// left out (or the whole table removed) leaves the kernel's as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Duration>,
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub tcp_fin: Option<Duration>,
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub udp: Option<Duration>,
}

/// The kernel refuses a timeout above INT_MAX / HZ seconds; with HZ up to 1000 that is this.
const MAX_TIMEOUT_SECS: u64 = 2_147_483;

impl Timeouts {
    /// The kernel's form: seconds, 0 = leave as it is.
    pub fn to_ipvs(self) -> ipvs::Timeouts {
        let s = |d: Option<Duration>| d.map_or(0, |d| d.as_secs() as u32);
        ipvs::Timeouts { tcp: s(self.tcp), tcp_fin: s(self.tcp_fin), udp: s(self.udp) }
    }

    /// Whether the kernel's timeouts are these (the ones given).
    pub fn met_by(self, k: &ipvs::Timeouts) -> bool {
        let w = self.to_ipvs();
        (w.tcp == 0 || w.tcp == k.tcp) && (w.tcp_fin == 0 || w.tcp_fin == k.tcp_fin) && (w.udp == 0 || w.udp == k.udp)
    }
}

/// Cluster-wide health-check settings: in the rules (not each node's config) because the
/// leader and every observer must agree on who observes what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthRules {
    /// How many live directors check each real server (all of them when fewer are alive). A
    /// verdict changes only when a majority of a real server's observers agree.
    #[serde(default = "three")]
    pub observers: u32,
}

fn three() -> u32 {
    3
}

impl Default for HealthRules {
    fn default() -> Self {
        HealthRules { observers: 3 }
    }
}

/// How packets reach a real server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Masquerading (`-m`): replies come back through the director.
    #[default]
    Nat,
    /// Direct routing (`-g`): the real server owns the VIP on a loopback.
    Dr,
    /// IP-in-IP (`-i`).
    Tunnel,
}

/// How `forwarding = "tunnel"` encapsulates (kernel 5.2+ for GUE and GRE):
/// `{ type = "gue", port = 6080, checksum = "csum" }`, as ipvsadm's `--tun-type`, `--tun-port`,
/// `--tun-nocsum|--tun-csum|--tun-remcsum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelRule {
    #[serde(rename = "type")]
    pub kind: TunnelKind,
    /// GUE's UDP port (required for GUE, refused for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// GUE and GRE: `nocsum` (default), `csum`, or `remcsum` (GUE only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<TunnelChecksum>,
}

/// `tunnel.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    Ipip,
    Gue,
    Gre,
}

/// `tunnel.checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelChecksum {
    Nocsum,
    Csum,
    Remcsum,
}

impl TunnelRule {
    /// ipvsadm's rules for the combination, naming the part that is wrong.
    fn validate(&self) -> Result<(), String> {
        match (self.kind, self.port, self.checksum) {
            (TunnelKind::Gue, None, _) => Err("a gue tunnel needs port".into()),
            (TunnelKind::Gue, Some(0), _) => Err("port 0 is not a GUE port".into()),
            (TunnelKind::Ipip | TunnelKind::Gre, Some(_), _) => Err(format!("port applies to gue tunnels only, not {}", self.kind_name())),
            (TunnelKind::Ipip, None, Some(_)) => Err("checksum applies to gue and gre tunnels, not ipip".into()),
            (TunnelKind::Gre, None, Some(TunnelChecksum::Remcsum)) => Err("remcsum applies to gue tunnels only".into()),
            _ => Ok(()),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            TunnelKind::Ipip => "ipip",
            TunnelKind::Gue => "gue",
            TunnelKind::Gre => "gre",
        }
    }

    /// The kernel's form (its "nocsum" is the absence of the other two bits).
    fn to_ipvs(self) -> Tunnel {
        let c = self.checksum.unwrap_or(TunnelChecksum::Nocsum);
        let flags = ipvs::model::TunFlags { nocsum: c == TunnelChecksum::Nocsum, csum: c == TunnelChecksum::Csum, remcsum: c == TunnelChecksum::Remcsum };
        match self.kind {
            TunnelKind::Ipip => Tunnel::Ipip,
            TunnelKind::Gue => Tunnel::Gue { port: self.port.unwrap_or(0), flags },
            TunnelKind::Gre => Tunnel::Gre { flags },
        }
    }
}

/// Address family of a firewall-mark service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkFamily {
    #[default]
    Inet,
    Inet6,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
fn default_scheduler() -> String {
    "wlc".into()
}
fn is_wlc(s: &String) -> bool {
    s == "wlc"
}
fn one() -> u32 {
    1
}
fn is_one(v: &u32) -> bool {
    *v == 1
}
fn one_i32() -> i32 {
    1
}
fn is_one_i32(v: &i32) -> bool {
    *v == 1
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s)
                .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e} (write e.g. \"5m\", \"360s\")")))
        })
        .transpose()
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

/// A virtual server (keepalived's `virtual_server`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServer {
    /// `VIP:PORT` (with `protocol`), or absent for a firewall-mark service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<u32>,
    /// keepalived's `virtual_server_group`: more virtual services served exactly as this one
    /// (same settings, real servers, checks and verdicts): `"192.0.2.101:80"`,
    /// `"[2001:db8::1]:80"`, an IPv4 range `"192.0.2.110-119:80"`, an IPv6 one (last group, hex)
    /// `"[2001:db8::10-1f]:80"`, `"fwmark:7"`. This one's
    /// `address`/`fwmark` names the group (verdicts, `rs list`, edits by any member).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub family: MarkFamily,
    #[serde(default = "default_protocol", skip_serializing_if = "is_tcp")]
    pub protocol: Protocol,
    #[serde(default = "default_scheduler", skip_serializing_if = "is_wlc")]
    pub scheduler: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub forwarding: Forwarding,
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub persistence_timeout: Option<Duration>,
    /// IPv4 netmask (`255.255.255.0`) or IPv6 prefix (`/64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence_granularity: Option<String>,
    /// `-o`: one-packet scheduling (UDP/SCTP).
    #[serde(default, skip_serializing_if = "is_default")]
    pub one_packet: bool,
    /// `-b`: keepalived's `sh-port`, `sh-fallback`, `mh-port`, `mh-fallback` (each only with its
    /// scheduler), or `flag-1`..`flag-3`: hash the source port too / skip a real server at
    /// weight 0 or over its threshold instead of dropping the packet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scheduler_flags: Vec<String>,
    /// `--pe sip` (keepalived's `persistence_engine`): persistence by SIP Call-ID, not by
    /// client address; needs `persistence_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence_engine: Option<String>,
    /// Encapsulation of `forwarding = "tunnel"` real servers (default IP-in-IP): keepalived's
    /// `tunnel_type`; a real server's own `tunnel` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelRule>,
    /// Served when the live real servers' weight falls below the quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sorry_server: Option<SocketAddr>,
    /// keepalived's `sorry_server_lvs_method`: how packets reach the sorry server (default:
    /// the virtual server's `forwarding`), e.g. NAT to a local page while the pool is DR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sorry_server_forwarding: Option<Forwarding>,
    /// keepalived's `sorry_server_inhibit`: the sorry server stays in the table at weight 0
    /// while the quorum holds (it is never removed and added again).
    #[serde(default, skip_serializing_if = "is_default")]
    pub sorry_server_inhibit: bool,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub quorum: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub hysteresis: u32,
    /// keepalived's alpha: real servers start failed until their first check passes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub alpha: bool,
    /// keepalived's omega: run quorum_down when the virtual server is removed from the rules
    /// (the cluster's analogue of keepalived running it at shutdown).
    #[serde(default, skip_serializing_if = "is_default")]
    pub omega: bool,
    /// Health check for real servers that have none of their own (no `target`: each real
    /// server's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<serde_json::Value>,
    /// Run (once per cluster, by the Raft leader) when the live weight falls below the quorum
    /// (and the sorry server, if any, takes over) / when it is back (keepalived `quorum_down` /
    /// `quorum_up`; without a sorry server they are how a route to the VIP is withdrawn and
    /// announced again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_down: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_up: Option<String>,
    #[serde(default, rename = "real_server", skip_serializing_if = "Vec::is_empty")]
    pub real_servers: Vec<RealServer>,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}
fn is_tcp(p: &Protocol) -> bool {
    *p == Protocol::Tcp
}

/// A real server (keepalived's `real_server`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealServer {
    pub address: SocketAddr,
    #[serde(default = "one_i32", skip_serializing_if = "is_one_i32")]
    pub weight: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<Forwarding>,
    /// Overrides the virtual server's `tunnel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelRule>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub upper_threshold: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub lower_threshold: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub inhibit_on_failure: bool,
    /// Health check (a `check` crate definition without `target`; `port` overrides the port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<serde_json::Value>,
    /// Run by the Raft leader, once per cluster, when the committed verdict turns up / down
    /// (keepalived `notify_up` / `notify_down`: the command line as written, via `/bin/sh -c`);
    /// `notify_down` also when a rule change removes this real server while it is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_up: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_down: Option<String>,
}

/// Health of one real server as committed by the cluster (issue: health checks). Absent = up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub up: bool,
    /// The weight a MISC_CHECK with `misc_dynamic` asked for (exit code − 2), once a majority
    /// of the observers agreed on it: it replaces the configured weight, as keepalived does.
    pub weight: Option<u32>,
}

impl Verdict {
    /// Up at the configured weight.
    pub const UP: Verdict = Verdict { up: true, weight: None };
    /// Down.
    pub const DOWN: Verdict = Verdict { up: false, weight: None };
}

/// Real-server key ([`rs_key`]) → committed verdict. Absent: up, or down under `alpha`. Also
/// holds each virtual server's committed quorum state under [`quorum_key`] (`up` = has quorum).
pub type Verdicts = BTreeMap<String, Verdict>;

/// Where a virtual server's committed quorum state sits among the [`Verdicts`]. keepalived's
/// hysteresis is a band (lost below `quorum - hysteresis`, back only at `quorum + hysteresis`),
/// so which side of it a service is on depends on its past; the Raft leader commits that state
/// whenever it changes, and every director reads it back, so all tables stay identical.
pub fn quorum_key(service: &str) -> String {
    format!("quorum {service}")
}

/// The name of a real server within a virtual server, as stored with its verdict and shown to
/// operators: `TCP 192.0.2.100:80 -> 198.51.100.11:80` (ipvsadm's words).
pub fn rs_key(service: &ServiceKey, rs: SocketAddr) -> String {
    format!("{service} -> {rs}")
}

/// Keys a check table may hold beyond those its parsed definition writes back: keepalived's
/// names (aliases) and settings left out when at their default, by check type.
fn check_key_aliases(kind: &str) -> &'static [&'static str] {
    match kind {
        "tcp" => &["graceful_close"],
        "http" | "https" => &["status_code"],
        "dns" => &["qtype"],
        "script" => &["misc_path", "misc_timeout"],
        _ => &[],
    }
}

/// [`check_def`], and no key it does not know. serde cannot refuse unknown keys in the check
/// structs (they are `flatten`ed), so they are compared here: a misspelt or unsupported
/// keepalived keyword (`connect_ip`, `url`, `bindto`) would otherwise be dropped without a word,
/// and the check would run without it. Only `apply` and edits are this strict; rules already
/// stored keep their checks.
fn validate_check(raw: &serde_json::Value, rs: SocketAddr) -> Result<(), (Vec<KeySeg>, String)> {
    match raw.as_array() {
        // keepalived's several checkers in one real_server: each is checked on its own.
        Some(list) => {
            if list.is_empty() {
                return Err((Vec::new(), "an empty list of checks: give at least one, or no check".into()));
            }
            for (n, c) in list.iter().enumerate() {
                if c.is_array() {
                    return Err((vec![KeySeg::Index(n)], "a check in a list is a table".into()));
                }
                validate_one_check(c, rs).map_err(|(k, e)| (std::iter::once(KeySeg::Index(n)).chain(k.map(KeySeg::Key)).collect(), e))?;
            }
            Ok(())
        }
        None => validate_one_check(raw, rs).map_err(|(k, e)| (k.map(KeySeg::Key).into_iter().collect(), e)),
    }
}

fn validate_one_check(raw: &serde_json::Value, rs: SocketAddr) -> Result<(), (Option<String>, String)> {
    let def = check_def(raw, rs).map_err(|e| (None, e))?;
    // What the checker itself refuses (a payload_len out of range, a HELO name with a space, a
    // bad hex payload, an SNI that is no host name), refused here too: stored, the check would
    // never run, on any node. Without the TLS setup (`validate`, not `prepare`): CA files are
    // read on each observer, which the node taking the apply (a witness, say) need not be,
    // and this runs for every real server on every edit.
    match def.validate() {
        Ok(()) => {}
        Err(check::DefError::Invalid { field, why }) => return Err((Some(field.to_owned()), why)),
        Err(e) => return Err((None, e.to_string())),
    }
    let echoed = serde_json::to_value(&def).map_err(|e| (None, e.to_string()))?;
    let echoed = echoed.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    let kind = raw.get("type").and_then(|t| t.as_str()).unwrap_or_default();
    const EVERY: &[&str] = &["type", "port", "connect_port", "target", "delay_loop", "retry", "nb_get_retry", "read_timeout"];
    let known = |k: &str| echoed.iter().any(|e| e == k) || EVERY.contains(&k) || check_key_aliases(kind).contains(&k);
    if let Some(k) = raw.as_object().and_then(|m| m.keys().find(|k| !known(k))) {
        let mut all: Vec<&str> = echoed.iter().map(String::as_str).chain(EVERY.iter().copied()).chain(check_key_aliases(kind).iter().copied()).collect();
        all.sort_unstable();
        all.dedup();
        return Err((Some(k.clone()), format!("unknown key in a {kind} check (it knows: {})", all.join(", "))));
    }
    Ok(())
}

/// One real server's health checks as every node derives them from the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct RsCheck {
    /// [`rs_key`] of the real server.
    pub key: String,
    /// Usually one; several when the rules give a list (keepalived's several checkers in one
    /// `real_server`): the real server is up only while every one of them passes.
    pub defs: Vec<check::CheckDef>,
    /// The verdict before any is committed (`alpha`: down until proven up).
    pub default_up: bool,
    pub notify_up: Option<String>,
    pub notify_down: Option<String>,
}

impl RsCheck {
    /// The checker's id of check `n`: the real server's key for the first (so a single check
    /// keeps the id it always had), `KEY #2`, `KEY #3` for the others.
    pub fn check_id(&self, n: usize) -> String {
        if n == 0 {
            self.key.clone()
        } else {
            format!("{} #{}", self.key, n + 1)
        }
    }

    /// `http`, or `http+tcp` for several.
    pub fn kind(&self) -> String {
        self.defs.iter().map(|d| d.kind_name()).collect::<Vec<_>>().join("+")
    }
}

/// The real server's key ([`rs_key`]) of a checker id made by [`RsCheck::check_id`].
pub fn rs_of_check_id(id: &str) -> &str {
    match id.rsplit_once(" #") {
        Some((rs, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => rs,
        _ => id,
    }
}

/// A rules `check` value: one table, or a list of them.
fn check_defs(raw: &serde_json::Value, rs: SocketAddr) -> Result<Vec<check::CheckDef>, String> {
    match raw.as_array() {
        Some(list) if list.is_empty() => Err("an empty list of checks".into()),
        Some(list) => list.iter().map(|c| check_def(c, rs)).collect(),
        None => check_def(raw, rs).map(|d| vec![d]),
    }
}

/// Turns a rules `check` table into a definition: fills `target` from the real server's
/// address (`port`, or keepalived's `connect_port`), then lets the `check` crate validate it.
fn check_def(raw: &serde_json::Value, rs: SocketAddr) -> Result<check::CheckDef, String> {
    let mut map = raw.as_object().cloned().ok_or("a check is a table, e.g. { type = \"tcp\" }")?;
    let kind = map.get("type").and_then(|t| t.as_str()).ok_or("a check needs type = \"tcp\" | \"tcp_half_open\" | \"http\" | \"https\" | \"udp\" | \"icmp\" | \"dns\" | \"smtp\" | \"script\"")?.to_string();
    let port = match (map.remove("port"), map.remove("connect_port")) {
        (Some(_), Some(_)) => return Err("port and connect_port are the same setting: give one".into()),
        (None, None) => rs.port(),
        (Some(p), None) | (None, Some(p)) => p.as_u64().filter(|p| (1..=65535).contains(p)).ok_or("port must be 1..=65535")? as u16,
    };
    if !map.contains_key("target") {
        match kind.as_str() {
            "icmp" => {
                map.insert("target".into(), rs.ip().to_string().into());
            }
            "script" => {}
            _ if port == 0 => return Err("the real server has port 0: give the check a port = N".into()),
            _ => {
                map.insert("target".into(), SocketAddr::new(rs.ip(), port).to_string().into());
            }
        }
    }
    let def: check::CheckDef = serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())?;
    if def.timing().interval.is_zero() {
        return Err("interval must be above 0".into());
    }
    Ok(def)
}

impl VirtualServer {
    /// Whether the cluster keeps this virtual server's quorum state (committed in Raft when it
    /// moves): with a sorry server (the table follows it) or a quorum hook (someone is told).
    /// Others have none, which saves a Raft write whenever such a service's quorum would move.
    pub fn keeps_quorum(&self) -> bool {
        self.sorry_server.is_some() || self.quorum_up.is_some() || self.quorum_down.is_some()
    }

    /// The kernel key of this virtual server.
    pub fn key(&self) -> Option<ServiceKey> {
        match (self.address, self.fwmark) {
            (Some(addr), None) => Some(ServiceKey::Addr { protocol: self.protocol, addr }),
            (None, Some(mark)) => Some(ServiceKey::Fwmark {
                family: match self.family {
                    MarkFamily::Inet => Family::Inet,
                    MarkFamily::Inet6 => Family::Inet6,
                },
                mark,
            }),
            _ => None,
        }
    }

    /// The group's other members ([`VirtualServer::group`]), expanded; the first bad entry's
    /// index and why.
    pub fn group_keys(&self) -> Result<Vec<ServiceKey>, (usize, String)> {
        let mut out = Vec::new();
        for (i, m) in self.group.iter().enumerate() {
            let keys = self.group_member(m).map_err(|e| (i, e))?;
            out.extend(keys);
            if out.len() > MAX_GROUP {
                return Err((i, format!("a group of more than {MAX_GROUP} virtual services")));
            }
        }
        Ok(out)
    }

    fn group_member(&self, m: &str) -> Result<Vec<ServiceKey>, String> {
        if let Some(n) = m.strip_prefix("fwmark:") {
            let mark: u32 = n.parse().ok().filter(|m| *m > 0).ok_or_else(|| format!("{m:?}: fwmark:N with N > 0"))?;
            // The group's family: its address's, or `family` for a firewall-mark group.
            let family = match (self.address, self.family) {
                (Some(a), _) => Family::of(&a.ip()),
                (None, MarkFamily::Inet) => Family::Inet,
                (None, MarkFamily::Inet6) => Family::Inet6,
            };
            return Ok(vec![ServiceKey::Fwmark { family, mark }]);
        }
        if let Ok(addr) = m.parse::<SocketAddr>() {
            return Ok(vec![ServiceKey::Addr { protocol: self.protocol, addr }]);
        }
        let bad = || format!("{m:?} is not VIP:PORT, A.B.C.D-E:PORT or [A::B-E]:PORT (a range) or fwmark:N");
        // keepalived's IPv6 range: the last 16-bit group, in hex, [2001:db8::10-1f]:PORT.
        if let Some((range, port)) = m.strip_prefix('[').and_then(|r| r.split_once("]:")) {
            let port: u16 = port.parse().map_err(|_| bad())?;
            let (first, last) = range.split_once('-').ok_or_else(bad)?;
            let first: std::net::Ipv6Addr = first.parse().map_err(|_| bad())?;
            let last = u16::from_str_radix(last, 16).map_err(|_| bad())?;
            let g = first.segments();
            if last < g[7] {
                return Err(format!("{m:?}: the range ends below its start"));
            }
            if usize::from(last - g[7]) >= MAX_GROUP {
                return Err(format!("{m:?}: a range of more than {MAX_GROUP} addresses"));
            }
            return Ok((g[7]..=last)
                .map(|x| {
                    let ip = std::net::Ipv6Addr::new(g[0], g[1], g[2], g[3], g[4], g[5], g[6], x);
                    ServiceKey::Addr { protocol: self.protocol, addr: SocketAddr::new(ip.into(), port) }
                })
                .collect());
        }
        // keepalived's range: the last IPv4 octet, A.B.C.D-E.
        let (range, port) = m.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let (first, last) = range.split_once('-').ok_or_else(bad)?;
        let first: std::net::Ipv4Addr = first.parse().map_err(|_| bad())?;
        let last: u8 = last.parse().map_err(|_| bad())?;
        let o = first.octets();
        if last < o[3] {
            return Err(format!("{m:?}: the range ends below its start"));
        }
        Ok((o[3]..=last)
            .map(|d| ServiceKey::Addr { protocol: self.protocol, addr: SocketAddr::new(std::net::Ipv4Addr::new(o[0], o[1], o[2], d).into(), port) })
            .collect())
    }

    /// Every kernel service of this virtual server: its own key, then its group's.
    pub fn keys(&self) -> Vec<ServiceKey> {
        self.key().into_iter().chain(self.group_keys().unwrap_or_default()).collect()
    }
}

/// The kernel takes a real server of the other address family than its service only with
/// tunnel forwarding (IPv6-in-IPv4 or the reverse), and not while a connection-sync daemon runs.
const MIXED_FAMILY: &str = "of the other address family than the virtual server: only tunnel forwarding can reach it (and no director may run a sync daemon)";

/// The most virtual services one group may expand to.
const MAX_GROUP: usize = 1024;

fn persistence_netmask(g: &Option<String>, family: Family) -> Result<u32, String> {
    match (g.as_deref(), family) {
        (None, Family::Inet) => Ok(0xffff_ffff),
        (None, Family::Inet6) => Ok(128),
        (Some(s), Family::Inet) => {
            let m: std::net::Ipv4Addr = s.parse().map_err(|_| format!("{s:?} is not an IPv4 netmask (e.g. 255.255.255.0)"))?;
            let m = u32::from(m);
            if m.leading_ones() + m.trailing_zeros() != 32 {
                return Err(format!("{s:?} is not a contiguous netmask"));
            }
            Ok(m)
        }
        (Some(s), Family::Inet6) => {
            let p = s.trim_start_matches('/');
            p.parse::<u32>().ok().filter(|p| (1..=128).contains(p)).ok_or_else(|| format!("{s:?} is not an IPv6 prefix length (/1../128)"))
        }
    }
}

impl RuleSet {
    /// Parses a rules file; errors name file, line and key.
    pub fn parse(path: &Path, text: &str) -> Result<RuleSet, ConfigError> {
        parse_toml(path, text, RuleSet::validate)
    }

    /// Semantic checks, returning the offending key.
    pub fn validate(&self) -> Result<(), (Vec<KeySeg>, String)> {
        use KeySeg::{Index, Key};
        let vs_at = |i: usize, k: &str| vec![Key("virtual_server".into()), Index(i), Key(k.into())];
        if self.health.observers == 0 {
            return Err((vec![Key("health".into()), Key("observers".into())], "at least 1 observer".into()));
        }
        if let Some(t) = &self.timeouts {
            for (k, d) in [("tcp", t.tcp), ("tcp_fin", t.tcp_fin), ("udp", t.udp)] {
                if let Some(d) = d {
                    if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > MAX_TIMEOUT_SECS {
                        return Err((vec![Key("timeouts".into()), Key(k.into())], format!("whole seconds from 1s to {MAX_TIMEOUT_SECS}s")));
                    }
                }
            }
        }
        let mut keys = BTreeSet::new();
        for (i, vs) in self.virtual_servers.iter().enumerate() {
            let key = match (vs.address, vs.fwmark) {
                (Some(_), Some(_)) => return Err((vs_at(i, "fwmark"), "give address or fwmark, not both".into())),
                (None, None) => return Err((vs_at(i, "address"), "a virtual server needs address = \"VIP:PORT\" or fwmark = N".into())),
                (Some(a), None) if a.port() == 0 && vs.persistence_timeout.is_none() => {
                    return Err((vs_at(i, "address"), "port 0 (all ports) needs persistence_timeout, as in ipvsadm".into()))
                }
                (None, Some(0)) => return Err((vs_at(i, "fwmark"), "firewall mark must be > 0".into())),
                _ => vs.key().expect("checked above"),
            };
            if !keys.insert(key) {
                return Err((vs_at(i, if vs.address.is_some() { "address" } else { "fwmark" }), format!("{key} is defined twice")));
            }
            let members = vs.group_keys().map_err(|(j, e)| (vec![Key("virtual_server".into()), Index(i), Key("group".into()), Index(j)], e))?;
            for m in members {
                if !keys.insert(m) {
                    return Err((vs_at(i, "group"), format!("{m} is defined twice")));
                }
                if m.family() != key.family() {
                    return Err((vs_at(i, "group"), format!("{m}: a group is of one address family, {key}'s (use a second virtual server)")));
                }
                if matches!(m, ServiceKey::Addr { addr, .. } if addr.port() == 0) && vs.persistence_timeout.is_none() {
                    return Err((vs_at(i, "group"), format!("{m}: port 0 (all ports) needs persistence_timeout, as in ipvsadm")));
                }
            }
            if !SCHEDULERS.contains(&vs.scheduler.as_str()) {
                return Err((vs_at(i, "scheduler"), format!("unknown scheduler {:?} (one of {})", vs.scheduler, SCHEDULERS.join(", "))));
            }
            if vs.one_packet && vs.protocol == Protocol::Tcp && vs.address.is_some() {
                return Err((vs_at(i, "one_packet"), "one-packet scheduling applies to UDP/SCTP only".into()));
            }
            if !vs.scheduler_flags.is_empty() {
                ipvs::text::sched_flags(&vs.scheduler, &vs.scheduler_flags.join(",")).map_err(|e| (vs_at(i, "scheduler_flags"), e))?;
            }
            if let Some(pe) = &vs.persistence_engine {
                if pe != "sip" {
                    return Err((vs_at(i, "persistence_engine"), format!("unknown persistence engine {pe:?} (the kernel has \"sip\")")));
                }
                if vs.persistence_timeout.is_none() {
                    return Err((vs_at(i, "persistence_engine"), "needs persistence_timeout".into()));
                }
            }
            if let Some(t) = &vs.tunnel {
                t.validate().map_err(|e| (vs_at(i, "tunnel"), e))?;
                if vs.forwarding != Forwarding::Tunnel && !vs.real_servers.iter().any(|r| r.forwarding == Some(Forwarding::Tunnel)) {
                    return Err((vs_at(i, "tunnel"), "applies to forwarding = \"tunnel\" only".into()));
                }
            }
            if let Some(t) = vs.persistence_timeout {
                if t.as_secs() == 0 || t.as_secs() > u32::MAX as u64 || t.subsec_nanos() != 0 {
                    return Err((vs_at(i, "persistence_timeout"), "whole seconds, at least 1s".into()));
                }
            } else if vs.persistence_granularity.is_some() {
                return Err((vs_at(i, "persistence_granularity"), "needs persistence_timeout".into()));
            }
            persistence_netmask(&vs.persistence_granularity, key.family()).map_err(|e| (vs_at(i, "persistence_granularity"), e))?;
            if vs.sorry_server.is_none() {
                if vs.sorry_server_forwarding.is_some() {
                    return Err((vs_at(i, "sorry_server_forwarding"), "needs sorry_server".into()));
                }
                if vs.sorry_server_inhibit {
                    return Err((vs_at(i, "sorry_server_inhibit"), "needs sorry_server".into()));
                }
            }
            if let Some(s) = vs.sorry_server {
                if Family::of(&s.ip()) != key.family() && vs.sorry_server_forwarding.unwrap_or(vs.forwarding) != Forwarding::Tunnel {
                    return Err((vs_at(i, "sorry_server"), MIXED_FAMILY.into()));
                }
            }
            let mut rs_seen = BTreeSet::new();
            for (j, rs) in vs.real_servers.iter().enumerate() {
                let rs_at = |k: &str| vec![Key("virtual_server".into()), Index(i), Key("real_server".into()), Index(j), Key(k.into())];
                if !rs_seen.insert(rs.address) {
                    return Err((rs_at("address"), format!("{} is listed twice", rs.address)));
                }
                if Some(rs.address) == vs.sorry_server {
                    return Err((rs_at("address"), "also the sorry server".into()));
                }
                if !(0..=65535).contains(&rs.weight) {
                    return Err((rs_at("weight"), "weight must be within 0..=65535".into()));
                }
                let fwd = rs.forwarding.unwrap_or(vs.forwarding);
                if let Some(t) = &rs.tunnel {
                    t.validate().map_err(|e| (rs_at("tunnel"), e))?;
                    if fwd != Forwarding::Tunnel {
                        return Err((rs_at("tunnel"), "applies to forwarding = \"tunnel\" only".into()));
                    }
                }
                if fwd != Forwarding::Tunnel && Family::of(&rs.address.ip()) != key.family() {
                    return Err((rs_at("address"), MIXED_FAMILY.into()));
                }
                if rs.lower_threshold > 0 && rs.upper_threshold > 0 && rs.lower_threshold > rs.upper_threshold {
                    return Err((rs_at("lower_threshold"), "lower_threshold above upper_threshold".into()));
                }
                let at = |mut path: Vec<KeySeg>, key: Vec<KeySeg>| {
                    path.extend(key);
                    path
                };
                match (&rs.check, &vs.check) {
                    (Some(c), _) => validate_check(c, rs.address).map_err(|(k, e)| (at(rs_at("check"), k), e))?,
                    (None, Some(c)) => {
                        validate_check(c, rs.address).map_err(|(k, e)| (at(vs_at(i, "check"), k), format!("for real server {}: {e}", rs.address)))?
                    }
                    (None, None) => continue,
                };
            }
        }
        Ok(())
    }

    /// A real server's verdict under `verdicts`. Only checked real servers can be down or
    /// weighted by a script: a stale verdict for a real server whose check was removed is
    /// ignored.
    pub(crate) fn verdict(&self, vs: &VirtualServer, key: &ServiceKey, rs: &RealServer, verdicts: &Verdicts) -> Verdict {
        if rs.check.is_none() && vs.check.is_none() {
            return Verdict::UP;
        }
        match verdicts.get(&rs_key(key, rs.address)) {
            Some(v) => *v,
            None if vs.alpha => Verdict::DOWN,
            None => Verdict::UP,
        }
    }

    /// Every real server's health check (valid rules only; invalid checks are skipped).
    pub fn checks(&self) -> Vec<RsCheck> {
        let mut out = Vec::new();
        for vs in &self.virtual_servers {
            let Some(key) = vs.key() else { continue };
            for rs in &vs.real_servers {
                let Some(raw) = rs.check.as_ref().or(vs.check.as_ref()) else { continue };
                let Ok(defs) = check_defs(raw, rs.address) else { continue };
                out.push(RsCheck {
                    key: rs_key(&key, rs.address),
                    defs,
                    default_up: !vs.alpha,
                    notify_up: rs.notify_up.clone(),
                    notify_down: rs.notify_down.clone(),
                });
            }
        }
        out
    }

    /// Per virtual server whose quorum is kept ([`VirtualServer::keeps_quorum`]): whether its
    /// quorum is lost under `verdicts` (the sorry server, if any, is in), with the
    /// quorum_up/quorum_down commands. The first field is the service's name, as
    /// [`quorum_key`] takes it.
    pub fn quorum_states(&self, verdicts: &Verdicts) -> Vec<(String, bool, Option<String>, Option<String>)> {
        self.virtual_servers
            .iter()
            .filter(|vs| vs.keeps_quorum())
            .filter_map(|vs| {
                let key = vs.key()?;
                Some((key.to_string(), self.quorum_lost(vs, &key, verdicts), vs.quorum_up.clone(), vs.quorum_down.clone()))
            })
            .collect()
    }

    /// A real server's weight in the table under its verdict: its dynamic weight or configured
    /// one when up, 0 when down with `inhibit_on_failure`, None (not in the table) when down.
    fn table_weight(v: Verdict, rs: &RealServer) -> Option<i32> {
        match (v.up, rs.inhibit_on_failure) {
            (true, _) => Some(v.weight.map_or(rs.weight, |w| i32::try_from(w).unwrap_or(i32::MAX))),
            (false, true) => Some(0),
            (false, false) => None,
        }
    }

    /// keepalived's quorum: lost when the live weight drops below quorum - hysteresis (or to
    /// 0), back when it reaches quorum + hysteresis; in between, the committed state holds.
    fn quorum_lost(&self, vs: &VirtualServer, key: &ServiceKey, verdicts: &Verdicts) -> bool {
        let live_weight: u64 = vs
            .real_servers
            .iter()
            .map(|rs| (self.verdict(vs, key, rs, verdicts), rs))
            .filter(|(v, _)| v.up)
            .filter_map(|(v, rs)| Self::table_weight(v, rs))
            .map(|w| w.max(0) as u64)
            .sum();
        if verdicts.get(&quorum_key(&key.to_string())).is_some_and(|v| !v.up) {
            live_weight < u64::from(vs.quorum) + u64::from(vs.hysteresis)
        } else {
            live_weight == 0 || live_weight < u64::from(vs.quorum.saturating_sub(vs.hysteresis))
        }
    }

    /// The IPVS table every director programs for these rules and verdicts (pure: equal inputs,
    /// equal tables, on every node).
    pub fn desired_table(&self, verdicts: &Verdicts) -> Table {
        let mut t = Table::default();
        for vs in &self.virtual_servers {
            let Some(key) = vs.key() else { continue };
            let mut svc = Service::new(key, vs.scheduler.clone());
            svc.persistence = vs.persistence_timeout.map(|to| Persistence {
                timeout: to.as_secs() as u32,
                netmask: persistence_netmask(&vs.persistence_granularity, key.family()).unwrap_or(0xffff_ffff),
            });
            svc.one_packet = vs.one_packet;
            if !vs.scheduler_flags.is_empty() {
                svc.sched_flags = ipvs::text::sched_flags(&vs.scheduler, &vs.scheduler_flags.join(",")).unwrap_or_default();
            }
            svc.pe_name.clone_from(&vs.persistence_engine);
            for rs in &vs.real_servers {
                let Some(weight) = Self::table_weight(self.verdict(vs, &key, rs, verdicts), rs) else { continue };
                svc.dests.insert(dest_key(rs.address), dest(rs.address, rs.forwarding.unwrap_or(vs.forwarding), weight, rs, vs));
            }
            // While the quorum is lost ([`RuleSet::quorum_lost`]), the sorry server takes all the
            // traffic: the real servers still alive leave the pool (weight 0 with
            // inhibit_on_failure), as keepalived's perform_quorum_state removes them, rather than
            // sharing it with the sorry server.
            if let Some(sorry) = vs.sorry_server {
                let placeholder = RealServer {
                    address: sorry,
                    weight: 1,
                    forwarding: None,
                    tunnel: None,
                    upper_threshold: 0,
                    lower_threshold: 0,
                    inhibit_on_failure: false,
                    check: None,
                    notify_up: None,
                    notify_down: None,
                };
                let fwd = vs.sorry_server_forwarding.unwrap_or(vs.forwarding);
                if self.quorum_lost(vs, &key, verdicts) {
                    for rs in &vs.real_servers {
                        if rs.inhibit_on_failure {
                            if let Some(d) = svc.dests.get_mut(&dest_key(rs.address)) {
                                d.weight = 0;
                            }
                        } else {
                            svc.dests.remove(&dest_key(rs.address));
                        }
                    }
                    svc.dests.insert(dest_key(sorry), dest(sorry, fwd, 1, &placeholder, vs));
                } else if vs.sorry_server_inhibit {
                    svc.dests.insert(dest_key(sorry), dest(sorry, fwd, 0, &placeholder, vs));
                }
            }
            // A group's other members: the same service under their keys (one verdict per
            // real server for the whole group, as keepalived checks a group's real servers once).
            for k in vs.group_keys().unwrap_or_default() {
                let mut m = svc.clone();
                m.key = k;
                t.insert(m);
            }
            t.insert(svc);
        }
        t
    }
}

fn dest_key(a: SocketAddr) -> DestKey {
    DestKey { addr: a.ip(), port: a.port() }
}

fn dest(a: SocketAddr, f: Forwarding, weight: i32, rs: &RealServer, vs: &VirtualServer) -> Dest {
    let mut d = Dest::new(a.ip(), a.port());
    d.forward = match f {
        Forwarding::Nat => Forward::Masq,
        Forwarding::Dr => Forward::Route,
        Forwarding::Tunnel => Forward::Tunnel(rs.tunnel.or(vs.tunnel).map_or(Tunnel::Ipip, TunnelRule::to_ipvs)),
    };
    d.weight = weight;
    d.upper_threshold = rs.upper_threshold;
    d.lower_threshold = rs.lower_threshold;
    d
}

/// The rules as stored in the Raft state: JSON (self-describing, so new optional fields do not
/// break old entries) behind a version field.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    v: u32,
    rules: RuleSet,
}

/// Encodes rules for the replicated state.
pub fn encode(rules: &RuleSet) -> Vec<u8> {
    serde_json::to_vec(&Stored { v: 1, rules: rules.clone() }).unwrap_or_default()
}

/// Decodes rules from the replicated state.
pub fn decode(bytes: &[u8]) -> Result<RuleSet, String> {
    let s: Stored = serde_json::from_slice(bytes).map_err(|e| format!("stored rules do not decode: {e}"))?;
    if s.v != 1 {
        return Err(format!("stored rules have format version {} (this build reads 1)", s.v));
    }
    Ok(s.rules)
}

/// Renders rules as TOML that `apply -f` accepts back.
pub fn to_toml(rules: &RuleSet) -> String {
    toml::to_string(rules).unwrap_or_else(|e| format!("# cannot render as TOML: {e}\n"))
}

/// One edit of the rule set (`corralctl vs …`, `corralctl rs …`), applied on the leader to the
/// current rules and written as one Raft entry. Unknown fields are refused, not dropped: an
/// edit from a newer `corralctl` that this node cannot carry out whole is an error, never a
/// different edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "edit", rename_all = "snake_case", deny_unknown_fields)]
pub enum Edit {
    /// Adds a virtual server with its real servers. One that exists already is refused, as
    /// `ipvsadm -A` refuses it: replacing it would drop its real servers ([`Edit::VsEdit`]
    /// changes its settings).
    VsAdd { vs: Box<VirtualServer> },
    /// Changes settings of an existing virtual server, keeping its real servers, checks and
    /// everything not named (ipvsadm's `-E`). `Some(None)` clears an optional setting.
    VsEdit {
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduler: Option<String>,
        /// Replaces the flags (empty: none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduler_flags: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        forwarding: Option<Forwarding>,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "edit_opt_dur")]
        persistence_timeout: Option<Option<Duration>>,
        #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_clears")]
        sorry_server: Option<Option<SocketAddr>>,
    },
    /// Removes a virtual server by its address or `fwmark:N`.
    VsDel { service: String },
    /// Adds (or replaces) a real server in a virtual server.
    RsAdd { service: String, rs: RealServer },
    /// Removes a real server.
    RsDel { service: String, address: SocketAddr },
    /// Sets a real server's weight.
    RsWeight { service: String, address: SocketAddr, weight: i32 },
    /// Weight 0: no new connections, established ones finish (ipvsadm's quiesce).
    RsDrain { service: String, address: SocketAddr },
}

/// Finds a virtual server by `VIP:PORT` (TCP unless `udp:`/`sctp:` prefixed) or `fwmark:N`.
fn find(rules: &mut RuleSet, service: &str) -> Result<usize, String> {
    let (proto, rest) = match service.split_once(':') {
        Some(("tcp", r)) => (Some(Protocol::Tcp), r),
        Some(("udp", r)) => (Some(Protocol::Udp), r),
        Some(("sctp", r)) => (Some(Protocol::Sctp), r),
        Some(("fwmark", m)) => {
            let m: u32 = m.parse().map_err(|_| format!("{service:?}: fwmark:N needs a number"))?;
            return rules
                .virtual_servers
                .iter()
                .position(|v| v.fwmark == Some(m) || v.group_keys().unwrap_or_default().iter().any(|k| matches!(k, ServiceKey::Fwmark { mark, .. } if *mark == m)))
                .ok_or_else(|| format!("no virtual server fwmark {m}"));
        }
        _ => (None, service),
    };
    let addr: SocketAddr = rest.parse().map_err(|_| format!("{service:?} is not VIP:PORT, [tcp|udp|sctp]:VIP:PORT or fwmark:N"))?;
    rules
        .virtual_servers
        .iter()
        .position(|v| {
            proto.is_none_or(|p| p == v.protocol)
                && (v.address == Some(addr) || v.group_keys().unwrap_or_default().iter().any(|k| matches!(k, ServiceKey::Addr { addr: a, .. } if *a == addr)))
        })
        .ok_or_else(|| format!("no virtual server {service}"))
}

impl Edit {
    /// Applies the edit to `rules`, then validates the result.
    pub fn apply(&self, rules: &mut RuleSet) -> Result<(), String> {
        match self {
            Edit::VsAdd { vs } => {
                let key = vs.key();
                if let Some(v) = rules.virtual_servers.iter().find(|v| key.is_some() && v.key() == key) {
                    return Err(format!(
                        "virtual server {} exists already (with {} real server(s)): `corralctl vs edit` changes its settings, `vs del` removes it",
                        key.map(|k| k.to_string()).unwrap_or_default(),
                        v.real_servers.len()
                    ));
                }
                rules.virtual_servers.push((**vs).clone());
            }
            Edit::VsEdit { service, scheduler, scheduler_flags, forwarding, persistence_timeout, sorry_server } => {
                let i = find(rules, service)?;
                let v = &mut rules.virtual_servers[i];
                if let Some(s) = scheduler {
                    v.scheduler = s.clone();
                }
                if let Some(f) = scheduler_flags {
                    v.scheduler_flags = f.clone();
                }
                if let Some(f) = forwarding {
                    v.forwarding = *f;
                }
                if let Some(p) = persistence_timeout {
                    v.persistence_timeout = *p;
                    if p.is_none() {
                        v.persistence_granularity = None; // a netmask for no persistence
                    }
                }
                if let Some(s) = sorry_server {
                    v.sorry_server = *s;
                }
            }
            Edit::VsDel { service } => {
                let i = find(rules, service)?;
                rules.virtual_servers.remove(i);
            }
            Edit::RsAdd { service, rs } => {
                let i = find(rules, service)?;
                let v = &mut rules.virtual_servers[i];
                v.real_servers.retain(|r| r.address != rs.address);
                v.real_servers.push(rs.clone());
            }
            Edit::RsDel { service, address } => {
                let i = find(rules, service)?;
                let v = &mut rules.virtual_servers[i];
                let before = v.real_servers.len();
                v.real_servers.retain(|r| r.address != *address);
                if v.real_servers.len() == before {
                    return Err(format!("{service} has no real server {address}"));
                }
            }
            Edit::RsWeight { service, address, weight } => set_weight(rules, service, *address, *weight)?,
            Edit::RsDrain { service, address } => set_weight(rules, service, *address, 0)?,
        }
        rules.validate().map_err(|(segs, m)| format!("{}: {m}", crate::config::key_path(&segs)))
    }
}

/// A present `null` is `Some(None)` (clear), not `None` (unchanged) as serde reads it by default.
fn null_clears<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `Option<Option<Duration>>` for [`Edit::VsEdit`]: absent = unchanged, `null` = cleared,
/// a humantime string = set.
mod edit_opt_dur {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<Duration>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(Some(d)) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            _ => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Duration>>, D::Error> {
        let v: Option<String> = Option::deserialize(d)?;
        match v {
            None => Ok(Some(None)),
            Some(s) => humantime::parse_duration(&s).map(|d| Some(Some(d))).map_err(serde::de::Error::custom),
        }
    }
}

fn set_weight(rules: &mut RuleSet, service: &str, address: SocketAddr, weight: i32) -> Result<(), String> {
    let i = find(rules, service)?;
    let rs = rules.virtual_servers[i]
        .real_servers
        .iter_mut()
        .find(|r| r.address == address)
        .ok_or_else(|| format!("{service} has no real server {address}"))?;
    rs.weight = weight;
    Ok(())
}

/// `tcp 900s, tcp_fin 120s, udp 300s` (the ones given), or `kept as the kernel has them`.
pub fn timeouts_text(t: Option<Timeouts>) -> String {
    let parts: Vec<String> = t
        .iter()
        .flat_map(|t| [("tcp", t.tcp), ("tcp_fin", t.tcp_fin), ("udp", t.udp)])
        .filter_map(|(k, d)| d.map(|d| format!("{k} {}s", d.as_secs())))
        .collect();
    if parts.is_empty() { "kept as the kernel has them".into() } else { parts.join(", ") }
}

/// Human-readable changes between two tables (for `apply --dry-run`), in ipvsadm's words.
pub fn describe_diff(from: &Table, to: &Table) -> Vec<String> {
    ipvs::diff(from, to)
        .iter()
        .map(|op| {
            // An edit says what it changes: a dry run is read to decide.
            let what = match op {
                ipvs::Op::EditService(new) => from.services.get(&new.key).map(|old| service_changes(old, new)),
                ipvs::Op::EditDest(k, new) => from.services.get(k).and_then(|s| s.dests.get(&new.key)).map(|old| dest_changes(old, new)),
                _ => None,
            };
            match what {
                Some(w) if !w.is_empty() => format!("{op}: {}", w.join(", ")),
                _ => op.to_string(),
            }
        })
        .collect()
}

/// `name old → new` for each setting that differs between two versions of a service.
fn service_changes(old: &Service, new: &Service) -> Vec<String> {
    let mut v = Vec::new();
    let mut one = |name: &str, a: String, b: String| {
        if a != b {
            v.push(format!("{name} {a} → {b}"));
        }
    };
    one("scheduler", old.scheduler.clone(), new.scheduler.clone());
    let flags = |s: &Service| {
        let n = ipvs::text::sched_flag_names(&s.scheduler, &s.sched_flags);
        if n.is_empty() { "none".to_string() } else { n.join(",") }
    };
    one("scheduler flags", flags(old), flags(new));
    let pers = |s: &Service| match (s.persistence, s.persistence_mask()) {
        (None, _) => "off".to_string(),
        (Some(p), None) => format!("{}s", p.timeout),
        (Some(p), Some(m)) => format!("{}s (granularity {m})", p.timeout),
    };
    one("persistence", pers(old), pers(new));
    one("one-packet", old.one_packet.to_string(), new.one_packet.to_string());
    let pe = |s: &Service| s.pe_name.clone().unwrap_or_else(|| "none".into());
    one("persistence engine", pe(old), pe(new));
    v
}

/// `name old → new` for each setting that differs between two versions of a real server.
fn dest_changes(old: &Dest, new: &Dest) -> Vec<String> {
    let mut v = Vec::new();
    let mut one = |name: &str, a: String, b: String| {
        if a != b {
            v.push(format!("{name} {a} → {b}"));
        }
    };
    one("weight", old.weight.to_string(), new.weight.to_string());
    let fwd = |d: &Dest| match d.forward {
        Forward::Masq => "nat".to_string(),
        Forward::Route | Forward::Local | Forward::Bypass => "dr".to_string(),
        Forward::Tunnel(Tunnel::Ipip) => "tunnel".to_string(),
        Forward::Tunnel(Tunnel::Gue { port, .. }) => format!("tunnel (gue:{port})"),
        Forward::Tunnel(Tunnel::Gre { .. }) => "tunnel (gre)".to_string(),
    };
    one("forwarding", fwd(old), fwd(new));
    one("upper threshold", old.upper_threshold.to_string(), new.upper_threshold.to_string());
    one("lower threshold", old.lower_threshold.to_string(), new.lower_threshold.to_string());
    if let (Forward::Tunnel(a), Forward::Tunnel(b)) = (old.forward, new.forward) {
        if a != b && fwd(old) == fwd(new) {
            v.push("tunnel checksum options".into());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[virtual_server]]
address = "192.0.2.100:80"
scheduler = "rr"
persistence_timeout = "5m"
persistence_granularity = "255.255.255.0"
sorry_server = "198.51.100.99:80"
check = { type = "tcp", interval = "2s" }
[[virtual_server.real_server]]
address = "198.51.100.11:80"
weight = 3
[[virtual_server.real_server]]
address = "198.51.100.12:80"
inhibit_on_failure = true

[[virtual_server]]
fwmark = 7
family = "inet6"
forwarding = "dr"
[[virtual_server.real_server]]
address = "[2001:db8::11]:0"
"#;

    fn parse(text: &str) -> Result<RuleSet, ConfigError> {
        RuleSet::parse(Path::new("services.toml"), text)
    }

    #[test]
    fn parses_and_round_trips_through_toml_and_storage() {
        let r = parse(EXAMPLE).unwrap();
        assert_eq!(r.virtual_servers.len(), 2);
        let again = parse(&to_toml(&r)).unwrap();
        assert_eq!(again, r);
        assert_eq!(decode(&encode(&r)).unwrap(), r);
    }

    #[test]
    fn desired_table_follows_rules_and_verdicts() {
        let r = parse(EXAMPLE).unwrap();
        let t = r.desired_table(&Verdicts::new());
        assert_eq!(t.services.len(), 2);
        let key = r.virtual_servers[0].key().unwrap();
        let svc = &t.services[&key];
        assert_eq!(svc.persistence, Some(Persistence { timeout: 300, netmask: 0xffff_ff00 }));
        assert_eq!(svc.dests.len(), 2, "no sorry server while real servers are up");
        assert!(svc.dests.values().all(|d| d.forward == Forward::Masq));
        // One down (removed), one down with inhibit (weight 0): live weight 0 → sorry server.
        let mut v = Verdicts::new();
        v.insert(rs_key(&key, "198.51.100.11:80".parse().unwrap()), Verdict::DOWN);
        v.insert(rs_key(&key, "198.51.100.12:80".parse().unwrap()), Verdict::DOWN);
        let t = r.desired_table(&v);
        let d = &t.services[&key].dests;
        assert_eq!(d.len(), 2);
        assert_eq!(d[&dest_key("198.51.100.12:80".parse().unwrap())].weight, 0);
        assert!(d.contains_key(&dest_key("198.51.100.99:80".parse().unwrap())));
        // Same inputs, same table (what makes -Sn identical on every director).
        assert_eq!(r.desired_table(&v), r.desired_table(&v));
        // A script's dynamic weight replaces the configured one (3) ...
        let rs11 = rs_key(&key, "198.51.100.11:80".parse().unwrap());
        let mut v = Verdicts::new();
        v.insert(rs11.clone(), Verdict { up: true, weight: Some(7) });
        let t = r.desired_table(&v);
        assert_eq!(t.services[&key].dests[&dest_key("198.51.100.11:80".parse().unwrap())].weight, 7);
        assert_eq!(t.services[&key].dests.len(), 2, "live weight 8: no sorry server");
        // ... and is what counts toward the quorum: weight 0 with the other one down → sorry server
        // alone (the one still alive leaves the pool, as in keepalived).
        v.insert(rs11, Verdict { up: true, weight: Some(0) });
        v.insert(rs_key(&key, "198.51.100.12:80".parse().unwrap()), Verdict::DOWN);
        let d = &r.desired_table(&v).services[&key].dests;
        assert!(!d.contains_key(&dest_key("198.51.100.11:80".parse().unwrap())), "{d:?}");
        assert!(d.contains_key(&dest_key("198.51.100.99:80".parse().unwrap())), "live weight 0 → sorry server");
    }

    #[test]
    fn quorum_is_kept_for_a_sorry_server_or_a_quorum_hook_and_a_hook_alone_leaves_the_table() {
        // Three services whose one real server is down: a sorry server, a quorum_down hook
        // alone, neither. Only the first two have a quorum state; the hook alone changes no
        // table entry (keepalived runs the hooks for every virtual server, and pulls the live
        // ones only to let a sorry server in).
        let r = parse(
            "[[virtual_server]]\naddress = \"192.0.2.1:80\"\nsorry_server = \"198.51.100.99:80\"\n\
             [[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\ninhibit_on_failure = true\ncheck = { type = \"tcp\" }\n\
             [[virtual_server]]\naddress = \"192.0.2.2:80\"\nquorum_down = \"true\"\n\
             [[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\ninhibit_on_failure = true\ncheck = { type = \"tcp\" }\n\
             [[virtual_server]]\naddress = \"192.0.2.3:80\"\n\
             [[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\ninhibit_on_failure = true\ncheck = { type = \"tcp\" }\n",
        )
        .unwrap();
        let mut v = Verdicts::new();
        for vs in &r.virtual_servers {
            v.insert(rs_key(&vs.key().unwrap(), "198.51.100.1:80".parse().unwrap()), Verdict { up: false, weight: None });
        }
        let q = r.quorum_states(&v);
        let named: Vec<(&str, bool)> = q.iter().map(|(s, lost, _, _)| (s.as_str(), *lost)).collect();
        assert_eq!(named, [("TCP 192.0.2.1:80", true), ("TCP 192.0.2.2:80", true)]);
        assert_eq!(q[1].3.as_deref(), Some("true"), "its quorum_down");
        let t = r.desired_table(&v);
        let dests = |i: usize| t.services[&r.virtual_servers[i].key().unwrap()].dests.values().map(|d| d.weight).collect::<Vec<_>>();
        assert_eq!(dests(0), [0, 1], "sorry server in beside the inhibited one");
        assert_eq!(dests(1), [0], "a quorum hook alone: the table as without it");
        assert_eq!(dests(1), dests(2));
    }

    #[test]
    fn a_lost_quorum_gives_the_sorry_server_all_the_traffic() {
        // quorum 5: two live servers of weight 2 and 1 (3) are not enough; keepalived then
        // serves from the sorry server alone, leaving inhibit_on_failure servers at weight 0.
        let r = parse(
            "[[virtual_server]]\naddress = \"192.0.2.1:80\"\nsorry_server = \"198.51.100.99:80\"\nquorum = 5\nhysteresis = 1\n\
             [[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\nweight = 2\n\
             [[virtual_server.real_server]]\naddress = \"198.51.100.2:80\"\nweight = 1\ninhibit_on_failure = true\n",
        )
        .unwrap();
        let key = r.virtual_servers[0].key().unwrap();
        let d = r.desired_table(&Verdicts::new()).services[&key].dests.clone();
        let w = |a: &str| d.get(&dest_key(a.parse().unwrap())).map(|d| d.weight);
        assert_eq!((w("198.51.100.1:80"), w("198.51.100.2:80"), w("198.51.100.99:80")), (None, Some(0), Some(1)), "{d:?}");
        assert_eq!(r.quorum_states(&Verdicts::new())[0].1, true, "quorum lost");
        // With quorum (none committed lost), 4 = quorum - hysteresis keeps it: the real servers
        // at their weights, no sorry server.
        let mut r = r;
        r.virtual_servers[0].real_servers[0].weight = 3;
        let d = r.desired_table(&Verdicts::new()).services[&key].dests.clone();
        let w = |a: &str| d.get(&dest_key(a.parse().unwrap())).map(|d| d.weight);
        assert_eq!((w("198.51.100.1:80"), w("198.51.100.2:80"), w("198.51.100.99:80")), (Some(3), Some(1), None), "{d:?}");
        // sorry_server_inhibit: there at weight 0 while the quorum holds; its own forwarding.
        r.virtual_servers[0].sorry_server_inhibit = true;
        r.virtual_servers[0].sorry_server_forwarding = Some(Forwarding::Dr);
        let d = r.desired_table(&Verdicts::new()).services[&key].dests.clone();
        let sorry = d.get(&dest_key("198.51.100.99:80".parse().unwrap())).copied();
        assert_eq!(sorry.map(|d| (d.weight, d.forward)), Some((0, Forward::Route)), "{d:?}");
        assert_eq!(d[&dest_key("198.51.100.1:80".parse().unwrap())].forward, Forward::Masq, "the pool keeps its own");
        r.virtual_servers[0].real_servers[0].weight = 2;
        let d = r.desired_table(&Verdicts::new()).services[&key].dests.clone();
        let sorry = d.get(&dest_key("198.51.100.99:80".parse().unwrap())).copied();
        assert_eq!(sorry.map(|d| (d.weight, d.forward)), Some((1, Forward::Route)), "quorum lost: weight 1: {d:?}");
        for (extra, key) in [("sorry_server_inhibit = true\n", "virtual_server[0].sorry_server_inhibit"), ("sorry_server_forwarding = \"dr\"\n", "virtual_server[0].sorry_server_forwarding")] {
            let e = parse(&format!("[[virtual_server]]\naddress = \"192.0.2.1:80\"\n{extra}")).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        // A sorry server of the other family only by tunnel, as the kernel allows.
        let base = "[[virtual_server]]\naddress = \"192.0.2.1:80\"\nforwarding = \"dr\"\nsorry_server = \"[2001:db8::99]:80\"\n";
        assert_eq!(parse(base).unwrap_err().key, "virtual_server[0].sorry_server");
        assert!(parse(&format!("{base}sorry_server_forwarding = \"tunnel\"\n")).is_ok());
    }

    #[test]
    fn hysteresis_is_a_band_held_by_the_committed_quorum_state() {
        // quorum 5, hysteresis 1: lost below 4, back at 6; between, the committed state holds.
        let mut r = parse(
            "[[virtual_server]]\naddress = \"192.0.2.1:80\"\nsorry_server = \"198.51.100.99:80\"\nquorum = 5\nhysteresis = 1\n\
             [[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\nweight = 4\n",
        )
        .unwrap();
        let key = r.virtual_servers[0].key().unwrap();
        let lost_state = |lost: bool| {
            let mut v = Verdicts::new();
            v.insert(quorum_key(&key.to_string()), Verdict { up: !lost, weight: None });
            v
        };
        let sorry_in = |r: &RuleSet, v: &Verdicts| r.desired_table(v).services[&key].dests.contains_key(&dest_key("198.51.100.99:80".parse().unwrap()));
        for (weight, had_quorum, lost) in [(3, true, true), (4, true, false), (5, true, false), (4, false, true), (5, false, true), (6, false, false)] {
            r.virtual_servers[0].real_servers[0].weight = weight;
            assert_eq!(sorry_in(&r, &lost_state(!had_quorum)), lost, "live weight {weight}, had quorum: {had_quorum}");
            assert_eq!(r.quorum_states(&lost_state(!had_quorum))[0].1, lost);
        }
        // Nothing committed reads as having quorum.
        r.virtual_servers[0].real_servers[0].weight = 4;
        assert!(!sorry_in(&r, &Verdicts::new()));
        assert_eq!(r.quorum_states(&Verdicts::new())[0].0, key.to_string(), "named as quorum_key takes it");
    }

    #[test]
    fn a_half_open_check_gets_the_real_server_address() {
        let r = parse(
            "[health]\n[[virtual_server]]\naddress = \"192.0.2.1:80\"\ncheck = { type = \"tcp_half_open\", interval = \"1s\", connect_timeout = \"1s\" }\n[[virtual_server.real_server]]\naddress = \"198.51.100.1:8080\"\n",
        )
        .unwrap();
        let c = &r.checks()[0];
        assert!(matches!(&c.defs[0], check::CheckDef::TcpHalfOpen(h) if h.target == "198.51.100.1:8080".parse().unwrap() && h.timing.connect_timeout == Duration::from_secs(1)), "{:?}", c.defs[0]);
        assert_eq!(c.defs[0].kind_name(), "tcp_half_open");
        assert_eq!(parse(&to_toml(&r)).unwrap(), r, "round-trips as written");
    }

    #[test]
    fn checks_default_to_the_real_server_address() {
        let r = parse(EXAMPLE).unwrap();
        let checks = r.checks();
        assert_eq!(checks.len(), 2, "the fwmark service has no check");
        assert_eq!(checks[0].key, "TCP 192.0.2.100:80 -> 198.51.100.11:80");
        assert_eq!(checks[0].defs[0], {
            let mut d = check::CheckDef::tcp("198.51.100.11:80".parse().unwrap());
            d.timing_mut().interval = Duration::from_secs(2);
            d
        });
        let own = parse(
            "[health]\nobservers = 2\n[[virtual_server]]\naddress = \"192.0.2.1:80\"\n[[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\ncheck = { type = \"http\", port = 8080, path = \"/hc\" }\n",
        )
        .unwrap();
        let c = &own.checks()[0];
        assert!(matches!(&c.defs[0], check::CheckDef::Http(h) if h.target == "198.51.100.1:8080".parse().unwrap() && h.path == "/hc"));
        assert_eq!(own.health.observers, 2);
        assert_eq!(parse(&to_toml(&own)).unwrap(), own, "checks round-trip as written");
        // A real server without a check cannot be voted down.
        let key = own.virtual_servers[0].key().unwrap();
        let mut v = Verdicts::new();
        v.insert(c.key.clone(), Verdict::DOWN);
        assert!(own.desired_table(&v).services[&key].dests.is_empty());
        let mut unchecked = own.clone();
        unchecked.virtual_servers[0].real_servers[0].check = None;
        assert_eq!(unchecked.desired_table(&v).services[&key].dests.len(), 1);
        // Bad checks name the key.
        let e = parse("[[virtual_server]]\naddress = \"192.0.2.1:80\"\n[[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\ncheck = { type = \"gopher\" }\n").unwrap_err();
        assert_eq!(e.key, "virtual_server[0].real_server[0].check");
        let e = parse("[[virtual_server]]\naddress = \"192.0.2.1:80\"\ncheck = { type = \"tcp\", interval = \"soon\" }\n[[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\n").unwrap_err();
        assert_eq!(e.key, "virtual_server[0].check");
        let e = parse("[health]\nobservers = 0\n").unwrap_err();
        assert_eq!(e.key, "health.observers");
    }

    #[test]
    fn bad_rules_name_the_key_and_line() {
        let e = parse("[[virtual_server]]\naddress = \"192.0.2.1:80\"\nscheduler = \"fastest\"\n").unwrap_err();
        assert_eq!(e.key, "virtual_server[0].scheduler");
        assert_eq!(e.line, Some(3));
        let e = parse("[[virtual_server]]\naddress = \"192.0.2.1:80\"\n[[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\nweight = -1\n").unwrap_err();
        assert_eq!(e.key, "virtual_server[0].real_server[0].weight");
        let e = parse("[[virtual_server]]\naddress = \"192.0.2.1:80\"\n[[virtual_server]]\naddress = \"192.0.2.1:80\"\n").unwrap_err();
        assert!(e.message.contains("twice"), "{e}");
        let e = parse("[[virtual_server]]\naddres = \"192.0.2.1:80\"\n").unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse("[[virtual_server]]\naddress = \"192.0.2.1:80\"\n[[virtual_server.real_server]]\naddress = \"[2001:db8::1]:80\"\n").unwrap_err();
        assert!(e.message.contains("family"), "{e}");
    }

    #[test]
    fn scheduler_flags_persistence_engine_and_tunnel_types_reach_the_table() {
        let r = parse(
            r#"
[[virtual_server]]
address = "192.0.2.100:5060"
protocol = "udp"
scheduler = "sh"
scheduler_flags = ["sh-port", "sh-fallback"]
persistence_timeout = "30s"
persistence_engine = "sip"
forwarding = "tunnel"
tunnel = { type = "gue", port = 6080, checksum = "csum" }
[[virtual_server.real_server]]
address = "198.51.100.31:5060"
[[virtual_server.real_server]]
address = "198.51.100.32:5060"
tunnel = { type = "gre" }
[[virtual_server.real_server]]
address = "198.51.100.33:5060"
forwarding = "dr"
"#,
        )
        .unwrap();
        let t = r.desired_table(&Verdicts::new());
        let svc = t.services.values().next().unwrap();
        assert_eq!(svc.sched_flags, ipvs::model::SchedFlags { flag1: true, flag2: true, flag3: false });
        assert_eq!(svc.pe_name.as_deref(), Some("sip"));
        let fwd = |a: &str| svc.dests[&dest_key(a.parse().unwrap())].forward;
        let csum = ipvs::model::TunFlags { nocsum: false, csum: true, remcsum: false };
        assert_eq!(fwd("198.51.100.31:5060"), Forward::Tunnel(Tunnel::Gue { port: 6080, flags: csum }));
        let nocsum = ipvs::model::TunFlags { nocsum: true, csum: false, remcsum: false };
        assert_eq!(fwd("198.51.100.32:5060"), Forward::Tunnel(Tunnel::Gre { flags: nocsum }));
        assert_eq!(fwd("198.51.100.33:5060"), Forward::Route);
        // What `get services` prints is what apply reads.
        let text = toml::to_string(&r).unwrap();
        assert_eq!(parse(&text).unwrap(), r, "{text}");
        // ipvsadm's save line for it, as the kernel will be asked.
        let saved = ipvs::text::save(&t);
        assert!(saved.contains("-A -u 192.0.2.100:5060 -s sh -p 30 --pe sip -b sh-fallback,sh-port"), "{saved}");

        let base = "[[virtual_server]]\naddress = \"192.0.2.1:80\"\n";
        for (extra, key, says) in [
            ("scheduler = \"rr\"\nscheduler_flags = [\"sh-port\"]\n", "virtual_server[0].scheduler_flags", "needs scheduler \"sh\""),
            ("scheduler_flags = [\"fast\"]\n", "virtual_server[0].scheduler_flags", "invalid scheduler flag"),
            ("persistence_engine = \"sip\"\n", "virtual_server[0].persistence_engine", "needs persistence_timeout"),
            ("persistence_timeout = \"1m\"\npersistence_engine = \"http\"\n", "virtual_server[0].persistence_engine", "unknown persistence engine"),
            ("tunnel = { type = \"gue\" }\nforwarding = \"tunnel\"\n", "virtual_server[0].tunnel", "needs port"),
            ("tunnel = { type = \"gre\", checksum = \"remcsum\" }\nforwarding = \"tunnel\"\n", "virtual_server[0].tunnel", "gue tunnels only"),
            ("tunnel = { type = \"ipip\", checksum = \"csum\" }\nforwarding = \"tunnel\"\n", "virtual_server[0].tunnel", "not ipip"),
            ("tunnel = { type = \"gre\" }\nforwarding = \"dr\"\n", "virtual_server[0].tunnel", "forwarding = \"tunnel\" only"),
            (
                "[[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\ntunnel = { type = \"gre\" }\n",
                "virtual_server[0].real_server[0].tunnel",
                "forwarding = \"tunnel\" only",
            ),
        ] {
            let e = parse(&format!("{base}{extra}")).unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
            assert!(e.message.contains(says), "{extra}: {e}");
        }
        let e = parse(&format!("{base}forwarding = \"tunnel\"\ntunnel = {{ type = \"vxlan\" }}\n")).unwrap_err();
        assert!(e.key.starts_with("virtual_server[0].tunnel"), "{e}");
    }

    #[test]
    fn an_edit_with_a_field_this_node_does_not_know_is_refused() {
        let ok = r#"{"edit":"vs_edit","service":"192.0.2.100:80","scheduler":"wrr"}"#;
        assert!(serde_json::from_str::<Edit>(ok).is_ok());
        let newer = r#"{"edit":"vs_edit","service":"192.0.2.100:80","scheduler":"wrr","weight_ramp":"30s"}"#;
        let e = serde_json::from_str::<Edit>(newer).unwrap_err().to_string();
        assert!(e.contains("weight_ramp"), "{e}");
        let e = serde_json::from_str::<Edit>(r#"{"edit":"rs_drain","service":"192.0.2.100:80","address":"198.51.100.1:80","soon":true}"#).unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
    }

    #[test]
    fn a_diff_says_what_an_edit_changes() {
        let r = parse(EXAMPLE).unwrap();
        let mut to = r.clone();
        Edit::RsWeight { service: "192.0.2.100:80".into(), address: "198.51.100.11:80".parse().unwrap(), weight: 0 }.apply(&mut to).unwrap();
        let edit = Edit::VsEdit {
            service: "192.0.2.100:80".into(),
            scheduler: Some("sh".into()),
            scheduler_flags: Some(vec!["sh-port".into()]),
            forwarding: None,
            persistence_timeout: Some(None),
            sorry_server: None,
        };
        edit.apply(&mut to).unwrap();
        let v = Verdicts::new();
        let d = describe_diff(&r.desired_table(&v), &to.desired_table(&v));
        assert!(d.contains(&"edit destination 198.51.100.11:80 of service TCP 192.0.2.100:80: weight 3 → 0".to_string()), "{d:#?}");
        assert!(
            d.contains(&"edit service TCP 192.0.2.100:80: scheduler rr → sh, scheduler flags none → sh-port, persistence 300s (granularity 255.255.255.0) → off".to_string()),
            "{d:#?}"
        );
    }

    #[test]
    fn a_real_server_may_have_several_checks_like_keepalived() {
        let rules = |check: &str| format!("[[virtual_server]]\naddress = \"192.0.2.1:80\"\n[[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\ncheck = {check}\n");
        let r = parse(&rules(r#"[{ type = "http", path = "/hc" }, { type = "tcp", port = 8443 }]"#)).unwrap();
        let c = &r.checks()[0];
        assert_eq!(c.defs.len(), 2);
        assert_eq!(c.defs[1], check::CheckDef::tcp("198.51.100.1:8443".parse().unwrap()));
        assert_eq!(c.kind(), "http+tcp");
        assert_eq!(c.check_id(0), c.key, "the first check keeps the real server's id");
        assert_eq!(c.check_id(1), format!("{} #2", c.key));
        assert_eq!(rs_of_check_id(&c.check_id(1)), c.key);
        assert_eq!(rs_of_check_id(&c.key), c.key);
        // get services → apply round trip.
        let text = toml::to_string(&r).unwrap();
        assert_eq!(parse(&text).unwrap(), r, "{text}");
        // Errors name the check by its place in the list.
        let e = parse(&rules(r#"[{ type = "tcp" }, { type = "tcp", connect_ip = "198.51.100.9" }]"#)).unwrap_err();
        assert_eq!(e.key, "virtual_server[0].real_server[0].check[1].connect_ip", "{e}");
        let e = parse(&rules(r#"[{ type = "tcp" }, { type = "gopher" }]"#)).unwrap_err();
        assert_eq!(e.key, "virtual_server[0].real_server[0].check[1]", "{e}");
        let e = parse(&rules("[]")).unwrap_err();
        assert_eq!(e.key, "virtual_server[0].real_server[0].check", "{e}");
        let e = parse(&rules(r#"[[{ type = "tcp" }]]"#)).unwrap_err();
        assert_eq!(e.key, "virtual_server[0].real_server[0].check[0]", "{e}");
    }

    #[test]
    fn connection_timeouts_are_part_of_the_rules() {
        let r = parse("[timeouts]\ntcp = \"15m\"\nudp = \"300s\"\n").unwrap();
        let t = r.timeouts.unwrap();
        assert_eq!(t.to_ipvs(), ipvs::Timeouts { tcp: 900, tcp_fin: 0, udp: 300 }, "tcp_fin left as the kernel has it");
        assert!(t.met_by(&ipvs::Timeouts { tcp: 900, tcp_fin: 5, udp: 300 }));
        assert!(!t.met_by(&ipvs::Timeouts { tcp: 901, tcp_fin: 5, udp: 300 }));
        assert_eq!(timeouts_text(Some(t)), "tcp 900s, udp 300s");
        assert_eq!(timeouts_text(None), "kept as the kernel has them");
        let text = toml::to_string(&r).unwrap();
        assert_eq!(parse(&text).unwrap(), r, "{text}");
        for (bad, key) in [("tcp = \"0s\"", "timeouts.tcp"), ("udp = \"1500ms\"", "timeouts.udp"), ("tcp_fin = \"30d\"", "timeouts.tcp_fin")] {
            let e = parse(&format!("[timeouts]\n{bad}\n")).unwrap_err();
            assert_eq!(e.key, key, "{bad}: {e}");
        }
        assert!(parse("[timeouts]\ntcpfin = \"1m\"\n").unwrap_err().message.contains("unknown field"));
    }

    #[test]
    fn an_ipv6_group_range_counts_the_last_group_in_hex() {
        let r = parse(
            r#"
[[virtual_server]]
address = "[2001:db8::1]:80"
group = ["[2001:db8::a-c]:80", "[2001:db8::ff]:80"]
scheduler = "rr"
[[virtual_server.real_server]]
address = "[2001:db8:1::1]:80"
"#,
        )
        .unwrap();
        let saved = ipvs::text::save(&r.desired_table(&Verdicts::new()));
        for line in ["-A -t [2001:db8::1]:80 -s rr", "-A -t [2001:db8::a]:80 -s rr", "-A -t [2001:db8::b]:80 -s rr", "-A -t [2001:db8::c]:80 -s rr", "-A -t [2001:db8::ff]:80 -s rr"] {
            assert!(saved.contains(line), "{line}:\n{saved}");
        }
        assert_eq!(r.virtual_servers[0].keys().len(), 5);
    }

    #[test]
    fn a_group_serves_more_virtual_services_like_the_first() {
        let r = parse(
            r#"
[[virtual_server]]
address = "192.0.2.100:80"
group = ["192.0.2.110-112:80", "192.0.2.120:80", "fwmark:7"]
forwarding = "dr"
scheduler = "rr"
check = { type = "tcp" }
[[virtual_server.real_server]]
address = "198.51.100.1:80"
weight = 3
"#,
        )
        .unwrap();
        let vs = &r.virtual_servers[0];
        assert_eq!(vs.keys().len(), 6);
        let t = r.desired_table(&Verdicts::new());
        assert_eq!(t.services.len(), 6);
        let saved = ipvs::text::save(&t);
        for line in [
            "-A -t 192.0.2.100:80 -s rr",
            "-A -t 192.0.2.111:80 -s rr",
            "-A -t 192.0.2.120:80 -s rr",
            "-A -f 7 -s rr",
            "-a -t 192.0.2.112:80 -r 198.51.100.1:80 -g -w 3",
            "-a -f 7 -r 198.51.100.1:80 -g -w 3",
        ] {
            assert!(saved.contains(line), "{line}:\n{saved}");
        }
        // One check and one verdict for the group: a real server down leaves every member.
        assert_eq!(r.checks().len(), 1);
        let mut v = Verdicts::new();
        v.insert(r.checks()[0].key.clone(), Verdict::DOWN);
        assert!(r.desired_table(&v).services.values().all(|s| s.dests.is_empty()));
        // Edits reach the group by any member.
        let mut e = r.clone();
        Edit::RsWeight { service: "192.0.2.111:80".into(), address: "198.51.100.1:80".parse().unwrap(), weight: 9 }.apply(&mut e).unwrap();
        Edit::RsDrain { service: "fwmark:7".into(), address: "198.51.100.1:80".parse().unwrap() }.apply(&mut e).unwrap();
        assert_eq!(e.virtual_servers[0].real_servers[0].weight, 0);
        let text = toml::to_string(&r).unwrap();
        assert_eq!(parse(&text).unwrap(), r, "{text}");

        let base = "[[virtual_server]]\naddress = \"192.0.2.100:80\"\n";
        for (extra, key, says) in [
            ("group = [\"192.0.2.100:80\"]\n", "virtual_server[0].group", "defined twice"),
            ("group = [\"192.0.2.1:80\", \"bogus\"]\n", "virtual_server[0].group[1]", "not VIP:PORT"),
            ("group = [\"192.0.2.9-3:80\"]\n", "virtual_server[0].group[0]", "ends below"),
            ("group = [\"[2001:db8::1f-10]:80\"]\n", "virtual_server[0].group[0]", "ends below"),
            ("group = [\"[2001:db8::1-zz]:80\"]\n", "virtual_server[0].group[0]", "[A::B-E]:PORT"),
            ("group = [\"[2001:db8::1]:80\"]\nforwarding = \"dr\"\n", "virtual_server[0].group", "of one address family"),
            ("group = [\"192.0.2.7:0\"]\nforwarding = \"dr\"\n", "virtual_server[0].group", "port 0"),
            ("group = [\"fwmark:0\"]\n", "virtual_server[0].group[0]", "N > 0"),
        ] {
            let e = parse(&format!("{base}{extra}")).unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
            assert!(e.message.contains(says), "{extra}: {e}");
        }
        let e = parse(&format!("{base}[[virtual_server]]\naddress = \"192.0.2.50:80\"\ngroup = [\"192.0.2.99-100:80\"]\n")).unwrap_err();
        assert!(e.message.contains("TCP 192.0.2.100:80 is defined twice"), "{e}");
    }

    #[test]
    fn check_tables_refuse_keys_they_do_not_know_and_take_keepalived_names() {
        let rules = |check: &str| format!("[[virtual_server]]\naddress = \"192.0.2.1:80\"\n[[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\ncheck = {check}\n");
        let e = parse(&rules(r#"{ type = "tcp", connect_ip = "198.51.100.9" }"#)).unwrap_err();
        assert_eq!(e.key, "virtual_server[0].real_server[0].check.connect_ip");
        assert!(e.message.contains("unknown key in a tcp check (it knows: ") && e.message.contains("connect_timeout"), "{e}");
        let e = parse(&rules(r#"{ type = "http", url = { path = "/hc" } }"#)).unwrap_err();
        assert_eq!(e.key, "virtual_server[0].real_server[0].check.url");
        // On the virtual server, for every real server it checks.
        let e = parse("[[virtual_server]]\naddress = \"192.0.2.1:80\"\ncheck = { type = \"tcp\", bindto = \"192.0.2.1\" }\n[[virtual_server.real_server]]\naddress = \"198.51.100.1:80\"\n").unwrap_err();
        assert_eq!(e.key, "virtual_server[0].check.bindto");
        // keepalived's names and settings at their defaults are known.
        for ok in [
            r#"{ type = "tcp", connect_port = 8080, delay_loop = "3s", retry = 2, graceful_close = false }"#,
            r#"{ type = "tcp", port = 8080, nb_get_retry = 2, read_timeout = "1s", initial = "down" }"#,
            r#"{ type = "http", path = "/", status_code = [200], virtualhost = "www" }"#,
            r#"{ type = "https", path = "/", tls_verify = false, sni = "www" }"#,
            r#"{ type = "dns", name = "example.org", qtype = "A" }"#,
            r#"{ type = "script", misc_path = "true", misc_timeout = "1s", misc_dynamic = false }"#,
            r#"{ type = "icmp", payload_len = 56 }"#,
            r#"{ type = "udp", payload = "ping", require_reply = false }"#,
            r#"{ type = "smtp", connect_port = 25, helo_name = "lb1.example.org" }"#,
        ] {
            if let Err(e) = parse(&rules(ok)) {
                panic!("{ok}: {e}");
            }
        }
        let r = parse(&rules(r#"{ type = "tcp", connect_port = 8080 }"#)).unwrap();
        assert_eq!(r.checks()[0].defs[0], check::CheckDef::tcp("198.51.100.1:8080".parse().unwrap()));
        assert!(parse(&rules(r#"{ type = "tcp", connect_port = 8080, port = 8081 }"#)).unwrap_err().message.contains("give one"));
        // SMTP_CHECK: the real server's address by default, keepalived's helo_name.
        let r = parse(&rules(r#"{ type = "smtp", helo_name = "lb1.example.org" }"#)).unwrap();
        match &r.checks()[0].defs[0] {
            check::CheckDef::Smtp(c) => assert_eq!((c.target, c.helo_name.as_str()), ("198.51.100.1:80".parse().unwrap(), "lb1.example.org")),
            other => panic!("{other:?}"),
        }
        // What the checker refuses is refused at apply, with its key.
        let e = parse(&rules(r#"{ type = "smtp", helo_name = "a b" }"#)).unwrap_err();
        assert_eq!(e.key, "virtual_server[0].real_server[0].check.helo_name", "{e}");
        assert!(e.message.contains("no spaces"), "{e}");
        let e = parse(&rules(r#"{ type = "icmp", payload_len = 4 }"#)).unwrap_err();
        assert_eq!(e.key, "virtual_server[0].real_server[0].check.payload_len", "{e}");
        let e = parse(&rules(r#"{ type = "udp", payload_hex = "zz" }"#)).unwrap_err();
        assert_eq!(e.key, "virtual_server[0].real_server[0].check.payload_hex", "{e}");
        let e = parse(&rules(r#"[{ type = "tcp" }, { type = "http", digest = "xyz" }]"#)).unwrap_err();
        assert!(e.key.starts_with("virtual_server[0].real_server[0].check[1]"), "{e}");
        // A CA file is read on each observer, not where the apply lands; the SNI is checked here.
        assert!(parse(&rules(r#"{ type = "https", ca_file = "/nonexistent/ca.pem" }"#)).is_ok());
        let e = parse(&rules(r#"{ type = "https", ca_file = "/nonexistent/ca.pem", sni = "bad name!" }"#)).unwrap_err();
        assert_eq!(e.key, "virtual_server[0].real_server[0].check.sni", "{e}");
        // Rules stored before this check keep their checks (derivation is not strict).
        let mut stored = parse(&rules(r#"{ type = "tcp" }"#)).unwrap();
        stored.virtual_servers[0].real_servers[0].check = Some(serde_json::json!({ "type": "tcp", "connect_ip": "198.51.100.9" }));
        assert_eq!(stored.checks().len(), 1);
        assert!(stored.validate().is_err());
    }

    #[test]
    fn edits_apply_and_validate() {
        let mut r = parse(EXAMPLE).unwrap();
        Edit::RsDrain { service: "192.0.2.100:80".into(), address: "198.51.100.11:80".parse().unwrap() }.apply(&mut r).unwrap();
        assert_eq!(r.virtual_servers[0].real_servers[0].weight, 0);
        Edit::RsWeight { service: "tcp:192.0.2.100:80".into(), address: "198.51.100.11:80".parse().unwrap(), weight: 5 }.apply(&mut r).unwrap();
        assert_eq!(r.virtual_servers[0].real_servers[0].weight, 5);
        let bad = Edit::RsWeight { service: "192.0.2.100:80".into(), address: "198.51.100.11:80".parse().unwrap(), weight: -3 };
        let before = r.clone();
        assert!(bad.apply(&mut r.clone()).unwrap_err().contains("weight"));
        assert_eq!(r, before);
        // `vs add` of a service that exists is refused (it would drop the real servers);
        // `vs edit` changes settings and keeps them.
        let mut again = r.virtual_servers[0].clone();
        again.real_servers.clear();
        let e = Edit::VsAdd { vs: Box::new(again) }.apply(&mut r.clone()).unwrap_err();
        assert!(e.contains("exists already (with 2 real server(s))") && e.contains("vs edit"), "{e}");
        let edit = Edit::VsEdit {
            service: "192.0.2.100:80".into(),
            scheduler: Some("wrr".into()),
            scheduler_flags: None,
            forwarding: None,
            persistence_timeout: Some(Some(Duration::from_secs(300))),
            sorry_server: Some(None),
        };
        assert!(serde_json::to_string(&edit).unwrap().contains("\"sorry_server\":null"));
        let json = serde_json::to_string(&edit).unwrap();
        assert_eq!(serde_json::from_str::<Edit>(&json).unwrap(), edit, "{json}");
        let before = r.virtual_servers[0].clone();
        edit.apply(&mut r).unwrap();
        let after = &r.virtual_servers[0];
        assert_eq!((after.scheduler.as_str(), after.persistence_timeout, after.sorry_server), ("wrr", Some(Duration::from_secs(300)), None));
        assert_eq!((&after.real_servers, after.forwarding, &after.check), (&before.real_servers, before.forwarding, &before.check));
        let clear = Edit::VsEdit { service: "192.0.2.100:80".into(), scheduler: None, scheduler_flags: None, forwarding: None, persistence_timeout: Some(None), sorry_server: None };
        clear.apply(&mut r).unwrap();
        assert_eq!((r.virtual_servers[0].persistence_timeout, r.virtual_servers[0].scheduler.as_str()), (None, "wrr"));
        assert_eq!(r.virtual_servers[0].persistence_granularity, None);
        let bad = Edit::VsEdit { service: "192.0.2.100:80".into(), scheduler: Some("fastest".into()), scheduler_flags: None, forwarding: None, persistence_timeout: None, sorry_server: None };
        assert!(bad.apply(&mut r.clone()).unwrap_err().contains("scheduler"));
        let missing = Edit::VsEdit { service: "192.0.2.9:80".into(), scheduler: None, scheduler_flags: None, forwarding: None, persistence_timeout: None, sorry_server: None };
        assert!(missing.apply(&mut r.clone()).unwrap_err().contains("no virtual server"));
        Edit::VsDel { service: "fwmark:7".into() }.apply(&mut r).unwrap();
        assert_eq!(r.virtual_servers.len(), 1);
        assert!(Edit::VsDel { service: "192.0.2.9:80".into() }.apply(&mut r).unwrap_err().contains("no virtual server"));
    }
}
