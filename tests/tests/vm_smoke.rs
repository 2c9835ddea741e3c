//! Proves the VM lab itself: IPVS is in the kernel, ipvsadm talks to it, and IPVS tables are
//! per network namespace (several directors fit in one VM).

use std::process::Command;

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("run sh");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn must(cmd: &str) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "`{cmd}` failed: {out}");
    out
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn ipvsadm_programs_the_kernel() {
    must("ipvsadm -C");
    must("ipvsadm -A -t 192.0.2.1:80 -s rr");
    must("ipvsadm -a -t 192.0.2.1:80 -r 198.51.100.1:80 -m -w 3");
    let saved = must("ipvsadm -Sn");
    assert_eq!(saved, "-A -t 192.0.2.1:80 -s rr\n-a -t 192.0.2.1:80 -r 198.51.100.1:80 -m -w 3\n");
    must("ipvsadm -C");
    assert_eq!(must("ipvsadm -Sn"), "");
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn ipvs_is_per_network_namespace() {
    let ns = format!("smoke{}", std::process::id());
    must(&format!("ip netns add {ns}"));
    let result = std::panic::catch_unwind(|| {
        must("ipvsadm -C");
        must(&format!("ip netns exec {ns} ipvsadm -A -u 192.0.2.2:53 -s wlc"));
        assert_eq!(must(&format!("ip netns exec {ns} ipvsadm -Sn")), "-A -u 192.0.2.2:53 -s wlc\n");
        assert_eq!(must("ipvsadm -Sn"), "", "the root namespace must not see the other namespace's table");
        must(&format!("ip link add v{ns} type veth peer name eth0 netns {ns}"));
        must(&format!("ip netns exec {ns} ip link set eth0 up"));
    });
    let _ = sh(&format!("ip netns del {ns}; ip link del v{ns}"));
    result.unwrap();
}
