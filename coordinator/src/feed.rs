//! What a dashboard (or any client) watches: `GET /v1/events`, a server-sent event stream of the
//! swarm's state once a second; `GET /v1/sessions`, the pipeline sessions; and browser sessions
//! (`POST /v1/session` with a key sets an HttpOnly cookie, which an `EventSource` sends, as it cannot
//! send an `Authorization` header).
//!
//! Each `snapshot` event's data: `{"time_ms", "peers": [PeerEntry…], "jobs": [JobStatus…],
//! "sessions": [{id, state, route, tokens, tokens_per_s, …}], "models": [{id, name, kind, layers,
//! holders}]}` (the models any online peer holds whole, and the defaults; peers holding layer
//! ranges say so in their `layers_held`).

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::json;
use tokio::sync::mpsc;

use crate::http::{Auth, Command, KeyHash, LOGIN_COOKIE, ask, error};

/// How often the event stream sends a snapshot.
pub(crate) const FEED_INTERVAL: Duration = Duration::from_secs(1);
/// How long a browser session lasts.
pub(crate) const BROWSER_SESSION: Duration = Duration::from_secs(12 * 3600);
/// Browser logins at most (the oldest are dropped beyond it).
pub(crate) const BROWSER_LOGINS_MAX: usize = 1024;

pub(crate) fn routes() -> Router<mpsc::Sender<Command>> {
    Router::new()
        .route("/v1/events", get(events))
        .route("/v1/sessions", get(sessions))
}

async fn sessions(State(commands): State<mpsc::Sender<Command>>) -> Response {
    ask(&commands, Command::Sessions)
        .await
        .map_or_else(|e| e, |s| Json(s).into_response())
}

async fn snapshot(commands: &mpsc::Sender<Command>) -> Option<Event> {
    let peers = ask(commands, Command::Peers).await.ok()?;
    let jobs = ask(commands, Command::Jobs).await.ok()?;
    let sessions = ask(commands, Command::Sessions).await.ok()?;
    let models: Vec<serde_json::Value> = ask(commands, Command::Models)
        .await
        .ok()?
        .iter()
        .map(|m| {
            json!({
                "id": m.id.to_string(),
                "name": m.name,
                "kind": match m.kind {
                    hearth_kernels::ModelKind::Llm => "llm",
                    hearth_kernels::ModelKind::Embedder => "embedder",
                },
                "layers": m.layers,
                "holders": m.holders.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let data = json!({ "time_ms": time_ms, "peers": peers, "jobs": jobs, "sessions": sessions, "models": models });
    Some(Event::default().event("snapshot").data(data.to_string()))
}

async fn events(State(commands): State<mpsc::Sender<Command>>) -> Response {
    let stream = futures::stream::unfold((commands, true), |(commands, first)| async move {
        if !first {
            tokio::time::sleep(FEED_INTERVAL).await;
        }
        // The coordinator stopping ends the stream.
        let event = snapshot(&commands).await?;
        Some((Ok::<_, std::convert::Infallible>(event), (commands, false)))
    });
    Sse::new(stream).into_response()
}

fn random_token() -> Option<String> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// `POST /v1/session` (authenticated by a key): a browser session for it, in an HttpOnly cookie.
pub(crate) async fn open_login(
    State(auth): State<Auth>,
    key: Option<Extension<KeyHash>>,
) -> Response {
    let Some(Extension(KeyHash(hash))) = key else {
        // An --open coordinator needs no session.
        return Json(json!({ "session": false, "open": auth.open })).into_response();
    };
    let Some(token) = random_token() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness for a session",
        );
    };
    {
        let mut logins = auth.logins.lock().unwrap_or_else(|e| e.into_inner());
        if logins.len() >= BROWSER_LOGINS_MAX {
            let oldest = logins
                .iter()
                .min_by_key(|(_, (_, expires))| *expires)
                .map(|(t, _)| t.clone());
            if let Some(oldest) = oldest {
                logins.remove(&oldest);
            }
        }
        logins.insert(token.clone(), (hash, Instant::now() + BROWSER_SESSION));
    }
    let cookie = format!(
        "{LOGIN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        BROWSER_SESSION.as_secs()
    );
    (
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "session": true })),
    )
        .into_response()
}

/// `DELETE /v1/session`: forget the browser's session.
pub(crate) async fn close_login(
    State(auth): State<Auth>,
    request: axum::extract::Request,
) -> Response {
    if let Some(token) = crate::http::login_cookie(&request) {
        auth.logins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&token);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{LOGIN_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
        )],
        Json(json!({ "session": false })),
    )
        .into_response()
}
