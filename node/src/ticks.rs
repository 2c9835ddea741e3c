//! One shared grid for the node's periodic housekeeping.
//!
//! Each periodic loop (quorum watch, the health leader's fold, the health observer, the
//! membership loop, report gossip) used to run its own `interval`, started whenever its task
//! started, so an idle daemon woke once per loop per period: 15 wake-ups a second that found
//! nothing to do, each one a CPU woken from idle. Intervals from [`aligned`] tick at multiples
//! of their period counted from one instant per process, so loops whose periods are multiples
//! of [`GRID`] fall due at the same instants and are run in the same turn of the runtime.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The period every housekeeping loop's period is a multiple of.
pub const GRID: Duration = Duration::from_millis(250);

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// An interval ticking at the multiples of `period` since the process's first call; the first
/// tick is the next such instant (at most one period away), not at once. A late turn skips the
/// ticks it missed rather than shifting the grid.
pub fn aligned(period: Duration) -> Interval {
    let epoch = *EPOCH.get_or_init(Instant::now);
    let mut iv = tokio::time::interval_at(next_multiple(epoch, Instant::now(), period), period);
    iv.set_missed_tick_behavior(MissedTickBehavior::Skip);
    iv
}

/// The first instant after `now` that lies a whole number of `period`s after `epoch`.
fn next_multiple(epoch: Instant, now: Instant, period: Duration) -> Instant {
    let p = period.as_nanos().max(1);
    let periods = now.saturating_duration_since(epoch).as_nanos() / p + 1;
    epoch + Duration::from_nanos((periods * p).min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_multiple_lies_on_the_grid_after_now() {
        let e = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(next_multiple(e, e, ms(250)), e + ms(250));
        assert_eq!(next_multiple(e, e + ms(10), ms(250)), e + ms(250));
        assert_eq!(next_multiple(e, e + ms(250), ms(250)), e + ms(500));
        assert_eq!(next_multiple(e, e + ms(260), ms(500)), e + ms(500));
        assert_eq!(next_multiple(e, e + ms(1010), ms(500)), e + ms(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn loops_started_apart_tick_together() {
        let ms = Duration::from_millis;
        let _ = aligned(GRID);
        let epoch = *EPOCH.get().expect("set by aligned");
        // 10 ms past a point of the 500 ms grid.
        let base = next_multiple(epoch, Instant::now(), 2 * GRID);
        tokio::time::advance(base - Instant::now() + ms(10)).await;
        let mut a = aligned(GRID);
        tokio::time::advance(ms(70)).await;
        let mut b = aligned(2 * GRID);
        tokio::time::advance(ms(40)).await;
        let mut c = aligned(GRID);
        assert_eq!(a.tick().await, base + GRID);
        assert_eq!(c.tick().await, base + GRID);
        assert_eq!(b.tick().await, base + 2 * GRID);
        assert_eq!(a.tick().await, base + 2 * GRID);
        assert_eq!(c.tick().await, base + 2 * GRID);
    }
}
