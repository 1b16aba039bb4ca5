//! The command line's answers to bad input: one clear line and a non-zero exit.

mod support;

use std::process::Output;

use support::run_hearth;

fn one_line_error(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(stderr.lines().count(), 1, "one line expected:\n{stderr}");
    stderr
}

#[test]
fn unknown_flags_get_one_line_and_exit_2() {
    let out = run_hearth(&[], &["node", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).contains("--no-such-flag"));
    let out = run_hearth(&[], &["frobnicate"]);
    assert!(one_line_error(&out).contains("frobnicate"));
}

#[test]
fn unreadable_or_invalid_config_gets_one_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing.toml");
    let out = run_hearth(
        &[],
        &["--config", missing.to_str().expect("utf-8"), "peers"],
    );
    assert!(one_line_error(&out).contains("missing.toml"));

    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[node]\nthreads = \"lots\"\n").expect("write");
    let out = run_hearth(&[], &["--config", bad.to_str().expect("utf-8"), "peers"]);
    let line = one_line_error(&out);
    assert!(
        line.contains("bad.toml") && line.contains("line 2"),
        "{line}"
    );
}

#[test]
fn config_file_supplies_what_flags_leave_out() {
    // The API URL comes from the file; the error names it, so it was used.
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("config.toml");
    std::fs::write(&file, "api = \"http://127.0.0.1:9\"\n").expect("write");
    let out = run_hearth(&[], &["--config", file.to_str().expect("utf-8"), "peers"]);
    assert!(one_line_error(&out).contains("http://127.0.0.1:9"));
    // A flag beats the file.
    let out = run_hearth(
        &[],
        &[
            "--config",
            file.to_str().expect("utf-8"),
            "peers",
            "--api",
            "http://127.0.0.1:10",
        ],
    );
    assert!(one_line_error(&out).contains("http://127.0.0.1:10"));
}

#[test]
fn keygen_keeps_an_existing_identity() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = support::keygen(tmp.path());
    assert!(first.starts_with("12D3KooW"), "{first}");
    assert_eq!(support::keygen(tmp.path()), first);
}

#[test]
fn every_command_has_help() {
    for command in [
        &["--help"][..],
        &["node", "--help"],
        &["coordinator", "--help"],
        &["peers", "--help"],
        &["keygen", "--help"],
        &["demo", "--help"],
    ] {
        let out = run_hearth(&[], command);
        assert!(out.status.success(), "{command:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{command:?}"
        );
    }
}

#[test]
fn sim_writes_a_reproducible_report_and_refuses_bad_scenarios() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("small.toml");
    std::fs::write(
        &scenario,
        "name = \"small\"\n[workload]\nunits_per_job = 500\nreplicas = 2\n\
         [[population]]\ncount = 20\n[[population]]\ncount = 4\n\
         behaviour = { kind = \"liar\", probability = 1.0 }\n",
    )
    .expect("write");
    let run = |out: &std::path::Path| {
        let result = run_hearth(
            &[],
            &[
                "sim",
                scenario.to_str().expect("utf-8"),
                "--seed",
                "9",
                "--out",
                out.to_str().expect("utf-8"),
            ],
        );
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        assert!(String::from_utf8_lossy(&result.stdout).contains("wall time"));
        std::fs::read_to_string(out.join("report.json")).expect("report.json")
    };
    let first = run(&dir.path().join("a"));
    let second = run(&dir.path().join("b"));
    assert_eq!(
        first, second,
        "the same scenario and seed give the same report"
    );
    let report: serde_json::Value = serde_json::from_str(&first).expect("JSON");
    for field in [
        "peers",
        "units",
        "units_accepted",
        "wrong_accepted",
        "executions_per_accepted_unit",
    ] {
        assert!(report.get(field).is_some(), "no {field}: {report}");
    }
    assert_eq!(report["units"], 500);
    assert_eq!(report["wrong_accepted"], 0);

    std::fs::write(
        &scenario,
        "name = \"bad\"\n[workload]\nunits_per_job = 0\n[[population]]\ncount = 1\n",
    )
    .expect("write");
    let out = run_hearth(&[], &["sim", scenario.to_str().expect("utf-8")]);
    assert!(one_line_error(&out).contains("the workload is empty"));
}

