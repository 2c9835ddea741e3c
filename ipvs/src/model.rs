//! The typed desired-state model: what a director's IPVS table *should* be.
//!
//! The same types describe what the kernel reports, so `diff(kernel, desired)` is a
//! comparison of two values of one type. Ordered maps keep every listing and every
//! diff deterministic, which is what makes `ipvsadm -Sn` byte-identical across directors.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Address family, as the kernel's `AF_INET`/`AF_INET6`; fwmark services carry it
/// explicitly because they have no address to infer it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Inet,
    Inet6,
}

impl Family {
    /// The family an address belongs to.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Inet,
            IpAddr::V6(_) => Family::Inet6,
        }
    }
}

/// Transport protocol of an address-based virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// What identifies a virtual service in the kernel: protocol+VIP+port, or a firewall mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ServiceKey {
    /// `-t|-u|--sctp-service VIP:PORT`.
    Addr { protocol: Protocol, addr: SocketAddr },
    /// `-f MARK`, optionally `-6`.
    Fwmark { family: Family, mark: u32 },
}

impl ServiceKey {
    pub fn family(&self) -> Family {
        match self {
            ServiceKey::Addr { addr, .. } => Family::of(&addr.ip()),
            ServiceKey::Fwmark { family, .. } => *family,
        }
    }
}

impl fmt::Display for ServiceKey {
    /// ipvsadm's spelling (`TCP 192.0.2.1:80`, `FWM 7 IPv6`) so errors read like the tool operators know.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr { protocol, addr } => {
                let p = match protocol {
                    Protocol::Tcp => "TCP",
                    Protocol::Udp => "UDP",
                    Protocol::Sctp => "SCTP",
                };
                write!(f, "{p} {addr}")
            }
            ServiceKey::Fwmark { family: Family::Inet, mark } => write!(f, "FWM {mark}"),
            ServiceKey::Fwmark { family: Family::Inet6, mark } => write!(f, "FWM {mark} IPv6"),
        }
    }
}

/// Session persistence (`-p TIMEOUT [-M NETMASK]`): clients stick to one real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Persistence {
    /// Seconds (the kernel's `timeout`).
    pub timeout: u32,
    /// Granularity: a netmask for IPv4 (as a u32 in host order, e.g. 0xffffffff),
    /// a prefix length for IPv6 (e.g. 128) — exactly what the kernel stores.
    pub netmask: u32,
}

/// Scheduler flags `-b`: meaning depends on the scheduler (sh/mh: fallback, port).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchedFlags {
    /// IP_VS_SVC_F_SCHED1 (sh-fallback / mh-fallback).
    pub flag1: bool,
    /// IP_VS_SVC_F_SCHED2 (sh-port / mh-port).
    pub flag2: bool,
    /// IP_VS_SVC_F_SCHED3.
    pub flag3: bool,
}

/// A virtual service and its real servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub key: ServiceKey,
    /// Scheduler name as the kernel knows it (`rr`, `wlc`, `mh`, ...).
    pub scheduler: String,
    pub persistence: Option<Persistence>,
    /// `-o`: schedule every UDP/SCTP packet independently.
    pub one_packet: bool,
    pub sched_flags: SchedFlags,
    /// Persistence engine (`--pe sip`), if any.
    pub pe_name: Option<String>,
    /// Serialized as a list: JSON objects cannot have struct keys, and each `Dest` carries its key.
    #[serde(with = "keyed_list")]
    pub dests: BTreeMap<DestKey, Dest>,
}

impl Service {
    /// A service with the kernel's defaults and no real servers.
    pub fn new(key: ServiceKey, scheduler: impl Into<String>) -> Service {
        Service {
            key,
            scheduler: scheduler.into(),
            persistence: None,
            one_packet: false,
            sched_flags: SchedFlags::default(),
            pe_name: None,
            dests: BTreeMap::new(),
        }
    }

    /// The persistence granularity as ipvsadm prints it (`255.255.255.0`, or a prefix length for
    /// IPv6), or `None` when not persistent or when it is the full mask ipvsadm leaves out.
    pub fn persistence_mask(&self) -> Option<String> {
        let p = self.persistence?;
        match self.key.family() {
            Family::Inet if p.netmask != 0xffff_ffff => Some(std::net::Ipv4Addr::from(p.netmask).to_string()),
            Family::Inet6 if p.netmask != 128 => Some(p.netmask.to_string()),
            _ => None,
        }
    }

    /// The service's own settings without its real servers: equal settings mean no edit is needed.
    pub fn same_settings(&self, other: &Service) -> bool {
        self.key == other.key
            && self.scheduler == other.scheduler
            && self.persistence == other.persistence
            && self.one_packet == other.one_packet
            && self.sched_flags == other.sched_flags
            && self.pe_name == other.pe_name
    }
}

/// What identifies a real server within its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DestKey {
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for DestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", SocketAddr::new(self.addr, self.port))
    }
}

/// Tunnel encapsulation for `-i` real servers (kernel 5.2+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Tunnel {
    Ipip,
    Gue { port: u16, flags: TunFlags },
    Gre { flags: TunFlags },
}

