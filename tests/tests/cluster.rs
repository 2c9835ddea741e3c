//! Cluster core in the lab: separate `corrald` processes, each in its own network namespace on
//! a bridge, driven by the real `corralctl`. Host kernel only (no IPVS needed).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tests::cluster::{binaries, LabCluster};
use tests::{require_root, wait_for};

/// The lab tests start 3–5 daemons each; running them one at a time keeps timings honest on a
/// 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn lab(test: &str, n: usize) -> Option<(std::sync::MutexGuard<'static, ()>, LabCluster)> {
    lab_hosts(test, n, n)
}

/// [`lab`] with `hosts` hosts on the LAN, the last `hosts - n` free for other processes.
fn lab_hosts(test: &str, n: usize, hosts: usize) -> Option<(std::sync::MutexGuard<'static, ()>, LabCluster)> {
    if !require_root(test) {
        return None;
    }
    let (d, c) = binaries(test)?;
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    Some((guard, LabCluster::with_hosts(test, n, hosts, d, c)))
}

/// SWIM bound with the defaults (probe 500 ms, suspicion 3 s), see gossip/README.md:
/// (N-1)·probe + probe + suspicion + 3·gossip interval, plus 2 s of scheduling slack.
fn detection_bound(n: u32) -> Duration {
    Duration::from_millis(500) * (n - 1) + Duration::from_millis(500) + Duration::from_secs(3) + Duration::from_millis(600)
        + Duration::from_secs(2)
}

#[test]
fn five_nodes_join_detect_crash_rejoin_and_leave() {
    let Some((_g, mut c)) = lab("five_nodes_join", 5) else { return };
    let agreed = c.form(Duration::from_secs(20));
    eprintln!("5 nodes: members agreed on every node {agreed:?} after the last process started");
    // From the moment the last of the 4 joiners was started (certificate exchange included).
    assert!(agreed < Duration::from_secs(2), "members took {agreed:?} to agree");

    // Voters follow gossip: 5 alive members → 5 voters.
    let five_voters = wait_for(Duration::from_secs(15), || {
        c.raft(0).is_some_and(|r| r["voters"].as_array().map_or(0, |v| v.len()) == 5)
    });
    assert!(five_voters.is_some(), "never reached 5 voters: {:?}", c.raft(0));
    // Followers learn the last membership change with the next replication round.
    let agreed = wait_for(Duration::from_secs(5), || {
        (0..5).all(|i| {
            c.members(i).is_some_and(|m| {
                m.iter().all(|x| x["raft"] == "voter" || x["raft"] == "leader") && m.iter().filter(|x| x["raft"] == "leader").count() == 1
            })
        })
    });
    assert!(agreed.is_some(), "roles differ between nodes: {:?}", (0..5).map(|i| c.members(i)).collect::<Vec<_>>());

    // Remote admin: corralctl on d2's host asks d1 over QUIC with d2's certificate.
    let remote = c.lan.hosts[1].try_sh(&format!(
        "{} --remote {} --cert-dir {} members -o json",
        c.corralctl.display(),
        c.nodes[0].addr(),
        c.nodes[1].dir.join("data").display()
    ));
    let text = String::from_utf8_lossy(&remote.stdout);
    assert!(remote.status.success() && text.matches("\"alive\"").count() == 5, "remote members: {text}{}", String::from_utf8_lossy(&remote.stderr));

    // A write while d5 is down reaches it after its restart.
    c.kill(4);
    let t = Instant::now();
    let seen_dead = wait_for(Duration::from_secs(20), || (0..4).all(|i| c.state_of(i, "d5").as_deref() == Some("dead")));
    let took = t.elapsed();
    eprintln!("SIGKILL of d5 seen dead by all 4 others after {took:?} (bound {:?})", detection_bound(5));
    assert!(seen_dead.is_some() && took <= detection_bound(5), "d5 not dead everywhere within the bound: {took:?}");
    // Dead longer than dead_grace (3 s here): demoted from voter to learner by the leader.
    let demoted = wait_for(Duration::from_secs(15), || {
        c.raft(0).is_some_and(|r| {
            r["learners"].as_array().is_some_and(|l| l.iter().any(|n| n == "d5")) && !r["voters"].as_array().unwrap().iter().any(|n| n == "d5")
        })
    });
    assert!(demoted.is_some(), "dead d5 was not demoted: {:?}", c.raft(0));
    let o = c.ctl(1, "kv put while-down yes");
    assert_eq!(o.code, 0, "write with 4 of 5: {}{}", o.stdout, o.stderr);

    // Restart with the token removed from its config: the certificate in its data dir is enough.
    let inc_before = c.members(0).unwrap().iter().find(|m| m["name"] == "d5").unwrap()["incarnation"].as_u64();
    c.configure(4, &[0], None);
    c.start(4);
    let t = Instant::now();
    let back = wait_for(Duration::from_secs(15), || {
        (0..5).all(|i| {
            c.members(i).is_some_and(|m| {
                m.len() == 5
                    && m.iter().all(|x| x["state"] == "alive")
                    && m.iter().find(|x| x["name"] == "d5").unwrap()["incarnation"].as_u64() != inc_before
            })
        })
    });
    assert!(back.is_some(), "d5 did not rejoin: {:?}\n{}", c.members(0), c.log_tail(4));
    eprintln!("restarted d5 seen alive (new incarnation) on every node after {:?}", t.elapsed());
    // Typically ~0.3 s: peers drop their connections to the old process at its first packet
    // (stateless reset). The last member may still learn it by a gossip round or a probe, so
    // the bound is one suspicion period plus slack, far below the 15 s QUIC idle timeout.
    assert!(t.elapsed() < Duration::from_secs(5), "rejoin took {:?}\n{}", t.elapsed(), c.log_tail(4));
    let caught_up = wait_for(Duration::from_secs(10), || c.kv(4).is_some_and(|kv| kv.get("while-down").is_some()));
    assert!(caught_up.is_some(), "d5 did not catch up with the write made while it was down");

    // Graceful leave: seen as left (not dead), out of Raft, the daemon exits 0.
    let o = c.ctl(3, "leave");
    assert_eq!(o.code, 0, "leave: {}{}", o.stdout, o.stderr);
    let left = wait_for(Duration::from_secs(5), || (0..5).filter(|i| *i != 3).all(|i| c.state_of(i, "d4").as_deref() == Some("left")));
    assert!(left.is_some(), "d4 not seen as left: {:?}", c.members(0));
    let status = c.nodes[3].daemon.as_mut().unwrap().wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "d4 corrald did not exit cleanly after leave: {status:?}");
    c.nodes[3].daemon = None;
    let out_of_raft = wait_for(Duration::from_secs(10), || {
        c.raft(0).is_some_and(|r| {
            let all: BTreeSet<&str> = r["voters"].as_array().unwrap().iter().chain(r["learners"].as_array().unwrap()).filter_map(|v| v.as_str()).collect();
            !all.contains("d4") && all.len() == 4
        })
    });
    assert!(out_of_raft.is_some(), "d4 still in Raft after leave: {:?}", c.raft(0));
    // Never reported dead in between.
    assert_eq!(c.state_of(1, "d4").as_deref(), Some("left"));
}

