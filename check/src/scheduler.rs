//! Runs registered checks forever: rounds every `interval` per *distinct* definition, with start
//! times spread over the first interval, retries within a round, rise/fall across rounds
//! (`rounds`), and events when a check's state (or MISC_CHECK weight) changes.
//!
//! Each check runs as a tokio task, except `tcp_half_open` checks: their rounds are run by the
//! half-open prober's driver (`halfopen::batch`), one pass per grid step for all of them.
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
use crate::checker::AttemptIo;
use crate::def::{CheckDef, Initial};
use crate::halfopen::batch::RoundSink;
use crate::halfopen::CheckHandle;
use crate::result::CheckResult;
use crate::rounds::{Finished, Next, Rounds};
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
    /// Who runs script checks, and which scripts may not run as root: a script check comes with
    /// the replicated rules, the policy with this node's own config.
    pub scripts: crate::ScriptPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options { spread: true, scripts: crate::ScriptPolicy::default() }
    }
}

struct Job<I> {
    gen: u64,
    ids: Vec<I>,
    status: watch::Receiver<Status>,
    runner: Runner,
}

impl<I> Job<I> {
    fn status(&self) -> Status {
        match &self.runner {
            // The driver keeps it; the watch has only the notable rounds.
            Runner::HalfOpen(h) => h.status().unwrap_or_else(|| self.status.borrow().clone()),
            Runner::Task(_) => self.status.borrow().clone(),
        }
    }
}

/// What runs a check's rounds.
enum Runner {
    /// A task of its own.
    Task(JoinHandle<()>),
    /// The half-open prober's driver.
    HalfOpen(CheckHandle),
}

impl Runner {
    fn stop(&self) {
        match self {
            Runner::Task(t) => t.abort(),
            Runner::HalfOpen(h) => h.stop(),
        }
    }
}

struct Inner<I> {
    by_id: HashMap<I, Arc<CheckDef>>,
    jobs: HashMap<Arc<CheckDef>, Job<I>>,
    next_gen: u64,
}

/// Round and retry starts are rounded up to this grid (counted from the scheduler's creation), so
/// the checks due within one step start in one runtime wake-up: at 10 000 checks/s that is 100
/// wake-ups a second instead of one per millisecond timer tick. A start is at most one step late;
/// the interval is still counted from the (rounded) start of the previous round.
pub const START_GRID: Duration = Duration::from_millis(10);

/// Rounds instants up to [`START_GRID`] steps from `epoch`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    epoch: Instant,
}

impl Grid {
    /// A grid whose steps count from `epoch`.
    pub(crate) fn at(epoch: Instant) -> Grid {
        Grid { epoch }
    }

    pub(crate) fn align(&self, t: Instant) -> Instant {
        let step = START_GRID.as_nanos();
        let since = t.saturating_duration_since(self.epoch).as_nanos();
        let steps = since.div_ceil(step);
        self.epoch + Duration::from_nanos(u64::try_from(steps * step).unwrap_or(u64::MAX))
    }
}

/// Wakes the checks due at each grid step from one tokio timer, instead of a tokio sleep (a
/// timer-wheel entry) per check per round: at 10 000 checks/s that is ~100 timer expiries a second
/// instead of 10 000. Instants are grid steps, so each step is one map entry with its wakers.
struct Steps {
    state: Mutex<StepsState>,
    /// A step earlier than the one the driver is armed for was added.
    rearm: tokio::sync::Notify,
}

#[derive(Default)]
struct StepsState {
    due: std::collections::BTreeMap<Instant, Vec<std::task::Waker>>,
    armed: Option<Instant>,
}

