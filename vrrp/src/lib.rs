//! VRRP v2/v3 (RFC 3768, RFC 5798) for IPv4 and IPv6.
//!
//! # Layout
//! - [`wire`]: zero-copy packet views and `Repr`s (smoltcp style), checksums, validation.
//! - [`instance`]: one instance as a sans-IO state machine (RFC 5798 §6 + keepalived tracking).
//! - [`sys`]: Linux I/O at the edge: raw sockets, GARP / unsolicited NA, VIPs, virtual MACs.
//!
//! The protocol core is sans-IO: fed packets, timer expiries and an injected clock, it returns actions.

pub mod group;
pub mod instance;
pub mod sys;
pub mod wire;
