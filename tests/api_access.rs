//! Who may reach the coordinator's API, and how: keys everywhere but the join endpoint, `--open`
//! only on loopback, and off loopback TLS (or an explicit `--insecure-http`). Real processes; the
//! certificate comes from the `openssl` command.

mod support;

use std::path::Path;
use std::process::Command;

use support::{Process, run_hearth, wait_for_api};

fn coordinator_args<'a>(dir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "coordinator",
        "--data-dir",
        dir,
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ];
    args.extend(extra);
    args
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A self-signed certificate for 127.0.0.1 (an end entity, as TLS clients require).
fn certificate(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-subj", "/CN=localhost", "-days", "2"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command runs");
    assert!(made.status.success(), "openssl: {}", stderr(&made));
    (
        cert.to_str().expect("utf-8").to_string(),
        key.to_str().expect("utf-8").to_string(),
    )
}

#[test]
fn off_loopback_the_api_is_tls_or_refused_and_open_is_loopback_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    let dir = dir.to_str().expect("utf-8");

    // Plain HTTP on a network address: refused at start, saying how to proceed.
    let plain = run_hearth(&[], &coordinator_args(dir, &["--http", "0.0.0.0:0"]));
    assert!(!plain.status.success());
    let why = stderr(&plain);
    assert!(
        why.contains("--tls-cert") && why.contains("--insecure-http"),
        "{why}"
    );
    // --open is for loopback only.
    let open = run_hearth(
        &[],
        &coordinator_args(dir, &["--http", "0.0.0.0:0", "--open", "--insecure-http"]),
    );
    assert!(!open.status.success());
    assert!(stderr(&open).contains("loopback"), "{}", stderr(&open));

    // With a certificate it serves TLS; the CLI trusts it through --ca-cert.
    let (cert, key) = certificate(tmp.path());
    let mut coordinator = Process::start(
        "coordinator",
        tmp.path(),
        &[],
        &coordinator_args(
            dir,
            &[
                "--http",
                "0.0.0.0:0",
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ],
        ),
    );
    let api = wait_for_api(Path::new(dir), &mut coordinator);
    assert!(api.starts_with("https://"), "{api}");
    let port = api.rsplit(':').next().expect("port");
    let https = format!("https://127.0.0.1:{port}");
    let admin = std::fs::read_to_string(Path::new(dir).join("admin.key")).expect("admin key");
    let admin = admin.trim();

    let ok = run_hearth(
        &[],
        &[
            "peers",
            "--api",
            &https,
            "--api-key",
            admin,
            "--ca-cert",
            &cert,
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let said = format!("{}{}", String::from_utf8_lossy(&ok.stdout), stderr(&ok));
    assert!(said.contains("no peers yet"), "{said}");

    let made = run_hearth(
        &[],
        &[
            "apikey",
            "--api",
            &https,
            "--data-dir",
            dir,
            "--ca-cert",
            &cert,
            "--json",
            "create",
        ],
    );
    assert!(made.status.success(), "{}", stderr(&made));
    let key: serde_json::Value = serde_json::from_slice(&made.stdout).expect("json");
    let key = key["key"].as_str().expect("key");
    let with_key = run_hearth(
        &[],
        &[
            "peers",
            "--api",
            &https,
            "--api-key",
            key,
            "--ca-cert",
            &cert,
        ],
    );
    assert!(with_key.status.success(), "{}", stderr(&with_key));

    // No key: 401 with the reason. An API key is not the admin key.
    let no_key = run_hearth(&[], &["peers", "--api", &https, "--ca-cert", &cert]);
    assert!(!no_key.status.success());
    assert!(
        stderr(&no_key).contains("401") && stderr(&no_key).contains("missing API key"),
        "{}",
        stderr(&no_key)
    );
    let not_admin = run_hearth(
        &[],
        &[
            "apikey",
            "--api",
            &https,
            "--admin-key",
            key,
            "--ca-cert",
            &cert,
            "list",
        ],
    );
    assert!(!not_admin.status.success());
    assert!(stderr(&not_admin).contains("403"), "{}", stderr(&not_admin));

    // An untrusted certificate, or plain HTTP to the TLS port: no answer.
    let untrusted = run_hearth(&[], &["peers", "--api", &https, "--api-key", admin]);
    assert!(!untrusted.status.success());
    assert!(
        stderr(&untrusted).contains("certificate"),
        "{}",
        stderr(&untrusted)
    );
    let cleartext = run_hearth(
        &[],
        &[
            "peers",
            "--api",
            &format!("http://127.0.0.1:{port}"),
            "--api-key",
            admin,
        ],
    );
    assert!(
        !cleartext.status.success(),
        "plain HTTP must not be served on the TLS port"
    );
    coordinator.assert_running();
}

#[test]
fn per_key_quotas_refuse_with_429_and_say_which() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    let dir = dir.to_str().expect("utf-8");
    let mut coordinator = Process::start(
        "coordinator",
        tmp.path(),
        &[],
        &coordinator_args(dir, &["--http", "127.0.0.1:0"]),
    );
    let api = wait_for_api(Path::new(dir), &mut coordinator);
    let create = |extra: &[&str]| {
        let mut args = vec!["apikey", "--api", &api, "--data-dir", dir, "create"];
        args.extend(extra);
        let out = run_hearth(&[], &args);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Three requests a minute: the fourth is refused.
    let slow = create(&["--requests-per-minute", "3"]);
    for i in 0..3 {
        let out = run_hearth(&[], &["peers", "--api", &api, "--api-key", &slow]);
        assert!(out.status.success(), "request {i}: {}", stderr(&out));
    }
    let fourth = run_hearth(&[], &["peers", "--api", &api, "--api-key", &slow]);
    assert!(!fourth.status.success());
    assert!(
        stderr(&fourth).contains("429") && stderr(&fourth).contains("requests per minute"),
        "{}",
        stderr(&fourth)
    );
    // Another key is not affected; the admin key has no quota.
    let other = create(&[]);
    assert!(
        run_hearth(&[], &["peers", "--api", &api, "--api-key", &other])
            .status
            .success()
    );

    // Work units a day: a job of 6 inputs is refused under a quota of 5; one of 5 is taken.
    let small = create(&["--units-per-day", "5"]);
    let input = |n: usize| {
        let path = tmp.path().join(format!("in{n}.jsonl"));
        let lines: String = (0..n)
            .map(|i| format!("{{\"id\":{i},\"text\":\"text {i}\"}}\n"))
            .collect();
        std::fs::write(&path, lines).expect("write");
        path.to_str().expect("utf-8").to_string()
    };
    let six = run_hearth(
        &[],
        &[
            "embed",
            "--input",
            &input(6),
            "--detach",
            "--api",
            &api,
            "--api-key",
            &small,
        ],
    );
    assert!(!six.status.success());
    assert!(
        stderr(&six).contains("work units per day"),
        "{}",
        stderr(&six)
    );
    let five = run_hearth(
        &[],
        &[
            "embed",
            "--input",
            &input(5),
            "--detach",
            "--api",
            &api,
            "--api-key",
            &small,
        ],
    );
    assert!(five.status.success(), "{}", stderr(&five));
    coordinator.assert_running();
}
