//! The shell around pipeline [`Driver`]s: plans routes from the registry, sends steps on the work
//! protocol, checks each stage's receipt where it arrives, streams tokens to the HTTP client.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use hearth_kernels::ChatMessage;
use hearth_net::Network;
use hearth_net::RequestId;
use hearth_protocol::PeerId;
use hearth_protocol::Receipt;
use hearth_protocol::work::{WorkRequest, WorkResponse};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::journal::Secret;
use crate::limits::{
    GENERATE_TOKENS_DEFAULT, SESSION_EVENTS_SLACK, SESSIONS_MAX, STAGE_SESSIONS_MAX, STAGES_DEFAULT,
};
use crate::models::Llm;
use crate::pipeline::{
    Action, Driver, Hop, Reroute, StepTimeouts, Verify, WindowCheck, candidates, fetchers,
    plan_within, step_budget_ms,
};
use crate::{Registry, Standing};

/// Why a generation was not started: the swarm cannot serve it now (503 for an API client), or the
/// request cannot be served as asked (400).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No route, too many sessions, no model files here: try again later or elsewhere.
    Unavailable(String),
    /// The request itself: empty, past the context, a bad template or token count.
    Invalid(String),
    /// No model goes by the name the request gives.
    NoModel(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unavailable(why) | Refusal::Invalid(why) | Refusal::NoModel(why) => {
                f.write_str(why)
            }
        }
    }
}

/// `POST /v1/generate`.
#[derive(Clone, Debug, Deserialize)]
pub struct GenerateRequest {
    /// The model: a catalogued name, a name the operator bound, or an id; the default LLM when
    /// absent.
    #[serde(default)]
    pub model: Option<String>,
    /// The prompt, as raw text.
    #[serde(default)]
    pub prompt: String,
    /// A conversation instead of `prompt`: rendered with the model's chat template, ready for the
    /// assistant's turn, its special tokens parsed.
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// Most tokens to generate.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Stages to cut the model into.
    #[serde(default)]
    pub stages: Option<u32>,
    /// How stages are checked: `window` (default), `sampled`, `after` or `off`.
    #[serde(default)]
    pub verify: Option<Verify>,
    /// Parse special-token text (such as `<|im_start|>`) in the prompt as those tokens: what a chat
    /// template's output needs.
    #[serde(default)]
    pub special: bool,
    /// Seeded sampling; greedy when absent.
    #[serde(default)]
    pub sampling: Option<hearth_protocol::work::Sampling>,
}

/// What a session tells its HTTP client.
#[derive(Debug)]
pub enum SessionEvent {
    /// A token and the text it adds.
    Token {
        /// The token id.
        id: u32,
        /// The text it adds to what came before.
        text: String,
        /// It is the model's end-of-sequence token.
        eos: bool,
    },
    /// Tokens from index `from` on, already sent, were wrong; `text` is the text before them.
    Correction {
        /// The first wrong token's index.
        from: usize,
        /// The text of the tokens before it.
        text: String,
    },
    /// Finished: the summary (`token_ids`, `text`, `route`, `reroutes`, `receipts`, …).
    Done(Box<Summary>),
    /// Could not finish.
    Failed(String),
}

/// What a finished pipeline session reports: the answer of `POST /v1/generate` (`hearth generate
/// --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The tokens generated.
    pub token_ids: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// How it was computed and checked.
    #[serde(flatten)]
    pub trail: Trail,
    /// Milliseconds from the request to the first token.
    pub first_token_ms: Option<f64>,
    /// Tokens a second after the first: from the time the stages reported the first token to the
    /// end of the request (the last window's check included), so tokens released in bursts once
    /// checked count at the pace they were made and checked, not the pace of the burst.
    pub decode_tokens_per_s: f64,
    /// Round trips to each stage, by its first layer.
    pub hops: Vec<HopTimes>,
}

/// How a session's tokens were computed and checked (what the OpenAI endpoints add under
/// `hearth`).
#[derive(Clone, Debug, Serialize)]
pub struct Trail {
    /// The route at the end.
    pub route: Vec<Hop>,
    /// Stages replaced on the way.
    pub reroutes: Vec<Reroute>,
    /// Every receipt, stages' and verifiers'.
    pub receipts: Vec<Receipt>,
    /// How it was checked.
    pub verify: Verify,
    /// Tokens whose windows a verifier checked.
    pub verified_tokens: u64,
    /// Every window check.
    pub windows: Vec<WindowCheck>,
    /// Released tokens found wrong later.
    pub corrections: Vec<Correction>,
    /// Milliseconds from the request to the end.
    pub elapsed_ms: f64,
}

/// Released tokens later found wrong (`--verify after`).
#[derive(Clone, Debug, Serialize)]
pub struct Correction {
    /// Index of the first wrong token.
    pub from: usize,
    /// The tokens that were released and wrong.
    pub wrong_token_ids: Vec<u32>,
}

/// Round trips to one stage.
#[derive(Clone, Debug, Serialize)]
pub struct HopTimes {
    /// Who sends the stage its input: the coordinator, or (a chained session) the stage before it.
    pub from: PeerId,
    /// The stage's peer (the last to serve it, after any reroute).
    pub to: Option<PeerId>,
    /// The network round trip between them, as ping last measured it.
    pub rtt_ms: Option<f64>,
    /// The stage's first layer.
    pub layer_start: u32,
    /// Requests answered.
    pub round_trips: u64,
    /// Their mean, in ms.
    pub mean_ms: f64,
}

// The work protocol must wait for a step as long as the step's budget may be.
const _: () = assert!(
    hearth_net::WORK_REQUEST_TIMEOUT.as_millis() >= crate::pipeline::STEP_BUDGET_MS_MAX as u128
);

/// The peers that may serve stages of `model`, each with its measured round trip and what a layer
/// of one token of `llm` takes it at its benchmark score, so the planner weighs both.
fn near(
    net: &Network,
    registry: &Registry,
    standing: &dyn Fn(&PeerId) -> Standing,
    model: &hearth_protocol::ModelId,
    llm: &Llm,
) -> Vec<crate::pipeline::Candidate> {
    let mut all = candidates(registry, standing, model);
    for c in &mut all {
        measure(net, llm, c);
    }
    all
}

