//! `cargo xtask bench checks`: N real servers (default 10 000) with a TCP check every 1 s,
//! checked by corrald on loopback — first one node alone, then the same rules on 3 nodes with
//! k = 3 observers (each node checks every real server and the leader folds the reports).
//! Figures per node: CPU (user + system from /proc/PID/stat) and resident memory over a
//! window after warm-up, and the check rounds actually run (from `corralctl metrics`), so a
//! low CPU figure cannot come from checks that did not happen.
//!
//! The backends are the `check` crate's `many_tcp --serve` child: 64 wildcard listeners bound
//! to `lo` that accept and close; real server i is 127.0.0.(1 + i/64) on listener i%64, so
//! every real server is a distinct check (identical checks would be deduplicated).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use node::api::{call, Request, ResponseBody};

use crate::bench_cluster::Bench;

const PORTS: usize = 64;

struct Backends(Child);

impl Drop for Backends {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn backends(many_tcp: &Path) -> Result<(Backends, Vec<u16>)> {
    let mut child = Command::new(many_tcp)
        .args(["--serve", &PORTS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the loopback listeners (many_tcp --serve)")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("listener stdout")?).read_line(&mut line)?;
    let ports: Vec<u16> = line.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    if ports.len() != PORTS {
        bail!("listeners printed {line:?}");
    }
    Ok((Backends(child), ports))
}

/// 100 real servers per virtual server; the check is on each virtual server.
fn rules(n: usize, ports: &[u16]) -> Result<node::rules::RuleSet> {
    let mut text = String::from("[health]\nobservers = 3\n");
    for v in 0..n.div_ceil(100) {
        text += &format!(
            "\n[[virtual_server]]\naddress = \"192.0.2.{}:{}\"\nscheduler = \"rr\"\ncheck = {{ type = \"tcp\", interval = \"1s\", connect_timeout = \"1s\", retries = 0 }}\n",
            1 + v / 200,
            1000 + v % 200
        );
        for i in v * 100..((v + 1) * 100).min(n) {
            text += &format!("[[virtual_server.real_server]]\naddress = \"127.0.0.{}:{}\"\n", 1 + i / PORTS, ports[i % PORTS]);
        }
    }
    node::rules::RuleSet::parse(Path::new("bench-checks.toml"), &text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

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
fn floor_us(ports: &[u16], n: usize) -> Result<f64> {
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
        let a = std::net::SocketAddr::from((std::net::Ipv4Addr::new(127, 0, 0, 1 + (i / PORTS % 150) as u8), ports[i % PORTS]));
        let s = std::net::TcpStream::connect(a).with_context(|| format!("floor connect {a}"))?;
        let l = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt on an open socket with a valid linger struct.
        unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &l as *const _ as *const libc::c_void, std::mem::size_of::<libc::linger>() as u32) };
        drop(s);
    }
    Ok((thread_cpu() - c0) / n as f64 * 1e6)
}

fn run_nodes(corrald: &Path, many_tcp: &Path, nodes: usize, n: usize, window: Duration, anchor_pct: f64) -> Result<Vec<String>> {
    let (_backends, ports) = backends(many_tcp)?;
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

    let rules = rules(n, &ports)?;
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
    let s0: Vec<Sample> = (0..nodes).map(|i| sample(&b, i)).collect::<Result<_>>()?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let s1: Vec<Sample> = (0..nodes).map(|i| sample(&b, i)).collect::<Result<_>>()?;
    let secs = t0.elapsed().as_secs_f64();
    let leader = (0..nodes).find(|i| matches!(call(&b.socket(*i), &Request::RaftStatus, Duration::from_secs(5)), Ok(ResponseBody::RaftStatus(s)) if s.role == "leader"));
    let mut rows = Vec::new();
    for i in 0..nodes {
        let pid = b.nodes[i].child.as_ref().context("node")?.id();
        let cpu = (s1[i].cpu - s0[i].cpu) / secs * 100.0;
        rows.push(format!(
            "| {nodes} node(s), k = 3 | {}{} | {:.0} | {:.1} % | {:.2} | {:.1} % | {:.0} MiB | {} |",
            b.nodes[i].name,
            if leader == Some(i) { " (leader)" } else { "" },
            (s1[i].rounds - s0[i].rounds) / secs,
            cpu,
            cpu / anchor_pct,
            idle[i] / 10.0 * 100.0,
            rss_mib(pid)?,
            s1[i].failed - s0[i].failed,
        ));
    }
    Ok(rows)
}

/// Runs both configurations and prints a Markdown table.
pub fn run(corrald: &Path, many_tcp: &Path, n: usize, window: Duration) -> Result<()> {
    println!("checks: {n} real servers, TCP check every 1 s, {:?} window (after 5 s warm-up)", window);
    let floor = {
        let (_b, ports) = backends(many_tcp)?;
        floor_us(&ports, 50_000)?
    };
    println!(
        "anchor (same run, same listeners): a blocking connect + reset loop costs {floor:.1} µs of CPU per check = {:.1} % of one core at {n} checks/s",
        floor * n as f64 / 1e4
    );
    println!("| setup | node | check rounds/s | CPU (% of one core) | × anchor | idle CPU before the rules | RSS | failed rounds |");
    println!("|---|---|---|---|---|---|---|---|");
    for nodes in [1, 3] {
        for row in run_nodes(corrald, many_tcp, nodes, n, window, floor * n as f64 / 1e4)? {
            println!("{row}");
        }
    }
    Ok(())
}
