//! Between the typed model (`Service`, `Dest`, ...) and netlink attributes.
//!
//! The kernel needs every setting on NEW and SET (it replaces, it does not merge), and reports
//! settings we must normalise (the HASHED flag, the netmask of non-persistent services) so
//! that a table read back compares equal to the table that was written.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::attr::*;
use super::consts::*;
use crate::model::*;
use crate::status::*;

/// Why kernel attributes could not become a model value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel reply: {0}")]
pub struct ConvertError(pub String);

fn af_of(f: Family) -> u16 {
    match f {
        Family::Inet => AF_INET,
        Family::Inet6 => AF_INET6,
    }
}

fn addr_bytes(a: &IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b = v6.octets(),
    }
    b
}

fn addr_from(af: u16, b: &[u8; 16]) -> Result<IpAddr, ConvertError> {
    match af {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(*b))),
        other => Err(ConvertError(format!("unknown address family {other}"))),
    }
}

/// The attributes that identify a service (enough for DEL and for nesting in dest requests).
pub fn service_key_attrs(key: &ServiceKey) -> Vec<ServiceAttr> {
    match key {
        ServiceKey::Addr { protocol, addr } => vec![
            ServiceAttr::Af(af_of(Family::of(&addr.ip()))),
            ServiceAttr::Protocol(match protocol {
                Protocol::Tcp => IPPROTO_TCP,
                Protocol::Udp => IPPROTO_UDP,
                Protocol::Sctp => IPPROTO_SCTP,
            }),
            ServiceAttr::Addr(addr_bytes(&addr.ip())),
            ServiceAttr::Port(addr.port()),
        ],
        ServiceKey::Fwmark { family, mark } => vec![ServiceAttr::Af(af_of(*family)), ServiceAttr::Fwmark(*mark)],
    }
}

/// Every attribute NEW_SERVICE / SET_SERVICE need.
pub fn service_attrs(s: &Service) -> Vec<ServiceAttr> {
    let mut v = service_key_attrs(&s.key);
    let mut flags = 0;
    if s.persistence.is_some() {
        flags |= IP_VS_SVC_F_PERSISTENT;
    }
    if s.one_packet {
        flags |= IP_VS_SVC_F_ONEPACKET;
    }
    if s.sched_flags.flag1 {
        flags |= IP_VS_SVC_F_SCHED1;
    }
    if s.sched_flags.flag2 {
        flags |= IP_VS_SVC_F_SCHED2;
    }
    if s.sched_flags.flag3 {
        flags |= IP_VS_SVC_F_SCHED3;
    }
    let full_mask = if s.key.family() == Family::Inet6 { 128 } else { 0xffff_ffff };
    let (timeout, netmask) = s.persistence.map(|p| (p.timeout, p.netmask)).unwrap_or((0, full_mask));
    v.push(ServiceAttr::SchedName(s.scheduler.clone()));
    v.push(ServiceAttr::Flags { flags, mask: !IP_VS_SVC_F_HASHED });
    v.push(ServiceAttr::Timeout(timeout));
    v.push(ServiceAttr::Netmask(wire_netmask(s.key.family(), netmask)));
    // An empty PE name tells the kernel to drop a persistence engine set earlier.
    v.push(ServiceAttr::PeName(s.pe_name.clone().unwrap_or_default()));
    v
}

/// The kernel keeps an IPv4 persistence mask as a `__be32` and an IPv6 one as a prefix length;
/// the model holds both as plain numbers. The conversion is its own inverse.
fn wire_netmask(family: Family, mask: u32) -> u32 {
    match family {
        Family::Inet => u32::from_be(mask),
        Family::Inet6 => mask,
    }
}

/// The attributes that identify a destination within its service.
pub fn dest_key_attrs(k: &DestKey) -> Vec<DestAttr> {
    vec![
        DestAttr::AddrFamily(af_of(Family::of(&k.addr))),
        DestAttr::Addr(addr_bytes(&k.addr)),
        DestAttr::Port(k.port),
    ]
}

