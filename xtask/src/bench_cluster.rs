//! `cargo xtask bench cluster`: corrald processes on loopback (127.0.0.1, one UDP port each).
//!
//! 1. Gossip at scale (10, 50, 200 nodes): the time for a join to reach every member and for a
//!    SIGKILL to be known on every member, taken from each node's own log line ("gossip
//!    member=X … state=alive|dead", microsecond timestamps), compared with the SWIM bounds for
//!    the configured knobs (probe 500 ms, suspicion 3 s, gossip rounds 200 ms, fan-out 3).
//! 2. Raft writes with 3 and 5 voters: latency p50/p99 of sequential writes sent to the leader's
//!    admin socket, and throughput with 16 concurrent writers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use node::api::{call, Request, ResponseBody};

const PROBE: Duration = Duration::from_millis(500);
const SUSPECT: Duration = Duration::from_secs(3);
const GOSSIP_ROUND: Duration = Duration::from_millis(200);

pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) child: Option<Child>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) struct Bench {
    corrald: PathBuf,
    root: PathBuf,
    pub(crate) nodes: Vec<Proc>,
    base_port: u16,
    extra: String,
    /// `RUST_LOG` of every node (`CORRAL_BENCH_RUST_LOG` overrides the default).
    pub(crate) log_filter: String,
    /// Keep the nodes' directories (logs) after the run (also with `CORRAL_BENCH_KEEP` set).
    pub(crate) keep: bool,
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.nodes.clear();
        if self.keep {
            eprintln!("bench: logs kept in {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl Bench {
    pub(crate) fn new(corrald: &Path, tag: &str, base_port: u16, extra: &str) -> Result<Bench> {
        Bench::new_in(&std::env::temp_dir(), corrald, tag, base_port, extra)
    }

    /// As [`Bench::new`], with the nodes' directories (data, logs) under `base`.
    pub(crate) fn new_in(base: &Path, corrald: &Path, tag: &str, base_port: u16, extra: &str) -> Result<Bench> {
        let root = base.join(format!("corral-bench-cluster-{tag}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        Ok(Bench {
            corrald: corrald.into(),
            root,
            nodes: Vec::new(),
            base_port,
            extra: extra.into(),
            log_filter: std::env::var("CORRAL_BENCH_RUST_LOG").unwrap_or_else(|_| "info,openraft=off".into()),
            keep: std::env::var_os("CORRAL_BENCH_KEEP").is_some(),
        })
    }

    pub(crate) fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.base_port + i as u16)
    }

    pub(crate) fn socket(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("admin.sock")
    }

    /// Starts node `i` (creating it when new); the first node creates the cluster.
    pub(crate) fn start(&mut self, i: usize, token: Option<&str>) -> Result<()> {
        if i == self.nodes.len() {
            let dir = self.root.join(format!("n{i}"));
            std::fs::create_dir_all(&dir)?;
            self.nodes.push(Proc { name: format!("n{i}"), dir, child: None });
        }
        let dir = self.nodes[i].dir.clone();
        let join = if i == 0 { String::new() } else { format!("\"{}\"", self.addr(0)) };
        let token = token.map(|t| format!("token = \"{t}\"\n")).unwrap_or_default();
        let cfg = format!(
            "[node]\nname = \"n{i}\"\nbind = \"{}\"\ndata_dir = \"{}\"\nadmin_socket = \"{}\"\n\n[cluster]\njoin = [{join}]\n{token}{}",
            self.addr(i),
            dir.join("data").display(),
            dir.join("admin.sock").display(),
            self.extra
        );
        std::fs::write(dir.join("corrald.toml"), cfg)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("corrald.log"))?;
        let child = Command::new(&self.corrald)
            .arg("--config")
            .arg(dir.join("corrald.toml"))
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start corrald")?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn wait_socket(&self, i: usize, within: Duration) -> Result<()> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if call(&self.socket(i), &Request::RaftStatus, Duration::from_secs(2)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("node {i} did not answer within {within:?}")
    }

    pub(crate) fn token(&self) -> Result<String> {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            match call(&self.socket(0), &Request::TokenCreate { ttl: Some("1h".into()), description: "bench".into() }, Duration::from_secs(10)) {
                Ok(ResponseBody::TokenCreated { token, .. }) => return Ok(token),
                _ if Instant::now() < end => std::thread::sleep(Duration::from_millis(100)),
                other => bail!("token create: {other:?}"),
            }
        }
    }

    pub(crate) fn alive_count(&self, i: usize) -> usize {
        match call(&self.socket(i), &Request::Members, Duration::from_secs(5)) {
            Ok(ResponseBody::Members { members }) => members.iter().filter(|m| m.state == "alive").count(),
            _ => 0,
        }
    }

    /// Wall-clock times (µs since the epoch) at which each running node logged `member` in `state`
    /// at or after `since_us`; None for nodes that did not.
    fn learned(&self, member: &str, state: &str, since_us: u128) -> Vec<Option<u128>> {
        let needle_m = format!("member={member} ");
        let needle_s = format!("state=\"{state}\"");
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && n.name != member)
            .map(|n| {
                let text = std::fs::read_to_string(n.dir.join("corrald.log")).unwrap_or_default();
                text.lines()
                    .filter(|l| l.contains(&needle_m) && l.contains(&needle_s))
                    .filter_map(|l| parse_ts(l.split_whitespace().next()?))
                    .find(|t| *t >= since_us)
            })
            .collect()
    }
}

