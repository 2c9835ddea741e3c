//! corrald: the corral director daemon.
//!
//! # Layout
//! - [`api`]: the admin API (JSON lines over a Unix socket) shared with `corralctl`.
//! - [`cluster`]: gossip + Raft membership, bootstrap/join, forwarding to the leader.
//! - [`config`]: the node's TOML configuration, with errors that name file, line and key.

pub mod admin;
pub mod api;
pub mod cluster;
pub mod config;
pub mod director;
pub mod health;
pub mod metrics;
pub mod lvs_events;
pub mod notify_fifo;
pub mod realtime;
pub mod rules;
pub mod scripts;
pub mod service_manager;
pub mod ticks;
pub mod tracking;
pub mod vrrp_driver;
