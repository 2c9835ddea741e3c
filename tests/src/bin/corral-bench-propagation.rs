//! `cargo xtask bench propagation`, the part that runs inside the VM (real kernel IPVS): N
//! directors in network namespaces, one rule change at a time sent to the leader's admin
//! socket, and the time until every director's reconciler has applied it to its kernel (taken
//! from each director's log line "applied rules to IPVS revision=N", µs timestamps, one clock).
//! Prints `PROPAGATION directors=N realtime=P changes=C p50_ms=.. p99_ms=.. max_ms=..`
//! (`--realtime P`: every director runs with `[node] realtime_priority = P`; 0 = off).
//! `--warmup W` (default 5) changes go first, unmeasured but printed (`PROPAGATION_WARMUP`):
//! under TCG the first run of a code path is translated first, which is the emulator's cost,
//! not the directors'. The idle window comes between them and the measured changes, so a
//! change after a quiet spell is still measured. `CORRAL_BENCH_HEARTBEAT` (default `250ms`)
//! sets the directors' Raft heartbeat. `--timeline` prints every measured change's send time
//! (µs since the epoch, the VM's clock) and latency (`TIMELINE` lines), to line slow changes up
//! with outside records (`TIMELINE_CLOCKS` pairs the realtime and monotonic clocks).
//! `--memory-ipvs`: the directors use the in-memory IPVS model, so the lab runs on a host without
//! IPVS, for native profiles of the same topology (never a kernel-IPVS figure).
//! First it measures what waking a thread on an idle CPU costs on this machine
//! (`PROPAGATION_WAKE`, see [`idle_cpu_wake_us`]): under qemu on a cloud host that cost, not
//! corrald, made the tail (docs/BENCHMARKS.md, propagation Round 19).

use std::time::Duration;

