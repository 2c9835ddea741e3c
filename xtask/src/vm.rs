//! The VM lab: a Debian cloud kernel with IPVS modules, booted under qemu (TCG) from an
//! initramfs that carries busybox, iproute2, ipvsadm, our binaries and a payload script.
//!
//! The host kernel has no IPVS and cannot load modules, so every test that touches the
//! kernel's IPVS runs here. The payload prints `CORRAL-EXIT <name> <code>` markers on the
//! serial console; the host parses them, so a failure inside the VM fails the host command.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Modules loaded at boot, in this order (each one's own dependencies are loaded first).
const MODULES: &[&str] = &[
    "libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc",
    "ip_vs_wlc", "ip_vs_lblc", "ip_vs_lblcr", "ip_vs_dh", "ip_vs_sh", "ip_vs_sed", "ip_vs_nq", "ip_vs_fo", "ip_vs_ovf",
    "ip_vs_mh", "ip_vs_twos", "ip_vs_pe_sip", "veth", "bridge", "macvlan", "dummy", "ipip", "tun",
];

/// Host tools copied into the VM (with their shared libraries), when present on the host.
const HOST_TOOLS: &[(&str, bool)] = &[
    // bash as /bin/sh: busybox's sh runs its own applets (a netns-less `ip`) ahead of PATH.
    ("/bin/bash", true),
    ("/usr/sbin/ipvsadm", true),
    ("/usr/sbin/ip", true),
    ("/usr/bin/tcpdump", false),
    ("/usr/sbin/keepalived", false),
];

/// The unpacked kernel: vmlinuz plus its module tree.
pub struct Kernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    pub root: PathBuf,
}

