//! The HTTP API. Handlers hold no state: each asks the event loop through a bounded channel and
//! waits for its reply, so the loop stays the one owner of the registry and the swarm.
//!
//! | endpoint        | answer |
//! |-----------------|--------|
//! | `GET /v1/peers` | every known peer: `peer_id`, `online`, `capabilities`, … ([`PeerEntry`]) |
//! | `GET /v1/swarm` | the coordinator's peer id and multiaddrs ([`SwarmInfo`]); nodes join through it |
//! | `POST /v1/jobs` | submit a sharded job ([`SubmitJob`]); answers `{"id"}` once it is journaled |
//! | `GET /v1/jobs` | every job's progress ([`JobStatus`]) |
//! | `GET /v1/jobs/{id}[?units=true]` | one job's progress, with each unit's state and executions |
//! | `GET /v1/jobs/{id}/output` | the output, JSONL in input order (409 until the job is done) |
//! | `GET /v1/jobs/{id}/receipts` | the accepted results' signed receipts, JSONL, one per unit |
//! | `POST /v1/jobs/{id}/cancel` | cancel a job |
//! | `POST /v1/generate` | pipelined generation ([`GenerateRequest`]): `{"stream": true}` answers NDJSON lines `{"token_id", "text"}` then `{"done": {…}}`; otherwise the summary `{token_ids, text, route, reroutes, receipts, …}`; 503 when the swarm has no route or is full, 400 for a request at fault |
//! | `GET /v1/models`, `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings` | the OpenAI-compatible API ([`crate::openai`]) |
//! | `POST /v1/admin/keys` | make an API key (`{"member", "name"}`); answers it once, with its id (admin key only) |
//! | `GET /v1/admin/keys` | every key's id, member, name and state, never the key (admin key only) |
//! | `POST /v1/admin/keys/{id}/revoke` | revoke a key (admin key only) |
//!
//! Every endpoint but `/v1/swarm` needs `Authorization: Bearer KEY` (an API key, or the admin key)
//! unless the coordinator runs `--open`; the admin endpoints always need the admin key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hearth_protocol::api::{PeerEntry, SwarmInfo};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::keys::{Access, KeyRecord, Keys};
use crate::limits::GENERATE_TOKENS_DEFAULT;
use crate::limits::{EVIDENCE_BODY_BYTES_MAX, HTTP_BODY_BYTES_MAX, JOB_BODY_BYTES_MAX};
use crate::scheduler::JobStatus;
use crate::sessions::{GenerateRequest, Refusal, SessionEvent, Sessions};
use crate::work::{JobView, SubmitJob, Unavailable};

/// A model the API lists (`GET /v1/models`).
pub(crate) struct ModelEntry {
    pub(crate) id: hearth_protocol::ModelId,
    /// Its catalogue or bound name, else its id.
    pub(crate) name: String,
    pub(crate) kind: hearth_kernels::ModelKind,
    /// The online peers that hold it.
    pub(crate) holders: Vec<hearth_protocol::PeerId>,
    /// Its layers, for an LLM whose header the coordinator has read.
    pub(crate) layers: Option<u32>,
}

/// A question for the event loop, with where to send the answer.
pub(crate) enum Command {
    Peers(oneshot::Sender<Vec<PeerEntry>>),
    Swarm(oneshot::Sender<SwarmInfo>),
    Submit(
        Box<SubmitJob>,
        oneshot::Sender<Result<u64, crate::work::Refused>>,
    ),
    Generate(
        Box<GenerateRequest>,
        mpsc::Sender<SessionEvent>,
        oneshot::Sender<Result<(), Refusal>>,
    ),
    Jobs(oneshot::Sender<Vec<JobStatus>>),
    Job {
        id: u64,
        units: bool,
        reply: oneshot::Sender<Option<JobView>>,
    },
    Output {
        id: u64,
        receipts: bool,
        reply: oneshot::Sender<Result<String, Unavailable>>,
    },
    Cancel {
        id: u64,
        reply: oneshot::Sender<Option<JobView>>,
    },
    EmbedTokens(
        Vec<String>,
        oneshot::Sender<Result<usize, crate::models::ModelsError>>,
    ),
    Sessions(oneshot::Sender<Vec<Value>>),
    /// The models the API lists, with the online peers holding each.
    Models(oneshot::Sender<Vec<ModelEntry>>),
    Revoke(
        Box<hearth_protocol::coop::Revocation>,
        oneshot::Sender<Result<(), String>>,
    ),
    /// A holder's signed answer for a range of a model, that a fetcher says does not verify.
    WeightsEvidence(
        Box<hearth_protocol::work::WeightsEvidence>,
        oneshot::Sender<Result<(), String>>,
    ),
}

