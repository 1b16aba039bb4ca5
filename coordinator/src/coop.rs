//! A co-op swarm (`--coop DIR`): only members take part.
//!
//! The members-only gate itself is `hearth_net::coop`, which nodes run too: it admits peers whose
//! certificate checks, refuses (closes and bans) the rest, and applies revocations. What is the
//! coordinator's alone lives here: it holds the co-op's folder, so it certifies itself (and
//! publishes that certificate for the nodes to check), loads the revocations kept in the folder and
//! in `DATA_DIR/revoked/`, and keeps new ones there, whether they came from the API
//! (`POST /v1/coop/revocations`) or on gossip.

use std::path::{Path, PathBuf};

use hearth_protocol::coop::{Membership, Revocation, armor, unarmor};
use hearth_protocol::{PeerId, PublicKey, SecretKey};

use crate::{Error, Result};

/// A coordinator group leader's way to keep a revocation: a Raft entry every member applies
/// ([`keep_in`] into its own `revoked/`), so the next leader loads it too.
#[derive(Clone)]
pub(crate) struct Replicate(pub(crate) std::sync::Arc<dyn Fn(&Revocation) + Send + Sync>);

impl std::fmt::Debug for Replicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replicate(..)")
    }
}

/// The co-op's state on the coordinator.
pub(crate) struct Coop {
    public: PublicKey,
    own: Membership,
    /// Revocations loaded at start, for the gate.
    loaded: Vec<Revocation>,
    store: PathBuf,
    /// In a coordinator group: revocations kept through Raft.
    replicate: Option<Replicate>,
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
            loaded: Vec::new(),
            store,
            replicate: None,
        };
        for folder in [dir.join("revoked"), coop.store.clone()] {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let revocation = unarmor::<Revocation>(&text);
                match revocation {
                    // The same revocation in both folders counts once.
                    Some(r) if r.verify(&public).is_ok() => {
                        if !coop.loaded.iter().any(|l| l.body.member == r.body.member) {
                            coop.loaded.push(r);
                        }
                    }
                    _ => {
                        tracing::warn!(file = %entry.path().display(), "not a revocation of this co-op; ignored")
                    }
                }
            }
        }
        tracing::info!(coop = %public.peer_id(), revoked = coop.loaded.len(), "co-op swarm: members only");
        Ok(coop)
    }

    /// The coordinator's own certificate, to publish.
    pub(crate) fn own(&self) -> &Membership {
        &self.own
    }

    /// The co-op's public key.
    pub(crate) fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The revocations found at start (the gate takes them).
    pub(crate) fn take_loaded(&mut self) -> Vec<Revocation> {
        std::mem::take(&mut self.loaded)
    }

    /// In a coordinator group, keep revocations through `replicate`.
    pub(crate) fn replicated(mut self, replicate: Option<Replicate>) -> Self {
        self.replicate = replicate;
        self
    }

    /// Keep a revocation the gate accepted, so it holds after a restart (in a group: after a
    /// change of leader too; the entry is proposed and kept by every member as it applies it).
    pub(crate) fn keep(&self, revocation: &Revocation) -> crate::Result<()> {
        if let Some(replicate) = &self.replicate {
            (replicate.0)(revocation);
            return Ok(());
        }
        keep_in(&self.store, revocation)
    }
}

/// Keep `revocation` in the folder `store` (a coordinator's `DATA_DIR/revoked/`), once.
pub(crate) fn keep_in(store: &Path, revocation: &Revocation) -> crate::Result<()> {
    let member = revocation.body.member;
    std::fs::create_dir_all(store).map_err(|source| crate::Error::Io {
        path: store.to_path_buf(),
        source,
    })?;
    let path = store.join(format!("{member}.revocation"));
    if path.exists() {
        return Ok(());
    }
    let comments = [
        "Hearth co-op revocation".to_string(),
        format!("member {member}"),
    ];
    std::fs::write(&path, armor(&comments, revocation))
        .map_err(|source| crate::Error::Io { path, source })
}