use node::api::{call, Request, ResponseBody};
use node::rules::{Edit, RuleSet};
use tests::cluster::{applied_times, binaries, now_us, LabCluster};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut directors = 3usize;
    let mut changes = 200usize;
    let mut stages = false;
    // Every change's send time and latency, for lining changes up with outside records (the
    // emulator's translation counters, the host's scheduler).
    let mut timeline = false;
    // The idle window before the changes (CPU and wake-ups at rest); longer for profiling it.
    let mut idle_secs = 2u64;
    // `[node] realtime_priority` of every director; 0 = the normal scheduler (the default).
    let mut realtime = 0u8;
    let mut warmup = 5usize;
    // The directors use the in-memory IPVS model (`[director] ipvs = "memory"`): runs on a host
    // without IPVS, for native profiles of the same lab; never a kernel-IPVS figure.
    let mut memory_ipvs = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--stages" => stages = true,
            "--timeline" => timeline = true,
            "--memory-ipvs" => memory_ipvs = true,
            "--realtime" => realtime = args.next().and_then(|v| v.parse().ok()).expect("--realtime PRIORITY (0 = off)"),
            "--idle-secs" => idle_secs = args.next().and_then(|v| v.parse().ok()).expect("--idle-secs N"),
            "--directors" => directors = args.next().and_then(|v| v.parse().ok()).expect("--directors N"),
            "--warmup" => warmup = args.next().and_then(|v| v.parse().ok()).expect("--warmup N"),
            "--changes" => changes = args.next().and_then(|v| v.parse().ok()).expect("--changes N"),
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(mut us) = idle_cpu_wake_us(1000, Duration::from_millis(1)) {
        us.sort_unstable_by(f64::total_cmp);
        let q = |f: f64| us[((us.len() as f64 * f) as usize).min(us.len() - 1)];
        println!(
            "PROPAGATION_WAKE idle-CPU wake-up (one-way, {} rounds): p50_us={:.0} p90_us={:.0} p99_us={:.0}",
            us.len(),
            q(0.5),
            q(0.9),
            q(0.99)
        );
    }
    let (d, c) = binaries("bench-propagation").expect("corrald and corralctl");
    let mut lab = LabCluster::new(&format!("prop{directors}"), directors, d, c);
    let hb = std::env::var("CORRAL_BENCH_HEARTBEAT").unwrap_or_else(|_| "250ms".into());
    lab.cluster_extra = format!("heartbeat = \"{hb}\"\ndead_grace = \"60s\"\n");
    lab.extra_sections = "[director]\nreconcile_interval = \"5s\"\n".into();
    if memory_ipvs {
        lab.extra_sections.push_str("ipvs = \"memory\"\n");
    }
    if realtime > 0 {
        lab.node_extra = format!("realtime_priority = {realtime}\n");
    }
    if stages {
        lab.env.push(("RUST_LOG".into(), tests::cluster::STAGE_LOG_FILTER.into()));
    }
    for h in lab.lan.hosts.iter().filter(|_| !memory_ipvs) {
        h.sh("ipvsadm -C");
    }
    lab.form(Duration::from_secs(120));
    tests::wait_for(Duration::from_secs(60), || {
        lab.raft(0).is_some_and(|r| r["voters"].as_array().map_or(0, |v| v.len()) == directors.min(5))
    })
    .expect("voters formed");
    let rules: RuleSet = RuleSet::parse(
        std::path::Path::new("bench.toml"),
        "[[virtual_server]]\naddress = \"192.0.2.100:80\"\nscheduler = \"wrr\"\n[[virtual_server.real_server]]\naddress = \"198.51.100.11:80\"\n[[virtual_server.real_server]]\naddress = \"198.51.100.12:80\"\n",
    )
    .unwrap();
    let leader = lab.leader().expect("leader");
    let sock = lab.nodes[leader].socket();
    call(&sock, &Request::Apply { rules, dry_run: false }, Duration::from_secs(10)).expect("apply");
    std::thread::sleep(Duration::from_secs(1));
    let change = |k: usize| -> (u64, u128) {
        let weight = 2 + (k % 50) as i32;
        let edit = Edit::RsWeight { service: "192.0.2.100:80".into(), address: "198.51.100.11:80".parse().unwrap(), weight };
        let t = now_us();
        let r = match call(&sock, &Request::Edit { edit }, Duration::from_secs(10)) {
            Ok(ResponseBody::Applied { revision: Some(rev), .. }) => (rev, t),
            other => panic!("change {k}: {other:?}"),
        };
        // Let every director apply before the next change (measures latency, not a queue).
        std::thread::sleep(Duration::from_millis(30));
        r
    };
    let warm: Vec<(u64, u128)> = (0..warmup).map(|k| change(k + 1)).collect();
    std::thread::sleep(Duration::from_secs(1));
    // CPU of the directors (every thread of every corrald): idle first, then over the changes.
    let pids: Vec<u32> = lab.nodes.iter().filter_map(|n| n.daemon.as_ref().map(|d| d.child.id())).collect();
    let (idle_cpu0, idle_sw0, idle_pk0, idle_t0) = (cpu_ms(&pids), switches(&pids), sent_packets(&pids), std::time::Instant::now());
    println!("PROPAGATION_IDLE_START {idle_secs} s");
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle_s = idle_t0.elapsed().as_secs_f64();
    let idle_ms_per_s = (cpu_ms(&pids) - idle_cpu0) / idle_s;
    let wakes = switch_rates(&idle_sw0, &switches(&pids), idle_s * pids.len().max(1) as f64, 0);
    let idle_pk = (sent_packets(&pids) - idle_pk0) as f64 / idle_s;
    println!("PROPAGATION_IDLE_WAKEUPS per daemon per second, by thread: {wakes} (packets sent, all daemons: {idle_pk:.0}/s)");
    let (loop_cpu0, loop_t0) = (cpu_ms(&pids), std::time::Instant::now());
    let (loop_sw0, loop_pk0) = (switches(&pids), sent_packets(&pids));
    let sent: Vec<(u64, u128)> = (0..changes).map(change).collect();
    let loop_ms = cpu_ms(&pids) - loop_cpu0;
    let loop_s = loop_t0.elapsed().as_secs_f64();
    // Packets and wake-ups per change, all daemons together, idle share included (the idle
    // rates above say how much of it that is).
    let wakes = switch_rates(&loop_sw0, &switches(&pids), changes as f64, 1);
    println!(
        "PROPAGATION_PER_CHANGE directors={directors} packets_sent={:.1} wakeups: {wakes}",
        sent_packets(&pids).saturating_sub(loop_pk0) as f64 / changes as f64
    );
    println!(
        "PROPAGATION_CPU directors={directors} idle_ms_per_s={idle_ms_per_s:.0} changes_ms_per_s={:.0} cpu_ms_per_change={:.1} (all daemons, idle share removed)",
        loop_ms / loop_s,
        (loop_ms - idle_ms_per_s * loop_s) / changes as f64
    );
    std::thread::sleep(Duration::from_secs(2));
    let logs: Vec<_> = (0..directors)
        .map(|i| applied_times(&std::fs::read_to_string(lab.nodes[i].log()).unwrap_or_default()))
        .collect();
    let (lat, missing) = tests::cluster::propagation_latencies(&sent, &logs);
    let warm_ms = tests::cluster::latencies_ms_text(&warm, &logs);
    println!("PROPAGATION_WARMUP directors={directors} realtime={realtime} unmeasured changes, ms: {}", warm_ms.join(" "));
    if timeline {
        // The two clocks side by side, so records kept on the monotonic clock (`perf record -k
        // mono`) line up with the send times above.
        let (r0, m, r1) = (now_us(), mono_ns() / 1000, now_us());
        println!("TIMELINE_CLOCKS realtime_us={} monotonic_us={m}", (r0 + r1) / 2);
        for (k, change) in sent.iter().enumerate() {
            let lat = tests::cluster::propagation_latency(change, &logs).map_or("missing".into(), |us| us.to_string());
            println!("TIMELINE change={k} revision={} sent_us={} latency_us={lat}", change.0, change.1);
        }
    }
    if stages {
        let texts: Vec<String> = (0..directors).map(|i| std::fs::read_to_string(lab.nodes[i].log()).unwrap_or_default()).collect();
        print_stages(&sent, &texts, leader);
        print_slowest(&sent, &logs, &texts, leader, 4);
    }
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "PROPAGATION directors={directors} realtime={realtime} changes={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} missing={missing}",
        lat.len(),
        p(0.5),
        p(0.99),
        *lat.last().unwrap() as f64 / 1000.0
    );
}

