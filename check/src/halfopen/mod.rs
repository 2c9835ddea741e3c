//! TCP half-open check (F5's `tcp_half_open`, nmap's SYN scan): send a SYN, count a SYN-ACK as up
//! and a RST as refused, and never complete the handshake — the director's kernel answers the
//! SYN-ACK with a RST itself (see [`sys::reserve_ports`]). Per check it costs the backend a
//! request socket instead of a full connection plus accept, and costs the checker one batched
//! `sendmmsg` slot and one `recvmmsg` slot instead of `socket` + `connect` + `close`.
//!
//! # Layout
//! - [`wire`]: the TCP header view and repr.
//! - `core`: sans-IO table of probes in flight (ISNs, resends at 1 s and 3 s, deadlines).
//! - [`sys`]: raw sockets with their BPF filter, reserved ports, batched I/O.
//! - `batch`: the rounds of a scheduler's `tcp_half_open` checks, run by the driver (no task
//!   per check).
//! - [`Prober`] (here): one per scheduler, like the TCP check's `Connector`: started at the first
//!   probe or check, one raw socket per address family and one driver task that starts the
//!   probes of every check due, sends every SYN queued since its last wake-up with one
//!   `sendmmsg`, reads replies with `recvmmsg`, feeds the outcomes to the checks' rounds, and
//!   keeps a single tokio sleep armed for the earliest resend, deadline or check due.

pub(crate) mod batch;
pub(crate) mod core;
pub mod sys;
mod timeline;
pub mod wire;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use self::batch::{CheckId, Checks, Report, RoundSink};
use self::core::{Core, Id, Outcome};
use crate::rounds::Rounds;
use crate::checker::DefError;
use crate::def::{TcpHalfOpenCheck, Timing};
use crate::result::{FailReason, Phase};

/// Source ports reserved per address family. Each probe in flight to one target needs its own,
/// so this bounds the probes in flight to a single backend (retries and duplicates), not the
/// total.
const POOL: usize = 16;

/// Datagrams read per `recvmmsg`.
const BATCH: usize = 64;

/// One prober per scheduler (or one-off attempt): raw sockets and a driver task, started at the
/// first probe on the runtime that runs it. Dropping it lets the driver end once no probe waits.
#[derive(Default)]
pub(crate) struct Prober {
    inner: OnceLock<Result<Arc<Inner>, String>>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober").field("started", &self.inner.get().is_some()).finish()
    }
}

struct Family {
    sock: AsyncFd<sys::RawTcp>,
    /// The reserved source ports.
    ports: Vec<u16>,
    /// The bound sockets that hold them.
    _holders: Vec<socket2::Socket>,
}

/// The sockets and the driver's wake-up: held by the driver task, which owns them (they close
/// when it ends), and by [`Inner`].
struct Io {
    v4: Option<Family>,
    v6: Option<Family>,
    /// A probe was added: SYNs to send, maybe an earlier deadline.
    kick: Notify,
}

/// The probes in flight and the checks whose rounds the driver runs, under one lock.
struct Table {
    core: Core,
    checks: Checks,
}

/// The probes. Only the prober, probes in flight and registered checks hold it strongly; the
/// driver holds it weakly across its waits, so when the last user goes `_alive` drops, the
/// driver hears `gone` and ends, and the sockets and reserved ports are released.
struct Inner {
    table: Mutex<Table>,
    io: Arc<Io>,
    _alive: oneshot::Sender<()>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn open_family(v6: bool) -> io::Result<Family> {
    let raw = sys::RawTcp::open(v6)?;
    let (holders, ports) = sys::reserve_ports(v6, POOL)?;
    raw.attach_filter(&ports)?;
    // SAFETY: `RawTcp` owns its descriptor, so it stays open and the same for as long as the
    // `AsyncFd` (which owns the `RawTcp`) lives.
    let sock = unsafe { AsyncFd::register(raw) }.map_err(|e| e.into_parts().1)?;
    Ok(Family { sock, ports, _holders: holders })
}

fn start(rt: &tokio::runtime::Handle) -> Result<Arc<Inner>, String> {
    // The sockets register with this runtime's reactor.
    let _entered = rt.enter();
    let v4 = open_family(false);
    let v6 = open_family(true);
    let (v4, v6) = match (v4, v6) {
        (Err(e), Err(e6)) => {
            // Both refused: say why once (CAP_NET_RAW in the common case).
            return Err(if e.kind() == io::ErrorKind::PermissionDenied { e.to_string() } else { format!("IPv4: {e}; IPv6: {e6}") });
        }
        (v4, v6) => {
            if let Err(e) = &v6 {
                tracing::debug!("half-open check: no IPv6 raw socket: {e}");
            }
            if let Err(e) = &v4 {
                tracing::warn!("half-open check: no IPv4 raw socket: {e}");
            }
            (v4.ok(), v6.ok())
        }
    };
    let ports = |f: &Option<Family>| f.as_ref().map_or_else(Vec::new, |f| f.ports.clone());
    let core = Core::new(ports(&v4), ports(&v6));
    let (alive, gone) = oneshot::channel();
    let io = Arc::new(Io { v4, v6, kick: Notify::new() });
    let inner = Arc::new(Inner { table: Mutex::new(Table { core, checks: Checks::default() }), io: io.clone(), _alive: alive });
    rt.spawn(drive(Arc::downgrade(&inner), io, gone));
    Ok(inner)
}

impl Prober {
    fn inner(&self) -> Result<&Arc<Inner>, FailReason> {
        self.inner.get_or_init(|| start(&tokio::runtime::Handle::current())).as_ref().map_err(|e| FailReason::Io(e.clone()))
    }

