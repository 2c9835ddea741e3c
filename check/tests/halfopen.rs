//! The `tcp_half_open` check against real listeners, each test in a network namespace of its own
//! (the test thread `unshare`s one, so the raw sockets see only that test's traffic and nothing
//! is left behind: the namespace goes with the thread). Needs root (CAP_NET_RAW for the raw
//! sockets, CAP_SYS_ADMIN for the namespace): skipped loudly without, a failure under CI=true.

mod common;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use check::def::{TcpHalfOpenCheck, Timing};
use check::{check_once, CheckDef, FailReason, Phase, Scheduler, State};

/// Runs `f` on a thread inside a fresh network namespace with `lo` up, on a current-thread
/// runtime. `false`: not privileged, skipped.
fn in_netns<F: std::future::Future<Output = ()>>(f: impl FnOnce() -> F + Send + 'static) -> bool {
    std::thread::spawn(move || {
        // SAFETY: plain syscall; affects this thread only (CLONE_NEWNET is per task).
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = std::io::Error::last_os_error();
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI=true: cannot create a network namespace: {e}");
            eprintln!("SKIPPED tcp_half_open test (needs root: CAP_SYS_ADMIN + CAP_NET_RAW): {e}");
            return false;
        }
        ip(&["link", "set", "lo", "up"]);
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f());
        true
    })
    .join()
    .unwrap()
}

/// `ip` run from the calling thread, so in its namespace.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn def(target: SocketAddr, connect_timeout: Duration) -> CheckDef {
    let mut t = Timing::quick(Duration::from_secs(1));
    t.connect_timeout = connect_timeout;
    CheckDef::TcpHalfOpen(TcpHalfOpenCheck { target, timing: t })
}

/// Sockets in TCP state `st` (hex, as in /proc/net/tcp: 03 SYN_RECV, 0A LISTEN) in this
/// thread's namespace, IPv4 and IPv6. Request sockets are listed as SYN_RECV.
fn in_state(st: &str) -> usize {
    ["tcp", "tcp6"]
        .iter()
        .map(|f| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default().lines().skip(1).filter(|l| l.split_whitespace().nth(3) == Some(st)).count())
        .sum()
}

#[test]
fn open_port_is_up_and_the_backend_keeps_no_half_open_entry() {
    in_netns(|| async {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let l = TcpListener::bind(bind).unwrap();
            let addr = l.local_addr().unwrap();
            let r = check_once(&def(addr, Duration::from_millis(500))).await.unwrap();
            if let Some(FailReason::Io(m)) = &r.error {
                panic!("{bind}: {m}");
            }
            assert!(r.is_ok(), "{bind}: {r}");
            assert!(r.latency < Duration::from_millis(100), "{bind}: {:?}", r.latency);
            // Our kernel answered the SYN-ACK with a RST: no request socket stays behind.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(in_state("0A"), 1, "{bind}: the listener is seen (the right namespace's table)");
            assert_eq!(in_state("03"), 0, "{bind}: half-open entries left on the backend");
            // And nothing was accepted: the handshake never completed.
            l.set_nonblocking(true).unwrap();
            assert!(l.accept().is_err(), "{bind}: a connection was completed");
        }
    });
}

#[test]
fn closed_port_is_refused() {
    in_netns(|| async {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let addr = TcpListener::bind(bind).unwrap().local_addr().unwrap(); // closed again at once
            let r = check_once(&def(addr, Duration::from_millis(500))).await.unwrap();
            assert_eq!(r.error, Some(FailReason::Refused), "{bind}: {r}");
        }
    });
}