/// Every attribute NEW_DEST / SET_DEST need.
pub fn dest_attrs(d: &Dest) -> Vec<DestAttr> {
    let mut v = dest_key_attrs(&d.key);
    let (method, tun) = match d.forward {
        Forward::Masq => (IP_VS_CONN_F_MASQ, None),
        Forward::Local => (IP_VS_CONN_F_LOCALNODE, None),
        Forward::Route => (IP_VS_CONN_F_DROUTE, None),
        Forward::Bypass => (IP_VS_CONN_F_BYPASS, None),
        Forward::Tunnel(t) => (IP_VS_CONN_F_TUNNEL, Some(t)),
    };
    v.push(DestAttr::FwdMethod(method));
    v.push(DestAttr::Weight(d.weight as u32));
    v.push(DestAttr::UpperThreshold(d.upper_threshold));
    v.push(DestAttr::LowerThreshold(d.lower_threshold));
    if let Some(t) = tun {
        let flag_bits = |f: &TunFlags| {
            (if f.csum { IP_VS_TUNNEL_ENCAP_FLAG_CSUM } else { 0 }) | (if f.remcsum { IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM } else { 0 })
        };
        match t {
            Tunnel::Ipip => v.push(DestAttr::TunType(IP_VS_CONN_F_TUNNEL_TYPE_IPIP)),
            Tunnel::Gue { port, flags } => {
                v.push(DestAttr::TunType(IP_VS_CONN_F_TUNNEL_TYPE_GUE));
                v.push(DestAttr::TunPort(port));
                v.push(DestAttr::TunFlags(flag_bits(&flags)));
            }
            Tunnel::Gre { flags } => {
                v.push(DestAttr::TunType(IP_VS_CONN_F_TUNNEL_TYPE_GRE));
                v.push(DestAttr::TunFlags(flag_bits(&flags)));
            }
        }
    }
    v
}

fn stats_from(v: &[StatsAttr]) -> Stats {
    let mut s = Stats::default();
    for a in v {
        if let StatsAttr::Counter(k, n) = a {
            let slot = match *k {
                IPVS_STATS_ATTR_CONNS => &mut s.conns,
                IPVS_STATS_ATTR_INPKTS => &mut s.inpkts,
                IPVS_STATS_ATTR_OUTPKTS => &mut s.outpkts,
                IPVS_STATS_ATTR_INBYTES => &mut s.inbytes,
                IPVS_STATS_ATTR_OUTBYTES => &mut s.outbytes,
                IPVS_STATS_ATTR_CPS => &mut s.cps,
                IPVS_STATS_ATTR_INPPS => &mut s.inpps,
                IPVS_STATS_ATTR_OUTPPS => &mut s.outpps,
                IPVS_STATS_ATTR_INBPS => &mut s.inbps,
                IPVS_STATS_ATTR_OUTBPS => &mut s.outbps,
                _ => continue,
            };
            *slot = *n;
        }
    }
    s
}

