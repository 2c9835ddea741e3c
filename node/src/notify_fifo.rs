//! keepalived's notify FIFOs: a line per event, written to a FIFO that a local program reads
//! instead of being started for every event. Three, as keepalived has them: `notify_fifo` gets
//! every line, `vrrp_notify_fifo` the VRRP ones (`INSTANCE "VI_1" MASTER 150`, `GROUP "G1"
//! BACKUP 0`; STOP and DELETED as `notify` gets them), `lvs_notify_fifo` the LVS ones (`RS
//! [198.51.100.11]:tcp:80 [192.0.2.100]:tcp:80 DOWN`, `VS [192.0.2.100]:tcp:80 UP`: see
//! [`crate::lvs_events`], which says where its events differ from keepalived's). The forms are
//! keepalived's, so a reader written for keepalived's FIFOs parses them unchanged.
//!
//! A FIFO is opened read-write and non-blocking: opening never waits for a reader, a line
//! written before the reader opens waits in the pipe, and a write never blocks the VRRP
//! thread. A line that does not fit (the reader stopped reading and 64 KiB are queued) is
//! dropped and counted (`corral_vrrp_notify_fifo_dropped_total`,
//! `corral_lvs_notify_fifo_dropped_total`), never waited for.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The open FIFOs: `notify_fifo`, `vrrp_notify_fifo`, `lvs_notify_fifo`, in that order.
static FIFOS: Mutex<[Option<Fifo>; 3]> = Mutex::new([None, None, None]);
const ALL: usize = 0;
const VRRP: usize = 1;
const LVS: usize = 2;
/// Whether a FIFO takes LVS lines: read for every applied state ([`crate::lvs_events::follow`]),
/// so a node without one does no more than that read.
static LVS_WANTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static DROPPED_VRRP: AtomicU64 = AtomicU64::new(0);
static DROPPED_LVS: AtomicU64 = AtomicU64::new(0);

struct Fifo {
    path: PathBuf,
    file: std::fs::File,
    /// (device, inode) of what was opened: a FIFO removed and made again under the same path
    /// is another one.
    id: (u64, u64),
}

/// Where the three FIFOs are (`None`: not wanted), and the group that may read them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Paths<'a> {
    pub all: Option<&'a Path>,
    pub vrrp: Option<&'a Path>,
    pub lvs: Option<&'a Path>,
    /// `notify_fifo_group`: each FIFO gets this group and mode 0660.
    pub group: Option<&'a str>,
}

