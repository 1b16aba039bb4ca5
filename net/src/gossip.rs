//! Adverts on gossip: publishing our own, and checking everyone else's before anything trusts them.

use hearth_protocol::{Message, PeerId, SecretKey, Signed};
use libp2p::{Swarm, gossipsub};

use crate::coop::{Gate, Now, Verdict};
use crate::limits::{FLOOD_BAN, GOSSIP_MESSAGES_PER_SECOND_MAX};
use crate::penalties::{self, Flood, FloodGuard, Penalties};
use crate::{Behaviour, from_libp2p_peer_id};

/// The gossip topic adverts travel on; the suffix is the protocol version.
pub const ADVERT_TOPIC: &str = "hearth/adverts/1";

pub(crate) fn advert_topic() -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(ADVERT_TOPIC)
}

/// A message that passed every check, with the identity that signed it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The signer, who is also the gossip author.
    pub from: PeerId,
    /// The decoded, validated message.
    pub message: Message,
}

/// Why a gossip message was refused.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error(transparent)]
    Protocol(#[from] hearth_protocol::Error),
    #[error("signed by {signer} but published by {author}")]
    WrongAuthor { signer: String, author: String },
}

/// Gossip in and out for one swarm, with the strikes of peers that sent invalid messages and the
/// rates of those that send many.
#[derive(Debug)]
pub(crate) struct Gossip {
    penalties: Penalties<libp2p::PeerId>,
    flood: FloodGuard<PeerId>,
}

impl Default for Gossip {
    fn default() -> Self {
        Self {
            penalties: Penalties::default(),
            flood: FloodGuard::new(GOSSIP_MESSAGES_PER_SECOND_MAX),
        }
    }
}

impl Gossip {
    /// Sign `message` and publish it on `topic`. Fails when no subscribed peer is connected yet;
    /// the caller retries on its next heartbeat.
    pub(crate) fn publish(
        &self,
        swarm: &mut Swarm<Behaviour>,
        key: &SecretKey,
        message: &Message,
        topic: gossipsub::IdentTopic,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let frame = Signed::seal(key, message)?;
        swarm.behaviour_mut().gossipsub.publish(topic, frame)?;
        Ok(())
    }

    /// Count a message `author` signed: false past [`GOSSIP_MESSAGES_PER_SECOND_MAX`] this
    /// second. Each second over is a strike; at [`crate::FLOOD_STRIKES_MAX`] the author is banned
    /// for [`FLOOD_BAN`].
    fn within_rate(&mut self, swarm: &mut Swarm<Behaviour>, author: PeerId) -> bool {
        match self.flood.count(&author, crate::monotonic_ms()) {
            Flood::Within => true,
            Flood::Over => false,
            Flood::Throttled(strikes) => {
                tracing::warn!(peer = %author, strikes, "throttled: over {GOSSIP_MESSAGES_PER_SECOND_MAX} gossip messages a second");
                false
            }
            Flood::Ban => {
                tracing::warn!(peer = %author, ban_s = FLOOD_BAN.as_secs(), "banned for flooding gossip: connections closed and refused");
                swarm
                    .behaviour_mut()
                    .blocked
                    .block_peer(crate::to_libp2p_peer_id(&author));
                false
            }
        }
    }

    /// Lift the flood bans that ran their time; forget the rates of quiet authors.
    pub(crate) fn tick(&mut self, swarm: &mut Swarm<Behaviour>) {
        for peer in self.flood.lift(crate::monotonic_ms()) {
            tracing::info!(%peer, "gossip flood ban lifted");
            swarm
                .behaviour_mut()
                .blocked
                .unblock_peer(crate::to_libp2p_peer_id(&peer));
        }
    }

