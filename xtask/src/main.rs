//! corral's automation: `cargo xtask test`, `cargo xtask vm …`, `cargo xtask demo`, `cargo xtask bench …`.
//!
//! Everything that needs a real IPVS kernel runs inside a qemu VM (see [`vm`]), because the
//! host kernel of our machines has none.

mod bench_checks;
mod bench_cluster;
mod bench_vrrp;
mod procstat;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every test: the workspace's host tests, then the VM tests (the README's test command).
    Test,
    /// The lab demo: client, LVS director and three HTTP backends in the VM, programmed by corralctl.
    Demo,
    /// Benchmarks against the anchor tools, side by side in one run.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// The VM lab with a real IPVS kernel.
    Vm {
        #[command(subcommand)]
        cmd: VmCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// `ipvsadm -R` vs `corralctl ipvs restore` on 1k x 10 and 10k x 10 rule files, in one VM run.
    Ipvs {
        /// Service counts to run (each with 10 real servers).
        #[arg(long, value_delimiter = ',', default_values_t = vec![1000, 10000])]
        sizes: Vec<usize>,
    },
    /// Gossip join/failure dissemination at 10/50/200 nodes and Raft write latency/throughput
    /// with 3 and 5 voters (corrald processes on loopback).
    Cluster {
        #[arg(long, value_delimiter = ',', default_values_t = vec![10, 50, 200])]
        sizes: Vec<usize>,
    },
    /// Rule change → applied in every director's kernel: 3 and 5 directors in the VM (real IPVS),
    /// then a loopback scale run with the in-memory IPVS model.
    Propagation {
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// Node counts of the loopback scale run.
        #[arg(long, value_delimiter = ',', default_values_t = vec![3, 10, 25, 50])]
        scale: Vec<usize>,
        /// Director counts of the VM run.
        #[arg(long, value_delimiter = ',', default_values_t = vec![3, 5])]
        directors: Vec<usize>,
        /// `[node] realtime_priority` values to run each director count with (0 = the normal
        /// scheduler, corrald's default).
        #[arg(long, value_delimiter = ',', default_values_t = vec![0, 10])]
        realtime: Vec<u8>,
        /// Skip the loopback scale run.
        #[arg(long)]
        no_scale: bool,
        /// Skip the VM run (only the loopback scale run).
        #[arg(long)]
        no_vm: bool,
        /// Also log every stage of each change (request, log append, commit, apply, director
        /// wake-up, kernel dump, diff, netlink) and print where the time goes. The extra log
        /// lines cost a little: the headline figures come from runs without it.
        #[arg(long)]
        stages: bool,
        /// How the VM's idle vCPUs wait, one boot each: `poll` (guest `idle=poll`: an idle
        /// vCPU spins, so neither it nor the host CPU under it sleeps) and `halt` (the guest
        /// kernel's default). On the project's cloud machines a halted vCPU took 2.3–2.9 ms to
        /// wake at the p99, the emulator's and host's cost, not corrald's; both are reported
        /// (docs/BENCHMARKS.md, propagation Round 19).
        #[arg(long, value_delimiter = ',', default_values = ["poll", "halt"])]
        guest_idle: Vec<GuestIdle>,
    },
    /// corrald vs keepalived: failover time at 10 ms / 50 ms / 1 s, CPU of 256 instances (host netns, root).
    Vrrp {
        /// Failovers per implementation and interval (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// CPU measurement window in seconds (0 skips the CPU part).
        #[arg(long, default_value_t = 30)]
        cpu_seconds: u64,
        /// Advert intervals to time failovers at, in ms.
        #[arg(long, value_delimiter = ',', default_values_t = vec![10, 50, 1000])]
        intervals: Vec<u64>,
        /// Links for the CPU part: `veth` (the receiver's work runs in the sender's softirq and
        /// is billed to it) and/or `veth-napi` (threaded NAPI on the receiving ends: that work
        /// runs in `napi/…` kernel threads, as it would on another machine).
        #[arg(long, value_delimiter = ',', default_values_t = vec!["veth".to_owned(), "veth-napi".to_owned()])]
        cpu_links: Vec<String>,
    },
    /// N real servers checked every 1 s by corrald on loopback: one node alone, then 3 nodes
    /// with k = 3; CPU, memory and check rounds per node.
    Checks {
        #[arg(long, default_value_t = 10_000)]
        real_servers: usize,
        /// Measurement window in seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Where the backends live: loopback, veth (own namespace over a veth pair), veth-napi
        /// (the same with threaded NAPI on the backends' end); comma-separated.
        #[arg(long, default_value = "loopback,veth,veth-napi")]
        setups: String,
        /// Check kinds to run, each with its own anchor: tcp (full connect), tcp_half_open (SYN
        /// only); comma-separated.
        #[arg(long, default_value = "tcp,tcp_half_open")]
        kinds: String,
    },
}

