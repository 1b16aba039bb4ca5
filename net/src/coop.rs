//! Members only: the gate every peer of a co-op swarm runs, the coordinator (`--coop DIR`) and the
//! nodes (`--coop-cert CERT`) alike.
//!
//! Members publish their certificate on gossip. The gate admits a peer once its certificate checks
//! (this co-op's signature, issued to that peer, unexpired, not revoked). Until then the peer's
//! gossip is neither delivered nor forwarded and its work requests are refused. A peer whose
//! certificate fails, that keeps gossiping without one, or that stays connected for
//! [`MEMBERSHIP_GRACE`] without showing one is refused: its connections are closed and new ones
//! refused, for [`REFUSAL_BAN`] (so a member who renews an expired certificate comes back without
//! anyone restarting), or for good once revoked. Every refusal is logged with its reason.
//! Revocations are self-authenticating (the co-op's signature), applied at once and forwarded.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hearth_protocol::coop::{Membership, MembershipError, Revocation};
use hearth_protocol::{PeerId, PublicKey};
use libp2p::gossipsub::MessageAcceptance;

use crate::limits::PENALTY_PEERS_MAX;

/// How long a connected peer may go without showing a valid certificate. Members publish theirs
/// with every advert (2 s) and the coordinator every 2 s, and at once to a new subscriber.
pub const MEMBERSHIP_GRACE: Duration = Duration::from_secs(10);

/// Gossip messages a peer may send us without a membership before it is refused (the certificate
/// travels in its own message beside the advert, so the first may overtake it).
pub const STRAY_MESSAGES_MAX: u32 = 3;

/// How long a peer refused for a missing, expired or foreign certificate stays refused.
pub const REFUSAL_BAN: Duration = Duration::from_secs(60);

/// How long a revoked member stays connected after the revocation is applied, so the revocation
/// (sent to it too) arrives before its connections close. It is refused everything meanwhile.
pub const REVOCATION_NOTICE: Duration = Duration::from_secs(1);

/// Wall-clock milliseconds, for certificate expiry.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the gate decided about a gossip message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// From a member: deliver and forward.
    Pass,
    /// A membership that admitted (or re-confirmed) its author: forward, nothing to deliver.
    Admitted,
    /// Not from a member (yet): neither deliver nor forward, without penalizing the relayer.
    Drop,
    /// Refuse the author for this reason; `reject` when the message came straight from it
    /// (gossipsub then lowers its score), otherwise it is only dropped.
    Refuse {
        /// Why, for the log.
        why: MembershipError,
        /// Whether the relayer is the author.
        reject: bool,
    },
    /// A valid revocation, newly applied: forward it and tell the role.
    Revoked(PeerId),
    /// A revocation already known: forward nothing more.
    Known,
    /// A revocation not signed by this co-op.
    Forged,
}

impl Verdict {
    /// What gossipsub is told.
    pub(crate) fn acceptance(&self) -> MessageAcceptance {
        match self {
            Verdict::Pass | Verdict::Admitted | Verdict::Revoked(_) => MessageAcceptance::Accept,
            Verdict::Refuse { reject: true, .. } | Verdict::Forged => MessageAcceptance::Reject,
            Verdict::Drop | Verdict::Refuse { .. } | Verdict::Known => MessageAcceptance::Ignore,
        }
    }
}

/// A co-op's gate: its public key, the members admitted, the revoked, and the peers on probation.
#[derive(Debug)]
pub(crate) struct Gate {
    coop: PublicKey,
    admitted: HashMap<PeerId, Membership>,
    revoked: HashMap<PeerId, Revocation>,
    /// Messages from peers not admitted, by peer; bounded like the strike table.
    strays: HashMap<PeerId, u32>,
    /// Connected peers not yet admitted, since when.
    waiting: HashMap<libp2p::PeerId, Instant>,
    /// Peers refused for a while, and until when.
    banned: HashMap<libp2p::PeerId, Instant>,
    /// Revoked members to cut off once they had time to hear of it.
    revoked_pending: Vec<(PeerId, Instant)>,
}

