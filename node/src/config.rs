//! corrald's TOML configuration: one file per node, parsed into typed structs.
//!
//! Every error names the file, the line and the key (`vrrp[0].advert_interval`), because an
//! operator fixing a config at 3 a.m. should not have to guess which of twenty instances is wrong.
//! Unknown keys are errors too: a misspelt `prempt = false` silently ignored is a split brain later.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole node configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// keepalived's `include`: more files whose `[[vrrp]]`, `[[vrrp_sync_group]]` and
    /// `[[track_*]]` tables are added after this file's, in file-name order. Glob patterns,
    /// absolute or relative to this file's directory (`include = ["conf.d/*.toml"]`); a pattern
    /// that matches nothing adds nothing, a plain path that does not exist is an error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default)]
    pub node: NodeSection,
    /// VRRP instances (`[[vrrp]]`), keepalived's `vrrp_instance`.
    #[serde(default)]
    pub vrrp: Vec<VrrpInstanceConfig>,
    /// Sync groups (`[[vrrp_sync_group]]`): members move between states together.
    #[serde(default)]
    pub vrrp_sync_group: Vec<SyncGroupConfig>,
    /// Tracked scripts (`[[track_script]]`), keepalived's `vrrp_script`, referenced by instances.
    #[serde(default)]
    pub track_script: Vec<TrackScriptConfig>,
    /// Tracked files (`[[track_file]]`), keepalived's `track_file`: a number written to a file
    /// moves the priority of the instances that track it (maintenance by `echo`).
    #[serde(default)]
    pub track_file: Vec<TrackFileConfig>,
    /// Tracked processes (`[[track_process]]`), keepalived's `vrrp_track_process`: how many
    /// copies of a program run moves the priority (a director whose haproxy died steps down).
    #[serde(default)]
    pub track_process: Vec<TrackProcessConfig>,
    /// `[cluster]`: present = this node is a cluster member (gossip + Raft); absent = standalone.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    /// `[director]`: present = this node programs the cluster's rules into its IPVS.
    #[serde(default)]
    pub director: Option<DirectorSection>,
}

/// `[director]`: the reconciler and the connection-sync daemon.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorSection {
    /// Drift check period: a manual `ipvsadm -C` is repaired within this time.
    #[serde(default = "default_reconcile", with = "humantime_serde_compat")]
    pub reconcile_interval: Duration,
    /// `"kernel"` (default) or `"memory"`: an in-memory IPVS model for scale benchmarks only.
    #[serde(default = "default_ipvs")]
    pub ipvs: String,
    /// Flush the IPVS table when corrald stops (default: leave it, traffic keeps flowing).
    #[serde(default)]
    pub flush_on_stop: bool,
    /// Virtual services in the kernel that the rules do not name: `"remove"` (default: the
    /// rules are the whole table, identical on every director) or `"keep"` (as keepalived:
    /// corral changes only the services its rules name or named before, remembered in
    /// `data_dir`, so kube-proxy's or an operator's own services live beside them).
    #[serde(default = "default_foreign")]
    pub foreign_services: String,
    /// Interface of the kernel's connection-sync daemon; absent = no sync daemon.
    pub sync_interface: Option<String>,
    /// `--syncid` of the sync daemon (0..=255).
    #[serde(default)]
    pub sync_id: u8,
    /// VRRP instance whose MASTER/BACKUP state selects the sync daemon's role (default: the first).
    pub sync_instance: Option<String>,
    /// keepalived's `lvs_sync_daemon … maxlen`: largest sync message (0 = the kernel's default,
    /// the interface MTU).
    #[serde(default)]
    pub sync_maxlen: u16,
    /// `… group`: multicast group of the sync messages (default 224.0.0.81). Directors that share
    /// a link with another cluster's keep them apart with their own group or port.
    pub sync_group: Option<std::net::IpAddr>,
    /// `… port`: UDP port (0 = default 8848).
    #[serde(default)]
    pub sync_port: u16,
    /// `… ttl`: multicast TTL (0 = default 1).
    #[serde(default)]
    pub sync_ttl: u8,
}

fn default_reconcile() -> Duration {
    Duration::from_secs(1)
}
fn default_ipvs() -> String {
    "kernel".into()
}
fn default_foreign() -> String {
    "remove".into()
}

/// `[cluster]`: how this node finds and joins its cluster, and how the cluster manages voters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Seed addresses (`ip:port` of a member's QUIC endpoint). Empty on the node that creates
    /// the cluster.
    #[serde(default)]
    pub join: Vec<std::net::SocketAddr>,
    /// Join token from `corralctl token create`; needed once, until this node has its
    /// certificate in the data directory.
    pub token: Option<String>,
    /// The same, read from a file (keeps the secret out of the config).
    pub token_file: Option<PathBuf>,
    /// Name put in the CA certificate when this node creates the cluster.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// Raft voters the cluster aims for; absent = 3, or 5 once 5+ nodes are alive.
    pub voters: Option<usize>,
    /// How long gossip must report a voter dead before it is replaced by a healthy learner.
    #[serde(default = "default_dead_grace", with = "humantime_serde_compat")]
    pub dead_grace: Duration,
    /// SWIM probe period (failure detection: see the gossip crate's README for the bound).
    #[serde(default = "default_probe_period", with = "humantime_serde_compat")]
    pub probe_period: Duration,
    /// Time a suspect member has to refute before it is declared dead.
    #[serde(default = "default_suspect_timeout", with = "humantime_serde_compat")]
    pub suspect_timeout: Duration,
    /// Quorum fencing (off = 0): while this node cannot see a majority of the Raft voters in
    /// gossip, every VRRP instance's priority drops by this much, so a minority partition does
    /// not keep or grab the VIPs. Trade-off: if the cluster network fails while the VRRP
    /// network works, the VIP moves to a node that still sees a majority (good); if the whole
    /// cluster loses quorum, every node drops by the same amount and nothing moves.
    #[serde(default)]
    pub fence_priority_drop: u8,
    /// Raft heartbeat; elections start after 4–8 missed heartbeats.
    #[serde(default = "default_heartbeat", with = "humantime_serde_compat")]
    pub heartbeat: Duration,
}

fn default_cluster_name() -> String {
    "corral".into()
}
fn default_dead_grace() -> Duration {
    Duration::from_secs(60)
}
fn default_probe_period() -> Duration {
    Duration::from_millis(500)
}
fn default_suspect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_heartbeat() -> Duration {
    Duration::from_millis(100)
}

/// `[node]`: where this node keeps its state and its admin socket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Defaults to the hostname.
    pub name: Option<String>,
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// UDP `ip:port` of this node's QUIC endpoint (gossip, Raft, remote admin); required with
    /// `[cluster]`. Peers dial this address, so it must not be a wildcard.
    pub bind: Option<std::net::SocketAddr>,
    /// SCHED_RR priority (1–99) for the latency-bound threads, like keepalived's
    /// `vrrp_rt_priority`; absent = the normal scheduler. See `node::realtime`. Takes effect
    /// at start.
    #[serde(default)]
    pub realtime_priority: Option<u8>,
    /// User that script checks, hooks, VRRP notify and track scripts run as (keepalived's
    /// `script_user`; a name or a uid). Absent = `corral_script` if that user exists, else the
    /// daemon's own. Scripts come with the cluster's rules, so this bounds what applying rules
    /// can do on this node (`node::scripts`). Takes effect at start.
    pub script_user: Option<String>,
    /// Group for `script_user` (default: its primary group).
    pub script_group: Option<String>,
    /// Refuse to run a script as root when it, or a directory above it, is writable by anyone
    /// but root (keepalived's `enable_script_security`).
    #[serde(default)]
    pub enable_script_security: bool,
    /// TCP `ip:port` serving `GET /metrics` (Prometheus's text format) for scraping; absent =
    /// no listener (`corralctl metrics` prints the same). Takes effect at start.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// keepalived's `notify_fifo`: a FIFO (made, mode 0600, if missing) that gets a line per
    /// VRRP state change, `INSTANCE "VI_1" MASTER 150` / `GROUP "G" BACKUP 0` (STOP and DELETED
    /// too), and per change of this director's real servers and quorums, `RS
    /// [198.51.100.11]:tcp:80 [192.0.2.100]:tcp:80 DOWN` / `VS [192.0.2.100]:tcp:80 UP`, for a
    /// local program that reads it instead of being started per change.
    pub notify_fifo: Option<PathBuf>,
    /// keepalived's `vrrp_notify_fifo`: the VRRP lines only.
    pub vrrp_notify_fifo: Option<PathBuf>,
    /// keepalived's `lvs_notify_fifo`: the RS and VS lines only.
    pub lvs_notify_fifo: Option<PathBuf>,
    /// keepalived's `vrrp_notify_priority_changes`: a line in the FIFOs that take VRRP lines
    /// when tracking moves an instance's priority, `INSTANCE "VI_1" MASTER_PRIORITY 90` (or
    /// BACKUP_PRIORITY), so a monitor sees a director drifting towards a failover before it
    /// happens.
    #[serde(default)]
    pub notify_priority_changes: bool,
    /// The group that may read the notify FIFOs (keepalived's `notify_fifo FIFO [user
    /// [group]]`): each gets this group and mode 0660, for a reader that does not run as root.
    pub notify_fifo_group: Option<String>,
    /// keepalived's `vrrp_garp_interval`: the least time between two gratuitous ARPs on one
    /// interface, whichever instances send them (takeovers, repeats, refreshes), for switches
    /// that police ARP (Cisco's dynamic ARP inspection shuts a port above 15 a second by
    /// default); `"0s"` (default) = back to back.
    #[serde(default = "default_garp_delay", with = "humantime_serde_compat")]
    pub garp_interval: Duration,
    /// keepalived's `vrrp_gna_interval`: the same for IPv6 unsolicited neighbour advertisements.
    #[serde(default = "default_garp_delay", with = "humantime_serde_compat")]
    pub gna_interval: Duration,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: None,
            admin_socket: default_admin_socket(),
            data_dir: default_data_dir(),
            bind: None,
            realtime_priority: None,
            script_user: None,
            script_group: None,
            enable_script_security: false,
            metrics_listen: None,
            notify_fifo: None,
            vrrp_notify_fifo: None,
            lvs_notify_fifo: None,
            notify_priority_changes: false,
            notify_fifo_group: None,
            garp_interval: Duration::ZERO,
            gna_interval: Duration::ZERO,
        }
    }
}

