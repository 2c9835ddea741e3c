//! systemd's service protocol (sd_notify(3)), so a `Type=notify` unit works as keepalived's
//! does: `systemctl start` returns once corrald answers on its admin socket and its VRRP
//! instances run, `systemctl reload` waits for the SIGHUP's outcome (a refused file is shown in
//! `systemctl status`, not only in the log), `STATUS=` says what the node is doing, and with
//! `WatchdogSec=` a daemon whose runtimes hang is restarted. Started any other way (no
//! `NOTIFY_SOCKET`), every call here does nothing and nothing runs in the background.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::api::{RaftStatus, VrrpInstanceStatus};
use crate::director::DirectorStatus;

/// Variables of systemd's protocol that must not reach the scripts corrald runs: a script
/// calling `systemd-notify` would speak for the daemon.
pub const ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// True when a service manager listens (corrald was started by a `Type=notify` unit).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// systemd's watchdog period (`WatchdogSec=`), when corrald runs under it.
pub fn watchdog() -> Option<Duration> {
    if enabled() {
        sd_notify::watchdog_enabled()
    } else {
        None
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "telling the service manager ({states:?})");
    }
}

/// Startup is over: the admin socket answers and the VRRP instances run.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A SIGHUP is being handled; [`reloaded`] follows. `MONOTONIC_USEC` lets systemd ≥ 253
/// (`Type=notify-reload`) tell this reload from an earlier one.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(t) = NotifyState::monotonic_usec_now() {
        states.push(t);
    }
    send(&states);
}

/// The SIGHUP has been dealt with: applied (`STATUS=` then shows the new state), or refused
/// with the running configuration kept. Either way the daemon is ready again; a refusal stays
/// in `STATUS=` until the node's state next changes.
pub fn reloaded(outcome: &Result<(), String>, sources: &Sources) {
    match outcome {
        Ok(()) => send(&[NotifyState::Ready, NotifyState::Status(&sources.line())]),
        Err(e) => send(&[NotifyState::Ready, NotifyState::Status(&format!("reload refused, running configuration kept: {e}"))]),
    }
}

/// Shutdown has begun (mastership is being released).
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: releasing mastership")]);
}

/// The one-line `STATUS=` text: VRRP states, the cluster's view and what the director applied.
pub fn status_line(vrrp: &[VrrpInstanceStatus], raft: Option<&RaftStatus>, members: usize, director: Option<&DirectorStatus>) -> String {
    let mut parts = Vec::new();
    if !vrrp.is_empty() {
        let states: Vec<String> = vrrp.iter().map(|i| format!("{} {}", i.name, i.state)).collect();
        parts.push(format!("VRRP {}", states.join(", ")));
    }
    if let Some(r) = raft {
        match &r.stopped {
            Some(why) => parts.push(format!("{why}: restart corrald once fixed")),
            None => parts.push(format!("{} of {members} members, leader {}", r.role, r.leader.as_deref().unwrap_or("none"))),
        }
    }
    if let Some(d) = director {
        let mut s = format!("rules revision {} in IPVS", d.applied_revision);
        if let Some(e) = &d.last_error {
            s.push_str(&format!(" (last error: {e})"));
        }
        parts.push(s);
    }
    if parts.is_empty() {
        "running".into()
    } else {
        parts.join("; ")
    }
}

