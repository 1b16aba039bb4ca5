//! Peer discovery both roles share: mDNS finds LAN peers to dial, identify tells Kademlia where a
//! Hearth peer listens.

use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Swarm, identify, mdns};

use crate::behaviour::identify_protocol;
use crate::{Behaviour, BehaviourEvent};

/// Act on the discovery events in `event` (mDNS, identify) and hand back every other event.
pub(crate) fn discover(
    swarm: &mut Swarm<Behaviour>,
    event: BehaviourEvent,
) -> Option<BehaviourEvent> {
    match event {
        BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
            for (peer, addr) in found {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                if !swarm.is_connected(&peer) {
                    let _ = swarm.dial(DialOpts::peer_id(peer).addresses(vec![addr]).build());
                }
            }
            None
        }
        BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
            if info.protocol_version == identify_protocol() {
                for addr in info.listen_addrs {
                    swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            } else {
                tracing::debug!(peer = %peer_id, version = %info.protocol_version, "not a Hearth peer of this version");
            }
            None
        }
        BehaviourEvent::Mdns(_) | BehaviourEvent::Identify(_) => None,
        other => Some(other),
    }
}
