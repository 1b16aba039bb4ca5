//! The OpenAI-compatible API, driven by the official `openai` Python package against a running local
//! swarm whose coordinator requires API keys. The package is installed into a private virtual
//! environment (HEARTH_OPENAI_VENV, default target/openai-venv) on first use.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::local_swarm::Swarm;
use support::{run_hearth_env, stdout_json};

/// The catalogued Gemma 3, which the test suite fetches beside the defaults.
const GEMMA: &str = "gemma-3-270m-q4_k_m";

/// The pinned client version.
const OPENAI_PACKAGE: &str = "openai==3.57.0";

/// A python with `openai` installed, made once.
fn python() -> PathBuf {
    let venv = std::env::var_os("HEARTH_OPENAI_VENV").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/openai-venv"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs");
        assert!(made.success(), "python3 -m venv {}", venv.display());
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", OPENAI_PACKAGE])
            .status()
            .expect("pip runs");
        assert!(installed.success(), "pip install {OPENAI_PACKAGE}");
    }
    python
}

fn local_text(args: &[&str]) -> String {
    let mut all = vec!["local", "generate", "--json"];
    all.extend(args);
    stdout_json(&run_hearth_env(&all, &[]))["text"]
        .as_str()
        .expect("text")
        .to_string()
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .expect("vectors")
        .iter()
        .map(|e| {
            e.as_array()
                .expect("vector")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect()
        })
        .collect()
}

