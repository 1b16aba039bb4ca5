//! Reading a chat or completions request: the model, sampling, stop sequences, streaming.

use super::*;

/// What chat and completions share.
pub(super) struct Generation {
    pub(super) request: GenerateRequest,
    pub(super) stop: Vec<String>,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) seed: u64,
    pub(super) model: &'static str,
}

pub(super) fn number(body: &Value, key: &str) -> Result<Option<f64>, Response> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{key}` must be a number"))),
    }
}

pub(super) fn parse_generation(
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

pub(super) fn body_json(body: Result<Json<Value>, JsonRejection>) -> Result<Value, Response> {
    let Json(body) = body.map_err(|r| error(r.status(), &r.body_text()))?;
    if !body.is_object() {
        return Err(bad("the request body must be a JSON object"));
    }
    Ok(body)
}

pub(super) fn text_of(content: &Value) -> Option<String> {
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
