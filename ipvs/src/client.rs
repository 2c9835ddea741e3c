//! A synchronous generic-netlink socket speaking the IPVS family.
//!
//! The point of this client is [`Client::apply`]: it packs hundreds of requests into one
//! `sendmsg`, each with its own sequence number and ACK flag, then maps every ACK or error
//! back to the [`Op`] that caused it. That is where the speed over `ipvsadm -R` (one request,
//! one round trip, one libnl socket setup per line) comes from.

use std::collections::HashMap;
use std::fmt;
use std::io;

use netlink_packet_core::{
    Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use crate::model::*;
use crate::nl::consts::*;
use crate::nl::convert::{self, ConvertError};
use crate::nl::{CmdAttr, IpvsMessage};
use crate::status::*;

/// Requests are packed into sendmsg buffers of at most this many bytes.
const BATCH_BYTES: usize = 48 * 1024;
/// Receive buffer for one recv (dumps come in chunks of up to a page-multiple skb).
const RECV_BYTES: usize = 1 << 20;

/// Why a netlink conversation with the kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the kernel has no IPVS generic-netlink family (is the ip_vs module loaded?)")]
    NoIpvs,
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("{what}: {errno}")]
    Kernel { what: String, errno: Errno },
    #[error("undecodable reply from the kernel: {0}")]
    Decode(String),
    #[error(transparent)]
    Convert(#[from] ConvertError),
}

/// A kernel errno with its meaning in IPVS terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = io::Error::from_raw_os_error(self.0);
        write!(f, "{os}")
    }
}

/// `apply` stopped at an operation the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {reason} ({applied} of {total} operations applied before it{later})", later = if *.later_failures > 0 { format!("; {} later operations in the same batch also failed", .later_failures) } else { String::new() })]
pub struct ApplyError {
    /// The first operation that failed, in ipvsadm-like words.
    pub op: String,
    pub index: usize,
    pub errno: Option<Errno>,
    pub reason: String,
    /// Operations that succeeded (all ops before `index` in order, and none after it are counted).
    pub applied: usize,
    pub total: usize,
    /// Failures after the first one within the same batch (the kernel processes the whole batch).
    pub later_failures: usize,
}

/// What an `apply` cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Netlink requests sent (one per op).
    pub requests: usize,
    /// `sendmsg` calls made (requests are batched).
    pub sendmsg_calls: usize,
}

/// A netlink socket bound to the IPVS family of the caller's network namespace.
pub struct Client {
    socket: Socket,
    family: u16,
    seq: u32,
    buf: Vec<u8>,
}

