//! Raft for corral: openraft 0.9 with its log and state machine in one redb file, RPCs carried
//! by whatever transport the node provides (QUIC in corrald), messages in versioned postcard.
//!
//! # Layout
//! - [`types`]: the type configuration and the replicated data (namespaces of key → bytes with
//!   a revision), so the node can evolve its records without touching this crate.
//! - [`store`]: the redb log store and state machine; passes openraft's storage test suite.
//! - [`network`]: RPC messages, the client side over an [`network::RpcSender`] the node
//!   implements, and [`network::serve`] for the receiving side.
//! - [`codec`]: the versioned record format used for everything persisted or sent.
//! - [`recovery`]: disaster recovery, a stopped node's store made the only voter.

pub mod codec;
mod depth;
pub mod network;
pub mod recovery;
pub mod store;
pub mod types;

pub use store::{inline_appends_unless_leader, open, LogStore, StateMachine, StoreError};
pub use types::{node_id_for, ClusterState, Command, Node, NodeId, Raft, Response, TypeConfig};
pub use openraft;
