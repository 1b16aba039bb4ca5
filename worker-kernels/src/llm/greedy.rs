//! Greedy decoding on one stage that holds every layer: what `hearth local generate` and a node's
//! batch-generate units both run, so their tokens compare.

use std::time::{Duration, Instant};

use super::stage::{SessionId, Stage, StageInput, StageOutput};
use crate::{Error, Result};

/// A greedy run's tokens and timings.
#[derive(Clone, Debug)]
pub struct Greedy {
    /// Generated token ids (the prompt's not included), ending at EOS if it came.
    pub token_ids: Vec<u32>,
    /// Time to process the prompt and produce the first token.
    pub prefill: Duration,
    /// Time for the whole run.
    pub total: Duration,
    /// The blake3 of every step's logits in order (the prompt's last position, then each decode
    /// step's), as little-endian f32 bytes, in hex: two runs compare at a glance.
    pub logits_digest: String,
}

/// The first maximum of `row` and its value: ties go to the lowest id, as in llama.cpp's greedy
/// sampler.
pub fn argmax(row: &[f32]) -> (u32, f32) {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i as u32, v) } else { (bi, bv) }
        })
}

fn last_logits(output: StageOutput) -> Result<Vec<f32>> {
    match output {
        StageOutput::Logits(logits) => Ok(logits.squeeze(0)?.to_vec1()?),
        StageOutput::Hidden(_) => Err(Error::Request(
            "greedy decoding needs a stage over all layers".into(),
        )),
    }
}

/// Generate up to `max_tokens` tokens after `prompt` greedily in `session` (ended afterwards),
/// stopping at any of `ends` or the model's context.
pub fn generate_greedy(
    stage: &mut Stage,
    ends: &[u32],
    prompt: &[u32],
    max_tokens: usize,
    session: SessionId,
) -> Result<Greedy> {
    generate(stage, ends, prompt, max_tokens, session, None)
}

/// [`generate_greedy`], drawing each token with `sampling` ([`super::sample`], keyed by the
/// position whose logits it follows) when given.
pub fn generate(
    stage: &mut Stage,
    ends: &[u32],
    prompt: &[u32],
    max_tokens: usize,
    session: SessionId,
    sampling: Option<&hearth_protocol::work::Sampling>,
) -> Result<Greedy> {
    if prompt.is_empty() {
        return Err(Error::Request("the prompt is empty".into()));
    }
    let context = stage.config().context;
    if prompt.len() >= context {
        return Err(Error::Request(format!(
            "the prompt is {} tokens; the model's context is {context}",
            prompt.len()
        )));
    }
    let started = Instant::now();
    let result = (|| {
        let mut logits =
            last_logits(stage.forward(session, StageInput::Tokens(prompt.to_vec()), 0, false)?)?;
        let prefill = started.elapsed();
        let mut digest = blake3::Hasher::new();
        let mut token_ids = Vec::new();
        // Each generated token is fed back at the next position.
        for pos in prompt.len()..prompt.len() + max_tokens {
            for v in &logits {
                digest.update(&v.to_le_bytes());
            }
            // These logits follow the token at `pos - 1`.
            let next = super::sample(&logits, sampling, pos as u64 - 1);
            token_ids.push(next);
            if ends.contains(&next) || pos + 1 >= context || token_ids.len() == max_tokens {
                break;
            }
            logits =
                last_logits(stage.forward(session, StageInput::Tokens(vec![next]), pos, false)?)?;
        }
        Ok(Greedy {
            token_ids,
            prefill,
            total: started.elapsed(),
            logits_digest: digest.finalize().to_hex().to_string(),
        })
    })();
    stage.end_session(session);
    result
}
