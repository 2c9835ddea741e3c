//! The cluster member inside corrald: bootstrap or join (certificates), the QUIC endpoint,
//! SWIM gossip, Raft on redb, and the glue between them: membership follows gossip (joiners
//! become learners, learners are promoted up to the voter target, dead voters are demoted),
//! writes are forwarded to the leader, and every member can serve joins.
//!
//! # Layout
//! - [`records`]: the node's records inside the replicated state (CA, tokens, removals).
//! - [`membership`]: the leader's loop that makes Raft membership follow gossip.
//! - this file: start-up, the gossip view, admin requests that touch the cluster.

pub mod membership;
pub mod records;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gossip::tls::{ClusterCa, JoinToken, NodeCredentials, TokenValidator, Why};
use gossip::transport::{join_cluster, Alpn, Peer, StreamHandler, TcpRequests, Transport, TransportConfig, TransportError};
use gossip::{MemberEvent, NodeId as GossipId, Swim, SwimConfig};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use raft::network::{Network, RpcSendError, RpcSender};
use raft::{node_id_for, ClusterState, Command, Node, NodeId};
use tokio::sync::{mpsc, Notify};

use crate::api::{self, MemberStatus, RaftStatus, Request, ResponseBody, TokenInfo};
use crate::config::{ClusterSection, Config};
use records::*;

/// How long a write may wait for its commit before the caller is told the outcome is unknown.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Liveness of a member as seen from gossip events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl Liveness {
    fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Suspect => "suspect",
            Liveness::Dead => "dead",
            Liveness::Left => "left",
        }
    }
}

/// The newest identity gossip reported for a name, and what it last said about it.
#[derive(Debug, Clone)]
pub struct SeenMember {
    pub id: GossipId,
    pub state: Liveness,
    pub since: Instant,
}

/// A running cluster member.
pub struct Cluster {
    pub name: String,
    pub id: NodeId,
    pub addr: SocketAddr,
    pub transport: Transport,
    /// Raft's RPC connections (TCP with mutual TLS, see `RaftRpc`).
    raft_tcp: TcpRequests,
    pub raft: raft::Raft,
    pub sm: raft::StateMachine,
    swim: tokio::sync::Mutex<Option<Swim>>,
    identity: GossipId,
    seen: Mutex<HashMap<String, SeenMember>>,
    cfg: ClusterSection,
    poke: Notify,
    stop: mpsc::Sender<()>,
    /// Serializes read-modify-write of the rules on the leader.
    rules_lock: tokio::sync::Mutex<()>,
    /// Raft/admin messages refused because they did not decode.
    pub bad_messages: std::sync::atomic::AtomicU64,
    /// Gossip packets dropped as bad (`gossip::Swim::bad_packets`), for the metrics.
    pub gossip_bad_packets: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Where the Raft log and certificates live (named when Raft stops on a storage error).
    data_dir: PathBuf,
}

/// The Raft RPC transport: requests over TCP with mutual TLS on the node's cluster port number
/// (the QUIC endpoint's is UDP). A change costs two exchanges per follower, and a kept TCP
/// connection costs a fraction of a QUIC stream's CPU per exchange (docs/BENCHMARKS.md,
/// propagation Round 14). The QUIC endpoint still answers Raft requests on its Raft ALPN, which
/// is how nodes of the previous version send them: upgraded one at a time, followers first, a
/// cluster keeps replicating (the old leader reaches the upgraded followers over QUIC, and a
/// new leader is one of them).
#[derive(Clone)]
struct RaftRpc(TcpRequests);

impl RpcSender for RaftRpc {
    async fn send(&self, addr: &str, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, RpcSendError> {
        let a: SocketAddr = addr
            .parse()
            .map_err(|_| RpcSendError::Unreachable(format!("bad peer address {addr:?}")))?;
        match tokio::time::timeout(timeout, self.0.request(a, &payload)).await {
            Err(_) => Err(late_answer(addr, timeout, self.0.is_connected(a))),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(match e {
                TransportError::ConnectTimeout { .. }
                | TransportError::ConnectFailed { .. }
                | TransportError::HandshakeRefused { .. }
                | TransportError::PeerRejected { .. }
                | TransportError::Connection { .. } => RpcSendError::Unreachable(e.to_string()),
                other => RpcSendError::Failed(other.to_string()),
            }),
        }
    }
}

/// The error for a Raft request whose answer did not come within `timeout` (openraft's
/// heartbeat interval for AppendEntries). `Unreachable` makes openraft pause replication to the
/// peer for 500 ms, right for a peer it cannot even connect to (no retry every heartbeat), wrong
/// for one slow answer on a live connection (a busy peer, a slow disk sync): that pause would
/// hold a change heartbeat + 500 ms for that peer. A slow answer is a failed exchange, retried
/// at the next heartbeat or append; a peer that is really gone has not answered for the
/// transport's idle timeout and is then unreachable.
fn late_answer(addr: &str, timeout: Duration, connected: bool) -> RpcSendError {
    if connected {
        RpcSendError::Failed(format!("no answer from {addr} within {timeout:?} (it answered recently)"))
    } else {
        RpcSendError::Unreachable(format!("no answer from {addr} within {timeout:?}, and none recently"))
    }
}

/// Join secrets checked against the token records in the replicated state.
struct RaftTokens(raft::StateMachine, std::sync::Weak<Cluster>);

impl TokenValidator for RaftTokens {
    fn validate(&self, secret: &str) -> Result<(), Why> {
        let state = self.0.current();
        check_token(state.namespace(NS_TOKENS).map(|(_, v)| v.as_slice()), secret, now_unix()).map_err(|why| {
            tracing::warn!(%why, "join refused");
            Why(why)
        })
    }