/// What the planner weighs of candidate `c` for `llm`: its round trip, what a layer of one token
/// takes it at its benchmark score, and what a layer takes in memory.
fn measure(net: &Network, llm: &Llm, c: &mut crate::pipeline::Candidate) {
    let flops = llm.shape.token_flops(0);
    c.rtt_ms = net.rtt_ms(&c.peer);
    c.layer_ms = flops / (c.score.max(crate::pipeline::STEP_GFLOPS_FLOOR) * 1e6);
    c.layer_bytes = llm.layer_bytes;
}

/// The online peers that hold model `id` whole and are not quarantined, with where they listen:
/// where peers without it fetch it from.
pub(crate) fn holders(
    net: &Network,
    registry: &Registry,
    standing: &dyn Fn(&PeerId) -> Standing,
    id: &hearth_protocol::ModelId,
) -> Vec<(PeerId, Vec<String>)> {
    candidates(registry, standing, id)
        .into_iter()
        .take(hearth_protocol::work::PREPARE_HOLDERS_MAX)
        .map(|c| (c.peer, net.listen_addrs(&c.peer)))
        .collect()
}

/// Tell `peers` to free `session`: the session's own state and the replays its checks ran.
fn end_everywhere(net: &mut Network, session: u64, peers: &[PeerId]) {
    for peer in peers {
        for id in [session, crate::pipeline::check_session(session)] {
            net.request(peer, WorkRequest::EndSession { session: id });
        }
    }
}

/// Room kept in a work message for everything but a prefill's activations (receipt, framing).
pub(crate) const FRAME_OVERHEAD_BYTES: usize = 64 * 1024;

/// The most tokens (prompt and generated) a pipelined session of a model `hidden` wide carries:
/// a verifier that takes over a stage's checks replays the session's inputs so far as one prefill,
/// and its activations (4 bytes a value) must fit one work message (of several frames).
pub(crate) fn pipeline_tokens_max(hidden: usize) -> usize {
    (hearth_protocol::WORK_MESSAGE_BYTES_MAX - FRAME_OVERHEAD_BYTES) / (hidden.max(1) * 4)
}

struct Live {
    driver: Driver,
    /// The model's tokenizer and shape.
    llm: Arc<Llm>,
    events: mpsc::Sender<SessionEvent>,
    /// Tokens released to the client, and the length of their text, so each token sends only what
    /// it adds.
    released: Vec<u32>,
    text_sent: usize,
    started: Instant,
    prompt_tokens: usize,
    first_token_ms: Option<f64>,
    /// When the stages reported the first token (seconds after the start).
    first_generated_s: Option<f64>,
    /// When the request in flight went out, and to which stage index (for the hop latencies the
    /// summary reports; whether it is late is [`StepTimeouts`]'s to say).
    sent: Option<(Instant, u32)>,
    /// Round trips per layer start: (count, total ms).
    hops: BTreeMap<u32, (u64, f64)>,
}

/// What a request of ours to a stage was.
#[derive(Clone, Copy, Debug)]
enum Asked {
    /// A step of a stepped session (or a verifier's replay).
    Step,
    /// A chained session's route for an epoch.
    Route(PeerId, u32),
    /// A chained session's first step of an epoch, to its first stage.
    Chain(PeerId),
    /// The inputs a chained session's stage kept, for a check.
    Kept(PeerId),
    /// A stage's peer is to hold its range before the session starts.
    Prepare(PeerId),
}

/// How long a peer that could not fetch its range of a model is not asked to fetch that model
/// again (it may lack the disk, or reach no holder): other peers are planned in its place.
const PREPARE_REFUSED_MS: u64 = 10 * 60 * 1000;

/// A session about to start, and what it starts with.
struct Launch {
    model: hearth_protocol::ModelId,
    route: Vec<Hop>,
    prompt: Vec<u32>,
    max_tokens: usize,
    ends: Vec<u32>,
    context: usize,
    verify: Verify,
    sampling: Option<hearth_protocol::work::Sampling>,
    llm: Arc<Llm>,
    events: mpsc::Sender<SessionEvent>,
    started: Instant,
}

/// A session whose stages fetch their ranges from peers before it starts.
struct Preparing {
    launch: Launch,
    /// Stages not yet holding their range.
    pending: std::collections::BTreeSet<PeerId>,
}

pub(crate) struct Sessions {
    live: BTreeMap<u64, Live>,
    /// The ranges each peer was asked to fetch of each model (done or under way, until one fails):
    /// given to it again rather than another, which it would fetch besides.
    assigned: HashMap<(PeerId, hearth_protocol::ModelId), Vec<(u32, u32)>>,
    /// Peers that could not fetch a range of a model (no disk, no holder reachable), and until
    /// when (ms) they are not asked to fetch it again.
    refused: HashMap<(PeerId, hearth_protocol::ModelId), u64>,
    /// Sessions waiting for their stages to fetch their ranges.
    preparing: BTreeMap<u64, Preparing>,
    requests: HashMap<RequestId, (u64, Asked)>,
    next: u64,
    /// Peers caught returning wrong results, for the ledger.
    faults: Vec<(PeerId, String)>,
    /// The last sessions that ended, newest last, for the dashboard.
    recent: std::collections::VecDeque<Value>,
    /// Where each session's driver seed comes from ([`Secret::session`]), and this run's draw.
    secret: Secret,
    run: u64,
    /// Steps in flight, to call a stage that does not answer failed.
    timeouts: StepTimeouts,
}

/// The first session id of a run: drawn from the run's random number, so a restarted coordinator
/// does not reuse the ids of sessions its stages may still hold routes, caches and inputs of (they
/// would refuse the new session's route as older than the one they hold). 40 random bits, well
/// below the bit that marks verifiers' sessions ([`crate::pipeline::check_session`]).
fn first_session(run: u64) -> u64 {
    ((run >> 24) << 8).max(1)
}

/// Ended sessions kept for [`Sessions::overview`].
const RECENT_SESSIONS: usize = 8;

