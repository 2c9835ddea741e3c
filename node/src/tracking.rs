//! Tracked interfaces, scripts and files (keepalived's `track_interface`, `vrrp_script` and
//! `track_file`), turned into each instance's (fault, priority adjustment).
//!
//! keepalived semantics: an object with weight 0 that fails puts the instance in FAULT; a
//! positive weight is added while the object is up/OK; a negative weight is subtracted while
//! it is down/KO. Scripts need `rise` successes / `fall` failures in a row to change state.
//!
//! Interfaces (the tracked ones and every instance's own) follow rtnetlink link events
//! (RTNLGRP_LINK): a link going down reaches the instance within a millisecond. A sysfs poll
//! every [`SAFETY_POLL`] stays as a safety net, because a netlink socket drops notifications
//! when its buffer overflows; if the subscription cannot be opened at all, the poll runs
//! every [`POLL`] instead.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{Config, TrackFileConfig, TrackFileRef, TrackInterface, TrackProcessConfig, TrackScriptConfig, TrackScriptRef};

/// How often scripts are considered for a run (their own `interval` decides), and how often
/// interfaces are polled when link events are unavailable.
pub const POLL: Duration = Duration::from_millis(100);

/// How often interfaces are re-read from sysfs while link events flow: only to catch a lost
/// notification.
pub const SAFETY_POLL: Duration = Duration::from_secs(1);

/// The state of every tracked object, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub interfaces: BTreeMap<String, bool>,
    pub scripts: BTreeMap<String, bool>,
    /// Each tracked file's value (0 when missing or not a number).
    pub files: BTreeMap<String, i64>,
    /// Each tracked process: within its quorum (after `delay` for a drop).
    pub processes: BTreeMap<String, bool>,
    /// Quorum fencing: this node cannot see a majority of the Raft voters.
    pub quorum_lost: bool,
}

/// Set by the cluster member when it loses (true) or regains (false) sight of a majority of
/// the Raft voters; read by the tracker like any other tracked object. One daemon per process,
/// so one flag.
pub static QUORUM_LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn quorum_lost() -> bool {
    QUORUM_LOST.load(std::sync::atomic::Ordering::Relaxed)
}

/// True when the interface is administratively up and not reported down by its driver.
pub fn interface_up(name: &str) -> bool {
    let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok());
    let Some(flags) = flags else { return false };
    let oper = std::fs::read_to_string(format!("/sys/class/net/{name}/operstate")).unwrap_or_default();
    flags & 1 != 0 && !matches!(oper.trim(), "down" | "lowerlayerdown" | "notpresent" | "dormant")
}

/// What an instance tracks: its interfaces, scripts and files, with the definitions they name.
pub struct Tracked<'a> {
    pub ifaces: &'a [TrackInterface],
    pub scripts: &'a [TrackScriptRef],
    pub script_defs: &'a [TrackScriptConfig],
    pub files: &'a [TrackFileRef],
    pub file_defs: &'a [TrackFileConfig],
    pub processes: &'a [TrackFileRef],
    pub process_defs: &'a [TrackProcessConfig],
}

/// (fault, adjustment) of one instance under `snap`.
pub fn effect(t: &Tracked<'_>, snap: &Snapshot) -> (bool, i32) {
    let (ifaces, scripts, defs) = (t.ifaces, t.scripts, t.script_defs);
    let mut fault = false;
    let mut adjust = 0;
    let mut apply = |up: bool, weight: i32| match weight {
        0 if !up => fault = true,
        w if w > 0 && up => adjust += w,
        w if w < 0 && !up => adjust += w,
        _ => {}
    };
    for t in ifaces {
        apply(snap.interfaces.get(t.name()).copied().unwrap_or(false), t.weight());
    }
    for s in scripts {
        let def_weight = defs.iter().find(|d| d.name == s.name()).map(|d| d.weight).unwrap_or(0);
        let weight = match s {
            TrackScriptRef::Name(_) => def_weight,
            TrackScriptRef::Weighted { weight, .. } => *weight,
        };
        apply(snap.scripts.get(s.name()).copied().unwrap_or(true), weight);
    }
    for p in t.processes {
        let (weight, reverse) = weight_of(p, t.process_defs.iter().find(|d| d.name == p.name()).map(|d| (d.weight, d.reverse)));
        apply(snap.processes.get(p.name()).copied().unwrap_or(false) != reverse, weight);
    }
    for f in t.files {
        let (weight, reverse) = weight_of(f, t.file_defs.iter().find(|d| d.name == f.name()).map(|d| (d.weight, d.reverse)));
        let value = snap.files.get(f.name()).copied().unwrap_or(0);
        if weight == 0 {
            fault |= value != 0;
            continue;
        }
        let r = value.saturating_mul(i64::from(weight)).saturating_mul(if reverse { -1 } else { 1 });
        if r < -253 {
            fault = true;
        } else {
            adjust += r.min(253) as i32;
        }
    }
    (fault, adjust)
}

