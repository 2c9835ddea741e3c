//! Real servers on loopback for the checker tests: HTTP(S), UDP echo, DNS, a TCP listener with a
//! full accept queue.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use check::def::{HttpCheck, Timing};

/// Timing for probe tests: short timeouts, no retries.
pub fn fast() -> Timing {
    let mut t = Timing::quick(Duration::from_secs(1));
    t.connect_timeout = Duration::from_millis(500);
    t.read_timeout = Some(Duration::from_millis(400));
    t
}

pub fn http_def(target: SocketAddr) -> HttpCheck {
    HttpCheck { target, path: "/".into(), status: vec![], digest: None, virtualhost: None, timing: fast() }
}

/// What the test HTTP server answers.
#[derive(Clone)]
pub enum Reply {
    /// A complete response.
    Full { status: u16, body: Vec<u8>, chunked: bool },
    /// A head announcing `content_length` body bytes, then nothing (slowloris).
    HeadThenStall { content_length: usize },
    /// Accept, read the request, never answer.
    Silent,
    /// These bytes, then close.
    Raw(Vec<u8>),
}

pub fn ok_body(body: &str) -> Reply {
    Reply::Full { status: 200, body: body.as_bytes().to_vec(), chunked: false }
}

pub struct HttpServer {
    pub addr: SocketAddr,
    /// Each request head received, as text.
    pub requests: mpsc::UnboundedReceiver<String>,
    /// SNI seen by the TLS server for each handshake (None: no SNI sent).
    pub sni: mpsc::UnboundedReceiver<Option<String>>,
}

pub async fn http_server(bind: &str, reply: Reply, tls: Option<Arc<rustls::ServerConfig>>) -> HttpServer {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (req_tx, requests) = mpsc::unbounded_channel();
    let (sni_tx, sni) = mpsc::unbounded_channel();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (reply, req_tx, sni_tx, acceptor) = (reply.clone(), req_tx.clone(), sni_tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                match acceptor {
                    None => serve(stream, reply, req_tx).await,
                    Some(acc) => {
                        let Ok(tls) = acc.accept(stream).await else { return };
                        let _ = sni_tx.send(tls.get_ref().1.server_name().map(str::to_string));
                        serve(tls, reply, req_tx).await
                    }
                }
            });
        }
    });
    HttpServer { addr, requests, sni }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, reply: Reply, req_tx: mpsc::UnboundedSender<String>) {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let _ = req_tx.send(String::from_utf8_lossy(&head).into_owned());
    match reply {
        Reply::Full { status, body, chunked } => {
            let mut out = format!("HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\n").into_bytes();
            if chunked {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for part in body.chunks(7) {
                    out.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
                    out.extend_from_slice(part);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
            } else {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(&body);
            }
            let _ = s.write_all(&out).await;
            let _ = s.shutdown().await;
        }
        Reply::HeadThenStall { content_length } => {
            let _ = s
                .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {content_length}\r\n\r\nsome").as_bytes())
                .await;
            let _ = s.flush().await;
            std::future::pending::<()>().await;
        }
        Reply::Silent => std::future::pending::<()>().await,
        Reply::Raw(bytes) => {
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        }
    }
}

/// A test PKI: a CA and a server certificate it signed for `localhost`, `backend.test` and
/// 127.0.0.1.
pub struct Pki {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A distinct name per CA, so "another CA" is an unknown issuer, not a bad signature.
    static N: AtomicUsize = AtomicUsize::new(0);
    let cn = format!("corral check test CA {}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "backend.test".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Pki { ca_pem: ca_cert.pem(), server: Arc::new(server) }
}

/// UDP server answering each datagram with `answer(request)`; `None` means stay silent.
pub async fn udp_server(bind: &str, answer: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let sock = UdpSocket::bind(bind).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else { return };
            let _ = tx.send(buf[..n].to_vec());
            if let Some(out) = answer(&buf[..n]) {
                let _ = sock.send_to(&out, from).await;
            }
        }
    });
    (addr, rx)
}

/// A DNS reply to `query` (RFC 1035 §4.1) with `rcode` and one answer record per address, the
/// owner name a compression pointer to the question.
pub fn dns_reply(query: &[u8], rcode: u8, addrs: &[std::net::IpAddr]) -> Vec<u8> {
    let mut end = 12;
    while query[end] != 0 {
        end += 1 + query[end] as usize;
    }
    end += 5; // root label, QTYPE, QCLASS
    let mut out = query[..2].to_vec();
    out.extend_from_slice(&[0x81, 0x80 | rcode, 0, 1]);
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..end]);
    for a in addrs {
        out.extend_from_slice(&[0xc0, 0x0c]);
        match a {
            std::net::IpAddr::V4(v4) => {
                out.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                out.extend_from_slice(&v4.octets());
            }
            std::net::IpAddr::V6(v6) => {
                out.extend_from_slice(&[0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    out
}

/// A listener whose accept queue is full (listen(0), never accepted, filled by our own
/// connections): further SYNs are dropped, so a connect to it times out. Keep the returned
/// values alive for as long as the test needs it.
pub async fn full_backlog() -> (socket2::Socket, SocketAddr, Vec<TcpStream>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("filling the backlog: {e}"),
            Err(_) => return (sock, addr, fillers),
        }
    }
    panic!("the accept queue never filled up");
}

/// A TCP server counting the connections it accepts.
pub async fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, count)
}
