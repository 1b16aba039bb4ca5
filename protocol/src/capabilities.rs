//! What a peer can do: the hardware it offers, how fast it is, how reproducible its kernels are, and
//! which models it holds. Nodes advertise these; the coordinator schedules by them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    ADVERT_FEATURES_MAX, ADVERT_MODELS_MAX, ADVERT_STRING_BYTES_MAX, Error, ModelId, Result,
};

/// Where a peer runs its kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The host CPU.
    Cpu,
    /// An NVIDIA GPU through CUDA.
    Cuda,
    /// An Apple GPU through Metal.
    Metal,
}

impl Backend {
    /// The lowercase name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Metal => "metal",
        }
    }
}

/// A family of kernels whose outputs are compared between replicas. A peer's LLM kernels and its
/// embedding kernels can differ in how reproducible they are, so each has its own numeric class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelFamily {
    /// Decoder-only language models (generation, pipeline stages).
    Llm,
    /// Sentence embedders.
    Embed,
}

/// A peer's advertised hardware and standing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The device the peer computes on.
    pub backend: Backend,
    /// The device's name: the CPU model for `cpu`, the GPU's name otherwise.
    pub device: String,
    /// Memory of that device, in bytes (host RAM for `cpu`, device memory for a GPU).
    pub memory_total_bytes: u64,
    /// Of which free when the advert was made.
    pub memory_free_bytes: u64,
    /// Threads the peer will use for work.
    pub threads: u32,
    /// The host CPU's model name.
    pub cpu_model: String,
    /// Logical cores of the host.
    pub cpu_cores: u32,
    /// SIMD features of the host CPU the kernels can use (for example `avx2`, `avx512f`, `neon`).
    pub cpu_features: Vec<String>,
    /// Host RAM in bytes, whatever the backend.
    pub host_memory_total_bytes: u64,
    /// Operating system (`linux`, `macos`, …) and architecture (`x86_64`, `aarch64`, …).
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Start-up micro-benchmark result, in GFLOP/s across `threads`. Larger is faster.
    pub score: f64,
    /// Per kernel family, the numeric class: peers with equal classes must agree bit for bit.
    pub numeric_class: BTreeMap<KernelFamily, String>,
    /// Models whose files the peer holds, by blake3 id.
    pub models: Vec<ModelId>,
}

impl Capabilities {
    /// Check the limits the schema cannot express, after decoding bytes from a peer.
    pub fn validate(&self) -> Result<()> {
        if self.models.len() > ADVERT_MODELS_MAX {
            return Err(Error::Limit(format!(
                "{} models listed, at most {ADVERT_MODELS_MAX}",
                self.models.len()
            )));
        }
        if self.cpu_features.len() > ADVERT_FEATURES_MAX {
            return Err(Error::Limit(format!(
                "{} CPU features listed",
                self.cpu_features.len()
            )));
        }
        let strings = [&self.device, &self.cpu_model, &self.os, &self.arch]
            .into_iter()
            .chain(&self.cpu_features)
            .chain(self.numeric_class.values());
        for s in strings {
            if s.len() > ADVERT_STRING_BYTES_MAX {
                return Err(Error::Limit(format!(
                    "a {}-byte string, at most {ADVERT_STRING_BYTES_MAX}",
                    s.len()
                )));
            }
        }
        if !(self.score.is_finite() && self.score >= 0.0) {
            return Err(Error::Limit(format!(
                "score {} is not a finite non-negative number",
                self.score
            )));
        }
        if self.memory_free_bytes > self.memory_total_bytes {
            return Err(Error::Limit("more memory free than in total".into()));
        }
        Ok(())
    }
}
