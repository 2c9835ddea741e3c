//! The SWIM driver: one tokio task owning a foca instance, fed with gossip datagrams and
//! timer events, sending foca's packets as QUIC datagrams, and turning foca's view into
//! [`MemberEvent`]s for the rest of the node.
//!
//! Timers live in one table with one re-armed sleep; due timers are sorted by deadline (then
//! by foca's own order) before being handed to foca: separate sleeps per timer can fire out
//! of order and make foca act on stale probes (foca issue #26; superfly/corrosion does the
//! same sort).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{
    AccumulatingRuntime, BroadcastHandler, Foca, Invalidates, OwnedNotification, PeriodicParams,
    State, Timer,
};
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::codec::{BroadcastItem, CodecError, PostcardCodec};
use crate::member::{MemberEvent, MemberInfo, MemberState, NodeId, NodeMetadata};
use crate::transport::{Transport, TransportError};

/// Knobs of the failure detector and of joining. Every foca setting is explicit here (no
/// `Config::new_lan`), so the detection bound in the README follows from these numbers.
#[derive(Debug, Clone)]
pub struct SwimConfig {
    /// This node's identity (see [`NodeId::fresh`]).
    pub identity: NodeId,
    /// Addresses to announce to until the node is connected. Empty for the first node.
    pub seeds: Vec<SocketAddr>,
    /// One member is probed per period (default 500 ms).
    pub probe_period: Duration,
    /// Wait for a direct ack before asking others to probe indirectly (default 200 ms).
    pub probe_rtt: Duration,
    /// Members asked to probe indirectly, and fan-out of gossip (default 3).
    pub num_indirect_probes: usize,
    /// Time a suspect has to refute before being declared down (default 3 s).
    pub suspect_to_down_after: Duration,
    /// How many times each update is piggybacked (default 6; ~4·log10(N+1) covers N ≤ 30).
    pub max_transmissions: u8,
    /// How long a down member is remembered (default 5 min), which also delays reusing it.
    pub remove_down_after: Duration,
    /// Extra gossip rounds to 3 random members (default every 200 ms) while there are updates
    /// to spread, the first at once: speeds dissemination.
    pub gossip_interval: Duration,
    /// Periodic announce to one random member (default every 10 s): heals partitions.
    pub announce_interval: Duration,
    /// Largest SWIM packet (default 1100 bytes): must fit one QUIC datagram, whose limit
    /// right after the handshake is about 1162 bytes. Lowered at run time if a connection
    /// reports a smaller limit.
    pub max_packet_size: usize,
    /// First delay between join attempts (default 250 ms), doubled up to `join_retry_max`.
    pub join_retry_initial: Duration,
    /// Longest delay between join attempts (default 5 s).
    pub join_retry_max: Duration,
    /// Re-gossip own metadata this often (default 10 s) so late joiners learn it.
    pub metadata_refresh: Duration,
    /// Bound on [`Swim::leave`] (default 2 s).
    pub leave_timeout: Duration,
}

impl SwimConfig {
    /// The defaults documented on each field.
    pub fn new(identity: NodeId, seeds: Vec<SocketAddr>) -> Self {
        Self {
            identity,
            seeds,
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            num_indirect_probes: 3,
            suspect_to_down_after: Duration::from_secs(3),
            max_transmissions: 6,
            remove_down_after: Duration::from_secs(300),
            gossip_interval: Duration::from_millis(200),
            announce_interval: Duration::from_secs(10),
            max_packet_size: 1100,
            join_retry_initial: Duration::from_millis(250),
            join_retry_max: Duration::from_secs(5),
            metadata_refresh: Duration::from_secs(10),
            leave_timeout: Duration::from_secs(2),
        }
    }

    /// Worst-case time from a crash until every live member has seen it Down, for a
    /// cluster of `cluster_size` nodes: foca probes members round-robin in a shuffled order,
    /// so some member probes the dead one within `(N-1)` periods; the missed ack makes it
    /// Suspect at the next period; it is Down `suspect_to_down_after` later; the Down update
    /// then spreads by gossip rounds (3 rounds of `gossip_interval` reach every member of a
    /// small cluster with fan-out 3). In practice the first of the N-1 probers is much
    /// quicker than the round-robin worst case.
    pub fn detection_bound(&self, cluster_size: usize) -> Duration {
        let others = cluster_size.saturating_sub(1).max(1) as u32;
        self.probe_period * others
            + self.probe_period
            + self.suspect_to_down_after
            + self.gossip_interval * 3
    }

