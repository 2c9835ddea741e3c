//! corrald under systemd's service protocol (`Type=notify`, sd_notify(3)), with the test as
//! the service manager: a datagram socket in `NOTIFY_SOCKET` and the watchdog's variables, as
//! systemd sets them. corrald runs one VRRP instance in a network namespace of its own.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::{has_addr, require_root, Daemon, Lan};

/// A fresh directory under the temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("corral-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What corrald sent to the "service manager", in order.
struct Manager {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Manager {
    /// Reads messages until one satisfies `want`, which is returned; panics with everything seen
    /// after `within`.
    fn until(&mut self, what: &str, within: Duration, want: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + within;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if want(&msg) {
                    return msg;
                }
            }
        }
        panic!("{what}: not sent within {within:?}; corrald sent: {:#?}", self.seen);
    }
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn instance(name: &str, vrid: u8, vip: &str, interface: &str, env_file: &Path) -> String {
    format!(
        "\n[[vrrp]]\nname = \"{name}\"\ninterface = \"{interface}\"\nvrid = {vrid}\npriority = 150\nadvert_interval = \"100ms\"\nvirtual_ips = [\"{vip}/24\"]\nnotify_master = \"/usr/bin/env > {}\"\n",
        env_file.display()
    )
}

#[test]
fn corrald_speaks_systemds_notify_protocol_ready_reload_watchdog_stop() {
    let test = "corrald_speaks_systemds_notify_protocol_ready_reload_watchdog_stop";
    if !require_root(test) {
        return;
    }
    let Some(bin) = tests::workspace_bin("corrald", "CORRALD") else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: corrald not built (cargo xtask test builds it first)");
        eprintln!("SKIP: {test}: corrald not built (run cargo build --bins)");
        return;
    };
    let ctl = bin.with_file_name("corralctl");
    let lan = Lan::new(1);
    let h1 = &lan.hosts[0];
    let dir = Dir::new("systemd");
    let notify = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut manager = Manager { sock, seen: Vec::new() };
    let admin = dir.0.join("admin.sock");
    let env_a = dir.0.join("env-a.txt");
    let head = format!("[node]\nadmin_socket = \"{}\"\n", admin.display());
    let file = dir.0.join("corrald.toml");
    std::fs::write(&file, format!("{head}{}", instance("VI_1", 51, "192.0.2.100", "eth0", &env_a))).unwrap();
    let mut cmd = h1.cmd(bin.to_str().unwrap());
    cmd.arg("--config").arg(&file).stdout(Stdio::null()).stderr(Stdio::inherit());
    cmd.env("NOTIFY_SOCKET", &notify).env("WATCHDOG_USEC", "1000000").env_remove("WATCHDOG_PID");
    let mut daemon = Daemon::spawn(cmd, "corrald");
    let instances = || -> Vec<String> {
        let out = Command::new(&ctl).arg("--socket").arg(&admin).args(["vrrp", "status", "-o", "json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().unwrap().iter().map(|i| format!("{} {}", i["name"].as_str().unwrap(), i["state"].as_str().unwrap())).collect()
    };

    // READY=1 comes once the admin socket answers and the instance runs.
    let ready = manager.until("READY=1 at startup", Duration::from_secs(10), |m| m.lines().any(|l| l == "READY=1"));
    assert!(UnixStream::connect(&admin).is_ok(), "the admin socket answers when READY=1 is sent");
    assert!(field(&ready, "STATUS").is_some_and(|s| s.contains("VRRP VI_1")), "READY names the instance: {ready:?}");

    // STATUS= follows the instance to MASTER; the watchdog is fed every quarter period.
    manager.until("STATUS with VI_1 MASTER", Duration::from_secs(5), |m| field(m, "STATUS").is_some_and(|s| s.contains("VI_1 MASTER")));
    assert!(has_addr(h1, "192.0.2.100"));
    let t0 = Instant::now();
    manager.until("a first WATCHDOG=1", Duration::from_secs(2), |m| m.lines().any(|l| l == "WATCHDOG=1"));
    manager.until("a second WATCHDOG=1", Duration::from_secs(2), |m| m.lines().any(|l| l == "WATCHDOG=1"));
    assert!(t0.elapsed() < Duration::from_millis(1500), "two pings within the 1 s watchdog period (+ slack): {:?}", t0.elapsed());

    // The notify script ran without systemd's variables: it cannot speak for corrald.
    assert!(tests::wait_for(Duration::from_secs(3), || std::fs::read_to_string(&env_a).is_ok_and(|e| e.contains("PATH="))).is_some(), "notify_master ran");
    let env = std::fs::read_to_string(&env_a).unwrap();
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC"] {
        assert!(!env.lines().any(|l| l.starts_with(&format!("{var}="))), "{var} reached the notify script: {env}");
    }

    // A good reload: RELOADING=1 (with MONOTONIC_USEC), then READY=1 once the new instance runs.
    let both = format!("{head}{}{}", instance("VI_1", 51, "192.0.2.100", "eth0", &env_a), instance("VI_2", 52, "192.0.2.101", "eth0", &dir.0.join("env-b.txt")));
    std::fs::write(&file, &both).unwrap();
    daemon.signal("HUP");
    let reloading = manager.until("RELOADING=1", Duration::from_secs(5), |m| m.lines().any(|l| l == "RELOADING=1"));
    assert!(field(&reloading, "MONOTONIC_USEC").is_some_and(|t| t.parse::<u64>().is_ok()), "{reloading:?}");
    let done = manager.until("READY=1 after the reload", Duration::from_secs(5), |m| m.lines().any(|l| l == "READY=1"));
    assert!(field(&done, "STATUS").is_some_and(|s| s.contains("VI_2")), "STATUS names the new instance: {done:?}");
    let now = instances();
    assert!(now.iter().any(|i| i.starts_with("VI_2 ")), "the new instance runs when READY=1 comes: {now:?}");

    // A file that does not parse: refused, READY=1 again, the reason in STATUS=.
    std::fs::write(&file, "[[vrrp]]\nname = ").unwrap();
    daemon.signal("HUP");
    manager.until("RELOADING=1 (bad file)", Duration::from_secs(5), |m| m.lines().any(|l| l == "RELOADING=1"));
    let refused = manager.until("READY=1 after a refused reload", Duration::from_secs(5), |m| m.lines().any(|l| l == "READY=1"));
    assert!(field(&refused, "STATUS").is_some_and(|s| s.starts_with("reload refused")), "{refused:?}");

    // A file that parses but names an interface this host lacks: the VRRP thread refuses it
    // before releasing anything, and says so.
    std::fs::write(&file, format!("{both}{}", instance("VI_3", 53, "192.0.2.102", "eth9", &dir.0.join("env-c.txt")))).unwrap();
    daemon.signal("HUP");
    manager.until("RELOADING=1 (missing interface)", Duration::from_secs(5), |m| m.lines().any(|l| l == "RELOADING=1"));
    let refused = manager.until("READY=1 after a refused reload", Duration::from_secs(5), |m| m.lines().any(|l| l == "READY=1"));
    assert!(field(&refused, "STATUS").is_some_and(|s| s.starts_with("reload refused") && s.contains("eth9")), "{refused:?}");
    assert_eq!(instances().len(), 2, "nothing changed");

    // SIGTERM: STOPPING=1, then a clean exit.
    daemon.signal("TERM");
    manager.until("STOPPING=1", Duration::from_secs(5), |m| m.lines().any(|l| l == "STOPPING=1"));
    let status = daemon.wait_exit(Duration::from_secs(10)).expect("corrald exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// The unit shipped in node/dist: `systemd-analyze verify` finds nothing to say about it (with
/// the built binary and a test configuration in its paths), and its config check refuses a
/// broken file before start and reload, naming the line.
#[test]
fn the_shipped_unit_verifies_and_checks_the_file_before_start_and_reload() {
    let test = "the_shipped_unit_verifies_and_checks_the_file_before_start_and_reload";
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if Command::new("systemd-analyze").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        assert!(!ci, "{test}: systemd-analyze is missing (package systemd) and CI=true forbids skipping");
        eprintln!("SKIP: {test}: systemd-analyze is not installed");
        return;
    }
    let Some(bin) = tests::workspace_bin("corrald", "CORRALD") else {
        assert!(!ci, "{test}: corrald not built (cargo xtask test builds it first)");
        eprintln!("SKIP: {test}: corrald not built (run cargo build --bins)");
        return;
    };
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/dist/corrald.service")).unwrap();
    let dir = Dir::new("unit");
    let config = dir.0.join("corrald.toml");
    let local = unit.replace("/usr/sbin/corrald", bin.to_str().unwrap()).replace("/etc/corral/corrald.toml", config.to_str().unwrap());
    assert_ne!(local, unit, "the unit names /usr/sbin/corrald and /etc/corral/corrald.toml");
    let path = dir.0.join("corrald.service");
    std::fs::write(&path, &local).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    for key in ["Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID"] {
        assert!(unit.lines().any(|l| l.starts_with(key)), "the unit sets {key}");
    }

    // ExecStartPre and the first ExecReload: the configuration check, run as systemd would.
    let checks: Vec<&str> = local.lines().filter_map(|l| l.strip_prefix("ExecStartPre=").or_else(|| l.strip_prefix("ExecReload="))).filter(|c| c.contains("--config-test")).collect();
    assert_eq!(checks.len(), 2, "start and reload both check the file first: {local}");
    let run = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        Command::new(words[0]).args(&words[1..]).output().unwrap()
    };
    std::fs::write(&config, "[node]\nadmin_socket = \"/run/corral-test/admin.sock\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"lo\"\nvrid = 51\nvirtual_ips = [\"192.0.2.100/24\"]\n").unwrap();
    for c in &checks {
        let out = run(c);
        assert!(out.status.success(), "{c}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(&config, "[node]\nadmin_socket = \"/run/corral-test/admin.sock\"\n\n[[vrrp]]\nname = \"VI_1\"\nvrid = 300\n").unwrap();
    for c in &checks {
        let out = run(c);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("corrald.toml") && err.contains("vrid"), "{c} refuses the file, naming it and the key: {err}");
    }
}
