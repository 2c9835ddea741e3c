//! corrald's VRRP against Debian's keepalived on one L2 segment (network namespaces on a bridge),
//! with tcpdump in a third namespace as the observer. Both directions, VRRPv3 and VRRPv2+auth.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::{has_addr, require_root, wait_for, Daemon, Lan, Netns};

const VIP: &str = "192.0.2.100";

fn corrald_bin() -> Option<PathBuf> {
    tests::workspace_bin("corrald", "CORRALD")
}

fn prerequisites(test: &str) -> Option<PathBuf> {
    if !require_root(test) {
        return None;
    }
    let ci = std::env::var("CI").as_deref() == Ok("true");
    for tool in ["keepalived", "tcpdump"] {
        if Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| !o.status.success()).unwrap_or(true) {
            assert!(!ci, "{test}: {tool} is missing and CI=true forbids skipping");
            eprintln!("SKIP: {test}: {tool} is not installed");
            return None;
        }
    }
    match corrald_bin() {
        Some(p) => Some(p),
        None => {
            assert!(!ci, "{test}: corrald binary not built (cargo xtask test builds it first)");
            eprintln!("SKIP: {test}: corrald binary not built (run cargo build --bins)");
            None
        }
    }
}

fn corrald(bin: &PathBuf, ns: &Netns, dir: &tempdir::Dir, version: u8, priority: u8, interval: &str, auth: Option<&str>) -> Daemon {
    corrald_vip(bin, ns, dir, version, priority, interval, auth, &format!("{VIP}/24"))
}

#[allow(clippy::too_many_arguments)]
fn corrald_vip(bin: &PathBuf, ns: &Netns, dir: &tempdir::Dir, version: u8, priority: u8, interval: &str, auth: Option<&str>, vip: &str) -> Daemon {
    let auth = auth.map(|a| format!("auth_pass = \"{a}\"\n")).unwrap_or_default();
    let cfg = format!(
        "[node]\nadmin_socket = \"{}/admin.sock\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\nversion = {version}\npriority = {priority}\nadvert_interval = \"{interval}\"\nvirtual_ips = [\"{vip}\"]\ngarp_repeat = 1\n{auth}",
        dir.path.display()
    );
    start_corrald(bin, ns, dir, &cfg).0
}

/// Writes `cfg` to DIR/corrald.toml and starts corrald on it in `ns`.
fn start_corrald(bin: &PathBuf, ns: &Netns, dir: &tempdir::Dir, cfg: &str) -> (Daemon, PathBuf) {
    let file = dir.path.join("corrald.toml");
    std::fs::write(&file, cfg).unwrap();
    let mut cmd = ns.cmd(bin.to_str().unwrap());
    cmd.arg("--config").arg(&file).stdout(Stdio::null()).stderr(Stdio::inherit());
    (Daemon::spawn(cmd, "corrald"), file)
}

fn keepalived(ns: &Netns, dir: &tempdir::Dir, version: u8, priority: u8, interval: &str, auth: Option<&str>) -> Daemon {
    keepalived_vip(ns, dir, version, priority, interval, auth, &format!("{VIP}/24"))
}

fn keepalived_vip(ns: &Netns, dir: &tempdir::Dir, version: u8, priority: u8, interval: &str, auth: Option<&str>, vip: &str) -> Daemon {
    let auth = auth
        .map(|a| format!("    authentication {{\n        auth_type PASS\n        auth_pass {a}\n    }}\n"))
        .unwrap_or_default();
    let cfg = format!(
        "global_defs {{\n    vrrp_version {version}\n    vrrp_garp_master_delay 0\n    script_user root\n}}\n\
         vrrp_instance VI_1 {{\n    state BACKUP\n    interface eth0\n    virtual_router_id 51\n    priority {priority}\n    advert_int {interval}\n{auth}    virtual_ipaddress {{\n        {vip}\n    }}\n}}\n"
    );
    start_keepalived(ns, dir, &cfg)
}

/// Writes `cfg` to DIR/keepalived.conf and runs keepalived (VRRP only, foreground) in `ns`;
/// the VRRP child's PID lands in DIR/v.pid.
fn start_keepalived(ns: &Netns, dir: &tempdir::Dir, cfg: &str) -> Daemon {
    let file = dir.path.join("keepalived.conf");
    std::fs::write(&file, cfg).unwrap();
    let mut cmd = ns.cmd("keepalived");
    cmd.args(["-n", "-l", "-D", "-P", "-f"]).arg(&file).arg("-p").arg(dir.path.join("k.pid")).arg("-r").arg(dir.path.join("v.pid"));
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    Daemon::spawn(cmd, "keepalived")
}

/// tcpdump on the observer host, writing to a file the test reads.
fn observer(ns: &Netns, dir: &tempdir::Dir) -> (Daemon, PathBuf) {
    capture(ns, dir, "vrrp or arp")
}

fn capture(ns: &Netns, dir: &tempdir::Dir, filter: &str) -> (Daemon, PathBuf) {
    capture_args(ns, dir.path.join("tcpdump.txt"), &[filter])
}

/// [`capture`] with each frame's Ethernet header (`-e`): source MACs for the vmac tests.
fn capture_macs(ns: &Netns, dir: &tempdir::Dir, filter: &str) -> (Daemon, PathBuf) {
    capture_args(ns, dir.path.join("tcpdump-e.txt"), &["-e", filter])
}

fn capture_args(ns: &Netns, out: PathBuf, extra: &[&str]) -> (Daemon, PathBuf) {
    let mut cmd = ns.cmd("tcpdump");
    cmd.args(["-i", "eth0", "-nn", "-l", "-tt"]).args(extra).stdout(std::fs::File::create(&out).unwrap()).stderr(Stdio::null());
    let d = Daemon::spawn(cmd, "tcpdump");
    std::thread::sleep(Duration::from_millis(300));
    (d, out)
}

mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let path = std::env::temp_dir().join(format!("corral-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn garp_seen(capture: &PathBuf) -> bool {
    std::fs::read_to_string(capture).unwrap_or_default().lines().any(|l| l.contains(&format!("who-has {VIP}")) && l.contains(&format!("tell {VIP}")))
}

#[test]
fn v3_corral_master_keepalived_backup_then_crash_and_release() {
    let Some(bin) = prerequisites("v3_corral_master_keepalived_backup") else { return };
    let lan = Lan::new(3);
    let (h1, h2, h3) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = tempdir::Dir::new("v3a");
    let (_tcpdump, capture) = observer(h3, &dir);
    // keepalived is master first; corral with the higher priority preempts it.
    let _k = keepalived(h2, &dir, 3, 100, "0.1", None);
    assert!(wait_for(Duration::from_secs(3), || has_addr(h2, VIP)).is_some(), "keepalived alone becomes master");
    let mut c = corrald(&bin, h1, &dir, 3, 150, "100ms", None);
    assert!(wait_for(Duration::from_secs(2), || has_addr(h1, VIP)).is_some(), "corral preempts keepalived");
    assert!(wait_for(Duration::from_secs(1), || !has_addr(h2, VIP)).is_some(), "keepalived released the VIP");
    assert!(wait_for(Duration::from_secs(1), || garp_seen(&capture)).is_some(), "observer saw a gratuitous ARP");
    // Stable: keepalived stays backup while corral advertises.
    std::thread::sleep(Duration::from_millis(600));
    assert!(has_addr(h1, VIP) && !has_addr(h2, VIP));
    // The operator's view.
    let status = vrrp_status_all(&bin, &dir);
    assert_eq!(status[0]["state"], "MASTER", "{status}");
    assert_eq!(status[0]["master"], "192.0.2.1", "{status}");
    assert!(status[0]["counters"]["adverts_sent"].as_u64().unwrap() >= 5, "{status}");
    // SIGTERM: corral releases with priority 0; keepalived takes over within skew time (~61 ms).
    c.signal("TERM");
    let took = wait_for(Duration::from_secs(1), || has_addr(h2, VIP)).expect("keepalived takes over after the release");
    assert!(took < Duration::from_millis(300), "priority-0 handover took {took:?}");
    assert!(c.wait_exit(Duration::from_secs(2)).is_some_and(|s| s.success()), "corrald exits cleanly on SIGTERM");
    assert!(!has_addr(h1, VIP), "corrald removed its VIP on the way out");
    // tcpdump's output reaches the file a little after the packet: poll, do not read once.
    let prio0 = "192.0.2.1 > 224.0.0.18: VRRPv3, Advertisement, vrid 51, prio 0";
    let seen = wait_for(Duration::from_secs(3), || std::fs::read_to_string(&capture).unwrap_or_default().contains(prio0));
    assert!(seen.is_some(), "priority 0 advert on the wire:\n{}", std::fs::read_to_string(&capture).unwrap_or_default());
}

#[test]
fn v3_keepalived_master_corral_backup_then_keepalived_crash() {
    let Some(bin) = prerequisites("v3_keepalived_master_corral_backup") else { return };
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = tempdir::Dir::new("v3b");
    let _c = corrald(&bin, h1, &dir, 3, 100, "100ms", None);
    let k = keepalived(h2, &dir, 3, 150, "0.1", None);
    assert!(wait_for(Duration::from_secs(3), || has_addr(h2, VIP)).is_some(), "keepalived (150) is master");
    assert!(wait_for(Duration::from_secs(2), || !has_addr(h1, VIP)).is_some(), "corral (100) yields");
    std::thread::sleep(Duration::from_millis(600));
    assert!(!has_addr(h1, VIP), "corral stays backup");
    // A true crash: SIGKILL keepalived's VRRP child (the parent would send priority 0).
    let vrrp_pid = std::fs::read_to_string(dir.path.join("v.pid")).unwrap().trim().to_owned();
    k.signal("STOP"); // keep the parent from restarting the child
    tests::sh(&format!("kill -9 {vrrp_pid}"));
    let took = wait_for(Duration::from_secs(2), || has_addr(h1, VIP)).expect("corral takes over after the master crashed");
    // Master_Down_Interval = 3 * 100 ms + (256-100)/256 * 100 ms = 361 ms, plus polling.
    assert!(took < Duration::from_millis(800), "takeover took {took:?}");
    k.signal("KILL");
}

#[test]
fn v2_with_authentication_interoperates() {
    let Some(bin) = prerequisites("v2_with_authentication_interoperates") else { return };
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = tempdir::Dir::new("v2");
    let _k = keepalived(h2, &dir, 2, 100, "1", Some("s3cret"));
    let c = corrald(&bin, h1, &dir, 2, 150, "1s", Some("s3cret"));
    assert!(wait_for(Duration::from_secs(6), || has_addr(h1, VIP)).is_some(), "corral (150) is master");
    assert!(wait_for(Duration::from_secs(3), || !has_addr(h2, VIP)).is_some(), "keepalived (100) is backup");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(has_addr(h1, VIP) && !has_addr(h2, VIP), "stable across several adverts: auth accepted both ways");
    c.signal("TERM");
    assert!(wait_for(Duration::from_secs(2), || has_addr(h2, VIP)).is_some(), "keepalived takes over after the release");
}

/// `corralctl vrrp status -o json` of the corrald whose admin socket is in `dir`: every instance.
fn vrrp_status_all(bin: &PathBuf, dir: &tempdir::Dir) -> serde_json::Value {
    let ctl = bin.with_file_name("corralctl");
    let out = Command::new(&ctl).arg("--socket").arg(dir.path.join("admin.sock")).args(["vrrp", "status", "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The first (usually only) instance's status.
fn vrrp_status(bin: &PathBuf, dir: &tempdir::Dir) -> serde_json::Value {
    vrrp_status_all(bin, dir)[0].clone()
}

#[test]
fn bad_packets_are_dropped_counted_and_change_nothing() {
    let Some(bin) = prerequisites("bad_packets_are_dropped_counted_and_change_nothing") else { return };
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if Command::new("/usr/bin/python3").args(["-c", "import scapy"]).output().map(|o| !o.status.success()).unwrap_or(true) {
        assert!(!ci, "python3-scapy is missing and CI=true forbids skipping");
        eprintln!("SKIP: python3-scapy is not installed");
        return;
    }
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = tempdir::Dir::new("bad");
    let _c = corrald(&bin, h1, &dir, 3, 150, "100ms", None);
    assert!(wait_for(Duration::from_secs(2), || has_addr(h1, VIP)).is_some(), "corral alone is master");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/vrrp_bad_packets.py");
    let cases = [
        ("ttl", "drop_ttl_not_255"),
        ("checksum", "drop_bad_checksum"),
        ("version", "drop_bad_version"),
        ("type", "drop_bad_type"),
        ("vrid", "drop_vrid_mismatch"),
        ("truncated", "drop_truncated"),
        ("count", "drop_addr_count_mismatch"),
        ("interval", "drop_interval_zero"),
        ("mode", "drop_checksum_mode_mismatch"),
        ("addresses", "drop_address_list_mismatch"),
    ];
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    // Each bad advert claims priority 200: accepted, any of them would demote our master.
    let out = h2.try_sh(&format!("/usr/bin/python3 {script} 192.0.2.2 {}", names.join(" ")));
    assert!(out.status.success(), "scapy: {}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(300));
    let st = vrrp_status(&bin, &dir);
    assert_eq!(st["state"], "MASTER", "no bad packet changed the state: {st}");
    assert_eq!(st["counters"]["adverts_received"], 0, "{st}");
    for (case, counter) in cases {
        assert!(st["counters"][counter].as_u64().unwrap_or(0) >= 3, "{case}: expected {counter} >= 3 in {st}");
    }
    // Control: the same sender's valid priority-200 advert is accepted and demotes us. Its
    // three adverts keep us BACKUP for only ~0.4 s before we take over again, which a poll on
    // a loaded machine can miss: a second `became_master` proves the demotion as well.
    let demoted = |st: &serde_json::Value| st["state"] == "BACKUP" || st["counters"]["became_master"].as_u64() >= Some(2);
    assert!(!demoted(&vrrp_status(&bin, &dir)), "became master once so far");
    let out = h2.try_sh(&format!("/usr/bin/python3 {script} 192.0.2.2 valid"));
    assert!(out.status.success());
    let accepted = wait_for(Duration::from_secs(3), || {
        let st = vrrp_status(&bin, &dir);
        st["counters"]["adverts_received"].as_u64() >= Some(1) && demoted(&st)
    });
    assert!(accepted.is_some(), "a valid advert is accepted: {}", vrrp_status(&bin, &dir));
}

#[test]
fn v3_ipv6_interoperates_with_unsolicited_na() {
    let Some(bin) = prerequisites("v3_ipv6_interoperates_with_unsolicited_na") else { return };
    const VIP6: &str = "2001:db8::100";
    let lan = Lan::new(3);
    let (h1, h2, h3) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = tempdir::Dir::new("v6");
    let (_tcpdump, capture) = capture(h3, &dir, "icmp6 or vrrp");
    let k = keepalived_vip(h2, &dir, 3, 100, "0.1", None, &format!("{VIP6}/64"));
    assert!(wait_for(Duration::from_secs(4), || has_addr(h2, VIP6)).is_some(), "keepalived alone becomes IPv6 master");
    let c = corrald_vip(&bin, h1, &dir, 3, 150, "100ms", None, &format!("{VIP6}/64"));
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP6)).is_some(), "corral preempts keepalived over IPv6");
    assert!(wait_for(Duration::from_secs(1), || !has_addr(h2, VIP6)).is_some(), "keepalived released the IPv6 VIP");
    let na_seen = || {
        std::fs::read_to_string(&capture)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("neighbor advertisement") && l.contains(&format!("tgt is {VIP6}")))
    };
    assert!(wait_for(Duration::from_secs(1), na_seen).is_some(), "observer saw an unsolicited NA");
    std::thread::sleep(Duration::from_millis(600));
    assert!(has_addr(h1, VIP6) && !has_addr(h2, VIP6), "stable: keepalived accepts corral's IPv6 adverts");
    let st = vrrp_status(&bin, &dir);
    assert_eq!(st["state"], "MASTER", "{st}");
    assert!(st["master"].as_str().unwrap().starts_with("fe80::"), "IPv6 adverts come from the link-local address: {st}");
    // Crash corral: keepalived takes over within Master_Down_Interval.
    tests::sh(&format!("kill -9 {}", c.child.id()));
    assert!(wait_for(Duration::from_secs(2), || has_addr(h2, VIP6)).is_some(), "keepalived takes over after corral crashed");
    drop(k);
}

#[test]
fn tracked_interface_and_script_move_mastership_like_keepalived() {
    let Some(bin) = prerequisites("tracked_interface_and_script_move_mastership_like_keepalived") else { return };
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = tempdir::Dir::new("track");
    h1.sh("ip link add eth1 type veth peer name eth1p && ip link set eth1p up && ip link set eth1 up");
    let flag = dir.path.join("healthy");
    std::fs::write(&flag, "").unwrap();
    let cfg = format!(
        "[node]\nadmin_socket = \"{d}/admin.sock\"\n\n[[track_script]]\nname = \"chk\"\nscript = \"test -e {f}\"\ninterval = \"100ms\"\nweight = 0\nfall = 2\nrise = 1\n\n\
         [[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\nadvert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\n\
         track_interfaces = [{{ name = \"eth1\", weight = -60 }}]\ntrack_scripts = [\"chk\"]\n",
        d = dir.path.display(),
        f = flag.display()
    );
    let (_c, _) = start_corrald(&bin, h1, &dir, &cfg);
    let _k = keepalived(h2, &dir, 3, 100, "0.1", None);
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP)).is_some(), "corral (150) is master");
    // Tracked interface down: 150 - 60 = 90 < 100, keepalived preempts.
    h1.sh("ip link set eth1 down");
    assert!(wait_for(Duration::from_secs(2), || has_addr(h2, VIP)).is_some(), "keepalived takes over at our priority 90");
    assert!(wait_for(Duration::from_secs(1), || !has_addr(h1, VIP)).is_some());
    // The status board refreshes every 50 ms: poll it.
    let backup_at_90 = || {
        let st = vrrp_status(&bin, &dir);
        st["state"] == "BACKUP" && st["effective_priority"] == 90
    };
    assert!(wait_for(Duration::from_secs(1), backup_at_90).is_some(), "{}", vrrp_status(&bin, &dir));
    // Back up: 150 again, and we preempt.
    h1.sh("ip link set eth1 up");
    assert!(wait_for(Duration::from_secs(2), || has_addr(h1, VIP)).is_some(), "corral preempts again at 150");
    // A weight-0 script failing (fall = 2): FAULT, VIP released to keepalived.
    std::fs::remove_file(&flag).unwrap();
    assert!(wait_for(Duration::from_secs(3), || vrrp_status(&bin, &dir)["state"] == "FAULT").is_some(), "script failure means FAULT");
    assert!(wait_for(Duration::from_secs(2), || has_addr(h2, VIP) && !has_addr(h1, VIP)).is_some(), "keepalived holds the VIP");
    // Healthy again: FAULT -> BACKUP -> preempt to MASTER.
    std::fs::write(&flag, "").unwrap();
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP)).is_some(), "corral recovers and preempts");
}

