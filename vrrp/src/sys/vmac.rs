//! Virtual MAC interfaces (keepalived's `use_vmac`): a macvlan on the instance's interface with
//! the RFC 5798 §7.3 virtual router MAC (00:00:5e:00:01:VRID, IPv6 00:00:5e:00:02:VRID), so a
//! failover changes no host's ARP/neighbour cache: only the switches relearn the port.
//!
//! What is done, and why, follows keepalived's `vrrp_vmac.c` and `vrrp_if_config.c`:
//! - the macvlan is in **private** mode: it never talks to sibling macvlans, and a frame that
//!   comes back from the wire with its own MAC as source (the other router's vmac) is handed to
//!   it alone, so the VRRP socket must live on the vmac, not on the parent;
//! - on the vmac: `arp_ignore=1` (never answer for the parent's addresses), and for IPv4
//!   `accept_local=1`, `rp_filter=0` (it has no address of its own to validate sources against)
//!   and `promote_secondaries=1`; IPv6 is disabled on an IPv4 vmac, and an IPv6 vmac gets
//!   `addr_gen_mode=none` plus the parent's link-local address (adverts must come from it, and
//!   an EUI-64 address from the shared virtual MAC would collide between the routers);
//! - on the parent (IPv4): `arp_ignore=1` and `arp_filter=1`, or it would answer ARP for the
//!   VIP with its own MAC; the old values come back when its last vmac is deleted.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};

use futures_util::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, MacVlanMode};
use rtnetlink::{Handle, LinkMacVlan, LinkUnspec};

use super::vip::Vips;

/// The virtual router MAC of RFC 5798 §7.3: IPv4 00:00:5e:00:01:VRID, IPv6 00:00:5e:00:02:VRID.
pub fn virtual_mac(vrid: u8, v6: bool) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, if v6 { 0x02 } else { 0x01 }, vrid]
}

/// keepalived names vmacs `vrrp.VRID`; an IPv6 instance gets `vrrp6.VRID` so both families of
/// one VRID can use a vmac on the same interface (keepalived would append a counter instead).
pub fn default_name(vrid: u8, v6: bool) -> String {
    format!("vrrp{}.{vrid}", if v6 { "6" } else { "" })
}

/// A vmac that exists in the kernel; give it back to [`Vmacs::delete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmac {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    parent: String,
    v6: bool,
}

/// Why a vmac could not be created or removed.
#[derive(Debug, thiserror::Error)]
pub enum VmacError {
    #[error("{name}: an interface with this name exists and is not a macvlan; refusing to replace it")]
    Conflict { name: String },
    #[error("{op} vmac {name}: {source}")]
    Netlink {
        op: &'static str,
        name: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("vmac {name}: {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("vmac {name}: adding the link-local address {addr}: {source}")]
    LinkLocal {
        name: String,
        addr: Ipv6Addr,
        #[source]
        source: Box<super::vip::VipError>,
    },
}

/// The parent's ARP settings before its first vmac, restored after its last.
#[derive(Debug)]
struct ParentArp {
    users: usize,
    arp_ignore: String,
    arp_filter: String,
}

/// Creates and deletes vmacs over one rtnetlink connection, and keeps count of the vmacs per
/// parent so the parent's ARP sysctls are restored exactly once.
pub struct Vmacs {
    handle: Handle,
    parents: HashMap<String, ParentArp>,
}

fn sysctl_path(family: &str, ifname: &str, key: &str) -> String {
    // Written as a path, so a dot in the name (`vrrp.51`) needs no translation.
    format!("/proc/sys/net/{family}/conf/{ifname}/{key}")
}

fn write_sysctl(path: &str, value: &str) -> Result<(), VmacError> {
    std::fs::write(path, value).map_err(|source| VmacError::Sysctl { path: path.to_owned(), source })
}

fn read_sysctl(path: &str) -> Result<String, VmacError> {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).map_err(|source| VmacError::Sysctl { path: path.to_owned(), source })
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl Vmacs {
    /// Opens a route-netlink connection and spawns its driver on the current tokio runtime.
    pub fn new() -> io::Result<Vmacs> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Vmacs { handle, parents: HashMap::new() })
    }

