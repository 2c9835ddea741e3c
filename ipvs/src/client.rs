//! filled in by the netlink work
