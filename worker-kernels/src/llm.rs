//! Decoder-only language models from GGUF files, run as stages of any range of layers.

mod chat;
mod gguf;
mod greedy;
mod sample;
mod spm;
mod stage;
mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use gguf::{GGUF_HEADER_BYTES_MAX, GgufModel, LlmConfig};
pub use greedy::{Greedy, argmax, generate, generate_greedy};
pub use sample::sample;
pub use stage::{SESSIONS_MAX, SessionId, Stage, StageInput, StageOutput, cpu_kernels};
pub use tokenizer::GgufTokenizer;
