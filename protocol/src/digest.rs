//! blake3 digests: domain-separated for everything Hearth signs, plain for model files.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::identity::fixed_bytes;
use crate::{Error, Result};

/// A 32-byte blake3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// blake3 of `data` in the key-derivation mode with `context` as the domain, so a digest made for
    /// one purpose (a receipt, a signed envelope) can never be replayed as another's.
    pub fn of(context: &str, data: &[u8]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(context);
        hasher.update(data);
        Self(*hasher.finalize().as_bytes())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        fixed_bytes::to_hex(&self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..12])
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        fixed_bytes::from_hex(s)
            .map(Self)
            .ok_or_else(|| Error::Malformed(format!("not 64 hex digits: {s:?}")))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fixed_bytes::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        fixed_bytes::deserialize(deserializer).map(Self)
    }
}

/// A model, named by the plain blake3 of its file, so any copy from any peer can be checked.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelId(pub Digest);

impl ModelId {
    /// The id of a model file whose whole contents are `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(Digest(*blake3::hash(bytes).as_bytes()))
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({})", &self.0.to_hex()[..12])
    }
}

impl FromStr for ModelId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        s.parse().map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_separate_digests() {
        assert_ne!(Digest::of("hearth a", b"x"), Digest::of("hearth b", b"x"));
        assert_eq!(Digest::of("hearth a", b"x"), Digest::of("hearth a", b"x"));
    }

    #[test]
    fn model_id_is_plain_blake3() {
        // blake3 of the empty input, from the blake3 test vectors.
        let id = ModelId::of_bytes(b"");
        assert_eq!(
            id.to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(id.to_string().parse::<ModelId>().expect("hex"), id);
    }

    #[test]
    fn json_is_hex_and_postcard_is_raw() {
        let d = Digest([0xab; 32]);
        let json = serde_json::to_string(&d).expect("json");
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<Digest>(&json).expect("json"), d);
        let bin = postcard::to_stdvec(&d).expect("postcard");
        assert_eq!(bin.len(), 33, "a length byte and 32 raw bytes");
        assert_eq!(postcard::from_bytes::<Digest>(&bin).expect("postcard"), d);
    }
}
