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

#[test]
fn nodes_behind_nats_work_together_through_the_relay_and_hole_punching() {
    let required = std::env::var("HEARTH_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    let world = match World::create(&[
        (Nat::PortPreserving, 1),
        (Nat::PortPreserving, 1),
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

    // One node in each home, behind its NAT: it dials out, and is reachable only through the
    // coordinator's relay until hole punching opens a direct path.
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    for (k, home) in world.homes.iter().enumerate() {
        let dir = tmp.path().join(format!("node{k}"));
        ids.push(keygen(&dir));
        let prefix = World::exec(&home.hosts[0]);
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        nodes.push(Process::start(
            &format!("node{k}"),
            logs,
            &prefix,
            &[
                "node",
                "--no-mdns",
                "--behind-nat",
                "--max-threads",
                "1",
                "--data-dir",
                dir.to_str().expect("utf-8"),
                "--join",
                &api,
                "--listen",
                "/ip4/0.0.0.0/udp/0/quic-v1",
                "--listen",
                "/ip4/0.0.0.0/tcp/0",
            ],
        ));
    }
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

    // A 3-stage generation of a long prompt, its stages in the three homes: the stages hand
    // steps to each other across the NATs.
    let prompt = long_prompt();
    let local = run_hearth(
        &[],
        &[
            "local",
            "generate",
            "--prompt",
            &prompt,
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
    let prompt_tokens = local["prompt_ids"].as_array().map_or(0, Vec::len);
    assert!(
        prompt_tokens >= 1000,
        "the prompt is {prompt_tokens} tokens"
    );
    let out = run_hearth(
        &public,
        &[
            "generate",
            "--api",
            &api,
            "--api-key",
            &key,
            "--prompt",
            &prompt,
            "--max-tokens",
            "8",
            "--stages",
            "3",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = stdout_json(&out);
    assert_eq!(summary["token_ids"], local["token_ids"], "{summary}");
    let route: Vec<&str> = summary["route"]
        .as_array()
        .expect("route")
        .iter()
        .map(|h| h["peer_id"].as_str().expect("peer"))
        .collect();
    assert_eq!(route.len(), 3);
    for id in &ids {
        assert!(
            route.contains(&id.as_str()),
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
    assert!(
        punched(0, &ids[1]) || punched(1, &ids[0]),
        "no hole punch between the two port-preserving homes:\n{}",
        all()
    );
    for k in 0..2 {
        assert!(
            !punched(k, &ids[2]) && !punched(2, &ids[k]),
            "a hole punched through the symmetric NAT:\n{}",
            all()
        );
        assert!(
            relayed(2, &ids[k]) || relayed(k, &ids[2]),
            "node {k} and the symmetric home's node not connected through the relay:\n{}",
            all()
        );
    }
    // The nodes advertise their links, and the coordinator lists them: the connection type is
    // what the nodes' own connections are, not assumed.
    let link = |listed: &[Value], k: usize, j: usize| -> Option<String> {
        entry(listed, &ids[k])?["links"]
            .as_array()?
            .iter()
            .find(|l| l["peer"] == ids[j].as_str())
            .and_then(|l| l["connection"].as_str().map(String::from))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = peers();
        let punched = [(0, 1), (1, 0)]
            .iter()
            .any(|&(k, j)| link(&listed, k, j).as_deref() == Some("hole-punched"));
        let relayed = [0, 1]
            .iter()
            .all(|&j| link(&listed, 2, j).as_deref() == Some("relayed"));
        if punched && relayed {
            break;
        }
        let links: Vec<&Value> = listed.iter().map(|p| &p["links"]).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "the nodes' links: {links:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // `hearth peers` shows how each is reached and the round trip.
    let table = run_hearth(&public, &["peers", "--api", &api, "--api-key", &key]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    for id in &ids {
        let row = table
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not in:\n{table}"));
        assert!(row.contains("direct") && row.contains(" ms"), "{row}");
    }

    // A sharded embedding job over all three homes equals one machine's embedding.
    let input = tmp.path().join("texts.jsonl");
    let lines: Vec<String> = (0..24)
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
            "4",
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
