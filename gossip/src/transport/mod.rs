//! One QUIC endpoint per node (one UDP port), serving and dialing every cluster protocol.
//!
//! Each use gets its own ALPN so one port carries them all without a multiplexing header:
//! [`Alpn::Gossip`] (QUIC datagrams, fed to the SWIM driver), [`Alpn::Raft`] and [`Alpn::Admin`]
//! (request/response on bidirectional streams, handled by callbacks the node registers), and
//! [`Alpn::Join`] (a node with no certificate trades a join token for one). Outgoing
//! connections are cached per (peer address, ALPN), like superfly/corrosion does, so gossip
//! and Raft don't pay a handshake per message.

mod framing;
mod join;
mod tcp;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, Endpoint};
use tokio::sync::{mpsc, OnceCell};
use tracing::{debug, warn};

use crate::tls::{self, NodeCredentials, TlsError, TokenValidator, CLUSTER_SERVER_NAME};

pub use join::join_cluster;
pub use tcp::TcpRequests;

/// Application close code: the server refused a connection that came without a certificate
/// on an ALPN that needs one. Mapped back to [`TransportError::ClientCertRequired`].
pub const CLOSE_NO_CLIENT_CERT: u32 = 0x10;
/// Application close code: the node is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0x11;
/// Application close code: the server does not serve joins (no CA key or no validator).
pub const CLOSE_NO_JOIN: u32 = 0x12;
/// Application close code: unknown ALPN (cannot happen with rustls, kept for clarity).
pub const CLOSE_BAD_ALPN: u32 = 0x13;
/// RESET_STREAM code of a request its sender gave up on (timed out or cancelled).
pub const RESET_ABANDONED: u32 = 0x20;

/// The protocols multiplexed on the node's UDP port, one ALPN each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// SWIM packets over QUIC datagrams.
    Gossip,
    /// Raft RPCs over request/response streams.
    Raft,
    /// corralctl and node-to-node admin requests over request/response streams.
    Admin,
    /// Certificate issuance for a node presenting a join token (no client certificate).
    Join,
}

impl Alpn {
    /// Every ALPN the server offers.
    pub const ALL: [Alpn; 4] = [Alpn::Gossip, Alpn::Raft, Alpn::Admin, Alpn::Join];

    /// The ALPN identifier on the wire.
    pub const fn as_bytes(self) -> &'static [u8] {
        match self {
            Alpn::Gossip => b"corral-gossip/1",
            Alpn::Raft => b"corral-raft/1",
            Alpn::Admin => b"corral-admin/1",
            Alpn::Join => b"corral-join/1",
        }
    }

    /// The ALPN a handshake negotiated, if it is one of ours.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_bytes() == b)
    }

    const fn carries_requests(self) -> bool {
        matches!(self, Alpn::Raft | Alpn::Admin)
    }
}

impl std::fmt::Display for Alpn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A gossip datagram and the node name its connection's certificate proves.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// Certificate name of the sending node.
    pub peer: Arc<str>,
    /// The payload.
    pub data: Bytes,
}

/// Who sent a request, as proven by its certificate, so handlers authorize by node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's UDP address.
    pub addr: SocketAddr,
    /// The node name from the peer's certificate SAN.
    pub name: String,
}

/// What a stream handler returns: the response bytes, or a refusal the caller sees as
/// [`TransportError::Remote`].
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

/// A request handler for [`Alpn::Raft`] or [`Alpn::Admin`]: one call per request stream.
pub type StreamHandler = Arc<dyn Fn(Peer, Vec<u8>) -> HandlerFuture + Send + Sync>;