#[test]
fn unicast_peers_interoperate() {
    let Some(bin) = prerequisites("unicast_peers_interoperate") else { return };
    let lan = Lan::new(3);
    let (h1, h2, h3) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = tempdir::Dir::new("ucast");
    let (_tcpdump, capture) = observer(h3, &dir);
    let cfg = format!(
        "[node]\nadmin_socket = \"{}/admin.sock\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\n\
         advert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\nunicast_peers = [\"192.0.2.2\"]\n",
        dir.path.display()
    );
    let (c, _) = start_corrald(&bin, h1, &dir, &cfg);
    let kcfg = format!(
        "global_defs {{\n    vrrp_version 3\n    vrrp_garp_master_delay 0\n}}\nvrrp_instance VI_1 {{\n    state BACKUP\n    interface eth0\n    \
         virtual_router_id 51\n    priority 100\n    advert_int 0.1\n    unicast_src_ip 192.0.2.2\n    unicast_peer {{\n        192.0.2.1\n    }}\n    \
         virtual_ipaddress {{\n        {VIP}/24\n    }}\n}}\n"
    );
    let _k = start_keepalived(h2, &dir, &kcfg);
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP)).is_some(), "corral (150) is master over unicast");
    std::thread::sleep(Duration::from_millis(800));
    assert!(has_addr(h1, VIP) && !has_addr(h2, VIP), "keepalived accepts corral's unicast adverts");
    let dump = std::fs::read_to_string(&capture).unwrap();
    assert!(!dump.contains("> 224.0.0.18: VRRP"), "no multicast adverts from either side:\n{dump}");
    // keepalived staying backup is the proof that it receives corral's unicast adverts.
    let st = vrrp_status(&bin, &dir);
    assert_eq!(st["state"], "MASTER", "{st}");
    tests::sh(&format!("kill -9 {}", c.child.id()));
    assert!(wait_for(Duration::from_secs(2), || has_addr(h2, VIP)).is_some(), "keepalived takes over over unicast");
}

#[test]
fn sync_group_moves_together_against_keepalived() {
    let Some(bin) = prerequisites("sync_group_moves_together_against_keepalived") else { return };
    const VIP2: &str = "192.0.2.101";
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = tempdir::Dir::new("sync");
    let flag = dir.path.join("healthy");
    std::fs::write(&flag, "").unwrap();
    let inst = |name: &str, vrid: u8, vip: &str, track: &str| {
        format!("\n[[vrrp]]\nname = \"{name}\"\ninterface = \"eth0\"\nvrid = {vrid}\npriority = 150\nadvert_interval = \"100ms\"\nvirtual_ips = [\"{vip}/24\"]\n{track}")
    };
    let cfg = format!(
        "[node]\nadmin_socket = \"{d}/admin.sock\"\n\n[[track_script]]\nname = \"chk\"\nscript = \"test -e {f}\"\ninterval = \"100ms\"\n{}{}\n[[vrrp_sync_group]]\nname = \"G\"\nmembers = [\"OUT\", \"IN\"]\n",
        inst("OUT", 51, VIP, ""),
        inst("IN", 52, VIP2, "track_scripts = [\"chk\"]\n"),
        d = dir.path.display(),
        f = flag.display()
    );
    // keepalived's group notify convention: `notify GROUP NAME STATE 0`, once per group change.
    let notified = dir.path.join("group-notify");
    let script = dir.path.join("notify.sh");
    std::fs::write(&script, format!("#!/bin/sh\nprintf '%s ' \"$@\" >> {n}\necho >> {n}\n", n = notified.display())).unwrap();
    let cfg = format!("{cfg}notify = \"/bin/sh {}\"\n", script.display());
    let (_c, _) = start_corrald(&bin, h1, &dir, &cfg);
    let kcfg = format!(
        "global_defs {{\n    vrrp_version 3\n    vrrp_garp_master_delay 0\n}}\nvrrp_sync_group G {{\n    group {{\n        OUT\n        IN\n    }}\n}}\n\
         vrrp_instance OUT {{\n    state BACKUP\n    interface eth0\n    virtual_router_id 51\n    priority 100\n    advert_int 0.1\n    virtual_ipaddress {{\n        {VIP}/24\n    }}\n}}\n\
         vrrp_instance IN {{\n    state BACKUP\n    interface eth0\n    virtual_router_id 52\n    priority 100\n    advert_int 0.1\n    virtual_ipaddress {{\n        {VIP2}/24\n    }}\n}}\n"
    );
    let _k = start_keepalived(h2, &dir, &kcfg);
    let both = |ns: &Netns| has_addr(ns, VIP) && has_addr(ns, VIP2);
    let none = |ns: &Netns| !has_addr(ns, VIP) && !has_addr(ns, VIP2);
    assert!(wait_for(Duration::from_secs(3), || both(h1) && none(h2)).is_some(), "the group is master on corral (150)");
    // Only IN tracks the script; its failure must take OUT along (FAULT for the whole group).
    std::fs::remove_file(&flag).unwrap();
    assert!(wait_for(Duration::from_secs(3), || both(h2) && none(h1)).is_some(), "both VIPs moved to keepalived together");
    std::fs::write(&flag, "").unwrap();
    assert!(wait_for(Duration::from_secs(3), || both(h1) && none(h2)).is_some(), "the group comes back together");
    let expect = "GROUP G BACKUP 0 \nGROUP G MASTER 0 \nGROUP G FAULT 0 \nGROUP G BACKUP 0 \nGROUP G MASTER 0 \n";
    let got = || std::fs::read_to_string(&notified).unwrap_or_default();
    assert!(wait_for(Duration::from_secs(2), || got() == expect).is_some(), "group notify calls:\n{}", got());
}

#[test]
fn sighup_reload_leaves_unchanged_instances_alone() {
    let Some(bin) = prerequisites("sighup_reload_leaves_unchanged_instances_alone") else { return };
    let lan = Lan::new(1);
    let h1 = &lan.hosts[0];
    let dir = tempdir::Dir::new("reload");
    let inst = |name: &str, vrid: u8, prio: u8, vip: &str| {
        format!("\n[[vrrp]]\nname = \"{name}\"\ninterface = \"eth0\"\nvrid = {vrid}\npriority = {prio}\nadvert_interval = \"100ms\"\nvirtual_ips = [\"{vip}/24\"]\n")
    };
    let head = format!("[node]\nadmin_socket = \"{}/admin.sock\"\n", dir.path.display());
    let (c, file) = start_corrald(&bin, h1, &dir, &format!("{head}{}{}", inst("A", 51, 150, "192.0.2.100"), inst("B", 52, 150, "192.0.2.101")));
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, "192.0.2.100") && has_addr(h1, "192.0.2.101")).is_some());
    let status = |name: &str| vrrp_status_all(&bin, &dir).as_array().unwrap().iter().find(|i| i["name"] == name).cloned();
    // A broken file on SIGHUP changes nothing.
    std::fs::write(&file, "[[vrrp]]\nname = ").unwrap();
    c.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(has_addr(h1, "192.0.2.100") && has_addr(h1, "192.0.2.101"), "a bad reload keeps everything");
    // A unchanged, B changed (priority), C new.
    std::fs::write(
        &file,
        format!("{head}{}{}{}", inst("A", 51, 150, "192.0.2.100"), inst("B", 52, 160, "192.0.2.101"), inst("C", 53, 150, "192.0.2.102")),
    )
    .unwrap();
    c.signal("HUP");
    // While the reload happens, A's VIP must never leave.
    let mut a_always = true;
    let end = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < end {
        a_always &= has_addr(h1, "192.0.2.100");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(a_always, "the unchanged instance's VIP stayed through the reload");
    assert!(wait_for(Duration::from_secs(2), || has_addr(h1, "192.0.2.102")).is_some(), "the new instance came up");
    assert!(wait_for(Duration::from_secs(2), || has_addr(h1, "192.0.2.101")).is_some(), "the changed instance is back");
    let a = status("A").unwrap();
    assert_eq!((a["state"].as_str(), a["counters"]["became_master"].as_u64()), (Some("MASTER"), Some(1)), "A kept its state: {a}");
    let b = status("B").unwrap();
    assert_eq!(b["base_priority"], 160, "{b}");
    assert!(status("C").is_some());
}

/// True when `addr` is configured on `dev` inside `ns`.
fn has_addr_on(ns: &Netns, dev: &str, addr: &str) -> bool {
    let out = ns.try_sh(&format!("ip -o addr show dev {dev}"));
    String::from_utf8_lossy(&out.stdout).contains(&format!(" {addr}/"))
}

fn link_exists(ns: &Netns, dev: &str) -> bool {
    ns.try_sh(&format!("ip link show dev {dev}")).status.success()
}

fn vmac_config(dir: &tempdir::Dir, priority: u8) -> String {
    format!(
        "[node]\nadmin_socket = \"{}/admin.sock\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = {priority}\n\
         advert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\ngarp_repeat = 2\nuse_vmac = true\n",
        dir.path.display()
    )
}