/// (weight, reverse) of a tracked file or process: the instance's own, else its definition's
/// (`def`), else keepalived's default weight 1.
fn weight_of(r: &TrackFileRef, def: Option<(i32, bool)>) -> (i32, bool) {
    match r {
        TrackFileRef::Name(_) => def.unwrap_or((1, false)),
        TrackFileRef::Weighted { weight, reverse, .. } => (*weight, *reverse),
    }
}

/// The first snapshot, read synchronously so an instance whose interface is down starts in FAULT.
pub fn initial(cfg: &Config, kept_scripts: &BTreeMap<String, bool>) -> Snapshot {
    let mut snap = Snapshot { quorum_lost: quorum_lost(), ..Default::default() };
    for v in &cfg.vrrp {
        snap.interfaces.insert(v.interface.clone(), interface_up(&v.interface));
        for t in &v.track_interfaces {
            snap.interfaces.insert(t.name().to_owned(), interface_up(t.name()));
        }
    }
    for s in &cfg.track_script {
        // keepalived's default: a script is considered OK until it has failed `fall` times;
        // across a reload, a script whose definition did not change keeps its result (as
        // keepalived keeps it): a failing one must not lift the priority until it fails
        // `fall` times again, a bounce that could move the VIP on every SIGHUP.
        snap.scripts.insert(s.name.clone(), kept_scripts.get(&s.name).copied().unwrap_or(true));
    }
    for f in &cfg.track_file {
        snap.files.insert(f.name.clone(), read_track_file(f).0);
    }
    if !cfg.track_process.is_empty() {
        let procs = scan_processes();
        for p in &cfg.track_process {
            snap.processes.insert(p.name.clone(), within_quorum(p, &procs));
        }
    }
    snap
}

/// A running process as `track_process` matches it: its `comm` and its command line.
pub struct Proc {
    pub comm: String,
    pub argv: Vec<String>,
}

/// Every process now (one pass over /proc; kernel threads have no command line and are
/// matched by `comm` only). Processes that exit during the pass are skipped.
pub fn scan_processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let p = e.path();
        let Ok(comm) = std::fs::read_to_string(p.join("comm")) else { continue };
        let argv = std::fs::read(p.join("cmdline"))
            .map(|b| b.split(|c| *c == 0).filter(|w| !w.is_empty()).map(|w| String::from_utf8_lossy(w).into_owned()).collect())
            .unwrap_or_default();
        out.push(Proc { comm: comm.trim_end_matches('\n').to_string(), argv });
    }
    out
}

/// Whether `p` names this process: its `comm` (what `ps -o comm` shows, 15 bytes at most),
/// its first command-line word or that word's file name; with `params`, the other words too.
pub fn matches(def: &TrackProcessConfig, p: &Proc) -> bool {
    let first = p.argv.first().map(String::as_str);
    let base = first.map(|f| f.rsplit('/').next().unwrap_or(f));
    let named = p.comm == def.process || first == Some(def.process.as_str()) || base == Some(def.process.as_str());
    named && def.params.as_ref().is_none_or(|want| p.argv.get(1..).is_some_and(|rest| rest == want.as_slice()))
}

/// Whether the count of matching processes is within the quorum.
pub fn within_quorum(def: &TrackProcessConfig, procs: &[Proc]) -> bool {
    let n = procs.iter().filter(|p| matches(def, p)).count() as u64;
    n >= u64::from(def.quorum) && def.quorum_max.is_none_or(|m| n <= u64::from(m))
}

