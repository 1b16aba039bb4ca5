//! Shared harness for the tests that start real `hearth` processes.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part of the harness

pub mod local_swarm;
pub mod nat;
pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `hearth` binary cargo built for these tests.
pub fn hearth() -> &'static str {
    env!("CARGO_BIN_EXE_hearth")
}

/// A running `hearth` process, killed on drop, logging to a file.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    /// Start `hearth ARGS`, run through `prefix` (for example `ip netns exec NS`) when given.
    pub fn start(name: &str, logs: &Path, prefix: &[&str], args: &[&str]) -> Self {
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = command(prefix)
            .args(args)
            .env(
                "HEARTH_LOG",
                "info,openraft=off,hearth_net=debug,hearth_coordinator=debug",
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name: name.into(),
            child,
            log,
        }
    }

    /// SIGKILL, as a crash or a pulled plug would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP (`stop`) or SIGCONT: a process that stops answering with its connections still
    /// open, as a hung or suspended machine would, and its return.
    pub fn pause(&mut self, stop: bool) {
        let signal = if stop { "-STOP" } else { "-CONT" };
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill {signal} {}", self.name);
    }

    /// SIGTERM, as systemd or an operator stopping it would, then wait up to `timeout` for it to
    /// exit; its exit status, or `None` if it is still running.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM {}", self.name);
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panic with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}); log:\n{}", self.name, self.log_text());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `hearth`, run through `prefix` (for example `ip netns exec NS`) when given.
fn command(prefix: &[&str]) -> Command {
    let mut command = match prefix.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(hearth());
            c
        }
        None => Command::new(hearth()),
    };
    command.env_remove("HEARTH_CONFIG");
    command
}

/// Run `hearth ARGS` to completion.
pub fn run_hearth(prefix: &[&str], args: &[&str]) -> Output {
    command(prefix).args(args).output().expect("run hearth")
}

/// Run `hearth ARGS` to completion with extra environment variables.
pub fn run_hearth_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(&[])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run hearth")
}

/// The JSON a successful command printed; panics with its stderr if it failed.
pub fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the command prints JSON")
}

/// `hearth peers --json --api API`, parsed. Empty when the coordinator does not answer yet.
pub fn peers(prefix: &[&str], api: &str) -> Vec<Value> {
    peers_with_key(prefix, api, None)
}

/// [`peers`] with an API key.
pub fn peers_with_key(prefix: &[&str], api: &str, key: Option<&str>) -> Vec<Value> {
    let mut args = vec!["peers", "--json", "--api", api];
    if let Some(key) = key {
        args.extend(["--api-key", key]);
    }
    let out = run_hearth(prefix, &args);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).expect("peers --json prints JSON")
}

/// Wait for the coordinator in `data_dir` to write its API URL.
pub fn wait_for_api(data_dir: &Path, coordinator: &mut Process) -> String {
    try_wait_for_api(data_dir, coordinator)
        .unwrap_or_else(|log| panic!("{} exited; log:\n{log}", coordinator.name))
}

/// [`wait_for_api`], or the coordinator's log if it exited first (a port taken meanwhile).
pub fn try_wait_for_api(data_dir: &Path, coordinator: &mut Process) -> Result<String, String> {
    let file = data_dir.join("api.url");
    wait_until(Duration::from_secs(20), "coordinator API", || {
        if let Ok(Some(_)) = coordinator.child.try_wait() {
            return Some(Err(coordinator.log_text()));
        }
        std::fs::read_to_string(&file)
            .ok()
            .map(|s| Ok(s.trim().to_string()))
    })
}

/// Poll `check` every 200 ms until it returns `Some`, or panic after `timeout` naming `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The peer entry for `peer_id`, if listed.
pub fn entry<'a>(peers: &'a [Value], peer_id: &str) -> Option<&'a Value> {
    peers.iter().find(|p| p["peer_id"] == peer_id)
}

/// Check that a peer entry carries the capabilities the issue promises.
pub fn assert_capabilities(peer: &Value) {
    let caps = &peer["capabilities"];
    assert!(
        ["cpu", "cuda", "metal"].contains(&caps["backend"].as_str().unwrap_or("")),
        "{peer}"
    );
    assert!(!caps["device"].as_str().unwrap_or("").is_empty(), "{peer}");
    let total = caps["memory_total_bytes"]
        .as_u64()
        .expect("memory_total_bytes");
    let free = caps["memory_free_bytes"]
        .as_u64()
        .expect("memory_free_bytes");
    assert!(total > 0 && free <= total, "{peer}");
    assert!(caps["threads"].as_u64().expect("threads") >= 1, "{peer}");
    assert!(caps["score"].as_f64().expect("score") > 0.0, "{peer}");
    let classes = caps["numeric_class"]
        .as_object()
        .expect("numeric_class is an object");
    assert!(
        classes.contains_key("llm") && classes.contains_key("embed"),
        "{peer}"
    );
}

/// `hearth keygen --data-dir DIR --json` → the peer id.
pub fn keygen(dir: &Path) -> String {
    let out = run_hearth(
        &[],
        &[
            "keygen",
            "--json",
            "--data-dir",
            dir.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["peer_id"].as_str().expect("peer_id").to_string()
}

/// `hearth local embed INPUT --output OUTPUT`: what one machine computes, the bytes a swarm's output
/// must equal.
pub fn local_embed(input: &Path, output: &Path) -> Vec<u8> {
    let out = run_hearth(
        &[],
        &[
            "local",
            "embed",
            "--input",
            input.to_str().expect("utf-8"),
            "--output",
            output.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(output).expect("reference output")
}

/// Resident memory of process `pid`, KiB (0 if unknown).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The models folder the nodes hold the default models in (`HEARTH_MODELS`, or the default).
pub fn models_dir() -> std::path::PathBuf {
    std::env::var("HEARTH_MODELS").map_or_else(
        |_| {
            std::path::PathBuf::from(std::env::var("HOME").expect("HOME"))
                .join(".cache")
                .join("hearth")
                .join("models")
        },
        std::path::PathBuf::from,
    )
}