/// The source MACs of every ARP reply for the VIP to one broadcast request from `ns` (scapy).
fn vip_arp_replies(ns: &Netns) -> Vec<String> {
    let py = format!(
        "from scapy.all import *\nconf.verb = 0\nans, _ = srp(Ether(dst='ff:ff:ff:ff:ff:ff')/ARP(pdst='{VIP}'), iface='eth0', timeout=1, multi=True)\nfor _, r in ans: print(r[ARP].hwsrc)\n"
    );
    let out = ns.try_sh(&format!("/usr/bin/python3 -c \"{py}\""));
    assert!(out.status.success(), "scapy: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn scapy_available(test: &str) -> bool {
    if Command::new("/usr/bin/python3").args(["-c", "import scapy"]).output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: python3-scapy is missing and CI=true forbids skipping");
    eprintln!("SKIP: {test}: python3-scapy is not installed");
    false
}

#[test]
fn use_vmac_master_uses_the_virtual_mac_and_fails_over() {
    let Some(bin) = prerequisites("use_vmac_master_uses_the_virtual_mac_and_fails_over") else { return };
    if !scapy_available("use_vmac_master_uses_the_virtual_mac_and_fails_over") {
        return;
    }
    const VMAC: &str = "00:00:5e:00:01:33"; // VRID 51
    let lan = Lan::new(3);
    let (h1, h2, h3) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = tempdir::Dir::new("vmac");
    let (_tcpdump, out) = capture_macs(h3, &dir, "vrrp or arp");
    let dump = || std::fs::read_to_string(&out).unwrap_or_default();
    let k = keepalived(h2, &dir, 3, 100, "0.1", None);
    let (mut c, _) = start_corrald(&bin, h1, &dir, &vmac_config(&dir, 150));
    assert!(wait_for(Duration::from_secs(3), || has_addr_on(h1, "vrrp.51", VIP)).is_some(), "corral is master with the VIP on its vmac");
    assert!(wait_for(Duration::from_secs(2), || !has_addr(h2, VIP)).is_some(), "keepalived is backup");
    assert!(!has_addr(h1, VIP), "the VIP is on the vmac, not on eth0");
    let link = h1.sh("ip -d link show dev vrrp.51");
    assert!(link.contains(VMAC) && link.contains("macvlan mode private"), "{link}");
    assert_eq!(h1.sh("cat /proc/sys/net/ipv4/conf/eth0/arp_ignore /proc/sys/net/ipv4/conf/eth0/arp_filter"), "1\n1\n", "parent ARP settings (keepalived's)");
    // On the wire: adverts and gratuitous ARP from the virtual MAC.
    let advert = format!("{VMAC} > 01:00:5e:00:00:12");
    let garp = |l: &str| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(&format!("{VMAC} > ff:ff:ff:ff:ff:ff")) && l.contains(&format!("who-has {VIP} (")) && l.contains(&format!("tell {VIP},"));
    assert!(
        wait_for(Duration::from_secs(2), || dump().lines().any(|l| l.contains(&advert) && l.contains("192.0.2.1 > 224.0.0.18: VRRPv3"))).is_some(),
        "advert from the virtual MAC:\n{}",
        dump()
    );
    assert!(wait_for(Duration::from_secs(2), || dump().lines().any(garp)).is_some(), "gratuitous ARP from the virtual MAC:\n{}", dump());
    // The VIP answers ARP with the virtual MAC, and only with it (the parent keeps quiet).
    assert_eq!(vip_arp_replies(h3), vec![VMAC.to_owned()], "one ARP reply for the VIP, from the virtual MAC");
    std::thread::sleep(Duration::from_millis(200));
    let replies: Vec<String> = dump().lines().filter(|l| l.contains(&format!("Reply {VIP} is-at"))).map(str::to_owned).collect();
    assert!(!replies.is_empty() && replies.iter().all(|l| l.contains(&format!("is-at {VMAC}"))), "ARP replies: {replies:?}");
    // Stable: keepalived hears our adverts.
    std::thread::sleep(Duration::from_millis(500));
    assert!(has_addr_on(h1, "vrrp.51", VIP) && !has_addr(h2, VIP));
    // SIGTERM: release to keepalived, vmac deleted, parent settings restored.
    c.signal("TERM");
    assert!(wait_for(Duration::from_secs(1), || has_addr(h2, VIP)).is_some(), "keepalived takes over after the release");
    assert!(c.wait_exit(Duration::from_secs(3)).is_some_and(|s| s.success()), "corrald exits cleanly");
    assert!(!link_exists(h1, "vrrp.51"), "the vmac is removed on exit");
    assert_eq!(h1.sh("cat /proc/sys/net/ipv4/conf/eth0/arp_ignore /proc/sys/net/ipv4/conf/eth0/arp_filter"), "0\n0\n", "parent restored");
    drop(k);
}

#[test]
fn use_vmac_fails_over_between_two_corralds() {
    let Some(bin) = prerequisites("use_vmac_fails_over_between_two_corralds") else { return };
    if !scapy_available("use_vmac_fails_over_between_two_corralds") {
        return;
    }
    const VMAC: &str = "00:00:5e:00:01:33";
    let lan = Lan::new(3);
    let (h1, h2, h3) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let (d1, d2) = (tempdir::Dir::new("vmac-a"), tempdir::Dir::new("vmac-b"));
    let (mut a, _) = start_corrald(&bin, h1, &d1, &vmac_config(&d1, 150));
    assert!(wait_for(Duration::from_secs(3), || has_addr_on(h1, "vrrp.51", VIP)).is_some(), "A is master");
    let (b, _) = start_corrald(&bin, h2, &d2, &vmac_config(&d2, 100));
    assert!(wait_for(Duration::from_secs(2), || link_exists(h2, "vrrp.51")).is_some(), "B made its vmac");
    // Both vmacs share one MAC; a frame with its own MAC as source reaches only the vmac, so B
    // hears A only because its socket lives on the vmac. Stable for several intervals:
    std::thread::sleep(Duration::from_millis(800));
    assert!(has_addr_on(h1, "vrrp.51", VIP) && !has_addr_on(h2, "vrrp.51", VIP), "B stays backup while A advertises");
    assert_eq!(vrrp_status(&bin, &d2)["state"], "BACKUP");
    assert_eq!(vip_arp_replies(h3), vec![VMAC.to_owned()], "A answers ARP for the VIP");
    a.signal("TERM");
    let took = wait_for(Duration::from_secs(2), || has_addr_on(h2, "vrrp.51", VIP)).expect("B takes over after A's release");
    assert!(took < Duration::from_millis(500), "priority-0 handover took {took:?}");
    assert!(a.wait_exit(Duration::from_secs(3)).is_some());
    assert!(!link_exists(h1, "vrrp.51"), "A removed its vmac");
    // Same virtual MAC after the failover: hosts need no new ARP entry.
    assert_eq!(vip_arp_replies(h3), vec![VMAC.to_owned()], "B answers ARP for the VIP with the same MAC, A is silent");
    drop(b);
}

/// IPv6 with `use_vmac`: the vmac carries the IPv6 virtual MAC (00:00:5e:00:02:VRID, RFC 5798
/// §7.3), the parent's link-local address (the advert source) and the VIP; adverts and the
/// unsolicited NA leave from the virtual MAC, and a host that resolves the VIP learns that MAC.
/// keepalived (no vmac) is the backup and takes over after the release.
#[test]
fn use_vmac_ipv6_uses_the_virtual_mac_and_fails_over() {
    let Some(bin) = prerequisites("use_vmac_ipv6_uses_the_virtual_mac_and_fails_over") else { return };
    const VIP6: &str = "2001:db8::100";
    const VMAC6: &str = "00:00:5e:00:02:33"; // VRID 51, IPv6
    const VMAC_IF: &str = "vrrp6.51"; // corrald names IPv6 vmacs vrrp6.VRID
    let lan = Lan::new(3);
    let (h1, h2, h3) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = tempdir::Dir::new("vmac6");
    // The LAN gives every host an address in the VIP's prefix (the observer's is 2001:db8::3).
    let (_tcpdump, out) = capture_macs(h3, &dir, "icmp6 or ip6 proto 112");
    let dump = || std::fs::read_to_string(&out).unwrap_or_default();
    let k = keepalived_vip(h2, &dir, 3, 100, "0.1", None, &format!("{VIP6}/64"));
    let cfg = format!(
        "[node]\nadmin_socket = \"{}/admin.sock\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\n\
         advert_interval = \"100ms\"\nvirtual_ips = [\"{VIP6}/64\"]\ngarp_repeat = 2\nuse_vmac = true\n",
        dir.path.display()
    );
    let (mut c, _) = start_corrald(&bin, h1, &dir, &cfg);
    assert!(wait_for(Duration::from_secs(4), || has_addr_on(h1, VMAC_IF, VIP6)).is_some(), "corral is master with the IPv6 VIP on its vmac");
    assert!(wait_for(Duration::from_secs(2), || !has_addr(h2, VIP6)).is_some(), "keepalived is backup");
    assert!(!has_addr_on(h1, "eth0", VIP6), "the VIP is on the vmac, not on eth0");
    let link = h1.sh(&format!("ip -d link show dev {VMAC_IF}"));
    assert!(link.contains(VMAC6) && link.contains("macvlan mode private"), "{link}");
    let lladdr = h1.sh("ip -6 -o addr show dev eth0 scope link");
    let ll = lladdr.split_whitespace().nth(3).and_then(|a| a.split('/').next()).expect("eth0 has a link-local address").to_owned();
    assert!(has_addr_on(h1, VMAC_IF, &ll), "the vmac carries the parent's link-local {ll}: {}", h1.sh(&format!("ip -6 addr show dev {VMAC_IF}")));
    // On the wire: adverts to ff02::12 and the unsolicited NA, both from the virtual MAC.
    let advert = |l: &str| l.contains(&format!("{VMAC6} > 33:33:00:00:00:12")) && l.contains(&format!("{ll} > ff02::12: "));
    assert!(wait_for(Duration::from_secs(2), || dump().lines().any(advert)).is_some(), "advert from the virtual MAC:\n{}", dump());
    let na = |l: &str| l.contains("neighbor advertisement") && l.contains(&format!("tgt is {VIP6}"));
    assert!(
        wait_for(Duration::from_secs(2), || dump().lines().any(|l| na(l) && l.contains(&format!("{VMAC6} > 33:33:00:00:00:01")))).is_some(),
        "unsolicited NA from the virtual MAC:\n{}",
        dump()
    );
    // A host resolving the VIP learns the virtual MAC (a UDP datagram to the VIP makes the
    // observer's kernel send a neighbour solicitation; the image has no ping).
    h3.sh(&format!("/usr/bin/python3 -c \"import socket; socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b'x', ('{VIP6}', 9))\""));
    let neigh = || h3.sh(&format!("ip -6 neigh show {VIP6}"));
    assert!(
        wait_for(Duration::from_secs(2), || neigh().contains(&format!("lladdr {VMAC6}"))).is_some(),
        "the observer resolved the VIP to the virtual MAC: {}\n{}",
        neigh(),
        dump()
    );
    std::thread::sleep(Duration::from_millis(200));
    // The solicited answers (not to ff02::1: keepalived may have announced the VIP before corral
    // started) come from the virtual MAC only: the parent stays silent.
    let nas: Vec<String> = dump().lines().filter(|l| na(l) && !l.contains("> ff02::1:")).map(str::to_owned).collect();
    assert!(!nas.is_empty() && nas.iter().all(|l| l.contains(&format!("{VMAC6} > "))), "solicited NAs for the VIP: {nas:?}");
    // Stable: keepalived hears our adverts from the vmac.
    std::thread::sleep(Duration::from_millis(500));
    assert!(has_addr_on(h1, VMAC_IF, VIP6) && !has_addr(h2, VIP6));
    assert_eq!(vrrp_status(&bin, &dir)["state"], "MASTER");
    // SIGTERM: release to keepalived, vmac deleted.
    c.signal("TERM");
    assert!(wait_for(Duration::from_secs(1), || has_addr(h2, VIP6)).is_some(), "keepalived takes over after the release");
    assert!(c.wait_exit(Duration::from_secs(3)).is_some_and(|s| s.success()), "corrald exits cleanly");
    assert!(!link_exists(h1, VMAC_IF), "the vmac is removed on exit");
    drop(k);
}

/// Link down on the instance's own interface, or on a tracked weight-0 one, means FAULT at once
/// (link events, not a poll); link up brings the instance back.
#[test]
fn link_down_means_fault_promptly() {
    let Some(bin) = prerequisites("link_down_means_fault_promptly") else { return };
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = tempdir::Dir::new("linkdown");
    h1.sh("ip link add eth1 type veth peer name eth1p && ip link set eth1p up && ip link set eth1 up");
    let cfg = format!(
        "[node]\nadmin_socket = \"{}/admin.sock\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\n\
         advert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\ntrack_interfaces = [\"eth1\"]\n",
        dir.path.display()
    );
    let (_c, _) = start_corrald(&bin, h1, &dir, &cfg);
    let _k = keepalived(h2, &dir, 3, 100, "0.1", None);
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP)).is_some(), "corral (150) is master");
    // IPv4 addresses stay on a downed interface: the VIP leaving proves corrald reacted.
    for (what, down, up) in [
        ("tracked eth1", "ip link set dev eth1 down", "ip link set dev eth1 up"),
        ("own eth0", "ip link set dev eth0 down", "ip link set dev eth0 up"),
    ] {
        let t0 = std::time::Instant::now();
        h1.sh(down);
        assert!(wait_for(Duration::from_secs(2), || !has_addr(h1, VIP)).is_some(), "{what} down: VIP released");
        let took = t0.elapsed();
        assert!(took < Duration::from_millis(500), "{what} down -> FAULT took {took:?} (link events should make it a few ms)");
        eprintln!("{what}: link down -> VIP released in {took:?}");
        assert!(wait_for(Duration::from_secs(1), || vrrp_status(&bin, &dir)["state"] == "FAULT").is_some(), "{what}: FAULT");
        assert!(wait_for(Duration::from_secs(2), || has_addr(h2, VIP)).is_some(), "{what}: keepalived took over");
        h1.sh(up);
        assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP)).is_some(), "{what} up: corral recovers and preempts");
        assert!(wait_for(Duration::from_secs(1), || vrrp_status(&bin, &dir)["state"] == "MASTER").is_some());
        assert!(wait_for(Duration::from_secs(2), || !has_addr(h2, VIP)).is_some(), "{what}: keepalived back to backup");
    }
}

