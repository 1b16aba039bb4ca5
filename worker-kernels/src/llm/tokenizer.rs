//! The tokenizer of a GGUF model, built from the vocabulary and merges in its metadata so that no
//! tokenizer.json is needed, and made to split text exactly as llama.cpp does for the same model.
//!
//! candle's ready-made GGUF tokenizer adds a prefix space for SmolLM2's `pre = smollm`, which turns
//! "The" into 378 instead of llama.cpp's 504. llama.cpp's `smollm` pre-tokenizer splits every digit
//! on its own, then applies the GPT-2 pattern with no prefix space; that is what is built here.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::llm::GgufModel;
use crate::{Error, Result};

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`, …).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined tokens, matched whole like control tokens but not special.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Pre-tokenizer names (`tokenizer.ggml.pre`) this builder reproduces exactly.
const SUPPORTED_PRE: [&str; 3] = ["smollm", "starcoder", "refact"];

/// A model's tokenizer.
#[derive(Clone)]
pub struct GgufTokenizer {
    /// Matches control-token text (`<|im_end|>`) as the control token.
    special: Tokenizer,
    /// Treats control-token text as ordinary text.
    plain: Tokenizer,
    /// End-of-sequence token.
    pub eos: u32,
    /// Beginning-of-sequence token, when the model wants one prepended.
    pub bos: Option<u32>,
}

impl GgufTokenizer {
    /// Build the tokenizer from `model`'s metadata.
    pub fn from_model(model: &GgufModel) -> Result<Self> {
        let bad = |reason: String| Error::Model {
            path: model.path().into(),
            reason,
        };
        let string = |key: &str| {
            model
                .metadata(key)
                .and_then(|v| v.to_string().ok())
                .cloned()
        };
        let kind = string("tokenizer.ggml.model").unwrap_or_default();
        let pre = string("tokenizer.ggml.pre").unwrap_or_default();
        if kind != "gpt2" || !SUPPORTED_PRE.contains(&pre.as_str()) {
            return Err(bad(format!(
                "tokenizer {kind:?} with pre-tokenizer {pre:?} is not supported (byte-level BPE with {SUPPORTED_PRE:?})"
            )));
        }
        let list = |key: &str| -> Result<Vec<String>> {
            let values = model
                .metadata(key)
                .and_then(|v| v.to_vec().ok())
                .ok_or_else(|| bad(format!("{key} missing")))?;
            values
                .iter()
                .map(|v| {
                    v.to_string()
                        .cloned()
                        .map_err(|e| bad(format!("{key}: {e}")))
                })
                .collect()
        };
        let tokens = list("tokenizer.ggml.tokens")?;
        let merges = list("tokenizer.ggml.merges")?;
        let types: Vec<i32> = model
            .metadata("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
            .unwrap_or_default();
        let id = |key: &str| model.metadata(key).and_then(|v| v.to_u32().ok());
        let eos = id("tokenizer.ggml.eos_token_id")
            .ok_or_else(|| bad("tokenizer.ggml.eos_token_id missing".into()))?;
        let add_bos = model
            .metadata("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let bos = if add_bos {
            id("tokenizer.ggml.bos_token_id")
        } else {
            None
        };

        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| bad(format!("merge {m:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;

        let mut special = Tokenizer::new(bpe);
        let digits = Split::new(
            SplitPattern::Regex(r"\p{N}".into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        special.with_pre_tokenizer(Some(Sequence::new(vec![
            digits.into(),
            ByteLevel::new(false, false, true).into(),
        ])));
        special.with_decoder(Some(ByteLevelDecoder::default()));
        let added = |wanted: i32, is_special: bool| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&types)
                .filter(|(_, t)| **t == wanted)
                .map(|(text, _)| AddedToken::from(text.clone(), is_special))
                .collect()
        };
        let tokenizer_error = |e: tokenizers::Error| Error::Tokenizer(e.to_string());
        special
            .add_special_tokens(added(TOKEN_TYPE_CONTROL, true))
            .map_err(tokenizer_error)?;
        special
            .add_tokens(added(TOKEN_TYPE_USER_DEFINED, false))
            .map_err(tokenizer_error)?;
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);
        Ok(Self {
            special,
            plain,
            eos,
            bos,
        })
    }

    /// Token ids of `text`. With `parse_special`, control-token text such as `<|im_start|>` becomes
    /// that token; without, it is tokenized as the characters it is.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let tokenizer = if parse_special {
            &self.special
        } else {
            &self.plain
        };
        let encoding = tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        ids.extend(self.bos);
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The text of `ids`, control tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.special
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The id of a token's text, if it is one token.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.special.token_to_id(text)
    }
}
