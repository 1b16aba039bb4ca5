//! A co-op swarm with real processes: the coordinator (`--coop DIR`) admits only nodes with a valid
//! certificate of its co-op. A node without one, with an expired one, with one of another co-op, and
//! one revoked while running are refused and get no work; the members keep working. Members refuse
//! outsiders that reach them directly.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{Process, keygen, peers, run_hearth, wait_for_api, wait_until};

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The address a node logged it listens on, with its peer id, to join it directly.
fn listen_addr(log: &str, peer_id: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.contains("listening"))
        .find_map(|l| l.split("address=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(|addr| format!("{addr}/p2p/{peer_id}"))
}

fn texts(path: &Path, n: usize) {
    let lines: String = (0..n)
        .map(|i| format!("{{\"id\":{i},\"text\":\"co-op text {i} with some words\"}}\n"))
        .collect();
    std::fs::write(path, lines).expect("write");
}

fn credit(peers: &[Value], id: &str) -> f64 {
    peers
        .iter()
        .find(|p| p["peer_id"] == id)
        .and_then(|p| p["credit"].as_f64())
        .unwrap_or(0.0)
}

#[test]
fn only_members_are_admitted_and_a_revocation_takes_effect_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = |name: &str| tmp.path().join(name).to_str().expect("utf-8").to_string();
    ok(run_hearth(&[], &["coop", "init", "--dir", &dir("coop")]));
    ok(run_hearth(&[], &["coop", "init", "--dir", &dir("other")]));

    let coordinator_dir = dir("coordinator");
    let mut coordinator = Process::start(
        "coordinator",
        tmp.path(),
        &[],
        &[
            "coordinator",
            "--data-dir",
            &coordinator_dir,
            "--http",
            "127.0.0.1:0",
            "--open",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--coop",
            &dir("coop"),
        ],
    );
    let api = wait_for_api(Path::new(&coordinator_dir), &mut coordinator);

    // Identities first, then certificates for them.
    let names = ["member1", "member2", "nocert", "expired", "foreign"];
    let ids: Vec<String> = names.iter().map(|n| keygen(Path::new(&dir(n)))).collect();
    let invite = |i: usize, coop: &str, extra: &[&str]| {
        let out = dir(&format!("{}.cert", names[i]));
        let mut args = vec!["coop", "invite", &ids[i], "--dir", coop, "--out", &out];
        args.extend(extra);
        ok(run_hearth(&[], &args));
        out
    };
    let certs = [
        Some(invite(0, &dir("coop"), &[])),
        Some(invite(1, &dir("coop"), &["--expires", "30"])),
        None,
        Some(invite(3, &dir("coop"), &["--expires-secs", "1"])),
        Some(invite(4, &dir("other"), &[])),
    ];
    // Wait until the short certificate has expired by the co-op's own check of it.
    let short = certs[3].clone().expect("a certificate");
    wait_until(
        Duration::from_secs(10),
        "the short certificate expired",
        || {
            // (It exits non-zero once the certificate is invalid, after printing its JSON.)
            let out = run_hearth(&[], &["coop", "show", &short, "--json"]);
            let shown: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            (shown["valid"] == false).then_some(())
        },
    );
    let start_node = |name: &str, join: &str, cert: Option<&str>| {
        let data = dir(name);
        let mut args = vec![
            "node",
            "--data-dir",
            &data,
            "--join",
            join,
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--max-threads",
            "1",
        ];
        if let Some(cert) = cert {
            args.extend(["--coop-cert", cert]);
        }
        Process::start(name, tmp.path(), &[], &args)
    };
    let mut nodes: Vec<Process> = names
        .iter()
        .zip(&certs)
        .map(|(name, cert)| start_node(name, &api, cert.as_deref()))
        .collect();

    // The members come online; the others are refused, with the reason in the coordinator's log.
    wait_until(Duration::from_secs(30), "both members online", || {
        let peers = peers(&[], &api);
        ids[..2]
            .iter()
            .all(|id| {
                peers
                    .iter()
                    .any(|p| p["peer_id"] == id.as_str() && p["online"] == true)
            })
            .then_some(())
    });
    wait_until(
        Duration::from_secs(30),
        "the three outsiders refused",
        || {
            let log = coordinator.log_text();
            ids[2..]
                .iter()
                .all(|id| {
                    log.lines()
                        .any(|l| l.contains(id.as_str()) && l.contains("refused"))
                })
                .then_some(())
        },
    );
    let log = coordinator.log_text();
    for (id, why) in [
        (&ids[2], "no co-op membership"),
        (&ids[3], "expired"),
        (&ids[4], "another co-op"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(id.as_str()) && l.contains(why)),
            "{id}: {why}\n{log}"
        );
    }
    // The node with the expired certificate was told so at start.
    assert!(
        nodes[3]
            .log_text()
            .lines()
            .any(|l| l.contains("certificate does not admit it") && l.contains("expired")),
        "{}",
        nodes[3].log_text()
    );
    for node in &mut nodes[..2] {
        node.assert_running();
        wait_until(
            Duration::from_secs(20),
            "the member checking the coordinator",
            || {
                node.log_text()
                    .contains("the coordinator is a member of our co-op")
                    .then_some(())
            },
        );
    }

    // Members check one another too: outsiders that join a member directly, never the coordinator,
    // are refused by that member, with the reason in its log.
    let member_addr = wait_until(Duration::from_secs(20), "member1's address", || {
        listen_addr(&nodes[0].log_text(), &ids[0])
    });
    let outsiders = ["intruder", "impostor"];
    let outsider_ids: Vec<String> = outsiders
        .iter()
        .map(|n| keygen(Path::new(&dir(n))))
        .collect();
    let impostor_cert = dir("impostor.cert");
    ok(run_hearth(
        &[],
        &[
            "coop",
            "invite",
            &outsider_ids[1],
            "--dir",
            &dir("other"),
            "--out",
            &impostor_cert,
        ],
    ));
    let outsider_nodes = [
        start_node(outsiders[0], &member_addr, None),
        start_node(outsiders[1], &member_addr, Some(&impostor_cert)),
    ];
    for (id, why) in [
        (&outsider_ids[0], "no co-op membership"),
        (&outsider_ids[1], "another co-op"),
    ] {
        wait_until(
            Duration::from_secs(40),
            &format!("the member refusing {id} ({why})"),
            || {
                nodes[0]
                    .log_text()
                    .lines()
                    .any(|l| l.contains(id.as_str()) && l.contains("refused") && l.contains(why))
                    .then_some(())
            },
        );
    }

    // And the impostor, a member of another co-op, says why on its side too.
    wait_until(
        Duration::from_secs(20),
        "the impostor refusing member1",
        || {
            outsider_nodes[1]
                .log_text()
                .lines()
                .any(|l| l.contains(ids[0].as_str()) && l.contains("another co-op"))
                .then_some(())
        },
    );

    // A job: only members work on it.
    let input = tmp.path().join("texts.jsonl");
    texts(&input, 80);
    let input = input.to_str().expect("utf-8");
    let run_job = || {
        let args = [
            "embed",
            "--input",
            input,
            "--detach",
            "--replicas",
            "1",
            "--unit-size",
            "4",
            "--api",
            &api,
        ];
        let job = ok(run_hearth(&[], &args));
        let job = job.split_whitespace().last().expect("job id").to_string();
        ok(run_hearth(&[], &["job", &job, "--wait", "--api", &api]));
    };
    run_job();
    let listed = peers(&[], &api);
    assert_eq!(listed.len(), 2, "only the members are known: {listed:#?}");
    let before = credit(&listed, &ids[1]);
    assert!(
        credit(&listed, &ids[0]) + before >= 80.0,
        "the members did the job: {listed:#?}"
    );

    // Revoke member2 while it runs: refused at once, told on gossip, and given no more work.
    let revoked = run_hearth(
        &[],
        &[
            "coop",
            "revoke",
            &ids[1],
            "--dir",
            &dir("coop"),
            "--api",
            &api,
            "--json",
        ],
    );
    let revoked: Value = serde_json::from_str(&ok(revoked)).expect("json");
    assert_eq!(revoked["coordinator"], true);
    wait_until(
        Duration::from_secs(20),
        "the revoked member refused",
        || {
            coordinator
                .log_text()
                .lines()
                .any(|l| l.contains(ids[1].as_str()) && l.contains("membership revoked"))
                .then_some(())
        },
    );
    run_job();
    let after = peers(&[], &api);
    assert_eq!(
        credit(&after, &ids[1]),
        before,
        "the revoked member got no work: {after:#?}"
    );
    assert!(
        credit(&after, &ids[0]) >= 80.0,
        "the remaining member did it"
    );
    // The revocation was kept, and spread to the members.
    assert!(
        Path::new(&coordinator_dir)
            .join("revoked")
            .join(format!("{}.revocation", ids[1]))
            .exists()
    );
    wait_until(
        Duration::from_secs(20),
        "member2 told of its revocation",
        || {
            nodes[1]
                .log_text()
                .contains("membership was revoked")
                .then_some(())
        },
    );
    // The other member refuses the revoked one too.
    wait_until(
        Duration::from_secs(20),
        "member1 refusing the revoked member",
        || {
            nodes[0]
                .log_text()
                .lines()
                .any(|l| l.contains(ids[1].as_str()) && l.contains("membership revoked"))
                .then_some(())
        },
    );
    coordinator.assert_running();
}