impl Client {
    /// Opens the socket and resolves the IPVS family id.
    pub fn new() -> Result<Client, Error> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Big enough for the ACKs of a whole batch and for dump bursts; SO_RCVBUFFORCE as root.
        let size: libc::c_int = 32 << 20;
        unsafe {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
            let p = &size as *const _ as *const libc::c_void;
            let n = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, p, n) != 0 {
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, p, n);
            }
        }
        // Errors then carry only the failed request's header, not a copy of it.
        let _ = socket.set_cap_ack(true);
        let mut c = Client { socket, family: 0, seq: 1, buf: Vec::with_capacity(RECV_BYTES) };
        c.family = c.resolve_family()?;
        Ok(c)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn resolve_family(&mut self) -> Result<u16, Error> {
        let mut genl = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(IPVS_GENL_NAME.to_owned())],
        });
        genl.finalize();
        let seq = self.next_seq();
        let mut msg = NetlinkMessage::new(header(NLM_F_REQUEST | NLM_F_ACK, seq), NetlinkPayload::from(genl));
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let mut family = None;
        loop {
            self.buf.clear();
            self.socket.recv(&mut self.buf, 0)?;
            let mut off = 0;
            while off < self.buf.len() {
                let m = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&self.buf[off..])
                    .map_err(|e| Error::Decode(e.to_string()))?;
                let len = m.header.length as usize;
                match m.payload {
                    NetlinkPayload::InnerMessage(g) => {
                        for a in &g.payload.nlas {
                            if let GenlCtrlAttrs::FamilyId(id) = a {
                                family = Some(*id);
                            }
                        }
                    }
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(if e.raw_code() == -libc::ENOENT { Error::NoIpvs } else { Error::Io(e.to_io()) })
                    }
                    NetlinkPayload::Error(_) => return family.ok_or(Error::NoIpvs),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += align4(len);
            }
        }
    }

    fn encode(&mut self, cmd: u8, attrs: Vec<CmdAttr>, flags: u16, out: &mut Vec<u8>) -> u32 {
        let seq = self.next_seq();
        let mut genl = GenlMessage::from_payload(IpvsMessage { cmd, attrs });
        genl.set_resolved_family_id(self.family);
        genl.finalize();
        let mut msg = NetlinkMessage::new(header(flags, seq), NetlinkPayload::from(genl));
        msg.finalize();
        let start = out.len();
        out.resize(start + msg.buffer_len(), 0);
        msg.serialize(&mut out[start..]);
        seq
    }

    /// Sends one request and collects its replies (a dump, or one reply, then the ACK).
    fn request(&mut self, what: &str, cmd: u8, attrs: Vec<CmdAttr>, dump: bool) -> Result<Vec<IpvsMessage>, Error> {
        let mut out = Vec::new();
        let flags = NLM_F_REQUEST | NLM_F_ACK | if dump { NLM_F_DUMP } else { 0 };
        let seq = self.encode(cmd, attrs, flags, &mut out);
        self.socket.send(&out, 0)?;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            self.socket.recv(&mut self.buf, 0)?;
            let mut off = 0;
            while off + 16 <= self.buf.len() {
                let len = u32::from_ne_bytes(self.buf[off..off + 4].try_into().unwrap()) as usize;
                if len < 16 || off + len > self.buf.len() {
                    return Err(Error::Decode(format!("netlink message length {len} out of bounds")));
                }
                let m = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&self.buf[off..off + len])
                    .map_err(|e| Error::Decode(e.to_string()))?;
                off += align4(len);
                if m.header.sequence_number != seq {
                    continue; // a late ACK of an earlier conversation
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(g) => replies.push(g.payload),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => match e.code {
                        None if !dump => return Ok(replies),
                        None => {}
                        Some(code) => return Err(Error::Kernel { what: what.to_owned(), errno: Errno(-code.get()) }),
                    },
                    _ => {}
                }
            }
        }
    }

    /// The kernel's whole table (services and their destinations).
    pub fn table(&mut self) -> Result<Table, Error> {
        let mut t = Table::default();
        for st in self.status()? {
            t.insert(st.service);
        }
        Ok(t)
    }

    /// Every service with its destinations, counters and connection counts.
    pub fn status(&mut self) -> Result<Vec<ServiceStatus>, Error> {
        let replies = self.request("list services", IPVS_CMD_GET_SERVICE, vec![], true)?;
        let mut out = Vec::new();
        for r in replies {
            for a in r.attrs {
                if let CmdAttr::Service(attrs) = a {
                    let (svc, stats) = convert::service_from(&attrs)?;
                    out.push(ServiceStatus { service: svc, stats, dests: Default::default() });
                }
            }
        }
        for st in &mut out {
            let key = st.service.key;
            let what = format!("list destinations of {key}");
            let replies = self.request(&what, IPVS_CMD_GET_DEST, vec![CmdAttr::Service(convert::service_key_attrs(&key))], true)?;
            for r in replies {
                for a in r.attrs {
                    if let CmdAttr::Dest(attrs) = a {
                        let (d, ds) = convert::dest_from(&attrs, key.family())?;
                        st.service.dests.insert(d.key, d);
                        st.dests.insert(d.key, ds);
                    }
                }
            }
        }
        Ok(out)
    }

    fn op_message(op: &Op) -> (u8, Vec<CmdAttr>) {
        match op {
            Op::AddService(s) => (IPVS_CMD_NEW_SERVICE, vec![CmdAttr::Service(convert::service_attrs(s))]),
            Op::EditService(s) => (IPVS_CMD_SET_SERVICE, vec![CmdAttr::Service(convert::service_attrs(s))]),
            Op::DelService(k) => (IPVS_CMD_DEL_SERVICE, vec![CmdAttr::Service(convert::service_key_attrs(k))]),
            Op::AddDest(k, d) => (
                IPVS_CMD_NEW_DEST,
                vec![CmdAttr::Service(convert::service_key_attrs(k)), CmdAttr::Dest(convert::dest_attrs(d))],
            ),
            Op::EditDest(k, d) => (
                IPVS_CMD_SET_DEST,
                vec![CmdAttr::Service(convert::service_key_attrs(k)), CmdAttr::Dest(convert::dest_attrs(d))],
            ),
            Op::DelDest(k, d) => (
                IPVS_CMD_DEL_DEST,
                vec![CmdAttr::Service(convert::service_key_attrs(k)), CmdAttr::Dest(convert::dest_key_attrs(d))],
            ),
        }
    }

    /// Applies `ops` in order, many requests per `sendmsg`. Stops after the first batch that
    /// had a failure and reports the first failed op.
    pub fn apply(&mut self, ops: &[Op]) -> Result<ApplyReport, ApplyError> {
        let mut report = ApplyReport::default();
        let mut i = 0;
        let trace = std::env::var_os("CORRAL_IPVS_TRACE").is_some();
        let started = std::time::Instant::now();
        while i < ops.len() {
            let mut out = Vec::with_capacity(BATCH_BYTES + 4096);
            let mut pending: HashMap<u32, usize> = HashMap::new();
            let first = i;
            // Only the batch's last request asks for an ACK: the kernel handles a sendmsg's
            // messages in order before it returns, and reports every failure on its own, so
            // the last ACK marks the end of the batch and successes cost no reply skb.
            let mut last_seq = 0;
            while i < ops.len() {
                let (cmd, attrs) = Self::op_message(&ops[i]);
                let size = attrs.iter().map(|a| a.buffer_len()).sum::<usize>() + 64;
                let last = i + 1 == ops.len() || out.len() + 2 * size >= BATCH_BYTES;
                let flags = if last { NLM_F_REQUEST | NLM_F_ACK } else { NLM_F_REQUEST };
                last_seq = self.encode(cmd, attrs, flags, &mut out);
                pending.insert(last_seq, i);
                i += 1;
                if last {
                    break;
                }
            }
            report.requests += i - first;
            report.sendmsg_calls += 1;
            if trace {
                eprintln!("ipvs: batch {} ops {}..{} at {:?}", report.sendmsg_calls, first, i, started.elapsed());
            }
            let io_fail = |e: io::Error, idx: usize| ApplyError {
                op: ops[idx].to_string(),
                index: idx,
                errno: e.raw_os_error().map(Errno),
                reason: format!("netlink socket: {e}"),
                applied: idx,
                total: ops.len(),
                later_failures: 0,
            };
            if let Err(e) = self.socket.send(&out, 0) {
                return Err(io_fail(e, first));
            }
            let mut failures: Vec<(usize, i32)> = Vec::new();
            while pending.contains_key(&last_seq) {
                self.buf.clear();
                if let Err(e) = self.socket.recv(&mut self.buf, 0) {
                    let idx = pending.values().min().copied().unwrap_or(first);
                    return Err(io_fail(e, idx));
                }
                let mut off = 0;
                while off + 20 <= self.buf.len() {
                    let len = u32::from_ne_bytes(self.buf[off..off + 4].try_into().unwrap()) as usize;
                    if len < 16 || off + len > self.buf.len() {
                        break;
                    }
                    let kind = u16::from_ne_bytes(self.buf[off + 4..off + 6].try_into().unwrap());
                    let seq = u32::from_ne_bytes(self.buf[off + 8..off + 12].try_into().unwrap());
                    if kind == netlink_packet_core::NLMSG_ERROR as u16 {
                        let code = i32::from_ne_bytes(self.buf[off + 16..off + 20].try_into().unwrap());
                        if let Some(idx) = pending.remove(&seq) {
                            if code != 0 {
                                failures.push((idx, -code));
                            }
                        }
                    }
                    off += align4(len);
                }
            }
            if !failures.is_empty() {
                failures.sort();
                let (idx, errno) = failures[0];
                return Err(ApplyError {
                    op: ops[idx].to_string(),
                    index: idx,
                    errno: Some(Errno(errno)),
                    reason: explain(&ops[idx], errno),
                    applied: idx,
                    total: ops.len(),
                    later_failures: failures.len() - 1,
                });
            }
        }
        Ok(report)
    }

    /// Removes every service (and so every destination).
    pub fn flush(&mut self) -> Result<(), Error> {
        self.request("flush", IPVS_CMD_FLUSH, vec![], false).map(drop)
    }

    /// Zeroes the counters of one service, or of all.
    pub fn zero(&mut self, service: Option<&ServiceKey>) -> Result<(), Error> {
        let attrs = service.map(|k| vec![CmdAttr::Service(convert::service_key_attrs(k))]).unwrap_or_default();
        let what = service.map(|k| format!("zero counters of {k}")).unwrap_or_else(|| "zero counters".into());
        self.request(&what, IPVS_CMD_ZERO, attrs, false).map(drop)
    }

    /// Connection timeouts (tcp, tcpfin, udp) in seconds.
    pub fn timeouts(&mut self) -> Result<Timeouts, Error> {
        let mut t = Timeouts::default();
        for r in self.request("get timeouts", IPVS_CMD_GET_CONFIG, vec![], false)? {
            for a in r.attrs {
                match a {
                    CmdAttr::TimeoutTcp(v) => t.tcp = v,
                    CmdAttr::TimeoutTcpFin(v) => t.tcp_fin = v,
                    CmdAttr::TimeoutUdp(v) => t.udp = v,
                    _ => {}
                }
            }
        }
        Ok(t)
    }

    /// Sets the timeouts; a 0 leaves that one unchanged (as `ipvsadm --set`).
    pub fn set_timeouts(&mut self, t: &Timeouts) -> Result<(), Error> {
        let mut attrs = Vec::new();
        if t.tcp != 0 {
            attrs.push(CmdAttr::TimeoutTcp(t.tcp));
        }
        if t.tcp_fin != 0 {
            attrs.push(CmdAttr::TimeoutTcpFin(t.tcp_fin));
        }
        if t.udp != 0 {
            attrs.push(CmdAttr::TimeoutUdp(t.udp));
        }
        self.request("set timeouts", IPVS_CMD_SET_CONFIG, attrs, false).map(drop)
    }

    /// IPVS version and connection table size.
    pub fn info(&mut self) -> Result<Info, Error> {
        let mut info = Info { version: 0, conn_tab_size: 0 };
        for r in self.request("get info", IPVS_CMD_GET_INFO, vec![], false)? {
            for a in r.attrs {
                match a {
                    CmdAttr::InfoVersion(v) => info.version = v,
                    CmdAttr::InfoConnTabSize(v) => info.conn_tab_size = v,
                    _ => {}
                }
            }
        }
        Ok(info)
    }

    /// Running connection-sync daemons.
    pub fn daemons(&mut self) -> Result<Vec<SyncDaemon>, Error> {
        let mut out = Vec::new();
        for r in self.request("list sync daemons", IPVS_CMD_GET_DAEMON, vec![], true)? {
            for a in r.attrs {
                if let CmdAttr::Daemon(attrs) = a {
                    out.push(convert::daemon_from(&attrs)?);
                }
            }
        }
        Ok(out)
    }

    /// Starts a connection-sync daemon (`ipvsadm --start-daemon`).
    pub fn start_daemon(&mut self, d: &SyncDaemon) -> Result<(), Error> {
        let what = format!("start {:?} sync daemon on {}", d.role, d.interface).to_lowercase();
        self.request(&what, IPVS_CMD_NEW_DAEMON, vec![CmdAttr::Daemon(convert::daemon_attrs(d))], false).map(drop)
    }

    /// Stops the daemon of that role.
    pub fn stop_daemon(&mut self, role: SyncRole) -> Result<(), Error> {
        let state = match role {
            SyncRole::Master => IP_VS_STATE_MASTER,
            SyncRole::Backup => IP_VS_STATE_BACKUP,
        };
        let what = format!("stop {role:?} sync daemon").to_lowercase();
        self.request(&what, IPVS_CMD_DEL_DAEMON, vec![CmdAttr::Daemon(vec![crate::nl::DaemonAttr::State(state)])], false)
            .map(drop)
    }
}