    /// The core's counters (zeros before the first probe).
    pub(crate) fn counters(&self) -> self::core::Counters {
        self.inner.get().and_then(|r| r.as_ref().ok()).map_or_else(Default::default, |i| i.lock().core.counters)
    }

    /// Probe `target` from `src` (SYN queued at `now`) until `deadline`.
    pub(crate) fn probe(&self, now: Instant, target: SocketAddr, src: IpAddr, deadline: Instant) -> Result<ProbeWait, FailReason> {
        let inner = self.inner()?.clone();
        let id = inner.lock().core.start(now, target, src, deadline).map_err(|e| FailReason::Io(e.to_string()))?;
        inner.io.kick.notify_one();
        Ok(ProbeWait { inner, id: Some(id) })
    }

    /// Hand a check's rounds to the driver (started on `rt` if it is not running yet). `Err`
    /// with the check given back when the raw sockets cannot be opened: the caller then runs it
    /// the ordinary way, whose attempts report why.
    pub(crate) fn add_check(
        &self,
        rt: &tokio::runtime::Handle,
        probe: HalfOpenProbe,
        rounds: Rounds,
        sink: Arc<dyn RoundSink>,
        stats: &Arc<crate::stats::Stats>,
    ) -> Result<CheckHandle, (HalfOpenProbe, Rounds)> {
        let Ok(inner) = self.inner.get_or_init(|| start(rt)).as_ref() else { return Err((probe, rounds)) };
        let id = inner.lock().checks.add(probe, rounds, sink, stats);
        inner.io.kick.notify_one();
        Ok(CheckHandle { inner: inner.clone(), id })
    }
}

/// A check whose rounds the driver runs; dropping it stops them.
pub(crate) struct CheckHandle {
    inner: Arc<Inner>,
    id: CheckId,
}

impl CheckHandle {
    /// The check's status after its rounds so far.
    pub(crate) fn status(&self) -> Option<crate::scheduler::Status> {
        self.inner.lock().checks.status(self.id)
    }

