//! Hostile peers and careless users: invalid gossip is dropped with a warning naming the sender, the
//! sender is penalized and, after repeated offences, blocked; the coordinator keeps serving. A
//! co-op's relay serves members only, each within its share of circuits.

mod support;

use std::time::Duration;

use futures::StreamExt;
use hearth_net::libp2p::swarm::SwarmEvent;
use hearth_net::libp2p::{Multiaddr, PeerId, Swarm, gossipsub};
use hearth_net::{ADVERT_TOPIC, Behaviour, BehaviourEvent, NetConfig, build_swarm};
use hearth_protocol::api::SwarmInfo;
use hearth_protocol::{
    Advert, Backend, Capabilities, FRAME_BYTES_MAX, Message, PROTOCOL_VERSION, SecretKey, Signed,
    codec,
};
use support::{Process, entry, keygen, peers, rss_kib, wait_for_api, wait_until};

fn rogue(seed: u8) -> (SecretKey, Swarm<Behaviour>) {
    let key = SecretKey::from_bytes(&[seed; 32]);
    let config = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        mdns: false,
        agent: "rogue".into(),
        ..NetConfig::default()
    };
    let swarm = build_swarm(&key, &config).expect("swarm");
    (key, swarm)
}

fn advert() -> Message {
    Message::Advert(Advert {
        seq: 0,
        heartbeat_interval_ms: 2000,
        stage_sessions: 0,
        bytes_received: 0,
        held: Vec::new(),
        links: Vec::new(),
        reachability: Default::default(),
        serves: Vec::new(),
        fetching: Vec::new(),
        capabilities: Capabilities {
            backend: Backend::Cpu,
            device: "definitely real".into(),
            memory_total_bytes: 1 << 40,
            memory_free_bytes: 1 << 40,
            threads: 1024,
            cpu_model: "definitely real".into(),
            cpu_cores: 1024,
            cpu_features: vec![],
            host_memory_total_bytes: 1 << 40,
            os: "linux".into(),
            arch: "x86_64".into(),
            score: 1e6,
            numeric_class: Default::default(),
            models: vec![],
        },
    })
}

/// Poll `swarm` until `done` returns true for an event, or `timeout` passes. Returns whether it did.
async fn drive(
    swarm: &mut Swarm<Behaviour>,
    timeout: Duration,
    mut done: impl FnMut(&SwarmEvent<BehaviourEvent>) -> bool,
) -> bool {
    tokio::time::timeout(timeout, async {
        loop {
            let event = swarm.select_next_some().await;
            if done(&event) {
                return;
            }
        }
    })
    .await
    .is_ok()
}

/// Connect `swarm` to the coordinator and wait until it knows the coordinator takes adverts.
async fn join(swarm: &mut Swarm<Behaviour>, coordinator: PeerId, addrs: &[Multiaddr]) {
    for addr in addrs {
        swarm.dial(addr.clone()).expect("dial");
    }
    let subscribed = drive(swarm, Duration::from_secs(10), |event| {
        matches!(event, SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, .. })) if *peer_id == coordinator)
    })
    .await;
    assert!(subscribed, "rogue never saw the coordinator subscribe");
}

/// Wait until the coordinator closes `swarm`'s connection, then check it refuses a redial.
async fn assert_cut_off(swarm: &mut Swarm<Behaviour>, coordinator: PeerId, addrs: &[Multiaddr]) {
    if swarm.is_connected(&coordinator) {
        let closed = drive(swarm, Duration::from_secs(10), |event| {
            matches!(event, SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if *peer_id == coordinator)
        })
        .await;
        assert!(closed, "blocked peer still connected");
    }
    for addr in addrs {
        let _ = swarm.dial(addr.clone());
    }
    drive(swarm, Duration::from_secs(3), |_| false).await;
    assert!(
        !swarm.is_connected(&coordinator),
        "blocked peer reconnected"
    );
}

/// Publish `frames` on the advert topic, one at a time.
async fn publish(swarm: &mut Swarm<Behaviour>, frames: Vec<Vec<u8>>) {
    publish_on(swarm, ADVERT_TOPIC, frames).await;
}

/// Publish `frames` on `topic` (a co-op's, for a member), one at a time.
async fn publish_on(swarm: &mut Swarm<Behaviour>, topic: &str, frames: Vec<Vec<u8>>) {
    for frame in frames {
        swarm
            .behaviour_mut()
            .gossipsub
            .publish(gossipsub::IdentTopic::new(topic), frame)
            .expect("publish");
        // Let it go out before the next.
        drive(swarm, Duration::from_millis(300), |_| false).await;
    }
}

