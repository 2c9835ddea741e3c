//! Waiting for TCP connects still in flight, without a tokio registration or timer per attempt.
//!
//! At 10 000 checks a second against backends on other machines, nearly every connect is still in
//! flight when `connect(2)` returns. Handing each socket to tokio costs an I/O registration (an
//! allocation, `epoll_ctl` add *and* delete) and a timer-wheel entry per attempt. A [`Connector`]
//! instead owns one epoll instance for all in-flight connects of its scheduler: an attempt adds its
//! socket once (`EPOLLOUT | EPOLLONESHOT`, so a finished connect is reported once), and closing the
//! socket removes it (no `epoll_ctl` delete). One driver task waits for that epoll instance as a
//! single tokio registration, collects every finished connect with one `epoll_wait`, and wakes
//! their attempts. Deadlines sit in one min-heap; the driver keeps a single tokio sleep armed for
//! the earliest deadline still waiting, so a connect that finishes costs no timer at all.
//!
//! Result semantics are those of `tokio::time::timeout` around the wait: a connect that has
//! finished when its deadline is handled counts as finished (the driver drains epoll before it
//! expires deadlines), otherwise it is a timeout.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// How an in-flight connect ended, as far as the connector can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Done {
    /// The socket became writable or reported an error/hang-up: the handshake is over (ask the
    /// socket for `SO_ERROR`). Carries the epoll event bits.
    Ready(u32),
    /// The deadline passed first.
    TimedOut,
}

/// One epoll instance and one driver task for the in-flight connects of a scheduler (or of a
/// one-off attempt). Created empty: the epoll instance and the driver start at the first connect
/// that needs them, on the runtime that runs it. Dropping the handle lets the driver end once no
/// attempt waits any more.
#[derive(Default)]
pub(crate) struct Connector {
    inner: OnceLock<Arc<Inner>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("started", &self.inner.get().is_some()).finish()
    }
}

struct Inner {
    /// The epoll instance. Shared with the driver so it stays open while either uses it.
    epfd: Arc<OwnedFd>,
    state: Mutex<State>,
    /// A deadline earlier than the one the driver's sleep is armed for was added.
    rearm: Notify,
    /// Dropped with the last `Inner`: tells the driver to end.
    _alive: oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// (deadline, slot, generation); entries of slots that finished or were dropped are stale
    /// and skipped when they reach the top.
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// The deadline the driver's sleep is armed for.
    armed: Option<Instant>,
}

#[derive(Default)]
struct Slot {
    gen: u32,
    waiting: bool,
    done: Option<Done>,
    waker: Option<Waker>,
}

impl State {
    fn live(&self, idx: u32, gen: u32) -> Option<&Slot> {
        self.slots.get(idx as usize).filter(|s| s.gen == gen && s.waiting)
    }

    fn live_mut(&mut self, idx: u32, gen: u32) -> Option<&mut Slot> {
        self.slots.get_mut(idx as usize).filter(|s| s.gen == gen && s.waiting)
    }

    fn release(&mut self, idx: u32) {
        if let Some(s) = self.slots.get_mut(idx as usize) {
            s.gen = s.gen.wrapping_add(1);
            s.waiting = false;
            s.done = None;
            s.waker = None;
            self.free.push(idx);
        }
    }

    /// The earliest deadline of a connect still waiting, dropping stale entries on the way.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, idx, gen))) = self.deadlines.peek() {
            if self.live(idx, gen).is_some_and(|s| s.done.is_none()) {
                return Some(at);
            }
            self.deadlines.pop();
        }
        None
    }
}

