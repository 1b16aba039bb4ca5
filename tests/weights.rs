//! Weights from peers: a model fetched from the swarm's holders, every 16 KiB block verified
//! against the model's id, a holder that serves flipped bytes refused, and a fetch that had part
//! of the file asking only for the rest.

mod support;

use std::path::PathBuf;

use hearth_net::weights::{Holder, Partial};
use hearth_protocol::ModelId;
use support::local_swarm::Swarm;
use support::{entry, peers, run_hearth, stdout_json};

const MODEL: &str = "smollm2-135m-instruct-q4_1";

/// The models folder the nodes hold the default model in.
fn models_dir() -> PathBuf {
    std::env::var("HEARTH_MODELS").map_or_else(
        |_| {
            PathBuf::from(std::env::var("HOME").expect("HOME"))
                .join(".cache")
                .join("hearth")
                .join("models")
        },
        PathBuf::from,
    )
}

fn fetch(swarm: &Swarm, dest: &std::path::Path) -> std::process::Output {
    run_hearth(
        &[],
        &[
            "models",
            "fetch",
            "--from-swarm",
            MODEL,
            "--api",
            &swarm.api,
            "--models",
            dest.to_str().expect("utf-8"),
            "--json",
        ],
    )
}

#[test]
fn a_model_comes_from_its_holders_verified_and_a_corrupting_holder_is_refused() {
    let original = std::fs::read(models_dir().join(format!("{MODEL}.gguf"))).expect("the model");
    let swarm = Swarm::start(&[None, Some("corrupt-weights")]);
    let (honest, corrupting) = (swarm.nodes[0].0.clone(), swarm.nodes[1].0.clone());

    let dest = swarm.path("fetched");
    let out = fetch(&swarm, &dest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = stdout_json(&out);
    let path = PathBuf::from(got["path"].as_str().expect("path"));
    assert_eq!(path, dest.join(format!("{MODEL}.gguf")));
    assert!(
        std::fs::read(&path).expect("fetched") == original,
        "the fetched file differs"
    );
    assert_eq!(got["bytes"], original.len() as u64);
    let holders = got["holders"].as_array().expect("holders");
    let of = |peer: &str| holders.iter().find(|h| h["peer_id"] == peer);
    let bad = of(&corrupting).expect("the corrupting holder was asked");
    assert_eq!(bad["refused_bad"], true, "{got}");
    assert_eq!(bad["bytes"], 0, "nothing it sent was kept: {got}");
    // Its signed bytes went to the coordinator, which checked them and quarantined it.
    assert_eq!(bad["quarantined"], true, "{got}");
    let listed = peers(&[], &swarm.api);
    let ledger = entry(&listed, &corrupting).expect("listed");
    assert_eq!(ledger["quarantined"], true, "{ledger}");
    assert!(
        ledger["quarantine_reason"]
            .as_str()
            .is_some_and(|r| r.contains("do not verify")),
        "{ledger}"
    );
    let fair = entry(&listed, &honest).expect("listed");
    assert_eq!(fair["quarantined"], false, "{fair}");
    assert_eq!(
        of(&honest).expect("the honest holder")["bytes"],
        original.len() as u64
    );
    // Nothing half-fetched is left: the file, its remembered id and its outboard (and the
    // corrupting holder's signed statement, the evidence).
    let leftovers: Vec<String> = std::fs::read_dir(&dest)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Asked again: it is there.
    let again = stdout_json(&fetch(&swarm, &dest));
    assert_eq!(again["already_held"], true, "{again}");

    // A fetch that was stopped with 40 MiB held asks only for the rest.
    let id: ModelId = got["id"].as_str().expect("id").parse().expect("an id");
    let resumed = swarm.path("resumed");
    std::fs::create_dir_all(&resumed).expect("dir");
    {
        let holder = Holder::open(&models_dir().join(format!("{MODEL}.gguf")), id).expect("holder");
        let mut partial = Partial::open(&resumed, id, holder.size()).expect("partial");
        for chunk in partial.missing(0..40 << 20) {
            let encoded = holder.serve(chunk.clone()).expect("serve");
            partial.receive(chunk, &encoded).expect("verified");
        }
        assert_eq!(partial.bytes_held(), 40 << 20);
    }
    let out = fetch(&swarm, &resumed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = stdout_json(&out);
    let fetched: u64 = got["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .map(|h| h["bytes"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(fetched, original.len() as u64 - (40 << 20), "{got}");
    let path = PathBuf::from(got["path"].as_str().expect("path"));
    assert!(std::fs::read(&path).expect("fetched") == original);

    // A model the swarm does not list: said so.
    let out = run_hearth(
        &[],
        &[
            "models",
            "fetch",
            "--from-swarm",
            "no-such-model",
            "--api",
            &swarm.api,
            "--models",
            swarm.path("none").to_str().expect("utf-8"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lists no model `no-such-model`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