use tests::cluster::now_us;

use tests::cluster::parse_ts;

fn ms(us: u128) -> f64 {
    us as f64 / 1000.0
}

/// One gossip-scale run: returns (join ms to all, failure ms to all, bound strings).
fn gossip_run(corrald: &Path, n: usize) -> Result<String> {
    // Every member is a Raft learner; above 50 nodes on two cores a 200 ms heartbeat to each
    // of them is most of the load, so the big run uses 1 s (gossip knobs unchanged).
    let hb = if n > 50 { "1s" } else { "200ms" };
    let mut b = Bench::new(corrald, &format!("gossip{n}"), 21000, &format!("heartbeat = \"{hb}\"\n"))?;
    b.start(0, None)?;
    b.wait_socket(0, Duration::from_secs(20))?;
    let token = b.token()?;
    // All but the last node, in waves so the seed is not flooded with handshakes at once.
    for i in 1..n - 1 {
        b.start(i, Some(&token))?;
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let settle = Instant::now();
    while b.alive_count(0) < n - 1 {
        if settle.elapsed() > Duration::from_secs(60 + n as u64) {
            bail!("{n}: only {} of {} members alive on n0 after {:?}", b.alive_count(0), n - 1, settle.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let gossip settle everywhere before measuring.
    std::thread::sleep(Duration::from_secs(3));
    let last = n - 1;
    let t_join = now_us();
    b.start(last, Some(&token))?;
    let end = Instant::now() + Duration::from_secs(30 + n as u64 / 2);
    let join_all = loop {
        let seen = b.learned(&format!("n{last}"), "alive", t_join);
        if seen.iter().all(|s| s.is_some()) {
            break seen.iter().flatten().max().copied().unwrap_or(t_join) - t_join;
        }
        if Instant::now() > end {
            bail!("{n}: join of n{last} reached {} of {} members", seen.iter().flatten().count(), seen.len());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(3));
    let victim = n / 2;
    let t_kill = now_us();
    b.kill(victim);
    let bound = PROBE * (n as u32 - 1) + PROBE + SUSPECT + GOSSIP_ROUND * 3;
    let end = Instant::now() + bound + Duration::from_secs(20);
    let (fail_all, fail_median) = loop {
        let seen = b.learned(&format!("n{victim}"), "dead", t_kill);
        if seen.iter().all(|s| s.is_some()) {
            let mut v: Vec<u128> = seen.iter().flatten().map(|t| t - t_kill).collect();
            v.sort();
            break (*v.last().unwrap_or(&0), v[v.len() / 2]);
        }
        if Instant::now() > end {
            bail!("{n}: death of n{victim} reached {} of {} members", seen.iter().flatten().count(), seen.len());
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let rounds = (n as f64).ln() / 3f64.ln();
    let dissem = GOSSIP_ROUND.as_secs_f64() * 1000.0 * rounds.ceil();
    let typical = (PROBE.as_secs_f64() * 1.5 + SUSPECT.as_secs_f64()) * 1000.0 + dissem;
    Ok(format!(
        "| {n} | {:.0} ms | {dissem:.0} ms | {:.0} ms (median member {:.0} ms) | {typical:.0} ms | {:.0} ms |",
        ms(join_all),
        ms(fail_all),
        ms(fail_median),
        bound.as_secs_f64() * 1000.0
    ))
}

fn raft_run(corrald: &Path, voters: usize, writes: usize) -> Result<String> {
    let mut b = Bench::new(corrald, &format!("raft{voters}"), 22000 + voters as u16 * 10, &format!("voters = {voters}\n"))?;
    b.start(0, None)?;
    b.wait_socket(0, Duration::from_secs(20))?;
    let token = b.token()?;
    for i in 1..voters {
        b.start(i, Some(&token))?;
    }
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ResponseBody::RaftStatus(s)) = call(&b.socket(0), &Request::RaftStatus, Duration::from_secs(5)) {
            if s.voters.len() == voters && s.lag.values().all(|l| *l == 0) {
                break;
            }
        }
        if Instant::now() > end {
            bail!("{voters} voters not formed in 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let leader = 0; // the creator leads until it fails
    let sock = b.socket(leader);
    let mut lat = Vec::with_capacity(writes);
    for k in 0..writes {
        let t = Instant::now();
        call(&sock, &Request::KvPut { key: format!("k{k}"), value: "v".into() }, Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!("write {k}: {e}"))?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    // Throughput: 16 writers for 5 s.
    let stop = Instant::now() + Duration::from_secs(5);
    let handles: Vec<_> = (0..16)
        .map(|w| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < stop {
                    if call(&sock, &Request::KvPut { key: format!("t{w}-{n}"), value: "v".into() }, Duration::from_secs(10)).is_ok() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    Ok(format!("| {voters} | {writes} | {:.2} ms | {:.2} ms | {:.0} writes/s |", p(0.5), p(0.99), total as f64 / 5.0))
}

/// Runs both parts and prints Markdown rows for docs/BENCHMARKS.md.
pub fn run(corrald: &Path, bench_gossip: &Path, sizes: &[usize]) -> Result<()> {
    // 200 processes (inherited limit) and many admin-socket connections from here.
    let lim = libc::rlimit { rlim_cur: 65536, rlim_max: 65536 };
    // SAFETY: setrlimit with a valid pointer to an initialized struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    println!("## gossip: join and failure dissemination (loopback processes)");
    println!("| nodes | join → all members | dissemination ⌈log3 N⌉×200 ms | SIGKILL → dead on all | typical 1.5 probe + suspicion + dissemination | worst-case bound |");
    println!("|---|---|---|---|---|---|");
    for &n in sizes {
        match gossip_run(corrald, n) {
            Ok(row) => println!("{row}"),
            Err(e) => println!("| {n} | failed: {e:#} | | | | |"),
        }
    }
    println!();
    println!("## gossip alone: the same knobs, N members in one process (own QUIC endpoint each), no Raft");
    println!("| nodes | join → all members | dissemination ⌈log3 N⌉×200 ms | crash → dead on all | typical 1.5 probe + suspicion + dissemination | worst-case bound |");
    println!("|---|---|---|---|---|---|");
    for &n in sizes {
        let out = Command::new(bench_gossip).arg(n.to_string()).stderr(Stdio::inherit()).output().context("run corral-bench-gossip")?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    println!();
    println!("## raft: writes to the leader (KvPut over the admin socket, durable redb commit)");
    println!("| voters | sequential writes | p50 | p99 | throughput (16 writers) |");
    println!("|---|---|---|---|---|");
    for voters in [3, 5] {
        println!("{}", raft_run(corrald, voters, 500)?);
    }
    Ok(())
}

/// Propagation at scale on loopback: `n` corrald processes whose directors use the in-memory
/// IPVS model (named as such: the VM holds only a few kernels), one weight change at a time to
/// the leader, time until every node logged it applied.
pub fn propagation_scale(corrald: &Path, n: usize, changes: usize, stages: bool) -> Result<String> {
    // Data directories in memory (tmpfs), as the VM's directors have them. On this host's disk
    // a log append's durable commit took 3 ms (p50; fdatasync) and runs showed single changes
    // stalled for 40–700 ms, none on tmpfs: that measured the disk, not propagation.
    // `CORRAL_BENCH_DIR` picks another place (a real disk, to measure with it).
    let base = std::env::var_os("CORRAL_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() }
    });
    let mut b = Bench::new_in(&base, corrald, &format!("prop{n}"), 23000 + n as u16 * 3, "heartbeat = \"200ms\"\n\n[director]\nipvs = \"memory\"\nreconcile_interval = \"5s\"\n")?;
    if stages {
        b.log_filter = tests::cluster::STAGE_LOG_FILTER.into();
        b.keep = true;
    }
    b.start(0, None)?;
    b.wait_socket(0, Duration::from_secs(20))?;
    let token = b.token()?;
    for i in 1..n {
        b.start(i, Some(&token))?;
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let end = Instant::now() + Duration::from_secs(60 + n as u64);
    while b.alive_count(0) < n {
        if Instant::now() > end {
            bail!("{n}: only {} alive", b.alive_count(0));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every node must be in Raft (voters or learners) and caught up before measuring.
    let end = Instant::now() + Duration::from_secs(60 + n as u64);
    loop {
        if let Ok(ResponseBody::RaftStatus(s)) = call(&b.socket(0), &Request::RaftStatus, Duration::from_secs(5)) {
            if s.voters.len() + s.learners.len() == n && s.lag.values().all(|l| *l < 5) {
                break;
            }
        }
        if Instant::now() > end {
            bail!("{n}: Raft membership did not reach {n} nodes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rules = node::rules::RuleSet::parse(
        Path::new("bench.toml"),
        "[[virtual_server]]\naddress = \"192.0.2.100:80\"\nscheduler = \"wrr\"\n[[virtual_server.real_server]]\naddress = \"198.51.100.11:80\"\n",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    call(&b.socket(0), &Request::Apply { rules, dry_run: false }, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(2));
    // The first changes run code paths for the first time in every process (page faults,
    // cold caches): WARMUP of them go first, unmeasured, their latencies shown in the row.
    const WARMUP: usize = 5;
    let mut sent = Vec::new();
    for k in 0..WARMUP + changes {
        let edit = node::rules::Edit::RsWeight {
            service: "192.0.2.100:80".into(),
            address: "198.51.100.11:80".parse()?,
            weight: 2 + (k % 50) as i32,
        };
        let t = now_us();
        match call(&b.socket(0), &Request::Edit { edit }, Duration::from_secs(10))? {
            ResponseBody::Applied { revision: Some(r), .. } => sent.push((r, t)),
            other => bail!("change {k}: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    let logs: Vec<_> = b
        .nodes
        .iter()
        .map(|p| tests::cluster::applied_times(&std::fs::read_to_string(p.dir.join("corrald.log")).unwrap_or_default()))
        .collect();
    let warm = tests::cluster::latencies_ms_text(&sent[..WARMUP], &logs);
    let (lat, _) = tests::cluster::propagation_latencies(&sent[WARMUP..], &logs);
    if lat.is_empty() {
        bail!("{n}: no change was seen applied on every node");
    }
    let p = |q: f64| ms(lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)]);
    Ok(format!(
        "| {n} (loopback, in-memory IPVS model) | {} of {changes} | {:.1} ms | {:.1} ms | {:.1} ms | {} ms |",
        lat.len(),
        p(0.5),
        p(0.99),
        ms(*lat.last().unwrap()),
        warm.join(", ")
    ))
}