/// Downloads (once) and unpacks the Debian cloud kernel under `cache`.
pub fn kernel(cache: &Path) -> Result<Kernel> {
    let kdir = cache.join("kernel");
    let stamp = kdir.join("READY");
    if !stamp.exists() {
        let started = Instant::now();
        let _ = fs::remove_dir_all(&kdir);
        fs::create_dir_all(&kdir)?;
        // The metapackage names the current linux-image-*-cloud-amd64; a fresh machine may have
        // no package lists yet, hence one `apt-get update` and a second look.
        let image_pkg = || -> Result<Option<String>> {
            let deps = output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
            Ok(deps
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Depends: "))
                .find(|p| p.starts_with("linux-image-"))
                .map(str::to_owned))
        };
        let pkg = match image_pkg()? {
            Some(p) => p,
            None => {
                run(Command::new("apt-get").args(["update", "-qq"]))?;
                image_pkg()?.context("apt-cache names no linux-image-*-cloud-amd64 package")?
            }
        };
        eprintln!("vm: downloading kernel package {pkg}");
        run(Command::new("apt-get").args(["download", "-q", &pkg]).current_dir(&kdir))?;
        let deb = fs::read_dir(&kdir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download produced no .deb")?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(kdir.join("root")))?;
        fs::remove_file(&deb)?;
        let version = module_version(&kdir.join("root"))?;
        run(Command::new("depmod").arg("-b").arg(kdir.join("root")).arg(&version))?;
        fs::write(&stamp, &version)?;
        eprintln!("vm: kernel {version} ready in {:.1}s", started.elapsed().as_secs_f64());
    }
    let version = fs::read_to_string(&stamp)?.trim().to_owned();
    let root = kdir.join("root");
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
    Ok(Kernel { version, vmlinuz, root })
}

fn module_version(root: &Path) -> Result<String> {
    let dir = root.join("lib/modules");
    let entry = fs::read_dir(&dir)?.next().context("kernel package has no lib/modules")??;
    Ok(entry.file_name().to_string_lossy().into_owned())
}

/// Module files to insmod, dependencies first, from modules.dep.
fn module_order(k: &Kernel) -> Result<Vec<String>> {
    let mdir = k.root.join("lib/modules").join(&k.version);
    let dep = fs::read_to_string(mdir.join("modules.dep"))?;
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    let mut by_name: HashMap<String, String> = HashMap::new();
    for line in dep.lines() {
        let Some((m, rest)) = line.split_once(':') else { continue };
        let name = Path::new(m).file_name().unwrap().to_string_lossy().trim_end_matches(".ko").replace('-', "_");
        by_name.insert(name, m.to_owned());
        deps.insert(m.to_owned(), rest.split_whitespace().map(str::to_owned).collect());
    }
    fn visit(m: &str, deps: &HashMap<String, Vec<String>>, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if !seen.insert(m.to_owned()) {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, seen, out);
        }
        out.push(m.to_owned());
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for name in MODULES {
        if let Some(m) = by_name.get(*name) {
            visit(m, &deps, &mut seen, &mut out);
        }
    }
    Ok(out)
}

/// What goes into one initramfs besides the fixed base.
#[derive(Default)]
pub struct Payload {
    /// (host path, path inside the VM); executables get their libraries copied too.
    pub files: Vec<(PathBuf, String)>,
    /// Shell script run as root after boot; its exit code is reported as `CORRAL-EXIT payload N`.
    pub script: String,
    /// Extra environment for the script.
    pub env: Vec<(String, String)>,
    /// Extra guest kernel parameters for this boot (space-separated), e.g. `idle=poll` for
    /// the propagation benchmark (docs/BENCHMARKS.md, propagation Round 19).
    pub kernel_args: String,
}

/// Builds the initramfs for `payload` and returns its path.
pub fn initramfs(cache: &Path, k: &Kernel, payload: &Payload) -> Result<PathBuf> {
    let stage = cache.join("stage");
    let _ = fs::remove_dir_all(&stage);
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "proc", "sys", "dev", "tmp", "run", "etc", "modules", "var", "root"]
    {
        fs::create_dir_all(stage.join(d))?;
    }
    let busybox = Path::new("/usr/bin/busybox");
    if !busybox.exists() {
        bail!("/usr/bin/busybox missing: apt-get install busybox-static");
    }
    fs::copy(busybox, stage.join("bin/busybox"))?;
    let mut libs = BTreeSet::new();
    for (tool, required) in HOST_TOOLS {
        let p = Path::new(tool);
        if !p.exists() {
            if *required {
                bail!("{tool} missing on the host: .ci/run installs it (apt-get install ipvsadm iproute2)");
            }
            continue;
        }
        let name = p.file_name().unwrap();
        let dir = if name == "bash" { "bin" } else { "usr/sbin" };
        fs::copy(p, stage.join(dir).join(name))?;
        libs.extend(shared_libs(p)?);
    }
    for (src, dst) in &payload.files {
        let target = stage.join(dst.trim_start_matches('/'));
        fs::create_dir_all(target.parent().unwrap())?;
        fs::copy(src, &target).with_context(|| format!("copy {} into the VM image", src.display()))?;
        if is_elf(src) {
            libs.extend(shared_libs(src)?);
        }
    }
    for lib in &libs {
        let target = stage.join(lib.trim_start_matches('/'));
        fs::create_dir_all(target.parent().unwrap())?;
        fs::copy(lib, &target).with_context(|| format!("copy library {lib}"))?;
    }
    let mdir = k.root.join("lib/modules").join(&k.version);
    let mut order = String::new();
    for m in module_order(k)? {
        let file = Path::new(&m).file_name().unwrap().to_string_lossy().into_owned();
        fs::copy(mdir.join(&m), stage.join("modules").join(&file))?;
        order.push_str(&file);
        order.push('\n');
    }
    fs::write(stage.join("modules/order"), order)?;
    fs::write(stage.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(stage.join("etc/group"), "root:x:0:\n")?;
    fs::write(stage.join("etc/hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
    let mut env = String::new();
    for (k, v) in &payload.env {
        env.push_str(&format!("export {k}='{v}'\n"));
    }
    fs::write(stage.join("payload.sh"), format!("#!/bin/sh\n{env}{}\n", payload.script))?;
    fs::write(stage.join("init"), INIT)?;
    for f in ["init", "payload.sh"] {
        run(Command::new("chmod").arg("755").arg(stage.join(f)))?;
    }
    let out = cache.join("initrd.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'", stage.display(), out.display())))?;
    Ok(out)
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
/bin/busybox rm -f /bin/sh /bin/ip
/bin/busybox ln -s /bin/bash /bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
ln -s /proc/self/fd /dev/fd
mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
ln -s /run /var/run
mkdir -p /run/netns
ip link set lo up
for m in $(cat /modules/order); do
  insmod /modules/$m || echo "CORRAL-WARN insmod $m failed"
done
echo "CORRAL-BOOTED $(cut -d' ' -f1 /proc/uptime)"
cd /root
/payload.sh
echo "CORRAL-EXIT payload $?"
poweroff -f
"#;

fn is_elf(p: &Path) -> bool {
    fs::read(p).map(|b| b.starts_with(b"\x7fELF")).unwrap_or(false)
}

/// The shared libraries `ldd` names for a binary (static binaries have none).
fn shared_libs(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd").arg(bin).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some((_, rest)) = l.split_once("=> ") {
                rest.split_whitespace().next().filter(|p| p.starts_with('/')).map(str::to_owned)
            } else if l.starts_with('/') {
                l.split_whitespace().next().map(str::to_owned)
            } else {
                None
            }
        })
        .collect())
}