impl<'a> Paths<'a> {
    /// The `[node]` section's FIFOs.
    pub fn of(node: &'a crate::config::NodeSection) -> Paths<'a> {
        Paths {
            all: node.notify_fifo.as_deref(),
            vrrp: node.vrrp_notify_fifo.as_deref(),
            lvs: node.lvs_notify_fifo.as_deref(),
            group: node.notify_fifo_group.as_deref(),
        }
    }
}

/// Opens the FIFOs named (each made, mode 0600, if missing) for the lines to come and closes
/// the others. Called at start and on reload: a path already open keeps its FIFO, and if any
/// FIFO cannot be opened the FIFOs written to stay as they were (though FIFOs made or given
/// the group on the way remain so on disk). A path that exists and is not a FIFO is refused,
/// naming it.
pub fn open(paths: Paths<'_>) -> Result<(), String> {
    let mut slots = FIFOS.lock().unwrap_or_else(|p| p.into_inner());
    let wanted = [(paths.all, "notify_fifo"), (paths.vrrp, "vrrp_notify_fifo"), (paths.lvs, "lvs_notify_fifo")];
    let mut opened: [Option<Option<Fifo>>; 3] = [None, None, None];
    for (i, (path, key)) in wanted.into_iter().enumerate() {
        let Some(path) = path else {
            opened[i] = Some(None);
            continue;
        };
        let on_disk = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        if slots[i].as_ref().is_some_and(|f| f.path == path && Some(f.id) == on_disk) {
            give_group(key, path, paths.group)?;
            continue; // kept as it is
        }
        opened[i] = Some(Some(open_one(key, path, paths.group)?));
    }
    for (slot, new) in slots.iter_mut().zip(opened) {
        if let Some(new) = new {
            *slot = new;
        }
    }
    LVS_WANTED.store(slots[ALL].is_some() || slots[LVS].is_some(), Ordering::Relaxed);
    Ok(())
}

fn open_one(key: &str, path: &Path, group: Option<&str>) -> Result<Fifo, String> {
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(format!("{key} {}: cannot make the FIFO: {e}", path.display())),
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if !meta.file_type().is_fifo() {
        return Err(format!("{key} {}: exists and is not a FIFO", path.display()));
    }
    give_group(key, path, group)?;
    // Read-write: opening does not wait for a reader, and the pipe outlives readers that go.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    Ok(Fifo { path: path.to_owned(), file, id: (meta.dev(), meta.ino()) })
}

/// With a group: the FIFO gets it, and mode 0660 (a reader in that group may open it).
fn give_group(key: &str, path: &Path, group: Option<&str>) -> Result<(), String> {
    if let Some(g) = group {
        // Resolved as script_group is: a name or a number, never -1 ("no change" to chown).
        let gid = check::script_policy::lookup_group(g).map_err(|e| format!("notify_fifo_group: {e}"))?;
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| format!("{key} {}: chown to group {g:?}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o660))
            .map_err(|e| format!("{key} {}: chmod 0660: {e}", path.display()))?;
    }
    Ok(())
}

/// keepalived's line for a VRRP state change: `KIND "NAME" STATE PRIORITY`.
pub fn format_line(kind: &str, name: &str, state: &str, priority: u8) -> String {
    format!("{kind} \"{name}\" {state} {priority}\n")
}

/// Writes one VRRP line to `notify_fifo` and `vrrp_notify_fifo`, whichever are open.
pub fn write(kind: &str, name: &str, state: &str, priority: u8) {
    send(VRRP, &format_line(kind, name, state, priority), &DROPPED_VRRP);
}

/// Writes LVS lines (each ending in a newline) to `notify_fifo` and `lvs_notify_fifo`,
/// whichever are open.
pub fn write_lvs(lines: &[String]) {
    for line in lines {
        send(LVS, line, &DROPPED_LVS);
    }
}

/// Whether a FIFO that takes LVS lines is open (they cost a look at every applied state).
pub fn takes_lvs() -> bool {
    LVS_WANTED.load(Ordering::Relaxed)
}

/// One line to the FIFO that takes every line and to the one for its kind, each whole or not
/// at all (a line is far below PIPE_BUF, so a write is atomic).
fn send(kind: usize, line: &str, dropped: &AtomicU64) {
    let slots = FIFOS.lock().unwrap_or_else(|p| p.into_inner());
    for f in [&slots[ALL], &slots[kind]].into_iter().flatten() {
        let written = (&f.file).write(line.as_bytes());
        if !matches!(written, Ok(n) if n == line.len()) {
            let total = dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if total == 1 || total.is_power_of_two() {
                let error = written.err().map_or_else(|| "a short write".to_owned(), |e| e.to_string());
                tracing::warn!(fifo = %f.path.display(), %error, "notify FIFO: a line dropped (is its reader running?); {total} so far");
            }
        }
    }
}

/// VRRP lines that could not be written.
pub fn dropped_total() -> u64 {
    DROPPED_VRRP.load(Ordering::Relaxed)
}

/// LVS lines that could not be written.
pub fn dropped_lvs_total() -> u64 {
    DROPPED_LVS.load(Ordering::Relaxed)
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
        open(Paths { all: Some(&path), ..Paths::default() }).unwrap();
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
        let e = open(Paths { all: Some(&file), ..Paths::default() }).unwrap_err();
        assert!(e.contains("is not a FIFO") && e.contains("plain"), "{e}");
        // A group may read it: the FIFO gets the group and 0660 (giving a file to a group one is
        // not in takes root); an unknown group is named.
        if nix::unistd::geteuid().is_root() {
            open(Paths { all: Some(&path), group: Some("nogroup"), ..Paths::default() }).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap().gid.as_raw();
            assert_eq!((std::os::unix::fs::MetadataExt::gid(&meta), std::os::unix::fs::MetadataExt::mode(&meta) & 0o777), (nogroup, 0o660));
        } else {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "the notify_fifo_group check needs root under CI");
            eprintln!("SKIP: notify_fifo_group ownership (needs root)");
        }
        let e = open(Paths { all: Some(&path), group: Some("no-such-group-here"), ..Paths::default() }).unwrap_err();
        assert!(e.contains("no-such-group-here") && e.contains("no group named"), "{e}");
        assert!(open(Paths { all: Some(&path), group: Some("4294967295"), ..Paths::default() }).unwrap_err().contains("no group named"), "-1 is no group");
        // The three FIFOs: every line in notify_fifo, VRRP lines in vrrp_notify_fifo, LVS lines
        // in lvs_notify_fifo; a failed open (a plain file as lvs_notify_fifo) changes nothing.
        let (all, vrrp, lvs) = (dir.join("all"), dir.join("vrrp"), dir.join("lvs"));
        let e = open(Paths { all: Some(&all), vrrp: Some(&vrrp), lvs: Some(&file), group: None }).unwrap_err();
        assert!(e.starts_with("lvs_notify_fifo ") && e.contains("is not a FIFO"), "{e}");
        let read = |p: &Path| {
            let mut r = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p).unwrap();
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut r, &mut text);
            text
        };
        write("INSTANCE", "VI_1", "FAULT", 150);
        assert_eq!(read(&all), "", "a failed open must not have replaced notify_fifo");
        open(Paths { all: Some(&all), vrrp: Some(&vrrp), lvs: Some(&lvs), group: None }).unwrap();
        assert!(takes_lvs());
        write("INSTANCE", "VI_1", "MASTER", 150);
        write_lvs(&["RS [198.51.100.11]:tcp:80 [192.0.2.100]:tcp:80 DOWN\n".to_string()]);
        assert_eq!(read(&all), "INSTANCE \"VI_1\" MASTER 150\nRS [198.51.100.11]:tcp:80 [192.0.2.100]:tcp:80 DOWN\n");
        assert_eq!(read(&vrrp), "INSTANCE \"VI_1\" MASTER 150\n");
        assert_eq!(read(&lvs), "RS [198.51.100.11]:tcp:80 [192.0.2.100]:tcp:80 DOWN\n");
        open(Paths { vrrp: Some(&vrrp), ..Paths::default() }).unwrap();
        assert!(!takes_lvs(), "no FIFO takes LVS lines now");
        open(Paths::default()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
