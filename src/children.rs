//! Child `hearth` processes on this machine: the demo's and the swarm benchmark's local swarms.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hearth_coordinator::API_URL_FILE;
use tokio::process::{Child, Command};

use crate::cli::ClientArgs;
use crate::client::Client;
use crate::config::FileConfig;

/// How often to look for the coordinator's API URL file while it starts.
const API_FILE_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a child gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a local swarm gets to form.
const SWARM_FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the coordinator gets to start serving HTTP.
const COORDINATOR_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Flags that keep a child on loopback with OS-chosen ports.
pub(crate) const LOOPBACK: [&str; 5] = [
    "--listen",
    "/ip4/127.0.0.1/udp/0/quic-v1",
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--no-mdns",
];

pub(crate) async fn wait_for_api(file: &Path, swarm: &mut Children) -> anyhow::Result<String> {
    let deadline = Instant::now() + COORDINATOR_START_TIMEOUT;
    loop {
        if let Ok(url) = std::fs::read_to_string(file) {
            return Ok(url.trim().to_string());
        }
        swarm.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "the coordinator did not start serving within {}s",
                COORDINATOR_START_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(API_FILE_POLL_INTERVAL).await;
    }
}

pub(crate) fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The demo's child processes, each logging to a file in the demo folder.
pub(crate) struct Children {
    pub(crate) dir: PathBuf,
    pub(crate) children: Vec<(String, Child)>,
}

impl Children {
    /// Children whose data and logs live in a fresh folder under the system's temporary folder.
    pub(crate) fn in_temp_dir(prefix: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir,
            children: Vec::new(),
        })
    }

    /// Stop every child (showing their logs' tails when `failed`), then remove the folder.
    pub(crate) async fn finish(mut self, failed: bool, announce: bool) {
        if failed {
            self.show_logs();
        }
        self.stop_children().await;
        if announce {
            println!("Stopped {} processes.", self.children.len());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    pub(crate) fn spawn(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the hearth binary")?;
        let log = std::fs::File::create(self.log_path(name))?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Start a coordinator on loopback (data in `DIR/coordinator`); its API URL and a client for it.
    pub(crate) async fn start_coordinator(&mut self) -> anyhow::Result<(String, Client)> {
        self.start_coordinator_with(None, &[]).await
    }

    /// [`Self::start_coordinator`] reading `models` (it tokenizes prompts with the default model)
    /// with `extra` flags.
    pub(crate) async fn start_coordinator_with(
        &mut self,
        models: Option<&Path>,
        extra: &[&str],
    ) -> anyhow::Result<(String, Client)> {
        let dir = self.dir.join("coordinator");
        let mut args = vec![
            "coordinator",
            "--data-dir",
            path_str(&dir)?,
            "--http",
            "127.0.0.1:0",
            // A throwaway swarm on loopback: no keys.
            "--open",
        ];
        if let Some(models) = models {
            args.extend(["--models", path_str(models)?]);
        }
        args.extend(LOOPBACK);
        args.extend(extra);
        self.spawn("coordinator", &args)?;
        let api = wait_for_api(&dir.join(API_URL_FILE), self).await?;
        let client = Client::new(
            &ClientArgs {
                api: vec![api.clone()],
                api_key: None,
                ca_cert: None,
            },
            &FileConfig::default(),
        )?;
        Ok((api, client))
    }

    /// Start a node named `name` on loopback at one thread (data in `DIR/name`), joining `api`,
    /// with `extra` flags.
    pub(crate) fn start_node(
        &mut self,
        name: &str,
        api: &str,
        models: &Path,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let data = self.dir.join(name);
        let mut args = vec![
            "node",
            "--data-dir",
            path_str(&data)?,
            "--join",
            api,
            "--models",
            path_str(models)?,
            "--max-threads",
            "1",
        ];
        args.extend(LOOPBACK);
        args.extend(extra);
        self.spawn(name, &args)
    }

    /// A coordinator and `nodes` nodes at one thread each on loopback, once every node is online.
    pub(crate) async fn start_swarm(
        &mut self,
        models: &Path,
        nodes: usize,
    ) -> anyhow::Result<(String, Client)> {
        self.start_swarm_with(models, nodes, &[]).await
    }

    /// [`Self::start_swarm`], every process (the coordinator reading `models` too) with `extra`.
    pub(crate) async fn start_swarm_with(
        &mut self,
        models: &Path,
        nodes: usize,
        extra: &[&str],
    ) -> anyhow::Result<(String, Client)> {
        let (api, client) = self.start_coordinator_with(Some(models), extra).await?;
        for n in 0..nodes {
            self.start_node(&format!("node{n}"), &api, models, extra)?;
        }
        let deadline = Instant::now() + SWARM_FORM_TIMEOUT;
        loop {
            self.check_alive()?;
            let peers: Vec<serde_json::Value> = client.get("/v1/peers").await.unwrap_or_default();
            if peers.iter().filter(|p| p["online"] == true).count() >= nodes {
                return Ok((api, client));
            }
            if Instant::now() > deadline {
                bail!(
                    "the local swarm did not form within {} s",
                    SWARM_FORM_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(API_FILE_POLL_INTERVAL).await;
        }
    }

    /// CPU time (user and system, ms) the child named `name` has used so far (Linux `/proc`).
    pub(crate) fn cpu_ms(&self, name: &str) -> Option<f64> {
        let (_, child) = self.children.iter().find(|(n, _)| n == name)?;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()?)).ok()?;
        // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // USER_HZ is 100 on every Linux Hearth runs on.
        Some(ticks * 10.0)
    }

    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited early ({status})");
            }
        }
        Ok(())
    }

    pub(crate) fn show_logs(&self) {
        for (name, _) in &self.children {
            if let Ok(log) = std::fs::read_to_string(self.log_path(name)) {
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                eprintln!("--- last lines of {name}'s log ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// SIGTERM every child, nodes first, then wait; kill what has not stopped after the grace time.
    async fn stop_children(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            terminate(child);
        }
        for (name, child) in self.children.iter_mut().rev() {
            match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => eprintln!("{name} stopped with {status}"),
                Ok(Err(error)) => eprintln!("{name}: {error}"),
                Err(_) => {
                    eprintln!(
                        "{name} did not stop within {}s; killing it",
                        STOP_GRACE.as_secs()
                    );
                    let _ = child.kill().await;
                }
            }
        }
    }
}

#[cfg(unix)]
fn terminate(child: &mut Child) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

#[cfg(not(unix))]
fn terminate(child: &mut Child) {
    let _ = child.start_kill();
}
