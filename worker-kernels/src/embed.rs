//! Sentence embeddings: a BERT model (all-MiniLM-L6-v2 by default) from a folder holding
//! `model.safetensors`, `config.json` and `tokenizer.json`, with sentence-transformers' pooling: the
//! mean of the token vectors over the attention mask, then L2 normalisation.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use hearth_protocol::ModelId;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::{Error, Result, model_id};

/// Longest input, in tokens, before truncation: sentence-transformers' `max_seq_length` for
/// all-MiniLM-L6-v2 (its tokenizer.json says 128; the library overrides it with 256).
pub const EMBED_TOKENS_MAX: usize = 256;

/// Most texts of one token count run as one batch by [`Embedder::embed_each`].
pub const EMBED_BATCH_MAX: usize = 32;

/// A loaded sentence embedder.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// The blake3 of its weights file.
    pub id: ModelId,
    /// Width of its vectors.
    pub dim: usize,
}

impl Embedder {
    /// Load the model in `dir` onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let weights = dir.join("model.safetensors");
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| Error::Io { path, source })
        };
        let config: Config =
            serde_json::from_slice(&read("config.json")?).map_err(|e| Error::Model {
                path: dir.join("config.json"),
                reason: format!("not a BERT config: {e}"),
            })?;
        let mut tokenizer =
            Tokenizer::from_bytes(read("tokenizer.json")?).map_err(|e| Error::Model {
                path: dir.join("tokenizer.json"),
                reason: format!("not a tokenizer: {e}"),
            })?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: EMBED_TOKENS_MAX,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        // Read into memory rather than memory-mapping: mapping is unsafe if the file changes under us.
        let bytes = read("model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)?;
        let model = BertModel::load(vb, &config).map_err(|e| Error::Model {
            path: weights.clone(),
            reason: format!(
                "not the BERT weights its config describes: {}",
                e.to_string().lines().next().unwrap_or_default()
            ),
        })?;
        let id = model_id(&weights).map_err(|source| Error::Io {
            path: weights,
            source,
        })?;
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            id,
            dim: config.hidden_size,
        })
    }

    /// Unit-length embeddings of `texts`, each bit for bit what it would be computed alone, so a
    /// text's embedding never depends on which texts share its unit: texts are batched only with
    /// texts of the same token count, so nothing is padded. This is what the swarm and
    /// `hearth local embed` both run, so their outputs compare bit for bit.
    pub fn embed_each(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let encodings: Vec<tokenizers::Encoding> = texts
            .iter()
            .map(|t| {
                self.tokenizer
                    .encode(*t, true)
                    .map_err(|e| Error::Tokenizer(e.to_string()))
            })
            .collect::<Result<_>>()?;
        let mut by_length: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, e) in encodings.iter().enumerate() {
            by_length.entry(e.len()).or_default().push(i);
        }
        let mut out = vec![Vec::new(); texts.len()];
        for indices in by_length.values() {
            for chunk in indices.chunks(EMBED_BATCH_MAX) {
                let batch: Vec<tokenizers::Encoding> =
                    chunk.iter().map(|&i| encodings[i].clone()).collect();
                for (&i, vector) in chunk.iter().zip(self.forward(&batch)?) {
                    out[i] = vector;
                }
            }
        }
        Ok(out)
    }

    /// Unit-length embeddings of `texts`, one per text, computed as one batch padded to the longest
    /// (faster, but padding changes the bits of the shorter texts' results).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        self.forward(&encodings)
    }

    /// Mean-pooled, L2-normalised embeddings of encodings of one length.
    fn forward(&self, encodings: &[tokenizers::Encoding]) -> Result<Vec<Vec<f32>>> {
        let rows = |f: fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor> {
            let data: Vec<Tensor> = encodings
                .iter()
                .map(|e| Tensor::new(f(e), &self.device))
                .collect::<candle_core::Result<_>>()?;
            Ok(Tensor::stack(&data, 0)?)
        };
        let ids = rows(|e| e.get_ids())?;
        let types = rows(|e| e.get_type_ids())?;
        let mask = rows(|e| e.get_attention_mask())?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over the real tokens only: padding is masked out of the sum and the count.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
        let unit = mean.broadcast_div(&norms)?;
        Ok(unit.to_vec2()?)
    }
}

/// The embedder's tokenizer alone, to count a text's tokens (as the embedder truncates them) without
/// loading the model: what an API reports as usage.
#[derive(Debug)]
pub struct EmbedTokenizer(Tokenizer);

impl EmbedTokenizer {
    /// Load `dir/tokenizer.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| Error::Model {
            path: path.clone(),
            reason: format!("not a tokenizer: {e}"),
        })?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: EMBED_TOKENS_MAX,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Self(tokenizer))
    }

    /// Tokens the embedder reads of `text`, special tokens included.
    pub fn count(&self, text: &str) -> Result<usize> {
        Ok(self
            .0
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .len())
    }
}
