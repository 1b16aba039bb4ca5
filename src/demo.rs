//! `hearth demo`: a coordinator and nodes as child processes on 127.0.0.1, the swarm forming, then a
//! clean stop.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hearth_coordinator::API_URL_FILE;
use hearth_protocol::api::PeerEntry;
use tokio::process::{Child, Command};

use crate::cli::{ClientArgs, DemoArgs};
use crate::client::Client;
use crate::config::FileConfig;
use crate::peers::table;
use crate::shutdown_signal;

/// How often the demo polls the coordinator while the swarm forms.
const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// How often the demo looks for the coordinator's API URL file while it starts.
const API_FILE_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a child gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the coordinator gets to start serving HTTP.
const COORDINATOR_START_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) async fn run(args: DemoArgs, file: &FileConfig) -> anyhow::Result<()> {
    let models = args.models.resolve(file)?;
    let dir = std::env::temp_dir().join(format!("hearth-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut swarm = Children {
        dir: dir.clone(),
        children: Vec::new(),
    };

    let outcome = tokio::select! {
        result = form(&args, &models, &mut swarm) => result,
        () = shutdown_signal() => {
            eprintln!("interrupted");
            Ok(())
        }
    };
    if outcome.is_err() {
        swarm.show_logs();
    }
    swarm.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn form(args: &DemoArgs, models: &Path, swarm: &mut Children) -> anyhow::Result<()> {
    let loopback = [
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
    ];
    let coordinator_dir = swarm.dir.join("coordinator");
    println!(
        "Starting a coordinator and {} nodes on 127.0.0.1 (throwaway data in {})",
        args.nodes,
        swarm.dir.display()
    );
    let mut coordinator_args = vec![
        "coordinator",
        "--data-dir",
        path_str(&coordinator_dir)?,
        "--http",
        "127.0.0.1:0",
    ];
    coordinator_args.extend(loopback);
    swarm.spawn("coordinator", &coordinator_args)?;

    let api = wait_for_api(&coordinator_dir.join(API_URL_FILE), swarm).await?;
    println!("Coordinator API at {api}");
    let client = Client::new(
        &ClientArgs {
            api: Some(api.clone()),
            api_key: None,
        },
        &FileConfig::default(),
    )?;

    let started = Instant::now();
    for n in 1..=args.nodes {
        let data = swarm.dir.join(format!("node{n}"));
        let mut node_args = vec![
            "node",
            "--data-dir",
            path_str(&data)?,
            "--join",
            &api,
            "--models",
            path_str(models)?,
        ];
        node_args.extend(loopback);
        swarm.spawn(&format!("node{n}"), &node_args)?;
    }

    let deadline = started + Duration::from_secs(args.timeout);
    let mut seen = BTreeSet::new();
    loop {
        swarm.check_alive()?;
        let peers: Vec<PeerEntry> = client.get("/v1/peers").await.unwrap_or_default();
        for peer in peers.iter().filter(|p| p.online) {
            if seen.insert(peer.peer_id) {
                let c = &peer.capabilities;
                println!(
                    "  + {} joined after {:.1}s: {} {} ({} threads, score {:.1})",
                    peer.peer_id,
                    started.elapsed().as_secs_f64(),
                    c.backend.as_str(),
                    c.device,
                    c.threads,
                    c.score
                );
            }
        }
        if peers.iter().filter(|p| p.online).count() >= args.nodes as usize {
            println!(
                "\nThe swarm formed in {:.1}s:\n",
                started.elapsed().as_secs_f64()
            );
            print!("{}", table(&peers));
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} nodes joined within {}s",
                seen.len(),
                args.nodes,
                args.timeout
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    if args.hold {
        println!(
            "\nThe swarm keeps running; `hearth peers --api {api}` shows it. Ctrl-C stops everything."
        );
        std::future::pending::<()>().await;
    }
    Ok(())
}

async fn wait_for_api(file: &Path, swarm: &mut Children) -> anyhow::Result<String> {
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

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The demo's child processes, each logging to a file in the demo folder.
struct Children {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Children {
    fn spawn(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
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

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited early ({status})");
            }
        }
        Ok(())
    }

    fn show_logs(&self) {
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
    async fn stop(&mut self) {
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
        println!("Stopped {} processes.", self.children.len());
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
