//! Routes that follow mastership (keepalived's `virtual_routes`): added when an instance
//! becomes master, removed when it stops being master, through rtnetlink (`ip route
//! add/del` without the fork).

use std::net::IpAddr;

use rtnetlink::{Handle, RouteMessageBuilder};
use netlink_packet_route::route::{RouteMessage, RouteScope, RouteType};

/// What kind of route: a normal one, or one that drops (`blackhole`), answers "unreachable"
/// or "prohibited".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Unicast,
    Blackhole,
    Unreachable,
    Prohibit,
}

/// One virtual route, interfaces resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualRoute {
    pub kind: RouteKind,
    pub dest: IpAddr,
    pub prefix: u8,
    pub via: Option<IpAddr>,
    pub src: Option<IpAddr>,
    pub ifindex: Option<u32>,
    pub metric: Option<u32>,
    pub table: Option<u32>,
    /// rtnetlink scope number (`link` 253, `host` 254, `global` 0).
    pub scope: Option<u8>,
    pub onlink: bool,
}

/// A route operation the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("{op} route {dest}/{prefix}: {source}")]
pub struct RouteError {
    pub op: &'static str,
    pub dest: IpAddr,
    pub prefix: u8,
    #[source]
    pub source: rtnetlink::Error,
}

/// Adds and removes virtual routes; idempotent (a route already there, or already gone, is
/// fine), as VIPs are.
#[derive(Clone)]
pub struct Routes {
    handle: Handle,
}

impl Routes {
    /// Opens a route-netlink connection and spawns its driver on the current tokio runtime.
    pub fn new() -> std::io::Result<Routes> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Routes { handle })
    }

    fn message(r: &VirtualRoute) -> RouteMessage {
        let mut b = RouteMessageBuilder::<IpAddr>::new();
        // The prefix was checked against the family when the route was parsed.
        b = match b.clone().destination_prefix(r.dest, r.prefix) {
            Ok(b) => b,
            Err(_) => b,
        };
        if let Some(via) = r.via {
            b = match b.clone().gateway(via) {
                Ok(b) => b,
                Err(_) => b,
            };
        }
        if let Some(src) = r.src {
            b = match b.clone().pref_source(src) {
                Ok(b) => b,
                Err(_) => b,
            };
        }
        if let Some(i) = r.ifindex {
            b = b.output_interface(i);
        }
        if let Some(m) = r.metric {
            b = b.priority(m);
        }
        if let Some(t) = r.table {
            b = b.table_id(t);
        }
        b = b.kind(match r.kind {
            RouteKind::Unicast => RouteType::Unicast,
            RouteKind::Blackhole => RouteType::BlackHole,
            RouteKind::Unreachable => RouteType::Unreachable,
            RouteKind::Prohibit => RouteType::Prohibit,
        });
        // A route with no gateway on an interface is on the link, as `ip route` makes it.
        let scope = match (r.scope, r.kind, r.via) {
            (Some(s), _, _) => RouteScope::from(s),
            (None, RouteKind::Unicast, None) if r.ifindex.is_some() => RouteScope::Link,
            _ => RouteScope::Universe,
        };
        b = b.scope(scope);
        if r.onlink {
            b = b.onlink();
        }
        b.build()
    }

    fn errno(e: &rtnetlink::Error) -> Option<i32> {
        match e {
            rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
            _ => None,
        }
    }

    /// Adds the route. A route with the same destination, table and metric already there is
    /// an error (the kernel's "File exists"), not success: it may be another one (a DHCP
    /// default route) that would silently stay in place of ours; a different `metric` lets
    /// both exist. Ours left by a crash are removed at start, before any is added.
    pub async fn add(&self, r: &VirtualRoute) -> Result<(), RouteError> {
        match self.handle.route().add(Self::message(r)).execute().await {
            Ok(()) => Ok(()),
            Err(source) => Err(RouteError { op: "add", dest: r.dest, prefix: r.prefix, source }),
        }
    }

    /// Removes the route if present.
    pub async fn del(&self, r: &VirtualRoute) -> Result<(), RouteError> {
        match self.handle.route().del(Self::message(r)).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(Self::errno(&e), Some(libc::ESRCH) | Some(libc::ENOENT)) => Ok(()),
            Err(source) => Err(RouteError { op: "delete", dest: r.dest, prefix: r.prefix, source }),
        }
    }
}