#[test]
fn leader_killed_during_writes_keeps_every_acknowledged_write() {
    let Some((_g, mut c)) = lab("leader_kill_writes", 3) else { return };
    c.form(Duration::from_secs(20));
    assert!(wait_for(Duration::from_secs(15), || c.raft(0).is_some_and(|r| r["voters"].as_array().unwrap().len() == 3)).is_some());
    let leader = c.leader().expect("a leader everyone agrees on");
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let mut acked = Vec::new();
    let mut refused = 0;
    let t0 = Instant::now();
    let mut killed_at = None;
    for k in 0..60 {
        if k == 20 {
            c.kill(leader);
            killed_at = Some(Instant::now());
        }
        let o = c.ctl(follower, &format!("kv put w{k} {k}"));
        if o.code == 0 {
            acked.push(format!("w{k}"));
        } else {
            refused += 1;
            assert!(!o.stderr.trim().is_empty(), "a refused write must say why");
        }
    }
    eprintln!(
        "{} writes acknowledged, {refused} refused, in {:?} (leader killed after 20, at {:?})",
        acked.len(),
        t0.elapsed(),
        killed_at.map(|k| k - t0)
    );
    assert!(acked.len() >= 50, "too few writes went through after the failover: {}", acked.len());
    // Every acknowledged write is on every surviving node, and on the old leader once back.
    c.start(leader);
    for i in 0..3 {
        let ok = wait_for(Duration::from_secs(15), || c.kv(i).is_some_and(|kv| acked.iter().all(|k| kv.contains_key(k))));
        assert!(ok.is_some(), "node {i} is missing acknowledged writes: {:?}", c.kv(i).map(|kv| kv.len()));
    }
}

#[test]
fn minority_partition_cannot_commit_and_catches_up_after_healing() {
    let Some((_g, c)) = lab("minority_partition", 5) else { return };
    let mut c = c;
    c.form(Duration::from_secs(20));
    assert!(wait_for(Duration::from_secs(15), || c.raft(0).is_some_and(|r| r["voters"].as_array().unwrap().len() == 5)).is_some());
    // Cut d4 and d5 off the LAN.
    for i in [3, 4] {
        c.lan.hosts[i].sh("ip link set eth0 down");
    }
    let o = c.ctl(3, "kv put from-minority 1");
    assert_ne!(o.code, 0, "a minority node committed a write: {}", o.stdout);
    eprintln!("minority write refused: {}", o.stderr.trim());
    let ok = wait_for(Duration::from_secs(15), || c.ctl(0, "kv put from-majority 1").code == 0);
    assert!(ok.is_some(), "the majority could not commit: {}", c.log_tail(0));
    assert!(c.kv(4).is_some_and(|kv| !kv.contains_key("from-majority")), "the minority saw a write it could not have");
    for i in [3, 4] {
        c.lan.hosts[i].sh("ip link set eth0 up");
    }
    for i in [3, 4] {
        let ok = wait_for(Duration::from_secs(20), || c.kv(i).is_some_and(|kv| kv.contains_key("from-majority")));
        assert!(ok.is_some(), "node {i} did not catch up after healing: {}", c.log_tail(i));
        assert!(!c.kv(i).unwrap().contains_key("from-minority"), "the refused write appeared on node {i}");
    }
    let _ = &mut c;
}

