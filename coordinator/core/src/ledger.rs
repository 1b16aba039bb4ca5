//! The ledger: how far the swarm trusts each peer, and what it has earned.
//!
//! A sans-IO state machine, driven by the verifier's verdicts. Per (peer, numeric class) it keeps
//! BOINC's adaptive-replication estimate: an error rate that falls with every valid result and rises
//! with every invalid one. A peer runs units alone only once the estimate is low *and* it has a run of
//! valid results behind it, and even then a random share of its units is replicated (spot checks), so
//! a peer that turns after earning trust is caught. Per peer it keeps credit (for verified work only),
//! strikes, and quarantine: three strikes, or one provable fault (a receipt that does not check, or a
//! result that lost a quorum of its own numeric class), quarantine it for a period that doubles on
//! each repeat.
//!
//! Randomness comes in as a draw in `[0, 1)` from the caller's seeded RNG; time as `now_ms`.

use std::sync::Arc;

use hearth_protocol::PeerId;

use crate::peer_hash::{PeerHash, PeerMap};

use crate::limits::{
    ERROR_RATE_INITIAL, ERROR_RATE_INVALID_STEP, ERROR_RATE_VALID_FACTOR, PEERS_MAX_DEFAULT,
    QUARANTINE_BASE_MS, QUARANTINE_MAX_MS, SPOT_CHECK_PER_ERROR, SPOT_CHECK_PROBABILITY_MIN,
    STRIKES_QUARANTINE, TRUST_ERROR_RATE_MAX, TRUST_VALID_RUN_MIN,
};

/// What went wrong with a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Fault {
    /// It disagreed with other replicas where disagreement proves nothing (another numeric class, or
    /// no quorum of its own class): a strike.
    Mismatch,
    /// It lost to two or more agreeing replicas of its own numeric class, which must agree bit for
    /// bit: provable, quarantine at once.
    LostQuorum,
    /// Its receipt did not check (signature, assignee, input or output digest), on the peer's own
    /// authenticated connection: provable, quarantine at once.
    BadReceipt,
    /// It missed its deadline: counted, but says nothing about correctness.
    Timeout,
    /// It served bytes of a model file that do not verify against the model's id, under its own
    /// signature: provable, quarantine at once.
    BadWeights,
}

/// A verdict for the ledger.
#[derive(Clone, Debug, PartialEq)]
pub enum LedgerInput {
    /// A result of `peer` in numeric class `class` was accepted; it earns `credit`.
    Valid {
        /// The peer.
        peer: PeerId,
        /// The numeric class it computed in.
        class: std::sync::Arc<str>,
        /// Credit for the work (the verifier's measure of it).
        credit: f64,
    },
    /// A result of `peer` in `class` was rejected.
    Fault {
        /// The peer.
        peer: PeerId,
        /// The numeric class it computed in.
        class: std::sync::Arc<str>,
        /// Why.
        fault: Fault,
    },
}

/// What changed, for the shell to log and act on.
#[derive(Clone, Debug, PartialEq)]
pub enum LedgerOutput {
    /// The peer may now run units of `class` alone (with spot checks).
    Trusted {
        /// The peer.
        peer: PeerId,
        /// The class.
        class: String,
    },
    /// The peer lost the trust it had in `class`.
    LostTrust {
        /// The peer.
        peer: PeerId,
        /// The class.
        class: String,
    },
    /// The peer gets no work until `until_ms`.
    Quarantined {
        /// The peer.
        peer: PeerId,
        /// When it may work again.
        until_ms: u64,
        /// Why, in words for the dashboard and logs.
        reason: String,
    },
}

/// How to run a peer's next unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// Give it no work.
    Refuse,
    /// Run the unit on it alone.
    Single,
    /// Run the unit on it and on other peers too.
    Replicate,
}

