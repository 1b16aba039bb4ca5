//! Peer identities: ed25519 keys and the libp2p-compatible peer id derived from them.
//!
//! This crate does not depend on libp2p, yet a [`PeerId`] printed here is byte for byte the one libp2p
//! derives from the same key: the identity multihash of the protobuf-encoded public key, in
//! base58btc. That is what lets the swarm's transport identity and a receipt's signer be one key.

mod base58;
pub(crate) mod fixed_bytes;

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// An ed25519 secret key. Prints as `SecretKey(..)`; the key material is zeroed on drop (the
/// `zeroize` feature of ed25519-dalek).
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// Length of the secret in bytes.
    pub const BYTES: usize = 32;

    /// The key with these 32 secret bytes. The bytes should come from a cryptographic RNG.
    pub fn from_bytes(bytes: &[u8; Self::BYTES]) -> Self {
        Self(SigningKey::from_bytes(bytes))
    }

    /// The 32 secret bytes, for storing the key. Zero the copy when done with it.
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Sign `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Length of the key in bytes.
    pub const BYTES: usize = 32;

    /// Parse a compressed ed25519 point.
    pub fn from_bytes(bytes: &[u8; Self::BYTES]) -> Result<Self> {
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| Error::InvalidKey)
    }

    /// The 32 key bytes.
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        self.0.to_bytes()
    }

    /// The peer id of this key.
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.to_bytes())
    }

    /// Check `signature` over `message`, refusing malleable and small-order forms.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<()> {
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0
            .verify_strict(message, &signature)
            .map_err(|_| Error::BadSignature)
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.peer_id())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fixed_bytes::serialize(&self.to_bytes(), serializer)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: [u8; Self::BYTES] = fixed_bytes::deserialize(deserializer)?;
        Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fixed_bytes::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        fixed_bytes::deserialize(deserializer).map(Self)
    }
}

/// A peer's identity: its public key, displayed as libp2p displays the peer id of an ed25519 key.
/// Holds the 32 compressed key bytes, checked to be a valid key when the id is made, so ids stay
/// small to copy and compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId([u8; PublicKey::BYTES]);

/// Byte order (as a derived `Ord` would give), compared a word at a time: peer ids key the
/// coordinator's maps of every peer, and a call to `memcmp` per comparison was the largest single
/// cost of scheduling at 100,000 peers.
impl Ord for PeerId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let words = |id: &Self| {
            let mut w = [0u64; PublicKey::BYTES / 8];
            for (word, bytes) in w.iter_mut().zip(id.0.chunks_exact(8)) {
                *word = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
            }
            w
        };
        words(self).cmp(&words(other))
    }
}

impl PartialOrd for PeerId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The identity multihash header (code 0x00, length 36) followed by the protobuf header of an
/// ed25519 `PublicKey` message (field 1 = key type 1, field 2 = 32 bytes).
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

impl PeerId {
    /// The public key this id names.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_bytes(&self.0).expect("peer ids are made from valid keys only")
    }

    /// The multihash bytes libp2p uses for this peer id.
    pub fn to_multihash_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(PEER_ID_PREFIX.len() + PublicKey::BYTES);
        bytes.extend_from_slice(&PEER_ID_PREFIX);
        bytes.extend_from_slice(&self.0);
        bytes
    }

    /// Parse libp2p's multihash bytes of an ed25519 peer id.
    pub fn from_multihash_bytes(bytes: &[u8]) -> Result<Self> {
        let key = bytes
            .strip_prefix(&PEER_ID_PREFIX[..])
            .and_then(|key| <&[u8; PublicKey::BYTES]>::try_from(key).ok())
            .ok_or_else(|| Error::InvalidPeerId("not an ed25519 identity multihash".into()))?;
        PublicKey::from_bytes(key).map(|key| key.peer_id())
    }

    /// The last six characters of the id: enough to tell peers apart in logs.
    pub fn short(&self) -> String {
        let full = self.to_string();
        full[full.len().saturating_sub(6)..].to_string()
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base58::encode(&self.to_multihash_bytes()))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl FromStr for PeerId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bytes = base58::decode(s).ok_or_else(|| Error::InvalidPeerId(s.into()))?;
        Self::from_multihash_bytes(&bytes)
    }
}

impl Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            fixed_bytes::serialize(&self.0, serializer)
        }
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let s = String::deserialize(deserializer)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            PublicKey::deserialize(deserializer).map(|key| key.peer_id())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_round_trips_through_its_string() {
        let key = SecretKey::from_bytes(&[7; 32]);
        let id = key.public().peer_id();
        let text = id.to_string();
        assert!(text.starts_with("12D3KooW"), "{text}");
        assert_eq!(text.parse::<PeerId>().expect("valid id"), id);
    }

    proptest::proptest! {
        #[test]
        fn peer_ids_order_as_their_bytes(a: [u8; 32], b: [u8; 32]) {
            let id = |seed: &[u8; 32]| SecretKey::from_bytes(seed).public().peer_id();
            let (a, b) = (id(&a), id(&b));
            proptest::prop_assert_eq!(a.cmp(&b), a.0.cmp(&b.0));
            proptest::prop_assert_eq!(a.cmp(&a), std::cmp::Ordering::Equal);
        }
    }

    #[test]
    fn secret_key_debug_hides_the_secret() {
        assert_eq!(
            format!("{:?}", SecretKey::from_bytes(&[1; 32])),
            "SecretKey(..)"
        );
    }

    #[test]
    fn signature_checks_message_and_key() {
        let key = SecretKey::from_bytes(&[3; 32]);
        let sig = key.sign(b"hello");
        assert!(key.public().verify(b"hello", &sig).is_ok());
        assert_eq!(
            key.public().verify(b"hellO", &sig),
            Err(Error::BadSignature)
        );
        let other = SecretKey::from_bytes(&[4; 32]).public();
        assert_eq!(other.verify(b"hello", &sig), Err(Error::BadSignature));
    }

    #[test]
    fn garbage_peer_ids_are_refused() {
        for s in [
            "",
            "0OIl",
            "12D3KooW",
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
        ] {
            assert!(s.parse::<PeerId>().is_err(), "{s}");
        }
    }
}
