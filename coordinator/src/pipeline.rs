//! Pipelined inference: the planner that cuts a model into a chain of stages, and the driver of one
//! generation session along that chain. Both are sans-IO: the driver returns [`Action`]s (send this
//! step to that peer, emit this token) and is told what came back; the shell does the sending.
//!
//! - **Planner.** From the online peers that hold the model, the `K` fastest by benchmark score,
//!   each given a contiguous layer range sized in proportion to its score, so the slowest stage sets
//!   the pace as little as possible. After a failure the missing range goes to the fastest peer not
//!   yet in the route, else to a survivor already in it (which then serves two ranges).
//! - **Driver.** Greedy decoding: the prompt's prefill flows through the chain, the last stage
//!   returns the next token, which flows through again, one request in flight at a time. The driver
//!   keeps every input it sent to each layer range; when a stage's peer fails, the range's new peer
//!   is sent those inputs again in their original chunking (prefill, then one token at a time), so
//!   its cache is bit for bit the one the failed peer had, and generation carries on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use hearth_protocol::work::{Forward, StageData, StageResult};
use hearth_protocol::{ModelId, PeerId, Receipt, Subject};
use serde::Serialize;

/// One stage of a route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hop {
    /// The peer serving it.
    pub peer_id: PeerId,
    /// Its layers, `[start, end)`.
    pub layers: (u32, u32),
}

/// A peer the planner may use.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The peer.
    pub peer: PeerId,
    /// Its benchmark score.
    pub score: f64,
}

/// Cut `layers` layers into `stages` contiguous ranges over the fastest candidates.
pub fn plan(candidates: &[Candidate], layers: u32, stages: usize) -> Result<Vec<Hop>, String> {
    if stages == 0 || stages as u32 > layers {
        return Err(format!("a route needs 1..={layers} stages, not {stages}"));
    }
    if candidates.len() < stages {
        return Err(format!(
            "{stages} stages asked, but only {} online peers hold the model",
            candidates.len()
        ));
    }
    let mut chosen: Vec<&Candidate> = candidates.iter().collect();
    chosen.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.peer.cmp(&b.peer)));
    chosen.truncate(stages);
    // Sizes proportional to score (largest remainder), at least one layer each.
    let total: f64 = chosen.iter().map(|c| c.score.max(1e-9)).sum();
    let exact: Vec<f64> = chosen
        .iter()
        .map(|c| c.score.max(1e-9) / total * f64::from(layers))
        .collect();
    let mut sizes: Vec<u32> = exact.iter().map(|x| (x.floor() as u32).max(1)).collect();
    while sizes.iter().sum::<u32>() > layers {
        let i = (0..sizes.len())
            .filter(|&i| sizes[i] > 1)
            .max_by(|&a, &b| {
                (f64::from(sizes[a]) - exact[a]).total_cmp(&(f64::from(sizes[b]) - exact[b]))
            })
            .expect("stages ≤ layers");
        sizes[i] -= 1;
    }
    while sizes.iter().sum::<u32>() < layers {
        let i = (0..sizes.len())
            .max_by(|&a, &b| {
                (exact[a] - f64::from(sizes[a])).total_cmp(&(exact[b] - f64::from(sizes[b])))
            })
            .expect("at least one stage");
        sizes[i] += 1;
    }
    let mut start = 0;
    Ok(chosen
        .iter()
        .zip(sizes)
        .map(|(c, n)| {
            let hop = Hop {
                peer_id: c.peer,
                layers: (start, start + n),
            };
            start += n;
            hop
        })
        .collect())
}

/// A peer for the range a failed peer served: the fastest candidate not in `route`, else the
/// fastest survivor in it.
pub fn replacement(route: &[Hop], candidates: &[Candidate]) -> Option<PeerId> {
    let in_route: BTreeSet<PeerId> = route.iter().map(|h| h.peer_id).collect();
    let best = |pool: &mut dyn Iterator<Item = &Candidate>| {
        pool.max_by(|a, b| a.score.total_cmp(&b.score).then(b.peer.cmp(&a.peer)))
            .map(|c| c.peer)
    };
    best(&mut candidates.iter().filter(|c| !in_route.contains(&c.peer)))
        .or_else(|| best(&mut candidates.iter().filter(|c| in_route.contains(&c.peer))))
}

/// A stage replaced mid-session.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reroute {
    /// The step at which the failure was noticed.
    pub step: u64,
    /// The peer that failed.
    pub failed_peer: PeerId,
    /// The layers it served.
    pub layers: (u32, u32),
    /// Who serves them now.
    pub replacement: PeerId,
    /// Why.
    pub reason: String,
}