/// A keepalived peer left at its default VRRP version (2) next to a version-3 corral instance:
/// neither hears the other, so both become master. corral cannot fix that alone, but it says
/// so once, naming the peer and the setting, instead of only counting dropped adverts.
#[test]
fn a_peer_speaking_the_other_vrrp_version_is_named_once() {
    let Some(bin) = prerequisites("a_peer_speaking_the_other_vrrp_version_is_named_once") else { return };
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let (dc, dk) = (tempdir::Dir::new("vers-c"), tempdir::Dir::new("vers-k"));
    let file = dc.path.join("corrald.toml");
    std::fs::write(
        &file,
        format!(
            "[node]\nadmin_socket = \"{}/admin.sock\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\nversion = 3\npriority = 150\nadvert_interval = \"1s\"\nvirtual_ips = [\"{VIP}/24\"]\ngarp_repeat = 1\n",
            dc.path.display()
        ),
    )
    .unwrap();
    let log = dc.path.join("corrald.log");
    let mut cmd = h1.cmd(bin.to_str().unwrap());
    cmd.arg("--config").arg(&file).env("NO_COLOR", "1").stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let _c = Daemon::spawn(cmd, "corrald");
    let _k = keepalived(h2, &dk, 2, 100, "1", None);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let warned = wait_for(Duration::from_secs(10), || text().contains("drops the version-2 adverts 192.0.2.2 sends for VRID 51"));
    assert!(warned.is_some(), "no warning about the version-2 peer:\n{}", text());
    assert!(text().contains("set `version = 2` on this instance"), "{}", text());
    // Both hold the VIP: the split brain the warning is about (keepalived took it as master).
    assert!(wait_for(Duration::from_secs(8), || has_addr(h1, VIP) && has_addr(h2, VIP)).is_some(), "expected both to be master");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(text().matches("drops the version-2 adverts").count(), 1, "warned more than once:\n{}", text());
}

/// keepalived's address options: `dev`/`label`/`scope` on a VIP, `virtual_ipaddress_excluded`
/// (moved, not advertised, either family) and `unicast_src_ip`. keepalived as the backup checks
/// the advert's source against its `unicast_peer` list (`check_unicast_src`) and the advertised
/// address count against its own list, so it stays backup only if corral sends what it expects.
#[test]
fn vip_options_excluded_vips_and_unicast_src_ip_like_keepalived() {
    let Some(bin) = prerequisites("vip_options_excluded_vips_and_unicast_src_ip") else { return };
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = tempdir::Dir::new("vipopts");
    h1.sh("ip addr add 192.0.2.11/24 dev eth0 && ip link add dum0 type veth peer name dum0p && ip link set dum0p up && ip link set dum0 up");
    // The backup's view: adverts (with their address lists), ARP and neighbour advertisements.
    let (_t2, seen) = capture_args(h2, dir.path.join("h2.txt"), &["-v", "vrrp or arp or icmp6"]);
    let mut cmd = h1.cmd("tcpdump");
    cmd.args(["-i", "dum0", "-nn", "-l", "arp"]).stdout(std::fs::File::create(dir.path.join("dum0.txt")).unwrap()).stderr(Stdio::null());
    let _t1 = Daemon::spawn(cmd, "tcpdump");
    let kcfg = format!(
        "global_defs {{\n    vrrp_version 3\n    vrrp_garp_master_delay 0\n}}\nvrrp_instance VI_1 {{\n    state BACKUP\n    interface eth0\n    \
         virtual_router_id 51\n    priority 100\n    advert_int 0.1\n    unicast_src_ip 192.0.2.2\n    check_unicast_src\n    \
         unicast_peer {{\n        192.0.2.11\n    }}\n    virtual_ipaddress {{\n        {VIP}/24\n        203.0.113.5/24\n    }}\n}}\n"
    );
    let _k = start_keepalived(h2, &dir, &kcfg);
    let cfg = |src: &str| {
        format!(
            "[node]\nadmin_socket = \"{}/admin.sock\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\n\
             advert_interval = \"100ms\"\ngarp_repeat = 1\nunicast_peers = [\"192.0.2.2\"]\nunicast_src_ip = \"{src}\"\n\
             virtual_ips = [\"{VIP}/24 label eth0:vip\", \"203.0.113.5/24 dev dum0 label dum0:web\"]\n\
             virtual_ips_excluded = [\"2001:db8::5/64\", \"198.51.100.7/24 scope link\"]\n",
            dir.path.display()
        )
    };
    // An address the host does not have is refused at start, by name.
    std::fs::write(dir.path.join("bad.toml"), cfg("192.0.2.99")).unwrap();
    let out = h1.try_sh(&format!("timeout 10 {} --config {}", bin.display(), dir.path.join("bad.toml").display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unicast_src_ip 192.0.2.99 is not an address of this host"), "{err}");

    let (c, file) = start_corrald(&bin, h1, &dir, &cfg("192.0.2.11"));
    let addrs = || h1.sh("ip -o addr show");
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP)).is_some(), "corral (150) becomes master:\n{}", addrs());
    assert!(wait_for(Duration::from_secs(2), || has_addr_on(h1, "dum0", "203.0.113.5") && has_addr_on(h1, "eth0", "2001:db8::5")).is_some(), "{}", addrs());
    let a = addrs();
    let line = |addr: &str| a.lines().find(|l| l.contains(&format!(" {addr}/"))).unwrap_or_else(|| panic!("{addr} missing:\n{a}")).to_owned();
    assert!(line(VIP).starts_with(&format!("{}: eth0", h1.sh("cat /sys/class/net/eth0/ifindex").trim())) && line(VIP).contains(" eth0:vip"), "label on eth0: {}", line(VIP));
    assert!(line("203.0.113.5").starts_with(&format!("{}: dum0", h1.sh("cat /sys/class/net/dum0/ifindex").trim())), "{}", line("203.0.113.5"));
    assert!(line("203.0.113.5").contains(" dum0:web"), "{}", line("203.0.113.5"));
    assert!(line("198.51.100.7").contains("scope link"), "{}", line("198.51.100.7"));
    assert!(line("2001:db8::5").contains(" eth0 "), "{}", line("2001:db8::5"));
    std::thread::sleep(Duration::from_millis(800));
    assert!(!has_addr(h2, VIP), "keepalived accepts corral's adverts from 192.0.2.11 and stays backup");
    let dump = std::fs::read_to_string(&seen).unwrap();
    let adverts: Vec<&str> = dump.lines().filter(|l| l.contains("VRRPv3, Advertisement")).collect();
    assert!(adverts.iter().any(|l| l.contains("192.0.2.11 > 192.0.2.2")), "adverts from unicast_src_ip:\n{dump}");
    assert!(!adverts.iter().any(|l| l.contains("192.0.2.1 >")), "no advert from the interface's first address:\n{dump}");
    assert!(
        adverts.iter().filter(|l| l.contains("192.0.2.11 >")).all(|l| l.contains("addrs(2): 192.0.2.100,203.0.113.5")),
        "adverts carry the two advertised VIPs, not the excluded ones:\n{dump}"
    );
    let garp = |text: &str, a: &str| text.lines().any(|l| l.contains(&format!("who-has {a} ")) && l.contains(&format!("tell {a},")));
    assert!(garp(&dump, "198.51.100.7"), "gratuitous ARP for an excluded VIP:\n{dump}");
    assert!(dump.contains("neighbor advertisement") && dump.contains("tgt is 2001:db8::5"), "unsolicited NA for the excluded IPv6 VIP:\n{dump}");
    let dum = std::fs::read_to_string(dir.path.join("dum0.txt")).unwrap();
    assert!(garp(&dum, "203.0.113.5"), "the dev VIP's gratuitous ARP leaves on its own link:\n{dum}");
    assert!(!dum.contains("who-has 192.0.2.100"), "and the others do not:\n{dum}");

    // A reload naming an interface this host does not have is refused whole: the running
    // instance keeps its mastership and every address.
    std::fs::write(&file, cfg("192.0.2.11").replace("dev dum0 label dum0:web", "dev nosuch0")).unwrap();
    c.signal("HUP");
    std::thread::sleep(Duration::from_millis(800));
    let st = vrrp_status(&bin, &dir);
    assert_eq!(st["state"], "MASTER", "{st}");
    assert!(has_addr_on(h1, "dum0", "203.0.113.5") && has_addr(h1, VIP) && !has_addr(h2, VIP), "{}", addrs());

    // Stopping releases every address, on every link, and keepalived takes over.
    c.signal("TERM");
    assert!(wait_for(Duration::from_secs(3), || has_addr(h2, VIP)).is_some(), "keepalived takes over");
    let a = addrs();
    for gone in [VIP, "203.0.113.5", "198.51.100.7", "2001:db8::5"] {
        assert!(!a.contains(&format!(" {gone}/")), "{gone} released:\n{a}");
    }
    assert!(a.contains(" 192.0.2.11/"), "the host's own address stays:\n{a}");
}