/// A tracked file's value, and the text when it is not a number (to be logged): 0 when the
/// file is missing, empty or not a number, as keepalived reads it.
pub fn read_track_file(f: &TrackFileConfig) -> (i64, Option<String>) {
    let Ok(text) = std::fs::read_to_string(&f.file) else { return (0, None) };
    let t = text.trim();
    if t.is_empty() {
        return (0, None);
    }
    // keepalived reads the leading number (strtol): "10\n", "-254 # maintenance".
    let end = t.char_indices().find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && (c == '-' || c == '+')))).map_or(t.len(), |(i, _)| i);
    match t[..end].parse::<i64>() {
        Ok(v) => (v, None),
        Err(_) => (0, Some(t.chars().take(40).collect())),
    }
}

/// keepalived's `init_file`: once, when the daemon starts (not on reload, which would undo an
/// operator's value), writes each file's initial value if it is missing, or always with
/// `init_overwrite`.
pub fn init_files(cfg: &Config) {
    for f in &cfg.track_file {
        let Some(v) = f.init_file else { continue };
        if f.init_overwrite || !f.file.exists() {
            if let Err(e) = std::fs::write(&f.file, format!("{v}\n")) {
                tracing::error!(track_file = %f.name, "init_file: cannot write {}: {e}", f.file.display());
            }
        }
    }
}

struct ScriptState {
    def: TrackScriptConfig,
    ok: bool,
    streak: u32,
    due: tokio::time::Instant,
    running: bool,
}

