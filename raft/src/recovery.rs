//! Disaster recovery: a majority of the voters is gone for good (disks, machines), so the
//! cluster can commit nothing — no rule change, no health verdict — and never will again.
//! [`force_single_voter`] rewrites a stopped node's store so that it alone is the voter, keeping
//! everything it has (rules, verdicts, the CA, tokens), like etcd's `--force-new-cluster` or
//! consul's `peers.json`. Entries the lost majority committed but this node never received are
//! lost; that is the price, and why it is an operator's explicit act.
//!
//! How: one membership entry `{this node}` is appended after the last entry, in a term above
//! every term the store has seen, with the vote set to this node in that term. openraft takes
//! the newest membership entry of the log as the effective configuration, so on start the
//! node is the single voter, elects itself and commits the entry (and everything before it)
//! with its first blank entry as leader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StoredMembership, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::codec::{decode, encode};
use crate::types::{Node, NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

/// Why a store could not be forced; always names the file.
#[derive(Debug, thiserror::Error)]
#[error("raft store {path}: {reason}")]
pub struct RecoveryError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// What [`force_single_voter`] did, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forced {
    /// The term of the new membership entry (above every term the store had).
    pub term: u64,
    /// Its log index.
    pub index: u64,
    /// The members the previous configuration had besides this node (voters and learners).
    pub dropped: Vec<Node>,
}

