//! Transport tests on real QUIC over 127.0.0.1 (ports picked by the OS).

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::tls::{anonymous_client_config, ClusterCa, JoinToken, MemoryTokens};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn node(creds: NodeCredentials) -> Transport {
    node_with(creds, Duration::from_secs(10))
}

fn node_with(creds: NodeCredentials, request_timeout: Duration) -> Transport {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("gossip=info")
        .try_init();
    let mut cfg = TransportConfig::new(any_port(), creds);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.request_timeout = request_timeout;
    cfg.max_message_size = 4096;
    Transport::bind(cfg).unwrap()
}

fn echo_handler() -> StreamHandler {
    Arc::new(|peer: Peer, req: Vec<u8>| {
        Box::pin(async move {
            if req == b"fail" {
                return Err("handler says no".to_string());
            }
            let mut out = format!("{}:", peer.name).into_bytes();
            out.extend(req);
            Ok(out)
        })
    })
}

/// Two members of one cluster CA, `b` answering Raft requests with [`echo_handler`]: `(a, b,
/// b's address)`. Keep `b` alive for the test.
fn echo_pair() -> (Transport, Transport, SocketAddr) {
    let ca = ClusterCa::generate("t").unwrap();
    let a = node(ca.issue("node-a").unwrap());
    let b = node(ca.issue("node-b").unwrap());
    b.register_handler(Alpn::Raft, echo_handler()).unwrap();
    let b_addr = b.local_addr().unwrap();
    (a, b, b_addr)
}

const T: Duration = Duration::from_secs(10);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .expect("test step exceeded its time bound")
}

#[tokio::test]
async fn request_response_between_members_names_the_peer() {
    let (a, b, b_addr) = echo_pair();
    let resp = bounded(a.request(b_addr, Alpn::Raft, b"hello"))
        .await
        .unwrap();
    assert_eq!(resp, b"node-a:hello");
    // Second request reuses the cached connection.
    let resp = bounded(a.request(b_addr, Alpn::Raft, b"again"))
        .await
        .unwrap();
    assert_eq!(resp, b"node-a:again");
    assert_eq!(lock(&a.inner.cache).len(), 1);
    // Handler refusal comes back as text.
    let e = bounded(a.request(b_addr, Alpn::Raft, b"fail"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TransportError::Remote(m) if m.contains("handler says no")),
        "{e}"
    );
    // No admin handler registered on b.
    let e = bounded(a.request(b_addr, Alpn::Admin, b"x"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no handler registered for corral-admin/1"),
        "{e}"
    );
    // Size limit on our side and on theirs.
    let e = bounded(a.request(b_addr, Alpn::Raft, &vec![0u8; 5000]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::TooLarge {
                len: 5000,
                limit: 4096
            }
        ),
        "{e}"
    );
    // Gossip is not a stream ALPN.
    assert!(matches!(
        a.register_handler(Alpn::Gossip, echo_handler()),
        Err(TransportError::NotAStreamAlpn(_))
    ));
    a.close(Duration::from_millis(200)).await;
    b.close(Duration::from_millis(200)).await;
}

/// A request/response stream ends with both FINs read: no STOP_SENDING from either side.
/// Dropping a receive stream before its end made quinn send one (an extra ack-eliciting
/// packet per request and per response, each acknowledged in turn).
#[tokio::test]
async fn requests_end_their_streams_without_stop_sending() {
    let (a, _b, b_addr) = echo_pair();
    for i in 0..20 {
        let body = format!("req {i}");
        let resp = bounded(a.request(b_addr, Alpn::Raft, body.as_bytes()))
            .await
            .unwrap();
        assert_eq!(resp, format!("node-a:{body}").into_bytes());
    }
    let conn = lock(&a.inner.cache)
        .get(&(b_addr, Alpn::Raft))
        .and_then(|c| c.get().cloned())
        .expect("cached connection");
    // b's frames arrive a little after its responses: wait for them to settle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = conn.stats();
    assert_eq!(
        st.frame_tx.stream, 20,
        "one STREAM frame per request: {:?}",
        st.frame_tx
    );
    assert_eq!(
        st.frame_tx.stop_sending, 0,
        "client sent STOP_SENDING: {:?}",
        st.frame_tx
    );
    assert_eq!(
        st.frame_rx.stop_sending, 0,
        "server sent STOP_SENDING: {:?}",
        st.frame_rx
    );
}

/// A request stream holds one frame: anything after it is refused with a reason.
#[tokio::test]
async fn bytes_after_the_request_frame_are_refused() {
    let (a, _b, b_addr) = echo_pair();
    let (conn, _) = bounded(a.connection(b_addr, Alpn::Raft)).await.unwrap();
    let (mut send, mut recv) = bounded(conn.open_bi()).await.unwrap();
    framing::write_frame(&mut send, b"one", 4096).await.unwrap();
    send.write_all(b"junk").await.unwrap();
    send.finish().unwrap();
    let frame = bounded(framing::read_frame(&mut recv, 4097)).await.unwrap();
    let e = framing::decode_response(frame).unwrap_err();
    assert!(e.to_string().contains("bytes after the frame"), "{e}");
}

/// Datagrams back to a peer that dialled us go on its connection: one connection per pair,
/// so each side's datagrams carry the other's acknowledgements.
#[tokio::test]
async fn gossip_replies_use_the_connection_the_peer_opened() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = node(ca.issue("node-a").unwrap());
    let b = node(ca.issue("node-b").unwrap());
    let (mut rx_a, mut rx_b) = (a.take_datagrams(8), b.take_datagrams(8));
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    bounded(a.send_datagram(b_addr, Bytes::from_static(b"ping")))
        .await
        .unwrap();
    assert_eq!(&bounded(rx_b.recv()).await.unwrap().data[..], b"ping");
    bounded(b.send_datagram(a_addr, Bytes::from_static(b"ack")))
        .await
        .unwrap();
    let got = bounded(rx_a.recv()).await.unwrap();
    assert_eq!((&got.data[..], &*got.peer), (&b"ack"[..], "node-b"));
    assert_eq!(
        a.inner.endpoint.open_connections(),
        1,
        "a has more than the one connection it dialled"
    );
    assert_eq!(
        b.inner.endpoint.open_connections(),
        1,
        "b dialled a second connection back to a"
    );
    a.close(Duration::from_millis(200)).await;
    b.close(Duration::from_millis(200)).await;
}