/// `POST /v1/evidence/weights`: what a holder served, with its signature of
/// [`hearth_protocol::work::weights_statement`] for it.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct EvidenceBody {
    pub(crate) peer_id: hearth_protocol::PeerId,
    pub(crate) model: hearth_protocol::ModelId,
    pub(crate) size: u64,
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// The bytes it sent, base64.
    pub(crate) encoded: String,
    /// Its signature, base64.
    pub(crate) signature: String,
}

type Commands = State<mpsc::Sender<Command>>;

/// Who may call the API.
#[derive(Clone, Debug)]
pub(crate) struct Auth {
    pub(crate) keys: Arc<Keys>,
    /// `--open`: no key needed (loopback only), but for the admin endpoints.
    pub(crate) open: bool,
    /// Browser logins: token → (the key's hash, expiry).
    pub(crate) logins: Arc<std::sync::Mutex<HashMap<String, (String, Instant)>>>,
}

/// The cookie a browser session travels in (HttpOnly: page scripts never see it).
pub(crate) const LOGIN_COOKIE: &str = "hearth_session";

/// The hash of the key a request was authenticated with.
#[derive(Clone, Debug)]
pub(crate) struct KeyHash(pub(crate) String);

/// The session token in a request's cookies.
pub(crate) fn login_cookie(request: &Request) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == LOGIN_COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The reads a coordinator group's follower answers itself, from its replica of the journal
/// (`GET /v1/jobs`, `/v1/jobs/{id}`, its output and receipts), behind the same keys.
pub(crate) fn read_router(commands: mpsc::Sender<Command>, auth: Auth) -> Router {
    Router::new()
        .route("/v1/jobs", get(jobs))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/output", get(output))
        .route("/v1/jobs/{id}/receipts", get(receipts))
        .with_state(commands)
        .layer(middleware::from_fn_with_state(auth, authenticate))
}

/// Whether `request` is one of the reads [`read_router`] answers.
pub(crate) fn is_read(request: &Request) -> bool {
    if request.method() != axum::http::Method::GET {
        return false;
    }
    let parts: Vec<&str> = request
        .uri()
        .path()
        .trim_end_matches('/')
        .split('/')
        .collect();
    match parts.as_slice() {
        ["", "v1", "jobs"] => true,
        ["", "v1", "jobs", id] => id.parse::<u64>().is_ok(),
        ["", "v1", "jobs", id, "output" | "receipts"] => id.parse::<u64>().is_ok(),
        _ => false,
    }
}

pub(crate) fn router(
    commands: mpsc::Sender<Command>,
    auth: Auth,
    admin_extra: Option<Router>,
) -> Router {
    let admin = Router::new()
        .route("/v1/admin/keys", get(list_keys).post(create_key))
        .route("/v1/admin/keys/{id}/revoke", post(revoke_key))
        .route(
            "/v1/session",
            post(crate::feed::open_login).delete(crate::feed::close_login),
        )
        .with_state(auth.clone());
    let api = Router::new()
        .route("/v1/peers", get(peers))
        .route("/v1/swarm", get(swarm))
        .route(
            "/v1/jobs",
            get(jobs)
                .post(submit)
                .layer(DefaultBodyLimit::max(JOB_BODY_BYTES_MAX)),
        )
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/output", get(output))
        .route("/v1/jobs/{id}/receipts", get(receipts))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/generate", post(generate))
        .route("/v1/coop/revocations", post(revoke_member))
        .route(
            "/v1/evidence/weights",
            post(weights_evidence).layer(DefaultBodyLimit::max(EVIDENCE_BODY_BYTES_MAX)),
        )
        .merge(crate::openai::routes())
        .merge(crate::feed::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(HTTP_BODY_BYTES_MAX))
        .with_state(commands);
    let admin = match admin_extra {
        Some(extra) => admin.merge(extra),
        None => admin,
    };
    admin
        .merge(api)
        .layer(middleware::from_fn_with_state(auth, authenticate))
}

