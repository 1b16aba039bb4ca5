//! Across networks: nodes in home networks behind NATs join a coordinator on a public network,
//! reach each other through its relay, and directly where hole punching crosses their NATs.
//! Real network namespaces, veths, bridges and iptables MASQUERADE (as root); skipped with a
//! reason where the machine cannot make them, unless HEARTH_REQUIRE_NETNS=1.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::nat::{Nat, World};
use support::{Process, entry, keygen, run_hearth, stdout_json, wait_for_api, wait_until};

/// A prompt of well over 1,000 tokens.
fn long_prompt() -> String {
    let sentence = "The co-op's machines sit in three homes, each behind its own router, and \
                    still they compute one model together, layer after layer. ";
    sentence.repeat(40)
}

/// Generate 8 tokens of `prompt` on the swarm (from the public network, with `extra` flags) and
/// on this machine alone; assert they are the same tokens. Returns the swarm's summary and the
/// prompt's length in tokens.
fn generate_equals_local(
    public: &[&str],
    api: &str,
    key: &str,
    prompt: &str,
    extra: &[&str],
) -> (Value, usize) {
    let local = run_hearth(
        &[],
        &[
            "local",
            "generate",
            "--prompt",
            prompt,
            "--max-tokens",
            "8",
            "--json",
        ],
    );
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let local = stdout_json(&local);
    let mut args = vec![
        "generate",
        "--api",
        api,
        "--api-key",
        key,
        "--prompt",
        prompt,
        "--max-tokens",
        "8",
        "--json",
    ];
    args.extend(extra);
    let out = run_hearth(public, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = stdout_json(&out);
    assert_eq!(summary["token_ids"], local["token_ids"], "{summary}");
    let prompt_tokens = local["prompt_ids"].as_array().map_or(0, Vec::len);
    (summary, prompt_tokens)
}

#[test]
fn nodes_behind_nats_work_together_through_the_relay_and_hole_punching() {
    let required = std::env::var("HEARTH_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    let world = match World::create(&[
        (Nat::PortPreserving, 2),
        (Nat::PortPreserving, 2),
        (Nat::Symmetric, 1),
    ]) {
        Ok(world) => world,
        Err(reason) if !required => {
            println!("SKIPPED nodes_behind_nats_work_together: cannot make NATs here ({reason})");
            return;
        }
        Err(reason) => panic!("HEARTH_REQUIRE_NETNS=1 but NATs cannot be made here: {reason}"),
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let logs = tmp.path();
    let public = World::exec(&world.public);
    let public: Vec<&str> = public.iter().map(String::as_str).collect();
    let addr = world.public_addr();

    let coordinator_dir = tmp.path().join("coordinator");
    let mut coordinator = Process::start(
        "coordinator",
        logs,
        &public,
        &[
            "coordinator",
            "--no-mdns",
            "--data-dir",
            coordinator_dir.to_str().expect("utf-8"),
            "--http",
            &format!("{addr}:0"),
            "--insecure-http",
            "--listen",
            &format!("/ip4/{addr}/udp/0/quic-v1"),
            "--listen",
            &format!("/ip4/{addr}/tcp/0"),
        ],
    );
    let api = wait_for_api(&coordinator_dir, &mut coordinator);
    let key = std::fs::read_to_string(coordinator_dir.join("admin.key")).expect("admin key");
    let key = key.trim().to_string();

    // Every host of every home runs a node behind its NAT: it dials out, and is reachable only
    // through the coordinator's relay until hole punching opens a direct path. The first node of
    // each home holds the model; the second nodes of the first two homes hold nothing and fetch
    // the layers they are given from the holders, across the NATs.
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    let mut home_of = Vec::new();
    for (k, home) in world.homes.iter().enumerate() {
        for (j, host) in home.hosts.iter().enumerate() {
            let n = nodes.len();
            let dir = tmp.path().join(format!("node{n}"));
            ids.push(keygen(&dir));
            home_of.push(k);
            let prefix = World::exec(host);
            let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
            let empty = tmp.path().join(format!("models{n}"));
            let mut args = vec![
                "node".to_string(),
                "--no-mdns".into(),
                "--behind-nat".into(),
                "--max-threads".into(),
                "1".into(),
                "--data-dir".into(),
                dir.to_str().expect("utf-8").into(),
                "--join".into(),
                api.clone(),
                "--listen".into(),
                "/ip4/0.0.0.0/udp/0/quic-v1".into(),
                "--listen".into(),
                "/ip4/0.0.0.0/tcp/0".into(),
            ];
            if j > 0 {
                // The embedding model only (for the embed job); no SmolLM2.
                let minilm = empty.join("all-minilm-l6-v2");
                std::fs::create_dir_all(&minilm).expect("models folder");
                let from = support::models_dir().join("all-minilm-l6-v2");
                for file in std::fs::read_dir(&from).expect("the embedding model") {
                    let file = file.expect("entry").path();
                    let to = minilm.join(file.file_name().expect("name"));
                    if std::fs::hard_link(&file, &to).is_err() {
                        std::fs::copy(&file, &to).expect("copy the embedding model");
                    }
                }
                args.extend(["--models".into(), empty.to_str().expect("utf-8").into()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(Process::start(&format!("node{n}"), logs, &prefix, &args));
        }
    }
    // The holders, one per home, in home order; and the nodes that fetch.
    let holders: Vec<usize> = (0..world.homes.len())
        .map(|k| {
            home_of
                .iter()
                .position(|&h| h == k)
                .expect("a node per home")
        })
        .collect();
    let peers = || support::peers_with_key(&public, &api, Some(&key));
    wait_until(Duration::from_secs(60), "every node online", || {
        let listed = peers();
        ids.iter()
            .all(|id| entry(&listed, id).is_some_and(|p| p["online"] == true))
            .then_some(())
    });
    // Each reached the coordinator from its router's public address, on a connection it dialed
    // out: direct, from the coordinator's side.
    let listed = peers();
    for id in &ids {
        let p = entry(&listed, id).expect("listed");
        assert_eq!(p["connection"], "direct", "{p}");
    }
    let log = coordinator.log_text();
    for k in 0..world.homes.len() {
        let from = format!("addr=/ip4/{}/", world.router_addr(k));
        assert!(log.contains(&from), "no connection from {from}:\n{log}");
    }
    // Each reserved a slot on the coordinator's relay.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !nodes
        .iter()
        .all(|n| n.log_text().contains("reserved a slot on a relay"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "a node did not reserve a relay slot:\n{}",
            nodes
                .iter()
                .map(Process::log_text)
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // AutoNAT: every node behind its NAT is private (the coordinator dials its observed address
    // back from a fresh port, which the NAT drops); the coordinator, on the public network, finds
    // itself public (nodes dialed it outright). `hearth peers` says both.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let listed = peers();
        let reach: Vec<&Value> = ids
            .iter()
            .map(|id| entry(&listed, id).map_or(&Value::Null, |p| &p["reachability"]))
            .collect();
        // Measured, not only declared (`--behind-nat` alone says private until a probe
        // answers): a node's probe of its router's address failed.
        let probed = nodes.iter().any(|n| {
            n.log_text().lines().any(|l| {
                (0..world.homes.len()).any(|k| {
                    l.contains(&format!(
                        "AutoNAT probe addr=/ip4/{}/",
                        world.router_addr(k)
                    ))
                }) && !l.contains("p2p-circuit")
                    && l.contains("reached=false")
            })
        });
        if reach.iter().all(|r| *r == "private") && probed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the nodes' reachability: {reach:?}; their probes:\n{}",
            nodes
                .iter()
                .flat_map(|n| {
                    n.log_text()
                        .lines()
                        .filter(|l| {
                            l.contains("AutoNAT")
                                || l.contains("reachability")
                                || l.contains("connected peer")
                                || l.contains("hole punch")
                        })
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let coordinator_public = || {
        let out = run_hearth(&public, &["peers", "--api", &api, "--api-key", &key]);
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        table
            .lines()
            .any(|l| l.starts_with("coordinator ") && l.ends_with("reachability public"))
            .then_some(table)
    };
    wait_until(
        Duration::from_secs(60),
        "the coordinator finds itself public",
        coordinator_public,
    );

    // A 3-stage generation of a long prompt, its stages in the three homes: the stages hand
    // steps to each other across the NATs.
    let prompt = long_prompt();
    let (summary, prompt_tokens) =
        generate_equals_local(&public, &api, &key, &prompt, &["--stages", "3"]);
    assert!(
        prompt_tokens >= 1000,
        "the prompt is {prompt_tokens} tokens"
    );
    let route: Vec<&str> = summary["route"]
        .as_array()
        .expect("route")
        .iter()
        .map(|h| h["peer_id"].as_str().expect("peer"))
        .collect();
    assert_eq!(route.len(), 3);
    for &h in &holders {
        assert!(
            route.contains(&ids[h].as_str()),
            "every home serves a stage: {route:?}"
        );
    }
    // How the stages reached each other: the two port-preserving homes punched through to each
    // other (a direct connection replaced the relayed one); the symmetric home could not, and its
    // node worked with the others over relayed connections.
    let text: Vec<String> = nodes.iter().map(Process::log_text).collect();
    let all = || text.join("\n---\n");
    let punched = |k: usize, other: &str| {
        text[k]
            .lines()
            .any(|l| l.contains("hole punched:") && l.contains(other))
    };
    let relayed = |k: usize, other: &str| {
        let connected = format!("connected peer={other}");
        text[k]
            .lines()
            .any(|l| l.contains(&connected) && l.contains("relayed=true"))
    };
    let [h0, h1, h2] = [holders[0], holders[1], holders[2]];
    assert!(
        punched(h0, &ids[h1]) || punched(h1, &ids[h0]),
        "no hole punch between the two port-preserving homes:\n{}",
        all()
    );
    for k in [h0, h1] {
        assert!(
            !punched(k, &ids[h2]) && !punched(h2, &ids[k]),
            "a hole punched through the symmetric NAT:\n{}",
            all()
        );
        assert!(
            relayed(h2, &ids[k]) || relayed(k, &ids[h2]),
            "node {k} and the symmetric home's node not connected through the relay:\n{}",
            all()
        );
    }

    // The symmetric home's stage says its steps go through the relay; the punched homes leave the
    // relay once the direct path is up.
    assert!(
        text[h2]
            .lines()
            .any(|l| l.contains("hands its steps to the next through a relay")),
        "the relayed stage did not say so:\n{}",
        text[h2]
    );
    assert!(
        [h0, h1].iter().any(|&k| text[k]
            .lines()
            .any(|l| l.contains("closing the relayed connection: the work runs directly now"))),
        "the punched homes kept their relayed connections:\n{}",
        all()
    );

    // A 5-stage generation: every node serves a stage, so the two that hold no model fetch their
    // layers from the holders in the three homes, across the NATs, before it starts.
    let short = "Five homes' machines, one model: ".repeat(12);
    generate_equals_local(
        &public,
        &api,
        &key,
        &short,
        &["--stages", "5", "--verify", "off"],
    );
    let listed = peers();
    for n in (0..nodes.len()).filter(|n| !holders.contains(n)) {
        let p = entry(&listed, &ids[n]).expect("listed");
        assert!(
            p["bytes_received"].as_u64().unwrap_or(0) > 0,
            "node {n} fetched no layers: {p}"
        );
    }

    // The nodes advertise their links, and the coordinator lists them: the connection type is
    // what the nodes' own connections are, not assumed. Every node of the two port-preserving
    // homes reaches one of the other's through a punched hole; every connection to the symmetric
    // home's node runs through the relay.
    let link = |listed: &[Value], k: usize, j: usize| -> Option<String> {
        entry(listed, &ids[k])?["links"]
            .as_array()?
            .iter()
            .find(|l| l["peer_id"] == ids[j].as_str())
            .and_then(|l| l["connection"].as_str().map(String::from))
    };
    let across = |k: usize| -> Vec<usize> {
        (0..nodes.len())
            .filter(|&j| home_of[j] < 2 && home_of[j] != home_of[k])
            .collect()
    };
    // Links come and go with the connections (an idle one closes), so what each poll shows is
    // gathered: every node of the two port-preserving homes seen with a punched link to the other
    // home; every link seen of the symmetric home's node relayed, and at least one seen.
    let mut punched_seen = std::collections::BTreeSet::new();
    let mut symmetric_links: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let listed = peers();
        for k in (0..nodes.len()).filter(|&k| home_of[k] < 2) {
            let hole = across(k).iter().any(|&j| {
                link(&listed, k, j).as_deref() == Some("hole-punched")
                    || link(&listed, j, k).as_deref() == Some("hole-punched")
            });
            if hole {
                punched_seen.insert(k);
            }
        }
        for k in (0..nodes.len()).filter(|&k| home_of[k] == 2) {
            for l in entry(&listed, &ids[k])
                .and_then(|p| p["links"].as_array().cloned())
                .unwrap_or_default()
            {
                symmetric_links.push(l["connection"].as_str().unwrap_or("?").to_string());
            }
        }
        let punched = (0..nodes.len())
            .filter(|&k| home_of[k] < 2)
            .all(|k| punched_seen.contains(&k));
        let through_relay = !symmetric_links.is_empty();
        if punched && through_relay {
            break;
        }
        let links: Vec<&Value> = listed.iter().map(|p| &p["links"]).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "punched seen for nodes {punched_seen:?}; the nodes' links now: {links:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        symmetric_links.iter().all(|c| c == "relayed"),
        "the symmetric home's links: {symmetric_links:?}"
    );

    // `hearth peers` shows how each is reached and the round trip.
    let table = run_hearth(&public, &["peers", "--api", &api, "--api-key", &key]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    for id in &ids {
        let row = table
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not in:\n{table}"));
        assert!(
            row.contains("private") && row.contains("direct") && row.contains(" ms"),
            "{row}"
        );
    }

    // A sharded embedding job over all three homes equals one machine's embedding.
    let input = tmp.path().join("texts.jsonl");
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let text = format!(
                "home {} line {i}: a lantern by the river of the co-op",
                i % 3
            );
            serde_json::json!({ "id": i, "text": text }).to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").expect("input");
    let expected = support::local_embed(&input, &tmp.path().join("local.jsonl"));
    let input_arg = input.to_str().expect("utf-8");
    let out = run_hearth(
        &public,
        &[
            "embed",
            "--api",
            &api,
            "--api-key",
            &key,
            "--input",
            input_arg,
            "--replicas",
            "1",
            "--unit-size",
            "2",
            "--detach",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let output = tmp.path().join("swarm.jsonl");
    let out = run_hearth(
        &public,
        &[
            "job",
            &job,
            "--api",
            &api,
            "--api-key",
            &key,
            "--wait",
            "--output",
            output.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&output).expect("output") == expected,
        "the swarm's embeddings differ from one machine's"
    );
    for (k, node) in nodes.iter().enumerate() {
        assert!(
            node.log_text().contains("result acknowledged"),
            "node {k} delivered no unit of the job"
        );
    }
    coordinator.assert_running();
}
