//! `cargo xtask bench checks`: N real servers (default 10 000) with a TCP check every 1 s,
//! checked by corrald on loopback — first one node alone, then the same rules on 3 nodes with
//! k = 3 observers (each node checks every real server and the leader folds the reports).
//! Figures per node: CPU (user + system from /proc/PID/stat) and resident memory over a
//! window after warm-up, and the check rounds actually run (from `corralctl metrics`), so a
//! low CPU figure cannot come from checks that did not happen.
//!
//! The backends are the `check` crate's `many_tcp --serve` child: 64 wildcard listeners that
//! accept and close; real server i is on listener i%64 at address (1 + i/64) of its subnet, so
//! every real server is a distinct check (identical checks would be deduplicated). Three setups:
//! - `loopback`: listeners bound to `lo`, real servers 127.0.0.x. The kernel runs both ends'
//!   TCP work in the connecting thread's softirq and charges it to the checker.
//! - `veth`: listeners in a network namespace of their own behind a veth pair, real servers
//!   198.51.100.x (a local route in the namespace), link 203.0.113.0/30. A plain veth delivers
//!   in the sender's softirq too, so the backend's TCP work is still charged to the checker.
//! - `veth-napi`: the same with NAPI (GRO) on the namespace's end in threaded mode: the
//!   backend-side receive work runs in a `napi/…` kernel thread, as it would on another machine;
//!   its CPU is reported apart. (The checker's own SYN-ACK handling rides in that thread as well,
//!   so this setup slightly under-charges the checker; a real NIC's softirq falls on whatever task
//!   it interrupts, since the kernel here has no CONFIG_IRQ_TIME_ACCOUNTING.) The host's end gets
//!   a `pfifo_fast` qdisc, as a NIC has: a veth has none (`noqueue`), so when the backend's NAPI
//!   thread falls behind, the packets that do not fit its 256-entry ring are dropped at once
//!   instead of waiting in a queue — a lost SYN is resent only after 1 s, which is the connect
//!   timeout here. With a qdisc, veth stops the queue while the ring is full and nothing is lost.
//!
//! Two check kinds (`--kinds`, default both): `tcp` (a full connect, closed with a reset) and
//! `tcp_half_open` (a SYN; the SYN-ACK is reset by the director's kernel). Each has its anchor,
//! measured in the same run against the same listeners: for `tcp` the connect + reset loops
//! below, for `tcp_half_open` the `many_tcp --half-open-anchor` loop (10,000 raw SYNs a second
//! in 10 ms batches, one `sendmmsg` each, replies read with `recvmmsg`).
//!
//! In the veth setups the run prints the drop counters over its window (host end's tx drops,
//! qdisc drops, the backends' listen-queue drops), so failed rounds can be told apart from loss.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use node::api::{call, Request, ResponseBody};

use crate::bench_cluster::Bench;
use crate::procstat::cpu_seconds;

const PORTS: usize = 64;

/// Where the backends live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Loopback,
    Veth,
    VethNapi,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Loopback => "loopback",
            Setup::Veth => "veth",
            Setup::VethNapi => "veth-napi",
        }
    }

    /// Address of real server `i`.
    fn addr(self, i: usize) -> std::net::Ipv4Addr {
        let host = 1 + (i / PORTS % 250) as u8;
        match self {
            Setup::Loopback => std::net::Ipv4Addr::new(127, 0, 0, host),
            Setup::Veth | Setup::VethNapi => std::net::Ipv4Addr::new(198, 51, 100, host),
        }
    }
}

/// Which check the real servers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    HalfOpen,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::HalfOpen => "tcp_half_open",
        }
    }
}

/// Parses `tcp,tcp_half_open`.
pub fn parse_kinds(s: &str) -> Result<Vec<Kind>> {
    s.split(',')
        .map(|x| match x.trim() {
            "tcp" => Ok(Kind::Tcp),
            "tcp_half_open" => Ok(Kind::HalfOpen),
            other => bail!("unknown check kind {other:?} (tcp, tcp_half_open)"),
        })
        .collect()
}

