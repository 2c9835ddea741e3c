//! Cluster membership below consensus: SWIM gossip (foca) over mutually-authenticated QUIC.
//!
//! # Layout
//! - [`tls`]: the cluster CA, node credentials in the data dir, join tokens, rustls configs.
//! - [`transport`]: one quinn endpoint per node; ALPNs for gossip datagrams, Raft and admin
//!   request streams, and certificate issuance on join; a connection cache per peer.
//! - [`member`]: the gossip identity (name, address, incarnation) and membership events.
//! - [`codec`]: the versioned postcard wire format of SWIM packets and broadcasts.
//! - [`swim`]: the driver task feeding foca with datagrams and timers, and its handle.

#![warn(missing_docs)]

pub mod codec;
pub mod member;
pub mod swim;
pub mod tls;
pub mod transport;

pub use member::{MemberEvent, MemberInfo, MemberState, NodeId, NodeMetadata};
pub use swim::{Swim, SwimConfig, SwimError};
pub use transport::{Alpn, Peer, StreamHandler, Transport, TransportConfig, TransportError};
