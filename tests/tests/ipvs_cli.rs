//! `corralctl ipvs` as an operator runs it, side by side with ipvsadm on the same kernel
//! (run in the VM lab). Every test starts from a flushed table and compares outputs byte for byte.
//!
//! The tables here only program IPVS inside the VM; no packet is sent. One test uses
//! 10/8, 100.64/10 and 192.168/16 VIPs because only addresses that far apart expose the
//! cycle in ipvsadm's sort comparator (the documentation ranges are too close together).

use tests::{must_sh as must, run_sh as run, ShOut};

const RULES: &str = include_str!("../../ipvs/testdata/ipvsadm-sn.rules");

/// The corralctl binary: $CORRALCTL, else beside the test executable, else from PATH.
fn corralctl() -> String {
    tests::workspace_bin("corralctl", "CORRALCTL").map(|p| p.display().to_string()).unwrap_or_else(|| "corralctl".into())
}

fn ctl(args: &str, stdin: &str) -> ShOut {
    run(&format!("{} ipvs {args}", corralctl()), stdin)
}

fn ctl_ok(args: &str, stdin: &str) -> String {
    let o = ctl(args, stdin);
    assert_eq!(o.code, 0, "corralctl ipvs {args} failed: {}{}", o.stdout, o.stderr);
    o.stdout
}