#[test]
fn joins_without_valid_token_or_with_a_foreign_ca_are_refused() {
    let Some((_g, mut c)) = lab("join_refusals", 4) else { return };
    c.configure(0, &[], None);
    c.start(0);
    assert!(c.wait_up(0, Duration::from_secs(20)));
    let good = c.wait_token(0);

    // No token at all.
    c.configure(1, &[0], None);
    c.start(1);
    let st = c.nodes[1].daemon.as_mut().unwrap().wait_exit(Duration::from_secs(15));
    assert!(st.is_some_and(|s| !s.success()), "a node without a token kept running");
    assert!(c.log_tail(1).contains("token"), "no clear error: {}", c.log_tail(1));

    // The right CA fingerprint with an unknown secret.
    let forged = format!("{}::{}", good.rsplit_once("::").unwrap().0, "00112233445566778899aabbccddeeff");
    c.configure(1, &[0], Some(&forged));
    c.start(1);
    let st = c.nodes[1].daemon.as_mut().unwrap().wait_exit(Duration::from_secs(15));
    assert!(st.is_some_and(|s| !s.success()), "a forged secret was accepted");
    assert!(c.log_tail(1).contains("unknown join token"), "{}", c.log_tail(1));

    // A revoked token and an expired one.
    let (revoked, revoke_id) = c.token(0, "--ttl 1h");
    assert_eq!(c.ctl(0, &format!("token revoke {revoke_id}")).code, 0);
    let list = c.ctl(0, "token list -o json");
    let tokens: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    assert!(tokens.iter().any(|t| t["id"] == revoke_id.as_str() && t["revoked"] == true), "{tokens:?}");
    assert!(!list.stdout.contains(revoked.rsplit("::").next().unwrap()), "token list shows a secret");
    let (expired, _) = c.token(0, "--ttl 1s");
    std::thread::sleep(Duration::from_millis(2100));
    for (tok, why) in [(&revoked, "revoked"), (&expired, "expired")] {
        let _ = std::fs::remove_dir_all(c.nodes[1].dir.join("data"));
        c.configure(1, &[0], Some(tok));
        c.start(1);
        let st = c.nodes[1].daemon.as_mut().unwrap().wait_exit(Duration::from_secs(15));
        let tail = c.log_tail(1);
        assert!(st.is_some_and(|s| !s.success()), "a {why} token was accepted:\n{tail}");
        assert!(tail.lines().last().unwrap_or_default().contains(why), "{why}: no clear error:\n{tail}");
    }

    // A node whose certificate comes from another cluster's CA: d3 creates its own cluster,
    // then is pointed at d1. The handshake is refused and d1 never lists it.
    c.configure(2, &[], None);
    c.start(2);
    assert!(c.wait_up(2, Duration::from_secs(20)));
    c.kill(2);
    c.configure(2, &[0], None);
    c.start(2);
    let refused = wait_for(Duration::from_secs(10), || std::fs::read_to_string(c.nodes[0].log()).unwrap_or_default().contains("refused"));
    assert!(refused.is_some(), "d1 did not log a refused handshake:\n{}", c.log_tail(0));
    std::thread::sleep(Duration::from_secs(2));
    let m = c.members(0).unwrap();
    assert!(m.iter().all(|x| x["name"] != "d3"), "a foreign node got in: {m:?}");

    // A valid token still works after all that.
    let _ = std::fs::remove_dir_all(c.nodes[1].dir.join("data"));
    c.configure(1, &[0], Some(&good));
    c.start(1);
    assert!(wait_for(Duration::from_secs(15), || c.state_of(0, "d2").as_deref() == Some("alive")).is_some(), "{}", c.log_tail(1));

    // A damaged Raft store is a clear error at start, never an empty log.
    c.kill(1);
    let store = c.nodes[1].dir.join("data/raft.redb");
    std::fs::write(&store, b"").unwrap();
    c.start(1);
    let st = c.nodes[1].daemon.as_mut().unwrap().wait_exit(Duration::from_secs(15));
    assert!(st.is_some_and(|s| !s.success()), "corrald started on an empty raft.redb");
    assert!(c.log_tail(1).contains("raft.redb"), "{}", c.log_tail(1));
    std::fs::write(&store, vec![0x42u8; 8192]).unwrap();
    c.start(1);
    let st = c.nodes[1].daemon.as_mut().unwrap().wait_exit(Duration::from_secs(15));
    assert!(st.is_some_and(|s| !s.success()), "corrald started on a garbage raft.redb");
    assert!(c.log_tail(1).contains("raft.redb"), "{}", c.log_tail(1));
}

/// Quorum fencing: VRRP runs on a second LAN (eth1, 203.0.113.0/24); when the master loses the
/// cluster network (eth0) it no longer sees a majority of the Raft voters, drops its priority
/// by `fence_priority_drop`, and a node that still sees the majority takes the VIP; when the
/// cluster network heals, the VIP goes back.
#[test]
fn quorum_fencing_moves_the_vip_away_from_a_minority_node() {
    let Some((_g, mut c)) = lab("quorum_fencing", 3) else { return };
    // The VRRP LAN: a second bridge, eth1 in every host.
    let br2 = tests::Netns::new("br2");
    br2.sh("ip link add br1 type bridge && ip link set br1 up");
    for (i, h) in c.lan.hosts.iter().enumerate() {
        tests::sh(&format!("ip link add q{} netns {} type veth peer name eth1 netns {}", i + 1, br2.name, h.name));
        br2.sh(&format!("ip link set q{} master br1 && ip link set q{} up", i + 1, i + 1));
        h.sh(&format!("ip addr add 203.0.113.{}/24 dev eth1 && ip link set eth1 up", i + 1));
    }
    c.cluster_extra = "dead_grace = \"30s\"\nfence_priority_drop = 50\n".into();
    c.extra_sections = "[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth1\"\nvrid = 7\npriority = 2{i}0\nadvert_interval = \"100ms\"\nvirtual_ips = [\"203.0.113.100/24\"]\ngarp_repeat = 1\n".into();
    c.form(Duration::from_secs(20));
    let vip_on = |c: &LabCluster, i: usize| {
        String::from_utf8_lossy(&c.lan.hosts[i].try_sh("ip -o addr show dev eth1").stdout).contains(" 203.0.113.100/")
    };
    assert!(wait_for(Duration::from_secs(10), || vip_on(&c, 2) && !vip_on(&c, 1)).is_some(), "d3 (priority 230) should hold the VIP");
    c.lan.hosts[2].sh("ip link set eth0 down");
    let t = Instant::now();
    let moved = wait_for(Duration::from_secs(20), || vip_on(&c, 1) && !vip_on(&c, 2));
    assert!(moved.is_some(), "the VIP stayed on the node cut off from the cluster:\n{}", c.log_tail(2));
    eprintln!("d3 lost the cluster network; VIP moved to d2 after {:?}", t.elapsed());
    c.lan.hosts[2].sh("ip link set eth0 up");
    let back = wait_for(Duration::from_secs(30), || vip_on(&c, 2) && !vip_on(&c, 1));
    assert!(back.is_some(), "the VIP did not return to d3 after healing:\n{}", c.log_tail(2));
    drop(br2);
}