#[test]
fn coop_invites_members_and_revokes_them_with_signed_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = |p: &str| tmp.path().join(p).to_str().expect("utf-8").to_string();
    let text = |out: &Output| String::from_utf8_lossy(&out.stdout).trim().to_string();
    let coop = run_hearth(&[], &["coop", "init", "--dir", &path("coop")]);
    assert!(coop.status.success());
    let coop_id = text(&coop);
    // Init again keeps the key.
    assert_eq!(
        text(&run_hearth(&[], &["coop", "init", "--dir", &path("coop")])),
        coop_id
    );
    let member = text(&run_hearth(&[], &["keygen", "--data-dir", &path("node")]));
    let invite = run_hearth(
        &[],
        &[
            "coop",
            "invite",
            &member,
            "--dir",
            &path("coop"),
            "--expires",
            "7",
            "--out",
            &path("node.cert"),
        ],
    );
    assert!(
        invite.status.success(),
        "{}",
        String::from_utf8_lossy(&invite.stderr)
    );
    let show = |dir: &str| {
        run_hearth(
            &[],
            &[
                "coop",
                "show",
                &path("node.cert"),
                "--dir",
                &path(dir),
                "--json",
            ],
        )
    };
    let shown: serde_json::Value = serde_json::from_slice(&show("coop").stdout).expect("json");
    assert_eq!(shown["valid"], true, "{shown}");
    assert_eq!(shown["member"], member.as_str());
    assert_eq!(shown["coop"], coop_id.as_str());
    assert!(
        shown["expires_ms"].as_u64().expect("expiry")
            > shown["issued_ms"].as_u64().expect("issued")
    );
    // Another co-op does not accept it.
    assert!(
        run_hearth(&[], &["coop", "init", "--dir", &path("other")])
            .status
            .success()
    );
    let other = show("other");
    assert!(!other.status.success());
    assert!(text(&other).contains("another co-op"), "{}", text(&other));
    // A tampered certificate does not check.
    let cert = std::fs::read_to_string(path("node.cert")).expect("cert");
    let last = cert.trim_end().chars().last().expect("hex");
    let flipped = if last == '0' { '1' } else { '0' };
    std::fs::write(
        path("node.cert"),
        format!(
            "{}{flipped}\n",
            &cert.trim_end()[..cert.trim_end().len() - 1]
        ),
    )
    .expect("write");
    assert!(
        !show("coop").status.success(),
        "a flipped bit breaks the signature"
    );
    std::fs::write(path("node.cert"), &cert).expect("restore");
    // Revoked: no longer valid.
    assert!(
        run_hearth(&[], &["coop", "revoke", &member, "--dir", &path("coop")])
            .status
            .success()
    );
    let revoked: serde_json::Value = serde_json::from_slice(&show("coop").stdout).expect("json");
    assert_eq!(revoked["valid"], false);
    assert!(
        revoked["problem"]
            .as_str()
            .expect("why")
            .contains("revoked"),
        "{revoked}"
    );
    // Bad input: one line, no file written.
    let bad = run_hearth(
        &[],
        &[
            "coop",
            "invite",
            "not-a-peer",
            "--dir",
            &path("coop"),
            "--out",
            &path("x.cert"),
        ],
    );
    assert!(!bad.status.success());
    assert!(!tmp.path().join("x.cert").exists());
}

/// The last line of stderr (a coordinator logs before it fails), checked to be an error and no
/// panic.
fn last_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    let last = stderr
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(last.starts_with("error: "), "{stderr}");
    last
}

