//! Round trips and refusals of everything that crosses the wire.

use std::collections::BTreeMap;

use hearth_protocol::{
    Advert, Backend, Capabilities, Digest, Error, FRAME_BYTES_MAX, FRAME_HEADER_BYTES,
    KernelFamily, Message, ModelId, PROTOCOL_VERSION, Receipt, ReceiptBody, SecretKey, Signed,
    Subject, codec,
};
use proptest::prelude::*;

fn backend() -> impl Strategy<Value = Backend> {
    prop_oneof![
        Just(Backend::Cpu),
        Just(Backend::Cuda),
        Just(Backend::Metal)
    ]
}

fn capabilities() -> impl Strategy<Value = Capabilities> {
    (
        (
            backend(),
            ".{0,40}",
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
        ),
        (
            ".{0,40}",
            any::<u32>(),
            prop::collection::vec("[a-z0-9_]{1,12}", 0..8),
            any::<u64>(),
        ),
        (
            0.0f64..1e6,
            prop::collection::btree_map(
                prop_oneof![Just(KernelFamily::Llm), Just(KernelFamily::Embed)],
                "[a-z0-9./-]{1,30}",
                0..3,
            ),
        ),
        prop::collection::vec(any::<[u8; 32]>(), 0..5),
    )
        .prop_map(
            |(
                (backend, device, total, free, threads),
                (cpu_model, cpu_cores, cpu_features, host),
                (score, numeric_class),
                models,
            )| Capabilities {
                backend,
                device,
                memory_total_bytes: total.max(free),
                memory_free_bytes: free.min(total),
                threads,
                cpu_model,
                cpu_cores,
                cpu_features,
                host_memory_total_bytes: host,
                os: "linux".into(),
                arch: "x86_64".into(),
                score,
                numeric_class,
                models: models.into_iter().map(|m| ModelId(Digest(m))).collect(),
            },
        )
}

fn advert() -> impl Strategy<Value = Message> {
    (
        any::<u64>(),
        any::<u32>(),
        capabilities(),
        any::<u32>(),
        any::<u64>(),
        proptest::collection::vec(
            (
                any::<[u8; 32]>(),
                proptest::collection::vec((any::<u32>(), any::<u32>()), 0..4),
            ),
            0..3,
        ),
    )
        .prop_map(
            |(seq, heartbeat_interval_ms, capabilities, stage_sessions, bytes_received, held)| {
                Message::Advert(Advert {
                    seq,
                    heartbeat_interval_ms,
                    capabilities,
                    stage_sessions,
                    bytes_received,
                    held: held
                        .into_iter()
                        .map(|(id, layers)| hearth_protocol::HeldLayers {
                            model: hearth_protocol::ModelId::of_bytes(&id),
                            layers,
                        })
                        .collect(),
                    links: Vec::new(),
                    reachability: Default::default(),
                    serves: Vec::new(),
                    fetching: Vec::new(),
                })
            },
        )
}

fn sample_capabilities() -> Capabilities {
    Capabilities {
        backend: Backend::Cpu,
        device: "Test CPU".into(),
        memory_total_bytes: 8 << 30,
        memory_free_bytes: 4 << 30,
        threads: 2,
        cpu_model: "Test CPU".into(),
        cpu_cores: 2,
        cpu_features: vec!["avx2".into()],
        host_memory_total_bytes: 8 << 30,
        os: "linux".into(),
        arch: "x86_64".into(),
        score: 12.5,
        numeric_class: BTreeMap::from([(KernelFamily::Llm, "cpu-test".into())]),
        models: vec![],
    }
}

