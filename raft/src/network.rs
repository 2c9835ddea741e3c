//! Raft RPCs over a transport the node provides. This crate owns the message format (versioned
//! postcard, see [`crate::codec`]) and the mapping of errors to what openraft expects; the node
//! owns sockets, TLS and addressing through [`RpcSender`].

use std::future::Future;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::{EntryPayload, LogId};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::types::{Node, NodeId, Raft, TypeConfig};

/// A Raft RPC request on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    /// Log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Elections.
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to an [`RpcRequest`], carrying the remote Raft's own error when it refused.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    /// Answer to AppendEntries.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to Vote.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to InstallSnapshot.
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

/// Why a request did not get an answer from the remote Raft.
#[derive(Debug, thiserror::Error)]
pub enum RpcSendError {
    /// Could not connect / handshake: openraft backs off before retrying.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Connected but the exchange failed (timeout, reset, refused by the handler).
    #[error("{0}")]
    Failed(String),
}

/// The node's transport: send `payload` to the Raft service at `addr` and return its reply.
pub trait RpcSender: Clone + Send + Sync + 'static {
    /// One request/response exchange, bounded by `timeout`.
    fn send(
        &self,
        addr: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, RpcSendError>> + Send;
}

/// openraft's network factory over an [`RpcSender`].
#[derive(Clone)]
pub struct Network<S> {
    sender: S,
}

impl<S: RpcSender> Network<S> {
    /// Wraps the node's transport.
    pub fn new(sender: S) -> Self {
        Self { sender }
    }
}

