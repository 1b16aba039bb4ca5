//! Sharded jobs on real processes with the real embedder: liars caught, nodes and the coordinator
//! killed mid-job, and the output always bit for bit what one machine computes alone.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::local_swarm::Swarm;
use support::{Process, local_embed, run_hearth, stdout_json, wait_until};

/// Texts to embed: varied lengths, some repeated words, ids of both JSON kinds.
fn write_texts(path: &Path, n: usize) {
    let words = [
        "hearth",
        "volunteer",
        "swarm",
        "quorum",
        "receipt",
        "kernel",
        "co-op",
        "ember",
        "lantern",
        "river",
    ];
    let mut text = String::new();
    for i in 0..n {
        let sentence: Vec<&str> = (0..3 + i % 11)
            .map(|k| words[(i * 7 + k * 3) % 10])
            .collect();
        let id = if i % 2 == 0 {
            Value::from(format!("t{i}"))
        } else {
            Value::from(i)
        };
        let line = serde_json::json!({ "id": id, "text": sentence.join(" ") });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).expect("write inputs");
}

/// The output verifies offline against its receipts, and a tampered copy does not.
fn assert_receipts_verify(swarm: &Swarm, output: &[u8], receipts: &Path) {
    let output_path = swarm.path("checked.jsonl");
    std::fs::write(&output_path, output).expect("write");
    let verify = |path: &Path| {
        run_hearth(
            &[],
            &[
                "verify",
                "--receipts",
                receipts.to_str().expect("utf-8"),
                "--output",
                path.to_str().expect("utf-8"),
                "--json",
            ],
        )
    };
    let report = verify(&output_path);
    let json: Value = serde_json::from_slice(&report.stdout).expect("verify --json");
    assert!(report.status.success() && json["ok"] == true, "{json}");
    // Change one number in line 7: verify must name those lines.
    let text = String::from_utf8(output.to_vec()).expect("utf-8");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[6] = lines[6].replacen("\"embedding\":[", "\"embedding\":[0.5,", 1);
    let tampered = swarm.path("tampered.jsonl");
    std::fs::write(&tampered, lines.join("\n") + "\n").expect("write");
    let report = verify(&tampered);
    let json: Value = serde_json::from_slice(&report.stdout).expect("verify --json");
    assert!(!report.status.success(), "{json}");
    let names_line_7 = |problem: &str| {
        problem.contains("tampered.jsonl: lines")
            && problem.contains("do not match")
            && problem
                .split("lines ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .is_some_and(|list| list.split(',').any(|n| n == "7"))
    };
    let problems = json["problems"].as_array().expect("problems");
    assert!(
        problems.iter().filter_map(Value::as_str).any(names_line_7),
        "{json}"
    );
}

/// Most credit a liar may hold: a replaying node answers its first unit honestly (it has nothing to
/// replay yet), and earns that unit's 4 inputs.
fn honest_credit_before_lying(fault: &str) -> f64 {
    if fault == "replay" { 4.0 } else { 0.0 }
}

fn liars_are_caught(faults: &[&str]) {
    let mut kinds: Vec<Option<&str>> = vec![None; 4];
    kinds.extend(faults.iter().map(|f| Some(*f)));
    let swarm = Swarm::start(&kinds);
    let input = swarm.path("texts.jsonl");
    write_texts(&input, 200);
    let reference = local_embed(&input, &swarm.path("reference.jsonl"));

    let job = swarm.submit(&input, "2", "4");
    let (output, receipts) = swarm.finish(&job);
    assert!(
        output == reference,
        "the swarm's output differs from `hearth local embed`"
    );
    let status = swarm.status(&job, true);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["units_total"], 50);
    assert_eq!(status["units_failed"], 0);
    assert!(
        status["rejected"].as_u64().expect("rejected") >= 1,
        "{status}"
    );

    for (i, (peer_id, _)) in swarm.nodes.iter().enumerate() {
        let entry = swarm.peer(peer_id);
        let liar = i >= 4;
        assert_eq!(entry["quarantined"], liar, "node{i}: {entry}");
        if liar {
            assert!(entry["quarantine_reason"].is_string(), "{entry}");
            let credit = entry["credit"].as_f64().expect("credit");
            assert!(
                credit <= honest_credit_before_lying(faults[i - 4]),
                "a liar earned credit: {entry}"
            );
        } else {
            assert!(entry["credit"].as_f64().expect("credit") > 0.0, "{entry}");
            assert!(entry["reliability"].as_f64().expect("reliability") > 0.9);
            assert_eq!(entry["strikes"], 0);
        }
    }
    // No receipt from a liar backs an accepted result.
    let receipts_text = std::fs::read_to_string(&receipts).expect("receipts");
    assert_eq!(receipts_text.lines().count(), 50);
    assert_receipts_verify(&swarm, &output, &receipts);
    let signers: Vec<String> = receipts_text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            v["receipt"]["signer"].as_str().unwrap_or("").to_string()
        })
        .collect();
    assert!(signers.iter().all(|s| !s.is_empty()));
}

