//! One VRRP instance as a sans-IO state machine: RFC 5798 §6, plus keepalived's operational
//! additions (FAULT, tracking weights, preempt_delay).
//!
//! It owns no socket and reads no clock: the driver feeds it adverts, timer expiries and the
//! current `Instant`, then drains [`Action`]s and re-arms one timer at [`Instance::poll_timeout`].
//! That makes every transition testable in microseconds with a virtual clock.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::wire::{Auth, DropReason, Repr, Version};

/// RFC 5798 §6.4 states, plus keepalived's FAULT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum State {
    Initialize,
    Backup,
    Master,
    /// A tracked interface or script with weight 0 is down: send nothing, hold no VIPs.
    Fault,
}

impl State {
    /// keepalived's spelling, used by notify scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        }
    }
}

/// The priority of the address owner (RFC 5798 §5.2.4).
pub const OWNER_PRIORITY: u8 = 255;

/// Static configuration of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    pub name: String,
    pub vrid: u8,
    pub version: Version,
    /// 1..=255; 255 means address owner.
    pub priority: u8,
    pub advert_interval: Duration,
    pub preempt: bool,
    /// keepalived: after startup, wait this long before preempting a lower-priority master.
    pub preempt_delay: Duration,
    /// RFC 5798 Accept_Mode (the driver decides what to do with it).
    pub accept: bool,
    /// Our primary address on the interface: the advert source and the tie-breaker.
    pub primary: IpAddr,
    pub vips: Vec<IpAddr>,
    /// Empty: multicast. Otherwise adverts go to each peer by unicast.
    pub unicast_peers: Vec<IpAddr>,
    /// VRRPv2 only.
    pub auth: Auth,
}

/// Why a configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("VRID must be 1..=255")]
    Vrid,
    #[error("priority must be 1..=255")]
    Priority,
    #[error("VRRPv2 advert interval must be whole seconds 1..=255")]
    V2Interval,
    #[error("VRRPv3 advert interval must be a multiple of 10ms from 10ms to 40.95s")]
    V3Interval,
    #[error("authentication exists in VRRPv2 only")]
    AuthV3,
    #[error("at least one virtual address is required, all of the primary address's family")]
    Vips,
    #[error("VRRPv2 carries IPv4 only")]
    V2Ipv6,
}

impl InstanceConfig {
    /// Checks the limits the wire format and the RFCs impose.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vrid == 0 {
            return Err(ConfigError::Vrid);
        }
        if self.priority == 0 {
            return Err(ConfigError::Priority);
        }
        let ms = self.advert_interval.as_millis();
        match self.version {
            Version::V2 => {
                if ms == 0 || ms % 1000 != 0 || ms > 255_000 {
                    return Err(ConfigError::V2Interval);
                }
                if self.primary.is_ipv6() {
                    return Err(ConfigError::V2Ipv6);
                }
            }
            Version::V3 => {
                if ms % 10 != 0 || ms == 0 || ms > 40_950 {
                    return Err(ConfigError::V3Interval);
                }
                if self.auth != Auth::None {
                    return Err(ConfigError::AuthV3);
                }
            }
        }
        if self.vips.is_empty() || self.vips.iter().any(|v| v.is_ipv6() != self.primary.is_ipv6()) {
            return Err(ConfigError::Vips);
        }
        Ok(())
    }

    fn interval_cs(&self) -> u16 {
        (self.advert_interval.as_millis() / 10) as u16
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority (0 = release) to the group or the unicast peers.
    SendAdvert(Repr),
    /// Configure the virtual addresses on the interface.
    AddVips(Vec<IpAddr>),
    RemoveVips(Vec<IpAddr>),
    /// Gratuitous ARP / unsolicited NA for the VIPs (the driver repeats per its config).
    SendGratuitous(Vec<IpAddr>),
    /// For notify scripts, logs and sync groups.
    StateChanged { from: State, to: State, priority: u8 },
    /// A sync-group member's Master_Down timer expired but its group holds it in BACKUP until
    /// every member wants MASTER (see [`crate::group`]).
    WantMaster,
}

