//! The OpenAI-compatible API: any OpenAI client works with the swarm by changing its base URL.
//!
//! | endpoint | what runs it |
//! |---|---|
//! | `GET /v1/models` | the default models, those the operator named, and every model an online peer holds: each by its catalogue or bound name (else its blake3 id), the id in `hearth.id`, the peers holding it in `holders` |
//! | `POST /v1/chat/completions` | a pipelined, verified generation of the model `model` names (a name or an id) over its chat template; `stream: true` answers server-sent events |
//! | `POST /v1/completions` | the same over a raw prompt |
//! | `POST /v1/embeddings` | a sharded embed job, replicated and compared like any other |
//!
//! Sampling is seeded (`temperature`, OpenAI's default 1; 0 is greedy; `top_p`; `seed`, made up and
//! returned when absent), so stages and their verifiers draw the same tokens. `stop` ends the text
//! before the first stop sequence. Every response carries `hearth`: the route, the receipts and the
//! verification (windows for generations, replicas for embeddings). Errors have OpenAI's shape.

// Parsing helpers return the finished error response, as axum handlers do; it is built once per
// failed request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hearth_kernels::{CatalogModel, ChatMessage, MINILM, ModelKind};
use hearth_protocol::work::Sampling;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::http::{Command, Meter, ModelEntry, ask, error, error_with_code};
use crate::limits::{
    JOB_INPUTS_MAX, OPENAI_EMBED_WAIT, OPENAI_MAX_TOKENS_DEFAULT, STOP_SEQUENCES_MAX,
};
use crate::sessions::{GenerateRequest, SessionEvent, Sessions, Summary};
use crate::work::{JobInput, SubmitJob, Unavailable};

type Commands = State<mpsc::Sender<Command>>;

pub(crate) fn routes() -> Router<mpsc::Sender<Command>> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn bad(message: impl AsRef<str>) -> Response {
    error(StatusCode::BAD_REQUEST, message.as_ref())
}

/// The embedders `POST /v1/embeddings` serves. (Language models are any the swarm holds: the
/// coordinator resolves `model` when a generation starts.)
const EMBEDDERS: [&CatalogModel; 1] = [&MINILM];

/// `model` of a request, or OpenAI's 400 when it is missing.
fn required(name: Option<&str>) -> Result<&str, Response> {
    name.ok_or_else(|| bad("`model` is required (see GET /v1/models)"))
}

/// The embedder `name` (or its blake3 id), or OpenAI's 404.
fn embedder(name: Option<&str>) -> Result<&'static CatalogModel, Response> {
    let name = required(name)?;
    EMBEDDERS
        .into_iter()
        .find(|m| m.name == name || m.files[0].blake3 == name)
        .ok_or_else(|| {
            error_with_code(
                StatusCode::NOT_FOUND,
                &format!("the model `{name}` does not exist here or cannot serve this endpoint (see GET /v1/models)"),
                "model_not_found",
            )
        })
}

async fn models(State(commands): Commands) -> Response {
    let models = match ask(&commands, Command::Models).await {
        Ok(models) => models,
        Err(response) => return response,
    };
    let data: Vec<Value> = models.iter().map(model_json).collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// `GET /v1/models/{model}` (OpenAI's retrieve): the model `GET /v1/models` lists by that name, or
/// by its blake3 id; else OpenAI's 404 `model_not_found`.
async fn model(State(commands): Commands, Path(wanted): Path<String>) -> Response {
    let models = match ask(&commands, Command::Models).await {
        Ok(models) => models,
        Err(response) => return response,
    };
    let id = wanted.to_ascii_lowercase();
    match models
        .iter()
        .find(|m| m.name == wanted || m.id.to_string() == id)
    {
        Some(m) => Json(model_json(m)).into_response(),
        None => error_with_code(
            StatusCode::NOT_FOUND,
            &format!("the model `{wanted}` does not exist here (see GET /v1/models)"),
            "model_not_found",
        ),
    }
}

/// One model as `GET /v1/models` lists it: OpenAI's fields, its `holders`, and Hearth's own.
fn model_json(m: &ModelEntry) -> Value {
    let holders: Vec<String> = m.holders.iter().map(ToString::to_string).collect();
    json!({
        "id": m.name,
        "object": "model",
        "created": 0,
        "owned_by": "hearth",
        "holders": holders,
        "hearth": {
            "id": m.id.to_string(),
            "kind": match m.kind { ModelKind::Llm => "llm", ModelKind::Embedder => "embedder" },
            "peers_online": holders.len(),
            "layers": m.layers,
        },
    })
}

mod embeddings;
mod parse;
mod stream;

use embeddings::embeddings;
use parse::{Generation, GenerationBody, Texts, parse_generation};
use stream::run;

async fn chat(
    State(commands): Commands,
    meter: Meter,
    body: Result<Json<GenerationBody>, JsonRejection>,
) -> Response {
    let mut body = match parse::body(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.messages.is_empty() {
        return bad("`messages` must be a non-empty array");
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for (i, m) in std::mem::take(&mut body.messages).into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" | "assistant" => m.role.as_str(),
            other => {
                return bad(format!(
                    "messages[{i}].role `{other}` is not system, user or assistant"
                ));
            }
        };
        let Some(content) = m.content.map_or(Some(String::new()), parse::Content::text) else {
            return bad(format!(
                "messages[{i}].content must be a string or text parts"
            ));
        };
        messages.push(ChatMessage {
            role: role.into(),
            content,
        });
    }
    match parse_generation(body, String::new(), Some(messages)) {
        Ok(g) => run(commands, meter, g, true).await,
        Err(r) => r,
    }
}

async fn completions(
    State(commands): Commands,
    meter: Meter,
    body: Result<Json<GenerationBody>, JsonRejection>,
) -> Response {
    let mut body = match parse::body(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let prompt = match body.prompt.take() {
        Some(Texts::One(s)) if !s.is_empty() => s,
        Some(Texts::Many(mut a)) if a.len() == 1 && !a[0].is_empty() => a.remove(0),
        _ => return bad("`prompt` must be a non-empty string (or an array of one)"),
    };
    match parse_generation(body, prompt, None) {
        Ok(g) => run(commands, meter, g, false).await,
        Err(r) => r,
    }
}
