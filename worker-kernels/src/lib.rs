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
    NAME_BYTES_MAX, NAMES_FILE, NAMES_MAX, SMOLLM2, catalogued_in,
};
pub use embed::{EMBED_BATCH_MAX, EMBED_TOKENS_MAX, EmbedTokenizer, Embedder};
pub use error::{Error, Result};
pub use hardware::{
    CANDLE_STAGE_SUFFIX, CPU_LLM_DTYPE, Device, Hardware, KERNELS_VERSION,
    batch_invariant_llm_class, compute_device, free_cores, numeric_class,
};
pub use hearth_cpu::{KERNEL_PATH_ENV, KernelPath, Kernels};
pub use llm::{
    ChatMessage, ChatTemplate, GGUF_HEADER_BYTES_MAX, GgufModel, GgufTokenizer, Greedy, LlmConfig,
    SESSIONS_MAX, SessionId, Stage, StageInput, StageOutput, argmax, cpu_kernels, generate,
    generate_greedy, sample,
};

/// The [`hearth_protocol::ModelId`] of a model file: the blake3 of its bytes, read in 64 KiB pieces.
/// Always reads the whole file: what `hearth models fetch`, `add` and `list` check files with.
pub fn hash_file(path: &std::path::Path) -> std::io::Result<hearth_protocol::ModelId> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hearth_protocol::ModelId(hearth_protocol::Digest(
        *hasher.finalize().as_bytes(),
    )))
}

/// [`hash_file`], remembered beside the file (`.NAME.blake3`: its size, modification time and id)
/// so that a node's start, a stage's load and a coordinator's scan do not read gigabytes again to
/// name a file they named before. A file whose size or time changed is hashed again; a folder that
/// cannot be written to just goes without. (Files are replaced by renaming a new one over them,
/// which gives it a new time; one rewritten in place keeping its size and time would keep its old
/// id, and whatever it then computes is checked like any peer's work.)
pub fn model_id(path: &std::path::Path) -> std::io::Result<hearth_protocol::ModelId> {
    let meta = std::fs::metadata(path)?;
    let stamp = format!(
        "{} {}",
        meta.len(),
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos())
    );
    let sidecar = path
        .file_name()
        .map(|name| path.with_file_name(format!(".{}.blake3", name.to_string_lossy())));
    if let Some(cached) = sidecar
        .as_ref()
        .and_then(|s| std::fs::read_to_string(s).ok())
        .and_then(|text| {
            let (at, id) = text.trim().rsplit_once(' ')?;
            (at == stamp).then(|| id.parse().ok()).flatten()
        })
    {
        return Ok(cached);
    }
    let id = hash_file(path)?;
    if let Some(sidecar) = sidecar {
        let tmp = sidecar.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, format!("{stamp} {id}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, &sidecar);
        }
    }
    Ok(id)
}

#[cfg(test)]
mod model_id_tests {
    use super::*;

    #[test]
    fn a_model_id_is_remembered_until_the_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"first bytes").expect("write");
        let id = model_id(&path).expect("id");
        assert_eq!(id, hash_file(&path).expect("hash"));
        let sidecar = dir.path().join(".m.gguf.blake3");
        assert!(sidecar.exists(), "remembered");
        // Remembered: the sidecar is what is read (a planted id shows it is not hashed again).
        let text = std::fs::read_to_string(&sidecar).expect("sidecar");
        let planted = hearth_protocol::ModelId::of_bytes(b"planted");
        let (stamp, _) = text.trim().rsplit_once(' ').expect("stamp and id");
        std::fs::write(&sidecar, format!("{stamp} {planted}\n")).expect("write");
        assert_eq!(model_id(&path).expect("id"), planted);
        // Changed (another size): hashed again.
        std::fs::write(&path, b"other, longer bytes").expect("write");
        let again = model_id(&path).expect("id");
        assert_eq!(again, hash_file(&path).expect("hash"));
        assert_ne!(again, id);
    }
}