/// The guest kernel reported a soft lockup or an RCU stall: its CPUs stopped making progress,
/// so nothing that runs in that boot (tests, demo, benchmark) can finish, and waiting for the
/// boot's whole timeout only delays the failure. Seen twice in hundreds of boots (both vCPUs
/// stuck in the kernel for minutes; docs/BENCHMARKS.md, propagation Round 16, and a CI run of
/// the demo), cause unknown: the emulator, the guest kernel or what a process asked of it.
/// [`boot`] asks the guest for every CPU's backtrace (magic SysRq over the serial line) before
/// it stops the VM, so the next one says where the CPUs were.
#[derive(Debug)]
pub struct GuestLockup {
    /// The console line that reported it.
    pub line: String,
}

impl std::fmt::Display for GuestLockup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest kernel locked up ({})", self.line.trim())
    }
}

impl std::error::Error for GuestLockup {}

/// A console line in which the guest kernel says its CPUs stopped making progress.
fn reports_lockup(line: &str) -> bool {
    line.contains("BUG: soft lockup") || line.contains("hard LOCKUP") || (line.contains("rcu: INFO:") && line.contains("stall"))
}

/// Seconds the guest gets to print its backtraces once a lockup was reported.
const LOCKUP_GRACE: Duration = Duration::from_secs(20);

/// Magic SysRq through qemu's serial multiplexer: `Ctrl-A b` sends a break on the serial line,
/// and the key after a break is a SysRq command to the guest kernel (`sysrq_always_enabled` on
/// its command line). `8` raises the console log level so what follows reaches the console past
/// `quiet`; `l` prints every CPU's backtrace (by NMI), `w` the tasks blocked in the kernel.
fn ask_for_backtraces(stdin: &mut impl Write) {
    for key in [b"8", b"l", b"w"] {
        // The break and its key in separate writes, apart: sent together, the guest's UART
        // can take the key as the break's own character.
        let _ = stdin.write_all(b"\x01b").and_then(|_| stdin.flush());
        std::thread::sleep(Duration::from_millis(500));
        let _ = stdin.write_all(key).and_then(|_| stdin.flush());
        std::thread::sleep(Duration::from_millis(1500));
    }
}

/// Result of one VM boot: every `CORRAL-EXIT name code` marker seen, in order.
pub struct Outcome {
    pub exits: Vec<(String, i32)>,
    pub elapsed: Duration,
    /// The whole console output, for callers that parse results out of it (benchmarks).
    pub log: String,
}

/// The emulator's first `--version` line (`QEMU emulator version 10.0.2 (…)`), said at every
/// boot and printed with benchmark figures: TCG's cost depends on it (docs/BENCHMARKS.md,
/// propagation Round 18), so a figure without it cannot be compared.
pub fn emulator_version() -> String {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
        .unwrap_or_else(|| "qemu-system-x86_64: version unknown".into())
}

