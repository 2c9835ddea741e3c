//! One check's rounds as a sans-IO state machine: when the next attempt starts, what a finished
//! attempt means (retry, or the round's verdict), rise/fall across rounds and the MISC_CHECK
//! weight. No clock and no timer: the caller passes `now` and waits until the instant it is told.
//!
//! Both ways the scheduler runs checks use it, so they cannot drift apart in semantics: a tokio
//! task per check for the kinds whose attempt is a future (`scheduler::run`), and the half-open
//! prober's driver, which runs the rounds of every `tcp_half_open` check itself
//! (`halfopen::batch`) so a grid step's checks cost no task wake-up each.

use tokio::time::Instant;

use crate::def::Timing;
use crate::result::CheckResult;
use crate::scheduler::{Grid, State, Status, Tracker};

/// What to do after an attempt.
#[derive(Debug)]
pub(crate) enum Next {
    /// The attempt failed and retries are left: the next attempt starts at this instant.
    Retry(Instant),
    /// The round is over.
    Done(Finished),
}

/// A finished round, with what the scheduler publishes about it.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The round's verdict (its last attempt).
    pub result: CheckResult,
    /// `(from, to)` when the state flipped.
    pub change: Option<(State, State)>,
    /// The MISC_CHECK weight changed (a state change may come with it or not).
    pub weight_changed: bool,
    /// State after this round.
    pub state: State,
    /// Weight after this round.
    pub weight: Option<u32>,
    /// Rounds completed, this one included.
    pub rounds: u64,
    /// When the next round's first attempt starts.
    pub next: Instant,
}

impl Finished {
    /// The status this round leaves behind.
    pub fn status(&self) -> Status {
        Status { state: self.state, last: Some(self.result.clone()), weight: self.weight, rounds: self.rounds }
    }

    /// Whether this round is worth telling watchers about, given the previous round's verdict:
    /// the state, the weight or the kind of failure changed (the first round always is). A round
    /// that only refreshes the latency and the count is not.
    pub fn notable(&self, last: Option<&CheckResult>) -> bool {
        let kind = |r: Option<&CheckResult>| r.map(|r| r.error.as_ref().map(|e| e.kind()));
        self.change.is_some() || self.weight_changed || kind(last) != kind(Some(&self.result))
    }
}

/// The rounds of one check.
#[derive(Debug, Clone)]
pub(crate) struct Rounds {
    timing: Timing,
    grid: Grid,
    tracker: Tracker,
    weight: Option<u32>,
    rounds: u64,
    /// When the current round was due (a grid step): the next is due one interval later.
    round_start: Instant,
    retries_left: u32,
}

impl Rounds {
    /// A check whose first round is due at `first` (rounded up to the grid).
    pub fn new(timing: Timing, grid: Grid, first: Instant) -> Rounds {
        let start = grid.align(first);
        Rounds {
            tracker: Tracker::new(timing.initial, timing.rise, timing.fall),
            retries_left: timing.retries,
            timing,
            grid,
            weight: None,
            rounds: 0,
            round_start: start,
        }
    }

    /// When the first attempt is due.
    pub fn first(&self) -> Instant {
        self.round_start
    }

    /// The timing knobs this runs with.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The status after the rounds so far, given the last round's verdict.
    pub fn status(&self, last: Option<CheckResult>) -> Status {
        Status { state: self.tracker.state(), last, weight: self.weight, rounds: self.rounds }
    }

