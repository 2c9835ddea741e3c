//! Consensus health checking inside corrald: no single director can evict a healthy backend.
//!
//! Every node runs the checks that rendezvous hashing assigns to it (`k` observers per real
//! server, `[health] observers` in the rules) with the `check` crate. Whenever a real server's
//! local state (after rise/fall) differs from the committed verdict, the observer tells the Raft
//! leader (a small report over the cluster's mutual-TLS QUIC, sent on change and every
//! [`REPORT_REFRESH`]). The leader folds the reports ([`verdicts::fold`]): a verdict changes
//! only when a strict majority of the real server's current observers claim it, and is
//! committed through Raft; the director then applies it on every node, and the leader alone
//! runs the notify hooks, once per cluster.
//!
//! Why reports go to the leader rather than ride on SWIM packets: SWIM metadata is limited to
//! half a datagram (550 bytes), while a backend subnet going dark produces thousands of claims
//! at once. The reports carry only disagreements, so they are empty when all is well.

pub mod verdicts;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use check::{Event, Scheduler, State};
use raft::Command;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::api::{Request, ResponseBody};
use crate::cluster::Cluster;
use crate::rules::{RsCheck, RuleSet, Verdict};
use verdicts::{Claim, ObserverReport, VerdictRecord, NS_VERDICTS};

/// An observer re-sends its report this often even without changes (a new leader learns the
/// claims within this bound).
pub const REPORT_REFRESH: Duration = Duration::from_secs(2);
/// The leader ignores a report older than this (its sender stopped talking).
pub const REPORT_MAX_AGE: Duration = Duration::from_secs(7);
/// At most one report per this interval: many checks changing at once make one report.
const REPORT_DEBOUNCE: Duration = Duration::from_millis(50);

/// One check's latest local result, for `corralctl rs list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalResult {
    /// `up`, `down` or `unknown` (after rise/fall).
    pub state: String,
    /// The last round: `ok in 1.2ms` or the failure and its reason.
    pub last: Option<String>,
    pub latency_us: Option<u64>,
    pub rounds: u64,
}

/// A real server as `corralctl rs list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RsRow {
    pub service: String,
    pub address: SocketAddr,
    /// The configured weight.
    pub weight: i32,
    /// The committed MISC_CHECK `misc_dynamic` weight, which IPVS uses instead while set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_weight: Option<u32>,
    /// The check kind (`tcp`, `http`, ...); absent: not checked.
    pub check: Option<String>,
    /// `up`, `down` or `unchecked`.
    pub verdict: String,
    /// Whether the verdict was committed (false: the default before any observation).
    pub committed: bool,
    pub since_unix: Option<u64>,
    pub reason: String,
    /// The observers of this real server now, with their latest local results.
    pub observers: Vec<ObserverResult>,
}

/// One observer's view of one real server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObserverResult {
    pub node: String,
    /// Absent when the node did not answer.
    pub result: Option<LocalResult>,
}

/// The health-check part of a running node.
pub struct Health {
    cluster: Arc<Cluster>,
    sched: Scheduler<String>,
    /// Checks this node observes now, by real-server key.
    assigned: Mutex<BTreeMap<String, RsCheck>>,
    /// Leader side: the latest report of each observer and when it came.
    reports: Mutex<BTreeMap<String, (Instant, ObserverReport)>>,
    reports_changed: Notify,
    /// The rules and their checks, decoded once per state revision.
    rules_cache: Mutex<Option<RulesAt>>,
    /// The last claims and what they were computed from: (state revision, the scheduler's
    /// notable rounds). Cleared when the assigned checks change.
    claims_cache: Mutex<Option<((u64, u64), BTreeMap<String, Claim>)>>,
    pub verdict_changes: AtomicU64,
    pub reports_received: AtomicU64,
    pub reports_refused: AtomicU64,
    pub reports_failed: AtomicU64,
    pub hooks_run: AtomicU64,
}