/// A namespace with the backends' end of a veth pair; deleted (with the pair) on drop.
struct Netns {
    name: String,
    /// The host's end of the pair.
    host: String,
    /// The namespace's end of the pair.
    dev: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Netns {
    fn new(napi: bool) -> Result<Netns> {
        let id = std::process::id() % 10_000;
        let host = format!("ck{id}a{}", u8::from(napi));
        let ns = Netns { name: format!("corral-chk-{id}-{}", u8::from(napi)), host: host.clone(), dev: format!("ck{id}b{}", u8::from(napi)) };
        let _ = Command::new("ip").args(["link", "del", &host]).output();
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        ip(&["netns", "add", &ns.name])?;
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &ns.dev, "netns", &ns.name])?;
        ip(&["addr", "add", "203.0.113.1/30", "dev", &host])?;
        ip(&["link", "set", &host, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", "203.0.113.2/30", "dev", &ns.dev])?;
        ip(&["-n", &ns.name, "link", "set", &ns.dev, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        // Every address of 198.51.100.0/24 is local in the namespace, reached over the pair.
        ip(&["-n", &ns.name, "route", "add", "local", "198.51.100.0/24", "dev", "lo"])?;
        ip(&["route", "add", "198.51.100.0/24", "via", "203.0.113.2", "dev", &host])?;
        if napi {
            // veth hands a TCP segment to the peer's NAPI only when the sending end has no TSO
            // (veth_skb_is_eligible_for_gro); otherwise it takes the backlog path in softirq.
            let ok = Command::new("ethtool").args(["-K", &host, "tso", "off"]).status().context("ethtool (apt-get install ethtool)")?;
            if !ok.success() {
                bail!("ethtool -K {host} tso off failed");
            }
            let ok = Command::new("ip")
                .args(["netns", "exec", &ns.name, "ethtool", "-K", &ns.dev, "gro", "on"])
                .status()
                .context("ethtool (apt-get install ethtool)")?;
            if !ok.success() {
                bail!("ethtool -K {} gro on failed", ns.dev);
            }
            let ok = Command::new("ip")
                .args(["netns", "exec", &ns.name, "sh", "-c", &format!("echo 1 > /sys/class/net/{}/threaded", ns.dev)])
                .status()?;
            if !ok.success() {
                bail!("threaded NAPI on {} refused", ns.dev);
            }
            // A NIC's transmit queue, which veth lacks (see the module comment): without it ~1 % of
            // rounds failed here with 1 s connect timeouts, all SYNs dropped at the full ring.
            let out = Command::new("tc").args(["qdisc", "replace", "dev", &host, "root", "pfifo_fast"]).output().context("tc (iproute2)")?;
            if !out.status.success() {
                bail!("tc qdisc replace dev {host} root pfifo_fast: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        Ok(ns)
    }

    /// Drop counters where a check's packets can be lost: the host end's transmit drops (a full
    /// peer ring with no qdisc), the qdisc's drops and requeues (ring full, packet kept), and the
    /// backends' listen-queue drops and overflows in the namespace.
    fn drops(&self) -> [u64; 5] {
        let sys = |f: &str| std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{f}", self.host)).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        let (mut qdrop, mut requeues) = (0, 0);
        if let Ok(out) = Command::new("tc").args(["-s", "qdisc", "show", "dev", &self.host]).output() {
            let text = String::from_utf8_lossy(&out.stdout);
            // " Sent 123 bytes 4 pkt (dropped 0, overlimits 0 requeues 7)"
            if let Some(l) = text.lines().find(|l| l.trim_start().starts_with("Sent ")) {
                let num = |key: &str| l.split(key).nth(1).and_then(|r| r.trim_start().split(|c: char| !c.is_ascii_digit()).next()).and_then(|v| v.parse().ok()).unwrap_or(0);
                qdrop = num("dropped");
                requeues = num("requeues");
            }
        }
        let (mut ldrops, mut overflows) = (0, 0);
        if let Ok(out) = Command::new("ip").args(["netns", "exec", &self.name, "nstat", "-az", "TcpExtListenDrops", "TcpExtListenOverflows"]).output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                let mut f = l.split_whitespace();
                match (f.next(), f.next().and_then(|v| v.parse().ok())) {
                    (Some("TcpExtListenDrops"), Some(v)) => ldrops = v,
                    (Some("TcpExtListenOverflows"), Some(v)) => overflows = v,
                    _ => {}
                }
            }
        }
        [sys("tx_dropped"), qdrop, requeues, ldrops, overflows]
    }

    /// CPU seconds of the backend end's NAPI kernel threads (threaded mode only).
    fn napi_cpu(&self) -> f64 {
        crate::procstat::napi_cpu(&[&self.dev])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the link is synchronous (both ends go); a namespace is torn down later.
        let _ = Command::new("ip").args(["link", "del", &self.host]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

struct Backends(Child, Option<Netns>);

impl Drop for Backends {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        self.1.take();
    }
}

fn backends(many_tcp: &Path, setup: Setup) -> Result<(Backends, Vec<u16>)> {
    let ns = match setup {
        Setup::Loopback => None,
        Setup::Veth => Some(Netns::new(false)?),
        Setup::VethNapi => Some(Netns::new(true)?),
    };
    let ports = PORTS.to_string();
    let mut cmd = match &ns {
        None => {
            let mut c = Command::new(many_tcp);
            c.args(["--serve", &ports]);
            c
        }
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).arg(many_tcp).args(["--serve", &ports, "-"]);
            c
        }
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the loopback listeners (many_tcp --serve)")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("listener stdout")?).read_line(&mut line)?;
    let ports: Vec<u16> = line.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    let b = Backends(child, ns);
    if ports.len() != PORTS {
        bail!("listeners printed {line:?}");
    }
    Ok((b, ports))
}

/// 100 real servers per virtual server; the check is on each virtual server.
fn rules(n: usize, ports: &[u16], setup: Setup, kind: Kind) -> Result<node::rules::RuleSet> {
    let mut text = String::from("[health]\nobservers = 3\n");
    for v in 0..n.div_ceil(100) {
        text += &format!(
            "\n[[virtual_server]]\naddress = \"192.0.2.{}:{}\"\nscheduler = \"rr\"\ncheck = {{ type = \"{}\", interval = \"1s\", connect_timeout = \"1s\", retries = 0 }}\n",
            1 + v / 200,
            1000 + v % 200,
            kind.name()
        );
        for i in v * 100..((v + 1) * 100).min(n) {
            text += &format!("[[virtual_server.real_server]]\naddress = \"{}:{}\"\n", setup.addr(i), ports[i % PORTS]);
        }
    }
    node::rules::RuleSet::parse(Path::new("bench-checks.toml"), &text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// utime + stime of a process, in seconds.

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}

/// A counter (or gauge) from `corralctl metrics` of node `i`.
fn metric(b: &Bench, i: usize, name: &str) -> Option<f64> {
    let Ok(ResponseBody::Metrics { text }) = call(&b.socket(i), &Request::Metrics, Duration::from_secs(5)) else { return None };
    text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?.split_whitespace().nth(1)?.parse().ok()
}

/// Non-zero failure counters by reason (`connect_timeout=12 refused=3`), so failed rounds are
/// explained in the output.
fn failure_reasons(b: &Bench, i: usize) -> String {
    let Ok(ResponseBody::Metrics { text }) = call(&b.socket(i), &Request::Metrics, Duration::from_secs(5)) else { return String::new() };
    let mut out = Vec::new();
    for l in text.lines().filter(|l| l.starts_with("corral_check_failures_total{reason=\"")) {
        let reason = l.split('"').nth(1).unwrap_or("?");
        if let Some(v) = l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()).filter(|v| *v > 0.0) {
            out.push(format!("{reason}={v}"));
        }
    }
    out.join(" ")
}

fn failures(b: &Bench, i: usize) -> f64 {
    metric(b, i, "corral_check_rounds_failed_total").unwrap_or(0.0)
}

struct Sample {
    cpu: f64,
    rounds: f64,
    failed: f64,
}

fn sample(b: &Bench, i: usize) -> Result<Sample> {
    let pid = b.nodes[i].child.as_ref().context("node not running")?.id();
    Ok(Sample { cpu: cpu_seconds(pid)?, rounds: metric(b, i, "corral_check_rounds_total").unwrap_or(0.0), failed: failures(b, i) })
}

/// The anchor: the kernel's own cost of one check on loopback, measured with a plain blocking
/// loop (connect, then close with a reset) against the same listeners, no runtime, no timers.
/// Loopback charges both ends' TCP work (the listener's SYN handling, the child socket) to the
/// connecting thread, so this is the floor any checker on this machine pays per check.
fn floor_us(ports: &[u16], n: usize, setup: Setup) -> Result<f64> {
    use std::os::fd::AsRawFd;
    let thread_cpu = || {
        // SAFETY: getrusage fills the struct we pass.
        let ru = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
            ru
        };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    let c0 = thread_cpu();
    for i in 0..n {
        let a = std::net::SocketAddr::from((setup.addr(i % 9600), ports[i % PORTS]));
        let s = std::net::TcpStream::connect(a).with_context(|| format!("floor connect {a}"))?;
        let l = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt on an open socket with a valid linger struct.
        unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &l as *const _ as *const libc::c_void, std::mem::size_of::<libc::linger>() as u32) };
        drop(s);
    }
    Ok((thread_cpu() - c0) / n as f64 * 1e6)
}

struct Run<'a> {
    corrald: &'a Path,
    n: usize,
    window: Duration,
    setup: Setup,
    backends: &'a Backends,
    ports: &'a [u16],
    kind: Kind,
    anchor_pct: f64,
}

/// The half-open anchor: `many_tcp --half-open-anchor` against these backends for `secs`;
/// returns µs of CPU per probe and the answered/sent line.
fn floor_half_open_us(many_tcp: &Path, ports: &[u16], setup: Setup, n: usize, secs: u64) -> Result<(f64, String)> {
    let mut cmd = Command::new(many_tcp);
    cmd.args([n.to_string(), secs.to_string()]);
    if let Some(ns) = match setup {
        Setup::Loopback => None,
        _ => Some("backends"),
    } {
        // Only the address range matters to the anchor (198.51.100.x); the name is not used
        // with --ports.
        cmd.args(["--netns", ns]);
    }
    cmd.arg("--half-open-anchor").arg("--ports").arg(ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","));
    let out = cmd.output().context("run many_tcp --half-open-anchor")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("half-open anchor:")).with_context(|| format!("half-open anchor printed nothing: {}", String::from_utf8_lossy(&out.stderr)))?;
    let us = line.split(", ").find_map(|f| f.strip_suffix(" µs per probe")).and_then(|v| v.trim().parse().ok()).context("µs per probe")?;
    Ok((us, line.to_string()))
}

