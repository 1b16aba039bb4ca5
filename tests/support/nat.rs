//! Home networks behind NATs, in throwaway network namespaces, for the tests that cross them.
//!
//! Layout: a public namespace holds a bridge at 45.45.0.1/24 (the coordinator runs there, at
//! that address). Each home network has a router namespace, its WAN side a veth into the public
//! bridge at 45.45.0.(10+k), its LAN side a bridge at 10.234.k.1/24, and host namespaces on that
//! LAN at 10.234.k.(10+j), routed through it. The router masquerades what leaves its WAN side:
//! port-preserving (a NAT hole punching crosses) or, for a symmetric one, with a random port for
//! every connection (`--random-fully`: one it cannot). Nothing on the public side routes to a
//! LAN, so a home's hosts dial out and are never dialed. All of it is removed on drop.

use std::process::Command;

/// The public network: a global range, so AutoNAT's probes of it count (only global addresses say
/// anything about reaching a peer from the internet). It exists only inside the test's namespaces,
/// so it shadows nothing of the host's.
const PUBLIC: &str = "45.45.0";
const LAN: &str = "10.234";

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// In namespace `ns`, run `program args`.
fn within(ns: &str, program: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend(args);
    run("ip", &all)
}

/// What kind of NAT a home network sits behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Keeps a connection's source port where it can: hole punching crosses it.
    PortPreserving,
    /// A random source port for every connection: hole punching cannot cross it.
    Symmetric,
}

pub struct Home {
    pub router: String,
    pub hosts: Vec<String>,
}

pub struct World {
    pub public: String,
    pub homes: Vec<Home>,
    made: Vec<String>,
}

impl World {
    /// A public network and one home network per entry of `homes` (its NAT and its host count).
    /// `Err` says why this machine cannot (not root, no `ip`, no `iptables`).
    pub fn create(homes: &[(Nat, usize)]) -> Result<Self, String> {
        run("iptables", &["--version"]).map_err(|e| format!("no iptables: {e}"))?;
        let tag = format!("hn{}", std::process::id());
        let public = format!("{tag}-pub");
        let mut world = Self {
            public: public.clone(),
            homes: Vec::new(),
            made: Vec::new(),
        };
        world.add_ns(&public)?;
        ip(&["-n", &public, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &public,
            "addr",
            "add",
            &format!("{PUBLIC}.1/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &public, "link", "set", "br0", "up"])?;
        for (k, (nat, hosts)) in homes.iter().enumerate() {
            let k = k + 1;
            let router = format!("{tag}-r{k}");
            world.add_ns(&router)?;
            // WAN: a veth into the public bridge.
            let port = format!("w{k}");
            ip(&[
                "-n", &public, "link", "add", &port, "type", "veth", "peer", "name", "wan",
                "netns", &router,
            ])?;
            ip(&["-n", &public, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{PUBLIC}.{}/24", 10 + k),
                "dev",
                "wan",
            ])?;
            ip(&["-n", &router, "link", "set", "wan", "up"])?;
            // LAN: a bridge the home's hosts hang on.
            ip(&["-n", &router, "link", "add", "lan", "type", "bridge"])?;
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{LAN}.{k}.1/24"),
                "dev",
                "lan",
            ])?;
            ip(&["-n", &router, "link", "set", "lan", "up"])?;
            within(&router, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
            let mut masquerade = vec![
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ];
            if *nat == Nat::Symmetric {
                masquerade.push("--random-fully");
            }
            within(&router, "iptables", &masquerade)?;
            // What a home router does with a packet nobody inside asked for: drop it (dropped
            // before the connection tracker confirms it, it leaves no entry that would take the
            // port an inside host's own outbound packet is about to be mapped to).
            within(
                &router,
                "iptables",
                &[
                    "-A",
                    "INPUT",
                    "-i",
                    "wan",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "NEW",
                    "-j",
                    "DROP",
                ],
            )?;
            let mut home = Home {
                router: router.clone(),
                hosts: Vec::new(),
            };
            for j in 1..=*hosts {
                let host = format!("{tag}-r{k}h{j}");
                world.add_ns(&host)?;
                let port = format!("l{j}");
                ip(&[
                    "-n", &router, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &host,
                ])?;
                ip(&["-n", &router, "link", "set", &port, "master", "lan", "up"])?;
                ip(&[
                    "-n",
                    &host,
                    "addr",
                    "add",
                    &format!("{LAN}.{k}.{}/24", 10 + j),
                    "dev",
                    "eth0",
                ])?;
                ip(&["-n", &host, "link", "set", "eth0", "up"])?;
                ip(&[
                    "-n",
                    &host,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{LAN}.{k}.1"),
                ])?;
                home.hosts.push(host);
            }
            world.homes.push(home);
        }
        Ok(world)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns])?;
        self.made.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    /// The public address the coordinator listens at.
    pub fn public_addr(&self) -> String {
        format!("{PUBLIC}.1")
    }

    /// The public (WAN) address of home `k`'s router (0-based): what its hosts look like from
    /// outside.
    pub fn router_addr(&self, k: usize) -> String {
        format!("{PUBLIC}.{}", 11 + k)
    }

    /// `ip netns exec NS` for a command prefix.
    pub fn exec(ns: &str) -> Vec<String> {
        ["ip", "netns", "exec", ns]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
