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

/// The co-ops one peer may be a member of at once (`--coop-cert` given more than once): each is a
/// gossip topic of its own and a certificate published every heartbeat.
pub const COOPS_MAX: usize = 8;

/// The gossip topic of `coop`'s swarm: members publish and forward only there, so a peer that is a
/// member of several co-ops never carries one co-op's gossip to another's members.
pub fn coop_topic(coop: &PublicKey) -> String {
    format!("{}/coop/{}", crate::gossip::ADVERT_TOPIC, coop.peer_id())
}

/// The gate of a peer in one or more co-ops (at most [`COOPS_MAX`]): their public keys, the
/// memberships that admitted each peer, the revoked, and the peers on probation. A peer is dealt
/// with while some co-op of ours admits it; its gossip counts only on the topic of a co-op that
/// admits it.
#[derive(Debug)]
pub(crate) struct Gate {
    coops: Vec<PublicKey>,
    /// Each co-op's gossip topic ([`coop_topic`]), in the order of `coops`.
    topics: Vec<String>,
    /// This peer, never refused by itself (its own revocation is the role's business).
    me: PeerId,
    /// The memberships that admitted each peer, at most one per co-op.
    admitted: HashMap<PeerId, Vec<Membership>>,
    /// Revocations, by the co-op's index in `coops` and the member.
    revoked: HashMap<(usize, PeerId), Revocation>,
    /// Messages from peers not admitted, by peer; bounded like the strike table.
    strays: HashMap<PeerId, u32>,
    /// Connected peers not yet admitted, since when ([`Now::ms`]).
    waiting: HashMap<PeerId, u64>,
    /// Peers subscribed to a co-op's topic without a membership of that co-op (yet), since when:
    /// a member of another of our co-ops listening in is refused after [`MEMBERSHIP_GRACE`].
    listening: HashMap<(PeerId, usize), u64>,
    /// Peers refused, to cut off when their notice is over ([`Now::ms`]), and why.
    closing: HashMap<PeerId, (u64, MembershipError)>,
    /// Peers cut off for a while, and until when ([`Now::ms`]).
    banned: HashMap<PeerId, u64>,
    /// Peers cut off for good: revoked by every co-op of ours.
    gone: std::collections::HashSet<PeerId>,
    /// Peers subscribed to the topic of a co-op not ours (which one, short): the reason given
    /// when they are refused for showing no membership of ours.
    foreign: HashMap<PeerId, String>,
}

impl Gate {
    /// The gate of a peer in `coops` (the first [`COOPS_MAX`], repeats once).
    pub(crate) fn new(coops: impl IntoIterator<Item = PublicKey>, me: PeerId) -> Self {
        let mut unique: Vec<PublicKey> = Vec::new();
        for coop in coops {
            if !unique.contains(&coop) && unique.len() < COOPS_MAX {
                unique.push(coop);
            }
        }
        Self {
            topics: unique.iter().map(coop_topic).collect(),
            coops: unique,
            me,
            admitted: HashMap::new(),
            revoked: HashMap::new(),
            strays: HashMap::new(),
            waiting: HashMap::new(),
            listening: HashMap::new(),
            closing: HashMap::new(),
            banned: HashMap::new(),
            gone: std::collections::HashSet::new(),
            foreign: HashMap::new(),
        }
    }

    /// The co-ops this gate serves.
    pub(crate) fn coops(&self) -> &[PublicKey] {
        &self.coops
    }

    /// Which of our co-ops `coop` is.
    pub(crate) fn index(&self, coop: &PublicKey) -> Option<usize> {
        self.coops.iter().position(|c| c == coop)
    }

