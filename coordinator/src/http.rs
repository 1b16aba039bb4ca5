//! The HTTP API. Handlers hold no state: each asks the event loop through a bounded channel and
//! waits for its reply, so the loop stays the one owner of the registry and the swarm.
//!
//! | endpoint        | answer |
//! |-----------------|--------|
//! | `GET /v1/peers` | every known peer: `peer_id`, `online`, `capabilities`, … ([`PeerEntry`]) |
//! | `GET /v1/swarm` | the coordinator's peer id and multiaddrs ([`SwarmInfo`]); nodes join through it |

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hearth_protocol::api::{PeerEntry, SwarmInfo};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::limits::HTTP_BODY_BYTES_MAX;

/// A question for the event loop, with where to send the answer.
pub(crate) enum Command {
    Peers(oneshot::Sender<Vec<PeerEntry>>),
    Swarm(oneshot::Sender<SwarmInfo>),
}

pub(crate) fn router(commands: mpsc::Sender<Command>) -> Router {
    Router::new()
        .route("/v1/peers", get(peers))
        .route("/v1/swarm", get(swarm))
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