/// `[node] realtime_priority`: the latency-bound threads (main runtime, Raft log writer,
/// director) run SCHED_RR at that priority; what they create (the blocking pool) does not.
#[test]
fn realtime_priority_puts_the_latency_bound_threads_on_sched_rr() {
    let Some((_g, c)) = lab("realtime", 1) else { return };
    let mut c = c;
    c.node_extra = "realtime_priority = 12\n".into();
    c.extra_sections = "[director]\nipvs = \"memory\"\n".into();
    c.form(Duration::from_secs(20));
    // A write makes the node use its log writer and its blocking pool (the deferred
    // state-machine write).
    assert_eq!(c.ctl(0, "kv put rt 1").code, 0, "{}", c.log_tail(0));
    std::thread::sleep(Duration::from_millis(300));
    let pid = c.nodes[0].daemon.as_ref().expect("running").child.id();
    // (name, policy, rt priority) of every thread, from /proc/PID/task/TID/stat (fields 41, 40).
    let mut threads = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap();
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap().trim().to_string();
        let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        // After the name: field 3 is f[0], so field N is f[N - 3].
        let (prio, policy): (u32, u32) = (f[40 - 3].parse().unwrap(), f[41 - 3].parse().unwrap());
        threads.push((name, policy, prio));
    }
    eprintln!("threads (name, policy, rt priority): {threads:?}");
    const SCHED_RR: u32 = 2;
    for want in ["corrald", "raft-log", "director"] {
        let t = threads.iter().find(|t| t.0 == want).unwrap_or_else(|| panic!("no {want} thread in {threads:?}"));
        assert_eq!((t.1, t.2), (SCHED_RR, 12), "{want} is not SCHED_RR at 12: {threads:?}");
    }
    let others: Vec<_> = threads.iter().filter(|t| !["corrald", "raft-log", "director", "vrrp"].contains(&t.0.as_str())).collect();
    assert!(others.iter().all(|t| t.1 == 0), "threads the node created inherited SCHED_RR: {others:?}");
    let _ = &mut c;
}