#[test]
fn a_wrong_output_liar_is_quarantined_and_the_output_is_exact() {
    liars_are_caught(&["wrong-output"]);
}

#[test]
fn bad_signatures_and_replays_are_quarantined_and_the_output_is_exact() {
    liars_are_caught(&["bad-signature", "replay"]);
}

#[test]
fn a_node_killed_mid_job_costs_nothing() {
    let mut swarm = Swarm::start(&[None, None, None]);
    let input = swarm.path("texts.jsonl");
    write_texts(&input, 240);
    let reference = local_embed(&input, &swarm.path("reference.jsonl"));
    let job = swarm.submit(&input, "2", "2");
    wait_until(Duration::from_secs(60), "the job under way", || {
        (swarm.status(&job, false)["units_done"].as_u64()? >= 10).then_some(())
    });
    let victim = &mut swarm.nodes[0].1;
    victim.kill();
    let done_at_kill = swarm.status(&job, false)["units_done"].clone();
    assert_ne!(done_at_kill, 120, "the job finished before the kill");
    let (output, _) = swarm.finish(&job);
    assert!(
        output == reference,
        "output differs after a node was killed"
    );
    let status = swarm.status(&job, false);
    assert_eq!(status["state"], "done");
    assert_eq!(status["units_failed"], 0);
}

#[test]
fn a_node_stopped_with_sigterm_drains_its_work_and_exits_cleanly() {
    let mut swarm = Swarm::start(&[None, None]);
    let input = swarm.path("texts.jsonl");
    write_texts(&input, 400);
    let reference = local_embed(&input, &swarm.path("reference.jsonl"));
    let job = swarm.submit(&input, "1", "4");
    wait_until(Duration::from_secs(60), "the job under way", || {
        (swarm.status(&job, false)["units_done"].as_u64()? >= 10).then_some(())
    });
    let node = &mut swarm.nodes[0].1;
    let status = node
        .terminate(Duration::from_secs(40))
        .expect("the node exits within its drain time after SIGTERM");
    assert!(status.success(), "exit status {status}");
    let log = node.log_text();
    assert!(log.contains("draining"), "{log}");
    assert!(
        log.contains("drained"),
        "everything held was delivered: {log}"
    );
    assert_ne!(
        swarm.status(&job, false)["state"],
        "done",
        "the job outlived the node"
    );
    let (output, _) = swarm.finish(&job);
    assert!(
        output == reference,
        "output differs after a drained node left"
    );
    let status = swarm.status(&job, false);
    assert_eq!(status["units_failed"], 0);
    // Nothing it held had to be run again: its units were delivered, not timed out.
    assert_eq!(status["executions"], status["units_total"], "{status}");
}

