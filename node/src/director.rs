//! The director: the only writer of IPVS in corrald. It turns the replicated rules into the
//! desired table (a pure function, equal on every node), diffs it against the kernel and applies
//! the difference, on every rule change and every `reconcile_interval` (which repairs drift such
//! as a manual `ipvsadm -C`). It also runs the kernel's connection-sync daemon as master on the
//! VRRP master and as backup elsewhere, so established connections survive a failover.
//!
//! Netlink calls are blocking, so the loop runs on its own thread and is fed state changes
//! through a channel; nothing here blocks the async runtime.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ipvs::{ServiceKey, SyncDaemon, SyncRole, Table};
use raft::ClusterState;
use serde::{Deserialize, Serialize};

use crate::config::DirectorSection;
use crate::rules::{self, RuleSet};

/// Namespace and key of the rules in the replicated state.
pub const NS_RULES: &str = "rules";
/// The single key holding the whole rule set.
pub const KEY_RULES: &str = "set";

/// What this director reports (admin API, gossip metadata, `corralctl status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectorStatus {
    /// Revision of the replicated state whose rules are in the kernel.
    pub applied_revision: u64,
    /// Reconciles that found the kernel different from the rules without a rule change.
    pub drift_repairs: u64,
    /// Changes (netlink requests) sent by the last reconcile that changed anything.
    pub last_ops: usize,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
    /// `master`, `backup` or absent: the connection-sync daemon this node runs.
    pub sync_daemon: Option<String>,
    /// Services and real servers in the kernel after the last reconcile.
    pub kernel_objects: usize,
}

/// Where the table lives: the kernel, or an in-memory model for scale benchmarks only.
enum Ipvs {
    Kernel(ipvs::client::Client),
    /// In-memory model of IPVS (benchmarks with more nodes than the VM holds): never used
    /// when the config asks for the kernel.
    Model(Table),
}

impl Ipvs {
    fn table(&mut self) -> Result<Table, String> {
        match self {
            Ipvs::Kernel(c) => c.table().map_err(|e| e.to_string()),
            Ipvs::Model(t) => Ok(t.clone()),
        }
    }

    fn apply(&mut self, ops: &[ipvs::Op]) -> Result<(), String> {
        match self {
            Ipvs::Kernel(c) => c.apply(ops).map(|_| ()).map_err(|e| e.to_string()),
            Ipvs::Model(t) => ipvs::diff::apply_in_memory(t, ops),
        }
    }

    /// Makes the kernel's connection timeouts `want`'s (those it gives); true when it had to.
    /// The in-memory model has none.
    fn ensure_timeouts(&mut self, want: &rules::Timeouts) -> Result<bool, String> {
        let Ipvs::Kernel(c) = self else { return Ok(false) };
        let now = c.timeouts().map_err(|e| format!("read the IPVS timeouts: {e}"))?;
        if want.met_by(&now) {
            return Ok(false);
        }
        c.set_timeouts(&want.to_ipvs()).map_err(|e| format!("set the IPVS timeouts: {e}"))?;
        Ok(true)
    }

    fn sync_daemon(&mut self, want: Option<&SyncDaemon>) -> Result<(), String> {
        let Ipvs::Kernel(c) = self else { return Ok(()) };
        let running = c.daemons().map_err(|e| e.to_string())?;
        for d in &running {
            if want.is_none_or(|w| w.role != d.role) {
                c.stop_daemon(d.role).map_err(|e| format!("stop {:?} sync daemon: {e}", d.role))?;
            }
        }
        if let Some(w) = want {
            if !running.iter().any(|d| d.role == w.role) {
                c.start_daemon(w).map_err(|e| format!("start {:?} sync daemon: {e}", w.role))?;
            }
        }
        Ok(())
    }
}

/// Messages to the reconcile thread.
pub enum Input {
    /// New replicated state.
    State(Arc<ClusterState>),
    /// This node's VRRP role for the sync daemon (true = master).
    VrrpMaster(bool),
    /// Stop; flush the kernel table first when asked.
    Stop { flush: bool },
}

