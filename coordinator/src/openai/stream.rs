//! Running a generation for the OpenAI endpoints: the session's events into one response or
//! server-sent events, text cut at stop sequences.

use super::*;

/// Text released so far, held back where it could be the start of a stop sequence.
pub(super) struct StopScan {
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

pub(super) fn hearth_summary(summary: Option<&Summary>, seed: u64, stopped_early: bool) -> Value {
    let mut h = summary
        .and_then(|s| serde_json::to_value(&s.trail).ok())
        .unwrap_or_else(|| json!({}));
    h["seed"] = json!(seed);
    h["numeric_check"] = json!("pipeline windows replayed by independent peers");
    if stopped_early {
        h["stopped_at_stop_sequence"] = json!(true);
    }
    h
}

pub(super) async fn run(
    commands: mpsc::Sender<Command>,
    meter: Meter,
    g: Generation,
    chat: bool,
) -> Response {
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
                        break None;
                    }
                }
                Some(SessionEvent::Correction { .. }) => {}
                Some(SessionEvent::Done(summary)) => break Some(summary),
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
        let prompt_tokens = summary.as_ref().map_or(0, |s| s.prompt_tokens as u64);
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
            "hearth": hearth_summary(summary.as_deref(), seed, scan.stopped),
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
    let model: std::sync::Arc<str> = model.into();
    let stream_model = model.clone();
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
            "id": id, "object": chunk_object, "created": created, "model": &*model,
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
        let model = stream_model.clone();
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
                            (None, None)
                        } else if out.is_empty() {
                            continue;
                        } else {
                            return Some((vec![chunk(Some(&out), None, None)], st));
                        }
                    }
                    Some(SessionEvent::Correction { .. }) => continue,
                    Some(SessionEvent::Done(summary)) => (Some(summary), None),
                    Some(SessionEvent::Failed(message)) => (None, Some(message)),
                    None => (None, Some("coordinator is stopping".to_string())),
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
                    Some((
                        "hearth",
                        hearth_summary(summary.as_deref(), seed, st.scan.stopped),
                    )),
                ));
                if include_usage {
                    let prompt_tokens = summary.as_ref().map_or(0, |s| s.prompt_tokens);
                    let usage = json!({ "prompt_tokens": prompt_tokens, "completion_tokens": st.tokens, "total_tokens": prompt_tokens + st.tokens });
                    let mut c: Value = json!({ "id": id, "object": chunk_object, "created": created, "model": &*model, "choices": [], "usage": usage });
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
    event_stream(events, SSE_KEEP_ALIVE)
}

/// How long a stream of server-sent events stays silent before it sends a comment line: a long
/// prompt's prefill can take minutes before the first token, and proxies and clients drop a
/// connection that says nothing for a minute or so. Clients skip comment lines.
const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// `events` as server-sent events, a comment line (`:`) after every `every` of silence.
fn event_stream(
    events: impl futures::Stream<Item = Result<Event, std::convert::Infallible>> + Send + 'static,
    every: std::time::Duration,
) -> Response {
    let keep_alive = axum::response::sse::KeepAlive::new().interval(every);
    Sse::new(events).keep_alive(keep_alive).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream with nothing to say yet sends comment lines, then its events as they come.
    #[tokio::test]
    async fn a_silent_event_stream_sends_comment_lines_until_its_events_come() {
        let every = std::time::Duration::from_millis(20);
        let (send, events) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let events =
            futures::StreamExt::map(tokio_stream_of(events), Ok::<_, std::convert::Infallible>);
        let mut body = event_stream(events, every).into_body().into_data_stream();
        let mut next = async || {
            let frame = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                futures::StreamExt::next(&mut body),
            );
            let frame = frame
                .await
                .expect("a frame within 10 s")
                .expect("the stream goes on");
            String::from_utf8(frame.expect("a frame").to_vec()).expect("UTF-8")
        };
        for _ in 0..2 {
            assert_eq!(next().await, ":\n\n", "a comment line while silent");
        }
        send.send(Event::default().data("token"))
            .expect("stream open");
        let mut frame = next().await;
        while frame == ":\n\n" {
            frame = next().await;
        }
        assert_eq!(frame, "data: token\n\n");
    }

    /// An unbounded receiver as a stream.
    fn tokio_stream_of<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
    ) -> impl futures::Stream<Item = T> + Send + 'static {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
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
