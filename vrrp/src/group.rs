//! Sync groups (keepalived's `vrrp_sync_group`): instances that must be master on the same
//! router together, e.g. the outside VIP and the inside gateway of a NAT director.
//!
//! Members are gated (keepalived's `vrrp_sync_can_goto_master`): when a member's Master_Down
//! timer expires it only *wants* MASTER; the group goes MASTER when every member wants it (or
//! already is). Rules, applied after a member's event:
//! - a member wants MASTER: if all members want it or are MASTER, every member becomes MASTER;
//!   otherwise the group stays BACKUP (a member still hearing a live master holds everyone back);
//! - a member falls from MASTER to BACKUP (it heard a better master): every member goes BACKUP;
//! - a member enters FAULT: every member goes FAULT; when no member has a fault of its own any
//!   more, they all return to BACKUP.
//!
//! Preferring BACKUP this way keeps two routers with split priorities from pulling a group back
//! and forth: nobody goes MASTER until nobody in its group hears another master.

use std::time::Instant;

use crate::instance::{Instance, State};

/// One group: indices into the caller's list of instances (anything that holds an `Instance`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncGroup {
    pub name: String,
    pub members: Vec<usize>,
}

impl SyncGroup {
    /// The group's state for its notify scripts (keepalived's `vgroup->state`): FAULT while any
    /// member is in FAULT, MASTER when every member is, BACKUP when every member is BACKUP or
    /// MASTER but not all MASTER (the group goes BACKUP as soon as one member does); `None`
    /// before startup (a member still in Initialize) or for an empty group.
    pub fn state(&self, state_of: impl Fn(usize) -> State) -> Option<State> {
        let states: Vec<State> = self.members.iter().map(|&m| state_of(m)).collect();
        if states.is_empty() {
            return None;
        }
        if states.contains(&State::Fault) {
            return Some(State::Fault);
        }
        if states.contains(&State::Initialize) {
            return None;
        }
        if states.iter().all(|s| *s == State::Master) {
            return Some(State::Master);
        }
        Some(State::Backup)
    }

    /// Gates every member (call once before startup).
    pub fn install<T: AsMut<Instance>>(&self, all: &mut [T]) {
        for &m in &self.members {
            all[m].as_mut().set_gated(true);
        }
    }

    /// Member `who` wants MASTER; returns the members it forced.
    pub fn on_want_master<T: AsMut<Instance>>(&self, now: Instant, all: &mut [T], who: usize) -> Vec<usize> {
        if !self.members.contains(&who) {
            return vec![];
        }
        let ready = self.members.iter().all(|&m| all[m].as_mut().state() == State::Master || all[m].as_mut().wants_master());
        if !ready {
            return vec![];
        }
        let mut forced = Vec::new();
        for &m in &self.members {
            if all[m].as_mut().state() == State::Backup {
                all[m].as_mut().force(now, State::Master);
                forced.push(m);
            }
        }
        forced
    }