/// Errors of the transport; every refusal says who refused and why, since a refused mTLS
/// handshake otherwise shows up as a bare closed connection.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be bound.
    #[error("binding UDP {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Certificates or keys were unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The peer aborted our handshake (it does not accept our certificate, or we have none).
    #[error("{addr} refused the TLS handshake: {reason}")]
    HandshakeRefused {
        /// The peer.
        addr: SocketAddr,
        /// The TLS alert it sent.
        reason: String,
    },
    /// We refused the peer's certificate (not from our cluster CA, or the join fingerprint).
    #[error("refused the certificate of {addr}: {reason}")]
    PeerRejected {
        /// The peer.
        addr: SocketAddr,
        /// What our verifier said.
        reason: String,
    },
    /// The peer closed the connection because we presented no client certificate.
    #[error("{addr} requires a client certificate signed by the cluster CA")]
    ClientCertRequired {
        /// The peer.
        addr: SocketAddr,
    },
    /// A TCP connection could not be opened (nothing listens there, no route).
    #[error("connecting to {addr}: {source}")]
    ConnectFailed {
        /// The peer.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// No handshake completed in time (peer down, wrong port, packets dropped).
    #[error("connecting to {addr} timed out after {after:?}")]
    ConnectTimeout {
        /// The peer.
        addr: SocketAddr,
        /// The bound that passed.
        after: Duration,
    },
    /// A request got no answer in time. Its stream was reset, so a peer that had not received
    /// it yet never will; one that had may still act on it.
    #[error("request to {addr} timed out after {after:?} (withdrawn: it takes effect only if the peer had received it already)")]
    RequestTimeout {
        /// The peer.
        addr: SocketAddr,
        /// The bound that passed.
        after: Duration,
    },
    /// The connection failed for a reason other than the ones above.
    #[error("connection to {addr}: {source}")]
    Connection {
        /// The peer.
        addr: SocketAddr,
        /// quinn's reason.
        source: ConnectionError,
    },
    /// The connection was lost mid-stream (classified into the variants above by `request`).
    #[error("connection lost: {0}")]
    Lost(ConnectionError),
    /// A stream ended or was reset before a whole frame arrived.
    #[error("stream error: {0}")]
    Stream(String),
    /// A frame or datagram is above the configured limit.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The peer's handler refused the request.
    #[error("peer answered with an error: {0}")]
    Remote(String),
    /// The peer spoke something we don't understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The ALPN does not carry request streams.
    #[error("{0} does not carry request/response streams")]
    NotAStreamAlpn(Alpn),
    /// The join server refused our token or request.
    #[error("join refused by {addr}: {reason}")]
    JoinRefused {
        /// The seed.
        addr: SocketAddr,
        /// Its reason.
        reason: String,
    },
}

impl TransportError {
    pub(crate) fn from_write(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => Self::Lost(c),
            other => Self::Stream(other.to_string()),
        }
    }

    pub(crate) fn from_read(e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => Self::Lost(c),
            quinn::ReadExactError::FinishedEarly(n) => {
                Self::Stream(format!("stream finished early, {n} bytes into a frame"))
            }
            other => Self::Stream(other.to_string()),
        }
    }

    /// Attaches the peer address and turns a lost connection into its precise reason.
    fn at(self, addr: SocketAddr) -> Self {
        match self {
            Self::Lost(e) => classify(addr, e),
            other => other,
        }
    }
}

fn alert_name(alert: u8) -> &'static str {
    match alert {
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        48 => "unknown_ca",
        49 => "access_denied",
        51 => "decrypt_error",
        80 => "internal_error",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => "other",
    }
}

fn crypto_alert(code: u64) -> Option<u8> {
    (0x100..0x200)
        .contains(&code)
        .then_some((code & 0xff) as u8)
}

/// Maps quinn's view of a failed connection to what an operator needs to read.
pub(crate) fn classify(addr: SocketAddr, e: ConnectionError) -> TransportError {
    match &e {
        ConnectionError::ConnectionClosed(close) => match crypto_alert(u64::from(close.error_code))
        {
            Some(alert) => TransportError::HandshakeRefused {
                addr,
                reason: format!("TLS alert {} ({alert})", alert_name(alert)),
            },
            None => TransportError::Connection { addr, source: e },
        },
        ConnectionError::TransportError(t) if crypto_alert(u64::from(t.code)).is_some() => {
            TransportError::PeerRejected {
                addr,
                reason: t.reason.clone(),
            }
        }
        ConnectionError::ApplicationClosed(close)
            if close.error_code == CLOSE_NO_CLIENT_CERT.into() =>
        {
            TransportError::ClientCertRequired { addr }
        }
        ConnectionError::ApplicationClosed(close) if close.error_code == CLOSE_NO_JOIN.into() => {
            TransportError::JoinRefused {
                addr,
                reason: "this node does not serve joins".into(),
            }
        }
        _ => TransportError::Connection { addr, source: e },
    }
}