/// A service (without dests) and its counters from a GET_SERVICE reply.
pub fn service_from(attrs: &[ServiceAttr]) -> Result<(Service, Stats), ConvertError> {
    let (mut af, mut proto, mut addr, mut port, mut mark) = (None, None, None, None, None);
    let (mut sched, mut flags, mut timeout, mut netmask, mut pe) = (None, 0u32, 0u32, 0u32, None);
    let (mut stats32, mut stats64) = (None, None);
    for a in attrs {
        match a {
            ServiceAttr::Af(v) => af = Some(*v),
            ServiceAttr::Protocol(v) => proto = Some(*v),
            ServiceAttr::Addr(v) => addr = Some(*v),
            ServiceAttr::Port(v) => port = Some(*v),
            ServiceAttr::Fwmark(v) => mark = Some(*v),
            ServiceAttr::SchedName(v) => sched = Some(v.clone()),
            ServiceAttr::Flags { flags: f, .. } => flags = *f,
            ServiceAttr::Timeout(v) => timeout = *v,
            ServiceAttr::Netmask(v) => netmask = *v,
            ServiceAttr::PeName(v) if !v.is_empty() => pe = Some(v.clone()),
            ServiceAttr::Stats(v) => stats32 = Some(stats_from(v)),
            ServiceAttr::Stats64(v) => stats64 = Some(stats_from(v)),
            _ => {}
        }
    }
    let af = af.ok_or(ConvertError("service without address family".into()))?;
    let family = match af {
        AF_INET => Family::Inet,
        AF_INET6 => Family::Inet6,
        other => return Err(ConvertError(format!("service with unknown address family {other}"))),
    };
    let key = match mark.filter(|m| *m != 0) {
        Some(mark) => ServiceKey::Fwmark { family, mark },
        None => {
            let protocol = match proto.ok_or(ConvertError("service without protocol or fwmark".into()))? {
                IPPROTO_TCP => Protocol::Tcp,
                IPPROTO_UDP => Protocol::Udp,
                IPPROTO_SCTP => Protocol::Sctp,
                other => return Err(ConvertError(format!("service with unknown protocol {other}"))),
            };
            let ip = addr_from(af, &addr.ok_or(ConvertError("service without address".into()))?)?;
            ServiceKey::Addr { protocol, addr: std::net::SocketAddr::new(ip, port.unwrap_or(0)) }
        }
    };
    let mut s = Service::new(key, sched.ok_or(ConvertError(format!("service {key} without scheduler")))?);
    if flags & IP_VS_SVC_F_PERSISTENT != 0 {
        s.persistence = Some(Persistence { timeout, netmask: wire_netmask(family, netmask) });
    }
    s.one_packet = flags & IP_VS_SVC_F_ONEPACKET != 0;
    s.sched_flags = SchedFlags {
        flag1: flags & IP_VS_SVC_F_SCHED1 != 0,
        flag2: flags & IP_VS_SVC_F_SCHED2 != 0,
        flag3: flags & IP_VS_SVC_F_SCHED3 != 0,
    };
    s.pe_name = pe;
    Ok((s, stats64.or(stats32).unwrap_or_default()))
}

/// A destination and its live status from a GET_DEST reply.
pub fn dest_from(attrs: &[DestAttr], service_family: Family) -> Result<(Dest, DestStatus), ConvertError> {
    let mut af = af_of(service_family);
    let (mut addr, mut port, mut method, mut weight) = (None, 0u16, IP_VS_CONN_F_DROUTE, 0u32);
    let (mut upper, mut lower, mut tun_type, mut tun_port, mut tun_flags) = (0, 0, 0u8, 0u16, 0u16);
    let mut st = DestStatus::default();
    let (mut s32, mut s64) = (None, None);
    for a in attrs {
        match a {
            DestAttr::AddrFamily(v) => af = *v,
            DestAttr::Addr(v) => addr = Some(*v),
            DestAttr::Port(v) => port = *v,
            DestAttr::FwdMethod(v) => method = *v & IP_VS_CONN_F_FWD_MASK,
            DestAttr::Weight(v) => weight = *v,
            DestAttr::UpperThreshold(v) => upper = *v,
            DestAttr::LowerThreshold(v) => lower = *v,
            DestAttr::ActiveConns(v) => st.active_conns = *v,
            DestAttr::InactiveConns(v) => st.inactive_conns = *v,
            DestAttr::PersistConns(v) => st.persistent_conns = *v,
            DestAttr::TunType(v) => tun_type = *v,
            DestAttr::TunPort(v) => tun_port = *v,
            DestAttr::TunFlags(v) => tun_flags = *v,
            DestAttr::Stats(v) => s32 = Some(stats_from(v)),
            DestAttr::Stats64(v) => s64 = Some(stats_from(v)),
            _ => {}
        }
    }
    st.stats = s64.or(s32).unwrap_or_default();
    let ip = addr_from(af, &addr.ok_or(ConvertError("destination without address".into()))?)?;
    let flags = TunFlags {
        nocsum: tun_flags & (IP_VS_TUNNEL_ENCAP_FLAG_CSUM | IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM) == 0,
        csum: tun_flags & IP_VS_TUNNEL_ENCAP_FLAG_CSUM != 0,
        remcsum: tun_flags & IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM != 0,
    };
    let forward = match method {
        IP_VS_CONN_F_MASQ => Forward::Masq,
        IP_VS_CONN_F_LOCALNODE => Forward::Local,
        IP_VS_CONN_F_DROUTE => Forward::Route,
        IP_VS_CONN_F_BYPASS => Forward::Bypass,
        IP_VS_CONN_F_TUNNEL => Forward::Tunnel(match tun_type {
            IP_VS_CONN_F_TUNNEL_TYPE_GUE => Tunnel::Gue { port: tun_port, flags },
            IP_VS_CONN_F_TUNNEL_TYPE_GRE => Tunnel::Gre { flags },
            _ => Tunnel::Ipip,
        }),
        other => return Err(ConvertError(format!("destination {ip} with unknown forwarding method {other}"))),
    };
    let key = DestKey { addr: ip, port };
    let dest = Dest { key, forward, weight: weight as i32, upper_threshold: upper, lower_threshold: lower };
    Ok((dest, st))
}