/// Counters an operator reads in `corralctl vrrp status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub priority_zero_sent: u64,
    pub priority_zero_received: u64,
    pub became_master: u64,
    pub released_master: u64,
    /// Adverts from another master with a lower priority (a failover race): answered at once.
    pub lower_priority_masters: u64,
    pub drops: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Timer {
    Adver = 0,
    MasterDown = 1,
    /// A second gratuitous burst one advert interval after a lower-priority master was heard.
    Regarp = 2,
}

/// One VRRP instance.
#[derive(Debug)]
pub struct Instance {
    cfg: InstanceConfig,
    state: State,
    /// Priority change from tracking (keepalived weights).
    adjust: i32,
    /// A tracked object with weight 0 is down.
    fault: bool,
    /// Learned from the master's adverts (v3), else our own interval.
    master_adver_cs: u16,
    master: Option<IpAddr>,
    /// False for sync-group members: MASTER only when the group says so.
    gate_open: bool,
    /// A gated member whose Master_Down timer expired.
    wants_master: bool,
    timers: [Option<Instant>; 3],
    started: Option<Instant>,
    actions: VecDeque<Action>,
    counters: Counters,
}

impl Instance {
    /// A new instance in Initialize; call [`Instance::startup`] to begin.
    pub fn new(cfg: InstanceConfig) -> Result<Instance, ConfigError> {
        cfg.validate()?;
        let cs = cfg.interval_cs();
        Ok(Instance {
            cfg,
            state: State::Initialize,
            adjust: 0,
            fault: false,
            master_adver_cs: cs,
            master: None,
            gate_open: true,
            wants_master: false,
            timers: [None; 3],
            started: None,
            actions: VecDeque::new(),
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &InstanceConfig {
        &self.cfg
    }
    pub fn state(&self) -> State {
        self.state
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// The current master's address, if known (ours when master).
    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    /// The priority we advertise: configured plus tracking, clamped to 1..=254; the owner stays 255.
    pub fn priority(&self) -> u8 {
        if self.cfg.priority == OWNER_PRIORITY {
            return OWNER_PRIORITY;
        }
        (self.cfg.priority as i32 + self.adjust).clamp(1, 254) as u8
    }

    fn master_adver_interval(&self) -> Duration {
        Duration::from_millis(self.master_adver_cs as u64 * 10)
    }

    /// Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256 (RFC 5798 §6.1).
    pub fn skew_time(&self) -> Duration {
        match self.cfg.version {
            Version::V3 => self.master_adver_interval() * (256 - self.priority() as u32) / 256,
            // RFC 3768: (256 - Priority) / 256 seconds.
            Version::V2 => Duration::from_secs(1) * (256 - self.priority() as u32) / 256,
        }
    }

    /// Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        self.master_adver_interval() * 3 + self.skew_time()
    }

    /// The next deadline the driver must wake us at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    /// The next action to perform.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn set_timer(&mut self, t: Timer, at: Option<Instant>) {
        self.timers[t as usize] = at;
    }

    fn advert(&mut self, priority: u8) {
        let repr = Repr {
            version: self.cfg.version,
            vrid: self.cfg.vrid,
            priority,
            adver_int_cs: self.cfg.interval_cs(),
            addrs: self.cfg.vips.clone(),
            auth: self.cfg.auth,
        };
        self.counters.adverts_sent += 1;
        if priority == 0 {
            self.counters.priority_zero_sent += 1;
        }
        self.actions.push_back(Action::SendAdvert(repr));
    }

    fn transition(&mut self, to: State) {
        let from = self.state;
        if from == to {
            return;
        }
        if from == State::Master {
            self.actions.push_back(Action::RemoveVips(self.cfg.vips.clone()));
            self.counters.released_master += 1;
        }
        if to == State::Master {
            self.actions.push_back(Action::AddVips(self.cfg.vips.clone()));
            self.actions.push_back(Action::SendGratuitous(self.cfg.vips.clone()));
            self.counters.became_master += 1;
            self.master = Some(self.cfg.primary);
        }
        self.state = to;
        self.actions.push_back(Action::StateChanged { from, to, priority: self.priority() });
    }

    fn become_master(&mut self, now: Instant) {
        self.wants_master = false;
        self.advert(self.priority());
        self.set_timer(Timer::MasterDown, None);
        self.set_timer(Timer::Adver, Some(now + self.cfg.advert_interval));
        self.transition(State::Master);
    }

    fn become_backup(&mut self, now: Instant) {
        self.set_timer(Timer::Adver, None);
        self.set_timer(Timer::MasterDown, Some(now + self.master_down_interval()));
        self.transition(State::Backup);
    }

    /// Startup event (RFC 5798 §6.4.1).
    pub fn startup(&mut self, now: Instant) {
        self.started = Some(now);
        if self.state != State::Initialize {
            return;
        }
        if self.fault {
            self.transition(State::Fault);
        } else if self.priority() == OWNER_PRIORITY {
            self.become_master(now);
        } else {
            self.master_adver_cs = self.cfg.interval_cs();
            self.become_backup(now);
        }
    }

    /// Shutdown event: a master releases with priority 0 so a backup takes over after Skew_Time.
    pub fn shutdown(&mut self, _now: Instant) {
        if self.state == State::Master {
            self.advert(0);
        }
        self.timers = [None; 3];
        self.transition(State::Initialize);
    }

    /// Timer expiry: call when `now` reaches [`Instance::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers[Timer::Adver as usize].is_some_and(|t| t <= now) && self.state == State::Master {
            self.advert(self.priority());
            self.set_timer(Timer::Adver, Some(now + self.cfg.advert_interval));
        }
        if self.timers[Timer::Regarp as usize].is_some_and(|t| t <= now) {
            self.set_timer(Timer::Regarp, None);
            if self.state == State::Master {
                self.actions.push_back(Action::SendGratuitous(self.cfg.vips.clone()));
            }
        }
        if self.timers[Timer::MasterDown as usize].is_some_and(|t| t <= now) && self.state == State::Backup {
            if self.gate_open {
                self.become_master(now);
            } else {
                self.wants_master = true;
                self.set_timer(Timer::MasterDown, Some(now + self.master_down_interval()));
                self.actions.push_back(Action::WantMaster);
            }
        }
    }