/// The admin socket path used when the config names none; `corralctl` defaults to the same.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/corral/admin.sock";

fn default_admin_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ADMIN_SOCKET)
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/corral")
}

/// Which IPv4 VRRPv3 checksum a peer expects: vendors disagree (see the `vrrp` crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum V3Checksum {
    /// keepalived's and FRR's default: the IPv4 pseudo-header is included.
    #[default]
    PseudoHeader,
    /// RFC 9568, Cisco, Juniper: the VRRP message only.
    Plain,
}

/// A tracked interface: `"eth1"` (weight 0: down means FAULT) or `{ name = "eth1", weight = -20 }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TrackInterface {
    Name(String),
    Weighted { name: String, weight: i32 },
}

impl TrackInterface {
    pub fn name(&self) -> &str {
        match self {
            TrackInterface::Name(n) | TrackInterface::Weighted { name: n, .. } => n,
        }
    }
    pub fn weight(&self) -> i32 {
        match self {
            TrackInterface::Name(_) => 0,
            TrackInterface::Weighted { weight, .. } => *weight,
        }
    }
}

/// A tracked script reference: `"chk_nginx"` (the script's own weight) or `{ name, weight }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TrackScriptRef {
    Name(String),
    Weighted { name: String, weight: i32 },
}

impl TrackScriptRef {
    pub fn name(&self) -> &str {
        match self {
            TrackScriptRef::Name(n) | TrackScriptRef::Weighted { name: n, .. } => n,
        }
    }
}

/// `[[vrrp]]`: one VRRP instance (keepalived's `vrrp_instance`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpInstanceConfig {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    #[serde(default = "default_version")]
    pub version: u8,
    #[serde(default = "default_priority")]
    pub priority: u8,
    #[serde(default = "default_advert", with = "humantime_serde_compat")]
    pub advert_interval: Duration,
    #[serde(default = "yes")]
    pub preempt: bool,
    #[serde(default, with = "humantime_serde_compat")]
    pub preempt_delay: Duration,
    /// RFC 5798 Accept_Mode: a master that is not the address owner accepts packets addressed
    /// to the VIPs. Always on, keepalived's default (`accept`): an LVS director must accept
    /// them, since IPVS sees only packets delivered locally; `false` (keepalived's `no_accept`,
    /// which drops them with a firewall rule) is refused rather than ignored.
    #[serde(default = "yes")]
    pub accept: bool,
    /// `"192.0.2.100/24"`, `"2001:db8::100/64"`; one family per instance, like keepalived.
    /// keepalived's `virtual_ipaddress` words follow the address: `dev IF` (another interface
    /// than the instance's), `label IF:NAME` (IPv4), `scope host|link|site|global|N` ([`VipSpec`]).
    pub virtual_ips: Vec<String>,
    /// keepalived's `virtual_ipaddress_excluded`: moved with the instance but not carried in
    /// adverts, so there is no limit on their number and they may be of either family (an IPv4
    /// instance moving IPv6 addresses too). Same words as `virtual_ips`.
    #[serde(default)]
    pub virtual_ips_excluded: Vec<String>,
    /// keepalived's `virtual_routes`: routes added while master (after the VIPs, so `src VIP`
    /// works) and removed when not, in `ip route` words: `[blackhole|unreachable|prohibit]
    /// DEST[/LEN]|default [via ADDR] [dev IF] [src ADDR] [metric N] [table N] [scope S]
    /// [onlink]` ([`RouteSpec`]).
    #[serde(default)]
    pub virtual_routes: Vec<String>,
    /// Send adverts to these peers instead of the multicast group.
    #[serde(default)]
    pub unicast_peers: Vec<String>,
    /// The address adverts come from (keepalived's `unicast_src_ip`, alias `mcast_src_ip`),
    /// when the interface's first address is not the one peers expect; it must be an address
    /// of this host. It is also this router's address in elections (RFC 5798 §6.4.3 ties).
    #[serde(default, alias = "mcast_src_ip")]
    pub unicast_src_ip: Option<std::net::IpAddr>,
    /// VRRPv2 simple-text authentication (RFC 3768 type 1), at most 8 bytes.
    pub auth_pass: Option<String>,
    #[serde(default)]
    pub v3_checksum: V3Checksum,
    #[serde(default)]
    pub track_interfaces: Vec<TrackInterface>,
    #[serde(default)]
    pub track_scripts: Vec<TrackScriptRef>,
    /// `"maint"` (the file's own weight) or `{ name = "maint", weight = -10, reverse = true }`.
    #[serde(default)]
    pub track_files: Vec<TrackFileRef>,
    /// `"haproxy"` (the process's own weight) or `{ name = "haproxy", weight = -60 }`.
    #[serde(default)]
    pub track_processes: Vec<TrackFileRef>,
    /// keepalived's `use_vmac`: a macvlan with MAC 00:00:5e:00:01:VRID (IPv6 00:00:5e:00:02:VRID)
    /// carries the VIPs and sends the adverts, so a failover changes no host's ARP cache.
    #[serde(default)]
    pub use_vmac: bool,
    /// The vmac's name (keepalived's `use_vmac NAME`); default `vrrp.VRID`, `vrrp6.VRID` for IPv6.
    pub vmac_name: Option<String>,
    /// Gratuitous ARP / NA burst on becoming master.
    #[serde(default = "default_garp_repeat")]
    pub garp_repeat: u32,
    #[serde(default = "default_garp_delay", with = "humantime_serde_compat")]
    pub garp_delay: Duration,
    /// keepalived's `garp_master_refresh`: while master, gratuitous ARP/NA again this often
    /// (switches and routers whose ARP entries age out, or that missed the takeover's burst);
    /// `"0s"` (default) = only on becoming master.
    #[serde(default = "default_garp_delay", with = "humantime_serde_compat")]
    pub garp_master_refresh: Duration,
    /// keepalived's `garp_master_refresh_repeat`: messages per VIP at each refresh.
    #[serde(default = "one")]
    pub garp_master_refresh_repeat: u32,
    pub notify_master: Option<String>,
    pub notify_backup: Option<String>,
    pub notify_fault: Option<String>,
    /// keepalived's `notify_stop`: run when corrald stops the instance (shutdown), after it
    /// released the VIPs; `notify` gets `STOP`. corrald waits for it (at most 10 s) before it
    /// exits, so systemd does not kill it with the service.
    pub notify_stop: Option<String>,
    /// keepalived's `notify_deleted`: run when a reload removes the instance, and `notify`
    /// gets `DELETED` (`""`: only that). Without it a removed instance is reported as going
    /// to FAULT (`notify_fault`, `notify … FAULT …`), as keepalived reports it.
    pub notify_deleted: Option<String>,
    /// Called as `notify INSTANCE NAME STATE PRIORITY`, STATE one of MASTER, BACKUP, FAULT,
    /// STOP, DELETED (keepalived's words).
    pub notify: Option<String>,
}

impl VrrpInstanceConfig {
    /// The vmac's interface name when `use_vmac` is on.
    pub fn vmac_ifname(&self) -> Option<String> {
        let v6 = self.is_v6();
        self.use_vmac.then(|| self.vmac_name.clone().unwrap_or_else(|| vrrp::sys::vmac::default_name(self.vrid, v6)))
    }

    /// The instance's family: its first VIP's (validation makes them all one).
    pub fn is_v6(&self) -> bool {
        self.virtual_ips.first().and_then(|s| parse_vip(s).ok()).is_some_and(|v| v.addr.is_ipv6())
    }

    /// Every address the instance moves: the advertised ones first, then the excluded ones.
    pub fn all_vips(&self) -> Result<Vec<VipSpec>, String> {
        self.virtual_ips.iter().chain(&self.virtual_ips_excluded).map(|s| parse_vip(s)).collect()
    }