/// A peer's standing, as the API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Standing {
    /// 1 − the worst error estimate over its classes (1 − the initial estimate before any result).
    pub reliability: f64,
    /// Credit for verified work.
    pub credit: f64,
    /// Strikes since its last quarantine.
    pub strikes: u32,
    /// Whether it is quarantined now.
    pub quarantined: bool,
    /// Why it was last quarantined.
    pub quarantine_reason: Option<String>,
    /// Where it stands in the ledger: new, earning trust, trusted or quarantined.
    pub trust: Trust,
    /// Valid results in a row in its class with the most (trust needs [`TRUST_VALID_RUN_MIN`]
    /// and an error estimate under [`TRUST_ERROR_RATE_MAX`] in every class it has).
    pub valid_run: u32,
    /// While quarantined: how long it still is, in ms.
    pub quarantine_left_ms: Option<u64>,
}

/// A peer's trust as the ledger holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// No valid result yet: every unit it runs is replicated.
    New,
    /// Some valid results, not yet enough to be trusted.
    Earning,
    /// Trusted in every numeric class it has: its units are spot-checked.
    Trusted,
    /// Refused work until its quarantine ends.
    Quarantined,
}

impl Trust {
    /// As the API says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::New => "new",
            Trust::Earning => "earning",
            Trust::Trusted => "trusted",
            Trust::Quarantined => "quarantined",
        }
    }
}

#[derive(Clone, Debug)]
struct ClassRecord {
    error_rate: f64,
    valid_run: u32,
}

impl ClassRecord {
    fn trusted(&self) -> bool {
        self.error_rate < TRUST_ERROR_RATE_MAX && self.valid_run >= TRUST_VALID_RUN_MIN
    }
}

#[derive(Clone, Debug, Default)]
struct PeerRecord {
    /// Per numeric class (a peer has one or two): a short list, its names shared with the results.
    classes: Vec<(Arc<str>, ClassRecord)>,
    credit: f64,
    strikes: u32,
    quarantines: u32,
    quarantined_until_ms: u64,
    quarantine_reason: Option<String>,
    timeouts: u64,
    last_seen_ms: u64,
}

/// Every peer's standing, at most `peers_max` peers.
#[derive(Debug)]
pub struct Ledger {
    peers: PeerMap<PeerRecord>,
    peers_max: usize,
    evictions: u64,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new(PEERS_MAX_DEFAULT, 0)
    }
}

impl Ledger {
    /// An empty ledger remembering at most `peers_max` peers, its table keyed by `seed` (secret:
    /// see [`crate::Policy::seed`]).
    pub fn new(peers_max: usize, seed: u64) -> Self {
        Self {
            peers: PeerHash::new(seed).map(),
            peers_max: peers_max.max(1),
            evictions: 0,
        }
    }

    /// Peers forgotten to make room for others: reputation lost, so a swarm sized right keeps
    /// this at 0.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Apply one verdict at `now_ms`.
    pub fn handle(&mut self, now_ms: u64, input: LedgerInput) -> Vec<LedgerOutput> {
        let peer = match &input {
            LedgerInput::Valid { peer, .. } | LedgerInput::Fault { peer, .. } => *peer,
        };
        self.make_room(peer);
        let record = self.peers.entry(peer).or_default();
        record.last_seen_ms = now_ms;
        let mut outputs = Vec::new();
        match input {
            LedgerInput::Valid { class, credit, .. } => {
                record.credit += credit.max(0.0);
                let standing = class_record(record, &class);
                let was = standing.trusted();
                standing.error_rate *= ERROR_RATE_VALID_FACTOR;
                standing.valid_run = standing.valid_run.saturating_add(1);
                if !was && standing.trusted() {
                    outputs.push(LedgerOutput::Trusted {
                        peer,
                        class: class.to_string(),
                    });
                }
            }
            LedgerInput::Fault {
                fault: Fault::Timeout,
                ..
            } => record.timeouts += 1,
            LedgerInput::Fault { class, fault, .. } => {
                let standing = class_record(record, &class);
                let was = standing.trusted();
                standing.error_rate = (standing.error_rate + ERROR_RATE_INVALID_STEP).min(1.0);
                standing.valid_run = 0;
                if was {
                    outputs.push(LedgerOutput::LostTrust {
                        peer,
                        class: class.to_string(),
                    });
                }
                let reason = match fault {
                    Fault::LostQuorum => Some(format!(
                        "result lost a quorum of its own numeric class {class}"
                    )),
                    Fault::BadReceipt => Some("receipt failed verification".to_string()),
                    Fault::BadWeights => Some(
                        "served bytes of a model that do not verify against its id".to_string(),
                    ),
                    Fault::Mismatch => {
                        record.strikes += 1;
                        (record.strikes >= STRIKES_QUARANTINE).then(|| {
                            format!("{} results disagreed with the quorum", record.strikes)
                        })
                    }
                    Fault::Timeout => None,
                };
                if let Some(reason) = reason {
                    outputs.push(quarantine(record, peer, now_ms, reason));
                }
            }
        }
        outputs
    }