    fn admits_name(&self, name: &str, remote: SocketAddr) -> Result<(), Why> {
        let Some(c) = self.1.upgrade() else { return Ok(()) };
        if name == c.name {
            return Err(Why(format!("{name} is this node, which is running")));
        }
        match c.seen().get(name) {
            Some(s) if matches!(s.state, Liveness::Alive | Liveness::Suspect) && s.id.addr.ip() != remote.ip() => Err(Why(format!(
                "a member named {name} is alive at {}: two processes cannot be one node (a copied configuration?); stop that one, or remove it with `corralctl remove {name}`, first",
                s.id.addr
            ))),
            _ => Ok(()),
        }
    }
}

fn raft_config(c: &ClusterSection) -> Result<openraft::Config> {
    let hb = c.heartbeat.as_millis().max(10) as u64;
    let cfg = openraft::Config {
        cluster_name: c.name.clone(),
        heartbeat_interval: hb,
        election_timeout_min: hb * 4,
        election_timeout_max: hb * 8,
        install_snapshot_timeout: 2000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    };
    cfg.validate().map_err(|e| anyhow!("raft configuration: {e}"))
}

fn read_token(c: &ClusterSection) -> Result<Option<JoinToken>> {
    let text = match (&c.token, &c.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("read token_file {}", f.display()))?,
        (None, None) => return Ok(None),
    };
    Ok(Some(text.trim().parse().context("cluster token")?))
}