/// The coordinator at `api`: its peer id and the addresses its swarm listens on (`GET /v1/swarm`).
async fn coordinator_swarm(api: &str) -> (PeerId, Vec<Multiaddr>) {
    let info: SwarmInfo = reqwest::get(format!("{api}/v1/swarm"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let addrs = info
        .addrs
        .iter()
        .map(|a| a.parse().expect("multiaddr"))
        .collect();
    (hearth_net::to_libp2p_peer_id(&info.peer_id), addrs)
}

/// A coordinator and one honest node, online; with the coordinator's peer id and addresses.
struct Setup {
    coordinator: Process,
    _node: Process,
    api: String,
    honest: String,
    coordinator_id: PeerId,
    addrs: Vec<Multiaddr>,
}

async fn coordinator_and_honest_node(tmp: &std::path::Path) -> Setup {
    let dir = tmp.join("coordinator");
    let mut coordinator = Process::start(
        "coordinator",
        tmp,
        &[],
        &[
            "coordinator",
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--http",
            "127.0.0.1:0",
            "--open",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
    );
    let api = wait_for_api(&dir, &mut coordinator);
    let node_dir = tmp.join("node");
    let honest = keygen(&node_dir);
    let node = Process::start(
        "node",
        tmp,
        &[],
        &[
            "node",
            "--data-dir",
            node_dir.to_str().expect("utf-8"),
            "--join",
            &api,
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--max-threads",
            "1",
        ],
    );
    wait_until(Duration::from_secs(10), "honest node online", || {
        entry(&peers(&[], &api), &honest)
            .is_some_and(|p| p["online"] == true)
            .then_some(())
    });

    let (coordinator_id, addrs) = coordinator_swarm(&api).await;

    Setup {
        coordinator,
        _node: node,
        api,
        honest,
        coordinator_id,
        addrs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_gossip_is_dropped_named_penalized_and_blocked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Setup {
        mut coordinator,
        _node,
        api,
        honest,
        coordinator_id,
        addrs,
    } = coordinator_and_honest_node(tmp.path()).await;

    // Rogue 1: an oversized frame and one of a future protocol version. Two strikes: warned, not blocked.
    let (key1, mut rogue1) = rogue(0xA1);
    join(&mut rogue1, coordinator_id, &addrs).await;
    let mut oversized = codec::header(FRAME_BYTES_MAX + 1).to_vec();
    oversized.resize(oversized.len() + FRAME_BYTES_MAX + 1, 7);
    let mut future = Signed::seal(&key1, &advert()).expect("seal");
    future[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    publish(&mut rogue1, vec![oversized, future]).await;

    // Rogue 2: garbage, a forged signature, and another peer's advert passed off as its own.
    let (key2, mut rogue2) = rogue(0xB2);
    join(&mut rogue2, coordinator_id, &addrs).await;
    let mut envelope: Signed =
        codec::decode(&Signed::seal(&key2, &advert()).expect("seal")).expect("decode");
    envelope.signature.0[0] ^= 1;
    let forged_signature = codec::encode(&envelope).expect("encode");
    let someone_else = Signed::seal(&SecretKey::from_bytes(&[0xC3; 32]), &advert()).expect("seal");
    // A valid header over bytes that decode as nothing.
    let mut garbage = codec::header(8).to_vec();
    garbage.extend_from_slice(&[0xff; 8]);
    publish(&mut rogue2, vec![garbage, forged_signature, someone_else]).await;

    // The third strike blocks rogue 2: its connection is closed and it cannot come back.
    assert_cut_off(&mut rogue2, coordinator_id, &addrs).await;
    // Rogue 1 stays connected: two strikes are a warning.
    drive(&mut rogue1, Duration::from_millis(500), |_| false).await;
    assert!(
        rogue1.is_connected(&coordinator_id),
        "rogue 1 was cut off before the limit"
    );

    let log = coordinator.log_text();
    let id1 = rogue1.local_peer_id().to_string();
    let id2 = rogue2.local_peer_id().to_string();
    let warned = |peer: &str, reason: &str| {
        log.lines().any(|l| {
            l.contains("WARN")
                && l.contains("dropped invalid message")
                && l.contains(&format!("peer={peer}"))
                && l.contains(reason)
        })
    };
    for (peer, reason) in [
        (&id1, "frame too large"),
        (&id1, &format!("protocol version {}", PROTOCOL_VERSION + 1)),
        (&id2, "malformed payload"),
        (&id2, "bad signature"),
        (&id2, "signed by"),
    ] {
        assert!(
            warned(peer, reason),
            "no warning naming {peer} for {reason:?}:\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("blocking peer") && l.contains(&id2)),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("blocking peer") && l.contains(&id1)),
        "{log}"
    );

    // Nothing the rogues sent reached the registry, and the coordinator still serves.
    coordinator.assert_running();
    let listed = peers(&[], &api);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["peer_id"], honest.as_str());
    assert_eq!(listed[0]["online"], true);
    assert_eq!(
        listed[0]["capabilities"]["threads"], 1,
        "the node advertises --max-threads"
    );
}

/// A peer that floods the advert topic with valid, signed adverts (hundreds a second) is throttled
/// at 20 a second, then banned: its connection closed and refused. The honest node is not touched
/// and the coordinator's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossip_flood_is_throttled_then_banned() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Setup {
        mut coordinator,
        _node,
        api,
        honest,
        coordinator_id,
        addrs,
    } = coordinator_and_honest_node(tmp.path()).await;
    let pid = coordinator.child.id();
    let mut peak = rss_kib(pid);

    let (key, mut flooder) = rogue(0xD4);
    join(&mut flooder, coordinator_id, &addrs).await;
    let mut sent = 0u64;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(8) && flooder.is_connected(&coordinator_id) {
        for _ in 0..40 {
            let mut message = advert();
            if let Message::Advert(advert) = &mut message {
                advert.seq = sent;
            }
            let frame = Signed::seal(&key, &message).expect("seal");
            if flooder
                .behaviour_mut()
                .gossipsub
                .publish(gossipsub::IdentTopic::new(ADVERT_TOPIC), frame)
                .is_ok()
            {
                sent += 1;
            }
        }
        drive(&mut flooder, Duration::from_millis(50), |_| false).await;
        peak = peak.max(rss_kib(pid));
    }
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    println!("flooder published {sent} adverts at {rate:.0}/s");
    assert!(rate > 200.0, "the flood is a flood: {rate:.0}/s");

    let id = flooder.local_peer_id().to_string();
    wait_until(Duration::from_secs(10), "the flooder banned", || {
        coordinator
            .log_text()
            .lines()
            .any(|l| l.contains("banned for flooding gossip") && l.contains(&id))
            .then_some(())
    });
    let log = coordinator.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("throttled: over 20 gossip messages a second") && l.contains(&id)),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("throttled") && l.contains(&honest)),
        "the honest node was throttled:\n{log}"
    );
    // Banned: cut off, and cannot come back.
    assert_cut_off(&mut flooder, coordinator_id, &addrs).await;

    coordinator.assert_running();
    let listed = peers(&[], &api);
    assert!(
        entry(&listed, &honest).is_some_and(|p| p["online"] == true),
        "the honest node stays online: {listed:#?}"
    );
    peak = peak.max(rss_kib(pid));
    println!(
        "coordinator peak RSS during the gossip flood: {} MiB",
        peak / 1024
    );
    assert!(peak > 0 && peak < 256 * 1024, "peak RSS {peak} KiB");
}

