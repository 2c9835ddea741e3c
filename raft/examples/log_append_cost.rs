//! What one Raft log append costs in redb, alone: the transaction `LogStore::append` runs for
//! one rule change (one ≈ 300-byte entry into `raft_log`, the commit index into `raft_meta`,
//! one durable commit), timed in a loop. Under qemu's TCG the same loop costs ≈ 23× its
//! native time, about the factor of a whole rule change (docs/BENCHMARKS.md, propagation
//! Round 15), so the append is not slowed by anything around it in the lab.
//!
//! `cargo run --release -p raft --example log_append_cost -- [APPENDS] [--no-committed]`
//! (the database goes to `$TMPDIR`; keep it on tmpfs to time redb, not the disk).

use std::time::Instant;

use redb::{Database, TableDefinition};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut appends = 5000u64;
    let mut committed_row = true;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--no-committed" => committed_row = false,
            n => appends = n.parse().map_err(|_| format!("not a count of appends: {n:?}"))?,
        }
    }
    let dir = tempfile::tempdir()?;
    let db = Database::create(dir.path().join("log.redb"))?;
    let entry = vec![7u8; 300];
    let append = |i: u64| -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        {
            txn.open_table(LOG)?.insert(i, entry.as_slice())?;
            if committed_row {
                txn.open_table(META)?.insert("committed", &i.to_le_bytes()[..])?;
            }
        }
        txn.commit()?;
        // Keep the log short, as the snapshot policy's purges do.
        if i % 1000 == 999 {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?.retain_in(..i - 500, |_, _| false)?;
            txn.commit()?;
        }
        Ok(())
    };
    for i in 0..100 {
        append(i)?;
    }
    let t = Instant::now();
    for i in 100..100 + appends {
        append(i)?;
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / appends as f64;
    println!("LOG_APPEND appends={appends} committed_row={committed_row} us_per_append={per:.1}");
    Ok(())
}
