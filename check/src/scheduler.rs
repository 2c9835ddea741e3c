//! Runs registered checks forever: one tokio task per *distinct* definition, rounds every
//! `interval` with start times spread over the first interval, retries within a round, rise/fall
//! across rounds, and events when a check's state (or MISC_CHECK weight) changes.
//!
//! Deduplication: a definition is the identity of a check (target, kind, parameters, timing). If
//! two virtual servers register the same definition under different ids, one task probes and
//! both ids get the events. A registration added to a check that already has a verdict gets an
//! event right away (from `Unknown`), so it does not wait a whole interval.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::checker::{Checker, DefError};
use crate::def::{CheckDef, Initial, Timing};
use crate::result::CheckResult;
use crate::stats::{Stats, StatsSnapshot};

/// What a check currently says about its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No verdict yet (initial = unknown and no round finished).
    Unknown,
    /// Healthy: traffic may go there.
    Up,
    /// Failed: take it out of the pool.
    Down,
}

/// Rise/fall counting across rounds, apart from any I/O so it is tested on its own.
#[derive(Debug, Clone)]
pub struct Tracker {
    state: State,
    rise: u32,
    fall: u32,
    ok_run: u32,
    fail_run: u32,
}

impl Tracker {
    /// A tracker starting in `initial` that needs `rise` good / `fall` bad rounds in a row to flip.
    pub fn new(initial: Initial, rise: u32, fall: u32) -> Self {
        let state = match initial {
            Initial::Unknown => State::Unknown,
            Initial::Up => State::Up,
            Initial::Down => State::Down,
        };
        Tracker { state, rise: rise.max(1), fall: fall.max(1), ok_run: 0, fail_run: 0 }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Feed one round's verdict; returns `(from, to)` when the state flips. From `Unknown` the
    /// first round decides alone.
    pub fn record(&mut self, ok: bool) -> Option<(State, State)> {
        if ok {
            self.ok_run = self.ok_run.saturating_add(1);
            self.fail_run = 0;
        } else {
            self.fail_run = self.fail_run.saturating_add(1);
            self.ok_run = 0;
        }
        let to = match self.state {
            State::Unknown if ok => State::Up,
            State::Unknown => State::Down,
            State::Up if self.fail_run >= self.fall => State::Down,
            State::Down if self.ok_run >= self.rise => State::Up,
            s => s,
        };
        let from = std::mem::replace(&mut self.state, to);
        (from != to).then_some((from, to))
    }
}

/// Latest view of one check, readable at any time through [`Scheduler::status`] or a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Current state after rise/fall.
    pub state: State,
    /// The last round's verdict (its last attempt).
    pub last: Option<CheckResult>,
    /// Weight from the last `misc_dynamic` exit code 2..=255, kept until the next one.
    pub weight: Option<u32>,
    /// Rounds completed.
    pub rounds: u64,
}

/// Sent for every registration of a check whose state or weight changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<I> {
    /// The registration this is for.
    pub id: I,
    /// State before. Equal to `to` when only the weight changed.
    pub from: State,
    /// State now.
    pub to: State,
    /// Current MISC_CHECK weight, if a script ever set one.
    pub weight: Option<u32>,
    /// The round that caused the change.
    pub result: CheckResult,
}

/// Scheduler settings that are not per check.
#[derive(Debug, Clone)]
pub struct Options {
    /// Start each new check at a random point within its first interval, so ten thousand checks
    /// registered at once do not all fire in the same millisecond. Off: start at once.
    pub spread: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { spread: true }
    }
}

struct Job<I> {
    gen: u64,
    ids: Vec<I>,
    status: watch::Receiver<Status>,
    task: JoinHandle<()>,
}

struct Inner<I> {
    by_id: HashMap<I, Arc<CheckDef>>,
    jobs: HashMap<Arc<CheckDef>, Job<I>>,
    next_gen: u64,
}

struct Shared<I> {
    inner: Mutex<Inner<I>>,
    stats: Stats,
    events: mpsc::UnboundedSender<Event<I>>,
    options: Options,
    runtime: tokio::runtime::Handle,
    seed: std::collections::hash_map::RandomState,
}