    /// Each co-op's gossip topic, in the order of [`Self::coops`].
    pub(crate) fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Which of our co-ops' topics `topic` is.
    pub(crate) fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }

    /// Whether `peer` is revoked by every one of our co-ops: then it is cut off for good.
    fn revoked_everywhere(&self, peer: &PeerId) -> bool {
        (0..self.coops.len()).all(|i| self.revoked.contains_key(&(i, *peer)))
    }

    /// The co-ops (by index) whose membership admits `peer` now; forgets the memberships that
    /// stopped admitting it. What is held was checked whole when it admitted the peer (its
    /// signature, its member), so only what time and revocations change is checked again: this
    /// runs for every message and every work request, a chained step's included.
    fn admitting(&mut self, peer: &PeerId, now: Now) -> Vec<usize> {
        let Some(held) = self.admitted.get_mut(peer) else {
            return Vec::new();
        };
        let (coops, revoked) = (&self.coops, &self.revoked);
        held.retain(|m| {
            coops
                .iter()
                .position(|c| *c == m.body.coop)
                .is_some_and(|i| {
                    m.body.expires_ms.is_none_or(|e| now.wall_ms < e)
                        && !revoked.contains_key(&(i, *peer))
                })
        });
        let admitting: Vec<usize> = held
            .iter()
            .filter_map(|m| coops.iter().position(|c| *c == m.body.coop))
            .collect();
        if admitting.is_empty() {
            self.admitted.remove(peer);
        }
        admitting
    }

    /// Why `peer`, admitted by none of our co-ops, is not.
    fn not_admitted(&self, peer: &PeerId) -> MembershipError {
        if (0..self.coops.len()).any(|i| self.revoked.contains_key(&(i, *peer))) {
            MembershipError::Revoked
        } else {
            MembershipError::Missing
        }
    }

    /// Whether `peer` is a member of one of our co-ops now; forgets it if its certificates stopped
    /// admitting it.
    pub(crate) fn check(&mut self, peer: &PeerId, now: Now) -> Result<(), MembershipError> {
        if self.admitting(peer, now).is_empty() {
            Err(self.not_admitted(peer))
        } else {
            Ok(())
        }
    }

    /// The co-ops (their keys) that admit `peer` now.
    pub(crate) fn coops_of(&mut self, peer: &PeerId, now: Now) -> Vec<PublicKey> {
        self.admitting(peer, now)
            .into_iter()
            .map(|i| self.coops[i])
            .collect()
    }

    /// Whether `coop` (one of ours) revoked `peer`.
    pub(crate) fn is_revoked_in(&self, coop: &PublicKey, peer: &PeerId) -> bool {
        self.index(coop)
            .is_some_and(|i| self.revoked.contains_key(&(i, *peer)))
    }

    /// Judge a gossip message `author` signed, which `direct` says came straight from it, on the
    /// topic of our co-op number `topic`.
    pub(crate) fn judge(
        &mut self,
        author: PeerId,
        direct: bool,
        topic: usize,
        message: &hearth_protocol::Message,
        now: Now,
    ) -> Verdict {
        use hearth_protocol::Message;
        if self.closing.contains_key(&author) && !matches!(message, Message::Revocation(_)) {
            return Verdict::Drop;
        }
        let Some(coop) = self.coops.get(topic).copied() else {
            return Verdict::Drop;
        };
        match message {
            Message::Membership(membership) if membership.body.coop == coop => {
                let revoked = &self.revoked;
                match membership.admits(&coop, &author, now.wall_ms, |p| {
                    revoked.contains_key(&(topic, *p))
                }) {
                    Ok(()) => {
                        let held = self.admitted.entry(author).or_default();
                        held.retain(|m| m.body.coop != coop);
                        held.push(membership.clone());
                        if held.len() == 1 {
                            tracing::info!(peer = %author, "co-op member admitted");
                        }
                        self.strays.remove(&author);
                        self.waiting.remove(&author);
                        self.listening.remove(&(author, topic));
                        Verdict::Admitted
                    }
                    Err(why) => {
                        if let Some(held) = self.admitted.get_mut(&author) {
                            held.retain(|m| m.body.coop != coop);
                        }
                        if self.check(&author, now).is_ok() {
                            // Still a member of another of our co-ops: only this one is gone.
                            tracing::info!(peer = %author, %why, "a co-op membership no longer admits the peer; its others still do");
                            Verdict::Drop
                        } else {
                            Verdict::Refuse {
                                why,
                                reject: direct,
                            }
                        }
                    }
                }
            }
            // Another co-op's certificate: a member of it and of ours shows both (each on its own
            // topic); from anyone else it counts as a stray, so an outsider is refused at the limit.
            Message::Membership(membership) => {
                if self.index(&membership.body.coop).is_some() || self.check(&author, now).is_ok() {
                    return Verdict::Drop;
                }
                let why = MembershipError::OtherCoop(membership.body.coop.peer_id().short());
                self.stray(author, direct, why)
            }
            Message::Revocation(revocation) if revocation.body.coop == coop => {
                match self.revoke(revocation.clone(), now) {
                    Ok(true) => Verdict::Revoked(revocation.body.member),
                    Ok(false) => Verdict::Known,
                    Err(_) => Verdict::Forged,
                }
            }
            Message::Revocation(_) => Verdict::Forged,
            _ => {
                if self.admitting(&author, now).contains(&topic) {
                    return Verdict::Pass;
                }
                match self.check(&author, now) {
                    // A member of another of our co-ops, on this one's topic: not delivered, not
                    // forwarded; from it directly, a stray.
                    Ok(()) if !direct => Verdict::Drop,
                    Ok(()) => self.stray(author, true, MembershipError::Missing),
                    Err(MembershipError::Missing) if !direct => Verdict::Drop,
                    Err(MembershipError::Missing) => {
                        self.stray(author, true, MembershipError::Missing)
                    }
                    Err(why) => Verdict::Refuse {
                        why,
                        reject: direct,
                    },
                }
            }
        }
    }

    /// Count a message from `author`, not admitted for it: dropped, until [`STRAY_MESSAGES_MAX`]
    /// of them sent straight from it refuse it for `why`.
    fn stray(&mut self, author: PeerId, direct: bool, why: MembershipError) -> Verdict {
        if !direct {
            return Verdict::Drop;
        }
        if !self.strays.contains_key(&author) && self.strays.len() >= PENALTY_PEERS_MAX {
            self.strays.clear();
        }
        let n = self.strays.entry(author).or_default();
        *n += 1;
        if *n >= STRAY_MESSAGES_MAX {
            Verdict::Refuse { why, reject: false }
        } else {
            tracing::debug!(peer = %author, "gossip before a membership of this co-op; dropped");
            Verdict::Drop
        }
    }

    /// Apply a revocation: check its signature and remove the membership; a peer left with no
    /// membership of ours is refused. Returns whether it was new.
    pub(crate) fn revoke(
        &mut self,
        revocation: Revocation,
        now: Now,
    ) -> Result<bool, MembershipError> {
        let Some(i) = self.index(&revocation.body.coop) else {
            return Err(MembershipError::OtherCoop(
                revocation.body.coop.peer_id().short(),
            ));
        };
        revocation.verify(&self.coops[i])?;
        let member = revocation.body.member;
        if self.revoked.contains_key(&(i, member)) {
            return Ok(false);
        }
        self.revoked.insert((i, member), revocation);
        if self.check(&member, now).is_ok() {
            tracing::info!(peer = %member, "a co-op revoked the peer; another of our co-ops still admits it");
        } else {
            self.refuse(member, MembershipError::Revoked, now);
        }
        Ok(true)
    }

    /// Refuse `peer` for `why`: say so, drop all it sends from now, and cut it off after
    /// [`REFUSAL_NOTICE`]. Nothing happens for a peer already refused (closing, banned, or cut off
    /// for good).
    pub(crate) fn refuse(&mut self, peer: PeerId, why: MembershipError, now: Now) {
        if peer == self.me {
            return;
        }
        self.admitted.remove(&peer);
        self.waiting.remove(&peer);
        self.listening.retain(|(p, _), _| *p != peer);
        if self.closing.contains_key(&peer)
            || self.banned.contains_key(&peer)
            || self.gone.contains(&peer)
        {
            return;
        }
        let ban = if self.for_good(&peer, &why) {
            "for good".to_string()
        } else {
            format!("{} s", REFUSAL_BAN.as_secs())
        };
        tracing::warn!(%peer, %why, %ban, notice_s = REFUSAL_NOTICE.as_secs(), "refused: not a member of this co-op; its connections are closed and refused");
        self.closing
            .insert(peer, (now.ms.saturating_add(ms(REFUSAL_NOTICE)), why));
    }

    /// Whether a refusal of `peer` for `why` is for good: revoked by every co-op of ours.
    fn for_good(&self, peer: &PeerId, why: &MembershipError) -> bool {
        *why == MembershipError::Revoked && self.revoked_everywhere(peer)
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

    /// `peer` subscribed to the topic of our co-op number `topic`: start its grace if that co-op
    /// has not admitted it.
    pub(crate) fn subscribed(&mut self, peer: PeerId, topic: usize, now: Now) {
        if peer == self.me
            || topic >= self.coops.len()
            || self.admitting(&peer, now).contains(&topic)
        {
            return;
        }
        if !self.listening.contains_key(&(peer, topic)) && self.listening.len() >= PENALTY_PEERS_MAX
        {
            // Bounded like the strike table; the grace of connected strangers still holds.
            self.listening.clear();
        }
        self.listening.entry((peer, topic)).or_insert(now.ms);
    }

    /// `peer` subscribed to the gossip topic `topic`, which is no co-op's of ours: if it names a
    /// co-op, the peer is (or claims to be) its member, which is why it will be refused unless it
    /// shows a membership of ours.
    pub(crate) fn subscribed_elsewhere(&mut self, peer: PeerId, topic: &str) {
        let Some(coop) = topic
            .strip_prefix(crate::gossip::ADVERT_TOPIC)
            .and_then(|t| t.strip_prefix("/coop/"))
            .and_then(|c| c.parse::<PeerId>().ok())
        else {
            return;
        };
        if !self.foreign.contains_key(&peer) && self.foreign.len() >= PENALTY_PEERS_MAX {
            self.foreign.clear();
        }
        self.foreign.insert(peer, coop.short());
    }

    /// The last connection to `peer` closed.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        self.foreign.remove(peer);
        self.waiting.remove(peer);
        self.listening.retain(|(p, _), _| p != peer);
    }

    /// Time passed: refuse the connected peers past their grace without a membership (and those
    /// listening in on a co-op's topic without its membership); returns the refused peers whose
    /// notice is over (to cut off now; they are banned from here on) and the bans that ran out (to
    /// lift).
    pub(crate) fn tick(&mut self, now: Now) -> (Vec<PeerId>, Vec<PeerId>) {
        let late: Vec<PeerId> = self
            .waiting
            .iter()
            .filter(|(_, since)| now.ms.saturating_sub(**since) >= ms(MEMBERSHIP_GRACE))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in late {
            tracing::debug!(%peer, grace_s = MEMBERSHIP_GRACE.as_secs(), "no membership shown in the grace");
            let why = self
                .foreign
                .remove(&peer)
                .map_or(MembershipError::Missing, MembershipError::OtherCoop);
            self.refuse(peer, why, now);
        }
        let listening: Vec<(PeerId, usize)> = self
            .listening
            .iter()
            .filter(|(_, since)| now.ms.saturating_sub(**since) >= ms(MEMBERSHIP_GRACE))
            .map(|(key, _)| *key)
            .collect();
        for (peer, topic) in listening {
            self.listening.remove(&(peer, topic));
            if !self.admitting(&peer, now).contains(&topic) {
                tracing::warn!(%peer, coop = %self.coops[topic].peer_id().short(), "subscribed to a co-op's gossip without its membership");
                self.refuse(peer, MembershipError::Missing, now);
            }
        }
        let due: Vec<PeerId> = self
            .closing
            .iter()
            .filter(|(_, (at, _))| *at <= now.ms)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &due {
            if let Some((_, why)) = self.closing.remove(peer) {
                if self.for_good(peer, &why) {
                    self.gone.insert(*peer);
                } else {
                    self.banned
                        .insert(*peer, now.ms.saturating_add(ms(REFUSAL_BAN)));
                }
            }
        }
        let mut lifted = Vec::new();
        let mut gone = Vec::new();
        let revoked_everywhere =
            |peer: &PeerId| (0..self.coops.len()).all(|i| self.revoked.contains_key(&(i, *peer)));
        self.banned.retain(|peer, until| {
            let over = *until <= now.ms;
            if over {
                // Revoked everywhere while banned: never let back.
                if revoked_everywhere(peer) {
                    gone.push(*peer);
                } else {
                    lifted.push(*peer);
                }
            }
            !over
        });
        self.gone.extend(gone);
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
        let mut gate = Gate::new([coop.public()], key(9).public().peer_id());
        // A member's advert before its certificate is dropped, after it passes.
        assert_eq!(gate.judge(member, true, 0, &advert(), at(0)), Verdict::Drop);
        let cert = Message::Membership(Membership::issue(&coop, member, 0, None));
        assert_eq!(gate.judge(member, true, 0, &cert, at(0)), Verdict::Admitted);
        assert_eq!(gate.judge(member, true, 0, &advert(), at(0)), Verdict::Pass);
        assert_eq!(gate.check(&member, at(0)), Ok(()));
        // A stranger relayed is dropped without blame; straight from it, refused at the limit.
        for _ in 0..5 {
            assert_eq!(
                gate.judge(stranger, false, 0, &advert(), at(0)),
                Verdict::Drop
            );
        }
        for _ in 1..STRAY_MESSAGES_MAX {
            assert_eq!(
                gate.judge(stranger, true, 0, &advert(), at(0)),
                Verdict::Drop
            );
        }
        assert_eq!(
            gate.judge(stranger, true, 0, &advert(), at(0)),
            Verdict::Refuse {
                why: MembershipError::Missing,
                reject: false
            }
        );
        // Another co-op's certificate, sent by its author, is a stray (a member of that co-op and
        // of ours shows both): dropped, then refused at the limit for being of another co-op.
        let foreign_cert = Message::Membership(Membership::issue(&other, foreign, 0, None));
        for _ in 1..STRAY_MESSAGES_MAX {
            assert_eq!(
                gate.judge(foreign, true, 0, &foreign_cert, at(0)),
                Verdict::Drop
            );
        }
        let verdict = gate.judge(foreign, true, 0, &foreign_cert, at(0));
        assert!(matches!(
            verdict,
            Verdict::Refuse {
                why: MembershipError::OtherCoop(_),
                reject: false
            }
        ));
        // A certificate of ours that does not check is rejected when sent by its author.
        let forged = Membership::issue(&other, foreign, 0, None);
        let forged = Message::Membership(Membership {
            body: hearth_protocol::coop::MembershipBody {
                coop: coop.public(),
                ..forged.body
            },
            ..forged
        });
        let verdict = gate.judge(foreign, true, 0, &forged, at(0));
        assert_eq!(
            verdict,
            Verdict::Refuse {
                why: MembershipError::BadSignature,
                reject: true
            }
        );
        assert_eq!(verdict.acceptance(), MessageAcceptance::Reject);
        // A member's certificate presented by someone else does not admit them.
        assert!(matches!(
            gate.judge(stranger, true, 0, &cert, at(0)),
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
        let mut gate = Gate::new([coop.public()], key(9).public().peer_id());
        let cert = Message::Membership(Membership::issue(&coop, member, 0, None));
        assert_eq!(gate.judge(member, true, 0, &cert, at(0)), Verdict::Admitted);
        let forged = Message::Revocation(Revocation::issue(&other, member, 1));
        assert_eq!(
            gate.judge(member, false, 0, &forged, at(0)),
            Verdict::Forged
        );
        assert_eq!(gate.check(&member, at(0)), Ok(()));
        let revocation = Message::Revocation(Revocation::issue(&coop, member, 1));
        assert_eq!(
            gate.judge(member, false, 0, &revocation, at(0)),
            Verdict::Revoked(member)
        );
        assert_eq!(
            gate.judge(member, false, 0, &revocation, at(0)),
            Verdict::Known
        );
        assert_eq!(gate.check(&member, at(0)), Err(MembershipError::Revoked));
        // Refused at once (what it sends is dropped), cut off for good after the notice.
        assert_eq!(gate.judge(member, true, 0, &cert, at(0)), Verdict::Drop);
        let notice = ms(REFUSAL_NOTICE);
        assert_eq!(gate.tick(at(notice - 1)), (vec![], vec![]));
        assert_eq!(gate.tick(at(notice)), (vec![member], vec![]));
        assert!(gate.banned.is_empty(), "a revoked member is never let back");
        assert_eq!(
            gate.tick(at(notice + ms(REFUSAL_BAN) * 10)),
            (vec![], vec![])
        );
        assert!(matches!(
            gate.judge(member, true, 0, &cert, at(notice)),
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
        let mut gate = Gate::new([coop.public()], key(9).public().peer_id());
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
        // A stranger subscribed to another co-op's topic is refused for being of that co-op.
        let other = key(2).public();
        let foreign = key(6).public().peer_id();
        gate.connected(foreign, at(0));
        gate.subscribed_elsewhere(foreign, crate::gossip::ADVERT_TOPIC);
        gate.subscribed_elsewhere(foreign, &coop_topic(&other));
        gate.tick(at(grace));
        assert_eq!(
            gate.closing.get(&foreign).map(|(_, why)| why.clone()),
            Some(MembershipError::OtherCoop(other.peer_id().short()))
        );
        // A member admitted while waiting is never refused for the grace.
        let member = key(3).public().peer_id();
        gate.connected(member, at(0));
        let cert = Message::Membership(Membership::issue(&coop, member, 0, None));
        assert_eq!(gate.judge(member, true, 0, &cert, at(1)), Verdict::Admitted);
        gate.tick(at(grace * 10));
        assert_eq!(gate.check(&member, at(grace * 10)), Ok(()));
    }

    #[test]
    fn a_member_of_two_coops_is_dealt_with_by_each_on_its_own_topic() {
        let (a, b) = (key(1), key(2));
        let both = key(3).public().peer_id();
        let only_a = key(4).public().peer_id();
        let only_b = key(5).public().peer_id();
        // The gate of a peer in both co-ops: topic 0 is A's, 1 is B's.
        let mut gate = Gate::new(
            [a.public(), b.public(), a.public()],
            key(9).public().peer_id(),
        );
        assert_eq!(gate.coops(), &[a.public(), b.public()], "repeats once");
        assert_eq!(gate.topic_index(&coop_topic(&b.public())), Some(1));
        assert_eq!(gate.topic_index(crate::gossip::ADVERT_TOPIC), None);
        let cert =
            |coop: &SecretKey, peer| Message::Membership(Membership::issue(coop, peer, 0, None));
        assert_eq!(
            gate.judge(both, true, 0, &cert(&a, both), at(0)),
            Verdict::Admitted
        );
        assert_eq!(
            gate.judge(both, true, 1, &cert(&b, both), at(0)),
            Verdict::Admitted
        );
        assert_eq!(
            gate.judge(only_a, true, 0, &cert(&a, only_a), at(0)),
            Verdict::Admitted
        );
        assert_eq!(
            gate.judge(only_b, true, 1, &cert(&b, only_b), at(0)),
            Verdict::Admitted
        );
        assert_eq!(gate.coops_of(&both, at(0)), vec![a.public(), b.public()]);
        assert_eq!(gate.coops_of(&only_b, at(0)), vec![b.public()]);
        // Each member's gossip counts on its co-op's topic only: B's member on A's topic is not
        // forwarded (relayed) and a stray (straight from it), refused at the limit.
        assert_eq!(gate.judge(only_a, true, 0, &advert(), at(0)), Verdict::Pass);
        assert_eq!(gate.judge(only_b, true, 1, &advert(), at(0)), Verdict::Pass);
        assert_eq!(
            gate.judge(only_b, false, 0, &advert(), at(0)),
            Verdict::Drop
        );
        for _ in 1..STRAY_MESSAGES_MAX {
            assert_eq!(gate.judge(only_b, true, 0, &advert(), at(0)), Verdict::Drop);
        }
        assert!(matches!(
            gate.judge(only_b, true, 0, &advert(), at(0)),
            Verdict::Refuse { .. }
        ));
        // A certificate on another co-op's topic admits nothing there; a member's certificate of a
        // co-op we are not in is dropped without blame.
        assert_eq!(
            gate.judge(only_a, true, 1, &cert(&a, only_a), at(0)),
            Verdict::Drop
        );
        assert_eq!(gate.judge(only_a, true, 1, &advert(), at(0)), Verdict::Drop);
        let other = key(6);
        for _ in 0..STRAY_MESSAGES_MAX * 2 {
            assert_eq!(
                gate.judge(both, true, 0, &cert(&other, both), at(0)),
                Verdict::Drop
            );
        }
        // A revocation counts only on its co-op's topic; A revoking the member of both leaves it
        // admitted by B (not refused, not cut off), and dealt with on B's topic only.
        let revocation = Message::Revocation(Revocation::issue(&a, both, 1));
        assert_eq!(
            gate.judge(both, false, 1, &revocation, at(0)),
            Verdict::Forged
        );
        assert_eq!(
            gate.judge(both, false, 0, &revocation, at(0)),
            Verdict::Revoked(both)
        );
        assert_eq!(gate.check(&both, at(0)), Ok(()));
        assert_eq!(gate.coops_of(&both, at(0)), vec![b.public()]);
        assert!(gate.is_revoked_in(&a.public(), &both) && !gate.is_revoked_in(&b.public(), &both));
        assert_eq!(gate.judge(both, false, 0, &advert(), at(0)), Verdict::Drop);
        assert_eq!(gate.judge(both, true, 1, &advert(), at(0)), Verdict::Pass);
        assert!(!gate.closing.contains_key(&both));
        // B revoking it too: refused, and cut off for good after the notice.
        let revocation = Message::Revocation(Revocation::issue(&b, both, 2));
        assert_eq!(
            gate.judge(both, false, 1, &revocation, at(0)),
            Verdict::Revoked(both)
        );
        assert_eq!(gate.check(&both, at(0)), Err(MembershipError::Revoked));
        assert_eq!(gate.tick(at(ms(REFUSAL_NOTICE))), (vec![both], vec![]));
        assert!(gate.gone.contains(&both) && gate.banned.is_empty());
    }

    #[test]
    fn a_member_listening_in_on_another_coops_topic_is_refused_after_the_grace() {
        let (a, b) = (key(1), key(2));
        let (only_b, both) = (key(5).public().peer_id(), key(3).public().peer_id());
        let mut gate = Gate::new([a.public(), b.public()], key(9).public().peer_id());
        let cert =
            |coop: &SecretKey, peer| Message::Membership(Membership::issue(coop, peer, 0, None));
        assert_eq!(
            gate.judge(only_b, true, 1, &cert(&b, only_b), at(0)),
            Verdict::Admitted
        );
        // Both subscribe to A's topic; the one that shows A's certificate in the grace stays.
        gate.subscribed(only_b, 0, at(0));
        gate.subscribed(both, 0, at(0));
        gate.subscribed(only_b, 1, at(0));
        assert_eq!(
            gate.judge(both, true, 0, &cert(&a, both), at(5)),
            Verdict::Admitted
        );
        let grace = ms(MEMBERSHIP_GRACE);
        gate.tick(at(grace - 1));
        assert!(gate.closing.is_empty(), "still in its grace");
        gate.tick(at(grace));
        assert!(
            gate.closing.contains_key(&only_b),
            "listened in on A without A's membership"
        );
        assert!(!gate.closing.contains_key(&both));
        assert_eq!(gate.check(&both, at(grace)), Ok(()));
    }

    #[test]
    fn a_membership_stops_admitting_when_it_expires_or_is_revoked() {
        let coop = key(1);
        let member = key(3).public().peer_id();
        let mut gate = Gate::new([coop.public()], key(9).public().peer_id());
        let cert = Message::Membership(Membership::issue(&coop, member, 0, Some(1_000)));
        assert_eq!(
            gate.judge(member, true, 0, &cert, at(10)),
            Verdict::Admitted
        );
        assert_eq!(gate.check(&member, at(999)), Ok(()));
        assert_eq!(
            gate.judge(member, true, 0, &advert(), at(999)),
            Verdict::Pass
        );
        // Past its expiry it admits no more (and is forgotten), without another certificate.
        assert_eq!(
            gate.check(&member, at(1_000)),
            Err(MembershipError::Missing)
        );
        assert!(gate.coops_of(&member, at(1_000)).is_empty());
        // Admitted again by a fresh one, then revoked: refused at once.
        let fresh = Message::Membership(Membership::issue(&coop, member, 0, None));
        assert_eq!(
            gate.judge(member, true, 0, &fresh, at(1_001)),
            Verdict::Admitted
        );
        gate.revoke(Revocation::issue(&coop, member, 2), at(1_002))
            .expect("signed by the co-op");
        assert_eq!(
            gate.check(&member, at(1_002)),
            Err(MembershipError::Revoked)
        );
    }
}
