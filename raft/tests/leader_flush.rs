//! The patched openraft (vendor/openraft/CORRAL-PATCH.md) on the redb store: a leader sends
//! its entries to the followers while its own log write runs, and counts itself towards the
//! commit only once that write is durable; it sends no periodic heartbeat to a follower that
//! has just heard from it; a follower appends on the calling thread. Three nodes in one
//! process, each with its own redb file; the RPCs go through an in-memory sender (a stand-in
//! for QUIC in this unit-level test; the lab tests run the real transport), which can cut a
//! node off and records every AppendEntries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::network::{serve, Network, RpcRequest, RpcSendError, RpcSender};
use raft::{Command, LogStore, Node, Raft};

/// In-memory RPC sender: address → that node's Raft; cut-off addresses are unreachable.
#[derive(Clone, Default)]
struct MemNet {
    nodes: Arc<Mutex<HashMap<String, Raft>>>,
    cut: Arc<Mutex<HashSet<String>>>,
    /// Every AppendEntries sent: (target address, carried entries, leader commit index).
    appends: Arc<Mutex<Vec<(String, bool, Option<u64>)>>>,
}

impl MemNet {
    /// Periodic heartbeats sent so far: AppendEntries without entries that tell the target no
    /// new commit index (a commit notice tells a higher one than the request before it).
    fn heartbeats(&self) -> usize {
        let mut told: HashMap<&str, Option<u64>> = HashMap::new();
        let appends = self.appends.lock().unwrap();
        let mut n = 0;
        for (to, entries, commit) in appends.iter() {
            let before = told.insert(to, *commit);
            if !entries && before.is_some_and(|b| b >= *commit) {
                n += 1;
            }
        }
        n
    }
}

impl RpcSender for MemNet {
    async fn send(&self, addr: &str, payload: Vec<u8>, _timeout: Duration) -> Result<Vec<u8>, RpcSendError> {
        if self.cut.lock().unwrap().contains(addr) {
            return Err(RpcSendError::Unreachable(format!("{addr} is cut off")));
        }
        let raft = self.nodes.lock().unwrap().get(addr).cloned();
        let raft = raft.ok_or_else(|| RpcSendError::Unreachable(format!("no node at {addr}")))?;
        if let Ok(RpcRequest::AppendEntries(r)) = raft::codec::decode::<RpcRequest>("request", &payload) {
            self.appends.lock().unwrap().push((addr.to_owned(), !r.entries.is_empty(), r.leader_commit.map(|c| c.index)));
        }
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
    lab_with_heartbeat(50).await
}

async fn lab_with_heartbeat(heartbeat_ms: u64) -> Lab {
    let net = MemNet::default();
    let config = Arc::new(
        openraft::Config {
            heartbeat_interval: heartbeat_ms,
            election_timeout_min: heartbeat_ms * 6,
            election_timeout_max: heartbeat_ms * 12,
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
        // As corrald runs it: a follower writes its log on its own thread.
        raft::inline_appends_unless_leader(&log, &r);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_periodic_heartbeat_to_a_follower_that_just_heard_from_the_leader() {
    // Heartbeat 400 ms: openraft ticks every 600 ms, and skips a follower that answered an
    // AppendEntries sent less than 200 ms before (a write on a loaded machine's disk stays
    // well below that).
    let l = lab_with_heartbeat(400).await;
    // Idle: the heartbeats go on (they keep the followers from starting elections).
    let h0 = l.net.heartbeats();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = l.net.heartbeats() - h0;
    assert!(idle >= 4, "{idle} heartbeats to 2 idle followers in 2 s (a tick every 600 ms)");
    // Busy: a write every ~10 ms, each sent to both followers and its commit told to them.
    // A heartbeat would only hold the next write back for a round trip.
    let h1 = l.net.heartbeats();
    let t0 = Instant::now();
    let mut writes = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        l.rafts[0].client_write(put(&format!("w{writes}"))).await.unwrap();
        writes += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = l.net.heartbeats() - h1;
    assert!(busy <= 2, "{busy} heartbeats during {writes} writes in 3 s, to followers that heard from the leader every few ms");
    let m = l.rafts[0].metrics().borrow().clone();
    assert_eq!(m.current_leader, Some(1), "the leader changed: {m:?}");
    for r in &l.rafts {
        r.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_append_on_their_own_thread_and_the_leader_on_its_writer() {
    let l = lab().await;
    let before: Vec<u64> = l.logs.iter().map(LogStore::inline_appends_done).collect();
    let mut last = 0;
    for k in 0..20 {
        last = l.rafts[0].client_write(put(&format!("i{k}"))).await.unwrap().log_id.index;
        // Apart, so a follower's writer is idle when the next entry comes (the deferred
        // state-machine write may still hold it now and then).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    applied_everywhere(&l, last).await;
    let inline: Vec<u64> = l.logs.iter().zip(&before).map(|(g, b)| g.inline_appends_done() - b).collect();
    assert_eq!(inline[0], 0, "the leader wrote inline, which holds its replication back: {inline:?}");
    for (i, n) in inline.iter().enumerate().skip(1) {
        assert!(*n >= 10, "follower {} wrote only {n} of 20 appends inline: {inline:?}", i + 1);
    }
    // Every entry is in every log, in order, and survives as the store reads it back.
    for log in &l.logs {
        let mut log = log.clone();
        let got = raft::openraft::RaftLogReader::try_get_log_entries(&mut log, 1..=last).await.unwrap();
        let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, (1..=last).collect::<Vec<_>>());
    }
    for r in &l.rafts {
        r.shutdown().await.unwrap();
    }
}
