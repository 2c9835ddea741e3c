//! TCP_CHECK: the backend is up when a TCP connection to it completes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

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

    pub(crate) async fn attempt(&self, timing: &Timing) -> Result<(), FailReason> {
        let s = connect(self.target, timing.connect_timeout).await?;
        if !self.graceful {
            // Close with a reset (SO_LINGER 0), as HAProxy's checks do: one packet instead of a
            // FIN handshake, and no TIME_WAIT entry per check on the director — at 10 000
            // checks/s a graceful close keeps ~600 000 of them (60 s each).
            // A zero linger resets at once; it never blocks the thread on close.
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
        drop(s);
        Ok(())
    }
}

/// Connect with a deadline, mapping errors to reasons (shared with the HTTP checker).
pub(crate) async fn connect(target: SocketAddr, limit: Duration) -> Result<TcpStream, FailReason> {
    match tokio::time::timeout(limit, TcpStream::connect(target)).await {
        Err(_) => Err(FailReason::Timeout(Phase::Connect)),
        Ok(Err(e)) => Err(FailReason::from_io(&e, Phase::Connect)),
        Ok(Ok(s)) => Ok(s),
    }
}