/// The monotonic clock in ns: what `perf record -k mono` stamps, and the same on every CPU.
fn mono_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// How long after a write to a pipe a thread blocked reading it on another, idle CPU returns
/// from its read, in µs, `rounds` times with `gap` between them (so the reader's CPU has gone
/// idle each time). On real hardware that is an IPI and a C-state exit, a few µs to tens; a
/// vCPU that halted under qemu sleeps on the host, and on a cloud host whose CPU then idles too
/// it took 2.3–2.9 ms at the p99 (Round 19). Every hop of a rule change that lands on an
/// idle CPU pays it, so the figure says how far the lab's tail is the machine's. `None` (no
/// line printed) on a single-CPU machine or where the threads cannot be pinned to CPUs 0 and 1.
fn idle_cpu_wake_us(rounds: usize, gap: Duration) -> Option<Vec<f64>> {
    fn pin(cpu: usize) -> bool {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read and write it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return None;
    }
    use std::io::{Read, Write};
    fn pipe() -> Option<(std::fs::File, std::fs::File)> {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors (close-on-exec: the daemons started later
        // inherit neither), each then owned by one File.
        (unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0)
            .then(|| unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) })
    }
    let (mut to_reader_rx, mut to_reader_tx) = pipe()?;
    let (mut back_rx, mut back_tx) = pipe()?;
    // Both sides on threads of their own, pinned there: the bench's main thread (and the
    // daemons it starts, which would inherit its mask) keeps the CPUs it was given.
    let reader = std::thread::spawn(move || {
        if !pin(1) {
            return;
        }
        let mut buf = [0u8; 8];
        while to_reader_rx.read_exact(&mut buf).is_ok() {
            let late = mono_ns() - i64::from_le_bytes(buf);
            if back_tx.write_all(&late.to_le_bytes()).is_err() {
                return;
            }
        }
    });
    let writer = std::thread::spawn(move || {
        let mut out = Vec::with_capacity(rounds);
        if !pin(0) {
            return out; // dropping the pipe ends the reader
        }
        for _ in 0..rounds {
            std::thread::sleep(gap);
            let mut buf = [0u8; 8];
            if to_reader_tx.write_all(&mono_ns().to_le_bytes()).is_err() || back_rx.read_exact(&mut buf).is_err() {
                break;
            }
            out.push(i64::from_le_bytes(buf) as f64 / 1000.0);
        }
        out
    });
    let out = writer.join().unwrap_or_default();
    let _ = reader.join();
    (out.len() == rounds).then_some(out)
}

