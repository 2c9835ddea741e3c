//! The patched openraft (vendor/openraft/CORRAL-PATCH.md) on the redb store: a leader sends
//! its entries to the followers while its own log write runs, and counts itself towards the
//! commit only once that write is durable. Three nodes in one process, each with its own redb
//! file; the RPCs go through an in-memory sender (a stand-in for QUIC in this unit-level test;
//! the lab tests run the real transport), which can cut a node off.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::network::{serve, Network, RpcRequest, RpcSendError, RpcSender};
use raft::{Command, LogStore, Node, Raft};

/// In-memory RPC sender: address → that node's Raft; cut-off addresses are unreachable. It
/// counts heartbeats: AppendEntries without entries that tell a follower no newer commit than
/// the previous one sent to it.
#[derive(Clone, Default)]
struct MemNet {
    nodes: Arc<Mutex<HashMap<String, Raft>>>,
    cut: Arc<Mutex<HashSet<String>>>,
    heartbeats: Arc<Mutex<HashMap<String, (Option<u64>, usize)>>>,
}

impl MemNet {
    fn heartbeats_to(&self, addr: &str) -> usize {
        self.heartbeats.lock().unwrap().get(addr).map_or(0, |h| h.1)
    }
}

impl RpcSender for MemNet {
    async fn send(&self, addr: &str, payload: Vec<u8>, _timeout: Duration) -> Result<Vec<u8>, RpcSendError> {
        if self.cut.lock().unwrap().contains(addr) {
            return Err(RpcSendError::Unreachable(format!("{addr} is cut off")));
        }
        if let Ok(RpcRequest::AppendEntries(ae)) = raft::codec::decode::<RpcRequest>("test", &payload) {
            let commit = ae.leader_commit.map(|c| c.index);
            let mut hb = self.heartbeats.lock().unwrap();
            let (last, n) = hb.entry(addr.to_string()).or_default();
            if ae.entries.is_empty() && commit == *last {
                *n += 1;
            }
            *last = commit;
        }
        let raft = self.nodes.lock().unwrap().get(addr).cloned();
        let raft = raft.ok_or_else(|| RpcSendError::Unreachable(format!("no node at {addr}")))?;
        serve(&raft, &payload).await.map_err(RpcSendError::Failed)
    }
}

struct Lab {
    net: MemNet,
    rafts: Vec<Raft>,
    logs: Vec<LogStore>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn lab() -> Lab {
    let net = MemNet::default();
    let config = Arc::new(
        openraft::Config {
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    );
    let (mut rafts, mut logs, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = raft::open(&dir.path().join("raft.redb")).unwrap();
        let addr = format!("node{id}");
        let r = Raft::new(id, config.clone(), Network::new(net.clone()), log.clone(), sm).await.unwrap();
        net.nodes.lock().unwrap().insert(addr.clone(), r.clone());
        members.insert(id, Node { name: addr.clone(), addr });
        rafts.push(r);
        logs.push(log);
        dirs.push(dir);
    }
    rafts[0].initialize(members).await.unwrap();
    rafts[0]
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader == Some(1) && m.last_applied.is_some(), "node 1 leads")
        .await
        .unwrap();
    Lab { net, rafts, logs, _dirs: dirs }
}

fn put(k: &str) -> Command {
    Command::Put { ns: "t".into(), key: k.into(), value: vec![1] }
}

async fn applied_everywhere(l: &Lab, index: u64) {
    for (i, r) in l.rafts.iter().enumerate() {
        r.wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.last_applied.is_some_and(|a| a.index >= index), format!("node {} applied {index}", i + 1))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_replicates_during_its_own_log_write() {
    let l = lab().await;
    // The leader's disk is slow; the followers' are not. The two followers are a majority, so
    // the write commits without waiting for the leader's own copy.
    let slow = Duration::from_millis(1500);
    l.logs[0].delay_appends(slow);
    let t0 = Instant::now();
    let r = l.rafts[0].client_write(put("a")).await.unwrap();
    let took = t0.elapsed();
    assert!(took < slow, "the write waited for the leader's own slow log write ({took:?})");
    applied_everywhere(&l, r.log_id.index).await;
    for r in &l.rafts {
        r.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_counts_its_own_copy_only_once_it_is_durable() {
    let l = lab().await;
    // One follower cut off: the commit needs the leader's own copy, which takes `slow` to be
    // written. Committing sooner would count a copy that a crash could still lose.
    l.net.cut.lock().unwrap().insert("node3".into());
    let slow = Duration::from_millis(800);
    l.logs[0].delay_appends(slow);
    let t0 = Instant::now();
    let r = l.rafts[0].client_write(put("b")).await.unwrap();
    let took = t0.elapsed();
    assert!(took >= slow, "committed after {took:?}, before the leader's own copy was durable ({slow:?})");
    l.logs[0].delay_appends(Duration::ZERO);
    l.net.cut.lock().unwrap().clear();
    applied_everywhere(&l, r.log_id.index).await;
    for r in &l.rafts {
        r.shutdown().await.unwrap();
    }
}

/// A leader under a stream of writes sends no heartbeats (vendor/openraft/CORRAL-PATCH.md):
/// each write's AppendEntries resets the followers' election timers already. Idle, it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_under_writes_sends_no_heartbeats() {
    let l = lab().await;
    // Heartbeats every 50 ms; a write every 20 ms for a second.
    let before = l.net.heartbeats_to("node2");
    let t0 = Instant::now();
    let mut last = 0;
    for i in 0..50 {
        last = l.rafts[0].client_write(put(&format!("w{i}"))).await.unwrap().log_id.index;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = l.net.heartbeats_to("node2") - before;
    let busy_for = t0.elapsed();
    applied_everywhere(&l, last).await;
    // The same time idle: heartbeats every 50 ms.
    let before = l.net.heartbeats_to("node2");
    tokio::time::sleep(busy_for).await;
    let idle = l.net.heartbeats_to("node2") - before;
    assert!(idle >= 8, "the counter saw only {idle} heartbeats in {busy_for:?} idle");
    // A write held up past the interval (a loaded machine) lets one through; not one per 50 ms.
    assert!(busy <= 3, "{busy} heartbeats during {busy_for:?} of writes every 20 ms");
    for r in &l.rafts {
        r.shutdown().await.unwrap();
    }
}