impl<S: RpcSender> RaftNetworkFactory<TypeConfig> for Network<S> {
    type Network = Client<S>;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        Client {
            sender: self.sender.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// A client for one peer.
pub struct Client<S> {
    sender: S,
    target: NodeId,
    addr: String,
}

impl<S: RpcSender> Client<S> {
    async fn call<E: std::error::Error>(
        &self,
        req: RpcRequest,
        option: &RPCOption,
    ) -> Result<RpcResponse, RPCError<NodeId, Node, E>> {
        let bytes = encode("raft rpc request", &req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = self
            .sender
            .send(&self.addr, bytes, option.hard_ttl())
            .await
            .map_err(|e| match e {
                RpcSendError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                RpcSendError::Failed(_) => RPCError::Network(NetworkError::new(&e)),
            })?;
        decode("raft rpc response", &reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    fn unexpected<E: std::error::Error>(&self, got: &RpcResponse) -> RPCError<NodeId, Node, E> {
        let e = RpcSendError::Failed(format!("unexpected reply kind from node {}: {got:?}", self.target));
        RPCError::Network(NetworkError::new(&e))
    }
}

impl<S: RpcSender> RaftNetwork<TypeConfig> for Client<S> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let (rpc, cut) = within_budget(rpc, APPEND_BUDGET);
        let (name, first, last) = rpc_marks(&rpc);
        let t0 = std::time::Instant::now();
        tracing::debug!(target: "corral_stage", stage = name.0, first, last, took_us = 0u64);
        let r = self.call(RpcRequest::AppendEntries(rpc), &option).await;
        tracing::debug!(target: "corral_stage", stage = name.1, first, last, took_us = t0.elapsed().as_micros() as u64);
        match r? {
            // Only a prefix was sent: say how far the follower now matches.
            RpcResponse::AppendEntries(Ok(AppendEntriesResponse::Success)) if cut.is_some() => Ok(AppendEntriesResponse::PartialSuccess(cut)),
            RpcResponse::AppendEntries(r) => r.map_err(|e| RemoteError::new(self.target, e).into()),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(RpcRequest::InstallSnapshot(rpc), &option).await? {
            RpcResponse::InstallSnapshot(r) => r.map_err(|e| RemoteError::new(self.target, e).into()),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self.call(RpcRequest::Vote(rpc), &option).await? {
            RpcResponse::Vote(r) => r.map_err(|e| RemoteError::new(self.target, e).into()),
            other => Err(self.unexpected(&other)),
        }
    }
}

/// The receiving side: decodes one request, hands it to `raft`, encodes the answer. A request
/// that does not decode is refused with a message naming the problem (the node logs and counts
/// it); it never reaches Raft. Nothing checks who sent it: for in-process networks (tests);
/// a node serving peers uses [`serve_from`].
pub async fn serve(raft: &Raft, request: &[u8]) -> Result<Vec<u8>, String> {
    let req: RpcRequest = decode("raft rpc request", request).map_err(|e| e.to_string())?;
    serve_decoded(raft, req).await
}

/// [`serve`] for a request that came over a connection authenticated as node `from` (its
/// certificate's name): a request that speaks for another node is refused. A vote request
/// names its candidate and an append or snapshot its leader; openraft trusts those ids, so a
/// member could otherwise append entries as the current leader, in the current term, and
/// followers would overwrite their logs with them without a word.
pub async fn serve_from(raft: &Raft, from: NodeId, request: &[u8]) -> Result<Vec<u8>, String> {
    let req: RpcRequest = decode("raft rpc request", request).map_err(|e| e.to_string())?;
    check_sender(&req, from)?;
    serve_decoded(raft, req).await
}

/// The node a request speaks for: a vote's candidate, an append's or snapshot's leader.
fn claimed_sender(req: &RpcRequest) -> Option<NodeId> {
    let vote = match req {
        RpcRequest::AppendEntries(r) => &r.vote,
        RpcRequest::Vote(r) => &r.vote,
        RpcRequest::InstallSnapshot(r) => &r.vote,
    };
    vote.leader_id().voted_for()
}

fn check_sender(req: &RpcRequest, from: NodeId) -> Result<(), String> {
    match claimed_sender(req) {
        Some(id) if id == from => Ok(()),
        claimed => Err(format!(
            "a raft request that speaks for node id {} over a connection authenticated as node id {from}",
            claimed.map_or("(none)".into(), |c| c.to_string())
        )),
    }
}

async fn serve_decoded(raft: &Raft, req: RpcRequest) -> Result<Vec<u8>, String> {
    let resp = match req {
        RpcRequest::AppendEntries(r) => {
            let (name, first, last) = rpc_marks(&r);
            let t0 = std::time::Instant::now();
            let (recv, done) = if name.0 == "rpc_send" { ("rpc_recv", "rpc_handled") } else { ("commit_recv", "commit_handled") };
            tracing::debug!(target: "corral_stage", stage = recv, first, last, took_us = 0u64);
            let a = raft.append_entries(r).await;
            tracing::debug!(target: "corral_stage", stage = done, first, last, took_us = t0.elapsed().as_micros() as u64);
            RpcResponse::AppendEntries(a)
        }
        RpcRequest::Vote(r) => RpcResponse::Vote(raft.vote(r).await),
        RpcRequest::InstallSnapshot(r) => {
            check_snapshot_chunk(r.offset, r.data.len())?;
            RpcResponse::InstallSnapshot(raft.install_snapshot(r).await)
        }
    };
    encode("raft rpc response", &resp).map_err(|e| e.to_string())
}

/// The largest snapshot a node takes from a leader. A snapshot is received into memory, and
/// openraft writes each chunk at the offset the sender names, zero-filling any gap: without a
/// bound, one chunk at offset 2^40 would ask for a terabyte (an abort), and near 2^64 a
/// capacity overflow (a panic). The replicated state (members, rules, verdicts) is a few MB for
/// thousands of services.
pub const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;

/// Refuses a snapshot chunk that would reach past [`MAX_SNAPSHOT_BYTES`], before openraft
/// sees it (a failed snapshot write would stop the receiving Raft).
fn check_snapshot_chunk(offset: u64, len: usize) -> Result<(), String> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= MAX_SNAPSHOT_BYTES => Ok(()),
        _ => Err(format!(
            "snapshot chunk of {len} bytes at offset {offset} reaches past the {} MiB a snapshot may hold",
            MAX_SNAPSHOT_BYTES >> 20
        )),
    }
}

/// Stage names and log indexes of an AppendEntries for `bench propagation --stages`: entries
/// carried (`rpc_*`) or, without entries, the commit index told (`commit_*`).
/// The entry bytes one AppendEntries carries at most (at least one entry): a follower catching
/// up on large rule sets gets them a few at a time, each exchange well inside the transport's
/// 16 MiB message bound and its timeout, instead of one batch that can never pass.
pub const APPEND_BUDGET: usize = 1 << 20;

/// Cuts `rpc` to the longest prefix of its entries within `budget` bytes (at least one entry);
/// returns the request to send and, when cut, the log id the follower matches after it. The
/// leader's commit index is clamped to what is sent.
fn within_budget(mut rpc: AppendEntriesRequest<TypeConfig>, budget: usize) -> (AppendEntriesRequest<TypeConfig>, Option<LogId<NodeId>>) {
    if rpc.entries.len() < 2 {
        return (rpc, None);
    }
    let mut used = 0usize;
    let mut keep = 0usize;
    for e in &rpc.entries {
        let size = match &e.payload {
            EntryPayload::Normal(c) => c.approx_size() + 64,
            EntryPayload::Membership(_) => 512,
            EntryPayload::Blank => 32,
        };
        if keep > 0 && used + size > budget {
            break;
        }
        used += size;
        keep += 1;
    }
    if keep == rpc.entries.len() {
        return (rpc, None);
    }
    rpc.entries.truncate(keep);
    let last = rpc.entries.last().map(|e| e.log_id);
    if rpc.leader_commit > last {
        rpc.leader_commit = last;
    }
    (rpc, last)
}

fn rpc_marks(r: &AppendEntriesRequest<TypeConfig>) -> ((&'static str, &'static str), u64, u64) {
    match (r.entries.first(), r.entries.last()) {
        (Some(f), Some(l)) => (("rpc_send", "rpc_reply"), f.log_id.index, l.log_id.index),
        _ => {
            let c = r.leader_commit.map(|c| c.index).unwrap_or(0);
            (("commit_send", "commit_reply"), c, c)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, bytes: usize) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::Command::Put { ns: "r".into(), key: "k".into(), value: vec![0; bytes] }),
        }
    }

    fn request(sizes: &[usize], commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 9)),
            leader_commit: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), commit)),
            entries: sizes.iter().enumerate().map(|(i, b)| entry(10 + i as u64, *b)).collect(),
        }
    }

    #[test]
    fn appends_are_cut_to_the_budget_keeping_at_least_one_entry() {
        let (r, cut) = within_budget(request(&[100, 100, 100], 12), 1 << 20);
        assert_eq!((r.entries.len(), cut), (3, None), "small batches go whole");
        let (r, cut) = within_budget(request(&[600 << 10, 600 << 10, 10], 12), 1 << 20);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(cut.map(|l| l.index), Some(10));
        assert_eq!(r.leader_commit.map(|l| l.index), Some(10), "commit clamped to what is sent");
        let (r, cut) = within_budget(request(&[3 << 20, 10], 9), 1 << 20);
        assert_eq!((r.entries.len(), cut.map(|l| l.index)), (1, Some(10)), "one entry over the budget still goes");
        assert_eq!(r.leader_commit.map(|l| l.index), Some(9), "a lower commit index is kept");
        let (r, cut) = within_budget(request(&[3 << 20], 10), 1 << 20);
        assert_eq!((r.entries.len(), cut), (1, None));
    }

    #[test]
    fn requests_must_speak_for_the_authenticated_sender() {
        let append = |leader| {
            let mut r = request(&[10], 9);
            r.vote = openraft::Vote::new_committed(4, leader);
            RpcRequest::AppendEntries(r)
        };
        assert!(check_sender(&append(7), 7).is_ok());
        let e = check_sender(&append(7), 8).unwrap_err();
        assert!(e.contains("speaks for node id 7") && e.contains("authenticated as node id 8"), "{e}");
        let vote = |candidate| RpcRequest::Vote(VoteRequest { vote: openraft::Vote::new(5, candidate), last_log_id: None });
        assert!(check_sender(&vote(3), 3).is_ok());
        assert!(check_sender(&vote(3), 1).is_err());
        let snap = |leader| {
            let meta = openraft::SnapshotMeta { last_log_id: None, last_membership: openraft::StoredMembership::default(), snapshot_id: "s".into() };
            RpcRequest::InstallSnapshot(InstallSnapshotRequest { vote: openraft::Vote::new_committed(4, leader), meta, offset: 0, data: vec![], done: false })
        };
        assert!(check_sender(&snap(2), 2).is_ok());
        assert!(check_sender(&snap(2), 9).is_err());
    }

    #[test]
    fn snapshot_chunks_past_the_bound_are_refused() {
        assert!(check_snapshot_chunk(0, 3 << 20).is_ok());
        assert!(check_snapshot_chunk(MAX_SNAPSHOT_BYTES - 10, 10).is_ok());
        for (offset, len) in [(MAX_SNAPSHOT_BYTES - 10, 11), (1 << 40, 0), (u64::MAX, 1), (u64::MAX - 5, 10)] {
            let e = check_snapshot_chunk(offset, len).unwrap_err();
            assert!(e.contains(&format!("offset {offset}")) && e.contains("256 MiB"), "{e}");
        }
    }
}