/// A UDP relay in front of `to` that drops every packet while `cut` is set: a partition
/// between two endpoints on loopback. Its task ends with the test's runtime.
async fn relay(to: SocketAddr) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let front = tokio::net::UdpSocket::bind(any_port()).await.unwrap();
    let back = tokio::net::UdpSocket::bind(any_port()).await.unwrap();
    back.connect(to).await.unwrap();
    let addr = front.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let cutting = cut.clone();
    tokio::spawn(async move {
        let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
        let mut client = None;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut up) => {
                    client = Some(from);
                    if !cutting.load(Ordering::Relaxed) {
                        let _ = back.send(&up[..n]).await;
                    }
                }
                Ok(n) = back.recv(&mut down) => {
                    if let (Some(c), false) = (client, cutting.load(Ordering::Relaxed)) {
                        let _ = front.send_to(&down[..n], c).await;
                    }
                }
            }
        }
    });
    (addr, cut)
}

/// A request that timed out during a partition is withdrawn: when the partition heals, the
/// peer never receives it. (quinn finishes a dropped stream and retransmits it, so a write
/// reported as failed reached the leader after healing and was committed.)
#[tokio::test]
async fn a_timed_out_request_is_not_delivered_after_the_partition_heals() {
    use std::sync::atomic::Ordering;
    let ca = ClusterCa::generate("t").unwrap();
    let a = node_with(ca.issue("node-a").unwrap(), Duration::from_millis(700));
    let b = node(ca.issue("node-b").unwrap());
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    b.register_handler(
        Alpn::Raft,
        Arc::new(move |_peer: Peer, req: Vec<u8>| {
            lock(&record).push(String::from_utf8_lossy(&req).into_owned());
            Box::pin(async { Ok(b"ok".to_vec()) })
        }),
    )
    .unwrap();
    let (via, cut) = relay(b.local_addr().unwrap()).await;
    bounded(a.request(via, Alpn::Raft, b"before"))
        .await
        .unwrap();

    cut.store(true, Ordering::Relaxed);
    let e = bounded(a.request(via, Alpn::Raft, b"abandoned"))
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::RequestTimeout { .. }), "{e}");
    assert!(e.to_string().contains("withdrawn"), "{e}");
    cut.store(false, Ordering::Relaxed);

    // The connection survives the short cut; the next request goes through (retried while
    // quinn's loss recovery backs off).
    let mut healed = false;
    for _ in 0..10 {
        if bounded(a.request(via, Alpn::Raft, b"after")).await.is_ok() {
            healed = true;
            break;
        }
    }
    assert!(healed, "no request went through after the partition healed");
    // Give a retransmission of the abandoned request every chance to land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = lock(&seen).clone();
    assert_eq!(seen.first().map(String::as_str), Some("before"), "{seen:?}");
    assert!(seen.iter().any(|r| r == "after"), "{seen:?}");
    assert!(
        !seen.iter().any(|r| r == "abandoned"),
        "the withdrawn request was delivered: {seen:?}"
    );
}