proptest! {
    #[test]
    fn signed_adverts_round_trip(seed in any::<[u8; 32]>(), message in advert()) {
        let key = SecretKey::from_bytes(&seed);
        let frame = Signed::seal(&key, &message).expect("adverts fit a frame");
        let (peer, opened) = Signed::open(&frame).expect("our own frame opens");
        prop_assert_eq!(peer, key.public().peer_id());
        prop_assert_eq!(opened, message);
    }

    #[test]
    fn any_flipped_bit_is_refused(seed in any::<[u8; 32]>(), message in advert(), bit in any::<prop::sample::Index>()) {
        let key = SecretKey::from_bytes(&seed);
        let mut frame = Signed::seal(&key, &message).expect("adverts fit a frame");
        let bit = bit.index(frame.len() * 8);
        frame[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Signed::open(&frame).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Signed::open(&bytes);
        let _ = codec::decode::<Receipt>(&bytes);
    }

    #[test]
    fn receipts_round_trip(seed in any::<[u8; 32]>(), job in any::<u64>(), unit in any::<u64>(), class in ".{0,30}") {
        let key = SecretKey::from_bytes(&seed);
        let receipt = Receipt::sign(&key, ReceiptBody {
            subject: Subject::Unit { job, unit },
            model: ModelId::of_bytes(b"m"),
            input: Digest::of("in", &job.to_le_bytes()),
            output: Digest::of("out", &unit.to_le_bytes()),
            numeric_class: class,
        });
        let frame = codec::encode(&receipt).expect("receipts fit a frame");
        let decoded: Receipt = codec::decode(&frame).expect("round trip");
        prop_assert!(decoded.verify().is_ok());
        prop_assert_eq!(decoded, receipt);
    }
}

#[test]
fn bad_frames_are_refused_with_the_reason() {
    let key = SecretKey::from_bytes(&[5; 32]);
    let message = Message::Advert(Advert {
        seq: 1,
        heartbeat_interval_ms: 2000,
        stage_sessions: 0,
        bytes_received: 0,
        held: Vec::new(),
        links: Vec::new(),
        reachability: Default::default(),
        serves: Vec::new(),
        fetching: Vec::new(),
        capabilities: sample_capabilities(),
    });
    let frame = Signed::seal(&key, &message).expect("fits");

    // Wrong version.
    let mut wrong = frame.clone();
    wrong[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    assert_eq!(
        Signed::open(&wrong),
        Err(Error::Version {
            got: PROTOCOL_VERSION + 1,
            want: PROTOCOL_VERSION
        })
    );

    // Oversized: the header alone condemns it.
    let mut big = codec::header(0).to_vec();
    big[..4].copy_from_slice(&((FRAME_BYTES_MAX + 1) as u32).to_le_bytes());
    big.resize(FRAME_HEADER_BYTES + FRAME_BYTES_MAX + 1, 0);
    assert_eq!(
        Signed::open(&big),
        Err(Error::TooLarge {
            len: FRAME_BYTES_MAX + 1,
            max: FRAME_BYTES_MAX
        })
    );

    // Malformed: a valid header over garbage.
    let mut garbage = codec::header(4).to_vec();
    garbage.extend_from_slice(&[0xff; 4]);
    assert!(matches!(Signed::open(&garbage), Err(Error::Malformed(_))));

    // Badly signed: a valid envelope whose signature is someone else's.
    let mut envelope: Signed = codec::decode(&frame).expect("valid");
    envelope.signer = SecretKey::from_bytes(&[6; 32]).public();
    let forged = codec::encode(&envelope).expect("fits");
    assert_eq!(Signed::open(&forged), Err(Error::BadSignature));

    // Validly signed but over the limits: refused after decoding.
    let mut caps = sample_capabilities();
    caps.device = "x".repeat(1000);
    let loud = Message::Advert(Advert {
        seq: 1,
        heartbeat_interval_ms: 2000,
        stage_sessions: 0,
        bytes_received: 0,
        held: Vec::new(),
        links: Vec::new(),
        reachability: Default::default(),
        serves: Vec::new(),
        fetching: Vec::new(),
        capabilities: caps,
    });
    assert!(matches!(
        Signed::open(&Signed::seal(&key, &loud).expect("fits")),
        Err(Error::Limit(_))
    ));

    // A NaN score (found by the fuzzer: it cannot even equal itself) is refused the same way.
    let mut caps = sample_capabilities();
    caps.score = f64::NAN;
    let nan = Message::Advert(Advert {
        seq: 1,
        heartbeat_interval_ms: 2000,
        stage_sessions: 0,
        bytes_received: 0,
        held: Vec::new(),
        links: Vec::new(),
        reachability: Default::default(),
        serves: Vec::new(),
        fetching: Vec::new(),
        capabilities: caps,
    });
    assert!(matches!(
        Signed::open(&Signed::seal(&key, &nan).expect("fits")),
        Err(Error::Limit(_))
    ));

    // Serving more coordinators than an advert may name.
    let coordinator = key.public().peer_id();
    let crowded = Message::Advert(Advert {
        seq: 1,
        heartbeat_interval_ms: 2000,
        stage_sessions: 0,
        bytes_received: 0,
        held: Vec::new(),
        links: Vec::new(),
        reachability: Default::default(),
        serves: vec![coordinator; hearth_protocol::SERVES_MAX + 1],
        fetching: Vec::new(),
        capabilities: sample_capabilities(),
    });
    assert!(matches!(
        Signed::open(&Signed::seal(&key, &crowded).expect("fits")),
        Err(Error::Limit(_))
    ));
}

#[test]
fn capabilities_json_has_the_documented_fields() {
    let json = serde_json::to_value(sample_capabilities()).expect("json");
    for field in [
        "backend",
        "device",
        "memory_total_bytes",
        "memory_free_bytes",
        "threads",
        "score",
        "numeric_class",
    ] {
        assert!(json.get(field).is_some(), "missing {field} in {json}");
    }
    assert_eq!(json["backend"], "cpu");
    assert_eq!(json["numeric_class"]["llm"], "cpu-test");
}
