//! Request/response over TCP with mutual TLS: the path for Raft's RPCs.
//!
//! Why a second transport beside QUIC: Raft sends every change as two request/response
//! exchanges to every follower, and on the kernel's TCP a kept connection costs far less CPU
//! per exchange than a QUIC stream in user space (docs/BENCHMARKS.md, propagation Round 14:
//! 16 against 26–30 µs natively, 210 against 430–730 µs under qemu TCG). Gossip stays on QUIC
//! datagrams. The TCP port is the node's QUIC port number: TCP and UDP ports are separate, so
//! the address Raft already knows for a node is the one to dial.
//!
//! Each connection carries one request at a time, then its answer: `u32` big-endian length and
//! the request; `u32` length, a status byte and the answer (the framing of the QUIC streams).
//! Requests to one peer run concurrently on separate connections; idle ones are kept for the
//! next request. A connection whose request timed out or failed is closed, never reused, so a
//! late answer cannot be taken for the next request's. The server closes a connection idle for
//! the transport's idle timeout (a peer that vanished does not hold a task and a socket); the
//! client stops reusing one after half of that, so the two never race.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};
use tracing::{debug, warn};

use super::framing::{decode_response, encode_response_within};
use super::{Peer, StreamHandler, TransportConfig, TransportError};
use crate::tls::{self, cert_node_name, CLUSTER_SERVER_NAME};

/// Idle connections kept per peer: openraft has at most one AppendEntries in flight per
/// follower, plus the odd vote or snapshot chunk.
const IDLE_PER_PEER: usize = 4;

type ClientConn = client::TlsStream<TcpStream>;

struct Inner {
    config: TransportConfig,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    /// Kept client connections per peer, with when each went idle.
    idle: Mutex<HashMap<SocketAddr, Vec<(ClientConn, Instant)>>>,
    /// When each peer last answered a request.
    answered: Mutex<HashMap<SocketAddr, Instant>>,
    handler: RwLock<Option<StreamHandler>>,
    /// Client connections opened (handshake done), for tests of connection reuse.
    dialed: AtomicU64,
    /// Set by [`TcpRequests::close`]: the accept loop and every served connection stop.
    closed: tokio::sync::watch::Sender<bool>,
}

/// A node's TCP request endpoint (listener and client pool) for one ALPN. Cheap to clone.
#[derive(Clone)]
pub struct TcpRequests {
    inner: Arc<Inner>,
    local: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TcpRequests {
    /// Listens on TCP `config.listen` and serves requests for `alpn` with the handler set by
    /// [`TcpRequests::register_handler`]. Must run inside a tokio runtime.
    pub fn bind(config: TransportConfig, alpn: super::Alpn) -> Result<Self, TransportError> {
        let creds = &config.credentials;
        let server = tls::server_config_requiring_client_cert(creds, alpn.as_bytes())?;
        let client = tls::client_config(creds, alpn.as_bytes())?;
        let bind_err = |source| TransportError::Bind { addr: config.listen, source };
        let std = std::net::TcpListener::bind(config.listen).map_err(bind_err)?;
        std.set_nonblocking(true).map_err(bind_err)?;
        let local = std.local_addr().map_err(bind_err)?;
        let listener = TcpListener::from_std(std).map_err(bind_err)?;
        let inner = Arc::new(Inner {
            config,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            idle: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
            handler: RwLock::new(None),
            dialed: AtomicU64::new(0),
            closed: tokio::sync::watch::channel(false).0,
        });
        let t = TcpRequests { inner, local };
        let a = t.clone();
        tokio::spawn(async move { a.accept_loop(listener).await });
        Ok(t)
    }

    /// The bound TCP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sets the handler for incoming requests; requests before that are answered with an error.
    pub fn register_handler(&self, handler: StreamHandler) {
        *self.inner.handler.write().unwrap_or_else(|p| p.into_inner()) = Some(handler);
    }

    /// Whether `addr` answered a request within the idle timeout: lets a caller whose own
    /// deadline passed tell a peer that is slow to answer from one that is gone (the QUIC
    /// transport's `is_connected` says the same from its keep-alives).
    pub fn is_connected(&self, addr: SocketAddr) -> bool {
        let within = self.inner.config.idle_timeout;
        lock(&self.inner.answered).get(&addr).is_some_and(|t| t.elapsed() < within)
    }

    /// Stops accepting, ends every served connection and drops the kept ones (their peers see
    /// them close), as a stopped process would.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
        lock(&self.inner.idle).clear();
    }

