//! The rounds of every `tcp_half_open` check a scheduler runs, run by the prober's driver itself
//! instead of a tokio task per check.
//!
//! A half-open attempt is a SYN in the core's table: starting it needs no future and ending it is
//! a table entry settling. With a task per check, each attempt cost two task wake-ups (the grid
//! step, the reply), a trip through the steps timer and a status broadcast; at 10,000 checks a
//! second that was most of the checker's user-space time. Here the driver keeps one heap of due
//! instants for all checks: at a grid step it starts every due check's probe in one pass (their
//! SYNs leave in the same `sendmmsg`), and when replies or deadlines settle probes it feeds the
//! outcomes to each check's [`Rounds`] in the same pass.
//!
//! Memory is what such a pass costs: each check is visited once a second, so everything it
//! touches is cold. A round therefore stays inside the table (its status is read from here on
//! demand, its counts are summed per pass and added to the scheduler's counters at once); only a
//! *notable* round (state, weight or kind of failure changed) leaves it, as a [`Report`] published
//! after the driver lets go of the table lock (publishing may take the scheduler's lock, which
//! is held while checks are added).

use std::io;
use std::sync::Arc;

use tokio::time::Instant;

use super::core::{Core, Id, Outcome};
use super::timeline::Timeline;
use super::HalfOpenProbe;
use crate::result::{CheckResult, FailReason, Phase};
use crate::rounds::{Finished, Next, Rounds};
use crate::scheduler::Status;
use crate::stats::{Delta, Stats};

/// Where a check's notable rounds go (the scheduler's status watchers, state-change counters and
/// events).
pub(crate) trait RoundSink: Send + Sync {
    /// A round changed the state, the weight or the kind of failure (see [`Finished::notable`]).
    fn notable(&self, f: &Finished);
}

/// A notable round, published by the driver once the table is unlocked.
pub(crate) struct Report(Arc<dyn RoundSink>, Finished);

impl Report {
    pub(crate) fn publish(self) {
        self.0.notable(&self.1);
    }
}

struct Check {
    probe: HalfOpenProbe,
    rounds: Rounds,
    sink: Arc<dyn RoundSink>,
    /// The attempt in flight: when it started and its probe.
    attempt: Option<(Instant, Id)>,
    /// The last round's verdict.
    last: Option<CheckResult>,
}

#[derive(Default)]
struct Slot {
    gen: u32,
    check: Option<Check>,
}

/// A check registered with [`Checks::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckId {
    idx: u32,
    gen: u32,
}

/// The half-open checks of one prober.
#[derive(Default)]
pub(crate) struct Checks {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// When each check's next attempt is due: (slot, generation). Entries of removed checks stay
    /// until they surface and are skipped.
    due: Timeline<(u32, u32)>,
    /// Reused buffers.
    settled: Vec<(u32, Id, Outcome)>,
    starting: Vec<(u32, u32)>,
    /// The scheduler's counters, and what this pass adds to them.
    stats: Option<Arc<Stats>>,
    delta: Delta,
}