#[test]
fn a_model_cut_short_is_named_with_its_size_and_the_fix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let original = support::models_dir().join("smollm2-135m-instruct-q4_1.gguf");
    let bytes = std::fs::read(&original).expect("the default model");
    let short = &bytes[..40_055_040];
    let models = tmp.path().to_str().expect("utf-8");
    let catalogued = tmp.path().join("smollm2-135m-instruct-q4_1.gguf");
    // `hearth local generate` of `model` (a file, or the default in the folder): its error line.
    let generate = |model: &[&str]| {
        let mut args = vec!["local", "generate", "--models", models];
        args.extend(model);
        args.extend(["--prompt", "hi", "--max-tokens", "1"]);
        one_line_error(&run_hearth(&[], &args))
    };
    // Under its catalogued name: the size it should have, and how to get a good copy.
    std::fs::write(&catalogued, short).expect("write");
    let line = generate(&[]);
    assert!(
        line.contains("is 40,055,040 bytes, expected 98,362,432")
            && line.contains("fetch it again with `hearth models fetch`")
            && line.matches("smollm2-135m-instruct-q4_1.gguf").count() == 1,
        "{line}"
    );
    // The right size, the wrong bytes: named as not the catalogued file.
    let mut damaged = bytes.clone();
    damaged[bytes.len() / 2] ^= 0xff;
    std::fs::write(&catalogued, &damaged).expect("write");
    let line = generate(&[]);
    assert!(
        line.contains("not the catalogued one") && line.contains("`hearth models fetch`"),
        "{line}"
    );
    // Under another name: cut short, by how much.
    let mine = tmp.path().join("mine.gguf");
    std::fs::write(&mine, short).expect("write");
    let line = generate(&["--model", mine.to_str().expect("utf-8")]);
    assert!(
        line.contains("cut short: 40,055,040 bytes, but its tensors run to byte 98,362,432"),
        "{line}"
    );
}

#[test]
fn a_port_in_use_an_unreachable_coordinator_and_a_missing_key_say_what_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run_hearth(
        &[],
        &[
            "coordinator",
            "--data-dir",
            tmp.path().join("c").to_str().expect("utf-8"),
            "--http",
            &addr,
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ],
    );
    let line = last_error_line(&out);
    assert!(
        line.contains(&addr) && line.contains("the port is in use") && line.contains("--http"),
        "{line}"
    );
    assert_eq!(line.matches("in use").count(), 1, "{line}");

    // Nothing listens on port 1.
    let out = run_hearth(&[], &["peers", "--api", "http://127.0.0.1:1"]);
    let line = one_line_error(&out);
    assert!(
        line.contains("cannot reach the coordinator at http://127.0.0.1:1")
            && line.contains("--api"),
        "{line}"
    );

    let nowhere = tmp.path().join("nowhere");
    let out = run_hearth(
        &[],
        &[
            "apikey",
            "list",
            "--data-dir",
            nowhere.to_str().expect("utf-8"),
        ],
    );
    let line = one_line_error(&out);
    assert!(
        line.contains("admin key") && line.contains("--admin-key"),
        "{line}"
    );
}

/// A coordinator group's start refused for a bad member list, each saying what to give instead;
/// `hearth group` against a lone coordinator says it is not in a group.
#[test]
fn a_bad_group_says_what_to_give() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    let dir = dir.to_str().expect("utf-8");
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "# nobody yet\n\n").expect("write");
    let missing = tmp.path().join("missing.txt");
    let cases: [(Vec<&str>, &[&str]); 4] = [
        (
            vec!["--group-file", missing.to_str().expect("utf-8")],
            &["--group-file", "No such file"],
        ),
        (
            vec!["--group-file", empty.to_str().expect("utf-8")],
            &["no member addresses", "/p2p/PEER_ID"],
        ),
        (vec!["--group-join"], &["--group-join", "--group-file"]),
        (
            vec!["--group", "/ip4/127.0.0.1/udp/7081/quic-v1"],
            &["does not end in /p2p/PEER_ID", "/p2p/12D3KooW"],
        ),
    ];
    for (extra, said) in cases {
        let mut args = vec!["coordinator", "--data-dir", dir, "--http", "127.0.0.1:0"];
        args.extend(extra);
        let line = one_line_error(&run_hearth(&[], &args));
        for part in said {
            assert!(line.contains(part), "{args:?}: {line}");
        }
    }
    // Not one of the members given.
    let other = tmp.path().join("other");
    let stranger = support::keygen(&other);
    let member = format!("/ip4/127.0.0.1/udp/7081/quic-v1/p2p/{stranger}");
    let line = one_line_error(&run_hearth(
        &[],
        &[
            "coordinator",
            "--data-dir",
            dir,
            "--http",
            "127.0.0.1:0",
            "--group",
            &member,
        ],
    ));
    assert!(
        line.contains("is not one of --group's members") && line.contains("hearth keygen"),
        "{line}"
    );
}