/// The rules and their checks as of one state revision. Decoding them is most of what a fold
/// costs (with 10,000 real servers, milliseconds of CPU), and the leader folds every second.
struct RulesAt {
    revision: u64,
    rules: Arc<RuleSet>,
    checks: Arc<Vec<RsCheck>>,
}

fn state_str(s: State) -> &'static str {
    match s {
        State::Up => "up",
        State::Down => "down",
        State::Unknown => "unknown",
    }
}

impl Health {
    /// Starts the checker and the observer and leader loops.
    pub fn start(cluster: Arc<Cluster>) -> Arc<Health> {
        let (sched, events) = Scheduler::with_options(check::Options { scripts: crate::scripts::policy().clone(), ..check::Options::default() });
        let h = Arc::new(Health {
            cluster,
            sched,
            assigned: Mutex::new(BTreeMap::new()),
            reports: Mutex::new(BTreeMap::new()),
            reports_changed: Notify::new(),
            rules_cache: Mutex::new(None),
            claims_cache: Mutex::new(None),
            verdict_changes: AtomicU64::new(0),
            reports_received: AtomicU64::new(0),
            reports_refused: AtomicU64::new(0),
            reports_failed: AtomicU64::new(0),
            hooks_run: AtomicU64::new(0),
        });
        tokio::spawn(h.clone().observer_loop(events));
        tokio::spawn(h.clone().leader_loop());
        h
    }