    fn validate(&self) -> Result<(), SwimError> {
        let bad = |why: String| Err(SwimError::Config(why));
        if self.probe_rtt >= self.probe_period {
            return bad(format!(
                "probe_rtt {:?} must be below probe_period {:?}",
                self.probe_rtt, self.probe_period
            ));
        }
        if !(256..=65_000).contains(&self.max_packet_size) {
            return bad(format!(
                "max_packet_size {} must be within 256..=65000",
                self.max_packet_size
            ));
        }
        if self.num_indirect_probes == 0 || self.max_transmissions == 0 {
            return bad("num_indirect_probes and max_transmissions must be at least 1".into());
        }
        for (name, d) in [
            ("probe_period", self.probe_period),
            ("suspect_to_down_after", self.suspect_to_down_after),
            ("gossip_interval", self.gossip_interval),
            ("announce_interval", self.announce_interval),
            ("join_retry_initial", self.join_retry_initial),
            ("metadata_refresh", self.metadata_refresh),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must not be zero"));
            }
        }
        Ok(())
    }

    fn foca_config(&self) -> foca::Config {
        let nz = |n: usize| NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN);
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: nz(self.num_indirect_probes),
            max_transmissions: NonZeroU8::new(self.max_transmissions).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: self.suspect_to_down_after,
            remove_down_after: Some(self.remove_down_after),
            max_packet_size: nz(self.max_packet_size),
            notify_down_members: true,
            periodic_announce: Some(PeriodicParams {
                frequency: self.announce_interval,
                num_members: nz(1),
            }),
            periodic_announce_to_down_members: Some(PeriodicParams {
                frequency: self.announce_interval * 3,
                num_members: nz(2),
            }),
            periodic_gossip: Some(PeriodicParams {
                frequency: self.gossip_interval,
                num_members: nz(3),
            }),
        }
    }

    fn metadata_limit(&self) -> usize {
        self.max_packet_size / 2
    }
}

/// Errors of the gossip layer.
#[derive(Debug, thiserror::Error)]
pub enum SwimError {
    /// A knob is out of range.
    #[error("invalid gossip configuration: {0}")]
    Config(String),
    /// The driver task has stopped (left, aborted, or panicked).
    #[error("the gossip driver has stopped")]
    Stopped,
    /// Metadata must fit in a fraction of one packet to piggyback.
    #[error("node metadata of {len} bytes exceeds the limit of {limit} bytes")]
    MetadataTooLarge {
        /// Its size.
        len: usize,
        /// The limit (half of `max_packet_size`).
        limit: usize,
    },
    /// foca refused an operation.
    #[error("gossip: {0}")]
    Foca(String),
    /// Encoding a broadcast failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Leaving took longer than `leave_timeout`.
    #[error("leave did not complete within {0:?}")]
    LeaveTimeout(Duration),
}

enum Command {
    SetMetadata(Vec<u8>, oneshot::Sender<Result<u64, SwimError>>),
    Members(oneshot::Sender<Vec<MemberInfo>>),
    Metadata(oneshot::Sender<Vec<NodeMetadata>>),
    Leave(oneshot::Sender<Result<(), SwimError>>),
    Announce(SocketAddr, oneshot::Sender<Result<(), SwimError>>),
    GossipHeld(oneshot::Sender<bool>),
}

/// Handle to a running gossip member. Dropping every handle stops the driver without a
/// leave (as a crash would); call [`Swim::leave`] for a graceful exit.
pub struct Swim {
    cmds: mpsc::Sender<Command>,
    task: JoinHandle<()>,
    identity: NodeId,
    leave_timeout: Duration,
    bad_packets: Arc<AtomicU64>,
}

