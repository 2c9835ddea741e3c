//! corrald: the corral director daemon.
//!
//! # Layout
//! - [`config`]: the node's TOML configuration, with errors that name file, line and key.

pub mod config;