    /// Client connections this endpoint has opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.inner.dialed.load(Ordering::Relaxed)
    }

    /// Sends one request to `addr` and waits for its answer, on a kept connection or a new one.
    /// When a kept connection fails mid-exchange the request is sent once more on a new one, so
    /// a peer may receive it twice (Raft's RPCs tolerate that; QUIC's `request` does the same).
    pub async fn request(&self, addr: SocketAddr, body: &[u8]) -> Result<Vec<u8>, TransportError> {
        let limit = self.inner.config.max_message_size;
        if body.len() > limit {
            return Err(TransportError::TooLarge { len: body.len(), limit });
        }
        if let Some(conn) = self.kept(addr) {
            match self.exchange_on(addr, conn, body).await {
                // A kept connection may have died quietly (the peer restarted): one retry on a
                // new connection. A new one failing is the real answer.
                // (Only the exchange's own failures: a refusal or a timeout is the answer.)
                Err(e @ (TransportError::Stream(_) | TransportError::TooLarge { .. })) => {
                    debug!(%addr, error = %e, "kept TCP connection failed, redialing")
                }
                other => return other,
            }
        }
        let conn = self.connect(addr).await?;
        self.exchange_on(addr, conn, body).await
    }

    /// One exchange on `conn` within the request timeout; the connection is kept for the next
    /// request only when its answer came.
    async fn exchange_on(&self, addr: SocketAddr, mut conn: ClientConn, body: &[u8]) -> Result<Vec<u8>, TransportError> {
        let (after, limit) = (self.inner.config.request_timeout, self.inner.config.max_message_size);
        let answer = tokio::time::timeout(after, exchange(&mut conn, body, limit))
            .await
            .map_err(|_| TransportError::RequestTimeout { addr, after })??;
        self.keep(addr, conn);
        decode_response(answer)
    }

    /// The most recently used kept connection to `addr` that the server will not have closed
    /// for idleness yet.
    fn kept(&self, addr: SocketAddr) -> Option<ClientConn> {
        let fresh_for = self.inner.config.idle_timeout / 2;
        let mut idle = lock(&self.inner.idle);
        let v = idle.get_mut(&addr)?;
        v.retain(|(_, since)| since.elapsed() < fresh_for);
        v.pop().map(|(c, _)| c)
    }

    fn keep(&self, addr: SocketAddr, conn: ClientConn) {
        let now = Instant::now();
        lock(&self.inner.answered).insert(addr, now);
        let mut idle = lock(&self.inner.idle);
        let v = idle.entry(addr).or_default();
        if v.len() < IDLE_PER_PEER {
            v.push((conn, now));
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<ClientConn, TransportError> {
        let after = self.inner.config.connect_timeout;
        let name = ServerName::try_from(CLUSTER_SERVER_NAME)
            .map_err(|e| TransportError::Protocol(format!("server name: {e}")))?;
        let dial = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| TransportError::ConnectFailed { addr, source })?;
            // A request is one write: send it now, not after the previous answer's ACK.
            let _ = tcp.set_nodelay(true);
            self.inner.connector.connect(name, tcp).await.map_err(|e| handshake_error(addr, e))
        };
        let conn = tokio::time::timeout(after, dial)
            .await
            .map_err(|_| TransportError::ConnectTimeout { addr, after })??;
        self.inner.dialed.fetch_add(1, Ordering::Relaxed);
        debug!(%addr, "TCP request connection opened");
        Ok(conn)
    }

    async fn accept_loop(self, listener: TcpListener) {
        let mut closed = self.inner.closed.subscribe();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = closed.wait_for(|c| *c) => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let t = self.clone();
            tokio::spawn(async move { t.serve(tcp, remote).await });
        }
    }

    async fn serve(self, tcp: TcpStream, remote: SocketAddr) {
        let after = self.inner.config.connect_timeout;
        let mut conn = match tokio::time::timeout(after, self.inner.acceptor.accept(tcp)).await {
            Ok(Ok(c)) => c,
            // The dialer gave up before we answered (we were stalled, or it timed out): its
            // own side logs that; after a pause a backlog of these would fill the log.
            Ok(Err(e)) if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => {
                debug!(%remote, error = %e, "peer closed during the TLS handshake on TCP");
                return;
            }
            Ok(Err(e)) => {
                warn!(%remote, error = %e, "refused incoming TLS handshake on TCP");
                return;
            }
            Err(_) => {
                debug!(%remote, "TCP TLS handshake timed out");
                return;
            }
        };
        let Some(name) = peer_name(&conn) else {
            warn!(%remote, "refused TCP connection: no node certificate");
            return;
        };
        let peer = Peer { addr: remote, name };
        let limit = self.inner.config.max_message_size;
        let idle = self.inner.config.idle_timeout;
        let mut closed = self.inner.closed.subscribe();
        loop {
            let next = tokio::select! {
                r = tokio::time::timeout(idle, read_frame(&mut conn, limit)) => r,
                _ = closed.wait_for(|c| *c) => return,
            };
            let req = match next {
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    warn!(%remote, peer = %peer.name, error = %e, "bad TCP request frame, connection closed");
                    return;
                }
                Err(_) => {
                    debug!(%remote, "TCP request connection idle, closed");
                    return;
                }
            };
            let handler = self.inner.handler.read().unwrap_or_else(|p| p.into_inner()).clone();
            let response = match handler {
                Some(h) => h(peer.clone(), req).await,
                None => Err("no handler registered on this node yet".to_string()),
            };
            let body = encode_response_within(response, limit);
            if let Err(e) = write_frame(&mut conn, &body).await {
                debug!(%remote, error = %e, "could not send response");
                return;
            }
        }
    }
}