/// Obtains this node's certificate: creates the cluster (first node, no `join`) or trades the
/// join token for a certificate at one of the seeds. Returns whether the cluster was created.
async fn credentials(dir: &Path, name: &str, c: &ClusterSection) -> Result<bool> {
    if NodeCredentials::exist_in(dir) {
        return Ok(false);
    }
    if c.join.is_empty() {
        tracing::info!(dir = %dir.display(), "no credentials and no seeds: creating a new cluster");
        let ca = ClusterCa::generate(&c.name)?;
        ca.save(dir)?;
        ca.issue(name)?.save(dir)?;
        return Ok(true);
    }
    let token = read_token(c)?.ok_or_else(|| {
        anyhow!("this node has no certificate yet: [cluster] needs token (or token_file) from `corralctl token create` to join")
    })?;
    let mut last = None;
    for attempt in 0..10u32 {
        for seed in &c.join {
            match join_cluster(*seed, &token, name).await {
                Ok(creds) => {
                    creds.save(dir)?;
                    tracing::info!(%seed, "joined: certificate saved in {}", dir.display());
                    return Ok(false);
                }
                // A refusal (bad token, wrong CA) will not change by retrying.
                Err(e @ (TransportError::JoinRefused { .. } | TransportError::Tls(_))) => {
                    bail!("join through {seed} refused: {e}")
                }
                Err(e) => {
                    tracing::warn!(%seed, error = %e, "join attempt failed");
                    last = Some(e);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250 * (1 << attempt.min(4)))).await;
    }
    bail!("could not reach any seed {:?}: {}", c.join, last.map(|e| e.to_string()).unwrap_or_default())
}

impl Cluster {
    /// Starts the member: credentials, endpoint, Raft, gossip, and the background loops.
    /// `stop` is how a `leave` ends the daemon.
    pub async fn start(config: &Config, stop: mpsc::Sender<()>) -> Result<Arc<Cluster>> {
        let c = config.cluster.clone().ok_or_else(|| anyhow!("no [cluster] section"))?;
        let addr = config.node.bind.ok_or_else(|| anyhow!("[node] bind is required with [cluster]"))?;
        let name = node_name(config)?;
        let dir: PathBuf = config.node.data_dir.clone();
        std::fs::create_dir_all(&dir).with_context(|| format!("create data_dir {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let created = credentials(&dir, &name, &c).await?;
        let creds = NodeCredentials::load(&dir)?;
        if creds.name != name {
            bail!(
                "the certificate in {} is for node {:?} but this node is named {:?}: a node keeps its name (or start with an empty data_dir)",
                dir.display(),
                creds.name,
                name
            );
        }
        let transport = Transport::bind(TransportConfig::new(addr, creds.clone()))?;
        // Raft's RPCs go over TCP on the same port number (see `RaftRpc`).
        let raft_tcp = TcpRequests::bind(TransportConfig::new(transport.local_addr()?, creds), Alpn::Raft)?;
        let (log, sm) = raft::open(&dir.join("raft.redb"))?;
        log.on_writer_thread(|| crate::realtime::enter("raft-log"));
        let id = node_id_for(&name);
        let raft = raft::Raft::new(id, Arc::new(raft_config(&c)?), Network::new(RaftRpc(raft_tcp.clone())), log.clone(), sm.clone())
            .await
            .map_err(|e| anyhow!("start raft: {e}"))?;
        raft::inline_appends_unless_leader(&log, &raft);

        // A restarted member rejoins gossip through the peers its Raft log knows, not only the
        // configured seeds (the node that created the cluster has none).
        let mut seeds = c.join.clone();
        let (_, stored) = openraft::storage::RaftStateMachine::applied_state(&mut sm.clone())
            .await
            .map_err(|e| anyhow!("read the stored membership: {e}"))?;
        for (nid, n) in stored.membership().nodes() {
            if let (true, Ok(a)) = (*nid != id, n.addr.parse::<SocketAddr>()) {
                if !seeds.contains(&a) {
                    seeds.push(a);
                }
            }
        }
        let identity = GossipId::fresh(name.clone(), addr);
        let mut swim_cfg = SwimConfig::new(identity.clone(), seeds);
        swim_cfg.probe_period = c.probe_period;
        swim_cfg.probe_rtt = (c.probe_period * 2 / 5).max(Duration::from_millis(10));
        swim_cfg.suspect_to_down_after = c.suspect_timeout;
        let (swim, events) = Swim::start(&transport, swim_cfg)?;
        let gossip_bad_packets = swim.bad_packets();

        let cluster = Arc::new(Cluster {
            name: name.clone(),
            id,
            addr,
            transport: transport.clone(),
            raft_tcp: raft_tcp.clone(),
            raft: raft.clone(),
            sm: sm.clone(),
            swim: tokio::sync::Mutex::new(Some(swim)),
            identity,
            seen: Mutex::new(HashMap::new()),
            cfg: c.clone(),
            poke: Notify::new(),
            stop,
            rules_lock: tokio::sync::Mutex::new(()),
            bad_messages: Default::default(),
            gossip_bad_packets,
            data_dir: dir.clone(),
        });

        let r = raft.clone();
        let me = cluster.clone();
        let raft_handler: StreamHandler = Arc::new(move |peer: Peer, body: Vec<u8>| {
            let r = r.clone();
            let me = me.clone();
            Box::pin(async move {
                let res = raft::network::serve_from(&r, raft::node_id_for(&peer.name), &body).await;
                if let Err(e) = &res {
                    me.bad_messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(peer = %peer.name, error = %e, "bad raft message refused");
                }
                res
            })
        });
        raft_tcp.register_handler(raft_handler.clone());
        transport.register_handler(Alpn::Raft, raft_handler)?;

        if created {
            let mut members = BTreeMap::new();
            members.insert(id, Node { name: name.clone(), addr: addr.to_string() });
            raft.initialize(members).await.map_err(|e| anyhow!("initialize raft: {e}"))?;
        } else if !raft.is_initialized().await.map_err(|e| anyhow!("{e}"))? && c.join.is_empty() {
            tracing::warn!(
                "this node has a certificate but an empty Raft log and no seeds: it waits to be added by the cluster"
            );
        }
        if ClusterCa::exists_in(&dir) {
            transport.serve_joins(ClusterCa::load(&dir)?, Arc::new(RaftTokens(sm.clone(), Arc::downgrade(&cluster))));
        }
        tokio::spawn(cluster.clone().gossip_events(events));
        tokio::spawn(cluster.clone().ca_keeper(dir.clone()));
        tokio::spawn(cluster.clone().membership_loop());
        tokio::spawn(cluster.clone().raft_watch());
        if c.fence_priority_drop > 0 {
            tokio::spawn(cluster.clone().quorum_watch());
        }
        tracing::info!(%name, %addr, raft_id = id, "cluster member started");
        Ok(cluster)
    }

    /// Why Raft stopped on this node, if it stopped on its own (a storage error: the data_dir's
    /// disk full, an I/O error). The process, its VRRP and its IPVS table live on, but the node
    /// no longer follows rule changes or verdicts until corrald is restarted; `None` while Raft
    /// runs and after an ordinary shutdown.
    pub fn raft_stopped(&self) -> Option<String> {
        match &self.raft.metrics().borrow().running_state {
            Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
            Err(e) => Some(format!("Raft stopped: {e}")),
        }
    }

    /// Says once, plainly, that Raft stopped on this node and what to do; openraft's own
    /// messages for it repeat with every message from the leader and are not shown. Looks on
    /// the housekeeping grid, not at every metrics update (several per rule change).
    async fn raft_watch(self: Arc<Self>) {
        let mut tick = crate::ticks::aligned(4 * crate::ticks::GRID);
        loop {
            if let Some(why) = self.raft_stopped() {
                tracing::error!(
                    data_dir = %self.data_dir.display(),
                    "{why}: this node no longer follows rule changes or health verdicts (its IPVS table stays as it is{}); free space in or repair the data_dir, then restart corrald",
                    if self.cfg.fence_priority_drop > 0 { ", and quorum fencing lowers its VRRP priority" } else { "" }
                );
                return;
            }
            tick.tick().await;
        }
    }

    /// Whether gossip shows this node a majority of the Raft voters (itself included).
    pub fn sees_quorum(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        if m.running_state.is_err() {
            // Raft stopped here: whatever gossip shows, this node follows no majority.
            return false;
        }
        let mem = m.membership_config.membership().clone();
        let voters: Vec<NodeId> = mem.voter_ids().collect();
        if voters.is_empty() {
            return true;
        }
        let seen = self.seen();
        let alive = voters
            .iter()
            .filter(|v| {
                **v == self.id
                    || mem
                        .get_node(v)
                        .and_then(|n| seen.get(&n.name))
                        .is_some_and(|s| matches!(s.state, Liveness::Alive | Liveness::Suspect))
            })
            .count();
        alive * 2 > voters.len()
    }

    /// Quorum fencing: publishes [`crate::tracking::QUORUM_LOST`] for the VRRP tracker.
    async fn quorum_watch(self: Arc<Self>) {
        let mut tick = crate::ticks::aligned(crate::ticks::GRID);
        loop {
            tick.tick().await;
            let lost = !self.sees_quorum();
            let was = crate::tracking::QUORUM_LOST.swap(lost, std::sync::atomic::Ordering::Relaxed);
            if was != lost {
                tracing::warn!(lost, "quorum fencing: majority of Raft voters {}", if lost { "out of sight" } else { "back in sight" });
            }
        }
    }

    async fn gossip_events(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<MemberEvent>) {
        while let Some(ev) = events.recv().await {
            let (id, state) = match ev {
                MemberEvent::Up(id) => (id, Liveness::Alive),
                MemberEvent::Suspect(id) => (id, Liveness::Suspect),
                MemberEvent::Down(id) => (id, Liveness::Dead),
                MemberEvent::Left(id) => (id, Liveness::Left),
                MemberEvent::Rejoined(id) => {
                    tracing::warn!(incarnation = id.incarnation, "the cluster declared us down; rejoined");
                    continue;
                }
                MemberEvent::Metadata(_) => continue,
            };
            tracing::info!(member = %id.name, addr = %id.addr, state = state.as_str(), "gossip");
            {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                let newer = seen.get(&id.name).is_none_or(|s| id.incarnation >= s.id.incarnation);
                if newer {
                    let changed = seen.get(&id.name).is_none_or(|s| s.state != state || s.id != id);
                    let since = if changed { Instant::now() } else { seen[&id.name].since };
                    seen.insert(id.name.clone(), SeenMember { id, state, since });
                }
            }
            self.poke.notify_one();
        }
    }

    /// Publishes the CA into the replicated state (first node, once it leads) and, on nodes
    /// that joined, starts serving joins once the CA has been replicated to them.
    async fn ca_keeper(self: Arc<Self>, dir: PathBuf) {
        let mut rx = self.sm.subscribe();
        let mut serving = ClusterCa::exists_in(&dir);
        loop {
            let state = rx.borrow_and_update().clone();
            match state.get(NS_CLUSTER, KEY_CA) {
                None if serving => {
                    // We hold the CA but the cluster does not: publish it (leader only).
                    if let Ok(ca) = ClusterCa::load(&dir) {
                        let (cert_pem, key_pem) = ca.to_pem();
                        if let Ok(value) = raft::codec::encode("ca", &CaRecord { cert_pem, key_pem }) {
                            let cmd = Command::Put { ns: NS_CLUSTER.into(), key: KEY_CA.into(), value };
                            if self.is_leader() {
                                if let Err(e) = self.write(cmd).await {
                                    tracing::debug!(error = %e, "publishing the CA");
                                }
                            }
                        }
                    }
                }
                Some(bytes) if !serving => match raft::codec::decode::<CaRecord>("ca record", bytes) {
                    Ok(rec) => match ClusterCa::from_pem(Path::new("raft:cluster/ca"), rec.cert_pem, &rec.key_pem) {
                        Ok(ca) => {
                            self.transport.serve_joins(ca, Arc::new(RaftTokens(self.sm.clone(), Arc::downgrade(&self))));
                            serving = true;
                            tracing::info!("cluster CA replicated here: this node now serves joins");
                        }
                        Err(e) => tracing::error!(error = %e, "replicated CA does not load"),
                    },
                    Err(e) => tracing::error!(error = %e, "replicated CA record"),
                },
                _ => {}
            }
            if serving && state.get(NS_CLUSTER, KEY_CA).is_some() {
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Whether this node is the Raft leader right now.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Proposes `cmd` on this node (must be the leader) and waits for its commit.
    pub async fn write(&self, cmd: Command) -> Result<u64, WriteError> {
        let size = cmd.approx_size();
        if size > raft::types::MAX_ENTRY_BYTES {
            return Err(WriteError::TooLarge { size, limit: raft::types::MAX_ENTRY_BYTES });
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(cmd)).await {
            Err(_) => Err(WriteError::Timeout),
            Ok(Ok(r)) => Ok(r.data.revision),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(WriteError::NotLeader(f.leader_node.map(|n| n.addr))),
            Ok(Err(e)) => Err(WriteError::Other(e.to_string())),
        }
    }

    /// Names of the members gossip shows alive (or suspect: not yet declared dead), this node
    /// included, sorted: the set health-check observers are chosen from.
    pub fn live_members(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .seen()
            .into_iter()
            .filter(|(_, s)| matches!(s.state, Liveness::Alive | Liveness::Suspect))
            .map(|(n, _)| n)
            .collect();
        if !v.contains(&self.name) {
            v.push(self.name.clone());
        }
        v.sort();
        v
    }

    /// A member's QUIC address as gossip knows it.
    pub fn member_addr(&self, name: &str) -> Option<SocketAddr> {
        self.seen().get(name).map(|s| s.id.addr)
    }

    /// The current Raft leader: its id and address, or no address when it is this node.
    pub fn leader(&self) -> Option<(NodeId, Option<SocketAddr>)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let l = m.current_leader?;
        if l == self.id {
            return Some((l, None));
        }
        let addr = m.membership_config.membership().get_node(&l)?.addr.parse().ok()?;
        Some((l, Some(addr)))
    }

    /// The gossip view as a snapshot.
    pub fn seen(&self) -> HashMap<String, SeenMember> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The answer to `corralctl members`.
    pub fn members(&self) -> Vec<MemberStatus> {
        let m = self.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<NodeId> = mem.voter_ids().collect();
        let role = |id: NodeId, known: bool| -> String {
            if m.current_leader == Some(id) {
                "leader"
            } else if voters.contains(&id) {
                "voter"
            } else if known {
                "learner"
            } else {
                "none"
            }
            .into()
        };
        let mut out: BTreeMap<String, MemberStatus> = BTreeMap::new();
        out.insert(
            self.name.clone(),
            MemberStatus {
                name: self.name.clone(),
                addr: self.addr.to_string(),
                state: "alive".into(),
                raft: role(self.id, mem.get_node(&self.id).is_some()),
                incarnation: self.identity.incarnation,
            },
        );
        for (name, s) in self.seen() {
            if name == self.name {
                continue;
            }
            let id = node_id_for(&name);
            out.insert(
                name.clone(),
                MemberStatus {
                    name,
                    addr: s.id.addr.to_string(),
                    state: s.state.as_str().into(),
                    raft: role(id, mem.get_node(&id).is_some()),
                    incarnation: s.id.incarnation,
                },
            );
        }
        for (id, node) in mem.nodes() {
            out.entry(node.name.clone()).or_insert_with(|| MemberStatus {
                name: node.name.clone(),
                addr: node.addr.clone(),
                state: "dead".into(),
                raft: role(*id, true),
                incarnation: 0,
            });
        }
        out.into_values().collect()
    }

    /// The answer to `corralctl raft status`.
    pub fn raft_status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership().clone();
        let name_of = |id: &NodeId| mem.get_node(id).map(|n| n.name.clone()).unwrap_or_else(|| format!("#{id}"));
        let voters: Vec<String> = mem.voter_ids().map(|i| name_of(&i)).collect();
        let learners: Vec<String> = mem.learner_ids().map(|i| name_of(&i)).collect();
        let last = m.last_log_index.unwrap_or(0);
        let lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.id)
                    .map(|(id, matched)| (name_of(id), last.saturating_sub(matched.map(|l| l.index).unwrap_or(0))))
                    .collect()
            })
            .unwrap_or_default();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower if mem.voter_ids().any(|v| v == self.id) => "follower",
            ServerState::Follower | ServerState::Learner => "learner",
            ServerState::Candidate => "candidate",
            ServerState::Shutdown => "shutdown",
        };
        RaftStatus {
            node: self.name.clone(),
            role: role.into(),
            leader: m.current_leader.map(|l| name_of(&l)),
            term: m.current_term,
            last_log_index: last,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            voters,
            learners,
            lag,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            stopped: self.raft_stopped(),
        }
    }

    /// Runs a request that needs the leader: here if we lead, else forwarded over QUIC (mutual
    /// TLS) to the leader's admin service. Waits briefly for an election in progress.
    pub async fn on_leader(&self, req: &Request) -> Result<ResponseBody, String> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let (leader, addr) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                let l = m.current_leader;
                let addr = l.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
                (l, addr)
            };
            match (leader, addr) {
                (Some(l), _) if l == self.id => match self.execute_as_leader(req).await {
                    Err(LeaderError::NotLeader) if Instant::now() < deadline => {}
                    Err(e) => return Err(e.to_string()),
                    Ok(r) => return Ok(r),
                },
                (Some(_), Some(addr)) => {
                    let a: SocketAddr = addr.parse().map_err(|_| format!("leader address {addr:?} is not ip:port"))?;
                    let fwd = Request::Forwarded { inner: Box::new(req.clone()) };
                    match admin_call(&self.transport, a, &fwd, None).await {
                        Ok(r) => return Ok(r),
                        Err(AdminCallError::Answered(e)) => return Err(e),
                        Err(e) if Instant::now() < deadline => tracing::debug!(error = %e, "forward to leader"),
                        Err(e) => return Err(format!("the leader at {addr} did not answer: {e}")),
                    }
                }
                _ if Instant::now() >= deadline => {
                    return Err("the cluster has no leader (no quorum of voters reachable from this node): writes are refused until a majority is back".into())
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Executes a replicated-state request on the leader.
    pub async fn execute_as_leader(&self, req: &Request) -> Result<ResponseBody, LeaderError> {
        if !self.is_leader() {
            return Err(LeaderError::NotLeader);
        }
        match req {
            Request::KvPut { key, value } => {
                let rev = self
                    .write(Command::Put { ns: NS_KV.into(), key: key.clone(), value: value.as_bytes().to_vec() })
                    .await?;
                Ok(ResponseBody::Done { message: format!("{key} set"), revision: Some(rev) })
            }
            Request::TokenCreate { ttl, description } => {
                let now = now_unix();
                let expires_unix = token_expiry(now, ttl.as_deref()).map_err(LeaderError::Bad)?;
                let state = self.sm.current();
                let ca = state
                    .get(NS_CLUSTER, KEY_CA)
                    .ok_or_else(|| LeaderError::Bad("the cluster CA is not in the replicated state yet; retry in a moment".into()))?;
                let ca: CaRecord = raft::codec::decode("ca record", ca).map_err(|e| LeaderError::Bad(e.to_string()))?;
                let ca = ClusterCa::from_pem(Path::new("raft:cluster/ca"), ca.cert_pem, &ca.key_pem)
                    .map_err(|e| LeaderError::Bad(e.to_string()))?;
                let token = JoinToken::generate(ca.fingerprint()).map_err(|e| LeaderError::Bad(e.to_string()))?;
                let hash = secret_hash(&token.secret);
                let rec = TokenRecord {
                    id: hash[..12].to_string(),
                    secret_sha256: hash,
                    created_unix: now,
                    expires_unix,
                    revoked: false,
                    description: description.clone(),
                };
                let value = raft::codec::encode("token", &rec).map_err(|e| LeaderError::Bad(e.to_string()))?;
                self.write(Command::Put { ns: NS_TOKENS.into(), key: rec.id.clone(), value }).await?;
                Ok(ResponseBody::TokenCreated { token: token.to_string(), info: token_info(&rec) })
            }
            Request::TokenRevoke { id } => {
                let state = self.sm.current();
                let bytes = state.get(NS_TOKENS, id).ok_or_else(|| LeaderError::Bad(format!("no join token with id {id:?}")))?;
                let mut rec: TokenRecord = raft::codec::decode("token", bytes).map_err(|e| LeaderError::Bad(e.to_string()))?;
                rec.revoked = true;
                let value = raft::codec::encode("token", &rec).map_err(|e| LeaderError::Bad(e.to_string()))?;
                let rev = self.write(Command::Put { ns: NS_TOKENS.into(), key: id.clone(), value }).await?;
                Ok(ResponseBody::Done { message: format!("token {id} revoked"), revision: Some(rev) })
            }
            Request::Remove { node } => self.remove(node).await,
            Request::Apply { rules, dry_run } => {
                // A large table costs real CPU to check, encode and diff: off the runtime, whose
                // heartbeats would otherwise wait and cost this node its leadership.
                let rules = rules.clone();
                let rules = off_runtime(rules.virtual_servers.len(), move || {
                    rules.validate().map_err(|(segs, m)| LeaderError::Bad(format!("{}: {m}", crate::config::key_path(&segs))))?;
                    Ok(rules)
                })
                .await?;
                let _g = self.rules_lock.lock().await;
                self.write_rules(rules, *dry_run).await
            }
            Request::Edit { edit } | Request::PreviewEdit { edit } => {
                let dry_run = matches!(req, Request::PreviewEdit { .. });
                // Stage marks for `cargo xtask bench propagation --stages` (off by default).
                tracing::debug!(target: "corral_stage", stage = "request", first = 0u64, last = 0u64, took_us = 0u64);
                let _g = self.rules_lock.lock().await;
                let old = self.current_rules().map_err(LeaderError::Bad)?;
                let mut rules = old.clone();
                edit.apply(&mut rules).map_err(LeaderError::Bad)?;
                self.replace_rules(old, rules, dry_run).await
            }
            other => Err(LeaderError::Bad(format!("{other:?} is not a replicated request"))),
        }
    }

    /// The rules as replicated here (empty when none were ever applied).
    pub fn current_rules(&self) -> Result<crate::rules::RuleSet, String> {
        crate::director::rules_of(&self.sm.current()).map(Option::unwrap_or_default)
    }

    async fn write_rules(&self, rules: crate::rules::RuleSet, dry_run: bool) -> Result<ResponseBody, LeaderError> {
        let old = self.current_rules().map_err(LeaderError::Bad)?;
        self.replace_rules(old, rules, dry_run).await
    }

    /// Replaces `old` (the rules as replicated now, read under `rules_lock`) by `rules`. The
    /// diff for the answer is computed after the Raft write, off the change's path.
    async fn replace_rules(
        &self,
        old: crate::rules::RuleSet,
        rules: crate::rules::RuleSet,
        dry_run: bool,
    ) -> Result<ResponseBody, LeaderError> {
        let current = self.sm.current();
        let verdicts = Arc::new(crate::health::verdicts::verdicts_of(&current));
        let (old, rules) = (Arc::new(old), Arc::new(rules));
        let changes = || {
            let (old, rules, verdicts) = (old.clone(), rules.clone(), verdicts.clone());
            off_runtime(rules.virtual_servers.len().max(old.virtual_servers.len()), move || {
                let mut c = crate::rules::describe_diff(&old.desired_table(&verdicts), &rules.desired_table(&verdicts));
                if old.timeouts != rules.timeouts {
                    c.push(format!("set connection timeouts: {}", crate::rules::timeouts_text(rules.timeouts)));
                }
                Ok(c)
            })
        };
        if dry_run {
            return Ok(ResponseBody::Applied { revision: None, dry_run: true, changes: changes().await? });
        }
        let stored = current.get(crate::director::NS_RULES, crate::director::KEY_RULES).is_some();
        if old == rules && stored {
            return Ok(ResponseBody::Applied { revision: Some(current.revision), dry_run: false, changes: changes().await? });
        }
        let t0 = Instant::now();
        let value = {
            let r = rules.clone();
            off_runtime(r.virtual_servers.len(), move || Ok(crate::rules::encode(&r))).await?
        };
        let rev = self.write(Command::Put { ns: crate::director::NS_RULES.into(), key: crate::director::KEY_RULES.into(), value }).await?;
        tracing::debug!(target: "corral_stage", stage = "client_write", first = rev, last = rev, took_us = t0.elapsed().as_micros() as u64);
        let changes = changes().await?;
        tracing::info!(revision = rev, changes = changes.len(), "rules changed");
        // keepalived's omega: a removed virtual server runs its quorum_down (once, here on the
        // leader that committed the removal).
        for vs in &old.virtual_servers {
            if let (true, Some(cmd), Some(key)) = (vs.omega, &vs.quorum_down, vs.key()) {
                if !rules.virtual_servers.iter().any(|n| n.key() == Some(key)) {
                    crate::health::run_hook(cmd.clone(), &key.to_string(), "QUORUM_DOWN");
                }
            }
        }
        // A real server the change removes while it is up leaves the table: its notify_down
        // runs (once, here), as keepalived's reload runs it.
        if old.virtual_servers.iter().any(|vs| vs.real_servers.iter().any(|rs| rs.notify_down.is_some())) {
            for (key, _, rs) in crate::lvs_events::removed_live(&old, &verdicts, &rules) {
                if let Some(cmd) = &rs.notify_down {
                    let subject = crate::rules::rs_key(&key, rs.address);
                    tracing::info!(rs = %subject, revision = rev, "live real server removed by a rule change: running its notify_down");
                    crate::health::run_hook(cmd.clone(), &subject, "DOWN");
                }
            }
        }
        Ok(ResponseBody::Applied { revision: Some(rev), dry_run: false, changes })
    }

    /// Gossips this node's report (director status, VRRP states) to the others.
    pub async fn publish_report(&self, report: &crate::api::NodeReport) {
        let bytes = serde_json::to_vec(report).unwrap_or_default();
        if let Some(swim) = self.swim.lock().await.as_ref() {
            if let Err(e) = swim.set_metadata(bytes).await {
                tracing::debug!(error = %e, "publishing the node report");
            }
        }
    }

    /// Every node's last report, by node name.
    pub async fn reports(&self) -> BTreeMap<String, crate::api::NodeReport> {
        let mut out = BTreeMap::new();
        if let Some(swim) = self.swim.lock().await.as_ref() {
            if let Ok(list) = swim.metadata().await {
                for m in list {
                    if let Ok(r) = serde_json::from_slice::<crate::api::NodeReport>(&m.data) {
                        out.insert(m.node.name.clone(), r);
                    }
                }
            }
        }
        out
    }

    async fn remove(&self, node: &str) -> Result<ResponseBody, LeaderError> {
        let id = node_id_for(node);
        let m = self.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership().clone();
        if mem.get_node(&id).is_none() {
            return Err(LeaderError::Bad(format!("{node:?} is not in the Raft membership (see `corralctl members`)")));
        }
        let is_voter = mem.voter_ids().any(|v| v == id);
        if is_voter && mem.voter_ids().count() == 1 {
            return Err(LeaderError::Bad(format!("{node} is the only voter; removing it would leave no cluster")));
        }
        let incarnation = self.seen().get(node).map(|s| s.id.incarnation).unwrap_or(0);
        let value = raft::codec::encode("removed", &RemovedRecord { incarnation }).map_err(|e| LeaderError::Bad(e.to_string()))?;
        self.write(Command::Put { ns: NS_REMOVED.into(), key: node.to_string(), value }).await?;
        let change = if is_voter {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        let r = tokio::time::timeout(WRITE_TIMEOUT, self.raft.change_membership(change, false))
            .await
            .map_err(|_| LeaderError::Write(WriteError::Timeout))?
            .map_err(|e| LeaderError::Write(WriteError::Other(e.to_string())))?;
        tracing::info!(%node, "removed from the Raft membership");
        Ok(ResponseBody::Done { message: format!("{node} removed"), revision: Some(r.log_id.index) })
    }

    /// `corralctl leave`: out of Raft (through the leader), then a gossip leave, then the
    /// daemon stops.
    pub async fn leave(self: &Arc<Self>) -> Result<ResponseBody, String> {
        let voters = self.raft.metrics().borrow().membership_config.membership().voter_ids().count();
        let in_raft = self.raft.metrics().borrow().membership_config.membership().get_node(&self.id).is_some();
        if in_raft {
            if voters == 1 && self.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == self.id) {
                return Err("this node is the only voter: leaving would end the cluster".into());
            }
            self.on_leader(&Request::Remove { node: self.name.clone() }).await?;
        }
        let me = self.clone();
        tokio::spawn(async move {
            // Answer the operator first, then go.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(swim) = me.swim.lock().await.take() {
                if let Err(e) = swim.leave().await {
                    tracing::warn!(error = %e, "gossip leave");
                }
            }
            let _ = me.stop.send(()).await;
        });
        Ok(ResponseBody::Done { message: format!("{} left the cluster; corrald stops", self.name), revision: None })
    }

    /// `corralctl join SEED`: announce to one more seed.
    pub async fn announce(&self, seed: &str) -> Result<ResponseBody, String> {
        let a: SocketAddr = seed.parse().map_err(|_| format!("{seed:?} is not ip:port"))?;
        let swim = self.swim.lock().await;
        let swim = swim.as_ref().ok_or("this node has left the cluster")?;
        swim.announce(a).await.map_err(|e| e.to_string())?;
        Ok(ResponseBody::Done { message: format!("announced to {a}"), revision: None })
    }

    /// Tokens as listed.
    pub fn tokens(&self) -> Vec<TokenInfo> {
        let state = self.sm.current();
        state
            .namespace(NS_TOKENS)
            .filter_map(|(_, v)| raft::codec::decode::<TokenRecord>("token", v).ok())
            .map(|r| token_info(&r))
            .collect()
    }

    /// The key/value section as applied here.
    pub fn kv(&self) -> ResponseBody {
        let state: Arc<ClusterState> = self.sm.current();
        ResponseBody::Kv {
            revision: state.revision,
            entries: state
                .namespace(NS_KV)
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        }
    }

    /// Stops Raft and the endpoint (no gossip leave: a restart is not a departure).
    pub async fn shutdown(&self) {
        if let Some(swim) = self.swim.lock().await.take() {
            swim.abort();
        }
        let _ = self.raft.shutdown().await;
        // Applied state still waiting for its deferred write goes to disk now, so a restart
        // starts from the newest state instead of re-applying it from the log.
        if let Err(e) = self.sm.write_pending().await {
            tracing::warn!(error = %e, "writing the applied state on shutdown failed: the restart re-applies it from the log");
        }
        self.raft_tcp.close();
        self.transport.close(Duration::from_millis(500)).await;
    }
}