fn error_status(out: &Value, case: &str) -> (u64, String) {
    let status = out[case]["status"].as_u64().expect("status");
    let body = &out[case]["body"];
    // The openai package hands over the `error` object; httpx the whole body.
    let message = body["error"]["message"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .unwrap_or_default()
        .to_string();
    (status, message)
}

#[test]
fn the_official_openai_client_works_against_the_swarm() {
    let python = python();
    let swarm = Swarm::start_keyed(&[None, None, None]);
    let admin = swarm.admin_key.clone().expect("keyed");
    let data_dir = swarm.path("coordinator");
    let data_dir = data_dir.to_str().expect("utf-8");
    let create = |member: Option<&str>| {
        let mut args = vec![
            "apikey",
            "--api",
            &swarm.api,
            "--data-dir",
            data_dir,
            "--json",
            "create",
        ];
        if let Some(m) = member {
            args.extend(["--member", m]);
        }
        stdout_json(&run_hearth_env(&args, &[]))
    };
    let key = create(Some(&swarm.nodes[0].0));
    assert_eq!(key["member"], swarm.nodes[0].0.as_str(), "{key}");
    let revoked = create(None);
    let revoke = run_hearth_env(
        &[
            "apikey",
            "--api",
            &swarm.api,
            "--admin-key",
            &admin,
            "revoke",
            revoked["id"].as_str().expect("id"),
        ],
        &[],
    );
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    let listed = stdout_json(&run_hearth_env(
        &[
            "apikey",
            "--api",
            &swarm.api,
            "--data-dir",
            data_dir,
            "--json",
            "list",
        ],
        &[],
    ));
    let listed = listed.as_array().expect("keys");
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .any(|k| k["id"] == revoked["id"] && k["revoked"] == true)
    );
    assert!(
        !listed
            .iter()
            .any(|k| k.to_string().contains(key["key"].as_str().expect("key"))),
        "secrets are never listed"
    );

    let run = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/openai_client.py"
        ))
        .args([
            &swarm.api,
            key["key"].as_str().expect("key"),
            revoked["key"].as_str().expect("key"),
        ])
        .output()
        .expect("python runs");
    assert!(
        run.status.success(),
        "openai_client.py: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out: Value = serde_json::from_slice(&run.stdout).expect("JSON");

    // Every model the nodes hold is listed, with the peers holding it: the catalogued ones by
    // name, the defaults first; any other file in the models folder (the suite's test models) by
    // its id, as no operator named it.
    let listed: Vec<&str> = out["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m.as_str().expect("an id"))
        .collect();
    assert_eq!(
        listed[..2],
        ["smollm2-135m-instruct-q4_1", "all-minilm-l6-v2"],
        "{listed:?}"
    );
    assert!(listed.contains(&GEMMA), "{listed:?}");
    for other in listed
        .iter()
        .filter(|m| hearth_kernels::CATALOG.iter().all(|c| c.name != **m))
    {
        assert!(
            other.len() == 64 && other.chars().all(|c| c.is_ascii_hexdigit()),
            "{other}: a model no one named is listed by its id"
        );
    }
    let mut nodes: Vec<&str> = swarm.nodes.iter().map(|(id, _)| id.as_str()).collect();
    nodes.sort_unstable();
    for (model, holders) in out["holders"].as_object().expect("holders") {
        let mut holders: Vec<&str> = holders
            .as_array()
            .expect("a list")
            .iter()
            .map(|h| h.as_str().expect("a peer id"))
            .collect();
        holders.sort_unstable();
        assert_eq!(holders, nodes, "{model}");
    }

    // One model retrieved by name: what the list says of it.
    let retrieved = &out["retrieved"];
    let hearth_id = retrieved["hearth"]["id"].as_str().expect("its id");
    assert_eq!(retrieved["id"], GEMMA, "{retrieved}");
    assert_eq!(out["holders"][GEMMA], retrieved["holders"], "{retrieved}");
    assert!(
        hearth_kernels::CATALOG
            .iter()
            .any(|c| c.name == GEMMA && c.files[0].blake3 == hearth_id),
        "{retrieved}"
    );

    // Gemma 3 through the same swarm: its chat equals one machine's, over its own turn format;
    // a generation that ends at the end of turn leaves that token out, as the API does.
    let question = "What is the capital of France?";
    let alone = local_text(&[
        "--model",
        GEMMA,
        "--chat",
        "--prompt",
        question,
        "--max-tokens",
        "24",
    ]);
    let gemma = out["gemma_chat"].as_str().expect("gemma chat");
    assert_eq!(out["gemma_chat_model"], GEMMA);
    match out["gemma_chat_finish"].as_str() {
        Some("length") => assert_eq!(gemma, alone, "{out}"),
        Some("stop") => assert_eq!(format!("{gemma}<end_of_turn>"), alone, "{out}"),
        other => panic!("finish {other:?}: {out}"),
    }
    assert!(!gemma.is_empty(), "{out}");

    // And pipelined across the three nodes by `hearth generate --model`: one machine's tokens.
    let prompt = "The history of the printing press";
    let piped = stdout_json(&run_hearth_env(
        &[
            "generate",
            "--api",
            &swarm.api,
            "--api-key",
            key["key"].as_str().expect("key"),
            "--model",
            GEMMA,
            "--stages",
            "3",
            "--max-tokens",
            "16",
            "--prompt",
            prompt,
            "--json",
        ],
        &[],
    ));
    assert_eq!(
        piped["route"].as_array().map(Vec::len),
        Some(3),
        "three stages: {piped}"
    );
    let alone = stdout_json(&run_hearth_env(
        &[
            "local",
            "generate",
            "--json",
            "--model",
            GEMMA,
            "--prompt",
            prompt,
            "--max-tokens",
            "16",
        ],
        &[],
    ));
    assert_eq!(piped["token_ids"], alone["token_ids"], "{piped}");

    // Chat: streamed and not, equal; and equal to one machine alone, whose text ends with the end of
    // turn that the API leaves out.
    let alone = local_text(&["--chat", "--prompt", question, "--max-tokens", "48"]);
    let chat = out["chat"].as_str().expect("chat");
    assert_eq!(format!("{chat}<|im_end|>"), alone, "{out}");
    assert!(chat.contains("Paris"), "{chat}");
    assert_eq!(out["chat_finish"], "stop");
    assert_eq!(out["chat_stream"], out["chat"]);
    assert!(
        out["chat_stream_parts"].as_u64().expect("parts") > 3,
        "streamed in pieces"
    );
    assert_eq!(out["chat_stream_finish"], "stop");
    for usage in [&out["chat_usage"], &out["chat_stream_usage"]] {
        let prompt = usage["prompt_tokens"].as_u64().expect("prompt tokens");
        let completion = usage["completion_tokens"]
            .as_u64()
            .expect("completion tokens");
        assert!(prompt > 10 && completion > 3, "{usage}");
        assert_eq!(usage["total_tokens"].as_u64(), Some(prompt + completion));
    }
    for hearth in [&out["chat_hearth"], &out["chat_stream_hearth"]] {
        assert!(
            !hearth["receipts"].as_array().expect("receipts").is_empty(),
            "{hearth}"
        );
        assert!(
            !hearth["route"].as_array().expect("route").is_empty(),
            "{hearth}"
        );
        assert_eq!(hearth["verify"], "window", "{hearth}");
    }

    // Completion: equal to `hearth local generate` on the same prompt.
    let prompt = "The capital of France is";
    assert_eq!(
        out["completion"],
        local_text(&["--prompt", prompt, "--max-tokens", "16"]).as_str()
    );
    assert_eq!(out["completion_finish"], "length");
    let completion = out["completion"].as_str().expect("text");
    let stopped = out["completion_stopped"].as_str().expect("text");
    assert_eq!(
        stopped,
        &completion[..completion.find('\n').expect("a newline")],
        "cut at the stop sequence"
    );
    assert_eq!(out["completion_stopped_finish"], "stop");

    // Seeded sampling: the same seed, the same text, here and alone.
    let sampled = out["sampled"].as_array().expect("sampled");
    assert_eq!(sampled[0], sampled[1], "same seed, same text");
    let alone = local_text(&[
        "--chat",
        "--prompt",
        question,
        "--max-tokens",
        "24",
        "--temperature",
        "0.9",
        "--seed",
        "42",
    ]);
    assert_eq!(
        sampled[0].as_str().map(|s| s.to_string()),
        Some(alone.trim_end_matches("<|im_end|>").to_string())
    );

    // Embeddings: base64 (the client's default) and floats both equal `hearth local embed`'s bits.
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("texts.jsonl");
    std::fs::write(
        &input,
        "{\"id\":0,\"text\":\"Hello world\"}\n{\"id\":1,\"text\":\"Volunteer computing pools spare machines.\"}\n",
    )
    .expect("write");
    let local = support::local_embed(&input, &tmp.path().join("vectors.jsonl"));
    let local: Vec<Vec<f32>> = String::from_utf8(local)
        .expect("vectors")
        .lines()
        .map(|l| {
            vectors(&Value::Array(vec![
                serde_json::from_str::<Value>(l).expect("json")["embedding"].clone(),
            ]))
            .remove(0)
        })
        .collect();
    assert_eq!(vectors(&out["embeddings"]), local, "base64");
    assert_eq!(vectors(&out["embeddings_float"]), local, "float");
    let hearth = &out["embeddings_hearth"];
    assert!(
        hearth["replicas"].as_f64().expect("replicas") >= 1.0,
        "{hearth}"
    );
    assert!(
        !hearth["receipts"].as_array().expect("receipts").is_empty(),
        "{hearth}"
    );
    // "Hello world" is [CLS] hello world [SEP]: 4 tokens; the other sentence more.
    assert!(
        out["embeddings_usage"]["prompt_tokens"]
            .as_u64()
            .expect("usage")
            > 8,
        "{}",
        out["embeddings_usage"]
    );

    // What must fail, fails with OpenAI's shape and the right status.
    let cases = [
        ("missing_key", 401, "missing API key"),
        ("revoked_key", 401, "revoked"),
        ("unknown_model", 404, "gpt-9"),
        ("retrieve_unknown", 404, "gpt-9"),
        ("retrieve_slashed", 404, "meta-llama/gpt-9"),
        ("too_many_tokens", 400, "max_tokens"),
        ("past_context", 400, "context"),
        ("malformed_json", 400, ""),
    ];
    for (case, status, words) in cases {
        let (got, message) = error_status(&out, case);
        assert_eq!(got, status, "{case}: {}", out[case]);
        assert!(message.contains(words), "{case}: {message}");
        assert!(!message.is_empty(), "{case}: a message says why");
    }
    assert_eq!(out["too_large"]["status"], 413, "{}", out["too_large"]);
}
