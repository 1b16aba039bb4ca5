//! `--idle-only`: a node takes work only while its host's owner is not using the CPU. Alone in its
//! own test binary, so no other test's swarm loads the machine while it measures.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::local_swarm::Swarm;
use support::{peers, run_hearth, wait_until};

#[test]
fn an_idle_only_node_pauses_while_a_cpu_hog_runs_and_resumes_after() {
    let mut swarm = Swarm::start(&[]);
    swarm.start_node_with(0, None, &["--idle-only"]);
    wait_until(Duration::from_secs(30), "the node online", || {
        peers(&[], &swarm.api)
            .iter()
            .any(|p| p["online"] == true)
            .then_some(())
    });

    // The owner's work: a shell busy loop holding one core.
    let mut hog = Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .stdout(Stdio::null())
        .spawn()
        .expect("sh runs");
    let log = |swarm: &Swarm| swarm.nodes[0].1.log_text();
    wait_until(Duration::from_secs(20), "the node pausing", || {
        log(&swarm).contains("pausing").then_some(())
    });

    let input = swarm.path("texts.jsonl");
    let lines: String = (0..40)
        .map(|i| format!("{{\"id\":{i},\"text\":\"text number {i} for an idle machine\"}}\n"))
        .collect();
    std::fs::write(&input, lines).expect("write");
    let adverts = || {
        peers(&[], &swarm.api)
            .first()
            .and_then(|p| p["adverts"].as_u64())
            .expect("the node's advert count")
    };
    let job = swarm.submit(&input, "1", "4");
    // The node's event loop goes round (its heartbeat heard twice more) with the job waiting: had
    // it asked for work, it would have had some.
    let heard = adverts();
    wait_until(Duration::from_secs(20), "two more adverts", || {
        (adverts() >= heard + 2).then_some(())
    });
    let status = swarm.status(&job, false);
    assert_eq!(
        status["units_done"], 0,
        "no work taken while paused: {status}"
    );
    assert!(
        !log(&swarm).contains("resuming"),
        "still paused while the hog runs"
    );

    let _ = hog.kill();
    let _ = hog.wait();
    wait_until(Duration::from_secs(30), "the node resuming", || {
        log(&swarm).contains("resuming").then_some(())
    });
    let (output, _) = swarm.finish(&job);
    let reference = support::local_embed(&input, &swarm.path("reference.jsonl"));
    assert!(
        output == reference,
        "the job completes as one machine computes it"
    );
}

#[test]
fn max_memory_caps_what_a_node_advertises_and_bad_sizes_are_refused() {
    let mut swarm = Swarm::start(&[]);
    swarm.start_node_with(0, None, &["--max-memory", "512M"]);
    let node = wait_until(Duration::from_secs(30), "the node online", || {
        peers(&[], &swarm.api)
            .into_iter()
            .find(|p| p["online"] == true)
    });
    let caps = &node["capabilities"];
    let cap = 512 * 1024 * 1024;
    assert_eq!(caps["memory_total_bytes"].as_u64(), Some(cap), "{caps}");
    assert!(
        caps["memory_free_bytes"].as_u64().expect("free") <= cap,
        "{caps}"
    );
    let bad = run_hearth(&[], &["node", "--max-memory", "lots", "--join", &swarm.api]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a size"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
