//! Pipelined inference: the planner that cuts a model into a chain of stages, and the driver of one
//! generation session along that chain. Both are sans-IO: the driver returns [`Action`]s (give this
//! stage the route, send this step to that peer, fetch these inputs, emit this token) and is told
//! what came back; the shell does the sending.
//!
//! - **Planner.** From the online peers that hold the model, the `K` through which a token costs
//!   least (round trip and arithmetic), each given a contiguous layer range sized in proportion to
//!   its score, so the slowest stage sets the pace as little as possible. After a failure the
//!   missing range goes to the fastest peer not yet in the route, else to a survivor already in it
//!   (which then serves two ranges).
//! - **Driver, chained** ([`Driver::chained`], what the coordinator runs; see `chain`): the stages
//!   hand each step to each other and the driver takes one report per token, checks its chain of
//!   receipts, checks windows beside generation with inputs fetched from the stages, and restarts
//!   the session in a new epoch from its last good token after a failure or a failed check.
//! - **Driver, stepped** ([`Driver::sampled`], what the simulator runs): the driver sends every
//!   step to every stage itself, one request in flight at a time, keeping every input it sent to
//!   each layer range; when a stage's peer fails, the range's new peer is sent those inputs again in
//!   their original chunking, so its cache is bit for bit the one the failed peer had. Its checks,
//!   tie-breaks and verdicts are the ones the chained driver uses too.

mod chain;
mod glue;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use hearth_protocol::work::{
    ChainRoute, ChainStep, CheckRequest, Forward, Sampling, StageData, StageResult, floats,
};
use hearth_protocol::{Digest, ModelId, PeerId, Receipt, Subject};
use serde::Serialize;

pub use chain::{CHAIN_EARLY_MAX, CHAIN_STALLS_MAX};
pub use glue::{
    LayerShape, STEP_BUDGET_MS_MAX, STEP_COMPUTE_SLACK, STEP_GFLOPS_FLOOR, StepTimeouts,
    candidates, fetchers, stage_fault, step_budget_ms, weights_fault,
};

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
    /// Memory it has free for layers.
    pub memory_free_bytes: u64,
    /// The measured round trip to it, when known.
    pub rtt_ms: Option<f64>,
    /// What one layer of one token takes it, about (the model's arithmetic at its score); 0 when
    /// unknown.
    pub layer_ms: f64,
    /// It holds the model's file; one that does not fetches its range from those that do before
    /// it serves, so the planner takes holders first.
    pub holds: bool,
    /// What one layer of the model takes in memory, about (0: unknown), so a peer without room
    /// for a range is not asked to replay or take it, nor given it after a failure.
    pub layer_bytes: u64,
    /// Layer ranges of the model it holds in part (fetched before): the planner gives it one of
    /// them again rather than have it fetch another.
    pub held_layers: Vec<(u32, u32)>,
}

impl Candidate {
    /// A peer known by its score and memory only (no round trip, no time per layer yet).
    pub fn new(peer: PeerId, score: f64, memory_free_bytes: u64) -> Self {
        Self {
            peer,
            score,
            memory_free_bytes,
            rtt_ms: None,
            layer_ms: 0.0,
            holds: true,
            layer_bytes: 0,
            held_layers: Vec::new(),
        }
    }

    /// Whether it has the memory for `layers` (always, when the size of a layer is unknown).
    pub fn fits(&self, layers: (u32, u32)) -> bool {
        let n = u64::from(layers.1.saturating_sub(layers.0));
        self.memory_free_bytes >= self.layer_bytes.saturating_mul(n)
    }

    /// What a token costs through this peer serving `layers` layers: one round trip and their
    /// arithmetic.
    fn token_ms(&self, layers: f64) -> f64 {
        self.rtt_ms.unwrap_or(0.0) + layers * self.layer_ms
    }
}

/// What a model's ranges take in memory, about: each layer, and what the first stage (the token
/// embedding) and the last (the output norm and head) hold besides their layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// One layer.
    pub layer_bytes: u64,
    /// The first stage's own tensors.
    pub first_bytes: u64,
    /// The last stage's own tensors (the embedding again when the head is tied to it).
    pub last_bytes: u64,
}

impl Footprint {
    /// Every layer alike and nothing else (the model's file over its layers, say).
    pub fn uniform(layer_bytes: u64) -> Self {
        Self {
            layer_bytes,
            ..Self::default()
        }
    }

    /// The most layers of `layers` that `memory` holds in a stage that is the first and/or last.
    fn room(&self, memory: u64, layers: u32, first: bool, last: bool) -> u32 {
        let own = match (first, last) {
            (true, true) => self.first_bytes.max(self.last_bytes),
            (true, false) => self.first_bytes,
            (false, true) => self.last_bytes,
            (false, false) => 0,
        };
        (memory.saturating_sub(own) / self.layer_bytes.max(1)).min(u64::from(layers)) as u32
    }
}

/// Cut `layers` layers into `stages` contiguous ranges over the candidates through which a token
/// costs least (holders of the model's file before peers that would fetch their range; then its
/// round trip plus its share of the arithmetic; the fastest by score when neither is known),
/// sized in proportion to score but never more layers than a peer's free memory holds at
/// `layer_bytes` each. Peers with room for none, or further than [`ROUTE_RTT_MAX_MS`], are
/// passed over.
pub fn plan(
    candidates: &[Candidate],
    layers: u32,
    stages: usize,
    layer_bytes: u64,
) -> Result<Vec<Hop>, String> {
    plan_within(candidates, layers, stages, &Footprint::uniform(layer_bytes))
}

/// [`plan`] with what each range takes in memory: the first stage holds the embedding and the
/// last the head besides their layers, so they get fewer layers for the same memory.
pub fn plan_within(
    candidates: &[Candidate],
    layers: u32,
    stages: usize,
    footprint: &Footprint,
) -> Result<Vec<Hop>, String> {
    if stages == 0 || stages as u32 > layers {
        return Err(format!("a route needs 1..={layers} stages, not {stages}"));
    }
    let room = |c: &Candidate| -> u32 { footprint.room(c.memory_free_bytes, layers, false, false) };
    let near = |c: &&Candidate| c.rtt_ms.is_none_or(|rtt| rtt <= ROUTE_RTT_MAX_MS);
    let holders = candidates.iter().filter(|c| room(c) > 0).count();
    let mut chosen: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| room(c) > 0)
        .filter(near)
        .collect();
    if chosen.len() < stages {
        let far = holders - chosen.len();
        let fetching = chosen.iter().filter(|c| !c.holds).count();
        return Err(format!(
            "{stages} stages asked, but only {} online peers hold the model{}{}",
            chosen.len(),
            if fetching > 0 {
                format!(" or can fetch a range of it ({fetching} of them)")
            } else {
                String::new()
            },
            if far > 0 {
                format!(" within {ROUTE_RTT_MAX_MS} ms ({far} more are further)")
            } else {
                String::new()
            }
        ));
    }
    let holders_with_room = chosen.iter().filter(|c| c.holds).count();
    if holders_with_room < stages
        && let Some(route) = reuse(&chosen, layers, stages, footprint)
    {
        return Ok(route);
    }
    let share = f64::from(layers) / stages as f64;
    chosen.sort_by(|a, b| {
        b.holds
            .cmp(&a.holds)
            .then(a.token_ms(share).total_cmp(&b.token_ms(share)))
            .then(b.score.total_cmp(&a.score))
            .then(a.peer.cmp(&b.peer))
    });
    chosen.truncate(stages);
    let last = chosen.len() - 1;
    let caps_of = |chosen: &[&Candidate]| -> Vec<u32> {
        chosen
            .iter()
            .enumerate()
            .map(|(i, c)| footprint.room(c.memory_free_bytes, layers, i == 0, i == last))
            .collect()
    };
    let mut caps = caps_of(&chosen);
    if caps.contains(&0) {
        // A peer with room for layers but not for the embedding or head beside them: the two
        // with the most memory take the ends.
        let mut by_memory: Vec<usize> = (0..chosen.len()).collect();
        by_memory.sort_by_key(|&i| std::cmp::Reverse(chosen[i].memory_free_bytes));
        let mut order: Vec<&Candidate> = Vec::with_capacity(chosen.len());
        order.push(chosen[by_memory[0]]);
        order.extend(by_memory.iter().skip(2).map(|&i| chosen[i]));
        if let Some(&second) = by_memory.get(1) {
            order.push(chosen[second]);
        }
        chosen = order;
        caps = caps_of(&chosen);
        if caps.contains(&0) {
            return Err(format!(
                "the {stages} fastest peers lack the memory for the first and last stages (the model's embedding and head take {} and {} bytes besides their layers)",
                footprint.first_bytes, footprint.last_bytes
            ));
        }
    }
    let capacity: u32 = caps.iter().sum();
    if capacity < layers {
        return Err(format!(
            "the {stages} fastest peers have free memory for {capacity} of the model's {layers} layers"
        ));
    }
    // Sizes proportional to score (largest remainder), at least one layer each, within memory.
    let total: f64 = chosen.iter().map(|c| c.score.max(1e-9)).sum();
    let exact: Vec<f64> = chosen
        .iter()
        .map(|c| c.score.max(1e-9) / total * f64::from(layers))
        .collect();
    let mut sizes: Vec<u32> = exact
        .iter()
        .zip(&caps)
        .map(|(x, cap)| (x.floor() as u32).clamp(1, *cap))
        .collect();
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
            .filter(|&i| sizes[i] < caps[i])
            .max_by(|&a, &b| {
                (exact[a] - f64::from(sizes[a])).total_cmp(&(exact[b] - f64::from(sizes[b])))
            })
            .expect("the memory caps add up to the layers");
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