impl Gate {
    pub(crate) fn new(coop: PublicKey) -> Self {
        Self {
            coop,
            admitted: HashMap::new(),
            revoked: HashMap::new(),
            strays: HashMap::new(),
            waiting: HashMap::new(),
            banned: HashMap::new(),
            revoked_pending: Vec::new(),
        }
    }

    /// Whether `peer` is a member now; forgets it if its certificate stopped admitting it.
    pub(crate) fn check(&mut self, peer: &PeerId) -> Result<(), MembershipError> {
        let Some(membership) = self.admitted.get(peer) else {
            return Err(if self.revoked.contains_key(peer) {
                MembershipError::Revoked
            } else {
                MembershipError::Missing
            });
        };
        let revoked = &self.revoked;
        let verdict = membership.admits(&self.coop, peer, wall_ms(), |p| revoked.contains_key(p));
        if verdict.is_err() {
            self.admitted.remove(peer);
        }
        verdict
    }

    /// Whether the co-op revoked `peer`.
    pub(crate) fn is_revoked(&self, peer: &PeerId) -> bool {
        self.revoked.contains_key(peer)
    }

    /// Judge a gossip message `author` signed, which `direct` says came straight from it.
    pub(crate) fn judge(
        &mut self,
        author: PeerId,
        direct: bool,
        message: &hearth_protocol::Message,
    ) -> Verdict {
        use hearth_protocol::Message;
        match message {
            Message::Membership(membership) => {
                let revoked = &self.revoked;
                match membership.admits(&self.coop, &author, wall_ms(), |p| revoked.contains_key(p))
                {
                    Ok(()) => {
                        if self.admitted.insert(author, membership.clone()).is_none() {
                            tracing::info!(peer = %author, "co-op member admitted");
                        }
                        self.strays.remove(&author);
                        self.waiting.remove(&crate::to_libp2p_peer_id(&author));
                        Verdict::Admitted
                    }
                    Err(why) => {
                        self.admitted.remove(&author);
                        Verdict::Refuse {
                            why,
                            reject: direct,
                        }
                    }
                }
            }
            Message::Revocation(revocation) => match self.revoke(revocation.clone()) {
                Ok(true) => Verdict::Revoked(revocation.body.member),
                Ok(false) => Verdict::Known,
                Err(_) => Verdict::Forged,
            },
            _ => match self.check(&author) {
                Ok(()) => Verdict::Pass,
                Err(MembershipError::Missing) if !direct => Verdict::Drop,
                Err(MembershipError::Missing) => {
                    if !self.strays.contains_key(&author) && self.strays.len() >= PENALTY_PEERS_MAX
                    {
                        self.strays.clear();
                    }
                    let n = self.strays.entry(author).or_default();
                    *n += 1;
                    if *n >= STRAY_MESSAGES_MAX {
                        Verdict::Refuse {
                            why: MembershipError::Missing,
                            reject: false,
                        }
                    } else {
                        tracing::debug!(peer = %author, "gossip before a membership; dropped");
                        Verdict::Drop
                    }
                }
                Err(why) => Verdict::Refuse {
                    why,
                    reject: direct,
                },
            },
        }
    }

    /// Apply a revocation: check its signature, forget the member, and cut it off after
    /// [`REVOCATION_NOTICE`]. Returns whether it was new.
    pub(crate) fn revoke(&mut self, revocation: Revocation) -> Result<bool, MembershipError> {
        revocation.verify(&self.coop)?;
        let member = revocation.body.member;
        self.admitted.remove(&member);
        let new = self.revoked.insert(member, revocation).is_none();
        if new {
            self.revoked_pending
                .push((member, Instant::now() + REVOCATION_NOTICE));
        }
        Ok(new)
    }

    /// The revocations known, to spread to peers that joined after them.
    pub(crate) fn revocations(&self) -> impl Iterator<Item = &Revocation> {
        self.revoked.values()
    }