fn token_info(r: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: r.id.clone(),
        created_unix: r.created_unix,
        expires_unix: r.expires_unix,
        revoked: r.revoked,
        description: r.description.clone(),
    }
}

/// `corrald --force-new-cluster`: disaster recovery when a majority of the voters is gone
/// for good. Rewrites this (stopped) node's Raft store so that it alone is the voter
/// ([`raft::recovery`]), keeping its rules, verdicts, CA and tokens; returns what to tell the
/// operator. One-shot, so a unit file cannot leave it on for every start.
pub fn force_new_cluster(config: &Config) -> Result<String> {
    config.cluster.as_ref().ok_or_else(|| anyhow!("--force-new-cluster needs a [cluster] section"))?;
    let addr = config.node.bind.ok_or_else(|| anyhow!("[node] bind is required with [cluster]"))?;
    let name = node_name(config)?;
    let path = config.node.data_dir.join("raft.redb");
    let forced = raft::recovery::force_single_voter(&path, node_id_for(&name), Node { name: name.clone(), addr: addr.to_string() })?;
    let dropped: Vec<&str> = forced.dropped.iter().map(|n| n.name.as_str()).collect();
    Ok(format!(
        "{name} is now the only voter (term {}, log index {}); dropped from the membership: {}.\n\
         Start corrald normally: {name} elects itself and keeps everything it had (rules, verdicts, the CA, tokens);\n\
         writes in its log that never committed (they timed out) now commit, and changes the lost majority\n\
         committed after {name} last heard of them are lost.\n\
         Before a dropped member runs again, empty its data_dir: it then joins like a new node (`join` + a token).",
        forced.term,
        forced.index,
        if dropped.is_empty() { "none".into() } else { dropped.join(", ") }
    ))
}

