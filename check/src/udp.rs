//! UDP_CHECK: send a datagram; an ICMP port unreachable in answer (seen as ECONNREFUSED on the
//! connected socket) fails the check. With `require_reply` (or a reply prefix) a reply must come
//! within the read timeout; without it, silence is success, as in keepalived.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;

use crate::checker::{parse_hex, DefError};
use crate::def::{Timing, UdpCheck};
use crate::result::{FailReason, Phase};

/// Largest reply we look at; longer ones are truncated by the kernel, which is fine for a prefix.
const MAX_REPLY: usize = 2048;

pub(crate) struct UdpProbe {
    target: SocketAddr,
    payload: Vec<u8>,
    require_reply: bool,
    prefix: Vec<u8>,
}

impl UdpProbe {
    pub(crate) fn new(def: &UdpCheck) -> Result<Self, DefError> {
        let payload = match (&def.payload, &def.payload_hex) {
            (Some(_), Some(_)) => return Err(DefError::invalid("payload", "give payload or payload_hex, not both")),
            (Some(t), None) => t.clone().into_bytes(),
            (None, Some(h)) => parse_hex("payload_hex", h)?,
            (None, None) => Vec::new(),
        };
        if payload.len() > 65_507 {
            return Err(DefError::invalid("payload", "longer than a UDP datagram can be"));
        }
        let prefix = match &def.reply_prefix_hex {
            Some(h) => parse_hex("reply_prefix_hex", h)?,
            None => Vec::new(),
        };
        Ok(UdpProbe {
            target: def.target,
            payload,
            require_reply: def.require_reply || def.reply_prefix_hex.is_some(),
            prefix,
        })
    }

    pub(crate) async fn attempt(&self, timing: &Timing) -> Result<(), FailReason> {
        let sock = bound_to(self.target).await?;
        sock.send(&self.payload).await.map_err(|e| FailReason::from_io(&e, Phase::Read))?;
        let mut buf = [0u8; MAX_REPLY];
        match tokio::time::timeout(timing.read_timeout(), sock.recv(&mut buf)).await {
            Err(_) if self.require_reply => Err(FailReason::Timeout(Phase::Read)),
            Err(_) => Ok(()),
            Ok(Err(e)) => Err(FailReason::from_io(&e, Phase::Read)),
            Ok(Ok(n)) => {
                let reply = &buf[..n];
                if reply.starts_with(&self.prefix) {
                    Ok(())
                } else {
                    Err(FailReason::BadResponse(format!(
                        "reply of {n} bytes does not start with the expected {} bytes",
                        self.prefix.len()
                    )))
                }
            }
        }
    }
}

/// An ephemeral UDP socket connected to `target`, so the kernel filters other senders out and
/// reports ICMP errors on it. Shared with the DNS checker.
pub(crate) async fn bound_to(target: SocketAddr) -> Result<UdpSocket, FailReason> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let io = |e: std::io::Error| FailReason::from_io(&e, Phase::Connect);
    let sock = UdpSocket::bind(local).await.map_err(io)?;
    sock.connect(target).await.map_err(io)?;
    Ok(sock)
}
