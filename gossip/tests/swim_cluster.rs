//! Five real gossip members on 127.0.0.1 (QUIC, mTLS, foca), joined through one seed:
//! everyone sees everyone, a crashed member is seen Down within the configured bound, a
//! member that leaves is seen Left, and metadata spreads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gossip::tls::ClusterCa;
use gossip::{MemberEvent, MemberState, NodeId, Swim, SwimConfig, Transport, TransportConfig};

struct Member {
    swim: Option<Swim>,
    transport: Transport,
    id: NodeId,
    events: Arc<Mutex<Vec<MemberEvent>>>,
    config: SwimConfig,
    transport_credentials: gossip::tls::NodeCredentials,
}

fn saw(m: &Member, pred: impl Fn(&MemberEvent) -> bool) -> bool {
    m.events.lock().unwrap().iter().any(pred)
}

async fn wait_until(what: &str, bound: Duration, mut cond: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_cluster(n: usize) -> Vec<Member> {
    let ca = ClusterCa::generate("swim-test").unwrap();
    let mut members: Vec<Member> = Vec::new();
    for i in 0..n {
        let seed = members.first().map(|m| m.id.addr);
        members.push(start_member(&ca, &format!("node-{i}"), seed, |_| {}));
    }
    members
}

/// One member joining through `seed` (none: the first), its configuration adjusted by `tweak`.
fn start_member(
    ca: &ClusterCa,
    name: &str,
    seed: Option<std::net::SocketAddr>,
    tweak: impl Fn(&mut SwimConfig),
) -> Member {
    let creds = ca.issue(name).unwrap();
    let transport = Transport::bind(TransportConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        creds.clone(),
    ))
    .unwrap();
    let id = NodeId::fresh(name, transport.local_addr().unwrap());
    let mut config = SwimConfig::new(id.clone(), seed.into_iter().collect());
    tweak(&mut config);
    let (swim, mut rx) = Swim::start(&transport, config.clone()).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            sink.lock().unwrap().push(ev);
        }
    });
    Member {
        swim: Some(swim),
        transport,
        id,
        events,
        config,
        transport_credentials: creds,
    }
}

async fn alive_peers(m: &Member) -> Vec<String> {
    let Some(swim) = &m.swim else { return vec![] };
    let mut names: Vec<String> = swim
        .members()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.state == MemberState::Alive)
        .map(|i| i.id.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_join_detect_crash_and_leave() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("gossip=info")
        .try_init();
    tokio::time::timeout(Duration::from_secs(90), scenario())
        .await
        .expect("scenario exceeded 90 s");
}