    /// A drop found by the driver or the parser (bad checksum, TTL, ...), counted per reason.
    pub fn count_drop(&mut self, reason: DropReason) {
        *self.counters.drops.entry(reason.as_str().to_owned()).or_default() += 1;
    }

    /// A received, parsed advertisement for our VRID (RFC 5798 §6.4.2, §6.4.3).
    pub fn handle_advert(&mut self, now: Instant, src: IpAddr, adv: &Repr) {
        if adv.vrid != self.cfg.vrid {
            return self.count_drop(DropReason::VridMismatch);
        }
        if self.cfg.version == Version::V2 {
            match (self.cfg.auth, adv.auth) {
                (Auth::None, Auth::None) => {}
                (Auth::SimpleText(a), Auth::SimpleText(b)) if a == b => {}
                (Auth::SimpleText(_), Auth::SimpleText(_)) => return self.count_drop(DropReason::AuthMismatch),
                _ => return self.count_drop(DropReason::AuthTypeMismatch),
            }
        }
        if adv.priority != OWNER_PRIORITY && !same_addrs(&adv.addrs, &self.cfg.vips) {
            // RFC 5798 says MAY log and continue; keepalived drops, and so do we: a peer with
            // another address list is misconfigured and must not steer our VIPs.
            return self.count_drop(DropReason::AddressListMismatch);
        }
        self.counters.adverts_received += 1;
        if adv.priority == 0 {
            self.counters.priority_zero_received += 1;
        }
        match self.state {
            State::Initialize | State::Fault => {}
            State::Backup => {
                if adv.priority == 0 {
                    // The master released: take over after Skew_Time only.
                    self.set_timer(Timer::MasterDown, Some(now + self.skew_time()));
                    return;
                }
                let in_preempt_delay = self.started.is_some_and(|s| now < s + self.cfg.preempt_delay);
                if !self.cfg.preempt || adv.priority >= self.priority() || in_preempt_delay {
                    if self.cfg.version == Version::V3 {
                        self.master_adver_cs = adv.adver_int_cs;
                    }
                    self.master = Some(src);
                    self.wants_master = false;
                    self.set_timer(Timer::MasterDown, Some(now + self.master_down_interval()));
                }
                // else: a lower-priority master and we preempt: let Master_Down expire.
            }
            State::Master => {
                if adv.priority == 0 {
                    self.advert(self.priority());
                    self.set_timer(Timer::Adver, Some(now + self.cfg.advert_interval));
                    return;
                }
                let ours = self.priority();
                if adv.priority > ours || (adv.priority == ours && ip_greater(src, self.cfg.primary)) {
                    if self.cfg.version == Version::V3 {
                        self.master_adver_cs = adv.adver_int_cs;
                    }
                    self.master = Some(src);
                    self.become_backup(now);
                } else {
                    // Another router also thinks it is master, with a lower priority: both
                    // backups' Master_Down timers fired within a skew of each other (a loaded
                    // host, a slow link). RFC 5798 only discards its advert; like keepalived
                    // (garp_lower_prio_repeat) we also assert ourselves at once, with an advert
                    // so it steps down and gratuitous ARP/NA because hosts may have learned its
                    // MAC for our VIPs in the meantime, which would black-hole them.
                    self.counters.lower_priority_masters += 1;
                    self.advert(ours);
                    self.set_timer(Timer::Adver, Some(now + self.cfg.advert_interval));
                    self.actions.push_back(Action::SendGratuitous(self.cfg.vips.clone()));
                    // Its own gratuitous repeats may still be in flight and land after ours;
                    // by one interval from now it has heard us and stepped down: say it again.
                    self.set_timer(Timer::Regarp, Some(now + self.cfg.advert_interval));
                }
            }
        }
    }