impl<I> Shared<I> {
    fn lock(&self) -> MutexGuard<'_, Inner<I>> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than stopping health checks would, so carry on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs a changing set of checks. Create it inside a tokio runtime; its methods can then be
/// called from anywhere. Dropping it stops every check.
pub struct Scheduler<I> {
    shared: Arc<Shared<I>>,
}

impl<I: Clone + Eq + Hash + Debug + Send + Sync + 'static> Scheduler<I> {
    /// A scheduler with default options and the receiver of its events.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Event<I>>) {
        Self::with_options(Options::default())
    }

    /// A scheduler with explicit options.
    pub fn with_options(options: Options) -> (Self, mpsc::UnboundedReceiver<Event<I>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner { by_id: HashMap::new(), jobs: HashMap::new(), next_gen: 0 }),
            stats: Stats::default(),
            events: tx,
            options,
            runtime: tokio::runtime::Handle::current(),
            seed: Default::default(),
        });
        (Scheduler { shared }, rx)
    }

    /// Register `def` under `id`. Re-registering an id with the same definition does nothing;
    /// with another definition it replaces the old one. Other checks are not disturbed.
    pub fn add(&self, id: I, def: CheckDef) -> Result<(), DefError> {
        {
            let mut inner = self.shared.lock();
            if inner.by_id.get(&id).is_some_and(|d| **d == def) {
                return Ok(());
            }
            if Self::join_existing(&self.shared, &mut inner, &id, &def) {
                return Ok(());
            }
        }
        // Preparing may read CA files: do it without the lock.
        let checker = def.prepare()?;
        self.start(id, def, checker);
        Ok(())
    }

    /// Register a pre-built checker (tests use scripted probes through this).
    #[cfg(test)]
    pub(crate) fn add_checker(&self, id: I, def: CheckDef, checker: Checker) {
        self.start(id, def, checker);
    }

    fn start(&self, id: I, def: CheckDef, checker: Checker) {
        let mut inner = self.shared.lock();
        if Self::join_existing(&self.shared, &mut inner, &id, &def) {
            return; // someone started the same definition while we were preparing
        }
        let key = Arc::new(def);
        let gen = inner.next_gen;
        inner.next_gen += 1;
        let initial = Tracker::new(checker.timing().initial, 1, 1).state();
        let (tx, rx) = watch::channel(Status { state: initial, last: None, weight: None, rounds: 0 });
        let delay = if self.shared.options.spread {
            let r = self.shared.seed.hash_one((gen, &*key));
            checker.timing().interval.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
        } else {
            Duration::ZERO
        };
        let task = self.shared.runtime.spawn(run(Arc::downgrade(&self.shared), key.clone(), gen, checker, tx, delay));
        inner.jobs.insert(key.clone(), Job { gen, ids: vec![id.clone()], status: rx, task });
        inner.by_id.insert(id, key);
    }

    /// If `def` already runs: drop `id`'s old registration, attach it, tell it the current state.
    fn join_existing(shared: &Shared<I>, inner: &mut Inner<I>, id: &I, def: &CheckDef) -> bool {
        if !inner.jobs.contains_key(def) {
            return false;
        }
        Self::remove_locked(inner, id);
        let Some(key) = inner.jobs.get_key_value(def).map(|(k, _)| k.clone()) else { return false };
        let Some(job) = inner.jobs.get_mut(def) else { return false };
        job.ids.push(id.clone());
        let status = job.status.borrow().clone();
        if let (State::Up | State::Down, Some(result)) = (status.state, status.last) {
            let _ = shared.events.send(Event {
                id: id.clone(),
                from: State::Unknown,
                to: status.state,
                weight: status.weight,
                result,
            });
        }
        inner.by_id.insert(id.clone(), key);
        true
    }

    fn remove_locked(inner: &mut Inner<I>, id: &I) -> bool {
        let Some(key) = inner.by_id.remove(id) else { return false };
        if let Some(job) = inner.jobs.get_mut(&key) {
            job.ids.retain(|i| i != id);
            if job.ids.is_empty() {
                if let Some(job) = inner.jobs.remove(&key) {
                    job.task.abort();
                }
            }
        }
        true
    }

    /// Unregister `id`; the check stops when no registration uses it any more. Returns whether
    /// the id was registered.
    pub fn remove(&self, id: &I) -> bool {
        Self::remove_locked(&mut self.shared.lock(), id)
    }

    /// Make the registrations exactly `set` (a configuration reload): ids not in it are removed,
    /// changed ones replaced, unchanged ones keep running with their state. Invalid definitions
    /// are skipped and returned; the rest is applied.
    pub fn sync(&self, set: impl IntoIterator<Item = (I, CheckDef)>) -> Vec<(I, DefError)> {
        let wanted: HashMap<I, CheckDef> = set.into_iter().collect();
        let stale: Vec<I> = {
            let inner = self.shared.lock();
            inner.by_id.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect()
        };
        for id in &stale {
            self.remove(id);
        }
        let mut errors = Vec::new();
        for (id, def) in wanted {
            if let Err(e) = self.add(id.clone(), def) {
                self.remove(&id);
                errors.push((id, e));
            }
        }
        errors
    }

    /// Latest status of the check behind `id`.
    pub fn status(&self, id: &I) -> Option<Status> {
        let inner = self.shared.lock();
        let key = inner.by_id.get(id)?;
        let status = inner.jobs.get(key)?.status.borrow().clone();
        Some(status)
    }

    /// A receiver that sees every round's status of the check behind `id`.
    pub fn watch(&self, id: &I) -> Option<watch::Receiver<Status>> {
        let inner = self.shared.lock();
        let key = inner.by_id.get(id)?;
        Some(inner.jobs.get(key)?.status.clone())
    }

    /// Registered ids.
    pub fn ids(&self) -> Vec<I> {
        self.shared.lock().by_id.keys().cloned().collect()
    }

    /// Counters, plus how many registrations and distinct checks there are.
    pub fn stats(&self) -> StatsSnapshot {
        let (registered, running) = {
            let inner = self.shared.lock();
            (inner.by_id.len(), inner.jobs.len())
        };
        self.shared.stats.snapshot(registered, running)
    }
}