    /// The link named `name`: `Some(is_macvlan, ifindex)`, or `None` if there is none.
    async fn existing(&self, name: &str) -> Result<Option<(bool, u32)>, VmacError> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => {
                let macvlan = msg.attributes.iter().any(|a| match a {
                    LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::MacVlan))),
                    _ => false,
                });
                Ok(Some((macvlan, msg.header.index)))
            }
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(VmacError::Netlink { op: "look up", name: name.to_owned(), source: Box::new(source) }),
        }
    }

    /// Creates (or re-creates, after a crash) the vmac `name` on `parent` for `vrid`, sets the
    /// sysctls described in the module documentation and brings it up. An IPv6 vmac gets
    /// `link_local` (the parent's, which the adverts are sent from).
    pub async fn create(
        &mut self,
        parent: &str,
        name: &str,
        vrid: u8,
        link_local: Option<Ipv6Addr>,
        vips: &Vips,
    ) -> Result<Vmac, VmacError> {
        let v6 = link_local.is_some();
        let parent_index = super::ifindex(parent).map_err(|source| VmacError::Io { name: name.to_owned(), source })?;
        match self.existing(name).await? {
            None => {}
            // A leftover of a crashed run (ours by name and kind): start from a clean link.
            Some((true, index)) => {
                tracing::warn!("vmac {name}: removing a leftover macvlan");
                self.handle.link().del(index).execute().await.map_err(|source| VmacError::Netlink { op: "delete", name: name.to_owned(), source: Box::new(source) })?;
            }
            Some((false, _)) => return Err(VmacError::Conflict { name: name.to_owned() }),
        }
        let mac = virtual_mac(vrid, v6);
        let msg = LinkMacVlan::new(name, parent_index, MacVlanMode::Private).address(mac.to_vec()).build();
        self.handle.link().add(msg).execute().await.map_err(|source| VmacError::Netlink { op: "create", name: name.to_owned(), source: Box::new(source) })?;
        let ifindex = super::ifindex(name).map_err(|source| VmacError::Io { name: name.to_owned(), source })?;
        let vmac = Vmac { name: name.to_owned(), ifindex, mac, parent: parent.to_owned(), v6 };
        // From here on, a failure must not leave the half-made link behind.
        if let Err(e) = self.configure(&vmac, link_local, vips).await {
            let _ = self.handle.link().del(ifindex).execute().await;
            return Err(e);
        }
        Ok(vmac)
    }

    async fn configure(&mut self, vmac: &Vmac, link_local: Option<Ipv6Addr>, vips: &Vips) -> Result<(), VmacError> {
        let name = vmac.name.as_str();
        write_sysctl(&sysctl_path("ipv4", name, "arp_ignore"), "1")?;
        if vmac.v6 {
            // No EUI-64 address from the virtual MAC: both routers would generate the same one.
            write_sysctl(&sysctl_path("ipv6", name, "addr_gen_mode"), "1")?;
        } else {
            write_sysctl(&sysctl_path("ipv4", name, "accept_local"), "1")?;
            write_sysctl(&sysctl_path("ipv4", name, "rp_filter"), "0")?;
            write_sysctl(&sysctl_path("ipv4", name, "promote_secondaries"), "1")?;
            // No IPv6 on an IPv4 vmac: no DAD or MLD frames from the virtual MAC on the backup.
            write_sysctl(&sysctl_path("ipv6", name, "disable_ipv6"), "1")?;
            self.hold_parent(&vmac.parent)?;
        }
        let up = LinkUnspec::new_with_index(vmac.ifindex).up().build();
        self.handle.link().set(up).execute().await.map_err(|source| VmacError::Netlink { op: "bring up", name: name.to_owned(), source: Box::new(source) })?;
        if let Some(addr) = link_local {
            vips.add(vmac.ifindex, IpAddr::V6(addr), 64).await.map_err(|source| VmacError::LinkLocal { name: name.to_owned(), addr, source: Box::new(source) })?;
        }
        Ok(())
    }

    fn hold_parent(&mut self, parent: &str) -> Result<(), VmacError> {
        if let Some(p) = self.parents.get_mut(parent) {
            p.users += 1;
            return Ok(());
        }
        let ignore = sysctl_path("ipv4", parent, "arp_ignore");
        let filter = sysctl_path("ipv4", parent, "arp_filter");
        let saved = ParentArp { users: 1, arp_ignore: read_sysctl(&ignore)?, arp_filter: read_sysctl(&filter)? };
        write_sysctl(&ignore, "1")?;
        write_sysctl(&filter, "1")?;
        self.parents.insert(parent.to_owned(), saved);
        Ok(())
    }

    fn release_parent(&mut self, parent: &str) {
        let Some(p) = self.parents.get_mut(parent) else { return };
        p.users -= 1;
        if p.users > 0 {
            return;
        }
        if let Some(p) = self.parents.remove(parent) {
            for (key, value) in [("arp_ignore", &p.arp_ignore), ("arp_filter", &p.arp_filter)] {
                if let Err(e) = write_sysctl(&sysctl_path("ipv4", parent, key), value) {
                    tracing::warn!("restoring {parent}'s ARP settings: {e}");
                }
            }
        }
    }

    /// Deletes the vmac (its addresses go with it) and restores the parent's ARP settings
    /// after its last vmac. A link that is already gone is fine.
    pub async fn delete(&mut self, vmac: &Vmac) -> Result<(), VmacError> {
        if !vmac.v6 {
            self.release_parent(&vmac.parent);
        }
        match self.handle.link().del(vmac.ifindex).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(source) => Err(VmacError::Netlink { op: "delete", name: vmac.name.clone(), source: Box::new(source) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_macs_and_names_follow_rfc_5798_and_keepalived() {
        assert_eq!(virtual_mac(51, false), [0, 0, 0x5e, 0, 1, 51]);
        assert_eq!(virtual_mac(255, true), [0, 0, 0x5e, 0, 2, 255]);
        assert_eq!(default_name(51, false), "vrrp.51");
        assert_eq!(default_name(7, true), "vrrp6.7");
        assert!(default_name(255, true).len() <= 15, "IFNAMSIZ");
        assert_eq!(sysctl_path("ipv4", "vrrp.51", "arp_ignore"), "/proc/sys/net/ipv4/conf/vrrp.51/arp_ignore");
    }
}
