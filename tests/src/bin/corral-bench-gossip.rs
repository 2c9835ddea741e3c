//! Gossip alone at scale: N SWIM members in one process, each with its own QUIC endpoint
//! (mutual TLS, its own UDP socket on 127.0.0.1), the gossip crate exactly as corrald runs it
//! with corrald's knobs — but no Raft. It measures what `bench cluster` measures for gossip
//! (a join reaching every member, a crash known by every member) at sizes where 200 whole
//! corrald processes, each also a Raft learner, do not fit on a 2-core machine.
//!
//! ```text
//! corral-bench-gossip 200
//! ```
//! Prints one Markdown row: nodes, join → all, SIGKILL-equivalent (endpoint closed, no leave)
//! → Down on all (max and median member), and the SWIM bounds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gossip::tls::ClusterCa;
use gossip::{MemberEvent, NodeId, Swim, SwimConfig, Transport, TransportConfig};

struct Member {
    swim: Option<Swim>,
    transport: Option<Transport>,
    id: NodeId,
    /// Name → first time this member saw it Up / Down.
    up: Arc<Mutex<HashMap<String, Instant>>>,
    down: Arc<Mutex<HashMap<String, Instant>>>,
}

fn config(id: NodeId, seeds: Vec<std::net::SocketAddr>) -> SwimConfig {
    // corrald's settings (node/src/cluster/mod.rs): probe 500 ms, rtt 200 ms, suspicion 3 s.
    let mut c = SwimConfig::new(id, seeds);
    c.probe_period = Duration::from_millis(500);
    c.probe_rtt = Duration::from_millis(200);
    c.suspect_to_down_after = Duration::from_secs(3);
    if let Some(t) = std::env::var("MAX_TRANSMISSIONS").ok().and_then(|v| v.parse().ok()) {
        c.max_transmissions = t;
    }
    c
}

fn start(ca: &ClusterCa, i: usize, seeds: Vec<std::net::SocketAddr>) -> Member {
    let name = format!("g{i}");
    let creds = ca.issue(&name).expect("issue certificate");
    let transport = Transport::bind(TransportConfig::new("127.0.0.1:0".parse().unwrap(), creds)).expect("bind");
    let addr = transport.local_addr().expect("local addr");
    let id = NodeId::fresh(&name, addr);
    let (swim, mut rx) = Swim::start(&transport, config(id.clone(), seeds)).expect("start swim");
    let up = Arc::new(Mutex::new(HashMap::new()));
    let down = Arc::new(Mutex::new(HashMap::new()));
    let (u, d) = (up.clone(), down.clone());
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let now = Instant::now();
            match ev {
                MemberEvent::Up(id) => {
                    u.lock().unwrap().entry(id.name).or_insert(now);
                }
                MemberEvent::Down(id) => {
                    d.lock().unwrap().entry(id.name).or_insert(now);
                }
                _ => {}
            }
        }
    });
    Member { swim: Some(swim), transport: Some(transport), id, up, down }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn run(n: usize) -> Result<String, String> {
    let ca = ClusterCa::generate("bench-gossip").map_err(|e| e.to_string())?;
    let mut members: Vec<Member> = Vec::new();
    let mut seed = None;
    for i in 0..n - 1 {
        let m = start(&ca, i, seed.into_iter().collect());
        seed.get_or_insert(m.id.addr);
        members.push(m);
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Settle: every member sees all the others alive.
    let settle = Instant::now();
    loop {
        let mut done = 0;
        for m in &members {
            let alive = m.swim.as_ref().unwrap().members().await.map_err(|e| e.to_string())?;
            if alive.iter().filter(|i| i.state == gossip::MemberState::Alive).count() >= n - 2 {
                done += 1;
            }
        }
        if done == members.len() {
            break;
        }
        if settle.elapsed() > Duration::from_secs(120 + n as u64) {
            return Err(format!("{n}: only {done} of {} members saw everyone after {:?}", members.len(), settle.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{} members settled in {:?}", n - 1, settle.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Join: the n-th member announces itself to the seed.
    let t_join = Instant::now();
    let newcomer = start(&ca, n - 1, vec![members[0].id.addr]);
    let name = newcomer.id.name.clone();
    members.push(newcomer);
    let join_all = loop {
        let seen: Vec<Option<Instant>> = members[..n - 1].iter().map(|m| m.up.lock().unwrap().get(&name).copied()).collect();
        if seen.iter().all(Option::is_some) {
            break seen.iter().flatten().max().unwrap().duration_since(t_join);
        }
        if t_join.elapsed() > Duration::from_secs(60) {
            return Err(format!("{n}: join reached {} of {}", seen.iter().flatten().count(), n - 1));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Crash: a member's driver and endpoint stop without a word (what SIGKILL looks like).
    let victim = n / 2;
    let vname = members[victim].id.name.clone();
    // Only Down events after the crash count (a loaded machine may have flapped it before).
    for m in &members {
        m.down.lock().unwrap().remove(&vname);
    }
    let t_kill = Instant::now();
    if let Some(s) = members[victim].swim.take() {
        s.abort();
    }
    // The endpoint goes away without closing its connections, as with SIGKILL.
    drop(members[victim].transport.take());
    let bound = config(members[0].id.clone(), vec![]).detection_bound(n);
    let (fail_all, fail_median) = loop {
        let seen: Vec<Option<Instant>> =
            members.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, m)| m.down.lock().unwrap().get(&vname).copied()).collect();
        if seen.iter().all(Option::is_some) {
            let v: Vec<Duration> = seen.iter().flatten().map(|t| t.duration_since(t_kill)).collect();
            break (*v.iter().max().unwrap(), median(v));
        }
        if t_kill.elapsed() > bound + Duration::from_secs(30) {
            return Err(format!("{n}: crash known by {} of {}", seen.iter().flatten().count(), n - 1));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rounds = (n as f64).ln() / 3f64.ln();
    let dissem = 200.0 * rounds.ceil();
    let typical = 500.0 * 1.5 + 3000.0 + dissem;
    Ok(format!(
        "| {n} (in-process, gossip only) | {:.0} ms | {dissem:.0} ms | {:.0} ms (median member {:.0} ms) | {typical:.0} ms | {:.0} ms |",
        join_all.as_secs_f64() * 1000.0,
        fail_all.as_secs_f64() * 1000.0,
        fail_median.as_secs_f64() * 1000.0,
        bound.as_secs_f64() * 1000.0
    ))
}

fn main() -> std::process::ExitCode {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    if n < 3 {
        eprintln!("corral-bench-gossip: need at least 3 nodes");
        return std::process::ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(n)) {
        Ok(row) => {
            println!("{row}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("| {n} (in-process, gossip only) | failed: {e} | | | | |");
            std::process::ExitCode::FAILURE
        }
    }
}