impl<I> Drop for Scheduler<I> {
    fn drop(&mut self) {
        for job in self.shared.lock().jobs.values() {
            job.task.abort();
        }
    }
}

/// The life of one distinct check.
async fn run<I: Clone + Eq + Hash + Send + Sync + 'static>(
    shared: Weak<Shared<I>>,
    key: Arc<CheckDef>,
    gen: u64,
    checker: Checker,
    status: watch::Sender<Status>,
    delay: Duration,
) {
    let timing: Timing = checker.timing().clone();
    let mut tracker = Tracker::new(timing.initial, timing.rise, timing.fall);
    let mut weight = None;
    let mut rounds = 0u64;
    tokio::time::sleep(delay).await;
    let mut next = Instant::now();
    loop {
        let result = {
            let Some(s) = shared.upgrade() else { return };
            checker.round(|r| s.stats.attempt(r)).await
        };
        let Some(s) = shared.upgrade() else { return };
        rounds += 1;
        s.stats.round(&result);
        let change = tracker.record(result.is_ok());
        let old_weight = weight;
        if result.is_ok() && result.weight.is_some() {
            weight = result.weight;
        }
        let state = tracker.state();
        status.send_replace(Status { state, last: Some(result.clone()), weight, rounds });
        if let Some((_, to)) = change {
            s.stats.state_change(to == State::Up);
            tracing::info!(check = %key.kind_name(), ?to, %result, "check state changed");
        }
        if change.is_some() || weight != old_weight {
            let from = change.map_or(state, |(from, _)| from);
            let inner = s.lock();
            if let Some(job) = inner.jobs.get(&*key).filter(|j| j.gen == gen) {
                for id in &job.ids {
                    let _ = s.events.send(Event { id: id.clone(), from, to: state, weight, result: result.clone() });
                }
            }
        }
        drop(s);
        next += timing.interval;
        let now = Instant::now();
        if next < now {
            next = now; // a round overran: start the next one now, do not burst to catch up
        }
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_rise_fall() {
        let mut t = Tracker::new(Initial::Unknown, 2, 3);
        assert_eq!(t.record(true), Some((State::Unknown, State::Up)));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the failure run");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some((State::Up, State::Down)));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some((State::Down, State::Up)));

        let mut alpha = Tracker::new(Initial::Down, 2, 1);
        assert_eq!(alpha.record(true), None);
        assert_eq!(alpha.record(true), Some((State::Down, State::Up)));
        let mut start_up = Tracker::new(Initial::Up, 1, 2);
        assert_eq!(start_up.record(true), None);
        assert_eq!(start_up.record(false), None);
        assert_eq!(start_up.record(false), Some((State::Up, State::Down)));
    }
}