/// Attributes for NEW_DAEMON.
pub fn daemon_attrs(d: &SyncDaemon) -> Vec<DaemonAttr> {
    let mut v = vec![
        DaemonAttr::State(match d.role {
            SyncRole::Master => IP_VS_STATE_MASTER,
            SyncRole::Backup => IP_VS_STATE_BACKUP,
        }),
        DaemonAttr::McastIfn(d.interface.clone()),
        DaemonAttr::SyncId(d.sync_id as u32),
    ];
    if d.max_len != 0 {
        v.push(DaemonAttr::SyncMaxLen(d.max_len));
    }
    match d.group {
        Some(IpAddr::V4(g)) => v.push(DaemonAttr::McastGroup(g.octets())),
        Some(IpAddr::V6(g)) => v.push(DaemonAttr::McastGroup6(g.octets())),
        None => {}
    }
    if d.port != 0 {
        v.push(DaemonAttr::McastPort(d.port));
    }
    if d.ttl != 0 {
        v.push(DaemonAttr::McastTtl(d.ttl));
    }
    v
}

/// A sync daemon from a GET_DAEMON reply.
pub fn daemon_from(attrs: &[DaemonAttr]) -> Result<SyncDaemon, ConvertError> {
    let mut d = SyncDaemon { role: SyncRole::Master, interface: String::new(), sync_id: 0, max_len: 0, group: None, port: 0, ttl: 0 };
    let mut state = None;
    for a in attrs {
        match a {
            DaemonAttr::State(s) => state = Some(*s),
            DaemonAttr::McastIfn(s) => d.interface = s.clone(),
            DaemonAttr::SyncId(v) => d.sync_id = *v as u8,
            DaemonAttr::SyncMaxLen(v) => d.max_len = *v,
            DaemonAttr::McastGroup(g) if *g != [0; 4] => d.group = Some(IpAddr::from(*g)),
            DaemonAttr::McastGroup6(g) if *g != [0; 16] => d.group = Some(IpAddr::from(*g)),
            DaemonAttr::McastPort(p) => d.port = *p,
            DaemonAttr::McastTtl(t) => d.ttl = *t,
            _ => {}
        }
    }
    d.role = match state {
        Some(IP_VS_STATE_MASTER) => SyncRole::Master,
        Some(IP_VS_STATE_BACKUP) => SyncRole::Backup,
        other => return Err(ConvertError(format!("sync daemon with unknown state {other:?}"))),
    };
    Ok(d)
}