/// Prints, per node (leader first) and per stage, when the stage ended after the request was
/// sent (p50 and p90 over the changes) and how long the stage itself took (p50), as
/// `STAGES ` lines holding a markdown table.
fn print_stages(sent: &[(u64, u128)], texts: &[String], leader: usize) {
    let order = [
        ("request", "admin request received (leader)"),
        ("append_fill", "append: redb txn filled+committed (in the blocking thread)"),
        ("append_commit", "append: redb commit alone"),
        ("append", "Raft log append done (redb, durable)"),
        ("rpc_send", "leader: AppendEntries with the entry sent"),
        ("rpc_recv", "follower: AppendEntries with the entry received"),
        ("rpc_handled", "follower: AppendEntries handled"),
        ("rpc_reply", "leader: AppendEntries reply received"),
        ("commit_send", "leader: AppendEntries telling the commit sent"),
        ("commit_recv", "follower: AppendEntries telling the commit received"),
        ("save_committed", "commit index saved (= learned the commit)"),
        ("apply", "state machine applied (published to the director)"),
        ("client_write", "client_write returned (leader)"),
        ("feed", "director handed the new state (on the applying task)"),
        ("wake", "director thread woke"),
        ("desired", "desired table built"),
        ("dump", "kernel table dumped"),
        ("diff", "diff done"),
        ("netlink", "netlink apply done = applied"),
    ];
    let mut nodes: Vec<usize> = (0..texts.len()).collect();
    nodes.sort_by_key(|i| *i != leader);
    let times: Vec<_> = texts.iter().map(|t| tests::cluster::stage_times(t)).collect();
    let pct = |v: &mut Vec<u128>, q: f64| -> String {
        if v.is_empty() {
            return "-".into();
        }
        v.sort();
        format!("{:.2}", v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0)
    };
    println!("STAGES");
    println!("STAGES {} directors, {} changes:", texts.len(), sent.len());
    println!("STAGES");
    let head: Vec<String> = nodes.iter().map(|i| format!("d{}{}", i + 1, if *i == leader { " (leader)" } else { "" })).collect();
    println!("STAGES | stage (ms after the request was sent: ends p50 / p90; own duration p50) | {} |", head.join(" | "));
    println!("STAGES |---|{}", "---|".repeat(nodes.len()));
    for (name, what) in order {
        let mut cells = Vec::new();
        for &i in &nodes {
            let Some(m) = times[i].get(name) else {
                cells.push("-".to_string());
                continue;
            };
            let (mut ends, mut durs) = (Vec::new(), Vec::new());
            for (k, (rev, t0)) in sent.iter().enumerate() {
                let key = if name == "request" { k as u64 } else { *rev };
                if let Some((end, took)) = m.get(&key) {
                    ends.push(end.saturating_sub(*t0));
                    durs.push(*took as u128);
                }
            }
            cells.push(format!("{} / {}; {}", pct(&mut ends, 0.5), pct(&mut ends, 0.9), pct(&mut durs, 0.5)));
        }
        println!("STAGES | {what} | {} |", cells.join(" | "));
    }
}

