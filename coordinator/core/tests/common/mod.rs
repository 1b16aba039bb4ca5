//! What the driver tests share: an honest stage of a made-up model whose every row depends on its
//! input, and the receipt such a stage signs.

// Each test binary uses its own part of it.
#![allow(dead_code)]

use hearth_protocol::work::{Forward, StageData, StageResult};
use hearth_protocol::{Receipt, ReceiptBody, SecretKey, Subject};

/// Layers of the made-up model.
pub(crate) const LAYERS: u32 = 12;

/// The numeric class the stages' receipts name.
pub(crate) const CLASS: &str = "k0/llm/test";

pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An honest stage: each row's state a mix of its input and the layers (the same row computed
/// alone or in a prefill gives the same bits).
pub(crate) fn answer(f: &Forward) -> StageResult {
    let first = u64::from(f.pos);
    let states: Vec<u64> = match &f.input {
        StageData::Tokens(ids) => ids
            .iter()
            .enumerate()
            .map(|(i, t)| mix(u64::from(*t) ^ mix(first + i as u64)))
            .collect(),
        data => data
            .floats()
            .chunks(2)
            .map(|c| (c[0] as u64) | ((c[1] as u64) << 20))
            .collect(),
    };
    let states: Vec<u64> = states
        .into_iter()
        .map(|s| mix(s ^ u64::from(f.layers.1)) & ((1 << 40) - 1))
        .collect();
    if f.layers.1 < LAYERS {
        let floats: Vec<f32> = states
            .iter()
            .flat_map(|s| [(s & 0xF_FFFF) as f32, (s >> 20) as f32])
            .collect();
        return StageResult::Hidden(StageData::hidden(states.len() as u32, &floats));
    }
    let token = |s: &u64| (s % 1000) as u32 + 3;
    if f.all_positions {
        return StageResult::NextEach(
            states
                .iter()
                .map(|s| (token(s), vec![(token(s), 1.0)]))
                .collect(),
        );
    }
    let t = token(states.last().expect("rows"));
    StageResult::Next {
        token: t,
        top: vec![(t, 1.0)],
    }
}

/// An honest stage's receipt for `output` of `forward`.
pub(crate) fn sign(key: &SecretKey, forward: &Forward, output: &StageResult) -> Receipt {
    Receipt::sign(
        key,
        ReceiptBody {
            subject: Subject::Step {
                session: hearth_core::pipeline::session_of(forward.session),
                step: forward.step,
                layer_start: forward.layers.0,
            },
            model: forward.model,
            input: forward.digest(),
            output: output.digest(),
            numeric_class: CLASS.into(),
        },
    )
}
