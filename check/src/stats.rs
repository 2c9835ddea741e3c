//! Counters as plain atomics: cheap enough to bump on every attempt from thousands of tasks, and
//! read as a [`StatsSnapshot`] by whoever exports metrics (corrald, through `prometheus-client`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::result::{CheckResult, ReasonKind};

/// Live counters shared by the scheduler's tasks.
#[derive(Debug, Default)]
pub struct Stats {
    attempts: AtomicU64,
    attempts_failed: AtomicU64,
    rounds: AtomicU64,
    rounds_failed: AtomicU64,
    failures: [AtomicU64; ReasonKind::ALL.len()],
    state_changes: AtomicU64,
    went_up: AtomicU64,
    went_down: AtomicU64,
}

impl Stats {
    pub(crate) fn attempt(&self, r: &CheckResult) {
        self.attempts.fetch_add(1, Relaxed);
        if let Some(e) = &r.error {
            self.attempts_failed.fetch_add(1, Relaxed);
            self.failures[e.kind().index()].fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn round(&self, r: &CheckResult) {
        self.rounds.fetch_add(1, Relaxed);
        if !r.is_ok() {
            self.rounds_failed.fetch_add(1, Relaxed);
        }
    }

    /// Adds counts gathered over a pass (the half-open driver's), with one atomic add each.
    pub(crate) fn add(&self, d: &mut Delta) {
        for (n, c) in [(&mut d.attempts, &self.attempts), (&mut d.attempts_failed, &self.attempts_failed), (&mut d.rounds, &self.rounds), (&mut d.rounds_failed, &self.rounds_failed)] {
            if *n > 0 {
                c.fetch_add(std::mem::take(n), Relaxed);
            }
        }
        for (n, c) in d.failures.iter_mut().zip(&self.failures) {
            if *n > 0 {
                c.fetch_add(std::mem::take(n), Relaxed);
            }
        }
    }

    pub(crate) fn state_change(&self, up: bool) {
        self.state_changes.fetch_add(1, Relaxed);
        if up { &self.went_up } else { &self.went_down }.fetch_add(1, Relaxed);
    }

    /// A consistent-enough copy (each counter read once, not atomically together).
    pub fn snapshot(&self, registered: usize, running: usize) -> StatsSnapshot {
        StatsSnapshot {
            attempts: self.attempts.load(Relaxed),
            attempts_failed: self.attempts_failed.load(Relaxed),
            rounds: self.rounds.load(Relaxed),
            rounds_failed: self.rounds_failed.load(Relaxed),
            failures: ReasonKind::ALL.iter().map(|k| (*k, self.failures[k.index()].load(Relaxed))).collect(),
            state_changes: self.state_changes.load(Relaxed),
            went_up: self.went_up.load(Relaxed),
            went_down: self.went_down.load(Relaxed),
            registered,
            running,
            half_open_unmatched: 0,
            half_open_malformed: 0,
        }
    }
}

/// Attempt and round counts gathered locally, then added to [`Stats`] at once: the half-open
/// driver settles hundreds of attempts per pass, and an atomic add per attempt on a line the
/// other threads read was a measurable part of its cost.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    attempts: u64,
    attempts_failed: u64,
    rounds: u64,
    rounds_failed: u64,
    failures: [u64; ReasonKind::ALL.len()],
}

impl Delta {
    pub(crate) fn attempt(&mut self, r: &CheckResult) {
        self.attempts += 1;
        if let Some(e) = &r.error {
            self.attempts_failed += 1;
            self.failures[e.kind().index()] += 1;
        }
    }

    pub(crate) fn round(&mut self, r: &CheckResult) {
        self.rounds += 1;
        if !r.is_ok() {
            self.rounds_failed += 1;
        }
    }
}

/// A copy of the counters at one moment, for metrics and `corralctl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Attempts made (retries included).
    pub attempts: u64,
    /// Attempts that failed.
    pub attempts_failed: u64,
    /// Rounds completed (one round = first attempt plus its retries).
    pub rounds: u64,
    /// Rounds whose every attempt failed.
    pub rounds_failed: u64,
    /// Failed attempts by reason kind, every kind listed (zeros included).
    pub failures: Vec<(ReasonKind, u64)>,
    /// State transitions of deduplicated checks (Unknown→Up/Down included).
    pub state_changes: u64,
    /// Transitions to Up.
    pub went_up: u64,
    /// Transitions to Down.
    pub went_down: u64,
    /// Registrations (ids).
    pub registered: usize,
    /// Distinct checks running after deduplication.
    pub running: usize,
    /// Segments the half-open prober's raw sockets received that settled no probe: late answers
    /// after a timeout, a wrong acknowledgment number, strays (ignored, counted).
    pub half_open_unmatched: u64,
    /// Datagrams those sockets received that were not a TCP header (ignored, counted).
    pub half_open_malformed: u64,
}

impl StatsSnapshot {
    /// Failed attempts of one kind.
    pub fn failures_of(&self, kind: ReasonKind) -> u64 {
        self.failures.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n)
    }

}