fn peer_name(conn: &server::TlsStream<TcpStream>) -> Option<String> {
    let (_, session) = conn.get_ref();
    cert_node_name(session.peer_certificates()?.first()?)
}

fn handshake_error(addr: SocketAddr, e: std::io::Error) -> TransportError {
    let reason = e.to_string();
    if reason.contains("AlertReceived") {
        TransportError::HandshakeRefused { addr, reason }
    } else if reason.contains("invalid peer certificate") {
        TransportError::PeerRejected { addr, reason }
    } else {
        TransportError::Stream(format!("TLS handshake with {addr}: {reason}"))
    }
}

/// One exchange on a client connection: the request out, the answer (status byte first) in.
async fn exchange(conn: &mut ClientConn, body: &[u8], limit: usize) -> Result<Vec<u8>, TransportError> {
    write_frame(conn, body).await?;
    read_frame(conn, limit.saturating_add(1))
        .await?
        .ok_or_else(|| TransportError::Stream("connection closed before the answer".into()))
}

/// Writes one frame as one TLS record (one `write` on the socket).
async fn write_frame<S: AsyncWriteExt + Unpin>(s: &mut S, body: &[u8]) -> Result<(), TransportError> {
    let len = u32::try_from(body.len()).map_err(|_| TransportError::TooLarge { len: body.len(), limit: u32::MAX as usize })?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    s.write_all(&frame).await.map_err(|e| TransportError::Stream(e.to_string()))?;
    s.flush().await.map_err(|e| TransportError::Stream(e.to_string()))
}

