//! Throwaway network namespaces joined by a bridge, so test peers talk across real interfaces.
//!
//! Layout: a hub namespace holds a bridge at 10.231.0.1/24; each host namespace has one veth into
//! that bridge at 10.231.0.(10+i). All of it is removed on drop.

use std::process::Command;

/// The subnet's first three octets; private, and only ever inside namespaces this test made.
const SUBNET: &str = "10.231.0";

pub struct Namespaces {
    pub hub: String,
    pub hosts: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Namespaces {
    /// Make a hub and `hosts` host namespaces; `Err` says why this machine cannot.
    pub fn create(hosts: usize) -> Result<Self, String> {
        let tag = format!("hearth{}", std::process::id());
        let hub = format!("{tag}-hub");
        ip(&["netns", "add", &hub])?;
        let mut ns = Self {
            hub: hub.clone(),
            hosts: Vec::new(),
        };
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{SUBNET}.1/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 1..=hosts {
            let host = format!("{tag}-h{i}");
            ip(&["netns", "add", &host])?;
            ns.hosts.push(host.clone());
            let port = format!("v{i}");
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &host,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{SUBNET}.{}/24", 10 + i),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }

    /// The hub's address on the bridge.
    pub fn hub_addr(&self) -> String {
        format!("{SUBNET}.1")
    }

    /// The address of host `i` (0-based).
    pub fn host_addr(&self, i: usize) -> String {
        format!("{SUBNET}.{}", 11 + i)
    }

    /// `ip netns exec NS` for a command prefix.
    pub fn exec(ns: &str) -> [&str; 4] {
        ["ip", "netns", "exec", ns]
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.hub]) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
