//! Virtual addresses on an interface, through rtnetlink (`ip addr add/del` without the fork).

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::Handle;

/// Adds and removes VIPs; idempotent (an address already present or already gone is fine).
#[derive(Clone)]
pub struct Vips {
    handle: Handle,
}

/// A VIP operation that the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("{op} {addr}/{prefix} on ifindex {ifindex}: {source}")]
pub struct VipError {
    pub op: &'static str,
    pub addr: IpAddr,
    pub prefix: u8,
    pub ifindex: u32,
    #[source]
    pub source: rtnetlink::Error,
}

impl Vips {
    /// Opens a route-netlink connection and spawns its driver on the current tokio runtime.
    pub fn new() -> std::io::Result<Vips> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Vips { handle })
    }

    fn errno(e: &rtnetlink::Error) -> Option<i32> {
        match e {
            rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
            _ => None,
        }
    }

    /// Adds `addr/prefix` (IPv6 with `nodad`, so it can source neighbour advertisements at once).
    pub async fn add(&self, ifindex: u32, addr: IpAddr, prefix: u8) -> Result<(), VipError> {
        let mut req = self.handle.address().add(ifindex, addr, prefix);
        if addr.is_ipv6() {
            use netlink_packet_route::address::{AddressAttribute, AddressFlags};
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if Self::errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(VipError { op: "add", addr, prefix, ifindex, source }),
        }
    }

    /// Removes `addr` from the interface if present.
    pub async fn del(&self, ifindex: u32, addr: IpAddr, prefix: u8) -> Result<(), VipError> {
        let mut stream = self.handle.address().get().set_link_index_filter(ifindex).set_address_filter(addr).execute();
        while let Some(msg) = stream.try_next().await.map_err(|source| VipError { op: "list", addr, prefix, ifindex, source })? {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if Self::errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(source) => return Err(VipError { op: "delete", addr, prefix, ifindex, source }),
            }
        }
        Ok(())
    }

    /// The interface's first address of the family that is not one of `exclude`; for IPv6 its
    /// link-local address, which is what VRRPv3 adverts must come from.
    pub async fn primary(&self, ifindex: u32, v6: bool, exclude: &[IpAddr]) -> Option<IpAddr> {
        use netlink_packet_route::address::AddressAttribute;
        let mut stream = self.handle.address().get().set_link_index_filter(ifindex).execute();
        while let Ok(Some(msg)) = stream.try_next().await {
            for a in &msg.attributes {
                if let AddressAttribute::Address(ip) = a {
                    let link_local = matches!(ip, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
                    if ip.is_ipv6() == v6 && !exclude.contains(ip) && (!v6 || link_local) {
                        return Some(*ip);
                    }
                }
            }
        }
        None
    }
}