/// `corralctl status` asks every member for its report at that moment: right after a change,
/// every node shows the new applied revision (gossip spaces its copies 5 s apart, so only the
/// live answers can show it). A member that cannot answer shows its last gossiped copy, marked.
#[test]
fn status_shows_every_members_live_report_and_marks_a_gossiped_copy() {
    let Some((_g, mut c)) = lab("status_live", 3) else { return };
    c.cluster_extra = "dead_grace = \"60s\"\n".into();
    c.extra_sections = "[director]\nipvs = \"memory\"\nreconcile_interval = \"5s\"\n".into();
    c.form(Duration::from_secs(20));
    let status = |c: &LabCluster| -> Option<serde_json::Value> { serde_json::from_str(&c.ctl(0, "status -o json").stdout).ok() };
    let applied = |n: &serde_json::Value| n["report"]["director"]["applied_revision"].as_u64();
    // Let every node gossip its first report, then change the rules.
    std::thread::sleep(Duration::from_secs(1));
    let file = c.root().join("rules.toml");
    std::fs::write(&file, "[[virtual_server]]\naddress = \"192.0.2.100:80\"\n[[virtual_server.real_server]]\naddress = \"198.51.100.11:80\"\n").unwrap();
    let o = c.ctl(0, &format!("apply -f {}", file.display()));
    assert_eq!(o.code, 0, "apply: {}", o.stderr);
    let all_live_at_new_revision = wait_for(Duration::from_secs(2), || {
        let Some(st) = status(&c) else { return false };
        let (rev, nodes) = (st["revision"].as_u64(), st["nodes"].as_array().cloned().unwrap_or_default());
        nodes.len() == 3 && nodes.iter().all(|n| n["report_live"] == true && applied(n) == rev)
    });
    assert!(all_live_at_new_revision.is_some(), "status did not show every node live at the new revision: {:?}", status(&c));
    // d3 loses the network: gossip still calls it alive for a while, it cannot answer, and
    // status shows its gossiped copy, marked as such.
    c.lan.hosts[2].sh("ip link set eth0 down");
    let st = status(&c).expect("status from d1");
    let d3 = st["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "d3").cloned().expect("d3 listed");
    assert_eq!(d3["report_live"], false, "{d3}");
    assert!(d3["report"]["director"].is_object(), "no gossiped copy for d3: {d3}");
    let text = c.ctl(0, "status");
    assert!(text.stdout.contains("did not answer"), "{}", text.stdout);
    c.lan.hosts[2].sh("ip link set eth0 up");
}

/// Unmounts (lazily: a daemon may still hold it) a tmpfs the test mounted and removes its mount
/// point, even when the test fails.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A full data_dir (the Raft log cannot grow) stops Raft on that node only: the node says so
/// once in its log and in `raft status`, `corralctl status` and systemd's STATUS, quorum
/// fencing lowers its VRRP priority (it follows no rule change), the other two keep
/// committing, and after the space is freed a restart brings it back up to date.
#[test]
fn a_full_data_dir_stops_raft_on_that_node_only_and_says_so() {
    let Some((_g, mut c)) = lab("a_full_data_dir_stops_raft_on_that_node_only_and_says_so", 3) else { return };
    let data = std::env::temp_dir().join(format!("corral-{}-diskfull-d3", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    tests::sh(&format!("mount -t tmpfs -o size=3m corral-test {}", data.display()));
    let _mounted = Tmpfs(data.clone());
    // d3's data_dir is the small tmpfs (a symlink where the lab puts it).
    std::os::unix::fs::symlink(&data, c.nodes[2].dir.join("data")).unwrap();
    c.cluster_extra = "dead_grace = \"30s\"\nfence_priority_drop = 50\n".into();
    c.extra_sections = "[[vrrp]]\nname = \"VI_{i}\"\ninterface = \"eth0\"\nvrid = 1{i}\npriority = 150\nadvert_interval = \"1s\"\nvirtual_ips = [\"192.0.2.20{i}/24\"]\ngarp_repeat = 1\n".into();
    c.form(Duration::from_secs(30));
    c.wait_settled(Duration::from_secs(60));
    let vrrp3 = |c: &LabCluster| -> Option<serde_json::Value> {
        let o = c.ctl(2, "vrrp status -o json");
        serde_json::from_str::<serde_json::Value>(&o.stdout).ok()?.as_array()?.first().cloned()
    };
    assert!(wait_for(Duration::from_secs(10), || vrrp3(&c).is_some_and(|v| v["state"] == "MASTER" && v["effective_priority"] == 150)).is_some());

    tests::sh(&format!("dd if=/dev/zero of={}/fill bs=64k 2>/dev/null || true", data.display()));
    let big = "x".repeat(2000);
    let mut k = 0;
    let stopped = wait_for(Duration::from_secs(20), || {
        k += 1;
        assert_eq!(c.ctl(0, &format!("kv put k{k} {big}")).code, 0, "d1 and d2 keep committing: {}", c.log_tail(0));
        c.raft(2).is_some_and(|r| r["stopped"].is_string())
    });
    assert!(stopped.is_some(), "Raft on d3 did not stop: {:?}\n{}", c.raft(2), c.log_tail(2));
    let why = c.raft(2).unwrap()["stopped"].as_str().unwrap().to_string();
    assert!(why.contains("No space left on device"), "{why}");
    let shown = c.ctl(2, "raft status");
    assert!(shown.stdout.contains("STOPPED:"), "{}", shown.stdout);
    // The cluster view names it on d3's row, asked from another node.
    let status = c.ctl(0, "status");
    let row = status.stdout.lines().find(|l| l.starts_with("d3 ")).unwrap_or_default().to_string();
    assert!(row.contains("Raft stopped") && row.contains("No space left"), "{}", status.stdout);
    // Fenced: a node that follows no rule change should not keep the VIP against a peer that does.
    assert!(
        wait_for(Duration::from_secs(5), || vrrp3(&c).is_some_and(|v| v["effective_priority"] == 100)).is_some(),
        "quorum fencing lowers the priority: {:?}",
        vrrp3(&c)
    );
    assert!(c.nodes[2].daemon.as_mut().unwrap().child.try_wait().unwrap().is_none(), "d3's process lives on");
    // The others keep committing; d3's log says it once, without openraft's per-message repeats.
    for j in 0..20 {
        assert_eq!(c.ctl(1, &format!("kv put after{j} 1")).code, 0);
    }
    std::thread::sleep(Duration::from_secs(1));
    let log = std::fs::read_to_string(c.nodes[2].log()).unwrap();
    assert_eq!(log.matches("this node no longer follows rule changes").count(), 1, "{log}");
    assert_eq!(log.matches("raft_inner").count(), 0, "openraft's repeats are not shown: {log}");

    // Space back, restart: d3 catches up and serves again.
    std::fs::remove_file(data.join("fill")).unwrap();
    c.kill(2);
    c.start(2);
    assert!(c.wait_up(2, Duration::from_secs(20)), "{}", c.log_tail(2));
    let caught_up = wait_for(Duration::from_secs(20), || c.kv(2).is_some_and(|kv| kv.contains_key("after19")));
    assert!(caught_up.is_some(), "d3 caught up after the restart: {:?}\n{}", c.raft(2), c.log_tail(2));
    assert!(c.raft(2).is_some_and(|r| r.get("stopped").is_none()));
    assert!(wait_for(Duration::from_secs(5), || vrrp3(&c).is_some_and(|v| v["effective_priority"] == 150)).is_some(), "unfenced");
}

/// Disaster recovery: two of three voters are gone for good, so nothing commits. With d1
/// stopped, `corrald --force-new-cluster` makes it the only voter; started normally it leads,
/// keeps what it had and commits again, and a replacement joins with an empty data_dir.
#[test]
fn force_new_cluster_recovers_a_survivor_of_a_lost_majority() {
    let Some((_g, mut c)) = lab("force_new_cluster", 3) else { return };
    c.form(Duration::from_secs(30));
    c.wait_settled(Duration::from_secs(60));
    assert_eq!(c.ctl(0, "kv put before 1").code, 0, "{}", c.log_tail(0));
    c.kill(1);
    c.kill(2);
    let o = c.ctl(0, "kv put stuck 1");
    assert_ne!(o.code, 0, "a lone voter of three commits nothing: {}", o.stdout);

    // Refused while corrald runs (the store is locked), then done with it stopped.
    let force = |c: &LabCluster| {
        let out = c.lan.hosts[0].cmd(c.corrald.to_str().unwrap()).arg("--config").arg(c.nodes[0].dir.join("corrald.toml")).arg("--force-new-cluster").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, _, err) = force(&c);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("still running"), "{err}");
    c.kill(0);
    let (code, out, err) = force(&c);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("d1 is now the only voter") && out.contains("d2") && out.contains("d3"), "{out}");

    c.start(0);
    assert!(c.wait_up(0, Duration::from_secs(20)), "{}", c.log_tail(0));
    let leads = wait_for(Duration::from_secs(15), || {
        c.raft(0).is_some_and(|r| r["role"] == "leader" && r["voters"].as_array().is_some_and(|v| v.len() == 1))
    });
    assert!(leads.is_some(), "d1 leads alone: {:?}\n{}", c.raft(0), c.log_tail(0));
    assert_eq!(c.ctl(0, "kv put after 1").code, 0, "{}", c.log_tail(0));
    let kv = c.kv(0).unwrap();
    // "stuck" was in d1's log, uncommitted (its write timed out, outcome unknown): the new
    // configuration commits it, as any new leader commits what its log holds.
    assert!(kv.contains_key("before") && kv.contains_key("after") && kv.contains_key("stuck"), "{kv:?}");

    // A replacement for d3: empty data_dir, a token from d1.
    std::fs::remove_dir_all(c.nodes[2].dir.join("data")).unwrap();
    let token = c.wait_token(0);
    c.configure(2, &[0], Some(&token));
    c.start(2);
    let joined = wait_for(Duration::from_secs(30), || {
        c.raft(0).is_some_and(|r| r["voters"].as_array().is_some_and(|v| v.len() == 2)) && c.kv(2).is_some_and(|kv| kv.contains_key("after"))
    });
    assert!(joined.is_some(), "d3 rejoined as a voter with the state: {:?}\n{}", c.raft(0), c.log_tail(2));
    assert_eq!(c.ctl(2, "kv put two-voters 1").code, 0);
}

/// A member that comes back at another address (a re-addressed machine): gossip finds it there
/// and the leader gives Raft the new address, so it hears about changes again.
#[test]
fn a_member_back_at_another_address_is_followed_by_raft() {
    let Some((_g, mut c)) = lab("moved_member", 3) else { return };
    c.form(Duration::from_secs(30));
    c.wait_settled(Duration::from_secs(60));
    c.kill(2);
    c.lan.hosts[2].sh("ip addr del 192.0.2.3/24 dev eth0 && ip addr add 192.0.2.13/24 dev eth0");
    let cfg = c.nodes[2].dir.join("corrald.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("\"192.0.2.3:7946\""), "{text}");
    std::fs::write(&cfg, text.replace("\"192.0.2.3:7946\"", "\"192.0.2.13:7946\"")).unwrap();
    c.start(2);
    assert!(c.wait_up(2, Duration::from_secs(20)), "{}", c.log_tail(2));
    assert_eq!(c.ctl(0, "kv put after-move 1").code, 0);
    let heard = wait_for(Duration::from_secs(20), || c.kv(2).is_some_and(|kv| kv.contains_key("after-move")));
    assert!(heard.is_some(), "d3 hears from the leader at its new address: {:?}\n{}", c.raft(0), c.log_tail(0));
    let leader = c.leader().unwrap();
    let log = std::fs::read_to_string(c.nodes[leader].log()).unwrap();
    assert!(log.contains("member moved: updating its Raft address"), "{}", c.log_tail(leader));
}

