//! Typed IPVS netlink attributes (linux/ip_vs.h), one enum per nesting level.
//!
//! Unknown attributes are kept as `Other(DefaultNla)` so nothing a newer kernel sends is lost
//! on a round trip. Every parser checks lengths before reading: a decoder fed by the kernel
//! (or by a fuzzer) returns an error, never panics.

use netlink_packet_core::{
    emit_u16, emit_u32, emit_u64, parse_string, parse_u16, parse_u16_be, parse_u32, parse_u64, parse_u8, DecodeError,
    DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable, NLA_TYPE_MASK,
};

use super::consts::*;

/// Parses every attribute of a nested buffer with `f`.
pub(crate) fn parse_all<T>(
    buf: &[u8],
    f: impl Fn(&NlaBuffer<&[u8]>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(buf) {
        let nla = nla?;
        out.push(f(&nla)?);
    }
    Ok(out)
}

fn nested_len<T: Nla>(v: &[T]) -> usize {
    v.iter().map(|n| n.buffer_len()).sum()
}

fn emit_nested<T: Nla>(v: &[T], buf: &mut [u8]) {
    let mut off = 0;
    for n in v {
        let len = n.buffer_len();
        n.emit(&mut buf[off..off + len]);
        off += len;
    }
}

fn parse_addr(v: &[u8]) -> Result<[u8; 16], DecodeError> {
    // The kernel always sends 16 bytes (union nf_inet_addr); accept a bare IPv4 address too.
    match v.len() {
        16 => Ok(v.try_into().unwrap()),
        4 => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(v);
            Ok(a)
        }
        n => Err(DecodeError::from(format!("address attribute of {n} bytes (want 4 or 16)"))),
    }
}

fn parse_num(v: &[u8]) -> Result<u64, DecodeError> {
    match v.len() {
        4 => Ok(parse_u32(v)? as u64),
        8 => parse_u64(v),
        n => Err(DecodeError::from(format!("counter of {n} bytes (want 4 or 8)"))),
    }
}

/// `IPVS_STATS_ATTR_*` inside `STATS` (32-bit packet counters) or `STATS64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsAttr {
    /// (kind, value); the width is decided by the enclosing attribute when emitting.
    Counter(u16, u64),
    Other(DefaultNla),
}

