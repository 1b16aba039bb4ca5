//! A GGUF file opened for Hearth: its metadata read, its hyper-parameters checked, its tensors loaded
//! one at a time as stages ask for them.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use hearth_protocol::ModelId;

use crate::{Error, Result, model_id};

/// Most bytes of a model file's start read from peers for its header (metadata, tokenizer,
/// tensor table): a header longer than this is refused.
pub const GGUF_HEADER_BYTES_MAX: u64 = 64 << 20;

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
        let id = model_id(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::open_hashed(path, id)
    }

    /// [`Self::open`] of a file whose blake3 the caller has just computed as `id` (a scan of a
    /// models folder): every check, without reading the whole file again.
    pub fn open_hashed(path: &Path, id: ModelId) -> Result<Self> {
        let len = std::fs::metadata(path)
            .map_err(|source| Error::Io {
                path: path.into(),
                source,
            })?
            .len();
        let catalogued = crate::catalog::catalogued_in(path);
        if let Some(file) = catalogued
            && len != file.size
        {
            return Err(Error::Model {
                path: path.into(),
                reason: format!(
                    "the file is {} bytes, expected {} (cut short or damaged): fetch it again with `hearth models fetch`",
                    thousands(len),
                    thousands(file.size)
                ),
            });
        }
        if let Some(file) = catalogued
            && id.to_string() != file.blake3
        {
            return Err(Error::Model {
                path: path.into(),
                reason: format!(
                    "the file is not the catalogued one (blake3 {id}, expected {}): damaged or replaced; fetch it again with `hearth models fetch`",
                    file.blake3
                ),
            });
        }
        let model = Self::open_as(path, id)?;
        // A copy cut short: its header may be whole while its tensors are not.
        let base = model.content.tensor_data_offset;
        let needed = model
            .content
            .tensor_infos
            .values()
            .map(|t| {
                let bytes =
                    t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size();
                base + t.offset + bytes as u64
            })
            .max()
            .unwrap_or(base);
        if len < needed {
            return Err(Error::Model {
                path: path.into(),
                reason: format!(
                    "the file is cut short: {} bytes, but its tensors run to byte {}; copy or fetch it again",
                    thousands(len),
                    thousands(needed)
                ),
            });
        }
        // Every tensor its architecture needs, of the shape and type the metadata implies: a
        // header that claims more layers, or other widths, than the file holds is found here, not
        // when a stage of the missing layers is asked for. (The file is mapped, not read: this
        // costs milliseconds.) A llama model in a type only candle runs is checked when loaded.
        if model.foreign_tensor().is_none() {
            hearth_cpu::Gguf::open(path)
                .and_then(|g| hearth_cpu::LlamaRange::load(&g, 0..model.config.layers))
                .map_err(|reason| Error::Model {
                    path: path.into(),
                    reason: format!(
                        "{} (the file is not the model its header describes)",
                        reason.trim_start_matches(&format!("{}: ", path.display()))
                    ),
                })?;
        }
        Ok(model)
    }

    /// Open `path` as the model `id` without hashing it: a file fetched from peers in part (its
    /// blocks each verified against `id`, the rest a hole), whose blake3 is not yet `id`.
    pub fn open_as(path: &Path, id: ModelId) -> Result<Self> {
        let mut reader = BufReader::new(File::open(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?);
        let content = Content::read(&mut reader).map_err(|e| Error::Model {
            path: path.into(),
            reason: unreadable(&e),
        })?;
        Self::from_content(content, path, id)
    }

    /// The model `id` from the first bytes of its file, fetched from a peer and verified: its
    /// metadata and tensor table, for a coordinator that tokenizes and plans with no copy of the
    /// model (its tensors cannot be read). `size` is the whole file's. `Ok(None)` when `bytes`
    /// end before the header does.
    pub fn from_header(bytes: &[u8], size: u64, id: ModelId) -> Result<Option<Self>> {
        let mut reader = Prefix {
            bytes: std::io::Cursor::new(bytes),
            size: size.max(bytes.len() as u64),
            ran_out: false,
        };
        let path = PathBuf::from(format!("{id} (header from peers)"));
        match Content::read(&mut reader) {
            Ok(content) if content.tensor_data_offset <= bytes.len() as u64 => {
                Self::from_content(content, &path, id).map(Some)
            }
            Ok(_) => Ok(None),
            Err(_) if reader.ran_out => Ok(None),
            Err(e) => Err(Error::Model {
                path,
                reason: unreadable(&e),
            }),
        }
    }

    fn from_content(content: Content, path: &Path, id: ModelId) -> Result<Self> {
        let bad = |reason: String| Error::Model {
            path: path.into(),
            reason,
        };
        // A model cut into parts by llama.cpp's gguf-split: each part holds some of the tensors
        // (the later ones no metadata at all), and Hearth runs a model from one file.
        if let Some(count) = content
            .metadata
            .get("split.count")
            .and_then(|v| v.to_u64().ok())
            .filter(|&count| count > 1)
        {
            let no = content
                .metadata
                .get("split.no")
                .and_then(|v| v.to_u64().ok())
                .unwrap_or(0);
            return Err(bad(format!(
                "this is part {} of {count} of a model split by llama.cpp's gguf-split, and Hearth runs a model from one file: join the parts with `llama-gguf-split --merge FIRST-PART.gguf WHOLE.gguf`, then add that",
                no + 1
            )));
        }
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
        // Only the llama architecture also runs on candle's kernels (a GPU's, or the CPU's for a
        // type Hearth's do not run): any other model in such a type cannot run anywhere, and a
        // node must not offer it.
        if arch != "llama"
            && let Some((name, dtype)) = foreign_tensor(&content)
        {
            return Err(bad(format!(
                "tensor {name} is {dtype}, which Hearth's CPU kernels do not run ({}); only llama-architecture models run in other types (on candle's kernels), and this one is {arch}",
                hearth_cpu::quant::KINDS_RUN
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

    /// Where the header ends and the tensors begin.
    pub fn header_bytes(&self) -> u64 {
        self.content.tensor_data_offset
    }

    /// The byte ranges of a file of `size` bytes that a stage of `layers` reads: the header,
    /// each layer's tensors, and the model's own tensors the range needs (the token embedding
    /// for the first layer, the output norm and head for the last — the embedding again when the
    /// head is tied to it — and any other tensor outside the blocks, all small). Sorted and
    /// merged. A tensor runs to the next one's start (its padding with it), the last to the end
    /// of the file.
    pub fn stage_ranges(&self, size: u64, layers: Range<usize>) -> Vec<Range<u64>> {
        let base = self.content.tensor_data_offset;
        let mut starts: Vec<(u64, &str)> = self
            .content
            .tensor_infos
            .iter()
            .map(|(name, info)| (base + info.offset, name.as_str()))
            .collect();
        starts.sort_unstable();
        let last = layers.end == self.config.layers;
        let tied = !self.has_tensor("output.weight");
        let wanted = |name: &str| -> bool {
            if let Some(rest) = name.strip_prefix("blk.") {
                let block = rest.split('.').next().and_then(|b| b.parse::<usize>().ok());
                return block.is_some_and(|b| layers.contains(&b));
            }
            if name.starts_with("token_embd.") {
                return layers.start == 0 || (last && tied);
            }
            if name.starts_with("output") {
                return last;
            }
            true
        };
        let mut ranges: Vec<Range<u64>> = std::iter::once(0..base.min(size)).collect();
        for (i, (start, name)) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(size, |(next, _)| *next).min(size);
            if wanted(name) && *start < end {
                ranges.push(*start..end);
            }
        }
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }

    /// The first tensor (by name) in a type Hearth's CPU kernels do not run, with its type: such a
    /// model (only the llama architecture is let in with one) runs on candle's kernels, every layer
    /// of it, so that its stages compute what one machine computes.
    pub fn foreign_tensor(&self) -> Option<(String, &'static str)> {
        foreign_tensor(&self.content)
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

/// The bytes of a file fetched so far, read as if they were the file: whether a read ran past
/// them tells "send more" from "not a GGUF file".
struct Prefix<'a> {
    bytes: std::io::Cursor<&'a [u8]>,
    /// The whole file's size, which the reader may ask by seeking to the end.
    size: u64,
    ran_out: bool,
}

impl std::io::Read for Prefix<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.bytes.read(buf)?;
        if n < buf.len() {
            self.ran_out = true;
        }
        Ok(n)
    }
}

impl std::io::Seek for Prefix<'_> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        match pos {
            std::io::SeekFrom::End(back) => {
                let at = self.size.checked_add_signed(back).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
                })?;
                self.bytes.set_position(at);
                Ok(at)
            }
            other => self.bytes.seek(other),
        }
    }
}

