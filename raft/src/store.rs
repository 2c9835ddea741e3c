//! The Raft log and the state machine, both in one redb file (`raft.redb` in the node's data
//! directory). Every write transaction runs on one thread of the store's (`raft-log`), in
//! submission order: one `append` is one durable transaction however many entries it carries;
//! applied state is written in batches, at most [`SM_WRITE_DELAY`] after its apply, and at
//! once with a snapshot.
//!
//! Tables: `raft_log` (index → entry), `raft_meta` (vote, committed, last purged),
//! `sm_data` ((namespace, key) → value), `sm_meta` (last applied, membership), `snapshot`
//! (the current snapshot's meta and bytes). Every value is a versioned postcard record.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::codec::{decode, encode};
use crate::types::{ClusterState, Command, Node, NodeId, Response, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SM_DATA: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("sm_data");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

type SE = StorageError<NodeId>;

/// One stage of a write's way through this node, for `cargo xtask bench propagation
/// --stages`: a DEBUG event on target `corral_stage` (off unless RUST_LOG enables it), logged
/// when the stage ends, with the log indexes it covered and how long it took.
macro_rules! stage {
    ($name:literal, $first:expr, $last:expr, $t0:expr) => {
        tracing::debug!(
            target: "corral_stage",
            stage = $name,
            first = $first.unwrap_or(0),
            last = $last.unwrap_or(0),
            took_us = $t0.elapsed().as_micros() as u64,
        )
    };
}

/// Why the store could not be opened: always names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb refused the file (corrupt, truncated, locked by another process, unreadable).
    #[error("raft store {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// redb's reason.
        reason: String,
    },
    /// A zero-length file: a truncation, never a valid empty store (redb writes a header).
    #[error("raft store {path}: file is empty (truncated?); refusing to start with an empty log. Move it away to re-join as a new node")]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// A record inside the file does not decode.
    #[error("raft store {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which record and why.
        reason: String,
    },
}