    /// How to run `peer`'s next unit of `class` at `now_ms`, given `draw` uniform in `[0, 1)` from the
    /// caller's seeded RNG (used for spot checks of trusted peers).
    pub fn replication(&self, peer: &PeerId, class: &str, now_ms: u64, draw: f64) -> Replication {
        let Some(record) = self.peers.get(peer) else {
            return Replication::Replicate;
        };
        if now_ms < record.quarantined_until_ms {
            return Replication::Refuse;
        }
        match record
            .classes
            .iter()
            .find(|(c, _)| **c == *class)
            .map(|(_, r)| r)
        {
            Some(standing) if standing.trusted() => {
                let spot_check =
                    SPOT_CHECK_PROBABILITY_MIN.max(standing.error_rate * SPOT_CHECK_PER_ERROR);
                if draw < spot_check {
                    Replication::Replicate
                } else {
                    Replication::Single
                }
            }
            _ => Replication::Replicate,
        }
    }

    /// Whether `peer` is quarantined at `now_ms`.
    pub fn quarantined(&self, peer: &PeerId, now_ms: u64) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|r| now_ms < r.quarantined_until_ms)
    }

    /// `peer`'s standing at `now_ms`.
    pub fn standing(&self, peer: &PeerId, now_ms: u64) -> Standing {
        let Some(record) = self.peers.get(peer) else {
            return Standing {
                reliability: 1.0 - ERROR_RATE_INITIAL,
                credit: 0.0,
                strikes: 0,
                quarantined: false,
                quarantine_reason: None,
                trust: Trust::New,
                valid_run: 0,
                quarantine_left_ms: None,
            };
        };
        let worst = if record.classes.is_empty() {
            ERROR_RATE_INITIAL
        } else {
            record
                .classes
                .iter()
                .map(|(_, c)| c.error_rate)
                .fold(0.0, f64::max)
        };
        let quarantined = now_ms < record.quarantined_until_ms;
        let valid_run = record
            .classes
            .iter()
            .map(|(_, c)| c.valid_run)
            .max()
            .unwrap_or(0);
        let trust = if quarantined {
            Trust::Quarantined
        } else if !record.classes.is_empty() && record.classes.iter().all(|(_, c)| c.trusted()) {
            Trust::Trusted
        } else if valid_run > 0 {
            Trust::Earning
        } else {
            Trust::New
        };
        Standing {
            reliability: 1.0 - worst,
            credit: record.credit,
            strikes: record.strikes,
            quarantined,
            quarantine_reason: record.quarantine_reason.clone(),
            trust,
            valid_run,
            quarantine_left_ms: quarantined.then(|| record.quarantined_until_ms - now_ms),
        }
    }

    /// Keep at most `peers_max` peers: forget the one silent longest, preferring peers never
    /// quarantined, so a repeat offender's doubling quarantine is not wiped by a Sybil flood.
    fn make_room(&mut self, incoming: PeerId) {
        if self.peers.len() < self.peers_max || self.peers.contains_key(&incoming) {
            return;
        }
        let oldest = self
            .peers
            .iter()
            .min_by_key(|(p, r)| (r.quarantines > 0, r.last_seen_ms, **p))
            .map(|(p, _)| *p);
        if let Some(oldest) = oldest {
            self.peers.remove(&oldest);
            self.evictions += 1;
        }
    }
}