    /// Check a gossip message: frame, signature over the raw payload, decode, limits, and that the
    /// signer is the gossip author (so nobody can replay another peer's advert as their own). Valid
    /// messages are accepted for forwarding and returned; invalid ones are rejected (gossipsub lowers
    /// the sender's score), logged with the sender, and struck against it, which blocks it at
    /// [`crate::BAD_MESSAGES_MAX`].
    pub(crate) fn receive(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        gate: Option<&mut Gate>,
        access: &crate::relay::Access,
        propagation_source: libp2p::PeerId,
        message_id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) -> Option<Received> {
        let checked = Signed::open(&message.data)
            .map_err(Rejection::from)
            .and_then(|(signer, msg)| {
                let author = message.source.as_ref().and_then(from_libp2p_peer_id);
                if author == Some(signer) {
                    Ok(Received {
                        from: signer,
                        message: msg,
                    })
                } else {
                    Err(Rejection::WrongAuthor {
                        signer: signer.to_string(),
                        author: message.source.map_or("nobody".into(), |a| a.to_string()),
                    })
                }
            });
        match checked {
            Ok(received) => {
                // Revocations are exempt in a co-op (the gate drops repeats; new ones need the
                // co-op's key), so a coordinator may re-send them all to a newcomer at once.
                let coop_message = matches!(
                    received.message,
                    Message::Membership(_) | Message::Revocation(_)
                );
                let exempt = gate.is_some() && matches!(received.message, Message::Revocation(_));
                let flooding = !exempt && !self.within_rate(swarm, received.from);
                // In a co-op swarm, only members' messages go further; outside one, co-op
                // messages mean nothing and are not forwarded.
                let direct = from_libp2p_peer_id(&propagation_source) == Some(received.from);
                // In a co-op swarm, a message counts only on the topic of a co-op of ours (judged
                // as that co-op's); outside one, only on the advert topic.
                let mut gate = gate;
                let topic = message.topic.as_str();
                let verdict = match gate.as_mut() {
                    _ if flooding => Verdict::Drop,
                    Some(gate) => match gate.topic_index(topic) {
                        Some(i) => {
                            gate.judge(received.from, direct, i, &received.message, Now::read())
                        }
                        None => Verdict::Drop,
                    },
                    None if coop_message || topic != ADVERT_TOPIC => Verdict::Drop,
                    None => Verdict::Pass,
                };
                swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        verdict.acceptance(),
                    );
                // Its signed gossip was accepted (in a co-op: it showed a valid membership): our
                // relay serves it.
                if matches!(verdict, Verdict::Pass | Verdict::Admitted) {
                    access.admit(crate::to_libp2p_peer_id(&received.from));
                }
                let Some(gate) = gate else {
                    return (verdict == Verdict::Pass).then_some(received);
                };
                match verdict {
                    Verdict::Pass => Some(received),
                    Verdict::Revoked(member) => {
                        // The gate refused the member; it is cut off after a notice, so it hears too.
                        tracing::info!(%member, "co-op revocation received");
                        Some(received)
                    }
                    Verdict::Refuse { why, .. } => {
                        gate.refuse(received.from, why, Now::read());
                        None
                    }
                    Verdict::Forged => {
                        tracing::warn!(peer = %propagation_source, "a revocation not signed by this co-op; rejected");
                        None
                    }
                    Verdict::Admitted | Verdict::Drop | Verdict::Known => None,
                }
            }
            Err(error) => {
                let gossip = &mut swarm.behaviour_mut().gossipsub;
                gossip.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    gossipsub::MessageAcceptance::Reject,
                );
                let bytes = message.data.len();
                match self.penalties.strike(&propagation_source) {
                    penalties::Verdict::Warn(strikes) => {
                        tracing::warn!(peer = %propagation_source, %error, bytes, strikes, "dropped invalid message");
                    }
                    penalties::Verdict::Block => {
                        tracing::warn!(peer = %propagation_source, %error, bytes, "dropped invalid message; blocking peer after repeated invalid messages");
                        gossip.blacklist_peer(&propagation_source);
                        swarm.behaviour_mut().blocked.block_peer(propagation_source);
                    }
                }
                None
            }
        }
    }
}