/// A route that gives peers holding ranges of the model in part (fetched before) those ranges
/// again, and each gap between them to one other peer with the memory for it (a holder of the
/// file first, then the cheapest): `None` unless that makes exactly `stages` stages.
fn reuse(
    pool: &[&Candidate],
    layers: u32,
    stages: usize,
    footprint: &Footprint,
) -> Option<Vec<Hop>> {
    let fits = |c: &Candidate, r: (u32, u32)| -> bool {
        let room = footprint.room(c.memory_free_bytes, layers, r.0 == 0, r.1 == layers);
        r.1 - r.0 <= room
    };
    let mut held: Vec<((u32, u32), &Candidate)> = pool
        .iter()
        .filter(|c| !c.holds)
        .flat_map(|c| c.held_layers.iter().map(move |r| (*r, *c)))
        .filter(|(r, c)| r.0 < r.1 && r.1 <= layers && fits(c, *r))
        .collect();
    // Earliest first, longest first among those, then by peer for a stable choice.
    held.sort_by(|a, b| {
        a.0.0
            .cmp(&b.0.0)
            .then(b.0.1.cmp(&a.0.1))
            .then(a.1.peer.cmp(&b.1.peer))
    });
    let mut picked: Vec<Hop> = Vec::new();
    for (r, c) in held {
        let free = picked
            .iter()
            .all(|h| h.peer_id != c.peer && (r.1 <= h.layers.0 || h.layers.1 <= r.0));
        if free {
            picked.push(Hop {
                peer_id: c.peer,
                layers: r,
            });
        }
    }
    if picked.is_empty() {
        return None;
    }
    picked.sort_by_key(|h| h.layers.0);
    let mut gaps = Vec::new();
    let mut at = 0;
    for h in &picked {
        if h.layers.0 > at {
            gaps.push((at, h.layers.0));
        }
        at = h.layers.1;
    }
    if at < layers {
        gaps.push((at, layers));
    }
    if picked.len() + gaps.len() != stages {
        return None;
    }
    let mut route = picked;
    for gap in gaps {
        let share = f64::from(gap.1 - gap.0);
        let peer = pool
            .iter()
            .filter(|c| !route.iter().any(|h| h.peer_id == c.peer) && fits(c, gap))
            .min_by(|a, b| {
                b.holds
                    .cmp(&a.holds)
                    .then(a.token_ms(share).total_cmp(&b.token_ms(share)))
                    .then(b.score.total_cmp(&a.score))
                    .then(a.peer.cmp(&b.peer))
            })?;
        route.push(Hop {
            peer_id: peer.peer,
            layers: gap,
        });
    }
    route.sort_by_key(|h| h.layers.0);
    Some(route)
}

/// Peers further than this (measured round trip) are left out of routes: each token crosses
/// every stage, so one far peer slows every token of the session.
pub const ROUTE_RTT_MAX_MS: f64 = 500.0;

/// A peer for the range a failed peer served: the fastest candidate not in `route`, else the
/// fastest survivor in it (peers further than [`ROUTE_RTT_MAX_MS`] only when no other is left).
pub fn replacement(route: &[Hop], candidates: &[Candidate]) -> Option<PeerId> {
    let in_route: BTreeSet<PeerId> = route.iter().map(|h| h.peer_id).collect();
    let best = |pool: &mut dyn Iterator<Item = &Candidate>| {
        pool.max_by(|a, b| {
            let near = |c: &Candidate| c.rtt_ms.is_none_or(|rtt| rtt <= ROUTE_RTT_MAX_MS);
            near(a)
                .cmp(&near(b))
                .then(a.score.total_cmp(&b.score))
                .then(b.peer.cmp(&a.peer))
        })
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

/// How a session's stages are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// Every window is checked before its tokens are released.
    Window,
    /// A random share ([`SAMPLED_SHARE`]) of windows is checked before release; the rest are released
    /// unchecked.
    Sampled,
    /// Tokens are released at once; every window is checked at the end, and a correction reported.
    After,
    /// No checks.
    Off,
}

/// Share of windows `--verify sampled` checks.
pub const SAMPLED_SHARE: f64 = 0.25;

/// Steps (generated tokens; the prompt's prefill is the first) per verification window.
pub const VERIFY_WINDOW_TOKENS: u64 = 8;

/// Largest difference between a stage's hidden states and a verifier's replay of them that still
/// agrees, relative to the row's largest magnitude (at least 1). A replay runs a window as one
/// prefill where the stage ran it token by token. Hearth's CPU kernels are batch-invariant and the
/// same on every instruction set, so two CPU peers agree bit for bit (max_difference 0); the margin
/// is for peers of different classes (a GPU beside CPUs, or a model the CPU kernels do not run,
/// which falls back to candle), whose rounding differs. Between peers whose receipts name the same
/// batch-invariant numeric class ([`Driver::compare_exactly`]) no margin is given: they must agree
/// bit for bit, or a stage could nudge every activation by just under the margin and steer the
/// tokens unseen (the simulator's lying middle stage showed it). Between GPU peers, whose kernels
/// give other bits for a prefill than token by token, the margin remains, and so does that risk.
pub const HIDDEN_REL_TOLERANCE: f32 = 0.02;

/// A last stage's token agrees with a verifier's replay when it is the verifier's top token, or
/// within this many logits of it (a near tie that the replay's rounding can flip).
pub const TOKEN_LOGIT_MARGIN: f32 = 0.5;

/// The verdict of one window's check of one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowOutcome {
    /// The verifier's replay agreed with the stage.
    Agreed,
    /// The replay disagreed and the tie-breaker sided with the verifier: the stage lied or broke.
    StageWrong,
    /// The replay disagreed and the tie-breaker sided with the stage: the verifier lied or broke.
    VerifierWrong,
    /// The replay disagreed and no tie-breaker could settle it.
    Undecided,
    /// No peer could check it (or `sampled` left it out).
    Unchecked,
}

