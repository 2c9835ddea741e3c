//! The sans-IO core of the half-open prober: which probes are in flight, their SYNs to (re)send,
//! the replies that settle them and their deadlines. No sockets and no clock: the driver passes
//! `now`, feeds received segments to [`Core::handle_segment`], calls [`Core::handle_timeout`] at
//! [`Core::poll_timeout`], and sends what [`Core::poll_transmit`] yields (quinn-proto's shape).
//!
//! A probe is keyed by (target address, target port, our source port); a reply settles it only if
//! it acknowledges our ISN + 1, so a stale or forged segment cannot mark a backend up. The ISN is a
//! keyed hash of the key and a counter (a per-core random key), like a SYN cookie.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::timeline::Timeline;
use super::wire::{Flags, Packet, Repr};

/// When the SYN is sent again, counted from the first one, as Linux's `connect` does with its
/// 1 s initial RTO doubling (RFC 6298 §2.1): 1 s, then 3 s.
pub(crate) const RESENDS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];

/// MSS announced in our SYN: what an Ethernet path carries; the value does not matter to a
/// probe, but SYNs without MSS look odd to middleboxes.
const MSS: u16 = 1460;
/// Window announced in our SYN (Linux's initial window for a 1460 MSS).
const WINDOW: u16 = 64240;

/// How a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A SYN-ACK acknowledging our SYN: something listens. Carries SYN (first) → SYN-ACK time.
    Open(Duration),
    /// A RST acknowledging our SYN: nothing listens.
    Refused,
    /// No answer before the deadline.
    TimedOut,
    /// The SYN could not be sent (the errno of `sendmmsg`, e.g. ENETUNREACH with no route).
    SendFailed(i32),
}

/// A probe registered with [`Core::start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Id {
    idx: u32,
    gen: u32,
}

/// Why a probe could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StartError {
    /// Every reserved source port already has a probe to this very target in flight.
    #[error("all {0} reserved source ports are busy probing this target")]
    PortsBusy(usize),
    /// No reserved port of this address family (the family's socket could not be opened).
    #[error("no half-open socket for this address family")]
    NoFamily,
}

/// A SYN to send: to `dst`, bytes ready (checksummed for IPv4; IPv6's is left to the kernel).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transmit {
    pub id: Id,
    pub dst: SocketAddr,
    pub len: usize,
    pub bytes: [u8; 24],
}

impl Transmit {
    pub fn payload(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Counters for segments that settled nothing: never an error, but worth seeing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// SYNs handed out for sending, resends included.
    pub syns: u64,
    /// Resent SYNs.
    pub resent: u64,
    /// Segments that settled a probe.
    pub matched: u64,
    /// Well-formed segments for no probe in flight, or with the wrong acknowledgment number
    /// (late answers after a timeout, stray RSTs).
    pub unmatched: u64,
    /// Datagrams that were not a TCP header.
    pub malformed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Resend(u8),
    Deadline,
}

#[derive(Default)]
struct Slot {
    gen: u32,
    busy: bool,
    target: Option<SocketAddr>,
    src: Option<IpAddr>,
    sport: u16,
    isn: u32,
    sent: Option<Instant>,
    outcome: Option<Outcome>,
    waker: Option<Waker>,
    /// Set for a probe started with [`Core::start_tagged`]: its outcome goes to
    /// [`Core::take_settled`] with this tag, and its slot is freed then, instead of waking a waiter.
    tag: Option<u32>,
}

/// The probes in flight for one prober (all address families).
pub(crate) struct Core {
    key: std::hash::RandomState,
    counter: u64,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Probes by (target, our port). Fx rather than SipHash: only our own targets are inserted,
    /// so segments from the network can look up but not build a colliding chain.
    by_key: HashMap<(SocketAddr, u16), u32, rustc_hash::FxBuildHasher>,
    timers: Timeline<(u32, u32, Timer)>,
    /// Reused by [`Core::handle_timeout`].
    due: Vec<(u32, u32, Timer)>,
    tx: Vec<(u32, u32)>,
    ports_v4: Vec<u16>,
    ports_v6: Vec<u16>,
    woken: Vec<Waker>,
    settled: Vec<(u32, Id, Outcome)>,
    pub counters: Counters,
}

impl Core {
    /// A core that sends from these reserved source ports (empty: that family is unavailable).
    pub fn new(ports_v4: Vec<u16>, ports_v6: Vec<u16>) -> Core {
        Core {
            key: std::hash::RandomState::new(),
            counter: 0,
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::default(),
            timers: Timeline::default(),
            due: Vec::new(),
            tx: Vec::new(),
            ports_v4,
            ports_v6,
            woken: Vec::new(),
            settled: Vec::new(),
            counters: Counters::default(),
        }
    }

