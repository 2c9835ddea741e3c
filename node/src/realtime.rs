//! Real-time scheduling for corrald's latency-bound threads (`[node] realtime_priority`), the
//! counterpart of keepalived's `vrrp_rt_priority` / `checker_rt_priority`.
//!
//! Why: every rule change and every VRRP advert is a chain of short bursts on several threads
//! of several nodes (a packet in, a redb append, a reply, a netlink write). Under the default
//! scheduler each woken thread may wait behind whatever else the box runs; with SCHED_RR it
//! runs as soon as it wakes. The lab measured this on the propagation benchmark
//! (docs/BENCHMARKS.md).
//!
//! Which threads: the node's main runtime (Raft, gossip, QUIC, admin, health observer), the
//! Raft log writer, the director (netlink) and VRRP. Each sets its own policy with
//! `SCHED_RESET_ON_FORK`, so nothing it creates inherits it: the blocking pool (deferred
//! state-machine writes), checker helper threads and every child process (notify hooks,
//! MISC_CHECK and track scripts) run under the normal scheduler. A runaway real-time thread
//! cannot take a whole CPU: the kernel keeps 5 % of every second for normal tasks
//! (`kernel.sched_rt_runtime_us`, default 950000 of 1000000).

use std::sync::OnceLock;

static PRIORITY: OnceLock<Option<u8>> = OnceLock::new();

/// Records the configured priority (once, at start-up; `None` = normal scheduling) and applies
/// it to the calling thread.
pub fn init(priority: Option<u8>, thread: &str) {
    let _ = PRIORITY.set(priority);
    enter(thread);
}

/// Applies the configured priority to the calling thread, if one is configured. A failure (no
/// `CAP_SYS_NICE`, or a cgroup without a real-time budget) is logged and the thread keeps the
/// normal scheduler: the node works, only without the latency guarantee.
pub fn enter(thread: &str) {
    let Some(Some(prio)) = PRIORITY.get().copied() else { return };
    match set_rr(prio) {
        Ok(()) => tracing::debug!(thread, priority = prio, "real-time scheduling (SCHED_RR)"),
        Err(e) => tracing::warn!(
            thread,
            "[node] realtime_priority = {prio}: the {thread} thread keeps the normal scheduler: sched_setscheduler(SCHED_RR): {e} (needs CAP_SYS_NICE)"
        ),
    }
}

fn set_rr(prio: u8) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: i32::from(prio) };
    // SAFETY: sched_setscheduler reads the struct passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    /// Reads the calling thread's policy: (policy without the reset flag, priority).
    fn current() -> (i32, i32) {
        let mut p = libc::sched_param { sched_priority: 0 };
        // SAFETY: both calls only read the calling thread's state into `p`.
        let policy = unsafe { libc::sched_getscheduler(0) };
        unsafe { libc::sched_getparam(0, &mut p) };
        (policy & !libc::SCHED_RESET_ON_FORK, p.sched_priority)
    }

    /// The policy holds for the thread that set it and not for a thread it spawns (nor, by the
    /// same flag, for a child process). Needs CAP_SYS_NICE: skipped loudly without it, and a
    /// failure under CI=true.
    #[test]
    fn rr_for_the_thread_normal_for_what_it_creates() {
        let t = std::thread::spawn(|| {
            if let Err(e) = super::set_rr(7) {
                return Err(e);
            }
            let inner = std::thread::spawn(current).join().unwrap();
            Ok((current(), inner))
        });
        match t.join().unwrap() {
            Ok((mine, spawned)) => {
                assert_eq!(mine, (libc::SCHED_RR, 7));
                assert_eq!(spawned, (libc::SCHED_OTHER, 0), "a spawned thread must not inherit SCHED_RR");
            }
            Err(e) => {
                assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: cannot set SCHED_RR: {e}");
                eprintln!("SKIPPED rr_for_the_thread_normal_for_what_it_creates: {e} (needs CAP_SYS_NICE)");
            }
        }
    }
}