async fn scenario() {
    const N: usize = 5;
    let mut nodes = start_cluster(N).await;
    let bound = nodes[0].config.detection_bound(N);
    eprintln!("detection bound for {N} nodes: {bound:?}");

    // 1. Everyone sees the 4 others alive.
    let took = wait_until(
        "all 5 see each other alive",
        Duration::from_secs(15),
        async || {
            for m in &nodes {
                if alive_peers(m).await.len() != N - 1 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eprintln!("converged in {took:?}");
    for m in &nodes {
        let ups = m
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, MemberEvent::Up(_)))
            .count();
        assert!(ups >= N - 1, "{} saw only {ups} Up events", m.id.name);
    }

    // 2. Metadata from node-1 reaches everyone, and a newer version replaces it.
    let swim1 = nodes[1].swim.as_ref().unwrap();
    assert_eq!(
        swim1
            .set_metadata(b"role=director v1".to_vec())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        swim1
            .set_metadata(b"role=director v2".to_vec())
            .await
            .unwrap(),
        2
    );
    let too_big = swim1.set_metadata(vec![0; 4000]).await.unwrap_err();
    assert!(
        too_big.to_string().contains("exceeds the limit"),
        "{too_big}"
    );
    let node1 = nodes[1].id.clone();
    wait_until("metadata v2 spreads", Duration::from_secs(5), async || {
        for m in nodes.iter().filter(|m| m.id != node1) {
            let meta = m.swim.as_ref().unwrap().metadata().await.unwrap();
            if !meta
                .iter()
                .any(|x| x.node == node1 && x.version == 2 && x.data == b"role=director v2")
            {
                return false;
            }
        }
        true
    })
    .await;

    // 3. node-4 crashes: no leave, driver stopped, endpoint closed.
    let crashed = nodes.pop().unwrap();
    let Member {
        swim,
        transport,
        transport_credentials: creds,
        id: crashed,
        ..
    } = crashed;
    swim.unwrap().abort();
    transport.close(Duration::ZERO).await;
    drop(transport); // the UDP port is released once quinn's tasks notice
    let took = wait_until(
        "crash of node-4 seen Down by all",
        bound + Duration::from_secs(2),
        async || {
            nodes
                .iter()
                .all(|m| saw(m, |e| matches!(e, MemberEvent::Down(id) if *id == crashed)))
        },
    )
    .await;
    eprintln!("crash detected by every member in {took:?} (bound {bound:?})");
    for m in &nodes {
        assert!(
            saw(
                m,
                |e| matches!(e, MemberEvent::Suspect(id) if *id == crashed)
            ),
            "{} never reported node-4 as Suspect before Down",
            m.id.name
        );
        assert!(
            !saw(m, |e| matches!(e, MemberEvent::Left(id) if *id == crashed)),
            "a crash must not look like a leave"
        );
    }

    // 3b. node-4 restarts on the same address under a fresh identity: the newer incarnation
    //     wins the address and everyone sees it Up again.
    let addr = crashed.addr;
    let transport = {
        let start = Instant::now();
        loop {
            match Transport::bind(TransportConfig::new(addr, creds.clone())) {
                Ok(t) => break t,
                Err(e) if start.elapsed() < Duration::from_secs(3) => {
                    eprintln!("rebinding {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind {addr}: {e}"),
            }
        }
    };
    let reborn = NodeId::fresh("node-4", addr);
    assert!(reborn.incarnation > crashed.incarnation);
    let (swim, mut rx) = Swim::start(
        &transport,
        SwimConfig::new(reborn.clone(), vec![nodes[0].id.addr]),
    )
    .unwrap();
    wait_until(
        "restarted node-4 seen Up by all",
        Duration::from_secs(10),
        async || {
            nodes
                .iter()
                .all(|m| saw(m, |e| matches!(e, MemberEvent::Up(id) if *id == reborn)))
        },
    )
    .await;
    // The others seeing it Up does not mean its own events have arrived yet: wait for them.
    let mut reborn_saw = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while reborn_saw == 0 && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            Ok(Some(ev)) => reborn_saw += matches!(ev, MemberEvent::Up(_)) as usize,
            Ok(None) => break,
            Err(_) => {}
        }
    }
    assert!(reborn_saw >= 1, "the restarted node saw nobody");
    // Crash it again, quietly, so the rest of the scenario has 4 members.
    swim.abort();
    transport.close(Duration::ZERO).await;
    wait_until(
        "second crash of node-4 seen Down by all",
        bound + Duration::from_secs(2),
        async || {
            nodes
                .iter()
                .all(|m| saw(m, |e| matches!(e, MemberEvent::Down(id) if *id == reborn)))
        },
    )
    .await;

    // 4. node-3 leaves gracefully.
    let leaver = nodes.pop().unwrap();
    let t0 = Instant::now();
    leaver.swim.unwrap().leave().await.unwrap();
    assert!(
        t0.elapsed() <= leaver.config.leave_timeout + Duration::from_millis(500),
        "leave overran its bound"
    );
    leaver.transport.close(Duration::from_millis(200)).await;
    let took = wait_until(
        "leave of node-3 seen Left by all",
        Duration::from_secs(3),
        async || {
            nodes.iter().all(|m| {
                saw(
                    m,
                    |e| matches!(e, MemberEvent::Left(id) if *id == leaver.id),
                )
            })
        },
    )
    .await;
    eprintln!("leave seen by every member in {took:?}");
    for m in &nodes {
        assert!(
            !saw(
                m,
                |e| matches!(e, MemberEvent::Down(id) if *id == leaver.id)
            ),
            "a leave must not look like a crash"
        );
        assert_eq!(
            alive_peers(m).await.len(),
            2,
            "{}: 3 members remain",
            m.id.name
        );
    }

    for m in nodes {
        m.swim.unwrap().leave().await.unwrap();
        m.transport.close(Duration::from_millis(100)).await;
    }
}

