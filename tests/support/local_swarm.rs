//! A coordinator and nodes on loopback, as child processes, for the job and pipeline tests.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::{Process, keygen, peers, peers_with_key, run_hearth, stdout_json, wait_until};

/// Two distinct free ports on loopback, free for TCP and UDP alike (the swarm listens on QUIC and TCP
/// at one port). Every socket is held until both are chosen, so the two cannot coincide.
fn free_ports() -> [u16; 2] {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < 2 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) {
            ports.push(port);
            held.push((tcp, Some(udp)));
        } else {
            held.push((tcp, None));
        }
    }
    [ports[0], ports[1]]
}

pub struct Swarm {
    pub tmp: TempDir,
    pub coordinator: Process,
    pub coordinator_args: Vec<String>,
    pub api: String,
    pub nodes: Vec<(String, Process)>,
    /// The admin key, when the coordinator requires keys (not `--open`).
    pub admin_key: Option<String>,
}

impl Swarm {
    /// A coordinator on fixed loopback ports (so a restart comes back where nodes look for it) and
    /// one node per entry of `faults`.
    pub fn start(faults: &[Option<&str>]) -> Self {
        Self::start_with(faults, true)
    }

    /// [`Self::start`] with the API requiring keys (no `--open`): `admin_key` holds the admin key.
    pub fn start_keyed(faults: &[Option<&str>]) -> Self {
        Self::start_with(faults, false)
    }

    fn start_with(faults: &[Option<&str>], open: bool) -> Self {
        Self::start_custom(faults, open, &[])
    }

    /// An open coordinator started with `extra` flags too, and no nodes yet.
    #[allow(dead_code)] // Not every test binary that includes the support module uses it.
    pub fn start_bare(extra: &[&str]) -> Self {
        Self::start_custom(&[], true, extra)
    }

    fn start_custom(faults: &[Option<&str>], open: bool, extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("coordinator");
        // The ports are free when picked but not held until the coordinator binds them: a process
        // another test starts meanwhile can take one. Then pick others (a few times at most).
        let mut attempt = 0;
        let (coordinator, coordinator_args, api) = loop {
            attempt += 1;
            let [port, http] = free_ports();
            let mut coordinator_args: Vec<String> = [
                "coordinator",
                "--no-mdns",
                "--data-dir",
                dir.to_str().expect("utf-8"),
                "--http",
                &format!("127.0.0.1:{http}"),
                "--listen",
                &format!("/ip4/127.0.0.1/udp/{port}/quic-v1"),
                "--listen",
                &format!("/ip4/127.0.0.1/tcp/{port}"),
            ]
            .map(String::from)
            .to_vec();
            if open {
                coordinator_args.push("--open".into());
            }
            coordinator_args.extend(extra.iter().map(|a| a.to_string()));
            let mut coordinator = Process::start(
                "coordinator",
                tmp.path(),
                &[],
                &coordinator_args
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            );
            match super::try_wait_for_api(&dir, &mut coordinator) {
                Ok(api) => break (coordinator, coordinator_args, api),
                Err(log) if attempt < 5 && log.contains("in use") => continue,
                Err(log) => panic!("coordinator exited; log:\n{log}"),
            }
        };
        let admin_key = (!open).then(|| {
            std::fs::read_to_string(dir.join("admin.key"))
                .expect("the coordinator writes its admin key at start")
                .trim()
                .to_string()
        });
        let mut swarm = Self {
            tmp,
            coordinator,
            coordinator_args,
            api,
            nodes: Vec::new(),
            admin_key,
        };
        for (i, fault) in faults.iter().enumerate() {
            swarm.start_node(i, *fault);
        }
        swarm.wait_online(faults.len());
        swarm
    }

    /// Wait until `want` nodes are online.
    pub fn wait_online(&self, want: usize) {
        wait_until(Duration::from_secs(60), "every node online", || {
            let online = peers_with_key(&[], &self.api, self.admin_key.as_deref())
                .iter()
                .filter(|p| p["online"] == true)
                .count();
            (online == want).then_some(())
        });
    }

    pub fn start_node(&mut self, i: usize, fault: Option<&str>) {
        self.start_node_with(i, fault, &[]);
    }

    /// [`Self::start_node`] with more flags.
    pub fn start_node_with(&mut self, i: usize, fault: Option<&str>, extra: &[&str]) {
        let dir = self.tmp.path().join(format!("node{i}"));
        let peer_id = keygen(&dir);
        let mut args = vec![
            "node",
            "--no-mdns",
            "--max-threads",
            "1",
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--join",
            &self.api,
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ];
        if let Some(fault) = fault {
            args.extend(["--fault", fault]);
        }
        args.extend(extra);
        let name = format!("node{i}");
        let process = Process::start(&name, self.tmp.path(), &[], &args);
        self.nodes.push((peer_id, process));
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn hearth(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend(["--api", &self.api]);
        run_hearth(&[], &all)
    }

    pub fn status(&self, job: &str, units: bool) -> Value {
        let mut args = vec!["job", job, "--json"];
        if units {
            args.push("--units");
        }
        stdout_json(&self.hearth(&args))
    }

    /// `hearth embed --detach`, returning the job id.
    pub fn submit(&self, input: &Path, replicas: &str, unit_size: &str) -> String {
        let out = self.hearth(&[
            "embed",
            "--input",
            input.to_str().expect("utf-8"),
            "--replicas",
            replicas,
            "--unit-size",
            unit_size,
            "--detach",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    /// Wait for the job and fetch its output and receipts.
    pub fn finish(&self, job: &str) -> (Vec<u8>, PathBuf) {
        let output = self.path(&format!("job{job}.jsonl"));
        let receipts = self.path(&format!("job{job}.receipts.jsonl"));
        let out = self.hearth(&[
            "job",
            job,
            "--wait",
            "--output",
            output.to_str().expect("utf-8"),
            "--receipts",
            receipts.to_str().expect("utf-8"),
        ]);
        assert!(
            out.status.success(),
            "{}\ncoordinator log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.coordinator.log_text()
        );
        (std::fs::read(&output).expect("output"), receipts)
    }

    pub fn peer(&self, peer_id: &str) -> Value {
        peers(&[], &self.api)
            .into_iter()
            .find(|p| p["peer_id"] == peer_id)
            .unwrap_or_else(|| panic!("{peer_id} not listed"))
    }
}
