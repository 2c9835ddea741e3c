//! Link up/down events from the kernel (rtnetlink's RTNLGRP_LINK multicast group), so a tracked
//! interface going down moves an instance to FAULT in well under a millisecond instead of at
//! the next poll. Callers keep a slow poll as a safety net: a netlink socket can overflow and
//! drop notifications (ENOBUFS) under a storm of link changes.

use std::io;

use futures_util::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, State};
use netlink_packet_route::RouteNetlinkMessage;

/// One link's new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEvent {
    pub ifindex: u32,
    /// `None` if the kernel left the name out (it never does for RTM_NEWLINK/DELLINK).
    pub name: Option<String>,
    /// Same meaning as a poll of sysfs: administratively up and not reported down.
    pub up: bool,
}

/// True when a link with these flags and operational state carries traffic: IFF_UP and an
/// operstate that is not down, lower-layer-down, not-present or dormant ("unknown", as on
/// dummy and loopback devices, counts as up, as it does for the kernel and keepalived).
pub fn is_up(flags: LinkFlags, oper: Option<State>) -> bool {
    flags.contains(LinkFlags::Up) && !matches!(oper, Some(State::Down | State::LowerLayerDown | State::NotPresent | State::Dormant))
}

fn event(msg: &LinkMessage, deleted: bool) -> LinkEvent {
    let mut name = None;
    let mut oper = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::OperState(s) => oper = Some(*s),
            _ => {}
        }
    }
    LinkEvent { ifindex: msg.header.index, name, up: !deleted && is_up(msg.header.flags, oper) }
}

/// What rtnetlink's multicast connection yields: a message and the sender's address.
type Notifications = futures_util::stream::BoxStream<'static, (rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>, rtnetlink::sys::SocketAddr)>;

/// A subscription to link notifications.
pub struct LinkEvents {
    rx: Notifications,
}

impl LinkEvents {
    /// Joins RTNLGRP_LINK on a new netlink socket whose driver runs on the current tokio runtime.
    pub fn subscribe() -> io::Result<LinkEvents> {
        let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])?;
        tokio::spawn(conn);
        Ok(LinkEvents { rx: messages.boxed() })
    }

    /// The next link change; `None` once the netlink connection has ended.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        loop {
            let (msg, _) = self.rx.next().await?;
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => return Some(event(&m, false)),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => return Some(event(&m, true)),
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_means_admin_up_and_not_operationally_down() {
        assert!(is_up(LinkFlags::Up | LinkFlags::LowerUp, Some(State::Up)));
        assert!(is_up(LinkFlags::Up, Some(State::Unknown)), "dummy and lo report unknown");
        assert!(is_up(LinkFlags::Up, None));
        assert!(!is_up(LinkFlags::Up, Some(State::LowerLayerDown)), "veth whose peer is down");
        assert!(!is_up(LinkFlags::Up, Some(State::Down)));
        assert!(!is_up(LinkFlags::empty(), Some(State::Up)), "admin down");
    }
}
