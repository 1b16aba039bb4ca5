//! The simulated model: each layer a keyed mix of its input, so a row's activation after any layer
//! depends on every layer before it and on the token it started from. A wrong activation anywhere
//! in a route changes every later layer's output and the token, as in a real model; and how a route
//! cuts the layers does not change what an honest route computes.
//!
//! A row's state is a `u64`, sent between stages as four floats of 16 bits each (exact in `f32`).

use hearth_protocol::work::{Forward, StageData, StageResult};

/// Layers of the simulated model (the default model's).
pub(crate) const LAYERS: u32 = 30;

/// Tokens in the simulated vocabulary.
const VOCAB: u64 = 49_000;

/// Floats a row's state travels as.
const ROW_FLOATS: usize = 4;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn embed(token: u32, position: u64) -> u64 {
    mix(u64::from(token) ^ mix(position ^ 0x0065_6d62_6564))
}

fn layers(mut state: u64, from: u32, to: u32) -> u64 {
    for layer in from..to {
        state = mix(state ^ mix(u64::from(layer) + 1));
    }
    state
}

fn token(state: u64) -> u32 {
    (state % VOCAB) as u32
}

fn encode(state: u64) -> [f32; ROW_FLOATS] {
    std::array::from_fn(|i| ((state >> (16 * i)) & 0xFFFF) as f32)
}

fn decode(row: &[f32]) -> u64 {
    row.iter()
        .enumerate()
        .map(|(i, v)| ((v.clamp(0.0, 65_535.0) as u64) & 0xFFFF) << (16 * i))
        .fold(0, |a, b| a | b)
}

/// The token an honest route gives after `input` at `position`.
pub(crate) fn next(input: u32, position: u64) -> u32 {
    token(layers(embed(input, position), 0, LAYERS))
}

/// How a stage answers: honestly, or lying with its own `shift` (each liar its own wrong answer).
pub(crate) fn stage(forward: &Forward, shift: Option<u32>) -> StageResult {
    let (start, end) = forward.layers;
    let first = u64::from(forward.pos);
    let states: Vec<u64> = match &forward.input {
        StageData::Tokens(ids) => ids
            .iter()
            .enumerate()
            .map(|(i, t)| embed(*t, first + i as u64))
            .collect(),
        data => data.floats().chunks(ROW_FLOATS).map(decode).collect(),
    };
    let states: Vec<u64> = states.into_iter().map(|s| layers(s, start, end)).collect();
    let lie = shift.unwrap_or(0);
    if end < LAYERS {
        // A lying middle stage nudges its activations (the lowest word by a few units: a relative
        // difference far inside any rounding margin), and every later layer computes on them.
        let floats: Vec<f32> = states
            .iter()
            .flat_map(|s| encode(s ^ u64::from(lie)))
            .collect();
        return StageResult::Hidden(StageData::hidden(states.len() as u32, &floats));
    }
    if forward.all_positions {
        return StageResult::NextEach(
            states
                .iter()
                .map(|s| {
                    let t = token(*s) + lie;
                    (t, vec![(t, 1.0)])
                })
                .collect(),
        );
    }
    // A lying last stage claims the honest logits beside its wrong token, as the node's fault
    // injection does: its own logits must prove nothing.
    let honest = states.last().map_or(0, |s| token(*s));
    StageResult::Next {
        token: honest + lie,
        top: vec![(honest, 1.0)],
    }
}

#[cfg(test)]
mod tests {
    use hearth_protocol::ModelId;

    use super::*;

    fn forward(layers: (u32, u32), input: StageData, pos: u32) -> Forward {
        Forward {
            session: 1,
            step: 0,
            model: ModelId::of_bytes(b"sim llm"),
            layers,
            input,
            pos,
            all_positions: false,
            sampling: None,
        }
    }

    fn through(cuts: &[u32], tokens: Vec<u32>, liar: Option<usize>) -> u32 {
        let mut data = StageData::Tokens(tokens);
        for (i, w) in cuts.windows(2).enumerate() {
            let shift = (liar == Some(i)).then_some(7);
            match stage(&forward((w[0], w[1]), data.clone(), 3), shift) {
                StageResult::Hidden(next) => data = next,
                StageResult::Next { token, .. } => return token,
                other => panic!("{other:?}"),
            }
        }
        unreachable!("the last cut is the last layer")
    }

    #[test]
    fn any_cut_gives_the_same_token_and_a_lie_anywhere_changes_it() {
        let tokens = vec![5, 9, 11];
        let honest = next(11, 5);
        assert_eq!(through(&[0, LAYERS], tokens.clone(), None), honest);
        assert_eq!(through(&[0, 4, 20, LAYERS], tokens.clone(), None), honest);
        assert_eq!(through(&[0, 13, LAYERS], tokens.clone(), None), honest);
        for liar in 0..3 {
            assert_ne!(
                through(&[0, 4, 20, LAYERS], tokens.clone(), Some(liar)),
                honest,
                "a lie at stage {liar} reaches the token"
            );
        }
    }
}