fn class_record<'a>(record: &'a mut PeerRecord, class: &Arc<str>) -> &'a mut ClassRecord {
    // The same shared name nearly always: compared by pointer first.
    let i = match record
        .classes
        .iter()
        .position(|(c, _)| Arc::ptr_eq(c, class) || **c == **class)
    {
        Some(i) => i,
        None => {
            record.classes.push((
                class.clone(),
                ClassRecord {
                    error_rate: ERROR_RATE_INITIAL,
                    valid_run: 0,
                },
            ));
            record.classes.len() - 1
        }
    };
    &mut record.classes[i].1
}

/// Quarantine `record` from `now_ms`, for twice as long as last time, and clear its strikes.
fn quarantine(record: &mut PeerRecord, peer: PeerId, now_ms: u64, reason: String) -> LedgerOutput {
    let period = QUARANTINE_BASE_MS
        .saturating_mul(1 << record.quarantines.min(20))
        .min(QUARANTINE_MAX_MS);
    record.quarantines += 1;
    record.strikes = 0;
    record.quarantined_until_ms = now_ms + period;
    record.quarantine_reason = Some(reason.clone());
    LedgerOutput::Quarantined {
        peer,
        until_ms: record.quarantined_until_ms,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use hearth_protocol::SecretKey;

    use super::*;

    const CLASS: &str = "k0/embed/cpu/x86_64-avx512";

    fn peer(n: u8) -> PeerId {
        SecretKey::from_bytes(&[n; 32]).public().peer_id()
    }

    fn valid(ledger: &mut Ledger, p: PeerId, n: u32) -> Vec<LedgerOutput> {
        (0..n)
            .flat_map(|_| {
                ledger.handle(
                    0,
                    LedgerInput::Valid {
                        peer: p,
                        class: CLASS.into(),
                        credit: 1.0,
                    },
                )
            })
            .collect()
    }

    fn fault(ledger: &mut Ledger, p: PeerId, now_ms: u64, fault: Fault) -> Vec<LedgerOutput> {
        ledger.handle(
            now_ms,
            LedgerInput::Fault {
                peer: p,
                class: CLASS.into(),
                fault,
            },
        )
    }

    #[test]
    fn trust_takes_a_run_of_valid_results_and_spot_checks_continue() {
        let mut ledger = Ledger::default();
        let a = peer(1);
        assert_eq!(
            ledger.replication(&a, CLASS, 0, 0.99),
            Replication::Replicate,
            "strangers run replicated"
        );
        // 0.1 × 0.95^n < 0.05 first holds at n = 14.
        assert!(valid(&mut ledger, a, 13).is_empty());
        assert_eq!(
            ledger.replication(&a, CLASS, 0, 0.99),
            Replication::Replicate
        );
        assert_eq!(
            valid(&mut ledger, a, 1),
            vec![LedgerOutput::Trusted {
                peer: a,
                class: CLASS.into()
            }]
        );
        assert_eq!(ledger.replication(&a, CLASS, 0, 0.99), Replication::Single);
        // At the threshold the spot-check probability is about 0.2: a low draw replicates anyway.
        assert_eq!(
            ledger.replication(&a, CLASS, 0, 0.05),
            Replication::Replicate
        );
        assert_eq!(
            ledger.replication(&a, "another/class", 0, 0.99),
            Replication::Replicate,
            "trust is per class"
        );
        assert_eq!(ledger.standing(&a, 0).credit, 14.0);
    }

    #[test]
    fn an_invalid_result_costs_trust_and_three_strikes_quarantine() {
        let mut ledger = Ledger::default();
        let a = peer(2);
        valid(&mut ledger, a, 20);
        assert_eq!(
            fault(&mut ledger, a, 5, Fault::Mismatch),
            vec![LedgerOutput::LostTrust {
                peer: a,
                class: CLASS.into()
            }]
        );
        assert_eq!(
            ledger.replication(&a, CLASS, 5, 0.99),
            Replication::Replicate
        );
        assert!(fault(&mut ledger, a, 6, Fault::Mismatch).is_empty());
        let out = fault(&mut ledger, a, 7, Fault::Mismatch);
        assert!(
            matches!(&out[..], [LedgerOutput::Quarantined { until_ms, .. }] if *until_ms == 7 + QUARANTINE_BASE_MS),
            "{out:?}"
        );
        assert_eq!(ledger.replication(&a, CLASS, 8, 0.99), Replication::Refuse);
        let standing = ledger.standing(&a, 8);
        assert!(standing.quarantined && standing.strikes == 0);
        assert_eq!(
            standing.credit, 20.0,
            "credit earned stays; none is added for faults"
        );
        assert_eq!(
            ledger.replication(&a, CLASS, 7 + QUARANTINE_BASE_MS, 0.99),
            Replication::Replicate,
            "back, untrusted"
        );
    }

    #[test]
    fn provable_faults_quarantine_at_once_for_doubling_periods() {
        let mut ledger = Ledger::default();
        let a = peer(3);
        let first = fault(&mut ledger, a, 0, Fault::LostQuorum);
        assert!(
            matches!(&first[..], [LedgerOutput::Quarantined { until_ms, reason, .. }] if *until_ms == QUARANTINE_BASE_MS && reason.contains(CLASS))
        );
        let second = fault(&mut ledger, a, QUARANTINE_BASE_MS, Fault::BadReceipt);
        assert!(
            matches!(&second[..], [LedgerOutput::Quarantined { until_ms, .. }] if *until_ms == 3 * QUARANTINE_BASE_MS)
        );
        for n in 0..30 {
            fault(&mut ledger, a, n, Fault::BadReceipt);
        }
        let last = fault(&mut ledger, a, 100, Fault::BadReceipt);
        assert!(
            matches!(&last[..], [LedgerOutput::Quarantined { until_ms, .. }] if *until_ms == 100 + QUARANTINE_MAX_MS),
            "capped"
        );
        // Model bytes that do not verify, under the server's own signature: at once too.
        let b = peer(4);
        let weights = fault(&mut ledger, b, 0, Fault::BadWeights);
        assert!(
            matches!(&weights[..], [LedgerOutput::Quarantined { reason, .. }] if reason.contains("do not verify")),
            "{weights:?}"
        );
    }

    #[test]
    fn standing_says_new_earning_trusted_and_quarantined_until_when() {
        let mut ledger = Ledger::default();
        let a = peer(6);
        assert_eq!(ledger.standing(&a, 0).trust, Trust::New);
        valid(&mut ledger, a, 3);
        let earning = ledger.standing(&a, 0);
        assert_eq!((earning.trust, earning.valid_run), (Trust::Earning, 3));
        valid(&mut ledger, a, 20);
        assert_eq!(ledger.standing(&a, 0).trust, Trust::Trusted);
        fault(&mut ledger, a, 1_000, Fault::LostQuorum);
        let quarantined = ledger.standing(&a, 61_000);
        assert_eq!(quarantined.trust, Trust::Quarantined);
        assert_eq!(
            quarantined.quarantine_left_ms,
            Some(QUARANTINE_BASE_MS - 60_000)
        );
        assert_eq!(
            ledger
                .standing(&a, 1_000 + QUARANTINE_BASE_MS)
                .quarantine_left_ms,
            None
        );
    }

    #[test]
    fn timeouts_neither_strike_nor_cost_trust() {
        let mut ledger = Ledger::default();
        let a = peer(4);
        valid(&mut ledger, a, 20);
        for _ in 0..10 {
            assert!(fault(&mut ledger, a, 0, Fault::Timeout).is_empty());
        }
        assert_eq!(ledger.replication(&a, CLASS, 0, 0.99), Replication::Single);
        assert_eq!(ledger.standing(&a, 0).strikes, 0);
    }

    #[test]
    fn reliability_is_the_worst_class() {
        let mut ledger = Ledger::default();
        let a = peer(5);
        assert!((ledger.standing(&a, 0).reliability - 0.9).abs() < 1e-12);
        valid(&mut ledger, a, 14);
        ledger.handle(
            0,
            LedgerInput::Fault {
                peer: a,
                class: "other".into(),
                fault: Fault::Mismatch,
            },
        );
        assert!(
            (ledger.standing(&a, 0).reliability - 0.8).abs() < 1e-12,
            "0.1 initial + 0.1 in the other class"
        );
    }
}