    /// The current rules and their checks (decoded again only when the state's revision moved).
    fn rules(&self) -> (Arc<RuleSet>, Arc<Vec<RsCheck>>) {
        let state = self.cluster.sm.current();
        let mut cache = self.rules_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.as_ref().filter(|c| c.revision == state.revision) {
            return (c.rules.clone(), c.checks.clone());
        }
        let rules = crate::director::rules_of(&state).map(Option::unwrap_or_default);
        let rules = Arc::new(rules.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "health checks: rules unreadable, checking nothing");
            RuleSet::default()
        }));
        let checks = Arc::new(rules.checks());
        *cache = Some(RulesAt { revision: state.revision, rules: rules.clone(), checks: checks.clone() });
        (rules, checks)
    }

    /// Makes the running checks exactly this node's share.
    fn reassign(&self, rules: &RuleSet, checks: &[RsCheck], members: &[String]) {
        let k = rules.health.observers as usize;
        let me = self.cluster.name.as_str();
        let mine: BTreeMap<String, RsCheck> = checks
            .iter()
            .filter(|c| verdicts::observers(&verdicts::subject(c), members, k).contains(&me))
            .map(|c| (c.key.clone(), c.clone()))
            .collect();
        let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        let same = assigned.len() == mine.len() && assigned.iter().zip(&mine).all(|((a, x), (b, y))| a == b && x.defs == y.defs);
        if !same {
            let each = mine.values().flat_map(|c| c.defs.iter().enumerate().map(|(n, d)| (c.check_id(n), d.clone())));
            for (id, e) in self.sched.sync(each) {
                tracing::warn!(rs = %id, error = %e, "health check not started");
            }
            tracing::info!(observing = mine.len(), members = members.len(), k, "health checks assigned");
            *assigned = mine;
            *self.claims_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// This node's claims: real servers whose local state differs from the committed verdict.
    /// Computed again only when something they depend on moved: the committed verdicts (the
    /// state's revision), a check's state, weight or kind of failure (the scheduler's notable
    /// rounds) or the assigned checks; a sweep over 10,000 checks costs milliseconds.
    fn claims(&self) -> BTreeMap<String, Claim> {
        let state = self.cluster.sm.current();
        let assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = (state.revision, self.sched.notable_rounds());
        if let Some((at, claims)) = self.claims_cache.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if *at == stamp {
                return claims.clone();
            }
        }
        let committed = verdicts::verdicts_of(&state);
        let mut out = BTreeMap::new();
        let mut several: BTreeMap<String, Combined> = BTreeMap::new();
        // One sweep over the scheduler, not a lookup per check: this runs every couple of
        // seconds over every check this node observes.
        self.sched.for_each_status(|id, st| {
            let key = crate::rules::rs_of_check_id(id);
            let Some(c) = assigned.get(key) else { return };
            if c.defs.len() > 1 {
                several.entry(key.to_string()).or_default().add(c, id, st);
                return;
            }
            let up = match st.state {
                State::Up => true,
                State::Down => false,
                State::Unknown => return,
            };
            let reason = || st.last.as_ref().and_then(|r| r.error.as_ref()).map(|e| e.to_string()).unwrap_or_default();
            if let Some(claim) = Claim::against(verdicts::current(c, &committed), up, st.weight, reason) {
                out.insert(id.clone(), claim);
            }
        });
        for (key, comb) in several {
            let Some(c) = assigned.get(&key) else { continue };
            let Some(up) = comb.up(c.defs.len()) else { continue };
            if let Some(claim) = Claim::against(verdicts::current(c, &committed), up, comb.weight, || comb.reason.clone().unwrap_or_default()) {
                out.insert(key, claim);
            }
        }
        *self.claims_cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((stamp, out.clone()));
        out
    }

    async fn send_report(&self, claims: BTreeMap<String, verdicts::Claim>) -> Result<(), String> {
        let report = ObserverReport { v: 1, node: self.cluster.name.clone(), claims };
        match self.cluster.leader() {
            None => Err("no leader".into()),
            Some((_, None)) => {
                self.receive(report);
                Ok(())
            }
            Some((_, Some(addr))) => {
                let req = Request::Observe { report };
                crate::cluster::admin_call(&self.cluster.transport, addr, &req, Some(Duration::from_secs(2)))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("leader {addr}: {e}"))
            }
        }
    }

    async fn observer_loop(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<Event<String>>) {
        let mut states = self.cluster.sm.subscribe();
        let mut tick = crate::ticks::aligned(2 * crate::ticks::GRID);
        let mut inputs: Option<(u64, Vec<String>)> = None;
        let mut last_sent: Option<Instant> = None;
        // The claims the leader has from us (the last report it took).
        let mut last_claims: Option<BTreeMap<String, verdicts::Claim>> = None;
        let mut last_leader = None;
        let mut dirty = true;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    None => return,
                    Some(ev) => {
                        // A first verdict of "up" is the normal start: not worth a line per check.
                        if ev.from == State::Unknown && ev.to == State::Up {
                            tracing::debug!(rs = %ev.id, result = %ev.result, "health check up here");
                        } else {
                            tracing::info!(rs = %ev.id, from = state_str(ev.from), to = state_str(ev.to), result = %ev.result, "health check changed here");
                        }
                        dirty = true;
                    }
                },
                // A new revision can change the claims (a verdict committed, a check added or
                // removed): compared below. Most revisions (a weight, a new service) do not, and
                // then nothing is sent: a report per rule change from every node would land in
                // the next change's way on every director.
                r = states.changed() => {
                    if r.is_err() { return; }
                }
                _ = tick.tick() => {}
            }
            let now = (self.cluster.sm.current().revision, self.cluster.live_members());
            if inputs.as_ref() != Some(&now) {
                let (rules, checks) = self.rules();
                self.reassign(&rules, &checks, &now.1);
                inputs = Some(now);
                // Only a new revision or membership can change the claims without a check
                // event (which marks the report dirty itself).
                if !dirty && last_claims.as_ref() != Some(&self.claims()) {
                    dirty = true;
                }
            }
            let leader = self.cluster.leader().map(|l| l.0);
            if leader != last_leader {
                last_leader = leader;
                dirty = true;
            }
            if last_sent.is_none_or(|t| t.elapsed() >= REPORT_REFRESH) {
                dirty = true;
            }
            if dirty && last_sent.is_none_or(|t| t.elapsed() >= REPORT_DEBOUNCE) {
                // Let a burst of events (a whole subnet failing) settle into one report.
                tokio::time::sleep(REPORT_DEBOUNCE).await;
                while events.try_recv().is_ok() {}
                let claims = self.claims();
                match self.send_report(claims.clone()).await {
                    Ok(()) => {
                        dirty = false;
                        last_claims = Some(claims);
                    }
                    Err(e) => {
                        self.reports_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "health report not delivered; retrying");
                    }
                }
                last_sent = Some(Instant::now());
            }
        }
    }

    /// Leader side: keeps an observer's report.
    pub fn receive(&self, report: ObserverReport) {
        self.reports_received.fetch_add(1, Ordering::Relaxed);
        let mut r = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        let changed = r.get(&report.node).is_none_or(|(_, old)| old.claims != report.claims);
        r.insert(report.node.clone(), (Instant::now(), report));
        drop(r);
        if changed {
            self.reports_changed.notify_one();
        }
    }

    /// Counts a report refused (sender is not who it claims to be, or not a member).
    pub fn refuse(&self, why: &str) {
        self.reports_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%why, "health report refused");
    }

    async fn leader_loop(self: Arc<Self>) {
        let mut tick = crate::ticks::aligned(crate::ticks::GRID);
        let mut last_input: Option<(u64, Vec<String>)> = None;
        let mut last_fold = Instant::now();
        loop {
            let mut forced = tokio::select! {
                _ = tick.tick() => false,
                _ = self.reports_changed.notified() => true,
            };
            if !self.cluster.is_leader() {
                last_input = None;
                continue;
            }
            let state = self.cluster.sm.current();
            let members = self.cluster.live_members();
            let input = (state.revision, members.clone());
            if last_input.as_ref() != Some(&input) || last_fold.elapsed() >= Duration::from_secs(1) {
                forced = true;
            }
            if !forced {
                continue;
            }
            last_input = Some(input);
            last_fold = Instant::now();
            let (rules, checks) = self.rules();
            let claims: BTreeMap<String, ObserverReport> = self
                .reports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(_, (at, _))| at.elapsed() < REPORT_MAX_AGE)
                .map(|(n, (_, r))| (n.clone(), r.clone()))
                .collect();
            let records = verdicts::committed(&state);
            let before = verdicts::verdicts_of(&state);
            let flips = verdicts::fold(&checks, &members, rules.health.observers as usize, &before, &claims);
            let stale = verdicts::stale(&checks, records.keys());
            // Quorum states after these flips: each one that moved is committed with them (and
            // its hook run), as are states of services gone or without a sorry server removed.
            let mut after = before.clone();
            for f in &flips {
                after.insert(f.key.clone(), Verdict { up: f.up, weight: f.weight });
            }
            for k in &stale {
                after.remove(k);
            }
            let quorum_now = rules.quorum_states(&after);
            let moved: Vec<_> = quorum_now
                .iter()
                .filter(|(svc, lost, _, _)| after.get(&crate::rules::quorum_key(svc)).is_some_and(|v| !v.up) != *lost)
                .cloned()
                .collect();
            let gone: Vec<String> = verdicts::quorum_of(&state)
                .into_keys()
                .filter(|k| !quorum_now.iter().any(|(svc, _, _, _)| crate::rules::quorum_key(svc) == *k))
                .collect();
            if flips.is_empty() && stale.is_empty() && moved.is_empty() && gone.is_empty() {
                continue;
            }
            let now = crate::cluster::records::now_unix();
            let mut cmds = Vec::new();
            for f in &flips {
                let rec = VerdictRecord { up: f.up, since_unix: now, agreed: f.agreed.clone(), observers: f.observers, reason: f.reason.clone(), weight: f.weight };
                match raft::codec::encode("verdict", &rec) {
                    Ok(value) => cmds.push(Command::Put { ns: NS_VERDICTS.into(), key: f.key.clone(), value }),
                    Err(e) => tracing::error!(error = %e, "encode verdict"),
                }
            }
            cmds.extend(stale.iter().map(|k| Command::Delete { ns: NS_VERDICTS.into(), key: k.clone() }));
            for (svc, lost, _, _) in &moved {
                let value = if *lost { b"lost".to_vec() } else { b"up".to_vec() };
                cmds.push(Command::Put { ns: verdicts::NS_QUORUM.into(), key: crate::rules::quorum_key(svc), value });
            }
            cmds.extend(gone.iter().map(|k| Command::Delete { ns: verdicts::NS_QUORUM.into(), key: k.clone() }));
            match self.cluster.write(Command::Batch(cmds)).await {
                Err(e) => tracing::warn!(error = %e, "committing health verdicts"),
                Ok(rev) => {
                    for f in &flips {
                        self.verdict_changes.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(rs = %f.key, verdict = if f.up { "up" } else { "down" }, weight = ?f.weight, agreed = ?f.agreed, observers = f.observers, reason = %f.reason, revision = rev, "health verdict committed");
                        let c = checks.iter().find(|c| c.key == f.key);
                        if c.is_some_and(|c| verdicts::current(c, &before).up == f.up) {
                            continue; // only the weight changed: keepalived runs no notify for that
                        }
                        let hook = c.and_then(|c| if f.up { c.notify_up.clone() } else { c.notify_down.clone() });
                        if let Some(cmd) = hook {
                            self.run_hook(cmd, &f.key, if f.up { "UP" } else { "DOWN" });
                        }
                    }
                    for (svc, lost, up_cmd, down_cmd) in moved {
                        tracing::warn!(service = %svc, quorum = if lost { "lost: sorry server in" } else { "back" }, revision = rev, "virtual server quorum");
                        if let Some(cmd) = if lost { down_cmd } else { up_cmd } {
                            self.run_hook(cmd, &svc, if lost { "QUORUM_DOWN" } else { "QUORUM_UP" });
                        }
                    }
                }
            }
        }
    }

    fn run_hook(&self, cmd: String, subject: &str, event: &str) {
        if run_hook(cmd, subject, event) {
            self.hooks_run.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This node's latest results for the checks it observes (one per real server: several
    /// checks of one real server are shown together).
    pub fn local_results(&self) -> BTreeMap<String, LocalResult> {
        let assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        assigned
            .iter()
            .filter_map(|(k, c)| {
                if c.defs.len() > 1 {
                    let mut comb = Combined::default();
                    let (mut lasts, mut latency, mut rounds) = (Vec::new(), None::<u64>, None::<u64>);
                    for n in 0..c.defs.len() {
                        let id = c.check_id(n);
                        // A check without a status yet leaves the row undecided, not missing.
                        let Some(st) = self.sched.status(&id) else {
                            rounds = Some(0);
                            continue;
                        };
                        comb.add(c, &id, &st);
                        if let Some(r) = &st.last {
                            lasts.push(format!("{}: {r}", c.defs[n].kind_name()));
                            latency = Some(latency.unwrap_or(0).max(r.latency.as_micros() as u64));
                        }
                        rounds = Some(rounds.map_or(st.rounds, |r| r.min(st.rounds)));
                    }
                    let state = match comb.up(c.defs.len()) {
                        Some(true) => State::Up,
                        Some(false) => State::Down,
                        None => State::Unknown,
                    };
                    let last = (!lasts.is_empty()).then(|| lasts.join("; "));
                    return Some((k.clone(), LocalResult { state: state_str(state).into(), last, latency_us: latency, rounds: rounds.unwrap_or(0) }));
                }
                let st = self.sched.status(k)?;
                Some((
                    k.clone(),
                    LocalResult {
                        state: state_str(st.state).into(),
                        last: st.last.as_ref().map(|r| r.to_string()),
                        latency_us: st.last.as_ref().map(|r| r.latency.as_micros() as u64),
                        rounds: st.rounds,
                    },
                ))
            })
            .collect()
    }

    /// `corralctl rs list`: every real server with its verdict and its observers' results
    /// (asked of each observer over QUIC, one second at most).
    pub async fn rs_list(&self) -> Vec<RsRow> {
        let (rules, checks) = self.rules();
        let state = self.cluster.sm.current();
        let records = verdicts::committed(&state);
        let members = self.cluster.live_members();
        let k = rules.health.observers as usize;
        let checks: BTreeMap<String, RsCheck> = checks.iter().map(|c| (c.key.clone(), c.clone())).collect();
        let mut results: BTreeMap<String, BTreeMap<String, LocalResult>> = BTreeMap::new();
        let mut asks = Vec::new();
        for m in &members {
            if *m == self.cluster.name {
                results.insert(m.clone(), self.local_results());
            } else if let Some(addr) = self.cluster.member_addr(m) {
                let t = self.cluster.transport.clone();
                let name = m.clone();
                asks.push(async move {
                    let parsed = match crate::cluster::admin_call(&t, addr, &Request::LocalChecks, Some(Duration::from_secs(1))).await {
                        Ok(ResponseBody::LocalChecks { results }) => Some(results),
                        Ok(other) => {
                            tracing::debug!(node = %name, answer = ?other, "rs list: unexpected answer to LocalChecks");
                            None
                        }
                        Err(e) => {
                            tracing::debug!(node = %name, error = %e, "rs list: no local results");
                            None
                        }
                    };
                    (name, parsed)
                });
            }
        }
        for (name, r) in futures_join_all(asks).await {
            if let Some(r) = r {
                results.insert(name, r);
            }
        }
        let mut rows = Vec::new();
        for vs in &rules.virtual_servers {
            let Some(key) = vs.key() else { continue };
            for rs in &vs.real_servers {
                let rk = crate::rules::rs_key(&key, rs.address);
                let c = checks.get(&rk);
                let rec = records.get(&rk);
                let (verdict, committed) = match (c, rec) {
                    (None, _) => ("unchecked", false),
                    (Some(_), Some(r)) => (if r.up { "up" } else { "down" }, true),
                    (Some(c), None) => (if c.default_up { "up" } else { "down" }, false),
                };
                let observers = match c {
                    None => Vec::new(),
                    Some(c) => verdicts::observers(&verdicts::subject(c), &members, k)
                        .into_iter()
                        .map(|o| ObserverResult { node: o.to_string(), result: results.get(o).and_then(|m| m.get(&rk)).cloned() })
                        .collect(),
                };
                rows.push(RsRow {
                    service: key.to_string(),
                    address: rs.address,
                    weight: rs.weight,
                    script_weight: rec.filter(|_| c.is_some()).and_then(|r| r.weight),
                    check: c.map(|c| c.kind()),
                    verdict: verdict.into(),
                    committed,
                    since_unix: rec.filter(|_| c.is_some()).map(|r| r.since_unix),
                    reason: rec.filter(|_| c.is_some()).map(|r| r.reason.clone()).unwrap_or_default(),
                    observers,
                });
            }
        }
        rows
    }

    /// The checker's counters plus the consensus ones.
    pub fn metrics(&self, x: &mut crate::metrics::Exposition) {
        let st = self.sched.stats();
        let counters = [
            ("corral_check_attempts_total", "Check attempts made, retries included.", st.attempts),
            ("corral_check_rounds_total", "Check rounds completed.", st.rounds),
            ("corral_check_rounds_failed_total", "Check rounds that failed after all retries.", st.rounds_failed),
            ("corral_check_state_changes_total", "State transitions of checks.", st.state_changes),
            ("corral_check_half_open_unmatched_total", "Segments to the half-open prober that answered no probe in flight (ignored).", st.half_open_unmatched),
            ("corral_check_half_open_malformed_total", "Datagrams to the half-open prober that were not a TCP header (ignored).", st.half_open_malformed),
            ("corral_health_verdict_changes_total", "Verdict changes this node committed as Raft leader.", self.verdict_changes.load(Ordering::Relaxed)),
            ("corral_health_reports_received_total", "Observer reports received (as leader).", self.reports_received.load(Ordering::Relaxed)),
            ("corral_health_reports_refused_total", "Observer reports refused (sender mismatch).", self.reports_refused.load(Ordering::Relaxed)),
            ("corral_health_reports_failed_total", "Reports this node could not deliver to the leader.", self.reports_failed.load(Ordering::Relaxed)),
            ("corral_health_hooks_run_total", "notify_up/notify_down/quorum hooks started.", self.hooks_run.load(Ordering::Relaxed)),
            ("corral_scripts_refused_total", "Hooks, notify and track scripts refused by enable_script_security.", crate::scripts::refused_total()),
        ];
        for (name, help, v) in counters {
            x.single(name, help, "counter", v);
        }
        x.family("corral_check_failures_total", "Failed attempts by reason.", "counter");
        for (k, v) in &st.failures {
            x.sample("corral_check_failures_total", &[("reason", k.as_str())], *v);
        }
        x.single("corral_check_running", "Distinct checks running.", "gauge", st.running);
        x.single("corral_check_registered", "Check registrations.", "gauge", st.registered);
        let n = self.assigned.lock().unwrap_or_else(|p| p.into_inner()).len();
        x.single("corral_health_observing", "Real servers this node observes.", "gauge", n);
    }
}

/// Several checks of one real server, as one observation: down as soon as one is down (its
/// reason, naming which check), up only when every one is up, no opinion before that.
#[derive(Debug, Default)]
struct Combined {
    up: usize,
    reason: Option<String>,
    /// A MISC_CHECK's `misc_dynamic` weight among them.
    weight: Option<u32>,
}

impl Combined {
    fn add(&mut self, c: &RsCheck, id: &str, st: &check::Status) {
        match st.state {
            State::Up => self.up += 1,
            State::Down if self.reason.is_none() => {
                let n = (0..c.defs.len()).find(|&n| c.check_id(n) == id).unwrap_or(0);
                let why = st.last.as_ref().and_then(|r| r.error.as_ref()).map(|e| e.to_string()).unwrap_or_else(|| "down".into());
                self.reason = Some(format!("check {} of {} ({}): {why}", n + 1, c.defs.len(), c.defs[n].kind_name()));
            }
            State::Down | State::Unknown => {}
        }
        self.weight = self.weight.or(st.weight);
    }

    /// Down, up, or undecided, out of `n` checks.
    fn up(&self, n: usize) -> Option<bool> {
        match (&self.reason, self.up) {
            (Some(_), _) => Some(false),
            (None, u) if u == n => Some(true),
            _ => None,
        }
    }
}

/// Runs an operator's hook without blocking anything: `/bin/sh -c CMD` as keepalived does,
/// with the subject in `CORRAL_SUBJECT` and the event in `CORRAL_EVENT`; killed after 60 s.
/// False when the node's script policy refused it (logged and counted there).
pub fn run_hook(cmd: String, subject: &str, event: &str) -> bool {
    let Some(mut c) = crate::scripts::shell(&cmd, event) else { return false };
    c.env("CORRAL_SUBJECT", subject).env("CORRAL_EVENT", event).stdin(std::process::Stdio::null());
    let subject = subject.to_string();
    let event = event.to_string();
    tokio::spawn(async move {
        match c.spawn() {
            Err(e) => tracing::warn!(%cmd, error = %e, "notify hook did not start"),
            Ok(mut child) => match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
                Ok(Ok(s)) if s.success() => tracing::info!(%cmd, %subject, %event, "notify hook ran"),
                Ok(Ok(s)) => tracing::warn!(%cmd, %subject, %event, status = %s, "notify hook failed"),
                Ok(Err(e)) => tracing::warn!(%cmd, error = %e, "notify hook"),
                Err(_) => {
                    let _ = child.kill().await;
                    tracing::warn!(%cmd, "notify hook killed after 60 s");
                }
            },
        }
    });    true
}

/// Awaits all futures concurrently (a tiny join_all, to avoid a dependency for one call).
async fn futures_join_all<F>(futs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