/// A co-op member with a slot on the coordinator's relay: a raw swarm that joins, shows its
/// certificate, reserves (asking again while the relay has not admitted it yet) and then accepts
/// what comes through the relay until the test ends. Returns its peer id once it holds a slot.
async fn reserved_member(
    seed: u8,
    coop: &SecretKey,
    coordinator: PeerId,
    addrs: Vec<Multiaddr>,
) -> PeerId {
    use hearth_net::libp2p::multiaddr::Protocol;
    use hearth_net::libp2p::relay;

    let (key, mut swarm) = rogue(seed);
    let member = key.public().peer_id();
    let cert = Message::Membership(hearth_protocol::coop::Membership::issue(
        coop, member, 0, None,
    ));
    let coop_key = coop.public();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        join(&mut swarm, coordinator, &addrs).await;
        let topic = hearth_net::coop::coop_topic(&coop_key);
        publish_on(
            &mut swarm,
            &topic,
            vec![Signed::seal(&key, &cert).expect("seal")],
        )
        .await;
        let circuit = addrs[0].clone().with(Protocol::P2pCircuit);
        loop {
            swarm
                .listen_on(circuit.clone())
                .expect("listen on the relay");
            let mut reserved = false;
            drive(&mut swarm, Duration::from_secs(5), |event| match event {
                SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                    relay::client::Event::ReservationReqAccepted { .. },
                )) => {
                    reserved = true;
                    true
                }
                SwarmEvent::ListenerClosed { .. } => true,
                _ => false,
            })
            .await;
            if reserved {
                break;
            }
            drive(&mut swarm, Duration::from_millis(500), |_| false).await;
        }
        let _ = tx.send(*swarm.local_peer_id());
        loop {
            swarm.select_next_some().await;
        }
    });
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("the member reserved a slot within 30 s")
        .expect("the member's task")
}

