//! `cargo xtask bench vrrp`: corrald and keepalived side by side in one run, same topology
//! (two routers and an observer in network namespaces on a bridge, on this host).
//!
//! 1. Failover: SIGKILL the master, then time until the backup's first gratuitous ARP is seen by
//!    tcpdump on the observer, at advert intervals 10 ms, 50 ms and 1 s; compared with the RFC
//!    bound 3 x interval + Skew_Time for the backup's priority (100).
//! 2. CPU: 256 instances at 10 ms adverts on each of two routers for 30 s; CPU seconds used by
//!    the master's and the backup's process. Run on two kinds of link: plain veth, where the
//!    whole delivery of an advert (bridge, the backup's socket, waking the backup) runs in
//!    softirq inside the master's `sendto` and is billed to the master, and veth with threaded
//!    NAPI on every receiving end, where that work runs in `napi/…` kernel threads (shown
//!    apart), as it would on another machine behind a NIC. Both implementations run on the
//!    same links in the same run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tests::{has_addr, wait_for, Daemon, Lan, Netns};

use crate::procstat::{cpu_seconds, napi_cpu};

const VIP: &str = "192.0.2.100";

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Corral,
    Keepalived,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Corral => "corrald",
            Impl::Keepalived => "keepalived",
        }
    }
}

struct Router {
    daemon: Daemon,
    vrrp_pid_file: Option<PathBuf>,
}

impl Router {
    fn daemon_exited(&self) -> bool {
        Command::new("kill").args(["-0", &self.daemon.child.id().to_string()]).status().map(|s| !s.success()).unwrap_or(true)
    }

    /// The PID doing VRRP (keepalived forks a VRRP child; corrald is one process).
    fn vrrp_pid(&self) -> Result<u32> {
        match &self.vrrp_pid_file {
            None => Ok(self.daemon.child.id()),
            Some(f) => Ok(std::fs::read_to_string(f)?.trim().parse()?),
        }
    }