impl Sessions {
    pub(crate) fn new(secret: Secret) -> Self {
        let mut run = [0u8; 8];
        // Without OS randomness the journal could not have drawn its secret either; a zero run
        // still keeps seeds secret (they are keyed), only repeated across restarts.
        let _ = getrandom::fill(&mut run);
        let run = u64::from_le_bytes(run);
        Self {
            secret,
            run,
            timeouts: StepTimeouts::default(),
            live: BTreeMap::new(),
            assigned: HashMap::new(),
            refused: HashMap::new(),
            preparing: BTreeMap::new(),
            requests: HashMap::new(),
            next: first_session(run),
            faults: Vec::new(),
            recent: std::collections::VecDeque::new(),
        }
    }

    /// Start a session; its tokens and summary go to `events`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        &mut self,
        net: &mut Network,
        registry: &Registry,
        standing: &dyn Fn(&PeerId) -> Standing,
        now_ms: u64,
        request: GenerateRequest,
        llm: Arc<Llm>,
        events: mpsc::Sender<SessionEvent>,
    ) -> Result<(), Refusal> {
        use Refusal::{Invalid, Unavailable};
        if self.live.len() + self.preparing.len() >= SESSIONS_MAX {
            return Err(Unavailable(format!(
                "{SESSIONS_MAX} sessions are running; try again shortly"
            )));
        }
        if let Some(sampling) = &request.sampling {
            sampling.validate().map_err(|e| Invalid(e.to_string()))?;
        }
        let max_tokens = request.max_tokens.unwrap_or(GENERATE_TOKENS_DEFAULT);
        if !(1..=hearth_protocol::GENERATE_TOKENS_MAX).contains(&max_tokens) {
            return Err(Invalid(format!(
                "max_tokens must be 1..={}",
                hearth_protocol::GENERATE_TOKENS_MAX
            )));
        }
        let (model, layers, context, hidden) = (llm.id, llm.layers, llm.context, llm.hidden);
        let (text, special) = match &request.messages {
            Some(messages) => {
                let template = llm.template.as_ref().ok_or_else(|| {
                    Invalid("the model has no chat template; send a prompt instead".into())
                })?;
                let text = template
                    .render(messages, true)
                    .map_err(|e| Invalid(e.to_string()))?;
                (text, true)
            }
            None => (request.prompt.clone(), request.special),
        };
        let prompt = llm
            .tokenizer
            .encode(&text, special)
            .map_err(|e| Invalid(e.to_string()))?;
        let ends = llm.tokenizer.ends.clone();
        if prompt.is_empty() {
            return Err(Invalid("the prompt is empty".into()));
        }
        if prompt.len() >= context {
            return Err(Invalid(format!(
                "the prompt is {} tokens; the model's context is {context}",
                prompt.len()
            )));
        }
        if prompt.len() + max_tokens as usize > context {
            return Err(Invalid(format!(
                "the prompt ({} tokens) and max_tokens ({max_tokens}) exceed the model's context of {context} tokens",
                prompt.len()
            )));
        }
        let rows_max = pipeline_tokens_max(hidden);
        if prompt.len() + max_tokens as usize > rows_max {
            return Err(Invalid(format!(
                "the prompt ({} tokens) and max_tokens ({max_tokens}) exceed the {rows_max} tokens a pipelined session of this model carries: a check replays the session's activations ({} bytes a token) in one message of at most {} bytes",
                prompt.len(),
                hidden * 4,
                hearth_protocol::WORK_MESSAGE_BYTES_MAX,
            )));
        }
        let mut candidates = near(net, registry, standing, &model, &llm);
        // Peers without the model may serve a range once they fetch it from those with it.
        if !candidates.is_empty() {
            self.refused.retain(|_, until| *until > now_ms);
            for mut c in fetchers(registry, standing, &model) {
                if self.refused.contains_key(&(c.peer, model)) {
                    continue;
                }
                measure(net, &llm, &mut c);
                for r in self.assigned.get(&(c.peer, model)).into_iter().flatten() {
                    if !c.held_layers.contains(r) {
                        c.held_layers.push(*r);
                    }
                }
                candidates.push(c);
            }
        }
        let holders = candidates.len();
        // Peers already serving as many sessions as a stage may are passed over.
        candidates.retain(|c| self.load(&c.peer) < STAGE_SESSIONS_MAX);
        let busy = holders - candidates.len();
        let stages = request
            .stages
            .map_or(STAGES_DEFAULT.min(holders).max(1), |k| k as usize);
        // The model as the request named it (the id when it named none).
        let named = request.model.clone().unwrap_or_else(|| model.to_string());
        let route = plan_within(&candidates, layers, stages, &llm.footprint).map_err(|e| {
            Unavailable(if busy > 0 && candidates.len() < stages {
                format!(
                    "no route for model {named}: {stages} stages asked, but {busy} of the {holders} online peers that hold it or can fetch it already serve {STAGE_SESSIONS_MAX} sessions each, {} have room; try again shortly",
                    candidates.len()
                )
            } else {
                format!("no route for model {named}: {e}")
            })
        })?;
        let session = self.next;
        self.next += 1;
        tracing::info!(
            session,
            stages = route.len(),
            prompt_tokens = prompt.len(),
            "generation started"
        );
        let fetching: Vec<Hop> = route
            .iter()
            .filter(|h| candidates.iter().any(|c| c.peer == h.peer_id && !c.holds))
            .cloned()
            .collect();
        let launch = Launch {
            model,
            route,
            prompt,
            max_tokens: max_tokens as usize,
            ends,
            context,
            verify: request.verify.unwrap_or(Verify::Window),
            sampling: request.sampling,
            llm,
            events,
            started: Instant::now(),
        };
        if fetching.is_empty() {
            self.launch(net, registry, now_ms, session, launch);
            return Ok(());
        }
        // Those stages fetch their ranges first; the session starts once all hold them.
        let sources = self::holders(net, registry, standing, &model);
        let mut pending = std::collections::BTreeSet::new();
        for hop in fetching {
            tracing::info!(session, peer = %hop.peer_id, layers = ?(hop.layers.0..hop.layers.1), "a stage fetches its range from peers first");
            let prepare = hearth_protocol::work::Prepare {
                model,
                layers: hop.layers,
                holders: sources.clone(),
            };
            let ranges = self.assigned.entry((hop.peer_id, model)).or_default();
            if !ranges.contains(&hop.layers) {
                ranges.push(hop.layers);
            }
            let id = net.request(&hop.peer_id, WorkRequest::Prepare(Box::new(prepare)));
            self.requests
                .insert(id, (session, Asked::Prepare(hop.peer_id)));
            pending.insert(hop.peer_id);
        }
        self.preparing
            .insert(session, Preparing { launch, pending });
        Ok(())
    }

    /// A stage answered a [`WorkRequest::Prepare`]: the session starts once every stage holds its
    /// range, and ends at once when one cannot.
    fn on_prepared(
        &mut self,
        net: &mut Network,
        registry: &Registry,
        now_ms: u64,
        session: u64,
        peer: PeerId,
        response: Result<WorkResponse, String>,
    ) {
        let Some(preparing) = self.preparing.get_mut(&session) else {
            return;
        };
        let (why, refused) = match response {
            Ok(WorkResponse::Prepared { bytes_received }) => {
                tracing::info!(session, %peer, bytes_received, "a stage holds its range");
                preparing.pending.remove(&peer);
                if preparing.pending.is_empty() {
                    let preparing = self.preparing.remove(&session).expect("found above");
                    self.launch(net, registry, now_ms, session, preparing.launch);
                }
                return;
            }
            Ok(WorkResponse::Rejected(why)) => (why, true),
            Ok(other) => (format!("answered {other:?}"), true),
            // Gone (a restart, a lost link): it may be asked again once it is back.
            Err(error) => (format!("no answer: {error}"), false),
        };
        self.prepare_failed(session, peer, &why, refused, now_ms);
    }

    /// Stage `peer` of preparing session `session` cannot hold its range: the session ends at
    /// once, saying why; a peer that refused (`refused`, rather than went away) is not asked to
    /// fetch the model again for [`PREPARE_REFUSED_MS`].
    fn prepare_failed(
        &mut self,
        session: u64,
        peer: PeerId,
        why: &str,
        refused: bool,
        now_ms: u64,
    ) {
        let Some(preparing) = self.preparing.remove(&session) else {
            return;
        };
        tracing::warn!(session, %peer, %why, "a stage could not fetch its range");
        self.assigned.remove(&(peer, preparing.launch.model));
        if refused {
            self.refused
                .insert((peer, preparing.launch.model), now_ms + PREPARE_REFUSED_MS);
        }
        self.requests.retain(|_, (s, _)| *s != session);
        let message = format!(
            "the stage {peer} could not fetch its layers of the model from the peers that hold it: {why}"
        );
        let _ = preparing
            .launch
            .events
            .try_send(SessionEvent::Failed(message));
    }

    /// Start session `session` along its route.
    fn launch(
        &mut self,
        net: &mut Network,
        registry: &Registry,
        now_ms: u64,
        session: u64,
        l: Launch,
    ) {
        let prompt_tokens = l.prompt.len();
        let seed = self.secret.session(self.run, session);
        // The stages hand each step to each other; checks replay windows beside them.
        let (mut driver, actions) = Driver::chained(
            session,
            l.model,
            l.route,
            l.prompt,
            l.max_tokens,
            l.ends,
            l.context,
            l.verify,
            l.sampling,
            seed,
        );
        driver.compare_exactly([hearth_kernels::batch_invariant_llm_class()]);
        self.live.insert(
            session,
            Live {
                driver,
                llm: l.llm,
                events: l.events,
                released: Vec::new(),
                text_sent: 0,
                started: l.started,
                prompt_tokens,
                first_token_ms: None,
                first_generated_s: None,
                sent: None,
                hops: BTreeMap::new(),
            },
        );
        self.act(net, registry, now_ms, session, actions);
    }

    /// The timer of a session's request to a stage or verifier: a chained session's own timer
    /// waits for its stages' reports, so its checks' requests have another.
    fn check_timer(session: u64, live: Option<&Live>) -> u64 {
        match live {
            Some(l) if l.driver.is_chained() => crate::pipeline::check_session(session),
            _ => session,
        }
    }

    /// Forget `session`'s step or replay in flight (its late answer must not count); its chained
    /// messages (routes, fetches) stay awaited.
    fn drop_steps(&mut self, session: u64) {
        self.requests
            .retain(|_, (s, asked)| *s != session || !matches!(asked, Asked::Step));
    }

    /// Live sessions with a stage on `peer`.
    fn load(&self, peer: &PeerId) -> usize {
        self.live
            .values()
            .filter(|l| l.driver.route().iter().any(|h| h.peer_id == *peer))
            .count()
    }

    /// An answer to one of our requests, if it was a pipeline step. Returns whether it was.
    pub(crate) fn on_response(
        &mut self,
        net: &mut Network,
        registry: &Registry,
        standing: &dyn Fn(&PeerId) -> Standing,
        now_ms: u64,
        id: RequestId,
        response: Result<WorkResponse, String>,
    ) -> bool {
        let Some((session, asked)) = self.requests.remove(&id) else {
            return false;
        };
        if let Asked::Prepare(peer) = asked {
            self.on_prepared(net, registry, now_ms, session, peer, response);
            return true;
        }
        if let Asked::Route(peer, _) | Asked::Chain(peer) | Asked::Kept(peer) = asked {
            self.on_chain_answer(
                net, registry, standing, now_ms, session, asked, peer, response,
            );
            return true;
        }
        self.timeouts
            .answered(Self::check_timer(session, self.live.get(&session)));
        let Some(live) = self.live.get_mut(&session) else {
            return true;
        };
        let (Some(peer), Some(forward)) = (live.driver.awaiting(), live.driver.pending().cloned())
        else {
            return true;
        };
        if let Some((sent, layer_start)) = live.sent.take() {
            let hop = live.hops.entry(layer_start).or_default();
            hop.0 += 1;
            hop.1 += sent.elapsed().as_secs_f64() * 1e3;
        }
        let candidates = near(net, registry, standing, &forward.model, &live.llm);
        let actions = match response {
            Ok(WorkResponse::Checked { outputs, receipt }) => {
                let signature_ok = receipt.verify().is_ok();
                live.driver
                    .on_checked(peer, outputs, receipt, signature_ok, &candidates)
            }
            Ok(WorkResponse::Rejected(reason)) if live.driver.checking_by_digests() => {
                tracing::info!(%peer, session, %reason, "a verifier could not check by digests; the coordinator fetches the inputs");
                live.driver.on_check_refused(peer, &candidates)
            }
            Ok(WorkResponse::Forwarded { output, receipt }) => {
                let signature_ok = receipt.verify().is_ok();
                if Driver::receipt_matches(&forward, &peer, &output, &receipt, signature_ok) {
                    live.driver.on_result(output, receipt, &candidates)
                } else {
                    tracing::warn!(%peer, session, step = forward.step, "stage receipt does not check");
                    live.driver
                        .on_failure(peer, "its receipt did not check", &candidates)
                }
            }
            Ok(WorkResponse::Rejected(reason)) => {
                tracing::warn!(%peer, session, %reason, "stage refused a step");
                live.driver
                    .on_failure(peer, &format!("refused: {reason}"), &candidates)
            }
            Ok(other) => {
                live.driver
                    .on_failure(peer, &format!("answered {other:?} to a step"), &candidates)
            }
            Err(error) => {
                tracing::warn!(%peer, session, %error, "stage did not answer");
                live.driver
                    .on_failure(peer, &format!("no answer: {error}"), &candidates)
            }
        };
        self.act(net, registry, now_ms, session, actions);
        true
    }

    /// A chained session's route or first step was answered.
    #[allow(clippy::too_many_arguments)]
    fn on_chain_answer(
        &mut self,
        net: &mut Network,
        registry: &Registry,
        standing: &dyn Fn(&PeerId) -> Standing,
        now_ms: u64,
        session: u64,
        asked: Asked,
        peer: PeerId,
        response: Result<WorkResponse, String>,
    ) {
        let Some(live) = self.live.get_mut(&session) else {
            return;
        };
        let actions = match (asked, response) {
            (Asked::Route(_, epoch), Ok(WorkResponse::Ack)) => {
                live.driver.on_route_ack(peer, epoch)
            }
            (Asked::Chain(_), Ok(WorkResponse::Ack)) => Vec::new(),
            (Asked::Kept(_), Ok(WorkResponse::Kept(inputs))) => {
                let candidates = near(net, registry, standing, &live.llm.id, &live.llm);
                live.driver.on_kept(peer, inputs, &candidates)
            }
            (_, answer) => {
                if matches!(asked, Asked::Route(_, epoch) if epoch != live.driver.epoch()) {
                    return; // A stale epoch's route: the session moved on.
                }
                let why = match answer {
                    Ok(WorkResponse::Rejected(reason)) => format!("refused: {reason}"),
                    Ok(other) => format!("answered {other:?}"),
                    Err(error) => format!("no answer: {error}"),
                };
                tracing::warn!(%peer, session, %why, "stage did not take a chained session");
                let candidates = near(net, registry, standing, &live.llm.id, &live.llm);
                live.driver.on_failure(peer, &why, &candidates)
            }
        };
        self.act(net, registry, now_ms, session, actions);
    }

    /// Whether `request` from `peer` is a chained session's report or broken link that a live
    /// session awaits (its peer serves a stage of it): such messages come once a token, and are
    /// not counted as a flood.
    pub(crate) fn expects(&self, peer: &PeerId, request: &WorkRequest) -> bool {
        let session = match request {
            WorkRequest::Report(r) => r.session,
            WorkRequest::Broken { session, .. } => *session,
            _ => return false,
        };
        self.live.get(&session).is_some_and(|l| {
            l.driver.is_chained() && l.driver.route().iter().any(|h| h.peer_id == *peer)
        })
    }

    /// A chained session's report or broken link, from `peer` (a stage of it: [`Self::expects`]).
    pub(crate) fn on_chain(
        &mut self,
        net: &mut Network,
        registry: &Registry,
        standing: &dyn Fn(&PeerId) -> Standing,
        now_ms: u64,
        peer: PeerId,
        request: WorkRequest,
    ) {
        let (session, actions) = match request {
            WorkRequest::Report(report) => {
                let session = report.session;
                let Some(live) = self.live.get_mut(&session) else {
                    return;
                };
                if live.driver.route().last().map(|h| h.peer_id) != Some(peer) {
                    return; // Only the last stage reports.
                }
                let candidates = near(net, registry, standing, &live.llm.id, &live.llm);
                let before = live.driver.generated.len();
                let actions = live.driver.on_report(report, &candidates);
                if live.first_generated_s.is_none() && !live.driver.generated.is_empty() {
                    live.first_generated_s = Some(live.started.elapsed().as_secs_f64());
                }
                if live.driver.generated.len() > before {
                    let now = Instant::now();
                    if let Some((sent, _)) = live.sent.replace((now, 0)) {
                        let steps = (live.driver.generated.len() - before) as u64;
                        let hop = live.hops.entry(0).or_default();
                        hop.0 += steps;
                        hop.1 += (now - sent).as_secs_f64() * 1e3;
                    }
                    self.arm_chain(registry, now_ms, session);
                }
                (session, actions)
            }
            WorkRequest::Broken {
                session,
                epoch,
                step,
                peer: failed,
                reason,
            } => {
                let Some(live) = self.live.get_mut(&session) else {
                    return;
                };
                if epoch != live.driver.epoch() {
                    return;
                }
                tracing::warn!(session, step, reporter = %peer, %failed, %reason, "chained step broken");
                let candidates = near(net, registry, standing, &live.llm.id, &live.llm);
                // A stage that says its successor is unreachable is not taken at its word while we
                // still reach that successor ourselves: the stage that could not hand the step on
                // is the one replaced (else a liar could get honest stages taken out of a session
                // and serve every range itself).
                let (blamed, why) = if failed == peer {
                    (peer, reason)
                } else if net.rtt_ms(&failed).is_some() {
                    (
                        peer,
                        format!("could not hand step {step} to {failed}, which we reach: {reason}"),
                    )
                } else {
                    (
                        failed,
                        format!("{peer} could not hand it step {step}: {reason}"),
                    )
                };
                (session, live.driver.on_failure(blamed, &why, &candidates))
            }
            _ => return,
        };
        self.act(net, registry, now_ms, session, actions);
    }

    /// The arithmetic of the chained sessions' first steps (their prefills) not yet reported that
    /// `peer` serves a stage of, in flops.
    fn prefills_at(&self, peer: &PeerId) -> f64 {
        self.live
            .values()
            .filter_map(|l| {
                let first = l.driver.chain_first()?;
                if l.driver.generated.len() as u64 > first.step {
                    return None;
                }
                let flops: f64 = l
                    .driver
                    .route()
                    .iter()
                    .filter(|h| h.peer_id == *peer)
                    .map(|h| {
                        l.llm.shape.flops(&hearth_protocol::work::Forward {
                            layers: h.layers,
                            ..first.clone()
                        })
                    })
                    .sum();
                Some(flops)
            })
            .sum()
    }

    /// The arithmetic of the checks (replays) in flight at any of `peers`, in flops.
    fn checks_at(&self, peers: &[PeerId]) -> f64 {
        self.live
            .values()
            .filter(|l| l.driver.awaiting().is_some_and(|p| peers.contains(&p)))
            .filter_map(|l| l.driver.pending().map(|f| l.llm.shape.flops(f)))
            .sum()
    }

    /// A chained session's step is under way: it is given what the whole chain's arithmetic for it
    /// takes at the slowest stage's speed, with slack, and what the replays already asked of its
    /// stages take.
    fn arm_chain(&mut self, registry: &Registry, now_ms: u64, session: u64) {
        let Some(live) = self.live.get(&session) else {
            return;
        };
        let budget = match live.driver.chain_first() {
            Some(first) => {
                let all = hearth_protocol::work::Forward {
                    layers: (0, live.llm.layers),
                    ..first.clone()
                };
                let step = u64::try_from(live.driver.generated.len()).unwrap_or(u64::MAX);
                // A decode step after the epoch's first: one token at the position after the rest.
                let all = if step > first.step {
                    hearth_protocol::work::Forward {
                        pos: first.pos + first.input.rows() as u32 + (step - first.step - 1) as u32,
                        input: hearth_protocol::work::StageData::Tokens(vec![0]),
                        ..all
                    }
                } else {
                    all
                };
                let gflops = live
                    .driver
                    .route()
                    .iter()
                    .map(|h| registry.capabilities(&h.peer_id).map_or(0.0, |c| c.score))
                    .fold(f64::INFINITY, f64::min);
                let route: Vec<PeerId> = live.driver.route().iter().map(|h| h.peer_id).collect();
                let flops = live.llm.shape.flops(&all) + self.checks_at(&route);
                step_budget_ms(flops, gflops)
            }
            None => step_budget_ms(0.0, 0.0),
        };
        self.timeouts.sent(session, now_ms, budget);
    }

    /// `peer` left the swarm: sessions routed through it move on without it.
    pub(crate) fn peer_lost(
        &mut self,
        net: &mut Network,
        registry: &Registry,
        standing: &dyn Fn(&PeerId) -> Standing,
        now_ms: u64,
        peer: PeerId,
    ) {
        // What it was asked to fetch is forgotten with it (it advertises what it holds when back),
        // and a session waiting for it to fetch its range ends now rather than when the request
        // times out (a peer that stopped answering is lost by its missed heartbeats).
        self.assigned.retain(|(p, _), _| *p != peer);
        let waiting: Vec<u64> = self
            .preparing
            .iter()
            .filter(|(_, p)| p.pending.contains(&peer))
            .map(|(s, _)| *s)
            .collect();
        for session in waiting {
            self.prepare_failed(session, peer, "it left the swarm", false, now_ms);
        }
        let sessions: Vec<u64> = self.live.keys().copied().collect();
        for session in sessions {
            let Some(live) = self.live.get_mut(&session) else {
                continue;
            };
            if !live.driver.route().iter().any(|h| h.peer_id == peer) {
                continue;
            }
            let awaited = live.driver.awaiting() == Some(peer);
            let candidates = near(net, registry, standing, &live.llm.id, &live.llm);
            let actions = live.driver.on_failure(peer, "left the swarm", &candidates);
            if awaited {
                // The step or replay in flight is abandoned; its late answer must not count.
                self.drop_steps(session);
            }
            self.act(net, registry, now_ms, session, actions);
        }
    }

    /// Steps unanswered for too long count as failures.
    pub(crate) fn tick(
        &mut self,
        net: &mut Network,
        registry: &Registry,
        standing: &dyn Fn(&PeerId) -> Standing,
        now_ms: u64,
    ) {
        for (timer, budget) in self.timeouts.late(now_ms) {
            let session = crate::pipeline::session_of(timer);
            let Some(live) = self.live.get_mut(&session) else {
                continue;
            };
            if live.driver.is_chained() && timer == session {
                // A stage busy with a replay we asked of it is slow, not dead: give the chain the
                // time again.
                let route: Vec<PeerId> = live.driver.route().iter().map(|h| h.peer_id).collect();
                if self.checks_at(&route) > 0.0 {
                    tracing::info!(
                        session,
                        "a stage is replaying a window; its chain waits longer"
                    );
                    self.arm_chain(registry, now_ms, session);
                    continue;
                }
                let Some(live) = self.live.get_mut(&session) else {
                    continue;
                };
                tracing::warn!(
                    session,
                    budget,
                    "no step report in time; the chain starts again"
                );
                let actions = live.driver.on_stall(budget);
                self.act(net, registry, now_ms, session, actions);
                continue;
            }
            self.drop_steps(session);
            let Some(live) = self.live.get_mut(&session) else {
                continue;
            };
            let Some(peer) = live.driver.awaiting() else {
                continue;
            };
            live.sent = None;
            let model = live.driver.pending().map(|f| f.model);
            let candidates = model
                .map(|m| near(net, registry, standing, &m, &live.llm))
                .unwrap_or_default();
            let actions =
                live.driver
                    .on_failure(peer, &format!("no answer within {budget} ms"), &candidates);
            self.act(net, registry, now_ms, session, actions);
        }
    }

    fn act(
        &mut self,
        net: &mut Network,
        registry: &Registry,
        now_ms: u64,
        session: u64,
        actions: Vec<Action>,
    ) {
        for action in actions {
            let Some(live) = self.live.get_mut(&session) else {
                return;
            };
            match action {
                Action::Send { peer, forward } => {
                    live.sent = Some((Instant::now(), forward.layers.0));
                    // The stage is given what its share of the work takes at its own measured
                    // speed, with slack: a long prefill is not a dead peer. A stage runs its steps
                    // in turn, so the steps other sessions sent it and it has not answered yet
                    // (another user's long prefill) count too.
                    let ahead: f64 = self
                        .live
                        .iter()
                        .filter(|(s, l)| **s != session && l.driver.awaiting() == Some(peer))
                        .filter_map(|(_, l)| l.driver.pending().map(|f| l.llm.shape.flops(f)))
                        .sum::<f64>()
                        + self.prefills_at(&peer);
                    let Some(live) = self.live.get_mut(&session) else {
                        return;
                    };
                    let flops = ahead + live.llm.shape.flops(&forward);
                    let gflops = registry.capabilities(&peer).map_or(0.0, |c| c.score);
                    let timer = Self::check_timer(session, Some(live));
                    self.timeouts
                        .sent(timer, now_ms, step_budget_ms(flops, gflops));
                    let id = net.request(&peer, WorkRequest::Forward(forward));
                    self.requests.insert(id, (session, Asked::Step));
                }
                Action::Route { peer, mut route } => {
                    let epoch = route.epoch;
                    route.addrs = route
                        .hops
                        .iter()
                        .map(|(p, _)| net.listen_addrs(p))
                        .collect();
                    let id = net.request(&peer, WorkRequest::Route(route));
                    self.requests
                        .insert(id, (session, Asked::Route(peer, epoch)));
                }
                Action::Check { peer, mut check } => {
                    // The verifier may fetch the stage's inputs: where the stage listens, and
                    // our leave for this verifier and these steps.
                    let (step, layer_start) = (check.forward.step, check.forward.layers.0);
                    if let Some(source) = check.source.as_mut() {
                        source.addrs = net.listen_addrs(&source.peer);
                        source.grant = net.key().sign(&hearth_protocol::work::kept_grant(
                            session,
                            layer_start,
                            source.from,
                            step + 1,
                            &peer,
                        ));
                    }
                    // Its time: the replay's rows at the verifier's speed, as a step's (what the
                    // driver awaits is sized as the replay).
                    let flops = live
                        .driver
                        .pending()
                        .map_or(0.0, |f| live.llm.shape.flops(f));
                    let gflops = registry.capabilities(&peer).map_or(0.0, |c| c.score);
                    let timer = Self::check_timer(session, Some(live));
                    self.timeouts
                        .sent(timer, now_ms, step_budget_ms(flops, gflops));
                    let id = net.request(&peer, WorkRequest::Check(check));
                    self.requests.insert(id, (session, Asked::Step));
                }
                Action::Fetch {
                    peer,
                    layers,
                    steps,
                } => {
                    tracing::debug!(%peer, session, ?steps, "a stage's kept inputs fetched through the coordinator for a check");
                    let request = WorkRequest::Kept {
                        session,
                        layer_start: layers.0,
                        from: steps.0,
                        to: steps.1,
                        grant: None,
                    };
                    let id = net.request(&peer, request);
                    self.requests.insert(id, (session, Asked::Kept(peer)));
                }
                Action::Chain { peer, step } => {
                    live.sent = Some((Instant::now(), 0));
                    let id = net.request(&peer, WorkRequest::Chain(step));
                    self.requests.insert(id, (session, Asked::Chain(peer)));
                    self.arm_chain(registry, now_ms, session);
                }
                Action::Fault { peer, reason } => {
                    tracing::warn!(%peer, session, %reason, "stage caught returning wrong results");
                    self.faults.push((peer, reason));
                }
                Action::Correction(from) => {
                    live.released.truncate(from);
                    let text = live
                        .llm
                        .tokenizer
                        .decode(&live.released)
                        .unwrap_or_default();
                    live.text_sent = text.len();
                    if live
                        .events
                        .try_send(SessionEvent::Correction { from, text })
                        .is_err()
                    {
                        return self.abandon(net, session);
                    }
                }
                Action::Token(id) => {
                    if live.first_token_ms.is_none() {
                        live.first_token_ms = Some(live.started.elapsed().as_secs_f64() * 1e3);
                    }
                    live.released.push(id);
                    let text = live
                        .llm
                        .tokenizer
                        .decode(&live.released)
                        .unwrap_or_default();
                    // Send only whole characters: a token may end mid-way through one.
                    let delta = if text.ends_with('\u{fffd}') {
                        String::new()
                    } else {
                        let delta = text.get(live.text_sent..).unwrap_or_default().to_string();
                        live.text_sent = text.len();
                        delta
                    };
                    let eos = live.llm.tokenizer.is_end(id);
                    if live
                        .events
                        .try_send(SessionEvent::Token {
                            id,
                            text: delta,
                            eos,
                        })
                        .is_err()
                    {
                        return self.abandon(net, session);
                    }
                }
                Action::Finished { error, peers } => {
                    end_everywhere(net, session, &peers);
                    let live = self.live.remove(&session).expect("present");
                    self.requests.retain(|_, (s, _)| *s != session);
                    self.timeouts.answered(session);
                    self.timeouts
                        .answered(crate::pipeline::check_session(session));
                    let event = match error {
                        Some(error) => {
                            tracing::warn!(session, %error, "generation failed");
                            SessionEvent::Failed(error)
                        }
                        None => SessionEvent::Done(Box::new(self.summary(&live, net))),
                    };
                    self.remember(session, &live, matches!(event, SessionEvent::Done(_)));
                    let _ = live.events.try_send(event);
                    return;
                }
            }
        }
    }

    /// The client stopped reading (its event queue is full or closed): end the session and free
    /// its stages' caches rather than generate for nobody.
    fn abandon(&mut self, net: &mut Network, session: u64) {
        self.timeouts.answered(session);
        self.timeouts
            .answered(crate::pipeline::check_session(session));
        if let Some(mut live) = self.live.remove(&session) {
            tracing::warn!(session, "client stopped reading; session ended");
            // Every peer with state of it (stages and verifiers) frees it at once.
            if let Action::Finished { peers, .. } = live.driver.cancel("the client went away") {
                end_everywhere(net, session, &peers);
            }
        }
        self.requests.retain(|_, (s, _)| *s != session);
    }

    /// Events a session may queue for its client: every token (twice over, for corrections that
    /// release tokens again) and the summary.
    /// What the dashboard shows of one session.
    fn brief(session: u64, live: &Live, state: &str) -> Value {
        let d = &live.driver;
        let elapsed = live.started.elapsed().as_secs_f64();
        json!({
            "id": session,
            "state": state,
            "route": d.route(),
            // Each stage's round trip to the next (the last's to the first), as the stages last
            // reported them; empty for a session the coordinator drives hop by hop.
            "hop_rtt_ms": d.chain_rtts(),
            "tokens": d.generated.len(),
            "prompt_tokens": live.prompt_tokens,
            "elapsed_ms": elapsed * 1e3,
            "tokens_per_s": if elapsed > 0.0 { d.generated.len() as f64 / elapsed } else { 0.0 },
            "verify": d.verify_mode(),
            "verified_tokens": d.verified_steps,
            "windows": d.checks.len(),
            "reroutes": d.reroutes.len(),
        })
    }

    fn remember(&mut self, session: u64, live: &Live, done: bool) {
        self.recent.push_back(Self::brief(
            session,
            live,
            if done { "done" } else { "failed" },
        ));
        while self.recent.len() > RECENT_SESSIONS {
            self.recent.pop_front();
        }
    }

    /// Live sessions, then the last ones that ended.
    pub(crate) fn overview(&self) -> Vec<Value> {
        self.live
            .iter()
            .map(|(id, live)| Self::brief(*id, live, "running"))
            .chain(self.recent.iter().rev().cloned())
            .collect()
    }

    pub(crate) fn events_capacity(max_tokens: u32) -> usize {
        2 * max_tokens.clamp(1, hearth_protocol::GENERATE_TOKENS_MAX) as usize
            + SESSION_EVENTS_SLACK
    }

    /// Peers caught returning wrong results since the last call, for the ledger.
    pub(crate) fn take_faults(&mut self) -> Vec<(PeerId, String)> {
        std::mem::take(&mut self.faults)
    }

    /// A chained session's hops: each stage's input comes from the stage before it, the first
    /// stage's from the last (which hands it each token; the coordinator sent it only the first
    /// step of each epoch), with the round trip the sending stage last measured. The coordinator
    /// measures no stage's time, only a whole step's: each hop reports the steps and their mean
    /// time around the chain.
    fn chain_hops(live: &Live, net: &Network) -> Vec<HopTimes> {
        let route = live.driver.route();
        let (steps, total) = live.hops.get(&0).copied().unwrap_or_default();
        let mean_ms = if steps > 0 { total / steps as f64 } else { 0.0 };
        let rtts = live.driver.chain_rtts();
        (0..route.len())
            .map(|i| {
                let before = (i + route.len() - 1) % route.len();
                let from = route[before].peer_id;
                let to = route[i].peer_id;
                HopTimes {
                    from,
                    to: Some(to),
                    // As the stage before measured it (its ping to the stage it hands steps to).
                    rtt_ms: rtts
                        .get(before)
                        .copied()
                        .flatten()
                        .map(f64::from)
                        .or_else(|| {
                            (from == net.local_peer())
                                .then(|| net.rtt_ms(&to))
                                .flatten()
                        }),
                    layer_start: route[i].layers.0,
                    round_trips: steps,
                    mean_ms,
                }
            })
            .collect()
    }

    fn summary(&self, live: &Live, net: &Network) -> Summary {
        let d = &live.driver;
        let text = live.llm.tokenizer.decode(&d.generated).unwrap_or_default();
        let elapsed = live.started.elapsed().as_secs_f64();
        let first_s = live
            .first_generated_s
            .unwrap_or(live.first_token_ms.unwrap_or(0.0) / 1e3);
        let decode_s = elapsed - first_s;
        let hops = if d.is_chained() {
            Self::chain_hops(live, net)
        } else {
            live.hops
                .iter()
                .map(|(start, (n, total))| {
                    let to = d
                        .route()
                        .iter()
                        .find(|h| h.layers.0 == *start)
                        .map(|h| h.peer_id);
                    HopTimes {
                        from: net.local_peer(),
                        to,
                        rtt_ms: to.and_then(|p| net.rtt_ms(&p)),
                        layer_start: *start,
                        round_trips: *n,
                        mean_ms: total / *n as f64,
                    }
                })
                .collect()
        };
        tracing::info!(
            tokens = d.generated.len(),
            reroutes = d.reroutes.len(),
            "generation done"
        );
        let decode_tokens_per_s = if d.generated.len() > 1 && decode_s > 0.0 {
            (d.generated.len() - 1) as f64 / decode_s
        } else {
            0.0
        };
        Summary {
            token_ids: d.generated.clone(),
            text,
            prompt_tokens: live.prompt_tokens,
            trail: Trail {
                route: d.route().to_vec(),
                reroutes: d.reroutes.clone(),
                receipts: d.receipts.clone(),
                verify: d.verify_mode(),
                verified_tokens: d.verified_steps,
                windows: d.checks.clone(),
                corrections: d
                    .corrections
                    .iter()
                    .map(|(from, wrong)| Correction {
                        from: *from,
                        wrong_token_ids: wrong.clone(),
                    })
                    .collect(),
                elapsed_ms: elapsed * 1e3,
            },
            first_token_ms: live.first_token_ms,
            decode_tokens_per_s,
            hops,
        }
    }
}