/// What one window's check of one stage found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowCheck {
    /// Steps `[start, end)` of the window.
    pub steps: (u64, u64),
    /// The stage's layers.
    pub layers: (u32, u32),
    /// The stage's peer.
    pub stage_peer: PeerId,
    /// Who replayed the window.
    pub verifier: Option<PeerId>,
    /// Who broke a tie, if the verifier disagreed.
    pub tie_breaker: Option<PeerId>,
    /// What the check found.
    pub outcome: WindowOutcome,
    /// The largest relative difference seen (hidden states) or logit gap (tokens).
    pub max_difference: f32,
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
    /// Give `peer` a chained session's route for an epoch; answer with
    /// [`Driver::on_route_ack`].
    Route {
        /// A stage's peer.
        peer: PeerId,
        /// The route.
        route: ChainRoute,
    },
    /// Send a chained session's step to its first stage (the stages take it from there).
    Chain {
        /// The first stage's peer.
        peer: PeerId,
        /// The step.
        step: Box<ChainStep>,
    },
    /// Ask `peer` to check a chained session's stage ([`CheckRequest`]; the shell fills in the
    /// source's addresses and signs its grant); answer with [`Driver::on_checked`], or
    /// [`Driver::on_check_refused`] when the verifier could not get the inputs.
    Check {
        /// The verifier.
        peer: PeerId,
        /// What it checks.
        check: Box<CheckRequest>,
    },
    /// Fetch from a chained session's stage (`peer`, serving `layers`) the inputs it kept for
    /// steps `steps.0..steps.1`; answer with [`Driver::on_kept`].
    Fetch {
        /// The stage's peer.
        peer: PeerId,
        /// Its layers.
        layers: (u32, u32),
        /// The steps.
        steps: (u64, u64),
    },
    /// A token is released to the client.
    Token(u32),
    /// Tokens from this index on, already released, were wrong and are being generated again.
    Correction(usize),
    /// `peer` returned wrong results: a strike in the ledger.
    Fault {
        /// The peer.
        peer: PeerId,
        /// What it did.
        reason: String,
    },
    /// The session is over (`error` when it could not finish); free these peers' caches.
    Finished {
        /// Why it stopped early, if it did.
        error: Option<String>,
        /// Every peer that served a stage or checked one.
        peers: Vec<PeerId>,
    },
}

#[derive(Clone, Debug)]
enum Purpose {
    /// A generation step (or a replay owed to the hop's peer).
    Step,
    /// A verifier's replay of a window; `tie` when it is the tie-break after a disagreement.
    Check {
        window: (u64, u64),
        /// First step the replay covers (0 when the verifier starts afresh).
        from: u64,
        /// For a tie-break: the first verifier, its replay's first step and its output.
        first: Option<Box<(PeerId, u64, StageResult)>>,
    },
    /// A verifier's check by digests ([`Action::Check`], chained sessions): it fetched the
    /// stage's inputs itself and answers each step's output digest.
    Digests {
        window: (u64, u64),
        /// The first step the replay covers.
        first_step: u64,
        /// What it was asked.
        check: Box<CheckRequest>,
        /// For a tie-break: the first verifier, its replay's first step and its digests.
        first: Option<Box<(PeerId, u64, Vec<Digest>)>>,
    },
}

impl Purpose {
    /// The window a check is of (`None` for a generation step).
    fn window(&self) -> Option<(u64, u64)> {
        match self {
            Self::Step => None,
            Self::Check { window, .. } | Self::Digests { window, .. } => Some(*window),
        }
    }
}

/// What a tie-breaker is asked to compare with, after a verifier disagreed with a stage.
enum Tie {
    /// The verifier's replay covering steps from the first.
    Replay(u64, StageResult),
    /// The verifier's output digests from a step on.
    Digests(u64, Vec<Digest>),
}

#[derive(Clone, Debug)]
struct Pending {
    hop: usize,
    peer: PeerId,
    forward: Forward,
    purpose: Purpose,
}

/// One generation session along a route.
#[derive(Debug)]
pub struct Driver {
    session: u64,
    model: ModelId,
    route: Vec<Hop>,
    prompt: Vec<u32>,
    max_tokens: usize,
    /// The model's ends of generation.
    ends: Vec<u32>,
    context: usize,
    verify: Verify,
    /// How the last stage picks tokens (greedy when `None`).
    sampling: Option<Sampling>,
    rng: u64,
    /// Generated tokens.
    pub generated: Vec<u32>,
    /// Tokens released to the client.
    released: usize,
    /// The step in flight (0: the prompt).
    step: u64,
    awaiting: Option<Pending>,
    /// Every input sent to each layer range, in order, for replays and checks.
    history: BTreeMap<(u32, u32), Vec<Forward>>,
    /// Each range's output per step.
    outputs: BTreeMap<((u32, u32), u64), StageResult>,
    /// Inputs a range's peer must see again before the next one.
    replay: BTreeMap<(u32, u32), VecDeque<Forward>>,
    /// Steps below this are checked (or released unchecked by `sampled`).
    verified: u64,
    /// Steps whose windows a verifier actually checked.
    pub verified_steps: u64,
    /// Per range, the verifier whose cache holds the range's inputs up to a step.
    verifiers: BTreeMap<(u32, u32), (PeerId, u64)>,
    /// Generation reached its end; finish once checked.
    finishing: bool,
    /// Peers that failed or lied this session.
    failed: BTreeSet<PeerId>,
    /// Every receipt, stages' and verifiers', in the order answers came.
    pub receipts: Vec<Receipt>,
    /// Each peer's numeric class, as its receipts name it.
    classes: BTreeMap<PeerId, String>,
    /// Classes whose peers must agree bit for bit ([`Self::compare_exactly`]).
    exact: BTreeSet<String>,
    /// Stages replaced.
    pub reroutes: Vec<Reroute>,
    /// Every window check.
    pub checks: Vec<WindowCheck>,
    /// Released tokens later corrected: (from index, the tokens that were wrong).
    pub corrections: Vec<(usize, Vec<u32>)>,
    done: bool,
    /// Set when the stages forward to each other ([`Driver::chained`]).
    chain: Option<chain::Chained>,
}

/// One step's output in a window, for comparing a stage with its verifiers.
#[derive(Clone, Debug)]
enum View {
    /// Hidden states: the step's rows, flattened.
    Rows(usize, Vec<f32>),
    /// The last stage's token for the step, with the logits around it.
    Token(u32, Vec<(u32, f32)>),
}

/// Bit marking the session id verifiers replay a session's windows under (their caches stay apart
/// from the session's own on a peer that serves both).
const CHECK_SESSION_BIT: u64 = 1 << 62;

/// The session id verifiers replay `session`'s windows under.
pub fn check_session(session: u64) -> u64 {
    session | CHECK_SESSION_BIT
}

/// The session a (possibly verifier's) session id belongs to.
pub fn session_of(id: u64) -> u64 {
    id & !CHECK_SESSION_BIT
}