/// Prints the `n` slowest changes stage by stage (ms after the request was sent, per node,
/// leader first), as `SLOW ` lines: where the tail's time went.
fn print_slowest(
    sent: &[(u64, u128)],
    logs: &[std::collections::BTreeMap<u64, u128>],
    texts: &[String],
    leader: usize,
    n: usize,
) {
    let times: Vec<_> = texts.iter().map(|t| tests::cluster::stage_times(t)).collect();
    let mut by_lat: Vec<(u128, usize)> = sent
        .iter()
        .enumerate()
        .filter_map(|(k, change)| tests::cluster::propagation_latency(change, logs).map(|lat| (lat, k)))
        .collect();
    by_lat.sort();
    let mut nodes: Vec<usize> = (0..texts.len()).collect();
    nodes.sort_by_key(|i| *i != leader);
    for &(lat, k) in by_lat.iter().rev().take(n) {
        let (rev, t0) = sent[k];
        println!("SLOW change {k} revision {rev}: {:.2} ms", lat as f64 / 1000.0);
        let mut names: Vec<&String> = times.iter().flat_map(|m| m.keys()).collect();
        names.sort();
        names.dedup();
        let mut rows: Vec<(u128, String)> = Vec::new();
        for name in names {
            let mut cells = Vec::new();
            let mut first = u128::MAX;
            for &i in &nodes {
                let key = if name == "request" { k as u64 } else { rev };
                match times[i].get(name).and_then(|m| m.get(&key)) {
                    Some((end, took)) => {
                        let at = end.saturating_sub(t0);
                        first = first.min(at);
                        cells.push(format!("d{} {:.2} ({:.2})", i + 1, at as f64 / 1000.0, *took as f64 / 1000.0));
                    }
                    None => {}
                }
            }
            if !cells.is_empty() {
                rows.push((first, format!("SLOW   {name:<15} {}", cells.join("  "))));
            }
        }
        rows.sort();
        for (_, r) in rows {
            println!("{r}");
        }
    }
}

/// CPU time (user + system, every thread) of these processes so far, in ms, from /proc.
fn cpu_ms(pids: &[u32]) -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command name (which may hold spaces) close with ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        * 1000.0
        / hz
}

/// Packets sent so far from the network namespaces of these processes (every interface but
/// `lo`; each director has its own namespace), from `/proc/PID/net/dev`.
fn sent_packets(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/net/dev")).ok())
        .flat_map(|s| {
            s.lines()
                .skip(2)
                .filter_map(|l| {
                    let (name, rest) = l.split_once(':')?;
                    if name.trim() == "lo" {
                        return None;
                    }
                    // Receive has 8 fields; the 2nd transmit field is packets.
                    rest.split_whitespace().nth(9)?.parse::<u64>().ok()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// `name=rate` per thread name: the growth of [`switches`] from `before` to `after` divided by
/// `by`, with `digits` decimals.
fn switch_rates(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    by: f64,
    digits: usize,
) -> String {
    after
        .iter()
        .map(|(name, n)| format!("{name}={:.digits$}", n.saturating_sub(before.get(name).copied().unwrap_or(0)) as f64 / by))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Context switches so far (voluntary + involuntary) of every thread of these processes, summed
/// by thread name: how often each kind of thread wakes up.
fn switches(pids: &[u32]) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for p in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(t.path().join("status")) else { continue };
            let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
            let name = field("Name:").unwrap_or_default();
            let n: u64 = ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"]
                .iter()
                .filter_map(|k| field(k)?.parse::<u64>().ok())
                .sum();
            *out.entry(name).or_insert(0) += n;
        }
    }
    out
}
