//! A coordinator group on real processes: three coordinators replicating the journal with Raft,
//! real nodes and the real embedder. The leader killed mid-job: a new one takes over, the job
//! completes exactly as one machine computes it, every unit accepted once in the survivors'
//! journals, nothing a node delivered lost; the old leader comes back and catches up. A follower
//! killed: the leader carries on without an election.

mod support;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Process, keygen, local_embed, run_hearth, stdout_json, wait_until};

/// A port free on loopback for TCP and UDP alike.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Member {
    dir: PathBuf,
    peer_id: String,
    /// Its group address.
    addr: String,
    api: String,
    args: Vec<String>,
    process: Option<Process>,
}

struct Group {
    tmp: tempfile::TempDir,
    members: Vec<Member>,
    nodes: Vec<Process>,
}

impl Group {
    fn start(nodes: usize) -> Self {
        Self::start_with(nodes, |_| Vec::new())
    }

    /// [`Self::start`], each member given more flags (`extra` of the test's folder).
    fn start_with(nodes: usize, extra: impl Fn(&Path) -> Vec<String>) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let extra = extra(tmp.path());
        let mut members: Vec<Member> = (0..3)
            .map(|i| {
                let dir = tmp.path().join(format!("c{i}"));
                let peer_id = keygen(&dir);
                let http = free_port();
                Member {
                    dir,
                    addr: format!("/ip4/127.0.0.1/udp/{}/quic-v1/p2p/{peer_id}", free_port()),
                    peer_id,
                    api: format!("http://127.0.0.1:{http}"),
                    args: Vec::new(),
                    process: None,
                }
            })
            .collect();
        let addrs: Vec<String> = members.iter().map(|m| m.addr.clone()).collect();
        // The last member reads the same list from a group file.
        let file = tmp.path().join("group.txt");
        std::fs::write(
            &file,
            format!("# the group's members\n\n{}\n", addrs.join("\n")),
        )
        .expect("group file");
        let last = members.len() - 1;
        for (i, m) in members.iter_mut().enumerate() {
            let swarm = free_port();
            m.args = [
                "coordinator",
                "--no-mdns",
                "--open",
                "--data-dir",
                m.dir.to_str().expect("utf-8"),
                "--http",
                m.api.trim_start_matches("http://"),
                "--listen",
                &format!("/ip4/127.0.0.1/udp/{swarm}/quic-v1"),
            ]
            .map(String::from)
            .to_vec();
            if i == last {
                m.args
                    .extend(["--group-file".into(), file.display().to_string()]);
            } else {
                m.args.extend(["--group".into(), addrs.join(",")]);
            }
            m.args.extend(extra.iter().cloned());
            m.process = Some(Process::start(
                &format!("coordinator{i}"),
                tmp.path(),
                &[],
                &m.args.iter().map(String::as_str).collect::<Vec<_>>(),
            ));
        }
        let mut group = Self {
            tmp,
            members,
            nodes: Vec::new(),
        };
        group.wait_leader(None, Duration::from_secs(60));
        let apis = group.apis();
        for i in 0..nodes {
            let dir = group.tmp.path().join(format!("node{i}"));
            keygen(&dir);
            let args = [
                "node",
                "--no-mdns",
                "--max-threads",
                "1",
                "--data-dir",
                dir.to_str().expect("utf-8"),
                "--join",
                &apis,
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
            ];
            group.nodes.push(Process::start(
                &format!("node{i}"),
                group.tmp.path(),
                &[],
                &args,
            ));
        }
        wait_until(Duration::from_secs(60), "every node online", || {
            let out = run_hearth(&[], &["peers", "--json", "--api", &apis]);
            let peers: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
            (peers.iter().filter(|p| p["online"] == true).count() == nodes).then_some(())
        });
        group
    }

    /// Every member's API, comma-separated, as `--api` and `--join` take them.
    fn apis(&self) -> String {
        self.members
            .iter()
            .map(|m| m.api.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `GET /v1/group` of member `i`, if it answers.
    fn view(&self, i: usize) -> Option<Value> {
        let out = run_hearth(&[], &["group", "--json", "--api", &self.members[i].api]);
        out.status.success().then(|| stdout_json(&out))
    }

    /// Wait until a member that is up says it leads, in a term after `after` (if given), and
    /// every other member that is up names it; its index and term.
    fn wait_leader(&self, after: Option<u64>, timeout: Duration) -> (usize, u64) {
        wait_until(timeout, "a leader the members agree on", || {
            let up: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].process.is_some())
                .collect();
            let views: Vec<(usize, Value)> = up
                .iter()
                .filter_map(|&i| Some((i, self.view(i)?)))
                .collect();
            let (i, view) = views.iter().find(|(_, v)| v["self"]["role"] == "leader")?;
            let term = view["term"].as_u64()?;
            if after.is_some_and(|t| term <= t) {
                return None;
            }
            let leader = self.members[*i].peer_id.as_str();
            views
                .iter()
                .all(|(_, v)| v["leader"] == leader)
                .then_some((*i, term))
        })
    }

    fn hearth(&self, args: &[&str]) -> std::process::Output {
        let apis = self.apis();
        let mut all = args.to_vec();
        all.extend(["--api", &apis]);
        run_hearth(&[], &all)
    }

    fn job(&self, id: &str, units: bool) -> Value {
        let mut args = vec!["job", id, "--json"];
        if units {
            args.push("--units");
        }
        stdout_json(&self.hearth(&args))
    }

    fn submit(&self, input: &Path) -> String {
        let out = self.hearth(&[
            "embed",
            "--input",
            input.to_str().expect("utf-8"),
            "--replicas",
            "2",
            "--unit-size",
            "2",
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

    /// `hearth job ID --wait --output`, through every member: rides out a change of leader.
    fn finish(&self, id: &str) -> Vec<u8> {
        let output = self.path(&format!("job{id}.jsonl"));
        let out = self.hearth(&[
            "job",
            id,
            "--wait",
            "--output",
            output.to_str().expect("utf-8"),
        ]);
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        std::fs::read(&output).expect("output")
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .filter_map(|m| m.process.as_ref())
            .map(|p| format!("--- {}\n{}", p.name, p.log_text()))
            .collect()
    }

    /// Every unit of the job done and accepted exactly once in the journal of the member that
    /// answers (the leader's; a follower sends the request on to it).
    fn assert_accepted_once(&self, id: &str, units: u64) {
        let status = self.job(id, true);
        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(status["units_total"], units);
        for unit in status["units"].as_array().expect("units") {
            assert_eq!(unit["state"], "done", "{unit}");
            assert_eq!(
                unit["journal_accepts"], 1,
                "accepted other than once: {unit}"
            );
        }
    }

    /// Member `i`'s journal position, as it says.
    fn position(&self, i: usize) -> Option<u64> {
        let view = self.view(i)?;
        let me = view["self"]["peer_id"].clone();
        view["members"]
            .as_array()?
            .iter()
            .find(|m| m["peer_id"] == me)?["commit_index"]
            .as_u64()
    }
}

/// A raw HTTP/1.0 request to `api` (no redirect followed): the status code and the body.
fn raw(api: &str, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = api.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    let body = if method == "POST" { "{}" } else { "" };
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// `n` texts to embed.
fn write_texts(path: &Path, n: usize) {
    let words = [
        "hearth", "group", "raft", "leader", "journal", "quorum", "ember",
    ];
    let mut text = String::new();
    for i in 0..n {
        let sentence: Vec<&str> = (0..3 + i % 9).map(|k| words[(i * 5 + k * 3) % 7]).collect();
        text.push_str(&serde_json::json!({ "id": i, "text": sentence.join(" ") }).to_string());
        text.push('\n');
    }
    std::fs::write(path, text).expect("write inputs");
}

#[test]
fn the_leader_killed_mid_job_is_replaced_and_nothing_is_lost() {
    let mut group = Group::start(3);
    let input = group.path("texts.jsonl");
    write_texts(&input, 400);
    let reference = local_embed(&input, &group.path("reference.jsonl"));
    let (leader, term) = group.wait_leader(None, Duration::from_secs(30));
    let job = group.submit(&input);
    wait_until(Duration::from_secs(120), "the job under way", || {
        (group.job(&job, false)["units_done"].as_u64()? >= 20).then_some(())
    });

    let killed_at = Instant::now();
    group.members[leader]
        .process
        .take()
        .expect("running")
        .kill();
    let (new_leader, new_term) = group.wait_leader(Some(term), Duration::from_secs(30));
    let took = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        took < Duration::from_secs(10),
        "a new leader took {took:?} (the issue asks for under 10 s)"
    );
    eprintln!("new leader (term {new_term}) seen {took:?} after the kill");

    let output = group.finish(&job);
    assert!(
        output == reference,
        "the output differs from `hearth local embed`"
    );
    group.assert_accepted_once(&job, 200);
    // The new leader took over a job part done: it replayed a journal that held it.
    let new_log = group.members[new_leader]
        .process
        .as_ref()
        .expect("running")
        .log_text();
    let replayed = new_log
        .lines()
        .find(|l| l.contains("journal replayed"))
        .unwrap_or_else(|| panic!("the new leader did not replay the journal:\n{new_log}"));
    assert!(replayed.contains("jobs=1"), "{replayed}");

    // Nothing a node delivered was lost: each stops with its outbox empty.
    for node in &mut group.nodes {
        assert!(
            node.terminate(Duration::from_secs(30)).is_some(),
            "{}",
            node.name
        );
        let log = node.log_text();
        assert!(
            log.contains("drained: no work held, every result delivered"),
            "{}:\n{log}",
            node.name
        );
    }

    // The old leader comes back as a follower and catches up.
    let member = &mut group.members[leader];
    member.process = Some(Process::start(
        "coordinator-restarted",
        group.tmp.path(),
        &[],
        &member.args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    wait_until(Duration::from_secs(60), "the old leader caught up", || {
        let theirs = group.position(new_leader)?;
        let view = group.view(leader)?;
        (view["self"]["role"] == "follower" && group.position(leader)? == theirs).then_some(())
    });

    // The other survivor's journal says the same: with the leader stopped, whoever leads next
    // answers from its own.
    let stopped = group.members[new_leader].process.take().expect("running");
    drop(stopped);
    let (third, _) = group.wait_leader(Some(new_term), Duration::from_secs(30));
    assert_ne!(third, new_leader);
    group.assert_accepted_once(&job, 200);
}

#[test]
fn a_follower_killed_mid_job_costs_no_election() {
    let mut group = Group::start(2);
    let input = group.path("texts.jsonl");
    write_texts(&input, 200);
    let reference = local_embed(&input, &group.path("reference.jsonl"));
    let (leader, term) = group.wait_leader(None, Duration::from_secs(30));
    let job = group.submit(&input);
    wait_until(Duration::from_secs(120), "the job under way", || {
        (group.job(&job, false)["units_done"].as_u64()? >= 10).then_some(())
    });
    let follower = (leader + 1) % 3;
    group.members[follower]
        .process
        .take()
        .expect("running")
        .kill();
    // The client, asking the leader through these seconds, is answered every time, and the job
    // goes on (its answers' latency is printed: the leader waits for no one it lost).
    let leader_api = group.members[leader].api.clone();
    let mut slowest = Duration::ZERO;
    let mut done = Vec::new();
    for _ in 0..10 {
        let asked = Instant::now();
        let out = run_hearth(&[], &["job", &job, "--json", "--api", &leader_api]);
        slowest = slowest.max(asked.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        done.push(
            stdout_json(&out)["units_done"]
                .as_u64()
                .expect("units_done"),
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("after the follower's loss: slowest status answer {slowest:?}; units done {done:?}");
    assert!(
        done.last() > done.first() || done.last() == Some(&100),
        "the job stalled: {done:?}"
    );
    let output = group.finish(&job);
    assert!(
        output == reference,
        "the output differs from `hearth local embed`"
    );
    group.assert_accepted_once(&job, 100);
    let view = group.view(leader).expect("the leader answers");
    assert_eq!(view["self"]["role"], "leader", "{view}");
    assert_eq!(view["term"], term, "an election was held: {view}");
    let lost = view["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["peer_id"] == group.members[follower].peer_id.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(lost["role"], "unreachable", "{view}");

    // The other follower answers reads itself, from its replica of the journal, and sends writes
    // to the leader.
    let other = (0..3)
        .find(|&i| i != leader && i != follower)
        .expect("a third");
    let api = &group.members[other].api;
    let (code, body) = raw(api, "GET", &format!("/v1/jobs/{job}"));
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["units_done"], 100, "{status}");
    let (code, body) = raw(api, "GET", &format!("/v1/jobs/{job}/output"));
    assert_eq!(code, 200);
    assert!(
        body.as_bytes() == reference.as_slice(),
        "the follower's output differs"
    );
    let (code, _) = raw(api, "POST", "/v1/jobs");
    assert_eq!(code, 307, "a write goes to the leader");
}

/// API keys are the group's: one made through a follower (sent on to the leader) with the admin key
/// any member keeps, is known to the next leader with its quota. A dead member is removed and a new
/// one added: it catches up from the log and votes.
#[test]
fn keys_outlive_the_leader_and_a_dead_member_is_replaced() {
    let mut group = Group::start(0);
    let (leader, term) = group.wait_leader(None, Duration::from_secs(30));
    let follower = (leader + 1) % 3;
    let admin_dir = group.members[follower]
        .dir
        .to_str()
        .expect("utf-8")
        .to_string();
    // Every member keeps the group's admin key, written once the group is founded.
    wait_until(Duration::from_secs(20), "the follower's admin.key", || {
        std::fs::read_to_string(Path::new(&admin_dir).join("admin.key")).ok()
    });
    let made = run_hearth(
        &[],
        &[
            "apikey",
            "create",
            "--name",
            "survivor",
            "--units-per-day",
            "77",
            "--api",
            &group.members[follower].api,
            "--data-dir",
            &admin_dir,
        ],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let key = String::from_utf8(made.stdout).expect("utf-8");
    assert!(key.trim().starts_with("hk-"), "{key}");

    group.members[leader]
        .process
        .take()
        .expect("running")
        .kill();
    let dead = group.members[leader].peer_id.clone();
    let (now, _) = group.wait_leader(Some(term), Duration::from_secs(30));
    let listed = run_hearth(
        &[],
        &[
            "apikey",
            "list",
            "--json",
            "--api",
            &group.apis(),
            "--data-dir",
            &admin_dir,
        ],
    );
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let keys: Value = stdout_json(&listed);
    let survivor = keys
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["name"] == "survivor")
        .unwrap_or_else(|| panic!("the new leader does not know the key: {keys}"));
    assert_eq!(survivor["quota"]["units_per_day"], 77, "{survivor}");

    // Replace the dead member: remove it, start a new one waiting to be added, add it.
    let removed = run_hearth(
        &[],
        &[
            "group",
            "remove",
            &dead,
            "--api",
            &group.apis(),
            "--data-dir",
            &admin_dir,
        ],
    );
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let dir = group.path("c3");
    let peer_id = keygen(&dir);
    let addr = format!("/ip4/127.0.0.1/udp/{}/quic-v1/p2p/{peer_id}", free_port());
    let api = format!("http://127.0.0.1:{}", free_port());
    // It knows the members it joins (it serves Raft to them only) and its own address.
    let view = group.view(now).expect("the leader answers");
    let mut list: Vec<String> = group
        .members
        .iter()
        .filter(|m| m.peer_id != dead)
        .map(|m| m.addr.clone())
        .collect();
    assert_eq!(view["members"].as_array().map(Vec::len), Some(2), "{view}");
    list.push(addr.clone());
    let group_list = list.join(",");
    let args: Vec<String> = [
        "coordinator",
        "--no-mdns",
        "--open",
        "--data-dir",
        dir.to_str().expect("utf-8"),
        "--http",
        api.trim_start_matches("http://"),
        "--listen",
        &format!("/ip4/127.0.0.1/udp/{}/quic-v1", free_port()),
        "--group",
        &group_list,
        "--group-join",
    ]
    .map(String::from)
    .to_vec();
    let process = Process::start(
        "coordinator-new",
        group.tmp.path(),
        &[],
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    group.members[leader] = Member {
        dir,
        addr: addr.clone(),
        peer_id: peer_id.clone(),
        api,
        args,
        process: Some(process),
    };
    let added = run_hearth(
        &[],
        &[
            "group",
            "add",
            &addr,
            "--json",
            "--api",
            &group.members[now].api,
            "--data-dir",
            &admin_dir,
        ],
    );
    assert!(
        added.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&added.stderr),
        group.logs()
    );
    wait_until(Duration::from_secs(30), "the new member caught up", || {
        let view = group.view(leader)?;
        let ids: Vec<&str> = view["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["peer_id"].as_str())
            .collect();
        (view["self"]["role"] == "follower"
            && ids.len() == 3
            && ids.contains(&peer_id.as_str())
            && !ids.contains(&dead.as_str())
            && group.position(leader)? == group.position(now)?)
        .then_some(())
    });
    // The new member keeps the group's admin key too.
    let theirs =
        std::fs::read_to_string(Path::new(&admin_dir).join("admin.key")).expect("admin.key");
    let mine = group.members[leader].dir.join("admin.key");
    wait_until(
        Duration::from_secs(20),
        "the new member's admin.key",
        || (std::fs::read_to_string(&mine).ok()? == theirs).then_some(()),
    );
    // The group of the survivor, the new member and the leader loses the leader: the other two
    // (the new one voting) elect one of themselves.
    let term_now = group.view(now).expect("the leader answers")["term"]
        .as_u64()
        .expect("term");
    group.members[now].process.take().expect("running").kill();
    let (next, _) = group.wait_leader(Some(term_now), Duration::from_secs(30));
    assert_ne!(next, now);
}

/// A co-op revocation handed to the group is kept by every member, so the next leader refuses the
/// revoked member too.
#[test]
fn a_coop_revocation_outlives_the_leader() {
    let coop = |tmp: &Path| tmp.join("coop");
    let mut group = Group::start_with(0, |tmp| {
        let dir = coop(tmp);
        let out = run_hearth(
            &[],
            &["coop", "init", "--dir", dir.to_str().expect("utf-8")],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        vec!["--coop".into(), dir.to_str().expect("utf-8").into()]
    });
    let (leader, term) = group.wait_leader(None, Duration::from_secs(30));
    let member = keygen(&group.path("member"));
    let coop_dir = coop(group.tmp.path());
    let revoked = run_hearth(
        &[],
        &[
            "coop",
            "revoke",
            &member,
            "--dir",
            coop_dir.to_str().expect("utf-8"),
            "--api",
            &group.apis(),
            "--json",
        ],
    );
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let kept = |i: usize| {
        group.members[i]
            .dir
            .join("revoked")
            .join(format!("{member}.revocation"))
            .exists()
    };
    wait_until(Duration::from_secs(20), "every member kept it", || {
        (0..3).all(kept).then_some(())
    });
    group.members[leader]
        .process
        .take()
        .expect("running")
        .kill();
    let (now, _) = group.wait_leader(Some(term), Duration::from_secs(30));
    let log = group.members[now]
        .process
        .as_ref()
        .expect("running")
        .log_text();
    let started = log
        .lines()
        .rfind(|l| l.contains("co-op swarm: members only"))
        .unwrap_or_else(|| panic!("the new leader runs no co-op swarm:\n{log}"));
    assert!(started.contains("revoked=1"), "{started}");
}