/// `[node] metrics_listen`: every node serves `/metrics` over HTTP, which the Prometheus client's
/// own parser reads: VRRP per instance (state, priorities, counters), Raft (leader, voters,
/// followers' lag) and gossip (members by state), the same text `corralctl metrics` prints.
#[test]
fn metrics_are_served_for_prometheus() {
    let test = "metrics_are_served_for_prometheus";
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let parser = std::process::Command::new("/usr/bin/python3").args(["-c", "import prometheus_client.openmetrics.parser"]).output();
    if parser.map(|o| !o.status.success()).unwrap_or(true) {
        assert!(!ci, "{test}: python3-prometheus-client is missing and CI=true forbids skipping");
        eprintln!("SKIP: {test}: python3-prometheus-client is not installed");
        return;
    }
    let Some((_g, mut c)) = lab(test, 3) else { return };
    c.node_extra = "metrics_listen = \"0.0.0.0:9650\"\n".into();
    c.extra_sections = "[[vrrp]]\nname = \"VI_{i}\"\ninterface = \"eth0\"\nvrid = 1{i}\npriority = 15{i}\nadvert_interval = \"1s\"\nvirtual_ips = [\"192.0.2.20{i}/24\"]\ngarp_repeat = 1\n".into();
    c.form(Duration::from_secs(30));
    c.wait_settled(Duration::from_secs(60));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/scrape_metrics.py");
    let scrape = |i: usize| -> serde_json::Value {
        let out = c.lan.hosts[i].cmd("/usr/bin/python3").arg(&script).arg(format!("http://192.0.2.{}:9650", i + 1)).output().unwrap();
        assert!(out.status.success(), "scrape d{}: {}", i + 1, String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let value = |m: &serde_json::Value, name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        m["samples"].as_array()?.iter().find_map(|s| {
            (s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v)).then(|| s[2].as_f64()).flatten()
        })
    };
    let leader = c.leader().unwrap();
    // Each VRRP instance is alone on its VRID: master once its Master_Down timer ran.
    assert!(wait_for(Duration::from_secs(10), || (0..3).all(|i| value(&scrape(i), "corral_vrrp_state", &[("state", "MASTER")]) == Some(1.0))).is_some());
    for i in 0..3 {
        let m = scrape(i);
        assert!(m["content_type"].as_str().unwrap().starts_with("application/openmetrics-text; version=1.0.0"), "{}", m["content_type"]);
        assert_eq!(m["other_path_404"], true);
        let inst = format!("VI_{}", i + 1);
        let vrid = format!("1{}", i + 1);
        let l = [("instance", inst.as_str()), ("interface", "eth0"), ("vrid", vrid.as_str())];
        assert_eq!(value(&m, "corral_vrrp_state", &[l[0], ("state", "BACKUP")]), Some(0.0));
        assert_eq!(value(&m, "corral_vrrp_priority", &l), Some(150.0 + (i + 1) as f64));
        assert!(value(&m, "corral_vrrp_adverts_sent_total", &l).is_some_and(|v| v >= 1.0), "{m}");
        assert_eq!(value(&m, "corral_vrrp_became_master_total", &l), Some(1.0));
        assert_eq!(value(&m, "corral_raft_leader", &[]), Some(if i == leader { 1.0 } else { 0.0 }), "d{}", i + 1);
        assert_eq!(value(&m, "corral_raft_voters", &[]), Some(3.0));
        assert_eq!(value(&m, "corral_raft_stopped", &[]), Some(0.0));
        assert_eq!(value(&m, "corral_gossip_members", &[("state", "alive")]), Some(3.0));
        if i == leader {
            assert_eq!(m["samples"].as_array().unwrap().iter().filter(|s| s[0] == "corral_raft_follower_lag").count(), 2, "{m}");
        }
    }
    // The same text through the admin socket.
    let text = c.ctl(0, "metrics").stdout;
    assert!(text.contains("corral_vrrp_state{instance=\"VI_1\",interface=\"eth0\",vrid=\"11\",state=\"MASTER\"} 1"), "{text}");
}