/// A second anchor closer to what an event-driven checker can do: non-blocking connects in
/// batches of 64, one `poll` for the batch, then close with a reset. It pays no sleep/wake per
/// check when the handshake is not finished inside `connect` (the veth-napi setup).
fn floor_batched_us(ports: &[u16], n: usize, setup: Setup) -> Result<f64> {
    use std::os::fd::AsRawFd;
    let c0 = thread_cpu();
    let mut i = 0;
    while i < n {
        let mut socks = Vec::with_capacity(64);
        for _ in 0..64 {
            let a = std::net::SocketAddr::from((setup.addr(i % 9600), ports[i % PORTS]));
            i += 1;
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM.nonblocking(), None)?;
            s.set_linger(Some(Duration::ZERO))?;
            match s.connect(&a.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => bail!("batched floor connect {a}: {e}"),
            }
            socks.push(s);
        }
        let mut fds: Vec<libc::pollfd> = socks.iter().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 }).collect();
        let end = Instant::now() + Duration::from_secs(2);
        loop {
            // SAFETY: a valid array of pollfds for open sockets.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            fds.retain(|p| p.revents == 0);
            if fds.is_empty() {
                break;
            }
            if Instant::now() > end {
                bail!("batched floor: {} connects did not finish", fds.len());
            }
        }
        if let Some(e) = socks.iter().find_map(|s| s.take_error().ok().flatten()) {
            bail!("batched floor: {e}");
        }
    }
    Ok((thread_cpu() - c0) / n as f64 * 1e6)
}

