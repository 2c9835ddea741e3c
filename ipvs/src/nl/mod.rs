//! The IPVS generic-netlink family codec: typed attributes, the message, and conversions to
//! and from the model. No I/O here; [`crate::client`] owns the socket.

pub mod attr;
pub mod consts;
pub mod convert;
pub mod message;

pub use attr::{CmdAttr, DaemonAttr, DestAttr, ServiceAttr, StatsAttr};
pub use message::IpvsMessage;