    /// Where a VIP without `dev` goes: the vmac with `use_vmac`, else the instance's interface.
    pub fn vip_home(&self) -> String {
        self.vmac_ifname().unwrap_or_else(|| self.interface.clone())
    }
}

/// One `virtual_ips` entry, keepalived's `virtual_ipaddress` line:
/// `ADDR[/PREFIX] [dev IF] [label LABEL] [scope SCOPE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSpec {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
    /// Another interface than the instance's (keepalived's `dev`).
    pub dev: Option<String>,
    pub label: Option<String>,
    /// rtnetlink scope number (`host` 254, `link` 253, `site` 200, `global` 0).
    pub scope: Option<u8>,
}

/// Parses a [`VipSpec`], naming the word it cannot use.
pub fn parse_vip(s: &str) -> Result<VipSpec, String> {
    let mut words = s.split_whitespace();
    let first = words.next().ok_or("empty virtual IP")?;
    let (addr, prefix) = parse_cidr(first)?;
    let mut v = VipSpec { addr, prefix, dev: None, label: None, scope: None };
    while let Some(w) = words.next() {
        let mut value = || words.next().ok_or_else(|| format!("{w:?} needs a value"));
        match w {
            "dev" => {
                let d = value()?;
                if !valid_ifname(d) {
                    return Err(format!("dev {d:?} is not an interface name (1..=15 bytes, no '/', ':' or space)"));
                }
                v.dev = Some(d.to_owned());
            }
            "label" => {
                let l = value()?;
                if l.is_empty() || l.len() > 15 {
                    return Err(format!("label {l:?} must be 1..=15 bytes"));
                }
                v.label = Some(l.to_owned());
            }
            "scope" => {
                v.scope = Some(parse_scope(value()?)?);
            }
            other => return Err(format!("{other:?}: a virtual IP takes only dev, label and scope after the address")),
        }
    }
    if v.label.is_some() && addr.is_ipv6() {
        return Err("label: IPv6 addresses have no labels".into());
    }
    if v.scope.is_some() && addr.is_ipv6() {
        return Err("scope: an IPv6 address's scope follows from the address (the kernel ignores it)".into());
    }
    Ok(v)
}

/// One `virtual_routes` entry, parsed; the interface by name (resolved when the instance starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub kind: vrrp::sys::route::RouteKind,
    pub dest: std::net::IpAddr,
    pub prefix: u8,
    pub via: Option<std::net::IpAddr>,
    pub src: Option<std::net::IpAddr>,
    pub dev: Option<String>,
    pub metric: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
    pub onlink: bool,
}

/// Parses a [`RouteSpec`] (`ip route`'s words, keepalived's `virtual_routes` line), naming the
/// word it cannot use.
pub fn parse_route(s: &str) -> Result<RouteSpec, String> {
    use vrrp::sys::route::RouteKind;
    let mut words = s.split_whitespace().peekable();
    let kind = match words.peek().copied() {
        Some("blackhole") => RouteKind::Blackhole,
        Some("unreachable") => RouteKind::Unreachable,
        Some("prohibit") => RouteKind::Prohibit,
        _ => RouteKind::Unicast,
    };
    if kind != RouteKind::Unicast {
        words.next();
    }
    if words.peek() == Some(&"to") {
        words.next();
    }
    let mut r = RouteSpec { kind, dest: std::net::Ipv4Addr::UNSPECIFIED.into(), prefix: 0, via: None, src: None, dev: None, metric: None, table: None, scope: None, onlink: false };
    let mut dest = None;
    let addr = |w: &str, v: &str| v.parse::<std::net::IpAddr>().map_err(|_| format!("{w} {v:?} is not an IP address"));
    while let Some(w) = words.next() {
        let mut value = || words.next().ok_or_else(|| format!("{w:?} needs a value"));
        match w {
            "via" | "gw" => r.via = Some(addr(w, value()?)?),
            "src" => r.src = Some(addr(w, value()?)?),
            "dev" => {
                let d = value()?;
                if !valid_ifname(d) {
                    return Err(format!("dev {d:?} is not an interface name"));
                }
                r.dev = Some(d.to_owned());
            }
            "metric" | "preference" => {
                let v = value()?;
                r.metric = Some(v.parse().map_err(|_| format!("metric {v:?} is not a number"))?);
            }
            "table" => {
                let v = value()?;
                let t = match v {
                    "main" => 254,
                    "local" => 255,
                    "default" => 253,
                    n => n.parse::<u32>().ok().filter(|t| *t > 0).ok_or_else(|| format!("table {n:?}: a number 1.. or main/local/default"))?,
                };
                r.table = Some(t);
            }
            "scope" => {
                r.scope = Some(parse_scope(value()?)?);
            }
            "onlink" => r.onlink = true,
            d if dest.is_none() => {
                dest = Some(if d == "default" {
                    // The family follows the gateway, when there is one: checked below.
                    (None, 0)
                } else {
                    let (a, p) = parse_cidr(d).map_err(|e| format!("destination: {e}"))?;
                    if masked(a, p) != a {
                        return Err(format!("destination {d}: host bits set (the network is {}/{p})", masked(a, p)));
                    }
                    (Some(a), p)
                });
            }
            other => return Err(format!("{other:?}: a route takes via, dev, src, metric, table, scope and onlink after its destination")),
        }
    }
    let (d, prefix) = dest.ok_or("a route needs a destination (DEST/LEN or default)")?;
    let v6 = d.map(|a| a.is_ipv6()).or(r.via.map(|a| a.is_ipv6())).or(r.src.map(|a| a.is_ipv6())).unwrap_or(false);
    r.dest = d.unwrap_or(if v6 { std::net::Ipv6Addr::UNSPECIFIED.into() } else { std::net::Ipv4Addr::UNSPECIFIED.into() });
    r.prefix = prefix;
    for (w, a) in [("via", r.via), ("src", r.src)] {
        if a.is_some_and(|a| a.is_ipv6() != v6) {
            return Err(format!("{w}: not the destination's address family"));
        }
    }
    if kind == RouteKind::Unicast && r.via.is_none() && r.dev.is_none() {
        return Err("a route needs via ADDR or dev IF (or a type: blackhole, unreachable, prohibit)".into());
    }
    if kind != RouteKind::Unicast && (r.via.is_some() || r.dev.is_some()) {
        return Err("a blackhole/unreachable/prohibit route takes no via or dev".into());
    }
    Ok(r)
}

/// `ip`'s scope words (`host`, `link`, `site`, `global`, `nowhere`) or a number, for addresses
/// and routes alike.
fn parse_scope(s: &str) -> Result<u8, String> {
    Ok(match s {
        "global" | "universe" => 0,
        "site" => 200,
        "link" => 253,
        "host" => 254,
        "nowhere" => 255,
        n => n.parse::<u8>().map_err(|_| format!("scope {n:?}: expected host, link, site, global, nowhere or 0..=255"))?,
    })
}

/// `a` with the bits past `prefix` cleared.
fn masked(a: std::net::IpAddr, prefix: u8) -> std::net::IpAddr {
    match a {
        std::net::IpAddr::V4(v) => {
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            std::net::Ipv4Addr::from(u32::from(v) & m).into()
        }
        std::net::IpAddr::V6(v) => {
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            std::net::Ipv6Addr::from(u128::from(v) & m).into()
        }
    }
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty() && n.len() <= 15 && !n.contains(['/', ':']) && !n.chars().any(char::is_whitespace) && n != "." && n != ".."
}

/// `[[vrrp_sync_group]]`: keepalived's `vrrp_sync_group`. The group's scripts run when the
/// group as a whole changes state (`notify` as `notify GROUP NAME STATE 0`, like keepalived).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncGroupConfig {
    pub name: String,
    pub members: Vec<String>,
    pub notify_master: Option<String>,
    pub notify_backup: Option<String>,
    pub notify_fault: Option<String>,
    /// As an instance's `notify_stop`, once for the group on shutdown (`notify GROUP NAME STOP 0`).
    pub notify_stop: Option<String>,
    pub notify: Option<String>,
}

/// `[[track_script]]`: a check script whose result moves the priority (keepalived `vrrp_script`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrackScriptConfig {
    pub name: String,
    /// Run through `/bin/sh -c`.
    pub script: String,
    #[serde(default = "default_script_interval", with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(default = "default_script_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// > 0: added while the script succeeds; < 0: subtracted while it fails; 0: failure means FAULT.
    #[serde(default)]
    pub weight: i32,
    #[serde(default = "one")]
    pub rise: u32,
    #[serde(default = "one")]
    pub fall: u32,
}

