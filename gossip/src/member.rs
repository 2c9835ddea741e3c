//! Who is in the cluster: the gossip identity and the events the node reacts to.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A node's gossip identity. The name is the node's certificate name; the address is where
/// peers reach its QUIC endpoint; the incarnation tells a restarted node apart from its
/// previous life (foca keeps its own SWIM incarnation for refuting suspicion, this one is for
/// identity: a crashed-and-restarted node, or one declared down, rejoins as a new identity).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Node name (a DNS label-like string, as in its certificate).
    pub name: String,
    /// UDP address of its QUIC endpoint.
    pub addr: SocketAddr,
    /// Identity generation: start time in ms by default, bumped by one on renew.
    pub incarnation: u64,
}

impl NodeId {
    /// An identity whose incarnation is the current wall-clock time in milliseconds, so a
    /// restart after a crash always outranks the identity the cluster remembers.
    pub fn fresh(name: impl Into<String>, addr: SocketAddr) -> Self {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        Self {
            name: name.into(),
            addr,
            incarnation,
        }
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", self.name, self.addr, self.incarnation)
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    /// Called by foca when the cluster declared us down: come back as the next incarnation.
    fn renew(&self) -> Option<Self> {
        Some(Self {
            incarnation: self.incarnation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Two identities on one address: the newer incarnation is the live process.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// Liveness of a member as this node currently sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; declared down unless it refutes within `suspect_to_down_after`.
    Suspect,
    /// Declared down (crashed, partitioned, or left).
    Down,
}

/// One row of the membership table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member.
    pub id: NodeId,
    /// Its state.
    pub state: MemberState,
}

/// The latest metadata a node gossiped about itself (role, version, applied revision, health
/// digest: opaque here). Newer `(incarnation, version)` replaces older.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMetadata {
    /// The node it describes.
    pub node: NodeId,
    /// Its counter, bumped on every change by the owner.
    pub version: u64,
    /// Opaque bytes, encoded by the node crate.
    pub data: Vec<u8>,
}

/// What the rest of the node learns from gossip, in the order this node learned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member became alive: joined, or refuted a suspicion.
    Up(NodeId),
    /// A member missed a probe and is suspected.
    Suspect(NodeId),
    /// A member was declared down without having announced a leave (crash or partition).
    Down(NodeId),
    /// A member announced a graceful leave and is now down.
    Left(NodeId),
    /// The cluster declared this node down; it rejoined under the renewed identity.
    Rejoined(NodeId),
    /// A member's gossiped metadata changed.
    Metadata(NodeMetadata),
}