/// In Raft a member's certificate speaks only for that member: a heartbeat sent over a
/// follower's connection that claims to come from the leader, in the leader's term (openraft
/// would take it, and could be fed entries the same way), is refused by the member it reaches,
/// logged and counted; one that speaks for its own sender goes to openraft, whose rules answer
/// it. The cluster goes on with the same leader and term.
#[test]
fn raft_requests_speak_only_for_their_certificates_node() {
    let test = "raft_requests_speak_only_for_their_certificates_node";
    let Some((_g, mut c)) = lab(test, 3) else { return };
    let Some(forge) = tests::workspace_bin("corral-forge-raft", "CORRAL_FORGE_RAFT") else {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{test}: corral-forge-raft not built (cargo build --workspace --bins)");
        eprintln!("SKIP: {test}: corral-forge-raft not built (cargo build --workspace --bins)");
        return;
    };
    c.form(Duration::from_secs(30));
    c.wait_settled(Duration::from_secs(60));
    let leader = c.leader().expect("a leader");
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (forger, target) = (others[0], others[1]);
    let term = c.raft(leader).unwrap()["term"].as_u64().unwrap();
    let bad = |i: usize| -> u64 {
        let m = c.ctl(i, "metrics").stdout;
        m.lines().find_map(|l| l.strip_prefix("corral_cluster_bad_messages_total ")).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("{m}"))
    };
    let send = |claim: &str| -> String {
        let out = c.lan.hosts[forger]
            .cmd(forge.to_str().unwrap())
            .arg(c.nodes[forger].dir.join("data"))
            .arg(c.nodes[target].addr())
            .arg(claim)
            .arg(term.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = bad(target);
    let forged = send(&c.nodes[leader].name);
    assert!(forged.starts_with("refused:") && forged.contains("speaks for node id"), "{forged}");
    let own = send(&c.nodes[forger].name);
    assert!(own.starts_with("accepted:"), "a request for its own sender reaches openraft: {own}");
    assert_eq!(bad(target), before + 1, "the forged one is counted");
    assert!(std::fs::read_to_string(c.nodes[target].log()).unwrap().contains("bad raft message refused"));
    let r = c.raft(target).unwrap();
    assert_eq!((r["leader"].as_str(), r["term"].as_u64()), (Some(c.nodes[leader].name.as_str()), Some(term)), "{r}");
}

/// A second process under a live member's name (a copied configuration) is refused at its
/// join, naming the member, and the cluster stays as it was: otherwise two processes would be
/// one Raft node.
#[test]
fn a_join_under_a_live_members_name_is_refused() {
    let Some((_g, mut c)) = lab_hosts("a_join_under_a_live_members_name_is_refused", 3, 4) else { return };
    c.form(Duration::from_secs(30));
    c.wait_settled(Duration::from_secs(60));
    let token = c.wait_token(0);
    let dir = c.root().join("imposter");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("corrald.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"d2\"\nbind = \"192.0.2.4:7946\"\ndata_dir = \"{}\"\nadmin_socket = \"{}\"\n\n[cluster]\njoin = [\"192.0.2.1:7946\"]\ntoken = \"{token}\"\n",
            dir.join("data").display(),
            dir.join("admin.sock").display()
        ),
    )
    .unwrap();
    let log = dir.join("corrald.log");
    let mut cmd = c.lan.hosts[3].cmd(c.corrald.to_str().unwrap());
    cmd.arg("--config").arg(&cfg).stdout(std::process::Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let mut imposter = tests::Daemon::spawn(cmd, "imposter");
    let status = imposter.wait_exit(Duration::from_secs(20));
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.is_some_and(|s| !s.success()), "the imposter must not start: {status:?} {err}");
    assert!(err.contains("a member named d2 is alive at 192.0.2.2:7946"), "{err}");
    assert!(!dir.join("data/node.pem").exists(), "no certificate was issued");
    let r = c.raft(0).unwrap();
    assert_eq!(r["voters"].as_array().map(Vec::len), Some(3), "{r}");
    assert_eq!(c.ctl(1, "kv put still-d2 1").code, 0, "the real d2 is unaffected");
}