/// keepalived's `track_file`: the operator's maintenance switch. A number written to the file,
/// times the weight, moves the priority at once (keepalived as the peer takes the VIP when
/// ours falls below its 100, and gives it back); with weight 0 a non-zero value means FAULT;
/// `init_file` creates the file at start.
#[test]
fn track_file_moves_the_priority_like_keepalived() {
    let Some(bin) = prerequisites("track_file_moves_the_priority_like_keepalived") else { return };
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = tempdir::Dir::new("trackfile");
    let (maint, stop) = (dir.path.join("maint"), dir.path.join("stop"));
    // keepalived's vrrp_notify_priority_changes: each move of the priority in vrrp_notify_fifo.
    let fifo = dir.path.join("vrrp.fifo");
    let cfg = format!(
        "[node]\nadmin_socket = \"{d}/admin.sock\"\nvrrp_notify_fifo = \"{f}\"\nnotify_priority_changes = true\n\n[[track_file]]\nname = \"maint\"\nfile = \"{m}\"\ninit_file = 0\n\n\
         [[track_file]]\nname = \"stop\"\nfile = \"{s}\"\nweight = 0\n\n\
         [[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\nadvert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\n\
         track_files = [{{ name = \"maint\", weight = 2 }}, \"stop\"]\n",
        d = dir.path.display(),
        m = maint.display(),
        s = stop.display(),
        f = fifo.display()
    );
    let (_c, _) = start_corrald(&bin, h1, &dir, &cfg);
    assert!(wait_for(Duration::from_secs(5), || fifo.exists()).is_some(), "corrald makes the FIFO");
    let mut reader = tests::FifoReader::open(&fifo);
    assert!(wait_for(Duration::from_secs(2), || std::fs::read_to_string(&maint).ok().as_deref() == Some("0\n")).is_some(), "init_file wrote 0");
    let _k = keepalived(h2, &dir, 3, 100, "0.1", None);
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP)).is_some(), "corral (150) is master");
    // Maintenance: -30 × 2 = -60 → 90 < 100, keepalived preempts.
    std::fs::write(&maint, "-30\n").unwrap();
    assert!(wait_for(Duration::from_secs(2), || has_addr(h2, VIP) && !has_addr(h1, VIP)).is_some(), "keepalived takes over at our 90");
    let backup_at_90 = || {
        let st = vrrp_status(&bin, &dir);
        st["state"] == "BACKUP" && st["effective_priority"] == 90
    };
    assert!(wait_for(Duration::from_secs(1), backup_at_90).is_some(), "{}", vrrp_status(&bin, &dir));
    // Not a number reads as 0: back to 150, and we preempt.
    std::fs::write(&maint, "done\n").unwrap();
    assert!(wait_for(Duration::from_secs(2), || has_addr(h1, VIP)).is_some(), "corral preempts again at 150");
    // Weight 0: any non-zero value is FAULT, the VIP goes to keepalived; removing the file ends it.
    std::fs::write(&stop, "1\n").unwrap();
    assert!(wait_for(Duration::from_secs(2), || vrrp_status(&bin, &dir)["state"] == "FAULT").is_some(), "{}", vrrp_status(&bin, &dir));
    assert!(wait_for(Duration::from_secs(2), || has_addr(h2, VIP) && !has_addr(h1, VIP)).is_some(), "keepalived holds the VIP");
    std::fs::remove_file(&stop).unwrap();
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP)).is_some(), "corral recovers and preempts");
    // The priority's moves, each in the state it happened in, before the state changes they
    // caused; FAULT and back have their own lines, not priority lines.
    let text = reader.drain();
    let lines: Vec<&str> = text.lines().collect();
    let at = |want: &str| lines.iter().position(|l| *l == want).unwrap_or_else(|| panic!("{want:?} not in the FIFO: {lines:?}"));
    assert!(at("INSTANCE \"VI_1\" MASTER_PRIORITY 90") < at("INSTANCE \"VI_1\" BACKUP 90"), "{lines:?}");
    assert!(at("INSTANCE \"VI_1\" BACKUP_PRIORITY 150") > at("INSTANCE \"VI_1\" BACKUP 90"), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.contains("_PRIORITY")).count(), 2, "{lines:?}");
    assert!(lines.contains(&"INSTANCE \"VI_1\" FAULT 150"), "{lines:?}");
}

/// A reload keeps a track script's result when its definition did not change (keepalived
/// does): a failing script must not lift the priority for its `fall` runs after every SIGHUP,
/// a bounce that can move the VIP. Seen through `notify_priority_changes`: one line for the
/// failure, none for the reload, one when the script passes again.
#[test]
fn a_reload_keeps_track_script_results() {
    let Some(bin) = prerequisites("a_reload_keeps_track_script_results") else { return };
    let lan = Lan::new(1);
    let h1 = &lan.hosts[0];
    let dir = tempdir::Dir::new("reloadscript");
    let (ok, fifo) = (dir.path.join("ok"), dir.path.join("vrrp.fifo"));
    std::fs::write(&ok, "").unwrap();
    let cfg = format!(
        "[node]\nadmin_socket = \"{d}/admin.sock\"\nvrrp_notify_fifo = \"{f}\"\nnotify_priority_changes = true\n\n\
         [[track_script]]\nname = \"chk\"\nscript = \"test -e {o}\"\ninterval = \"100ms\"\nweight = -60\nfall = 3\nrise = 1\n\n\
         [[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\nadvert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\n\
         track_scripts = [\"chk\"]\n",
        d = dir.path.display(),
        f = fifo.display(),
        o = ok.display()
    );
    let (c, _) = start_corrald(&bin, h1, &dir, &cfg);
    assert!(wait_for(Duration::from_secs(5), || fifo.exists()).is_some(), "corrald makes the FIFO");
    let mut reader = tests::FifoReader::open(&fifo);
    let priority = || vrrp_status(&bin, &dir)["effective_priority"].clone();
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP) && priority() == 150).is_some(), "master at 150");
    std::fs::remove_file(&ok).unwrap();
    assert!(wait_for(Duration::from_secs(3), || priority() == 90).is_some(), "the failing script takes 60: {}", vrrp_status(&bin, &dir));
    c.signal("HUP");
    // Three runs of 100 ms would bring it back down: watch longer than that.
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        assert_eq!(priority(), 90, "the reload lifted a failing script's priority");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&ok, "").unwrap();
    assert!(wait_for(Duration::from_secs(3), || priority() == 150).is_some(), "the script passes again after the reload: {}", vrrp_status(&bin, &dir));
    let text = reader.drain();
    let moves: Vec<&str> = text.lines().filter(|l| l.contains("_PRIORITY")).collect();
    assert_eq!(moves, ["INSTANCE \"VI_1\" MASTER_PRIORITY 90", "INSTANCE \"VI_1\" MASTER_PRIORITY 150"], "{text}");
}