/// A node with two co-ops' certificates works for each co-op's coordinator; each co-op's swarm
/// knows only its own members (the shared node's gossip of one co-op never reaches the other's), a
/// member of one co-op that reaches the other's coordinator is refused as another co-op's, and a
/// revocation by one co-op leaves the node working for the other.
#[test]
fn a_node_in_two_coops_works_for_each_and_a_revocation_by_one_leaves_the_other() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = |name: &str| tmp.path().join(name).to_str().expect("utf-8").to_string();
    for coop in ["coop-a", "coop-b"] {
        ok(run_hearth(&[], &["coop", "init", "--dir", &dir(coop)]));
    }
    let start_coordinator = |name: &str, coop: &str| {
        let data = dir(name);
        let mut process = Process::start(
            name,
            tmp.path(),
            &[],
            &[
                "coordinator",
                "--data-dir",
                &data,
                "--http",
                "127.0.0.1:0",
                "--open",
                "--no-mdns",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--coop",
                &dir(coop),
            ],
        );
        let api = wait_for_api(Path::new(&data), &mut process);
        (process, api)
    };
    let (mut coordinator_a, api_a) = start_coordinator("coordinator-a", "coop-a");
    let (mut coordinator_b, api_b) = start_coordinator("coordinator-b", "coop-b");

    // "both" holds a certificate of each co-op and joins both coordinators; "only-a" and
    // "intruder" are members of A alone.
    let names = ["both", "only-a", "intruder"];
    let ids: Vec<String> = names.iter().map(|n| keygen(Path::new(&dir(n)))).collect();
    let invite = |i: usize, coop: &str| {
        let out = dir(&format!("{}-{coop}.cert", names[i]));
        ok(run_hearth(
            &[],
            &[
                "coop",
                "invite",
                &ids[i],
                "--dir",
                &dir(coop),
                "--out",
                &out,
            ],
        ));
        out
    };
    let (both_a, both_b) = (invite(0, "coop-a"), invite(0, "coop-b"));
    let (only_a, intruder_a) = (invite(1, "coop-a"), invite(2, "coop-a"));
    let start_node = |name: &str, join: &str, certs: &str| {
        let data = dir(name);
        Process::start(
            name,
            tmp.path(),
            &[],
            &[
                "node",
                "--data-dir",
                &data,
                "--join",
                join,
                "--no-mdns",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--max-threads",
                "1",
                "--coop-cert",
                certs,
            ],
        )
    };
    let mut both = start_node(
        "both",
        &format!("{api_a},{api_b}"),
        &format!("{both_a},{both_b}"),
    );
    let mut a_only = start_node("only-a", &api_a, &only_a);

    let online = |api: &str, id: &str| {
        peers(&[], api)
            .iter()
            .any(|p| p["peer_id"] == id && p["online"] == true)
    };
    wait_until(
        Duration::from_secs(40),
        "both swarms' members online",
        || {
            (online(&api_a, &ids[0]) && online(&api_a, &ids[1]) && online(&api_b, &ids[0]))
                .then_some(())
        },
    );
    wait_until(
        Duration::from_secs(20),
        "the shared node admitting both coordinators",
        || {
            (both
                .log_text()
                .matches("the coordinator is a member of our co-op")
                .count()
                >= 2)
                .then_some(())
        },
    );

    // A job in each co-op: in A with replicas 2 (both members run every unit), in B with the
    // shared node its only member.
    let input = tmp.path().join("texts.jsonl");
    texts(&input, 40);
    let input = input.to_str().expect("utf-8");
    let run_job = |api: &str, replicas: &str| {
        let args = [
            "embed",
            "--input",
            input,
            "--detach",
            "--replicas",
            replicas,
            "--unit-size",
            "4",
            "--api",
            api,
        ];
        let job = ok(run_hearth(&[], &args));
        let job = job.split_whitespace().last().expect("job id").to_string();
        ok(run_hearth(&[], &["job", &job, "--wait", "--api", api]));
    };
    run_job(&api_a, "2");
    run_job(&api_b, "1");
    let (listed_a, listed_b) = (peers(&[], &api_a), peers(&[], &api_b));
    assert_eq!(credit(&listed_a, &ids[0]), 40.0, "{listed_a:#?}");
    assert_eq!(credit(&listed_a, &ids[1]), 40.0, "{listed_a:#?}");
    assert_eq!(credit(&listed_b, &ids[0]), 40.0, "{listed_b:#?}");
    // B knows its one member only, though the shared node is meshed with A's other member.
    assert_eq!(listed_b.len(), 1, "B lists A's member: {listed_b:#?}");

    // A member of A alone that joins B's coordinator is refused as another co-op's member.
    let _intruder = start_node("intruder", &api_b, &intruder_a);
    wait_until(
        Duration::from_secs(40),
        "B refusing A's member as another co-op's",
        || {
            coordinator_b
                .log_text()
                .lines()
                .any(|l| {
                    l.contains(ids[2].as_str())
                        && l.contains("refused")
                        && l.contains("another co-op")
                })
                .then_some(())
        },
    );
    assert_eq!(peers(&[], &api_b).len(), 1, "B lists only its member");

    // A revokes the shared node: A's coordinator refuses it, the node says so and stops working
    // for A, and B's job still runs on it.
    ok(run_hearth(
        &[],
        &[
            "coop",
            "revoke",
            &ids[0],
            "--dir",
            &dir("coop-a"),
            "--api",
            &api_a,
        ],
    ));
    wait_until(
        Duration::from_secs(20),
        "the shared node told of A's revocation",
        || {
            both.log_text()
                .contains("no more work from that co-op's coordinators")
                .then_some(())
        },
    );
    run_job(&api_b, "1");
    assert_eq!(credit(&peers(&[], &api_b), &ids[0]), 80.0);
    run_job(&api_a, "1");
    let after_a = peers(&[], &api_a);
    assert_eq!(
        credit(&after_a, &ids[0]),
        40.0,
        "revoked in A: {after_a:#?}"
    );
    assert_eq!(credit(&after_a, &ids[1]), 80.0, "{after_a:#?}");
    both.assert_running();
    a_only.assert_running();
    coordinator_a.assert_running();
    coordinator_b.assert_running();
}
