//! A lab cluster: one `corrald` per network namespace on a bridge (192.0.2.N:7946), driven
//! with the real `corralctl` over each node's admin socket. Used by the cluster tests and by
//! `cargo xtask bench cluster`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{run_sh, wait_for, workspace_bin, Daemon, Lan, ShOut};

/// QUIC port every lab node binds.
pub const PORT: u16 = 7946;

/// Binaries under test: `None` (with a message) when not built; fails under CI=true.
pub fn binaries(test: &str) -> Option<(PathBuf, PathBuf)> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    // In the VM the binaries are installed in /usr/bin.
    let find = |name: &str, var: &str| {
        workspace_bin(name, var).or_else(|| {
            let p = PathBuf::from("/usr/bin").join(name);
            p.exists().then_some(p)
        })
    };
    match (find("corrald", "CORRALD"), find("corralctl", "CORRALCTL")) {
        (Some(d), Some(c)) => Some((d, c)),
        _ => {
            assert!(!ci, "{test}: corrald/corralctl not built (cargo xtask test builds them first)");
            eprintln!("SKIP: {test}: corrald/corralctl not built (run cargo build --bins)");
            None
        }
    }
}

/// One lab node: its namespace index, data dir, socket and (when running) process.
pub struct LabNode {
    pub name: String,
    pub index: usize,
    pub dir: PathBuf,
    pub daemon: Option<Daemon>,
}

impl LabNode {
    pub fn addr(&self) -> String {
        format!("192.0.2.{}:{PORT}", self.index + 1)
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("corrald.log")
    }
}

/// A LAN of namespaces with one node per host.
pub struct LabCluster {
    pub lan: Lan,
    pub nodes: Vec<LabNode>,
    pub corrald: PathBuf,
    pub corralctl: PathBuf,
    root: PathBuf,
    /// Extra `[node]` lines for every node (e.g. `realtime_priority`).
    pub node_extra: String,
    /// Extra `[cluster]` lines for every node (timing knobs).
    pub cluster_extra: String,
    /// Extra sections appended to every node's config (e.g. `[director]`, `[[vrrp]]`); `{i}`
    /// is replaced by the node's 1-based number.
    pub extra_sections: String,
    /// Extra environment for every corrald (e.g. `RUST_LOG` for stage timings).
    pub env: Vec<(String, String)>,
}

impl LabCluster {
    /// `n` hosts, nothing started.
    pub fn new(tag: &str, n: usize, corrald: PathBuf, corralctl: PathBuf) -> LabCluster {
        Self::with_hosts(tag, n, n, corrald, corralctl)
    }

