//! Abuse on 127.0.0.1 while an honest job runs: garbage bytes and a burst of 1,000 connections at the
//! swarm port (refused past 50 a second, then the address banned), the same at the HTTP port, an oversized frame, a flood of API requests, and a peer
//! flooding the work protocol (throttled, then banned). The
//! coordinator and the honest nodes stay up, the coordinator's memory stays under a stated bound, and
//! the job completes as one machine computes it.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use support::local_swarm::Swarm;
use support::rss_kib;

/// The coordinator's resident memory may not pass this during the abuse.
const RSS_BOUND_KIB: u64 = 256 * 1024;
/// Nor an honest node's (it holds the models).
const NODE_RSS_BOUND_KIB: u64 = 1024 * 1024;

#[test]
fn floods_and_garbage_leave_the_coordinator_up_bounded_and_working() {
    let mut swarm = Swarm::start(&[None, None]);
    // A peer that floods the work protocol with hundreds of requests a second.
    swarm.start_node_with(2, Some("flood"), &[]);
    let flooder = swarm.nodes[2].0.clone();
    let pid = swarm.coordinator.child.id();
    let swarm_port: u16 = swarm
        .coordinator_args
        .iter()
        .find_map(|a| a.strip_prefix("/ip4/127.0.0.1/tcp/"))
        .and_then(|p| p.parse().ok())
        .expect("the coordinator's TCP port");
    let http_port: u16 = swarm
        .api
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");

    let input = swarm.path("texts.jsonl");
    let lines: String = (0..300)
        .map(|i| {
            format!("{{\"id\":{i},\"text\":\"an honest text, number {i}, during a flood\"}}\n")
        })
        .collect();
    std::fs::write(&input, lines).expect("write");
    let job = swarm.submit(&input, "2", "4");

    // The flooder is connected and flooding before the burst of connections: the address they
    // share gets banned from opening new ones.
    support::wait_until(Duration::from_secs(30), "the flooder throttled", || {
        swarm
            .coordinator
            .log_text()
            .lines()
            .any(|l| {
                l.contains("throttled: over 200 work requests") && l.contains(flooder.as_str())
            })
            .then_some(())
    });

    let mut peak = rss_kib(pid);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut garbage = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    // 1,000 connections in a burst to each port, each sending garbage (swarm: not a Noise
    // handshake; HTTP: not a request) or nothing at all.
    for _round in 0..10 {
        let mut held = Vec::new();
        for i in 0..100 {
            for port in [swarm_port, http_port] {
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                    if i % 2 == 0 {
                        let _ = s.write_all(&garbage(512));
                    }
                    held.push(s);
                }
            }
        }
        peak = peak.max(rss_kib(pid));
        for s in held {
            let _ = s.shutdown(Shutdown::Both);
        }
        swarm.coordinator.assert_running();
    }

    // The burst came from one address: past 50 new connections a second it was refused before
    // any handshake, and after three such seconds the address was banned for a minute.
    support::wait_until(
        Duration::from_secs(10),
        "the flooding address banned",
        || {
            swarm
                .coordinator
                .log_text()
                .lines()
                .any(|l| l.contains("banned for flooding connections") && l.contains("127.0.0.1"))
                .then_some(())
        },
    );

    // A frame announcing 1 GiB on the HTTP port: refused by the body limit, never read whole.
    let mut big = TcpStream::connect(("127.0.0.1", http_port)).expect("connect");
    let head = "POST /v1/jobs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n";
    big.write_all(head.as_bytes()).expect("write");
    let _ = big.write_all(&garbage(1 << 20));
    let _ = big.set_read_timeout(Some(Duration::from_secs(10)));
    let mut answer = [0u8; 64];
    let n = big.read(&mut answer).unwrap_or(0);
    let status = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(
        status.contains("413") || n == 0,
        "an oversized body is refused: {status:?}"
    );

    // A flood of API requests from one client: answered or refused, never a crash.
    for _ in 0..400 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", http_port)) {
            let _ = s.write_all(b"GET /v1/jobs HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
    peak = peak.max(rss_kib(pid));
    swarm.coordinator.assert_running();
    for (_, node) in &mut swarm.nodes[..2] {
        node.assert_running();
    }

    // The flooder was throttled, then banned; the honest nodes were not.
    support::wait_until(Duration::from_secs(30), "the flooder banned", || {
        swarm
            .coordinator
            .log_text()
            .lines()
            .any(|l| l.contains("banned for flooding") && l.contains(flooder.as_str()))
            .then_some(())
    });
    let log = swarm.coordinator.log_text();
    for (id, _) in &swarm.nodes[..2] {
        assert!(
            !log.lines()
                .any(|l| l.contains("throttled") && l.contains(id.as_str())),
            "{id} throttled"
        );
    }

    // The honest job completes, equal to one machine's output.
    let (output, _) = swarm.finish(&job);
    let reference = support::local_embed(&input, &swarm.path("reference.jsonl"));
    assert!(output == reference, "the honest job's output");
    peak = peak.max(rss_kib(pid));
    println!(
        "coordinator peak RSS during the abuse: {} MiB (bound {} MiB)",
        peak / 1024,
        RSS_BOUND_KIB / 1024
    );
    assert!(peak > 0 && peak < RSS_BOUND_KIB, "peak RSS {peak} KiB");
    for (id, node) in &swarm.nodes[..2] {
        let rss = rss_kib(node.child.id());
        println!(
            "node {id}: RSS {} MiB (bound {} MiB)",
            rss / 1024,
            NODE_RSS_BOUND_KIB / 1024
        );
        assert!(rss > 0 && rss < NODE_RSS_BOUND_KIB, "node {id}: {rss} KiB");
    }
}