    /// Tracking update: `fault` when a weight-0 tracked object is down; `adjust` is the sum of
    /// weighted tracked objects (keepalived semantics, computed by the driver).
    pub fn set_tracking(&mut self, now: Instant, fault: bool, adjust: i32) {
        let was_fault = self.fault;
        self.fault = fault;
        self.adjust = adjust;
        if self.started.is_none() {
            return;
        }
        match (was_fault, fault) {
            (false, true) => {
                if self.state == State::Master {
                    self.advert(0);
                }
                self.timers = [None; 3];
                self.transition(State::Fault);
            }
            (true, false) if self.state == State::Fault => {
                if self.priority() == OWNER_PRIORITY {
                    self.become_master(now);
                } else {
                    self.master_adver_cs = self.cfg.interval_cs();
                    self.become_backup(now);
                }
            }
            _ => {}
        }
    }

    /// The interface was re-created (a new link-local address with a new MAC, a new IPv4
    /// address): adverts leave from `primary` from now on, and it breaks priority ties. Refused
    /// across address families, which would make the instance another one.
    pub fn set_primary(&mut self, primary: IpAddr) -> Result<(), ConfigError> {
        if primary.is_ipv6() != self.cfg.primary.is_ipv6() {
            return Err(ConfigError::Vips);
        }
        if self.master == Some(self.cfg.primary) {
            self.master = Some(primary);
        }
        self.cfg.primary = primary;
        Ok(())
    }

    /// Sync-group members are gated: their Master_Down expiry asks the group ([`Action::WantMaster`]).
    pub fn set_gated(&mut self, gated: bool) {
        self.gate_open = !gated;
    }

    /// A gated member waiting for its group to go MASTER.
    pub fn wants_master(&self) -> bool {
        self.wants_master
    }

    /// True when a tracked object with weight 0 is down.
    pub fn tracking_fault(&self) -> bool {
        self.fault
    }

