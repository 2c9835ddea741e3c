//! A time bound for one lab test that says where it hung.
//!
//! A VM test that blocks (a process stuck in the kernel, a wait without a bound) otherwise
//! shows nothing until the VM's 30-minute limit, and the test's captured output is lost with
//! it. The watchdog instead writes what every process is doing, straight to stderr (past the
//! test harness's capture), and ends the test process with [`EXIT_CODE`].

use std::io::Write;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The test process's exit status when its watchdog fired (`timeout`'s convention).
pub const EXIT_CODE: i32 = 124;

/// Ends the test process with a report if it is not dropped within its limit.
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    stage: Arc<Mutex<String>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the bound for test `test`; choose `limit` well above the test's slowest failing
    /// path, so the watchdog fires on a hang, not on a slow failure.
    pub fn new(test: &str, limit: Duration) -> Watchdog {
        let (stop, rx) = mpsc::channel::<()>();
        let stage = Arc::new(Mutex::new(String::from("started")));
        let (test, seen) = (test.to_owned(), stage.clone());
        let start = Instant::now();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                let last = seen.lock().map(|s| s.clone()).unwrap_or_default();
                let mut report = format!(
                    "WATCHDOG: test {test} still running after {:?} (limit {limit:?}); last stage: {last}\n",
                    start.elapsed()
                );
                report += &processes_report();
                let _ = std::io::stderr().write_all(report.as_bytes());
                std::process::exit(EXIT_CODE);
            }
        });
        Watchdog { stop: Some(stop), stage, thread: Some(thread) }
    }

    /// Records how far the test got (printed if the watchdog fires), and prints it.
    pub fn stage(&self, what: &str) {
        eprintln!("stage: {what}");
        if let Ok(mut s) = self.stage.lock() {
            *s = what.to_owned();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One line per process (state, kernel wait channel, command line), plus every thread's
/// kernel stack for processes in uninterruptible sleep and for this process. Reads procfs
/// only: spawning a tool could block on whatever blocked the test.
pub fn processes_report() -> String {
    let me = std::process::id().to_string();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    let mut out = String::new();
    for pid in pids {
        let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let cmdline = read("cmdline").replace('\0', " ");
        if cmdline.is_empty() {
            continue; // a kernel thread
        }
        let state = state_of(&read("stat"));
        out += &format!("{pid} {state} {} wchan={} :: {}\n", read("comm").trim(), read("wchan"), cmdline.trim());
        if state == "D" || pid.to_string() == me {
            out += &tasks_report(pid);
        }
    }
    out
}

/// Every thread of `pid`: state, wait channel and kernel stack.
pub fn tasks_report(pid: u32) -> String {
    let mut tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    tasks.sort();
    let mut out = String::new();
    for t in tasks {
        let read = |f: &str| std::fs::read_to_string(t.join(f)).unwrap_or_default();
        out += &format!("  thread {} ({}): state {}, wchan {}\n{}", t.display(), read("comm").trim(), state_of(&read("stat")), read("wchan"), read("stack"));
    }
    out
}

/// The state letter of a `/proc/…/stat` line (the field after the parenthesised name).
fn state_of(stat: &str) -> String {
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("?").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a test of its own: the hung test that `a_hung_test_ends_with_a_report` runs in a
    /// child process.
    #[test]
    #[ignore = "run by a_hung_test_ends_with_a_report in a child process"]
    fn watchdog_helper_hangs() {
        if std::env::var_os("CORRAL_WATCHDOG_HELPER").is_none() {
            return;
        }
        let w = Watchdog::new("watchdog_helper_hangs", Duration::from_millis(500));
        w.stage("sleeping without a bound");
        std::thread::sleep(Duration::from_secs(60));
    }

    #[test]
    fn a_hung_test_ends_with_a_report() {
        let t = Instant::now();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "watchdog::tests::watchdog_helper_hangs"])
            .env("CORRAL_WATCHDOG_HELPER", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_CODE), "{err}");
        assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
        assert!(err.contains("WATCHDOG: test watchdog_helper_hangs still running"), "{err}");
        assert!(err.contains("last stage: sleeping without a bound"), "{err}");
        // The helper's own threads are listed (its main thread sleeps in the kernel).
        assert!(err.contains("  thread /proc/"), "{err}");
    }

    #[test]
    fn a_finished_test_is_not_ended() {
        let w = Watchdog::new("quick", Duration::from_millis(200));
        w.stage("done");
        drop(w);
        std::thread::sleep(Duration::from_millis(400));
    }

    #[test]
    fn the_state_letter_is_read_after_the_name() {
        assert_eq!(state_of("42 (a) b) D 1 2"), "D");
        assert_eq!(state_of("garbage"), "?");
    }
}
