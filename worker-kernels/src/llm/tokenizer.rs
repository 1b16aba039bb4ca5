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
use crate::llm::spm::Spm;
use crate::{Error, Result};

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`, …).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined tokens, matched whole like control tokens but not special.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Pre-tokenizer names (`tokenizer.ggml.pre`) this builder reproduces exactly.
const SUPPORTED_PRE: [&str; 5] = ["smollm", "starcoder", "refact", "llama-bpe", "qwen2"];

/// Llama 3's pre-tokenizer split (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3`): numbers in runs of up
/// to three digits.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2's (`LLAMA_VOCAB_PRE_TYPE_QWEN2`): the same, each digit alone.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts llama.cpp takes for ends of generation in any vocabulary (`llama-vocab.cpp`: its
/// end-of-generation list, then its fill-in-the-middle pad, repo and separator tokens), so a
/// generation stops where llama.cpp's stops.
const END_TEXTS: [&str; 31] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// The ends of generation of a vocabulary `tokens` whose metadata names `named` (EOS, EOT, EOM),
/// with llama.cpp's two exceptions: `<|end|>` is no end beside `<|return|>` and `<|call|>` (or
/// `<|calls|>` and `<|flush|>`), and `</s>` none beside `<|tool_response>`.
fn ends_of(tokens: &[String], named: impl IntoIterator<Item = Option<u32>>) -> Vec<u32> {
    let by_text: Vec<(u32, &str)> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| END_TEXTS.contains(&t.as_str()))
        .map(|(i, t)| (i as u32, t.as_str()))
        .collect();
    let has = |text: &str| by_text.iter().any(|(_, t)| *t == text);
    let dropped = |text: &str| match text {
        "<|end|>" => {
            (has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>"))
        }
        "</s>" => has("<|tool_response>"),
        _ => false,
    };
    let mut ends: Vec<u32> = by_text
        .iter()
        .filter(|(_, t)| !dropped(t))
        .map(|(i, _)| *i)
        .collect();
    ends.extend(named.into_iter().flatten());
    ends.sort_unstable();
    ends.dedup();
    ends
}

/// A model's tokenizer.
#[derive(Clone)]
pub struct GgufTokenizer {
    inner: Inner,
    /// End-of-sequence token.
    pub eos: u32,
    /// Every token that ends a generation, in order: the end-of-sequence token, the end-of-turn
    /// and end-of-message tokens the metadata names, and the tokens llama.cpp takes for ends by
    /// their text ([`END_TEXTS`]; a chat model ends its turn with `<end_of_turn>` or `<|im_end|>`,
    /// not always with its EOS).
    pub ends: Vec<u32>,
    /// Beginning-of-sequence token, when the model wants one prepended.
    pub bos: Option<u32>,
}

/// Byte-level BPE (GPT-2 style) or SentencePiece.
#[derive(Clone)]
enum Inner {
    Bpe {
        /// Matches control-token text (`<|im_end|>`) as the control token.
        special: Box<Tokenizer>,
        /// Treats control-token text as ordinary text.
        plain: Box<Tokenizer>,
    },
    Spm(Box<Spm>),
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
        if kind == "llama" {
            return Self::spm(model);
        }
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
        let split = |pattern: &str| {
            Split::new(
                SplitPattern::Regex(pattern.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::Tokenizer(e.to_string()))
        };
        // As the families' own tokenizer.json files pre-tokenize: Llama 3 and Qwen 2 split by their
        // pattern, then map bytes; the StarCoder family splits digits, then GPT-2's pattern.
        special.with_pre_tokenizer(Some(match pre.as_str() {
            "llama-bpe" => Sequence::new(vec![
                split(LLAMA3_SPLIT)?.into(),
                ByteLevel::new(false, false, false).into(),
            ]),
            "qwen2" => Sequence::new(vec![
                split(QWEN2_SPLIT)?.into(),
                ByteLevel::new(false, false, false).into(),
            ]),
            _ => Sequence::new(vec![
                split(r"\p{N}")?.into(),
                ByteLevel::new(false, false, true).into(),
            ]),
        }));
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
        let ends = ends_of(
            &tokens,
            [
                Some(eos),
                id("tokenizer.ggml.eot_token_id"),
                id("tokenizer.ggml.eom_token_id"),
            ],
        );
        Ok(Self {
            inner: Inner::Bpe {
                special: Box::new(special),
                plain: Box::new(plain),
            },
            eos,
            ends,
            bos,
        })
    }