fn node_name(config: &Config) -> Result<String> {
    if let Some(n) = &config.node.name {
        return Ok(n.clone());
    }
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").context("read the hostname for [node] name")?;
    let h = h.trim().to_string();
    gossip::tls::validate_node_name(&h).map_err(|e| anyhow!("hostname {h:?} is not a valid node name ({e}); set [node] name"))?;
    Ok(h)
}

/// Rule sets with more virtual servers than this are checked, encoded and diffed on the
/// blocking pool; smaller ones (an edit's usual table) inline, without the hand-off.
const BULK_RULES: usize = 64;

/// Runs `f` on the blocking pool when it works on a large rule set (`bulk` virtual servers),
/// else inline, so the runtime's timers and Raft messages do not wait behind it.
async fn off_runtime<T: Send + 'static>(bulk: usize, f: impl FnOnce() -> Result<T, LeaderError> + Send + 'static) -> Result<T, LeaderError> {
    if bulk <= BULK_RULES {
        return f();
    }
    tokio::task::spawn_blocking(f).await.map_err(|e| LeaderError::Bad(format!("rules task: {e}")))?
}

/// Why a write did not commit.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("not committed within {WRITE_TIMEOUT:?} (no quorum?); the write may still commit later")]
    Timeout,
    #[error("this node is not the leader")]
    NotLeader(Option<String>),
    /// Refused before the log: an entry no follower could ever receive would stop the log.
    #[error("the change is {} KiB as one replicated entry, over the {} KiB an entry may be; nothing was changed", size / 1024, limit / 1024)]
    TooLarge { size: usize, limit: usize },
    #[error("{0}")]
    Other(String),
}

