//! Reading a chat or completions request: the model, sampling, stop sequences, streaming.

use serde::Deserialize;

use super::*;

/// What chat and completions share.
pub(super) struct Generation {
    pub(super) request: GenerateRequest,
    pub(super) stop: Vec<String>,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) seed: u64,
    /// The model as the request named it (echoed in the answer, as OpenAI does).
    pub(super) model: String,
}

pub(super) fn parse_generation(
    body: GenerationBody,
    prompt: String,
    messages: Option<Vec<ChatMessage>>,
) -> Result<Generation, Response> {
    let model = required(body.model.as_deref())?.to_string();
    let temperature = body.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad("`temperature` must be within 0..=2"));
    }
    let top_p = body.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad("`top_p` must be within (0, 1]"));
    }
    let seed = match body.seed {
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b)
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
            u64::from_le_bytes(b) >> 1
        }
        Some(Seed::Unsigned(u)) => u,
        Some(Seed::Signed(i)) => i as u64,
    };
    let max_tokens = match body.max_completion_tokens.or(body.max_tokens) {
        None => OPENAI_MAX_TOKENS_DEFAULT,
        Some(n) if (1..=u64::from(hearth_protocol::GENERATE_TOKENS_MAX)).contains(&n) => n as u32,
        Some(_) => {
            return Err(bad(format!(
                "`max_tokens` must be an integer within 1..={}",
                hearth_protocol::GENERATE_TOKENS_MAX
            )));
        }
    };
    if body.n.is_some_and(|n| n != 1) {
        return Err(bad("only `n: 1` is supported"));
    }
    let stop = match body.stop {
        None => Vec::new(),
        Some(Texts::One(s)) => vec![s],
        Some(Texts::Many(items)) => items,
    };
    if stop.len() > STOP_SEQUENCES_MAX || stop.iter().any(String::is_empty) {
        return Err(bad(format!(
            "`stop` takes 1 to {STOP_SEQUENCES_MAX} non-empty strings"
        )));
    }
    Ok(Generation {
        request: GenerateRequest {
            model: Some(model.clone()),
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
        stream: body.stream.unwrap_or(false),
        include_usage: body.stream_options.is_some_and(|o| o.include_usage),
        seed,
        model,
    })
}

/// The request's body as `T`, or OpenAI's 400 saying what is wrong with it (axum's rejection names
/// the field; a body too large keeps its 413).
pub(super) fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    match body {
        Ok(Json(body)) => Ok(body),
        Err(JsonRejection::JsonDataError(e)) => Err(bad(e.body_text())),
        Err(r) => Err(error(r.status(), &r.body_text())),
    }
}

/// `POST /v1/chat/completions` (its `messages`) and `POST /v1/completions` (its `prompt`): the
/// model, the sampling, when to stop, how to answer. Fields are read by name, so a wrong one is
/// named in the 400; fields Hearth does not use are ignored.
#[derive(Debug, Default, Deserialize)]
pub(super) struct GenerationBody {
    #[serde(default)]
    pub(super) messages: Vec<MessageIn>,
    pub(super) prompt: Option<Texts>,
    pub(super) model: Option<String>,
    pub(super) temperature: Option<f64>,
    pub(super) top_p: Option<f64>,
    pub(super) seed: Option<Seed>,
    pub(super) max_tokens: Option<u64>,
    pub(super) max_completion_tokens: Option<u64>,
    pub(super) n: Option<u64>,
    pub(super) stop: Option<Texts>,
    pub(super) stream: Option<bool>,
    pub(super) stream_options: Option<StreamOptions>,
}

/// `seed`: any integer (a negative one is taken as its bits).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Seed {
    Unsigned(u64),
    Signed(i64),
}

/// A string or an array of strings (`stop`, `prompt`, `input`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Texts {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub(super) include_usage: bool,
}

/// One chat message as a client sends it.
#[derive(Debug, Deserialize)]
pub(super) struct MessageIn {
    #[serde(default)]
    pub(super) role: String,
    pub(super) content: Option<Content>,
}

/// A message's content: text, or content parts of which only text parts are understood.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub(super) struct Part {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) text: Option<String>,
}

impl Content {
    /// The text, or `None` when a part is not text.
    pub(super) fn text(self) -> Option<String> {
        match self {
            Self::Text(s) => Some(s),
            Self::Parts(parts) => parts
                .into_iter()
                .map(|p| (p.kind == "text").then_some(p.text).flatten())
                .collect::<Option<Vec<_>>>()
                .map(|t| t.concat()),
        }
    }
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub(super) struct EmbeddingsBody {
    pub(super) model: Option<String>,
    /// Strings; anything else (token arrays) is refused by name.
    pub(super) input: Option<Value>,
    pub(super) encoding_format: Option<String>,
    pub(super) dimensions: Option<u64>,
}