    /// A connection from `peer` opened: start its grace if it is not a member.
    pub(crate) fn connected(&mut self, peer: libp2p::PeerId) {
        let member =
            crate::from_libp2p_peer_id(&peer).is_some_and(|p| self.admitted.contains_key(&p));
        if !member {
            self.waiting.entry(peer).or_insert_with(Instant::now);
        }
    }

    /// The last connection to `peer` closed.
    pub(crate) fn disconnected(&mut self, peer: &libp2p::PeerId) {
        self.waiting.remove(peer);
    }

    /// Note a refusal of `peer` for `why`; returns how long it is banned (`None`: for good).
    pub(crate) fn ban(&mut self, peer: libp2p::PeerId, why: &MembershipError) -> Option<Duration> {
        self.waiting.remove(&peer);
        if *why == MembershipError::Revoked {
            self.banned.remove(&peer);
            None
        } else {
            self.banned.insert(peer, Instant::now() + REFUSAL_BAN);
            Some(REFUSAL_BAN)
        }
    }

    /// Peers past their grace without a membership (they are taken off probation), bans that ran
    /// out (lifted), and revoked members whose notice is over (to cut off).
    pub(crate) fn tick(&mut self) -> (Vec<libp2p::PeerId>, Vec<libp2p::PeerId>, Vec<PeerId>) {
        let now = Instant::now();
        let (due, pending) = self
            .revoked_pending
            .drain(..)
            .partition(|(_, at)| *at <= now);
        self.revoked_pending = pending;
        let due = due.into_iter().map(|(peer, _)| peer).collect();
        let mut late = Vec::new();
        self.waiting.retain(|peer, since| {
            let over = now.duration_since(*since) >= MEMBERSHIP_GRACE;
            if over {
                late.push(*peer);
            }
            !over
        });
        let mut lifted = Vec::new();
        self.banned.retain(|peer, until| {
            let over = *until <= now;
            if over {
                lifted.push(*peer);
            }
            !over
        });
        (late, lifted, due)
    }
}

/// Refuse `peer` for `why`: log it, close its connections and refuse new ones for the ban.
pub(crate) fn refuse(
    swarm: &mut libp2p::Swarm<crate::Behaviour>,
    gate: &mut Gate,
    peer: PeerId,
    why: &MembershipError,
) {
    let id = crate::to_libp2p_peer_id(&peer);
    let already = swarm.behaviour().blocked.blocked_peers().contains(&id);
    let ban = gate.ban(id, why);
    if !already {
        let ban_s = ban.map_or("for good".to_string(), |d| format!("{} s", d.as_secs()));
        tracing::warn!(%peer, %why, ban = %ban_s, "refused: not a member of this co-op; its connections are closed and refused");
    }
    swarm.behaviour_mut().blocked.block_peer(id);
}

#[cfg(test)]
mod tests {
    use hearth_protocol::coop::Membership;
    use hearth_protocol::{Message, SecretKey};

    use super::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    fn advert() -> Message {
        Message::Advert(hearth_protocol::Advert {
            seq: 0,
            heartbeat_interval_ms: 2000,
            capabilities: hearth_protocol::Capabilities {
                backend: hearth_protocol::Backend::Cpu,
                device: "cpu".into(),
                memory_total_bytes: 1 << 30,
                memory_free_bytes: 1 << 30,
                threads: 1,
                cpu_model: "cpu".into(),
                cpu_cores: 1,
                cpu_features: Vec::new(),
                host_memory_total_bytes: 1 << 30,
                os: "linux".into(),
                arch: "x86_64".into(),
                score: 1.0,
                numeric_class: Default::default(),
                models: Vec::new(),
            },
        })
    }

