//! Hearth's own CPU kernels.
//!
//! - [`dot`]: quantized products (`Q4_0`, `Q4_1`, `Q5_0` and `Q8_0` weights against activations
//!   quantized to 8 bits per block, as llama.cpp does; the K-quants against `Q8_K`) on a portable
//!   path and on AVX2, AVX-512 and NEON, chosen at run time ([`KernelPath`], `HEARTH_KERNEL_PATH`),
//!   all giving the same bits.
//! - [`kquant`]: llama.cpp's K-quants (`Q4_K`, `Q5_K`, `Q6_K`) and their `Q8_K` activations, with
//!   the products' portable definition.
//! - [`math`]: norm, softmax, RoPE, SiLU and attention's dot products with one implementation of
//!   `exp`, `sin` and `cos` and fixed reduction orders.
//! - [`Pool`]: threads that take work in chunks and yield instead of spinning.
//! - [`LlamaRange`]: a llama model's layer range with a KV cache per session, batch-invariant: a token
//!   computed inside a prefill gets the same bits as computed alone.
//! - [`Gguf`]: just enough of the GGUF format to load it.

pub mod bytes;
pub mod dot;
pub mod float;
pub mod gguf;
pub mod kquant;
pub mod llama;
pub mod math;
pub mod path;
pub mod pool;
pub mod quant;

pub use bytes::WeightBytes;
pub use gguf::Gguf;
pub use llama::{ARCHITECTURES, Config, Input, Kernels, KvCache, LlamaRange};
pub use path::{KERNEL_PATH_ENV, KernelPath};
pub use pool::Pool;