fn fresh() {
    must("ipvsadm -C", "");
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn restore_then_both_saves_equal_the_input() {
    fresh();
    let o = ctl("restore", RULES);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("netlink request(s)"), "a summary on stderr: {}", o.stderr);
    assert_eq!(must("ipvsadm -Sn", ""), RULES);
    assert_eq!(ctl_ok("save", ""), RULES);
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn a_bad_line_anywhere_changes_nothing_and_exits_1() {
    fresh();
    must("ipvsadm -R", RULES);
    for bad in [
        "-A -t 192.0.2.99:80 -s rr -o\n",                                                       // -o is for UDP only
        "-A -t 192.0.2.99:80\n-a -t 192.0.2.99:80 -r 198.51.100.1 -i --tun-type gre --tun-port 1\n", // gre takes no port
        "-A -u 192.0.2.99:53 -s rr -b mh-port\n",                                               // flag of another scheduler
    ] {
        let input = format!("{bad}{RULES}");
        let o = ctl("restore --flush", &input);
        assert_eq!(o.code, 1, "rejected with exit code 1: {}", o.stderr);
        assert!(o.stderr.contains("line ") && o.stderr.contains("nothing applied"), "{}", o.stderr);
        assert_eq!(must("ipvsadm -Sn", ""), RULES, "nothing was applied for {bad:?}");
    }
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn usage_errors_exit_2() {
    assert_eq!(ctl("restore --no-such-flag", "").code, 2);
    assert_eq!(ctl("list --stats --rate", "").code, 2);
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn restore_reads_files_the_way_ipvsadm_does() {
    // Defaults and rewrites ipvsadm applies: -p without a value (360 s), the service port for
    // -g/-i real servers whatever was written, a port-0 persistent service, long options.
    // (No comment line: ipvsadm -R, despite its documentation, rejects a line starting with '#'.)
    let input = "\
-A -t 192.0.2.1:80 -p
-a -t 192.0.2.1:80 -r 198.51.100.1:8080 -g
-a -t 192.0.2.1:80 -r 198.51.100.2:8080 -m -w 0
--add-service --udp-service 192.0.2.2 --persistent 60 --scheduler rr
--add-server --udp-service 192.0.2.2 --real-server 198.51.100.3 --weight 5
";
    fresh();
    must("ipvsadm -R", input);
    let by_ipvsadm = must("ipvsadm -Sn", "");
    fresh();
    ctl_ok("restore", input);
    assert_eq!(must("ipvsadm -Sn", ""), by_ipvsadm);
    assert_eq!(ctl_ok("save", ""), by_ipvsadm);
    assert!(by_ipvsadm.contains("-p 360") && by_ipvsadm.contains("-r 198.51.100.1:80 -g"), "{by_ipvsadm}");
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn save_order_matches_ipvsadm_where_its_comparator_has_cycles() {
    // 10.x < 100.64.x < 192.168.x < 10.x in ipvsadm's wrapping comparator: the order it prints
    // depends on the kernel's dump order and glibc's merge sort, both of which we reproduce.
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
        fresh();
        let vips = ["10.0.0.1", "100.64.0.1", "192.168.0.1"];
        let rules: String = order.iter().map(|&i| format!("-A -t {}:80 -s rr\n", vips[i])).collect();
        must("ipvsadm -R", &rules);
        assert_eq!(ctl_ok("save", ""), must("ipvsadm -Sn", ""), "insertion order {order:?}");
        assert_eq!(ctl_ok("list", ""), must("ipvsadm -Ln", ""), "insertion order {order:?}");
    }
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn restore_without_flush_leaves_other_services_alone() {
    fresh();
    must("ipvsadm -R", RULES);
    let one = "-A -t 192.0.2.1:80 -s rr\n-a -t 192.0.2.1:80 -r 198.51.100.9:80 -m -w 2\n";
    let o = ctl("restore", one);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // The service is exactly as written (old real servers removed), the others untouched.
    let want = RULES
        .lines()
        .filter(|l| !l.contains("-t 192.0.2.1:80 "))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replacen("-A -t 192.0.2.2:443", &format!("{one}-A -t 192.0.2.2:443"), 1);
    assert_eq!(must("ipvsadm -Sn", ""), want);
    // With --flush the kernel ends with exactly the input.
    ctl_ok("restore --flush", one);
    assert_eq!(must("ipvsadm -Sn", ""), one);
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn thresholds_are_saved_only_on_request() {
    fresh();
    let input = "-A -t 192.0.2.1:80 -s wlc\n-a -t 192.0.2.1:80 -r 198.51.100.1:80 -m -w 1 -x 100 -y 10\n";
    ctl_ok("restore", input);
    assert_eq!(ctl_ok("save", ""), must("ipvsadm -Sn", ""), "like ipvsadm, no thresholds");
    assert_eq!(ctl_ok("save --thresholds", ""), input);
    assert_eq!(ctl_ok("list --thresholds", ""), must("ipvsadm -Ln --thresholds", ""));
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn every_list_layout_matches_ipvsadm() {
    fresh();
    must("ipvsadm -R", RULES);
    for (ours, theirs) in [
        ("list", "-Ln"),
        ("list --stats", "-Ln --stats"),
        ("list --stats --exact", "-Ln --stats --exact"),
        ("list --rate", "-Ln --rate"),
        ("list --thresholds", "-Ln --thresholds"),
        ("list --persistent-conn", "-Ln --persistent-conn"),
        ("list --tun-info", "-Ln --tun-info"),
        ("list --timeout", "-L --timeout"),
        ("timeout get", "-L --timeout"),
        ("list -c", "-Lnc"),
        ("list --daemon", "-L --daemon"),
    ] {
        assert_eq!(ctl_ok(ours, ""), must(&format!("ipvsadm {theirs}"), ""), "corralctl ipvs {ours} vs ipvsadm {theirs}");
    }
    let json: serde_json::Value = serde_json::from_str(&ctl_ok("list -o json", "")).expect("valid JSON");
    assert_eq!(json.as_array().map(|a| a.len()), Some(9));
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn zero_timeout_flush_and_daemon_commands() {
    fresh();
    must("ipvsadm -R", RULES);
    ctl_ok("zero -t 192.0.2.1:80", "");
    ctl_ok("zero -f 8 -6", "");
    ctl_ok("zero", "");
    let o = ctl("zero -t 192.0.2.200:80", "");
    assert_eq!(o.code, 1, "zeroing a missing service fails: {}", o.stderr);
    let before = must("ipvsadm -L --timeout", "");
    ctl_ok("timeout set 901 121 301", "");
    assert_eq!(ctl_ok("timeout get", ""), "Timeout (tcp tcpfin udp): 901 121 301\n");
    assert_eq!(must("ipvsadm -L --timeout", ""), "Timeout (tcp tcpfin udp): 901 121 301\n");
    let nums: Vec<&str> = before.trim().rsplit(' ').take(3).collect();
    must(&format!("ipvsadm --set {} {} {}", nums[2], nums[1], nums[0]), "");
    ctl_ok("daemon start backup --mcast-interface lo --syncid 9", "");
    assert_eq!(ctl_ok("daemon status", ""), must("ipvsadm -L --daemon", ""));
    assert!(ctl_ok("daemon status", "").starts_with("backup sync daemon (mcast=lo, syncid=9"));
    ctl_ok("daemon stop backup", "");
    assert_eq!(must("ipvsadm -L --daemon", ""), "");
    ctl_ok("flush", "");
    assert_eq!(must("ipvsadm -Sn", ""), "");
}