/// What the driver tells the shell.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send this step to `peer`.
    Send {
        /// The stage's peer.
        peer: PeerId,
        /// The step.
        forward: Forward,
    },
    /// A token was generated.
    Token(u32),
    /// The session is over (`error` when it could not finish); free these peers' caches.
    Finished {
        /// Why it stopped early, if it did.
        error: Option<String>,
        /// Every peer that served a stage.
        peers: Vec<PeerId>,
    },
}

/// One generation session along a route.
#[derive(Debug)]
pub struct Driver {
    session: u64,
    model: ModelId,
    route: Vec<Hop>,
    prompt_len: usize,
    max_tokens: usize,
    eos: u32,
    context: usize,
    /// Generated tokens.
    pub generated: Vec<u32>,
    /// The step in flight (0: the prompt).
    step: u64,
    /// The hop whose answer is awaited, and the request sent to it.
    awaiting: Option<(usize, Forward)>,
    /// Every input sent to each layer range, in order, for replays.
    history: BTreeMap<(u32, u32), Vec<Forward>>,
    /// Inputs a range's new peer must see again before the next one.
    replay: BTreeMap<(u32, u32), VecDeque<Forward>>,
    /// Peers that failed this session.
    failed: BTreeSet<PeerId>,
    /// Every stage receipt, in the order answers came.
    pub receipts: Vec<Receipt>,
    /// Stages replaced.
    pub reroutes: Vec<Reroute>,
    done: bool,
}

impl Driver {
    /// A session generating up to `max_tokens` after `prompt` along `route`.
    pub fn new(
        session: u64,
        model: ModelId,
        route: Vec<Hop>,
        prompt: Vec<u32>,
        max_tokens: usize,
        eos: u32,
        context: usize,
    ) -> (Self, Vec<Action>) {
        let mut driver = Self {
            session,
            model,
            route,
            prompt_len: prompt.len(),
            max_tokens,
            eos,
            context,
            generated: Vec::new(),
            step: 0,
            awaiting: None,
            history: BTreeMap::new(),
            replay: BTreeMap::new(),
            failed: BTreeSet::new(),
            receipts: Vec::new(),
            reroutes: Vec::new(),
            done: false,
        };
        let actions = driver.send(0, StageData::Tokens(prompt), 0);
        (driver, actions)
    }

    /// The route now.
    pub fn route(&self) -> &[Hop] {
        &self.route
    }

    /// The peer whose answer is awaited.
    pub fn awaiting(&self) -> Option<PeerId> {
        self.awaiting
            .as_ref()
            .map(|(hop, _)| self.route[*hop].peer_id)
    }

    /// Whether the session is over.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Send `input` (at `pos`) to hop `hop` for the current step, after any replay it owes.
    fn send(&mut self, hop: usize, input: StageData, pos: u32) -> Vec<Action> {
        let layers = self.route[hop].layers;
        let forward = Forward {
            session: self.session,
            step: self.step,
            model: self.model,
            layers,
            pos,
            input,
        };
        self.history
            .entry(layers)
            .or_default()
            .push(forward.clone());
        self.dispatch(hop, forward)
    }

    /// Send `forward` to `hop`, or first the inputs the hop's new peer owes (the forward then goes
    /// last in that queue).
    fn dispatch(&mut self, hop: usize, forward: Forward) -> Vec<Action> {
        let layers = self.route[hop].layers;
        let peer = self.route[hop].peer_id;
        let next = match self.replay.get_mut(&layers) {
            Some(queue) => {
                queue.push_back(forward);
                queue.pop_front().expect("just pushed")
            }
            None => forward,
        };
        if self.replay.get(&layers).is_some_and(VecDeque::is_empty) {
            self.replay.remove(&layers);
        }
        self.awaiting = Some((hop, next.clone()));
        vec![Action::Send {
            peer,
            forward: next,
        }]
    }

    /// Whether `receipt` is a valid statement of `forward` → `output` by `peer`. The shell checks
    /// the signature (`signature_ok`); this checks what it binds.
    pub fn receipt_matches(
        forward: &Forward,
        peer: &PeerId,
        output: &StageResult,
        receipt: &Receipt,
        signature_ok: bool,
    ) -> bool {
        signature_ok
            && receipt.peer_id() == *peer
            && receipt.body.subject
                == (Subject::Step {
                    session: forward.session,
                    step: forward.step,
                    layer_start: forward.layers.0,
                })
            && receipt.body.model == forward.model
            && receipt.body.input == forward.digest()
            && receipt.body.output == output.digest()
    }