/// How a node's endpoint is set up. `new` gives the defaults documented on each field.
#[derive(Clone)]
pub struct TransportConfig {
    /// UDP address to bind (and the address peers dial).
    pub listen: SocketAddr,
    /// The node certificate, key and the cluster CA.
    pub credentials: NodeCredentials,
    /// Largest request or response frame accepted (default 16 MiB): a peer cannot make us
    /// allocate more than this per stream.
    pub max_message_size: usize,
    /// Bound on establishing a connection (default 3 s).
    pub connect_timeout: Duration,
    /// Bound on one request/response exchange (default 10 s).
    pub request_timeout: Duration,
    /// Idle timeout of a QUIC connection (default 15 s); keep-alives go every third of it.
    pub idle_timeout: Duration,
}

impl TransportConfig {
    /// A configuration with the documented defaults.
    pub fn new(listen: SocketAddr, credentials: NodeCredentials) -> Self {
        Self {
            listen,
            credentials,
            max_message_size: 16 << 20,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
        }
    }
}

type ConnCell = Arc<OnceCell<Connection>>;

/// The send half of a request until its response arrives. Dropped before that (the request
/// timed out or its caller went away) it resets the stream: quinn would otherwise finish it
/// and keep retransmitting, so a write reported as failed could reach the leader after a
/// partition heals and be committed after all.
struct WithdrawnUnlessAnswered(Option<quinn::SendStream>);

impl Drop for WithdrawnUnlessAnswered {
    fn drop(&mut self) {
        if let Some(mut send) = self.0.take() {
            // Fails only when the stream is already closed: nothing left to withdraw.
            let _ = send.reset(quinn::VarInt::from_u32(RESET_ABANDONED));
        }
    }
}

struct JoinService {
    ca: tls::ClusterCa,
    validator: Arc<dyn TokenValidator>,
}

struct Inner {
    endpoint: Endpoint,
    config: TransportConfig,
    clients: HashMap<Alpn, quinn::ClientConfig>,
    cache: Mutex<HashMap<(SocketAddr, Alpn), ConnCell>>,
    handlers: RwLock<HashMap<Alpn, StreamHandler>>,
    datagrams: Mutex<Option<mpsc::Sender<Datagram>>>,
    join: RwLock<Option<Arc<JoinService>>>,
}

/// The node's QUIC endpoint. Cheap to clone; [`Transport::close`] stops it for every clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

fn quic_transport_config(idle: Duration) -> Result<Arc<quinn::TransportConfig>, TransportError> {
    let mut t = quinn::TransportConfig::default();
    let idle_timeout = quinn::IdleTimeout::try_from(idle)
        .map_err(|_| TransportError::Protocol(format!("idle timeout {idle:?} is out of range")))?;
    t.max_idle_timeout(Some(idle_timeout));
    t.keep_alive_interval(Some(idle / 3));
    t.datagram_receive_buffer_size(Some(1 << 20));
    Ok(Arc::new(t))
}