    /// `n` cluster nodes on hosts 1..=n of a LAN with `hosts` hosts (the rest for backends,
    /// clients, observers), nothing started.
    pub fn with_hosts(tag: &str, n: usize, hosts: usize, corrald: PathBuf, corralctl: PathBuf) -> LabCluster {
        let root = std::env::temp_dir().join(format!("corral-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let nodes = (0..n)
            .map(|i| {
                let dir = root.join(format!("d{}", i + 1));
                std::fs::create_dir_all(&dir).unwrap();
                LabNode { name: format!("d{}", i + 1), index: i, dir, daemon: None }
            })
            .collect();
        LabCluster {
            lan: Lan::new(hosts.max(n)),
            nodes,
            corrald,
            corralctl,
            root,
            node_extra: String::new(),
            cluster_extra: "dead_grace = \"3s\"\n".into(),
            extra_sections: String::new(),
            env: Vec::new(),
        }
    }

    /// Writes node `i`'s config: `join` = seeds (node indexes), `token` if given.
    pub fn configure(&self, i: usize, seeds: &[usize], token: Option<&str>) {
        let n = &self.nodes[i];
        let join: Vec<String> = seeds.iter().map(|s| format!("\"{}\"", self.nodes[*s].addr())).collect();
        let token = token.map(|t| format!("token = \"{t}\"\n")).unwrap_or_default();
        let cfg = format!(
            "[node]\nname = \"{}\"\nbind = \"{}\"\ndata_dir = \"{}\"\nadmin_socket = \"{}\"\n{}\n[cluster]\njoin = [{}]\n{token}{}\n{}",
            n.name,
            n.addr(),
            n.dir.join("data").display(),
            n.socket().display(),
            self.node_extra,
            join.join(", "),
            self.cluster_extra,
            self.extra_sections.replace("{i}", &(i + 1).to_string())
        );
        std::fs::write(n.dir.join("corrald.toml"), cfg).unwrap();
    }

    /// Starts node `i` on its written config (log appended to its corrald.log).
    pub fn start(&mut self, i: usize) {
        let n = &self.nodes[i];
        let _ = std::fs::remove_file(n.socket());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(n.log()).unwrap();
        let mut cmd = self.lan.hosts[i].cmd(self.corrald.to_str().unwrap());
        cmd.arg("--config").arg(n.dir.join("corrald.toml")).stdout(Stdio::null()).stderr(log);
        cmd.env("NO_COLOR", "1");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let d = Daemon::spawn(cmd, &n.name);
        self.nodes[i].daemon = Some(d);
    }

    /// Waits until node `i` answers on its admin socket.
    pub fn wait_up(&self, i: usize, within: Duration) -> bool {
        wait_for(within, || self.ctl(i, "raft status -o json").code == 0).is_some()
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut d) = self.nodes[i].daemon.take() {
            d.signal("KILL");
            d.wait_exit(Duration::from_secs(5));
        }
    }

    /// `corralctl --socket <node i> ARGS`.
    pub fn ctl(&self, i: usize, args: &str) -> ShOut {
        run_sh(&format!("{} --socket {} {args}", self.corralctl.display(), self.nodes[i].socket().display()), "")
    }

    /// `members -o json` from node `i` (None when it does not answer).
    pub fn members(&self, i: usize) -> Option<Vec<Value>> {
        let o = self.ctl(i, "members -o json");
        if o.code != 0 {
            return None;
        }
        serde_json::from_str(&o.stdout).ok()
    }

    /// `raft status -o json` from node `i`.
    pub fn raft(&self, i: usize) -> Option<Value> {
        let o = self.ctl(i, "raft status -o json");
        if o.code != 0 {
            return None;
        }
        serde_json::from_str(&o.stdout).ok()
    }

    /// State of `name` in node `i`'s member list.
    pub fn state_of(&self, i: usize, name: &str) -> Option<String> {
        self.members(i)?
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["state"].as_str().unwrap_or_default().to_string())
    }

    /// Creates a join token on node `i`: (token, id).
    pub fn token(&self, i: usize, args: &str) -> (String, String) {
        let o = self.ctl(i, &format!("token create -o json {args}"));
        assert_eq!(o.code, 0, "token create: {}{}", o.stdout, o.stderr);
        let v: Value = serde_json::from_str(&o.stdout).expect("token create -o json");
        (v["token"].as_str().unwrap().to_string(), v["info"]["id"].as_str().unwrap().to_string())
    }