impl Checks {
    /// Run `probe`'s rounds as `rounds` says, counting in `stats` (one set for all checks of a
    /// prober: its scheduler's) and reporting notable rounds to `sink`.
    pub fn add(&mut self, probe: HalfOpenProbe, rounds: Rounds, sink: Arc<dyn RoundSink>, stats: &Arc<Stats>) -> CheckId {
        if self.stats.is_none() {
            self.stats = Some(stats.clone());
        }
        let idx = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            (self.slots.len() - 1) as u32
        });
        let slot = &mut self.slots[idx as usize];
        self.due.push(rounds.first(), (idx, slot.gen));
        slot.check = Some(Check { probe, rounds, sink, attempt: None, last: None });
        CheckId { idx, gen: slot.gen }
    }

    /// Stop `id` (its probe in flight, if any, is forgotten). A stale id does nothing.
    pub fn remove(&mut self, id: CheckId, core: &mut Core) {
        let Some(slot) = self.slots.get_mut(id.idx as usize).filter(|s| s.gen == id.gen && s.check.is_some()) else { return };
        if let Some((_, probe)) = slot.check.take().and_then(|c| c.attempt) {
            core.release(probe);
        }
        slot.gen = slot.gen.wrapping_add(1);
        self.free.push(id.idx);
    }

    /// The status of `id` after its rounds so far.
    pub fn status(&self, id: CheckId) -> Option<Status> {
        let c = self.slots.get(id.idx as usize).filter(|s| s.gen == id.gen)?.check.as_ref()?;
        Some(c.rounds.status(c.last.clone()))
    }

    /// Checks registered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// When the earliest check is due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let slots = &self.slots;
        self.due.next(|&(idx, gen)| slots[idx as usize].gen == gen && slots[idx as usize].check.is_some())
    }

    /// Feed the probes the core settled to their checks, then start the probes of every check due
    /// at `now` (their SYNs are then in the core's transmit queue). What the rounds produced is
    /// appended to `out`.
    pub fn handle(&mut self, now: Instant, core: &mut Core, out: &mut Vec<Report>) {
        let mut settled = std::mem::take(&mut self.settled);
        core.take_settled(&mut settled);
        for (tag, id, outcome) in settled.drain(..) {
            let Some(c) = self.slots.get_mut(tag as usize).and_then(|s| s.check.as_mut()) else { continue };
            let Some((start, _)) = c.attempt.filter(|(_, a)| *a == id) else { continue };
            c.attempt = None;
            let latency = now.saturating_duration_since(start);
            let result = match outcome {
                Outcome::Open(_) => CheckResult { latency, error: None, weight: None },
                Outcome::Refused => CheckResult::failed(latency, FailReason::Refused),
                Outcome::TimedOut => {
                    c.probe.forget_source();
                    CheckResult::failed(latency, FailReason::Timeout(Phase::Connect))
                }
                Outcome::SendFailed(errno) => CheckResult::failed(latency, FailReason::from_io(&io::Error::from_raw_os_error(errno), Phase::Connect)),
            };
            let gen = self.slots[tag as usize].gen;
            self.finish(tag, gen, now, result, out);
        }
        self.settled = settled;
        let mut starting = std::mem::take(&mut self.starting);
        self.due.pop_due(now, &mut starting);
        for (idx, gen) in starting.drain(..) {
            let Some(c) = self.slots.get_mut(idx as usize).filter(|s| s.gen == gen).and_then(|s| s.check.as_mut()) else { continue };
            if c.attempt.is_some() {
                continue; // cannot happen: a check is due only between attempts
            }
            let target = c.probe.target;
            let failed = match c.probe.source.get(now, target.ip()) {
                Err(e) => FailReason::from_io(&e, Phase::Connect),
                Ok(src) => match core.start_tagged(now, target, src, now + c.rounds.timing().connect_timeout, idx) {
                    Ok(id) => {
                        c.attempt = Some((now, id));
                        continue;
                    }
                    Err(e) => FailReason::Io(e.to_string()),
                },
            };
            // Failed before a SYN could be queued: the attempt ends now.
            self.finish(idx, gen, now, CheckResult::failed(std::time::Duration::ZERO, failed), out);
        }
        self.starting = starting;
        if let Some(stats) = &self.stats {
            stats.add(&mut self.delta);
        }
    }

    fn finish(&mut self, idx: u32, gen: u32, now: Instant, result: CheckResult, out: &mut Vec<Report>) {
        let Some(c) = self.slots[idx as usize].check.as_mut() else { return };
        self.delta.attempt(&result);
        match c.rounds.attempt_done(now, result) {
            Next::Retry(at) => self.due.push(at, (idx, gen)),
            Next::Done(f) => {
                self.due.push(f.next, (idx, gen));
                self.delta.round(&f.result);
                let notable = f.notable(c.last.as_ref());
                c.last = Some(f.result.clone());
                if notable {
                    out.push(Report(c.sink.clone(), f));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::def::{Initial, TcpHalfOpenCheck, Timing};
    use crate::scheduler::{Grid, State, START_GRID};

    /// Records a check's notable rounds.
    #[derive(Default)]
    struct Record {
        rounds: Mutex<Vec<(State, u64, Option<FailReason>)>>,
    }

    impl RoundSink for Record {
        fn notable(&self, f: &Finished) {
            self.rounds.lock().unwrap().push((f.state, f.rounds, f.result.error.clone()));
        }
    }

    fn counts(stats: &Stats) -> (u64, u64, u64, u64) {
        let s = stats.snapshot(0, 0);
        (s.attempts, s.attempts_failed, s.rounds, s.rounds_failed)
    }

    fn timing() -> Timing {
        Timing {
            interval: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            read_timeout: None,
            retries: 1,
            delay_before_retry: Duration::from_millis(100),
            rise: 1,
            fall: 1,
            initial: Initial::Unknown,
        }
    }

    fn probe(target: &str) -> HalfOpenProbe {
        let p = HalfOpenProbe::new(&TcpHalfOpenCheck { target: target.parse().unwrap(), timing: timing() }).unwrap();
        p.set_source("192.0.2.1".parse().unwrap());
        p
    }

    fn publish(out: &mut Vec<Report>) {
        for r in out.drain(..) {
            r.publish();
        }
    }

    /// A SYN-ACK for the SYN `t` carries.
    fn syn_ack(syn: &super::super::core::Transmit, rst: bool) -> Vec<u8> {
        use super::super::wire::{Flags, Packet, Repr};
        let p = Packet::new_checked(syn.payload()).unwrap();
        let s = Repr::parse(&p).unwrap();
        let flags = if rst { Flags::RST } else { Flags::SYN }; // ACK comes with `ack`
        let r = Repr { src_port: s.dst_port, dst_port: s.src_port, seq: 1, ack: Some(s.seq.wrapping_add(1)), flags: Flags(flags), window: 0, mss: None };
        let mut b = vec![0; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut b[..]), None);
        b
    }

    /// The whole life of a check through the table, on an injected clock: due checks start in
    /// one pass, a reply ends the attempt, a timeout is retried after its delay on the grid, the
    /// round's verdict is counted and readable, notable rounds reach the sink (unchanged ones do
    /// not), and a removed check neither starts nor reports again.
    #[test]
    fn due_checks_start_together_and_their_outcomes_drive_the_rounds() {
        let t0 = Instant::now();
        let grid = Grid::at(t0);
        let stats = Arc::new(Stats::default());
        let mut core = Core::new(vec![40000, 40001], vec![]);
        let mut checks = Checks::default();
        let (a, b) = (Arc::new(Record::default()), Arc::new(Record::default()));
        let ida = checks.add(probe("198.51.100.7:80"), Rounds::new(timing(), grid, t0 + Duration::from_millis(3)), a.clone(), &stats);
        let idb = checks.add(probe("198.51.100.8:80"), Rounds::new(timing(), grid, t0 + Duration::from_millis(7)), b.clone(), &stats);
        assert_eq!(checks.poll_timeout(), Some(t0 + START_GRID), "both due at the same grid step");
        assert_eq!(checks.status(ida).map(|s| (s.state, s.rounds)), Some((State::Unknown, 0)));
        let mut out = Vec::new();
        let step = t0 + START_GRID;
        checks.handle(step - Duration::from_millis(1), &mut core, &mut out);
        assert!(core.poll_transmit().is_none(), "nothing is due before the step");
        checks.handle(step, &mut core, &mut out);
        let syns: Vec<_> = std::iter::from_fn(|| core.poll_transmit()).collect();
        assert_eq!(syns.len(), 2, "both checks' SYNs queued in one pass");
        assert_eq!(checks.poll_timeout(), None, "nothing is due while both attempts are in flight");
        assert_eq!(core.poll_timeout(), Some(step + Duration::from_millis(500)), "the connect timeout");

        // a answers 2 ms later: up, next round one interval after the step.
        let ip_a: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        let sa = syns.iter().find(|s| s.dst.ip() == ip_a).unwrap();
        core.handle_segment(step + Duration::from_millis(2), sa.dst.ip(), &syn_ack(sa, false));
        checks.handle(step + Duration::from_millis(2), &mut core, &mut out);
        publish(&mut out);
        assert_eq!(*a.rounds.lock().unwrap(), vec![(State::Up, 1, None)]);
        let st = checks.status(ida).unwrap();
        assert_eq!((st.state, st.rounds, st.last.map(|r| r.latency)), (State::Up, 1, Some(Duration::from_millis(2))));
        assert_eq!(counts(&stats), (1, 0, 1, 0));
        assert_eq!(checks.poll_timeout(), Some(step + Duration::from_secs(1)));

        // b never answers: timed out at 500 ms, retried 100 ms later (on the grid), refused.
        let deadline = step + Duration::from_millis(500);
        core.handle_timeout(deadline);
        checks.handle(deadline, &mut core, &mut out);
        publish(&mut out);
        assert!(b.rounds.lock().unwrap().is_empty(), "one retry left: the round goes on");
        assert_eq!(counts(&stats), (2, 1, 1, 0), "the failed attempt is counted");
        let retry = grid.align(deadline + Duration::from_millis(100));
        assert_eq!(checks.poll_timeout(), Some(retry));
        checks.handle(retry, &mut core, &mut out);
        let syn = core.poll_transmit().expect("the retry's SYN");
        core.handle_segment(retry, syn.dst.ip(), &syn_ack(&syn, true));
        checks.handle(retry, &mut core, &mut out);
        publish(&mut out);
        assert_eq!(*b.rounds.lock().unwrap(), vec![(State::Down, 1, Some(FailReason::Refused))]);
        assert_eq!(counts(&stats), (3, 2, 2, 1));
        assert_eq!(checks.status(idb).unwrap().last.unwrap().error, Some(FailReason::Refused));

        // a's second round answers like the first: counted and readable, not reported.
        let second = step + Duration::from_secs(1);
        checks.handle(second, &mut core, &mut out);
        let syn = std::iter::from_fn(|| core.poll_transmit()).find(|s| s.dst.ip() == ip_a).unwrap();
        core.handle_segment(second + Duration::from_millis(5), syn.dst.ip(), &syn_ack(&syn, false));
        checks.handle(second + Duration::from_millis(5), &mut core, &mut out);
        assert!(out.is_empty(), "an unchanged round is not published");
        assert_eq!(checks.status(ida).unwrap().rounds, 2);
        assert_eq!(checks.status(ida).unwrap().last.unwrap().latency, Duration::from_millis(5));

        // a is removed while its third round is in flight: its probe is released, and it never
        // reports or counts again.
        checks.handle(step + Duration::from_secs(2), &mut core, &mut out);
        assert!(core.poll_transmit().is_some());
        checks.remove(ida, &mut core);
        checks.remove(ida, &mut core); // twice: nothing happens
        assert_eq!(checks.len(), 1);
        assert!(checks.status(ida).is_none());
        assert_eq!(core.in_flight(), 1, "a's probe is released (b's retry is in flight)");
        for t in 3..6 {
            core.handle_timeout(step + Duration::from_secs(t));
            checks.handle(step + Duration::from_secs(t), &mut core, &mut out);
            while core.poll_transmit().is_some() {}
        }
        publish(&mut out);
        assert_eq!(a.rounds.lock().unwrap().len(), 1, "a removed check reports nothing");
        assert!(b.rounds.lock().unwrap().len() >= 2, "b goes on (its failure went from refused to timed out: notable)");
    }

    /// A check whose probe cannot start fails its attempt at once (no SYN), and the round goes
    /// on as with any failure.
    #[test]
    fn an_attempt_that_cannot_start_fails_at_once() {
        let t0 = Instant::now();
        let stats = Arc::new(Stats::default());
        let mut core = Core::new(vec![40000], vec![]); // no IPv6 ports
        let mut checks = Checks::default();
        let rec = Arc::new(Record::default());
        let p = HalfOpenProbe::new(&TcpHalfOpenCheck { target: "[2001:db8::1]:80".parse().unwrap(), timing: timing() }).unwrap();
        p.set_source("2001:db8::2".parse().unwrap());
        let id = checks.add(p, Rounds::new(timing(), Grid::at(t0), t0), rec.clone(), &stats);
        let mut out = Vec::new();
        checks.handle(t0, &mut core, &mut out);
        assert!(core.poll_transmit().is_none());
        assert_eq!(counts(&stats), (1, 1, 0, 0));
        let retry = checks.poll_timeout().expect("the retry is scheduled");
        checks.handle(retry, &mut core, &mut out);
        publish(&mut out);
        let st = checks.status(id).unwrap();
        assert!(matches!(&st.last.unwrap().error, Some(FailReason::Io(m)) if m.contains("no half-open socket")));
        assert_eq!(rec.rounds.lock().unwrap().len(), 1);
    }
}
