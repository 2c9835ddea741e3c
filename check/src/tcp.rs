//! TCP_CHECK: the backend is up when a TCP connection to it completes.
//!
//! The attempt is built for ten thousand checks a second on one core: a non-blocking connect,
//! then one `poll` with a zero timeout. When the handshake finished inside `connect` (a backend
//! on this host: loopback, or a veth whose peer runs in the sender's softirq) the attempt is over
//! with no epoll registration and no timer. A connect still in flight (the ordinary case for
//! remote backends) waits in the scheduler's [`Connector`]: one epoll instance and one deadline
//! heap for all of them, no tokio registration or timer per attempt.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::connect::{Connector, Done};

use crate::def::{TcpCheck, Timing};
use crate::result::{FailReason, Phase};

pub(crate) struct TcpProbe {
    target: SocketAddr,
    graceful: bool,
}

impl TcpProbe {
    pub(crate) fn new(def: &TcpCheck) -> Self {
        TcpProbe { target: def.target, graceful: def.graceful_close }
    }

    pub(crate) async fn attempt(&self, timing: &Timing, conn: &Connector) -> Result<(), FailReason> {
        let start = Instant::now();
        let io = |e: std::io::Error| FailReason::from_io(&e, Phase::Connect);
        let s = Socket::new(Domain::for_address(self.target), Type::STREAM.nonblocking(), None).map_err(io)?;
        if !self.graceful {
            // Close with a reset (SO_LINGER 0), as HAProxy's checks do: one packet instead of a
            // FIN handshake, and no TIME_WAIT entry per check on the director — at 10 000
            // checks/s a graceful close keeps ~600 000 of them (60 s each).
            // A zero linger resets at once; it never blocks the thread on close. Set before the
            // connect so every way out of this function closes the same way.
            s.set_linger(Some(Duration::ZERO)).map_err(io)?;
        }
        match s.connect(&self.target.into()) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(done) = finished(&s) {
            return done;
        }
        // Still in flight: wait for it in the connector under the connect timeout. `s` stays open
        // until the wait is over or dropped; closing it takes it out of the epoll set.
        match conn.wait(s.as_raw_fd(), start + timing.connect_timeout).map_err(io)?.await {
            Done::TimedOut => Err(FailReason::Timeout(Phase::Connect)),
            Done::Ready(bits) => outcome(&s, bits),
        }
    }
}

/// Whether a non-blocking connect has finished, asked with one zero-timeout `poll` (no wait
/// queue is joined with a zero timeout). `None`: still in flight.
fn finished(s: &Socket) -> Option<Result<(), FailReason>> {
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd for an open socket, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n <= 0 || p.revents == 0 {
        return None;
    }
    Some(outcome(s, p.revents as u32))
}

/// The result of a connect that is over, from `SO_ERROR` and the poll bits (`POLLERR`/`POLLHUP`
/// and `EPOLLERR`/`EPOLLHUP` have the same values).
fn outcome(s: &Socket, bits: u32) -> Result<(), FailReason> {
    match s.take_error() {
        Ok(Some(e)) | Err(e) => Err(FailReason::from_io(&e, Phase::Connect)),
        Ok(None) if bits & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 => Err(FailReason::Reset),
        Ok(None) => Ok(()),
    }
}

/// Connect with a deadline, mapping errors to reasons (used by the HTTP checker).
pub(crate) async fn connect(target: SocketAddr, limit: Duration) -> Result<TcpStream, FailReason> {
    match tokio::time::timeout(limit, TcpStream::connect(target)).await {
        Err(_) => Err(FailReason::Timeout(Phase::Connect)),
        Ok(Err(e)) => Err(FailReason::from_io(&e, Phase::Connect)),
        Ok(Ok(s)) => Ok(s),
    }
}

#[cfg(test)]
mod tests {
    //! The slow path (a connect still in flight after `connect(2)`) against real sockets on
    //! 127.0.0.1. A loopback connect finishes inside `connect` unless the listener's queue is
    //! full: then the SYN is dropped and resent after 1 s, which is what these tests use.

    use super::*;
    use crate::connect::Connector;
    use crate::def::Timing;

    struct Full {
        listener: Option<Socket>,
        fillers: Vec<std::net::TcpStream>,
        addr: SocketAddr,
    }