/// Boots the VM, streams its console to stdout (unless `quiet`), and collects exit markers.
pub fn boot(k: &Kernel, initrd: &Path, kernel_args: &str, timeout: Duration, quiet: bool) -> Result<Outcome> {
    eprintln!("vm: {} (TCG)", emulator_version());
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        // A 2 GiB translation cache, the most qemu allows on an x86-64 host (its default is
        // 1 GiB): with qemu 7.2 setting up one benchmark lab translated 0.6–1 GB of code (every
        // daemon's own copy, at its randomised addresses), so with the default the cache
        // filled and was flushed about every run and a half of `bench propagation`, and every
        // daemon then stalled while its code was translated again, into the measured changes
        // (docs/BENCHMARKS.md, propagation Rounds 10 and 13). qemu 8 and later share one
        // translation between processes (Round 18); the bound stays for the labs' set-ups.
        // Real CPUs have no such cache. qemu takes the memory only as the cache fills.
        .args(["-accel", "tcg,tb-size=2048", "-smp", "2", "-m", "2048", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // The guest kernel's TSC sync check fails under TCG, and it would then fall back to the
        // emulated HPET: every clock read (tokio, quinn, tracing read the clock thousands of
        // times a second) a syscall plus an emulated device access under qemu's big lock.
        // Real directors run on the TSC; so does the lab (qemu's TSC follows the host's, one
        // clock for all vCPUs).
        // XTASK_VM_APPEND adds kernel parameters, for lab experiments (e.g. `norandmaps`:
        // docs/BENCHMARKS.md, propagation Round 9, on how the address layout moves TCG's cost).
        // `sysrq_always_enabled`: the host asks for backtraces when the guest locks up (see
        // `GuestLockup`).
        .args([
            "-append",
            &format!(
                "console=ttyS0 quiet panic=-1 clocksource=tsc tsc=reliable sysrq_always_enabled {kernel_args} {}",
                std::env::var("XTASK_VM_APPEND").unwrap_or_default()
            ),
        ])
        // XTASK_VM_QEMU adds qemu arguments (split at whitespace), for lab experiments, e.g.
        // `-monitor unix:/tmp/qmp.sock,server,nowait` to read `info jit` during a run.
        .args(std::env::var("XTASK_VM_QEMU").unwrap_or_default().split_whitespace())
        // The console's input: only ever written to ask for backtraces (`ask_for_backtraces`).
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let stdout = child.stdout.take().unwrap();
    let mut console_in = child.stdin.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut exits = Vec::new();
    let mut log = String::new();
    let mut deadline = started + timeout;
    let mut lockup: Option<GuestLockup> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                if !quiet || line.starts_with("CORRAL-") || lockup.is_some() {
                    println!("{line}");
                }
                if lockup.is_none() && reports_lockup(&line) {
                    if quiet {
                        // What led up to it, which a quiet boot did not show.
                        let tail: Vec<&str> = log.lines().rev().take(40).collect();
                        tail.iter().rev().for_each(|l| println!("{l}"));
                        println!("{line}");
                    }
                    eprintln!("xtask: the guest kernel reports a lockup; asking it for backtraces, then stopping the VM");
                    lockup = Some(GuestLockup { line: line.clone() });
                    if let Some(stdin) = console_in.as_mut() {
                        ask_for_backtraces(stdin);
                    }
                    deadline = Instant::now() + LOCKUP_GRACE;
                }
                if let Some(rest) = line.strip_prefix("CORRAL-EXIT ") {
                    let mut it = rest.split_whitespace();
                    if let (Some(name), Some(code)) = (it.next(), it.next().and_then(|c| c.parse().ok())) {
                        exits.push((name.to_owned(), code));
                    }
                }
                log.push_str(&line);
                log.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                if let Some(lockup) = lockup {
                    return Err(lockup.into());
                }
                bail!("VM did not finish within {}s; markers so far: {exits:?}", timeout.as_secs());
            }
        }
    }
    let _ = child.wait();
    drop(console_in);
    if let Some(lockup) = lockup {
        // It powered off within the grace period; what ran in it still did not run normally.
        return Err(lockup.into());
    }
    Ok(Outcome { exits, elapsed: started.elapsed(), log })
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockup_reports_are_told_from_ordinary_console_lines() {
        // Lines from the CI run whose demo stalled.
        assert!(reports_lockup("[   31.100785] rcu: INFO: rcu_preempt self-detected stall on CPU"));
        assert!(reports_lockup("[   56.636825] watchdog: BUG: soft lockup - CPU#0 stuck for 44s! [corrald:210]"));
        assert!(reports_lockup("[   10.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"));
        assert!(reports_lockup("[    9.1] watchdog: Watchdog detected hard LOCKUP on cpu 1"));
        assert!(!reports_lockup("[   31.102664] rcu: \trcu_preempt kthread starved for 5244 jiffies!"));
        assert!(!reports_lockup("CORRAL-EXIT demo 0"));
        assert!(!reports_lockup("=== Killing the VRRP master director d1 (SIGKILL): the next in priority takes the VIP"));
    }
}