/// Reads one frame; `None` on a clean end before its first byte. A length above `limit` is
/// refused before any allocation.
async fn read_frame<S: AsyncReadExt + Unpin>(s: &mut S, limit: usize) -> Result<Option<Vec<u8>>, TransportError> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(TransportError::Stream(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(TransportError::TooLarge { len, limit });
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.map_err(|e| TransportError::Stream(format!("frame cut short: {e}")))?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::tls::{ClusterCa, NodeCredentials};
    use crate::transport::Alpn;

    fn endpoint(creds: NodeCredentials, addr: SocketAddr, request_timeout: Duration, limit: usize) -> TcpRequests {
        let mut cfg = TransportConfig::new(addr, creds);
        cfg.connect_timeout = Duration::from_secs(2);
        cfg.request_timeout = request_timeout;
        cfg.max_message_size = limit;
        TcpRequests::bind(cfg, Alpn::Raft).unwrap()
    }

    fn any() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// Answers `<peer name>:<request>`; "fail" is refused, "slow" answered after 2 s. Counts
    /// the requests it saw.
    fn echo(seen: Arc<AtomicUsize>) -> StreamHandler {
        Arc::new(move |peer: Peer, req: Vec<u8>| {
            let seen = seen.clone();
            Box::pin(async move {
                seen.fetch_add(1, Ordering::SeqCst);
                if req == b"fail" {
                    return Err("handler says no".to_string());
                }
                if req == b"slow" {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                let mut out = format!("{}:", peer.name).into_bytes();
                out.extend(req);
                Ok(out)
            })
        })
    }

    /// `(a, b, requests b's handler saw)`, both of one cluster CA.
    fn pair(request_timeout: Duration) -> (TcpRequests, TcpRequests, Arc<AtomicUsize>) {
        let ca = ClusterCa::generate("t").unwrap();
        let a = endpoint(ca.issue("node-a").unwrap(), any(), request_timeout, 4096);
        let b = endpoint(ca.issue("node-b").unwrap(), any(), request_timeout, 4096);
        let seen = Arc::new(AtomicUsize::new(0));
        b.register_handler(echo(seen.clone()));
        (a, b, seen)
    }

    #[tokio::test]
    async fn requests_reach_the_handler_with_the_certified_name_on_one_kept_connection() {
        let (a, b, seen) = pair(Duration::from_secs(5));
        for i in 0..3 {
            let r = a.request(b.local_addr(), format!("x{i}").as_bytes()).await.unwrap();
            assert_eq!(r, format!("node-a:x{i}").as_bytes());
        }
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        assert_eq!(a.connections_opened(), 1, "the connection is kept between requests");
        assert!(a.is_connected(b.local_addr()));
        let e = a.request(b.local_addr(), b"fail").await.unwrap_err();
        assert!(matches!(&e, TransportError::Remote(m) if m == "handler says no"), "{e}");
        // Concurrent requests each get their own connection and their own answer.
        let (r1, r2) = tokio::join!(a.request(b.local_addr(), b"p"), a.request(b.local_addr(), b"q"));
        assert_eq!((r1.unwrap(), r2.unwrap()), (b"node-a:p".to_vec(), b"node-a:q".to_vec()));
    }

    #[tokio::test]
    async fn a_certificate_from_another_cluster_is_refused_before_any_request() {
        let (_, b, seen) = pair(Duration::from_secs(5));
        // Trusts b's CA (so the client accepts b) but presents a certificate another CA signed.
        let other = ClusterCa::generate("other").unwrap().issue("node-x").unwrap();
        let trusting_b = NodeCredentials { ca_der: b.inner.config.credentials.ca_der.clone(), ..other };
        let x = endpoint(trusting_b, any(), Duration::from_secs(5), 4096);
        let e = x.request(b.local_addr(), b"hello").await.unwrap_err();
        assert!(
            matches!(e, TransportError::HandshakeRefused { .. } | TransportError::Stream(_)),
            "refused by the server: {e}"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 0, "the handler never saw it");
    }

    #[tokio::test]
    async fn a_timed_out_request_is_withdrawn_and_its_late_answer_never_read() {
        let (a, b, _) = pair(Duration::from_millis(300));
        let e = a.request(b.local_addr(), b"slow").await.unwrap_err();
        assert!(matches!(e, TransportError::RequestTimeout { .. }), "{e}");
        // The late answer is on the closed connection: the next request gets its own.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(a.request(b.local_addr(), b"next").await.unwrap(), b"node-a:next");
        assert_eq!(a.connections_opened(), 2);
    }

    #[tokio::test]
    async fn a_restarted_peer_is_redialed_once_the_kept_connection_is_found_dead() {
        let ca = ClusterCa::generate("t").unwrap();
        let a = endpoint(ca.issue("node-a").unwrap(), any(), Duration::from_secs(5), 4096);
        let b = endpoint(ca.issue("node-b").unwrap(), any(), Duration::from_secs(5), 4096);
        b.register_handler(echo(Arc::new(AtomicUsize::new(0))));
        let addr = b.local_addr();
        assert_eq!(a.request(addr, b"1").await.unwrap(), b"node-a:1");
        b.close();
        drop(b);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let b = endpoint(ca.issue("node-b").unwrap(), addr, Duration::from_secs(5), 4096);
        b.register_handler(echo(Arc::new(AtomicUsize::new(0))));
        assert_eq!(a.request(addr, b"2").await.unwrap(), b"node-a:2");
        assert_eq!(a.connections_opened(), 2, "the dead kept connection was replaced");
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_on_both_ends_and_nothing_listening_is_unreachable() {
        let (a, b, seen) = pair(Duration::from_secs(5));
        let e = a.request(b.local_addr(), &[0u8; 5000]).await.unwrap_err();
        assert!(matches!(e, TransportError::TooLarge { len: 5000, limit: 4096 }), "{e}");
        assert_eq!(a.connections_opened(), 0, "refused before dialing");
        // A sender with a larger limit: b refuses the frame by its length and closes.
        let big = endpoint(b.inner.config.credentials.clone(), any(), Duration::from_secs(5), 1 << 20);
        let e = big.request(b.local_addr(), &[0u8; 5000]).await.unwrap_err();
        assert!(matches!(e, TransportError::Stream(_)), "{e}");
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        let gone = std::net::TcpListener::bind(any()).unwrap().local_addr().unwrap();
        let e = a.request(gone, b"x").await.unwrap_err();
        assert!(matches!(e, TransportError::ConnectFailed { .. }), "{e}");
        assert!(!a.is_connected(gone));
    }
}
