//! Weights from peers: a model fetched from the swarm's holders, every 16 KiB block verified
//! against the model's id, a holder that serves flipped bytes refused, and a fetch that had part
//! of the file asking only for the rest.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use hearth_net::weights::{Holder, Partial};
use hearth_protocol::ModelId;
use support::local_swarm::Swarm;
use support::{entry, peers, run_hearth, stdout_json, wait_until};

const MODEL: &str = "smollm2-135m-instruct-q4_1";

/// `peer` is quarantined in `listed` (`hearth peers --json`) for serving bytes that do not verify.
fn assert_quarantined_for_bad_bytes(listed: &[serde_json::Value], peer: &str) {
    let ledger = entry(listed, peer).expect("listed");
    assert_eq!(ledger["quarantined"], true, "{ledger}");
    assert!(
        ledger["quarantine_reason"]
            .as_str()
            .is_some_and(|r| r.contains("do not verify")),
        "{ledger}"
    );
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
    let original =
        std::fs::read(support::models_dir().join(format!("{MODEL}.gguf"))).expect("the model");
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
    assert_quarantined_for_bad_bytes(&listed, &corrupting);
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
        let holder =
            Holder::open(&support::models_dir().join(format!("{MODEL}.gguf")), id).expect("holder");
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

/// Bytes a folder takes on disk (its blocks, so a sparse file counts what it holds), with its
/// subfolders.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                disk_bytes(&e.path())
            } else {
                meta.blocks() * 512
            }
        })
        .sum()
}

/// The model's file, opened, and its size.
fn smollm2() -> (hearth_kernels::GgufModel, u64) {
    let path = support::models_dir().join(format!("{MODEL}.gguf"));
    let size = std::fs::metadata(&path).expect("the model").len();
    (hearth_kernels::GgufModel::open(&path).expect("open"), size)
}

/// The bytes a stage of `layers` reads: its layers' tensors (with the embedding or head an end
/// holds) and the header.
fn range_bytes(layers: (u64, u64)) -> u64 {
    let (model, size) = smollm2();
    model
        .stage_ranges(size, layers.0 as usize..layers.1 as usize)
        .iter()
        .map(|r| r.end - r.start)
        .sum()
}

const PROMPT: &str = "The three primary colours are";