    #[cfg(test)]
    fn live(&self, id: Id) -> Option<&Slot> {
        self.slots.get(id.idx as usize).filter(|s| s.busy && s.gen == id.gen)
    }

    fn live_mut(&mut self, idx: u32, gen: u32) -> Option<&mut Slot> {
        self.slots.get_mut(idx as usize).filter(|s| s.busy && s.gen == gen)
    }

    /// Register a probe of `target` from `src` (the route's source address) that times out at
    /// `deadline`, and queue its SYN. The source port rotates over the pool so consecutive rounds
    /// to one backend use different 4-tuples (a backend still holding the previous round's
    /// half-open entry, if our RST was lost, is not confused by a new ISN on the same tuple).
    pub fn start(&mut self, now: Instant, target: SocketAddr, src: IpAddr, deadline: Instant) -> Result<Id, StartError> {
        self.start_inner(now, target, src, deadline, None)
    }

    /// [`Core::start`] for a probe whose outcome is collected with [`Core::take_settled`] under
    /// `tag` rather than polled with [`Core::poll_outcome`].
    pub fn start_tagged(&mut self, now: Instant, target: SocketAddr, src: IpAddr, deadline: Instant, tag: u32) -> Result<Id, StartError> {
        self.start_inner(now, target, src, deadline, Some(tag))
    }

    fn start_inner(&mut self, now: Instant, target: SocketAddr, src: IpAddr, deadline: Instant, tag: Option<u32>) -> Result<Id, StartError> {
        let pool = if target.is_ipv4() { &self.ports_v4 } else { &self.ports_v6 };
        if pool.is_empty() {
            return Err(StartError::NoFamily);
        }
        let n = pool.len();
        // Each target's probes move over the pool from round to round (a keyed hash of target
        // and counter picks the first port to try), whatever the number of targets.
        // One keyed hash per probe: its high half picks the first port, its low half is the ISN
        // (unique per probe in flight on a 4-tuple, unpredictable off path).
        self.counter = self.counter.wrapping_add(1);
        let h = self.key.hash_one((target, self.counter));
        let first = (h >> 32) as usize;
        let sport = (0..n).map(|k| pool[first.wrapping_add(k) % n]).find(|p| !self.by_key.contains_key(&(target, *p))).ok_or(StartError::PortsBusy(n))?;
        let isn = h as u32;
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[idx as usize];
        s.busy = true;
        s.target = Some(target);
        s.src = Some(src);
        s.sport = sport;
        s.isn = isn;
        s.sent = Some(now);
        s.outcome = None;
        s.waker = None;
        s.tag = tag;
        let gen = s.gen;
        self.by_key.insert((target, sport), idx);
        self.tx.push((idx, gen));
        self.timers.push(deadline, (idx, gen, Timer::Deadline));
        for (i, after) in RESENDS.iter().enumerate() {
            if now + *after < deadline {
                self.timers.push(now + *after, (idx, gen, Timer::Resend(i as u8)));
            }
        }
        Ok(Id { idx, gen })
    }