    /// Reacts to member `who` having moved `from` -> `to`; returns the members it forced (whose
    /// actions the caller must now perform).
    pub fn on_change<T: AsMut<Instance>>(&self, now: Instant, all: &mut [T], who: usize, from: State, to: State) -> Vec<usize> {
        if !self.members.contains(&who) {
            return vec![];
        }
        let others: Vec<usize> = self.members.iter().copied().filter(|m| *m != who).collect();
        let mut forced = Vec::new();
        let mut force = |i: usize, state: State, all: &mut [T]| {
            if all[i].as_mut().state() != state {
                all[i].as_mut().force(now, state);
                forced.push(i);
            }
        };
        match (from, to) {
            (_, State::Fault) => {
                for &i in &others {
                    force(i, State::Fault, all);
                }
            }
            (State::Fault, State::Backup) => {
                if self.members.iter().all(|&m| !all[m].as_mut().tracking_fault()) {
                    for &i in &others {
                        force(i, State::Backup, all);
                    }
                }
            }
            (State::Master, State::Backup) => {
                for &i in &others {
                    force(i, State::Backup, all);
                }
            }
            // Became MASTER without the group (an address owner at startup): take the group along.
            (_, State::Master) => {
                for &i in &others {
                    if all[i].as_mut().state() == State::Backup {
                        force(i, State::Master, all);
                    }
                }
            }
            _ => {}
        }
        forced
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::*;
    use crate::instance::{Action, InstanceConfig};
    use crate::wire::{Auth, Version};

    fn inst(vrid: u8, host: u8, priority: u8) -> Instance {
        Instance::new(InstanceConfig {
            name: format!("VI_{vrid}"),
            vrid,
            version: Version::V3,
            priority,
            advert_interval: Duration::from_secs(1),
            preempt: true,
            preempt_delay: Duration::ZERO,
            accept: false,
            primary: IpAddr::V4(Ipv4Addr::new(192, 0, 2, host)),
            vips: vec![IpAddr::V4(Ipv4Addr::new(198, 51, 100, vrid))],
            unicast_peers: vec![],
            auth: Auth::None,
        })
        .unwrap()
    }

    /// Two routers (A = 0,1 and B = 2,3), each with a group of VRID 1 and 2, on a virtual LAN
    /// (in-memory, zero latency); the groups are applied after every state change.
    struct Net {
        all: Vec<Instance>,
        groups: Vec<SyncGroup>,
        alive: [bool; 2],
        now: Instant,
    }

    impl Net {
        fn new(a: u8, b: u8) -> Net {
            let all = vec![inst(1, 1, a), inst(2, 1, a), inst(1, 2, b), inst(2, 2, b)];
            let groups = vec![
                SyncGroup { name: "A".into(), members: vec![0, 1] },
                SyncGroup { name: "B".into(), members: vec![2, 3] },
            ];
            let mut n = Net { all, groups, alive: [true, true], now: Instant::now() };
            for g in n.groups.clone() {
                g.install(&mut n.all);
            }
            for i in 0..4 {
                n.all[i].startup(n.now);
            }
            n.settle();
            n
        }
        fn router(i: usize) -> usize {
            i / 2
        }
        fn settle(&mut self) {
            for _ in 0..1000 {
                let mut any = false;
                for i in 0..4 {
                    while let Some(a) = self.all[i].poll_action() {
                        any = true;
                        match a {
                            Action::SendAdvert(repr) if self.alive[Self::router(i)] => {
                                let src = self.all[i].config().primary;
                                for j in 0..4 {
                                    if Self::router(j) != Self::router(i) && self.alive[Self::router(j)] && self.all[j].config().vrid == repr.vrid {
                                        self.all[j].handle_advert(self.now, src, &repr);
                                    }
                                }
                            }
                            Action::StateChanged { from, to, .. } => {
                                for g in self.groups.clone() {
                                    g.on_change(self.now, &mut self.all, i, from, to);
                                }
                            }
                            Action::WantMaster => {
                                for g in self.groups.clone() {
                                    g.on_want_master(self.now, &mut self.all, i);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                if !any {
                    return;
                }
            }
            panic!("the group never settled: thrashing");
        }
        fn run_for(&mut self, d: Duration) {
            let end = self.now + d;
            loop {
                self.settle();
                let next = (0..4).filter(|&i| self.alive[Self::router(i)]).filter_map(|i| self.all[i].poll_timeout()).min();
                match next {
                    Some(t) if t <= end => {
                        self.now = t;
                        for i in 0..4 {
                            if self.alive[Self::router(i)] && self.all[i].poll_timeout().is_some_and(|x| x <= t) {
                                self.all[i].handle_timeout(t);
                            }
                        }
                    }
                    _ => break,
                }
            }
            self.now = end;
        }
        fn states(&self) -> Vec<State> {
            self.all.iter().map(|i| i.state()).collect()
        }
    }

    use State::{Backup as B, Fault as F, Master as M};

    #[test]
    fn the_group_is_master_on_one_router() {
        let mut n = Net::new(200, 100);
        n.run_for(Duration::from_secs(10));
        assert_eq!(n.states(), vec![M, M, B, B]);
    }

    #[test]
    fn a_fault_in_one_member_moves_the_whole_group() {
        let mut n = Net::new(200, 100);
        n.run_for(Duration::from_secs(10));
        n.all[1].set_tracking(n.now, true, 0);
        n.settle();
        n.run_for(Duration::from_secs(10));
        assert_eq!(n.states(), vec![F, F, M, M], "both VIPs moved to B together");
        n.all[1].set_tracking(n.now, false, 0);
        n.settle();
        n.run_for(Duration::from_secs(10));
        assert_eq!(n.states(), vec![M, M, B, B], "A recovers and preempts the whole group back");
    }

    #[test]
    fn split_priorities_do_not_thrash_and_stay_together() {
        // VRID 1 prefers A, VRID 2 prefers B: a group must still end on one router, stably.
        let mut n = Net::new(200, 100);
        n.all[3] = inst(2, 2, 250);
        n.all[3].set_gated(true);
        n.all[3].startup(n.now);
        n.settle();
        n.run_for(Duration::from_secs(30));
        let s = n.states();
        assert!(s == vec![M, M, B, B] || s == vec![B, B, M, M], "{s:?}");
        let before = n.all.iter().map(|i| i.counters().became_master).collect::<Vec<_>>();
        n.run_for(Duration::from_secs(30));
        let after = n.all.iter().map(|i| i.counters().became_master).collect::<Vec<_>>();
        assert_eq!(before, after, "no further transitions: the groups do not thrash");
    }

    #[test]
    fn group_state_is_what_keepalived_reports() {
        let g = SyncGroup { name: "G".into(), members: vec![0, 1] };
        let of = |a: State, b: State| g.state(|m| if m == 0 { a } else { b });
        assert_eq!(of(M, M), Some(M));
        assert_eq!(of(B, B), Some(B));
        assert_eq!(of(M, B), Some(B), "one member down to BACKUP takes the group");
        assert_eq!(of(F, M), Some(F));
        assert_eq!(of(State::Initialize, B), None, "not started");
        assert_eq!(SyncGroup { name: "E".into(), members: vec![] }.state(|_| M), None);
        // And through a real failover of the group.
        let mut n = Net::new(200, 100);
        n.run_for(Duration::from_secs(10));
        let (a, b) = (n.groups[0].clone(), n.groups[1].clone());
        assert_eq!((a.state(|m| n.all[m].state()), b.state(|m| n.all[m].state())), (Some(M), Some(B)));
        n.all[1].set_tracking(n.now, true, 0);
        n.settle();
        n.run_for(Duration::from_secs(10));
        assert_eq!((a.state(|m| n.all[m].state()), b.state(|m| n.all[m].state())), (Some(F), Some(M)));
    }

    #[test]
    fn master_crash_moves_the_whole_group() {
        let mut n = Net::new(200, 100);
        n.run_for(Duration::from_secs(10));
        n.alive[0] = false;
        n.run_for(Duration::from_secs(10));
        assert_eq!(&n.states()[2..], &[M, M]);
    }
}
