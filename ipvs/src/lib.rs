//! Linux IPVS over generic netlink: the kernel layer of corral.
//!
//! # Layout
//! - [`model`]: the typed desired state (`Table`, `Service`, `Dest`) and the `Op` unit of change.
//! - [`diff`]: the minimal list of `Op`s turning one table into another (edit in place when possible).
//! - [`text`]: the `ipvsadm -S`/`-Sn` rule format, parsed with line numbers and printed byte-exact.
//! - [`listing`]: the `ipvsadm -Ln` layouts (plain, stats, rate, timeout, connections, daemon).
//! - [`nl`]: the IPVS generic-netlink family codec (attributes, messages), no I/O.
//! - [`client`]: a netlink socket speaking that family: read the kernel table, batched `apply`,
//!   stats, zero, timeouts, the connection-sync daemon.
//!
//! No cluster, no VRRP: the daemon (`node`) wires this to everything else.

pub mod client;
pub mod diff;
pub mod listing;
pub mod model;
pub mod status;
pub mod nl;
pub mod text;

pub use diff::{diff, merge};
pub use model::*;
pub use status::*;