/// A member may only speak for itself: a packet whose header claims another sender than the
/// node its certificate names is dropped. Without that check the announce below would add
/// "eve" to the seed's membership.
#[tokio::test]
async fn a_member_cannot_speak_for_another_identity() {
    use foca::{Codec, Header, Message};
    let ca = ClusterCa::generate("spoof-test").unwrap();
    let seed_t = Transport::bind(TransportConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        ca.issue("seed").unwrap(),
    ))
    .unwrap();
    let seed_id = NodeId::fresh("seed", seed_t.local_addr().unwrap());
    let (seed, mut events) =
        Swim::start(&seed_t, SwimConfig::new(seed_id.clone(), vec![])).unwrap();
    let mallory = Transport::bind(TransportConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        ca.issue("mallory").unwrap(),
    ))
    .unwrap();
    let announce = |src: NodeId| {
        let mut buf = bytes::BytesMut::new();
        gossip::codec::PostcardCodec
            .encode_header(
                &Header {
                    src,
                    src_incarnation: 0,
                    dst: seed_id.clone(),
                    message: Message::Announce,
                },
                &mut buf,
            )
            .unwrap();
        buf.freeze()
    };
    let eve = NodeId::fresh("eve", mallory.local_addr().unwrap());
    for _ in 0..5 {
        mallory
            .send_datagram(seed_id.addr, announce(eve.clone()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let members = seed.members().await.unwrap();
    assert!(
        members.iter().all(|m| m.id.name != "eve"),
        "an impersonated announce got in: {members:?}"
    );
    // Each drop is counted, and so is a packet that does not decode.
    let bad = seed.bad_packets();
    let five = tokio::time::timeout(Duration::from_secs(5), async {
        while bad.load(std::sync::atomic::Ordering::Relaxed) < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    five.await.expect("the five impersonations are counted as bad");
    mallory
        .send_datagram(seed_id.addr, bytes::Bytes::from_static(b"\x01\xff\xff"))
        .await
        .unwrap();
    let counted = tokio::time::timeout(Duration::from_secs(5), async {
        while bad.load(std::sync::atomic::Ordering::Relaxed) < 6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    counted.await.expect("a garbage packet is counted as bad");
    // The same packet under its own name is accepted, so the test can tell the difference.
    let me = NodeId::fresh("mallory", mallory.local_addr().unwrap());
    mallory
        .send_datagram(seed_id.addr, announce(me))
        .await
        .unwrap();
    let up = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = events.recv().await {
            if matches!(&ev, MemberEvent::Up(id) if id.name == "mallory") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(up, Ok(true), "an honest announce was not accepted");
    seed.abort();
}

/// At rest a member holds foca's periodic-gossip timer (foca would wake it every gossip
/// interval to find nothing to send), and news makes it gossip at once: a member that joins
/// through node-0 is known to the two others well before any member's next probe or periodic
/// gossip (every 5 s here), which only node-0's gossip on the news can do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_member_holds_its_gossip_timer_and_spreads_news_at_once() {
    let ca = ClusterCa::generate("held-gossip").unwrap();
    let slow = |c: &mut SwimConfig| {
        c.probe_period = Duration::from_secs(5);
        c.gossip_interval = Duration::from_secs(5);
    };
    let mut nodes = Vec::new();
    for i in 0..3 {
        let seed = nodes.first().map(|m: &Member| m.id.addr);
        nodes.push(start_member(&ca, &format!("node-{i}"), seed, slow));
    }
    wait_until("three members see each other", Duration::from_secs(20), async || {
        for m in &nodes {
            if alive_peers(m).await.len() != 2 {
                return false;
            }
        }
        true
    })
    .await;
    wait_until("every member holds its gossip timer", Duration::from_secs(60), async || {
        for m in &nodes {
            if !m.swim.as_ref().unwrap().periodic_gossip_held().await.unwrap() {
                return false;
            }
        }
        true
    })
    .await;
    let joiner = start_member(&ca, "node-3", Some(nodes[0].id.addr), slow);
    let took = wait_until("the others hear of node-3", Duration::from_secs(1), async || {
        for m in &nodes[1..] {
            if !alive_peers(m).await.iter().any(|n| n == "node-3") {
                return false;
            }
        }
        true
    })
    .await;
    eprintln!("node-3 known to node-1 and node-2 after {took:?}");
    nodes.push(joiner);
    for m in nodes {
        m.swim.unwrap().abort();
        m.transport.close(Duration::from_millis(100)).await;
    }
}
