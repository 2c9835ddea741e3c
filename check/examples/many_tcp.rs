//! Load figure for the scheduler: N TCP checks at a 1 s interval against loopback listeners,
//! for D seconds; prints checks/s and the CPU and memory this process used (getrusage).
//!
//! ```text
//! cargo run --release -p check --example many_tcp -- 10000 20
//! ```
//!
//! The listeners live in a child process (this program re-run with `--serve`), so the CPU
//! figure is the checker's alone, not the accept loops'. Every check needs its own target or the
//! scheduler would deduplicate them: the child listens on P wildcard ports bound to device `lo`
//! (SO_BINDTODEVICE, so nothing is exposed on other interfaces), which answers on every
//! 127.0.0.0/8 address, and check i targets 127.0.0.1 + i/P on port i%P. Needs root or
//! CAP_NET_RAW for SO_BINDTODEVICE. The open-files limit is raised to its hard maximum.
//!
//! `--netns NS` (third argument on): the listeners run in network namespace NS instead (`ip netns
//! exec`, not bound to a device) and check i targets 198.51.100.1 + i/P, which NS must route to
//! itself (the `veth`/`veth-napi` setups of `cargo xtask bench checks` build such a namespace).
//! The checker runs on a current-thread runtime, as in corrald.
//!
//! `--half-open` (after the other arguments): the checks are `tcp_half_open` instead of `tcp`.
//!
//! `--half-open-anchor` (after the other arguments): no scheduler; instead the bare kernel cost of
//! a half-open probe, the anchor for the `tcp_half_open` check: N targets probed at 10,000 a
//! second for SECS seconds by a plain loop on this thread — every 10 ms one `sendmmsg` of the
//! step's SYNs from the raw socket the check uses (same BPF filter, reserved ports), then
//! `recvmmsg` until the step's SYN-ACKs are in or the next step is due. Prints the thread's CPU
//! per probe and as % of one core, and how many probes were answered.
//!
//! `--ports P,P,...` (with either mode): the backends already run (`cargo xtask bench checks`
//! starts them); use these 64 ports instead of starting the listener process.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use check::def::{TcpCheck, TcpHalfOpenCheck, Timing};
use check::halfopen::{sys, wire};
use check::{CheckDef, ReasonKind, Scheduler};

const PORTS: usize = 64;

fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
        lim.rlim_cur
    }
}

struct Usage {
    cpu: Duration,
    max_rss_kib: i64,
}

fn usage() -> Usage {
    // SAFETY: getrusage fills the struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Usage { cpu: tv(ru.ru_utime) + tv(ru.ru_stime), max_rss_kib: ru.ru_maxrss }
}

