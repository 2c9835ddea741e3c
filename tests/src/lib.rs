//! The lab harness: network namespaces on a bridge, and helpers to run real daemons in them.
//!
//! Every namespace is deleted when its guard drops, so a failing test leaves nothing behind.
//! Names carry the test process id and a counter so parallel tests never collide.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod cluster;
pub mod watchdog;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// True when the lab can run (root). Not root: skip loudly; under CI=true: fail.
pub fn require_root(test: &str) -> bool {
    if unsafe { libc_geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root for network namespaces, and CI=true forbids skipping");
    }
    eprintln!("SKIP: {test}: needs root for network namespaces");
    false
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Fails the test (with the command's output) unless `cmd` succeeds.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("spawn sh");
    assert!(out.status.success(), "`{cmd}` failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        let name = format!("c{}-{}-{role}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        sh(&format!("ip netns add {name} && ip -n {name} link set lo up"));
        Netns { name }
    }
    /// A command that runs inside this namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
    /// Runs a shell command inside the namespace; panics on failure.
    pub fn sh(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} sh -c '{}'", self.name, cmd.replace('\'', r"'\''")))
    }
    /// Runs a shell command inside the namespace and returns its output whatever the status.
    pub fn try_sh(&self, cmd: &str) -> Output {
        Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", cmd]).output().expect("spawn")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "pids", &self.name]).output().map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A LAN: a bridge in its own namespace and hosts with `eth0` at 192.0.2.N/24 and 2001:db8::N/64.
pub struct Lan {
    pub bridge: Netns,
    pub hosts: Vec<Netns>,
}

impl Lan {
    pub fn new(hosts: usize) -> Lan {
        let bridge = Netns::new("br");
        bridge.sh("ip link add br0 type bridge && ip link set br0 up");
        let mut v = Vec::new();
        for i in 0..hosts {
            let h = Netns::new(&format!("h{}", i + 1));
            // Link-local addresses usable at once (no DAD wait), so IPv6 VRRP can start at once.
            h.sh("sysctl -qw net.ipv6.conf.default.accept_dad=0 && sysctl -qw net.ipv6.conf.all.accept_dad=0");
            let port = format!("p{}", i + 1);
            sh(&format!("ip link add {port} netns {} type veth peer name eth0 netns {}", bridge.name, h.name));
            bridge.sh(&format!("ip link set {port} master br0 && ip link set {port} up"));
            h.sh(&format!(
                "ip addr add 192.0.2.{n}/24 dev eth0 && ip addr add 2001:db8::{n}/64 dev eth0 nodad && ip link set eth0 up",
                n = i + 1
            ));
            v.push(h);
        }
        Lan { bridge, hosts: v }
    }
}

/// One more LAN over namespaces that already exist (a director's second, backend-side
/// interface; a backend that lives on that LAN only): its own bridge namespace and one veth
/// per host, named `ifname` inside the host, up, with the host's IPv4 address. Dropping it
/// deletes the bridge namespace, which deletes every veth pair with it; the hosts' own guards
/// delete the hosts.
pub struct SideLan {
    pub bridge: Netns,
}

impl SideLan {
    /// `hosts`: (namespace, "198.51.100.N/24"), each given `ifname`.
    pub fn new(ifname: &str, hosts: &[(&Netns, &str)]) -> SideLan {
        let bridge = Netns::new("br");
        bridge.sh("ip link add br0 type bridge && ip link set br0 up");
        let lan = SideLan { bridge };
        for (k, (h, addr)) in hosts.iter().enumerate() {
            let port = format!("p{}", k + 1);
            sh(&format!("ip link add {port} netns {} type veth peer name {ifname} netns {}", lan.bridge.name, h.name));
            lan.bridge.sh(&format!("ip link set {port} master br0 && ip link set {port} up"));
            h.sh(&format!("ip addr add {addr} dev {ifname} && ip link set {ifname} up"));
        }
        lan
    }
}

/// A child process killed on drop.
pub struct Daemon {
    pub child: Child,
    pub name: String,
}

impl Daemon {
    pub fn spawn(mut cmd: Command, name: &str) -> Daemon {
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Daemon { child, name: name.to_owned() }
    }
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status();
    }
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // Bounded: a process stuck in the kernel (D state) does not die of SIGKILL. Say where
        // it is stuck, loudly, instead of hanging the whole test run until the VM's bound.
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            let pid = self.child.id();
            eprintln!("WARNING: {} (pid {pid}) is still running 10 s after SIGKILL\n{}", self.name, watchdog::tasks_report(pid));
        }
    }
}

/// A test's reader of a FIFO that corrald writes (its notify FIFOs): opened non-blocking, so
/// it never waits for a writer, and held by the test, so lines written before it reads (even
/// after corrald exits) stay in the pipe.
pub struct FifoReader(std::fs::File);

impl FifoReader {
    pub fn open(path: &std::path::Path) -> FifoReader {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        FifoReader(f)
    }

    /// Everything waiting in the pipe now (read until it is empty, or closed by every writer).
    pub fn drain(&mut self) -> String {
        use std::io::Read;
        let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("reading a FIFO: {e}"),
            }
        }
        String::from_utf8(out).expect("FIFO lines are UTF-8")
    }
}

/// Polls `f` until it returns true or `within` passes; returns how long it took.
pub fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Like [`wait_for`], but polls every `every`: for conditions that spawn processes, whose
/// tight polling would load a slow (TCG) VM enough to disturb the daemons under test.
pub fn wait_every(within: Duration, every: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(every);
    }
    None
}

/// True when `addr` is configured on `eth0` inside `ns`.
pub fn has_addr(ns: &Netns, addr: &str) -> bool {
    let out = ns.try_sh("ip -o addr show dev eth0");
    String::from_utf8_lossy(&out.stdout).contains(&format!(" {addr}/"))
}

/// A shell command's exit code and output.
#[derive(Debug, Clone)]
pub struct ShOut {
    /// -1 when killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with `sh -c`, feeding `stdin`; never panics on the command's own failure.
pub fn run_sh(cmd: &str, stdin: &str) -> ShOut {
    use std::io::Write;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    ShOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Like [`run_sh`], but fails the test (with the output) unless the command succeeds.
pub fn must_sh(cmd: &str, stdin: &str) -> String {
    let o = run_sh(cmd, stdin);
    assert_eq!(o.code, 0, "`{cmd}` failed: {}{}", o.stdout, o.stderr);
    o.stdout
}

/// One of the workspace's binaries: `$ENV_VAR` if set, else beside the test executable's
/// directory (target/debug/NAME for target/debug/deps/TEST-*), if it was built.
pub fn workspace_bin(name: &str, env_var: &str) -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        return Some(p.into());
    }
    let p = std::env::current_exe().ok()?.parent()?.parent()?.join(name);
    p.exists().then_some(p)
}
