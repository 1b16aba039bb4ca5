//! Hearth's compute side: where inference happens.
//!
//! - **Models.** [`GgufModel`] opens a llama-family GGUF (SmolLM2-135M-Instruct Q4_1 by default);
//!   [`GgufTokenizer`] is built from its metadata and tokenizes as llama.cpp does; [`ChatTemplate`]
//!   renders its chat template. [`Embedder`] runs a BERT sentence embedder (all-MiniLM-L6-v2).
//!   [`CATALOG`] names the models Hearth fetches, with the blake3 of every file.
//! - **Stages.** [`Stage::load`] loads any range of a model's layers and runs it with a KV cache per
//!   session: token ids or hidden states in, hidden states or logits out. Chained stages compute
//!   bit for bit what one stage over all layers computes.
//! - **The machine.** [`Hardware::detect`] reads the host's CPU, memory and GPUs (with the `cuda` /
//!   `metal` features), [`numeric_class`] names the code path that decides the bits, and
//!   [`benchmark_gflops_per_thread`] gives a start-up score. The node advertises all of it.

mod benchmark;
mod catalog;
mod embed;
mod error;
mod hardware;
mod llm;

pub use benchmark::{BENCHMARK_DURATION, benchmark_gflops_per_thread};
pub use catalog::{
    CATALOG, CatalogFile, CatalogModel, CatalogPart, GEMMA3, MINILM, ModelKind, ModelNames,
    NAME_BYTES_MAX, NAMES_FILE, NAMES_MAX, SMOLLM2,
};
pub use embed::{EMBED_BATCH_MAX, EMBED_TOKENS_MAX, EmbedTokenizer, Embedder};
pub use error::{Error, Result};
pub use hardware::{
    CANDLE_STAGE_SUFFIX, CPU_LLM_DTYPE, Device, Hardware, KERNELS_VERSION,
    batch_invariant_llm_class, compute_device, free_cores, numeric_class,
};
pub use hearth_cpu::{KERNEL_PATH_ENV, KernelPath, Kernels};
pub use llm::{
    ChatMessage, ChatTemplate, GgufModel, GgufTokenizer, Greedy, LlmConfig, SESSIONS_MAX,
    SessionId, Stage, StageInput, StageOutput, argmax, cpu_kernels, generate, generate_greedy,
    sample,
};

/// The [`hearth_protocol::ModelId`] of a model file: the blake3 of its bytes, read in 64 KiB pieces.
pub fn hash_file(path: &std::path::Path) -> std::io::Result<hearth_protocol::ModelId> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hearth_protocol::ModelId(hearth_protocol::Digest(
        *hasher.finalize().as_bytes(),
    )))
}