/// Why a leader-side request failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("this node is not the leader")]
    NotLeader,
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Write(WriteError),
}

impl From<WriteError> for LeaderError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotLeader(_) => LeaderError::NotLeader,
            e => LeaderError::Write(e),
        }
    }
}

/// Why an admin request to another member brought no result.
#[derive(Debug)]
pub enum AdminCallError {
    /// No answer: the transport failed, or none came within the caller's bound. Worth a retry
    /// (the member may be restarting, or a new leader not yet known).
    Unanswered(String),
    /// The member answered, with an error (or with something that does not decode): final.
    Answered(String),
}

impl std::fmt::Display for AdminCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminCallError::Unanswered(e) | AdminCallError::Answered(e) => f.write_str(e),
        }
    }
}

/// Sends one request to another member's admin service (QUIC, mutual TLS) and decodes its
/// answer: the one way members ask each other for things outside Raft (a forwarded write, an
/// observer's health report, a live status report), so timeouts, decoding and the split
/// between "no answer" and "answered no" are decided in one place. `within` bounds the wait
/// below the transport's own request timeout.
pub async fn admin_call(
    transport: &Transport,
    addr: SocketAddr,
    req: &Request,
    within: Option<Duration>,
) -> Result<ResponseBody, AdminCallError> {
    let body = api::encode_request(req);
    let sent = transport.request(addr, Alpn::Admin, body.as_bytes());
    let reply = match within {
        Some(t) => tokio::time::timeout(t, sent)
            .await
            .map_err(|_| AdminCallError::Unanswered(format!("{addr} did not answer within {t:?}")))?,
        None => sent.await,
    }
    .map_err(|e| AdminCallError::Unanswered(e.to_string()))?;
    api::decode_response(&String::from_utf8_lossy(&reply)).map_err(|e| AdminCallError::Answered(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_answer_from_a_peer_that_answered_recently_is_retried_not_backed_off() {
        let t = Duration::from_millis(250);
        let slow = late_answer("192.0.2.2:7946", t, true);
        assert!(matches!(slow, RpcSendError::Failed(ref m) if m.contains("answered recently")), "{slow}");
        let gone = late_answer("192.0.2.2:7946", t, false);
        assert!(matches!(gone, RpcSendError::Unreachable(ref m) if m.contains("none recently")), "{gone}");
    }
}