    /// Forced transition for sync groups: BACKUP or FAULT follow a peer member; MASTER is
    /// taken only when the group's members agree (see [`crate::group`]).
    pub fn force(&mut self, now: Instant, to: State) {
        match to {
            State::Master if self.state == State::Backup => self.become_master(now),
            State::Backup if self.state == State::Master => {
                self.advert(0);
                self.become_backup(now);
            }
            State::Fault if self.state != State::Fault => {
                if self.state == State::Master {
                    self.advert(0);
                }
                self.timers = [None; 3];
                self.transition(State::Fault);
            }
            // Leaving a group FAULT that was not our own.
            State::Backup if self.state == State::Fault && !self.fault => {
                self.master_adver_cs = self.cfg.interval_cs();
                self.become_backup(now);
            }
            _ => {}
        }
    }
}

impl AsMut<Instance> for Instance {
    fn as_mut(&mut self) -> &mut Instance {
        self
    }
}

fn same_addrs(a: &[IpAddr], b: &[IpAddr]) -> bool {
    // The common case (same list, same order) without allocating: this runs per advert.
    if a == b {
        return true;
    }
    if a.len() != b.len() {
        return false;
    }
    let mut x = a.to_vec();
    let mut y = b.to_vec();
    x.sort();
    y.sort();
    x == y
}

