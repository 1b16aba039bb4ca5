//! Co-op membership: who may join a swarm that is not open to everyone.
//!
//! A co-op is an ed25519 key. It signs a [`Membership`] for each member's peer id (optionally
//! expiring) and, to remove one, a [`Revocation`]. Both are self-authenticating: anyone holding the
//! co-op's public key checks them, so a revocation can travel through any peer. Signatures cover a
//! domain-separated digest of the postcard-encoded body.

use serde::{Deserialize, Serialize};

use crate::{Digest, PeerId, PublicKey, SecretKey, Signature};

const MEMBERSHIP_CONTEXT: &str = "hearth 2026 coop membership v1";
const REVOCATION_CONTEXT: &str = "hearth 2026 coop revocation v1";

/// Why a membership does not admit a peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// No certificate was presented.
    #[error("no co-op membership certificate")]
    Missing,
    /// Signed by another co-op.
    #[error("certificate from another co-op ({0})")]
    OtherCoop(String),
    /// Issued to another peer.
    #[error("certificate issued to {0}, not to this peer")]
    OtherPeer(String),
    /// The signature does not check.
    #[error("certificate signature does not check")]
    BadSignature,
    /// Past its expiry.
    #[error("certificate expired")]
    Expired,
    /// The co-op revoked it.
    #[error("membership revoked")]
    Revoked,
}

/// What a membership certificate says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipBody {
    /// The co-op's public key.
    pub coop: PublicKey,
    /// The member.
    pub member: PeerId,
    /// When it was issued, ms since the epoch.
    pub issued_ms: u64,
    /// When it stops admitting its member, ms since the epoch; `None` never.
    pub expires_ms: Option<u64>,
}

/// A membership certificate: the co-op's signature over a [`MembershipBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// What is certified.
    pub body: MembershipBody,
    /// The co-op's signature over the body's digest.
    pub signature: Signature,
}

/// The text form of a certificate or revocation, as `hearth coop` writes files and the API takes
/// them: `# ` comment lines, then one line of hex of the postcard encoding.
pub fn armor<T: Serialize>(comments: &[String], value: &T) -> String {
    let mut text: String = comments.iter().map(|c| format!("# {c}\n")).collect();
    let bytes = postcard::to_stdvec(value).expect("a co-op value always encodes");
    text.extend(bytes.iter().map(|b| format!("{b:02x}")));
    text.push('\n');
    text
}

/// The value of an [`armor`]ed text (its comments skipped; bare hex works too), or `None`.
pub fn unarmor<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))?;
    if !line.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(line.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    postcard::from_bytes(&bytes).ok()
}

fn digest<T: Serialize>(context: &str, body: &T) -> Digest {
    Digest::of(
        context,
        &postcard::to_stdvec(body).expect("a body always encodes"),
    )
}

impl Membership {
    /// Issue a certificate for `member`, signed by the co-op key.
    pub fn issue(
        coop: &SecretKey,
        member: PeerId,
        issued_ms: u64,
        expires_ms: Option<u64>,
    ) -> Self {
        let body = MembershipBody {
            coop: coop.public(),
            member,
            issued_ms,
            expires_ms,
        };
        let signature = coop.sign(&digest(MEMBERSHIP_CONTEXT, &body).0);
        Self { body, signature }
    }

    /// Whether this certificate admits `peer` to `coop` at `now_ms`, given the revoked members.
    pub fn admits(
        &self,
        coop: &PublicKey,
        peer: &PeerId,
        now_ms: u64,
        revoked: impl Fn(&PeerId) -> bool,
    ) -> Result<(), MembershipError> {
        if self.body.coop != *coop {
            return Err(MembershipError::OtherCoop(self.body.coop.peer_id().short()));
        }
        if self.body.member != *peer {
            return Err(MembershipError::OtherPeer(self.body.member.short()));
        }
        coop.verify(&digest(MEMBERSHIP_CONTEXT, &self.body).0, &self.signature)
            .map_err(|_| MembershipError::BadSignature)?;
        if self.body.expires_ms.is_some_and(|e| now_ms >= e) {
            return Err(MembershipError::Expired);
        }
        if revoked(peer) {
            return Err(MembershipError::Revoked);
        }
        Ok(())
    }
}