/// Who a request is from, for its daily quotas (none for the admin key or an `--open` API).
#[derive(Clone, Default)]
pub(crate) struct Meter {
    keys: Option<Arc<Keys>>,
    key: Option<String>,
    member: Option<hearth_protocol::PeerId>,
}

impl Meter {
    /// The meter of a request, from what [`authenticate`] left in it.
    pub(crate) fn of(keys: Option<Arc<Keys>>, access: Option<Access>) -> Self {
        match access {
            Some(Access::Key { id, member }) => Self {
                keys,
                key: Some(id),
                member: member.and_then(|m| m.parse().ok()),
            },
            _ => Self::default(),
        }
    }

    /// Charge `units` work units (inputs) to the key; a 429 when its daily quota would pass.
    // The error is the finished response, as handlers return; built once per refused request.
    #[allow(clippy::result_large_err)]
    pub(crate) fn units(&self, units: u64) -> Result<(), Response> {
        match (&self.keys, &self.key) {
            (Some(keys), Some(id)) if units > 0 => keys.admit(id, units).map_err(|why| {
                error_with_code(
                    StatusCode::TOO_MANY_REQUESTS,
                    &why.to_string(),
                    "rate_limit_exceeded",
                )
            }),
            _ => Ok(()),
        }
    }

    /// The co-op member the key belongs to: whose share a job counts in.
    pub(crate) fn member(&self) -> Option<hearth_protocol::PeerId> {
        self.member
    }

