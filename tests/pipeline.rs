//! Pipelined generation on real processes with the default model: a 3-stage chain gives what one
//! machine gives, token for token, even when a stage's node is killed mid-sentence.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use hearth_coordinator::STAGE_SESSIONS_MAX;
use serde_json::Value;
use support::local_swarm::Swarm;
use support::{hearth, run_hearth, stdout_json, wait_until};

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Volunteer computing lets people",
];

/// A plain HTTP/1.1 request to an open API at `api` (`body` POSTed as JSON when given, else a
/// GET): the status line, the headers (lower-cased) and the body; `None` when it cannot be sent or
/// read (a coordinator not up, or gone).
fn http(api: &str, path: &str, body: Option<&Value>) -> Option<(String, String, String)> {
    use std::io::{Read, Write};
    let addr = api.strip_prefix("http://")?.trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    let head = format!("Host: {addr}\r\nConnection: close");
    match body {
        Some(body) => {
            let body = body.to_string();
            write!(
                stream,
                "POST {path} HTTP/1.1\r\n{head}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        None => write!(stream, "GET {path} HTTP/1.1\r\n{head}\r\n\r\n"),
    }
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Some((status.to_string(), headers.to_lowercase(), body.to_string()))
}

/// The coordinator's pipeline sessions (`GET /v1/sessions` of an open API at `api`).
fn sessions(api: &str) -> Option<Vec<Value>> {
    serde_json::from_str(&http(api, "/v1/sessions", None)?.2).ok()
}

/// `POST /v1/generate` of `body` to an open API at `api`: the status line, the headers
/// (lower-cased) and the body.
fn post_generate(api: &str, body: &Value) -> (String, String, String) {
    http(api, "/v1/generate", Some(body)).expect("the coordinator answers")
}

/// Wait until a session of the coordinator at `api` is running with at least `tokens` tokens.
fn wait_for_tokens(api: &str, tokens: u64) {
    wait_until(
        Duration::from_secs(120),
        "a running session's tokens",
        || {
            sessions(api)?
                .iter()
                .any(|s| s["state"] == "running" && s["tokens"].as_u64() >= Some(tokens))
                .then_some(())
        },
    );
}

/// `hearth generate ARGS --api API` started in the background, its output thrown away.
fn spawn_generate(api: &str, args: &[&str]) -> std::process::Child {
    Command::new(hearth())
        .args(args)
        .args(["--api", api])
        .env_remove("HEARTH_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hearth generate")
}

fn local_tokens(prompt: &str, max_tokens: &str) -> Value {
    stdout_json(&run_hearth(
        &[],
        &[
            "local",
            "generate",
            "--prompt",
            prompt,
            "--max-tokens",
            max_tokens,
            "--json",
        ],
    ))["token_ids"]
        .clone()
}

/// `hearth generate --json` on 3 stages, with `extra` flags.
fn generate(swarm: &Swarm, prompt: &str, max_tokens: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "generate",
        "--prompt",
        prompt,
        "--max-tokens",
        max_tokens,
        "--stages",
        "3",
        "--json",
    ];
    args.extend(extra);
    stdout_json(&swarm.hearth(&args))
}

#[test]
fn a_three_stage_pipeline_generates_what_one_machine_does() {
    let swarm = Swarm::start(&[None, None, None]);
    for prompt in PROMPTS {
        let result = generate(&swarm, prompt, "16", &[]);
        assert_eq!(
            result["token_ids"],
            local_tokens(prompt, "16"),
            "{prompt}: {result}"
        );
        let route = result["route"].as_array().expect("route");
        assert_eq!(route.len(), 3, "{result}");
        // Three distinct peers cover layers 0..30 in order, without gaps.
        let mut next = 0;
        let mut peers = std::collections::BTreeSet::new();
        for hop in route {
            assert_eq!(hop["layers"][0], next, "{result}");
            next = hop["layers"][1].as_u64().expect("end");
            peers.insert(hop["peer_id"].as_str().expect("peer").to_string());
        }
        assert_eq!((next, peers.len()), (30, 3), "{result}");
        assert_eq!(result["reroutes"], serde_json::json!([]));
        // Each hop: from the stage before (the first stage's from the last, which hands it each
        // token) to a stage of the route, with the round trip the sender measured.
        let hops = result["hops"].as_array().expect("hops");
        assert_eq!(hops.len(), 3, "{result}");
        for (i, hop) in hops.iter().enumerate() {
            assert_eq!(hop["to"], route[i]["peer_id"], "{result}");
            assert_eq!(hop["from"], route[(i + 2) % 3]["peer_id"], "{result}");
            assert!(hop["rtt_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{hop}");
        }
        // A receipt per stage per step (beside the verifiers' for their replays).
        let steps = result["token_ids"].as_array().expect("ids").len();
        let receipts = result["receipts"].as_array().expect("receipts");
        let session_steps = receipts
            .iter()
            .filter(|r| {
                r["body"]["subject"]["Step"]["session"]
                    .as_u64()
                    .is_some_and(|s| s < 1 << 62)
            })
            .count();
        assert_eq!(session_steps, 3 * steps, "{result}");
        assert_eq!(result["verified_tokens"], steps, "{result}");
    }
    // More stages than peers: a clear refusal naming what is missing.
    let out = swarm.hearth(&["generate", "--prompt", "x", "--stages", "5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("5 stages asked, but only 3 online peers hold the model"),
        "{stderr}"
    );
    // Streaming prints the same text as it comes.
    let out = swarm.hearth(&[
        "generate",
        "--prompt",
        PROMPTS[0],
        "--max-tokens",
        "16",
        "--stream",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local = stdout_json(&run_hearth(
        &[],
        &[
            "local",
            "generate",
            "--prompt",
            PROMPTS[0],
            "--max-tokens",
            "16",
            "--json",
        ],
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        local["text"].as_str().expect("text").trim_end()
    );

    // A client that goes away mid-generation: every peer that held the session's state frees it.
    client_gone_frees_every_stage(&swarm, &[]);
}

/// A client that goes away mid-generation (a streamed `hearth generate` with `extra` flags, killed
/// once every stage holds its session): every peer that held the session's state frees it within
/// seconds (each stage's advert says how many sessions it holds).
fn client_gone_frees_every_stage(swarm: &Swarm, extra: &[&str]) {
    let stage_sessions = || -> Vec<u64> {
        support::peers(&[], &swarm.api)
            .iter()
            .map(|p| p["stage_sessions"].as_u64().expect("stage_sessions"))
            .collect()
    };
    let mut client = Command::new(hearth())
        .args([
            "generate",
            "--prompt",
            PROMPTS[2],
            "--max-tokens",
            "400",
            "--stream",
            "--api",
            &swarm.api,
        ])
        .args(extra)
        .env_remove("HEARTH_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hearth generate");
    wait_until(
        Duration::from_secs(60),
        "every stage holding the session",
        || {
            let held = stage_sessions();
            (held.len() == 3 && held.iter().all(|&n| n >= 1)).then_some(())
        },
    );
    client.kill().expect("kill the client");
    let _ = client.wait();
    let gone = std::time::Instant::now();
    wait_until(
        Duration::from_secs(10),
        "every stage freeing the session",
        || stage_sessions().iter().all(|&n| n == 0).then_some(()),
    );
    println!(
        "client gone ({extra:?}): every stage free, as their adverts said, {:.2} s later",
        gone.elapsed().as_secs_f64()
    );
}

/// `hearth generate` of `max_tokens` after `prompt` on 3 stages (with `extra` flags), killing the
/// second node once the session has made 3 tokens: with 3 stages on 3 nodes, every node is one.
/// The summary.
fn generate_killing_a_stage(
    swarm: &mut Swarm,
    prompt: &str,
    max_tokens: &str,
    extra: &[&str],
) -> Value {
    generate_losing_a_stage(swarm, prompt, max_tokens, extra, false)
}

/// [`generate_killing_a_stage`], the node SIGKILLed, or with `stop` SIGSTOPped until the
/// generation is over (its connections stay open; it just stops answering).
fn generate_losing_a_stage(
    swarm: &mut Swarm,
    prompt: &str,
    max_tokens: &str,
    extra: &[&str],
    stop: bool,
) -> Value {
    let output = swarm.path("generation.json");
    let child = Command::new(hearth())
        .args([
            "generate",
            "--prompt",
            prompt,
            "--max-tokens",
            max_tokens,
            "--stages",
            "3",
            "--json",
            "--api",
            &swarm.api,
        ])
        .args(extra)
        .env_remove("HEARTH_CONFIG")
        .stdout(std::fs::File::create(&output).expect("output file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hearth generate");
    wait_for_tokens(&swarm.api, 3);
    if stop {
        swarm.nodes[1].1.pause(true);
    } else {
        swarm.nodes[1].1.kill();
    }
    let out = child.wait_with_output().expect("generate finishes");
    if stop {
        swarm.nodes[1].1.pause(false);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&output).expect("read")).expect("JSON")
}

#[test]
fn a_stage_killed_mid_generation_is_replaced_and_the_output_is_unchanged() {
    let mut swarm = Swarm::start(&[None, None, None]);
    let prompt = PROMPTS[1];
    let result = generate_killing_a_stage(&mut swarm, prompt, "40", &[]);
    assert_eq!(result["token_ids"], local_tokens(prompt, "40"), "{result}");
    let reroutes = result["reroutes"].as_array().expect("reroutes");
    assert_eq!(reroutes.len(), 1, "{result}");
    let killed = &swarm.nodes[1].0;
    assert_eq!(&reroutes[0]["failed_peer"], killed, "{result}");
    assert!(
        reroutes[0]["step"].as_u64().expect("step") > 0,
        "killed before the first token: {result}"
    );
    let route = result["route"].as_array().expect("route");
    assert!(route.iter().all(|h| &h["peer_id"] != killed), "{result}");
    // Fewer nodes than stages now: a survivor serves two ranges.
    let peers: std::collections::BTreeSet<&str> =
        route.iter().filter_map(|h| h["peer_id"].as_str()).collect();
    assert_eq!((route.len(), peers.len()), (3, 2), "{result}");
}

/// A stage that stops answering (SIGSTOP: its process and connections still there) misses its
/// heartbeats, is taken for gone and replaced, and the checked output is unchanged.
#[test]
fn a_stage_that_stops_answering_is_replaced_and_the_output_is_unchanged() {
    let mut swarm = Swarm::start(&[None, None, None]);
    let prompt = PROMPTS[2];
    let result = generate_losing_a_stage(&mut swarm, prompt, "40", &[], true);
    assert_eq!(result["token_ids"], local_tokens(prompt, "40"), "{result}");
    let stopped = &swarm.nodes[1].0;
    let reroutes = result["reroutes"].as_array().expect("reroutes");
    assert!(
        reroutes.iter().any(|r| &r["failed_peer"] == stopped),
        "{result}"
    );
    let route = result["route"].as_array().expect("route");
    assert!(route.iter().all(|h| &h["peer_id"] != stopped), "{result}");
    assert_eq!(result["verified_tokens"], 40, "{result}");
}

#[test]
fn a_lying_stage_is_caught_struck_and_the_output_is_still_exact() {
    // Three nodes for three stages: the liar is certainly one of them, and the other two are there
    // to check it and to break the tie.
    let swarm = Swarm::start(&[None, None, Some("wrong-output")]);
    let liar = swarm.nodes[2].0.clone();
    let prompt = PROMPTS[0];
    let result = generate(&swarm, prompt, "24", &[]);
    assert_eq!(result["token_ids"], local_tokens(prompt, "24"), "{result}");
    assert_eq!(result["verify"], "window");
    assert_eq!(result["verified_tokens"], 24, "{result}");
    let windows = result["windows"].as_array().expect("windows");
    assert!(
        windows.iter().any(|w| {
            (w["outcome"] == "stage-wrong" && w["stage_peer"] == liar.as_str())
                || (w["outcome"] == "verifier-wrong" && w["verifier"] == liar.as_str())
        }),
        "the liar was never caught: {result}"
    );
    assert!(
        result["route"]
            .as_array()
            .expect("route")
            .iter()
            .all(|h| h["peer_id"] != liar.as_str()),
        "{result}"
    );
    let entry = swarm.peer(&liar);
    assert!(entry["strikes"].as_u64().expect("strikes") >= 1, "{entry}");
    for (peer_id, _) in &swarm.nodes[..2] {
        assert_eq!(swarm.peer(peer_id)["strikes"], 0);
    }
}

/// A prompt of `words` words from a small vocabulary in a fixed pseudo-random order (about 1.05
/// tokens a word with the default model's tokenizer).
fn long_prompt(words: usize) -> String {
    const VOCABULARY: [&str; 16] = [
        "the", "river", "mountain", "over", "under", "quickly", "bright", "dark", "house",
        "garden", "cat", "dog", "runs", "sleeps", "and", "with",
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..words)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            VOCABULARY[(x % 16) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A prefill that takes a stage longer than the fixed step timeout of 15 s is given the time its
/// arithmetic takes; its hidden states (past one 8 MiB frame from about 3,640 tokens of the default
/// model) travel as a message of several frames, and each stage runs it in chunks between other
/// sessions' steps; the output is what one machine gives. A prompt past the model's context is
/// refused up front, saying why.
#[test]
fn a_prompt_of_3900_tokens_goes_through_three_stages() {
    let prompt = long_prompt(3_700);
    let local = stdout_json(&run_hearth(
        &[],
        &[
            "local",
            "generate",
            "--prompt",
            &prompt,
            "--max-tokens",
            "3",
            "--json",
        ],
    ));
    let prompt_tokens = local["prompt_ids"].as_array().expect("prompt ids").len();
    // Past what one frame carries: 8 MiB / (576 × 4 bytes a token).
    assert!(prompt_tokens >= 3_700, "{prompt_tokens} tokens");

    let swarm = Swarm::start(&[None, None, None]);
    let result = generate(&swarm, &prompt, "3", &[]);
    assert_eq!(result["token_ids"], local["token_ids"], "{result}");
    assert_eq!(result["reroutes"], serde_json::json!([]), "{result}");
    assert_eq!(
        result["route"].as_array().map(Vec::len),
        Some(3),
        "{result}"
    );

    let out = swarm.hearth(&[
        "generate",
        "--prompt",
        &long_prompt(8_000),
        "--max-tokens",
        "8",
        "--stages",
        "3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the model's context is 8192"), "{stderr}");
}

/// `--verify off`: the stages hand each step to each other (the coordinator gets a token and the
/// step's receipts, never activations), greedy and seeded-sampled output equal what one machine
/// gives, eight sessions at once each give it too, a client that goes away frees every stage, and a
/// stage killed mid-generation is replaced with the output unchanged.
#[test]
fn a_chained_pipeline_hands_steps_along_and_survives_a_killed_stage() {
    let mut swarm = Swarm::start(&[None, None, None]);
    let chained = |prompt: &str, max_tokens: &str, extra: &[&str]| {
        let mut args = vec!["--verify", "off"];
        args.extend(extra);
        generate(&swarm, prompt, max_tokens, &args)
    };
    for prompt in &PROMPTS[..2] {
        let result = chained(prompt, "16", &[]);
        assert_eq!(result["token_ids"], local_tokens(prompt, "16"), "{result}");
        let steps = result["token_ids"].as_array().expect("ids").len();
        // One receipt per stage per step, each stage's input its predecessor's signed output.
        let receipts = result["receipts"].as_array().expect("receipts");
        assert_eq!(receipts.len(), 3 * steps, "{result}");
        let route = result["route"].as_array().expect("route");
        for (i, receipt) in receipts.iter().enumerate() {
            let stage = &route[i % 3];
            assert_eq!(receipt["body"]["subject"]["Step"]["step"], (i / 3) as u64);
            assert_eq!(
                receipt["body"]["subject"]["Step"]["layer_start"],
                stage["layers"][0]
            );
        }
        assert_eq!(result["verified_tokens"], 0, "{result}");
    }
    // Seeded sampling draws what `hearth local generate` draws with the same seed.
    let sampling = ["--temperature", "0.8", "--top-p", "0.9", "--seed", "42"];
    let result = chained(PROMPTS[2], "24", &sampling);
    let mut local = vec![
        "local",
        "generate",
        "--prompt",
        PROMPTS[2],
        "--max-tokens",
        "24",
        "--json",
    ];
    local.extend(sampling);
    let local = stdout_json(&run_hearth(&[], &local));
    assert_eq!(result["token_ids"], local["token_ids"], "{result}");
    assert_ne!(
        result["token_ids"],
        local_tokens(PROMPTS[2], "24"),
        "sampling drew the greedy tokens"
    );

    // Eight sessions at once (four prompts, each twice; the stages batch their steps): each gives
    // exactly what one machine gives.
    let prompts = [
        PROMPTS[0],
        PROMPTS[1],
        PROMPTS[2],
        "Rust is a language that",
    ];
    let children: Vec<_> = prompts
        .iter()
        .chain(prompts.iter())
        .map(|prompt| {
            Command::new(hearth())
                .args([
                    "generate",
                    "--prompt",
                    prompt,
                    "--max-tokens",
                    "12",
                    "--json",
                ])
                .args(["--stages", "3", "--api", &swarm.api])
                .env_remove("HEARTH_CONFIG")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start hearth generate")
        })
        .collect();
    let want: Vec<Value> = prompts.iter().map(|p| local_tokens(p, "12")).collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("generate finishes");
        let result = stdout_json(&out);
        assert_eq!(
            result["token_ids"],
            want[i % 4],
            "{}: {result}",
            prompts[i % 4]
        );
    }

    // A client that goes away: every stage frees the session (the chain stops at once).
    client_gone_frees_every_stage(&swarm, &["--verify", "off"]);

    // A stage killed mid-generation: replaced, the chain restarted from the tokens so far, and the
    // output unchanged.
    let prompt = PROMPTS[1];
    let result = generate_killing_a_stage(&mut swarm, prompt, "200", &["--verify", "off"]);
    assert_eq!(result["token_ids"], local_tokens(prompt, "200"), "{result}");
    let reroutes = result["reroutes"].as_array().expect("reroutes");
    let killed = &swarm.nodes[1].0;
    assert_eq!(reroutes.len(), 1, "{result}");
    assert_eq!(&reroutes[0]["failed_peer"], killed, "{result}");
    let route = result["route"].as_array().expect("route");
    assert!(route.iter().all(|h| &h["peer_id"] != killed), "{result}");
}

/// CPU ticks (user and system, 1/100 s) the process `pid` has used, from `/proc`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The fields after the command name (in parentheses, which may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// A chain runs between its stages without the coordinator, so a coordinator that crashes must not
/// leave them generating to the end of `max_tokens` for nobody: the last stage's report goes
/// undelivered, the chain stops there, and the nodes go idle.
#[test]
fn a_chain_stops_when_its_coordinator_is_gone() {
    let mut swarm = Swarm::start(&[None, None, None]);
    let args = ["generate", "--prompt", PROMPTS[2], "--max-tokens", "3000"];
    let mut client = spawn_generate(
        &swarm.api,
        &[&args[..], &["--stream", "--verify", "off", "--stages", "3"]].concat(),
    );
    wait_for_tokens(&swarm.api, 3);
    swarm.coordinator.kill();
    let gone = std::time::Instant::now();
    wait_until(
        Duration::from_secs(30),
        "the last stage stopping the chain",
        || {
            swarm
                .nodes
                .iter()
                .any(|(_, node)| node.log_text().contains("the chain stops here"))
                .then_some(())
        },
    );
    // Idle: the three nodes together use under a tenth of a core over a second (generating, the
    // chain keeps about one core busy).
    let pids: Vec<u32> = swarm.nodes.iter().map(|(_, n)| n.child.id()).collect();
    let ticks = || pids.iter().map(|&pid| cpu_ticks(pid)).sum::<u64>();
    let mut window = (std::time::Instant::now(), ticks());
    wait_until(Duration::from_secs(30), "the nodes going idle", || {
        let elapsed = window.0.elapsed();
        if elapsed < Duration::from_secs(1) {
            return None;
        }
        let used = ticks() - window.1;
        let idle = (used as f64) < elapsed.as_secs_f64() * 100.0 * 0.1;
        window = (std::time::Instant::now(), ticks());
        idle.then_some(())
    });
    println!(
        "coordinator gone: the chain stopped and the nodes went idle {:.1} s later",
        gone.elapsed().as_secs_f64()
    );
    let _ = client.kill();
    let _ = client.wait();
}

/// Every peer serving as many sessions as a stage may: the next request is refused at once with
/// 503, the reason and when to try again, not queued behind them or left hanging; and served again
/// once they end. Every node holds what it sends for 250 ms (`--fault delay`), so the sessions that
/// fill the swarm step slowly and leave the cores to the tests running beside this one.
#[test]
fn a_swarm_whose_peers_are_all_busy_refuses_at_once_and_serves_again() {
    let swarm = Swarm::start(&[Some("delay=250"), Some("delay=250"), Some("delay=250")]);
    let full = STAGE_SESSIONS_MAX;
    let mut clients: Vec<_> = (0..full)
        .map(|_| {
            let args = ["generate", "--prompt", PROMPTS[0], "--max-tokens", "1000"];
            spawn_generate(
                &swarm.api,
                &[&args[..], &["--stream", "--verify", "off", "--stages", "3"]].concat(),
            )
        })
        .collect();
    let running =
        || sessions(&swarm.api).map(|all| all.iter().filter(|s| s["state"] == "running").count());
    wait_until(
        Duration::from_secs(120),
        "every peer serving as many sessions as a stage may",
        || (running()? == full).then_some(()),
    );
    let request = serde_json::json!({
        "model": "smollm2-135m-instruct-q4_1", "prompt": PROMPTS[1], "max_tokens": 4, "stages": 3
    });
    let (status, headers, body) = post_generate(&swarm.api, &request);
    assert!(status.contains(" 503 "), "{status}: {body}");
    assert!(headers.contains("retry-after: 2"), "{headers}");
    assert!(
        body.contains("no route for model smollm2-135m-instruct-q4_1: 3 stages asked, but 3 of the 3 online peers")
            && body.contains(&format!("already serve {full} sessions each, 0 have room; try again shortly")),
        "{body}"
    );
    // The CLI shows the same reason (a 503 with Retry-After is an answer, not a group without a
    // leader to try elsewhere).
    let out = swarm.hearth(&["generate", "--prompt", PROMPTS[1], "--max-tokens", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("have room; try again shortly"),
        "{stderr}"
    );
    for client in &mut clients {
        client.kill().expect("kill a client");
        let _ = client.wait();
    }
    wait_until(Duration::from_secs(30), "the sessions ending", || {
        (running()? == 0).then_some(())
    });
    let (status, _, body) = post_generate(&swarm.api, &request);
    assert!(status.contains(" 200 "), "{status}: {body}");
    let ids = serde_json::from_str::<Value>(&body).expect("summary")["token_ids"].clone();
    assert_eq!(ids, local_tokens(PROMPTS[1], "4"), "{body}");
}