fn read_logs_err(e: impl ToString) -> SE {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}
fn write_logs_err(e: impl ToString) -> SE {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}
fn sm_read_err(e: impl ToString) -> SE {
    StorageIOError::read_state_machine(AnyError::error(e.to_string())).into()
}
fn sm_write_err(e: impl ToString) -> SE {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

/// Opens (or creates) the store at `path` and returns its two halves. Refuses files that are
/// empty, corrupt, or whose records do not decode, so a damaged store is an error at start-up
/// rather than a node that silently rejoins with an empty log.
pub fn open(path: &Path) -> Result<(LogStore, StateMachine), StoreError> {
    if let Ok(md) = std::fs::metadata(path) {
        if md.len() == 0 {
            return Err(StoreError::EmptyFile { path: path.to_path_buf() });
        }
    }
    let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let db = Database::create(path).map_err(|e| open_err(&e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The state holds the cluster CA key and join token hashes.
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    let txn = db.begin_write().map_err(|e| open_err(&e))?;
    for t in [META, SM_META, SNAPSHOT] {
        txn.open_table(t).map_err(|e| open_err(&e))?;
    }
    txn.open_table(LOG).map_err(|e| open_err(&e))?;
    txn.open_table(SM_DATA).map_err(|e| open_err(&e))?;
    txn.commit().map_err(|e| open_err(&e))?;
    let db = Arc::new(db);
    let corrupt = |reason: String| StoreError::Corrupt { path: path.to_path_buf(), reason };

    // Check every fixed record and the log's ends decode now, not at the first election.
    let log = LogStore {
        db: db.clone(),
        committed: Default::default(),
        recent: Default::default(),
        writer: LogWriter::start().map_err(|e| open_err(&e))?,
        append_delay_us: Default::default(),
        inline_appends: Default::default(),
        inline_done: Default::default(),
    };
    (|| -> Result<(), SE> {
        log.meta::<Vote<NodeId>>("vote")?;
        log.meta::<Option<LogId<NodeId>>>("committed")?;
        log.meta::<LogId<NodeId>>("last_purged")?;
        log.last_log_id()?;
        if let Some(i) = log.first_index()? {
            log.read_range((Bound::Included(i), Bound::Included(i)))?;
        }
        Ok(())
    })()
    .map_err(|e| corrupt(e.to_string()))?;
    let inner = load_state_machine(&db).map_err(|e| corrupt(e.to_string()))?;
    let (tx, _) = watch::channel(Arc::new(inner.state.clone()));
    let sm = StateMachine {
        writer: Arc::new(log.writer.clone()),
        db,
        inner: Arc::new(RwLock::new(inner)),
        published: Arc::new(tx),
        listeners: Arc::default(),
        unwritten: Arc::default(),
    };
    Ok((log, sm))
}

/// The log half: entries, vote, committed pointer, purge point.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The newest commit index openraft reported; written to disk with the next log append.
    committed: Arc<std::sync::Mutex<Option<LogId<NodeId>>>>,
    /// The newest entries, shared with the log readers, from the moment they are handed to
    /// the writer (durable or about to be). Every change is read back right after its append
    /// (by the leader's replication to each follower, which since the openraft patch starts
    /// before the leader's own flush, and by every node's state machine); answering those from
    /// memory skips a redb read transaction and a decode each time.
    recent: Arc<std::sync::Mutex<RecentEntries>>,
    /// The thread that runs every log write, in the order submitted.
    writer: LogWriter,
    /// Test hook ([`LogStore::delay_appends`]): extra time each append's write takes.
    append_delay_us: Arc<std::sync::atomic::AtomicU64>,
    /// Whether an append may run on the caller's thread ([`LogStore::set_inline_appends`]).
    inline_appends: Arc<std::sync::atomic::AtomicBool>,
    /// How many appends ran on the caller's thread ([`LogStore::inline_appends_done`]).
    inline_done: Arc<std::sync::atomic::AtomicU64>,
}

/// One thread that runs the store's redb write transactions (the log's, and the state
/// machine's deferred writes and snapshots) in the order they were submitted.
///
/// A leader's append is no longer awaited by openraft before it replicates
/// (vendor/openraft/CORRAL-PATCH.md), so a second append, a truncate or a vote can be submitted
/// while a write is still running; one queue keeps them in order, which `spawn_blocking` does
/// not promise. It also replaces the blocking pool's hand-off on every append (a follower's
/// append skips it when nothing is queued: [`LogStore::set_inline_appends`]). The thread ends
/// when the last [`LogStore`] clone is dropped; a job that panics ends it too, and every later
/// write then fails (no write is ever skipped, which would leave a hole in the log).
#[derive(Clone)]
struct LogWriter {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
    /// Jobs submitted and not yet finished (queued or running).
    pending: Arc<std::sync::atomic::AtomicUsize>,
}

impl LogWriter {
    fn start() -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let left = pending.clone();
        std::thread::Builder::new().name("raft-log".into()).spawn(move || {
            while let Ok(job) = rx.recv() {
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                left.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                if res.is_err() {
                    // Stop here: every later write fails instead of leaving a hole in the log.
                    tracing::error!("the raft log writer panicked; the node's Raft log takes no more writes");
                    return;
                }
            }
        })?;
        Ok(Self { jobs: tx, pending })
    }

    /// Queues `job` behind every write submitted before it.
    fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), SE> {
        self.pending.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.jobs.send(Box::new(job)).map_err(|_| {
            self.pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            write_logs_err("the raft log writer thread has stopped")
        })
    }

    /// Whether every job submitted so far has finished: a write run elsewhere now cannot
    /// overtake one of them.
    fn idle(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    /// Runs `f` behind every write submitted before it and returns its result.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T, SE> + Send + 'static) -> Result<T, SE> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(move || {
            let _ = tx.send(f());
        })?;
        rx.await.map_err(|_| write_logs_err("the raft log writer thread stopped during a write"))?
    }

    /// Returns once every write submitted so far is done, so that redb holds it.
    async fn settled(&self) -> Result<(), SE> {
        self.run(|| Ok(())).await
    }
}

/// Keeps [`LogStore::set_inline_appends`] on while `raft` is not the leader, off while it is.
/// Ends when `raft` shuts down.
pub fn inline_appends_unless_leader(log: &LogStore, raft: &crate::Raft) -> tokio::task::JoinHandle<()> {
    let mut roles = raft.server_metrics();
    let log = log.clone();
    tokio::spawn(async move {
        loop {
            let leader = roles.borrow_and_update().state == openraft::ServerState::Leader;
            log.set_inline_appends(!leader);
            if roles.changed().await.is_err() {
                return;
            }
        }
    })
}

/// How many of the newest entries [`RecentEntries`] keeps.
const RECENT_ENTRIES: usize = 256;

/// A copy of the newest log entries (contiguous indexes). Entries go in when their append is
/// submitted to the writer; a failed write empties it; truncate and purge take theirs out
/// before touching redb.
#[derive(Default)]
struct RecentEntries(std::collections::VecDeque<Entry<TypeConfig>>);

impl RecentEntries {
    fn first_index(&self) -> Option<u64> {
        self.0.front().map(|e| e.log_id.index)
    }

    fn push(&mut self, entries: Vec<Entry<TypeConfig>>) {
        for e in entries {
            // Keep the indexes contiguous: an entry that does not follow the newest one
            // (after a truncate or purge emptied part of the cache) starts a new run.
            if self.0.back().is_some_and(|b| b.log_id.index + 1 != e.log_id.index) {
                self.0.clear();
            }
            self.0.push_back(e);
        }
        while self.0.len() > RECENT_ENTRIES {
            self.0.pop_front();
        }
    }

    /// Drops entries at and after `index`.
    fn truncate(&mut self, index: u64) {
        while self.0.back().is_some_and(|b| b.log_id.index >= index) {
            self.0.pop_back();
        }
    }