/// keepalived's `garp_master_refresh` / `garp_master_refresh_repeat`: while master, the
/// gratuitous ARP goes out again every period (an upstream switch whose entry aged out learns
/// the VIP again without a failover); a backup sends none.
#[test]
fn garp_master_refresh_repeats_gratuitous_arp_while_master() {
    let Some(bin) = prerequisites("garp_master_refresh") else { return };
    let lan = Lan::new(3);
    let (h1, h2, h3) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = tempdir::Dir::new("garprefresh");
    let (_tcpdump, capture) = observer(h3, &dir);
    let cfg = |prio: u8, refresh: &str| {
        format!(
            "[node]\nadmin_socket = \"{}/admin{prio}.sock\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = {prio}\n\
             advert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\ngarp_repeat = 1\ngarp_master_refresh = \"{refresh}\"\ngarp_master_refresh_repeat = 2\n",
            dir.path.display()
        )
    };
    let d1 = tempdir::Dir::new("garprefresh-1");
    let d2 = tempdir::Dir::new("garprefresh-2");
    let (_m, _) = start_corrald(&bin, h1, &d1, &cfg(150, "300ms"));
    let (_b, _) = start_corrald(&bin, h2, &d2, &cfg(100, "300ms"));
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP)).is_some(), "h1 (150) is master");
    std::thread::sleep(Duration::from_millis(2000));
    let dump = std::fs::read_to_string(&capture).unwrap();
    let garps: Vec<&str> = dump.lines().filter(|l| l.contains(&format!("who-has {VIP} ")) && l.contains(&format!("tell {VIP},"))).collect();
    // One on the takeover, then 2 every 300 ms for ≈ 2 s: ≥ 10 (not 1).
    assert!(garps.len() >= 10, "{} gratuitous ARPs in 2 s:\n{dump}", garps.len());
    let h1_mac = h1.sh("cat /sys/class/net/eth0/address").trim().to_string();
    let h2_mac = h2.sh("cat /sys/class/net/eth0/address").trim().to_string();
    let (_t, macs) = capture_macs(h3, &dir, "arp");
    std::thread::sleep(Duration::from_millis(1000));
    let dump = std::fs::read_to_string(&macs).unwrap();
    assert!(dump.lines().any(|l| l.contains(&h1_mac) && l.contains(&format!("tell {VIP}"))), "the master's:\n{dump}");
    assert!(!dump.lines().any(|l| l.contains(&h2_mac)), "the backup sends none:\n{dump}");
}

/// keepalived's `vrrp_garp_interval` (`[node] garp_interval`): the gratuitous ARPs of a
/// takeover, for several VIPs of two instances of a sync group taking over together, and their
/// repeats, leave the interface at least the interval apart instead of back to back (switches
/// that police ARP shut a port that bursts).
#[test]
fn garp_interval_paces_an_interfaces_gratuitous_arps() {
    let Some(bin) = prerequisites("garp_interval_paces") else { return };
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = tempdir::Dir::new("garpinterval");
    let (_tcpdump, capture) = capture(h2, &dir, "arp");
    let vips = ["192.0.2.100", "192.0.2.101", "192.0.2.102", "192.0.2.103"];
    let instance = |name: &str, vrid: u8, a: &str, b: &str| {
        format!(
            "[[vrrp]]\nname = \"{name}\"\ninterface = \"eth0\"\nvrid = {vrid}\npriority = 150\nadvert_interval = \"100ms\"\n\
             virtual_ips = [\"{a}/24\", \"{b}/24\"]\ngarp_repeat = 2\ngarp_delay = \"1s\"\n"
        )
    };
    let cfg = format!(
        "[node]\nadmin_socket = \"{}/admin.sock\"\ngarp_interval = \"150ms\"\n\n{}{}\
         [[vrrp_sync_group]]\nname = \"G\"\nmembers = [\"VI_1\", \"VI_2\"]\n",
        dir.path.display(),
        instance("VI_1", 51, vips[0], vips[1]),
        instance("VI_2", 52, vips[2], vips[3]),
    );
    let (_m, _) = start_corrald(&bin, h1, &dir, &cfg);
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, vips[0]) && has_addr(h1, vips[2])).is_some(), "h1 is master");
    std::thread::sleep(Duration::from_millis(3000));
    let dump = std::fs::read_to_string(&capture).unwrap();
    // `-tt` lines: "<epoch seconds> ARP, Request who-has VIP tell VIP, length 28".
    let garps: Vec<(f64, &str)> = dump
        .lines()
        .filter_map(|l| {
            let vip = vips.iter().find(|v| l.contains(&format!("who-has {v} ")) && l.contains(&format!("tell {v},")))?;
            Some((l.split_whitespace().next()?.parse().ok()?, *vip))
        })
        .collect();
    for v in vips {
        let times: Vec<f64> = garps.iter().filter(|g| g.1 == v).map(|g| g.0).collect();
        assert_eq!(times.len(), 2, "two rounds for {v}:\n{dump}");
        assert!(times[1] - times[0] >= 0.95, "{v}: rounds {:.3} s apart:\n{dump}", times[1] - times[0]);
    }
    // 150 ms apart on the interface, across both instances (capture timestamps jitter by a
    // few ms).
    let gaps: Vec<f64> = garps.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps.iter().all(|g| *g >= 0.130), "gaps {gaps:?}:\n{dump}");
}

/// keepalived's STOP and DELETED notifications: a reload that removes an instance runs its
/// `notify_deleted` and `notify INSTANCE NAME DELETED PRIO` (one without `notify_deleted` is
/// reported as going to FAULT, as keepalived reports it); stopping corrald runs each
/// instance's and group's `notify_stop` and `notify … STOP …`, after the VIPs are gone, and
/// waits for them (a script that takes a second still finishes before corrald exits). The
/// same changes reach keepalived's `notify_fifo` as its lines.
#[test]
fn notify_stop_and_deleted_run_as_keepalived_runs_them() {
    let Some(bin) = prerequisites("notify_stop_and_deleted") else { return };
    let lan = Lan::new(1);
    let h1 = &lan.hosts[0];
    let dir = tempdir::Dir::new("notifystop");
    let log = dir.path.join("notify.log");
    let l = log.display();
    let instance = |name: &str, vrid: u8, vip: &str| {
        let deleted = if name == "VI_3" { String::new() } else { format!("notify_deleted = \"echo deleted {name} >> {l}\"\n") };
        format!(
            "[[vrrp]]\nname = \"{name}\"\ninterface = \"eth0\"\nvrid = {vrid}\npriority = 150\nadvert_interval = \"100ms\"\n\
             virtual_ips = [\"{vip}/24\"]\ngarp_repeat = 1\nnotify = \"echo >> {l}\"\n\
             notify_stop = \"sleep 1; echo stop {name} vip=$(ip -o addr show dev eth0 | grep -c ' {vip}/') >> {l}\"\n{deleted}"
        )
    };
    let fifo = dir.path.join("notify.fifo");
    let head = format!("[node]\nadmin_socket = \"{}/admin.sock\"\nnotify_fifo = \"{}\"\n\n", dir.path.display(), fifo.display());
    let group = format!("[[vrrp_sync_group]]\nname = \"G\"\nmembers = [\"VI_1\"]\nnotify_stop = \"echo stop G >> {l}\"\nnotify = \"echo >> {l}\"\n");
    let both = format!("{head}{}{}{}{group}", instance("VI_1", 51, VIP), instance("VI_2", 52, "192.0.2.101"), instance("VI_3", 53, "192.0.2.102"));
    let (mut d, file) = start_corrald(&bin, h1, &dir, &both);
    assert!(wait_for(Duration::from_secs(5), || fifo.exists()).is_some(), "corrald makes the FIFO");
    // Held open to the end: lines written before and after are kept in the pipe.
    let mut reader = tests::FifoReader::open(&fifo);
    assert!(wait_for(Duration::from_secs(5), || has_addr(h1, VIP) && has_addr(h1, "192.0.2.101") && has_addr(h1, "192.0.2.102")).is_some(), "all master");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    // A reload without VI_2 and VI_3: DELETED for VI_2 (it has notify_deleted), FAULT for VI_3
    // (it has not), nothing for VI_1.
    std::fs::write(&file, format!("{head}{}{group}", instance("VI_1", 51, VIP))).unwrap();
    d.signal("HUP");
    assert!(wait_for(Duration::from_secs(5), || read().contains("INSTANCE VI_2 DELETED 150") && read().contains("deleted VI_2")).is_some(), "{}", read());
    assert!(wait_for(Duration::from_secs(5), || read().contains("INSTANCE VI_3 FAULT 150")).is_some(), "{}", read());
    assert!(!read().contains("VI_3 DELETED"), "{}", read());
    assert!(!has_addr(h1, "192.0.2.101"), "VI_2's VIP released");
    assert!(!read().contains("VI_1 DELETED") && !read().contains("STOP"), "{}", read());
    // Stopping: STOP for VI_1 and the group, its notify_stop after the VIP is gone, and the
    // slow script finished before corrald exited.
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(15)).is_some(), "corrald stopped");
    let text = read();
    for want in ["INSTANCE VI_1 STOP 150", "GROUP G STOP 0", "stop G", "stop VI_1 vip=0"] {
        assert!(text.lines().any(|l| l.trim() == want), "{want:?} missing:\n{text}");
    }
    assert!(!text.contains("stop VI_2"), "a deleted instance does not stop again:\n{text}");
    let lines = reader.drain();
    let lines: Vec<&str> = lines.lines().collect();
    for want in [
        "INSTANCE \"VI_1\" BACKUP 150",
        "INSTANCE \"VI_1\" MASTER 150",
        "GROUP \"G\" MASTER 0",
        "INSTANCE \"VI_2\" MASTER 150",
        "INSTANCE \"VI_2\" DELETED 150",
        "INSTANCE \"VI_3\" FAULT 150",
        "INSTANCE \"VI_1\" STOP 150",
        "GROUP \"G\" STOP 0",
    ] {
        assert!(lines.contains(&want), "{want:?} not in the FIFO: {lines:?}");
    }
    let pos = |l: &str| lines.iter().position(|x| *x == l).unwrap();
    assert!(pos("INSTANCE \"VI_2\" DELETED 150") < pos("INSTANCE \"VI_1\" STOP 150"), "{lines:?}");
}

