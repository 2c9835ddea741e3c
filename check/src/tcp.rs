//! TCP_CHECK: the backend is up when a TCP connection to it completes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::def::{TcpCheck, Timing};
use crate::result::{FailReason, Phase};

pub(crate) struct TcpProbe {
    target: SocketAddr,
}

impl TcpProbe {
    pub(crate) fn new(def: &TcpCheck) -> Self {
        TcpProbe { target: def.target }
    }

    pub(crate) async fn attempt(&self, timing: &Timing) -> Result<(), FailReason> {
        // Dropping the stream closes it with a FIN, as keepalived does.
        connect(self.target, timing.connect_timeout).await.map(drop)
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