/// Why candle's GGUF reader refused a file: a tensor type it does not know (the IQ and ternary
/// quantizations, which neither Hearth's kernels nor candle's run) said as such, anything else as
/// not a GGUF file.
fn unreadable(error: &candle_core::Error) -> String {
    let text = first_line(error);
    // candle 0.11's words for a type id it has no variant for.
    if let Some(id) = text
        .strip_prefix("unknown dtype for tensor ")
        .and_then(|id| id.trim().parse::<u32>().ok())
    {
        let name = hearth_cpu::quant::ggml_type_name(id).unwrap_or("an unknown type");
        return format!(
            "a tensor is {name} (GGML type {id}), which Hearth does not run: Hearth's CPU kernels run {}; get the model as one of those (Q4_K_M is the usual choice)",
            hearth_cpu::quant::KINDS_RUN
        );
    }
    format!("not a GGUF file ({text})")
}

/// The first tensor (by name) of `content` in a type Hearth's CPU kernels do not run, with its type.
fn foreign_tensor(content: &Content) -> Option<(String, &'static str)> {
    content
        .tensor_infos
        .iter()
        .map(|(name, info)| (name, ggml_id(info.ggml_dtype)))
        .filter(|(_, id)| hearth_cpu::quant::QKind::from_ggml(*id).is_none())
        .min_by_key(|(name, _)| name.as_str())
        .map(|(name, id)| {
            let kind = hearth_cpu::quant::ggml_type_name(id).unwrap_or("of an unknown type");
            (name.clone(), kind)
        })
}

/// GGUF's type id of `dtype` (candle keeps its own `to_u32` to itself), so that which types
/// Hearth's kernels run ([`hearth_cpu::quant::QKind::from_ggml`]) and what they are called
/// ([`hearth_cpu::quant::ggml_type_name`]) are each said in one place.
fn ggml_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
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

/// `n` with a comma between each group of three digits, as the messages a user reads put it.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
