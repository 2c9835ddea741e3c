//! The `ipvs` crate and `corralctl ipvs` against the real kernel (run in the VM lab).
//!
//! Every test starts from a flushed table, and reads results back two ways: through our
//! decoder and through `ipvsadm -Sn`, so neither side can hide a bug of the other.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipvs::client::Client;
use tests::{must_sh as must, run_sh};
use ipvs::{text, Dest, Op, Protocol, Service, ServiceKey, SyncDaemon, SyncRole, Table, Timeouts};

const RULES: &str = include_str!("../../ipvs/testdata/ipvsadm-sn.rules");

fn corralctl() -> String {
    std::env::var("CORRALCTL").unwrap_or_else(|_| "corralctl".into())
}

fn fresh() -> Client {
    let mut c = Client::new().expect("IPVS netlink family");
    c.flush().unwrap();
    c
}

fn tcp(vip: &str) -> ServiceKey {
    ServiceKey::Addr { protocol: Protocol::Tcp, addr: vip.parse().unwrap() }
}

fn rs(host: u8) -> Dest {
    Dest::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, host)), 80)
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn every_attribute_round_trips_through_the_kernel() {
    let mut c = fresh();
    let want = text::parse(RULES).unwrap().table;
    let ops = ipvs::diff(&Table::default(), &want);
    c.apply(&ops).unwrap();
    assert_eq!(c.table().unwrap(), want, "read back through our decoder");
    assert_eq!(must("ipvsadm -Sn", ""), RULES, "read back through ipvsadm");
    assert_eq!(text::save(&c.table().unwrap()), RULES);
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn rules_written_by_ipvsadm_decode_to_the_same_table() {
    let mut c = fresh();
    must("ipvsadm -R", RULES);
    assert_eq!(c.table().unwrap(), text::parse(RULES).unwrap().table);
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn corralctl_restore_and_save_match_ipvsadm() {
    fresh();
    let out = run_sh(&format!("{} ipvs restore", corralctl()), RULES);
    let (ok, err) = (out.code == 0, out.stderr);
    assert!(ok, "{err}");
    assert_eq!(must("ipvsadm -Sn", ""), RULES);
    assert_eq!(must(&format!("{} ipvs save", corralctl()), ""), RULES);
    // Restoring the same file again changes nothing and sends nothing.
    let out = run_sh(&format!("{} ipvs restore", corralctl()), RULES);
    let (ok, err) = (out.code == 0, out.stderr);
    assert!(ok && err.contains("applied 0 operation(s) in 0 netlink request(s)"), "{err}");
    // The -Ln layouts are ipvsadm's.
    assert_eq!(must(&format!("{} ipvs list", corralctl()), ""), must("ipvsadm -Ln", ""));
    assert_eq!(must(&format!("{} ipvs list --stats", corralctl()), ""), must("ipvsadm -Ln --stats", ""));
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn a_restore_with_one_bad_line_changes_nothing() {
    fresh();
    must("ipvsadm -R", RULES);
    let bad = format!("{RULES}-A -t 192.0.2.99:80 -s rr\n-a -t 192.0.2.99:80 -r 198.51.100.1:80 --bogus\n");
    let out = run_sh(&format!("{} ipvs restore --flush", corralctl()), &bad);
    let (ok, err) = (out.code == 0, out.stderr);
    assert!(!ok, "a bad file must be rejected");
    assert!(err.contains("line 20") && err.contains("--bogus"), "error names line and problem: {err}");
    assert_eq!(must("ipvsadm -Sn", ""), RULES, "nothing was applied");
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn one_destination_change_is_one_request() {
    fresh();
    must(&format!("{} ipvs restore", corralctl()), RULES);
    let changed = RULES.replace("-r 198.51.100.1:80 -m -w 3", "-r 198.51.100.1:80 -m -w 4");
    let out = run_sh(&format!("{} ipvs restore", corralctl()), &changed);
    let (ok, err) = (out.code == 0, out.stderr);
    assert!(ok, "{err}");
    assert!(err.contains("applied 1 operation(s) in 1 netlink request(s), 1 sendmsg call(s)"), "{err}");
    assert_eq!(must("ipvsadm -Sn", ""), changed);
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn scheduler_weight_and_flags_are_edited_in_place() {
    let mut c = fresh();
    let mut s = Service::new(tcp("192.0.2.1:80"), "wlc");
    for h in 1..=3 {
        let d = rs(h);
        s.dests.insert(d.key, d);
    }
    let mut a = Table::default();
    a.insert(s);
    c.apply(&ipvs::diff(&Table::default(), &a)).unwrap();
    let mut b = a.clone();
    let svc = b.services.values_mut().next().unwrap();
    svc.scheduler = "mh".into();
    svc.sched_flags.flag2 = true;
    svc.persistence = Some(ipvs::Persistence { timeout: 120, netmask: 0xffff_ff00 });
    svc.dests.values_mut().next().unwrap().weight = 9;
    let ops = ipvs::diff(&c.table().unwrap(), &b);
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(ops.iter().all(|o| matches!(o, Op::EditService(_) | Op::EditDest(..))), "{ops:?}");
    let report = c.apply(&ops).unwrap();
    assert_eq!(report.requests, 2);
    assert_eq!(c.table().unwrap(), b);
    assert_eq!(
        must("ipvsadm -Sn", ""),
        "-A -t 192.0.2.1:80 -s mh -p 120 -M 255.255.255.0 -b mh-port\n\
         -a -t 192.0.2.1:80 -r 198.51.100.1:80 -g -w 9\n\
         -a -t 192.0.2.1:80 -r 198.51.100.2:80 -g -w 1\n\
         -a -t 192.0.2.1:80 -r 198.51.100.3:80 -g -w 1\n"
    );
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn deleting_a_service_removes_its_destinations() {
    let mut c = fresh();
    must("ipvsadm -R", RULES);
    let key = tcp("192.0.2.2:443");
    let report = c.apply(&[Op::DelService(key)]).unwrap();
    assert_eq!(report.requests, 1);
    let t = c.table().unwrap();
    assert!(!t.services.contains_key(&key));
    assert!(!must("ipvsadm -Sn", "").contains("192.0.2.2:443"));
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn kernel_errors_are_clear() {
    let mut c = fresh();
    let e = c.apply(&[Op::AddService(Service::new(tcp("192.0.2.1:80"), "nosuch"))]).unwrap_err();
    assert!(e.to_string().contains("unknown scheduler 'nosuch'"), "{e}");
    assert!(e.to_string().contains("add service TCP 192.0.2.1:80"), "{e}");

    c.apply(&[Op::AddService(Service::new(tcp("192.0.2.1:80"), "rr"))]).unwrap();
    let e = c.apply(&[Op::AddService(Service::new(tcp("192.0.2.1:80"), "rr"))]).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");

    // An IPv6 real server behind an IPv4 service with NAT: the kernel refuses the family mix.
    let mut v6 = Dest::new("2001:db8::1".parse().unwrap(), 80);
    v6.forward = ipvs::Forward::Masq;
    let e = c.apply(&[Op::AddDest(tcp("192.0.2.1:80"), v6)]).unwrap_err();
    assert!(e.to_string().contains("add destination [2001:db8::1]:80"), "{e}");
    assert!(e.errno.is_some(), "{e}");

    // A batch that fails in the middle says exactly which op failed and how many were applied.
    let ops = vec![
        Op::AddDest(tcp("192.0.2.1:80"), rs(1)),
        Op::AddDest(tcp("192.0.2.9:80"), rs(2)),
        Op::AddDest(tcp("192.0.2.1:80"), rs(3)),
    ];
    let e = c.apply(&ops).unwrap_err();
    assert_eq!(e.index, 1, "{e}");
    assert_eq!(e.applied, 1, "{e}");
    assert!(e.to_string().contains("no such service"), "{e}");
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn a_large_batch_goes_out_in_few_sendmsg_calls() {
    let mut c = fresh();
    let mut t = Table::default();
    for i in 0..200u32 {
        let vip = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, (i % 250) as u8)), 1000 + i as u16);
        let mut s = Service::new(ServiceKey::Addr { protocol: Protocol::Tcp, addr: vip }, "wrr");
        for h in 1..=10 {
            let d = rs(h);
            s.dests.insert(d.key, d);
        }
        t.insert(s);
    }
    let ops = ipvs::diff(&Table::default(), &t);
    assert_eq!(ops.len(), 2200);
    let report = c.apply(&ops).unwrap();
    assert_eq!(report.requests, 2200);
    assert!(report.sendmsg_calls <= 10, "{report:?}");
    assert_eq!(c.table().unwrap(), t);
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm test`"]
fn timeouts_zero_info_and_sync_daemon() {
    let mut c = fresh();
    c.set_timeouts(&Timeouts { tcp: 901, tcp_fin: 121, udp: 301 }).unwrap();
    assert_eq!(c.timeouts().unwrap(), Timeouts { tcp: 901, tcp_fin: 121, udp: 301 });
    assert_eq!(must("ipvsadm -L --timeout", ""), "Timeout (tcp tcpfin udp): 901 121 301\n");
    c.set_timeouts(&Timeouts { tcp: 0, tcp_fin: 0, udp: 299 }).unwrap();
    assert_eq!(c.timeouts().unwrap(), Timeouts { tcp: 901, tcp_fin: 121, udp: 299 }, "0 leaves a timeout alone");

    let info = c.info().unwrap();
    assert_eq!(info.version >> 8, 0x0102, "IPVS 1.2.x");
    assert!(info.conn_tab_size > 0);

    must("ipvsadm -R", RULES);
    c.zero(None).unwrap();
    c.zero(Some(&tcp("192.0.2.1:80"))).unwrap();

    let d = SyncDaemon { role: SyncRole::Master, interface: "lo".into(), sync_id: 7, max_len: 0, group: None, port: 0, ttl: 0 };
    c.start_daemon(&d).unwrap();
    let ds = c.daemons().unwrap();
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert_eq!((ds[0].role, ds[0].interface.as_str(), ds[0].sync_id), (SyncRole::Master, "lo", 7));
    assert!(must("ipvsadm -L --daemon", "").contains("master sync daemon (mcast=lo, syncid=7"));
    assert_eq!(must(&format!("{} ipvs daemon status", corralctl()), ""), must("ipvsadm -L --daemon", ""));
    c.stop_daemon(SyncRole::Master).unwrap();
    assert!(c.daemons().unwrap().is_empty());

    // keepalived's lvs_sync_daemon options (corrald's [director] sync_maxlen, sync_group,
    // sync_port, sync_ttl) reach the kernel, and ipvsadm reads them back the same.
    let d = SyncDaemon { role: SyncRole::Backup, interface: "lo".into(), sync_id: 9, max_len: 1400, group: Some("239.1.2.3".parse().unwrap()), port: 8849, ttl: 3 };
    c.start_daemon(&d).unwrap();
    assert_eq!(c.daemons().unwrap(), vec![d.clone()]);
    assert_eq!(must("ipvsadm -L --daemon", ""), "backup sync daemon (mcast=lo, syncid=9, maxlen=1400, group=239.1.2.3, port=8849, ttl=3)\n");
    c.stop_daemon(SyncRole::Backup).unwrap();
}