/// Child mode: P listeners on 0.0.0.0:0 bound to `dev` (default `lo`; `-` for none, only
/// inside a network namespace of its own), ports printed on stdout, accept forever.
fn serve(ports: usize, dev: &str) {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let mut out = Vec::new();
        for _ in 0..ports {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            if dev != "-" {
                if let Err(e) = s.bind_device(Some(dev.as_bytes())) {
                    eprintln!("SO_BINDTODEVICE {dev} failed ({e}): run as root or with CAP_NET_RAW");
                    std::process::exit(2);
                }
            }
            s.set_reuse_address(true).unwrap();
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into()).unwrap();
            s.listen(4096).unwrap();
            s.set_nonblocking(true).unwrap();
            let l = tokio::net::TcpListener::from_std(s.into()).unwrap();
            out.push(l.local_addr().unwrap().port().to_string());
            tokio::spawn(async move {
                loop {
                    if let Ok((c, _)) = l.accept().await {
                        drop(c);
                    }
                }
            });
        }
        println!("{}", out.join(" "));
        std::future::pending::<()>().await
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        serve(args.get(2).and_then(|p| p.parse().ok()).unwrap_or(PORTS), args.get(3).map_or("lo", String::as_str));
        return;
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let nofile = raise_nofile();
    if (nofile as usize) < n + 1000 {
        eprintln!("warning: open-files limit {nofile} is low for {n} checks");
    }

    let half_open = args.iter().any(|a| a == "--half-open");
    let anchor = args.iter().any(|a| a == "--half-open-anchor");
    let given_ports: Option<Vec<u16>> = args.iter().position(|a| a == "--ports").map(|i| args.get(i + 1).expect("--ports P,P,...").split(',').map(|p| p.parse().expect("a port")).collect());
    let rest: Vec<&String> = args.iter().skip(3).filter(|a| !a.starts_with("--half-open")).take_while(|a| *a != "--ports").collect();
    let netns = match (rest.first().map(|s| s.as_str()), rest.get(1)) {
        (Some("--netns"), Some(ns)) => Some(ns.to_string()),
        (None, _) => None,
        _ => panic!("usage: many_tcp [N [SECS [--netns NS] [--half-open | --half-open-anchor]]]"),
    };
    let (child, ports) = match given_ports {
        Some(p) => (None, p),
        None => {
            let (c, p) = start_backends(netns.as_deref());
            (Some(c), p)
        }
    };

    if ports.len() != PORTS {
        panic!("need {PORTS} ports, got {}", ports.len());
    }
    let stop = |child: Option<std::process::Child>| {
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    };
    run(n, secs, netns.is_some(), half_open, anchor, &ports);
    stop(child);
}

/// The listener process (this program with `--serve`), in `netns` if given; returns it and its ports.
fn start_backends(netns: Option<&str>) -> (std::process::Child, Vec<u16>) {
    let mut cmd = match netns {
        None => {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.args(["--serve", &PORTS.to_string()]);
            c
        }
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(std::env::current_exe().unwrap()).args(["--serve", &PORTS.to_string(), "-"]);
            c
        }
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the listener process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let ports: Vec<u16> = line.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    if ports.len() != PORTS {
        let _ = child.kill();
        panic!("listener process failed: {line:?}");
    }
    (child, ports)
}

fn run(n: usize, secs: u64, netns: bool, half_open: bool, anchor: bool, ports: &[u16]) {

    let base = u32::from(if netns { Ipv4Addr::new(198, 51, 100, 1) } else { Ipv4Addr::new(127, 0, 0, 1) });
    let targets: Vec<SocketAddr> = (0..n).map(|i| SocketAddr::from((Ipv4Addr::from(base + (i / PORTS) as u32), ports[i % PORTS]))).collect();
    if anchor {
        half_open_anchor(&targets, Duration::from_secs(secs));
        return;
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (sched, mut events) = Scheduler::<usize>::new();
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let mut timing = Timing::quick(Duration::from_secs(1));
        timing.connect_timeout = Duration::from_secs(1); // as in `cargo xtask bench checks`
        let before = usage();
        let start = Instant::now();
        for (i, &target) in targets.iter().enumerate() {
            let def = if half_open {
                CheckDef::TcpHalfOpen(TcpHalfOpenCheck { target, timing: timing.clone() })
            } else {
                CheckDef::Tcp(TcpCheck { target, graceful_close: false, timing: timing.clone() })
            };
            sched.add(i, def).unwrap();
        }
        assert_eq!(sched.stats().running, n, "every check distinct");
        let mut last = (Instant::now(), 0u64);
        while start.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(Duration::from_secs(5).min(Duration::from_secs(secs).saturating_sub(start.elapsed()))).await;
            let st = sched.stats();
            let dt = last.0.elapsed().as_secs_f64();
            println!(
                "t={:>4.1}s  {:>7.0} checks/s  attempts={} failed={}",
                start.elapsed().as_secs_f64(),
                (st.attempts - last.1) as f64 / dt,
                st.attempts,
                st.attempts_failed
            );
            last = (Instant::now(), st.attempts);
        }
        let wall = start.elapsed();
        let after = usage();
        let st = sched.stats();
        let cpu = after.cpu - before.cpu;
        println!("---");
        println!("checks: {n} distinct {} checks, interval 1 s, {:.1} s wall", if half_open { "tcp_half_open" } else { "TCP" }, wall.as_secs_f64());
        println!("attempts: {} ({:.0}/s), failed: {}", st.attempts, st.attempts as f64 / wall.as_secs_f64(), st.attempts_failed);
        for k in ReasonKind::ALL {
            let f = st.failures_of(k);
            if f > 0 {
                println!("  failed {}: {f}", k.as_str());
            }
        }
        println!(
            "cpu: {:.2} s user+sys = {:.0}% of one core, {:.1} µs per check",
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / st.attempts.max(1) as f64
        );
        println!("max rss: {} MiB", after.max_rss_kib / 1024);
        drop(sched);
    });
}

fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The half-open anchor (see the module comment): 10,000 probes a second in 10 ms steps, one
/// `sendmmsg` per step, replies read with `recvmmsg`. Prints one line starting `half-open anchor:`.
fn half_open_anchor(targets: &[SocketAddr], secs: Duration) {
    const STEP: Duration = Duration::from_millis(10);
    const PER_STEP: usize = 100; // 10,000/s
    let raw = match sys::RawTcp::open(false) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let (_hold, sports) = sys::reserve_ports(false, 16).expect("reserve source ports");
    raw.attach_filter(&sports).expect("attach the BPF filter");
    let src = sys::route_source(targets[0].ip()).expect("route source");
    let mut bufs = sys::RecvBufs::new(64);
    let (mut sent, mut open, mut refused, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut segs = vec![[0u8; 24]; PER_STEP];
    let mut next = 0usize;
    let start = Instant::now();
    let cpu0 = thread_cpu();
    let mut step_at = start;
    while start.elapsed() < secs {
        // One step's SYNs; ISN = the probe's number, so a reply's ack - 1 says which it answers.
        let mut pkts = Vec::with_capacity(PER_STEP);
        for seg in segs.iter_mut() {
            let t = targets[next % targets.len()];
            let r = wire::Repr { src_port: sports[next % sports.len()], dst_port: t.port(), seq: sent as u32, ack: None, flags: wire::Flags(wire::Flags::SYN), window: 64240, mss: Some(1460) };
            r.emit(&mut wire::Packet::new_unchecked(&mut seg[..]), Some((src, t.ip())));
            pkts.push((t, &seg[..]));
            next += 1;
            sent += 1;
        }
        let mut off = 0;
        while off < pkts.len() {
            off += raw.send_batch(&pkts[off..]).expect("sendmmsg");
        }
        step_at += STEP;
        // Replies until the next step is due.
        loop {
            let n = raw.recv_batch(&mut bufs).expect("recvmmsg");
            for d in bufs.iter().take(n) {
                match d.and_then(|(_, tcp)| wire::Packet::new_checked(tcp).ok().and_then(|p| wire::Repr::parse(&p).ok())) {
                    Some(r) if r.ack.is_some_and(|a| u64::from(a.wrapping_sub(1)) < sent) => {
                        if r.flags.has(wire::Flags::RST) {
                            refused += 1
                        } else {
                            open += 1
                        }
                    }
                    _ => other += 1,
                }
            }
            if n > 0 {
                continue;
            }
            let left = step_at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut p = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&raw), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) };
        }
    }
    let cpu = thread_cpu() - cpu0;
    let wall = start.elapsed();
    println!(
        "half-open anchor: {sent} SYNs in {:.1} s ({:.0}/s), answered: {open} SYN-ACK, {refused} RST, {other} other; cpu {:.3} s = {:.1}% of one core, {:.2} µs per probe",
        wall.as_secs_f64(),
        sent as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / sent.max(1) as f64
    );
}