/// keepalived's `virtual_routes`: routes that exist only on the master (a default route out
/// of a NAT director's uplink, a blackhole for unused space, a route with the VIP as its
/// source), added after the VIPs and removed with them, moving with a failover.
#[test]
fn virtual_routes_follow_mastership() {
    let Some(bin) = prerequisites("virtual_routes_follow_mastership") else { return };
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let cfg = |dir: &tempdir::Dir, prio: u8| {
        format!(
            "[node]\nadmin_socket = \"{}/admin.sock\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = {prio}\n\
             advert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\ngarp_repeat = 1\n\
             virtual_routes = [\"203.0.113.0/24 via 192.0.2.254 dev eth0 src {VIP}\", \"blackhole 198.51.100.128/25\", \"default via 192.0.2.254 table 100 metric 7\"]\n",
            dir.path.display()
        )
    };
    // (A table no route was ever put in does not exist yet: `ip` fails, read as empty.)
    let routes = |ns: &Netns| (ns.sh("ip route show"), String::from_utf8_lossy(&ns.try_sh("ip route show table 100").stdout).into_owned());
    let has_all = |ns: &Netns| {
        let (main, t100) = routes(ns);
        main.lines().any(|l| l.starts_with("203.0.113.0/24 via 192.0.2.254 dev eth0") && l.contains(&format!("src {VIP}")))
            && main.lines().any(|l| l.starts_with("blackhole 198.51.100.128/25"))
            && t100.lines().any(|l| l.starts_with("default via 192.0.2.254 dev eth0") && l.contains("metric 7"))
    };
    let has_none = |ns: &Netns| {
        let (main, t100) = routes(ns);
        !main.contains("203.0.113.0/24") && !main.contains("198.51.100.128/25") && !t100.contains("default")
    };
    let (d1, d2) = (tempdir::Dir::new("vroutes-1"), tempdir::Dir::new("vroutes-2"));
    let (m, _) = start_corrald(&bin, h1, &d1, &cfg(&d1, 150));
    let (_b, _) = start_corrald(&bin, h2, &d2, &cfg(&d2, 100));
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP) && has_all(h1)).is_some(), "master h1 has the routes: {:?}", routes(h1));
    std::thread::sleep(Duration::from_millis(500));
    assert!(has_none(h2), "the backup has none: {:?}", routes(h2));
    // Failover: the old master releases (SIGTERM: priority 0), removing its routes; the new
    // master adds them.
    m.signal("TERM");
    assert!(wait_for(Duration::from_secs(3), || has_addr(h2, VIP) && has_all(h2)).is_some(), "new master h2: {:?}", routes(h2));
    assert!(wait_for(Duration::from_secs(3), || has_none(h1)).is_some(), "the old master's are gone: {:?}", routes(h1));
}

/// keepalived's `vrrp_track_process`: the director whose tracked program is not running
/// steps down (weight -60: 150 → 90, below keepalived's 100) and takes the VIP back once it
/// runs again. The program is a copy of `sleep` under a name unique to this test (processes
/// are seen across network namespaces).
#[test]
fn track_process_moves_mastership_like_keepalived() {
    let Some(bin) = prerequisites("track_process_moves_mastership_like_keepalived") else { return };
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = tempdir::Dir::new("trackproc");
    let prog = format!("ctrk{}", std::process::id() % 1_000_000);
    let path = dir.path.join(&prog);
    std::fs::copy("/bin/sleep", &path).unwrap();
    let cfg = format!(
        "[node]\nadmin_socket = \"{d}/admin.sock\"\n\n[[track_process]]\nname = \"svc\"\nprocess = \"{prog}\"\nweight = -60\ninterval = \"200ms\"\n\n\
         [[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\nadvert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\n\
         track_processes = [\"svc\"]\n",
        d = dir.path.display()
    );
    let (_c, _) = start_corrald(&bin, h1, &dir, &cfg);
    let _k = keepalived(h2, &dir, 3, 100, "0.1", None);
    // Not running: 90, keepalived (100) is master.
    assert!(wait_for(Duration::from_secs(3), || has_addr(h2, VIP)).is_some(), "keepalived is master while the program is not running");
    let at = |prio: u64, state: &str| {
        let st = vrrp_status(&bin, &dir);
        st["state"] == state && st["effective_priority"] == prio
    };
    assert!(wait_for(Duration::from_secs(2), || at(90, "BACKUP")).is_some(), "{}", vrrp_status(&bin, &dir));
    // Started: 150, corral preempts.
    let mut child = std::process::Command::new(&path).arg("600").spawn().unwrap();
    assert!(wait_for(Duration::from_secs(3), || has_addr(h1, VIP) && at(150, "MASTER")).is_some(), "{}", vrrp_status(&bin, &dir));
    // Killed: back to 90.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_for(Duration::from_secs(3), || has_addr(h2, VIP) && !has_addr(h1, VIP)).is_some(), "keepalived takes over when it dies");
}

/// An interface deleted and made again under the same name (a VLAN or bond rebuilt by the
/// network manager): the instance follows the new device, as keepalived does, over IPv4 and
/// IPv6 (whose link-local source changes with the new MAC). While it is gone the instance is
/// in FAULT and keepalived holds the VIP; when it is back without its address yet the instance
/// stays in FAULT (nothing to send from) and says why; once the address is there it preempts
/// keepalived again, keeping its counters.
#[test]
fn an_interface_deleted_and_made_again_is_followed() {
    let Some(bin) = prerequisites("an_interface_deleted_and_made_again_is_followed") else { return };
    for (vip, family) in [(format!("{VIP}/24"), "IPv4"), ("2001:db8::100/64".to_string(), "IPv6")] {
        let addr = vip.split('/').next().unwrap().to_string();
        let lan = Lan::new(2);
        let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
        let dir = tempdir::Dir::new(&format!("recreate{}", family.len()));
        let (c, _) = start_corrald(
            &bin,
            h1,
            &dir,
            &format!(
                "[node]\nadmin_socket = \"{}/admin.sock\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\nadvert_interval = \"100ms\"\nvirtual_ips = [\"{vip}\"]\ngarp_repeat = 1\n",
                dir.path.display()
            ),
        );
        let _k = keepalived_vip(h2, &dir, 3, 100, "0.1", None, &vip);
        assert!(wait_for(Duration::from_secs(4), || has_addr(h1, &addr) && !has_addr(h2, &addr)).is_some(), "{family}: corral is master");
        let before = vrrp_status(&bin, &dir);

        h1.sh("ip link del eth0");
        assert!(wait_for(Duration::from_secs(3), || has_addr(h2, &addr)).is_some(), "{family}: keepalived took over");
        assert!(wait_for(Duration::from_secs(1), || vrrp_status(&bin, &dir)["state"] == "FAULT").is_some(), "{family}: FAULT while gone");

        // Back, up, but without its addresses yet (IPv6 link-local addresses come by
        // themselves with the link: turned off until the addresses are given).
        tests::sh(&format!("ip link add p1 netns {} type veth peer name eth0 netns {}", lan.bridge.name, h1.name));
        lan.bridge.sh("ip link set p1 master br0 && ip link set p1 up");
        h1.sh("sysctl -qw net.ipv6.conf.eth0.addr_gen_mode=1 && ip link set eth0 up");
        std::thread::sleep(Duration::from_millis(1500));
        let st = vrrp_status(&bin, &dir);
        assert_eq!(st["state"], "FAULT", "{family}: no address to send from, so FAULT: {st}");
        assert!(has_addr(h2, &addr) && !has_addr(h1, &addr), "{family}: keepalived keeps the VIP meanwhile");

        let link_local = if family == "IPv6" {
            h1.sh("sysctl -qw net.ipv6.conf.eth0.addr_gen_mode=0 && ip link set eth0 down && ip link set eth0 up");
            h1.sh("ip addr add 2001:db8::1/64 dev eth0 nodad");
            let ll = tests::wait_for(Duration::from_secs(3), || h1.sh("ip -6 -o addr show dev eth0 scope link").contains("fe80::"));
            assert!(ll.is_some(), "a new link-local address");
            let line = h1.sh("ip -6 -o addr show dev eth0 scope link");
            Some(line.split_whitespace().nth(3).unwrap().split('/').next().unwrap().to_string())
        } else {
            h1.sh("ip addr add 192.0.2.1/24 dev eth0");
            None
        };
        let back = wait_for(Duration::from_secs(4), || has_addr(h1, &addr) && !has_addr(h2, &addr));
        assert!(back.is_some(), "{family}: corral follows the new interface and preempts keepalived: {}", vrrp_status(&bin, &dir));
        // The status board is refreshed every 50 ms.
        assert!(wait_for(Duration::from_secs(1), || vrrp_status(&bin, &dir)["state"] == "MASTER").is_some(), "{family}");
        let after = vrrp_status(&bin, &dir);
        if let Some(ll) = link_local {
            assert_eq!(after["master"].as_str(), Some(ll.as_str()), "adverts come from the new link-local address: {after}");
        }
        let sent = |s: &serde_json::Value| s["counters"]["adverts_sent"].as_u64().unwrap_or(0);
        assert!(sent(&after) > sent(&before), "{family}: the same instance, counters kept: {before} -> {after}");
        assert_eq!(after["counters"]["became_master"], 2, "{family}: {after}");
        // Stable: keepalived hears the new adverts.
        std::thread::sleep(Duration::from_millis(600));
        assert!(has_addr(h1, &addr) && !has_addr(h2, &addr), "{family}: stable after the move");
        drop(c);
    }
}