    /// A crash: no release advert. keepalived's parent is stopped first so it cannot respawn.
    /// Returns the time of the SIGKILL, taken right before the system call (spawning `kill(1)`
    /// took milliseconds, during which a 10 ms master could still advertise).
    fn crash(&self) -> Result<f64> {
        let pid = self.vrrp_pid()?;
        if self.vrrp_pid_file.is_some() {
            self.daemon.signal("STOP");
        }
        let t0 = now_secs();
        if unsafe { libc_kill(pid as i32, 9) } != 0 {
            bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(t0)
    }
}

/// Instance `i` of `n`: interface, VRID and VIP. A link has 255 VRIDs, so the 256th instance
/// runs on a second link (`eth1`); single-instance runs use VRID 51 and 192.0.2.100.
fn placement(i: usize, n: usize) -> (&'static str, usize, String) {
    if n == 1 {
        ("eth0", 51, VIP.to_owned())
    } else if i < 254 {
        ("eth0", i + 1, format!("198.51.100.{}", i + 1))
    } else if i == 254 {
        ("eth0", 255, "203.0.113.1".to_owned())
    } else {
        ("eth1", i - 254, format!("203.0.113.{}", i - 54))
    }
}

fn start(which: Impl, bin: &Path, ns: &Netns, dir: &Path, tag: &str, priority: u8, interval: Duration, n: usize) -> Result<Router> {
    std::fs::create_dir_all(dir)?;
    match which {
        Impl::Corral => {
            let mut cfg = format!("[node]\nadmin_socket = \"{}/{tag}.sock\"\n", dir.display());
            for i in 0..n {
                let (ifname, vrid, vip) = placement(i, n);
                cfg.push_str(&format!(
                    "\n[[vrrp]]\nname = \"VI_{i}\"\ninterface = \"{ifname}\"\nvrid = {vrid}\npriority = {priority}\nadvert_interval = \"{}ms\"\nvirtual_ips = [\"{vip}/24\"]\ngarp_repeat = 1\n",
                    interval.as_millis(),
                ));
            }
            let file = dir.join(format!("{tag}.toml"));
            std::fs::write(&file, cfg)?;
            let mut cmd = ns.cmd(bin.to_str().unwrap());
            // The driver's debug lines say where a takeover's microseconds went (timer wake-up,
            // VIPs, first GARP); the failover loop prints the backup's.
            let log = std::fs::File::create(dir.join(format!("{tag}.log")))?;
            cmd.arg("--config").arg(&file).env("RUST_LOG", "warn,node::vrrp_driver=debug").stdout(Stdio::null()).stderr(log);
            Ok(Router { daemon: Daemon::spawn(cmd, "corrald"), vrrp_pid_file: None })
        }
        Impl::Keepalived => {
            let mut cfg = String::from("global_defs {\n    vrrp_version 3\n    vrrp_garp_master_delay 0\n    vrrp_garp_master_repeat 1\n}\n");
            for i in 0..n {
                let (ifname, vrid, vip) = placement(i, n);
                cfg.push_str(&format!(
                    "vrrp_instance VI_{i} {{\n    state BACKUP\n    interface {ifname}\n    virtual_router_id {vrid}\n    priority {priority}\n    advert_int {}\n    virtual_ipaddress {{\n        {vip}/24\n    }}\n}}\n",
                    interval.as_secs_f64(),
                ));
            }
            let file = dir.join(format!("{tag}.conf"));
            std::fs::write(&file, cfg)?;
            let vpid = dir.join(format!("{tag}.vrrp.pid"));
            let mut cmd = ns.cmd("keepalived");
            cmd.args(["-n", "-l", "-D", "-P", "-f"]).arg(&file).arg("-p").arg(dir.join(format!("{tag}.pid"))).arg("-r").arg(&vpid);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            Ok(Router { daemon: Daemon::spawn(cmd, "keepalived"), vrrp_pid_file: Some(vpid) })
        }
    }
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// One failover, as seen by the observer: (SIGKILL -> backup's first GARP, master's last
/// advert on the wire -> that GARP). The second is what the RFC bound describes: the
/// backup's Master_Down timer starts at the last advert it heard, not at the crash.
fn failover_once(which: Impl, bin: &Path, interval: Duration, dir: &Path) -> Result<(f64, f64)> {
    let lan = Lan::new(3);
    let (h1, h2, h3) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let capture = dir.join("capture.txt");
    let mut cmd = h3.cmd("tcpdump");
    cmd.args(["-i", "eth0", "-nn", "-l", "-tt", "arp or vrrp"]).stdout(std::fs::File::create(&capture)?).stderr(Stdio::null());
    let _tcpdump = Daemon::spawn(cmd, "tcpdump");
    std::thread::sleep(Duration::from_millis(300));
    let master = start(which, bin, h1, dir, "m", 200, interval, 1)?;
    wait_for(Duration::from_secs(10), || has_addr(h1, VIP)).context("master never took the VIP")?;
    let _backup = start(which, bin, h2, dir, "b", 100, interval, 1)?;
    // Let the backup start, hear adverts and settle.
    std::thread::sleep(Duration::from_millis(800) + interval * 4);
    if has_addr(h2, VIP) {
        bail!("{}: the backup holds the VIP before the failover", which.name());
    }
    let t0 = master.crash()?;
    wait_for(Duration::from_secs(10), || has_addr(h2, VIP)).context("backup never took over")?;
    std::thread::sleep(Duration::from_millis(200));
    let dump = std::fs::read_to_string(&capture)?;
    let first = dump
        .lines()
        .filter(|l| l.contains(&format!("who-has {VIP}")) && l.contains(&format!("tell {VIP}")))
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .find(|t| *t > t0)
        .context("no gratuitous ARP after the crash")?;
    let last_advert = dump
        .lines()
        .filter(|l| l.contains("192.0.2.1 > 224.0.0.18: VRRP"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        // The master's last advert on the wire: it may fall after t0 (a process does not die
        // at the instant of kill(2)), but never after the takeover.
        .filter(|t| *t < first)
        .last()
        .context("no advert from the master before the crash")?;
    if which == Impl::Corral {
        let log = std::fs::read_to_string(dir.join("b.log")).unwrap_or_default();
        match log.lines().filter(|l| l.contains("takeover timing")).last() {
            Some(l) => eprintln!("bench vrrp: corrald backup: {}", l.split_once("takeover timing").map_or(l, |x| x.1)),
            None => eprintln!("bench vrrp: corrald backup logged no takeover timing"),
        }
    }
    Ok((first - t0, first - last_advert))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The links of the CPU part (see the module comment).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Links {
    Veth,
    VethNapi,
}

impl Links {
    fn name(self) -> &'static str {
        match self {
            Links::Veth => "veth",
            Links::VethNapi => "veth-napi",
        }
    }
}

/// Parses `--cpu-links veth,veth-napi`.
pub fn parse_links(names: &[String]) -> Result<Vec<Links>> {
    names
        .iter()
        .map(|n| match n.as_str() {
            "veth" => Ok(Links::Veth),
            "veth-napi" => Ok(Links::VethNapi),
            other => bail!("--cpu-links: unknown link kind {other:?} (veth, veth-napi)"),
        })
        .collect()
}

/// Puts the receiving end `dev` (in `ns`) of a veth pair into threaded NAPI. veth hands a
/// packet to the peer's NAPI only when GRO is on there and the *sending* end has no TSO
/// (`veth_skb_is_eligible_for_gro`), so `peer` (in `peer_ns`) loses TSO.
fn threaded_napi(ns: &Netns, dev: &str, peer_ns: &Netns, peer: &str) {
    peer_ns.sh(&format!("ethtool -K {peer} tso off >/dev/null"));
    ns.sh(&format!("ethtool -K {dev} gro on >/dev/null && echo 1 > /sys/class/net/{dev}/threaded"));
}

/// The CPU part on `links`: (master CPU s, backup CPU s, NAPI threads' CPU s, VIPs on master).
fn cpu_run(which: Impl, bin: &Path, dir: &Path, n: usize, window: Duration, links: Links) -> Result<(f64, f64, f64, usize)> {
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    if n > 255 {
        tests::sh(&format!("ip link add eth1 netns {} type veth peer name eth1 netns {}", h1.name, h2.name));
        h1.sh("ip addr add 203.0.113.101/24 dev eth1 && ip link set eth1 up");
        h2.sh("ip addr add 203.0.113.102/24 dev eth1 && ip link set eth1 up");
    }
    let napi_devs = ["p1", "p2", "eth1"];
    if links == Links::VethNapi {
        threaded_napi(&lan.bridge, "p1", h1, "eth0");
        threaded_napi(&lan.bridge, "p2", h2, "eth0");
        if n > 255 {
            threaded_napi(h2, "eth1", h1, "eth1");
            threaded_napi(h1, "eth1", h2, "eth1");
        }
    }
    let master = start(which, bin, h1, dir, "m", 200, Duration::from_millis(10), n)?;
    std::thread::sleep(Duration::from_secs(2));
    let backup = start(which, bin, h2, dir, "b", 100, Duration::from_millis(10), n)?;
    std::thread::sleep(Duration::from_secs(5));
    let (mp, bp) = (master.vrrp_pid()?, backup.vrrp_pid()?);
    let (m0, b0, k0) = (cpu_seconds(mp)?, cpu_seconds(bp)?, napi_cpu(&napi_devs));
    // Printed so a profiler can be aimed at the window (e.g. `perf record -g -p PID`).
    eprintln!("bench vrrp: {} CPU window of {} s starts: master pid {mp}, backup pid {bp}", which.name(), window.as_secs());
    std::thread::sleep(window);
    let (m1, b1, k1) = (cpu_seconds(mp)?, cpu_seconds(bp)?, napi_cpu(&napi_devs));
    // Sanity: the master holds every VIP (minus its own two addresses), the backup none.
    let out = h1.try_sh("ip -o -4 addr show");
    let vips_on_master = String::from_utf8_lossy(&out.stdout).lines().count().saturating_sub(if n > 255 { 3 } else { 2 });
    let out = h2.try_sh("ip -o -4 addr show");
    let extra_on_backup = String::from_utf8_lossy(&out.stdout).lines().count().saturating_sub(if n > 255 { 3 } else { 2 });
    if master.daemon_exited() || backup.daemon_exited() || extra_on_backup != 0 {
        bail!("{}: the CPU run is not in a steady state (daemon exited, or the backup holds {extra_on_backup} VIPs)", which.name());
    }
    if links == Links::VethNapi && k1 - k0 < 0.01 {
        bail!("{}: threaded NAPI was asked for, but no napi/ thread ran: the adverts did not take the NAPI path", which.name());
    }
    Ok((m1 - m0, b1 - b0, k1 - k0, vips_on_master))
}

pub fn run(bin: &Path, repeats: usize, cpu_window: Duration, intervals: &[u64], links: &[Links]) -> Result<()> {
    if unsafe { libc_geteuid() } != 0 {
        bail!("the VRRP benchmark builds network namespaces: run it as root");
    }
    let dir = std::env::temp_dir().join(format!("corral-bench-vrrp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!("| advert interval | RFC bound (3 x interval + skew, prio 100) | kill -> GARP: corrald | kill -> GARP: keepalived | last advert -> GARP: corrald | last advert -> GARP: keepalived | corrald - bound (last advert) |");
    println!("|---|---|---|---|---|---|---|");
    for &ms in intervals {
        let interval = Duration::from_millis(ms);
        let bound = 3.0 * interval.as_secs_f64() + interval.as_secs_f64() * 156.0 / 256.0;
        let n = if ms >= 1000 { repeats.min(3) } else { repeats };
        let mut res = [Vec::new(), Vec::new()];
        let mut since_advert = [Vec::new(), Vec::new()];
        for r in 0..n {
            for (k, which) in [Impl::Corral, Impl::Keepalived].into_iter().enumerate() {
                let (t, a) = failover_once(which, bin, interval, &dir).with_context(|| format!("{} at {ms} ms, run {r}", which.name()))?;
                eprintln!("bench vrrp: {} {ms} ms run {r}: kill->GARP {:.1} ms, last advert->GARP {:.1} ms", which.name(), t * 1e3, a * 1e3);
                res[k].push(t);
                since_advert[k].push(a);
            }
        }
        let (c, k) = (median(&mut res[0]), median(&mut res[1]));
        let (ca, ka) = (median(&mut since_advert[0]), median(&mut since_advert[1]));
        println!(
            "| {ms} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:+.1} ms |",
            bound * 1e3,
            c * 1e3,
            k * 1e3,
            ca * 1e3,
            ka * 1e3,
            (ca - bound) * 1e3
        );
    }
    if cpu_window.is_zero() {
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    println!("\n| 256 instances, 10 ms adverts, {} s window | links | master CPU s | backup CPU s | NAPI threads CPU s | VIPs on master |", cpu_window.as_secs());
    println!("|---|---|---|---|---|---|");
    for &l in links {
        let (mut master, mut backup) = ([0.0; 2], [0.0; 2]);
        for (k, which) in [Impl::Corral, Impl::Keepalived].into_iter().enumerate() {
            let (m, b, napi, v) = cpu_run(which, bin, &dir, 256, cpu_window, l)?;
            (master[k], backup[k]) = (m, b);
            let napi = if l == Links::VethNapi { format!("{napi:.2}") } else { "-".to_owned() };
            println!("| {} | {} | {m:.2} | {b:.2} | {napi} | {v} |", which.name(), l.name());
        }
        println!(
            "| corrald / keepalived (master, backup; both processes: {:.2}) | {} | {:.2} | {:.2} | | |",
            (master[0] + backup[0]) / (master[1] + backup[1]),
            l.name(),
            master[0] / master[1],
            backup[0] / backup[1]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