    /// Index of the node every running node names as leader, if they agree.
    pub fn leader(&self) -> Option<usize> {
        let mut leader = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.daemon.is_none() {
                continue;
            }
            let l = self.raft(i)?["leader"].as_str()?.to_string();
            let idx = self.nodes.iter().position(|n| n.name == l)?;
            if *leader.get_or_insert(idx) != idx {
                return None;
            }
        }
        leader
    }

    /// `kv list -o json` entries from node `i`.
    pub fn kv(&self, i: usize) -> Option<serde_json::Map<String, Value>> {
        let o = self.ctl(i, "kv list -o json");
        if o.code != 0 {
            return None;
        }
        let v: Value = serde_json::from_str(&o.stdout).ok()?;
        v["entries"].as_object().cloned()
    }

    /// Bootstraps node 0 and joins the others through it; returns once every node lists all
    /// `n` members alive, with the time that took after the last process started.
    pub fn form(&mut self, within: Duration) -> Duration {
        self.configure(0, &[], None);
        self.start(0);
        assert!(self.wait_up(0, Duration::from_secs(20)), "d1 did not come up: {}", self.log_tail(0));
        assert!(
            wait_for(Duration::from_secs(10), || self.ctl(0, "token list").code == 0 && self.leader() == Some(0)).is_some(),
            "d1 did not become leader"
        );
        let token = self.wait_token(0);
        for i in 1..self.nodes.len() {
            self.configure(i, &[0], Some(&token));
            self.start(i);
        }
        let t0 = Instant::now();
        let n = self.nodes.len();
        let all_alive = |c: &LabCluster| {
            (0..n).all(|i| c.members(i).is_some_and(|m| m.len() == n && m.iter().all(|x| x["state"] == "alive")))
        };
        if wait_for(within, || all_alive(self)).is_none() {
            let views: Vec<String> = (0..n).map(|i| format!("{:?}", self.members(i))).collect();
            panic!("members did not agree within {within:?}:\n{}\n{}", views.join("\n"), self.log_tail(1));
        }
        t0.elapsed()
    }

    /// Waits until the joins' Raft membership changes are over: every node a voter, no learner,
    /// and the leader's log on every follower. [`LabCluster::form`] returns when gossip agrees,
    /// which is earlier; a write right then can wait behind a membership change in flight (a
    /// new voter still catching up under TCG) for longer than corralctl's 5 s.
    pub fn wait_settled(&self, within: Duration) {
        let n = self.nodes.len();
        let settled = wait_for(within, || {
            let Some(r) = self.leader().and_then(|l| self.raft(l)) else { return false };
            let count = |k: &str| r[k].as_array().map_or(usize::MAX, Vec::len);
            let caught_up = r["lag"].as_object().is_some_and(|lag| lag.len() == n - 1 && lag.values().all(|v| v.as_u64() == Some(0)));
            count("voters") == n && count("learners") == 0 && caught_up
        });
        if settled.is_none() {
            // What the leader's gossip says of everyone (promotion follows it) and its log.
            let l = self.leader();
            let members = l.map(|l| self.ctl(l, "members -o json").stdout).unwrap_or_default();
            let tail = l.map(|l| self.log_tail(l)).unwrap_or_default();
            panic!("Raft membership not settled within {within:?}: {:?}\nmembers (leader's view): {members}\nleader's log:\n{tail}", l.and_then(|l| self.raft(l)));
        }
    }

    /// A token from node `i`, retrying while the CA is being published.
    pub fn wait_token(&self, i: usize) -> String {
        let mut out = String::new();
        wait_for(Duration::from_secs(10), || {
            let o = self.ctl(i, "token create --ttl 1h");
            out = o.stdout.trim().to_string();
            o.code == 0
        })
        .unwrap_or_else(|| panic!("token create never succeeded: {}", self.log_tail(i)));
        out
    }

    /// The last lines of node `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.nodes[i].log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The lab's scratch directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for LabCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.daemon.take();
        }
        if std::env::var_os("KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// `2026-11-25T06:51:20.907370Z` (tracing's timestamps) → µs since the epoch.
pub fn parse_ts(s: &str) -> Option<u128> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, dd) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, se) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let frac_us: i64 = format!("{frac:0<6}")[..6].parse().ok()?;
    let secs = days * 86400 + h * 3600 + mi * 60 + se;
    Some((secs as i128 * 1_000_000 + frac_us as i128) as u128)
}

/// Wall-clock µs since the epoch.
pub fn now_us() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
}