fn key(idx: u32, gen: u32) -> u64 {
    u64::from(gen) << 32 | u64::from(idx)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a set of slots and a heap; a panic elsewhere cannot break its invariants
        // in a way that matters more than stopping the checks would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Connector {
    fn inner(&self) -> io::Result<&Arc<Inner>> {
        if let Some(i) = self.inner.get() {
            return Ok(i);
        }
        let i = start()?;
        // Another thread may have started one meanwhile: keep theirs, ours ends with `i`.
        Ok(self.inner.get_or_init(|| i))
    }

    /// Wait for the connect in flight on `fd` until `deadline`. The caller keeps `fd` open until
    /// the returned future is done or dropped, and closes it afterwards (which also removes it
    /// from the epoll set). `fd` must not be registered with any other epoll instance of this
    /// connector (a fresh socket never is).
    pub(crate) fn wait(&self, fd: RawFd, deadline: Instant) -> io::Result<Wait> {
        let inner = self.inner()?.clone();
        let (idx, gen, rearm) = {
            let mut st = inner.lock();
            let idx = match st.free.pop() {
                Some(i) => i,
                None => {
                    st.slots.push(Slot::default());
                    u32::try_from(st.slots.len() - 1).map_err(|_| io::Error::other("too many connects in flight"))?
                }
            };
            let slot = &mut st.slots[idx as usize];
            slot.waiting = true;
            let gen = slot.gen;
            st.deadlines.push(Reverse((deadline, idx, gen)));
            let rearm = st.armed.is_none_or(|a| deadline < a);
            if rearm {
                st.armed = Some(deadline);
            }
            (idx, gen, rearm)
        };
        let mut ev = libc::epoll_event { events: (libc::EPOLLOUT | libc::EPOLLONESHOT) as u32, u64: key(idx, gen) };
        // SAFETY: both descriptors are open (the epoll one is owned by `inner`, `fd` by the
        // caller) and `ev` is a valid event struct.
        if unsafe { libc::epoll_ctl(inner.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            let e = io::Error::last_os_error();
            inner.lock().release(idx);
            return Err(e);
        }
        if rearm {
            inner.rearm.notify_one();
        }
        Ok(Wait { inner, idx, gen })
    }
}

/// A connect being waited for; resolves once. Dropping it early forgets the connect (its socket
/// is then closed by its owner).
pub(crate) struct Wait {
    inner: Arc<Inner>,
    idx: u32,
    gen: u32,
}

impl Future for Wait {
    type Output = Done;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let this = self.get_mut();
        let mut st = this.inner.lock();
        let Some(slot) = st.live_mut(this.idx, this.gen) else {
            // Already resolved and released: a poll after completion. Futures may not be polled
            // again after `Ready`; answer the same way instead of hanging.
            return Poll::Ready(Done::TimedOut);
        };
        if let Some(done) = slot.done {
            st.release(this.idx);
            this.gen = this.gen.wrapping_add(1); // so Drop does not release the slot again
            return Poll::Ready(done);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if st.live(self.idx, self.gen).is_some() {
            st.release(self.idx);
        }
    }
}

/// The epoll descriptor as tokio sees it (tokio does not own or close it).
struct EpollFd(Arc<OwnedFd>);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn start() -> io::Result<Arc<Inner>> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let epfd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: `EpollFd` holds the descriptor through an `Arc<OwnedFd>`, so it stays open and the
    // same for as long as the `AsyncFd` lives, and `as_raw_fd` always returns it.
    let afd = unsafe { AsyncFd::register_with_interest(EpollFd(epfd.clone()), tokio::io::Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
    let (alive, gone) = oneshot::channel();
    let inner = Arc::new(Inner { epfd, state: Mutex::new(State::default()), rearm: Notify::new(), _alive: alive });
    tokio::spawn(drive(Arc::downgrade(&inner), afd, gone));
    Ok(inner)
}

const EVENTS: usize = 256;

/// The driver: collects finished connects, expires deadlines, wakes the attempts. Ends when the
/// connector and every wait on it are gone.
async fn drive(weak: Weak<Inner>, afd: AsyncFd<EpollFd>, mut gone: oneshot::Receiver<()>) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut wake = Vec::new();
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    let mut armed = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let next = {
            let mut st = inner.lock();
            let next = st.next_deadline();
            st.armed = next;
            next
        };
        if next != armed {
            if let Some(at) = next {
                sleep.as_mut().reset(at);
            }
            armed = next;
        }
        // `notify_one` leaves a permit when the driver is not waiting, so a deadline added
        // between the read above and the wait below is not missed.
        tokio::select! {
            biased;
            _ = &mut gone => return,
            ready = afd.readable() => match ready {
                Ok(mut guard) => {
                    if drain(&inner, afd.get_ref(), &mut events, &mut wake) < EVENTS {
                        guard.clear_ready();
                    }
                }
                // Only when the runtime is shutting down: nothing will run the attempts either.
                Err(e) => {
                    tracing::debug!("connect driver ends: {e}");
                    return;
                }
            },
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                // Connects that finished in time win over their deadline.
                while drain(&inner, afd.get_ref(), &mut events, &mut wake) == EVENTS {}
                expire(&inner, &mut wake);
            }
            _ = inner.rearm.notified() => {}
        }
        drop(inner);
        for w in wake.drain(..) {
            w.wake();
        }
    }
}

/// One non-blocking `epoll_wait`: marks the connects it reports as ready. Returns how many
/// events came back (`EVENTS`: there may be more).
fn drain(inner: &Inner, epfd: &EpollFd, events: &mut [libc::epoll_event], wake: &mut Vec<Waker>) -> usize {
    let cap = i32::try_from(events.len()).unwrap_or(i32::MAX);
    // SAFETY: `events` is a writable buffer of `cap` entries; the descriptor is open.
    let n = unsafe { libc::epoll_wait(epfd.as_raw_fd(), events.as_mut_ptr(), cap, 0) };
    let Ok(n) = usize::try_from(n) else { return 0 }; // EINTR and the like: readiness stays set
    if n == 0 {
        return 0;
    }
    let mut st = inner.lock();
    for ev in &events[..n] {
        let (bits, data) = (ev.events, ev.u64);
        let (idx, gen) = ((data & 0xffff_ffff) as u32, (data >> 32) as u32);
        if let Some(slot) = st.live_mut(idx, gen).filter(|s| s.done.is_none()) {
            slot.done = Some(Done::Ready(bits));
            wake.extend(slot.waker.take());
        }
    }
    n
}

/// Marks every waiting connect whose deadline has passed as timed out.
fn expire(inner: &Inner, wake: &mut Vec<Waker>) {
    let now = Instant::now();
    let mut st = inner.lock();
    while let Some(&Reverse((at, idx, gen))) = st.deadlines.peek() {
        if at > now {
            break;
        }
        st.deadlines.pop();
        if let Some(slot) = st.live_mut(idx, gen).filter(|s| s.done.is_none()) {
            slot.done = Some(Done::TimedOut);
            wake.extend(slot.waker.take());
        }
    }
}

#[cfg(test)]
impl Connector {
    /// Whether the epoll instance and driver were started (a connect took the slow path).
    pub(crate) fn started(&self) -> bool {
        self.inner.get().is_some()
    }

    /// Connects currently waiting (slots in use).
    pub(crate) fn waiting(&self) -> usize {
        self.inner.get().map_or(0, |i| i.lock().slots.iter().filter(|s| s.waiting).count())
    }
}