/// What a revocation says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationBody {
    /// The co-op's public key.
    pub coop: PublicKey,
    /// The member removed.
    pub member: PeerId,
    /// When, ms since the epoch.
    pub revoked_ms: u64,
}

/// A revocation: the co-op's signature over a [`RevocationBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// What is revoked.
    pub body: RevocationBody,
    /// The co-op's signature over the body's digest.
    pub signature: Signature,
}

impl Revocation {
    /// Revoke `member`'s membership, signed by the co-op key.
    pub fn issue(coop: &SecretKey, member: PeerId, revoked_ms: u64) -> Self {
        let body = RevocationBody {
            coop: coop.public(),
            member,
            revoked_ms,
        };
        let signature = coop.sign(&digest(REVOCATION_CONTEXT, &body).0);
        Self { body, signature }
    }

    /// Whether it was signed by `coop`.
    pub fn verify(&self, coop: &PublicKey) -> Result<(), MembershipError> {
        if self.body.coop != *coop {
            return Err(MembershipError::OtherCoop(self.body.coop.peer_id().short()));
        }
        coop.verify(&digest(REVOCATION_CONTEXT, &self.body).0, &self.signature)
            .map_err(|_| MembershipError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_membership_admits_its_member_only_until_expiry_or_revocation() {
        let (coop, other_coop) = (key(1), key(2));
        let (member, stranger) = (key(3).public().peer_id(), key(4).public().peer_id());
        let cert = Membership::issue(&coop, member, 1_000, Some(5_000));
        let none = |_: &PeerId| false;
        assert_eq!(cert.admits(&coop.public(), &member, 2_000, none), Ok(()));
        assert_eq!(
            cert.admits(&coop.public(), &member, 5_000, none),
            Err(MembershipError::Expired)
        );
        assert!(matches!(
            cert.admits(&coop.public(), &stranger, 2_000, none),
            Err(MembershipError::OtherPeer(_))
        ));
        assert!(matches!(
            cert.admits(&other_coop.public(), &member, 2_000, none),
            Err(MembershipError::OtherCoop(_))
        ));
        let from_other = Membership::issue(&other_coop, member, 1_000, None);
        assert!(matches!(
            from_other.admits(&coop.public(), &member, 2_000, none),
            Err(MembershipError::OtherCoop(_))
        ));
        // A forged body: the co-op's key claimed, another key's signature.
        let mut forged = from_other.clone();
        forged.body.coop = coop.public();
        assert_eq!(
            forged.admits(&coop.public(), &member, 2_000, none),
            Err(MembershipError::BadSignature)
        );
        let mut stretched = cert.clone();
        stretched.body.expires_ms = None;
        assert_eq!(
            stretched.admits(&coop.public(), &member, 9_000, none),
            Err(MembershipError::BadSignature)
        );

        let revocation = Revocation::issue(&coop, member, 3_000);
        assert_eq!(revocation.verify(&coop.public()), Ok(()));
        assert!(
            Revocation::issue(&other_coop, member, 3_000)
                .verify(&coop.public())
                .is_err()
        );
        let revoked = |p: &PeerId| *p == revocation.body.member;
        assert_eq!(
            cert.admits(&coop.public(), &member, 2_000, revoked),
            Err(MembershipError::Revoked)
        );
        // Round trip through the wire encoding.
        let bytes = postcard::to_stdvec(&cert).expect("encode");
        assert_eq!(
            postcard::from_bytes::<Membership>(&bytes).expect("decode"),
            cert
        );
        // And through the text form.
        let text = armor(&["a comment".into()], &cert);
        assert_eq!(unarmor::<Membership>(&text), Some(cert.clone()));
        assert_eq!(
            unarmor::<Membership>(text.lines().last().expect("hex")),
            Some(cert)
        );
        assert_eq!(unarmor::<Membership>("# nothing\nzz\n"), None);
        assert_eq!(unarmor::<Membership>("abc"), None);
    }
}