impl Swim {
    /// Starts the driver on `transport`'s gossip datagrams and begins joining through the
    /// seeds. Membership events arrive on the returned channel (unbounded: events are rare,
    /// one per membership change, and must not be lost).
    pub fn start(
        transport: &Transport,
        config: SwimConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<MemberEvent>), SwimError> {
        config.validate()?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (cmds_tx, cmds_rx) = mpsc::channel(64);
        let (feedback_tx, feedback_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let foca = Foca::with_custom_broadcast(
            config.identity.clone(),
            config.foca_config(),
            rand::make_rng::<StdRng>(),
            PostcardCodec,
            Handler {
                shared: shared.clone(),
            },
        );
        let identity = config.identity.clone();
        let leave_timeout = config.leave_timeout;
        let bad_packets = Arc::new(AtomicU64::new(0));
        let driver = Driver {
            foca,
            rt: AccumulatingRuntime::new(),
            timers: Vec::new(),
            held_gossip: None,
            transport: transport.clone(),
            shared,
            events: events_tx,
            states: HashMap::new(),
            connected: false,
            join_backoff: config.join_retry_initial,
            own_meta: None,
            feedback: feedback_tx,
            impersonations: 0,
            bad_packets: bad_packets.clone(),
            config,
        };
        let span = tracing::info_span!("swim", node = %identity.name);
        let datagrams = transport.take_datagrams(1024);
        let task = tokio::spawn(driver.run(cmds_rx, datagrams, feedback_rx).instrument(span));
        Ok((
            Swim {
                cmds: cmds_tx,
                task,
                identity,
                leave_timeout,
                bad_packets,
            },
            events_rx,
        ))
    }

    /// Gossip packets dropped as bad so far: undecodable, malformed, a broadcast item refused
    /// (e.g. past a bound), or a sender that is not the certificate's node. A counter the node
    /// exports; each drop is also logged with its reason.
    pub fn bad_packets(&self) -> Arc<AtomicU64> {
        self.bad_packets.clone()
    }

    /// The identity this node started with (foca may renew it; see [`MemberEvent::Rejoined`]).
    pub fn identity(&self) -> &NodeId {
        &self.identity
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SwimError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(make(tx))
            .await
            .map_err(|_| SwimError::Stopped)?;
        rx.await.map_err(|_| SwimError::Stopped)
    }

    /// The membership table as this node sees it, down members included until forgotten.
    pub async fn members(&self) -> Result<Vec<MemberInfo>, SwimError> {
        self.ask(Command::Members).await
    }

    /// The latest metadata known for every node (this one included once set).
    pub async fn metadata(&self) -> Result<Vec<NodeMetadata>, SwimError> {
        self.ask(Command::Metadata).await
    }

    /// For tests: whether the driver holds foca's periodic-gossip timer (nothing to gossip).
    /// After a rejoin the held timer may be a stale one foca ignores while its new chain runs;
    /// the answer then says "held" although gossip is running.
    #[doc(hidden)]
    pub async fn periodic_gossip_held(&self) -> Result<bool, SwimError> {
        self.ask(Command::GossipHeld).await
    }

    /// Gossips new metadata for this node; returns the version it was given.
    pub async fn set_metadata(&self, data: Vec<u8>) -> Result<u64, SwimError> {
        self.ask(|tx| Command::SetMetadata(data, tx)).await?
    }

    /// Announces this node to `addr` (a seed given at run time, e.g. by `corralctl join`): the
    /// member there adds us and gossip spreads us from it.
    pub async fn announce(&self, addr: SocketAddr) -> Result<(), SwimError> {
        self.ask(|tx| Command::Announce(addr, tx)).await?
    }

    /// Leaves gracefully: tells a few members (who spread it) that this node is leaving and
    /// down, waits at most `leave_timeout` for the packets to go out, then stops the driver.
    pub async fn leave(self) -> Result<(), SwimError> {
        let bound = self.leave_timeout + Duration::from_millis(500);
        let res = tokio::time::timeout(bound, self.ask(Command::Leave)).await;
        let out = match res {
            Ok(r) => r?,
            Err(_) => Err(SwimError::LeaveTimeout(bound)),
        };
        self.task.abort();
        out
    }

    /// Stops the driver at once, telling nobody: what a crash looks like to the cluster.
    pub fn abort(self) {
        let Swim { cmds, task, .. } = self;
        task.abort();
        drop(cmds);
    }
}

/// How many node names' metadata a node keeps. A name's newest metadata replaces the older
/// (a restarted node keeps its name), so a cluster needs one per node; the bound is for names
/// a member makes up.
const MAX_METADATA_NAMES: usize = 4096;

/// How many leave announcements a node remembers. One is only consulted when that member goes
/// down, moments after it announced it; the oldest are forgotten first.
const MAX_LEAVING: usize = 1024;

/// State shared between foca's broadcast handler and the driver (both on the driver task).
#[derive(Default)]
struct Shared {
    metadata: HashMap<String, NodeMetadata>,
    leaving: HashSet<NodeId>,
    /// `leaving` in the order announced, to forget the oldest past [`MAX_LEAVING`].
    leaving_order: std::collections::VecDeque<NodeId>,
    pending: Vec<MemberEvent>,
}

impl Shared {
    /// Remembers a leave announcement; true when it is news.
    fn remember_leaving(&mut self, node: NodeId) -> bool {
        if !self.leaving.insert(node.clone()) {
            return false;
        }
        self.leaving_order.push_back(node);
        while self.leaving_order.len() > MAX_LEAVING {
            if let Some(old) = self.leaving_order.pop_front() {
                self.leaving.remove(&old);
            }
        }
        true
    }
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Identifies a broadcast so a newer one replaces an older one in foca's backlog.
#[derive(Debug)]
enum BroadcastKey {
    Metadata {
        name: String,
        incarnation: u64,
        version: u64,
    },
    Leaving(NodeId),
}

impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (
                BroadcastKey::Metadata {
                    name,
                    incarnation,
                    version,
                },
                BroadcastKey::Metadata {
                    name: n2,
                    incarnation: i2,
                    version: v2,
                },
            ) => name == n2 && (incarnation, version) >= (i2, v2),
            (BroadcastKey::Leaving(a), BroadcastKey::Leaving(b)) => a == b,
            _ => false,
        }
    }
}