    /// A listener with backlog 0 and its accept queue filled: new SYNs are dropped.
    fn full_listener() -> Full {
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fillers.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Full { listener: Some(l), fillers, addr },
                Err(e) => panic!("filling the backlog: {e}"),
            }
        }
        panic!("the accept queue never filled up");
    }

    fn probe(target: SocketAddr) -> TcpProbe {
        TcpProbe { target, graceful: false }
    }

    fn timing(connect_timeout: Duration) -> Timing {
        let mut t = Timing::quick(Duration::from_secs(10));
        t.connect_timeout = connect_timeout;
        t
    }

    #[tokio::test]
    async fn in_flight_connect_that_completes_is_ok_with_its_latency() {
        let mut full = full_listener();
        let conn = Connector::default();
        let l = full.listener.take().unwrap();
        // Make room 200 ms in: the SYN resent at ~1 s then gets through.
        let drainer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            l.set_nonblocking(true).unwrap();
            while l.accept().is_ok() {}
            l // keep listening
        });
        let start = Instant::now();
        let r = probe(full.addr).attempt(&timing(Duration::from_secs(3)), &conn).await;
        let took = start.elapsed();
        let _l = drainer.join().unwrap();
        assert_eq!(r, Ok(()));
        assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2500), "the SYN was resent after ~1 s: {took:?}");
        assert!(conn.started(), "the attempt went through the connector (slow path)");
        assert_eq!(conn.waiting(), 0, "slot released");
        full.fillers.clear();
    }

    #[tokio::test]
    async fn in_flight_connect_refused_is_refused() {
        let mut full = full_listener();
        let conn = Connector::default();
        let l = full.listener.take().unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(l); // the SYN resent at ~1 s meets a closed port
        });
        let r = probe(full.addr).attempt(&timing(Duration::from_secs(3)), &conn).await;
        closer.join().unwrap();
        assert_eq!(r, Err(FailReason::Refused));
        assert!(conn.started());
    }

    #[tokio::test]
    async fn each_in_flight_connect_times_out_at_its_own_deadline() {
        let full = full_listener();
        let conn = Connector::default();
        let p = probe(full.addr);
        // Registered 20 ms apart, latest deadline first, so the driver has armed its timer for
        // an earlier registration when a nearer deadline comes in and must re-arm.
        let ms = [450u64, 150, 300, 50];
        let attempts = ms.iter().enumerate().map(|(i, &m)| {
            let (p, conn) = (&p, &conn);
            async move {
                tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
                let start = Instant::now();
                let r = p.attempt(&timing(Duration::from_millis(m)), conn).await;
                (m, r, start.elapsed())
            }
        });
        for (m, r, took) in futures_join(attempts).await {
            assert_eq!(r, Err(FailReason::Timeout(Phase::Connect)), "{m} ms");
            assert!(took >= Duration::from_millis(m) && took < Duration::from_millis(m + 150), "{m} ms timeout took {took:?}");
        }
        assert_eq!(conn.waiting(), 0);
        drop(full);
    }

    #[tokio::test]
    async fn a_dropped_wait_frees_its_slot_and_the_connector_goes_on() {
        let full = full_listener();
        let conn = Connector::default();
        let p = probe(full.addr);
        let cut = tokio::time::timeout(Duration::from_millis(50), p.attempt(&timing(Duration::from_secs(5)), &conn)).await;
        assert!(cut.is_err(), "still waiting when dropped");
        assert_eq!(conn.waiting(), 0, "dropping the attempt released its slot");
        let start = Instant::now();
        assert_eq!(p.attempt(&timing(Duration::from_millis(100)), &conn).await, Err(FailReason::Timeout(Phase::Connect)));
        assert!(start.elapsed() < Duration::from_millis(300));
        drop(full);
    }

    /// Runs futures concurrently on this task and returns their outputs in order.
    async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
        let set: Vec<_> = fs.map(Box::pin).collect();
        let mut outs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
        let mut set: Vec<Option<_>> = set.into_iter().map(Some).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (f, out) in set.iter_mut().zip(outs.iter_mut()) {
                if let Some(fut) = f {
                    match fut.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => {
                            *out = Some(v);
                            *f = None;
                        }
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        outs.into_iter().map(|o| o.expect("every future finished")).collect()
    }
}
