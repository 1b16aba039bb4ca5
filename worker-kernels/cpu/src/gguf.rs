//! A minimal GGUF reader: the metadata values a llama model needs and where each tensor lies.
//!
//! GGUF (versions 2 and 3): magic `GGUF`, version, tensor and key-value counts, the key-values, one
//! descriptor per tensor (name, dimensions, GGML type, offset), then the tensor data from the next
//! multiple of `general.alignment` (32 by default). Everything is little-endian.

use crate::bytes::WeightBytes;
use std::collections::HashMap;
use std::path::Path;

/// A scalar or string metadata value (arrays are skipped, but their length is kept).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any integer type.
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// An array, by its length.
    Array(usize),
}

/// Where a tensor is and how it is stored.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Dimensions, innermost first (GGUF's order): a matrix is `[cols, rows]`.
    pub dims: Vec<usize>,
    /// GGML type: 0 F32, 1 F16, 3 Q4_1, 8 Q8_0, …
    pub ggml_type: u32,
    /// Byte offset within the file.
    pub start: usize,
}

/// A parsed GGUF file: its header read, its bytes mapped (or held, when parsed from memory).
#[derive(Debug)]
pub struct Gguf {
    bytes: WeightBytes,
    /// Metadata by key.
    pub metadata: HashMap<String, Value>,
    /// Tensors by name.
    pub tensors: HashMap<String, TensorInfo>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn len(&mut self) -> Result<usize, String> {
        let n = self.u64()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len())
            .ok_or_else(|| format!("length {n} at byte {} is past the file", self.at))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.len()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, ty: u32) -> Result<Value, String> {
        let b = |r: &mut Self, n| -> Result<Vec<u8>, String> { Ok(r.take(n)?.to_vec()) };
        Ok(match ty {
            0 => Value::Int(i64::from(b(self, 1)?[0])),
            1 => Value::Int(i64::from(b(self, 1)?[0] as i8)),
            2 => Value::Int(i64::from(u16::from_le_bytes(
                b(self, 2)?.try_into().expect("2"),
            ))),
            3 => Value::Int(i64::from(i16::from_le_bytes(
                b(self, 2)?.try_into().expect("2"),
            ))),
            4 => Value::Int(i64::from(self.u32()?)),
            5 => Value::Int(i64::from(self.u32()? as i32)),
            6 => Value::Float(f64::from(f32::from_bits(self.u32()?))),
            7 => Value::Bool(b(self, 1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let elem = self.u32()?;
                let n = self.len()?;
                for _ in 0..n {
                    self.value(elem)?;
                }
                Value::Array(n)
            }
            10 | 11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_bits(self.u64()?)),
            other => return Err(format!("unknown metadata type {other}")),
        })
    }
}

impl Gguf {
    /// Map and parse `path`: only the header is read now; tensors' pages as they are used.
    pub fn open(path: &Path) -> Result<Self, String> {
        let bytes = WeightBytes::map(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse a whole file's bytes.
    pub fn parse(bytes: impl Into<WeightBytes>) -> Result<Self, String> {
        let bytes = bytes.into();
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        if r.take(4)? != b"GGUF" {
            return Err("not a GGUF file".into());
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} is not supported"));
        }
        let (tensors, kvs) = (r.len()?, r.len()?);
        let mut metadata = HashMap::new();
        for _ in 0..kvs {
            let key = r.string()?;
            let ty = r.u32()?;
            metadata.insert(key, r.value(ty)?);
        }
        let mut infos = Vec::with_capacity(tensors);
        for _ in 0..tensors {
            let name = r.string()?;
            let n = r.u32()? as usize;
            if n > 4 {
                return Err(format!("tensor {name} has {n} dimensions"));
            }
            let dims = (0..n).map(|_| r.len()).collect::<Result<Vec<_>, _>>()?;
            let ggml_type = r.u32()?;
            let offset = r.len()?;
            infos.push((name, dims, ggml_type, offset));
        }
        let align = match metadata.get("general.alignment") {
            Some(Value::Int(a)) if *a > 0 => *a as usize,
            _ => 32,
        };
        let data = r.at.div_ceil(align) * align;
        let tensors = infos
            .into_iter()
            .map(|(name, dims, ggml_type, offset)| {
                let info = TensorInfo {
                    dims,
                    ggml_type,
                    start: data + offset,
                };
                (name, info)
            })
            .collect();
        Ok(Self {
            bytes,
            metadata,
            tensors,
        })
    }

    /// An integer metadata value.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.metadata.get(key)? {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// A floating-point metadata value.
    pub fn float(&self, key: &str) -> Option<f64> {
        match self.metadata.get(key)? {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// A tensor's descriptor and its `len` bytes, checked to lie within the file.
    pub fn tensor_bytes(&self, name: &str, len: usize) -> Result<(&TensorInfo, &[u8]), String> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| format!("tensor {name} missing"))?;
        let bytes = info
            .start
            .checked_add(len)
            .and_then(|end| self.bytes.get(info.start..end))
            .ok_or_else(|| format!("tensor {name} runs past the end of the file"))?;
        Ok((info, bytes))
    }

    /// How many bytes tensor `name` holds, from its type and dimensions (`None` for a type Hearth
    /// does not know).
    pub fn tensor_len(&self, name: &str) -> Option<usize> {
        let info = self.tensors.get(name)?;
        let values: usize = info.dims.iter().product();
        let kind = crate::quant::QKind::from_ggml(info.ggml_type)?;
        Some(values / kind.block_values() * kind.block_bytes())
    }

    /// A tensor's `len` bytes as a window on the file (no copy), checked to lie within it.
    pub fn tensor_view(&self, name: &str, len: usize) -> Result<WeightBytes, String> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| format!("tensor {name} missing"))?;
        info.start
            .checked_add(len)
            .and_then(|end| self.bytes.slice(info.start..end))
            .ok_or_else(|| format!("tensor {name} runs past the end of the file"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_tiny_file_and_refuses_garbage() {
        let mut f = b"GGUF".to_vec();
        f.extend(3u32.to_le_bytes());
        f.extend(1u64.to_le_bytes());
        f.extend(1u64.to_le_bytes());
        f.extend(8u64.to_le_bytes());
        f.extend(b"llama.xy");
        f.extend(4u32.to_le_bytes());
        f.extend(42u32.to_le_bytes());
        f.extend(1u64.to_le_bytes());
        f.extend(b"t");
        f.extend(1u32.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        f.extend(0u32.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        while !f.len().is_multiple_of(32) {
            f.push(0);
        }
        f.extend(1f32.to_le_bytes());
        f.extend(2f32.to_le_bytes());
        let g = Gguf::parse(f.clone()).expect("parses");
        assert_eq!(g.int("llama.xy"), Some(42));
        let (info, bytes) = g.tensor_bytes("t", 8).expect("tensor");
        assert_eq!(info.dims, [2]);
        assert_eq!(&bytes[4..], 2f32.to_le_bytes());
        assert!(g.tensor_bytes("t", 9).is_err());
        assert!(Gguf::parse(b"GGUF\x03\0\0\0".to_vec()).is_err());
        f[0] = b'X';
        assert!(Gguf::parse(f).is_err());
    }
}