#[test]
fn a_coordinator_killed_mid_job_resumes_it_from_its_journal() {
    let mut swarm = Swarm::start(&[None, None, None]);
    let input = swarm.path("texts.jsonl");
    write_texts(&input, 300);
    let reference = local_embed(&input, &swarm.path("reference.jsonl"));
    let job = swarm.submit(&input, "2", "2");
    wait_until(Duration::from_secs(60), "the job under way", || {
        (swarm.status(&job, false)["units_done"].as_u64()? >= 15).then_some(())
    });
    let before_kill = swarm.status(&job, false);
    swarm.coordinator.kill();
    assert_eq!(before_kill["state"], "running", "{before_kill}");
    let log_before = swarm.coordinator.log_text();
    let args: Vec<&str> = swarm.coordinator_args.iter().map(String::as_str).collect();
    swarm.coordinator = Process::start("coordinator-restarted", swarm.tmp.path(), &[], &args);
    // `hearth job --wait` rides out the moments the coordinator is not listening yet.
    let (output, _) = swarm.finish(&job);
    assert!(
        output == reference,
        "output differs after a coordinator restart"
    );
    let status = swarm.status(&job, true);
    assert_eq!(status["state"], "done");
    assert_eq!(status["units_total"], 150);
    let units = status["units"].as_array().expect("units");
    for unit in units {
        assert_eq!(unit["state"], "done", "{unit}");
        assert_eq!(
            unit["journal_accepts"], 1,
            "unit accepted other than once: {unit}"
        );
    }
    let restarted = swarm.coordinator.log_text();
    assert!(
        restarted.contains("journal replayed"),
        "before:\n{log_before}\nafter:\n{restarted}"
    );
}