impl Driver {
    /// A session generating up to `max_tokens` after `prompt` along `route`, checked as `verify`.
    ///
    /// `seed` drives the driver's own choices (which windows `sampled` checks, which peers verify):
    /// the caller draws it where no peer can see it (the coordinator keys it from the secret seed in
    /// its journal), never from anything in the session's messages.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        session: u64,
        model: ModelId,
        route: Vec<Hop>,
        prompt: Vec<u32>,
        max_tokens: usize,
        ends: Vec<u32>,
        context: usize,
        verify: Verify,
        seed: u64,
    ) -> (Self, Vec<Action>) {
        Self::sampled(
            session, model, route, prompt, max_tokens, ends, context, verify, None, seed,
        )
    }

    /// [`Self::new`], the last stage drawing tokens with `sampling`: seeded by the request, so stages
    /// and verifiers draw the same tokens (that seed is the client's and public; `seed` is not).
    #[allow(clippy::too_many_arguments)]
    pub fn sampled(
        session: u64,
        model: ModelId,
        route: Vec<Hop>,
        prompt: Vec<u32>,
        max_tokens: usize,
        ends: Vec<u32>,
        context: usize,
        verify: Verify,
        sampling: Option<Sampling>,
        seed: u64,
    ) -> (Self, Vec<Action>) {
        let mut driver = Self {
            sampling,
            session,
            model,
            route,
            prompt: prompt.clone(),
            max_tokens,
            ends,
            context,
            verify,
            // xorshift64 must not start at 0.
            rng: seed | 1,
            generated: Vec::new(),
            released: 0,
            step: 0,
            awaiting: None,
            history: BTreeMap::new(),
            outputs: BTreeMap::new(),
            replay: BTreeMap::new(),
            verified: 0,
            verified_steps: 0,
            verifiers: BTreeMap::new(),
            finishing: false,
            failed: BTreeSet::new(),
            receipts: Vec::new(),
            classes: BTreeMap::new(),
            exact: BTreeSet::new(),
            reroutes: Vec::new(),
            checks: Vec::new(),
            corrections: Vec::new(),
            done: false,
            chain: None,
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
        self.awaiting.as_ref().map(|p| p.peer)
    }

    /// The request awaited now.
    pub fn pending(&self) -> Option<&Forward> {
        self.awaiting.as_ref().map(|p| &p.forward)
    }

    /// How the session is checked.
    pub fn verify_mode(&self) -> Verify {
        self.verify
    }

    fn draw(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A peer drawn uniformly from `pool`.
    fn pick_random(&mut self, pool: &[PeerId]) -> Option<PeerId> {
        if pool.is_empty() {
            return None;
        }
        let i = (self.draw() * pool.len() as f64) as usize;
        pool.get(i.min(pool.len() - 1)).copied()
    }

    /// A verifier drawn uniformly from `pool`, among its peers that serve no stage of the route
    /// when there are any: an idle peer's replay runs beside generation, where a stage's would
    /// hold up the steps queued behind it on that peer.
    fn pick_verifier(&mut self, pool: &[PeerId]) -> Option<PeerId> {
        let idle: Vec<PeerId> = pool
            .iter()
            .filter(|p| !self.route.iter().any(|h| h.peer_id == **p))
            .copied()
            .collect();
        if idle.is_empty() {
            self.pick_random(pool)
        } else {
            self.pick_random(&idle)
        }
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
            all_positions: false,
            sampling: self.sampling,
        };
        self.history
            .entry(layers)
            .or_default()
            .push(forward.clone());
        self.dispatch(hop, forward)
    }

    /// Send `forward` to `hop`, or first the inputs the hop's peer owes (the forward then goes last
    /// in that queue).
    fn dispatch(&mut self, hop: usize, forward: Forward) -> Vec<Action> {
        let layers = self.route[hop].layers;
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
        self.request(hop, self.route[hop].peer_id, next, Purpose::Step)
    }

    fn request(
        &mut self,
        hop: usize,
        peer: PeerId,
        forward: Forward,
        purpose: Purpose,
    ) -> Vec<Action> {
        self.awaiting = Some(Pending {
            hop,
            peer,
            forward: forward.clone(),
            purpose,
        });
        vec![Action::Send { peer, forward }]
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

    /// The awaited peer answered (with a receipt the shell found valid for it).
    pub fn on_result(
        &mut self,
        output: StageResult,
        receipt: Receipt,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        let Some(pending) = self.awaiting.take() else {
            return Vec::new();
        };
        self.classes
            .insert(pending.peer, receipt.body.numeric_class.clone());
        self.receipts.push(receipt);
        if let Purpose::Check { .. } = pending.purpose {
            return self.on_check(pending, output, candidates);
        }
        let hop = pending.hop;
        let forward = pending.forward;
        let layers = self.route[hop].layers;
        // Still rebuilding the hop's cache: send it the next input it owes.
        if let Some(queue) = self.replay.get_mut(&layers)
            && let Some(next) = queue.pop_front()
        {
            if queue.is_empty() {
                self.replay.remove(&layers);
            }
            return self.request(hop, self.route[hop].peer_id, next, Purpose::Step);
        }
        self.outputs.insert((layers, forward.step), output.clone());
        let next_pos = forward.pos + forward.input.rows() as u32;
        match output {
            StageResult::Hidden(data) if hop + 1 < self.route.len() => {
                self.send(hop + 1, data, forward.pos)
            }
            StageResult::Next { token, .. } if hop + 1 == self.route.len() => {
                self.generated.push(token);
                let mut actions = Vec::new();
                if matches!(self.verify, Verify::After | Verify::Off) {
                    actions.extend(self.release(self.generated.len()));
                }
                let end = self.ends.contains(&token)
                    || self.generated.len() >= self.max_tokens
                    || next_pos as usize + 1 >= self.context;
                let steps = self.step + 1;
                if end {
                    self.finishing = true;
                }
                let window_full = steps - self.verified >= VERIFY_WINDOW_TOKENS;
                let check_now = match self.verify {
                    Verify::Window | Verify::Sampled => window_full || end,
                    Verify::After => end,
                    Verify::Off => false,
                };
                if check_now && self.verified < steps {
                    actions.extend(self.next_check(candidates));
                    return actions;
                }
                if end {
                    actions.extend(self.release(self.generated.len()));
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

    fn release(&mut self, upto: usize) -> Vec<Action> {
        let upto = upto.min(self.generated.len());
        let tokens = self.generated[self.released.min(upto)..upto].to_vec();
        self.released = self.released.max(upto);
        tokens.into_iter().map(Action::Token).collect()
    }

    /// Steps whose outputs are in: the step in flight and those before it, or (a chained session,
    /// whose stages run ahead) every step reported.
    fn steps_done(&self) -> u64 {
        match self.chain {
            Some(_) => self.generated.len() as u64,
            None => self.step + 1,
        }
    }

    /// The window after the last checked step, and the hop to check next (from the first).
    fn next_window(&self) -> (u64, u64) {
        let steps = self.steps_done();
        (
            self.verified,
            steps.min(self.verified + VERIFY_WINDOW_TOKENS),
        )
    }

    /// Start checking the next window (hop 0), or skip it when `sampled` did not draw it.
    fn next_check(&mut self, candidates: &[Candidate]) -> Vec<Action> {
        let window = self.next_window();
        if self.verify == Verify::Sampled && self.draw() >= SAMPLED_SHARE {
            for hop in 0..self.route.len() {
                self.checks.push(WindowCheck {
                    steps: window,
                    layers: self.route[hop].layers,
                    stage_peer: self.route[hop].peer_id,
                    verifier: None,
                    tie_breaker: None,
                    outcome: WindowOutcome::Unchecked,
                    max_difference: 0.0,
                });
            }
            return self.window_done(window, false, candidates);
        }
        self.check_hop(window, 0, candidates)
    }

    /// Ask a verifier to replay `window` of hop `hop`'s range.
    fn check_hop(
        &mut self,
        window: (u64, u64),
        hop: usize,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        let layers = self.route[hop].layers;
        let stage = self.route[hop].peer_id;
        let usable = |p: &PeerId| *p != stage && !self.failed.contains(p);
        let kept = match self.verifiers.get(&layers) {
            Some((p, _)) if usable(p) && candidates.iter().any(|c| c.peer == *p) => Some(*p),
            _ => None,
        };
        let pool: Vec<PeerId> = candidates
            .iter()
            .filter(|c| usable(&c.peer) && c.fits(layers))
            .map(|c| c.peer)
            .collect();
        // Drawn at random, not the fastest: fast hardware must not buy the checker's seat.
        let verifier = kept.or_else(|| self.pick_verifier(&pool));
        let Some(verifier) = verifier else {
            self.checks.push(WindowCheck {
                steps: window,
                layers,
                stage_peer: stage,
                verifier: None,
                tie_breaker: None,
                outcome: WindowOutcome::Unchecked,
                max_difference: 0.0,
            });
            return self.hop_checked(window, hop, false, candidates);
        };
        let from = match self.verifiers.get(&layers) {
            Some((p, upto)) if *p == verifier && *upto == window.0 => window.0,
            _ => 0,
        };
        // A chained session's stage is checked by digests where they prove something; else its
        // inputs (and outputs) come from the stages that kept them, through the coordinator.
        if self.by_digests(window, hop) {
            return self.digest_check(window, hop, verifier, from, None, candidates);
        }
        if let Some(fetch) = self.chain_fetch(window, hop) {
            return vec![fetch];
        }
        let forward = self.replay_request(layers, from, window.1);
        self.request(
            hop,
            verifier,
            forward,
            Purpose::Check {
                window,
                from,
                first: None,
            },
        )
    }

    /// One request replaying steps `from..to` of a range as a single prefill.
    fn replay_request(&self, layers: (u32, u32), from: u64, to: u64) -> Forward {
        let inputs: Vec<&Forward> = self
            .history
            .get(&layers)
            .into_iter()
            .flatten()
            .filter(|f| f.step >= from && f.step < to)
            .collect();
        let pos = inputs.first().map_or(0, |f| f.pos);
        let input = match inputs.first().map(|f| &f.input) {
            Some(StageData::Tokens(_)) => StageData::Tokens(
                inputs
                    .iter()
                    .flat_map(|f| match &f.input {
                        StageData::Tokens(ids) => ids.clone(),
                        StageData::Hidden { .. } => Vec::new(),
                    })
                    .collect(),
            ),
            _ => {
                let mut rows = 0;
                let mut bytes = Vec::new();
                for f in &inputs {
                    if let StageData::Hidden { rows: r, bytes: b } = &f.input {
                        rows += r;
                        bytes.extend_from_slice(b);
                    }
                }
                StageData::Hidden { rows, bytes }
            }
        };
        Forward {
            session: check_session(self.session),
            step: to.saturating_sub(1),
            model: self.model,
            layers,
            pos,
            input,
            all_positions: true,
            sampling: self.sampling,
        }
    }

    /// The outputs of `window`'s steps, one [`View`] per step: from the stage's record (`replay`
    /// `None`), or cut out of a replay covering steps `from..` (`replay` its output).
    fn views(
        &self,
        layers: (u32, u32),
        window: (u64, u64),
        replay: Option<(u64, &StageResult)>,
    ) -> Option<Vec<View>> {
        let from = replay.map_or(window.0, |(from, _)| from);
        let inputs: Vec<&Forward> = self
            .history
            .get(&layers)
            .into_iter()
            .flatten()
            .filter(|f| f.step >= from && f.step < window.1)
            .collect();
        let mut row = 0usize;
        let mut views = Vec::new();
        for f in inputs {
            let rows = f.input.rows();
            if f.step >= window.0 {
                let view = match replay {
                    None => match self.outputs.get(&(layers, f.step))? {
                        StageResult::Hidden(StageData::Hidden { bytes, .. }) => {
                            View::Rows(rows, floats(bytes))
                        }
                        StageResult::Next { token, top } => View::Token(*token, top.clone()),
                        _ => return None,
                    },
                    Some((_, StageResult::Hidden(StageData::Hidden { rows: all, bytes }))) => {
                        let width = bytes.len() / 4 / (*all as usize).max(1);
                        let part = bytes.get(row * width * 4..(row + rows) * width * 4)?;
                        View::Rows(rows, floats(part))
                    }
                    Some((_, StageResult::NextEach(each))) => {
                        let (token, top) = each.get(row + rows - 1)?;
                        View::Token(*token, top.clone())
                    }
                    Some(_) => return None,
                };
                views.push(view);
            }
            row += rows;
        }
        Some(views)
    }

    /// Hold peers whose receipts name one of `classes` to bit-identical replays among themselves:
    /// the classes whose kernels promise the same bits however a window is batched (Hearth's CPU
    /// kernels do; candle's do not). Others are compared within [`HIDDEN_REL_TOLERANCE`].
    pub fn compare_exactly(&mut self, classes: impl IntoIterator<Item = String>) {
        self.exact.extend(classes);
    }

    /// Whether `a` and `b` must agree exactly: their receipts named the same class, one of those
    /// given to [`Self::compare_exactly`].
    fn same_class(&self, a: &PeerId, b: &PeerId) -> bool {
        matches!((self.classes.get(a), self.classes.get(b)),
            (Some(x), Some(y)) if x == y && self.exact.contains(x))
    }

    /// How far two sets of views are apart (the largest relative difference or logit gap), or
    /// `None` if they disagree. A near tie is judged by `b`'s logits only, unless `both_replays`:
    /// a stage's own claimed logits (`a`) prove nothing about its token. `exact` (two peers of
    /// one numeric class): any difference at all is a disagreement.
    fn agree(a: &[View], b: &[View], both_replays: bool, exact: bool) -> Option<f32> {
        if a.len() != b.len() {
            return None;
        }
        if exact {
            let same = a.iter().zip(b).all(|(x, y)| match (x, y) {
                (View::Rows(r, xs), View::Rows(s, ys)) => {
                    r == s
                        && xs.len() == ys.len()
                        && xs.iter().zip(ys).all(|(p, q)| p.to_bits() == q.to_bits())
                }
                (View::Token(ta, _), View::Token(tb, _)) => ta == tb,
                _ => false,
            });
            return same.then_some(0.0);
        }
        let mut worst = 0f32;
        for (x, y) in a.iter().zip(b) {
            match (x, y) {
                (View::Rows(rows, xs), View::Rows(_, ys)) => {
                    if xs.len() != ys.len() || *rows == 0 {
                        return None;
                    }
                    let width = xs.len() / rows;
                    for (ra, rb) in xs.chunks(width.max(1)).zip(ys.chunks(width.max(1))) {
                        let scale = rb.iter().fold(1f32, |m, v| m.max(v.abs()));
                        let diff = ra
                            .iter()
                            .zip(rb)
                            .fold(0f32, |m, (p, q)| m.max((p - q).abs()))
                            / scale;
                        if diff.is_nan() || diff > HIDDEN_REL_TOLERANCE {
                            return None;
                        }
                        worst = worst.max(diff);
                    }
                }
                (View::Token(ta, top_a), View::Token(tb, top_b)) => {
                    if ta != tb {
                        // A near tie either way round.
                        let gap = |t: &u32, top: &[(u32, f32)]| {
                            let max = top.first()?.1;
                            top.iter().find(|(id, _)| id == t).map(|(_, l)| max - l)
                        };
                        let g = gap(ta, top_b)
                            .or_else(|| both_replays.then(|| gap(tb, top_a)).flatten())?;
                        if g.is_nan() || g > TOKEN_LOGIT_MARGIN {
                            return None;
                        }
                        worst = worst.max(g);
                    }
                }
                _ => return None,
            }
        }
        Some(worst)
    }

    /// How far a replay's `output` (covering steps `from..`) is from the stage's outputs for the
    /// steps of `window`: the largest difference, or `None` if it disagrees.
    fn compare(
        &self,
        layers: (u32, u32),
        from: u64,
        window: (u64, u64),
        output: &StageResult,
        exact: bool,
    ) -> Option<f32> {
        let stage = self.views(layers, window, None)?;
        let replay = self.views(layers, window, Some((from, output)))?;
        Self::agree(&stage, &replay, false, exact)
    }

    /// A verifier's (or tie-breaker's) answer.
    fn on_check(
        &mut self,
        pending: Pending,
        output: StageResult,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        let Purpose::Check {
            window,
            from,
            first,
        } = pending.purpose
        else {
            return Vec::new();
        };
        let hop = pending.hop;
        let layers = self.route[hop].layers;
        let stage = self.route[hop].peer_id;
        let exact = self.same_class(&stage, &pending.peer);
        let verdict = self.compare(layers, from, window, &output, exact);
        let replays_agree = first.as_ref().is_some_and(|first| {
            let (_, verifier_from, verifier_output) = &**first;
            // The tie-breaker and the first verifier, two replays, held to each other.
            let exact = self.same_class(&first.0, &pending.peer);
            self.views(layers, window, Some((*verifier_from, verifier_output)))
                .zip(self.views(layers, window, Some((from, &output))))
                .and_then(|(a, b)| Self::agree(&a, &b, true, exact))
                .is_some()
        });
        let first = first.map(|f| f.0);
        self.settle(
            window,
            hop,
            pending.peer,
            first,
            verdict,
            replays_agree,
            Tie::Replay(from, output),
            candidates,
        )
    }

    /// What a check found, whichever way it compared: `checker` (the verifier, or the tie-breaker
    /// after `first` disagreed) agreed with the stage (`verdict`, the largest difference) or not,
    /// and, for a tie-break, whether the two replays agreed with each other. A disagreement with
    /// no tie-break yet asks a third peer, to whom `tie` says what to compare with.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        window: (u64, u64),
        hop: usize,
        checker: PeerId,
        first: Option<PeerId>,
        verdict: Option<f32>,
        replays_agree: bool,
        tie: Tie,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        let layers = self.route[hop].layers;
        let stage = self.route[hop].peer_id;
        match (first, verdict) {
            (None, Some(diff)) => {
                self.checks.push(WindowCheck {
                    steps: window,
                    layers,
                    stage_peer: stage,
                    verifier: Some(checker),
                    tie_breaker: None,
                    outcome: WindowOutcome::Agreed,
                    max_difference: diff,
                });
                self.verifiers.insert(layers, (checker, window.1));
                self.hop_checked(window, hop, true, candidates)
            }
            (None, None) => {
                // Two peers disagree: a third decides.
                let verifier = checker;
                self.verifiers.remove(&layers);
                let pool: Vec<PeerId> = candidates
                    .iter()
                    .filter(|c| {
                        c.peer != stage
                            && c.peer != verifier
                            && !self.failed.contains(&c.peer)
                            && c.fits(layers)
                    })
                    .map(|c| c.peer)
                    .collect();
                match self.pick_verifier(&pool) {
                    Some(third) => match tie {
                        Tie::Replay(from, output) => {
                            let forward = self.replay_request(layers, 0, window.1);
                            self.request(
                                hop,
                                third,
                                forward,
                                Purpose::Check {
                                    window,
                                    from: 0,
                                    first: Some(Box::new((verifier, from, output))),
                                },
                            )
                        }
                        Tie::Digests(first_step, outputs) => self.digest_check(
                            window,
                            hop,
                            third,
                            0,
                            Some(Box::new((verifier, first_step, outputs))),
                            candidates,
                        ),
                    },
                    None => {
                        self.checks.push(WindowCheck {
                            steps: window,
                            layers,
                            stage_peer: stage,
                            verifier: Some(verifier),
                            tie_breaker: None,
                            outcome: WindowOutcome::Undecided,
                            max_difference: f32::NAN,
                        });
                        // No majority to be had: distrust the stage without blaming it.
                        self.regenerate(
                            window,
                            hop,
                            stage,
                            "a verifier disagreed and no third peer could decide",
                            None,
                            candidates,
                        )
                    }
                }
            }
            (Some(verifier), Some(diff)) => {
                // The tie-breaker sides with the stage: the verifier lied.
                self.checks.push(WindowCheck {
                    steps: window,
                    layers,
                    stage_peer: stage,
                    verifier: Some(verifier),
                    tie_breaker: Some(checker),
                    outcome: WindowOutcome::VerifierWrong,
                    max_difference: diff,
                });
                self.failed.insert(verifier);
                self.verifiers.insert(layers, (checker, window.1));
                let mut actions = vec![Action::Fault {
                    peer: verifier,
                    reason: format!(
                        "its replay of layers {}..{} (steps {}..{}) disagreed with the stage and a tie-breaker",
                        layers.0, layers.1, window.0, window.1
                    ),
                }];
                actions.extend(self.hop_checked(window, hop, true, candidates));
                actions
            }
            (Some(verifier), None) => {
                // The tie-breaker disagrees with the stage; the stage is wrong only if the two
                // replays agree with each other (two against one).
                if !replays_agree {
                    self.checks.push(WindowCheck {
                        steps: window,
                        layers,
                        stage_peer: stage,
                        verifier: Some(verifier),
                        tie_breaker: Some(checker),
                        outcome: WindowOutcome::Undecided,
                        max_difference: f32::NAN,
                    });
                    // Three answers, no two alike: blame nobody, use none of them again here.
                    self.failed.insert(verifier);
                    self.failed.insert(checker);
                    return self.regenerate(
                        window,
                        hop,
                        stage,
                        "three peers gave three different answers",
                        None,
                        candidates,
                    );
                }
                self.checks.push(WindowCheck {
                    steps: window,
                    layers,
                    stage_peer: stage,
                    verifier: Some(verifier),
                    tie_breaker: Some(checker),
                    outcome: WindowOutcome::StageWrong,
                    max_difference: f32::NAN,
                });
                let reason = format!(
                    "its output for layers {}..{} (steps {}..{}) disagreed with two independent replays",
                    layers.0, layers.1, window.0, window.1
                );
                self.regenerate(
                    window,
                    hop,
                    stage,
                    &reason,
                    Some(reason.clone()),
                    candidates,
                )
            }
        }
    }

    /// Hop `hop` of `window` is settled: check the next hop, or close the window.
    fn hop_checked(
        &mut self,
        window: (u64, u64),
        hop: usize,
        checked: bool,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        if hop + 1 < self.route.len() {
            return self.check_hop(window, hop + 1, candidates);
        }
        self.window_done(window, checked, candidates)
    }

    fn window_done(
        &mut self,
        window: (u64, u64),
        checked: bool,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        self.verified = window.1;
        if checked {
            self.verified_steps += window.1 - window.0;
        }
        let mut actions = Vec::new();
        if matches!(self.verify, Verify::Window | Verify::Sampled) {
            actions.extend(self.release(window.1 as usize));
        }
        if self.chain.is_some() {
            // A checked window's outputs are needed no more (its inputs are, by a verifier that
            // replays from the start); the stages generate on their own; check the next window if
            // it is in.
            self.outputs.retain(|(_, step), _| *step >= window.1);
            actions.extend(self.chain_check(candidates));
            return actions;
        }
        let steps = self.step + 1;
        if self.verified < steps
            && (self.finishing || steps - self.verified >= VERIFY_WINDOW_TOKENS)
        {
            actions.extend(self.next_check(candidates));
            return actions;
        }
        if self.finishing {
            actions.extend(self.release(self.generated.len()));
            actions.push(self.finish(None));
            return actions;
        }
        // Generation goes on with the last token.
        let token = *self.generated.last().expect("a window holds a token");
        let pos = (self.prompt.len() + self.generated.len() - 1) as u32;
        self.step += 1;
        actions.extend(self.send(0, StageData::Tokens(vec![token]), pos));
        actions
    }

    /// Hop `hop`'s output in `window` was wrong: drop everything from the window's start, give the
    /// range to another peer, rebuild every stage's cache from the checked inputs, generate again.
    fn regenerate(
        &mut self,
        window: (u64, u64),
        hop: usize,
        stage: PeerId,
        reason: &str,
        fault: Option<String>,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(reason) = fault {
            actions.push(Action::Fault {
                peer: stage,
                reason,
            });
        }
        self.failed.insert(stage);
        let layers = self.route[hop].layers;
        let usable: Vec<Candidate> = candidates
            .iter()
            .filter(|c| !self.failed.contains(&c.peer) && c.fits(layers))
            .cloned()
            .collect();
        let Some(new) = replacement(&self.route, &usable) else {
            actions.push(self.finish(Some(format!(
                "no route: layers {}..{} need a peer other than {stage} ({reason})",
                layers.0, layers.1
            ))));
            return actions;
        };
        self.reroutes.push(Reroute {
            step: window.0,
            failed_peer: stage,
            layers,
            replacement: new,
            reason: reason.to_string(),
        });
        for h in self.route.iter_mut().filter(|h| h.peer_id == stage) {
            h.peer_id = new;
        }
        // Back to the last checked point.
        let keep = window.0;
        if self.released > keep as usize {
            self.corrections.push((
                keep as usize,
                self.generated[keep as usize..self.released].to_vec(),
            ));
            actions.push(Action::Correction(keep as usize));
            self.released = keep as usize;
        }
        self.generated.truncate(keep as usize);
        if self.chain.is_some() {
            // A new epoch from the last checked token on the new route.
            self.finishing = false;
            actions.extend(self.chain_restart());
            return actions;
        }
        self.outputs.retain(|(_, step), _| *step < keep);
        self.verifiers.clear();
        self.replay.clear();
        for (range, inputs) in self.history.iter_mut() {
            inputs.retain(|f| f.step < keep);
            if !inputs.is_empty() {
                self.replay.insert(*range, inputs.iter().cloned().collect());
            }
        }
        self.finishing = false;
        self.step = keep;
        let (input, pos) = if keep == 0 {
            (StageData::Tokens(self.prompt.clone()), 0)
        } else {
            let token = self.generated[keep as usize - 1];
            (
                StageData::Tokens(vec![token]),
                (self.prompt.len() + keep as usize - 1) as u32,
            )
        };
        actions.extend(self.send(0, input, pos));
        actions
    }

    /// `peer` failed (no answer, a refused step, a receipt that does not check, or it left the
    /// swarm): give its ranges to others from `candidates` and go on.
    pub fn on_failure(
        &mut self,
        peer: PeerId,
        reason: &str,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        if self.done {
            return Vec::new();
        }
        if self.chain.is_some() {
            return self.chain_failure(peer, reason, candidates);
        }
        let awaited = self.awaiting.clone().filter(|p| p.peer == peer);
        // A verifier that fails: check the window again with another.
        if let Some((window, hop)) = awaited
            .as_ref()
            .and_then(|p| p.purpose.window().map(|w| (w, p.hop)))
        {
            self.failed.insert(peer);
            self.awaiting = None;
            self.verifiers.retain(|_, (p, _)| *p != peer);
            return self.check_hop(window, hop, candidates);
        }
        if !self.route.iter().any(|h| h.peer_id == peer) {
            self.failed.insert(peer);
            self.verifiers.retain(|_, (p, _)| *p != peer);
            return Vec::new();
        }
        self.verifiers.retain(|_, (p, _)| *p != peer);
        let awaited_hop = awaited.map(|p| p.hop);
        let replaced = match self.replace(peer, reason, candidates, self.step) {
            Ok(hops) => hops,
            Err(why) => return vec![self.finish(Some(why))],
        };
        for hop in replaced {
            let layers = self.route[hop].layers;
            // The new peer must see everything the range has seen, in the same chunks; the input
            // of the step in flight at this hop is sent again after them.
            let mut owed: VecDeque<Forward> = self
                .history
                .get(&layers)
                .cloned()
                .unwrap_or_default()
                .into();
            if awaited_hop == Some(hop) {
                owed.pop_back();
            }
            if owed.is_empty() {
                self.replay.remove(&layers);
            } else {
                self.replay.insert(layers, owed);
            }
        }
        match awaited_hop {
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

    /// `peer` failed: each range it served goes to a replacement (recorded as a reroute at
    /// `step`). The hops replaced, or why the session cannot go on (no peer is left to take one).
    fn replace(
        &mut self,
        peer: PeerId,
        reason: &str,
        candidates: &[Candidate],
        step: u64,
    ) -> Result<Vec<usize>, String> {
        self.failed.insert(peer);
        let usable: Vec<Candidate> = candidates
            .iter()
            .filter(|c| !self.failed.contains(&c.peer))
            .cloned()
            .collect();
        let mut replaced = Vec::new();
        for hop in 0..self.route.len() {
            if self.route[hop].peer_id != peer {
                continue;
            }
            let layers = self.route[hop].layers;
            let fit: Vec<Candidate> = usable.iter().filter(|c| c.fits(layers)).cloned().collect();
            let Some(new) = replacement(&self.route, &fit) else {
                return Err(format!(
                    "no route: peer {peer} failed ({reason}) and no other online peer holds layers {}..{} of model {}",
                    layers.0, layers.1, self.model
                ));
            };
            self.reroutes.push(Reroute {
                step,
                failed_peer: peer,
                layers,
                replacement: new,
                reason: reason.to_string(),
            });
            self.route[hop].peer_id = new;
            replaced.push(hop);
        }
        Ok(replaced)
    }

    /// Every peer that holds state of this session: its stages, the peers it left, the
    /// verifiers that replayed its windows (or are replaying one now).
    pub fn peers(&self) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = self.route.iter().map(|h| h.peer_id).collect();
        peers.extend(self.failed.iter().copied());
        peers.extend(self.checks.iter().filter_map(|c| c.verifier));
        peers.extend(self.checks.iter().filter_map(|c| c.tie_breaker));
        peers.extend(self.verifiers.values().map(|(p, _)| *p));
        peers.extend(self.awaiting.as_ref().map(|p| p.peer));
        peers.sort();
        peers.dedup();
        peers
    }

    /// End the session now (its client went away): what is in flight is abandoned, and every peer
    /// that holds its state is to be told.
    pub fn cancel(&mut self, reason: &str) -> Action {
        self.finish(Some(reason.into()))
    }

    fn finish(&mut self, error: Option<String>) -> Action {
        let peers = self.peers();
        self.done = true;
        self.awaiting = None;
        Action::Finished { error, peers }
    }
}

#[cfg(test)]
mod tests {
    use hearth_protocol::SecretKey;

    use super::*;

    fn candidate(n: u8, score: f64, memory_free_bytes: u64) -> Candidate {
        Candidate::new(
            SecretKey::from_bytes(&[n; 32]).public().peer_id(),
            score,
            memory_free_bytes,
        )
    }

    const GIB: u64 = 1 << 30;

    fn sizes(route: &[Hop]) -> Vec<u32> {
        route.iter().map(|h| h.layers.1 - h.layers.0).collect()
    }

    #[test]
    fn peers_get_the_ranges_they_hold_in_part_again_and_the_gaps_go_to_others() {
        let mb = 1_000_000;
        let footprint = Footprint {
            layer_bytes: 22 * mb / 10,
            first_bytes: 30 * mb,
            last_bytes: 30 * mb,
        };
        let fetcher = |n: u8, held: &[(u32, u32)]| Candidate {
            holds: false,
            held_layers: held.to_vec(),
            ..candidate(n, 10.0 + f64::from(n), 54 * mb)
        };
        // Two hold the first and last ranges from an earlier session; the third held none.
        let peers = vec![
            fetcher(1, &[(20, 30)]),
            fetcher(2, &[]),
            fetcher(3, &[(0, 10)]),
        ];
        let route = plan_within(&peers, 30, 3, &footprint).expect("route");
        let hops: Vec<(PeerId, (u32, u32))> = route.iter().map(|h| (h.peer_id, h.layers)).collect();
        assert_eq!(
            hops,
            vec![
                (peers[2].peer, (0, 10)),
                (peers[1].peer, (10, 20)),
                (peers[0].peer, (20, 30))
            ]
        );
        // Held ranges that do not make the stages asked: planned afresh.
        let route = plan_within(&peers, 30, 2, &footprint);
        assert!(route.is_err() || route.expect("route").len() == 2);
        // Whole holders with room are taken before any of it.
        let mut with_holders = peers.clone();
        with_holders.extend((4..=6).map(|n| candidate(n, 1.0, 54 * mb)));
        let route = plan_within(&with_holders, 30, 3, &footprint).expect("route");
        assert!(
            route
                .iter()
                .all(|h| with_holders[3..].iter().any(|c| c.peer == h.peer_id))
        );
    }

    #[test]
    fn the_ends_of_a_route_hold_the_embedding_and_head_within_memory() {
        // SmolLM2's shape, about: 30 layers of 2.2 MB, an embedding of 30 MB that the first stage
        // and (tied) the last both hold; three peers of 54 MB (55% of the file).
        let mb = 1_000_000;
        let footprint = Footprint {
            layer_bytes: 22 * mb / 10,
            first_bytes: 30 * mb,
            last_bytes: 30 * mb,
        };
        let peers: Vec<Candidate> = [14.0, 8.0, 8.0]
            .iter()
            .zip(1..)
            .map(|(score, n)| candidate(n, *score, 54 * mb))
            .collect();
        let route = plan_within(&peers, 30, 3, &footprint).expect("route");
        let got = sizes(&route);
        assert_eq!(got.iter().sum::<u32>(), 30);
        assert!(got[0] <= 10 && got[2] <= 10, "{got:?}");
        // Uniform layers would have given the fastest more than it holds beside the embedding.
        let naive = plan(&peers, 30, 3, 98 * mb / 30).expect("route");
        assert!(sizes(&naive)[0] > 10, "{naive:?}");
        // The peer with the most memory takes an end when another has none to spare for it.
        let mut uneven = peers.clone();
        uneven[0].memory_free_bytes = 20 * mb;
        uneven[1].memory_free_bytes = 80 * mb;
        uneven[2].memory_free_bytes = 80 * mb;
        let route = plan_within(&uneven, 30, 3, &footprint).expect("route");
        assert_eq!(
            route[1].peer_id, uneven[0].peer,
            "the small peer serves the middle"
        );
        let small = route[1].layers.1 - route[1].layers.0;
        assert!(u64::from(small) * footprint.layer_bytes <= 20 * mb);
        // Too little memory for any end: said so.
        let tiny: Vec<Candidate> = (1..=3).map(|n| candidate(n, 10.0, 25 * mb)).collect();
        let error = plan_within(&tiny, 30, 3, &footprint).expect_err("no room");
        assert!(error.contains("first and last"), "{error}");
    }

    #[test]
    fn ranges_are_contiguous_and_proportional_to_score() {
        let peers = [
            candidate(1, 10.0, GIB),
            candidate(2, 20.0, GIB),
            candidate(3, 30.0, GIB),
            candidate(4, 1.0, GIB),
        ];
        let route = plan(&peers, 30, 3, 1 << 20).expect("route");
        // The three fastest, fastest first, 30 layers split 15:10:5.
        assert_eq!(sizes(&route), [15, 10, 5]);
        assert_eq!(route[0].peer_id, peers[2].peer);
        assert_eq!(route[0].layers.0, 0);
        assert!(route.windows(2).all(|w| w[0].layers.1 == w[1].layers.0));
        assert_eq!(route[2].layers.1, 30);
    }

    #[test]
    fn a_near_peer_beats_a_faster_far_one_and_the_too_far_are_left_out() {
        let mut peers = vec![
            candidate(1, 100.0, 64 * GIB),
            candidate(2, 80.0, 64 * GIB),
            candidate(3, 60.0, 64 * GIB),
        ];
        // 15 layers a stage: through peer 1 a token takes 15 ms of arithmetic and a 40 ms round
        // trip, through peer 2 18.75 ms and 1 ms, through peer 3 25 ms and 1 ms.
        for (p, rtt) in peers.iter_mut().zip([40.0, 1.0, 1.0]) {
            p.rtt_ms = Some(rtt);
            p.layer_ms = 100.0 / p.score;
        }
        let route = plan(&peers, 30, 2, 1).expect("route");
        let chosen: Vec<PeerId> = route.iter().map(|h| h.peer_id).collect();
        assert_eq!(chosen, [peers[1].peer, peers[2].peer], "the near pair");
        // Nothing known but scores: the fastest, as before.
        let plain: Vec<Candidate> = peers
            .iter()
            .map(|p| candidate_of(p.peer, p.score))
            .collect();
        let route = plan(&plain, 30, 2, 1).expect("route");
        assert_eq!(route[0].peer_id, peers[0].peer);
        // Past the limit a peer is not used at all, and the refusal says why.
        peers[1].rtt_ms = Some(ROUTE_RTT_MAX_MS + 1.0);
        peers[2].rtt_ms = Some(ROUTE_RTT_MAX_MS + 1.0);
        let error = plan(&peers, 30, 2, 1).expect_err("one near peer");
        assert!(error.contains("(2 more are further)"), "{error}");
    }

    fn candidate_of(peer: PeerId, score: f64) -> Candidate {
        Candidate::new(peer, score, 64 * GIB)
    }

    #[test]
    fn memory_caps_a_peers_range_and_excludes_peers_without_room() {
        let layer = 100 << 20;
        let peers = [
            candidate(1, 100.0, 5 * layer),
            candidate(2, 1.0, 60 * layer),
            candidate(3, 50.0, layer / 2),
        ];
        let route = plan(&peers, 30, 2, layer).expect("route");
        assert_eq!(sizes(&route), [5, 25], "the fast peer holds only 5 layers");
        assert!(route.iter().all(|h| h.peer_id != peers[2].peer));
        let short = plan(&peers[..1], 30, 1, layer).expect_err("too little memory");
        assert!(
            short.contains("free memory for 5 of the model's 30 layers"),
            "{short}"
        );
    }

    #[test]
    fn too_few_peers_is_an_error_naming_the_shortfall() {
        let peers = [candidate(1, 1.0, GIB)];
        let error = plan(&peers, 30, 3, 1).expect_err("one peer, three stages");
        assert!(
            error.contains("3 stages asked, but only 1 online peers hold the model"),
            "{error}"
        );
    }

    #[test]
    fn a_replacement_is_a_new_peer_if_there_is_one_else_a_survivor() {
        let peers = [
            candidate(1, 5.0, GIB),
            candidate(2, 9.0, GIB),
            candidate(3, 7.0, GIB),
        ];
        let route = vec![
            Hop {
                peer_id: peers[0].peer,
                layers: (0, 15),
            },
            Hop {
                peer_id: peers[1].peer,
                layers: (15, 30),
            },
        ];
        assert_eq!(replacement(&route, &peers), Some(peers[2].peer));
        assert_eq!(replacement(&route, &peers[..2]), Some(peers[1].peer));
        assert_eq!(replacement(&route, &[]), None);
    }
}
