//! Raft RPCs a hostile or broken peer could send (it holds a cluster certificate, so the
//! transport lets it in): `serve` refuses them with an error naming the problem, before
//! openraft sees them, and the node's Raft keeps working. One node in one process; its RPC
//! sender is never used.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::raft::InstallSnapshotRequest;
use openraft::{SnapshotMeta, StoredMembership};
use raft::codec::{encode, RECORD_V1};
use raft::network::{serve, Network, RpcRequest, RpcSendError, RpcSender, MAX_SNAPSHOT_BYTES};
use raft::{Command, Node, Raft};

#[derive(Clone)]
struct NoPeers;

impl RpcSender for NoPeers {
    async fn send(&self, addr: &str, _payload: Vec<u8>, _timeout: Duration) -> Result<Vec<u8>, RpcSendError> {
        Err(RpcSendError::Unreachable(format!("no peer at {addr} in this test")))
    }
}

async fn one_node(dir: &tempfile::TempDir) -> Raft {
    let config = Arc::new(openraft::Config::default().validate().unwrap());
    let (log, sm) = raft::open(&dir.path().join("raft.redb")).unwrap();
    let r = Raft::new(1, config, Network::new(NoPeers), log, sm).await.unwrap();
    r.initialize(BTreeMap::from([(1, Node { name: "n1".into(), addr: "n1".into() })])).await.unwrap();
    r.wait(Some(Duration::from_secs(10))).metrics(|m| m.current_leader == Some(1), "n1 leads").await.unwrap();
    r
}

async fn still_writes(r: &Raft) {
    r.wait(Some(Duration::from_secs(10))).metrics(|m| m.current_leader == Some(1), "n1 leads again").await.unwrap();
    let w = r.client_write(Command::Put { ns: "t".into(), key: "k".into(), value: vec![1] });
    tokio::time::timeout(Duration::from_secs(10), w).await.expect("write in time").expect("write");
}

#[tokio::test]
async fn a_snapshot_chunk_far_past_the_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = one_node(&dir).await;
    // A newer term than the node's, from a node that is not a member: openraft would take it
    // (a higher vote wins) and write the chunk.
    let term = r.metrics().borrow().vote.leader_id().term;
    let vote = openraft::Vote::new(term + 1, 2);
    let chunk = |offset: u64| {
        let meta = SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default(), snapshot_id: "hostile".into() };
        encode("req", &RpcRequest::InstallSnapshot(InstallSnapshotRequest { vote, meta, offset, data: vec![7; 16], done: false })).unwrap()
    };
    // A first chunk where a snapshot starts: openraft begins receiving it.
    serve(&r, &chunk(0)).await.unwrap();
    for offset in [1u64 << 40, u64::MAX - 1, MAX_SNAPSHOT_BYTES] {
        // Without the bound, openraft would zero-fill up to the offset in memory: an abort.
        let e = serve(&r, &chunk(offset)).await.unwrap_err();
        assert!(e.contains(&format!("at offset {offset}")) && e.contains("MiB a snapshot may hold"), "{e}");
    }
    still_writes(&r).await;
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_deeply_nested_entry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = one_node(&dir).await;
    // An AppendEntries whose one entry is Batch(Batch(…)) 100,000 levels deep (≈ 200 KB): the
    // vote, no previous log id, one entry, no commit index; the entry's log id, the payload's
    // Normal variant, then Command::Batch with one element per level.
    let mut body = vec![RECORD_V1, 0]; // RpcRequest::AppendEntries
    body.extend(encode("vote", &r.metrics().borrow().vote).unwrap()[1..].iter());
    body.extend_from_slice(&[0, 1]); // prev_log_id: None; one entry
    body.extend(encode("log id", &openraft::LogId::<u64>::default()).unwrap()[1..].iter());
    body.push(1); // EntryPayload::Normal
    for _ in 0..100_000 {
        body.extend_from_slice(&[3, 1]); // Command::Batch, one element
    }
    let e = serve(&r, &body).await.unwrap_err();
    assert!(e.contains("nested deeper than 64 levels"), "{e}");
    still_writes(&r).await;
    r.shutdown().await.unwrap();
}