/// `[[track_file]]`: keepalived's `track_file`. The file holds an integer (missing, empty or
/// not a number: 0), read within [`crate::tracking::POLL`] of a change. An instance's
/// priority moves by value × weight (negated with `reverse`); with weight 0 a non-zero value
/// means FAULT, and so does a product below -253, as in keepalived.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrackFileConfig {
    pub name: String,
    pub file: PathBuf,
    #[serde(default = "one_i32")]
    pub weight: i32,
    #[serde(default)]
    pub reverse: bool,
    /// keepalived's `init_file VALUE`: written at start when the file does not exist (always
    /// with `init_overwrite`), so a restart begins from a known value.
    #[serde(default)]
    pub init_file: Option<i64>,
    #[serde(default)]
    pub init_overwrite: bool,
}

/// `[[track_process]]`: keepalived's `vrrp_track_process`. Running processes are counted
/// every `interval` by their command (`/proc/PID/comm`, the first word of their command line,
/// or its file name); with `params`, their other words must be exactly these. Up while
/// `quorum <= count <= quorum_max`, with keepalived's weights (0: down means FAULT; > 0 added
/// while up; < 0 added while down; `reverse` swaps up and down). A drop below the quorum
/// counts only after `delay` (a restart in progress).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrackProcessConfig {
    pub name: String,
    pub process: String,
    #[serde(default)]
    pub params: Option<Vec<String>>,
    #[serde(default = "one")]
    pub quorum: u32,
    #[serde(default)]
    pub quorum_max: Option<u32>,
    #[serde(default = "one_i32")]
    pub weight: i32,
    #[serde(default)]
    pub reverse: bool,
    #[serde(default = "default_process_interval", with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(default = "default_garp_delay", with = "humantime_serde_compat")]
    pub delay: Duration,
}

fn default_process_interval() -> Duration {
    Duration::from_secs(1)
}

/// A tracked file reference: `"maint"` (the file's own weight) or `{ name, weight, reverse }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TrackFileRef {
    Name(String),
    Weighted {
        name: String,
        weight: i32,
        #[serde(default)]
        reverse: bool,
    },
}

impl TrackFileRef {
    pub fn name(&self) -> &str {
        match self {
            TrackFileRef::Name(n) | TrackFileRef::Weighted { name: n, .. } => n,
        }
    }
}

fn one_i32() -> i32 {
    1
}

fn default_version() -> u8 {
    3
}
fn default_priority() -> u8 {
    100
}
fn default_advert() -> Duration {
    Duration::from_secs(1)
}
fn default_garp_repeat() -> u32 {
    5
}
fn default_garp_delay() -> Duration {
    Duration::ZERO
}
fn default_script_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_script_timeout() -> Duration {
    Duration::from_secs(5)
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}

/// Durations are written as humantime strings (`"10ms"`, `"1s"`, `"1m 30s"`).
pub mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e} (write e.g. \"10ms\", \"1s\")")))
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// A configuration error pinned to its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; `None` when the problem has no single place (e.g. the file is unreadable).
    pub line: Option<usize>,
    /// Dotted key path, e.g. `vrrp[1].advert_interval`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySeg {
    Key(String),
    Index(usize),
}

