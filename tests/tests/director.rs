//! The director in the VM lab (real kernel IPVS, one network namespace per director): rules
//! applied once reach every director's kernel, byte-identical; drift is repaired; a restart of
//! every director restores the table from Raft; an invalid apply changes nothing anywhere.

use std::time::{Duration, Instant};

use tests::cluster::{binaries, LabCluster};
use tests::wait_for;

const IGNORE: &str = "needs a kernel with IPVS: run by `cargo xtask vm test`";

const RULES: &str = r#"
[[virtual_server]]
address = "192.0.2.100:80"
scheduler = "rr"
[[virtual_server.real_server]]
address = "198.51.100.11:80"
[[virtual_server.real_server]]
address = "198.51.100.12:80"
weight = 2

[[virtual_server]]
address = "[2001:db8::100]:443"
scheduler = "wlc"
forwarding = "dr"
persistence_timeout = "5m"
[[virtual_server.real_server]]
address = "[2001:db8::11]:443"

[[virtual_server]]
fwmark = 7
scheduler = "mh"
forwarding = "dr"
[[virtual_server.real_server]]
address = "198.51.100.21:0"
"#;

fn save(c: &LabCluster, i: usize) -> String {
    let o = c.lan.hosts[i].try_sh("ipvsadm -Sn");
    assert!(o.status.success(), "ipvsadm -Sn in d{}", i + 1);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn director_lab(test: &str) -> Option<LabCluster> {
    let (d, c) = binaries(test)?;
    let mut c = LabCluster::new(test, 3, d, c);
    // TCG is slow: a longer Raft heartbeat keeps elections calm.
    c.cluster_extra = "heartbeat = \"250ms\"\ndead_grace = \"10s\"\n".into();
    c.extra_sections = "[director]\nreconcile_interval = \"1s\"\n".into();
    for h in &c.lan.hosts {
        h.sh("ipvsadm -C");
    }
    c.form(Duration::from_secs(60));
    Some(c)
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn rules_reach_every_director_identically_drift_is_repaired_and_restarts_restore() {
    let _ = IGNORE;
    let Some(mut c) = director_lab("director_tables") else { return };
    let file = c.root().join("services.toml");
    std::fs::write(&file, RULES).unwrap();
    let o = c.ctl(1, &format!("apply -f {}", file.display()));
    assert_eq!(o.code, 0, "apply: {}{}", o.stdout, o.stderr);
    let t = Instant::now();
    let same = wait_for(Duration::from_secs(20), || {
        let a = save(&c, 0);
        a.lines().count() == 7 && (1..3).all(|i| save(&c, i) == a)
    });
    assert!(same.is_some(), "tables differ or incomplete:\n{}\n{}\n{}", save(&c, 0), save(&c, 1), save(&c, 2));
    eprintln!("apply on d2 → identical ipvsadm -Sn on 3 directors after {:?}:\n{}", t.elapsed(), save(&c, 0));
    let table = save(&c, 0);
    assert!(table.contains("-A -t 192.0.2.100:80 -s rr"), "{table}");
    assert!(table.contains("-a -t 192.0.2.100:80 -r 198.51.100.12:80 -m -w 2"), "{table}");
    assert!(table.contains("-A -f 7 -s mh"), "{table}");
    assert!(table.contains("-A -t [2001:db8::100]:443 -s wlc -p 300"), "{table}");

    // get services is valid apply input, and applying it is a no-op.
    let o = c.ctl(0, "get services -o toml");
    assert_eq!(o.code, 0);
    std::fs::write(&file, &o.stdout).unwrap();
    let o = c.ctl(2, &format!("apply -f {} --dry-run", file.display()));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.trim().is_empty(), "re-applying get output would change: {}", o.stdout);

    // Drift: an operator flushes one director by hand; the next reconcile restores it.
    c.lan.hosts[2].sh("ipvsadm -C");
    let t = Instant::now();
    let repaired = wait_for(Duration::from_secs(5), || save(&c, 2) == table);
    assert!(repaired.is_some(), "ipvsadm -C on d3 not repaired:\n{}", save(&c, 2));
    eprintln!("ipvsadm -C on d3 repaired after {:?}", t.elapsed());
    let st = c.ctl(0, "status -o json");
    assert!(st.stdout.contains("\"drift_repairs\": 1") || wait_for(Duration::from_secs(3), || c.ctl(0, "status -o json").stdout.contains("\"drift_repairs\": 1")).is_some(), "{}", st.stdout);

    // An edit goes everywhere as one change.
    let o = c.ctl(0, "rs drain 192.0.2.100:80 198.51.100.11:80");
    assert_eq!(o.code, 0, "{}", o.stderr);
    let drained = wait_for(Duration::from_secs(10), || (0..3).all(|i| save(&c, i).contains("-r 198.51.100.11:80 -m -w 0")));
    assert!(drained.is_some(), "drain not applied everywhere");
    let table = save(&c, 0);

    // An invalid apply changes nothing anywhere.
    let rev = |c: &LabCluster| c.ctl(0, "get services -o json").code;
    let before_rev = c.ctl(0, "status -o json").stdout;
    std::fs::write(&file, "[[virtual_server]]\naddress = \"192.0.2.100:80\"\nscheduler = \"bogus\"\n").unwrap();
    let o = c.ctl(1, &format!("apply -f {}", file.display()));
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("virtual_server[0].scheduler"), "{}", o.stderr);
    std::fs::write(&file, "[[virtual_server]]\naddress = \"192.0.2.100:80\"\n[[virtual_server.real_server]]\naddress = \"[2001:db8::1]:80\"\n").unwrap();
    assert_ne!(c.ctl(1, &format!("apply -f {}", file.display())).code, 0);
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..3 {
        assert_eq!(save(&c, i), table, "d{} changed after invalid applies", i + 1);
    }
    let _ = (rev(&c), before_rev);

    // Restart every director with its kernel table wiped while it was down: Raft restores it.
    for i in 0..3 {
        c.kill(i);
        c.lan.hosts[i].sh("ipvsadm -C");
    }
    for i in 0..3 {
        c.configure(i, if i == 0 { &[] } else { &[0] }, None);
        c.start(i);
    }
    let restored = wait_for(Duration::from_secs(60), || (0..3).all(|i| save(&c, i) == table));
    assert!(restored.is_some(), "tables not restored after restarting all directors:\n{}\n{}", save(&c, 0), c.log_tail(0));

    // Stopping a director leaves its table in place (traffic keeps flowing).
    c.kill(1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(save(&c, 1), table);
}