    /// Stop the check now (dropping the handle does the same).
    pub(crate) fn stop(&self) {
        let mut t = self.inner.lock();
        let Table { core, checks } = &mut *t;
        checks.remove(self.id, core);
    }
}

impl Drop for CheckHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A probe in flight; resolves once. Dropping it forgets the probe.
pub(crate) struct ProbeWait {
    inner: Arc<Inner>,
    id: Option<Id>,
}

impl Future for ProbeWait {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        let Some(id) = this.id else { return Poll::Ready(Outcome::TimedOut) };
        match this.inner.lock().core.poll_outcome(id, cx.waker()) {
            Some(o) => {
                this.id = None;
                Poll::Ready(o)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for ProbeWait {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.inner.lock().core.release(id);
        }
    }
}

/// Waits for readability of an optional socket; never resolves for a missing one.
async fn readable(f: Option<&Family>) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, sys::RawTcp>> {
    match f {
        Some(f) => f.sock.readable().await,
        None => std::future::pending().await,
    }
}

async fn writable(f: Option<&Family>, want: bool) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, sys::RawTcp>> {
    match f {
        Some(f) if want => f.sock.writable().await,
        _ => std::future::pending().await,
    }
}

/// The driver: starts due checks' probes, sends queued SYNs, reads replies, fires resends and
/// deadlines, runs the checks' rounds on the outcomes, wakes one-off probes.
async fn drive(weak: Weak<Inner>, io: Arc<Io>, mut gone: oneshot::Receiver<()>) {
    let mut bufs = sys::RecvBufs::new(BATCH);
    let mut wake: Vec<Waker> = Vec::new();
    let mut reports: Vec<Report> = Vec::new();
    // SYNs the socket had no room for, per family, sent before anything new.
    let mut backlog: [Vec<core::Transmit>; 2] = [Vec::new(), Vec::new()];
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        // Outcomes to the checks' rounds, then the due checks' probes; everything queued since
        // the last wake-up goes out now, one sendmmsg per family.
        {
            let mut t = inner.lock();
            let Table { core, checks } = &mut *t;
            checks.handle(Instant::now(), core, &mut reports);
            while let Some(t) = core.poll_transmit() {
                backlog[usize::from(t.dst.is_ipv6())].push(t);
            }
            let next = match (core.poll_timeout(), checks.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if next != armed {
                if let Some(at) = next {
                    sleep.as_mut().reset(at);
                }
                armed = next;
            }
        }
        for (i, fam) in [io.v4.as_ref(), io.v6.as_ref()].into_iter().enumerate() {
            let q = &mut backlog[i];
            if q.is_empty() {
                continue;
            }
            let Some(fam) = fam else {
                q.clear();
                continue;
            };
            let pkts: Vec<(SocketAddr, &[u8])> = q.iter().map(|t| (t.dst, t.payload())).collect();
            let mut done = 0;
            while done < pkts.len() {
                match fam.sock.get_ref().send_batch(&pkts[done..]) {
                    Ok(0) => break, // buffer full: wait for writability, send the rest then
                    Ok(n) => done += n,
                    Err(e) => {
                        // `sendmmsg` fails only for the first message it could not send (no
                        // route, say): that probe ends with the error, the rest go out.
                        inner.lock().core.send_failed(q[done].id, e.raw_os_error().unwrap_or(libc::EIO));
                        done += 1;
                    }
                }
            }
            drop(pkts);
            q.drain(..done);
        }
        // Probes ended by a send error are not woken by anything the select below waits for;
        // checks' probes so ended are handled by going round once more.
        let again = {
            let mut t = inner.lock();
            t.core.take_woken(&mut wake);
            t.core.has_settled()
        };
        drop(inner);
        // Outside the lock: a sink may take the scheduler's lock, held while checks are added.
        for r in reports.drain(..) {
            r.publish();
        }
        for w in wake.drain(..) {
            w.wake();
        }
        if again {
            continue;
        }
        let (want4, want6) = (!backlog[0].is_empty(), !backlog[1].is_empty());
        // Deadlines before replies: a steady stream of segments to the reserved ports (anyone
        // can send them) must not keep resends and timeouts from ever firing.
        let fatal = tokio::select! {
            biased;
            _ = &mut gone => return,
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                let Some(inner) = weak.upgrade() else { return };
                // Replies already queued win over their deadline.
                for f in [io.v4.as_ref(), io.v6.as_ref()].into_iter().flatten() {
                    drain(&inner, f.sock.get_ref(), &mut bufs);
                }
                inner.lock().core.handle_timeout(Instant::now());
                false
            }
            r = readable(io.v4.as_ref()) => receive(&weak, r, &mut bufs),
            r = readable(io.v6.as_ref()) => receive(&weak, r, &mut bufs),
            r = writable(io.v4.as_ref(), want4) => { if let Ok(mut g) = r { g.clear_ready() }; false }
            r = writable(io.v6.as_ref(), want6) => { if let Ok(mut g) = r { g.clear_ready() }; false }
            _ = io.kick.notified() => false,
        };
        if fatal {
            return;
        }
        let Some(inner) = weak.upgrade() else { return };
        inner.lock().core.take_woken(&mut wake);
        drop(inner);
        for w in wake.drain(..) {
            w.wake();
        }
    }
}

/// Handles a readable socket; `true` when the driver must stop (the socket failed, or every
/// user is gone).
fn receive(weak: &Weak<Inner>, ready: io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, sys::RawTcp>>, bufs: &mut sys::RecvBufs) -> bool {
    match ready {
        Ok(mut g) => {
            let Some(inner) = weak.upgrade() else { return true };
            if !drain(&inner, g.get_inner(), bufs) {
                g.clear_ready();
            }
            false
        }
        Err(e) => {
            // Only when the runtime is shutting down: waiting again would fail at once, forever.
            tracing::debug!("half-open socket: {e}");
            true
        }
    }
}

/// Reads batches until the socket is empty (then `false`) or a bounded number of batches was
/// read (then `true`: come back, other work first).
fn drain(inner: &Inner, sock: &sys::RawTcp, bufs: &mut sys::RecvBufs) -> bool {
    for _ in 0..16 {
        match sock.recv_batch(bufs) {
            Ok(0) => return false,
            Ok(_) => {
                let now = Instant::now();
                let mut t = inner.lock();
                let core = &mut t.core;
                for d in bufs.iter() {
                    match d {
                        Some((from, tcp)) => core.handle_segment(now, from, tcp),
                        None => core.counters.malformed += 1,
                    }
                }
            }
            Err(e) => {
                tracing::debug!("half-open recv: {e}");
                return false;
            }
        }
    }
    true
}

/// The source address for one target, looked up once and again after a while (routes change).
struct Source {
    cached: Mutex<Option<(IpAddr, Instant)>>,
}

/// How long a looked-up source address is used before asking the routing table again.
const SOURCE_TTL: Duration = Duration::from_secs(30);

impl Source {
    fn get(&self, now: Instant, dst: IpAddr) -> io::Result<IpAddr> {
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((a, at)) = *c {
            if now.saturating_duration_since(at) < SOURCE_TTL {
                return Ok(a);
            }
        }
        let a = sys::route_source(dst)?;
        *c = Some((a, now));
        Ok(a)
    }
}

/// One `tcp_half_open` definition, ready to run.
pub(crate) struct HalfOpenProbe {
    target: SocketAddr,
    source: Source,
}

impl HalfOpenProbe {
    /// Look the source address up again at the next attempt.
    fn forget_source(&self) {
        *self.source.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Use `src` as the source address (tests without routes).
    #[cfg(test)]
    fn set_source(&self, src: IpAddr) {
        *self.source.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((src, Instant::now()));
    }

    pub(crate) fn new(def: &TcpHalfOpenCheck) -> Result<Self, DefError> {
        let ip = def.target.ip();
        if ip.is_unspecified() || ip.is_multicast() || def.target.port() == 0 {
            return Err(DefError::invalid("target", "must be a unicast address with a port"));
        }
        if let SocketAddr::V6(a) = def.target {
            // The raw socket's replies carry no scope, and one source per family is looked up.
            if a.ip().is_unicast_link_local() || a.scope_id() != 0 {
                return Err(DefError::invalid("target", "link-local IPv6 targets are not supported by tcp_half_open (use tcp)"));
            }
        }
        Ok(HalfOpenProbe { target: def.target, source: Source { cached: Mutex::new(None) } })
    }

    pub(crate) async fn attempt(&self, timing: &Timing, prober: &Prober) -> Result<(), FailReason> {
        let start = Instant::now();
        let src = self.source.get(start, self.target.ip()).map_err(|e| FailReason::from_io(&e, Phase::Connect))?;
        match prober.probe(start, self.target, src, start + timing.connect_timeout)?.await {
            Outcome::Open(_) => Ok(()),
            Outcome::Refused => Err(FailReason::Refused),
            Outcome::TimedOut => {
                // The source the checksum was computed for may no longer be the one the kernel
                // sends from (an address or route changed): look it up again next time, so a
                // stale cache costs at most one attempt.
                self.forget_source();
                Err(FailReason::Timeout(Phase::Connect))
            }
            Outcome::SendFailed(errno) => Err(FailReason::from_io(&io::Error::from_raw_os_error(errno), Phase::Connect)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Targets the raw-socket probe cannot serve are refused when the check is defined, with
    /// the field and the reason named.
    #[test]
    fn unusable_targets_are_refused_at_definition() {
        for t in ["0.0.0.0:80", "224.0.0.1:80", "192.0.2.1:0", "[fe80::1]:80", "[fe80::1%2]:80"] {
            let def = TcpHalfOpenCheck { target: t.parse().unwrap(), timing: Timing::default() };
            let e = HalfOpenProbe::new(&def).err().unwrap_or_else(|| panic!("{t} accepted"));
            assert!(e.to_string().contains("target"), "{t}: {e}");
        }
        let ok = TcpHalfOpenCheck { target: "[2001:db8::1]:80".parse().unwrap(), timing: Timing::default() };
        assert!(HalfOpenProbe::new(&ok).is_ok());
    }

    /// When the prober and its probes are gone, the driver ends and drops the sockets (and the
    /// reserved ports with them), even with no deadline armed and no packet arriving.
    #[tokio::test]
    async fn the_driver_ends_and_releases_its_sockets_with_the_last_user() {
        if sys::tests::raw_or_skip(false).is_none() {
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let prober = Prober::default();
        let now = Instant::now();
        let wait = prober.probe(now, target, target.ip(), now + Duration::from_secs(2)).unwrap();
        assert!(matches!(wait.await, Outcome::Open(_)), "a listening port answers");
        let io = Arc::downgrade(&prober.inner.get().unwrap().as_ref().unwrap().io);
        drop(prober);
        for _ in 0..100 {
            if io.upgrade().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the driver still holds the raw sockets 1 s after the last user went away");
    }
}