#[test]
fn bad_input_is_refused_up_front_and_nothing_is_submitted() {
    let swarm = Swarm::start(&[None]);
    let cases: [(&str, &str, &str); 4] = [
        (
            "not-json",
            "{\"id\": 1, \"text\": \"fine\"}\nnot json\n",
            ":2: not JSON",
        ),
        (
            "no-text",
            "{\"id\": 1, \"text\": \"a\"}\n{\"id\": 2}\n",
            ":2: no \"text\"",
        ),
        ("empty", "\n\n", "no input lines"),
        (
            "long",
            &format!("{{\"id\": 1, \"text\": \"{}\"}}\n", "x".repeat(1 << 21)),
            ":1: line longer",
        ),
    ];
    for (name, content, expected) in cases {
        let path = swarm.path(&format!("{name}.jsonl"));
        std::fs::write(&path, content).expect("write");
        let out = swarm.hearth(&[
            "embed",
            "--input",
            path.to_str().expect("utf-8"),
            "--output",
            swarm.path("never.jsonl").to_str().expect("utf-8"),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    let jobs = stdout_json(&swarm.hearth(&["jobs", "--json"]));
    assert_eq!(
        jobs,
        serde_json::json!([]),
        "a bad input half-submitted a job"
    );
}

#[test]
fn batch_generate_on_the_swarm_matches_local_generation() {
    let swarm = Swarm::start(&[None, None]);
    let prompts = [
        "The capital of France is",
        "Volunteer computing means",
        "1, 2, 3,",
    ];
    let input = swarm.path("prompts.jsonl");
    let lines: Vec<String> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| serde_json::json!({ "id": i, "prompt": p }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    let output = swarm.path("completions.jsonl");
    let out = swarm.hearth(&[
        "batch",
        "generate",
        "--input",
        input.to_str().expect("utf-8"),
        "--output",
        output.to_str().expect("utf-8"),
        "--max-tokens",
        "8",
        "--replicas",
        "2",
        "--unit-size",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&output).expect("output");
    let results: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(results.len(), prompts.len());
    for (i, (result, prompt)) in results.iter().zip(prompts).enumerate() {
        assert_eq!(result["id"], i);
        let local = stdout_json(&run_hearth(
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
        ));
        assert_eq!(result["token_ids"], local["token_ids"], "{prompt}");
        assert_eq!(result["text"], local["text"], "{prompt}");
    }
}

#[test]
fn the_demo_runs_jobs_and_catches_its_liar() {
    let out = run_hearth(&[], &["demo", "--nodes", "3", "--timeout", "60"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("job 1 done"), "{stdout}");
    assert!(stdout.contains("The capital of France is"), "{stdout}");
    assert!(
        stdout.contains("is quarantined: result lost a quorum"),
        "{stdout}"
    );
    // The pipelined generation streamed, checked every window, and caught the lying stage.
    assert!(stdout.contains("32 tokens, 32 verified"), "{stdout}");
    assert!(stdout.contains("caught: steps"), "{stdout}");
}

#[test]
fn a_result_finished_while_the_coordinator_is_down_is_delivered_from_the_outbox() {
    // A slow node is still computing when the coordinator dies; it finishes, cannot deliver, keeps
    // the result in its outbox, and delivers it to the restarted coordinator.
    let mut swarm = Swarm::start(&[Some("slow")]);
    let input = swarm.path("texts.jsonl");
    write_texts(&input, 4);
    let reference = local_embed(&input, &swarm.path("reference.jsonl"));
    let job = swarm.submit(&input, "1", "4");
    wait_until(Duration::from_secs(30), "the unit assigned", || {
        (swarm.status(&job, false)["units_running"] == 1).then_some(())
    });
    swarm.coordinator.kill();
    let node_log = || swarm.nodes[0].1.log_text();
    wait_until(
        Duration::from_secs(30),
        "the result kept in the outbox",
        || {
            node_log()
                .contains("result kept in the outbox")
                .then_some(())
        },
    );
    let args: Vec<&str> = swarm.coordinator_args.iter().map(String::as_str).collect();
    swarm.coordinator = Process::start("coordinator-restarted", swarm.tmp.path(), &[], &args);
    let (output, _) = swarm.finish(&job);
    assert!(
        output == reference,
        "output differs after delivery from the outbox"
    );
    let status = swarm.status(&job, false);
    assert_eq!(status["executions"], 1, "{status}");
    assert!(node_log().contains("result acknowledged"), "{}", node_log());
}

/// One node joined to two independent coordinators works for both, delivers each its own results,
/// and each swarm credits it only for its own work (one credit per text verified): swarm A has the
/// shared node and one of its own (replicas 2: both compute every unit), swarm B the shared node
/// alone. B never lists A's own node, whose adverts reach it through the shared one.
#[test]
fn a_node_joined_to_two_swarms_works_for_each_and_each_credits_its_own() {
    let mut a = Swarm::start(&[None]);
    let b = Swarm::start(&[]);
    a.start_node_with(1, None, &["--join", &b.api]);
    a.wait_online(2);
    b.wait_online(1);
    let (a_own, shared) = (a.nodes[0].0.clone(), a.nodes[1].0.clone());

    let (a_texts, b_texts) = (12, 20);
    let input_a = a.path("a.jsonl");
    write_texts(&input_a, a_texts);
    let input_b = b.path("b.jsonl");
    write_texts(&input_b, b_texts);
    let job_a = a.submit(&input_a, "2", "4");
    let job_b = b.submit(&input_b, "1", "4");
    let (out_a, _) = a.finish(&job_a);
    let (out_b, _) = b.finish(&job_b);
    assert!(out_a == local_embed(&input_a, &a.path("ref-a.jsonl")));
    assert!(out_b == local_embed(&input_b, &b.path("ref-b.jsonl")));

    let credit = |swarm: &Swarm, id: &str| swarm.peer(id)["credit"].as_f64().expect("credit");
    assert_eq!(credit(&a, &shared), a_texts as f64, "{}", a.peer(&shared));
    assert_eq!(credit(&a, &a_own), a_texts as f64, "{}", a.peer(&a_own));
    assert_eq!(credit(&b, &shared), b_texts as f64, "{}", b.peer(&shared));
    let b_lists: Vec<Value> = support::peers(&[], &b.api);
    assert!(
        b_lists.iter().all(|p| p["peer_id"] != a_own.as_str()),
        "swarm B lists swarm A's own node: {b_lists:#?}"
    );
    assert_eq!(b_lists.len(), 1, "{b_lists:#?}");
    let shared_log = a.nodes[1].1.log_text();
    assert!(
        !shared_log.contains("unreadable outbox entry"),
        "{shared_log}"
    );
}