impl Steps {
    fn lock(&self) -> MutexGuard<'_, StepsState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleep until `at` (a grid step), woken by the driver.
    async fn sleep_until(&self, at: Instant) {
        let mut registered = false;
        std::future::poll_fn(|cx| {
            if Instant::now() >= at {
                return std::task::Poll::Ready(());
            }
            if !registered {
                registered = true;
                let rearm = {
                    let mut st = self.lock();
                    st.due.entry(at).or_default().push(cx.waker().clone());
                    let rearm = st.armed.is_none_or(|a| at < a);
                    if rearm {
                        st.armed = Some(at);
                    }
                    rearm
                };
                if rearm {
                    self.rearm.notify_one();
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// The driver: one tokio sleep armed for the earliest step; wakes that step's checks. Ends
    /// when the scheduler is gone (`gone` resolves).
    async fn drive(self: Arc<Self>, mut gone: tokio::sync::oneshot::Receiver<()>) {
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let mut wake = Vec::new();
        loop {
            let next = {
                let mut st = self.lock();
                let next = st.due.keys().next().copied();
                st.armed = next;
                next
            };
            if let Some(at) = next {
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                _ = &mut gone => return,
                _ = &mut sleep, if next.is_some() => {
                    let now = Instant::now();
                    let mut st = self.lock();
                    while let Some(e) = st.due.first_entry() {
                        if *e.key() > now {
                            break;
                        }
                        wake.extend(e.remove());
                    }
                }
                _ = self.rearm.notified() => {}
            }
            for w in wake.drain(..) {
                w.wake();
            }
        }
    }
}

struct Shared<I> {
    inner: Mutex<Inner<I>>,
    grid: Grid,
    steps: Arc<Steps>,
    /// Dropped with the scheduler: ends the steps driver.
    _steps_alive: tokio::sync::oneshot::Sender<()>,
    /// Where every check's TCP connects that are still in flight after `connect(2)` wait.
    io: AttemptIo,
    stats: Arc<Stats>,
    /// Rounds that changed a check's state, weight or kind of failure, ever.
    notable: Arc<std::sync::atomic::AtomicU64>,
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
        let steps = Arc::new(Steps { state: Mutex::new(StepsState::default()), rearm: tokio::sync::Notify::new() });
        let (alive, gone) = tokio::sync::oneshot::channel();
        tokio::spawn(steps.clone().drive(gone));
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner { by_id: HashMap::new(), jobs: HashMap::new(), next_gen: 0 }),
            grid: Grid::at(Instant::now()),
            steps,
            _steps_alive: alive,
            io: AttemptIo { scripts: options.scripts.clone(), ..AttemptIo::default() },
            stats: Arc::default(),
            notable: Arc::default(),
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
        Self::remove_locked(&mut inner, &id); // a re-registration with another definition
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
        let rounds = Rounds::new(checker.timing().clone(), self.shared.grid, Instant::now() + delay);
        let sink = Arc::new(Publisher {
            shared: Arc::downgrade(&self.shared),
            stats: self.shared.stats.clone(),
            notable: self.shared.notable.clone(),
            key: key.clone(),
            gen,
            status: tx,
        });
        let (checker, rounds) = match checker.into_half_open() {
            Ok((probe, timing)) => match self.shared.io.prober.add_check(&self.shared.runtime, probe, rounds, sink.clone(), &self.shared.stats) {
                Ok(handle) => {
                    inner.jobs.insert(key.clone(), Job { gen, ids: vec![id.clone()], status: rx, runner: Runner::HalfOpen(handle) });
                    inner.by_id.insert(id, key);
                    return;
                }
                // No raw sockets: a task runs it, whose attempts fail and say why.
                Err((probe, rounds)) => (Checker::from_half_open(probe, timing), rounds),
            },
            Err(checker) => (checker, rounds),
        };
        let task = self.shared.runtime.spawn(run(Arc::downgrade(&self.shared), checker, rounds, sink));
        inner.jobs.insert(key.clone(), Job { gen, ids: vec![id.clone()], status: rx, runner: Runner::Task(task) });
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
        // What was published, not the driver's newer round: a change it has not published yet
        // then reaches this id as an event of its own, after this one.
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
                    job.runner.stop();
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
        Some(inner.jobs.get(key)?.status())
    }

    /// Calls `f` with every registration and the latest status of its check: a sweep over
    /// thousands of checks without a lookup per id (an observer's periodic report). Runs under
    /// the scheduler's lock, so `f` must not call back into the scheduler.
    pub fn for_each_status(&self, mut f: impl FnMut(&I, &Status)) {
        let inner = self.shared.lock();
        for job in inner.jobs.values() {
            let st = job.status();
            for id in &job.ids {
                f(id, &st);
            }
        }
    }

    /// How many rounds so far changed a check's state, weight or kind of failure. A sweep over
    /// [`Scheduler::for_each_status`] whose result depends only on those can be skipped while
    /// this has not moved (read it before the sweep). Adding or removing checks does not move it.
    pub fn notable_rounds(&self) -> u64 {
        self.shared.notable.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A receiver of the status of the check behind `id`, woken when the state, the weight or
    /// the kind of failure changes. `borrow()` shows at least the latest such change; rounds that
    /// change nothing else may not be in it (half-open checks' are not): [`Scheduler::status`]
    /// has the latest round.
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
        let mut snap = self.shared.stats.snapshot(registered, running);
        let c = self.shared.io.prober.counters();
        snap.half_open_unmatched = c.unmatched;
        snap.half_open_malformed = c.malformed;
        snap
    }
}

impl<I> Drop for Scheduler<I> {
    fn drop(&mut self) {
        for job in self.shared.lock().jobs.values() {
            job.runner.stop();
        }
    }
}

/// Publishes one check's attempts and rounds: counters, its status, and on a change an event for
/// each of its registrations.
struct Publisher<I> {
    shared: Weak<Shared<I>>,
    stats: Arc<Stats>,
    notable: Arc<std::sync::atomic::AtomicU64>,
    key: Arc<CheckDef>,
    gen: u64,
    status: watch::Sender<Status>,
}

impl<I: Clone + Eq + Hash + Send + Sync + 'static> Publisher<I> {
    /// Every round of a task-run check: counters and status, then what a notable round adds.
    fn round(&self, f: &Finished) {
        self.stats.round(&f.result);
        let mut notable = false;
        self.status.send_if_modified(|st| {
            notable = f.notable(st.last.as_ref());
            *st = f.status();
            notable
        });
        if notable {
            self.changed(f);
        }
    }

    /// A notable round (see [`Finished::notable`]); a state or weight change is also counted,
    /// logged, and an event for each registration.
    fn changed(&self, f: &Finished) {
        self.notable.fetch_add(1, std::sync::atomic::Ordering::Release);
        if let Some((_, to)) = f.change {
            self.stats.state_change(to == State::Up);
            tracing::debug!(check = %self.key.kind_name(), ?to, result = %f.result, "check state changed");
        }
        if f.change.is_some() || f.weight_changed {
            let Some(s) = self.shared.upgrade() else { return };
            let from = f.change.map_or(f.state, |(from, _)| from);
            let inner = s.lock();
            if let Some(job) = inner.jobs.get(&*self.key).filter(|j| j.gen == self.gen) {
                for id in &job.ids {
                    let _ = s.events.send(Event { id: id.clone(), from, to: f.state, weight: f.weight, result: f.result.clone() });
                }
            }
        }
    }
}

impl<I: Clone + Eq + Hash + Send + Sync + 'static> RoundSink for Publisher<I> {
    /// A notable round of a check the half-open driver runs (which counts the rounds itself).
    fn notable(&self, f: &Finished) {
        self.status.send_replace(f.status());
        self.changed(f);
    }
}

/// The life of one distinct check that runs as a task of its own.
async fn run<I: Clone + Eq + Hash + Send + Sync + 'static>(shared: Weak<Shared<I>>, checker: Checker, mut rounds: Rounds, sink: Arc<Publisher<I>>) {
    let steps = match shared.upgrade() {
        Some(s) => s.steps.clone(),
        None => return,
    };
    let mut at = rounds.first();
    loop {
        steps.sleep_until(at).await;
        let result = {
            let Some(s) = shared.upgrade() else { return };
            checker.attempt_in(&s.io).await
        };
        sink.stats.attempt(&result);
        at = match rounds.attempt_done(Instant::now(), result) {
            Next::Retry(at) => at,
            Next::Done(f) => {
                sink.round(&f);
                f.next
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;

    use crate::def::Timing;
    use crate::result::FailReason;
    use crate::Phase;

    /// A scripted probe: pops verdicts (true = ok), then keeps answering `then`. Records when
    /// each attempt happened.
    struct Script {
        verdicts: Mutex<VecDeque<bool>>,
        then: bool,
        times: Mutex<Vec<Instant>>,
        weight: Mutex<Option<u32>>,
    }

    fn scripted(verdicts: &[bool], then: bool) -> Arc<Script> {
        Arc::new(Script {
            verdicts: Mutex::new(verdicts.iter().copied().collect()),
            then,
            times: Mutex::new(Vec::new()),
            weight: Mutex::new(None),
        })
    }

    fn checker(script: &Arc<Script>, timing: Timing) -> Checker {
        let s = script.clone();
        Checker::fake(
            timing,
            Arc::new(move || {
                s.times.lock().unwrap().push(Instant::now());
                let ok = s.verdicts.lock().unwrap().pop_front().unwrap_or(s.then);
                if ok {
                    CheckResult { latency: Duration::ZERO, error: None, weight: *s.weight.lock().unwrap() }
                } else {
                    CheckResult::failed(Duration::ZERO, FailReason::Timeout(Phase::Connect))
                }
            }),
        )
    }

    fn def_for(port: u16, timing: &Timing) -> CheckDef {
        let mut d = CheckDef::tcp(([127, 0, 0, 1], port).into());
        *d.timing_mut() = timing.clone();
        d
    }

    fn timing(rise: u32, fall: u32, retries: u32) -> Timing {
        Timing {
            interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            read_timeout: None,
            retries,
            delay_before_retry: Duration::from_secs(2),
            rise,
            fall,
            initial: Initial::Unknown,
        }
    }

    fn no_spread() -> (Scheduler<&'static str>, mpsc::UnboundedReceiver<Event<&'static str>>) {
        Scheduler::with_options(Options { spread: false, ..Options::default() })
    }

    /// Advance virtual time in small steps so spawned tasks run between them.
    async fn run_for(d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn drain<I>(rx: &mut mpsc::UnboundedReceiver<Event<I>>) -> Vec<Event<I>> {
        let mut v = Vec::new();
        while let Ok(e) = rx.try_recv() {
            v.push(e);
        }
        v
    }

    #[tokio::test(start_paused = true)]
    async fn retries_within_a_round_with_delay() {
        let t = timing(1, 1, 2);
        let (sched, mut rx) = no_spread();
        // Round 1: fail, fail, ok -> ok. Round 2: fail x3 -> failed.
        let script = scripted(&[false, false, true, false, false, false], true);
        let t0 = Instant::now();
        sched.add_checker("a", def_for(1, &t), checker(&script, t.clone()));
        run_for(Duration::from_secs(15)).await;
        let times: Vec<Duration> = script.times.lock().unwrap().iter().map(|i| *i - t0).collect();
        let s = |n| Duration::from_secs(n);
        assert_eq!(times, vec![s(0), s(2), s(4), s(10), s(12), s(14)], "retry delay, then interval from the round start");
        let ev = drain(&mut rx);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!((ev[0].from, ev[0].to), (State::Unknown, State::Up));
        assert_eq!((ev[1].from, ev[1].to), (State::Up, State::Down));
        assert_eq!(ev[1].result.error, Some(FailReason::Timeout(Phase::Connect)));
        let st = sched.stats();
        assert_eq!((st.attempts, st.attempts_failed, st.rounds, st.rounds_failed), (6, 5, 2, 1));
        assert_eq!(st.failures_of(crate::ReasonKind::ConnectTimeout), 5);
        assert_eq!(st.state_changes, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn rise_and_fall_count_rounds() {
        let t = timing(3, 2, 0);
        let (sched, mut rx) = no_spread();
        // ok | fail ok fail fail | ok ok fail ok ok ok
        let script = scripted(&[true, false, true, false, false, true, true, false, true, true, true], true);
        let t0 = Instant::now();
        sched.add_checker("a", def_for(1, &t), checker(&script, t.clone()));
        let mut seen = Vec::new();
        for _ in 0..12 {
            run_for(Duration::from_secs(10)).await;
            seen.extend(drain(&mut rx).into_iter().map(|e| (e.from, e.to, (e.result.latency, Instant::now() - t0))));
        }
        let flips: Vec<(State, State)> = seen.iter().map(|(f, t, _)| (*f, *t)).collect();
        assert_eq!(flips, vec![(State::Unknown, State::Up), (State::Up, State::Down), (State::Down, State::Up)]);
        let status = sched.status(&"a").unwrap();
        assert_eq!(status.state, State::Up);
        assert_eq!(status.rounds, 12);
        // Down after round 5 (index 4, t=40s), up after round 11 (t=100s): seen by the step after.
        assert_eq!(seen[1].2 .1, Duration::from_secs(50));
        assert_eq!(seen[2].2 .1, Duration::from_secs(110));
    }

    #[tokio::test(start_paused = true)]
    async fn identical_definitions_run_once_and_late_joiners_hear_the_state() {
        let t = timing(1, 1, 0);
        let (sched, mut rx) = no_spread();
        let script = scripted(&[], true);
        let def = def_for(1, &t);
        sched.add_checker("a", def.clone(), checker(&script, t.clone()));
        run_for(Duration::from_secs(1)).await;
        // Same definition: no new task, "b" hears Up at once.
        sched.add("b", def.clone()).unwrap();
        let ev = drain(&mut rx);
        let ids: Vec<_> = ev.iter().map(|e| (e.id, e.to)).collect();
        assert_eq!(ids, vec![("a", State::Up), ("b", State::Up)]);
        assert_eq!(sched.notable_rounds(), 1, "one check, one notable round (its first)");
        let mut all = Vec::new();
        sched.for_each_status(|id, st| all.push((*id, st.state, st.rounds)));
        all.sort_by_key(|x| x.0);
        assert_eq!(all, vec![("a", State::Up, 1), ("b", State::Up, 1)], "the sweep sees every registration");
        run_for(Duration::from_secs(30)).await;
        assert_eq!(script.times.lock().unwrap().len(), 4, "rounds at 0, 10, 20, 30 s: one probe for both ids");
        assert_eq!(sched.notable_rounds(), 1, "rounds that change nothing are not notable");
        assert_eq!((sched.stats().registered, sched.stats().running), (2, 1));

        // Removing one id keeps the check; removing the last stops it.
        assert!(sched.remove(&"a"));
        run_for(Duration::from_secs(10)).await;
        assert_eq!(script.times.lock().unwrap().len(), 5);
        assert!(sched.remove(&"b"));
        assert!(!sched.remove(&"b"));
        run_for(Duration::from_secs(30)).await;
        assert_eq!(script.times.lock().unwrap().len(), 5, "no probe after the last removal");
        assert_eq!((sched.stats().registered, sched.stats().running), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn weight_change_is_an_event() {
        let t = timing(1, 1, 0);
        let (sched, mut rx) = no_spread();
        let script = scripted(&[], true);
        sched.add_checker("s", def_for(9, &t), checker(&script, t.clone()));
        run_for(Duration::from_secs(1)).await;
        assert_eq!(drain(&mut rx).len(), 1);
        *script.weight.lock().unwrap() = Some(7);
        run_for(Duration::from_secs(10)).await;
        let ev = drain(&mut rx);
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].from, ev[0].to, ev[0].weight), (State::Up, State::Up, Some(7)));
        run_for(Duration::from_secs(10)).await;
        assert!(drain(&mut rx).is_empty(), "same weight again: no event");
    }

    #[tokio::test(start_paused = true)]
    async fn spread_start_times_within_first_interval() {
        let t = timing(1, 1, 0);
        let (sched, _rx) = Scheduler::<u16>::new();
        let scripts: Vec<_> = (0..50u16).map(|_| scripted(&[], true)).collect();
        let t0 = Instant::now();
        for (i, s) in scripts.iter().enumerate() {
            let i = i as u16;
            sched.add_checker(i, def_for(i, &t), checker(s, t.clone()));
        }
        // A start is a random point of the first interval rounded up to the grid, so it can be
        // the 10 s mark itself: wait one grid step past it.
        run_for(Duration::from_secs(10) + START_GRID * 2).await;
        let firsts: Vec<Duration> = scripts.iter().map(|s| s.times.lock().unwrap()[0] - t0).collect();
        assert!(firsts.iter().all(|d| *d <= Duration::from_secs(10)), "{firsts:?}");
        let early = firsts.iter().filter(|d| **d < Duration::from_secs(5)).count();
        assert!((10..=40).contains(&early), "starts spread over the interval: {early}/50 in the first half");
    }

    #[tokio::test(start_paused = true)]
    async fn starts_round_up_to_the_grid() {
        let g = Grid { epoch: Instant::now() };
        let e = g.epoch;
        assert_eq!(g.align(e), e);
        assert_eq!(g.align(e + Duration::from_millis(1)), e + START_GRID);
        assert_eq!(g.align(e + START_GRID), e + START_GRID, "on the grid: unchanged");
        assert_eq!(g.align(e + START_GRID * 3 + Duration::from_nanos(1)), e + START_GRID * 4);
        assert_eq!(g.align(e - Duration::from_secs(1)), e, "before the epoch: the epoch");
    }

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
