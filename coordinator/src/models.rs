//! The models the coordinator reads itself, from its models folder, on first use: an LLM's
//! tokenizer, chat template and shape (to tokenize prompts and plan routes and step times), and the
//! default embedder's tokenizer (to count an API's usage). Pipeline sessions hold the LLM they run.

use std::path::PathBuf;
use std::sync::Arc;

use hearth_kernels::{ChatTemplate, EmbedTokenizer, GgufModel, GgufTokenizer, MINILM, SMOLLM2};
use hearth_protocol::ModelId;

use crate::pipeline::LayerShape;

/// Why the coordinator cannot read a model it needs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ModelsError {
    /// Started without `--models`.
    #[error("this coordinator has no models folder (start it with --models DIR) to {0}")]
    NoFolder(&'static str),
    /// The default LLM's file is missing or unreadable.
    #[error(
        "{0} (the coordinator tokenizes prompts with the default model's tokenizer; run `hearth models fetch`)"
    )]
    Llm(hearth_kernels::Error),
    /// The default embedder's tokenizer is missing or unreadable, or a text would not tokenize.
    #[error("{0}")]
    Embedder(hearth_kernels::Error),
}

/// An LLM as the coordinator knows it: enough to tokenize, plan and time.
pub(crate) struct Llm {
    /// Its id (blake3 of its file).
    pub(crate) id: ModelId,
    pub(crate) tokenizer: GgufTokenizer,
    pub(crate) template: Option<ChatTemplate>,
    pub(crate) layers: u32,
    pub(crate) context: usize,
    /// What one layer takes in memory, about: the file's size over its layers.
    pub(crate) layer_bytes: u64,
    /// One layer's arithmetic, for the time a stage is given for a step.
    pub(crate) shape: LayerShape,
    /// Width of the hidden state: a prefill's activations are `prompt × hidden × 4` bytes.
    pub(crate) hidden: usize,
}

/// The models folder and what was loaded from it.
pub(crate) struct Models {
    dir: Option<PathBuf>,
    llm: Option<Arc<Llm>>,
    embedder: Option<EmbedTokenizer>,
}

impl Models {
    /// Models from `dir` (none without one: generation and usage counts then say so).
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            llm: None,
            embedder: None,
        }
    }

    /// The default LLM, loaded on first use.
    pub(crate) fn llm(&mut self) -> Result<Arc<Llm>, ModelsError> {
        if let Some(llm) = &self.llm {
            return Ok(llm.clone());
        }
        let dir = self
            .dir
            .clone()
            .ok_or(ModelsError::NoFolder("tokenize with"))?;
        let path = dir.join(SMOLLM2.files[0].path);
        let model = GgufModel::open(&path).map_err(ModelsError::Llm)?;
        let tokenizer = GgufTokenizer::from_model(&model).map_err(ModelsError::Llm)?;
        let template = ChatTemplate::from_model(&model).map_err(ModelsError::Llm)?;
        let file_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        let c = &model.config;
        let llm = Arc::new(Llm {
            shape: LayerShape {
                hidden: c.hidden as u64,
                kv: (c.kv_heads * c.head_dim) as u64,
                ffn: c.ffn as u64,
            },
            hidden: c.hidden,
            layer_bytes: file_bytes / c.layers.max(1) as u64,
            id: model.id,
            tokenizer,
            template,
            layers: c.layers as u32,
            context: c.context,
        });
        self.llm = Some(llm.clone());
        Ok(llm)
    }

    /// Tokens the default embedder reads of `texts`, in all (for an API's usage figures).
    pub(crate) fn embed_tokens(&mut self, texts: &[String]) -> Result<usize, ModelsError> {
        if self.embedder.is_none() {
            let dir = self
                .dir
                .clone()
                .ok_or(ModelsError::NoFolder("count tokens with"))?;
            let folder = std::path::Path::new(MINILM.files[0].path)
                .parent()
                .map(|p| dir.join(p))
                .unwrap_or(dir);
            self.embedder = Some(EmbedTokenizer::load(&folder).map_err(ModelsError::Embedder)?);
        }
        let tokenizer = self.embedder.as_ref().expect("loaded above");
        texts.iter().try_fold(0, |n, t| {
            Ok(n + tokenizer.count(t).map_err(ModelsError::Embedder)?)
        })
    }
}