fn thread_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn run_nodes(r: &Run, nodes: usize) -> Result<Vec<String>> {
    let (corrald, n, window, ports) = (r.corrald, r.n, r.window, r.ports);
    let mut b = Bench::new(corrald, &format!("checks{nodes}"), 26000 + nodes as u16 * 7, "heartbeat = \"200ms\"\n")?;
    b.start(0, None)?;
    b.wait_socket(0, Duration::from_secs(20))?;
    if nodes > 1 {
        let token = b.token()?;
        for i in 1..nodes {
            b.start(i, Some(&token))?;
        }
        let end = Instant::now() + Duration::from_secs(60);
        while (0..nodes).any(|i| b.alive_count(i) < nodes) {
            if Instant::now() > end {
                bail!("{nodes} nodes did not see each other alive");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Idle baseline: the same processes before any check exists.
    std::thread::sleep(Duration::from_secs(3));
    let idle0: Vec<f64> = (0..nodes).map(|i| sample(&b, i).map(|s| s.cpu)).collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs(10));
    let idle: Vec<f64> = (0..nodes).map(|i| sample(&b, i).map(|s| s.cpu - idle0[i])).collect::<Result<_>>()?;

    let rules = rules(n, ports, r.setup, r.kind)?;
    match call(&b.socket(0), &Request::Apply { rules, dry_run: false }, Duration::from_secs(60))? {
        ResponseBody::Applied { revision: Some(_), .. } => {}
        other => bail!("apply: {other:?}"),
    }
    let end = Instant::now() + Duration::from_secs(60);
    while (0..nodes).any(|i| metric(&b, i, "corral_health_observing").unwrap_or(0.0) < n as f64) {
        if Instant::now() > end {
            bail!("not every node took on {n} checks: {:?}", (0..nodes).map(|i| metric(&b, i, "corral_health_observing")).collect::<Vec<_>>());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Warm-up: spread start times mean the first interval is partial.
    std::thread::sleep(Duration::from_secs(5));
    let napi0 = r.backends.1.as_ref().map(Netns::napi_cpu);
    let drops0 = r.backends.1.as_ref().map(Netns::drops);
    let s0: Vec<Sample> = (0..nodes).map(|i| sample(&b, i)).collect::<Result<_>>()?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let s1: Vec<Sample> = (0..nodes).map(|i| sample(&b, i)).collect::<Result<_>>()?;
    let secs = t0.elapsed().as_secs_f64();
    if let (Some(ns), Some(d0)) = (r.backends.1.as_ref(), drops0) {
        let d1 = ns.drops();
        let d: Vec<u64> = d1.iter().zip(d0).map(|(a, b)| a.saturating_sub(b)).collect();
        println!(
            "{} {} {nodes} node(s), over the window: host end tx dropped +{}, qdisc dropped +{} requeues +{}, backends' ListenDrops +{} ListenOverflows +{}",
            r.setup.name(),
            r.kind.name(),
            d[0],
            d[1],
            d[2],
            d[3],
            d[4]
        );
    }
    let napi = match (r.setup, napi0) {
        (Setup::VethNapi, Some(c0)) => format!("{:.1} %", (r.backends.1.as_ref().map_or(0.0, Netns::napi_cpu) - c0) / secs * 100.0),
        _ => "–".into(),
    };
    let leader = (0..nodes).find(|i| matches!(call(&b.socket(*i), &Request::RaftStatus, Duration::from_secs(5)), Ok(ResponseBody::RaftStatus(s)) if s.role == "leader"));
    let mut rows = Vec::new();
    for i in 0..nodes {
        let pid = b.nodes[i].child.as_ref().context("node")?.id();
        let cpu = (s1[i].cpu - s0[i].cpu) / secs * 100.0;
        rows.push(format!(
            "| {} | {} | {nodes} node(s), k = 3 | {}{} | {:.0} | {:.1} % | {:.2} | {napi} | {:.1} % | {:.0} MiB | {} |",
            r.setup.name(),
            r.kind.name(),
            b.nodes[i].name,
            if leader == Some(i) { " (leader)" } else { "" },
            (s1[i].rounds - s0[i].rounds) / secs,
            cpu,
            cpu / r.anchor_pct,
            idle[i] / 10.0 * 100.0,
            rss_mib(pid)?,
            s1[i].failed - s0[i].failed,
        ));
        let why = failure_reasons(&b, i);
        if !why.is_empty() {
            eprintln!("{} {} {nodes} node(s) {}: attempt failures since start: {why}", r.setup.name(), r.kind.name(), b.nodes[i].name);
        }
    }
    Ok(rows)
}

/// Runs the setups (each: anchors, then per kind one node; loopback also 3 nodes) and prints a
/// Markdown table.
pub fn run(corrald: &Path, many_tcp: &Path, n: usize, window: Duration, setups: &[Setup], kinds: &[Kind]) -> Result<()> {
    println!("checks: {n} real servers, check every 1 s ({}), {:?} window (after 5 s warm-up)", kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "), window);
    let mut rows = Vec::new();
    for &setup in setups {
        let (backends, ports) = backends(many_tcp, setup)?;
        let floor = floor_us(&ports, 50_000, setup)?;
        let batched = floor_batched_us(&ports, 50_000, setup)?;
        println!(
            "anchor, {}: a blocking connect + reset loop costs {floor:.1} µs of CPU per check = {:.1} % of one core at {n} checks/s; batched non-blocking (64 per poll): {batched:.1} µs = {:.1} %",
            setup.name(),
            floor * n as f64 / 1e4,
            batched * n as f64 / 1e4
        );
        let half = if kinds.contains(&Kind::HalfOpen) {
            let (us, line) = floor_half_open_us(many_tcp, &ports, setup, n, 10)?;
            println!("anchor, {}: {line} (= {:.1} % of one core at {n} checks/s)", setup.name(), us * n as f64 / 1e4);
            us
        } else {
            f64::NAN
        };
        for &kind in kinds {
            let anchor = if kind == Kind::Tcp { floor } else { half };
            let r = Run { corrald, n, window, setup, backends: &backends, ports: &ports, kind, anchor_pct: anchor * n as f64 / 1e4 };
            let counts: &[usize] = if setup == Setup::Loopback { &[1, 3] } else { &[1] };
            for &nodes in counts {
                rows.extend(run_nodes(&r, nodes)?);
            }
        }
    }
    println!("(× anchor: tcp against the blocking connect + reset anchor, tcp_half_open against the half-open anchor)");
    println!("| backends | kind | nodes | node | check rounds/s | CPU (% of one core) | × anchor | backend NAPI thread CPU | idle CPU before the rules | RSS | failed rounds |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

/// Parses `loopback,veth,veth-napi`.
pub fn parse_setups(s: &str) -> Result<Vec<Setup>> {
    s.split(',')
        .map(|x| match x.trim() {
            "loopback" => Ok(Setup::Loopback),
            "veth" => Ok(Setup::Veth),
            "veth-napi" => Ok(Setup::VethNapi),
            other => bail!("unknown setup {other:?} (loopback, veth, veth-napi)"),
        })
        .collect()
}