struct Handler {
    shared: Arc<Mutex<Shared>>,
}

impl BroadcastHandler<NodeId> for Handler {
    type Key = BroadcastKey;
    type Error = CodecError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeId>,
    ) -> Result<Option<BroadcastKey>, CodecError> {
        let local = sender.is_none();
        let mut s = lock(&self.shared);
        match BroadcastItem::from_bytes(data)? {
            BroadcastItem::Metadata {
                node,
                version,
                data,
            } => {
                let known = s.metadata.get(&node.name);
                // Our own metadata always has its place.
                if !local && known.is_none() && s.metadata.len() >= MAX_METADATA_NAMES {
                    return Err(CodecError::TooManyNames { name: node.name, limit: MAX_METADATA_NAMES });
                }
                let newer = known.is_none_or(|m| (node.incarnation, version) > (m.node.incarnation, m.version));
                let key = BroadcastKey::Metadata {
                    name: node.name.clone(),
                    incarnation: node.incarnation,
                    version,
                };
                if newer {
                    let meta = NodeMetadata {
                        node,
                        version,
                        data,
                    };
                    if !local {
                        s.pending.push(MemberEvent::Metadata(meta.clone()));
                    }
                    s.metadata.insert(meta.node.name.clone(), meta);
                }
                // Re-disseminate only what was news to us (or our own, on refresh).
                Ok((newer || local).then_some(key))
            }
            BroadcastItem::Leaving { node } => {
                let new = s.remember_leaving(node.clone());
                Ok((new || local).then_some(BroadcastKey::Leaving(node)))
            }
        }
    }
}

#[derive(Debug)]
enum Tick {
    Foca(Timer<NodeId>),
    JoinRetry,
    MetadataRefresh,
}

struct Driver {
    foca: Foca<NodeId, PostcardCodec, StdRng, Handler>,
    rt: AccumulatingRuntime<NodeId>,
    timers: Vec<(Instant, Tick)>,
    /// foca's periodic-gossip timer, held while foca has nothing to gossip (see
    /// [`Driver::fire_due`]).
    held_gossip: Option<Timer<NodeId>>,
    transport: Transport,
    shared: Arc<Mutex<Shared>>,
    events: mpsc::UnboundedSender<MemberEvent>,
    states: HashMap<NodeId, MemberState>,
    connected: bool,
    join_backoff: Duration,
    own_meta: Option<(u64, Vec<u8>)>,
    feedback: mpsc::UnboundedSender<usize>,
    /// Packets dropped because their claimed sender was not the certificate's node.
    impersonations: u64,
    /// Every packet dropped as bad, impersonations included (shared with the handle).
    bad_packets: Arc<AtomicU64>,
    config: SwimConfig,
}