#[derive(Subcommand)]
enum VmCmd {
    /// Runs the `tests` crate's kernel tests (those marked #[ignore = "needs a kernel with IPVS…"]) in the VM.
    Test {
        /// Only tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Runs a shell command in the VM (corralctl, corrald, ipvsadm and ip are on PATH).
    Run {
        #[arg(trailing_var_arg = true, required = true)]
        cmd: Vec<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = std::env::set_current_dir(workspace_root()) {
        eprintln!("xtask: cannot cd to the workspace root: {e}");
        return ExitCode::FAILURE;
    }
    let result = match args.cmd {
        Cmd::Test => test_all(),
        Cmd::Demo => demo(),
        Cmd::Bench { cmd: BenchCmd::Ipvs { sizes } } => bench_ipvs(&sizes),
        Cmd::Bench { cmd: BenchCmd::Vrrp { repeats, cpu_seconds, intervals, cpu_links } } => bench_vrrp::parse_links(&cpu_links)
            .and_then(|links| build_bins(true).map(|_| links))
            .and_then(|links| bench_vrrp::run(&target_dir().join("release/corrald"), repeats, Duration::from_secs(cpu_seconds), &intervals, &links)),
        Cmd::Bench { cmd: BenchCmd::Cluster { sizes } } => {
            build_bins(true).and_then(|_| {
                let mut cmd = cargo();
                cmd.args(["build", "--release", "-p", "tests", "--bin", "corral-bench-gossip"]);
                check(cmd.status(), "cargo build corral-bench-gossip")?;
                bench_cluster::run(&target_dir().join("release/corrald"), &target_dir().join("release/corral-bench-gossip"), &sizes)
            })
        }
        Cmd::Bench { cmd: BenchCmd::Propagation { changes, scale, directors, realtime, no_scale, no_vm, stages, guest_idle } } => {
            bench_propagation(changes, if no_vm { &[] } else { &directors }, &realtime, if no_scale { &[] } else { &scale }, stages, &guest_idle)
        }
        Cmd::Bench { cmd: BenchCmd::Checks { real_servers, seconds, setups, kinds } } => build_bins(true).and_then(|_| {
            let mut cmd = cargo();
            cmd.args(["build", "--release", "-p", "check", "--example", "many_tcp"]);
            check(cmd.status(), "cargo build many_tcp")?;
            bench_checks::run(
                &target_dir().join("release/corrald"),
                &target_dir().join("release/examples/many_tcp"),
                real_servers,
                Duration::from_secs(seconds),
                &bench_checks::parse_setups(&setups)?,
                &bench_checks::parse_kinds(&kinds)?,
            )
        }),
        Cmd::Vm { cmd: VmCmd::Test { filter } } => vm_test(filter.as_deref()),
        Cmd::Vm { cmd: VmCmd::Run { cmd } } => vm_run(&cmd.join(" ")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Where build products and the VM cache live (honours CARGO_TARGET_DIR).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// Fetches the kernel (once), packs `payload` into an initramfs and boots it.
///
/// A boot whose guest kernel locked up (`vm::GuestLockup`: its CPUs stopped, so nothing in it
/// ran to an outcome) is booted once more, saying so; a second lockup fails. Any other
/// failure, a failed test among them, is never retried.
fn boot_vm(payload: &vm::Payload, timeout: Duration, quiet: bool) -> Result<vm::Outcome> {
    let cache = vm_cache()?;
    let kernel = vm::kernel(&cache)?;
    let initrd = vm::initramfs(&cache, &kernel, payload)?;
    match vm::boot(&kernel, &initrd, &payload.kernel_args, timeout, quiet) {
        Err(e) if e.downcast_ref::<vm::GuestLockup>().is_some() => {
            eprintln!(
                "xtask: {e:#}: the guest's CPUs stopped making progress (backtraces above), so that boot has no \
                 result; booting it once more (a second lockup fails)"
            );
            vm::boot(&kernel, &initrd, &payload.kernel_args, timeout, quiet).context("the second boot, after a guest kernel lockup")
        }
        other => other,
    }
}

fn vm_cache() -> Result<PathBuf> {
    let dir = target_dir().join("vm-cache");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn check(status: std::io::Result<std::process::ExitStatus>, what: &str) -> Result<()> {
    let status = status.with_context(|| format!("run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn test_all() -> Result<()> {
    // The lab tests start corrald and corralctl as real processes: build them first.
    check(cargo().args(["build", "--workspace", "--bins"]).status(), "cargo build --bins")?;
    check(cargo().args(["test", "--workspace"]).status(), "cargo test --workspace")?;
    vm_test(None)?;
    // The demo checks its own traffic tallies; a broken demo is a failed test run.
    demo()
}

/// Builds corralctl and corrald (release-like speed matters for benchmarks; tests use debug).
fn build_bins(release: bool) -> Result<Vec<(PathBuf, String)>> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "ops", "-p", "node"]);
    if release {
        cmd.arg("--release");
    }
    check(cmd.status(), "cargo build (corralctl, corrald)")?;
    let dir = target_dir().join(if release { "release" } else { "debug" });
    let mut files: Vec<(PathBuf, String)> = ["corralctl", "corrald"]
        .iter()
        .map(|b| (dir.join(b), format!("/usr/bin/{b}")))
        .filter(|(p, _)| p.exists())
        .collect();
    // A/B runs and profiling in one boot (VM-to-VM spread is larger than most effects):
    // XTASK_VM_EXTRA=/path/corrald-a:/path/corrald-b:/usr/bin/perf puts those files in the
    // VM's /usr/bin too (the tests crate's CORRALD=/usr/bin/corrald-a picks one).
    if let Some(extra) = std::env::var_os("XTASK_VM_EXTRA") {
        for p in std::env::split_paths(&extra) {
            let name = p.file_name().context("XTASK_VM_EXTRA: a path without a file name")?.to_string_lossy().into_owned();
            files.push((p, format!("/usr/bin/{name}")));
        }
    }
    Ok(files)
}

/// Test executables of the `tests` crate, from cargo's JSON messages.
fn test_binaries() -> Result<Vec<PathBuf>> {
    let out = cargo()
        .args(["test", "-p", "tests", "--no-run", "--message-format=json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests crate failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["reason"] == "compiler-artifact" && v["profile"]["test"] == true {
            if let Some(exe) = v["executable"].as_str() {
                bins.push(PathBuf::from(exe));
            }
        }
    }
    if bins.is_empty() {
        bail!("the tests crate produced no test executables");
    }
    Ok(bins)
}

/// First line of the test and demo VMs' scripts: no address-space randomisation in the guest.
/// Under TCG every process whose code sits at new addresses has that code translated afresh
/// (qemu caches translations by virtual address), so each `ip`, `ipvsadm` or `corralctl` the
/// tests start was translated from scratch, and the VM tests generated about 7 GB of
/// translated code, overflowing qemu's 1 GiB cache 7 times; each flush stalls every running
/// daemon while its code is translated again. Without randomisation the same run generates
/// 0.3 GB, flushes never, and takes half the time (147 → 78 s; docs/BENCHMARKS.md,
/// propagation Round 10). What the tests check does not depend on the address layout. The
/// benchmarks keep randomisation, as production directors do.
const NO_ASLR: &str = "echo 0 > /proc/sys/kernel/randomize_va_space\n";

fn vm_test(filter: Option<&str>) -> Result<()> {
    let mut payload = vm::Payload { files: build_bins(false)?, ..Default::default() };
    let mut script = format!("{NO_ASLR}rc=0\n");
    let tests = test_binaries()?;
    for exe in &tests {
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        payload.files.push((exe.clone(), format!("/tests/{name}")));
        let filter = filter.map(|f| format!(" '{f}'")).unwrap_or_default();
        script.push_str(&format!(
            "/tests/{name} --ignored --test-threads=1{filter}; c=$?; echo \"CORRAL-EXIT {name} $c\"; [ $c -eq 0 ] || rc=1\n"
        ));
    }
    script.push_str("exit $rc\n");
    payload.script = script;
    payload.env = vec![
        ("CORRAL_VM".into(), "1".into()),
        ("CORRALCTL".into(), "/usr/bin/corralctl".into()),
        ("CORRALD".into(), "/usr/bin/corrald".into()),
        ("RUST_BACKTRACE".into(), "1".into()),
    ];
    if std::env::var("CI").as_deref() == Ok("true") {
        payload.env.push(("CI".into(), "true".into()));
    }
    let outcome = boot_vm(&payload, Duration::from_secs(1800), false)?;
    report(&outcome, tests.len() + 1)
}

/// Fails unless every expected exit marker was seen and all were 0.
fn report(outcome: &vm::Outcome, expected: usize) -> Result<()> {
    eprintln!("vm: finished in {:.1}s", outcome.elapsed.as_secs_f64());
    if outcome.exits.len() != expected {
        bail!("VM reported {} of {expected} exit markers (crash or panic inside?): {:?}", outcome.exits.len(), outcome.exits);
    }
    let failed: Vec<_> = outcome.exits.iter().filter(|(_, c)| *c != 0).collect();
    if !failed.is_empty() {
        bail!("inside the VM these failed: {failed:?}");
    }
    Ok(())
}

fn vm_run(cmd: &str) -> Result<()> {
    let payload = vm::Payload { files: build_bins(true)?, script: cmd.to_owned(), ..Default::default() };
    let outcome = boot_vm(&payload, Duration::from_secs(1800), false)?;
    report(&outcome, 1)
}

/// A rule file of `services` virtual services with 10 real servers each, in `ipvsadm -S` form.
fn rule_file(services: usize) -> String {
    let mut out = String::new();
    for i in 0..services {
        let vip = format!("203.0.113.{}:{}", 1 + i % 250, 1000 + i / 250);
        let sched = ["wlc", "rr", "wrr", "sh"][i % 4];
        out.push_str(&format!("-A -t {vip} -s {sched}\n"));
        for h in 1..=10 {
            out.push_str(&format!("-a -t {vip} -r 198.51.100.{h}:80 -m -w {}\n", 1 + (i + h) % 5));
        }
    }
    out
}

/// One VM boot runs both tools on the same files; the figures come back as `BENCH key value` lines.
fn bench_ipvs(sizes: &[usize]) -> Result<()> {
    let cache = vm_cache()?;
    let mut payload = vm::Payload { files: build_bins(true)?, ..Default::default() };
    let mut script = String::from(
        r#"set -e
now() { echo $EPOCHREALTIME; }
ms() { echo "$1 $2" | awk '{printf "%.1f", ($2-$1)*1000}'; }
"#,
    );
    for &n in sizes {
        let rules = rule_file(n);
        let changed = rules.replacen("-r 198.51.100.1:80 -m -w", "-r 198.51.100.1:80 -m -w 9 -x 0 #", 1);
        // One weight changed: same line count, only the first service's first dest differs.
        let changed: String = changed.lines().map(|l| match l.find(" -x 0 #") {
            Some(i) => format!("{}\n", &l[..i]),
            None => format!("{l}\n"),
        }).collect();
        let f = cache.join(format!("rules-{n}.txt"));
        let g = cache.join(format!("rules-{n}-changed.txt"));
        std::fs::write(&f, &rules)?;
        std::fs::write(&g, &changed)?;
        payload.files.push((f, format!("/bench/rules-{n}.txt")));
        payload.files.push((g, format!("/bench/rules-{n}-changed.txt")));
        let ops = n * 11;
        // Each tool gets a fresh network namespace (IPVS is per namespace): after a flush the
        // kernel keeps deleted destinations in a trash list for a minute, and every add scans
        // it, so whichever tool ran second on a flushed table would be measured unfairly.
        script.push_str(&format!(
            r#"
ip netns add a{n}; ip netns add c{n}; ip -n a{n} link set lo up; ip -n c{n} link set lo up
t0=$(now); ip netns exec a{n} ipvsadm -R < /bench/rules-{n}.txt; t1=$(now)
echo "BENCH ipvsadm_restore_{n}_ms $(ms $t0 $t1)"
t0=$(now); ip netns exec c{n} corralctl ipvs restore < /bench/rules-{n}.txt 2>/tmp/restore-{n}.log; t1=$(now)
echo "BENCH corralctl_restore_{n}_ms $(ms $t0 $t1)"
echo "BENCH corralctl_restore_{n}_report $(cat /tmp/restore-{n}.log | tr ' ' '_')"
ip netns exec a{n} ipvsadm -Sn > /tmp/ipvsadm-{n}.txt
ip netns exec c{n} ipvsadm -Sn > /tmp/corral-{n}.txt
if cmp -s /tmp/ipvsadm-{n}.txt /tmp/corral-{n}.txt; then echo "BENCH identical_{n} yes"; else echo "BENCH identical_{n} NO"; exit 1; fi
t0=$(now); ip netns exec a{n} ipvsadm -e -t 203.0.113.1:1000 -r 198.51.100.1:80 -m -w 9; t1=$(now)
echo "BENCH ipvsadm_one_change_{n}_ms $(ms $t0 $t1)"
t0=$(now); ip netns exec c{n} corralctl ipvs restore < /bench/rules-{n}-changed.txt 2>/tmp/change-{n}.log; t1=$(now)
echo "BENCH corralctl_one_change_{n}_ms $(ms $t0 $t1)"
echo "BENCH corralctl_one_change_{n}_report $(cat /tmp/change-{n}.log | tr ' ' '_')"
grep -q "in 1 netlink request(s)" /tmp/change-{n}.log || {{ echo "BENCH one_request_{n} NO"; exit 1; }}
ip netns exec a{n} ipvsadm -Sn > /tmp/ipvsadm-{n}.txt
ip netns exec c{n} ipvsadm -Sn > /tmp/corral-{n}.txt
cmp -s /tmp/ipvsadm-{n}.txt /tmp/corral-{n}.txt || {{ echo "BENCH identical_after_change_{n} NO"; exit 1; }}
echo "BENCH objects_{n} {ops}"
ip netns del a{n}; ip netns del c{n}
"#
        ));
    }
    payload.script = script;
    let outcome = boot_vm(&payload, Duration::from_secs(3000), true)?;
    let figures: Vec<(String, String)> = outcome
        .log
        .lines()
        .filter_map(|l| l.strip_prefix("BENCH "))
        .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    if let Err(e) = report(&outcome, 1) {
        let tail: Vec<&str> = outcome.log.lines().rev().take(30).collect();
        eprintln!("--- last lines of the VM console ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        return Err(e);
    }
    let get = |k: &str| figures.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    println!("\n| rules | ipvsadm -R | corralctl restore | speed-up | one change: ipvsadm -e | one change: corralctl | identical -Sn |");
    println!("|---|---|---|---|---|---|---|");
    for &n in sizes {
        let a: f64 = get(&format!("ipvsadm_restore_{n}_ms")).parse().unwrap_or(f64::NAN);
        let b: f64 = get(&format!("corralctl_restore_{n}_ms")).parse().unwrap_or(f64::NAN);
        println!(
            "| {n} x 10 ({} objects) | {a:.0} ms | {b:.0} ms | {:.1}x | {} ms | {} ms | {} |",
            get(&format!("objects_{n}")),
            a / b,
            get(&format!("ipvsadm_one_change_{n}_ms")),
            get(&format!("corralctl_one_change_{n}_ms")),
            get(&format!("identical_{n}"))
        );
    }
    for &n in sizes {
        println!("corralctl report {n}: {}", get(&format!("corralctl_restore_{n}_report")).replace('_', " "));
        println!("corralctl one change {n}: {}", get(&format!("corralctl_one_change_{n}_report")).replace('_', " "));
    }
    Ok(())
}

/// How the benchmark VM's idle vCPUs wait (`bench propagation --guest-idle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GuestIdle {
    /// Guest `idle=poll`: an idle vCPU spins instead of halting.
    Poll,
    /// The guest kernel's default: an idle vCPU halts (its qemu thread sleeps on the host).
    Halt,
}

impl GuestIdle {
    fn kernel_args(self) -> &'static str {
        match self {
            GuestIdle::Poll => "idle=poll",
            GuestIdle::Halt => "",
        }
    }

    fn label(self) -> &'static str {
        match self {
            GuestIdle::Poll => "poll",
            GuestIdle::Halt => "halt",
        }
    }
}

fn bench_propagation(changes: usize, directors: &[usize], realtime: &[u8], scale: &[usize], stages: bool, idle: &[GuestIdle]) -> Result<()> {
    let mut files = build_bins(true)?;
    // The loopback part first, on a quiet host (not while the VM's exit is being cleaned up).
    bench_propagation_scale(scale, stages)?;
    if directors.is_empty() {
        return Ok(());
    }
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "tests", "--bin", "corral-bench-propagation"]);
    check(cmd.status(), "cargo build corral-bench-propagation")?;
    files.push((target_dir().join("release/corral-bench-propagation"), "/usr/bin/corral-bench-propagation".into()));
    let list: Vec<String> = directors.iter().map(|d| d.to_string()).collect();
    let flag = if stages { " --stages" } else { "" };
    let rts: Vec<String> = realtime.iter().map(|r| r.to_string()).collect();
    let script = format!(
        "set -e\nfor n in {}; do for rt in {}; do corral-bench-propagation --directors $n --realtime $rt --changes {changes}{flag}; done; done\n",
        list.join(" "),
        rts.join(" ")
    );
    let (mut outcomes, mut failed) = (Vec::new(), None::<anyhow::Error>);
    for &mode in idle {
        eprintln!("bench propagation: VM part (kernel IPVS, TCG), guest idle: {}", mode.label());
        let payload = vm::Payload { files: files.clone(), script: script.clone(), kernel_args: mode.kernel_args().into(), ..Default::default() };
        // A failed boot does not throw away the ones before it: their figures are printed,
        // then the first error is returned.
        match boot_vm(&payload, Duration::from_secs(3000), true) {
            Ok(outcome) => outcomes.push((mode, outcome)),
            Err(e) => {
                failed.get_or_insert(e.context(format!("the VM with guest idle {}", mode.label())));
            }
        }
    }
    println!("## propagation: change sent to the leader → applied in every director's kernel ({}, TCG)", vm::emulator_version());
    println!("| directors | scheduling | guest idle | changes measured | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    for (mode, outcome) in &outcomes {
        for l in outcome.log.lines().filter(|l| l.starts_with("PROPAGATION ")) {
            let f = |k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or("?").to_string();
            let sched = match f("realtime=").as_str() {
                "0" => "normal".to_string(),
                p => format!("realtime_priority = {p}"),
            };
            println!(
                "| {} (VM, kernel IPVS) | {sched} | {} | {} | {} ms | {} ms | {} ms |",
                f("directors="),
                mode.label(),
                f("changes="),
                f("p50_ms="),
                f("p99_ms="),
                f("max_ms=")
            );
        }
    }
    for (mode, outcome) in &outcomes {
        let prefixes = ["PROPAGATION_WAKE ", "PROPAGATION_WARMUP ", "PROPAGATION_CPU "];
        for l in outcome.log.lines().filter(|l| prefixes.iter().any(|p| l.starts_with(p))) {
            println!("guest idle {}: {l}", mode.label());
        }
        let mut stages = outcome.log.lines().filter_map(|l| l.strip_prefix("STAGES ")).peekable();
        if stages.peek().is_some() {
            println!("\n### stages, guest idle {}", mode.label());
        }
        for l in stages {
            println!("{l}");
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    outcomes.iter().try_for_each(|(_, outcome)| report(outcome, 1))
}

/// The loopback part of `bench propagation`: corrald processes on 127.0.0.1 with the in-memory
/// IPVS model. With `stages`, each node logs its stage marks and the logs are kept (path printed).
fn bench_propagation_scale(scale: &[usize], stages: bool) -> Result<()> {
    if !scale.is_empty() {
        println!("\n## propagation at scale (loopback processes, in-memory IPVS model)");
        println!("| nodes | changes measured | p50 | p99 | max | first 5 changes (unmeasured warm-up) |");
        println!("|---|---|---|---|---|---|");
    }
    // CORRALD=path measures another build (A/B runs); the default is the release build.
    let corrald = std::env::var_os("CORRALD").map_or_else(|| target_dir().join("release/corrald"), PathBuf::from);
    for &n in scale {
        match bench_cluster::propagation_scale(&corrald, n, 100, stages) {
            Ok(row) => println!("{row}"),
            Err(e) => println!("| {n} | failed: {e:#} | | | | |"),
        }
    }
    Ok(())
}

fn demo() -> Result<()> {
    eprintln!("demo: building corralctl and booting a Debian kernel with IPVS in qemu (the host kernel has none)");
    let payload = vm::Payload { files: build_bins(true)?, script: format!("{NO_ASLR}{}", include_str!("demo.sh")), ..Default::default() };
    let outcome = boot_vm(&payload, Duration::from_secs(600), false)?;
    report(&outcome, 1)
}
