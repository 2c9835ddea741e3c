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

use crate::config::{Config, TrackFileConfig, TrackFileRef, TrackInterface, TrackScriptConfig, TrackScriptRef};

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
    for f in t.files {
        let def = t.file_defs.iter().find(|d| d.name == f.name());
        let (weight, reverse) = match f {
            TrackFileRef::Name(_) => def.map_or((1, false), |d| (d.weight, d.reverse)),
            TrackFileRef::Weighted { weight, reverse, .. } => (*weight, *reverse),
        };
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

/// The first snapshot, read synchronously so an instance whose interface is down starts in FAULT.
pub fn initial(cfg: &Config) -> Snapshot {
    let mut snap = Snapshot { quorum_lost: quorum_lost(), ..Default::default() };
    for v in &cfg.vrrp {
        snap.interfaces.insert(v.interface.clone(), interface_up(&v.interface));
        for t in &v.track_interfaces {
            snap.interfaces.insert(t.name().to_owned(), interface_up(t.name()));
        }
    }
    for s in &cfg.track_script {
        // keepalived's default: a script is considered OK until it has failed `fall` times.
        snap.scripts.insert(s.name.clone(), true);
    }
    for f in &cfg.track_file {
        snap.files.insert(f.name.clone(), read_track_file(f).0);
    }
    snap
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
        .map(|d| ScriptState { def: d.clone(), ok: true, streak: 0, due: tokio::time::Instant::now(), running: false })
        .collect();
    let (done_tx, mut done_rx) = mpsc::channel::<(usize, bool)>(64);
    // Track files whose text was not a number, with that text: logged once per new text.
    let mut bad_files: BTreeMap<String, String> = BTreeMap::new();
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
                let ql = quorum_lost();
                if ql != snap.quorum_lost {
                    snap.quorum_lost = ql;
                    changed = true;
                    tracing::warn!("quorum fencing: this node {} a majority of the Raft voters", if ql { "lost sight of" } else { "sees again" });
                }
                let now = tokio::time::Instant::now();
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
        effect(&Tracked { ifaces, scripts, script_defs: defs, files: &[], file_defs: &[] }, snap)
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
            effect(&Tracked { ifaces: &[], scripts: &[], script_defs: &[], files: &refs, file_defs: &defs }, &snap)
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

    #[test]
    fn loopback_is_up_and_missing_interfaces_are_down() {
        assert!(interface_up("lo"));
        assert!(!interface_up("corral-no-such-if"));
    }
}