#[test]
fn blackholed_address_times_out_at_the_connect_timeout() {
    in_netns(|| async {
        // SYNs to 203.0.113.77 leave by one end of a veth pair, addressed to a MAC nobody has,
        // and the other end drops them (not for this host): no answer of any kind.
        ip(&["link", "add", "bh0", "type", "veth", "peer", "name", "bh1"]);
        for dev in ["bh0", "bh1"] {
            // No IPv6 autoconfiguration chatter on the counted link.
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1").unwrap();
            ip(&["link", "set", dev, "up"]);
        }
        ip(&["addr", "add", "203.0.113.1/24", "dev", "bh0"]);
        ip(&["neigh", "add", "203.0.113.77", "lladdr", "02:00:00:00:00:01", "dev", "bh0", "nud", "permanent"]);
        // Packets sent on bh0, from this thread's namespace (/sys shows the mounter's).
        let tx = || -> u64 {
            let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
            let line = dev.lines().find(|l| l.trim_start().starts_with("bh0:")).expect("bh0 in net/dev");
            line.split(':').nth(1).and_then(|f| f.split_whitespace().nth(9)).and_then(|v| v.parse().ok()).expect("tx packets")
        };
        // 300 ms: the first SYN only. 1.5 s: the first SYN and the one resent at 1 s.
        for (ms, syns) in [(300u64, 1u64), (1500, 2)] {
            let tx0 = tx();
            let start = Instant::now();
            let r = check_once(&def("203.0.113.77:80".parse().unwrap(), Duration::from_millis(ms))).await.unwrap();
            let took = start.elapsed();
            assert_eq!(r.error, Some(FailReason::Timeout(Phase::Connect)), "{r}");
            assert!(took >= Duration::from_millis(ms) && took < Duration::from_millis(ms + 200), "{ms} ms timeout took {took:?}");
            assert_eq!(tx() - tx0, syns, "SYNs sent within a {ms} ms timeout");
        }
    });
}

#[test]
fn a_scheduler_runs_many_half_open_checks_through_one_prober() {
    in_netns(|| async {
        // 4 listeners × 50 addresses of 127.0.0.0/8 = 200 distinct checks, all due together.
        let ls: Vec<TcpListener> = (0..4).map(|_| TcpListener::bind("0.0.0.0:0").unwrap()).collect();
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (sched, _events) = Scheduler::<usize>::new();
        let mut n = 0;
        for h in 1..=50u8 {
            for l in &ls {
                let target = SocketAddr::new(IpAddr::from([127, 0, 0, h]), l.local_addr().unwrap().port());
                sched.add(n, def(target, Duration::from_millis(500))).unwrap();
                n += 1;
            }
        }
        sched.add(n, def(closed, Duration::from_millis(500))).unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let states: Vec<Option<State>> = (0..=n).map(|i| sched.status(&i).map(|s| s.state)).collect();
            if states[..n].iter().all(|s| *s == Some(State::Up)) && states[n] == Some(State::Down) {
                break;
            }
            assert!(Instant::now() < end, "not all settled: {states:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let st = sched.stats();
        assert_eq!(st.attempts_failed, st.failures_of(check::ReasonKind::Refused), "only the closed port fails");
        assert_eq!(st.half_open_malformed, 0);
    });
}

async fn next_event(events: &mut tokio::sync::mpsc::UnboundedReceiver<check::Event<&'static str>>) -> check::Event<&'static str> {
    tokio::time::timeout(Duration::from_secs(3), events.recv()).await.expect("an event within 3 s").expect("scheduler alive")
}

/// The rounds the prober's driver runs for a scheduler's half-open checks keep the scheduler's
/// semantics: rise/fall over whole rounds, retries after their delay, events on each change,
/// a status that reads every round (not only the changes), counters, and nothing more once
/// the check is removed.
#[test]
fn a_half_open_check_falls_and_rises_with_its_backend() {
    in_netns(|| async {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut t = Timing::quick(Duration::from_millis(100));
        t.connect_timeout = Duration::from_millis(50);
        t.retries = 1;
        t.delay_before_retry = Duration::from_millis(20);
        t.rise = 2;
        t.fall = 2;
        let (sched, mut events) = Scheduler::<&str>::with_options(check::Options { spread: false, ..check::Options::default() });
        sched.add("rs", CheckDef::TcpHalfOpen(TcpHalfOpenCheck { target: addr, timing: t })).unwrap();
        let ev = next_event(&mut events).await;
        assert_eq!((ev.from, ev.to), (State::Unknown, State::Up), "{ev:?}");
        // The status follows every round, also those that change nothing.
        let r0 = sched.status(&"rs").unwrap().rounds;
        tokio::time::sleep(Duration::from_millis(350)).await;
        let st = sched.status(&"rs").unwrap();
        assert!(st.rounds >= r0 + 2, "rounds {r0} -> {}", st.rounds);
        assert!(st.last.as_ref().is_some_and(|r| r.is_ok()), "{st:?}");

        drop(l); // refused from now on
        let down_at = Instant::now();
        let ev = next_event(&mut events).await;
        assert_eq!((ev.from, ev.to), (State::Up, State::Down), "{ev:?}");
        assert_eq!(ev.result.error, Some(FailReason::Refused));
        // fall = 2: two whole failed rounds, each an attempt and a retry 20 ms later.
        assert!(down_at.elapsed() >= Duration::from_millis(100), "down after {:?}", down_at.elapsed());
        let st = sched.stats();
        assert!(st.failures_of(check::ReasonKind::Refused) >= 4, "attempt + retry in each of two rounds: {st:?}");
        assert!(st.rounds_failed >= 2 && st.attempts >= st.rounds, "{st:?}");

        let l = TcpListener::bind(addr).unwrap();
        let ev = next_event(&mut events).await;
        assert_eq!((ev.from, ev.to), (State::Down, State::Up), "{ev:?}");
        assert_eq!(sched.status(&"rs").unwrap().state, State::Up);

        assert!(sched.remove(&"rs"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let attempts = sched.stats().attempts;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sched.stats().attempts, attempts, "a removed check makes no attempts");
        assert!(events.try_recv().is_err(), "and sends no events");
        drop(l);
    });
}

/// Drops CAP_NET_RAW from this thread's effective set (capabilities are per thread).
fn drop_net_raw() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_RAW: u32 = 13;
    let mut h = Header { version: VERSION_3, pid: 0 };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as the ABI requires.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()), 0, "capget");
        d[0].effective &= !(1 << CAP_NET_RAW);
        assert_eq!(libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()), 0, "capset");
    }
}

