//! Hearth's compute side.
//!
//! Today this crate answers "what can this machine do?": it detects the host's hardware
//! ([`Hardware::detect`]), picks the device a node computes on ([`Hardware::primary_device`]), names the
//! numeric class of its kernels ([`numeric_class`]) and measures a start-up score ([`benchmark`]).
//! The node turns that into the [`hearth_protocol::Capabilities`] it advertises. It also names the
//! models Hearth can fetch ([`CATALOG`]) with the blake3 of each file. Model loading and the
//! layer-range executor come next, in this crate.

mod benchmark;
mod catalog;
mod embed;
mod error;
mod hardware;
mod llm;

pub use benchmark::{BENCHMARK_DURATION, benchmark_gflops_per_thread};
pub use catalog::{CATALOG, CatalogFile, CatalogModel, MINILM, ModelKind, SMOLLM2, catalog_model};
pub use embed::{EMBED_TOKENS_MAX, Embedder};
pub use error::{Error, Result};
pub use hardware::{Device, Hardware, KERNELS_VERSION, numeric_class};
pub use llm::{
    ChatMessage, ChatTemplate, GgufModel, GgufTokenizer, LlmConfig, SESSIONS_MAX, SessionId, Stage,
    StageInput, StageOutput,
};

/// The [`hearth_protocol::ModelId`] of a model file: the blake3 of its bytes, read in 64 KiB pieces.
pub fn hash_file(path: &std::path::Path) -> std::io::Result<hearth_protocol::ModelId> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hearth_protocol::ModelId(hearth_protocol::Digest(
        *hasher.finalize().as_bytes(),
    )))
}