    /// Count generated tokens against the key's daily quota.
    pub(crate) fn tokens(&self, tokens: u64) {
        if let (Some(keys), Some(id)) = (&self.keys, &self.key) {
            keys.add_tokens(id, tokens);
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Meter {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::of(
            parts.extensions.get::<Arc<Keys>>().cloned(),
            parts.extensions.get::<Access>().cloned(),
        ))
    }
}

/// The endpoint nodes join through: open to anyone who can reach the coordinator.
const JOIN_PATH: &str = "/v1/swarm";

/// Require a valid key on every endpoint but [`JOIN_PATH`] (none on a `--open` coordinator), and the
/// admin key on `/v1/admin/…`.
async fn authenticate(State(auth): State<Auth>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let admin = path.starts_with("/v1/admin/");
    if !admin && (path == JOIN_PATH || auth.open) {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let key_hash = match token.filter(|t| !t.is_empty()) {
        Some(token) => Keys::hash_of(token),
        // A browser's session cookie stands for the key it was opened with (not for admin work).
        None => {
            let now = Instant::now();
            let found = login_cookie(&request).and_then(|token| {
                let mut logins = auth.logins.lock().unwrap_or_else(|e| e.into_inner());
                logins.retain(|_, (_, expires)| *expires > now);
                logins.get(&token).map(|(h, _)| h.clone())
            });
            match found {
                Some(h) if !admin => h,
                _ => {
                    return error(
                        StatusCode::UNAUTHORIZED,
                        "missing API key: send `Authorization: Bearer KEY` (hearth: --api-key or HEARTH_API_KEY)",
                    );
                }
            }
        }
    };
    match auth.keys.check_hash(&key_hash) {
        Ok(access) => {
            if admin && access != Access::Admin {
                return error(StatusCode::FORBIDDEN, "this endpoint needs the admin key");
            }
            // Quotas hold for API keys (the admin key has none): requests per minute here, work
            // units when a job is submitted, tokens counted as a generation answers.
            if let Access::Key { id, .. } = &access
                && let Err(why) = auth.keys.admit(id, 0)
            {
                return error_with_code(
                    StatusCode::TOO_MANY_REQUESTS,
                    &why.to_string(),
                    "rate_limit_exceeded",
                );
            }
            request.extensions_mut().insert(access);
            request.extensions_mut().insert(KeyHash(key_hash));
            request.extensions_mut().insert(auth.keys.clone());
            next.run(request).await
        }
        Err(why) => error(StatusCode::UNAUTHORIZED, why),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    #[serde(default)]
    member: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    requests_per_minute: Option<u32>,
    #[serde(default)]
    tokens_per_day: Option<u64>,
    #[serde(default)]
    units_per_day: Option<u64>,
}

fn key_json(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "member": k.member,
        "name": k.name,
        "created_ms": k.created_ms,
        "revoked": k.revoked_ms.is_some(),
        "revoked_ms": k.revoked_ms,
        "quota": k.quota,
    })
}

async fn create_key(
    State(auth): State<Auth>,
    body: Result<Json<NewKey>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let NewKey {
        member,
        name,
        requests_per_minute,
        tokens_per_day,
        units_per_day,
    } = match body {
        Ok(Json(body)) => body,
        Err(rejection) => return error(rejection.status(), &rejection.body_text()),
    };
    if let Some(member) = &member
        && member.parse::<hearth_protocol::PeerId>().is_err()
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("`member` {member:?} is not a peer id"),
        );
    }
    let quota = crate::keys::Quota {
        requests_per_minute,
        tokens_per_day,
        units_per_day,
    };
    match auth.keys.create_with(member, name, quota) {
        Ok((record, secret)) => {
            let mut body = key_json(&record);
            body["key"] = json!(secret);
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(crate::Error::Refused(why)) => error(StatusCode::BAD_REQUEST, &why),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn list_keys(State(auth): State<Auth>) -> Response {
    Json(auth.keys.list().iter().map(key_json).collect::<Vec<_>>()).into_response()
}

async fn revoke_key(State(auth): State<Auth>, Path(id): Path<String>) -> Response {
    match auth.keys.revoke(&id) {
        Ok(Some(record)) => Json(key_json(&record)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no key {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn peers(State(commands): State<mpsc::Sender<Command>>) -> Response {
    ask(&commands, Command::Peers)
        .await
        .map_or_else(|e| e, |peers| Json(peers).into_response())
}

async fn swarm(State(commands): State<mpsc::Sender<Command>>) -> Response {
    ask(&commands, Command::Swarm)
        .await
        .map_or_else(|e| e, |info| Json(info).into_response())
}

async fn submit(
    State(commands): Commands,
    meter: Meter,
    body: Result<Json<SubmitJob>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return error(rejection.status(), &rejection.body_text()),
    };
    if let Err(response) = meter.units(request.inputs.len() as u64) {
        return response;
    }
    let mut request = request;
    request.submitter = meter.member();
    match ask(&commands, |reply| Command::Submit(Box::new(request), reply)).await {
        Ok(Ok(id)) => Json(json!({ "id": id })).into_response(),
        Ok(Err(refusal)) => error(StatusCode::BAD_REQUEST, &refusal.to_string()),
        Err(response) => response,
    }
}

#[derive(serde::Deserialize)]
struct GenerateBody {
    #[serde(flatten)]
    request: GenerateRequest,
    #[serde(default)]
    stream: bool,
}

async fn generate(
    State(commands): Commands,
    body: Result<Json<GenerateBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let GenerateBody { request, stream } = match body {
        Ok(Json(body)) => body,
        Err(rejection) => return error(rejection.status(), &rejection.body_text()),
    };
    let capacity = Sessions::events_capacity(request.max_tokens.unwrap_or(GENERATE_TOKENS_DEFAULT));
    let (events_tx, mut events) = mpsc::channel(capacity);
    match ask(&commands, |reply| {
        Command::Generate(Box::new(request), events_tx, reply)
    })
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => return refused(&refusal),
        Err(response) => return response,
    }
    if stream {
        let lines = futures::stream::unfold(Some(events), |events| async move {
            let mut events = events?;
            let line = match events.recv().await? {
                SessionEvent::Token { id, text, .. } => {
                    (json!({ "token_id": id, "text": text }), Some(events))
                }
                SessionEvent::Correction { from, text } => (
                    json!({ "correction": { "from": from, "text": text } }),
                    Some(events),
                ),
                SessionEvent::Done(summary) => (json!({ "done": summary }), None),
                SessionEvent::Failed(message) => (
                    json!({ "error": { "message": message, "type": "server_error" } }),
                    None,
                ),
            };
            Some((
                Ok::<_, std::convert::Infallible>(format!("{}\n", line.0)),
                line.1,
            ))
        });
        return (
            [("content-type", "application/x-ndjson")],
            axum::body::Body::from_stream(lines),
        )
            .into_response();
    }
    while let Some(event) = events.recv().await {
        match event {
            SessionEvent::Token { .. } | SessionEvent::Correction { .. } => {}
            SessionEvent::Done(summary) => return Json(summary).into_response(),
            SessionEvent::Failed(message) => {
                return error(StatusCode::SERVICE_UNAVAILABLE, &message);
            }
        }
    }
    error(StatusCode::SERVICE_UNAVAILABLE, "coordinator is stopping")
}

/// `POST /v1/coop/revocations` with `{"revocation": HEX}` (what `hearth coop revoke` writes): the
/// co-op's signed revocation of a member, applied at once and spread to the members.
async fn revoke_member(
    State(commands): Commands,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => return error(rejection.status(), &rejection.body_text()),
    };
    let revocation = body
        .get("revocation")
        .and_then(Value::as_str)
        .and_then(hearth_protocol::coop::unarmor::<hearth_protocol::coop::Revocation>);
    let Some(revocation) = revocation else {
        return error(
            StatusCode::BAD_REQUEST,
            "`revocation` must be the hex of a co-op revocation (`hearth coop revoke` writes one)",
        );
    };
    let member = revocation.body.member;
    match ask(&commands, |reply| {
        Command::Revoke(Box::new(revocation), reply)
    })
    .await
    {
        Ok(Ok(())) => Json(json!({ "revoked": member })).into_response(),
        Ok(Err(why)) => error(StatusCode::BAD_REQUEST, &why),
        Err(response) => response,
    }
}

/// A holder's answer that does not verify against the model's id, under its signature: checked
/// here, then the holder is quarantined (a good answer, or one it did not sign, is refused).
async fn weights_evidence(
    State(commands): Commands,
    body: Result<Json<EvidenceBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => return error(rejection.status(), &rejection.body_text()),
    };
    let Ok(encoded) = b64.decode(&body.encoded) else {
        return error(StatusCode::BAD_REQUEST, "`encoded` is not base64");
    };
    let Some(signature) = b64
        .decode(&body.signature)
        .ok()
        .and_then(|s| <[u8; 64]>::try_from(s).ok())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "`signature` must be 64 bytes, base64",
        );
    };
    let peer = body.peer_id;
    let evidence = hearth_protocol::work::WeightsEvidence {
        peer,
        model: body.model,
        size: body.size,
        start: body.start,
        end: body.end,
        encoded,
        signature: hearth_protocol::Signature(signature),
    };
    match ask(&commands, |reply| {
        Command::WeightsEvidence(Box::new(evidence), reply)
    })
    .await
    {
        Ok(Ok(())) => Json(json!({ "quarantined": peer })).into_response(),
        Ok(Err(why)) => error(StatusCode::BAD_REQUEST, &why),
        Err(response) => response,
    }
}