#[test]
fn hearth_alone_shows_where_to_start() {
    let out = run_hearth(&[], &[]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let start = text
        .split("Start here:")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"));
    for command in [
        "hearth demo",
        "hearth models fetch",
        "hearth node --join",
        "hearth generate",
    ] {
        assert!(start.contains(command), "{start}");
    }
    let version = run_hearth(&[], &["--version"]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("hearth "));
}

/// The subcommands a `--help` lists (its "Commands:" section), `help` aside.
fn subcommands(help: &str) -> Vec<String> {
    help.split("Commands:")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
                .filter_map(|l| l.split_whitespace().next().map(String::from))
                .filter(|c| c != "help")
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_subcommand_says_what_it_does_in_its_first_line() {
    let top = String::from_utf8_lossy(&run_hearth(&[], &["--help"]).stdout).into_owned();
    let mut commands: Vec<Vec<String>> = subcommands(&top).into_iter().map(|c| vec![c]).collect();
    assert!(commands.len() >= 15, "{top}");
    let mut checked = 0;
    while let Some(command) = commands.pop() {
        let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
        args.push("--help");
        let out = run_hearth(&[], &args);
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let first = help.lines().next().unwrap_or_default();
        assert!(
            first.chars().next().is_some_and(char::is_uppercase) && !first.starts_with("Usage"),
            "`hearth {}` starts its help with {first:?}",
            command.join(" ")
        );
        checked += 1;
        if command.len() < 3 {
            for sub in subcommands(&help) {
                let mut nested = command.clone();
                nested.push(sub);
                commands.push(nested);
            }
        }
    }
    assert!(checked > 30, "{checked} commands checked");
}

/// `--coop-cert` given wrongly (two certificates of one co-op, a file that is no certificate, more
/// co-ops than a node may be in) is refused at start, saying what to give.
#[test]
fn bad_coop_certificates_say_what_to_give() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| tmp.path().join(name).to_str().expect("utf-8").to_string();
    let node = path("node");
    let id = support::keygen(std::path::Path::new(&node));
    let coop = path("coop");
    assert!(
        run_hearth(&[], &["coop", "init", "--dir", &coop])
            .status
            .success()
    );
    for cert in ["one.cert", "two.cert"] {
        let out = run_hearth(
            &[],
            &["coop", "invite", &id, "--dir", &coop, "--out", &path(cert)],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(path("junk.cert"), "not a certificate\n").expect("write");
    let twice = format!("{},{}", path("one.cert"), path("two.cert"));
    let junk = format!("{},{}", path("one.cert"), path("junk.cert"));
    let many = vec![path("one.cert"); 9].join(",");
    let cases: [(&str, &[&str]); 3] = [
        (
            &twice,
            &["second certificate of co-op", "one certificate per co-op"],
        ),
        (&junk, &["junk.cert", "not a Hearth co-op file"]),
        (&many, &["given 9 times", "at most 8 co-ops"]),
    ];
    for (certs, said) in cases {
        let args = [
            "node",
            "--data-dir",
            &node,
            "--join",
            "http://127.0.0.1:9",
            "--coop-cert",
            certs,
        ];
        let line = one_line_error(&run_hearth(&[], &args));
        for part in said {
            assert!(line.contains(part), "{certs}: {line}");
        }
    }
}