/// Renders a key path as `vrrp[1].name`.
pub fn key_path(segs: &[KeySeg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            KeySeg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            KeySeg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Finds the line of a key path in the document, walking the spanned parse tree.
fn line_of_path(text: &str, segs: &[KeySeg]) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let (first, rest) = segs.split_first()?;
    let KeySeg::Key(k) = first else { return None };
    let mut cur = root.get_ref().get(k.as_str())?;
    let mut best = Some(cur.span().start);
    for seg in rest {
        let next = match seg {
            KeySeg::Key(k) => cur.get_ref().get(k.as_str()),
            KeySeg::Index(i) => cur.get_ref().get(*i),
        };
        match next {
            Some(v) => {
                best = Some(v.span().start);
                cur = v;
            }
            None => break,
        }
    }
    best.map(|off| line_of(text, off))
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates config text; `path` labels errors and anchors relative `include`
    /// patterns (the included files are read from disk).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = parse_toml(path, text, |_| Ok(()))?;
        let err = |file: &Path, line, key: &str, message: String| ConfigError { file: file.to_owned(), line, key: key.to_owned(), message };
        // Where each list entry came from: (file, its text, its index there), for error lines.
        let mut origins: std::collections::HashMap<&'static str, Vec<(PathBuf, std::sync::Arc<str>, usize)>> = Default::default();
        let main_text: std::sync::Arc<str> = text.into();
        let lists = |c: &Config| -> [(&'static str, usize); 5] {
            [
                ("vrrp", c.vrrp.len()),
                ("vrrp_sync_group", c.vrrp_sync_group.len()),
                ("track_script", c.track_script.len()),
                ("track_file", c.track_file.len()),
                ("track_process", c.track_process.len()),
            ]
        };
        for (name, n) in lists(&cfg) {
            origins.entry(name).or_default().extend((0..n).map(|i| (path.to_owned(), main_text.clone(), i)));
        }
        for (i, pattern) in cfg.include.clone().iter().enumerate() {
            let line = line_of_path(text, &[KeySeg::Key("include".into()), KeySeg::Index(i)]);
            let key = format!("include[{i}]");
            for file in include_files(path, pattern).map_err(|m| err(path, line, &key, m))? {
                let itext = std::fs::read_to_string(&file).map_err(|e| err(&file, None, "", format!("cannot read (included by {}): {e}", path.display())))?;
                let table: toml::Table = toml::from_str(&itext).map_err(|e| err(&file, e.span().map(|s| line_of(&itext, s.start)), "", e.message().to_owned()))?;
                if let Some(k) = table.keys().find(|k| !INCLUDABLE.contains(&k.as_str())) {
                    return Err(err(
                        &file,
                        line_of_path(&itext, &[KeySeg::Key(k.clone())]),
                        k,
                        format!("an included file holds only {}; `{k}` belongs in {}", INCLUDABLE.join(", "), path.display()),
                    ));
                }
                let part: Config = parse_toml(&file, &itext, |_| Ok(()))?;
                let itext: std::sync::Arc<str> = itext.into();
                for (name, n) in lists(&part) {
                    origins.entry(name).or_default().extend((0..n).map(|i| (file.clone(), itext.clone(), i)));
                }
                cfg.vrrp.extend(part.vrrp);
                cfg.vrrp_sync_group.extend(part.vrrp_sync_group);
                cfg.track_script.extend(part.track_script);
                cfg.track_file.extend(part.track_file);
                cfg.track_process.extend(part.track_process);
            }
        }
        cfg.validate().map_err(|(mut segs, message)| {
            // An entry's error points into the file it came from, with its index there.
            let from = match segs.as_slice() {
                [KeySeg::Key(list), KeySeg::Index(i), ..] => origins.get(list.as_str()).and_then(|o| o.get(*i)).cloned(),
                _ => None,
            };
            match from {
                Some((file, ftext, local)) => {
                    segs[1] = KeySeg::Index(local);
                    err(&file, line_of_path(&ftext, &segs), &key_path(&segs), message)
                }
                None => err(path, line_of_path(text, &segs), &key_path(&segs), message),
            }
        })?;
        Ok(cfg)
    }

    /// Semantic checks that serde cannot express; returns the offending key path.
    fn validate(&self) -> Result<(), (Vec<KeySeg>, String)> {
        use KeySeg::{Index, Key};
        let at = |i: usize, k: &str| vec![Key("vrrp".into()), Index(i), Key(k.into())];
        let mut names = std::collections::HashSet::new();
        for (i, v) in self.vrrp.iter().enumerate() {
            if !names.insert(v.name.as_str()) {
                return Err((at(i, "name"), format!("duplicate instance name {:?}", v.name)));
            }
            if v.vrid == 0 {
                return Err((at(i, "vrid"), "VRID must be 1..=255".into()));
            }
            if v.priority == 0 {
                return Err((at(i, "priority"), "priority must be 1..=255 (0 is reserved for release)".into()));
            }
            if !v.accept {
                return Err((
                    at(i, "accept"),
                    "false (no Accept_Mode) is not supported: a director accepts packets addressed to its VIPs (keepalived's default `accept`), as IPVS needs them delivered locally".into(),
                ));
            }
            match v.version {
                2 => {
                    let ms = v.advert_interval.as_millis();
                    if ms == 0 || ms % 1000 != 0 || ms / 1000 > 255 {
                        return Err((at(i, "advert_interval"), "VRRPv2 accepts whole seconds 1s..=255s only".into()));
                    }
                }
                3 => {
                    let cs = v.advert_interval.as_millis();
                    if cs % 10 != 0 || cs / 10 == 0 || cs / 10 > 4095 {
                        return Err((
                            at(i, "advert_interval"),
                            "VRRPv3 accepts multiples of 10ms from 10ms to 40.95s".into(),
                        ));
                    }
                    if v.auth_pass.is_some() {
                        return Err((at(i, "auth_pass"), "authentication exists in VRRPv2 only (RFC 5798 removed it)".into()));
                    }
                }
                other => return Err((at(i, "version"), format!("VRRP version must be 2 or 3, not {other}"))),
            }
            if let Some(p) = &v.auth_pass {
                if p.is_empty() || p.len() > 8 {
                    return Err((at(i, "auth_pass"), "auth_pass must be 1..=8 bytes".into()));
                }
            }
            if v.virtual_ips.is_empty() {
                return Err((at(i, "virtual_ips"), "at least one virtual IP is required".into()));
            }
            let mut family = None;
            let mut addrs = std::collections::HashSet::new();
            let lists = [("virtual_ips", &v.virtual_ips), ("virtual_ips_excluded", &v.virtual_ips_excluded)];
            for (list, vips) in lists {
                for (j, vip) in vips.iter().enumerate() {
                    let here = || vec![Key("vrrp".into()), Index(i), Key(list.into()), Index(j)];
                    let spec = parse_vip(vip).map_err(|m| (here(), m))?;
                    if !addrs.insert(spec.addr) {
                        return Err((here(), format!("{} is listed twice in this instance", spec.addr)));
                    }
                    if let Some(l) = &spec.label {
                        // Its interface: `dev`, but the instance's own interface means the
                        // vmac under use_vmac (the VIP goes there).
                        let dev = match &spec.dev {
                            Some(d) if *d != v.interface => d.clone(),
                            _ => v.vip_home(),
                        };
                        if !l.starts_with(&dev) {
                            return Err((here(), format!("label {l:?} must begin with its interface's name {dev:?} (e.g. \"{dev}:vip\")")));
                        }
                    }
                    if list == "virtual_ips_excluded" {
                        // Not in adverts: any family, any number.
                        continue;
                    }
                    if v.version == 2 && spec.addr.is_ipv6() {
                        return Err((here(), "VRRPv2 carries IPv4 addresses only; use version = 3 for IPv6, or virtual_ips_excluded".into()));
                    }
                    let fam = spec.addr.is_ipv6();
                    if *family.get_or_insert(fam) != fam {
                        return Err((here(), "one instance advertises one address family; use two instances, or virtual_ips_excluded".into()));
                    }
                }
            }
            for (j, route) in v.virtual_routes.iter().enumerate() {
                parse_route(route).map_err(|m| (vec![Key("vrrp".into()), Index(i), Key("virtual_routes".into()), Index(j)], m))?;
            }
            if let Some(src) = v.unicast_src_ip {
                if Some(src.is_ipv6()) != family {
                    return Err((at(i, "unicast_src_ip"), format!("{src} is not of the instance's address family")));
                }
                if src.is_unspecified() || src.is_multicast() {
                    return Err((at(i, "unicast_src_ip"), format!("{src} cannot be a source address")));
                }
            }
            for (j, peer) in v.unicast_peers.iter().enumerate() {
                if peer.parse::<std::net::IpAddr>().is_err() {
                    let here = vec![Key("vrrp".into()), Index(i), Key("unicast_peers".into()), Index(j)];
                    return Err((here, format!("{peer:?} is not an IP address")));
                }
            }
            for (j, t) in v.track_scripts.iter().enumerate() {
                if !self.track_script.iter().any(|s| s.name == t.name()) {
                    let here = vec![Key("vrrp".into()), Index(i), Key("track_scripts".into()), Index(j)];
                    return Err((here, format!("no [[track_script]] named {:?}", t.name())));
                }
            }
            let procs: Vec<&str> = self.track_process.iter().map(|p| p.name.as_str()).collect();
            let files: Vec<&str> = self.track_file.iter().map(|f| f.name.as_str()).collect();
            for (key, section, refs, names) in [("track_processes", "track_process", &v.track_processes, procs), ("track_files", "track_file", &v.track_files, files)] {
                for (j, t) in refs.iter().enumerate() {
                    let here = vec![Key("vrrp".into()), Index(i), Key(key.into()), Index(j)];
                    if !names.contains(&t.name()) {
                        return Err((here, format!("no [[{section}]] named {:?}", t.name())));
                    }
                    if let TrackFileRef::Weighted { weight, .. } = t {
                        if !(-254..=254).contains(weight) {
                            return Err((here, "weight must be within -254..=254".into()));
                        }
                    }
                }
            }
        }
        let mut vmacs = std::collections::HashSet::new();
        for (i, v) in self.vrrp.iter().enumerate() {
            if !v.garp_master_refresh.is_zero() && v.garp_master_refresh < Duration::from_millis(100) {
                return Err((at(i, "garp_master_refresh"), "at least 100ms (or \"0s\": off)".into()));
            }
            if v.garp_master_refresh_repeat == 0 || v.garp_master_refresh_repeat > 100 {
                return Err((at(i, "garp_master_refresh_repeat"), "1..=100".into()));
            }
            // A paced refresh must be over before the next one starts, or two would run at once,
            // at twice the rate the pacing promises.
            let per_message = self.node.garp_interval.max(self.node.gna_interval);
            if !v.garp_master_refresh.is_zero() && !per_message.is_zero() {
                let messages = v.all_vips().map(|a| a.len()).unwrap_or(0) as u32 * v.garp_master_refresh_repeat;
                let burst = per_message * messages;
                if burst >= v.garp_master_refresh {
                    return Err((
                        at(i, "garp_master_refresh"),
                        format!(
                            "{messages} paced messages take {} at [node] garp_interval/gna_interval, longer than the refresh period: make it longer",
                            humantime::format_duration(burst)
                        ),
                    ));
                }
            }
            if v.vmac_name.is_some() && !v.use_vmac {
                return Err((at(i, "vmac_name"), "vmac_name needs use_vmac = true".into()));
            }
            if let Some(name) = v.vmac_ifname() {
                let key = if v.vmac_name.is_some() { "vmac_name" } else { "use_vmac" };
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) || name == "." || name == ".." {
                    return Err((at(i, key), format!("{name:?} is not a valid interface name (1..=15 bytes, no '/', ':' or space)")));
                }
                if name == v.interface || !vmacs.insert(name.clone()) {
                    return Err((at(i, key), format!("vmac {name:?} is already used; give each instance its own vmac_name")));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, v) in self.vrrp.iter().enumerate() {
            let fam = v.is_v6();
            if !seen.insert((v.interface.as_str(), v.vrid, fam)) {
                return Err((at(i, "vrid"), format!("VRID {} is already used on {} for this family", v.vrid, v.interface)));
            }
        }
        for (g, group) in self.vrrp_sync_group.iter().enumerate() {
            for (j, m) in group.members.iter().enumerate() {
                if !self.vrrp.iter().any(|v| &v.name == m) {
                    let here = vec![Key("vrrp_sync_group".into()), Index(g), Key("members".into()), Index(j)];
                    return Err((here, format!("no [[vrrp]] instance named {m:?}")));
                }
            }
        }
        for (key, d) in [("garp_interval", self.node.garp_interval), ("gna_interval", self.node.gna_interval)] {
            if d > Duration::from_secs(1) {
                return Err((vec![Key("node".into()), Key(key.into())], "at most 1s (a burst for many VIPs would last minutes)".into()));
            }
        }
        let fifos = [("notify_fifo", &self.node.notify_fifo), ("vrrp_notify_fifo", &self.node.vrrp_notify_fifo), ("lvs_notify_fifo", &self.node.lvs_notify_fifo)];
        for (i, (key, f)) in fifos.iter().enumerate() {
            let Some(f) = f else { continue };
            if !f.is_absolute() {
                return Err((vec![Key("node".into()), Key((*key).into())], format!("{}: an absolute path", f.display())));
            }
            if let Some((other, _)) = fifos[..i].iter().find(|(_, o)| o.as_ref() == Some(f)) {
                return Err((vec![Key("node".into()), Key((*key).into())], format!("{}: already {other} (its lines would be written twice)", f.display())));
            }
        }
        if let Some(p) = self.node.realtime_priority {
            if !(1..=99).contains(&p) {
                return Err((vec![Key("node".into()), Key("realtime_priority".into())], format!("{p}: a SCHED_RR priority is 1..=99")));
            }
        }
        if let Some(d) = &self.director {
            let at = |k: &str| vec![Key("director".into()), Key(k.into())];
            if self.cluster.is_none() {
                return Err((at("ipvs"), "[director] needs [cluster]: the rules come from the cluster".into()));
            }
            if d.ipvs != "kernel" && d.ipvs != "memory" {
                return Err((at("ipvs"), format!("{:?}: expected \"kernel\" or \"memory\" (benchmarks only)", d.ipvs)));
            }
            if d.foreign_services != "remove" && d.foreign_services != "keep" {
                return Err((at("foreign_services"), format!("{:?}: expected \"remove\" or \"keep\"", d.foreign_services)));
            }
            if d.reconcile_interval < Duration::from_millis(10) {
                return Err((at("reconcile_interval"), "at least 10ms".into()));
            }
            if let Some(n) = &d.sync_instance {
                if !self.vrrp.iter().any(|v| &v.name == n) {
                    return Err((at("sync_instance"), format!("no [[vrrp]] instance named {n:?}")));
                }
            }
            if let Some(g) = d.sync_group.filter(|g| !g.is_multicast()) {
                return Err((at("sync_group"), format!("{g} is not a multicast address")));
            }
            if d.sync_interface.is_none() {
                let set = [("sync_maxlen", d.sync_maxlen != 0), ("sync_group", d.sync_group.is_some()), ("sync_port", d.sync_port != 0), ("sync_ttl", d.sync_ttl != 0)];
                if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
                    return Err((at(k), "set without sync_interface: there is no sync daemon to apply it to".into()));
                }
            }
        }
        if let Some(c) = &self.cluster {
            let node = |k: &str| vec![Key("node".into()), Key(k.into())];
            let cl = |k: &str| vec![Key("cluster".into()), Key(k.into())];
            match self.node.bind {
                None => return Err((node("bind"), "a cluster member needs [node] bind = \"IP:PORT\" (its QUIC endpoint)".into())),
                Some(a) if a.ip().is_unspecified() => {
                    return Err((node("bind"), format!("{a} is a wildcard; peers dial this address, give the node's own IP")))
                }
                Some(a) if a.port() == 0 => return Err((node("bind"), "port 0: give a fixed port, peers dial it".into())),
                _ => {}
            }
            if let Some(name) = &self.node.name {
                if let Err(e) = gossip::tls::validate_node_name(name) {
                    return Err((node("name"), e.to_string()));
                }
            }
            if c.token.is_some() && c.token_file.is_some() {
                return Err((cl("token_file"), "give token or token_file, not both".into()));
            }
            if let Some(t) = &c.token {
                if let Err(e) = t.parse::<gossip::tls::JoinToken>() {
                    return Err((cl("token"), e.to_string()));
                }
            }
            if c.voters == Some(0) {
                return Err((cl("voters"), "at least 1 voter".into()));
            }
            if c.heartbeat.is_zero() || c.probe_period.is_zero() {
                return Err((cl("heartbeat"), "heartbeat and probe_period must be > 0".into()));
            }
        }
        for (i, s) in self.track_script.iter().enumerate() {
            if s.weight < -253 || s.weight > 253 {
                let here = vec![Key("track_script".into()), Index(i), Key("weight".into())];
                return Err((here, "weight must be within -253..=253".into()));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, f) in self.track_file.iter().enumerate() {
            let at = |k: &str| vec![Key("track_file".into()), Index(i), Key(k.into())];
            if !names.insert(f.name.as_str()) {
                return Err((at("name"), format!("a second [[track_file]] named {:?}", f.name)));
            }
            if !(-254..=254).contains(&f.weight) {
                return Err((at("weight"), "weight must be within -254..=254".into()));
            }
            if !f.file.is_absolute() {
                return Err((at("file"), format!("{} is not an absolute path", f.file.display())));
            }
            if f.init_overwrite && f.init_file.is_none() {
                return Err((at("init_overwrite"), "needs init_file = VALUE".into()));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.track_process.iter().enumerate() {
            let at = |k: &str| vec![Key("track_process".into()), Index(i), Key(k.into())];
            if !names.insert(p.name.as_str()) {
                return Err((at("name"), format!("a second [[track_process]] named {:?}", p.name)));
            }
            if p.process.is_empty() {
                return Err((at("process"), "the command to look for".into()));
            }
            if !(-254..=254).contains(&p.weight) {
                return Err((at("weight"), "weight must be within -254..=254".into()));
            }
            if p.quorum_max.is_some_and(|m| m < p.quorum) {
                return Err((at("quorum_max"), "below quorum".into()));
            }
            if p.interval < Duration::from_millis(100) {
                return Err((at("interval"), "at least 100ms".into()));
            }
        }
        Ok(())
    }
}

/// The sections an included file may hold: lists, which add up.
const INCLUDABLE: [&str; 5] = ["vrrp", "vrrp_sync_group", "track_script", "track_file", "track_process"];

/// The files an `include` pattern names, sorted: relative patterns are taken from the
/// including file's directory; a glob may match nothing, a plain path must exist.
fn include_files(including: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    // The including file's directory is a path, not a pattern: its `[`, `*` or `?` match
    // themselves.
    let base = including.parent().unwrap_or(Path::new("."));
    let base = glob::Pattern::escape(base.to_str().ok_or_else(|| format!("{}: not UTF-8", base.display()))?);
    let full = if Path::new(pattern).is_absolute() { PathBuf::from(pattern) } else { Path::new(&base).join(pattern) };
    let text = full.to_str().ok_or_else(|| format!("{pattern:?}: not UTF-8"))?;
    let wild = pattern.contains(['*', '?', '[']);
    let mut files: Vec<PathBuf> = glob::glob(text)
        .map_err(|e| format!("{pattern:?}: {e}"))?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() && !wild {
        return Err(format!("{}: no such file", full.display()));
    }
    Ok(files)
}

/// Parses TOML into `T` and runs `validate`; every error names the file, line and key path.
/// Shared by the node config and the rules file of `corralctl apply`.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    validate: impl Fn(&T) -> Result<(), (Vec<KeySeg>, String)>,
) -> Result<T, ConfigError> {
    let err = |line, key: String, message: String| ConfigError { file: path.to_owned(), line, key, message };
    let de = toml::de::Deserializer::parse(text)
        .map_err(|e| err(e.span().map(|s| line_of(text, s.start)), String::new(), e.message().to_owned()))?;
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let segs = path_segs(e.path());
        let inner = e.into_inner();
        let line = inner.span().map(|s| line_of(text, s.start)).or_else(|| line_of_path(text, &segs));
        err(line, key_path(&segs), inner.message().to_owned())
    })?;
    validate(&value).map_err(|(segs, message)| err(line_of_path(text, &segs), key_path(&segs), message))?;
    Ok(value)
}

/// Parses `ADDR/PREFIX` (prefix optional: /32 or /128).
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: std::net::IpAddr = a.parse().map_err(|_| format!("{a:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => max,
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("bad prefix length {p:?} (0..={max})"))?,
    };
    Ok((addr, prefix))
}