/// A director frozen for 8 s (SIGSTOP: a stalled VM, a stuck disk) while it is VRRP master:
/// the next director takes the VIP within a second, the cluster keeps committing, and when
/// the frozen one resumes it takes the VIP back (higher priority), catches up, and says
/// nothing alarming about the connections that gave up on it meanwhile.
#[test]
fn a_frozen_master_gives_way_and_resumes_cleanly() {
    let Some((_g, mut c)) = lab("frozen_master", 3) else { return };
    c.extra_sections = "[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 7\npriority = 1{i}0\nadvert_interval = \"100ms\"\nvirtual_ips = [\"192.0.2.100/24\"]\ngarp_repeat = 1\n".into();
    c.form(Duration::from_secs(30));
    c.wait_settled(Duration::from_secs(60));
    let vip_on = |c: &LabCluster, i: usize| String::from_utf8_lossy(&c.lan.hosts[i].try_sh("ip -o addr show dev eth0").stdout).contains(" 192.0.2.100/");
    assert!(wait_for(Duration::from_secs(5), || vip_on(&c, 2) && !vip_on(&c, 1)).is_some(), "d3 (priority 130) is master");
    let pid = c.nodes[2].daemon.as_ref().unwrap().child.id();
    tests::sh(&format!("kill -STOP {pid}"));
    let log_before = std::fs::read_to_string(c.nodes[2].log()).unwrap().len();
    assert!(wait_for(Duration::from_secs(1), || vip_on(&c, 1)).is_some(), "d2 takes the VIP within a second");
    std::thread::sleep(Duration::from_secs(8));
    let writer = if c.leader() == Some(2) { 0 } else { c.leader().unwrap_or(0) };
    assert_eq!(c.ctl(writer, "kv put while-frozen 1").code, 0, "the other two commit");
    tests::sh(&format!("kill -CONT {pid}"));
    assert!(wait_for(Duration::from_secs(3), || vip_on(&c, 2) && !vip_on(&c, 1)).is_some(), "d3 takes the VIP back");
    assert!(wait_for(Duration::from_secs(10), || c.kv(2).is_some_and(|kv| kv.contains_key("while-frozen"))).is_some(), "d3 caught up");
    assert!(c.leader().is_some(), "one leader all agree on");
    assert_eq!(c.ctl(0, "kv put after-freeze 1").code, 0);
    let log = std::fs::read_to_string(c.nodes[2].log()).unwrap();
    let after: Vec<&str> = log[log_before..].lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(!after.iter().any(|l| l.contains("TLS handshake")), "connections that gave up during the freeze are not warnings: {after:#?}");
}

/// `count` virtual servers with four real servers each, weight `weight`, as services.toml;
/// `pad` bytes of `notify_down` per real server make the table larger without more objects.
fn many_services(count: usize, weight: u32, pad: usize) -> String {
    let mut s = String::new();
    let notify = if pad > 0 { format!("notify_down = \"logger {}\"\n", "x".repeat(pad)) } else { String::new() };
    for v in 0..count {
        s.push_str(&format!("[[virtual_server]]\naddress = \"10.{}.{}.{}:80\"\nscheduler = \"wrr\"\n", 1 + v / 65536, (v / 256) % 256, v % 256));
        for r in 0..4 {
            s.push_str(&format!("[[virtual_server.real_server]]\naddress = \"172.16.{}.{}:80\"\nweight = {weight}\n{notify}", v % 250, 1 + r));
        }
    }
    s
}

/// A large table (5,000 virtual servers, 20,000 real servers: a 1.7 MB rules file, megabytes
/// per Raft entry) replicates, and a director that was down through three such changes
/// catches up. Before, an AppendEntries timed out after one heartbeat interval whatever it
/// carried, so the follower's append of a large entry was retried forever. A change too large
/// for one entry is refused before it reaches the log, naming the sizes.
#[test]
fn large_rule_sets_replicate_and_a_restarted_director_catches_up() {
    let Some((_g, mut c)) = lab("large_rules", 3) else { return };
    c.extra_sections = "[director]\nipvs = \"memory\"\n".into();
    c.form(Duration::from_secs(30));
    c.wait_settled(Duration::from_secs(60));
    let f = c.root().join("big.toml");
    std::fs::write(&f, many_services(5000, 1, 0)).unwrap();
    let o = c.ctl(0, &format!("apply -f {}", f.display()));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let leader = c.leader().unwrap();
    let down = (leader + 1) % 3;
    c.kill(down);
    for w in 2..5 {
        std::fs::write(&f, many_services(5000, w, 0)).unwrap();
        let o = c.ctl(leader, &format!("apply -f {}", f.display()));
        assert_eq!(o.code, 0, "apply with weight {w}: {}", o.stderr);
    }
    c.start(down);
    let caught = wait_for(Duration::from_secs(30), || {
        let (Some(l), Some(f)) = (c.raft(leader), c.raft(down)) else { return false };
        l["role"] == "leader" && f["applied_index"] == l["last_log_index"]
    });
    assert!(caught.is_some(), "the restarted director catches up: {:?} {:?}\n{}", c.raft(leader), c.raft(down), c.log_tail(leader));
    let all_applied = || -> (bool, serde_json::Value) {
        let v: serde_json::Value = serde_json::from_str(&c.ctl(leader, "status -o json").stdout).unwrap_or_default();
        let ok = v["nodes"].as_array().is_some_and(|ns| ns.len() == 3 && ns.iter().all(|n| n["report"]["director"]["applied_revision"] == v["revision"]));
        (ok, v)
    };
    assert!(wait_for(Duration::from_secs(10), || all_applied().0).is_some(), "every director applied the last table: {}", all_applied().1);
    let revision = all_applied().1["revision"].clone();

    // Over the entry bound (8 MiB): refused, nothing changed.
    std::fs::write(&f, many_services(5000, 9, 500)).unwrap();
    let o = c.ctl(leader, &format!("apply -f {}", f.display()));
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("over the 8192 KiB an entry may be"), "{}", o.stderr);
    let after: serde_json::Value = serde_json::from_str(&c.ctl(leader, "status -o json").stdout).unwrap();
    assert_eq!(after["revision"], revision, "nothing was committed");
}