/// Proof of life of the VRRP thread, which runs its own runtime: it stores the time of its
/// latest loop turn, and the watchdog pings systemd only while that is recent.
#[derive(Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    /// Milliseconds since `epoch` of the latest beat.
    pub fn beat(&self, epoch: Instant) {
        self.0.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn age(&self, epoch: Instant) -> Duration {
        Duration::from_millis((epoch.elapsed().as_millis() as u64).saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// How often the VRRP thread beats when the watchdog is on, so a quiet thread (no instance, no
/// packets) still shows it is alive.
pub fn beat_interval(watchdog: Duration) -> Duration {
    (watchdog / 4).max(Duration::from_millis(50))
}

/// Whether the watchdog may be fed: the VRRP thread beat within half the watchdog's period
/// (it beats every quarter), so one missed beat is tolerated and a hung thread is not hidden.
pub fn vrrp_alive(age: Duration, watchdog: Duration) -> bool {
    age <= watchdog / 2
}

/// Where `STATUS=` is read from.
#[derive(Clone)]
pub struct Sources {
    pub board: crate::vrrp_driver::StatusBoard,
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub director: Option<Arc<Mutex<DirectorStatus>>>,
}

impl Sources {
    /// The node's [`status_line`] now.
    pub fn line(&self) -> String {
        let vrrp = self.board.lock().map(|b| b.clone()).unwrap_or_default();
        let raft = self.cluster.as_ref().map(|c| (c.raft_status(), c.live_members().len()));
        let director = self.director.as_ref().and_then(|d| d.lock().ok().map(|d| d.clone()));
        status_line(&vrrp, raft.as_ref().map(|(r, _)| r), raft.as_ref().map_or(0, |(_, n)| *n), director.as_ref())
    }
}

/// Runs while corrald runs under systemd: sends `STATUS=` when it changes (checked each
/// second) and, with `WatchdogSec=`, `WATCHDOG=1` every quarter period while this runtime and
/// the VRRP thread (`heartbeat`, from `epoch`) are both alive. Returns at once when no service
/// manager listens.
pub async fn run(sources: Sources, heartbeat: Heartbeat, epoch: Instant) {
    if !enabled() {
        return;
    }
    let watchdog = watchdog();
    let period = watchdog.map_or(Duration::from_secs(1), |w| beat_interval(w).min(Duration::from_secs(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = String::new();
    let mut warned = false;
    loop {
        tick.tick().await;
        if let Some(w) = watchdog {
            let age = heartbeat.age(epoch);
            if vrrp_alive(age, w) {
                send(&[NotifyState::Watchdog]);
                warned = false;
            } else if !warned {
                tracing::error!(silent_for = ?age, "the VRRP thread has not run for half the watchdog period: no longer feeding systemd's watchdog");
                warned = true;
            }
        }
        let line = sources.line();
        if line != last {
            send(&[NotifyState::Status(&line)]);
            last = line;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(name: &str, state: &str) -> VrrpInstanceStatus {
        VrrpInstanceStatus {
            name: name.into(),
            interface: "eth0".into(),
            vrid: 51,
            version: 3,
            state: state.into(),
            base_priority: 100,
            effective_priority: 100,
            master: None,
            virtual_ips: vec![],
            counters: Default::default(),
        }
    }

    #[test]
    fn status_line_names_vrrp_states_leader_and_revision() {
        assert_eq!(status_line(&[], None, 0, None), "running");
        let raft = RaftStatus {
            node: "d1".into(),
            role: "follower".into(),
            leader: Some("d2".into()),
            term: 3,
            last_log_index: 9,
            applied_index: 9,
            voters: vec![],
            learners: vec![],
            lag: Default::default(),
            millis_since_quorum_ack: None,
            stopped: None,
        };
        let dir = DirectorStatus { applied_revision: 7, last_error: Some("EPERM".into()), ..Default::default() };
        assert_eq!(
            status_line(&[inst("VI_1", "MASTER"), inst("VI_2", "BACKUP")], Some(&raft), 3, Some(&dir)),
            "VRRP VI_1 MASTER, VI_2 BACKUP; follower of 3 members, leader d2; rules revision 7 in IPVS (last error: EPERM)"
        );
        let stopped = RaftStatus { stopped: Some("Raft stopped: disk full".into()), ..raft };
        assert_eq!(status_line(&[], Some(&stopped), 3, None), "Raft stopped: disk full: restart corrald once fixed");
    }

    #[test]
    fn the_watchdog_is_fed_only_while_the_vrrp_thread_beats() {
        let w = Duration::from_secs(10);
        assert_eq!(beat_interval(w), Duration::from_millis(2500));
        assert_eq!(beat_interval(Duration::from_millis(100)), Duration::from_millis(50));
        assert!(vrrp_alive(Duration::from_millis(2600), w), "one late beat is tolerated");
        assert!(vrrp_alive(Duration::from_secs(5), w));
        assert!(!vrrp_alive(Duration::from_millis(5001), w), "a thread silent for half the period is not covered for");
        let epoch = Instant::now() - Duration::from_secs(30);
        let hb = Heartbeat::default();
        assert!(hb.age(epoch) >= Duration::from_secs(30), "never beaten: as old as the epoch");
        hb.beat(epoch);
        assert!(hb.age(epoch) < Duration::from_secs(1));
    }
}
