//! `POST /v1/embeddings`: a sharded embed job, its vectors as floats or base64.

use super::*;

/// Base64 (standard alphabet, padded) of `bytes`: the `encoding_format` OpenAI's Python client asks
/// for by default.
pub(super) fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(super) async fn embeddings(
    State(commands): Commands,
    meter: Meter,
    body: Result<Json<super::parse::EmbeddingsBody>, JsonRejection>,
) -> Response {
    let body = match super::parse::body(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let model = match embedder(body.model.as_deref()) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let texts: Vec<String> = match &body.input {
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
    let base64_format = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return bad(format!(
                "`encoding_format` `{other}` is not float or base64"
            ));
        }
    };
    if body.dimensions.is_some_and(|d| d != 384) {
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
        Ok(Err(why)) => return error(StatusCode::SERVICE_UNAVAILABLE, &why.to_string()),
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
        Ok(Err(refusal)) => return bad(refusal.to_string()),
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
                use crate::scheduler::JobState;
                if matches!(
                    status.status.state,
                    JobState::Done | JobState::Failed | JobState::Cancelled
                ) {
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
                    "job {id} {}: {} of {} units failed",
                    if status.status.state == crate::scheduler::JobState::Cancelled {
                        "was cancelled"
                    } else {
                        "failed"
                    },
                    status.status.units_failed,
                    status.status.units_total
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
            "units": status.status.units_total,
            // Results computed per unit, on average: each a different peer's.
            "replicas": (status.status.units_total > 0)
                .then(|| status.status.executions as f64 / status.status.units_total as f64),
            "executions": status.status.executions,
            "rejected": status.status.rejected,
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
}
