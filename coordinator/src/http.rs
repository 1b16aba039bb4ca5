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
//! | `POST /v1/generate` | pipelined generation ([`GenerateRequest`]): `{"stream": true}` answers NDJSON lines `{"token_id", "text"}` then `{"done": {…}}`; otherwise the summary `{token_ids, text, route, reroutes, receipts, …}` |

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hearth_protocol::api::{PeerEntry, SwarmInfo};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::limits::GENERATE_TOKENS_DEFAULT;
use crate::limits::{HTTP_BODY_BYTES_MAX, JOB_BODY_BYTES_MAX};
use crate::scheduler::JobStatus;
use crate::sessions::{GenerateRequest, SessionEvent, Sessions};
use crate::work::{SubmitJob, Unavailable};

/// A question for the event loop, with where to send the answer.
pub(crate) enum Command {
    Peers(oneshot::Sender<Vec<PeerEntry>>),
    Swarm(oneshot::Sender<SwarmInfo>),
    Submit(Box<SubmitJob>, oneshot::Sender<Result<u64, String>>),
    Generate(
        Box<GenerateRequest>,
        mpsc::Sender<SessionEvent>,
        oneshot::Sender<Result<(), String>>,
    ),
    Jobs(oneshot::Sender<Vec<JobStatus>>),
    Job {
        id: u64,
        units: bool,
        reply: oneshot::Sender<Option<serde_json::Value>>,
    },
    Output {
        id: u64,
        receipts: bool,
        reply: oneshot::Sender<Result<String, Unavailable>>,
    },
    Cancel {
        id: u64,
        reply: oneshot::Sender<Option<serde_json::Value>>,
    },
}

type Commands = State<mpsc::Sender<Command>>;

pub(crate) fn router(commands: mpsc::Sender<Command>) -> Router {
    Router::new()
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
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(HTTP_BODY_BYTES_MAX))
        .with_state(commands)
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
    body: Result<Json<SubmitJob>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return error(rejection.status(), &rejection.body_text()),
    };
    match ask(&commands, |reply| Command::Submit(Box::new(request), reply)).await {
        Ok(Ok(id)) => Json(json!({ "id": id })).into_response(),
        Ok(Err(refusal)) => error(StatusCode::BAD_REQUEST, &refusal),
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
        Ok(Err(refusal)) => return error(StatusCode::BAD_REQUEST, &refusal),
        Err(response) => return response,
    }
    if stream {
        let lines = futures::stream::unfold(Some(events), |events| async move {
            let mut events = events?;
            let line = match events.recv().await? {
                SessionEvent::Token { id, text } => {
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

async fn ask<T>(
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

/// An error in the shape OpenAI clients expect: `{"error": {"message", "type"}}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    (
        status,
        Json(json!({ "error": { "message": message, "type": kind } })),
    )
        .into_response()
}