/// Revision → time (µs) at which the director in `log_text` logged "applied rules to IPVS".
pub fn applied_times(log_text: &str) -> std::collections::BTreeMap<u64, u128> {
    let mut out = std::collections::BTreeMap::new();
    for l in log_text.lines().filter(|l| l.contains("applied rules to IPVS")) {
        let Some(ts) = l.split_whitespace().next().and_then(parse_ts) else { continue };
        let Some(rev) = l.split("revision=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|r| r.parse().ok()) else { continue };
        out.entry(rev).or_insert(ts);
    }
    out
}

/// Propagation latencies (µs, sorted) of changes `sent` as (revision, send time), given each
/// director's [`applied_times`]: the time until the last director applied it (a reconcile that
/// applied a later revision applied this one too). Also returns how many changes some director
/// never logged.
pub fn propagation_latencies(
    sent: &[(u64, u128)],
    logs: &[std::collections::BTreeMap<u64, u128>],
) -> (Vec<u128>, usize) {
    let mut lat = Vec::new();
    let mut missing = 0;
    for change in sent {
        match propagation_latency(change, logs) {
            Some(us) => lat.push(us),
            None => missing += 1,
        }
    }
    lat.sort();
    (lat, missing)
}

/// One change's latency in µs: from `(revision, sent at)` to the latest node's first applied
/// revision at or past it; `None` when some node never applied it.
pub fn propagation_latency(change: &(u64, u128), logs: &[std::collections::BTreeMap<u64, u128>]) -> Option<u128> {
    let (rev, t) = *change;
    let per: Option<Vec<u128>> = logs.iter().map(|l| l.range(rev..).next().map(|(_, ts)| *ts)).collect();
    per.map(|per| per.into_iter().max().unwrap_or(t).saturating_sub(t))
}

/// Each change's latency in ms with one decimal, "missing" where some node never applied it:
/// how the benchmarks print their unmeasured warm-up changes.
pub fn latencies_ms_text(changes: &[(u64, u128)], logs: &[std::collections::BTreeMap<u64, u128>]) -> Vec<String> {
    changes
        .iter()
        .map(|c| propagation_latency(c, logs).map_or("missing".into(), |us| format!("{:.1}", us as f64 / 1000.0)))
        .collect()
}

/// `RUST_LOG` for corrald that adds the per-stage DEBUG events (target `corral_stage`) to the
/// default filter, for [`stage_times`].
pub const STAGE_LOG_FILTER: &str = "info,openraft=error,openraft::replication=off,openraft::engine=off,corral_stage=debug";

/// One node's stage marks: stage name → revision → (end time µs, duration µs). A stage that
/// covered several log indexes (one append or apply of a batch) counts for each of them.
pub type StageTimes = std::collections::BTreeMap<String, std::collections::BTreeMap<u64, (u128, u64)>>;

/// Parses a corrald log for `corral_stage` events (`stage=NAME first=A last=B took_us=T`) and
/// the director's "applied rules to IPVS" lines (stages `reconcile`, and its parts `desired`,
/// `dump`, `diff`, `netlink`, each as the time it ended). `request` events carry no revision:
/// they are returned in order under revision 0, 1, 2, … (one per admin request).
pub fn stage_times(log_text: &str) -> StageTimes {
    let field = |l: &str, k: &str| -> Option<u64> {
        l.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.trim_matches('"').parse().ok())
    };
    let mut out = StageTimes::new();
    let mut requests = 0u64;
    for l in log_text.lines() {
        let Some(ts) = l.split_whitespace().next().and_then(parse_ts) else { continue };
        if l.contains("applied rules to IPVS") {
            let Some(rev) = field(l, "revision=") else { continue };
            let took = field(l, "took_us=").unwrap_or(0);
            let start = ts.saturating_sub(took as u128);
            let mut at = start;
            for (name, key) in [("desired", "desired_us="), ("dump", "dump_us="), ("diff", "diff_us="), ("netlink", "apply_us=")] {
                let d = field(l, key).unwrap_or(0);
                at += d as u128;
                out.entry(name.into()).or_default().entry(rev).or_insert((at, d));
            }
            out.entry("reconcile".into()).or_default().entry(rev).or_insert((ts, took));
            continue;
        }
        if !l.contains("corral_stage") {
            continue;
        }
        let Some(name) = l.split_whitespace().find_map(|w| w.strip_prefix("stage=")).map(|v| v.trim_matches('"').to_string()) else {
            continue;
        };
        let took = field(l, "took_us=").unwrap_or(0);
        if name == "request" {
            out.entry(name).or_default().insert(requests, (ts, took));
            requests += 1;
            continue;
        }
        let (Some(first), Some(last)) = (field(l, "first="), field(l, "last=")) else { continue };
        let m = out.entry(name).or_default();
        for rev in first..=last.max(first) {
            m.entry(rev).or_insert((ts, took));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_times_reads_stage_events_and_director_lines() {
        let log = r#"2026-11-26T01:00:00.000100Z DEBUG corral_stage: stage="request" took_us=5
2026-11-26T01:00:00.000300Z DEBUG corral_stage: stage="commit" first=7 last=8 took_us=20
2026-11-26T01:00:00.000900Z  INFO node::director: applied rules to IPVS revision=8 changes=1 took_us=400 desired_us=10 dump_us=100 diff_us=5 apply_us=200
2026-11-26T01:00:00.001000Z DEBUG corral_stage: stage="request" took_us=6
not a log line
2026-11-26T01:00:00.001100Z DEBUG corral_stage: stage="commit" first=8 last=8 took_us=1
"#;
        let t = stage_times(log);
        let at = |us: u128| parse_ts("2026-11-26T01:00:00.000000Z").unwrap() + us;
        // Requests are numbered in order; a commit covers first..=last; the first sighting wins.
        assert_eq!(t["request"][&0], (at(100), 5));
        assert_eq!(t["request"][&1], (at(1000), 6));
        assert_eq!(t["commit"][&7], (at(300), 20));
        assert_eq!(t["commit"][&8], (at(300), 20));
        // The director's parts end one after another from the reconcile's start (900 - 400 µs).
        assert_eq!(t["reconcile"][&8], (at(900), 400));
        assert_eq!(t["desired"][&8], (at(510), 10));
        assert_eq!(t["dump"][&8], (at(610), 100));
        assert_eq!(t["diff"][&8], (at(615), 5));
        assert_eq!(t["netlink"][&8], (at(815), 200));
    }
}
