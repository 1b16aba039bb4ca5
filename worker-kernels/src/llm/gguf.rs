//! A GGUF file opened for Hearth: its metadata read, its hyper-parameters checked, its tensors loaded
//! one at a time as stages ask for them.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{Content, Value};
use hearth_protocol::ModelId;

use crate::{Error, Result, model_id};

/// Hyper-parameters of a llama-family model, from its GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmConfig {
    /// The GGUF architecture: `llama` (both kernels), or `mistral`, `qwen2`, `qwen3`, `gemma3`
    /// (Hearth's CPU kernels only).
    pub arch: String,
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the hidden state.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (fewer than query heads under grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the feed-forward layer.
    pub ffn: usize,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMS-norm epsilon.
    pub rms_eps: f64,
    /// Longest sequence the model was trained for.
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
}

/// An opened GGUF model file.
#[derive(Debug)]
pub struct GgufModel {
    path: PathBuf,
    content: Content,
    /// Its hyper-parameters.
    pub config: LlmConfig,
    /// The blake3 of the file.
    pub id: ModelId,
}

impl GgufModel {
    /// Open `path`, read its metadata, and check it is a llama-family model Hearth can run.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.into(),
            source,
        };
        let bad = |reason: String| Error::Model {
            path: path.into(),
            reason,
        };
        let mut reader = BufReader::new(File::open(path).map_err(io)?);
        let content = Content::read(&mut reader)
            .map_err(|e| bad(format!("not a GGUF file ({})", first_line(&e))))?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if !hearth_cpu::ARCHITECTURES.contains(&arch.as_str()) {
            return Err(bad(format!(
                "architecture {arch:?} is not supported ({})",
                hearth_cpu::ARCHITECTURES.join(", ")
            )));
        }
        let get = |key: &str| -> Result<&Value> {
            content
                .metadata
                .get(&format!("{arch}.{key}"))
                .ok_or_else(|| bad(format!("metadata {arch}.{key} missing")))
        };
        let int = |key: &str| -> Result<usize> {
            get(key)?
                .to_u32()
                .map(|v| v as usize)
                .map_err(|e| bad(format!("{arch}.{key}: {e}")))
        };

        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let vocab = content
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map_or(0, Vec::len);
        let free_heads = arch == "gemma3" || arch == "qwen3";
        let head_dim = if free_heads {
            int("attention.key_length").unwrap_or(hidden / heads.max(1))
        } else {
            int("rope.dimension_count").unwrap_or(hidden / heads.max(1))
        };
        let config = LlmConfig {
            arch: arch.clone(),
            layers: int("block_count")?,
            hidden,
            heads,
            kv_heads: int("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            ffn: int("feed_forward_length")?,
            rope_base: get("rope.freq_base")
                .and_then(|v| v.to_f32().map_err(|e| bad(e.to_string())))
                .unwrap_or(10_000.0),
            rms_eps: f64::from(
                get("attention.layer_norm_rms_epsilon")?
                    .to_f32()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            context: int("context_length")?,
            vocab,
        };
        if config.heads == 0
            || config.kv_heads == 0
            || !config.heads.is_multiple_of(config.kv_heads)
            || (!free_heads && config.head_dim * config.heads != hidden)
        {
            return Err(bad(format!("inconsistent attention shape: {config:?}")));
        }
        let id = model_id(path).map_err(io)?;
        Ok(Self {
            path: path.into(),
            content,
            config,
            id,
        })
    }

    /// The file this model was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value, for the tokenizer and chat template.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// Whether the file holds a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Read one tensor from the file onto `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let mut reader = BufReader::new(File::open(&self.path).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?);
        self.content
            .tensor(&mut reader, name, device)
            .map_err(|e| Error::Model {
                path: self.path.clone(),
                reason: format!("tensor {name}: {}", first_line(&e)),
            })
    }
}

/// candle's errors carry a backtrace when RUST_BACKTRACE is set; a user needs the first line.
fn first_line(error: &impl std::fmt::Display) -> String {
    error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}
