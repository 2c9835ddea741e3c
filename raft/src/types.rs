//! The Raft type configuration and the replicated data: a versioned map of namespaces, each a
//! map of key → opaque bytes. The node crate encodes its own records (members, tokens, rules,
//! verdicts) into values, so this crate never changes when the director's data model does.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Raft node ids are 64-bit; corral derives them from node names (see [`node_id_for`]) so a
/// node keeps its id across restarts and every member computes the same id for a name.
pub type NodeId = u64;

/// What the cluster records about a Raft member: enough to reach it and to show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Node name (as in its certificate).
    pub name: String,
    /// `ip:port` of its QUIC endpoint.
    pub addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// One change to the replicated state. All variants are applied atomically with their log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets one key.
    Put {
        /// Namespace (e.g. "members", "tokens", "rules").
        ns: String,
        /// Key within the namespace.
        key: String,
        /// Opaque value.
        value: Vec<u8>,
    },
    /// Removes one key (absent is fine).
    Delete {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
    },
    /// Replaces a whole namespace: how "apply the whole desired set" becomes one entry.
    Replace {
        /// Namespace.
        ns: String,
        /// Its complete new contents.
        entries: BTreeMap<String, Vec<u8>>,
    },
    /// Several commands as one atomic entry.
    Batch(Vec<Command>),
}

/// The largest command one log entry may carry (its keys and values). Raft replicates in log
/// order, so an entry the transport could never carry (16 MiB per message) would stop every
/// later one on every follower; a write over this is refused before it reaches the log.
pub const MAX_ENTRY_BYTES: usize = 8 << 20;

impl Command {
    /// Its keys' and values' bytes: close to its encoded size, without encoding it.
    pub fn approx_size(&self) -> usize {
        match self {
            Command::Put { ns, key, value } => ns.len() + key.len() + value.len() + 8,
            Command::Delete { ns, key } => ns.len() + key.len() + 8,
            Command::Replace { ns, entries } => ns.len() + entries.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>() + 8,
            Command::Batch(cs) => cs.iter().map(Command::approx_size).sum::<usize>() + 8,
        }
    }
}

/// What a committed command reports back to its writer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The state revision that includes the write (its log index).
    pub revision: u64,
}

/// The replicated state as the rest of the node reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Log index of the last applied entry: grows with every change, equal on every node that
    /// has applied the same prefix of the log.
    pub revision: u64,
    /// Namespace → key → value.
    pub data: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl ClusterState {
    /// One namespace, empty when absent.
    pub fn namespace(&self, ns: &str) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.data.get(ns).into_iter().flat_map(|m| m.iter())
    }

    /// One value.
    pub fn get(&self, ns: &str, key: &str) -> Option<&[u8]> {
        self.data.get(ns)?.get(key).map(|v| v.as_slice())
    }

    /// Applies `cmd` in memory (the store persists the same change in its transaction).
    pub fn apply(&mut self, cmd: &Command) {
        match cmd {
            Command::Put { ns, key, value } => {
                self.data
                    .entry(ns.clone())
                    .or_default()
                    .insert(key.clone(), value.clone());
            }
            Command::Delete { ns, key } => {
                if let Some(m) = self.data.get_mut(ns) {
                    m.remove(key);
                    if m.is_empty() {
                        self.data.remove(ns);
                    }
                }
            }
            Command::Replace { ns, entries } => {
                if entries.is_empty() {
                    self.data.remove(ns);
                } else {
                    self.data.insert(ns.clone(), entries.clone());
                }
            }
            Command::Batch(cmds) => cmds.iter().for_each(|c| self.apply(c)),
        }
    }
}

openraft::declare_raft_types!(
    /// corral's Raft types: u64 ids, [`Node`] addresses, [`Command`] in, [`Response`] out,
    /// snapshots as byte buffers.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle type.
pub type Raft = openraft::Raft<TypeConfig>;

/// Stable id for a node name: the first 8 bytes of FNV-1a/64 over the name, never 0 (openraft
/// treats ids as opaque, but 0 reads like "unset" in logs).
pub fn node_id_for(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id_for("d1"), node_id_for("d1"));
        assert_ne!(node_id_for("d1"), node_id_for("d2"));
        assert_ne!(node_id_for(""), 0);
    }

    #[test]
    fn apply_put_delete_replace_batch() {
        let mut s = ClusterState::default();
        s.apply(&Command::Batch(vec![
            Command::Put { ns: "a".into(), key: "k".into(), value: vec![1] },
            Command::Put { ns: "a".into(), key: "j".into(), value: vec![2] },
        ]));
        assert_eq!(s.get("a", "k"), Some(&[1u8][..]));
        s.apply(&Command::Delete { ns: "a".into(), key: "k".into() });
        assert_eq!(s.get("a", "k"), None);
        assert_eq!(s.namespace("a").count(), 1);
        s.apply(&Command::Replace { ns: "a".into(), entries: BTreeMap::new() });
        assert!(s.data.is_empty());
    }
}
