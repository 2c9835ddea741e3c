//! Deadlines kept in buckets of equal instants. The prober's instants cluster: every check of a
//! grid step starts at the same instant, and their probes' deadlines fall together one connect
//! timeout later. A bucket per instant makes adding O(1) in the common case and hands a whole
//! step's entries over at once, where a binary heap of 10,000 entries paid a sift through cold
//! memory per entry (the largest user-space cost of the checker in a profile).

use std::collections::BTreeMap;

use tokio::time::Instant;

/// Entries due at instants. Entries that died (a probe settled early, a check removed) are left
/// in place and dropped when their bucket is looked at.
pub(crate) struct Timeline<T> {
    buckets: BTreeMap<Instant, Vec<T>>,
    /// Emptied buckets, kept for their allocations.
    spare: Vec<Vec<T>>,
}

impl<T> Default for Timeline<T> {
    fn default() -> Self {
        Timeline { buckets: BTreeMap::new(), spare: Vec::new() }
    }
}

impl<T> Timeline<T> {
    /// `t` is due at `at`.
    pub fn push(&mut self, at: Instant, t: T) {
        match self.buckets.get_mut(&at) {
            Some(v) => v.push(t),
            None => {
                let mut v = self.spare.pop().unwrap_or_default();
                v.push(t);
                self.buckets.insert(at, v);
            }
        }
    }

    /// The earliest instant with an entry for which `live` holds; dead entries met on the way
    /// are dropped.
    pub fn next(&mut self, mut live: impl FnMut(&T) -> bool) -> Option<Instant> {
        loop {
            let mut e = self.buckets.first_entry()?;
            let v = e.get_mut();
            if v.first().is_some_and(&mut live) {
                return Some(*e.key());
            }
            v.retain(&mut live);
            if !v.is_empty() {
                return Some(*e.key());
            }
            let v = e.remove();
            self.recycle(v);
        }
    }

    /// Moves the entries due at or before `now` to `out`, earliest instant first.
    pub fn pop_due(&mut self, now: Instant, out: &mut Vec<T>) {
        while let Some(e) = self.buckets.first_entry() {
            if *e.key() > now {
                break;
            }
            let mut v = e.remove();
            out.append(&mut v);
            self.recycle(v);
        }
    }

    fn recycle(&mut self, mut v: Vec<T>) {
        // A few hundred spare buckets cover every step of a connect timeout; more is waste, and
        // so is keeping a burst's large allocation.
        if self.spare.len() < 256 && v.capacity() <= 1024 {
            v.clear();
            self.spare.push(v);
        }
    }

    /// Entries held, dead ones included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn entries_come_out_by_instant_and_dead_ones_are_dropped() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut tl = Timeline::default();
        for (at, x) in [(20, 1), (10, 2), (20, 3), (30, 4), (10, 5)] {
            tl.push(ms(at), x);
        }
        assert_eq!(tl.next(|_| true), Some(ms(10)));
        // 2 and 5 died: the earliest live entry is at 20.
        assert_eq!(tl.next(|x| ![2, 5].contains(x)), Some(ms(20)));
        assert_eq!(tl.len(), 3, "the dead bucket is gone");
        let mut out = Vec::new();
        tl.pop_due(ms(19), &mut out);
        assert!(out.is_empty());
        tl.pop_due(ms(25), &mut out);
        out.sort();
        assert_eq!(out, [1, 3]);
        tl.pop_due(ms(30), &mut out);
        assert_eq!(out[2..], [4]);
        assert_eq!(tl.next(|_| true), None);
        tl.push(ms(40), 6);
        assert_eq!(tl.next(|_| true), Some(ms(40)), "buckets are reused");
    }
}
