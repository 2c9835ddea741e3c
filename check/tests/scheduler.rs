//! The scheduler against real TCP servers on loopback, in real (short) time.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use check::def::{TcpCheck, Timing};
use check::{CheckDef, FailReason, Options, Scheduler, State};
use common::counting_server;
use tokio::net::TcpListener;

fn every(ms: u64) -> Timing {
    let mut t = Timing::quick(Duration::from_millis(ms));
    t.connect_timeout = Duration::from_millis(500);
    t
}

fn tcp(target: std::net::SocketAddr, t: &Timing) -> CheckDef {
    CheckDef::Tcp(TcpCheck { target, graceful_close: false, timing: t.clone() })
}

#[tokio::test]
async fn two_registrations_of_one_check_make_one_connection_per_interval() {
    let (addr, count) = counting_server().await;
    let (sched, mut rx) = Scheduler::<&str>::with_options(Options { spread: false, ..Options::default() });
    let t = every(200);
    sched.add("vs1/rs1", tcp(addr, &t)).unwrap();
    sched.add("vs2/rs1", tcp(addr, &t)).unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let n = count.load(Ordering::SeqCst);
    // Rounds at 0, 200, 400, 600, 800 ms: 5 connections; twice that without deduplication.
    assert!((4..=6).contains(&n), "{n} connections in 900 ms");
    let st = sched.stats();
    assert_eq!((st.registered, st.running), (2, 1));
    let mut ups = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        ups.push((ev.id, ev.from, ev.to));
    }
    ups.sort_by_key(|u| u.0);
    assert_eq!(ups, vec![("vs1/rs1", State::Unknown, State::Up), ("vs2/rs1", State::Unknown, State::Up)]);
}

#[tokio::test]
async fn remove_at_run_time_leaves_the_others_alone() {
    let (a, count_a) = counting_server().await;
    let (b, count_b) = counting_server().await;
    let (sched, _rx) = Scheduler::<u32>::with_options(Options { spread: false, ..Options::default() });
    let t = every(100);
    sched.add(1, tcp(a, &t)).unwrap();
    sched.add(2, tcp(b, &t)).unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(sched.remove(&1));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (a_then, b_then) = (count_a.load(Ordering::SeqCst), count_b.load(Ordering::SeqCst));
    assert!(a_then >= 3 && b_then >= 3, "{a_then} {b_then}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(count_a.load(Ordering::SeqCst), a_then, "removed check still probing");
    assert!(count_b.load(Ordering::SeqCst) >= b_then + 3, "other check disturbed");
    assert_eq!(sched.ids(), vec![2]);
}

#[tokio::test]
async fn backend_going_away_and_coming_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    let (sched, mut rx) = Scheduler::<&str>::with_options(Options { spread: false, ..Options::default() });
    let mut t = every(100);
    t.fall = 2;
    sched.add("rs", tcp(addr, &t)).unwrap();
    let ev = rx.recv().await.unwrap();
    assert_eq!((ev.from, ev.to), (State::Unknown, State::Up));
    let mut watch = sched.watch(&"rs").unwrap();
    watch.mark_unchanged();

    accept.abort();
    let _ = accept.await; // listener dropped: connects are refused
    let down_at = std::time::Instant::now();
    let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap().unwrap();
    assert_eq!((ev.from, ev.to), (State::Up, State::Down));
    assert_eq!(ev.result.error, Some(FailReason::Refused));
    assert!(down_at.elapsed() >= Duration::from_millis(100), "fall = 2 needs two failed rounds");
    // The watch was woken by the change (rounds that change nothing do not wake it).
    assert!(watch.has_changed().unwrap(), "a state change wakes watchers");
    assert_eq!(watch.borrow_and_update().state, State::Down);

    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap().unwrap();
    assert_eq!((ev.from, ev.to), (State::Down, State::Up));
    assert!(sched.stats().went_down >= 1);
}

#[tokio::test]
async fn sync_applies_a_new_set() {
    let (a, _) = counting_server().await;
    let (b, _) = counting_server().await;
    let (sched, _rx) = Scheduler::<&str>::new();
    let t = every(1000);
    assert!(sched.sync([("x", tcp(a, &t)), ("y", tcp(a, &t))]).is_empty());
    assert_eq!(sched.stats().running, 1);
    let mut bad = CheckDef::tcp(b);
    bad.timing_mut().rise = 0;
    let errors = sched.sync([("y", tcp(b, &t)), ("z", bad)]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "z");
    assert_eq!(sched.ids(), vec!["y"]);
    assert_eq!(sched.stats().running, 1);
}

fn script_check(line: &str, t: &Timing) -> CheckDef {
    CheckDef::Script(check::def::ScriptCheck { command: check::def::Command::Line(line.into()), misc_dynamic: false, misc_timeout: None, timing: t.clone() })
}

/// The node's script policy reaches every script check through the scheduler's options: the
/// user it names runs them, and under script security a script anyone can replace is refused
/// when it would run as root (the check goes down with the reason naming the directory).
#[tokio::test]
async fn script_checks_run_under_the_schedulers_script_policy() {
    use check::script_policy::{RunAs, ScriptPolicy};
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "script policy test needs root under CI");
        eprintln!("SKIP: script_checks_run_under_the_schedulers_script_policy needs root (to switch users)");
        return;
    }
    let t = every(100);
    let nobody = RunAs { user: "nobody".into(), uid: 65534, gid: 65534 };
    let (sched, mut rx) = Scheduler::<&str>::with_options(Options { spread: false, scripts: ScriptPolicy::new(Some(nobody), true) });
    sched.add("as-nobody", script_check("test \"$(id -u):$(id -g):$(id -G)\" = 65534:65534:65534", &t)).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!((ev.id, ev.to), ("as-nobody", State::Up), "{}", ev.result);

    let dir = std::env::temp_dir().join(format!("corral-sched-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = dir.join("ok.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = RunAs { user: "root".into(), uid: 0, gid: 0 };
    let (sched, mut rx) = Scheduler::<&str>::with_options(Options { spread: false, scripts: ScriptPolicy::new(Some(root), true) });
    sched.add("unsafe", script_check(script.to_str().unwrap(), &t)).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!((ev.id, ev.to), ("unsafe", State::Down));
    match ev.result.error {
        Some(FailReason::ScriptRefused(why)) => assert!(why.contains(&format!("{} is writable by everyone", dir.display())), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(sched.stats().failures.iter().any(|(k, n)| k.as_str() == "script_refused" && *n >= 1), "refusal not counted");
}
