//! `hearth generate`: pipelined generation on the swarm, streamed or whole.

use std::io::Write;

use anyhow::bail;
use serde_json::{Value, json};

use crate::cli::SwarmGenerateArgs;
use crate::client::Client;
use crate::config::FileConfig;

pub(crate) async fn run(args: SwarmGenerateArgs, file: &FileConfig) -> anyhow::Result<()> {
    let client = Client::new(&args.client, file)?;
    let mut request = json!({
        "prompt": args.prompt,
        "max_tokens": args.max_tokens,
        "stream": true,
        "verify": args.verify,
    });
    if let Some(model) = &args.model {
        request["model"] = model.as_str().into();
    }
    if args.chat {
        request["messages"] = json!([{"role": "user", "content": args.prompt}]);
        request["prompt"] = "".into();
    }
    if let Some(k) = args.stages {
        request["stages"] = k.into();
    }
    let s = &args.sampling;
    if s.temperature != 0.0 || s.top_p != 1.0 || s.seed != 0 {
        request["sampling"] =
            json!({"temperature": s.temperature, "top_p": s.top_p, "seed": s.seed});
    }
    let mut summary = Value::Null;
    let mut out = std::io::stdout().lock();
    client
        .post_lines("/v1/generate", &request, |line| {
            if let Some(text) = line.get("text").and_then(Value::as_str)
                && line.get("token_id").is_some()
            {
                if args.stream && !args.json {
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                }
            } else if let Some(correction) = line.get("correction") {
                if args.stream && !args.json {
                    let _ = write!(
                        out,
                        "\n[a stage was caught lying: tokens from {} on are generated again]\n{}",
                        correction["from"],
                        correction["text"].as_str().unwrap_or("")
                    );
                }
            } else if let Some(done) = line.get("done") {
                summary = done.clone();
            } else if let Some(error) = line.get("error") {
                summary = json!({ "error": error });
            }
        })
        .await?;
    if let Some(message) = summary["error"]["message"].as_str() {
        bail!("{message}");
    }
    if summary.is_null() {
        bail!("the coordinator closed the stream before the generation finished");
    }
    if args.json {
        writeln!(out, "{summary}")?;
    } else {
        if args.stream {
            writeln!(out)?;
        } else {
            writeln!(out, "{}", summary["text"].as_str().unwrap_or(""))?;
        }
        let route: Vec<String> = summary["route"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                let peer = h["peer_id"].as_str().unwrap_or("?");
                format!(
                    "{}..{} on …{}",
                    h["layers"][0],
                    h["layers"][1],
                    &peer[peer.len().saturating_sub(6)..]
                )
            })
            .collect();
        eprintln!(
            "{} tokens ({} verified), {:.1} tokens/s; route: {}; reroutes: {}",
            summary["token_ids"].as_array().map_or(0, Vec::len),
            summary["verified_tokens"],
            summary["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
            route.join(", "),
            summary["reroutes"].as_array().map_or(0, Vec::len),
        );
    }
    Ok(())
}