pub(crate) fn quinn_client(
    cfg: rustls::ClientConfig,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TransportError> {
    let quic = QuicClientConfig::try_from(cfg)
        .map_err(|e| TransportError::Protocol(format!("QUIC client config: {e}")))?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(transport);
    Ok(c)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Transport {
    /// Binds the node's UDP port and starts serving every ALPN. Must run inside a tokio runtime.
    pub fn bind(config: TransportConfig) -> Result<Self, TransportError> {
        let creds = &config.credentials;
        let alpns: Vec<&[u8]> = Alpn::ALL.iter().map(|a| a.as_bytes()).collect();
        let qt = quic_transport_config(config.idle_timeout)?;
        let server_tls = tls::server_config(creds, &alpns)?;
        let quic = QuicServerConfig::try_from(server_tls)
            .map_err(|e| TransportError::Protocol(format!("QUIC server config: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(qt.clone());
        // The stateless-reset key is derived from the node's private key, so it survives a
        // restart: when a restarted node receives packets for a connection its previous
        // process had, it answers with a reset the peer recognizes, and the peer drops the dead
        // connection at once instead of waiting out the idle timeout (which otherwise delays a
        // rejoin by ~15 s: the peer keeps answering gossip on the dead connection).
        let reset_seed = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"corral quic stateless reset v1".as_slice(), &creds.key_der].concat(),
        );
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_seed.as_ref());
        let bind_err = |source| TransportError::Bind {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_err)?;
        // Connection ids carry a checksum keyed per endpoint; the key must survive a restart
        // too, or the new process drops the old connection's packets as invalid instead of
        // answering them with the reset.
        let cid_key = u64::from_be_bytes(reset_seed.as_ref()[..8].try_into().unwrap_or([0; 8]));
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let endpoint = Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        let mut clients = HashMap::new();
        for alpn in [Alpn::Gossip, Alpn::Raft, Alpn::Admin] {
            clients.insert(
                alpn,
                quinn_client(tls::client_config(creds, alpn.as_bytes())?, qt.clone())?,
            );
        }
        let inner = Arc::new(Inner {
            endpoint,
            config,
            clients,
            cache: Mutex::new(HashMap::new()),
            handlers: RwLock::new(HashMap::new()),
            datagrams: Mutex::new(None),
            join: RwLock::new(None),
        });
        let t = Transport { inner };
        let acceptor = t.clone();
        tokio::spawn(async move { acceptor.accept_loop().await });
        Ok(t)
    }

    /// Builds a transport from an existing quinn client config set, for tests that need a
    /// client with credentials the server must refuse.
    #[cfg(test)]
    pub(crate) fn with_client_config(&self, alpn: Alpn, cfg: quinn::ClientConfig) -> Self {
        let mut clients = self.inner.clients.clone();
        clients.insert(alpn, cfg);
        Transport {
            inner: Arc::new(Inner {
                endpoint: self.inner.endpoint.clone(),
                config: self.inner.config.clone(),
                clients,
                cache: Mutex::new(HashMap::new()),
                handlers: RwLock::new(HashMap::new()),
                datagrams: Mutex::new(None),
                join: RwLock::new(None),
            }),
        }
    }

    /// The bound UDP address (useful when binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        let addr = self.inner.config.listen;
        self.inner
            .endpoint
            .local_addr()
            .map_err(|source| TransportError::Bind { addr, source })
    }

    /// This node's name (from its certificate).
    pub fn node_name(&self) -> &str {
        &self.inner.config.credentials.name
    }

    /// Registers the handler for requests arriving on `alpn` (Raft or Admin); replaces any
    /// previous one. Requests that arrive before registration are answered with an error.
    pub fn register_handler(
        &self,
        alpn: Alpn,
        handler: StreamHandler,
    ) -> Result<(), TransportError> {
        if !alpn.carries_requests() {
            return Err(TransportError::NotAStreamAlpn(alpn));
        }
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(alpn, handler);
        Ok(())
    }

    /// Lets this node issue certificates to joiners whose secret `validator` accepts.
    pub fn serve_joins(&self, ca: tls::ClusterCa, validator: Arc<dyn TokenValidator>) {
        *self.inner.join.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(JoinService { ca, validator }));
    }

    /// Sends one request on a new stream of the cached connection to `addr` and waits for the
    /// response. Frames are `u32` length-prefixed and bounded by `max_message_size`.
    pub async fn request(
        &self,
        addr: SocketAddr,
        alpn: Alpn,
        body: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        if !alpn.carries_requests() {
            return Err(TransportError::NotAStreamAlpn(alpn));
        }
        let limit = self.inner.config.max_message_size;
        if body.len() > limit {
            return Err(TransportError::TooLarge {
                len: body.len(),
                limit,
            });
        }
        let after = self.inner.config.request_timeout;
        let mut retried = false;
        loop {
            let (conn, fresh) = self.connection(addr, alpn).await?;
            let res = tokio::time::timeout(after, Self::request_on(&conn, body, limit)).await;
            match res {
                Err(_) => return Err(TransportError::RequestTimeout { addr, after }),
                Ok(Err(TransportError::Lost(e))) => {
                    self.evict(addr, alpn, &conn);
                    // A cached connection may have died quietly (peer restarted): retry once
                    // on a fresh one. A fresh one failing is the real answer.
                    if fresh || retried {
                        return Err(classify(addr, e));
                    }
                    debug!(%addr, %alpn, error = %e, "cached connection was dead, redialing");
                    retried = true;
                }
                Ok(r) => return r.map_err(|e| e.at(addr)),
            }
        }
    }

    async fn request_on(
        conn: &Connection,
        body: &[u8],
        limit: usize,
    ) -> Result<Vec<u8>, TransportError> {
        let (send, mut recv) = conn.open_bi().await.map_err(TransportError::Lost)?;
        let mut send = WithdrawnUnlessAnswered(Some(send));
        let stream = send.0.as_mut().expect("set above");
        framing::write_frame(stream, body, limit).await?;
        stream
            .finish()
            .map_err(|e| TransportError::Stream(e.to_string()))?;
        // The response carries one status byte on top of the body.
        let frame = framing::read_frame(&mut recv, limit.saturating_add(1)).await?;
        send.0 = None;
        framing::decode_response(frame)
    }

    /// Sends one QUIC datagram on the cached gossip connection to `addr`.
    pub async fn send_datagram(&self, addr: SocketAddr, data: Bytes) -> Result<(), TransportError> {
        let mut retried = false;
        loop {
            let (conn, fresh) = self.connection(addr, Alpn::Gossip).await?;
            match conn.send_datagram(data.clone()) {
                Ok(()) => return Ok(()),
                Err(quinn::SendDatagramError::TooLarge) => {
                    return Err(TransportError::TooLarge {
                        len: data.len(),
                        limit: conn.max_datagram_size().unwrap_or(0),
                    });
                }
                Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                    self.evict(addr, Alpn::Gossip, &conn);
                    if fresh || retried {
                        return Err(classify(addr, e));
                    }
                    retried = true;
                }
                Err(e) => return Err(TransportError::Protocol(format!("datagram to {addr}: {e}"))),
            }
        }
    }

    /// Hands out the stream of gossip datagrams received from every peer (bounded: when the
    /// consumer lags, datagrams are dropped, as UDP would). A second call replaces the first:
    /// [`crate::Swim::start`] calls it, so the node itself should not while gossip runs.
    pub fn take_datagrams(&self, capacity: usize) -> mpsc::Receiver<Datagram> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        *lock(&self.inner.datagrams) = Some(tx);
        rx
    }

    /// Closes every connection and the endpoint, waiting at most `bound` for peers to be told.
    pub async fn close(&self, bound: Duration) {
        self.inner
            .endpoint
            .close(CLOSE_SHUTDOWN.into(), b"node shutting down");
        lock(&self.inner.cache).clear();
        let _ = tokio::time::timeout(bound, self.inner.endpoint.wait_idle()).await;
    }

    /// Whether a connection to `addr` for `alpn` is open now (established, not closed). Lets a
    /// caller whose own deadline passed tell a peer that is slow to answer on a live
    /// connection from one that cannot be reached at all.
    pub fn is_connected(&self, addr: SocketAddr, alpn: Alpn) -> bool {
        lock(&self.inner.cache)
            .get(&(addr, alpn))
            .and_then(|c| c.get())
            .is_some_and(|c| c.close_reason().is_none())
    }

    async fn connection(
        &self,
        addr: SocketAddr,
        alpn: Alpn,
    ) -> Result<(Connection, bool), TransportError> {
        for _ in 0..2 {
            let cell = lock(&self.inner.cache)
                .entry((addr, alpn))
                .or_default()
                .clone();
            let mut fresh = false;
            let res = cell
                .get_or_try_init(|| {
                    fresh = true;
                    self.connect(addr, alpn)
                })
                .await;
            match res {
                Ok(conn) if conn.close_reason().is_none() => return Ok((conn.clone(), fresh)),
                Ok(conn) => {
                    let conn = conn.clone();
                    self.evict(addr, alpn, &conn);
                }
                Err(e) => {
                    self.evict_cell(addr, alpn, &cell);
                    return Err(e);
                }
            }
        }
        // Two cached connections in a row were already closed: dial without the cache.
        Ok((self.connect(addr, alpn).await?, true))
    }

    async fn connect(&self, addr: SocketAddr, alpn: Alpn) -> Result<Connection, TransportError> {
        let cfg = self
            .inner
            .clients
            .get(&alpn)
            .cloned()
            .ok_or(TransportError::NotAStreamAlpn(alpn))?;
        let connecting = self
            .inner
            .endpoint
            .connect_with(cfg, addr, CLUSTER_SERVER_NAME)
            .map_err(|e| TransportError::Protocol(format!("cannot dial {addr}: {e}")))?;
        let after = self.inner.config.connect_timeout;
        let conn = tokio::time::timeout(after, connecting)
            .await
            .map_err(|_| TransportError::ConnectTimeout { addr, after })?
            .map_err(|e| classify(addr, e))?;
        debug!(%addr, %alpn, "connected");
        if alpn == Alpn::Gossip {
            // Peers may answer on the connection we opened: read it too.
            let t = self.clone();
            let c = conn.clone();
            tokio::spawn(async move { t.read_datagrams(c).await });
        }
        Ok(conn)
    }

    fn evict(&self, addr: SocketAddr, alpn: Alpn, conn: &Connection) {
        let mut cache = lock(&self.inner.cache);
        if cache
            .get(&(addr, alpn))
            .and_then(|c| c.get())
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            cache.remove(&(addr, alpn));
        }
    }

    fn evict_cell(&self, addr: SocketAddr, alpn: Alpn, cell: &ConnCell) {
        let mut cache = lock(&self.inner.cache);
        if cache
            .get(&(addr, alpn))
            .is_some_and(|c| Arc::ptr_eq(c, cell))
        {
            cache.remove(&(addr, alpn));
        }
    }

    async fn accept_loop(self) {
        while let Some(incoming) = self.inner.endpoint.accept().await {
            let t = self.clone();
            tokio::spawn(async move { t.serve_connection(incoming).await });
        }
        debug!("endpoint closed, accept loop done");
    }

    async fn serve_connection(self, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                warn!(%remote, reason = %e, "refused incoming QUIC handshake");
                return;
            }
        };
        let alpn = conn
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol.as_deref().and_then(Alpn::from_bytes));
        let Some(alpn) = alpn else {
            warn!(%remote, "refused connection: no known ALPN");
            conn.close(CLOSE_BAD_ALPN.into(), b"unknown ALPN");
            return;
        };
        let name = tls::peer_node_name(&conn);
        match (alpn, name) {
            (Alpn::Join, _) => join::serve(&self, conn).await,
            (_, None) => {
                warn!(%remote, %alpn, "refused connection: no client certificate (only the join ALPN may omit it)");
                conn.close(CLOSE_NO_CLIENT_CERT.into(), b"client certificate required");
            }
            (Alpn::Gossip, Some(name)) => {
                debug!(%remote, peer = %name, "gossip connection accepted");
                self.adopt_gossip(remote, &conn);
                self.read_datagrams(conn).await
            }
            (_, Some(name)) => {
                self.serve_streams(conn, alpn, Peer { addr: remote, name })
                    .await
            }
        }
    }

    /// Sends this node's own datagrams to `remote` on the gossip connection `remote` opened,
    /// unless a connection to it is already cached or being dialled. With one connection per
    /// pair each side's datagrams carry the acknowledgements of the other's; with one per
    /// direction every datagram is answered by an ACK-only packet. (A node's QUIC endpoint
    /// sends from its bind address, which is also the address peers dial.)
    fn adopt_gossip(&self, remote: SocketAddr, conn: &Connection) {
        lock(&self.inner.cache)
            .entry((remote, Alpn::Gossip))
            .or_insert_with(|| Arc::new(OnceCell::new_with(Some(conn.clone()))));
    }

    async fn read_datagrams(&self, conn: Connection) {
        // The name the peer's certificate proves, so the SWIM driver can check that a packet's
        // claimed sender is the node that sent it.
        let Some(peer) = tls::peer_node_name(&conn).map(Arc::<str>::from) else {
            debug!(remote = %conn.remote_address(), "datagrams from a peer without a node certificate ignored");
            return;
        };
        while let Ok(data) = conn.read_datagram().await {
            let tx = lock(&self.inner.datagrams).clone();
            if let Some(tx) = tx {
                if tx
                    .try_send(Datagram {
                        peer: peer.clone(),
                        data,
                    })
                    .is_err()
                {
                    debug!(remote = %conn.remote_address(), "gossip consumer lagging or gone, datagram dropped");
                }
            }
        }
    }

    async fn serve_streams(&self, conn: Connection, alpn: Alpn, peer: Peer) {
        loop {
            let (mut send, mut recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    debug!(remote = %peer.addr, %alpn, reason = %e, "stream connection ended");
                    return;
                }
            };
            let t = self.clone();
            let peer = peer.clone();
            tokio::spawn(async move {
                let limit = t.inner.config.max_message_size;
                let response = match framing::read_frame(&mut recv, limit).await {
                    Err(e) => {
                        warn!(remote = %peer.addr, %alpn, error = %e, "bad request frame");
                        Err(format!("bad request frame: {e}"))
                    }
                    Ok(req) => {
                        let handler = t
                            .inner
                            .handlers
                            .read()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&alpn)
                            .cloned();
                        match handler {
                            Some(h) => h(peer.clone(), req).await,
                            None => Err(format!("no handler registered for {alpn} on this node")),
                        }
                    }
                };
                let body = framing::encode_response_within(response, limit);
                if let Err(e) =
                    framing::write_frame(&mut send, &body, limit.saturating_add(1)).await
                {
                    debug!(remote = %peer.addr, error = %e, "could not send response");
                }
                let _ = send.finish();
            });
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node", &self.node_name())
            .field("listen", &self.inner.config.listen)
            .finish()
    }
}
