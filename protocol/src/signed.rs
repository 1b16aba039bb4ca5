//! The signed envelope every message travels in.
//!
//! Opening an envelope checks, in order: the frame header (version, size), the envelope's shape, the
//! signature over the payload's raw bytes, and only then decodes the payload. A peer that forges or
//! corrupts a message costs us one signature check, never a decode of attacker-chosen structure.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::{Digest, Message, PeerId, PublicKey, Result, SecretKey, Signature};

/// Domain of the digest an envelope's signature covers.
const SIGNED_CONTEXT: &str = "hearth 2026 signed message v1";

/// A payload with its signer and signature. The payload stays raw bytes until the signature checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signed {
    /// Who signed.
    pub signer: PublicKey,
    /// Signature over the domain-separated blake3 of `payload`.
    pub signature: Signature,
    /// The postcard encoding of a [`Message`].
    #[serde(with = "serde_bytes_vec")]
    pub payload: Vec<u8>,
}

impl Signed {
    /// Sign `message` and encode the envelope as one frame, ready to send.
    pub fn seal(key: &SecretKey, message: &Message) -> Result<Vec<u8>> {
        let payload =
            postcard::to_stdvec(message).map_err(|e| crate::Error::Malformed(e.to_string()))?;
        let signature = key.sign(&Digest::of(SIGNED_CONTEXT, &payload).0);
        codec::encode(&Signed {
            signer: key.public(),
            signature,
            payload,
        })
    }

    /// Check and decode a frame from the wire: header, signature over the raw payload, then the
    /// message and its limits. Returns the signer's peer id with the message.
    pub fn open(frame: &[u8]) -> Result<(PeerId, Message)> {
        let envelope: Signed = codec::decode(frame)?;
        envelope.signer.verify(
            &Digest::of(SIGNED_CONTEXT, &envelope.payload).0,
            &envelope.signature,
        )?;
        let message: Message = codec::from_postcard(&envelope.payload)?;
        message.validate()?;
        Ok((envelope.signer.peer_id(), message))
    }
}

/// `Vec<u8>` as one byte string rather than a sequence of integers (the same bytes in postcard, but
/// a hex string instead of a long array in JSON).
mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        <&[u8]>::deserialize(deserializer).map(<[u8]>::to_vec)
    }
}