    /// A SentencePiece vocabulary (`tokenizer.ggml.model = llama`), split as llama.cpp's SPM
    /// tokenizer splits it.
    fn spm(model: &GgufModel) -> Result<Self> {
        let bad = |reason: String| Error::Model {
            path: model.path().into(),
            reason,
        };
        let array = |key: &str| {
            model
                .metadata(key)
                .and_then(|v| v.to_vec().ok())
                .ok_or_else(|| bad(format!("{key} missing")))
        };
        let tokens = array("tokenizer.ggml.tokens")?
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| bad(e.to_string())))
            .collect::<Result<Vec<String>>>()?;
        let scores = array("tokenizer.ggml.scores")?
            .iter()
            .map(|v| v.to_f32().map_err(|e| bad(e.to_string())))
            .collect::<Result<Vec<f32>>>()?;
        let types = array("tokenizer.ggml.token_type")?
            .iter()
            .map(|v| v.to_i32().map_err(|e| bad(e.to_string())))
            .collect::<Result<Vec<i32>>>()?;
        let flag = |key: &str, default: bool| {
            model
                .metadata(key)
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(default)
        };
        let id = |key: &str| model.metadata(key).and_then(|v| v.to_u32().ok());
        let eos = id("tokenizer.ggml.eos_token_id")
            .ok_or_else(|| bad("tokenizer.ggml.eos_token_id missing".into()))?;
        // llama.cpp's defaults for SentencePiece vocabularies: a BOS, and a space before the text.
        let bos = if flag("tokenizer.ggml.add_bos_token", true) {
            id("tokenizer.ggml.bos_token_id")
        } else {
            None
        };
        let ends = ends_of(
            &tokens,
            [
                Some(eos),
                id("tokenizer.ggml.eot_token_id"),
                id("tokenizer.ggml.eom_token_id"),
            ],
        );
        let spm = Spm::new(
            tokens,
            scores,
            types,
            flag("tokenizer.ggml.add_space_prefix", true),
        )
        .map_err(bad)?;
        Ok(Self {
            inner: Inner::Spm(Box::new(spm)),
            eos,
            ends,
            bos,
        })
    }

    /// Whether `token` ends a generation.
    pub fn is_end(&self, token: u32) -> bool {
        self.ends.contains(&token)
    }

    /// Token ids of `text`. With `parse_special`, control-token text such as `<|im_start|>` becomes
    /// that token; without, it is tokenized as the characters it is.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        ids.extend(self.bos);
        match &self.inner {
            Inner::Bpe { special, plain } => {
                let tokenizer = if parse_special { special } else { plain };
                let encoding = tokenizer
                    .encode(text, false)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                ids.extend_from_slice(encoding.get_ids());
            }
            Inner::Spm(spm) => ids.extend(spm.encode(text, parse_special)),
        }
        Ok(ids)
    }

    /// The text of `ids`, control tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.inner {
            Inner::Bpe { special, .. } => special
                .decode(ids, false)
                .map_err(|e| Error::Tokenizer(e.to_string())),
            Inner::Spm(spm) => Ok(spm.decode(ids)),
        }
    }

    /// The id of a token's text, if it is one token.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.inner {
            Inner::Bpe { special, .. } => special.token_to_id(text),
            Inner::Spm(spm) => spm.token_id(text),
        }
    }
}
