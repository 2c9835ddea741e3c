//! openraft's storage conformance suite on the redb store, plus what the suite does not cover:
//! persistence across reopen, and damaged files refused with a clear error.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use raft::{LogStore, NodeId, StateMachine};

struct RedbBuilder {
    dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
    /// Appends on the caller's thread when the writer is idle, as a follower does.
    inline: bool,
    logs: std::sync::Mutex<Vec<LogStore>>,
}

impl RedbBuilder {
    fn new(inline: bool) -> Self {
        RedbBuilder { dirs: Default::default(), inline, logs: Default::default() }
    }
}

impl StoreBuilder<raft::TypeConfig, LogStore, StateMachine, ()> for RedbBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = raft::open(&dir.path().join("raft.redb")).unwrap();
        log.set_inline_appends(self.inline);
        self.dirs.lock().unwrap().push(dir);
        self.logs.lock().unwrap().push(log.clone());
        Ok(((), log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    let b = RedbBuilder::new(false);
    Suite::test_store(&b).unwrap();
    let inline: u64 = b.logs.lock().unwrap().iter().map(LogStore::inline_appends_done).sum();
    assert_eq!(inline, 0, "appends ran inline with inline appends off");
}

/// The same suite with every append that may run inline running inline (a follower's store).
#[test]
fn openraft_storage_suite_with_inline_appends() {
    let b = RedbBuilder::new(true);
    Suite::test_store(&b).unwrap();
    let inline: u64 = b.logs.lock().unwrap().iter().map(LogStore::inline_appends_done).sum();
    assert!(inline > 0, "no append ran inline: the suite did not test that path");
}

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use raft::{Command, TypeConfig};

fn entry(term: u64, index: u64, cmd: Option<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: match cmd {
            Some(c) => EntryPayload::Normal(c),
            None => EntryPayload::Blank,
        },
    }
}

fn put(k: &str, v: u8) -> Command {
    Command::Put { ns: "kv".into(), key: k.into(), value: vec![v] }
}

/// Writes a vote, entries and applied state, closes, reopens: everything is there.
#[tokio::test(flavor = "multi_thread")]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let (mut log, mut sm) = raft::open(&path).unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        let entries = vec![entry(3, 1, None), entry(3, 2, Some(put("a", 1))), entry(3, 3, Some(put("b", 2)))];
        openraft::storage::RaftLogStorageExt::blocking_append(&mut log, entries.clone()).await.unwrap();
        let r = sm.apply(entries).await.unwrap();
        assert_eq!(r.last().unwrap().revision, 3);
        assert_eq!(sm.current().get("kv", "b"), Some(&[2u8][..]));
        // As corrald does on shutdown (otherwise the write follows after a short delay).
        sm.write_pending().await.unwrap();
    }
    let (mut log, mut sm) = raft::open(&path).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(log.try_get_log_entries(1..4).await.unwrap().len(), 3);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 3);
    let state = sm.current();
    assert_eq!(state.revision, 3);
    assert_eq!(state.get("kv", "a"), Some(&[1u8][..]));
}

#[test]
fn empty_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    std::fs::write(&path, b"").unwrap();
    let err = raft::open(&path).err().expect("an empty file must be refused").to_string();
    assert!(err.contains("empty") && err.contains("raft.redb"), "{err}");
}

#[test]
fn garbage_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let err = raft::open(&path).err().expect("garbage must be refused").to_string();
    assert!(err.contains("raft.redb"), "{err}");
}

/// A real store cut short at several lengths: each open is an error or (if redb can recover
/// to a committed state) a store whose records decode; never a panic, never silently empty
/// when the log was not.
#[tokio::test(flavor = "multi_thread")]
async fn truncated_file_is_refused_or_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let (mut log, mut sm) = raft::open(&path).unwrap();
        let entries: Vec<_> = (1..=50).map(|i| entry(1, i, Some(put(&format!("k{i}"), i as u8)))).collect();
        openraft::storage::RaftLogStorageExt::blocking_append(&mut log, entries.clone()).await.unwrap();
        sm.apply(entries).await.unwrap();
    }
    let full = std::fs::read(&path).unwrap();
    for frac in [1usize, 2, 3, 5, 7] {
        let cut = full.len() * frac / 8;
        let p = dir.path().join(format!("cut{frac}.redb"));
        std::fs::write(&p, &full[..cut]).unwrap();
        let p2 = p.clone();
        let res = tokio::task::spawn_blocking(move || raft::open(&p2)).await;
        let res = res.expect("open must not panic");
        if let Ok((mut log, _sm)) = res {
            let st = log.get_log_state().await;
            if let Ok(st) = st {
                assert!(st.last_log_id.is_some(), "cut at {cut} of {}: store opened with an empty log", full.len());
            }
        }
    }
}
