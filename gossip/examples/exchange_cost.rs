//! CPU per request/response exchange, both ends counted, on the two request transports: Raft's
//! TCP with mutual TLS ([`TcpRequests`]) and a QUIC stream per request ([`Transport::request`],
//! which Admin uses). Two nodes in one process on one current-thread runtime (as corrald runs),
//! over 127.0.0.1, a 300-byte request (a Raft AppendEntries with one rule change is about that)
//! and a 40-byte answer. Blocks of each kind alternate so a drift of the machine hits both.
//!
//! `cargo run --release -p gossip --example exchange_cost [requests per block] [blocks]`
//! (docs/BENCHMARKS.md, propagation Round 14, has figures natively and under qemu TCG).

use std::sync::Arc;
use std::time::{Duration, Instant};

use gossip::tls::ClusterCa;
use gossip::transport::{Alpn, Peer, StreamHandler, TcpRequests, Transport, TransportConfig};

/// CPU time of the calling thread in ns (the runtime and both nodes run on it).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .expect("/proc/thread-self/schedstat")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let per_block: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let blocks: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(6);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let ca = ClusterCa::generate("bench").expect("CA");
        let cfg = |name: &str| TransportConfig::new("127.0.0.1:0".parse().unwrap(), ca.issue(name).expect("issue"));
        let answer: StreamHandler = Arc::new(|_peer: Peer, _req: Vec<u8>| Box::pin(async { Ok(vec![7u8; 40]) }));
        let (qa, qb) = (Transport::bind(cfg("a")).expect("bind"), Transport::bind(cfg("b")).expect("bind"));
        qb.register_handler(Alpn::Admin, answer.clone()).expect("handler");
        let (ta, tb) = (TcpRequests::bind(cfg("c"), Alpn::Raft).expect("bind"), TcpRequests::bind(cfg("d"), Alpn::Raft).expect("bind"));
        tb.register_handler(answer);
        let (qto, tto) = (qb.local_addr().expect("addr"), tb.local_addr());
        let body = vec![1u8; 300];
        for _ in 0..500 {
            qa.request(qto, Alpn::Admin, &body).await.expect("warm-up");
            ta.request(tto, &body).await.expect("warm-up");
        }
        let mut totals = [(0u64, Duration::ZERO); 2];
        for block in 0..blocks {
            for (i, name) in ["TCP + TLS, kept connection", "QUIC, stream per request"].into_iter().enumerate() {
                let (cpu0, t0) = (thread_cpu_ns(), Instant::now());
                for _ in 0..per_block {
                    if i == 0 {
                        ta.request(tto, &body).await.expect("request");
                    } else {
                        qa.request(qto, Alpn::Admin, &body).await.expect("request");
                    }
                }
                let (cpu, wall) = (thread_cpu_ns() - cpu0, t0.elapsed());
                totals[i].0 += cpu;
                totals[i].1 += wall;
                println!(
                    "block {block} {name}: {:.1} µs CPU, {:.1} µs wall per exchange",
                    cpu as f64 / 1e3 / per_block as f64,
                    wall.as_secs_f64() * 1e6 / per_block as f64
                );
            }
        }
        let n = (per_block * blocks) as f64;
        let (tcp, quic) = (totals[0].0 as f64 / n / 1e3, totals[1].0 as f64 / n / 1e3);
        println!("EXCHANGE_COST tcp_us={tcp:.1} quic_us={quic:.1} ratio={:.2}", tcp / quic);
        ta.close();
        tb.close();
    });
}
