//! Members only: the gate every peer of a co-op swarm runs, the coordinator (`--coop DIR`) and the
//! nodes (`--coop-cert CERT`) alike.
//!
//! Members publish their certificate on gossip. The gate admits a peer once its certificate checks
//! (this co-op's signature, issued to that peer, unexpired, not revoked). Until then the peer's
//! gossip is neither delivered nor forwarded and its work requests are refused. A peer whose
//! certificate fails, that keeps gossiping without one, or that stays connected for
//! [`MEMBERSHIP_GRACE`] without showing one is refused at once (everything it sends is dropped) and
//! cut off after [`REFUSAL_NOTICE`]: its connections are closed and new ones refused, for
//! [`REFUSAL_BAN`] (so a member who renews an expired certificate comes back without anyone
//! restarting), or for good once revoked. The notice lets our certificate, or the revocation, reach
//! it first, so its log says why too. Every refusal is logged with its reason. Revocations are
//! self-authenticating (the co-op's signature), applied at once and forwarded.
//!
//! The gate is sans-IO: time comes in as a [`Now`] with every call that needs it, read by the
//! network's shell, so its tests drive time instead of sleeping.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// How long a refused peer stays connected (refused everything) before its connections close: longer
/// than a heartbeat (2 s), so our certificate or the revocation reaches it first.
pub const REFUSAL_NOTICE: Duration = Duration::from_secs(3);

/// A moment as the gate needs it: a monotonic clock for its own timers (grace, notice, bans) and
/// the wall clock for certificates' expiry, which is a date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Now {
    /// Milliseconds on a monotonic clock ([`crate::monotonic_ms`]).
    pub(crate) ms: u64,
    /// Milliseconds since the Unix epoch.
    pub(crate) wall_ms: u64,
}