impl StatsAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let kind = nla.kind() & NLA_TYPE_MASK;
        Ok(match kind {
            IPVS_STATS_ATTR_CONNS..=IPVS_STATS_ATTR_OUTBPS => StatsAttr::Counter(kind, parse_num(nla.value())?),
            _ => StatsAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

/// Emits 64-bit counters (we only ever send stats in tests; the kernel never reads them).
impl Nla for StatsAttr {
    fn value_len(&self) -> usize {
        match self {
            StatsAttr::Counter(..) => 8,
            StatsAttr::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            StatsAttr::Counter(k, _) => *k,
            StatsAttr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            StatsAttr::Counter(_, v) => emit_u64(buf, *v).unwrap(),
            StatsAttr::Other(n) => n.emit_value(buf),
        }
    }
}

/// `IPVS_SVC_ATTR_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAttr {
    Af(u16),
    Protocol(u16),
    /// Always 16 bytes on the wire; IPv4 in the first 4.
    Addr([u8; 16]),
    /// Host-order value; network order on the wire.
    Port(u16),
    Fwmark(u32),
    SchedName(String),
    Flags { flags: u32, mask: u32 },
    Timeout(u32),
    /// As the kernel keeps it: an IPv4 mask in network byte order, an IPv6 prefix length plain.
    Netmask(u32),
    Stats(Vec<StatsAttr>),
    PeName(String),
    Stats64(Vec<StatsAttr>),
    Other(DefaultNla),
}

impl Nla for ServiceAttr {
    fn value_len(&self) -> usize {
        use ServiceAttr::*;
        match self {
            Af(_) | Protocol(_) | Port(_) => 2,
            Addr(_) => 16,
            Fwmark(_) | Timeout(_) | Netmask(_) => 4,
            SchedName(s) | PeName(s) => s.len() + 1,
            Flags { .. } => 8,
            Stats(v) | Stats64(v) => nested_len(v),
            Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        use ServiceAttr::*;
        match self {
            Af(_) => IPVS_SVC_ATTR_AF,
            Protocol(_) => IPVS_SVC_ATTR_PROTOCOL,
            Addr(_) => IPVS_SVC_ATTR_ADDR,
            Port(_) => IPVS_SVC_ATTR_PORT,
            Fwmark(_) => IPVS_SVC_ATTR_FWMARK,
            SchedName(_) => IPVS_SVC_ATTR_SCHED_NAME,
            Flags { .. } => IPVS_SVC_ATTR_FLAGS,
            Timeout(_) => IPVS_SVC_ATTR_TIMEOUT,
            Netmask(_) => IPVS_SVC_ATTR_NETMASK,
            Stats(_) => IPVS_SVC_ATTR_STATS,
            PeName(_) => IPVS_SVC_ATTR_PE_NAME,
            Stats64(_) => IPVS_SVC_ATTR_STATS64,
            Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        use ServiceAttr::*;
        match self {
            Af(v) | Protocol(v) => emit_u16(buf, *v).unwrap(),
            Port(v) => buf.copy_from_slice(&v.to_be_bytes()),
            Addr(a) => buf.copy_from_slice(a),
            Fwmark(v) | Timeout(v) | Netmask(v) => emit_u32(buf, *v).unwrap(),
            SchedName(s) | PeName(s) => emit_cstr(buf, s),
            Flags { flags, mask } => {
                emit_u32(&mut buf[..4], *flags).unwrap();
                emit_u32(&mut buf[4..8], *mask).unwrap();
            }
            Stats(v) | Stats64(v) => emit_nested(v, buf),
            Other(n) => n.emit_value(buf),
        }
    }
}

fn emit_cstr(buf: &mut [u8], s: &str) {
    buf[..s.len()].copy_from_slice(s.as_bytes());
    buf[s.len()] = 0;
}

impl ServiceAttr {
    pub(crate) fn parse(nla: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        use ServiceAttr::*;
        let v = nla.value();
        Ok(match nla.kind() & NLA_TYPE_MASK {
            IPVS_SVC_ATTR_AF => Af(parse_u16(v)?),
            IPVS_SVC_ATTR_PROTOCOL => Protocol(parse_u16(v)?),
            IPVS_SVC_ATTR_ADDR => Addr(parse_addr(v)?),
            IPVS_SVC_ATTR_PORT => Port(parse_u16_be(v)?),
            IPVS_SVC_ATTR_FWMARK => Fwmark(parse_u32(v)?),
            IPVS_SVC_ATTR_SCHED_NAME => SchedName(parse_string(v)?),
            IPVS_SVC_ATTR_FLAGS => {
                if v.len() != 8 {
                    return Err(DecodeError::from(format!("service flags of {} bytes (want 8)", v.len())));
                }
                Flags { flags: parse_u32(&v[..4])?, mask: parse_u32(&v[4..])? }
            }
            IPVS_SVC_ATTR_TIMEOUT => Timeout(parse_u32(v)?),
            IPVS_SVC_ATTR_NETMASK => Netmask(parse_u32(v)?),
            IPVS_SVC_ATTR_STATS => Stats(parse_all(v, StatsAttr::parse)?),
            IPVS_SVC_ATTR_PE_NAME => PeName(parse_string(v)?),
            IPVS_SVC_ATTR_STATS64 => Stats64(parse_all(v, StatsAttr::parse)?),
            _ => Other(DefaultNla::parse(nla)?),
        })
    }
}

/// `IPVS_DEST_ATTR_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestAttr {
    Addr([u8; 16]),
    /// Host-order value; network order on the wire.
    Port(u16),
    FwdMethod(u32),
    /// The kernel's weight is an int carried as u32.
    Weight(u32),
    UpperThreshold(u32),
    LowerThreshold(u32),
    ActiveConns(u32),
    InactiveConns(u32),
    PersistConns(u32),
    Stats(Vec<StatsAttr>),
    AddrFamily(u16),
    Stats64(Vec<StatsAttr>),
    TunType(u8),
    /// Host-order value; network order on the wire.
    TunPort(u16),
    TunFlags(u16),
    Other(DefaultNla),
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        use DestAttr::*;
        match self {
            Addr(_) => 16,
            Port(_) | AddrFamily(_) | TunPort(_) | TunFlags(_) => 2,
            TunType(_) => 1,
            FwdMethod(_) | Weight(_) | UpperThreshold(_) | LowerThreshold(_) | ActiveConns(_) | InactiveConns(_)
            | PersistConns(_) => 4,
            Stats(v) | Stats64(v) => nested_len(v),
            Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        use DestAttr::*;
        match self {
            Addr(_) => IPVS_DEST_ATTR_ADDR,
            Port(_) => IPVS_DEST_ATTR_PORT,
            FwdMethod(_) => IPVS_DEST_ATTR_FWD_METHOD,
            Weight(_) => IPVS_DEST_ATTR_WEIGHT,
            UpperThreshold(_) => IPVS_DEST_ATTR_U_THRESH,
            LowerThreshold(_) => IPVS_DEST_ATTR_L_THRESH,
            ActiveConns(_) => IPVS_DEST_ATTR_ACTIVE_CONNS,
            InactiveConns(_) => IPVS_DEST_ATTR_INACT_CONNS,
            PersistConns(_) => IPVS_DEST_ATTR_PERSIST_CONNS,
            Stats(_) => IPVS_DEST_ATTR_STATS,
            AddrFamily(_) => IPVS_DEST_ATTR_ADDR_FAMILY,
            Stats64(_) => IPVS_DEST_ATTR_STATS64,
            TunType(_) => IPVS_DEST_ATTR_TUN_TYPE,
            TunPort(_) => IPVS_DEST_ATTR_TUN_PORT,
            TunFlags(_) => IPVS_DEST_ATTR_TUN_FLAGS,
            Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        use DestAttr::*;
        match self {
            Addr(a) => buf.copy_from_slice(a),
            Port(v) | TunPort(v) => buf.copy_from_slice(&v.to_be_bytes()),
            AddrFamily(v) | TunFlags(v) => emit_u16(buf, *v).unwrap(),
            TunType(v) => buf[0] = *v,
            FwdMethod(v) | Weight(v) | UpperThreshold(v) | LowerThreshold(v) | ActiveConns(v) | InactiveConns(v)
            | PersistConns(v) => emit_u32(buf, *v).unwrap(),
            Stats(v) | Stats64(v) => emit_nested(v, buf),
            Other(n) => n.emit_value(buf),
        }
    }
}

impl DestAttr {
    pub(crate) fn parse(nla: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        use DestAttr::*;
        let v = nla.value();
        Ok(match nla.kind() & NLA_TYPE_MASK {
            IPVS_DEST_ATTR_ADDR => Addr(parse_addr(v)?),
            IPVS_DEST_ATTR_PORT => Port(parse_u16_be(v)?),
            IPVS_DEST_ATTR_FWD_METHOD => FwdMethod(parse_u32(v)?),
            IPVS_DEST_ATTR_WEIGHT => Weight(parse_u32(v)?),
            IPVS_DEST_ATTR_U_THRESH => UpperThreshold(parse_u32(v)?),
            IPVS_DEST_ATTR_L_THRESH => LowerThreshold(parse_u32(v)?),
            IPVS_DEST_ATTR_ACTIVE_CONNS => ActiveConns(parse_u32(v)?),
            IPVS_DEST_ATTR_INACT_CONNS => InactiveConns(parse_u32(v)?),
            IPVS_DEST_ATTR_PERSIST_CONNS => PersistConns(parse_u32(v)?),
            IPVS_DEST_ATTR_STATS => Stats(parse_all(v, StatsAttr::parse)?),
            IPVS_DEST_ATTR_ADDR_FAMILY => AddrFamily(parse_u16(v)?),
            IPVS_DEST_ATTR_STATS64 => Stats64(parse_all(v, StatsAttr::parse)?),
            IPVS_DEST_ATTR_TUN_TYPE => TunType(parse_u8(v)?),
            IPVS_DEST_ATTR_TUN_PORT => TunPort(parse_u16_be(v)?),
            IPVS_DEST_ATTR_TUN_FLAGS => TunFlags(parse_u16(v)?),
            _ => Other(DefaultNla::parse(nla)?),
        })
    }
}

/// `IPVS_DAEMON_ATTR_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonAttr {
    /// IP_VS_STATE_MASTER (1) or IP_VS_STATE_BACKUP (2).
    State(u32),
    McastIfn(String),
    SyncId(u32),
    SyncMaxLen(u16),
    McastGroup([u8; 4]),
    McastGroup6([u8; 16]),
    /// Host order on the wire (unlike service and dest ports).
    McastPort(u16),
    McastTtl(u8),
    Other(DefaultNla),
}

impl Nla for DaemonAttr {
    fn value_len(&self) -> usize {
        use DaemonAttr::*;
        match self {
            State(_) | SyncId(_) | McastGroup(_) => 4,
            McastIfn(s) => s.len() + 1,
            SyncMaxLen(_) | McastPort(_) => 2,
            McastGroup6(_) => 16,
            McastTtl(_) => 1,
            Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        use DaemonAttr::*;
        match self {
            State(_) => IPVS_DAEMON_ATTR_STATE,
            McastIfn(_) => IPVS_DAEMON_ATTR_MCAST_IFN,
            SyncId(_) => IPVS_DAEMON_ATTR_SYNC_ID,
            SyncMaxLen(_) => IPVS_DAEMON_ATTR_SYNC_MAXLEN,
            McastGroup(_) => IPVS_DAEMON_ATTR_MCAST_GROUP,
            McastGroup6(_) => IPVS_DAEMON_ATTR_MCAST_GROUP6,
            McastPort(_) => IPVS_DAEMON_ATTR_MCAST_PORT,
            McastTtl(_) => IPVS_DAEMON_ATTR_MCAST_TTL,
            Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        use DaemonAttr::*;
        match self {
            State(v) | SyncId(v) => emit_u32(buf, *v).unwrap(),
            McastIfn(s) => emit_cstr(buf, s),
            SyncMaxLen(v) => emit_u16(buf, *v).unwrap(),
            McastGroup(a) => buf.copy_from_slice(a),
            McastGroup6(a) => buf.copy_from_slice(a),
            McastPort(v) => emit_u16(buf, *v).unwrap(),
            McastTtl(v) => buf[0] = *v,
            Other(n) => n.emit_value(buf),
        }
    }
}

impl DaemonAttr {
    pub(crate) fn parse(nla: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        use DaemonAttr::*;
        let v = nla.value();
        Ok(match nla.kind() & NLA_TYPE_MASK {
            IPVS_DAEMON_ATTR_STATE => State(parse_u32(v)?),
            IPVS_DAEMON_ATTR_MCAST_IFN => McastIfn(parse_string(v)?),
            IPVS_DAEMON_ATTR_SYNC_ID => SyncId(parse_u32(v)?),
            IPVS_DAEMON_ATTR_SYNC_MAXLEN => SyncMaxLen(parse_u16(v)?),
            IPVS_DAEMON_ATTR_MCAST_GROUP => {
                McastGroup(v.try_into().map_err(|_| DecodeError::from("multicast group of wrong length"))?)
            }
            IPVS_DAEMON_ATTR_MCAST_GROUP6 => {
                McastGroup6(v.try_into().map_err(|_| DecodeError::from("IPv6 multicast group of wrong length"))?)
            }
            IPVS_DAEMON_ATTR_MCAST_PORT => McastPort(parse_u16(v)?),
            IPVS_DAEMON_ATTR_MCAST_TTL => McastTtl(parse_u8(v)?),
            _ => Other(DefaultNla::parse(nla)?),
        })
    }
}

/// Top-level attributes (`IPVS_CMD_ATTR_*`, or `IPVS_INFO_ATTR_*` in info messages: the two
/// share numbers, so the command decides which set a message carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdAttr {
    Service(Vec<ServiceAttr>),
    Dest(Vec<DestAttr>),
    Daemon(Vec<DaemonAttr>),
    TimeoutTcp(u32),
    TimeoutTcpFin(u32),
    TimeoutUdp(u32),
    InfoVersion(u32),
    InfoConnTabSize(u32),
    Other(DefaultNla),
}

impl Nla for CmdAttr {
    fn value_len(&self) -> usize {
        use CmdAttr::*;
        match self {
            Service(v) => nested_len(v),
            Dest(v) => nested_len(v),
            Daemon(v) => nested_len(v),
            TimeoutTcp(_) | TimeoutTcpFin(_) | TimeoutUdp(_) | InfoVersion(_) | InfoConnTabSize(_) => 4,
            Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        use CmdAttr::*;
        match self {
            Service(_) => IPVS_CMD_ATTR_SERVICE,
            Dest(_) => IPVS_CMD_ATTR_DEST,
            Daemon(_) => IPVS_CMD_ATTR_DAEMON,
            TimeoutTcp(_) => IPVS_CMD_ATTR_TIMEOUT_TCP,
            TimeoutTcpFin(_) => IPVS_CMD_ATTR_TIMEOUT_TCP_FIN,
            TimeoutUdp(_) => IPVS_CMD_ATTR_TIMEOUT_UDP,
            InfoVersion(_) => IPVS_INFO_ATTR_VERSION,
            InfoConnTabSize(_) => IPVS_INFO_ATTR_CONN_TAB_SIZE,
            Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        use CmdAttr::*;
        match self {
            Service(v) => emit_nested(v, buf),
            Dest(v) => emit_nested(v, buf),
            Daemon(v) => emit_nested(v, buf),
            TimeoutTcp(x) | TimeoutTcpFin(x) | TimeoutUdp(x) | InfoVersion(x) | InfoConnTabSize(x) => {
                emit_u32(buf, *x).unwrap()
            }
            Other(n) => n.emit_value(buf),
        }
    }
}

impl CmdAttr {
    pub(crate) fn parse(nla: &NlaBuffer<&[u8]>, cmd: u8) -> Result<Self, DecodeError> {
        use CmdAttr::*;
        let v = nla.value();
        let kind = nla.kind() & NLA_TYPE_MASK;
        if cmd == IPVS_CMD_GET_INFO || cmd == IPVS_CMD_SET_INFO {
            return Ok(match kind {
                IPVS_INFO_ATTR_VERSION => InfoVersion(parse_u32(v)?),
                IPVS_INFO_ATTR_CONN_TAB_SIZE => InfoConnTabSize(parse_u32(v)?),
                _ => Other(DefaultNla::parse(nla)?),
            });
        }
        Ok(match kind {
            IPVS_CMD_ATTR_SERVICE => Service(parse_all(v, ServiceAttr::parse)?),
            IPVS_CMD_ATTR_DEST => Dest(parse_all(v, DestAttr::parse)?),
            IPVS_CMD_ATTR_DAEMON => Daemon(parse_all(v, DaemonAttr::parse)?),
            IPVS_CMD_ATTR_TIMEOUT_TCP => TimeoutTcp(parse_u32(v)?),
            IPVS_CMD_ATTR_TIMEOUT_TCP_FIN => TimeoutTcpFin(parse_u32(v)?),
            IPVS_CMD_ATTR_TIMEOUT_UDP => TimeoutUdp(parse_u32(v)?),
            _ => Other(DefaultNla::parse(nla)?),
        })
    }
}