    /// Drops entries at and before `index`.
    fn purge(&mut self, index: u64) {
        while self.0.front().is_some_and(|f| f.log_id.index <= index) {
            self.0.pop_front();
        }
    }

    /// The entries `start..end`, if all of them are here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.first_index()?;
        if start < first || end < start || end > first + self.0.len() as u64 {
            return None;
        }
        Some(self.0.range((start - first) as usize..(end - first) as usize).cloned().collect())
    }
}

impl LogStore {
    /// Runs `f` on the thread that writes the log, behind the writes queued so far: for
    /// settings of that thread itself, such as its scheduling policy (`[node]
    /// realtime_priority` in corrald). Dropped if the writer has stopped.
    pub fn on_writer_thread(&self, f: impl FnOnce() + Send + 'static) {
        let _ = self.writer.submit(f);
    }

    /// Lets log appends run on the calling task's thread instead of the writer thread, when no
    /// other write is queued or running (so the order of writes is kept).
    ///
    /// For a follower: it cannot answer the leader before its append is durable, and has
    /// nothing more urgent to do meanwhile, so handing the write to the writer thread and
    /// being woken when it is done only adds two thread wake-ups to every change's path (on
    /// 2 emulated CPUs shared by five directors they were 1.5–2 ms of a follower's 3.5 ms
    /// append; docs/BENCHMARKS.md, propagation Round 11). A leader keeps the writer thread:
    /// it replicates while its own append is written. [`inline_appends_unless_leader`] keeps
    /// this in step with the node's role. The price is that the caller's thread (corrald's
    /// runtime, with gossip and the admin API) waits for the durable write.
    pub fn set_inline_appends(&self, on: bool) {
        self.inline_appends.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// For tests: how many appends ran on the caller's thread since the store was opened.
    #[doc(hidden)]
    pub fn inline_appends_done(&self) -> u64 {
        self.inline_done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// For tests: makes every later log append's write take `by` longer (a slow disk), to
    /// show what a leader does while its own write is outstanding. Shared by every clone.
    #[doc(hidden)]
    pub fn delay_appends(&self, by: std::time::Duration) {
        self.append_delay_us.store(by.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, SE> {
        let txn = self.db.begin_read().map_err(read_logs_err)?;
        let t = txn.open_table(META).map_err(read_logs_err)?;
        match t.get(key).map_err(read_logs_err)? {
            None => Ok(None),
            Some(v) => decode(&format!("raft_meta/{key}"), v.value())
                .map(Some)
                .map_err(read_logs_err),
        }
    }

    async fn put_meta<T: Serialize>(&self, key: &'static str, value: &T, vote: bool) -> Result<(), SE> {
        let bytes = encode(key, value).map_err(write_logs_err)?;
        let db = self.db.clone();
        self.writer.run(move || {
            let err = |e: &dyn std::fmt::Display| {
                if vote {
                    SE::from(StorageIOError::write_vote(AnyError::error(e.to_string())))
                } else {
                    write_logs_err(e)
                }
            };
            let txn = db.begin_write().map_err(|e| err(&e))?;
            txn.open_table(META)
                .map_err(|e| err(&e))?
                .insert(key, bytes.as_slice())
                .map_err(|e| err(&e))?;
            txn.commit().map_err(|e| err(&e))
        })
        .await
    }

    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, SE> {
        let txn = self.db.begin_read().map_err(read_logs_err)?;
        let t = txn.open_table(LOG).map_err(read_logs_err)?;
        let last = match t.last().map_err(read_logs_err)? {
            Some((k, v)) => Some(decode_entry(k.value(), v.value())?.log_id),
            None => None,
        };
        Ok(last)
    }

    fn read_range(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry<TypeConfig>>, SE> {
        let txn = self.db.begin_read().map_err(read_logs_err)?;
        let t = txn.open_table(LOG).map_err(read_logs_err)?;
        let mut out = Vec::new();
        for item in t.range::<u64>(range).map_err(read_logs_err)? {
            let (k, v) = item.map_err(read_logs_err)?;
            out.push(decode_entry(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn first_index(&self) -> Result<Option<u64>, SE> {
        let txn = self.db.begin_read().map_err(read_logs_err)?;
        let t = txn.open_table(LOG).map_err(read_logs_err)?;
        let first = t.first().map_err(read_logs_err)?.map(|(k, _)| k.value());
        Ok(first)
    }
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>, SE> {
    let e: Entry<TypeConfig> =
        decode(&format!("raft log entry {index}"), bytes).map_err(|e| {
            SE::from(StorageIOError::read_log_at_index(index, AnyError::error(e.to_string())))
        })?;
    if e.log_id.index != index {
        return Err(StorageIOError::read_log_at_index(
            index,
            AnyError::error(format!("entry stored at index {index} says it is {}", e.log_id.index)),
        )
        .into());
    }
    Ok(e)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SE> {
        let exclusive_end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        let inclusive_start = match range.start_bound() {
            Bound::Included(&s) => Some(s),
            Bound::Excluded(&s) => s.checked_add(1),
            Bound::Unbounded => None,
        };
        if let (Some(s), Some(e)) = (inclusive_start, exclusive_end) {
            if let Some(hit) = self.recent.lock().unwrap_or_else(|p| p.into_inner()).get(s, e) {
                return Ok(hit);
            }
        }
        // Not all in memory: read redb once every write submitted so far is in it (a range
        // reaching into an append still being written would otherwise come back short).
        self.writer.settled().await?;
        let start = match range.start_bound() {
            Bound::Included(&s) => Bound::Included(s),
            Bound::Excluded(&s) => Bound::Excluded(s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&s) => Bound::Included(s),
            Bound::Excluded(&s) => Bound::Excluded(s),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.read_range((start, end))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SE> {
        self.writer.settled().await?;
        let last_purged: Option<LogId<NodeId>> = self.meta("last_purged")?;
        let last = self.last_log_id()?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SE> {
        self.put_meta("vote", vote, true).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SE> {
        self.meta("vote")
    }

    /// Kept in memory and written by the next log append's transaction. openraft calls this
    /// before every apply on every node; its own write transaction (a disk sync) sat on the
    /// way of each change to the directors. The record only lets a restarted node re-apply
    /// committed entries before it hears from a leader, and an older commit index is still a
    /// true one (the rest is learnt from the leader as usual).
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SE> {
        let i = committed.map(|c| c.index);
        let t0 = std::time::Instant::now();
        let mut g = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        if committed > *g {
            *g = committed;
        }
        stage!("save_committed", i, i, t0);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SE> {
        let stored = self.meta::<Option<LogId<NodeId>>>("committed")?.flatten();
        let pending = *self.committed.lock().unwrap_or_else(|p| p.into_inner());
        Ok(stored.max(pending))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SE>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        let mut kept = Vec::new();
        for e in entries {
            let bytes = encode("raft log entry", &e).map_err(write_logs_err)?;
            rows.push((e.log_id.index, bytes));
            kept.push(e);
        }
        let (first, last) = (rows.first().map(|r| r.0), rows.last().map(|r| r.0));
        let committed = *self.committed.lock().unwrap_or_else(|p| p.into_inner());
        let committed = match committed {
            Some(c) => Some(encode("committed", &Some(c)).map_err(write_logs_err)?),
            None => None,
        };
        let t0 = std::time::Instant::now();
        let db = self.db.clone();
        let recent = self.recent.clone();
        let delay = self.append_delay_us.load(std::sync::atomic::Ordering::Relaxed);
        // Readable before it is durable: a leader replicates it while this write runs. Only a
        // majority's durable copies commit it (the leader counts its own at the callback).
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).push(kept);
        let inline = self.inline_appends.load(std::sync::atomic::Ordering::Relaxed) && self.writer.idle();
        let job = move || {
            if delay > 0 {
                std::thread::sleep(std::time::Duration::from_micros(delay));
            }
            let t1 = std::time::Instant::now();
            let res = (|| {
                let txn = db.begin_write().map_err(write_logs_err)?;
                {
                    let mut t = txn.open_table(LOG).map_err(write_logs_err)?;
                    for (i, b) in &rows {
                        t.insert(*i, b.as_slice()).map_err(write_logs_err)?;
                    }
                    if let Some(c) = &committed {
                        txn.open_table(META).map_err(write_logs_err)?.insert("committed", c.as_slice()).map_err(write_logs_err)?;
                    }
                }
                let t2 = std::time::Instant::now();
                let r = txn.commit().map_err(write_logs_err);
                stage!("append_fill", first, last, t1);
                stage!("append_commit", first, last, t2);
                r
            })();
            // Release the database before telling openraft: whoever waits for this append may
            // close the store next and reopen the file, which needs every handle gone.
            drop(db);
            if res.is_err() {
                // What redb holds is unknown now: read it from redb from here on.
                recent.lock().unwrap_or_else(|p| p.into_inner()).0.clear();
            }
            stage!("append", first, last, t0);
            match res {
                Ok(()) => callback.log_io_completed(Ok(())),
                Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
            }
        };
        if inline {
            self.inline_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // As on the writer thread, a panicking write fails the append instead of
            // unwinding through openraft.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                .map_err(|_| write_logs_err("the raft log append panicked"))
        } else {
            self.writer.submit(job)
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SE> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).truncate(log_id.index);
        let db = self.db.clone();
        self.writer.run(move || {
            let txn = db.begin_write().map_err(write_logs_err)?;
            txn.open_table(LOG)
                .map_err(write_logs_err)?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_logs_err)?;
            txn.commit().map_err(write_logs_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SE> {
        let bytes = encode("last_purged", &log_id).map_err(write_logs_err)?;
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).purge(log_id.index);
        let db = self.db.clone();
        self.writer.run(move || {
            let txn = db.begin_write().map_err(write_logs_err)?;
            txn.open_table(META)
                .map_err(write_logs_err)?
                .insert("last_purged", bytes.as_slice())
                .map_err(write_logs_err)?;
            txn.open_table(LOG)
                .map_err(write_logs_err)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_logs_err)?;
            txn.commit().map_err(write_logs_err)
        })
        .await
    }
}

struct SmInner {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    state: ClusterState,
    snapshot_seq: u64,
}

fn load_state_machine(db: &Database) -> Result<SmInner, SE> {
    let txn = db.begin_read().map_err(sm_read_err)?;
    let meta = txn.open_table(SM_META).map_err(sm_read_err)?;
    let get = |key: &str| -> Result<Option<Vec<u8>>, SE> {
        Ok(meta.get(key).map_err(sm_read_err)?.map(|v| v.value().to_vec()))
    };
    let last_applied: Option<LogId<NodeId>> = match get("last_applied")? {
        Some(b) => decode("sm_meta/last_applied", &b).map_err(sm_read_err)?,
        None => None,
    };
    let membership: StoredMembership<NodeId, Node> = match get("membership")? {
        Some(b) => decode("sm_meta/membership", &b).map_err(sm_read_err)?,
        None => StoredMembership::default(),
    };
    let mut state = ClusterState {
        revision: last_applied.map(|l| l.index).unwrap_or(0),
        data: BTreeMap::new(),
    };
    let data = txn.open_table(SM_DATA).map_err(sm_read_err)?;
    for item in data.iter().map_err(sm_read_err)? {
        let (k, v) = item.map_err(sm_read_err)?;
        let (ns, key) = k.value();
        state
            .data
            .entry(ns.to_string())
            .or_default()
            .insert(key.to_string(), v.value().to_vec());
    }
    // The snapshot record must decode too; a broken one would only surface when a follower
    // needs it.
    let snap = txn.open_table(SNAPSHOT).map_err(sm_read_err)?;
    if let Some(m) = snap.get("meta").map_err(sm_read_err)? {
        decode::<SnapshotMeta<NodeId, Node>>("snapshot/meta", m.value()).map_err(sm_read_err)?;
    }
    Ok(SmInner { last_applied, membership, state, snapshot_seq: 0 })
}

/// A function called with every newly published state, on the applying task.
type Listener = Box<dyn Fn(&Arc<ClusterState>) + Send + Sync>;

/// The state-machine half. Applied state is persisted in the same transaction as its
/// last-applied pointer, and published to readers on a `watch` channel after each commit.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    /// The log's writer thread, shared: state writes queue behind log writes instead of
    /// contending for redb's single write lock from another thread. That thread may be
    /// real-time while the blocking pool is not, so a blocking-pool write holding the lock
    /// could stall the next log append behind every busy real-time thread.
    writer: Arc<LogWriter>,
    inner: Arc<RwLock<SmInner>>,
    published: Arc<watch::Sender<Arc<ClusterState>>>,
    listeners: Arc<std::sync::Mutex<Vec<Listener>>>,
    unwritten: Arc<std::sync::Mutex<Unwritten>>,
}

/// How long applied state waits in memory before its redb write; applies arriving meanwhile
/// share one transaction (etcd batches its backend commits the same way, every 100 ms). The
/// write is not needed for anything right away: readers have the state from memory, and after
/// a crash openraft re-applies from the durable log whatever the state on disk lacks. Each
/// write is a redb transaction of its own (~0.85 ms of CPU per node under TCG, 8 % of a
/// 5-director change's CPU when every change had one), so a second's batch makes it rare.
const SM_WRITE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Applied state not yet written to redb, in apply order.
#[derive(Default)]
struct Pending {
    cmds: Vec<(LogId<NodeId>, Command)>,
    last_applied: Option<Vec<u8>>,
    membership: Option<Vec<u8>>,
}

/// The deferred state-machine write: what is pending and whether a write is on its way.
#[derive(Default)]
struct Unwritten {
    pending: Pending,
    /// A write is scheduled (one at a time).
    scheduled: bool,
    /// A deferred write failed: reported as a storage error by the next apply, which stops Raft
    /// as a failed write always has.
    failed: Option<String>,
}

impl Unwritten {
    /// What is pending, leaving nothing pending and no write scheduled.
    fn take(shared: &std::sync::Mutex<Unwritten>) -> Pending {
        let mut u = shared.lock().unwrap_or_else(|p| p.into_inner());
        u.scheduled = false;
        std::mem::take(&mut u.pending)
    }
}

impl Pending {
    /// Writes what is pending into `txn` (which must be the current write transaction, so the
    /// order of writes is the order of transactions).
    fn write_into(self, txn: &redb::WriteTransaction) -> Result<(), SE> {
        let Some(last_applied) = self.last_applied else { return Ok(()) };
        let mut data = txn.open_table(SM_DATA).map_err(sm_write_err)?;
        for (id, cmd) in &self.cmds {
            write_command(&mut data, cmd)
                .map_err(|err| SE::from(StorageIOError::apply(*id, AnyError::error(err.to_string()))))?;
        }
        let mut meta = txn.open_table(SM_META).map_err(sm_write_err)?;
        meta.insert("last_applied", last_applied.as_slice()).map_err(sm_write_err)?;
        if let Some(m) = &self.membership {
            meta.insert("membership", m.as_slice()).map_err(sm_write_err)?;
        }
        Ok(())
    }
}

impl StateMachine {
    /// Readers (reconciler, admin API) watch this: it changes after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.published.subscribe()
    }

    /// The state as of now.
    pub fn current(&self) -> Arc<ClusterState> {
        self.published.borrow().clone()
    }

    /// Calls `f` with the current state now and with every state published after it, on the
    /// task that applies the log, before any `watch` reader can wake. For a reader on its own
    /// thread (the director): it hears of a committed change without a hop through a task on
    /// the node's runtime, which is busy answering the client at that very moment. `f` must
    /// only hand the state over (e.g. a channel send), never block.
    pub fn on_publish(&self, f: impl Fn(&Arc<ClusterState>) + Send + Sync + 'static) {
        let mut l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        f(&self.published.borrow());
        l.push(Box::new(f));
    }

    /// Writes applied state still waiting for its deferred write now (on shutdown: a restart
    /// then starts from the newest state instead of re-applying entries from the log).
    pub async fn write_pending(&self) -> Result<(), SE> {
        write_unwritten(&self.writer, self.db.clone(), self.unwritten.clone()).await
    }

    fn publish(&self) {
        let state = Arc::new(self.inner.read().unwrap_or_else(|p| p.into_inner()).state.clone());
        // Listeners first and under their lock, so one registering now sees either this state
        // in its first call or this call, never neither.
        let l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        for f in l.iter() {
            f(&state);
        }
        self.published.send_replace(state);
    }
}

/// Writes the applied state still held in memory (see [`SM_WRITE_DELAY`]) in one
/// transaction. Applied state need not be durable at once: the log is (every append is an
/// Immediate commit), and after a crash redb reopens at the last durable commit, a
/// consistent older state whose last_applied makes openraft re-apply the rest from the log.
/// Snapshots write what is pending and commit durably, and the log is only purged behind a
/// snapshot, so the state on disk never falls behind the purge point.
async fn write_unwritten(
    writer: &LogWriter,
    db: Arc<Database>,
    unwritten: Arc<std::sync::Mutex<Unwritten>>,
) -> Result<(), SE> {
    writer.run(move || {
        let mut txn = db.begin_write().map_err(sm_write_err)?;
        txn.set_durability(redb::Durability::None).map_err(sm_write_err)?;
        // Taken inside the transaction: writes land in the order of transactions.
        Unwritten::take(&unwritten).write_into(&txn)?;
        txn.commit().map_err(sm_write_err)
    })
    .await
}

fn write_command(
    t: &mut redb::Table<(&str, &str), &[u8]>,
    cmd: &Command,
) -> Result<(), redb::StorageError> {
    match cmd {
        Command::Put { ns, key, value } => {
            t.insert((ns.as_str(), key.as_str()), value.as_slice())?;
        }
        Command::Delete { ns, key } => {
            t.remove((ns.as_str(), key.as_str()))?;
        }
        Command::Replace { ns, entries } => {
            let mut old = Vec::new();
            for item in t.range((ns.as_str(), "")..)? {
                let (k, _) = item?;
                let (kns, key) = k.value();
                if kns != ns {
                    break;
                }
                old.push(key.to_string());
            }
            for key in old {
                t.remove((ns.as_str(), key.as_str()))?;
            }
            for (key, value) in entries {
                t.insert((ns.as_str(), key.as_str()), value.as_slice())?;
            }
        }
        Command::Batch(cmds) => {
            for c in cmds {
                write_command(t, c)?;
            }
        }
    }
    Ok(())
}

/// The persisted body of a snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    state: ClusterState,
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), SE> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, SE>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let mut membership = None;
        for e in &entries {
            if let EntryPayload::Membership(m) = &e.payload {
                membership = Some(StoredMembership::new(Some(e.log_id), m.clone()));
            }
        }
        let last_bytes = encode("last_applied", &Some(last)).map_err(sm_write_err)?;
        let mem_bytes = match &membership {
            Some(m) => Some(encode("membership", m).map_err(sm_write_err)?),
            None => None,
        };
        let t0 = std::time::Instant::now();
        let first = entries.first().map(|e| e.log_id.index);
        let mut out = Vec::with_capacity(entries.len());
        {
            let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
            for e in entries.iter() {
                if let EntryPayload::Normal(cmd) = &e.payload {
                    g.state.apply(cmd);
                }
                out.push(Response { revision: e.log_id.index });
            }
            g.last_applied = Some(last);
            g.state.revision = last.index;
            if let Some(m) = membership {
                g.membership = m;
            }
        }
        // Readers (the director above all) get the new state before it is written: it is
        // the committed log's, whatever happens to this node's copy. A failed write stops
        // Raft (openraft treats it as a storage error) and a restart re-applies from the log.
        self.publish();
        stage!("apply", first, Some(last.index), t0);
        let mut u = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = &u.failed {
            return Err(sm_write_err(format!("an earlier state-machine write failed: {e}")));
        }
        for e in entries {
            if let EntryPayload::Normal(cmd) = e.payload {
                u.pending.cmds.push((e.log_id, cmd));
            }
        }
        u.pending.last_applied = Some(last_bytes);
        if mem_bytes.is_some() {
            u.pending.membership = mem_bytes;
        }
        if !u.scheduled {
            u.scheduled = true;
            // Weak: a store being closed (tests reopen it) is not held open by the timer; its
            // owner writes what is pending with `write_pending` first.
            let db = Arc::downgrade(&self.db);
            let writer = Arc::downgrade(&self.writer);
            let unwritten = self.unwritten.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SM_WRITE_DELAY).await;
                let (Some(db), Some(writer)) = (db.upgrade(), writer.upgrade()) else { return };
                if let Err(e) = write_unwritten(&writer, db, unwritten.clone()).await {
                    tracing::error!(error = %e, "state-machine write failed: Raft stops at the next apply");
                    unwritten.lock().unwrap_or_else(|p| p.into_inner()).failed = Some(e.to_string());
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SE> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SE> {
        let data = snapshot.into_inner();
        let snap_err = |e: &dyn std::fmt::Display| {
            SE::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error(e.to_string()),
            ))
        };
        let body: SnapshotBody = decode("received snapshot", &data).map_err(|e| snap_err(&e))?;
        let meta_bytes = encode("snapshot meta", meta).map_err(sm_write_err)?;
        let last_bytes = encode("last_applied", &meta.last_log_id).map_err(sm_write_err)?;
        let mem_bytes = encode("membership", &meta.last_membership).map_err(sm_write_err)?;
        let db = self.db.clone();
        let state = body.state.clone();
        let unwritten = self.unwritten.clone();
        self.writer.run(move || {
            let txn = db.begin_write().map_err(sm_write_err)?;
            // Whatever was applied before and not written yet is superseded by the snapshot.
            drop(Unwritten::take(&unwritten));
            txn.delete_table(SM_DATA).map_err(sm_write_err)?;
            {
                let mut t = txn.open_table(SM_DATA).map_err(sm_write_err)?;
                for (ns, m) in &state.data {
                    for (k, v) in m {
                        t.insert((ns.as_str(), k.as_str()), v.as_slice()).map_err(sm_write_err)?;
                    }
                }
                let mut sm = txn.open_table(SM_META).map_err(sm_write_err)?;
                sm.insert("last_applied", last_bytes.as_slice()).map_err(sm_write_err)?;
                sm.insert("membership", mem_bytes.as_slice()).map_err(sm_write_err)?;
                let mut s = txn.open_table(SNAPSHOT).map_err(sm_write_err)?;
                s.insert("meta", meta_bytes.as_slice()).map_err(sm_write_err)?;
                s.insert("data", data.as_slice()).map_err(sm_write_err)?;
            }
            txn.commit().map_err(sm_write_err)
        })
        .await?;
        {
            let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
            g.last_applied = meta.last_log_id;
            g.membership = meta.last_membership.clone();
            g.state = body.state;
            g.state.revision = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        }
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SE> {
        let txn = self.db.begin_read().map_err(sm_read_err)?;
        let t = txn.open_table(SNAPSHOT).map_err(sm_read_err)?;
        let (Some(m), Some(d)) = (
            t.get("meta").map_err(sm_read_err)?,
            t.get("data").map_err(sm_read_err)?,
        ) else {
            return Ok(None);
        };
        let meta: SnapshotMeta<NodeId, Node> =
            decode("snapshot/meta", m.value()).map_err(sm_read_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(d.value().to_vec())),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SE> {
        let (meta, data) = {
            let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
            g.snapshot_seq += 1;
            let snapshot_id = match g.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, g.snapshot_seq),
                None => format!("none-{}", g.snapshot_seq),
            };
            let meta = SnapshotMeta {
                last_log_id: g.last_applied,
                last_membership: g.membership.clone(),
                snapshot_id,
            };
            let data = encode("snapshot", &SnapshotBody { state: g.state.clone() })
                .map_err(sm_write_err)?;
            (meta, data)
        };
        let meta_bytes = encode("snapshot meta", &meta).map_err(sm_write_err)?;
        let db = self.db.clone();
        let stored = data.clone();
        let unwritten = self.unwritten.clone();
        self.writer.run(move || {
            let txn = db.begin_write().map_err(sm_write_err)?;
            // Applied state not yet written goes in this durable commit: the log may be purged
            // up to this snapshot, so the state on disk must be at least as new.
            Unwritten::take(&unwritten).write_into(&txn)?;
            {
                let mut s = txn.open_table(SNAPSHOT).map_err(sm_write_err)?;
                s.insert("meta", meta_bytes.as_slice()).map_err(sm_write_err)?;
                s.insert("data", stored.as_slice()).map_err(sm_write_err)?;
            }
            txn.commit().map_err(sm_write_err)
        })
        .await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    fn indexes(v: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    /// A listener hears the state it registered against at once, then every applied change,
    /// in order and before `watch` readers see it.
    #[tokio::test]
    async fn publish_listeners_hear_every_applied_state() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open(&dir.path().join("raft.redb")).unwrap();
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = heard.clone();
        let watcher = sm.subscribe();
        let w = watcher.clone();
        sm.on_publish(move |s| {
            // The watch still holds the previous state while listeners run.
            let before = w.borrow().revision;
            h.lock().unwrap().push((s.revision, s.get("a", "k").map(<[u8]>::to_vec), before));
        });
        sm.apply(vec![put(1, 7)]).await.unwrap();
        sm.apply(vec![put(2, 8), put(3, 9)]).await.unwrap();
        let heard = heard.lock().unwrap().clone();
        assert_eq!(heard.len(), 3, "initial state plus one per applied batch: {heard:?}");
        assert_eq!(heard[0].1, None);
        assert_eq!(heard[1].1, Some(vec![7]));
        assert_eq!(heard[2].1, Some(vec![9]));
        assert!(heard[1].0 < heard[2].0, "revisions grow: {heard:?}");
        assert_eq!(heard[2].2, heard[1].0, "listener ran before the watch moved on");
        assert_eq!(watcher.borrow().revision, heard[2].0);
    }

    fn put(i: u64, v: u8) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(Command::Put { ns: "a".into(), key: "k".into(), value: vec![v] }),
        }
    }

    /// Applied state reaches redb after SM_WRITE_DELAY (applies meanwhile in one write), or at
    /// once in a snapshot's transaction; a reopened store has it either way.
    #[tokio::test]
    async fn applied_state_is_written_after_the_delay_or_with_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let (_log, mut sm) = open(&path).unwrap();
            sm.apply(vec![put(1, 7)]).await.unwrap();
            sm.apply(vec![put(2, 8)]).await.unwrap();
            assert!(sm.unwritten.lock().unwrap().scheduled, "one write scheduled for both");
            tokio::time::sleep(SM_WRITE_DELAY + std::time::Duration::from_millis(300)).await;
            assert!(sm.unwritten.lock().unwrap().pending.last_applied.is_none(), "written");
        }
        {
            let (_log, mut sm) = open(&path).unwrap();
            assert_eq!(sm.current().get("a", "k"), Some(&[8u8][..]));
            assert_eq!(sm.applied_state().await.unwrap().0.map(|l| l.index), Some(2));
            sm.apply(vec![put(3, 9)]).await.unwrap();
            let snap = sm.build_snapshot().await.unwrap();
            assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(3));
            assert!(sm.unwritten.lock().unwrap().pending.last_applied.is_none(), "the snapshot wrote it");
        }
        // The scheduled write (now with nothing to do) may still hold the database briefly.
        tokio::time::sleep(SM_WRITE_DELAY + std::time::Duration::from_millis(300)).await;
        let (_log, mut sm) = open(&path).unwrap();
        assert_eq!(sm.current().get("a", "k"), Some(&[9u8][..]));
        assert_eq!(sm.applied_state().await.unwrap().0.map(|l| l.index), Some(3));
    }

    #[test]
    fn recent_entries_answer_only_ranges_they_hold_whole() {
        let mut r = RecentEntries::default();
        assert_eq!(indexes(r.get(1, 2)), None);
        r.push((5..=9).map(entry).collect());
        assert_eq!(indexes(r.get(6, 8)), Some(vec![6, 7]));
        assert_eq!(indexes(r.get(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(r.get(4, 6)), None, "starts before the cache");
        assert_eq!(indexes(r.get(9, 11)), None, "ends after the cache");
        // Truncate drops the tail; a later append continues from the cut.
        r.truncate(8);
        assert_eq!(indexes(r.get(7, 9)), None);
        r.push(vec![entry(8)]);
        assert_eq!(indexes(r.get(7, 9)), Some(vec![7, 8]));
        // Purge drops the head.
        r.purge(6);
        assert_eq!(indexes(r.get(6, 7)), None);
        assert_eq!(indexes(r.get(7, 8)), Some(vec![7]));
        // A gap starts a new run: nothing before it is answered from memory.
        r.push(vec![entry(20)]);
        assert_eq!(indexes(r.get(7, 8)), None);
        assert_eq!(indexes(r.get(20, 21)), Some(vec![20]));
        // The cache is bounded.
        r.push((21..21 + 2 * RECENT_ENTRIES as u64).map(entry).collect());
        assert_eq!(r.0.len(), RECENT_ENTRIES);
    }
}
