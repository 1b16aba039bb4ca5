//! The OpenAI-compatible API: any OpenAI client works with the swarm by changing its base URL.
//!
//! | endpoint | what runs it |
//! |---|---|
//! | `GET /v1/models` | the catalogue: each model by name, its blake3 id in `hearth.id`, and whether an online peer holds it |
//! | `POST /v1/chat/completions` | a pipelined, verified generation over the model's chat template; `stream: true` answers server-sent events |
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

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hearth_kernels::{CATALOG, ChatMessage, MINILM, ModelKind};
use hearth_protocol::work::Sampling;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::http::{Command, Meter, ask, error, error_with_code};
use crate::limits::{
    JOB_INPUTS_MAX, OPENAI_EMBED_WAIT, OPENAI_MAX_TOKENS_DEFAULT, STOP_SEQUENCES_MAX,
};
use crate::sessions::{GenerateRequest, SessionEvent, Sessions};
use crate::work::{JobInput, SubmitJob, Unavailable};

type Commands = State<mpsc::Sender<Command>>;

pub(crate) fn routes() -> Router<mpsc::Sender<Command>> {
    Router::new()
        .route("/v1/models", get(models))
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

/// The catalogue model `name` (or its blake3 id) of `kind`, or OpenAI's 404.
fn resolve(
    name: Option<&Value>,
    kind: ModelKind,
) -> Result<&'static hearth_kernels::CatalogModel, Response> {
    let name = name
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`model` is required (see GET /v1/models)"))?;
    CATALOG
        .iter()
        .find(|m| m.kind == kind && (m.name == name || m.files[0].blake3 == name))
        .ok_or_else(|| {
            error_with_code(
                StatusCode::NOT_FOUND,
                &format!("the model `{name}` does not exist here or cannot serve this endpoint (see GET /v1/models)"),
                "model_not_found",
            )
        })
}

async fn models(State(commands): Commands) -> Response {
    let peers = match ask(&commands, Command::Peers).await {
        Ok(peers) => peers,
        Err(response) => return response,
    };
    let data: Vec<Value> = CATALOG
        .iter()
        .map(|m| {
            let id: hearth_protocol::ModelId = m.files[0].blake3.parse().expect("catalogue ids are hex");
            let holders = peers
                .iter()
                .filter(|p| p.online && p.capabilities.models.contains(&id))
                .count();
            json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "hearth",
                "hearth": {
                    "id": m.files[0].blake3,
                    "kind": match m.kind { ModelKind::Llm => "llm", ModelKind::Embedder => "embedder" },
                    "peers_online": holders,
                },
            })
        })
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// What chat and completions share.
struct Generation {
    request: GenerateRequest,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
    seed: u64,
    model: &'static str,
}