#[test]
fn without_cap_net_raw_the_failure_names_it() {
    in_netns(|| async {
        drop_net_raw();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let r = check_once(&def(l.local_addr().unwrap(), Duration::from_millis(300))).await.unwrap();
        match &r.error {
            Some(FailReason::Io(m)) => assert!(m.contains("CAP_NET_RAW"), "{m}"),
            other => panic!("expected an I/O failure naming CAP_NET_RAW, got {other:?}"),
        }
    });
}

#[test]
fn an_unroutable_target_is_unreachable_and_does_not_hold_up_the_others() {
    in_netns(|| async {
        // Only `lo` here: 203.0.113.0/24 has no route, so its attempt fails in the source
        // address lookup (ENETUNREACH), among checks that start in the same step.
        let ls: Vec<TcpListener> = (0..3).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let (sched, _events) = Scheduler::<usize>::new();
        sched.add(0, def("203.0.113.77:80".parse().unwrap(), Duration::from_millis(800))).unwrap();
        for (i, l) in ls.iter().enumerate() {
            sched.add(i + 1, def(l.local_addr().unwrap(), Duration::from_millis(800))).unwrap();
        }
        let end = Instant::now() + Duration::from_secs(3);
        loop {
            let last: Vec<_> = (0..4).map(|i| sched.status(&i).and_then(|s| s.last)).collect();
            if last.iter().all(Option::is_some) {
                let r = last[0].as_ref().unwrap();
                // At once, not after the connect timeout.
                assert_eq!(r.error, Some(FailReason::Unreachable), "{r}");
                assert!(r.latency < Duration::from_millis(100), "{r}");
                for r in &last[1..] {
                    assert!(r.as_ref().unwrap().is_ok(), "{r:?}");
                }
                break;
            }
            assert!(Instant::now() < end, "not all ran: {last:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn a_syn_that_cannot_be_sent_fails_its_attempt_at_once() {
    in_netns(|| async {
        // A route that exists for the first attempt (the SYN leaves by `lo` and is dropped as
        // not local: a timeout), then is deleted: the second attempt still has the cached source
        // address, so it is sendmmsg itself that fails (ENETUNREACH).
        ip(&["route", "add", "203.0.113.0/24", "dev", "lo"]);
        let checker = def("203.0.113.77:80".parse().unwrap(), Duration::from_millis(200)).prepare().unwrap();
        let r = checker.attempt().await;
        assert_eq!(r.error, Some(FailReason::Timeout(Phase::Connect)), "{r}");
        ip(&["route", "del", "203.0.113.0/24", "dev", "lo"]);
        let r = checker.attempt().await;
        assert_eq!(r.error, Some(FailReason::Unreachable), "{r}");
        assert!(r.latency < Duration::from_millis(100), "failed at once, not at the timeout: {r}");
    });
}