async fn jobs(State(commands): Commands) -> Response {
    ask(&commands, Command::Jobs)
        .await
        .map_or_else(|e| e, |jobs| Json(jobs).into_response())
}

#[derive(serde::Deserialize)]
struct JobQuery {
    #[serde(default)]
    units: bool,
}

async fn job(
    State(commands): Commands,
    Path(id): Path<u64>,
    Query(query): Query<JobQuery>,
) -> Response {
    let units = query.units;
    match ask(&commands, |reply| Command::Job { id, units, reply }).await {
        Ok(Some(status)) => Json(status).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no job {id}")),
        Err(response) => response,
    }
}

async fn cancel(State(commands): Commands, Path(id): Path<u64>) -> Response {
    match ask(&commands, |reply| Command::Cancel { id, reply }).await {
        Ok(Some(status)) => Json(status).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no job {id}")),
        Err(response) => response,
    }
}

async fn output(State(commands): Commands, Path(id): Path<u64>) -> Response {
    lines(&commands, id, false).await
}

async fn receipts(State(commands): Commands, Path(id): Path<u64>) -> Response {
    lines(&commands, id, true).await
}

async fn lines(commands: &mpsc::Sender<Command>, id: u64, receipts: bool) -> Response {
    match ask(commands, |reply| Command::Output {
        id,
        receipts,
        reply,
    })
    .await
    {
        Ok(Ok(text)) => ([("content-type", "application/jsonl")], text).into_response(),
        Ok(Err(Unavailable::NotFound)) => error(StatusCode::NOT_FOUND, &format!("no job {id}")),
        Ok(Err(Unavailable::NotDone(state))) => {
            let state = serde_json::to_value(state).unwrap_or_default();
            let message = match state.as_str() {
                Some(s) if s == "failed" || s == "cancelled" => {
                    format!("job {id} is {s}; it has no output")
                }
                Some(s) => format!("job {id} is {s}; its output is ready when it is done"),
                None => format!("job {id} is not done"),
            };
            error(StatusCode::CONFLICT, &message)
        }
        Ok(Err(Unavailable::Journal(message))) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, &message)
        }
        Err(response) => response,
    }
}

