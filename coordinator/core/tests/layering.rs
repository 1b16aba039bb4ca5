//! The cores' purity is held by their dependencies, not by convention: `hearth-core` builds on
//! plain data only, and the simulator drives the cores without the coordinator's service.

use std::process::Command;

/// The normal (non-dev) dependency tree of `package`, one crate name a line.
fn tree(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .args(["--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn the_core_depends_on_no_runtime_network_storage_clock_or_os_randomness() {
    let crates = tree("hearth-core");
    assert!(crates.iter().any(|c| c == "hearth-protocol"), "{crates:?}");
    for banned in [
        "tokio",
        "libp2p",
        "axum",
        "redb",
        "candle-core",
        "getrandom",
        "hearth-coordinator",
        "hearth-net",
        "hearth-kernels",
    ] {
        assert!(
            !crates.iter().any(|c| c == banned),
            "hearth-core depends on {banned}"
        );
    }
}

#[test]
fn the_simulator_drives_the_cores_without_the_coordinator() {
    let crates = tree("hearth-sim");
    assert!(crates.iter().any(|c| c == "hearth-core"), "{crates:?}");
    assert!(
        !crates.iter().any(|c| c == "hearth-coordinator"),
        "hearth-sim depends on hearth-coordinator"
    );
}
