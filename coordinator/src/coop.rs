//! A co-op swarm (`--coop DIR`): only members take part.
//!
//! Nodes publish their membership certificate on gossip before each advert. The coordinator admits a
//! peer once its certificate checks (this co-op's signature, issued to that peer, unexpired, not
//! revoked); until then it drops the peer's adverts and refuses its work requests, and a peer whose
//! certificate fails, or that keeps advertising without one, is blocked: its connections are closed
//! and refused. Every refusal is logged with the reason. A revocation (`POST /v1/coop/revocations`,
//! self-authenticating: the co-op's signature) takes effect at once, is kept in
//! `DATA_DIR/revoked/`, and is spread to the members on gossip. The coordinator holds the co-op's
//! folder, so it certifies itself and publishes its own certificate for the nodes to check.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hearth_protocol::coop::{Membership, MembershipError, Revocation, armor, unarmor};
use hearth_protocol::{PeerId, PublicKey, SecretKey};

use crate::{Error, Result};

/// Adverts a peer may send without a membership before it is blocked (the certificate travels in
/// its own message beside the advert, so the first may overtake it).
pub(crate) const ADVERTS_WITHOUT_MEMBERSHIP_MAX: u32 = 3;

/// The co-op's state on the coordinator.
pub(crate) struct Coop {
    public: PublicKey,
    own: Membership,
    revoked: HashMap<PeerId, Revocation>,
    admitted: HashMap<PeerId, Membership>,
    strays: HashMap<PeerId, u32>,
    store: PathBuf,
}

impl Coop {
    /// The co-op in `dir` (its key, `identity.key`, and its `revoked/` files), with revocations kept
    /// in `data_dir/revoked/`; the coordinator's own certificate is issued for `me`.
    pub(crate) fn open(dir: &Path, data_dir: &Path, me: PeerId, now_ms: u64) -> Result<Self> {
        let key_file = dir.join(hearth_net::IDENTITY_FILE);
        if !key_file.exists() {
            return Err(Error::Refused(format!(
                "--coop {}: no co-op key there (`hearth coop init --dir {}` makes one)",
                dir.display(),
                dir.display()
            )));
        }
        let key: SecretKey = hearth_net::load_or_create_identity(dir)
            .map_err(|e| Error::Refused(format!("--coop {}: {e}", dir.display())))?
            .0;
        let public = key.public();
        let store = data_dir.join("revoked");
        let mut coop = Self {
            own: Membership::issue(&key, me, now_ms, None),
            public,
            revoked: HashMap::new(),
            admitted: HashMap::new(),
            strays: HashMap::new(),
            store,
        };
        for folder in [dir.join("revoked"), coop.store.clone()] {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let revocation = unarmor::<Revocation>(&text);
                match revocation {
                    Some(r) if r.verify(&public).is_ok() => {
                        coop.revoked.insert(r.body.member, r);
                    }
                    _ => {
                        tracing::warn!(file = %entry.path().display(), "not a revocation of this co-op; ignored")
                    }
                }
            }
        }
        tracing::info!(coop = %public.peer_id(), revoked = coop.revoked.len(), "co-op swarm: members only");
        Ok(coop)
    }

    /// The coordinator's own certificate, to publish.
    pub(crate) fn own(&self) -> &Membership {
        &self.own
    }

    /// A certificate `peer` presented: admit it, or say why not (the caller blocks it).
    pub(crate) fn present(
        &mut self,
        peer: PeerId,
        membership: Membership,
        now_ms: u64,
    ) -> std::result::Result<bool, MembershipError> {
        let revoked = &self.revoked;
        membership.admits(&self.public, &peer, now_ms, |p| revoked.contains_key(p))?;
        self.strays.remove(&peer);
        Ok(self.admitted.insert(peer, membership).is_none())
    }

    /// Whether `peer` is an admitted member now (its certificate still valid).
    pub(crate) fn check(
        &mut self,
        peer: &PeerId,
        now_ms: u64,
    ) -> std::result::Result<(), MembershipError> {
        let Some(membership) = self.admitted.get(peer) else {
            return Err(MembershipError::Missing);
        };
        let revoked = &self.revoked;
        let verdict = membership.admits(&self.public, peer, now_ms, |p| revoked.contains_key(p));
        if verdict.is_err() {
            self.admitted.remove(peer);
        }
        verdict
    }

    /// An advert from a peer not admitted: whether it has now sent too many (block it).
    pub(crate) fn stray(&mut self, peer: PeerId) -> bool {
        let n = self.strays.entry(peer).or_default();
        *n += 1;
        *n >= ADVERTS_WITHOUT_MEMBERSHIP_MAX
    }

    /// Apply a revocation: check it, keep it, forget the member. Returns whether it was new.
    pub(crate) fn revoke(&mut self, revocation: Revocation) -> std::result::Result<bool, String> {
        revocation.verify(&self.public).map_err(|e| e.to_string())?;
        let member = revocation.body.member;
        self.admitted.remove(&member);
        if self.revoked.contains_key(&member) {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.store).map_err(|e| e.to_string())?;
        let path = self.store.join(format!("{member}.revocation"));
        let comments = [
            "Hearth co-op revocation".to_string(),
            format!("member {member}"),
        ];
        std::fs::write(&path, armor(&comments, &revocation))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.revoked.insert(member, revocation);
        Ok(true)
    }
}