/// Dial each of `targets` through the relay at `relay` from `swarm`, a few at a time (libp2p's
/// relay client drops circuit requests past 10 pending on one connection); returns how many
/// relayed connections were established and how many dials failed.
async fn dial_through(
    swarm: &mut Swarm<Behaviour>,
    relay: &Multiaddr,
    targets: &[PeerId],
) -> (usize, usize) {
    use hearth_net::libp2p::multiaddr::Protocol;
    use hearth_net::libp2p::swarm::dial_opts::{DialOpts, PeerCondition};

    let (mut established, mut failed) = (0, 0);
    for batch in targets.chunks(4) {
        for target in batch {
            let addr = relay
                .clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(*target));
            swarm
                .dial(
                    DialOpts::peer_id(*target)
                        .addresses(vec![addr])
                        .condition(PeerCondition::Always)
                        .build(),
                )
                .expect("dial");
        }
        let done = established + failed + batch.len();
        drive(swarm, Duration::from_secs(20), |event| {
            match event {
                SwarmEvent::ConnectionEstablished { endpoint, .. } if endpoint.is_relayed() => {
                    established += 1;
                }
                SwarmEvent::OutgoingConnectionError { .. } => failed += 1,
                _ => {}
            }
            established + failed == done
        })
        .await;
    }
    (established, failed)
}

/// The coordinator's relay in a co-op: a stranger's flood of reservations and circuits is refused
/// whole; a member opening circuits to more members than its share gets exactly
/// `RELAY_CIRCUITS_PER_PEER_MAX` and is refused past it; the coordinator's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coop_relay_refuses_strangers_and_members_past_their_share() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let coop_dir = tmp.path().join("coop");
    let coop_arg = coop_dir.to_str().expect("utf-8");
    let out = support::run_hearth(&[], &["coop", "init", "--dir", coop_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (coop, _) = hearth_net::load_or_create_identity(&coop_dir).expect("the co-op key");
    let dir = tmp.path().join("coordinator");
    let mut coordinator = Process::start(
        "coordinator",
        tmp.path(),
        &[],
        &[
            "coordinator",
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--http",
            "127.0.0.1:0",
            "--open",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--coop",
            coop_arg,
        ],
    );
    let api = wait_for_api(&dir, &mut coordinator);
    let (coordinator_id, addrs) = coordinator_swarm(&api).await;
    let relay = addrs[0].clone();
    let pid = coordinator.child.id();
    let before = rss_kib(pid);

    // More members with slots than one member's share of circuits.
    let share = hearth_net::RELAY_CIRCUITS_PER_PEER_MAX;
    let mut members = Vec::new();
    for seed in 0..(share + 4) as u8 {
        members.push(reserved_member(0x10 + seed, &coop, coordinator_id, addrs.clone()).await);
    }

    // A stranger (no certificate) floods: a reservation, then circuits to every member, three
    // times over. Every one is refused.
    let (_, mut stranger) = rogue(0xE5);
    join(&mut stranger, coordinator_id, &addrs).await;
    stranger
        .listen_on(
            relay
                .clone()
                .with(hearth_net::libp2p::multiaddr::Protocol::P2pCircuit),
        )
        .expect("listen on the relay");
    let refused = drive(&mut stranger, Duration::from_secs(10), |event| {
        matches!(event, SwarmEvent::ListenerClosed { reason: Err(_), .. })
    })
    .await;
    assert!(refused, "the stranger's reservation was not refused");
    let mut flood = (0, 0);
    for _ in 0..3 {
        let (established, failed) = dial_through(&mut stranger, &relay, &members).await;
        flood = (flood.0 + established, flood.1 + failed);
    }
    assert_eq!(
        flood,
        (0, 3 * members.len()),
        "the stranger's circuits: (established, refused)"
    );

    // A member opens circuits to all the others: its share, and no more.
    let (key, mut opener) = rogue(0xF6);
    let cert = Message::Membership(hearth_protocol::coop::Membership::issue(
        &coop,
        key.public().peer_id(),
        0,
        None,
    ));
    join(&mut opener, coordinator_id, &addrs).await;
    let topic = hearth_net::coop::coop_topic(&coop.public());
    publish_on(
        &mut opener,
        &topic,
        vec![Signed::seal(&key, &cert).expect("seal")],
    )
    .await;
    let (established, failed) = dial_through(&mut opener, &relay, &members).await;
    assert_eq!(
        (established, failed),
        (share, members.len() - share),
        "the member's circuits: (established, refused past its share of {share})"
    );

    let log = coordinator.log_text();
    let stranger_id = stranger.local_peer_id().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("relay reservation refused") && l.contains(&stranger_id)),
        "{log}"
    );
    assert!(
        log.lines().any(
            |l| l.contains("relay circuit refused: not a member of this co-op")
                && l.contains(&stranger_id)
        ),
        "{log}"
    );
    coordinator.assert_running();
    let after = rss_kib(pid);
    println!(
        "coordinator RSS: {} MiB before the members and the flood, {} MiB after",
        before / 1024,
        after / 1024
    );
    assert!(
        after > 0 && after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}