    #[test]
    fn members_pass_and_strangers_are_dropped_then_refused() {
        let (coop, other) = (key(1), key(2));
        let (member, stranger, foreign) = (
            key(3).public().peer_id(),
            key(4).public().peer_id(),
            key(5).public().peer_id(),
        );
        let mut gate = Gate::new(coop.public());
        // A member's advert before its certificate is dropped, after it passes.
        assert_eq!(gate.judge(member, true, &advert()), Verdict::Drop);
        let cert = Message::Membership(Membership::issue(&coop, member, 0, None));
        assert_eq!(gate.judge(member, true, &cert), Verdict::Admitted);
        assert_eq!(gate.judge(member, true, &advert()), Verdict::Pass);
        assert_eq!(gate.check(&member), Ok(()));
        // A stranger relayed is dropped without blame; straight from it, refused at the limit.
        for _ in 0..5 {
            assert_eq!(gate.judge(stranger, false, &advert()), Verdict::Drop);
        }
        for _ in 1..STRAY_MESSAGES_MAX {
            assert_eq!(gate.judge(stranger, true, &advert()), Verdict::Drop);
        }
        assert_eq!(
            gate.judge(stranger, true, &advert()),
            Verdict::Refuse {
                why: MembershipError::Missing,
                reject: false
            }
        );
        // Another co-op's certificate is refused at once, and rejected when sent by its author.
        let foreign_cert = Message::Membership(Membership::issue(&other, foreign, 0, None));
        let verdict = gate.judge(foreign, true, &foreign_cert);
        assert!(matches!(
            verdict,
            Verdict::Refuse {
                why: MembershipError::OtherCoop(_),
                reject: true
            }
        ));
        assert_eq!(verdict.acceptance(), MessageAcceptance::Reject);
        // A member's certificate presented by someone else does not admit them.
        assert!(matches!(
            gate.judge(stranger, true, &cert),
            Verdict::Refuse {
                why: MembershipError::OtherPeer(_),
                ..
            }
        ));
    }

    #[test]
    fn a_revocation_removes_a_member_once_and_forgeries_are_rejected() {
        let (coop, other) = (key(1), key(2));
        let member = key(3).public().peer_id();
        let mut gate = Gate::new(coop.public());
        let cert = Message::Membership(Membership::issue(&coop, member, 0, None));
        assert_eq!(gate.judge(member, true, &cert), Verdict::Admitted);
        let forged = Message::Revocation(Revocation::issue(&other, member, 1));
        assert_eq!(gate.judge(member, false, &forged), Verdict::Forged);
        assert_eq!(gate.check(&member), Ok(()));
        let revocation = Message::Revocation(Revocation::issue(&coop, member, 1));
        assert_eq!(
            gate.judge(member, false, &revocation),
            Verdict::Revoked(member)
        );
        assert_eq!(gate.judge(member, false, &revocation), Verdict::Known);
        // Cut off once, after the notice.
        assert!(gate.tick().2.is_empty());
        gate.revoked_pending[0].1 = Instant::now();
        assert_eq!(gate.tick().2, vec![member]);
        assert!(gate.tick().2.is_empty());
        assert_eq!(gate.check(&member), Err(MembershipError::Revoked));
        assert!(matches!(
            gate.judge(member, true, &cert),
            Verdict::Refuse {
                why: MembershipError::Revoked,
                ..
            }
        ));
        assert_eq!(
            gate.ban(crate::to_libp2p_peer_id(&member), &MembershipError::Revoked),
            None
        );
    }

    #[test]
    fn connected_strangers_are_late_after_the_grace() {
        let coop = key(1);
        let mut gate = Gate::new(coop.public());
        let stranger = crate::to_libp2p_peer_id(&key(4).public().peer_id());
        gate.connected(stranger);
        assert_eq!(gate.tick().0, Vec::<libp2p::PeerId>::new());
        gate.waiting
            .insert(stranger, Instant::now() - MEMBERSHIP_GRACE);
        assert_eq!(gate.tick().0, vec![stranger]);
        assert_eq!(
            gate.ban(stranger, &MembershipError::Missing),
            Some(REFUSAL_BAN)
        );
        gate.banned.insert(stranger, Instant::now());
        assert_eq!(gate.tick().1, vec![stranger]);
    }
}