/// Makes the node `id` (`me`) the only voter of the store at `path`. The node must not be
/// running (redb holds a lock on the file). Refuses a store that never belonged to a cluster.
pub fn force_single_voter(path: &Path, id: NodeId, me: Node) -> Result<Forced, RecoveryError> {
    let err = |reason: String| RecoveryError { path: path.to_path_buf(), reason };
    if !path.exists() {
        return Err(err("no such file: this node never joined a cluster, there is nothing to recover".into()));
    }
    let db = Database::open(path).map_err(|e| err(format!("{e} (is corrald still running?)")))?;
    let (vote, last, membership) = {
        let txn = db.begin_read().map_err(|e| err(e.to_string()))?;
        let meta = txn.open_table(META).map_err(|e| err(e.to_string()))?;
        let read = |key: &str| -> Result<Option<Vec<u8>>, RecoveryError> {
            Ok(meta.get(key).map_err(|e| err(e.to_string()))?.map(|v| v.value().to_vec()))
        };
        let vote: Option<Vote<NodeId>> = match read("vote")? {
            Some(b) => Some(decode("raft_meta/vote", &b).map_err(|e| err(e.to_string()))?),
            None => None,
        };
        let purged: Option<LogId<NodeId>> = match read("last_purged")? {
            Some(b) => Some(decode("raft_meta/last_purged", &b).map_err(|e| err(e.to_string()))?),
            None => None,
        };
        // The newest membership entry of the log, else the state machine's.
        let log = txn.open_table(LOG).map_err(|e| err(e.to_string()))?;
        let mut last: Option<LogId<NodeId>> = None;
        let mut membership: Option<Membership<NodeId, Node>> = None;
        for row in log.iter().map_err(|e| err(e.to_string()))?.rev() {
            let (_, v) = row.map_err(|e| err(e.to_string()))?;
            let e: Entry<TypeConfig> = decode("raft log entry", v.value()).map_err(|e| err(e.to_string()))?;
            last = last.or(Some(e.log_id));
            if let EntryPayload::Membership(m) = e.payload {
                membership = Some(m);
                break;
            }
        }
        let last = last.or(purged);
        if membership.is_none() {
            let sm = txn.open_table(SM_META).map_err(|e| err(e.to_string()))?;
            if let Some(b) = sm.get("membership").map_err(|e| err(e.to_string()))? {
                let stored: StoredMembership<NodeId, Node> = decode("sm_meta/membership", b.value()).map_err(|e| err(e.to_string()))?;
                membership = Some(stored.membership().clone());
            }
        }
        (vote, last, membership)
    };
    let Some(membership) = membership.filter(|m| m.voter_ids().next().is_some()) else {
        return Err(err("the store holds no cluster membership: this node never belonged to an initialized cluster".into()));
    };
    let term = vote.map_or(0, |v| v.leader_id().term).max(last.map_or(0, |l| l.leader_id.term)) + 1;
    let index = last.map_or(0, |l| l.index) + 1;
    let dropped: Vec<Node> = membership.nodes().filter(|(n, _)| **n != id).map(|(_, node)| node.clone()).collect();
    let entry: Entry<TypeConfig> = Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, id), index),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, me)]))),
    };
    let entry = encode("raft log entry", &entry).map_err(|e| err(e.to_string()))?;
    let vote = encode("vote", &Vote::new(term, id)).map_err(|e| err(e.to_string()))?;
    let txn = db.begin_write().map_err(|e| err(e.to_string()))?;
    {
        txn.open_table(LOG).map_err(|e| err(e.to_string()))?.insert(index, entry.as_slice()).map_err(|e| err(e.to_string()))?;
        txn.open_table(META).map_err(|e| err(e.to_string()))?.insert("vote", vote.as_slice()).map_err(|e| err(e.to_string()))?;
    }
    txn.commit().map_err(|e| err(e.to_string()))?;
    Ok(Forced { term, index, dropped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node { name: name.into(), addr: format!("{name}:7946") }
    }

    /// A store as a three-voter cluster leaves it: entries 1..=5 in terms 1 and 2, the
    /// membership at index 2, the vote for node 2 in term 3.
    fn three_voter_store(path: &Path) {
        drop(crate::open(path).unwrap());
        let db = Database::open(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            for i in 1..=5u64 {
                let term = if i <= 3 { 1 } else { 2 };
                let payload = if i == 2 {
                    EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2, 3])], BTreeMap::from([(1, node("a")), (2, node("b")), (3, node("c"))])))
                } else {
                    EntryPayload::Blank
                };
                let e: Entry<TypeConfig> = Entry { log_id: LogId::new(CommittedLeaderId::new(term, 2), i), payload };
                log.insert(i, encode("raft log entry", &e).unwrap().as_slice()).unwrap();
            }
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("vote", encode("vote", &Vote::new(3, 2)).unwrap().as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn the_node_becomes_the_only_voter_above_every_term_after_the_last_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        three_voter_store(&path);
        let forced = force_single_voter(&path, 1, node("a")).unwrap();
        assert_eq!((forced.term, forced.index), (4, 6), "term above the vote's 3, index after 5");
        assert_eq!(forced.dropped, vec![node("b"), node("c")]);
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let e: Entry<TypeConfig> = decode("e", txn.open_table(LOG).unwrap().get(6).unwrap().unwrap().value()).unwrap();
        assert_eq!(e.log_id, LogId::new(CommittedLeaderId::new(4, 1), 6));
        let EntryPayload::Membership(m) = e.payload else { panic!("not a membership entry: {:?}", e.payload) };
        assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![1]);
        assert_eq!(m.nodes().count(), 1, "the others are gone, not learners");
        let vote: Vote<NodeId> = decode("v", txn.open_table(META).unwrap().get("vote").unwrap().unwrap().value()).unwrap();
        assert_eq!(vote, Vote::new(4, 1));
        drop(txn);
        drop(db);
        // The store still opens as corrald opens it.
        crate::open(&path).unwrap();
    }

    #[test]
    fn a_store_without_a_cluster_or_in_use_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let e = force_single_voter(&path, 1, node("a")).unwrap_err();
        assert!(e.to_string().contains("never joined"), "{e}");
        drop(crate::open(&path).unwrap());
        let e = force_single_voter(&path, 1, node("a")).unwrap_err();
        assert!(e.to_string().contains("no cluster membership") && e.to_string().contains("raft.redb"), "{e}");
        three_voter_store(&path);
        let (_log, _sm) = crate::open(&path).unwrap();
        let e = force_single_voter(&path, 1, node("a")).unwrap_err();
        assert!(e.to_string().contains("still running"), "{e}");
    }
}