fn path_segs(path: &serde_path_to_error::Path) -> Vec<KeySeg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(KeySeg::Index(*index)),
            Segment::Map { key } => Some(KeySeg::Key(key.clone())),
            Segment::Enum { variant } => Some(KeySeg::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
name = "d1"

[[vrrp]]
name = "VI_1"
interface = "eth0"
vrid = 51
version = 3
priority = 150
advert_interval = "10ms"
preempt = true
preempt_delay = "0s"
virtual_ips = ["192.0.2.100/24"]

[[vrrp]]
name = "VI_6"
interface = "eth0"
vrid = 51
virtual_ips = ["2001:db8::100/64"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.vrrp.len(), 2);
        assert_eq!(c.vrrp[0].advert_interval, Duration::from_millis(10));
        assert_eq!(c.vrrp[1].version, 3);
        assert_eq!(c.vrrp[1].priority, 100);
        assert_eq!(c.vrrp[1].advert_interval, Duration::from_secs(1));
        assert_eq!(c.node.admin_socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert!(c.vrrp[1].accept, "Accept_Mode is on by default, as keepalived's");
    }

    #[test]
    fn no_accept_mode_is_refused_not_ignored() {
        assert!(parse(&GOOD.replace("preempt = true", "preempt = true\naccept = true")).unwrap().vrrp[0].accept);
        let e = parse(&GOOD.replace("preempt = true", "preempt = true\naccept = false")).unwrap_err();
        assert_eq!(e.key, "vrrp[0].accept");
        assert!(e.message.contains("not supported") && e.message.contains("IPVS"), "{}", e.message);
    }

    #[test]
    fn includes_add_instances_in_file_order_and_errors_name_the_included_file() {
        let dir = std::env::temp_dir().join(format!("corral-include-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        let inst = |name: &str, vrid: u32| {
            format!("[[vrrp]]\nname = \"{name}\"\ninterface = \"eth0\"\nvrid = {vrid}\npriority = 100\nvirtual_ips = [\"192.0.2.{vrid}/24\"]\n")
        };
        let main = dir.join("corrald.toml");
        let main_text = format!("include = [\"conf.d/*.toml\", \"{}/extra.toml\"]\n\n{}", dir.display(), inst("VI_main", 1));
        std::fs::write(dir.join("conf.d/b.toml"), inst("VI_b", 3)).unwrap();
        std::fs::write(dir.join("conf.d/a.toml"), format!("{}\n{}", inst("VI_a1", 2), inst("VI_a2", 4))).unwrap();
        std::fs::write(dir.join("extra.toml"), "[[track_file]]\nname = \"maint\"\nfile = \"/run/maint\"\n").unwrap();
        std::fs::write(&main, &main_text).unwrap();
        let c = Config::load(&main).unwrap();
        let names: Vec<&str> = c.vrrp.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["VI_main", "VI_a1", "VI_a2", "VI_b"], "this file's first, then by file name");
        assert_eq!(c.track_file.len(), 1);
        // A bad value in an included file: that file, its line, its own index.
        std::fs::write(dir.join("conf.d/b.toml"), inst("VI_b", 0)).unwrap();
        let e = Config::load(&main).unwrap_err();
        assert_eq!((e.file.clone(), e.line, e.key.as_str()), (dir.join("conf.d/b.toml"), Some(4), "vrrp[0].vrid"), "{e}");
        // A duplicate across files is found in the merged set, named where the second is.
        std::fs::write(dir.join("conf.d/b.toml"), inst("VI_a2", 5)).unwrap();
        let e = Config::load(&main).unwrap_err();
        assert!(e.file.ends_with("conf.d/b.toml") && e.message.contains("duplicate instance name \"VI_a2\""), "{e}");
        // Only lists may be included; a type error names the file and line.
        std::fs::write(dir.join("conf.d/b.toml"), "[node]\nname = \"x\"\n").unwrap();
        let e = Config::load(&main).unwrap_err();
        assert!(e.file.ends_with("conf.d/b.toml") && e.key == "node" && e.message.contains("belongs in"), "{e}");
        std::fs::write(dir.join("conf.d/b.toml"), "[[vrrp]]\nname = \"VI_b\"\nvrid = \"three\"\n").unwrap();
        let e = Config::load(&main).unwrap_err();
        assert!(e.file.ends_with("conf.d/b.toml") && e.line == Some(3), "{e}");
        // An empty conf.d is fine; a plain path that is not there is not.
        std::fs::remove_file(dir.join("conf.d/b.toml")).unwrap();
        std::fs::remove_file(dir.join("conf.d/a.toml")).unwrap();
        assert_eq!(Config::load(&main).unwrap().vrrp.len(), 1);
        std::fs::remove_file(dir.join("extra.toml")).unwrap();
        let e = Config::load(&main).unwrap_err();
        assert!(e.file == main && e.key == "include[1]" && e.line == Some(1) && e.message.contains("no such file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notify_fifo_is_an_absolute_path() {
        let c = parse("[node]\nnotify_fifo = \"/run/corral/notify\"\n").unwrap();
        assert_eq!(c.node.notify_fifo, Some(PathBuf::from("/run/corral/notify")));
        assert_eq!(parse("[node]\nnotify_fifo = \"notify\"\n").unwrap_err().key, "node.notify_fifo");
        assert_eq!(parse("[node]\nlvs_notify_fifo = \"lvs\"\n").unwrap_err().key, "node.lvs_notify_fifo");
        let e = parse("[node]\nnotify_fifo = \"/run/n\"\nvrrp_notify_fifo = \"/run/v\"\nlvs_notify_fifo = \"/run/n\"\n").unwrap_err();
        assert_eq!(e.key, "node.lvs_notify_fifo");
        assert!(e.message.contains("already notify_fifo"), "{}", e.message);
        let c = parse("[node]\nvrrp_notify_fifo = \"/run/v\"\nlvs_notify_fifo = \"/run/l\"\n").unwrap();
        assert_eq!((c.node.vrrp_notify_fifo, c.node.lvs_notify_fifo), (Some(PathBuf::from("/run/v")), Some(PathBuf::from("/run/l"))));
    }

    #[test]
    fn realtime_priority_is_a_sched_rr_priority() {
        let with = |p: &str| format!("[node]\nrealtime_priority = {p}\n");
        assert_eq!(parse(&with("10")).unwrap().node.realtime_priority, Some(10));
        assert_eq!(parse("").unwrap().node.realtime_priority, None);
        for bad in ["0", "100"] {
            let e = parse(&with(bad)).unwrap_err();
            assert_eq!(e.key, "node.realtime_priority", "{e}");
            assert!(e.to_string().contains("1..=99"), "{e}");
        }
        // Out of u8 range: the deserializer names the key too.
        assert_eq!(parse(&with("300")).unwrap_err().key, "node.realtime_priority");
    }

    #[test]
    fn sync_daemon_options_like_keepalived_lvs_sync_daemon() {
        let with = |extra: &str| {
            format!("[node]\nbind = \"192.0.2.1:7946\"\n[cluster]\n[director]\nsync_interface = \"eth0\"\n{extra}\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 1\nvirtual_ips = [\"192.0.2.100/24\"]\n")
        };
        let c = parse(&with("sync_maxlen = 1400\nsync_group = \"239.1.2.3\"\nsync_port = 8849\nsync_ttl = 3")).unwrap();
        let d = c.director.unwrap();
        assert_eq!((d.sync_maxlen, d.sync_group, d.sync_port, d.sync_ttl), (1400, Some("239.1.2.3".parse().unwrap()), 8849, 3));
        let d = parse(&with("")).unwrap().director.unwrap();
        assert_eq!((d.sync_maxlen, d.sync_group, d.sync_port, d.sync_ttl), (0, None, 0, 0), "kernel defaults");
        let e = parse(&with("sync_group = \"192.0.2.9\"")).unwrap_err();
        assert_eq!(e.key, "director.sync_group", "{e}");
        assert!(e.message.contains("not a multicast address"), "{e}");
        let e = parse(&with("").replace("sync_interface = \"eth0\"\n", "sync_port = 8849\n")).unwrap_err();
        assert_eq!(e.key, "director.sync_port", "{e}");
        assert_eq!(parse(&with("")).unwrap().director.unwrap().foreign_services, "remove");
        assert_eq!(parse(&with("foreign_services = \"keep\"")).unwrap().director.unwrap().foreign_services, "keep");
        let e = parse(&with("foreign_services = \"ignore\"")).unwrap_err();
        assert_eq!(e.key, "director.foreign_services", "{e}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace("preempt = true", "prempt = true");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        assert!(e.to_string().contains("prempt"), "{e}");
        assert!(e.key.starts_with("vrrp[0]"), "{e}");
    }

    #[test]
    fn bad_duration_names_key_and_line() {
        let text = GOOD.replace("\"10ms\"", "\"ten\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "vrrp[0].advert_interval", "{e}");
        assert_eq!(e.line, Some(11), "{e}");
    }

    #[test]
    fn semantic_error_names_key_and_line() {
        let text = GOOD.replace("version = 3", "version = 2");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "vrrp[0].advert_interval", "{e}");
        assert_eq!(e.line, Some(11), "{e}");
        let text = GOOD.replace("2001:db8::100/64", "2001:db8::100/129");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "vrrp[1].virtual_ips[0]", "{e}");
        assert_eq!(e.line, Some(20), "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse("[[vrrp]\nname=").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn vmac_names_default_like_keepalived_and_must_be_unique() {
        let text = GOOD.replace("preempt = true", "preempt = true\nuse_vmac = true").replace(
            "vrid = 51\nvirtual_ips = [\"2001:db8::100/64\"]",
            "vrid = 51\nuse_vmac = true\nvirtual_ips = [\"2001:db8::100/64\"]",
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.vrrp[0].vmac_ifname().as_deref(), Some("vrrp.51"));
        assert_eq!(c.vrrp[1].vmac_ifname().as_deref(), Some("vrrp6.51"));
        let clash = text.replace("use_vmac = true\nvirtual_ips = [\"2001", "use_vmac = true\nvmac_name = \"vrrp.51\"\nvirtual_ips = [\"2001");
        let e = parse(&clash).unwrap_err();
        assert_eq!(e.key, "vrrp[1].vmac_name", "{e}");
        let long = text.replace("preempt = true\nuse_vmac = true", "preempt = true\nuse_vmac = true\nvmac_name = \"a-very-long-vmac-name\"");
        assert_eq!(parse(&long).unwrap_err().key, "vrrp[0].vmac_name");
        let orphan = GOOD.replace("preempt = true", "preempt = true\nvmac_name = \"v51\"");
        assert_eq!(parse(&orphan).unwrap_err().key, "vrrp[0].vmac_name");
    }

    #[test]
    fn virtual_ips_take_keepalived_dev_label_and_scope() {
        let v = parse_vip("192.0.2.100/24 dev eth1 label eth1:web scope host").unwrap();
        assert_eq!(v, VipSpec { addr: "192.0.2.100".parse().unwrap(), prefix: 24, dev: Some("eth1".into()), label: Some("eth1:web".into()), scope: Some(254) });
        assert!(parse_vip("2001:db8::1 scope link").unwrap_err().contains("IPv6"));
        assert_eq!(parse_vip("192.0.2.1 scope 7").unwrap().prefix, 32);
        for (bad, says) in [
            ("192.0.2.100/24 brd 192.0.2.255", "\"brd\""),
            ("192.0.2.100/24 dev", "\"dev\" needs a value"),
            ("192.0.2.100/24 dev a/b", "not an interface name"),
            ("192.0.2.100/24 scope galactic", "scope \"galactic\""),
            ("2001:db8::1/64 label eth0:x", "no labels"),
            ("192.0.2.100/24 label eth0:much-too-long", "1..=15"),
            ("", "empty"),
        ] {
            let e = parse_vip(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // In the config: the family comes from the address, not from a ':' in the label.
        let text = GOOD.replace("\"192.0.2.100/24\"", "\"192.0.2.100/24 label eth0:vip\"");
        let c = parse(&text).unwrap();
        assert!(!c.vrrp[0].is_v6());
        let e = parse(&GOOD.replace("\"192.0.2.100/24\"", "\"192.0.2.100/24 label web\"")).unwrap_err();
        assert_eq!(e.key, "vrrp[0].virtual_ips[0]", "{e}");
        assert!(e.message.contains("must begin with its interface's name \"eth0\""), "{e}");
        let ok = GOOD.replace("\"192.0.2.100/24\"", "\"192.0.2.100/24 dev eth1 label eth1:vip\"");
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn excluded_vips_may_mix_families_and_unicast_src_ip_must_match() {
        let with = |extra: &str| GOOD.replace("virtual_ips = [\"192.0.2.100/24\"]", &format!("virtual_ips = [\"192.0.2.100/24\"]\n{extra}"));
        let c = parse(&with("virtual_ips_excluded = [\"2001:db8::5/64\", \"192.0.2.101/24 scope link\"]\nunicast_src_ip = \"192.0.2.11\"")).unwrap();
        assert_eq!(c.vrrp[0].all_vips().unwrap().len(), 3);
        assert_eq!(c.vrrp[0].unicast_src_ip, Some("192.0.2.11".parse().unwrap()));
        // keepalived's other name for it.
        assert!(parse(&with("mcast_src_ip = \"192.0.2.11\"")).unwrap().vrrp[0].unicast_src_ip.is_some());
        // VRRPv2 may move IPv6 addresses it does not advertise.
        let v2 = with("virtual_ips_excluded = [\"2001:db8::5/64\"]").replace("version = 3", "version = 2").replace("\"10ms\"", "\"1s\"");
        assert!(parse(&v2).is_ok());
        let e = parse(&with("virtual_ips_excluded = [\"192.0.2.100/32\"]")).unwrap_err();
        assert_eq!(e.key, "vrrp[0].virtual_ips_excluded[0]", "{e}");
        assert!(e.message.contains("listed twice"), "{e}");
        let e = parse(&with("unicast_src_ip = \"2001:db8::1\"")).unwrap_err();
        assert_eq!(e.key, "vrrp[0].unicast_src_ip", "{e}");
        let e = parse(&with("unicast_src_ip = \"192.0.2\"")).unwrap_err();
        assert_eq!(e.key, "vrrp[0].unicast_src_ip", "{e}");
        let e = parse(&with("virtual_ips_excluded = [\"192.0.2.7 bogus\"]")).unwrap_err();
        assert_eq!(e.key, "vrrp[0].virtual_ips_excluded[0]", "{e}");
    }

    #[test]
    fn track_files_are_validated_by_name() {
        let with = |defs: &str, refs: &str| format!("{defs}\n{}", GOOD.replace("preempt = true", &format!("preempt = true\ntrack_files = {refs}")));
        let ok = with("[[track_file]]\nname = \"m\"\nfile = \"/run/m\"\nreverse = true\n", "[\"m\", { name = \"m\", weight = -10 }]");
        let c = parse(&ok).unwrap();
        assert_eq!(c.track_file[0].weight, 1, "keepalived's default weight");
        assert_eq!(c.vrrp[0].track_files.len(), 2);
        for (defs, refs, key) in [
            ("", "[\"m\"]", "vrrp[0].track_files[0]"),
            ("[[track_file]]\nname = \"m\"\nfile = \"m.txt\"\n", "[]", "track_file[0].file"),
            ("[[track_file]]\nname = \"m\"\nfile = \"/m\"\nweight = 300\n", "[]", "track_file[0].weight"),
            ("[[track_file]]\nname = \"m\"\nfile = \"/m\"\ninit_overwrite = true\n", "[]", "track_file[0].init_overwrite"),
            ("[[track_file]]\nname = \"m\"\nfile = \"/m\"\n[[track_file]]\nname = \"m\"\nfile = \"/n\"\n", "[]", "track_file[1].name"),
            ("[[track_file]]\nname = \"m\"\nfile = \"/m\"\n", "[{ name = \"m\", weight = 255 }]", "vrrp[0].track_files[0]"),
        ] {
            let e = parse(&with(defs, refs)).unwrap_err();
            assert_eq!(e.key, key, "{defs} {refs}: {e}");
        }
    }

    #[test]
    fn garp_master_refresh_is_off_by_default_and_bounded() {
        let c = parse(GOOD).unwrap();
        assert!(c.vrrp[0].garp_master_refresh.is_zero());
        assert_eq!(c.vrrp[0].garp_master_refresh_repeat, 1);
        let with = |extra: &str| GOOD.replace("preempt = true", &format!("preempt = true\n{extra}"));
        assert_eq!(parse(&with("garp_master_refresh = \"60s\"")).unwrap().vrrp[0].garp_master_refresh, Duration::from_secs(60));
        assert_eq!(parse(&with("garp_master_refresh = \"10ms\"")).unwrap_err().key, "vrrp[0].garp_master_refresh");
        assert_eq!(parse(&with("garp_master_refresh_repeat = 0")).unwrap_err().key, "vrrp[0].garp_master_refresh_repeat");
        assert!(c.node.garp_interval.is_zero() && c.node.gna_interval.is_zero(), "back to back by default");
        let node = |extra: &str| GOOD.replacen("name = \"d1\"\n", &format!("name = \"d1\"\n{extra}\n"), 1);
        let paced = parse(&node("garp_interval = \"100ms\"\ngna_interval = \"5ms\"")).unwrap();
        assert_eq!((paced.node.garp_interval, paced.node.gna_interval), (Duration::from_millis(100), Duration::from_millis(5)));
        let e = parse(&node("garp_interval = \"2s\"")).unwrap_err();
        assert_eq!(e.key, "node.garp_interval", "{e}");
        assert!(e.message.contains("at most 1s"), "{e}");
        assert_eq!(parse(&node("gna_interval = \"5s\"")).unwrap_err().key, "node.gna_interval");
        // A paced refresh that would not be over before the next one.
        let refresh = |r: &str| {
            with(&format!("garp_master_refresh = \"{r}\"\ngarp_master_refresh_repeat = 2")).replacen("name = \"d1\"\n", "name = \"d1\"\ngarp_interval = \"500ms\"\n", 1)
        };
        let e = parse(&refresh("1s")).unwrap_err();
        assert_eq!(e.key, "vrrp[0].garp_master_refresh", "{e}");
        assert!(e.message.contains("longer than the refresh period"), "{e}");
        assert!(parse(&refresh("10s")).is_ok());
        let e = parse(&with("track_processes = [\"haproxy\"]")).unwrap_err();
        assert_eq!(e.key, "vrrp[0].track_processes[0]", "{e}");
        assert!(e.message.contains("no [[track_process]] named \"haproxy\""), "{e}");
        let ok = format!("[[track_process]]\nname = \"haproxy\"\nprocess = \"haproxy\"\n{}", with("track_processes = [{ name = \"haproxy\", weight = -60 }]"));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn virtual_routes_take_ip_route_words() {
        use vrrp::sys::route::RouteKind;
        let r = parse_route("203.0.113.0/24 via 192.0.2.254 dev eth1 src 192.0.2.100 metric 7 table 100 onlink").unwrap();
        assert_eq!(r.kind, RouteKind::Unicast);
        assert_eq!((r.dest, r.prefix), ("203.0.113.0".parse().unwrap(), 24));
        assert_eq!(r.via, Some("192.0.2.254".parse().unwrap()));
        assert_eq!(r.src, Some("192.0.2.100".parse().unwrap()));
        assert_eq!((r.dev.as_deref(), r.metric, r.table, r.onlink), (Some("eth1"), Some(7), Some(100), true));
        let d = parse_route("default via 2001:db8::1").unwrap();
        assert_eq!((d.dest, d.prefix), ("::".parse().unwrap(), 0), "default takes the gateway's family");
        let b = parse_route("blackhole 198.51.100.128/25 table main").unwrap();
        assert_eq!((b.kind, b.table), (RouteKind::Blackhole, Some(254)));
        assert_eq!(parse_route("to 192.0.2.0/24 dev eth0 scope link").unwrap().scope, Some(253));
        for (bad, says) in [
            ("192.0.2.0/24", "needs via ADDR or dev IF"),
            ("blackhole 192.0.2.0/24 dev eth0", "takes no via or dev"),
            ("192.0.2.0/24 via 2001:db8::1", "address family"),
            ("192.0.2.0/24 via 192.0.2.1 weight 3", "\"weight\""),
            ("192.0.2.0/33 dev eth0", "destination"),
            ("dev eth0", "needs a destination"),
            ("192.0.2.0/24 dev eth0 table 0", "table"),
            ("10.1.2.3/8 dev eth0", "host bits set (the network is 10.0.0.0/8)"),
        ] {
            let e = parse_route(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = parse(&GOOD.replace("preempt = true", "preempt = true\nvirtual_routes = [\"default via 192.0.2.1\", \"10.0.0.0/8\"]")).unwrap_err();
        assert_eq!(e.key, "vrrp[0].virtual_routes[1]", "{e}");
    }

    #[test]
    fn duplicate_vrid_same_family_rejected() {
        let text = GOOD.replace("2001:db8::100/64", "192.0.2.101/24");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "vrrp[1].vrid", "{e}");
    }
}

/// Parses a humantime duration with the same message the config uses (for CLI flags).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e} (write e.g. \"30m\", \"1h\")"))
}
