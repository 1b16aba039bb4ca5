//! Reachability: what AutoNAT's probes of our observed addresses found.

use libp2p::Multiaddr;

pub use hearth_protocol::Reachability;

/// Addresses whose last probe is remembered: AutoNAT tests at most 10 candidates; a peer whose
/// observed addresses churn (a NAT handing out new ports) forgets the oldest.
const PROBED_MAX: usize = 16;

/// The last probe's outcome per address, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Probes {
    last: std::collections::VecDeque<(Multiaddr, bool)>,
    /// A peer at a global address dialed us outright (no connection to it before, so no hole
    /// punching): we are reachable. AutoNAT's client asks only peers we dialed, and a
    /// coordinator dials no one: this is how it learns.
    dialed_in: bool,
}

impl Probes {
    /// A probe of `addr` came back: another peer dialed it (`reached`), or could not. Only
    /// global addresses count: a peer on the same LAN dialing our private address back says
    /// nothing about whether the internet can.
    pub(crate) fn record(&mut self, addr: Multiaddr, reached: bool) {
        if !is_global(&addr) {
            return;
        }
        self.last.retain(|(a, _)| *a != addr);
        if self.last.len() == PROBED_MAX {
            self.last.pop_front();
        }
        self.last.push_back((addr, reached));
    }

    /// A peer at `from` dialed us, with no connection to it before (so not a punched hole).
    pub(crate) fn dialed_in(&mut self, from: &Multiaddr) {
        if is_global(from) {
            self.dialed_in = true;
        }
    }

    /// Public once any address was dialed back (or a peer dialed in from the internet); private
    /// when every one probed failed.
    pub(crate) fn reachability(&self) -> Reachability {
        if self.dialed_in || self.last.iter().any(|(_, reached)| *reached) {
            Reachability::Public
        } else if self.last.is_empty() {
            Reachability::Unknown
        } else {
            Reachability::Private
        }
    }
}

/// Whether `addr` is one the internet routes: not private, loopback, link-local, shared (CGNAT),
/// documentation, benchmarking or reserved (what the standard library's unstable `is_global`
/// says). A name counts as global. A relayed address never does: being reached through a relay
/// is not being reachable.
pub(crate) fn is_global(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return false;
    }
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            let [a, b, c, _] = ip.octets();
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_broadcast()
                || ip.is_documentation()
                || ip.is_unspecified()
                || ip.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || (a == 192 && b == 0 && c == 0))
        }
        Some(Protocol::Ip6(ip)) => {
            let first = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first == 0x2001 && ip.segments()[1] == 0xdb8)
                || ip.to_ipv4_mapped().is_some())
        }
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/45.45.0.1/udp/{port}/quic-v1")
            .parse()
            .expect("addr")
    }

    #[test]
    fn only_global_addresses_count() {
        let mut probes = Probes::default();
        for private in [
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/192.168.1.2/tcp/1",
            "/ip4/172.16.0.1/tcp/1",
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip4/169.254.0.1/tcp/1",
            "/ip4/198.18.0.1/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/ip4/45.45.0.1/tcp/1/p2p/12D3KooWPdGiDZWnBjb3f5kHxMmp5LoyyHDpG6a2HQkirgcJeNBK/p2p-circuit",
            "/p2p/12D3KooWPdGiDZWnBjb3f5kHxMmp5LoyyHDpG6a2HQkirgcJeNBK",
        ] {
            assert!(!is_global(&private.parse().expect("addr")), "{private}");
            probes.record(private.parse().expect("addr"), true);
        }
        assert_eq!(probes.reachability(), Reachability::Unknown);
        for global in [
            "/ip4/45.45.0.1/tcp/1",
            "/ip4/8.8.8.8/udp/1/quic-v1",
            "/ip6/2a00::1/tcp/1",
        ] {
            assert!(is_global(&global.parse().expect("addr")), "{global}");
        }
    }

    #[test]
    fn unknown_until_probed_public_once_one_address_is_reached() {
        let mut probes = Probes::default();
        assert_eq!(probes.reachability(), Reachability::Unknown);
        probes.record(addr(1), false);
        assert_eq!(probes.reachability(), Reachability::Private);
        probes.record(addr(2), true);
        assert_eq!(probes.reachability(), Reachability::Public);
        // The reached address failing later leaves only failures.
        probes.record(addr(2), false);
        assert_eq!(probes.reachability(), Reachability::Private);
    }

    #[test]
    fn a_peer_dialing_in_from_the_internet_makes_us_public() {
        let mut probes = Probes::default();
        probes.record(addr(1), false);
        probes.dialed_in(&"/ip4/192.168.1.5/udp/4001/quic-v1".parse().expect("addr"));
        assert_eq!(
            probes.reachability(),
            Reachability::Private,
            "a LAN peer says nothing"
        );
        probes.dialed_in(&"/ip4/45.45.0.12/udp/4001/quic-v1".parse().expect("addr"));
        assert_eq!(probes.reachability(), Reachability::Public);
    }

    #[test]
    fn remembers_a_bounded_number_of_addresses() {
        let mut probes = Probes::default();
        probes.record(addr(0), true);
        for port in 1..=PROBED_MAX as u16 {
            probes.record(addr(port), false);
        }
        assert_eq!(probes.last.len(), PROBED_MAX);
        // The reached one was the oldest, and is forgotten.
        assert_eq!(probes.reachability(), Reachability::Private);
    }
}
