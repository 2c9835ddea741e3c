//! keepalived's `notify_fifo`: a line per VRRP state change, written to a FIFO that a local
//! program reads instead of being started for every change (`INSTANCE "VI_1" MASTER 150`,
//! `GROUP "G1" BACKUP 0`; STOP and DELETED as `notify` gets them). The form is keepalived's, so
//! a reader written for keepalived's FIFO works unchanged.
//!
//! The FIFO is opened read-write and non-blocking: opening never waits for a reader, a line
//! written before the reader opens waits in the pipe, and a write never blocks the VRRP
//! thread. A line that does not fit (the reader stopped reading and 64 KiB are queued) is
//! dropped and counted (`corral_vrrp_notify_fifo_dropped_total`), never waited for.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The open FIFO, if `[node] notify_fifo` is set.
static FIFO: Mutex<Option<Fifo>> = Mutex::new(None);
static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Fifo {
    path: PathBuf,
    file: std::fs::File,
    /// (device, inode) of what was opened: a FIFO removed and made again under the same path
    /// is another one.
    id: (u64, u64),
}

/// Opens `path` (made, mode 0600, if missing) for the lines to come; `None` closes it. Called
/// at start and on reload (the same path keeps its open FIFO). A path that exists and is not a
/// FIFO is refused, naming it. With `group`, the FIFO gets that group and mode 0660.
pub fn open(path: Option<&Path>, group: Option<&str>) -> Result<(), String> {
    let mut slot = FIFO.lock().unwrap_or_else(|p| p.into_inner());
    let Some(path) = path else {
        *slot = None;
        return Ok(());
    };
    let on_disk = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    if slot.as_ref().is_some_and(|f| f.path == path && Some(f.id) == on_disk) {
        return give_group(path, group);
    }
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(format!("notify_fifo {}: cannot make the FIFO: {e}", path.display())),
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("notify_fifo {}: {e}", path.display()))?;
    if !meta.file_type().is_fifo() {
        return Err(format!("notify_fifo {}: exists and is not a FIFO", path.display()));
    }
    give_group(path, group)?;
    // Read-write: opening does not wait for a reader, and the pipe outlives readers that go.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("notify_fifo {}: {e}", path.display()))?;
    *slot = Some(Fifo { path: path.to_owned(), file, id: (meta.dev(), meta.ino()) });
    Ok(())
}

/// With a group: the FIFO gets it, and mode 0660 (a reader in that group may open it).
fn give_group(path: &Path, group: Option<&str>) -> Result<(), String> {
    if let Some(g) = group {
        // Resolved as script_group is: a name or a number, never -1 ("no change" to chown).
        let gid = check::script_policy::lookup_group(g).map_err(|e| format!("notify_fifo_group: {e}"))?;
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| format!("notify_fifo {}: chown to group {g:?}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o660))
            .map_err(|e| format!("notify_fifo {}: chmod 0660: {e}", path.display()))?;
    }
    Ok(())
}

/// keepalived's line for a state change: `KIND "NAME" STATE PRIORITY`.
pub fn format_line(kind: &str, name: &str, state: &str, priority: u8) -> String {
    format!("{kind} \"{name}\" {state} {priority}\n")
}

/// Writes one line, whole or not at all (a line is far below PIPE_BUF, so a write is atomic),
/// if a FIFO is open.
pub fn write(kind: &str, name: &str, state: &str, priority: u8) {
    let slot = FIFO.lock().unwrap_or_else(|p| p.into_inner());
    let Some(f) = slot.as_ref() else { return };
    let line = format_line(kind, name, state, priority);
    let written = (&f.file).write(line.as_bytes());
    if !matches!(written, Ok(n) if n == line.len()) {
        let total = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
        if total == 1 || total.is_power_of_two() {
            let error = written.err().map_or_else(|| "a short write".to_owned(), |e| e.to_string());
            tracing::warn!(fifo = %f.path.display(), %error, "notify_fifo: a line dropped (is its reader running?); {total} so far");
        }
    }
}

/// Lines that could not be written.
pub fn dropped_total() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_keepalived_s_and_reach_a_reader_that_opens_later() {
        assert_eq!(format_line("INSTANCE", "VI_1", "MASTER", 150), "INSTANCE \"VI_1\" MASTER 150\n");
        let dir = std::env::temp_dir().join(format!("corral-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        open(Some(&path), None).unwrap();
        write("INSTANCE", "VI_1", "BACKUP", 100);
        write("GROUP", "G", "MASTER", 0);
        // The reader opens after the writes: the lines waited in the pipe.
        let mut r = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).unwrap();
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut r, &mut text);
        assert_eq!(text, "INSTANCE \"VI_1\" BACKUP 100\nGROUP \"G\" MASTER 0\n");
        // A full pipe drops lines instead of blocking.
        drop(r);
        let before = dropped_total();
        for _ in 0..5000 {
            write("INSTANCE", "VI_1", "MASTER", 150);
        }
        assert!(dropped_total() > before, "64 KiB hold fewer than 5000 lines: some must drop");
        // Not a FIFO: refused, named.
        let file = dir.join("plain");
        std::fs::write(&file, "").unwrap();
        let e = open(Some(&file), None).unwrap_err();
        assert!(e.contains("is not a FIFO") && e.contains("plain"), "{e}");
        // A group may read it: the FIFO gets the group and 0660 (giving a file to a group one is
        // not in takes root); an unknown group is named.
        if nix::unistd::geteuid().is_root() {
            open(Some(&path), Some("nogroup")).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap().gid.as_raw();
            assert_eq!((std::os::unix::fs::MetadataExt::gid(&meta), std::os::unix::fs::MetadataExt::mode(&meta) & 0o777), (nogroup, 0o660));
        } else {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "the notify_fifo_group check needs root under CI");
            eprintln!("SKIP: notify_fifo_group ownership (needs root)");
        }
        let e = open(Some(&path), Some("no-such-group-here")).unwrap_err();
        assert!(e.contains("no-such-group-here") && e.contains("no group named"), "{e}");
        assert!(open(Some(&path), Some("4294967295")).unwrap_err().contains("no group named"), "-1 is no group");
        open(None, None).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