pub(crate) async fn ask<T>(
    commands: &mpsc::Sender<Command>,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, Response> {
    let (reply, answer) = oneshot::channel();
    let stopping = || error(StatusCode::SERVICE_UNAVAILABLE, "coordinator is stopping");
    commands
        .send(command(reply))
        .await
        .map_err(|_| stopping())?;
    answer.await.map_err(|_| stopping())
}

/// An error in the shape OpenAI clients expect: `{"error": {"message", "type", "code"}}`.
/// A generation refused: 503 when the swarm cannot serve it now, 400 when the request is at fault.
pub(crate) fn refused(refusal: &Refusal) -> Response {
    let status = match refusal {
        Refusal::Unavailable(why) => {
            // When to try again: the swarm is busy or short of peers for now.
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, why);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(RETRY_AFTER_S),
            );
            return response;
        }
        Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
        Refusal::NoModel(why) => {
            return error_with_code(StatusCode::NOT_FOUND, why, "model_not_found");
        }
    };
    error(status, &refusal.to_string())
}

/// The `Retry-After` (seconds) of a generation refused for now (503): sessions of a few dozen
/// tokens end within seconds, and peers that went away are replaced about as fast.
pub(crate) const RETRY_AFTER_S: u16 = 2;

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    let code = match status {
        StatusCode::UNAUTHORIZED => "invalid_api_key",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        _ => "",
    };
    error_with_code(status, message, code)
}

/// [`error`] with OpenAI's `code` (`model_not_found`, `invalid_api_key`, …).
pub(crate) fn error_with_code(status: StatusCode, message: &str, code: &str) -> Response {
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        s if s.is_client_error() => "invalid_request_error",
        _ => "server_error",
    };
    let code = if code.is_empty() {
        Value::Null
    } else {
        json!(code)
    };
    (
        status,
        Json(json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })),
    )
        .into_response()
}
