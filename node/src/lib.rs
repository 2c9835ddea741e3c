//! corrald: the corral director daemon.
//!
//! # Layout
//! - [`api`]: the admin API (JSON lines over a Unix socket) shared with `corralctl`.
//! - [`config`]: the node's TOML configuration, with errors that name file, line and key.

pub mod admin;
pub mod api;
pub mod config;
pub mod tracking;
pub mod vrrp_driver;