fn header(flags: u16, seq: u32) -> NetlinkHeader {
    let mut h = NetlinkHeader::default();
    h.flags = flags;
    h.sequence_number = seq;
    h
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The kernel's errno for an op, in the words an LVS operator would use.
pub fn explain(op: &Op, errno: i32) -> String {
    let base = io::Error::from_raw_os_error(errno).to_string();
    let hint = match (op, errno) {
        (Op::AddService(s) | Op::EditService(s), libc::ENOENT) => {
            if s.pe_name.is_some() {
                format!("unknown scheduler '{}' or persistence engine (module not loaded?)", s.scheduler)
            } else {
                format!("unknown scheduler '{}' (module ip_vs_{} not loaded?)", s.scheduler, s.scheduler)
            }
        }
        (Op::AddService(_), libc::EEXIST) => "service already exists".into(),
        (Op::AddDest(..), libc::EEXIST) => "destination already exists".into(),
        (Op::EditService(_) | Op::DelService(_) | Op::AddDest(..) | Op::EditDest(..) | Op::DelDest(..), libc::ESRCH) => {
            "no such service".into()
        }
        (Op::EditDest(..) | Op::DelDest(..), libc::ENOENT) => "no such destination".into(),
        (_, libc::EAFNOSUPPORT) => "address family not supported (IPv6 disabled, or mixed families without a tunnel)".into(),
        (_, libc::EINVAL) => "invalid argument (check weight, thresholds, persistence netmask, tunnel settings)".into(),
        (_, libc::EPERM) => "permission denied (needs CAP_NET_ADMIN)".into(),
        _ => return base,
    };
    format!("{hint} [{base}]")
}
