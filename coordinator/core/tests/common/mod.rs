//! What the driver tests share: an honest stage of a made-up model whose every row depends on its
//! input, and the receipt such a stage signs.

// Each test binary uses its own part of it.
#![allow(dead_code)]

use hearth_core::pipeline::{Action, Candidate, Driver, Hop, Verify};
use hearth_protocol::work::{Forward, StageData, StageResult};
use hearth_protocol::{ModelId, PeerId, Receipt, ReceiptBody, SecretKey, Subject};

/// Layers of the made-up model.
pub(crate) const LAYERS: u32 = 12;

/// The numeric class the stages' receipts name.
pub(crate) const CLASS: &str = "k0/llm/test";

/// What a liar returns instead of the honest answer (and signs): hidden states with one value
/// moved, or another token; what it changes depends on who it is, so two liars never agree.
pub(crate) fn lie(honest: StageResult, liar: u8) -> StageResult {
    match honest {
        StageResult::Hidden(data) => {
            let mut floats = data.floats();
            let rows = (floats.len() / 2) as u32;
            let i = usize::from(liar) % floats.len();
            floats[i] += 1000.0 * f32::from(liar);
            StageResult::Hidden(StageData::hidden(rows, &floats))
        }
        StageResult::Next { token, .. } => {
            let t = token + u32::from(liar);
            StageResult::Next {
                token: t,
                top: vec![(t, 1.0)],
            }
        }
        StageResult::NextEach(rows) => StageResult::NextEach(
            rows.into_iter()
                .map(|(t, _)| (t + u32::from(liar), vec![(t + u32::from(liar), 1.0)]))
                .collect(),
        ),
    }
}

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

/// Peers 1..=n: their keys, and each as a planner's candidate of score 1 and memory to spare.
pub(crate) struct Peers {
    pub(crate) keys: Vec<SecretKey>,
    pub(crate) candidates: Vec<Candidate>,
}

impl Peers {
    pub(crate) fn new(n: u8) -> Self {
        let keys: Vec<SecretKey> = (1..=n).map(|i| SecretKey::from_bytes(&[i; 32])).collect();
        let candidates = keys
            .iter()
            .map(|k| Candidate::new(k.public().peer_id(), 1.0, u64::MAX / 2))
            .collect();
        Self { keys, candidates }
    }

    /// The number (1..=n) of `peer`.
    pub(crate) fn number(&self, peer: &PeerId) -> u8 {
        let i = self
            .keys
            .iter()
            .position(|k| k.public().peer_id() == *peer)
            .expect("a known peer");
        i as u8 + 1
    }

    /// The key of `peer`.
    pub(crate) fn key_of(&self, peer: &PeerId) -> &SecretKey {
        &self.keys[usize::from(self.number(peer) - 1)]
    }
}

/// A session of the made-up model generating `tokens` after a 4-token prompt along `route`.
pub(crate) fn start(
    session: u64,
    route: Vec<Hop>,
    tokens: usize,
    verify: Verify,
    seed: u64,
) -> (Driver, Vec<Action>) {
    Driver::new(
        session,
        ModelId::of_bytes(b"test"),
        route,
        vec![1, 2, 3, 4],
        tokens,
        vec![0],
        1 << 20,
        verify,
        seed,
    )
}