fn state_of(s: State) -> MemberState {
    match s {
        State::Alive => MemberState::Alive,
        State::Suspect => MemberState::Suspect,
        State::Down => MemberState::Down,
    }
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut datagrams: mpsc::Receiver<crate::transport::Datagram>,
        mut feedback: mpsc::UnboundedReceiver<usize>,
    ) {
        info!(identity = %self.foca.identity(), seeds = ?self.config.seeds, "gossip started");
        self.schedule(Duration::ZERO, Tick::JoinRetry);
        self.schedule(self.config.metadata_refresh, Tick::MetadataRefresh);
        let far = || Instant::now() + Duration::from_secs(3600);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        loop {
            // The one sleep, re-armed to the earliest deadline of the timer table.
            let next = self.timers.iter().map(|t| t.0).min().unwrap_or_else(far);
            if sleep.deadline() != next {
                sleep.as_mut().reset(next);
            }
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => {
                        info!("every gossip handle dropped, stopping without a leave");
                        return;
                    }
                    Some(Command::Leave(reply)) => {
                        let res = self.leave().await;
                        let _ = reply.send(res);
                        return;
                    }
                    Some(cmd) => self.command(cmd),
                },
                Some(dgram) = datagrams.recv() => {
                    // A member may only speak for itself: the header's sender must be the node
                    // whose certificate the connection proved (otherwise one compromised member
                    // could declare others down or impersonate them).
                    match foca::Codec::decode_header(&mut PostcardCodec, &dgram.data[..]) {
                        Ok(h) if h.src.name == *dgram.peer => {}
                        Ok(h) => {
                            self.impersonations += 1;
                            self.bad_packets.fetch_add(1, Ordering::Relaxed);
                            warn!(peer = %dgram.peer, claimed = %h.src, total = self.impersonations, "dropped a gossip packet whose sender is not the certificate's node");
                            continue;
                        }
                        Err(e) => {
                            self.bad_packets.fetch_add(1, Ordering::Relaxed);
                            warn!(peer = %dgram.peer, error = %e, "dropped a bad gossip packet");
                            continue;
                        }
                    }
                    let data = dgram.data;
                    if let Err(e) = self.foca.handle_data(&data, &mut self.rt) {
                        match e {
                            foca::Error::Decode(_) | foca::Error::MalformedPacket | foca::Error::CustomBroadcast(_) => {
                                self.bad_packets.fetch_add(1, Ordering::Relaxed);
                                warn!(error = %e, "dropped a bad gossip packet")
                            }
                            _ => debug!(error = %e, "gossip packet not applied"),
                        }
                    }
                }
                Some(limit) = feedback.recv() => self.lower_packet_size(limit),
                () = &mut sleep => self.fire_due(Instant::now()),
            }
            self.flush();
        }
    }

    fn schedule(&mut self, after: Duration, tick: Tick) {
        self.timers.push((Instant::now() + after, tick));
    }

    fn fire_due(&mut self, now: Instant) {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.timers.len() {
            if self.timers[i].0 <= now {
                due.push(self.timers.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Deadline first, then foca's own precedence between timers due together.
        due.sort_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| match (&a.1, &b.1) {
                (Tick::Foca(x), Tick::Foca(y)) => x.cmp(y),
                (Tick::Foca(_), _) => std::cmp::Ordering::Less,
                (_, Tick::Foca(_)) => std::cmp::Ordering::Greater,
                _ => std::cmp::Ordering::Equal,
            })
        });
        for (_, tick) in due {
            match tick {
                // foca re-arms its periodic-gossip timer every `gossip_interval` and sends
                // only when it has updates: at rest, five wake-ups a second of every daemon
                // that do nothing. Held here instead, and handed back as soon as there is
                // something to gossip (`flush`), which also spreads a new update at once
                // rather than at the next tick; foca re-arms it then, so the rate stays one
                // round per interval while the backlog lasts.
                Tick::Foca(timer @ Timer::PeriodicGossip(_)) if self.nothing_to_gossip() => {
                    self.held_gossip = Some(timer);
                }
                Tick::Foca(timer) => {
                    if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                        debug!(error = %e, "foca timer");
                    }
                }
                Tick::JoinRetry => self.try_join(),
                Tick::MetadataRefresh => {
                    self.broadcast_own_metadata();
                    self.schedule(self.config.metadata_refresh, Tick::MetadataRefresh);
                }
            }
        }
    }

    fn try_join(&mut self) {
        if self.connected || self.config.seeds.is_empty() {
            return;
        }
        let me = self.foca.identity().addr;
        for seed in self.config.seeds.clone() {
            if seed == me {
                continue;
            }
            // The seed's identity is unknown: foca accepts an announce addressed to any
            // identity with its address.
            let dst = NodeId {
                name: String::new(),
                addr: seed,
                incarnation: 0,
            };
            if let Err(e) = self.foca.announce(dst, &mut self.rt) {
                warn!(%seed, error = %e, "announce failed");
            }
        }
        debug!(retry_in = ?self.join_backoff, "announced to seeds");
        let after = self.join_backoff;
        self.join_backoff = (self.join_backoff * 2).min(self.config.join_retry_max);
        self.schedule(after, Tick::JoinRetry);
    }

    fn broadcast_own_metadata(&mut self) {
        let Some((version, data)) = self.own_meta.clone() else {
            return;
        };
        let item = BroadcastItem::Metadata {
            node: self.foca.identity().clone(),
            version,
            data,
        };
        match item.to_bytes() {
            Ok(bytes) => {
                if let Err(e) = self.foca.add_broadcast(&bytes) {
                    warn!(error = %e, "could not queue own metadata");
                }
            }
            Err(e) => warn!(error = %e, "could not encode own metadata"),
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Members(reply) => {
                let list = self
                    .foca
                    .iter_membership_state()
                    .map(|m| MemberInfo {
                        id: m.id().clone(),
                        state: state_of(m.state()),
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::Metadata(reply) => {
                let list = lock(&self.shared).metadata.values().cloned().collect();
                let _ = reply.send(list);
            }
            Command::GossipHeld(reply) => {
                let _ = reply.send(self.held_gossip.is_some());
            }
            Command::SetMetadata(data, reply) => {
                let limit = self.config.metadata_limit();
                if data.len() > limit {
                    let _ = reply.send(Err(SwimError::MetadataTooLarge {
                        len: data.len(),
                        limit,
                    }));
                    return;
                }
                let version = self.own_meta.as_ref().map_or(1, |(v, _)| v + 1);
                self.own_meta = Some((version, data));
                self.broadcast_own_metadata();
                // Spread it now rather than at the next probe.
                if let Err(e) = self.foca.broadcast(&mut self.rt) {
                    debug!(error = %e, "metadata broadcast");
                }
                let _ = reply.send(Ok(version));
            }
            Command::Announce(addr, reply) => {
                let dst = NodeId {
                    name: String::new(),
                    addr,
                    incarnation: 0,
                };
                let res = self
                    .foca
                    .announce(dst, &mut self.rt)
                    .map_err(|e| SwimError::Foca(e.to_string()));
                let _ = reply.send(res);
            }
            // The run loop handles Leave itself (it ends the loop); nothing to do here.
            Command::Leave(reply) => {
                let _ = reply.send(Err(SwimError::Foca(
                    "leave must go through the run loop".into(),
                )));
            }
        }
    }

    fn lower_packet_size(&mut self, limit: usize) {
        if limit >= self.config.max_packet_size || limit < 256 {
            return;
        }
        warn!(
            from = self.config.max_packet_size,
            to = limit,
            "a peer connection has a smaller datagram limit, shrinking gossip packets"
        );
        self.config.max_packet_size = limit;
        if let Err(e) = self.foca.set_config(self.config.foca_config()) {
            warn!(error = %e, "could not shrink gossip packets");
        }
    }

    fn nothing_to_gossip(&self) -> bool {
        self.foca.updates_backlog() == 0 && self.foca.custom_broadcast_backlog() == 0
    }

    /// Drains foca's outputs: packets to send, timers to arm, notifications to translate.
    fn flush(&mut self) {
        while let Some((dst, data)) = self.rt.to_send() {
            let t = self.transport.clone();
            let feedback = self.feedback.clone();
            tokio::spawn(async move {
                match t.send_datagram(dst.addr, data).await {
                    Ok(()) => {}
                    Err(TransportError::TooLarge { limit, .. }) => {
                        let _ = feedback.send(limit);
                    }
                    Err(e) => debug!(peer = %dst, error = %e, "gossip send failed"),
                }
            });
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.schedule(after, Tick::Foca(timer));
        }
        while let Some(n) = self.rt.to_notify() {
            self.notification(n);
        }
        // foca does not notify suspicion: read it off the membership table.
        let mut changes = Vec::new();
        for m in self.foca.iter_membership_state() {
            let now = state_of(m.state());
            let before = self.states.get(m.id()).copied();
            match (before, now) {
                (Some(MemberState::Alive), MemberState::Suspect) => {
                    changes.push(MemberEvent::Suspect(m.id().clone()))
                }
                (Some(MemberState::Suspect), MemberState::Alive) => {
                    changes.push(MemberEvent::Up(m.id().clone()))
                }
                _ => {}
            }
            if before.is_some() && before != Some(MemberState::Down) {
                self.states.insert(m.id().clone(), now);
            }
        }
        for ev in changes {
            self.emit(ev);
        }
        let pending = std::mem::take(&mut lock(&self.shared).pending);
        for ev in pending {
            self.emit(ev);
        }
        // Last: the notifications above can queue broadcasts (our metadata on a member's
        // arrival or a rejoin).
        if !self.nothing_to_gossip() {
            if let Some(timer) = self.held_gossip.take() {
                self.schedule(Duration::ZERO, Tick::Foca(timer));
            }
        }
    }

    fn notification(&mut self, n: OwnedNotification<NodeId>) {
        match n {
            OwnedNotification::MemberUp(id) => {
                self.states.insert(id.clone(), MemberState::Alive);
                self.emit(MemberEvent::Up(id));
                // A newcomer has not seen our metadata yet.
                self.broadcast_own_metadata();
            }
            OwnedNotification::MemberDown(id) => {
                self.states.insert(id.clone(), MemberState::Down);
                let left = lock(&self.shared).leaving.contains(&id);
                self.emit(if left {
                    MemberEvent::Left(id)
                } else {
                    MemberEvent::Down(id)
                });
            }
            OwnedNotification::Rename(old, new) => {
                debug!(%old, %new, "member renamed (restarted under a new incarnation)");
                self.states.remove(&old);
                self.states.insert(new.clone(), MemberState::Alive);
                self.emit(MemberEvent::Up(new));
            }
            OwnedNotification::Active => {
                info!("connected to the cluster");
                self.connected = true;
                self.join_backoff = self.config.join_retry_initial;
            }
            OwnedNotification::Idle => {
                warn!("no live members left, rejoining through the seeds");
                self.connected = false;
                self.schedule(Duration::ZERO, Tick::JoinRetry);
            }
            OwnedNotification::Defunct => warn!("this node was declared down by the cluster"),
            OwnedNotification::Rejoin(id) => {
                warn!(new = %id, "declared down by the cluster, rejoined under a renewed identity");
                self.emit(MemberEvent::Rejoined(id));
                self.broadcast_own_metadata();
            }
        }
    }

    fn emit(&self, ev: MemberEvent) {
        debug!(event = ?ev, "membership event");
        let _ = self.events.send(ev);
    }

    async fn leave(&mut self) -> Result<(), SwimError> {
        let deadline = Instant::now() + self.config.leave_timeout;
        let item = BroadcastItem::Leaving {
            node: self.foca.identity().clone(),
        }
        .to_bytes()?;
        self.foca
            .add_broadcast(&item)
            .map_err(|e| SwimError::Foca(e.to_string()))?;
        self.foca
            .leave_cluster(&mut self.rt)
            .map_err(|e| SwimError::Foca(e.to_string()))?;
        let mut sends = tokio::task::JoinSet::new();
        while let Some((dst, data)) = self.rt.to_send() {
            let t = self.transport.clone();
            sends.spawn(async move { (dst.clone(), t.send_datagram(dst.addr, data).await) });
        }
        let n = sends.len();
        let waited = tokio::time::timeout_at(deadline, async {
            while let Some(r) = sends.join_next().await {
                if let Ok((dst, Err(e))) = r {
                    debug!(peer = %dst, error = %e, "leave notice not sent");
                }
            }
        })
        .await;
        if waited.is_err() {
            return Err(SwimError::LeaveTimeout(self.config.leave_timeout));
        }
        // quinn transmits queued datagrams from its connection driver: give it a moment
        // before the caller closes the endpoint (which would discard them).
        let settle = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        tokio::time::sleep(settle).await;
        info!(told = n, "left the cluster");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, incarnation: u64) -> NodeId {
        NodeId {
            name: name.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            incarnation,
        }
    }

    fn meta(node: NodeId, version: u64) -> Vec<u8> {
        BroadcastItem::Metadata {
            node,
            version,
            data: vec![version as u8],
        }
        .to_bytes()
        .unwrap()
    }

    #[test]
    fn metadata_is_latest_wins_by_incarnation_then_version() {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut h = Handler {
            shared: shared.clone(),
        };
        let from = id("peer", 1);
        assert!(h
            .receive_item(&meta(id("a", 1), 2), Some(&from))
            .unwrap()
            .is_some());
        // Older or equal: not news, not re-disseminated, not stored.
        assert!(h
            .receive_item(&meta(id("a", 1), 1), Some(&from))
            .unwrap()
            .is_none());
        assert!(h
            .receive_item(&meta(id("a", 1), 2), Some(&from))
            .unwrap()
            .is_none());
        // A restarted node (newer incarnation) wins even with a lower counter.
        assert!(h
            .receive_item(&meta(id("a", 2), 1), Some(&from))
            .unwrap()
            .is_some());
        let s = lock(&shared);
        assert_eq!(s.metadata["a"].node.incarnation, 2);
        assert_eq!(s.metadata["a"].version, 1);
        assert_eq!(s.pending.len(), 2, "one event per accepted change");
    }

    #[test]
    fn own_items_are_always_queued_and_garbage_is_an_error() {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut h = Handler {
            shared: shared.clone(),
        };
        assert!(h
            .receive_item(&meta(id("me", 1), 1), None)
            .unwrap()
            .is_some());
        assert!(
            h.receive_item(&meta(id("me", 1), 1), None)
                .unwrap()
                .is_some(),
            "refresh re-queues"
        );
        assert!(lock(&shared).pending.is_empty(), "no event about ourselves");
        let leave = BroadcastItem::Leaving { node: id("b", 1) }
            .to_bytes()
            .unwrap();
        assert!(h.receive_item(&leave, Some(&id("c", 1))).unwrap().is_some());
        assert!(h.receive_item(&leave, Some(&id("c", 1))).unwrap().is_none());
        assert!(lock(&shared).leaving.contains(&id("b", 1)));
        let e = h
            .receive_item(b"\x01\xff\xff", Some(&id("c", 1)))
            .unwrap_err();
        assert!(e.to_string().contains("malformed gossip broadcast"), "{e}");
    }

    #[test]
    fn made_up_names_and_leave_announcements_are_bounded() {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut h = Handler { shared: shared.clone() };
        let from = id("c", 1);
        for i in 0..MAX_METADATA_NAMES {
            assert!(h.receive_item(&meta(id(&format!("n{i}"), 1), 1), Some(&from)).unwrap().is_some());
        }
        let e = h.receive_item(&meta(id("one-too-many", 1), 1), Some(&from)).unwrap_err();
        assert!(e.to_string().contains("\"one-too-many\"") && e.to_string().contains("4096"), "{e}");
        // A known name still takes newer metadata (a restart, a new version).
        assert!(h.receive_item(&meta(id("n7", 2), 1), Some(&from)).unwrap().is_some());
        assert_eq!(lock(&shared).metadata["n7"].node.incarnation, 2);
        assert_eq!(lock(&shared).metadata.len(), MAX_METADATA_NAMES);
        assert!(h.receive_item(&meta(id("me", 1), 1), None).unwrap().is_some(), "our own is never refused");

        for i in 0..MAX_LEAVING + 10 {
            let leave = BroadcastItem::Leaving { node: id(&format!("l{i}"), 1) }.to_bytes().unwrap();
            assert!(h.receive_item(&leave, Some(&from)).unwrap().is_some());
        }
        let s = lock(&shared);
        assert_eq!((s.leaving.len(), s.leaving_order.len()), (MAX_LEAVING, MAX_LEAVING));
        assert!(!s.leaving.contains(&id("l0", 1)), "the oldest is forgotten first");
        assert!(s.leaving.contains(&id(&format!("l{}", MAX_LEAVING + 9), 1)));
    }

    #[test]
    fn newer_keys_replace_older_ones_in_the_backlog() {
        let k = |n: &str, i, v| BroadcastKey::Metadata {
            name: n.into(),
            incarnation: i,
            version: v,
        };
        assert!(k("a", 1, 2).invalidates(&k("a", 1, 1)));
        assert!(!k("a", 1, 1).invalidates(&k("a", 1, 2)));
        assert!(k("a", 2, 0).invalidates(&k("a", 1, 9)));
        assert!(!k("a", 1, 2).invalidates(&k("b", 1, 1)));
        assert!(!BroadcastKey::Leaving(id("a", 1)).invalidates(&k("a", 1, 1)));
    }

    #[test]
    fn config_is_validated_and_bound_follows_the_knobs() {
        let mut c = SwimConfig::new(id("a", 1), vec![]);
        assert!(c.validate().is_ok());
        assert_eq!(
            c.detection_bound(5),
            Duration::from_millis(500 * 4 + 500 + 3000 + 600)
        );
        c.probe_rtt = c.probe_period;
        assert!(c.validate().unwrap_err().to_string().contains("probe_rtt"));
        let mut c = SwimConfig::new(id("a", 1), vec![]);
        c.max_packet_size = 100;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_packet_size"));
    }
}
