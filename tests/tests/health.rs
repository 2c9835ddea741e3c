//! Consensus health checks in the namespace lab: three `corrald` processes check two HTTP
//! backends (Python's http.server in their own namespaces) and commit verdicts through Raft.
//! The kernel side (the verdict leaving every director's IPVS table) is the VM test in
//! `director.rs`; here the committed verdicts are read with `corralctl rs list`.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::cluster::{binaries, LabCluster};
use tests::{require_root, wait_for, Daemon};

const B1: &str = "192.0.2.4:8080";
const B2: &str = "192.0.2.5:8080";
/// Checked by a MISC_CHECK script with `misc_dynamic` (its exit code sets the weight); nothing
/// listens there.
const B3: &str = "192.0.2.6:9000";

/// The MISC_CHECK script of B3: exits with the code written in `code` beside it.
fn weight_script(root: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = root.join("weight.sh");
    if !root.join("code").exists() {
        std::fs::write(root.join("code"), "0").unwrap();
    }
    std::fs::write(&script, format!("#!/bin/sh\nexit $(cat {})\n", root.join("code").display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn rules(observers: u32, hooks: &std::path::Path) -> String {
    format!(
        r#"[health]
observers = {observers}

[[virtual_server]]
address = "192.0.2.100:80"
scheduler = "rr"
check = {{ type = "http", path = "/", interval = "300ms", connect_timeout = "200ms", retries = 0, fall = 2, rise = 2 }}
[[virtual_server.real_server]]
address = "{B1}"
notify_up = "echo \"$CORRAL_SUBJECT $CORRAL_EVENT\" >> {h}"
notify_down = "echo \"$CORRAL_SUBJECT $CORRAL_EVENT\" >> {h}"
[[virtual_server.real_server]]
address = "{B2}"
[[virtual_server.real_server]]
address = "{B3}"
weight = 3
check = {{ type = "script", misc_path = "{s}", misc_dynamic = true, interval = "300ms", fall = 1, rise = 1 }}
notify_up = "echo \"$CORRAL_SUBJECT $CORRAL_EVENT\" >> {h}"
"#,
        h = hooks.display(),
        s = weight_script(hooks.parent().unwrap()).display()
    )
}

/// `rs list -o json` rows from node `i`.
fn rows(c: &LabCluster, i: usize) -> Option<Vec<Value>> {
    let o = c.ctl(i, "rs list -o json");
    if o.code != 0 {
        return None;
    }
    let v: Value = serde_json::from_str(&o.stdout).ok()?;
    v["rows"].as_array().cloned()
}

fn row(c: &LabCluster, i: usize, rs: &str) -> Option<Value> {
    rows(c, i)?.into_iter().find(|r| r["address"] == rs)
}

/// The committed verdict of `rs` as node `i` has it (`up?` = default, nothing committed).
fn verdict(c: &LabCluster, i: usize, rs: &str) -> Option<String> {
    let r = row(c, i, rs)?;
    let v = r["verdict"].as_str()?.to_string();
    Some(if r["committed"] == true { v } else { format!("{v}?") })
}

/// Observer name → its local state for `rs`, as node `i` gathers them.
fn observer_states(c: &LabCluster, i: usize, rs: &str) -> Vec<(String, String)> {
    row(c, i, rs)
        .and_then(|r| r["observers"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|o| (o["node"].as_str().unwrap_or("?").to_string(), o["result"]["state"].as_str().unwrap_or("no answer").to_string()))
        .collect()
}

fn backend(c: &LabCluster, host: usize) -> Daemon {
    let ip = format!("192.0.2.{}", host + 1);
    let mut cmd = c.lan.hosts[host].cmd("python3");
    cmd.args(["-m", "http.server", "--bind", &ip, "8080", "--directory", "/"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    Daemon::spawn(cmd, &format!("backend {ip}"))
}

/// corrald and corralctl for a namespace-lab test: needs root (a loud skip without it, a
/// failure under CI) and the built binaries.
fn lab_binaries(test: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    if !require_root(test) {
        return None;
    }
    binaries(test)
}

/// [`lab_binaries`] for tests whose backends are Python's http.server: python3 is required too.
fn python_lab_binaries(test: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let bins = lab_binaries(test)?;
    if std::process::Command::new("python3").arg("--version").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: python3 missing");
        eprintln!("SKIP: {test}: python3 missing");
        return None;
    }
    Some(bins)
}

/// Writes `text` as the lab's services.toml and applies it through d1; `what` names the step
/// in a failure.
fn apply(c: &LabCluster, text: &str, what: &str) {
    let file = c.root().join("services.toml");
    std::fs::write(&file, text).unwrap();
    let o = c.ctl(0, &format!("apply -f {}", file.display()));
    assert_eq!(o.code, 0, "{what}: {}{}", o.stdout, o.stderr);
}

/// One director on the in-memory IPVS model, for the quorum tests (their hooks and FIFOs go in
/// the returned directory): needs root, loudly skipped without it.
fn one_director_lab(test: &str) -> Option<(LabCluster, std::path::PathBuf)> {
    let (d, ctl) = lab_binaries(test)?;
    let mut c = LabCluster::new(test, 1, d, ctl);
    c.extra_sections = "[director]\nipvs = \"memory\"\n".into();
    let dir = c.root().to_path_buf();
    Some((c, dir))
}

fn committed_lines(c: &LabCluster) -> usize {
    (0..c.nodes.len())
        .map(|i| std::fs::read_to_string(c.nodes[i].log()).unwrap_or_default().matches("health verdict committed").count())
        .sum()
}

#[test]
fn verdicts_need_a_majority_of_observers() {
    let test = "health_verdicts";
    let Some((d, ctl)) = python_lab_binaries(test) else { return };
    // d1-d3 are directors on hosts 1-3; the backends live on hosts 4 and 5.
    let mut c = LabCluster::with_hosts(test, 3, 5, d, ctl);
    c.cluster_extra = "dead_grace = \"3s\"\nprobe_period = \"300ms\"\nsuspect_timeout = \"1s\"\n".into();
    let hooks = c.root().join("hooks.log");
    c.form(Duration::from_secs(20));
    c.wait_settled(Duration::from_secs(20));
    let mut b1 = Some(backend(&c, 3));
    let _b2 = backend(&c, 4);
    let listening = |c: &LabCluster, addr: &str| {
        let (ip, port) = addr.split_once(':').unwrap();
        c.lan.hosts[0].try_sh(&format!("bash -c 'exec 3<>/dev/tcp/{ip}/{port}'")).status.success()
    };
    let ready = wait_for(Duration::from_secs(10), || listening(&c, B1) && listening(&c, B2));
    assert!(ready.is_some(), "backends did not start listening");
    apply(&c, &rules(3, &hooks), "apply");

    // Every director observes both backends (3 directors, k = 3) and sees them up.
    let all_up = |c: &LabCluster, rs: &str| {
        let s = observer_states(c, 0, rs);
        s.len() == 3 && s.iter().all(|(_, st)| st == "up")
    };
    let ok = wait_for(Duration::from_secs(15), || all_up(&c, B1) && all_up(&c, B2));
    assert!(ok.is_some(), "observers never all up: {:?} {:?}\n{}", observer_states(&c, 0, B1), observer_states(&c, 0, B2), c.log_tail(0));
    assert_eq!(verdict(&c, 1, B1).as_deref(), Some("up?"), "nothing to commit while all agree");
    assert_eq!(committed_lines(&c), 0);

    // B2 unreachable from d3 only (a broken route in that director's namespace): d3 sees it
    // down, the verdict stays up everywhere.
    c.lan.hosts[2].sh("ip route add blackhole 192.0.2.5/32");
    let d3_down = wait_for(Duration::from_secs(10), || observer_states(&c, 0, B2).iter().any(|(n, s)| n == "d3" && s == "down"));
    assert!(d3_down.is_some(), "d3 never saw B2 down: {:?}", observer_states(&c, 0, B2));
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..3 {
        assert_eq!(verdict(&c, i, B2).as_deref(), Some("up?"), "one director's broken route evicted B2 (seen from d{})", i + 1);
    }

    // B1 stopped: down on every node after the fall count, hook run once for the cluster.
    b1.take();
    let t = Instant::now();
    let down = wait_for(Duration::from_secs(10), || (0..3).all(|i| verdict(&c, i, B1).as_deref() == Some("down")));
    eprintln!("B1 stopped → committed down on all 3 nodes after {:?} (fall 2 × 300 ms)", t.elapsed());
    assert!(down.is_some(), "B1 not down everywhere: {:?}\n{}", (0..3).map(|i| verdict(&c, i, B1)).collect::<Vec<_>>(), c.log_tail(0));
    let r = row(&c, 1, B1).unwrap();
    assert!(r["reason"].as_str().is_some_and(|s| !s.is_empty()), "no reason recorded: {r}");
    let hook_down = wait_for(Duration::from_secs(5), || std::fs::read_to_string(&hooks).unwrap_or_default().contains("DOWN"));
    assert!(hook_down.is_some(), "notify_down did not run");

    // Back after the rise count.
    b1 = Some(backend(&c, 3));
    let t = Instant::now();
    assert!(wait_for(Duration::from_secs(10), || listening(&c, B1)).is_some());
    let up = wait_for(Duration::from_secs(10), || (0..3).all(|i| verdict(&c, i, B1).as_deref() == Some("up")));
    eprintln!("B1 restarted → committed up on all 3 nodes after {:?} (rise 2 × 300 ms)", t.elapsed());
    assert!(up.is_some(), "B1 not back up: {:?}", (0..3).map(|i| verdict(&c, i, B1)).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(500));
    let h = std::fs::read_to_string(&hooks).unwrap_or_default();
    assert_eq!(h.lines().filter(|l| l.ends_with("DOWN")).count(), 1, "notify_down must run once per cluster: {h}");
    assert_eq!(h.lines().filter(|l| l.ends_with(" UP")).count(), 1, "notify_up must run once per cluster: {h}");
    assert!(h.contains("TCP 192.0.2.100:80 -> 192.0.2.4:8080"), "{h}");

    // MISC_CHECK misc_dynamic: every observer's script exits 12 → weight 10, committed once
    // for the cluster and shown by rs list; no notify hook for a weight change.
    assert_eq!(row(&c, 0, B3).map(|r| r["script_weight"].clone()), Some(Value::Null), "no weight before the script sets one");
    std::fs::write(c.root().join("code"), "12").unwrap();
    let weighed = wait_for(Duration::from_secs(10), || (0..3).all(|i| row(&c, i, B3).is_some_and(|r| r["script_weight"] == 10 && r["verdict"] == "up")));
    assert!(weighed.is_some(), "script weight not committed: {:?}\n{}", row(&c, 0, B3), c.log_tail(0));
    assert!(!std::fs::read_to_string(&hooks).unwrap_or_default().contains(B3), "a weight change ran a notify hook");

    // A director restart causes no verdict change (no flapping), even for B2 which the
    // restarting node's peer d3 still sees down.
    let before = committed_lines(&c);
    c.kill(1);
    c.start(1);
    assert!(c.wait_up(1, Duration::from_secs(20)), "d2 did not restart: {}", c.log_tail(1));
    let back = wait_for(Duration::from_secs(15), || observer_states(&c, 0, B1).iter().any(|(n, s)| n == "d2" && s == "up"));
    assert!(back.is_some(), "d2 did not resume checking: {:?}", observer_states(&c, 0, B1));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(committed_lines(&c), before, "a director restart changed verdicts");
    assert_eq!(verdict(&c, 0, B1).as_deref(), Some("up"));
    assert_eq!(verdict(&c, 0, B2).as_deref(), Some("up?"));

    // Rule changes that leave every claim as it was send no observer reports, only the 2 s
    // refresh: a report from every node after every change would cost each director CPU on
    // each change (10 weight edits made ≈ 30 reports before).
    let leader = c.leader().expect("a leader");
    let received = |c: &LabCluster| -> u64 {
        let o = c.ctl(leader, "metrics");
        o.stdout
            .lines()
            .find(|l| l.starts_with("corral_health_reports_received_total "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no corral_health_reports_received_total in metrics: {}{}", o.stdout, o.stderr))
    };
    let r0 = received(&c);
    let t = Instant::now();
    for w in 2..12 {
        let o = c.ctl(leader, &format!("rs weight 192.0.2.100:80 {B2} {w}"));
        assert_eq!(o.code, 0, "rs weight: {}{}", o.stdout, o.stderr);
        std::thread::sleep(Duration::from_millis(100));
    }
    let reports = received(&c) - r0;
    let refreshes = 3 * ((t.elapsed().as_secs_f64() / 2.0).ceil() as u64 + 1);
    eprintln!("10 weight edits in {:?}: {reports} observer reports (refresh bound {refreshes})", t.elapsed());
    assert!(reports <= refreshes, "10 rule edits that change no claim made {reports} observer reports (more than the {refreshes} refreshes)");

    // A rule change that removes a live real server runs its notify_down, once for the
    // cluster (keepalived's reload does); putting it back (up by default) runs nothing.
    let full = rules(3, &hooks);
    let start = full.find(&format!("[[virtual_server.real_server]]\naddress = \"{B1}\"")).expect("B1's block");
    let end = start + 1 + full[start + 1..].find("[[virtual_server.real_server]]").expect("the block after B1's");
    apply(&c, &format!("{}{}", &full[..start], &full[end..]), "apply without B1");
    let b1_down = |h: &str| h.lines().filter(|l| *l == format!("TCP 192.0.2.100:80 -> {B1} DOWN")).count();
    let ran = wait_for(Duration::from_secs(5), || b1_down(&std::fs::read_to_string(&hooks).unwrap_or_default()) == 2);
    assert!(ran.is_some(), "removing live B1 did not run its notify_down: {}\n{}", std::fs::read_to_string(&hooks).unwrap_or_default(), c.log_tail(0));
    apply(&c, &full, "apply with B1 again");
    std::thread::sleep(Duration::from_secs(1));
    let h = std::fs::read_to_string(&hooks).unwrap_or_default();
    assert_eq!(b1_down(&h), 2, "notify_down for a removed real server must run once per cluster: {h}");
    assert_eq!(h.lines().filter(|l| l.ends_with(" UP")).count(), 1, "re-adding a real server ran notify_up: {h}");

    // Observers are reassigned when a director dies: with k = 2, kill one observer of B1; the
    // third director takes over, and the two live observers can still vote B1 down.
    c.lan.hosts[2].sh("ip route del blackhole 192.0.2.5/32");
    apply(&c, &rules(2, &hooks), "apply k=2");
    let two = wait_for(Duration::from_secs(5), || observer_states(&c, 0, B1).len() == 2);
    assert!(two.is_some(), "k = 2 not applied: {:?}", observer_states(&c, 0, B1));
    let obs: Vec<String> = observer_states(&c, 0, B1).into_iter().map(|(n, _)| n).collect();
    let leader = c.leader().expect("a leader");
    // Kill an observer that is not the leader (the leader is asked for rs list below).
    let victim = obs.iter().map(|n| n[1..].parse::<usize>().unwrap() - 1).find(|i| *i != leader).unwrap_or_else(|| {
        panic!("both observers {obs:?} cannot be the leader d{}", leader + 1);
    });
    let spare = (0..3).find(|i| !obs.contains(&format!("d{}", i + 1))).unwrap();
    c.kill(victim);
    let t = Instant::now();
    let moved = wait_for(Duration::from_secs(20), || {
        let s = observer_states(&c, leader, B1);
        s.iter().any(|(n, st)| *n == format!("d{}", spare + 1) && st == "up") && !s.iter().any(|(n, _)| *n == format!("d{}", victim + 1))
    });
    eprintln!("observer d{} killed → B1 observed by {:?} after {:?}", victim + 1, observer_states(&c, leader, B1), t.elapsed());
    assert!(moved.is_some(), "observers not reassigned: {:?}", observer_states(&c, leader, B1));
    b1.take();
    let down = wait_for(Duration::from_secs(10), || verdict(&c, leader, B1).as_deref() == Some("down"));
    assert!(down.is_some(), "B1 not voted down by the reassigned observers: {:?}", row(&c, leader, B1));
}

/// Script checks and hooks come with the replicated rules; the node's own `[node] script_user`
/// and `enable_script_security` decide who runs them (keepalived's settings). One node: first
/// as `nobody`, then restarted as root with script security, where a script in a directory
/// anyone can write is refused (check down with the reason, hook refused and counted) and never
/// runs.
#[test]
fn scripts_run_as_the_script_user_and_unsafe_ones_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let test = "health_script_policy";
    let Some((d, ctl)) = lab_binaries(test) else { return };
    let id = std::process::Command::new("id").args(["-u", "nobody"]).output().expect("run id");
    let nobody = String::from_utf8_lossy(&id.stdout).trim().to_string();
    assert!(!nobody.is_empty(), "{test}: this test needs the user nobody");
    let mut c = LabCluster::new(test, 1, d, ctl);
    let mode = |p: &std::path::Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(c.root(), 0o755);
    // `out` for the scripts' findings, writable by nobody; `shared` is writable by anyone (no
    // sticky bit), so a script in it could be replaced by any local user.
    let out = c.root().join("out");
    let shared = c.root().join("shared");
    for d in [&out, &shared] {
        std::fs::create_dir_all(d).unwrap();
        mode(d, 0o777);
    }
    let unsafe_script = shared.join("check.sh");
    std::fs::write(&unsafe_script, format!("#!/bin/sh\ntouch {}/unsafe-ran\nexit 0\n", out.display())).unwrap();
    mode(&unsafe_script, 0o755);
    let rules = format!(
        r#"[[virtual_server]]
address = "192.0.2.100:80"
scheduler = "rr"
[[virtual_server.real_server]]
address = "192.0.2.50:80"
check = {{ type = "script", misc_path = "id -u > {o}/check; exit 1", interval = "300ms", fall = 1, rise = 1 }}
notify_down = "id -u > {o}/hook"
[[virtual_server.real_server]]
address = "192.0.2.51:80"
check = {{ type = "script", misc_path = "{u}", interval = "300ms", fall = 1, rise = 1 }}
notify_down = "{u}"
"#,
        o = out.display(),
        u = unsafe_script.display()
    );
    c.node_extra = "script_user = \"nobody\"\nenable_script_security = true\n".into();
    c.form(Duration::from_secs(20));
    apply(&c, &rules, "apply");
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default().trim().to_string();

    // As nobody: the check and its notify_down hook run with nobody's uid. Script security
    // only guards root, so the script in `shared` runs too.
    let ran = wait_for(Duration::from_secs(10), || read("check") == nobody && read("hook") == nobody && out.join("unsafe-ran").exists());
    assert!(ran.is_some(), "check uid {:?}, hook uid {:?}, unsafe ran {}\n{}", read("check"), read("hook"), out.join("unsafe-ran").exists(), c.log_tail(0));
    let up = wait_for(Duration::from_secs(10), || observer_states(&c, 0, "192.0.2.51:80") == [("d1".to_string(), "up".to_string())]);
    assert!(up.is_some(), "the script in shared/ did not bring its server up: {:?}", observer_states(&c, 0, "192.0.2.51:80"));

    // Restarted as root with script security: the line's program (id, root's) runs as root;
    // the script anyone could have replaced is refused, as check and as hook.
    c.node_extra = "script_user = \"root\"\nenable_script_security = true\n".into();
    // The node's own scripts go through the same policy: a track script and the VRRP notify
    // scripts (the failing track script takes the instance to FAULT, which runs notify_fault).
    c.extra_sections = format!(
        "[[track_script]]\nname = \"chk\"\nscript = \"{u}\"\ninterval = \"300ms\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 61\npriority = 150\n\
         advert_interval = \"100ms\"\nvirtual_ips = [\"192.0.2.200/24\"]\ntrack_scripts = [\"chk\"]\nnotify_master = \"{u}\"\nnotify_backup = \"{u}\"\nnotify_fault = \"{u}\"\n",
        u = unsafe_script.display()
    );
    c.kill(0);
    std::fs::remove_file(out.join("check")).unwrap();
    std::fs::remove_file(out.join("unsafe-ran")).unwrap();
    c.configure(0, &[], None);
    c.start(0);
    assert!(c.wait_up(0, Duration::from_secs(20)), "d1 did not restart: {}", c.log_tail(0));
    let root_ran = wait_for(Duration::from_secs(10), || read("check") == "0");
    assert!(root_ran.is_some(), "check uid as root: {:?}", read("check"));
    let down = wait_for(Duration::from_secs(10), || verdict(&c, 0, "192.0.2.51:80").as_deref() == Some("down"));
    assert!(down.is_some(), "the refused script's server is not down: {:?}\n{}", row(&c, 0, "192.0.2.51:80"), c.log_tail(0));
    let r = row(&c, 0, "192.0.2.51:80").unwrap();
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("refused to run") && reason.contains(&format!("{} is writable by everyone", shared.display())),
        "reason should name the unsafe directory: {reason:?}"
    );
    let metric = |m: &str| {
        let text = c.ctl(0, "metrics").stdout;
        text.lines().find_map(|l| l.strip_prefix(m).and_then(|v| v.trim().parse::<u64>().ok())).unwrap_or(0)
    };
    let counted = wait_for(Duration::from_secs(5), || metric("corral_scripts_refused_total ") >= 3 && metric("corral_check_failures_total{reason=\"script_refused\"} ") >= 1);
    assert!(counted.is_some(), "refusals not counted:\n{}", c.ctl(0, "metrics").stdout);
    let log = std::fs::read_to_string(c.nodes[0].log()).unwrap_or_default();
    for what in ["DOWN", "track_script", "notify"] {
        assert!(log.contains(&format!("what=\"{what}\"")) && log.contains("refused to run"), "no refusal logged for {what}:\n{}", c.log_tail(0));
    }
    std::thread::sleep(Duration::from_millis(600));
    assert!(!out.join("unsafe-ran").exists(), "a script in a world-writable directory ran as root");
}

/// keepalived's quorum with hysteresis as a band, through the cluster: quorum 2, hysteresis 1
/// over real servers of weight 1 and 2 (script checks the test switches). The quorum is lost
/// only when the live weight falls below 1 and back only at 3; in between the committed state
/// holds, and each move runs its hook once.
#[test]
fn quorum_hysteresis_is_a_band_and_each_move_runs_its_hook_once() {
    let Some((mut c, dir)) = one_director_lab("health_quorum_band") else { return };
    let hooks = dir.join("quorum.log");
    // keepalived's RS/VS lines: in notify_fifo (every line) and lvs_notify_fifo (LVS lines).
    let (all_fifo, lvs_fifo) = (dir.join("notify.fifo"), dir.join("lvs.fifo"));
    c.node_extra = format!("notify_fifo = \"{}\"\nlvs_notify_fifo = \"{}\"\n", all_fifo.display(), lvs_fifo.display());
    let rules = format!(
        r#"[[virtual_server]]
address = "192.0.2.100:80"
sorry_server = "198.51.100.99:80"
quorum = 2
hysteresis = 1
quorum_down = "echo \"$CORRAL_SUBJECT $CORRAL_EVENT\" >> {h}"
quorum_up = "echo \"$CORRAL_SUBJECT $CORRAL_EVENT\" >> {h}"
[[virtual_server.real_server]]
address = "198.51.100.1:80"
weight = 1
check = {{ type = "script", misc_path = "test -e {d}/up1", interval = "200ms", fall = 1, rise = 1 }}
[[virtual_server.real_server]]
address = "198.51.100.2:80"
weight = 2
check = {{ type = "script", misc_path = "test -e {d}/up2", interval = "200ms", fall = 1, rise = 1 }}
"#,
        h = hooks.display(),
        d = dir.display()
    );
    std::fs::write(dir.join("up1"), "").unwrap();
    std::fs::write(dir.join("up2"), "").unwrap();
    c.form(Duration::from_secs(20));
    apply(&c, &rules, "apply");
    let events = || std::fs::read_to_string(&hooks).unwrap_or_default().lines().map(|l| l.rsplit(' ').next().unwrap_or("").to_string()).collect::<Vec<_>>();
    let observed = |rs: &str, state: &str| observer_states(&c, 0, rs) == [("d1".to_string(), state.to_string())];
    let (rs1, rs2) = ("198.51.100.1:80", "198.51.100.2:80");
    assert!(wait_for(Duration::from_secs(10), || observed(rs1, "up") && observed(rs2, "up")).is_some(), "checks not up");
    // Weight 2 down: live 1, not below quorum - hysteresis (1): quorum kept.
    std::fs::remove_file(dir.join("up2")).unwrap();
    assert!(wait_for(Duration::from_secs(10), || verdict(&c, 0, rs2).as_deref() == Some("down")).is_some(), "rs2 not down");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(events(), Vec::<String>::new(), "quorum lost at live weight 1");
    // Weight 1 down too: live 0, lost.
    std::fs::remove_file(dir.join("up1")).unwrap();
    assert!(wait_for(Duration::from_secs(10), || events() == ["QUORUM_DOWN"]).is_some(), "no QUORUM_DOWN: {:?}\n{}", events(), c.log_tail(0));
    // Weight 1 back: live 1, inside the band (back only at 3): still lost.
    std::fs::write(dir.join("up1"), "").unwrap();
    assert!(wait_for(Duration::from_secs(10), || verdict(&c, 0, rs1).as_deref() == Some("up")).is_some(), "rs1 not up");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(events(), ["QUORUM_DOWN"], "quorum back inside the hysteresis band");
    // Weight 2 back: live 3 = quorum + hysteresis: back.
    std::fs::write(dir.join("up2"), "").unwrap();
    assert!(wait_for(Duration::from_secs(10), || events() == ["QUORUM_DOWN", "QUORUM_UP"]).is_some(), "no QUORUM_UP: {:?}\n{}", events(), c.log_tail(0));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(events(), ["QUORUM_DOWN", "QUORUM_UP"], "each move runs its hook once");
    assert!(std::fs::read_to_string(&hooks).unwrap().starts_with("TCP 192.0.2.100:80 QUORUM_DOWN"), "{}", std::fs::read_to_string(&hooks).unwrap());
    // Every flip and quorum move as keepalived writes it, in order, in both FIFOs.
    let want = [
        "RS [198.51.100.2]:tcp:80 [192.0.2.100]:tcp:80 DOWN",
        "RS [198.51.100.1]:tcp:80 [192.0.2.100]:tcp:80 DOWN",
        "VS [192.0.2.100]:tcp:80 DOWN",
        "RS [198.51.100.1]:tcp:80 [192.0.2.100]:tcp:80 UP",
        "RS [198.51.100.2]:tcp:80 [192.0.2.100]:tcp:80 UP",
        "VS [192.0.2.100]:tcp:80 UP",
    ];
    for fifo in [&all_fifo, &lvs_fifo] {
        let text = tests::FifoReader::open(fifo).drain();
        assert_eq!(text.lines().collect::<Vec<_>>(), want, "{}", fifo.display());
    }
}

/// `quorum_down`/`quorum_up` on a virtual server without a sorry server (keepalived runs them
/// for every virtual server; operators withdraw and announce the VIP's route with them): each
/// move runs its hook once, and the VS lines go to the notify FIFO.
#[test]
fn quorum_hooks_run_without_a_sorry_server() {
    let Some((mut c, dir)) = one_director_lab("health_quorum_hooks") else { return };
    let hooks = dir.join("quorum.log");
    let fifo = dir.join("lvs.fifo");
    c.node_extra = format!("lvs_notify_fifo = \"{}\"\n", fifo.display());
    let rules = format!(
        r#"[[virtual_server]]
address = "192.0.2.101:80"
quorum_down = "echo \"$CORRAL_SUBJECT $CORRAL_EVENT\" >> {h}"
quorum_up = "echo \"$CORRAL_SUBJECT $CORRAL_EVENT\" >> {h}"
[[virtual_server.real_server]]
address = "198.51.100.3:80"
check = {{ type = "script", misc_path = "test -e {d}/up3", interval = "200ms", fall = 1, rise = 1 }}
"#,
        h = hooks.display(),
        d = dir.display()
    );
    std::fs::write(dir.join("up3"), "").unwrap();
    c.form(Duration::from_secs(20));
    apply(&c, &rules, "apply");
    let rs = "198.51.100.3:80";
    let up = wait_for(Duration::from_secs(10), || observer_states(&c, 0, rs) == [("d1".to_string(), "up".to_string())]);
    assert!(up.is_some(), "check not up: {:?}", observer_states(&c, 0, rs));
    let events = || std::fs::read_to_string(&hooks).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>();
    std::fs::remove_file(dir.join("up3")).unwrap();
    let down = wait_for(Duration::from_secs(10), || events() == ["TCP 192.0.2.101:80 QUORUM_DOWN"]);
    assert!(down.is_some(), "no QUORUM_DOWN: {:?}\n{}", events(), c.log_tail(0));
    std::fs::write(dir.join("up3"), "").unwrap();
    let back = wait_for(Duration::from_secs(10), || events().len() == 2);
    assert!(back.is_some(), "no QUORUM_UP: {:?}\n{}", events(), c.log_tail(0));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(events(), ["TCP 192.0.2.101:80 QUORUM_DOWN", "TCP 192.0.2.101:80 QUORUM_UP"], "each move runs its hook once");
    let text = tests::FifoReader::open(&fifo).drain();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "RS [198.51.100.3]:tcp:80 [192.0.2.101]:tcp:80 DOWN",
            "VS [192.0.2.101]:tcp:80 DOWN",
            "RS [198.51.100.3]:tcp:80 [192.0.2.101]:tcp:80 UP",
            "VS [192.0.2.101]:tcp:80 UP",
        ]
    );
}

/// keepalived's several checkers in one `real_server`: `check = [ … ]`. The real server is up
/// only while every check passes; one failing check takes it down everywhere, its reason
/// naming which check; `rs list` shows the kinds and each observer's combined result.
#[test]
fn several_checks_on_one_real_server_must_all_pass() {
    let test = "health_several";
    let Some((d, ctl)) = python_lab_binaries(test) else { return };
    // d1-d3 are directors; the backend is host 4 (192.0.2.4) with a web server on 8080 and a
    // second service on 8443.
    let mut c = LabCluster::with_hosts(test, 3, 4, d, ctl);
    c.form(Duration::from_secs(20));
    c.wait_settled(Duration::from_secs(20));
    let serve = |c: &LabCluster, port: &str| {
        let mut cmd = c.lan.hosts[3].cmd("python3");
        cmd.args(["-m", "http.server", "--bind", "192.0.2.4", port, "--directory", "/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Daemon::spawn(cmd, &format!("backend :{port}"))
    };
    let listening = |c: &LabCluster, port: &str| c.lan.hosts[0].try_sh(&format!("bash -c 'exec 3<>/dev/tcp/192.0.2.4/{port}'")).status.success();
    let _web = serve(&c, "8080");
    let mut second = Some(serve(&c, "8443"));
    assert!(wait_for(Duration::from_secs(10), || listening(&c, "8080") && listening(&c, "8443")).is_some(), "backend did not start");
    let timing = r#"interval = "300ms", connect_timeout = "200ms", retries = 0, fall = 2, rise = 2"#;
    let rules = format!(
        "[[virtual_server]]\naddress = \"192.0.2.100:80\"\n[[virtual_server.real_server]]\naddress = \"{B1}\"\n\
         check = [{{ type = \"http\", path = \"/\", {timing} }}, {{ type = \"tcp\", port = 8443, {timing} }}]\n"
    );
    apply(&c, &rules, "apply");
    let all = |c: &LabCluster, want: &str| {
        let s = observer_states(c, 0, B1);
        s.len() == 3 && s.iter().all(|(_, st)| st == want)
    };
    assert!(wait_for(Duration::from_secs(15), || all(&c, "up")).is_some(), "observers never all up: {:?}\n{}", observer_states(&c, 0, B1), c.log_tail(0));
    let r = row(&c, 1, B1).unwrap();
    assert_eq!(r["check"], "http+tcp", "{r}");
    assert_eq!(verdict(&c, 1, B1).as_deref(), Some("up?"), "nothing to commit while every check passes");

    // The web server still answers, the second service stops: down everywhere.
    second.take();
    let down = wait_for(Duration::from_secs(10), || (0..3).all(|i| verdict(&c, i, B1).as_deref() == Some("down")));
    assert!(down.is_some(), "not down everywhere with one check failing: {:?}\n{}", (0..3).map(|i| verdict(&c, i, B1)).collect::<Vec<_>>(), c.log_tail(0));
    assert!(listening(&c, "8080"), "the first check's service is still up");
    let r = row(&c, 2, B1).unwrap();
    assert!(r["reason"].as_str().is_some_and(|s| s.contains("check 2 of 2 (tcp)")), "the reason names the failing check: {r}");
    // A majority committed it; the last observer gets there after its own fall count.
    let all_down = || {
        let r = row(&c, 2, B1).unwrap_or_default();
        let obs = r["observers"].as_array().cloned().unwrap_or_default();
        obs.len() == 3 && obs.iter().all(|o| o["result"]["state"] == "down" && o["result"]["last"].as_str().is_some_and(|l| l.contains("http: ok") && l.contains("tcp: failed")))
    };
    assert!(wait_for(Duration::from_secs(5), all_down).is_some(), "{}", row(&c, 2, B1).unwrap_or_default());

    // Back: up again once both pass.
    second = Some(serve(&c, "8443"));
    assert!(wait_for(Duration::from_secs(10), || listening(&c, "8443")).is_some());
    let up = wait_for(Duration::from_secs(10), || (0..3).all(|i| verdict(&c, i, B1).as_deref() == Some("up")));
    assert!(up.is_some(), "not back up: {:?}", (0..3).map(|i| verdict(&c, i, B1)).collect::<Vec<_>>());
    drop(second);
}