/// Watches every tracked object and sends a new snapshot whenever one changes.
pub async fn run(cfg: Config, mut snap: Snapshot, tx: mpsc::Sender<Snapshot>) {
    let mut scripts: Vec<ScriptState> = cfg
        .track_script
        .iter()
        .map(|d| ScriptState { def: d.clone(), ok: snap.scripts.get(&d.name).copied().unwrap_or(true), streak: 0, due: tokio::time::Instant::now(), running: false })
        .collect();
    let (done_tx, mut done_rx) = mpsc::channel::<(usize, bool)>(64);
    // Track files whose text was not a number, with that text: logged once per new text.
    let mut bad_files: BTreeMap<String, String> = BTreeMap::new();
    // Tracked processes: (next scan, since when out of quorum while still counted up).
    let mut proc_due: Vec<(tokio::time::Instant, Option<tokio::time::Instant>)> =
        cfg.track_process.iter().map(|_| (tokio::time::Instant::now(), None)).collect();
    let mut events = match vrrp::sys::link::LinkEvents::subscribe() {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!("no rtnetlink link events ({e}); polling interfaces every {POLL:?}");
            None
        }
    };
    let mut tick = tokio::time::interval(POLL);
    let mut safety = tokio::time::interval(if events.is_some() { SAFETY_POLL } else { POLL });
    safety.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = async { events.as_mut()?.next().await }, if events.is_some() => {
                let Some(ev) = ev else {
                    tracing::warn!("rtnetlink link events ended; polling interfaces every {POLL:?}");
                    events = None;
                    safety = tokio::time::interval(POLL);
                    continue;
                };
                // A rename or a deleted link may leave the event without a tracked name: the
                // name decides, because the configuration tracks names.
                let Some(name) = ev.name.filter(|n| snap.interfaces.contains_key(n)) else { continue };
                if snap.interfaces.insert(name.clone(), ev.up) != Some(ev.up) {
                    tracing::info!(interface = %name, "link is {}", if ev.up { "up" } else { "down" });
                    if tx.send(snap.clone()).await.is_err() {
                        return;
                    }
                }
            }
            _ = safety.tick() => {
                let names: Vec<String> = snap.interfaces.keys().cloned().collect();
                let mut changed = false;
                for name in names {
                    let up = interface_up(&name);
                    if snap.interfaces.insert(name.clone(), up) != Some(up) {
                        tracing::info!(interface = %name, "link is {} (seen by the poll)", if up { "up" } else { "down" });
                        changed = true;
                    }
                }
                if changed && tx.send(snap.clone()).await.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {
                let mut changed = false;
                for f in &cfg.track_file {
                    let (v, bad) = read_track_file(f);
                    if let Some(text) = bad {
                        if bad_files.insert(f.name.clone(), text.clone()).as_ref() != Some(&text) {
                            tracing::warn!(track_file = %f.name, "{} holds {text:?}, not a number: read as 0", f.file.display());
                        }
                    } else {
                        bad_files.remove(&f.name);
                    }
                    if snap.files.insert(f.name.clone(), v) != Some(v) {
                        tracing::info!(track_file = %f.name, "{} is now {v}", f.file.display());
                        changed = true;
                    }
                }
                let now = tokio::time::Instant::now();
                if proc_due.iter().any(|(at, _)| *at <= now) {
                    // One pass over /proc for every process due now.
                    let procs = scan_processes();
                    for (p, (at, below)) in cfg.track_process.iter().zip(proc_due.iter_mut()) {
                        if *at > now {
                            continue;
                        }
                        *at = now + p.interval;
                        let inside = within_quorum(p, &procs);
                        let was = snap.processes.get(&p.name).copied().unwrap_or(false);
                        let up = match (inside, was) {
                            (true, _) => {
                                *below = None;
                                true
                            }
                            (false, false) => false,
                            // Up until it has been out of quorum for `delay`.
                            (false, true) => now.duration_since(*below.get_or_insert(now)) < p.delay,
                        };
                        if up != was {
                            tracing::info!(track_process = %p.name, process = %p.process, "tracked process is now {}", if up { "up" } else { "down" });
                            snap.processes.insert(p.name.clone(), up);
                            changed = true;
                        }
                    }
                }
                let ql = quorum_lost();
                if ql != snap.quorum_lost {
                    snap.quorum_lost = ql;
                    changed = true;
                    tracing::warn!("quorum fencing: this node {} a majority of the Raft voters", if ql { "lost sight of" } else { "sees again" });
                }
                for (i, s) in scripts.iter_mut().enumerate() {
                    if !s.running && s.due <= now {
                        s.running = true;
                        s.due = now + s.def.interval;
                        let (script, timeout, done) = (s.def.script.clone(), s.def.timeout, done_tx.clone());
                        tokio::spawn(async move {
                            // A script the node's policy refuses counts as failing, as in keepalived.
                            let ok = match crate::scripts::shell(&script, "track_script") {
                                None => false,
                                Some(mut c) => {
                                    let run = c.kill_on_drop(true).status();
                                    matches!(tokio::time::timeout(timeout, run).await, Ok(Ok(st)) if st.success())
                                }
                            };
                            let _ = done.send((i, ok)).await;
                        });
                    }
                }
                if changed && tx.send(snap.clone()).await.is_err() {
                    return;
                }
            }
            Some((i, ok)) = done_rx.recv() => {
                let s = &mut scripts[i];
                s.running = false;
                if ok == s.ok {
                    s.streak = 0;
                    continue;
                }
                s.streak += 1;
                let need = if ok { s.def.rise } else { s.def.fall };
                if s.streak >= need.max(1) {
                    s.ok = ok;
                    s.streak = 0;
                    tracing::info!(script = %s.def.name, "tracked script is now {}", if ok { "OK" } else { "KO" });
                    snap.scripts.insert(s.def.name.clone(), ok);
                    if tx.send(snap.clone()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(name: &str, weight: i32) -> TrackScriptConfig {
        TrackScriptConfig {
            name: name.into(),
            script: "true".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            weight,
            rise: 1,
            fall: 1,
        }
    }

    fn eff(ifaces: &[TrackInterface], scripts: &[TrackScriptRef], defs: &[TrackScriptConfig], snap: &Snapshot) -> (bool, i32) {
        effect(&Tracked { ifaces, scripts, script_defs: defs, files: &[], file_defs: &[], processes: &[], process_defs: &[] }, snap)
    }

    #[test]
    fn keepalived_weight_semantics() {
        let ifaces = vec![
            TrackInterface::Weighted { name: "eth1".into(), weight: -30 },
            TrackInterface::Weighted { name: "eth2".into(), weight: 10 },
        ];
        let defs = vec![script("chk", 0), script("bonus", 5)];
        let refs = vec![TrackScriptRef::Name("bonus".into())];
        let mut snap = Snapshot::default();
        snap.interfaces.insert("eth1".into(), true);
        snap.interfaces.insert("eth2".into(), true);
        snap.scripts.insert("bonus".into(), true);
        assert_eq!(eff(&ifaces, &refs, &defs, &snap), (false, 15), "up: +10 and +5; -30 only when down");
        snap.interfaces.insert("eth1".into(), false);
        snap.interfaces.insert("eth2".into(), false);
        assert_eq!(eff(&ifaces, &refs, &defs, &snap), (false, -25));
        let zero = vec![TrackScriptRef::Name("chk".into())];
        snap.scripts.insert("chk".into(), false);
        assert_eq!(eff(&[], &zero, &defs, &snap), (true, 0), "weight 0 failing means FAULT");
        let overridden = vec![TrackScriptRef::Weighted { name: "chk".into(), weight: -50 }];
        assert_eq!(eff(&[], &overridden, &defs, &snap), (false, -50), "the instance's weight overrides the script's");
        assert_eq!(eff(&[TrackInterface::Name("nosuch".into())], &[], &defs, &snap), (true, 0), "a missing interface is down");
    }

    fn file(name: &str, weight: i32, reverse: bool) -> TrackFileConfig {
        TrackFileConfig { name: name.into(), file: format!("/nonexistent/{name}").into(), weight, reverse, init_file: None, init_overwrite: false }
    }

    #[test]
    fn track_files_multiply_their_value_by_the_weight_like_keepalived() {
        let defs = vec![file("maint", 1, false), file("stop", 0, false), file("rev", 2, true)];
        let with = |refs: Vec<TrackFileRef>, values: &[(&str, i64)]| {
            let mut snap = Snapshot::default();
            for (n, v) in values {
                snap.files.insert((*n).into(), *v);
            }
            effect(&Tracked { ifaces: &[], scripts: &[], script_defs: &[], files: &refs, file_defs: &defs, processes: &[], process_defs: &[] }, &snap)
        };
        let name = |n: &str| TrackFileRef::Name(n.into());
        assert_eq!(with(vec![name("maint")], &[("maint", -20)]), (false, -20));
        assert_eq!(with(vec![name("maint")], &[]), (false, 0), "a file never read is 0");
        assert_eq!(with(vec![name("maint")], &[("maint", -253)]), (false, -253));
        assert_eq!(with(vec![name("maint")], &[("maint", -254)]), (true, 0), "below -253: FAULT");
        assert_eq!(with(vec![name("maint")], &[("maint", 1000)]), (false, 253), "capped");
        assert_eq!(with(vec![name("stop")], &[("stop", 0)]), (false, 0));
        assert_eq!(with(vec![name("stop")], &[("stop", 7)]), (true, 0), "weight 0: non-zero means FAULT");
        assert_eq!(with(vec![name("rev")], &[("rev", 5)]), (false, -10), "reverse negates");
        let over = TrackFileRef::Weighted { name: "maint".into(), weight: -3, reverse: false };
        assert_eq!(with(vec![over], &[("maint", 4)]), (false, -12), "the instance's weight overrides the file's");
        assert_eq!(with(vec![name("maint")], &[("maint", i64::MIN)]), (true, 0), "no overflow");
    }

    #[test]
    fn track_file_values_are_read_as_keepalived_reads_them() {
        let dir = std::env::temp_dir().join(format!("corral-trackfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = file("t", 1, false);
        f.file = dir.join("value");
        assert_eq!(read_track_file(&f), (0, None), "missing");
        for (text, want) in [("10\n", (10, None)), ("-254 # maintenance\n", (-254, None)), ("  +3 ", (3, None)), ("", (0, None))] {
            std::fs::write(&f.file, text).unwrap();
            assert_eq!(read_track_file(&f), want, "{text:?}");
        }
        std::fs::write(&f.file, "down\n").unwrap();
        assert_eq!(read_track_file(&f), (0, Some("down".into())));
        // init_file writes a missing file, and an existing one only with init_overwrite.
        let text = format!(
            "[[track_file]]\nname = \"t\"\nfile = \"{}\"\ninit_file = -5\n",
            f.file.display()
        );
        let cfg = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        init_files(&cfg);
        assert_eq!(std::fs::read_to_string(&f.file).unwrap(), "down\n", "kept");
        std::fs::remove_file(&f.file).unwrap();
        init_files(&cfg);
        assert_eq!(std::fs::read_to_string(&f.file).unwrap(), "-5\n");
        std::fs::write(&f.file, "9\n").unwrap();
        let cfg = Config::parse(std::path::Path::new("t.toml"), &text.replace("init_file = -5", "init_file = -5\ninit_overwrite = true")).unwrap();
        init_files(&cfg);
        assert_eq!(std::fs::read_to_string(&f.file).unwrap(), "-5\n", "overwritten");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn process(name: &str, process: &str) -> TrackProcessConfig {
        TrackProcessConfig {
            name: name.into(),
            process: process.into(),
            params: None,
            quorum: 1,
            quorum_max: None,
            weight: 1,
            reverse: false,
            interval: Duration::from_secs(1),
            delay: Duration::ZERO,
        }
    }

    #[test]
    fn track_process_matches_like_keepalived() {
        let p = |comm: &str, argv: &[&str]| Proc { comm: comm.into(), argv: argv.iter().map(|s| s.to_string()).collect() };
        let running = [
            p("haproxy", &["/usr/sbin/haproxy", "-f", "/etc/haproxy/haproxy.cfg"]),
            p("haproxy", &["/usr/sbin/haproxy", "-f", "/etc/haproxy/other.cfg"]),
            p("kworker/0:1", &[]),
            p("a-very-long-pr", &["/opt/bin/a-very-long-program-name"]),
        ];
        assert!(within_quorum(&process("h", "haproxy"), &running), "by comm");
        assert!(within_quorum(&process("h", "/usr/sbin/haproxy"), &running), "by path");
        assert!(within_quorum(&process("l", "a-very-long-program-name"), &running), "by file name past comm's 15 bytes");
        assert!(within_quorum(&process("k", "kworker/0:1"), &running), "a kernel thread by comm");
        let mut two = process("h", "haproxy");
        two.quorum = 2;
        assert!(within_quorum(&two, &running));
        two.quorum = 3;
        assert!(!within_quorum(&two, &running), "two running, three needed");
        let mut at_most_one = process("h", "haproxy");
        at_most_one.quorum_max = Some(1);
        assert!(!within_quorum(&at_most_one, &running), "quorum_max");
        let mut params = process("h", "haproxy");
        params.params = Some(vec!["-f".into(), "/etc/haproxy/other.cfg".into()]);
        params.quorum_max = Some(1);
        assert!(within_quorum(&params, &running), "exactly one with these parameters");
        assert!(!within_quorum(&process("n", "nginx"), &running));

        let defs = vec![process("h", "haproxy"), TrackProcessConfig { weight: 0, ..process("z", "nginx") }];
        let mut snap = Snapshot::default();
        snap.processes.insert("h".into(), false);
        snap.processes.insert("z".into(), true);
        let with = |refs: Vec<TrackFileRef>, snap: &Snapshot| {
            effect(&Tracked { ifaces: &[], scripts: &[], script_defs: &[], files: &[], file_defs: &[], processes: &refs, process_defs: &defs }, snap)
        };
        let minus = TrackFileRef::Weighted { name: "h".into(), weight: -60, reverse: false };
        assert_eq!(with(vec![minus.clone()], &snap), (false, -60), "down: the negative weight");
        let rev = TrackFileRef::Weighted { name: "h".into(), weight: -60, reverse: true };
        assert_eq!(with(vec![rev], &snap), (false, 0), "reverse: down counts as up");
        snap.processes.insert("z".into(), false);
        assert_eq!(with(vec![TrackFileRef::Name("z".into())], &snap), (true, 0), "weight 0: down means FAULT");
        // The scan itself finds this test's own process.
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(within_quorum(&process("me", me.trim()), &scan_processes()));
    }

    #[test]
    fn loopback_is_up_and_missing_interfaces_are_down() {
        assert!(interface_up("lo"));
        assert!(!interface_up("corral-no-such-if"));
    }
}