    /// An attempt ended at `now` with `result`.
    pub fn attempt_done(&mut self, now: Instant, result: CheckResult) -> Next {
        if !result.is_ok() && self.retries_left > 0 {
            self.retries_left -= 1;
            return Next::Retry(self.grid.align(now + self.timing.delay_before_retry));
        }
        self.rounds += 1;
        let change = self.tracker.record(result.is_ok());
        let old_weight = self.weight;
        if result.is_ok() && result.weight.is_some() {
            self.weight = result.weight;
        }
        // The interval counts from the round's start; a round that overran starts the next one
        // now rather than bursting to catch up.
        let mut next = self.round_start + self.timing.interval;
        if next < now {
            next = now;
        }
        let next = self.grid.align(next);
        self.round_start = next;
        self.retries_left = self.timing.retries;
        Next::Done(Finished {
            result,
            change,
            weight_changed: self.weight != old_weight,
            state: self.tracker.state(),
            weight: self.weight,
            rounds: self.rounds,
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::def::Initial;
    use crate::result::{FailReason, Phase};
    use crate::scheduler::START_GRID;

    fn timing(retries: u32, rise: u32, fall: u32) -> Timing {
        Timing {
            interval: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(300),
            read_timeout: None,
            retries,
            delay_before_retry: Duration::from_millis(105),
            rise,
            fall,
            initial: Initial::Unknown,
        }
    }

    fn ok() -> CheckResult {
        CheckResult { latency: Duration::from_millis(1), error: None, weight: None }
    }

    fn bad() -> CheckResult {
        CheckResult::failed(Duration::from_millis(300), FailReason::Timeout(Phase::Connect))
    }

    fn done(n: Next) -> Finished {
        match n {
            Next::Done(f) => f,
            Next::Retry(at) => panic!("expected the round to end, got a retry at {at:?}"),
        }
    }

    #[test]
    fn retries_wait_their_delay_on_the_grid_then_the_round_fails() {
        let t0 = Instant::now();
        let grid = Grid::at(t0);
        let ms = |n| Duration::from_millis(n);
        let mut r = Rounds::new(timing(2, 1, 1), grid, t0 + ms(3));
        assert_eq!(r.first(), t0 + START_GRID, "the first start is rounded up to the grid");
        let start = r.first();
        // 300 ms timeout, then 105 ms delay: 405 ms after the start, rounded up to 410.
        match r.attempt_done(start + ms(300), bad()) {
            Next::Retry(at) => assert_eq!(at, start + ms(410)),
            n => panic!("{n:?}"),
        }
        assert!(matches!(r.attempt_done(start + ms(710), bad()), Next::Retry(_)));
        let f = done(r.attempt_done(start + ms(1010), bad()));
        assert_eq!((f.change, f.state, f.rounds), (Some((State::Unknown, State::Down)), State::Down, 1));
        assert_eq!(f.next, start + ms(1010), "the round overran its 1 s interval: the next starts now, on the grid");
        // The next round has its retries back, and succeeds at once.
        let f = done(r.attempt_done(f.next + ms(1), ok()));
        assert_eq!((f.change, f.rounds), (Some((State::Down, State::Up)), 2));
        assert_eq!(f.next, start + ms(2010), "one interval after the round's start");
    }

    #[test]
    fn rise_and_fall_count_whole_rounds_and_weights_are_kept() {
        let t0 = Instant::now();
        let mut r = Rounds::new(timing(0, 2, 2), Grid::at(t0), t0);
        let mut at = r.first();
        let mut feed = |res: CheckResult| {
            let f = done(r.attempt_done(at, res));
            at = f.next;
            f
        };
        assert_eq!(feed(ok()).change, Some((State::Unknown, State::Up)), "from unknown the first round decides");
        assert_eq!(feed(bad()).change, None);
        assert_eq!(feed(bad()).change, Some((State::Up, State::Down)));
        assert_eq!(feed(ok()).change, None);
        let f = feed(CheckResult { weight: Some(7), ..ok() });
        assert_eq!((f.change, f.weight, f.weight_changed), (Some((State::Down, State::Up)), Some(7), true));
        let f = feed(ok());
        assert_eq!((f.weight, f.weight_changed), (Some(7), false), "a round without a weight keeps the last one");
    }

    #[test]
    fn only_state_weight_or_failure_kind_changes_are_notable() {
        let t0 = Instant::now();
        let mut r = Rounds::new(timing(0, 1, 1), Grid::at(t0), t0);
        let f = done(r.attempt_done(t0, ok()));
        assert!(f.notable(None), "first verdict");
        let last = f.result.clone();
        let f = done(r.attempt_done(f.next, CheckResult { latency: Duration::from_millis(9), ..ok() }));
        assert!(!f.notable(Some(&last)), "only the latency and the count moved");
        assert_eq!(r.status(Some(f.result.clone())), f.status());
        let last = f.result.clone();
        let f = done(r.attempt_done(f.next, bad()));
        assert!(f.notable(Some(&last)), "up -> down");
        let last = f.result.clone();
        let f = done(r.attempt_done(f.next, bad()));
        assert!(!f.notable(Some(&last)), "down again, same reason");
        let last = f.result.clone();
        let f = done(r.attempt_done(f.next, CheckResult::failed(Duration::ZERO, FailReason::Refused)));
        assert!(f.notable(Some(&last)), "another reason, same state");
        let mut start_up = Rounds::new(Timing { initial: Initial::Up, ..timing(0, 1, 1) }, Grid::at(t0), t0);
        let f = done(start_up.attempt_done(t0, ok()));
        assert!(f.change.is_none() && f.notable(None), "the first round is notable even without a change");
    }
}