impl Now {
    /// Read both clocks (the shell's job, never the gate's).
    pub(crate) fn read() -> Self {
        Self {
            ms: crate::monotonic_ms(),
            wall_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
    /// This peer, never refused by itself (its own revocation is the role's business).
    me: PeerId,
    admitted: HashMap<PeerId, Membership>,
    revoked: HashMap<PeerId, Revocation>,
    /// Messages from peers not admitted, by peer; bounded like the strike table.
    strays: HashMap<PeerId, u32>,
    /// Connected peers not yet admitted, since when ([`Now::ms`]).
    waiting: HashMap<PeerId, u64>,
    /// Peers refused, to cut off when their notice is over ([`Now::ms`]), and why.
    closing: HashMap<PeerId, (u64, MembershipError)>,
    /// Peers cut off for a while, and until when ([`Now::ms`]; the revoked are cut off for good
    /// instead).
    banned: HashMap<PeerId, u64>,
}

impl Gate {
    pub(crate) fn new(coop: PublicKey, me: PeerId) -> Self {
        Self {
            coop,
            me,
            admitted: HashMap::new(),
            revoked: HashMap::new(),
            strays: HashMap::new(),
            waiting: HashMap::new(),
            closing: HashMap::new(),
            banned: HashMap::new(),
        }
    }

    /// Whether `peer` is a member now; forgets it if its certificate stopped admitting it.
    pub(crate) fn check(&mut self, peer: &PeerId, now: Now) -> Result<(), MembershipError> {
        let Some(membership) = self.admitted.get(peer) else {
            return Err(if self.revoked.contains_key(peer) {
                MembershipError::Revoked
            } else {
                MembershipError::Missing
            });
        };
        let revoked = &self.revoked;
        let verdict = membership.admits(&self.coop, peer, now.wall_ms, |p| revoked.contains_key(p));
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
        now: Now,
    ) -> Verdict {
        use hearth_protocol::Message;
        if self.closing.contains_key(&author) && !matches!(message, Message::Revocation(_)) {
            return Verdict::Drop;
        }
        match message {
            Message::Membership(membership) => {
                let revoked = &self.revoked;
                match membership.admits(&self.coop, &author, now.wall_ms, |p| {
                    revoked.contains_key(p)
                }) {
                    Ok(()) => {
                        if self.admitted.insert(author, membership.clone()).is_none() {
                            tracing::info!(peer = %author, "co-op member admitted");
                        }
                        self.strays.remove(&author);
                        self.waiting.remove(&author);
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
            Message::Revocation(revocation) => match self.revoke(revocation.clone(), now) {
                Ok(true) => Verdict::Revoked(revocation.body.member),
                Ok(false) => Verdict::Known,
                Err(_) => Verdict::Forged,
            },
            _ => match self.check(&author, now) {
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

    /// Apply a revocation: check its signature and refuse the member. Returns whether it was new.
    pub(crate) fn revoke(
        &mut self,
        revocation: Revocation,
        now: Now,
    ) -> Result<bool, MembershipError> {
        revocation.verify(&self.coop)?;
        let member = revocation.body.member;
        if self.revoked.contains_key(&member) {
            return Ok(false);
        }
        self.refuse(member, MembershipError::Revoked, now);
        self.revoked.insert(member, revocation);
        Ok(true)
    }

    /// Refuse `peer` for `why`: say so, drop all it sends from now, and cut it off after
    /// [`REFUSAL_NOTICE`]. Nothing happens for a peer already refused (closing, banned, or revoked
    /// and so cut off for good).
    pub(crate) fn refuse(&mut self, peer: PeerId, why: MembershipError, now: Now) {
        if peer == self.me {
            return;
        }
        self.admitted.remove(&peer);
        self.waiting.remove(&peer);
        if self.closing.contains_key(&peer)
            || self.banned.contains_key(&peer)
            || self.revoked.contains_key(&peer)
        {
            return;
        }
        let ban = if why == MembershipError::Revoked {
            "for good".to_string()
        } else {
            format!("{} s", REFUSAL_BAN.as_secs())
        };
        tracing::warn!(%peer, %why, %ban, notice_s = REFUSAL_NOTICE.as_secs(), "refused: not a member of this co-op; its connections are closed and refused");
        self.closing
            .insert(peer, (now.ms.saturating_add(ms(REFUSAL_NOTICE)), why));
    }

    /// The revocations known, to spread to peers that joined after them.
    pub(crate) fn revocations(&self) -> impl Iterator<Item = &Revocation> {
        self.revoked.values()
    }

    /// A connection from `peer` opened: start its grace if it is not a member.
    pub(crate) fn connected(&mut self, peer: PeerId, now: Now) {
        if !self.admitted.contains_key(&peer) {
            self.waiting.entry(peer).or_insert(now.ms);
        }
    }

    /// The last connection to `peer` closed.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        self.waiting.remove(peer);
    }

    /// Time passed: refuse the connected peers past their grace without a membership; returns the
    /// refused peers whose notice is over (to cut off now; they are banned from here on) and the
    /// bans that ran out (to lift).
    pub(crate) fn tick(&mut self, now: Now) -> (Vec<PeerId>, Vec<PeerId>) {
        let late: Vec<PeerId> = self
            .waiting
            .iter()
            .filter(|(_, since)| now.ms.saturating_sub(**since) >= ms(MEMBERSHIP_GRACE))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in late {
            tracing::debug!(%peer, grace_s = MEMBERSHIP_GRACE.as_secs(), "no membership shown in the grace");
            self.refuse(peer, MembershipError::Missing, now);
        }
        let due: Vec<PeerId> = self
            .closing
            .iter()
            .filter(|(_, (at, _))| *at <= now.ms)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &due {
            if let Some((_, why)) = self.closing.remove(peer)
                && why != MembershipError::Revoked
            {
                self.banned
                    .insert(*peer, now.ms.saturating_add(ms(REFUSAL_BAN)));
            }
        }
        let mut lifted = Vec::new();
        self.banned.retain(|peer, until| {
            let over = *until <= now.ms;
            if over {
                lifted.push(*peer);
            }
            !over
        });
        (due, lifted)
    }
}

#[cfg(test)]
mod tests {
    use hearth_protocol::coop::Membership;
    use hearth_protocol::{Message, SecretKey};

    use super::*;

    /// A moment `ms` into the test (the certificates below never expire).
    fn at(ms: u64) -> Now {
        Now { ms, wall_ms: ms }
    }

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    fn advert() -> Message {
        Message::Advert(hearth_protocol::Advert {
            seq: 0,
            heartbeat_interval_ms: 2000,
            stage_sessions: 0,
            bytes_received: 0,
            held: Vec::new(),
            links: Vec::new(),
            reachability: Default::default(),
            serves: Vec::new(),
            fetching: Vec::new(),
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
        let mut gate = Gate::new(coop.public(), key(9).public().peer_id());
        // A member's advert before its certificate is dropped, after it passes.
        assert_eq!(gate.judge(member, true, &advert(), at(0)), Verdict::Drop);
        let cert = Message::Membership(Membership::issue(&coop, member, 0, None));
        assert_eq!(gate.judge(member, true, &cert, at(0)), Verdict::Admitted);
        assert_eq!(gate.judge(member, true, &advert(), at(0)), Verdict::Pass);
        assert_eq!(gate.check(&member, at(0)), Ok(()));
        // A stranger relayed is dropped without blame; straight from it, refused at the limit.
        for _ in 0..5 {
            assert_eq!(gate.judge(stranger, false, &advert(), at(0)), Verdict::Drop);
        }
        for _ in 1..STRAY_MESSAGES_MAX {
            assert_eq!(gate.judge(stranger, true, &advert(), at(0)), Verdict::Drop);
        }
        assert_eq!(
            gate.judge(stranger, true, &advert(), at(0)),
            Verdict::Refuse {
                why: MembershipError::Missing,
                reject: false
            }
        );
        // Another co-op's certificate is refused at once, and rejected when sent by its author.
        let foreign_cert = Message::Membership(Membership::issue(&other, foreign, 0, None));
        let verdict = gate.judge(foreign, true, &foreign_cert, at(0));
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
            gate.judge(stranger, true, &cert, at(0)),
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
        let mut gate = Gate::new(coop.public(), key(9).public().peer_id());
        let cert = Message::Membership(Membership::issue(&coop, member, 0, None));
        assert_eq!(gate.judge(member, true, &cert, at(0)), Verdict::Admitted);
        let forged = Message::Revocation(Revocation::issue(&other, member, 1));
        assert_eq!(gate.judge(member, false, &forged, at(0)), Verdict::Forged);
        assert_eq!(gate.check(&member, at(0)), Ok(()));
        let revocation = Message::Revocation(Revocation::issue(&coop, member, 1));
        assert_eq!(
            gate.judge(member, false, &revocation, at(0)),
            Verdict::Revoked(member)
        );
        assert_eq!(
            gate.judge(member, false, &revocation, at(0)),
            Verdict::Known
        );
        assert_eq!(gate.check(&member, at(0)), Err(MembershipError::Revoked));
        // Refused at once (what it sends is dropped), cut off for good after the notice.
        assert_eq!(gate.judge(member, true, &cert, at(0)), Verdict::Drop);
        let notice = ms(REFUSAL_NOTICE);
        assert_eq!(gate.tick(at(notice - 1)), (vec![], vec![]));
        assert_eq!(gate.tick(at(notice)), (vec![member], vec![]));
        assert!(gate.banned.is_empty(), "a revoked member is never let back");
        assert_eq!(
            gate.tick(at(notice + ms(REFUSAL_BAN) * 10)),
            (vec![], vec![])
        );
        assert!(matches!(
            gate.judge(member, true, &cert, at(notice)),
            Verdict::Refuse {
                why: MembershipError::Revoked,
                ..
            }
        ));
        // Refusing it again changes nothing; and a peer never refuses itself.
        gate.refuse(member, MembershipError::Revoked, at(notice));
        gate.refuse(
            key(9).public().peer_id(),
            MembershipError::Revoked,
            at(notice),
        );
        assert!(gate.closing.is_empty());
    }

    #[test]
    fn connected_strangers_are_refused_after_the_grace_and_let_back_after_the_ban() {
        let coop = key(1);
        let mut gate = Gate::new(coop.public(), key(9).public().peer_id());
        let stranger = key(4).public().peer_id();
        let (grace, notice, ban) = (ms(MEMBERSHIP_GRACE), ms(REFUSAL_NOTICE), ms(REFUSAL_BAN));
        let start = 5_000;
        gate.connected(stranger, at(start));
        assert_eq!(gate.tick(at(start + grace - 1)), (vec![], vec![]));
        assert!(gate.closing.is_empty(), "still in its grace");
        // Past the grace: refused, cut off after the notice, banned for a while.
        let refused = start + grace;
        assert_eq!(gate.tick(at(refused)), (vec![], vec![]));
        assert!(gate.closing.contains_key(&stranger));
        assert_eq!(gate.tick(at(refused + notice - 1)), (vec![], vec![]));
        let cut = refused + notice;
        assert_eq!(gate.tick(at(cut)), (vec![stranger], vec![]));
        gate.refuse(stranger, MembershipError::Expired, at(cut + 1));
        assert!(!gate.closing.contains_key(&stranger), "already banned");
        assert_eq!(gate.tick(at(cut + ban - 1)), (vec![], vec![]));
        assert_eq!(gate.tick(at(cut + ban)), (vec![], vec![stranger]));
        // Let back: a new refusal is a new notice.
        gate.refuse(stranger, MembershipError::Expired, at(cut + ban));
        assert!(gate.closing.contains_key(&stranger));
        // A member admitted while waiting is never refused for the grace.
        let member = key(3).public().peer_id();
        gate.connected(member, at(0));
        let cert = Message::Membership(Membership::issue(&coop, member, 0, None));
        assert_eq!(gate.judge(member, true, &cert, at(1)), Verdict::Admitted);
        gate.tick(at(grace * 10));
        assert_eq!(gate.check(&member, at(grace * 10)), Ok(()));
    }
}