/// Handle to the running director.
pub struct Director {
    pub tx: std_mpsc::Sender<Input>,
    pub status: Arc<Mutex<DirectorStatus>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The rule set stored in `state`, if any.
pub(crate) fn rules_of(state: &ClusterState) -> Result<Option<RuleSet>, String> {
    state.get(NS_RULES, KEY_RULES).map(rules::decode).transpose()
}

impl Director {
    /// Starts the reconcile thread.
    pub fn start(cfg: &DirectorSection, data_dir: &Path) -> Result<Director, String> {
        let managed = match cfg.foreign_services.as_str() {
            "keep" => Some(Managed::load(data_dir.join(MANAGED_FILE))?),
            _ => None,
        };
        let ipvs = match cfg.ipvs.as_str() {
            "kernel" => Ipvs::Kernel(ipvs::client::Client::new().map_err(|e| format!("kernel IPVS: {e}"))?),
            "memory" => {
                tracing::warn!("director uses the in-memory IPVS model (benchmarks only): the kernel is not programmed");
                Ipvs::Model(Table::default())
            }
            other => return Err(format!("[director] ipvs = {other:?}: expected \"kernel\" or \"memory\"")),
        };
        let (tx, rx) = std_mpsc::channel();
        let status = Arc::new(Mutex::new(DirectorStatus::default()));
        let st = status.clone();
        let cfg = cfg.clone();
        let thread = std::thread::Builder::new()
            .name("director".into())
            .spawn(move || {
                crate::realtime::enter("director");
                run(ipvs, cfg, managed, rx, st)
            })
            .map_err(|e| e.to_string())?;
        Ok(Director { tx, status, thread: Some(thread) })
    }

    /// Stops the thread (bounded wait); the kernel table stays unless `flush`.
    pub fn stop(mut self, flush: bool) {
        let _ = self.tx.send(Input::Stop { flush });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(ipvs: Ipvs, cfg: DirectorSection, managed: Option<Managed>, rx: std_mpsc::Receiver<Input>, status: Arc<Mutex<DirectorStatus>>) {
    let mut r = Reconciler { ipvs, known: None, applied_rev: None, status, managed, timeouts_set: None };
    let mut state: Option<Arc<ClusterState>> = None;
    let mut master: Option<bool> = None;
    let mut sync_applied: Option<Option<bool>> = None;
    let mut next = Instant::now();
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        // The first message waits for the next deadline; whatever else is queued is drained
        // too, since only the newest state matters. One handler for both.
        let mut msg = match rx.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        };
        while let Some(m) = msg.take().or_else(|| rx.try_recv().ok()) {
            match m {
                Input::State(s) => {
                    tracing::debug!(target: "corral_stage", stage = "wake", first = s.revision, last = s.revision, took_us = 0u64);
                    state = Some(s)
                }
                Input::VrrpMaster(m) => master = Some(m),
                Input::Stop { flush } => {
                    if flush {
                        if let Ok(k) = r.ipvs.table() {
                            // With foreign services kept, only corral's own go.
                            let _ = r.ipvs.apply(&ipvs::diff(&r.ours(&k, &Table::default()), &Table::default()));
                        }
                    }
                    let _ = r.ipvs.sync_daemon(None);
                    return;
                }
            }
        }
        let rule_change = state.as_ref().map(|s| s.revision) != r.applied_rev;
        let due = Instant::now() >= next;
        if !rule_change && !due && sync_applied == Some(master) {
            continue;
        }
        if let Some(s) = &state {
            // A rule change is diffed against the table this director last saw and changed;
            // the periodic check reads the kernel and repairs whatever drifted.
            r.reconcile(s, rule_change, if due { Check::Kernel } else { Check::Known });
        }
        if cfg.sync_interface.is_some() && sync_applied != Some(master) {
            let want = master.map(|m| SyncDaemon {
                role: if m { SyncRole::Master } else { SyncRole::Backup },
                interface: cfg.sync_interface.clone().unwrap_or_default(),
                sync_id: cfg.sync_id,
                max_len: cfg.sync_maxlen,
                group: cfg.sync_group,
                port: cfg.sync_port,
                ttl: cfg.sync_ttl,
            });
            match r.ipvs.sync_daemon(want.as_ref()) {
                Ok(()) => {
                    sync_applied = Some(master);
                    let role = master.map(|m| if m { "master" } else { "backup" }.to_string());
                    tracing::info!(role = ?role, "connection sync daemon follows VRRP");
                    r.status.lock().unwrap_or_else(|p| p.into_inner()).sync_daemon = role;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "connection sync daemon");
                    r.status.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(e);
                }
            }
        }
        if due {
            next = Instant::now() + cfg.reconcile_interval;
        }
    }
}