fn number(body: &Value, key: &str) -> Result<Option<f64>, Response> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{key}` must be a number"))),
    }
}

fn parse_generation(
    body: &Value,
    prompt: String,
    messages: Option<Vec<ChatMessage>>,
) -> Result<Generation, Response> {
    let model = resolve(body.get("model"), ModelKind::Llm)?;
    let temperature = number(body, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad("`temperature` must be within 0..=2"));
    }
    let top_p = number(body, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad("`top_p` must be within (0, 1]"));
    }
    let seed = match body.get("seed") {
        None | Some(Value::Null) => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b)
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
            u64::from_le_bytes(b) >> 1
        }
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(u), _) => u,
            (None, Some(i)) => i as u64,
            _ => return Err(bad("`seed` must be an integer")),
        },
    };
    let max_tokens = match body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
    {
        None | Some(Value::Null) => OPENAI_MAX_TOKENS_DEFAULT,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=u64::from(hearth_protocol::GENERATE_TOKENS_MAX)).contains(&n) => {
                n as u32
            }
            _ => {
                return Err(bad(format!(
                    "`max_tokens` must be an integer within 1..={}",
                    hearth_protocol::GENERATE_TOKENS_MAX
                )));
            }
        },
    };
    if let Some(n) = body.get("n").filter(|n| !n.is_null())
        && n.as_u64() != Some(1)
    {
        return Err(bad("only `n: 1` is supported"));
    }
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("`stop` must be a string or an array of strings"))?,
        Some(_) => return Err(bad("`stop` must be a string or an array of strings")),
    };
    if stop.len() > STOP_SEQUENCES_MAX || stop.iter().any(String::is_empty) {
        return Err(bad(format!(
            "`stop` takes 1 to {STOP_SEQUENCES_MAX} non-empty strings"
        )));
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| bad("`stream` must be a boolean"))?,
    };
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Generation {
        request: GenerateRequest {
            prompt,
            messages,
            max_tokens: Some(max_tokens),
            stages: None,
            verify: None,
            special: false,
            sampling: Some(Sampling {
                temperature: temperature as f32,
                top_p: top_p as f32,
                seed,
            }),
        },
        stop,
        stream,
        include_usage,
        seed,
        model: model.name,
    })
}

fn body_json(body: Result<Json<Value>, JsonRejection>) -> Result<Value, Response> {
    let Json(body) = body.map_err(|r| error(r.status(), &r.body_text()))?;
    if !body.is_object() {
        return Err(bad("the request body must be a JSON object"));
    }
    Ok(body)
}

fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        // Content parts: only text parts are understood.
        Value::Array(parts) => parts
            .iter()
            .map(|p| {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => Some(t.to_string()),
                    _ => None,
                }
            })
            .collect::<Option<Vec<_>>>()
            .map(|t| t.concat()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

async fn chat(
    State(commands): Commands,
    meter: Meter,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let body = match body_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(list) = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return bad("`messages` must be a non-empty array");
    };
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let role = match role {
            "system" | "developer" => "system",
            "user" | "assistant" => role,
            other => {
                return bad(format!(
                    "messages[{i}].role `{other}` is not system, user or assistant"
                ));
            }
        };
        let Some(content) = m.get("content").and_then(text_of) else {
            return bad(format!(
                "messages[{i}].content must be a string or text parts"
            ));
        };
        messages.push(ChatMessage {
            role: role.into(),
            content,
        });
    }
    match parse_generation(&body, String::new(), Some(messages)) {
        Ok(g) => run(commands, meter, g, true).await,
        Err(r) => r,
    }
}

async fn completions(
    State(commands): Commands,
    meter: Meter,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let body = match body_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let prompt = match body.get("prompt") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].as_str().is_some_and(|s| !s.is_empty()) => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        _ => return bad("`prompt` must be a non-empty string (or an array of one)"),
    };
    match parse_generation(&body, prompt, None) {
        Ok(g) => run(commands, meter, g, false).await,
        Err(r) => r,
    }
}

/// Text released so far, held back where it could be the start of a stop sequence.
struct StopScan {
    stop: Vec<String>,
    text: String,
    sent: usize,
    stopped: bool,
}

impl StopScan {
    /// Add `delta`; returns the text that may be released now.
    fn push(&mut self, delta: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.text.push_str(delta);
        if let Some(at) = self
            .stop
            .iter()
            .filter_map(|s| {
                self.text[self.sent..]
                    .find(s.as_str())
                    .map(|i| self.sent + i)
            })
            .min()
        {
            self.stopped = true;
            self.text.truncate(at);
            let out = self.text[self.sent..].to_string();
            self.sent = self.text.len();
            return out;
        }
        // Hold back the longest tail that begins some stop sequence.
        let mut safe = self.text.len();
        for s in &self.stop {
            for k in (1..s.len()).rev() {
                if self.text.len() >= self.sent + k
                    && self.text.is_char_boundary(self.text.len() - k)
                    && s.as_bytes()
                        .starts_with(&self.text.as_bytes()[self.text.len() - k..])
                {
                    safe = safe.min(self.text.len() - k);
                    break;
                }
            }
        }
        let out = self.text[self.sent..safe].to_string();
        self.sent = safe;
        out
    }

    /// The end: whatever was held back.
    fn finish(&mut self) -> String {
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }
}

fn hearth_summary(summary: &Value, seed: u64, stopped_early: bool) -> Value {
    let mut h =
        json!({ "seed": seed, "numeric_check": "pipeline windows replayed by independent peers" });
    for key in [
        "route",
        "receipts",
        "verify",
        "verified_tokens",
        "windows",
        "reroutes",
        "corrections",
        "elapsed_ms",
    ] {
        if let Some(v) = summary.get(key) {
            h[key] = v.clone();
        }
    }
    if stopped_early {
        h["stopped_at_stop_sequence"] = json!(true);
    }
    h
}

async fn run(commands: mpsc::Sender<Command>, meter: Meter, g: Generation, chat: bool) -> Response {
    let Generation {
        request,
        stop,
        stream,
        include_usage,
        seed,
        model,
    } = g;
    let max_tokens = request.max_tokens.unwrap_or(OPENAI_MAX_TOKENS_DEFAULT);
    let (events_tx, mut events) = mpsc::channel(Sessions::events_capacity(max_tokens));
    match ask(&commands, |reply| {
        Command::Generate(Box::new(request), events_tx, reply)
    })
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => return crate::http::refused(&refusal),
        Err(response) => return response,
    }
    let id = format!("{}-{seed:x}", if chat { "chatcmpl" } else { "cmpl" });
    let created = now_s();
    let object = if chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    let mut scan = StopScan {
        stop,
        text: String::new(),
        sent: 0,
        stopped: false,
    };
    if !stream {
        let mut tokens = 0usize;
        let mut eos = false;
        let summary = loop {
            match events.recv().await {
                Some(SessionEvent::Token {
                    text, eos: is_eos, ..
                }) => {
                    tokens += 1;
                    eos |= is_eos;
                    if !is_eos {
                        scan.push(&text);
                    }
                    if scan.stopped {
                        // Dropping the receiver ends the session.
                        break Value::Null;
                    }
                }
                Some(SessionEvent::Correction { .. }) => {}
                Some(SessionEvent::Done(summary)) => break summary,
                Some(SessionEvent::Failed(message)) => {
                    return error(StatusCode::SERVICE_UNAVAILABLE, &message);
                }
                None => return error(StatusCode::SERVICE_UNAVAILABLE, "coordinator is stopping"),
            }
        };
        scan.finish();
        let text = scan.text.clone();
        let finish = if scan.stopped || eos {
            "stop"
        } else {
            "length"
        };
        meter.tokens(tokens as u64);
        let prompt_tokens = summary
            .get("prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let choice = if chat {
            json!({ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": finish, "logprobs": null })
        } else {
            json!({ "index": 0, "text": text, "finish_reason": finish, "logprobs": null })
        };
        return Json(json!({
            "id": id,
            "object": object,
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": { "prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens as usize + tokens },
            "system_fingerprint": hearth_kernels::KERNELS_VERSION,
            "seed": seed,
            "hearth": hearth_summary(&summary, seed, scan.stopped),
        }))
        .into_response();
    }

    // Server-sent events: a chunk per released piece of text, the finish, optional usage, [DONE].
    let chunk_object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let stream_id = id.clone();
    let chunk = move |delta: Option<&str>, finish: Option<&str>, extra: Option<(&str, Value)>| {
        let choice = if chat {
            let delta = match delta {
                Some(d) => json!({ "content": d }),
                None if finish.is_none() => json!({ "role": "assistant", "content": "" }),
                None => json!({}),
            };
            json!({ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null })
        } else {
            json!({ "index": 0, "text": delta.unwrap_or(""), "finish_reason": finish, "logprobs": null })
        };
        let mut c = json!({
            "id": id, "object": chunk_object, "created": created, "model": model,
            "system_fingerprint": hearth_kernels::KERNELS_VERSION, "choices": [choice],
        });
        if let Some((key, value)) = extra {
            c[key] = value;
        }
        Event::default().data(c.to_string())
    };
    struct Stream {
        events: Option<mpsc::Receiver<SessionEvent>>,
        scan: StopScan,
        tokens: usize,
        eos: bool,
        started: bool,
    }
    let state = Stream {
        events: Some(events),
        scan,
        tokens: 0,
        eos: false,
        started: false,
    };
    let lines = futures::stream::unfold(state, move |mut st| {
        let chunk = chunk.clone();
        let id = stream_id.clone();
        let meter = meter.clone();
        async move {
            if !st.started {
                st.started = true;
                let first = if chat {
                    vec![chunk(None, None, None)]
                } else {
                    Vec::new()
                };
                return Some((first, st));
            }
            let events = st.events.as_mut()?;
            loop {
                let (summary, failed) = match events.recv().await {
                    Some(SessionEvent::Token { text, eos, .. }) => {
                        st.tokens += 1;
                        st.eos |= eos;
                        let out = if eos {
                            String::new()
                        } else {
                            st.scan.push(&text)
                        };
                        if st.scan.stopped {
                            (Value::Null, None)
                        } else if out.is_empty() {
                            continue;
                        } else {
                            return Some((vec![chunk(Some(&out), None, None)], st));
                        }
                    }
                    Some(SessionEvent::Correction { .. }) => continue,
                    Some(SessionEvent::Done(summary)) => (summary, None),
                    Some(SessionEvent::Failed(message)) => (Value::Null, Some(message)),
                    None => (Value::Null, Some("coordinator is stopping".to_string())),
                };
                st.events = None;
                let mut out = Vec::new();
                if let Some(message) = failed {
                    let error = json!({ "error": { "message": message, "type": "server_error" } });
                    out.push(Event::default().data(error.to_string()));
                    out.push(Event::default().data("[DONE]"));
                    return Some((out, st));
                }
                let rest = st.scan.finish();
                if !rest.is_empty() {
                    out.push(chunk(Some(&rest), None, None));
                }
                let finish = if st.scan.stopped || st.eos {
                    "stop"
                } else {
                    "length"
                };
                meter.tokens(st.tokens as u64);
                out.push(chunk(
                    None,
                    Some(finish),
                    Some(("hearth", hearth_summary(&summary, seed, st.scan.stopped))),
                ));
                if include_usage {
                    let prompt_tokens = summary
                        .get("prompt_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0) as usize;
                    let usage = json!({ "prompt_tokens": prompt_tokens, "completion_tokens": st.tokens, "total_tokens": prompt_tokens + st.tokens });
                    let mut c: Value = json!({ "id": id, "object": chunk_object, "created": created, "model": model, "choices": [], "usage": usage });
                    c["system_fingerprint"] = json!(hearth_kernels::KERNELS_VERSION);
                    out.push(Event::default().data(c.to_string()));
                }
                out.push(Event::default().data("[DONE]"));
                return Some((out, st));
            }
        }
    });
    let events = futures::StreamExt::flat_map(lines, |events| {
        futures::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>))
    });
    Sse::new(events).into_response()
}

/// Base64 (standard alphabet, padded) of `bytes`: the `encoding_format` OpenAI's Python client asks
/// for by default.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn embeddings(
    State(commands): Commands,
    meter: Meter,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let body = match body_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let model = match resolve(body.get("model"), ModelKind::Embedder) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let texts: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => match items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
        {
            Some(t) => t,
            None => {
                return bad(
                    "`input` must be a string or an array of strings (token arrays are not supported)",
                );
            }
        },
        _ => return bad("`input` must be a non-empty string or array of strings"),
    };
    if texts.len() > JOB_INPUTS_MAX {
        return bad(format!("at most {JOB_INPUTS_MAX} inputs per request"));
    }
    if texts.iter().any(String::is_empty) {
        return bad("`input` strings must not be empty");
    }
    let base64_format = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return bad(format!(
                "`encoding_format` `{other}` is not float or base64"
            ));
        }
    };
    if body
        .get("dimensions")
        .is_some_and(|d| !d.is_null() && d.as_u64() != Some(384))
    {
        return bad("`dimensions`: this model gives 384");
    }
    if let Err(response) = meter.units(texts.len() as u64) {
        return response;
    }
    let usage = match ask(&commands, |reply| {
        Command::EmbedTokens(texts.clone(), reply)
    })
    .await
    {
        Ok(Ok(n)) => n,
        Ok(Err(message)) => return error(StatusCode::SERVICE_UNAVAILABLE, &message),
        Err(r) => return r,
    };
    let job = SubmitJob {
        kind: "embed".into(),
        model: model.files[0]
            .blake3
            .parse()
            .expect("catalogue ids are hex"),
        inputs: texts
            .iter()
            .enumerate()
            .map(|(i, t)| JobInput {
                id: json!(i),
                text: t.clone(),
            })
            .collect(),
        max_tokens: None,
        replicas: None,
        unit_size: None,
        submitter: meter.member(),
    };
    let id = match ask(&commands, |reply| Command::Submit(Box::new(job), reply)).await {
        Ok(Ok(id)) => id,
        Ok(Err(refusal)) => return bad(refusal),
        Err(r) => return r,
    };
    let started = Instant::now();
    let status = loop {
        match ask(&commands, |reply| Command::Job {
            id,
            units: false,
            reply,
        })
        .await
        {
            Ok(Some(status)) => {
                let state = status
                    .get("state")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if matches!(state.as_str(), "done" | "failed" | "cancelled") {
                    break status;
                }
            }
            Ok(None) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("job {id} vanished"),
                );
            }
            Err(r) => return r,
        }
        if started.elapsed() > OPENAI_EMBED_WAIT {
            let _ = ask(&commands, |reply| Command::Cancel { id, reply }).await;
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "the swarm did not finish job {id} in {} s",
                    OPENAI_EMBED_WAIT.as_secs()
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lines = |receipts| {
        ask(&commands, move |reply| Command::Output {
            id,
            receipts,
            reply,
        })
    };
    let output = match lines(false).await {
        Ok(Ok(text)) => text,
        Ok(Err(Unavailable::NotDone(_))) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "job {id} failed: {}",
                    status
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("units failed")
                ),
            );
        }
        Ok(Err(other)) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("job {id}: {other:?}"),
            );
        }
        Err(r) => return r,
    };
    let receipts: Vec<Value> = match lines(true).await {
        Ok(Ok(text)) => text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        _ => Vec::new(),
    };
    let mut data = Vec::with_capacity(texts.len());
    for line in output.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let index = v.get("id").and_then(Value::as_u64).unwrap_or(0);
        let floats: Vec<f32> = v
            .get("embedding")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_f64)
                    .map(|x| x as f32)
                    .collect()
            })
            .unwrap_or_default();
        let embedding = if base64_format {
            json!(base64(
                &floats
                    .iter()
                    .flat_map(|f| f.to_le_bytes())
                    .collect::<Vec<u8>>()
            ))
        } else {
            json!(floats)
        };
        data.push(json!({ "object": "embedding", "index": index, "embedding": embedding }));
    }
    Json(json!({
        "object": "list",
        "data": data,
        "model": MINILM.name,
        "usage": { "prompt_tokens": usage, "total_tokens": usage },
        "hearth": {
            "job": id,
            "units": status.get("units_total").cloned().unwrap_or(Value::Null),
            // Results computed per unit, on average: each a different peer's.
            "replicas": match (status.get("executions").and_then(Value::as_f64), status.get("units_total").and_then(Value::as_f64)) {
                (Some(e), Some(u)) if u > 0.0 => json!(e / u),
                _ => Value::Null,
            },
            "executions": status.get("executions").cloned().unwrap_or(Value::Null),
            "rejected": status.get("rejected").cloned().unwrap_or(Value::Null),
            "receipts": receipts,
        },
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn stop_sequences_cut_the_text_and_hold_back_their_starts() {
        let mut s = StopScan {
            stop: vec!["\n\n".into(), "END".into()],
            text: String::new(),
            sent: 0,
            stopped: false,
        };
        assert_eq!(s.push("Hello"), "Hello");
        assert_eq!(s.push(" E"), " ", "an E might start END");
        assert_eq!(s.push("N"), "");
        assert_eq!(s.push("D and more"), "");
        assert!(s.stopped);
        assert_eq!(s.text, "Hello ");
        let mut s = StopScan {
            stop: vec!["\n\n".into()],
            text: String::new(),
            sent: 0,
            stopped: false,
        };
        assert_eq!(s.push("a\n"), "a");
        assert_eq!(s.push("b"), "\nb");
        assert_eq!(s.finish(), "");
        assert!(!s.stopped);
    }
}