/// Tunnel checksum options (`--tun-nocsum`, `--tun-csum`, `--tun-remcsum`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TunFlags {
    pub nocsum: bool,
    pub csum: bool,
    pub remcsum: bool,
}

/// Packet forwarding method (`-m`, `-g`, `-i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Forward {
    /// NAT (`-m`).
    Masq,
    /// Local node (the kernel picks this itself for local addresses).
    Local,
    /// IP-in-IP / GUE / GRE (`-i`).
    Tunnel(Tunnel),
    /// Direct routing (`-g`), ipvsadm's default.
    Route,
    Bypass,
}

/// A real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dest {
    pub key: DestKey,
    pub forward: Forward,
    /// 0 quiesces: no new connections, existing ones stay.
    pub weight: i32,
    /// Upper connection threshold (`-x`), 0 = none.
    pub upper_threshold: u32,
    /// Lower connection threshold (`-y`), 0 = none.
    pub lower_threshold: u32,
}

impl Dest {
    /// A real server with ipvsadm's defaults: direct routing, weight 1, no thresholds.
    pub fn new(addr: IpAddr, port: u16) -> Dest {
        Dest {
            key: DestKey { addr, port },
            forward: Forward::Route,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }
}

/// A whole IPVS table: every virtual service, each with its real servers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// Serialized as a list, like `Service::dests`.
    #[serde(with = "keyed_list")]
    pub services: BTreeMap<ServiceKey, Service>,
}

impl Table {
    /// Adds or replaces a service, keyed by its own key.
    pub fn insert(&mut self, service: Service) {
        self.services.insert(service.key, service);
    }

    /// Total number of kernel objects (services + destinations): the size of a full restore.
    pub fn object_count(&self) -> usize {
        self.services.values().map(|s| 1 + s.dests.len()).sum()
    }
}

/// One change to the kernel's table: the unit the diff yields and `apply` sends,
/// one generic-netlink request each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `IPVS_CMD_NEW_SERVICE` (the service's settings only; its dests come as `AddDest`).
    AddService(Service),
    /// `IPVS_CMD_SET_SERVICE`: edit scheduler/flags/persistence in place.
    EditService(Service),
    /// `IPVS_CMD_DEL_SERVICE`: the kernel drops its destinations with it.
    DelService(ServiceKey),
    /// `IPVS_CMD_NEW_DEST`.
    AddDest(ServiceKey, Dest),
    /// `IPVS_CMD_SET_DEST`: edit weight/thresholds/forwarding in place.
    EditDest(ServiceKey, Dest),
    /// `IPVS_CMD_DEL_DEST`.
    DelDest(ServiceKey, DestKey),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddService(s) => write!(f, "add service {}", s.key),
            Op::EditService(s) => write!(f, "edit service {}", s.key),
            Op::DelService(k) => write!(f, "delete service {k}"),
            Op::AddDest(k, d) => write!(f, "add destination {} to service {k}", d.key),
            Op::EditDest(k, d) => write!(f, "edit destination {} of service {k}", d.key),
            Op::DelDest(k, d) => write!(f, "delete destination {d} from service {k}"),
        }
    }
}

/// Values that know their own map key, so a map of them can travel as a plain list.
pub trait Keyed {
    type Key: Ord;
    fn key(&self) -> Self::Key;
}

impl Keyed for Dest {
    type Key = DestKey;
    fn key(&self) -> DestKey {
        self.key
    }
}

impl Keyed for Service {
    type Key = ServiceKey;
    fn key(&self) -> ServiceKey {
        self.key
    }
}

/// `BTreeMap<K, V>` as `[V, ...]` in serde formats (JSON needs string keys; ours are structs).
/// Deserializing refuses duplicate keys instead of silently keeping the last one.
mod keyed_list {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Keyed;

    pub fn serialize<K, V: Serialize, S: Serializer>(map: &BTreeMap<K, V>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.values())
    }

    pub fn deserialize<'de, V, D>(d: D) -> Result<BTreeMap<V::Key, V>, D::Error>
    where
        V: Keyed + Deserialize<'de>,
        D: Deserializer<'de>,
    {
        let list = Vec::<V>::deserialize(d)?;
        let n = list.len();
        let map: BTreeMap<V::Key, V> = list.into_iter().map(|v| (v.key(), v)).collect();
        if map.len() != n {
            return Err(D::Error::custom("the same key appears twice"));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod serde_tests {
    use super::*;

    #[test]
    fn tables_round_trip_through_json() {
        let t = crate::text::parse(include_str!("../testdata/ipvsadm-sn.rules")).unwrap().table;
        let json = serde_json::to_string(&t).unwrap();
        let back: Table = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        let dup = r#"{"services":[{"key":{"kind":"fwmark","family":"inet","mark":1},"scheduler":"rr","persistence":null,"one_packet":false,"sched_flags":{"flag1":false,"flag2":false,"flag3":false},"pe_name":null,"dests":[]},{"key":{"kind":"fwmark","family":"inet","mark":1},"scheduler":"wlc","persistence":null,"one_packet":false,"sched_flags":{"flag1":false,"flag2":false,"flag3":false},"pe_name":null,"dests":[]}]}"#;
        assert!(serde_json::from_str::<Table>(dup).unwrap_err().to_string().contains("twice"));
    }
}
