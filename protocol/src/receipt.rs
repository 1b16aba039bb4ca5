//! Receipts: a peer's signed statement that it turned this input into that output with that model.

use serde::{Deserialize, Serialize};

use crate::{Digest, ModelId, PeerId, PublicKey, Result, SecretKey, Signature};

/// Domain of the digest a receipt's signature covers.
const RECEIPT_CONTEXT: &str = "hearth 2026 receipt v1";

/// Which piece of work a receipt is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Subject {
    /// A work unit of a sharded job.
    Unit {
        /// The job.
        job: u64,
        /// The unit within the job.
        unit: u64,
    },
    /// One step of a pipeline session, at one stage.
    Step {
        /// The session.
        session: u64,
        /// The step within the session.
        step: u64,
        /// The first layer of the stage that computed it.
        layer_start: u32,
    },
}

/// What a receipt binds together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// The work this result is for.
    pub subject: Subject,
    /// The model that computed it.
    pub model: ModelId,
    /// Digest of the input the peer was given.
    pub input: Digest,
    /// Digest of the output it returned.
    pub output: Digest,
    /// The numeric class the peer computed in, which decides how its output is compared.
    pub numeric_class: String,
}

impl ReceiptBody {
    /// The domain-separated digest the signature covers.
    pub fn digest(&self) -> Digest {
        let bytes = postcard::to_stdvec(self).expect("a receipt body always encodes");
        Digest::of(RECEIPT_CONTEXT, &bytes)
    }
}

/// A signed receipt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// What is attested.
    pub body: ReceiptBody,
    /// Who attests it.
    pub signer: PublicKey,
    /// Signature over [`ReceiptBody::digest`].
    pub signature: Signature,
}

impl Receipt {
    /// Sign `body` with `key`.
    pub fn sign(key: &SecretKey, body: ReceiptBody) -> Self {
        let signature = key.sign(&body.digest().0);
        Self {
            body,
            signer: key.public(),
            signature,
        }
    }

    /// Check the signature. A receipt that passes binds its signer to every field of the body.
    pub fn verify(&self) -> Result<()> {
        self.signer.verify(&self.body.digest().0, &self.signature)
    }

    /// The peer that signed.
    pub fn peer_id(&self) -> PeerId {
        self.signer.peer_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> ReceiptBody {
        ReceiptBody {
            subject: Subject::Unit { job: 1, unit: 2 },
            model: ModelId::of_bytes(b"model"),
            input: Digest::of("test input", b"in"),
            output: Digest::of("test output", b"out"),
            numeric_class: "cpu-test".into(),
        }
    }

    #[test]
    fn every_field_is_bound() {
        let key = SecretKey::from_bytes(&[9; 32]);
        let receipt = Receipt::sign(&key, body());
        assert!(receipt.verify().is_ok());
        assert_eq!(receipt.peer_id(), key.public().peer_id());

        let tampered: [fn(&mut ReceiptBody); 5] = [
            |b| b.subject = Subject::Unit { job: 1, unit: 3 },
            |b| b.model = ModelId::of_bytes(b"other"),
            |b| b.input = Digest::of("test input", b"other"),
            |b| b.output = Digest::of("test output", b"other"),
            |b| b.numeric_class.push('x'),
        ];
        for tamper in tampered {
            let mut forged = receipt.clone();
            tamper(&mut forged.body);
            assert!(forged.verify().is_err(), "{:?}", forged.body);
        }
        let mut stolen = receipt.clone();
        stolen.signer = SecretKey::from_bytes(&[8; 32]).public();
        assert!(stolen.verify().is_err());
    }
}