    /// The request awaited now.
    pub fn pending(&self) -> Option<&Forward> {
        self.awaiting.as_ref().map(|(_, f)| f)
    }

    /// The awaited stage answered (with a receipt the shell found valid for it).
    pub fn on_result(&mut self, output: StageResult, receipt: Receipt) -> Vec<Action> {
        let Some((hop, forward)) = self.awaiting.take() else {
            return Vec::new();
        };
        self.receipts.push(receipt);
        let layers = self.route[hop].layers;
        // Still rebuilding the hop's cache: send it the next input it owes.
        if let Some(queue) = self.replay.get_mut(&layers)
            && let Some(next) = queue.pop_front()
        {
            if queue.is_empty() {
                self.replay.remove(&layers);
            }
            self.awaiting = Some((hop, next.clone()));
            return vec![Action::Send {
                peer: self.route[hop].peer_id,
                forward: next,
            }];
        }
        let next_pos = forward.pos + forward.input.rows() as u32;
        match output {
            StageResult::Hidden(data) if hop + 1 < self.route.len() => {
                self.send(hop + 1, data, forward.pos)
            }
            StageResult::Next { token, .. } if hop + 1 == self.route.len() => {
                self.generated.push(token);
                let mut actions = vec![Action::Token(token)];
                let input_end = self.prompt_len + self.generated.len() - 1;
                if token == self.eos
                    || self.generated.len() >= self.max_tokens
                    || input_end + 1 >= self.context
                {
                    actions.push(self.finish(None));
                    return actions;
                }
                self.step += 1;
                actions.extend(self.send(0, StageData::Tokens(vec![token]), next_pos));
                actions
            }
            _ => vec![self.finish(Some(format!(
                "stage {}..{} answered with the wrong kind of output",
                layers.0, layers.1
            )))],
        }
    }

    /// `peer` failed (no answer, a refused step, a receipt that does not check, or it left the
    /// swarm): give its ranges to others from `candidates` and go on.
    pub fn on_failure(
        &mut self,
        peer: PeerId,
        reason: &str,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        if self.done || !self.route.iter().any(|h| h.peer_id == peer) {
            return Vec::new();
        }
        self.failed.insert(peer);
        let awaited = self
            .awaiting
            .as_ref()
            .map(|(hop, _)| *hop)
            .filter(|&hop| self.route[hop].peer_id == peer);
        let usable: Vec<Candidate> = candidates
            .iter()
            .filter(|c| !self.failed.contains(&c.peer))
            .cloned()
            .collect();
        for hop in 0..self.route.len() {
            if self.route[hop].peer_id != peer {
                continue;
            }
            let layers = self.route[hop].layers;
            let Some(new) = replacement(&self.route, &usable) else {
                return vec![self.finish(Some(format!(
                    "no route: peer {peer} failed ({reason}) and no other online peer holds layers {}..{} of model {}",
                    layers.0, layers.1, self.model
                )))];
            };
            self.reroutes.push(Reroute {
                step: self.step,
                failed_peer: peer,
                layers,
                replacement: new,
                reason: reason.to_string(),
            });
            self.route[hop].peer_id = new;
            // The new peer must see everything the range has seen, in the same chunks; the input
            // of the step in flight at this hop is sent again after them.
            let mut owed: VecDeque<Forward> = self
                .history
                .get(&layers)
                .cloned()
                .unwrap_or_default()
                .into();
            if awaited == Some(hop) {
                owed.pop_back();
            }
            if owed.is_empty() {
                self.replay.remove(&layers);
            } else {
                self.replay.insert(layers, owed);
            }
        }
        match awaited {
            Some(hop) => {
                self.awaiting = None;
                let layers = self.route[hop].layers;
                let current = self
                    .history
                    .get(&layers)
                    .and_then(|h| h.last())
                    .cloned()
                    .expect("an awaited hop has an input in its history");
                self.dispatch(hop, current)
            }
            None => Vec::new(),
        }
    }

    fn finish(&mut self, error: Option<String>) -> Action {
        self.done = true;
        self.awaiting = None;
        let mut peers: Vec<PeerId> = self.route.iter().map(|h| h.peer_id).collect();
        peers.extend(self.failed.iter().copied());
        peers.sort();
        peers.dedup();
        Action::Finished { error, peers }
    }
}