/// What one machine makes of the prompt.
fn local_tokens() -> serde_json::Value {
    let out = run_hearth(
        &[],
        &[
            "local",
            "generate",
            "--prompt",
            PROMPT,
            "--max-tokens",
            "16",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(&out)["token_ids"].clone()
}

const GENERATE: [&str; 9] = [
    "generate",
    "--prompt",
    PROMPT,
    "--max-tokens",
    "16",
    "--stages",
    "3",
    "--json",
    "--api",
];

/// A 3-stage generation of the prompt: its summary.
fn generate(swarm: &Swarm) -> serde_json::Value {
    let mut args = GENERATE.to_vec();
    args.push(&swarm.api);
    let out = run_hearth(&[], &args);
    if !out.status.success() && std::env::var("HEARTH_TEST_LOGS").is_ok() {
        for (id, n) in &swarm.nodes {
            println!(
                "=== {id}\n{}",
                n.log_text()
                    .lines()
                    .filter(|l| !l.contains("gossipsub"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(&out)
}

/// `--max-memory` of 55% of the model's file, in KiB.
fn fifty_five_percent() -> String {
    format!("{}K", smollm2().1 * 55 / 100 / 1024)
}

/// A node with an empty models folder of its own and 55% of the model's size in memory.
fn start_fetcher(swarm: &mut Swarm, i: usize) {
    start_fetcher_with(swarm, i, &[]);
}

/// [`start_fetcher`] with more flags.
fn start_fetcher_with(swarm: &mut Swarm, i: usize, extra: &[&str]) {
    let models = swarm.path(&format!("models{i}"));
    std::fs::create_dir_all(&models).expect("dir");
    let memory = fifty_five_percent();
    let mut args = vec![
        "--models",
        models.to_str().expect("utf-8"),
        "--max-memory",
        &memory,
    ];
    args.extend(extra);
    swarm.start_node_with(i, None, &args);
}

/// For each stage of `summary`'s route served by a node of `nodes`: what its node keeps on disk (models
/// and data folders together) and says it received are at most what its range reads and 5%;
/// `whole_fetch`: it fetched its whole range in this run, so it received at least half of it.
fn check_holdings(swarm: &Swarm, summary: &serde_json::Value, nodes: &[usize], whole_fetch: bool) {
    let listed = peers(&[], &swarm.api);
    for hop in summary["route"].as_array().expect("route") {
        let peer = hop["peer_id"].as_str().expect("peer");
        let layers = (
            hop["layers"][0].as_u64().expect("start"),
            hop["layers"][1].as_u64().expect("end"),
        );
        let Some(&i) = nodes.iter().find(|&&i| swarm.nodes[i].0 == peer) else {
            continue;
        };
        let range = range_bytes(layers);
        let bound = range + range / 20;
        let stored = disk_bytes(&swarm.path(&format!("models{i}")))
            + disk_bytes(&swarm.path(&format!("node{i}")));
        assert!(
            stored <= bound,
            "node {i} (layers {layers:?}) stores {stored} bytes, over its range's {range} + 5%"
        );
        let received = entry(&listed, peer).expect("listed")["bytes_received"]
            .as_u64()
            .expect("bytes_received");
        assert!(
            (received > range / 2 || !whole_fetch) && received <= bound,
            "node {i} (layers {layers:?}) received {received} bytes for a range of {range}"
        );
    }
}

#[test]
fn a_model_no_node_can_hold_runs_split_from_a_pure_seed_with_an_empty_coordinator() {
    let expected = local_tokens();
    let (model, size) = smollm2();
    let empty = tempfile::tempdir().expect("tmp");
    let mut swarm = Swarm::start_bare(&["--models", empty.path().to_str().expect("utf-8")]);
    // The seed: the whole file, no memory to serve any stage.
    swarm.start_node_with(0, None, &["--max-memory", "1M"]);
    for i in 1..=3 {
        start_fetcher(&mut swarm, i);
    }
    swarm.wait_online(4);

    let summary = generate(&swarm);
    assert_eq!(summary["token_ids"], expected, "{summary}");
    assert_eq!(summary["route"].as_array().expect("route").len(), 3);
    // Each fetching node received and keeps its range, not the file; the bytes it received show
    // in `hearth peers` once its advert says so.
    wait_until(
        Duration::from_secs(30),
        "every stage's bytes_received advertised",
        || {
            let listed = peers(&[], &swarm.api);
            (1..=3)
                .all(|i| {
                    entry(&listed, &swarm.nodes[i].0).is_some_and(|p| p["bytes_received"] != 0)
                })
                .then_some(())
        },
    );
    check_holdings(&swarm, &summary, &[1, 2, 3], true);
    assert!(
        summary["route"]
            .as_array()
            .expect("route")
            .iter()
            .all(|h| (1..=3).any(|i| h["peer_id"] == swarm.nodes[i].0.as_str())),
        "every stage is a fetching node: {summary}"
    );
    let seed = entry(&peers(&[], &swarm.api), &swarm.nodes[0].0)
        .cloned()
        .expect("seed");
    assert_eq!(seed["bytes_received"], 0, "{seed}");
    // The coordinator read the header and nothing else: no model file, and on disk its header's
    // blocks (and the file's last block, which pins its size).
    assert_eq!(disk_bytes(empty.path()), 0);
    let header = model.header_bytes();
    let held = disk_bytes(&swarm.path("coordinator").join("headers"));
    assert!(
        held >= header && held <= header + header / 4 + (64 << 10) && held < size / 20,
        "the coordinator keeps {held} bytes of a header of {header}"
    );
}

#[test]
fn fetching_layers_refuses_a_corrupting_holder_and_a_node_killed_mid_fetch_resumes() {
    let expected = local_tokens();
    let empty = tempfile::tempdir().expect("tmp");
    let mut swarm = Swarm::start_bare(&["--models", empty.path().to_str().expect("utf-8")]);
    // An honest seed, slowed so a fetch is under way long enough to be cut; and a holder that
    // corrupts what it serves. Neither has memory for a stage.
    swarm.start_node_with(0, None, &["--max-memory", "1M", "--max-upload-rate", "12M"]);
    swarm.start_node_with(1, Some("corrupt-weights"), &["--max-memory", "1M"]);
    for i in 2..=4 {
        start_fetcher(&mut swarm, i);
    }
    swarm.wait_online(5);
    let corrupting = swarm.nodes[1].0.clone();

    // A generation whose stages fetch their ranges; one of them is killed mid-fetch.
    let mut first = std::process::Command::new(support::hearth())
        .args(GENERATE)
        .arg(&swarm.api)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("generate");
    let victim = wait_until(
        Duration::from_secs(60),
        "a node half way through its fetch",
        || (2..=4).find(|&i| disk_bytes(&swarm.path(&format!("models{i}"))) > 12 << 20),
    );
    swarm.nodes[victim].1.kill();
    let _ = first.wait();
    // What it kept, block by block, verified as the node will verify it when it starts again.
    let (model, size) = smollm2();
    let lacking = {
        let partial = Partial::open(&swarm.path(&format!("models{victim}")), model.id, size)
            .expect("its partial file");
        assert!(partial.bytes_held() > 12 << 20, "{}", partial.bytes_held());
        partial.missing(0..size)
    };
    // Started again with what it kept; the next generation's fetch asks only for the rest.
    let peer = swarm.nodes[victim].0.clone();
    start_fetcher(&mut swarm, victim);
    assert_eq!(
        swarm.nodes.last().expect("started").0,
        peer,
        "the same identity"
    );
    wait_until(Duration::from_secs(60), "the killed node back", || {
        let listed = peers(&[], &swarm.api);
        entry(&listed, &peer)
            .is_some_and(|p| p["online"] == true && p["bytes_received"] == 0)
            .then_some(())
    });

    let summary = generate(&swarm);
    assert_eq!(summary["token_ids"], expected, "{summary}");
    let hop = summary["route"]
        .as_array()
        .expect("route")
        .iter()
        .find(|h| h["peer_id"] == peer.as_str())
        .cloned()
        .expect("the restarted node serves a stage");
    let layers = (
        hop["layers"][0].as_u64().expect("start") as usize,
        hop["layers"][1].as_u64().expect("end") as usize,
    );
    let range = range_bytes((layers.0 as u64, layers.1 as u64));
    // What its range reads that it did not keep: all it needed to fetch.
    let lacked: u64 = model
        .stage_ranges(size, layers.0..layers.1)
        .iter()
        .flat_map(|r| {
            lacking
                .iter()
                .map(move |m| m.end.min(r.end).saturating_sub(m.start.max(r.start)))
        })
        .sum();
    let received = wait_until(
        Duration::from_secs(30),
        "its bytes_received advertised",
        || {
            let listed = peers(&[], &swarm.api);
            entry(&listed, &peer)
                .and_then(|p| p["bytes_received"].as_u64())
                .filter(|b| *b > 0)
        },
    );
    assert!(
        lacked < range && received <= lacked + range / 20,
        "after the restart it received {received} bytes for a range of {range} of which it lacked {lacked}"
    );
    // Every bad chunk was refused (the output is right, and no node keeps more than its range:
    // but the restarted one, which keeps what it fetched of the range it had before too), and
    // the corrupting holder is quarantined on the evidence its fetchers sent.
    let others: Vec<usize> = (2..=4).filter(|&i| i != victim).collect();
    check_holdings(&swarm, &summary, &others, false);
    let listed = peers(&[], &swarm.api);
    assert_quarantined_for_bad_bytes(&listed, &corrupting);
    let honest = entry(&listed, &swarm.nodes[0].0).expect("listed");
    assert_eq!(honest["quarantined"], false, "{honest}");
}

#[test]
fn a_node_whose_disk_cap_a_range_would_pass_refuses_to_fetch_it_and_says_why() {
    let empty = tempfile::tempdir().expect("tmp");
    let mut swarm = Swarm::start_bare(&["--models", empty.path().to_str().expect("utf-8")]);
    swarm.start_node_with(0, None, &["--max-memory", "1M"]);
    start_fetcher(&mut swarm, 1);
    start_fetcher(&mut swarm, 2);
    start_fetcher_with(&mut swarm, 3, &["--max-disk", "5M"]);
    swarm.wait_online(4);
    let mut args = GENERATE.to_vec();
    args.push(&swarm.api);
    let out = run_hearth(&[], &args);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&swarm.nodes[3].0) && said.contains("--max-disk allows 5242880"),
        "{said}"
    );
    // It read the header to know what the range needs, and nothing more.
    let kept = disk_bytes(&swarm.path("models3"));
    assert!(kept <= 5 << 20, "{kept}");
    // Not asked again for a while: without it there is no third stage, and the error says so.
    let out = run_hearth(&[], &args);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no route"), "{said}");
}

#[test]
fn a_stage_that_stops_answering_while_it_fetches_ends_the_session_with_a_clear_error() {
    let empty = tempfile::tempdir().expect("tmp");
    let mut swarm = Swarm::start_bare(&["--models", empty.path().to_str().expect("utf-8")]);
    // A slow seed, so the fetches are under way when a fetcher is stopped.
    swarm.start_node_with(0, None, &["--max-memory", "1M", "--max-upload-rate", "4M"]);
    for i in 1..=3 {
        start_fetcher(&mut swarm, i);
    }
    swarm.wait_online(4);
    let mut args = GENERATE.to_vec();
    args.push(&swarm.api);
    let generate = std::process::Command::new(support::hearth())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("generate");
    let stopped = wait_until(
        Duration::from_secs(60),
        "a node part way through its fetch",
        || (1..=3).find(|&i| disk_bytes(&swarm.path(&format!("models{i}"))) > 4 << 20),
    );
    // What is on its way shows: the fetcher advertises the layers it is fetching, per model.
    let fetcher = swarm.nodes[stopped].0.clone();
    let listed = wait_until(Duration::from_secs(20), "the fetch advertised", || {
        let entry = swarm.peer(&fetcher);
        let fetching = entry["layers_fetching"].as_array()?.first()?.clone();
        let ranges = fetching["layers"].as_array()?.clone();
        (!ranges.is_empty()).then_some(fetching)
    });
    let held = swarm.peer(&fetcher)["layers_held"].clone();
    assert!(
        listed["layers"]
            .as_array()
            .expect("ranges")
            .iter()
            .all(|r| r[0].as_u64() < r[1].as_u64() && r[1].as_u64() <= Some(30)),
        "{listed} (held: {held})"
    );
    // SIGSTOP: its connections stay open, it answers nothing (as a hung machine would).
    swarm.nodes[stopped].1.pause(true);
    let out = generate.wait_with_output().expect("generate ends");
    swarm.nodes[stopped].1.pause(false);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&swarm.nodes[stopped].0) && said.contains("left the swarm"),
        "{said}"
    );
}