/// What a reconcile compares the desired table with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The table this director last read from the kernel, changed by what it applied since
    /// (no kernel dump: a rule change costs the netlink requests of its changes only). Falls
    /// back to [`Check::Kernel`] when nothing is known yet or the kernel refuses a change.
    Known,
    /// A fresh dump of the kernel table: the periodic drift check.
    Kernel,
}

/// The reconcile state: the table backend, what this director believes is in it, and the
/// revision it applied last.
struct Reconciler {
    ipvs: Ipvs,
    /// The kernel table as last dumped, with every change applied since; `None` after any
    /// failure (the next reconcile reads the kernel).
    known: Option<Table>,
    applied_rev: Option<u64>,
    status: Arc<Mutex<DirectorStatus>>,
    /// `foreign_services = "keep"`: the services corral manages; `None`: all of them.
    managed: Option<Managed>,
    /// The rules' timeouts last made the kernel's: a rule change checks them only when they
    /// change (no extra netlink round trip per change); the periodic check always does.
    timeouts_set: Option<rules::Timeouts>,
}

/// Where `foreign_services = "keep"` remembers the services corral put in the kernel.
pub const MANAGED_FILE: &str = "director-services.json";

/// The services this director manages beside foreign ones: every service the rules named when
/// it last applied them. Kept on disk because a service removed from the rules while this
/// node was down must still be removed when it comes back, and only this record says it was
/// corral's.
struct Managed {
    path: PathBuf,
    keys: BTreeSet<ServiceKey>,
}

