//! Tracked interfaces and scripts (keepalived's `track_interface` and `vrrp_script`), turned
//! into each instance's (fault, priority adjustment).
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

use crate::config::{Config, TrackInterface, TrackScriptConfig, TrackScriptRef};

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

/// (fault, adjustment) of one instance under `snap`.
pub fn effect(ifaces: &[TrackInterface], scripts: &[TrackScriptRef], defs: &[TrackScriptConfig], snap: &Snapshot) -> (bool, i32) {
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
    snap
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
        assert_eq!(effect(&ifaces, &refs, &defs, &snap), (false, 15), "up: +10 and +5; -30 only when down");
        snap.interfaces.insert("eth1".into(), false);
        snap.interfaces.insert("eth2".into(), false);
        assert_eq!(effect(&ifaces, &refs, &defs, &snap), (false, -25));
        let zero = vec![TrackScriptRef::Name("chk".into())];
        snap.scripts.insert("chk".into(), false);
        assert_eq!(effect(&[], &zero, &defs, &snap), (true, 0), "weight 0 failing means FAULT");
        let overridden = vec![TrackScriptRef::Weighted { name: "chk".into(), weight: -50 }];
        assert_eq!(effect(&[], &overridden, &defs, &snap), (false, -50), "the instance's weight overrides the script's");
        assert_eq!(effect(&[TrackInterface::Name("nosuch".into())], &[], &defs, &snap), (true, 0), "a missing interface is down");
    }

    #[test]
    fn loopback_is_up_and_missing_interfaces_are_down() {
        assert!(interface_up("lo"));
        assert!(!interface_up("corral-no-such-if"));
    }
}
