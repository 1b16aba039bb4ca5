//! A coordinator and three node processes form a swarm; a killed node goes offline; a restarted one
//! comes back under the same peer id. Once on loopback, once across network namespaces.

mod support;

use std::time::{Duration, Instant};

use support::netns::Namespaces;
use support::{Process, assert_capabilities, entry, keygen, run_hearth, wait_for_api, wait_until};

/// Where each process runs and listens.
struct Topology {
    coordinator_prefix: Vec<String>,
    coordinator_listen: Vec<String>,
    http: String,
    node_prefixes: Vec<Vec<String>>,
    node_listen: Vec<String>,
    /// Flags for the nodes and the coordinator alike.
    flags: Vec<String>,
    /// Where `hearth peers` runs (it must reach the HTTP address).
    client_prefix: Vec<String>,
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn scenario(topology: &Topology) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let logs = tmp.path();
    let coordinator_dir = tmp.path().join("coordinator");
    let mut args = vec![
        "coordinator",
        "--data-dir",
        coordinator_dir.to_str().expect("utf-8"),
        "--http",
        &topology.http,
    ];
    // The API needs a key (the admin key, read below); off loopback it is plain HTTP only when asked.
    if !topology.http.starts_with("127.") {
        args.push("--insecure-http");
    }
    for addr in &topology.coordinator_listen {
        args.extend(["--listen", addr]);
    }
    args.extend(topology.flags.iter().map(String::as_str));
    let mut coordinator = Process::start(
        "coordinator",
        logs,
        &strs(&topology.coordinator_prefix),
        &args,
    );
    let api = wait_for_api(&coordinator_dir, &mut coordinator);
    let client = strs(&topology.client_prefix);
    let key = std::fs::read_to_string(coordinator_dir.join("admin.key")).expect("admin key");
    let key = key.trim();
    let peers = |client: &[&str], api: &str| support::peers_with_key(client, api, Some(key));

    // Identities made ahead of the first start, as an operator would with `hearth keygen`.
    let node_dirs: Vec<_> = (0..3)
        .map(|i| tmp.path().join(format!("node{i}")))
        .collect();
    let ids: Vec<String> = node_dirs.iter().map(|d| keygen(d)).collect();
    let start_node = |i: usize| {
        let dir = node_dirs[i].to_str().expect("utf-8");
        let mut args = vec!["node", "--data-dir", dir, "--join", &api, "--models", dir];
        for addr in &topology.node_listen {
            args.extend(["--listen", addr]);
        }
        args.extend(topology.flags.iter().map(String::as_str));
        Process::start(
            &format!("node{i}"),
            logs,
            &strs(&topology.node_prefixes[i]),
            &args,
        )
    };

    let started = Instant::now();
    let mut nodes: Vec<Process> = (0..3).map(start_node).collect();
    let listed = wait_until(
        Duration::from_secs(10),
        "3 nodes online with capabilities",
        || {
            for node in &mut nodes {
                node.assert_running();
            }
            let peers = peers(&client, &api);
            ids.iter()
                .all(|id| entry(&peers, id).is_some_and(|p| p["online"] == true))
                .then_some(peers)
        },
    );
    let formed = started.elapsed();
    assert_eq!(listed.len(), 3, "exactly the three nodes: {listed:#?}");
    for peer in &listed {
        assert_capabilities(peer);
    }

    // A node killed outright is marked offline by missed heartbeats; the others stay online.
    nodes[1].kill();
    let killed_at = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "killed node marked offline",
        || {
            let peers = peers(&client, &api);
            let gone = entry(&peers, &ids[1]).is_some_and(|p| p["online"] == false);
            let others = [0, 2]
                .iter()
                .all(|&i| entry(&peers, &ids[i]).is_some_and(|p| p["online"] == true));
            (gone && others).then_some(())
        },
    );
    let offline_after = killed_at.elapsed();

    // Restarted on the same data folder, it returns under the same peer id, not as a fourth peer.
    nodes[1] = start_node(1);
    wait_until(
        Duration::from_secs(15),
        "restarted node back online",
        || {
            nodes[1].assert_running();
            let peers = peers(&client, &api);
            (peers.len() == 3 && peers.iter().all(|p| p["online"] == true)).then_some(())
        },
    );
    assert!(
        nodes[1].log_text().contains(&ids[1]),
        "restarted node logs the same identity"
    );

    let human = run_hearth(&client, &["peers", "--api", &api, "--api-key", key]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("3 peers, 3 online"), "{text}");
    coordinator.assert_running();
    let report = format!(
        "swarm formed in {:.1}s; killed node offline after {:.1}s",
        formed.as_secs_f64(),
        offline_after.as_secs_f64()
    );
    println!("{report}");
    coordinator.log_text()
}

#[test]
fn swarm_forms_on_loopback_and_survives_a_node_restart() {
    let loopback = vec![
        "/ip4/127.0.0.1/udp/0/quic-v1".to_string(),
        "/ip4/127.0.0.1/tcp/0".to_string(),
    ];
    scenario(&Topology {
        coordinator_prefix: vec![],
        coordinator_listen: loopback.clone(),
        http: "127.0.0.1:0".into(),
        node_prefixes: vec![vec![]; 3],
        node_listen: loopback,
        // Other tests' swarms run on this host at the same time: no LAN discovery here.
        flags: vec!["--no-mdns".into()],
        client_prefix: vec![],
    });
}

#[test]
fn swarm_forms_across_network_namespaces() {
    let required = std::env::var("HEARTH_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    let ns = match Namespaces::create(3) {
        Ok(ns) => ns,
        Err(reason) if !required => {
            println!(
                "SKIPPED swarm_forms_across_network_namespaces: cannot make network namespaces here ({reason})"
            );
            return;
        }
        Err(reason) => {
            panic!("HEARTH_REQUIRE_NETNS=1 but network namespaces are unavailable: {reason}")
        }
    };
    let exec = |n: &str| {
        Namespaces::exec(n)
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let hub = ns.hub_addr();
    let log = scenario(&Topology {
        coordinator_prefix: exec(&ns.hub),
        coordinator_listen: vec![
            format!("/ip4/{hub}/udp/0/quic-v1"),
            format!("/ip4/{hub}/tcp/0"),
        ],
        http: format!("{hub}:0"),
        node_prefixes: ns.hosts.iter().map(|h| exec(h)).collect(),
        node_listen: vec![
            "/ip4/0.0.0.0/udp/0/quic-v1".into(),
            "/ip4/0.0.0.0/tcp/0".into(),
        ],
        // Each namespace is its own LAN segment on the bridge: mDNS stays on, as on a real LAN.
        flags: vec![],
        client_prefix: exec(&ns.hub),
    });
    // The nodes reached the coordinator from their own interfaces, not over loopback.
    for i in 0..3 {
        let from = format!("addr=/ip4/{}/", ns.host_addr(i));
        assert!(
            log.contains(&from),
            "no connection from {from} in the coordinator's log:\n{log}"
        );
    }
}
