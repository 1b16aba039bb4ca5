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