impl Managed {
    /// Reads the record. One that cannot be read is not fatal (the daemon must start, VRRP
    /// and all): it starts empty, with a warning, and only services the rules dropped while
    /// this node was down can then be left behind.
    fn load(path: PathBuf) -> Result<Managed, String> {
        let keys = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "the record of corral's IPVS services is unreadable: starting without it (services the rules dropped while this node was down stay)");
                BTreeSet::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Managed { path, keys })
    }

    /// Records `keys` (written before the kernel gets them, then again after: a crash in
    /// between leaves a superset, which only means a service the rules dropped is removed).
    fn extend(&mut self, keys: impl IntoIterator<Item = ServiceKey>) -> Result<(), String> {
        let before = self.keys.len();
        self.keys.extend(keys);
        if self.keys.len() != before {
            self.save()?;
        }
        Ok(())
    }

    fn set(&mut self, keys: BTreeSet<ServiceKey>) -> Result<(), String> {
        if keys != self.keys {
            self.keys = keys;
            self.save()?;
        }
        Ok(())
    }

    /// Written whole and durably: a temporary file, synced, renamed over the old one, and
    /// the directory synced, so a crash leaves the old record or the new one.
    fn save(&self) -> Result<(), String> {
        use std::io::Write;
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec(&self.keys).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

impl Reconciler {
    /// The part of `table` this director manages: all of it, or with foreign services kept,
    /// the services `desired` names and those it managed before.
    fn ours(&self, table: &Table, desired: &Table) -> Table {
        let Some(m) = &self.managed else { return table.clone() };
        let mut t = Table::default();
        for (k, s) in &table.services {
            if desired.services.contains_key(k) || m.keys.contains(k) {
                t.insert(s.clone());
            }
        }
        t
    }

    fn set_err(&self, e: String) {
        tracing::warn!(error = %e, "reconcile");
        self.status.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(e);
    }

    fn reconcile(&mut self, state: &ClusterState, rule_change: bool, check: Check) {
        let t0 = Instant::now();
        let rules = match rules_of(state) {
            // No rules were ever applied: leave the kernel alone (a new node must not flush
            // tables an operator made before the cluster owned them).
            Ok(None) => {
                self.applied_rev = Some(state.revision);
                return;
            }
            Ok(Some(r)) => r,
            Err(e) => return self.set_err(e),
        };
        let desired = rules.desired_table(&crate::health::verdicts::verdicts_of(state));
        let t_desired = t0.elapsed();
        let (mut table, dumped) = match (check, self.known.take()) {
            (Check::Known, Some(k)) => (k, false),
            _ => match self.ipvs.table() {
                Ok(k) => (k, true),
                Err(e) => return self.set_err(format!("read the IPVS table: {e}")),
            },
        };
        let t_dump = t0.elapsed();
        let ops = match &self.managed {
            None => ipvs::diff(&table, &desired),
            Some(_) => ipvs::diff(&self.ours(&table, &desired), &desired),
        };
        if let Some(m) = &mut self.managed {
            // Not a reason to leave the kernel as it is (a dead real server must still go):
            // the record only decides what a later restart may remove.
            if let Err(e) = m.extend(desired.services.keys().copied()) {
                tracing::warn!(error = %e, "record the services corral manages");
            }
        }
        let t_diff = t0.elapsed();
        if !ops.is_empty() {
            if let Err(e) = self.ipvs.apply(&ops) {
                if !dumped {
                    // The kernel is not what this director last left there (an operator
                    // changed it): read it and diff again, now.
                    // Counted as a drift repair here when the retry is a rule change (the
                    // retry counts it otherwise).
                    tracing::warn!(error = %e, "the IPVS table changed behind the director: reading it again");
                    if rule_change {
                        self.status.lock().unwrap_or_else(|p| p.into_inner()).drift_repairs += 1;
                    }
                    return self.reconcile(state, rule_change, Check::Kernel);
                }
                return self.set_err(format!("apply {} changes: {e}", ops.len()));
            }
            // Replay on the model of the kernel; a model that disagrees is dropped and the
            // next reconcile reads the kernel.
            self.known = match ipvs::diff::apply_in_memory(&mut table, &ops) {
                Ok(()) => Some(table),
                Err(e) => {
                    tracing::debug!(error = %e, "applied changes do not replay on the known table: dropping it");
                    None
                }
            };
        } else {
            self.known = Some(table);
        }
        let t_apply = t0.elapsed();
        let mut timeouts_err = None;
        if let Some(want) = rules.timeouts {
            if check == Check::Kernel || self.timeouts_set != Some(want) {
                match self.ipvs.ensure_timeouts(&want) {
                    Ok(changed) => {
                        self.timeouts_set = Some(want);
                        if changed && !rule_change {
                            self.status.lock().unwrap_or_else(|p| p.into_inner()).drift_repairs += 1;
                            tracing::warn!(revision = state.revision, "IPVS timeouts drifted from the rules: repaired");
                        } else if changed {
                            tracing::info!(timeouts = %rules::timeouts_text(Some(want)), "IPVS timeouts set");
                        }
                    }
                    // The table is applied: the revision's bookkeeping goes on, the error is shown
                    // (and the next drift check tries again).
                    Err(e) => timeouts_err = Some(e),
                }
            }
        }
        if let Some(m) = &mut self.managed {
            // Applied: what the rules do not name now is gone from the kernel.
            if let Err(e) = m.set(desired.services.keys().copied().collect()) {
                tracing::warn!(error = %e, "record the services corral manages");
            }
        }
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if !ops.is_empty() {
            if rule_change {
                tracing::info!(
                    revision = state.revision,
                    changes = ops.len(),
                    dumped,
                    took_us = t_apply.as_micros() as u64,
                    desired_us = t_desired.as_micros() as u64,
                    dump_us = (t_dump - t_desired).as_micros() as u64,
                    diff_us = (t_diff - t_dump).as_micros() as u64,
                    apply_us = (t_apply - t_diff).as_micros() as u64,
                    "applied rules to IPVS"
                );
            } else {
                st.drift_repairs += 1;
                tracing::warn!(revision = state.revision, changes = ops.len(), "IPVS table drifted from the rules: repaired");
            }
            st.last_ops = ops.len();
        }
        st.applied_revision = state.revision;
        st.last_error = timeouts_err.clone();
        if let Some(e) = timeouts_err {
            tracing::warn!(error = %e, "reconcile");
        }
        st.kernel_objects = desired.object_count();
        self.applied_rev = Some(state.revision);
    }
}

/// Hands every replicated-state change to the director thread straight from the task that
/// applies the Raft log (see [`raft::StateMachine::on_publish`]): no hop through a task on the
/// node's runtime between "committed and applied" and the kernel being changed.
pub fn follow_state(tx: std_mpsc::Sender<Input>, sm: &raft::StateMachine) {
    sm.on_publish(move |s| {
        tracing::debug!(target: "corral_stage", stage = "feed", first = s.revision, last = s.revision, took_us = 0u64);
        // A closed channel means the director stopped; nothing else to tell it.
        let _ = tx.send(Input::State(s.clone()));
    });
}

/// Feeds the VRRP role of `sync_instance` to the director (for the connection-sync daemon).
pub async fn feed_vrrp(tx: std_mpsc::Sender<Input>, board: crate::vrrp_driver::StatusBoard, sync_instance: Option<String>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_master = None;
    loop {
        tick.tick().await;
        let master = {
            let b = board.lock().unwrap_or_else(|p| p.into_inner());
            let inst = match &sync_instance {
                Some(n) => b.iter().find(|i| &i.name == n),
                None => b.first(),
            };
            inst.map(|i| i.state == "MASTER")
        };
        if master.is_some() && master != last_master {
            last_master = master;
            if tx.send(Input::VrrpMaster(master.unwrap_or(false))).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(revision: u64, weight: u32, extra_service: bool) -> ClusterState {
        let mut text = format!(
            "[[virtual_server]]\naddress = \"192.0.2.100:80\"\nscheduler = \"wrr\"\n[[virtual_server.real_server]]\naddress = \"198.51.100.11:80\"\nweight = {weight}\n"
        );
        if extra_service {
            text.push_str("[[virtual_server]]\naddress = \"192.0.2.101:80\"\n[[virtual_server.real_server]]\naddress = \"198.51.100.12:80\"\n");
        }
        let rules = RuleSet::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let mut s = ClusterState { revision, data: Default::default() };
        s.data.entry(NS_RULES.into()).or_default().insert(KEY_RULES.into(), rules::encode(&rules));
        s
    }

    fn desired(s: &ClusterState) -> Table {
        rules_of(s).unwrap().unwrap().desired_table(&crate::health::verdicts::verdicts_of(s))
    }

    fn model(r: &mut Reconciler) -> &mut Table {
        match &mut r.ipvs {
            Ipvs::Model(t) => t,
            Ipvs::Kernel(_) => unreachable!(),
        }
    }

    /// A rule change is diffed against the known table (a hand-made service survives it, so
    /// the kernel was not read), the periodic check reads the kernel and repairs, and a change
    /// the kernel refuses (the table was flushed behind the director) is repaired at once.
    #[test]
    fn rule_changes_use_the_known_table_and_drift_is_still_repaired() {
        let status = Arc::new(Mutex::new(DirectorStatus::default()));
        let mut r = Reconciler { ipvs: Ipvs::Model(Table::default()), known: None, applied_rev: None, status: status.clone(), managed: None, timeouts_set: None };
        let s1 = state(1, 1, true);
        r.reconcile(&s1, true, Check::Known);
        assert_eq!(*model(&mut r), desired(&s1));

        // An operator adds a service by hand; a weight change does not read the table.
        let mut stray = desired(&s1).services.values().next().unwrap().clone();
        if let ipvs::ServiceKey::Addr { addr, .. } = &mut stray.key {
            *addr = "192.0.2.102:8080".parse().unwrap();
        }
        model(&mut r).insert(stray);
        let s2 = state(2, 5, true);
        r.reconcile(&s2, true, Check::Known);
        assert_eq!(model(&mut r).services.len(), 3, "the known table was used, not a dump");
        // The periodic check reads the kernel and removes it.
        r.reconcile(&s2, false, Check::Kernel);
        assert_eq!(*model(&mut r), desired(&s2));
        assert_eq!(status.lock().unwrap().drift_repairs, 1);

        // `ipvsadm -C` behind the director, then a weight change: the edit is refused, the
        // director reads the kernel and restores everything in the same reconcile.
        *model(&mut r) = Table::default();
        let s3 = state(3, 7, true);
        r.reconcile(&s3, true, Check::Known);
        assert_eq!(*model(&mut r), desired(&s3));
        assert_eq!(status.lock().unwrap().drift_repairs, 2);
        assert_eq!(status.lock().unwrap().applied_revision, 3);
        assert_eq!(status.lock().unwrap().last_error, None);
    }

    /// `foreign_services = "keep"`: a service corral never managed survives every reconcile,
    /// drift repair and flush; one the rules dropped goes, also after a restart (the record on
    /// disk), and a foreign service the rules come to name is taken over.
    #[test]
    fn kept_foreign_services_are_left_alone_and_dropped_rules_still_go() {
        let dir = std::env::temp_dir().join(format!("corral-managed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let status = Arc::new(Mutex::new(DirectorStatus::default()));
        let mut foreign = desired(&state(1, 1, false)).services.values().next().unwrap().clone();
        if let ipvs::ServiceKey::Addr { addr, .. } = &mut foreign.key {
            *addr = "203.0.113.9:80".parse().unwrap();
        }
        let mut kernel = Table::default();
        kernel.insert(foreign.clone());
        let keep = || Some(Managed::load(dir.join(MANAGED_FILE)).unwrap());
        let mut r = Reconciler { ipvs: Ipvs::Model(kernel), known: None, applied_rev: None, status: status.clone(), managed: keep(), timeouts_set: None };
        let s1 = state(1, 1, true);
        r.reconcile(&s1, true, Check::Known);
        let mut want = desired(&s1);
        want.insert(foreign.clone());
        assert_eq!(*model(&mut r), want, "the rules added, the foreign service kept");
        r.reconcile(&s1, false, Check::Kernel);
        assert_eq!(*model(&mut r), want, "and not a drift to repair");
        assert_eq!(status.lock().unwrap().drift_repairs, 0);

        // A restarted director (a new reconciler on the same kernel and data_dir) with a
        // service dropped from the rules meanwhile: it goes, the foreign one stays.
        let kernel = model(&mut r).clone();
        let mut r = Reconciler { ipvs: Ipvs::Model(kernel), known: None, applied_rev: None, status: status.clone(), managed: keep(), timeouts_set: None };
        let s2 = state(2, 1, false);
        r.reconcile(&s2, true, Check::Known);
        let mut want = desired(&s2);
        want.insert(foreign.clone());
        assert_eq!(*model(&mut r), want);
        // Without the record (as "remove" would do) the foreign service would go too.
        let mut plain = Reconciler { ipvs: Ipvs::Model(want.clone()), known: None, applied_rev: None, status: status.clone(), managed: None, timeouts_set: None };
        plain.reconcile(&s2, true, Check::Known);
        assert_eq!(*model(&mut plain), desired(&s2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