#[tokio::test]
async fn is_connected_tells_a_live_connection_from_none() {
    let (a, b, b_addr) = echo_pair();
    assert!(!a.is_connected(b_addr, Alpn::Raft), "no connection before the first request");
    bounded(a.request(b_addr, Alpn::Raft, b"hello")).await.unwrap();
    assert!(a.is_connected(b_addr, Alpn::Raft));
    assert!(!a.is_connected(b_addr, Alpn::Admin), "per ALPN");
    bounded(b.close(Duration::from_secs(2))).await;
    // The peer's CONNECTION_CLOSE reaches us and closes the cached connection.
    let closed = bounded(async {
        while a.is_connected(b_addr, Alpn::Raft) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    closed.await;
}

#[tokio::test]
async fn a_node_of_another_ca_is_refused() {
    let ca = ClusterCa::generate("t").unwrap();
    let rogue_ca = ClusterCa::generate("rogue").unwrap();
    let server = node(ca.issue("node-a").unwrap());
    server.register_handler(Alpn::Raft, echo_handler()).unwrap();
    let addr = server.local_addr().unwrap();

    // Entirely foreign node: it refuses our server first (unknown issuer).
    let rogue = node(rogue_ca.issue("rogue").unwrap());
    let e = bounded(rogue.request(addr, Alpn::Raft, b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TransportError::PeerRejected { reason, .. } if reason.contains("UnknownIssuer")),
        "{e}"
    );

    // A node that trusts our CA but holds a cert from another CA: the server refuses it.
    let mut sneaky = rogue_ca.issue("sneaky").unwrap();
    sneaky.ca_der = ca.cert_der().clone();
    let sneaky = node(sneaky);
    let e = bounded(sneaky.request(addr, Alpn::Raft, b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TransportError::HandshakeRefused { reason, .. } if reason.contains("unknown_ca") || reason.contains("bad_certificate")),
        "{e}"
    );
    server.close(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_node_without_certificate_is_refused() {
    let ca = ClusterCa::generate("t").unwrap();
    let server = node(ca.issue("node-a").unwrap());
    server.register_handler(Alpn::Raft, echo_handler()).unwrap();
    let addr = server.local_addr().unwrap();
    let other = node(ca.issue("node-b").unwrap());
    let anon_cfg = quinn_client(
        anonymous_client_config(ca.cert_der(), Alpn::Raft.as_bytes()).unwrap(),
        quic_transport_config(Duration::from_secs(5)).unwrap(),
    )
    .unwrap();
    let anon = other.with_client_config(Alpn::Raft, anon_cfg);
    let e = bounded(anon.request(addr, Alpn::Raft, b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, TransportError::ClientCertRequired { .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("requires a client certificate"),
        "{e}"
    );
    server.close(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn join_with_a_valid_token_gets_a_working_certificate() {
    let ca = ClusterCa::generate("t").unwrap();
    let token = JoinToken::generate(ca.fingerprint()).unwrap();
    let seed = node(ca.issue("node-a").unwrap());
    seed.register_handler(Alpn::Admin, echo_handler()).unwrap();
    let tokens = Arc::new(MemoryTokens::default());
    tokens.insert(&token.secret);
    let fp = ca.fingerprint();
    seed.serve_joins(ca, tokens);
    let seed_addr = seed.local_addr().unwrap();

    let token: JoinToken = token.to_string().parse().unwrap();
    let creds = bounded(join_cluster(seed_addr, &token, "node-new"))
        .await
        .unwrap();
    assert_eq!(creds.name, "node-new");
    assert_eq!(crate::tls::Fingerprint::of(&creds.ca_der), fp);
    assert_eq!(
        crate::tls::cert_node_name(&creds.cert_der).as_deref(),
        Some("node-new")
    );

    // The issued certificate is accepted by the cluster for member ALPNs.
    let joined = node(creds);
    let resp = bounded(joined.request(seed_addr, Alpn::Admin, b"hi"))
        .await
        .unwrap();
    assert_eq!(resp, b"node-new:hi");
    seed.close(Duration::from_millis(200)).await;
    joined.close(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn join_with_a_wrong_secret_or_fingerprint_is_refused() {
    let ca = ClusterCa::generate("t").unwrap();
    let good = JoinToken::generate(ca.fingerprint()).unwrap();
    let seed = node(ca.issue("node-a").unwrap());
    let tokens = Arc::new(MemoryTokens::default());
    tokens.insert(&good.secret);
    let fp = ca.fingerprint();
    seed.serve_joins(ca, tokens);
    let addr = seed.local_addr().unwrap();

    let wrong_secret = JoinToken {
        fingerprint: fp,
        secret: "not-the-secret".into(),
    };
    let e = bounded(join_cluster(addr, &wrong_secret, "node-x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TransportError::JoinRefused { reason, .. } if reason.contains("unknown or revoked join token")),
        "{e}"
    );

    let other_ca = ClusterCa::generate("other").unwrap();
    let wrong_fp = JoinToken {
        fingerprint: other_ca.fingerprint(),
        secret: good.secret.clone(),
    };
    let e = bounded(join_cluster(addr, &wrong_fp, "node-x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TransportError::PeerRejected { reason, .. } if reason.contains("does not match the join token fingerprint")),
        "{e}"
    );

    // A bad name is refused before any packet is sent.
    let e = bounded(join_cluster(addr, &good, "Bad Name"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid node name"), "{e}");
    seed.close(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_node_without_join_service_refuses_joins() {
    let ca = ClusterCa::generate("t").unwrap();
    let token = JoinToken::generate(ca.fingerprint()).unwrap();
    let seed = node(ca.issue("node-a").unwrap());
    let e = bounded(join_cluster(seed.local_addr().unwrap(), &token, "node-x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TransportError::JoinRefused { reason, .. } if reason.contains("does not serve joins")),
        "{e}"
    );
    seed.close(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn unreachable_peer_times_out_clearly() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = node(ca.issue("node-a").unwrap());
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let e = bounded(a.request(silent.local_addr().unwrap(), Alpn::Raft, b"x"))
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::ConnectTimeout { .. }), "{e}");
    a.close(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn datagrams_reach_the_consumer() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = node(ca.issue("node-a").unwrap());
    let b = node(ca.issue("node-b").unwrap());
    let mut rx = b.take_datagrams(8);
    bounded(a.send_datagram(b.local_addr().unwrap(), Bytes::from_static(b"ping")))
        .await
        .unwrap();
    let d = bounded(rx.recv()).await.unwrap();
    assert_eq!(d.data, Bytes::from_static(b"ping"));
    assert_eq!(&*d.peer, "node-a");
    let e = bounded(a.send_datagram(b.local_addr().unwrap(), Bytes::from(vec![0u8; 4000])))
        .await
        .unwrap_err();
    assert!(
        matches!(e, TransportError::TooLarge { len: 4000, limit } if limit > 1000 && limit < 1500),
        "{e}"
    );
    a.close(Duration::from_millis(200)).await;
    b.close(Duration::from_millis(200)).await;
}