    /// The next SYN to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        while let Some((idx, gen)) = self.tx.pop() {
            let Some(s) = self.live_mut(idx, gen).filter(|s| s.outcome.is_none()) else { continue };
            let (Some(dst), Some(src)) = (s.target, s.src) else { continue };
            let r = Repr { src_port: s.sport, dst_port: dst.port(), seq: s.isn, ack: None, flags: Flags(Flags::SYN), window: WINDOW, mss: Some(MSS) };
            let mut bytes = [0u8; 24];
            let len = r.buffer_len();
            r.emit(&mut Packet::new_unchecked(&mut bytes[..len]), dst.is_ipv4().then_some((src, dst.ip())));
            self.counters.syns += 1;
            return Some(Transmit { id: Id { idx, gen }, dst, len, bytes });
        }
        None
    }

    fn settle(&mut self, idx: u32, outcome: Outcome) {
        let s = &mut self.slots[idx as usize];
        s.outcome = Some(outcome);
        if let Some(w) = s.waker.take() {
            self.woken.push(w);
        }
        if let Some(t) = s.target {
            self.by_key.remove(&(t, s.sport));
        }
        if let Some(tag) = s.tag {
            let id = Id { idx, gen: s.gen };
            self.settled.push((tag, id, outcome));
            self.release(id);
        }
    }

    /// Whether tagged probes settled since [`Core::take_settled`] was last called.
    pub fn has_settled(&self) -> bool {
        !self.settled.is_empty()
    }

    /// Tagged probes settled since the last call, with their outcomes (their slots are free).
    pub fn take_settled(&mut self, into: &mut Vec<(u32, Id, Outcome)>) {
        into.append(&mut self.settled);
    }

    /// A datagram's TCP header from `from`. Settles the probe it answers, if any; anything else
    /// is counted and ignored.
    pub fn handle_segment(&mut self, now: Instant, from: IpAddr, tcp: &[u8]) {
        let Ok(repr) = Packet::new_checked(tcp).and_then(|p| Repr::parse(&p)) else {
            self.counters.malformed += 1;
            return;
        };
        let key = (SocketAddr::new(from, repr.src_port), repr.dst_port);
        let Some(&idx) = self.by_key.get(&key) else {
            self.counters.unmatched += 1;
            return;
        };
        let s = &self.slots[idx as usize];
        let acks_us = repr.ack == Some(s.isn.wrapping_add(1));
        let outcome = if repr.flags.has(Flags::RST) && acks_us {
            Outcome::Refused
        } else if repr.flags.has(Flags::SYN) && acks_us {
            Outcome::Open(s.sent.map_or(Duration::ZERO, |t| now.saturating_duration_since(t)))
        } else {
            self.counters.unmatched += 1;
            return;
        };
        self.counters.matched += 1;
        self.settle(idx, outcome);
    }

    /// The SYN of `id` could not be sent: the probe ends with that error (a probe settled or
    /// released meanwhile is left alone).
    pub fn send_failed(&mut self, id: Id, errno: i32) {
        if self.live_mut(id.idx, id.gen).is_some_and(|s| s.outcome.is_none()) {
            self.settle(id.idx, Outcome::SendFailed(errno));
        }
    }

    /// The earliest resend or deadline still pending.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let slots = &self.slots;
        self.timers.next(|&(idx, gen, _)| slots.get(idx as usize).is_some_and(|s| s.busy && s.gen == gen && s.outcome.is_none()))
    }

    /// Resend the SYNs and expire the probes due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.timers.pop_due(now, &mut due);
        for (idx, gen, timer) in due.drain(..) {
            if self.live_mut(idx, gen).is_none_or(|s| s.outcome.is_some()) {
                continue;
            }
            match timer {
                Timer::Resend(_) => {
                    self.counters.resent += 1;
                    self.tx.push((idx, gen));
                }
                Timer::Deadline => self.settle(idx, Outcome::TimedOut),
            }
        }
        self.due = due;
    }

    /// The outcome of `id` once settled (then the slot is freed), else remember `waker`.
    pub fn poll_outcome(&mut self, id: Id, waker: &Waker) -> Option<Outcome> {
        let s = self.live_mut(id.idx, id.gen)?;
        if let Some(o) = s.outcome {
            self.release(id);
            return Some(o);
        }
        match &s.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => s.waker = Some(waker.clone()),
        }
        None
    }

    /// Forget `id` (its waiter is gone).
    pub fn release(&mut self, id: Id) {
        let Some(s) = self.slots.get_mut(id.idx as usize).filter(|s| s.busy && s.gen == id.gen) else { return };
        if s.outcome.is_none() {
            if let Some(t) = s.target {
                self.by_key.remove(&(t, s.sport));
            }
        }
        *s = Slot { gen: s.gen.wrapping_add(1), ..Slot::default() };
        self.free.push(id.idx);
    }

    /// Wakers of probes settled since the last call.
    pub fn take_woken(&mut self, into: &mut Vec<Waker>) {
        into.append(&mut self.woken);
    }

    /// Probes registered and not yet released.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.busy).count()
    }

    #[cfg(test)]
    fn probe(&self, id: Id) -> (u16, u32) {
        let s = self.live(id).unwrap();
        (s.sport, s.isn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: [u8; 4] = [192, 0, 2, 1];

    fn target() -> SocketAddr {
        "198.51.100.7:80".parse().unwrap()
    }

    fn reply(core: &Core, id: Id, flags: u8, ack_off: u32) -> Vec<u8> {
        let (sport, isn) = core.probe(id);
        let r = Repr { src_port: 80, dst_port: sport, seq: 1, ack: Some(isn.wrapping_add(ack_off)), flags: Flags(flags), window: 0, mss: None };
        let mut b = vec![0; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut b[..]), None);
        b
    }

    fn outcome(core: &mut Core, id: Id) -> Option<Outcome> {
        core.poll_outcome(id, std::task::Waker::noop())
    }

    #[test]
    fn syn_ack_acking_our_isn_is_open_with_its_latency() {
        let t0 = Instant::now();
        let mut c = Core::new(vec![40000, 40001], vec![]);
        let id = c.start(t0, target(), SRC.into(), t0 + Duration::from_secs(5)).unwrap();
        let syn = c.poll_transmit().unwrap();
        assert!(c.poll_transmit().is_none());
        let p = Packet::new_checked(syn.payload()).unwrap();
        let r = Repr::parse(&p).unwrap();
        assert_eq!((r.dst_port, r.flags, r.ack, r.mss), (80, Flags(Flags::SYN), None, Some(MSS)));
        assert!(p.verify_checksum(SRC.into(), target().ip()), "IPv4 SYNs carry their checksum");
        assert_eq!(syn.dst, target());
        // Wrong ack: ignored and counted.
        c.handle_segment(t0, target().ip(), &reply(&c, id, Flags::SYN, 2));
        assert_eq!(outcome(&mut c, id), None);
        assert_eq!(c.counters.unmatched, 1);
        // Right ack from another address: not ours.
        c.handle_segment(t0, "198.51.100.8".parse().unwrap(), &reply(&c, id, Flags::SYN, 1));
        assert_eq!(c.counters.unmatched, 2);
        c.handle_segment(t0 + Duration::from_millis(3), target().ip(), &reply(&c, id, Flags::SYN, 1));
        assert_eq!(outcome(&mut c, id), Some(Outcome::Open(Duration::from_millis(3))));
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.poll_timeout(), None, "no timers left for a settled probe");
    }

    #[test]
    fn rst_acking_our_isn_is_refused() {
        let t0 = Instant::now();
        let mut c = Core::new(vec![40000], vec![]);
        let id = c.start(t0, target(), SRC.into(), t0 + Duration::from_secs(1)).unwrap();
        c.handle_segment(t0, target().ip(), &reply(&c, id, Flags::RST, 1));
        assert_eq!(outcome(&mut c, id), Some(Outcome::Refused));
    }

    #[test]
    fn syn_is_resent_at_1_and_3_s_then_times_out() {
        let t0 = Instant::now();
        let mut c = Core::new(vec![40000], vec![]);
        let id = c.start(t0, target(), SRC.into(), t0 + Duration::from_secs(5)).unwrap();
        let first = c.poll_transmit().unwrap();
        let mut at = Vec::new();
        while let Some(t) = c.poll_timeout() {
            c.handle_timeout(t);
            if let Some(x) = c.poll_transmit() {
                assert_eq!(x.bytes, first.bytes, "the same SYN, same ISN");
                at.push(t - t0);
            }
        }
        assert_eq!(at, [Duration::from_secs(1), Duration::from_secs(3)]);
        assert_eq!(outcome(&mut c, id), Some(Outcome::TimedOut));
        assert_eq!(c.counters.resent, 2);
        // A timeout of 1 s sends no resend at all.
        let id = c.start(t0, target(), SRC.into(), t0 + Duration::from_secs(1)).unwrap();
        c.poll_transmit().unwrap();
        c.handle_timeout(t0 + Duration::from_secs(1));
        assert!(c.poll_transmit().is_none());
        assert_eq!(outcome(&mut c, id), Some(Outcome::TimedOut));
    }

    #[test]
    fn ports_rotate_and_a_busy_pool_is_an_error() {
        let t0 = Instant::now();
        let mut c = Core::new(vec![40000, 40001], vec![]);
        let d = t0 + Duration::from_secs(1);
        let a = c.start(t0, target(), SRC.into(), d).unwrap();
        let b = c.start(t0, target(), SRC.into(), d).unwrap();
        assert_ne!(c.probe(a).0, c.probe(b).0);
        assert_eq!(c.start(t0, target(), SRC.into(), d), Err(StartError::PortsBusy(2)));
        assert_eq!(c.start(t0, "[2001:db8::1]:80".parse().unwrap(), SRC.into(), d), Err(StartError::NoFamily));
        c.release(a);
        assert!(c.start(t0, target(), SRC.into(), d).is_ok(), "a released probe frees its port");
    }

    #[test]
    fn a_send_failure_ends_only_its_probe() {
        let t0 = Instant::now();
        let mut c = Core::new(vec![40000], vec![]);
        let d = t0 + Duration::from_secs(1);
        let a = c.start(t0, target(), SRC.into(), d).unwrap();
        let b = c.start(t0, "198.51.100.8:80".parse().unwrap(), SRC.into(), d).unwrap();
        let ta = std::iter::from_fn(|| c.poll_transmit()).find(|t| t.dst == target()).unwrap();
        c.send_failed(ta.id, libc::ENETUNREACH);
        assert_eq!(outcome(&mut c, a), Some(Outcome::SendFailed(libc::ENETUNREACH)));
        assert_eq!(outcome(&mut c, b), None);
        c.send_failed(ta.id, libc::ENETUNREACH); // stale id: nothing happens
        assert_eq!(outcome(&mut c, b), None);
    }

    #[test]
    fn garbage_is_counted_never_a_panic() {
        let t0 = Instant::now();
        let mut c = Core::new(vec![40000], vec![]);
        let _ = c.start(t0, target(), SRC.into(), t0 + Duration::from_secs(1)).unwrap();
        for n in 0..30 {
            c.handle_segment(t0, target().ip(), &vec![0xff; n]);
        }
        assert!(c.counters.malformed >= 20);
        assert_eq!(c.counters.matched, 0);
    }
}