/// RFC 5798 §6.4.3: the higher primary IP address wins a priority tie.
fn ip_greater(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => u32::from(a) > u32::from(b),
        (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a) > u128::from(b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn cfg(last_octet: u8, priority: u8) -> InstanceConfig {
        InstanceConfig {
            name: format!("VI_{last_octet}"),
            vrid: 51,
            version: Version::V3,
            priority,
            advert_interval: Duration::from_secs(1),
            preempt: true,
            preempt_delay: Duration::ZERO,
            accept: false,
            primary: IpAddr::V4(Ipv4Addr::new(192, 0, 2, last_octet)),
            vips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100))],
            unicast_peers: vec![],
            auth: Auth::None,
        }
    }

    /// A virtual LAN of instances with zero-latency delivery and a virtual clock
    /// (an in-memory test harness, like quinn-proto's `Pair`).
    struct Lan {
        nodes: Vec<(Instance, bool)>,
        t0: Instant,
        now: Instant,
        /// (time since t0, node, action)
        log: Vec<(Duration, usize, Action)>,
    }

    impl Lan {
        fn new(cfgs: Vec<InstanceConfig>) -> Lan {
            let t0 = Instant::now();
            Lan { nodes: cfgs.into_iter().map(|c| (Instance::new(c).unwrap(), true)).collect(), t0, now: t0, log: vec![] }
        }
        fn start(&mut self, i: usize) {
            self.nodes[i].0.startup(self.now);
            self.flush();
        }
        fn flush(&mut self) {
            loop {
                let mut any = false;
                for i in 0..self.nodes.len() {
                    while let Some(a) = self.nodes[i].0.poll_action() {
                        any = true;
                        if let Action::SendAdvert(repr) = &a {
                            let src = self.nodes[i].0.config().primary;
                            for j in 0..self.nodes.len() {
                                if j != i && self.nodes[j].1 && self.nodes[i].1 {
                                    self.nodes[j].0.handle_advert(self.now, src, repr);
                                }
                            }
                        }
                        self.log.push((self.now - self.t0, i, a));
                    }
                }
                if !any {
                    break;
                }
            }
        }
        fn run_for(&mut self, d: Duration) {
            let end = self.now + d;
            loop {
                self.flush();
                let next = self.nodes.iter().filter_map(|(n, _)| n.poll_timeout()).min();
                match next {
                    Some(t) if t <= end => {
                        self.now = t;
                        for (n, _) in &mut self.nodes {
                            if n.poll_timeout().is_some_and(|x| x <= t) {
                                n.handle_timeout(t);
                            }
                        }
                    }
                    _ => break,
                }
            }
            self.now = end;
        }
        fn state(&self, i: usize) -> State {
            self.nodes[i].0.state()
        }
        /// When node `i` last became master, relative to t0.
        fn became_master(&self, i: usize) -> Option<Duration> {
            self.log.iter().rev().find_map(|(t, n, a)| match a {
                Action::StateChanged { to: State::Master, .. } if *n == i => Some(*t),
                _ => None,
            })
        }
    }

    #[test]
    fn a_new_primary_address_is_the_source_and_tie_breaker_from_then_on() {
        let mut lan = Lan::new(vec![cfg(1, 100)]);
        lan.start(0);
        lan.run_for(Duration::from_secs(5));
        assert_eq!(lan.state(0), State::Master);
        let inst = &mut lan.nodes[0].0;
        assert!(inst.set_primary("2001:db8::1".parse().unwrap()).is_err(), "not across families");
        inst.set_primary(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))).unwrap();
        assert_eq!(inst.config().primary, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)));
        assert_eq!(inst.master(), Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))), "the master we report is us, by our new address");
    }

    #[test]
    fn address_owner_becomes_master_at_startup() {
        let mut lan = Lan::new(vec![cfg(1, 255)]);
        lan.start(0);
        assert_eq!(lan.state(0), State::Master);
        let kinds: Vec<_> = lan.log.iter().map(|(_, _, a)| std::mem::discriminant(a)).collect();
        assert!(kinds.contains(&std::mem::discriminant(&Action::AddVips(vec![]))));
        assert!(kinds.contains(&std::mem::discriminant(&Action::SendGratuitous(vec![]))));
    }

    #[test]
    fn lone_backup_takes_over_after_master_down_interval() {
        let mut lan = Lan::new(vec![cfg(1, 100)]);
        lan.start(0);
        assert_eq!(lan.state(0), State::Backup);
        lan.run_for(Duration::from_secs(5));
        // 3 * 1 s + (256 - 100) / 256 s
        let expect = Duration::from_secs(3) + Duration::from_secs(1) * 156 / 256;
        assert_eq!(lan.became_master(0), Some(expect));
    }

    #[test]
    fn higher_priority_wins_and_adverts_keep_the_backup_quiet() {
        let mut lan = Lan::new(vec![cfg(1, 100), cfg(2, 200)]);
        lan.start(0);
        lan.start(1);
        lan.run_for(Duration::from_secs(30));
        assert_eq!((lan.state(0), lan.state(1)), (State::Backup, State::Master));
        assert_eq!(lan.nodes[0].0.master(), Some(lan.nodes[1].0.config().primary));
        let adverts = lan.nodes[1].0.counters().adverts_sent;
        assert!((26..=28).contains(&adverts), "one advert a second: {adverts}");
    }

    #[test]
    fn preemption_by_a_higher_priority_backup() {
        let mut lan = Lan::new(vec![cfg(1, 100), cfg(2, 200)]);
        lan.start(0);
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.state(0), State::Master);
        let joined = lan.now - lan.t0;
        lan.start(1);
        lan.run_for(Duration::from_secs(10));
        assert_eq!((lan.state(0), lan.state(1)), (State::Backup, State::Master));
        let expect = joined + Duration::from_secs(3) + Duration::from_secs(1) * 56 / 256;
        assert_eq!(lan.became_master(1), Some(expect), "takes over when Master_Down_Interval expires");
    }

    #[test]
    fn nopreempt_leaves_the_master_alone() {
        let mut high = cfg(2, 200);
        high.preempt = false;
        let mut lan = Lan::new(vec![cfg(1, 100), high]);
        lan.start(0);
        lan.run_for(Duration::from_secs(10));
        lan.start(1);
        lan.run_for(Duration::from_secs(30));
        assert_eq!((lan.state(0), lan.state(1)), (State::Master, State::Backup));
    }

    #[test]
    fn preempt_delay_postpones_preemption() {
        let mut high = cfg(2, 200);
        high.preempt_delay = Duration::from_secs(20);
        let mut lan = Lan::new(vec![cfg(1, 100), high]);
        lan.start(0);
        lan.run_for(Duration::from_secs(10));
        let joined = lan.now - lan.t0;
        lan.start(1);
        lan.run_for(Duration::from_secs(19));
        assert_eq!(lan.state(1), State::Backup, "still inside preempt_delay");
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.state(1), State::Master);
        let took = lan.became_master(1).unwrap() - joined;
        assert!(took >= Duration::from_secs(20) && took < Duration::from_secs(24), "{took:?}");
    }

    #[test]
    fn priority_zero_release_hands_over_within_skew_time() {
        let mut lan = Lan::new(vec![cfg(1, 200), cfg(2, 100)]);
        lan.start(0);
        lan.start(1);
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.state(0), State::Master);
        let t = lan.now - lan.t0;
        lan.nodes[0].0.shutdown(lan.now);
        lan.flush();
        assert_eq!(lan.state(0), State::Initialize);
        assert_eq!(lan.nodes[0].0.counters().priority_zero_sent, 1);
        lan.nodes[0].1 = false;
        lan.run_for(Duration::from_secs(5));
        let skew = Duration::from_secs(1) * 156 / 256;
        assert_eq!(lan.became_master(1), Some(t + skew));
    }

    #[test]
    fn crashed_master_is_replaced_after_master_down_interval() {
        let mut lan = Lan::new(vec![cfg(1, 200), cfg(2, 100)]);
        lan.start(0);
        lan.start(1);
        lan.run_for(Duration::from_millis(10_500));
        lan.nodes[0].1 = false; // crash: no release advert
        lan.run_for(Duration::from_secs(10));
        let took = lan.became_master(1).unwrap();
        let mdi = Duration::from_secs(3) + Duration::from_secs(1) * 156 / 256;
        // The last advert the backup heard came at most one interval before the crash.
        assert!(took > Duration::from_millis(10_500) && took <= Duration::from_millis(10_500) + mdi, "{took:?}");
    }

    #[test]
    fn equal_priority_masters_resolve_by_higher_primary_address() {
        let mut lan = Lan::new(vec![cfg(1, 100), cfg(2, 100)]);
        // Partitioned: both become master.
        lan.nodes[1].1 = false;
        lan.start(0);
        lan.start(1);
        lan.run_for(Duration::from_secs(5));
        assert_eq!((lan.state(0), lan.state(1)), (State::Master, State::Master));
        lan.nodes[1].1 = true; // heal
        lan.run_for(Duration::from_secs(3));
        assert_eq!((lan.state(0), lan.state(1)), (State::Backup, State::Master), "192.0.2.2 > 192.0.2.1");
    }

    #[test]
    fn a_lower_priority_master_makes_the_master_reassert_with_gratuitous_arp() {
        let mut lan = Lan::new(vec![cfg(1, 100), cfg(2, 200)]);
        // Partitioned: both become master (as after a failover race).
        lan.nodes[0].1 = false;
        lan.start(0);
        lan.start(1);
        lan.run_for(Duration::from_secs(5));
        assert_eq!((lan.state(0), lan.state(1)), (State::Master, State::Master));
        // The lower master's advert reaches the higher one.
        let repr = lan
            .log
            .iter()
            .rev()
            .find_map(|(_, i, a)| match a {
                Action::SendAdvert(r) if *i == 0 => Some(r.clone()),
                _ => None,
            })
            .unwrap();
        let before = lan.log.len();
        let src = lan.nodes[0].0.config().primary;
        let now = lan.now;
        lan.nodes[1].0.handle_advert(now, src, &repr);
        lan.nodes[0].1 = true; // heal, so the re-assertion reaches the lower master
        lan.flush();
        assert_eq!((lan.state(0), lan.state(1)), (State::Backup, State::Master));
        let regarp = lan.log[before..].iter().any(|(_, i, a)| *i == 1 && matches!(a, Action::SendGratuitous(_)));
        assert!(regarp, "the higher master must re-announce its VIPs after a lower master was seen");
        // And once more an interval later, after the other router's own repeats.
        let mark = lan.log.len();
        lan.run_for(Duration::from_millis(1100));
        let again = lan.log[mark..].iter().filter(|(_, i, a)| *i == 1 && matches!(a, Action::SendGratuitous(_))).count();
        assert_eq!(again, 1, "one delayed re-announcement");
        assert!(lan.nodes[1].0.counters().lower_priority_masters >= 1);
    }

    #[test]
    fn backup_learns_the_masters_interval() {
        let mut fast = cfg(2, 200);
        fast.advert_interval = Duration::from_millis(10);
        let mut lan = Lan::new(vec![cfg(1, 100), fast]);
        lan.start(1);
        lan.run_for(Duration::from_secs(1));
        lan.start(0);
        lan.run_for(Duration::from_millis(100));
        // Learned 10 ms: Master_Down_Interval = 30 ms + 156/256 * 10 ms.
        assert_eq!(lan.nodes[0].0.master_down_interval(), Duration::from_nanos(30_000_000 + 6_093_750));
        lan.nodes[1].1 = false;
        let t = lan.now - lan.t0;
        lan.run_for(Duration::from_millis(200));
        let took = lan.became_master(0).unwrap() - t;
        assert!(took <= Duration::from_nanos(36_093_750), "{took:?}");
    }

    #[test]
    fn tracking_weight_moves_mastership_and_fault_releases() {
        let mut lan = Lan::new(vec![cfg(1, 150), cfg(2, 120)]);
        lan.start(0);
        lan.start(1);
        lan.run_for(Duration::from_secs(10));
        assert_eq!(lan.state(0), State::Master);
        // A tracked script with weight -50 fails on the master: 100 < 120, the backup preempts.
        lan.nodes[0].0.set_tracking(lan.now, false, -50);
        lan.run_for(Duration::from_secs(10));
        assert_eq!((lan.state(0), lan.state(1)), (State::Backup, State::Master));
        assert_eq!(lan.nodes[0].0.priority(), 100);
        // A weight-0 tracked interface goes down on the new master: FAULT, priority 0, VIPs gone.
        let sent0 = lan.nodes[1].0.counters().priority_zero_sent;
        lan.nodes[1].0.set_tracking(lan.now, true, 0);
        lan.flush();
        assert_eq!(lan.state(1), State::Fault);
        assert_eq!(lan.nodes[1].0.counters().priority_zero_sent, sent0 + 1);
        assert!(lan.log.iter().any(|(_, n, a)| *n == 1 && matches!(a, Action::RemoveVips(_))));
        lan.run_for(Duration::from_secs(5));
        assert_eq!(lan.state(0), State::Master, "the other node took over within skew time");
        // Recovery: FAULT -> BACKUP, never straight to MASTER.
        lan.nodes[1].0.set_tracking(lan.now, false, 0);
        lan.flush();
        assert_eq!(lan.state(1), State::Backup);
    }

    #[test]
    fn v2_authentication_mismatch_is_dropped_and_counted() {
        let mut a = cfg(1, 200);
        a.version = Version::V2;
        a.auth = Auth::simple("secret").unwrap();
        let mut b = cfg(2, 100);
        b.version = Version::V2;
        b.auth = Auth::simple("other").unwrap();
        let mut lan = Lan::new(vec![a, b]);
        lan.start(0);
        lan.start(1);
        lan.run_for(Duration::from_secs(10));
        assert_eq!((lan.state(0), lan.state(1)), (State::Master, State::Master), "they do not hear each other");
        assert!(lan.nodes[1].0.counters().drops["drop_auth_mismatch"] > 0);
    }

    #[test]
    fn config_limits_are_enforced() {
        let mut c = cfg(1, 100);
        c.version = Version::V2;
        c.advert_interval = Duration::from_millis(500);
        assert_eq!(c.validate(), Err(ConfigError::V2Interval));
        let mut c = cfg(1, 100);
        c.advert_interval = Duration::from_millis(5);
        assert_eq!(c.validate(), Err(ConfigError::V3Interval));
        let mut c = cfg(1, 100);
        c.auth = Auth::simple("x").unwrap();
        assert_eq!(c.validate(), Err(ConfigError::AuthV3));
        let mut c = cfg(1, 0);
        c.priority = 0;
        assert_eq!(c.validate(), Err(ConfigError::Priority));
    }
}
