//! A group member's Raft state, in the journal's own redb file: the Raft log, the vote, and
//! which entry was applied last, so that applying an entry (writing its journal batches) and
//! recording it applied are one transaction. The state machine *is* the journal: what Raft
//! commits is written through [`crate::journal::write_batches`], as a lone coordinator writes.
//!
//! | table        | key      | value |
//! |--------------|----------|-------|
//! | `raft_log`   | index    | an openraft entry (postcard) |
//! | `raft_meta`  | name     | `vote`, `committed`, `purged`, `applied`, `membership` (postcard) |
//!
//! The group keeps its whole log (it never takes snapshots, so never purges), so a member that was
//! away, or one added later, catches up by replaying it. (Logs grow with the journal; compacting
//! them through snapshots of the journal is left for when a group's journal grows large.)

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    RaftStorage, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

use super::{NodeId, Proposal, TypeConfig};

const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";
/// The group's swarm identity (the secret key nodes know the coordinator by, whichever member
/// leads), from the founding entry.
const IDENTITY: &str = "identity";
/// The group's admin key, from the founding entry.
const ADMIN: &str = "admin";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The Raft storage over the journal's database (cheap to clone: the database is shared).
#[derive(Clone)]
pub(crate) struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read(&std::io::Error::other(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write(&std::io::Error::other(e.to_string())).into()
}

impl Store {
    /// The store over `db` (the journal's, at `path`), its tables made if new.
    pub(crate) fn open(db: Arc<Database>, path: PathBuf) -> crate::Result<Self> {
        let fail = |e: &dyn std::fmt::Display| crate::Error::Journal {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = db.begin_write().map_err(|e| fail(&e))?;
        tx.open_table(RAFT_LOG).map_err(|e| fail(&e))?;
        tx.open_table(RAFT_META).map_err(|e| fail(&e))?;
        tx.commit().map_err(|e| fail(&e))?;
        Ok(Self { db, path })
    }

    #[allow(clippy::result_large_err)] // openraft's error type, which the traits return
    fn get<T: DeserializeOwned>(&self, name: &str) -> StorageResult<Option<T>> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let meta = tx.open_table(RAFT_META).map_err(read_err)?;
        let Some(value) = meta.get(name).map_err(read_err)? else {
            return Ok(None);
        };
        postcard::from_bytes(value.value())
            .map(Some)
            .map_err(read_err)
    }

    #[allow(clippy::result_large_err)] // openraft's error type, which the traits return
    fn put<T: Serialize>(&self, name: &str, value: &T) -> StorageResult<()> {
        let bytes = postcard::to_stdvec(value).map_err(write_err)?;
        let tx = self.db.begin_write().map_err(write_err)?;
        tx.open_table(RAFT_META)
            .map_err(write_err)?
            .insert(name, bytes.as_slice())
            .map_err(write_err)?;
        tx.commit().map_err(write_err)
    }

    /// The group's swarm identity, once the founding entry is applied.
    pub(crate) fn identity(&self) -> Option<[u8; 32]> {
        self.get(IDENTITY).ok().flatten()
    }

    /// The group's admin key, once the founding entry is applied.
    pub(crate) fn admin_key(&self) -> Option<String> {
        self.get(ADMIN).ok().flatten()
    }

    /// The index of the last entry applied here (0 before any).
    pub(crate) fn applied_index(&self) -> u64 {
        self.get::<LogId<NodeId>>(APPLIED)
            .ok()
            .flatten()
            .map_or(0, |id| id.index)
    }
}

impl RaftLogReader<TypeConfig> for Store {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let log = tx.open_table(RAFT_LOG).map_err(read_err)?;
        let mut entries = Vec::new();
        for item in log.range(range).map_err(read_err)? {
            let (_, value) = item.map_err(read_err)?;
            entries.push(postcard::from_bytes(value.value()).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Store {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        Err(StorageIOError::write_snapshot(
            None,
            &std::io::Error::other(
                "a coordinator group keeps its whole log and takes no snapshots",
            ),
        )
        .into())
    }
}

impl RaftStorage<TypeConfig> for Store {
    type LogReader = Self;
    type SnapshotBuilder = Self;

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put(VOTE, vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.put(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.get(COMMITTED)?.flatten())
    }

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let purged: Option<LogId<NodeId>> = self.get(PURGED)?;
        let tx = self.db.begin_read().map_err(read_err)?;
        let log = tx.open_table(RAFT_LOG).map_err(read_err)?;
        let last = match log.last().map_err(read_err)? {
            Some((_, value)) => {
                let entry: Entry<TypeConfig> =
                    postcard::from_bytes(value.value()).map_err(read_err)?;
                Some(entry.log_id)
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn append_to_log<I>(&mut self, entries: I) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
    {
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut log = tx.open_table(RAFT_LOG).map_err(write_err)?;
            for entry in entries {
                let bytes = postcard::to_stdvec(&entry).map_err(write_err)?;
                log.insert(entry.log_id.index, bytes.as_slice())
                    .map_err(write_err)?;
            }
        }
        tx.commit().map_err(write_err)
    }

    async fn delete_conflict_logs_since(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let tx = self.db.begin_write().map_err(write_err)?;
        tx.open_table(RAFT_LOG)
            .map_err(write_err)?
            .retain(|index, _| index < log_id.index)
            .map_err(write_err)?;
        tx.commit().map_err(write_err)
    }

    async fn purge_logs_upto(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let tx = self.db.begin_write().map_err(write_err)?;
        tx.open_table(RAFT_LOG)
            .map_err(write_err)?
            .retain(|index, _| index > log_id.index)
            .map_err(write_err)?;
        let bytes = postcard::to_stdvec(&Some(log_id)).map_err(write_err)?;
        tx.open_table(RAFT_META)
            .map_err(write_err)?
            .insert(PURGED, bytes.as_slice())
            .map_err(write_err)?;
        tx.commit().map_err(write_err)
    }

    async fn last_applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, super::Member>,
    )> {
        Ok((
            self.get(APPLIED)?,
            self.get(MEMBERSHIP)?.unwrap_or_default(),
        ))
    }

    /// Apply committed entries: each journal batch is written as a lone coordinator writes it,
    /// in the transaction that records the entry applied.
    async fn apply_to_state_machine(
        &mut self,
        entries: &[Entry<TypeConfig>],
    ) -> StorageResult<Vec<()>> {
        let tx = self.db.begin_write().map_err(write_err)?;
        let mut last = None;
        let mut membership = None;
        for entry in entries {
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(Proposal::Batches(batches)) => {
                    crate::journal::write_batches(&tx, &self.path, None, batches)
                        .map_err(write_err)?;
                }
                EntryPayload::Normal(Proposal::Revocation(revocation)) => {
                    // A file beside the journal (where a lone coordinator keeps them): written
                    // before the entry is recorded applied, and kept once, so applying it again
                    // after a crash changes nothing.
                    let store = self.path.parent().map(|d| d.join("revoked"));
                    if let Some(store) = store {
                        crate::coop::keep_in(&store, revocation).map_err(write_err)?;
                    }
                }
                EntryPayload::Normal(Proposal::Key(record)) => {
                    crate::keys::write_record(&tx, &self.path, record).map_err(write_err)?;
                }
                EntryPayload::Normal(Proposal::Founding {
                    secret,
                    identity,
                    admin,
                }) => {
                    // Founded once: a second founding entry (two members both founding after a
                    // lost answer) changes nothing already decided.
                    let founded = tx
                        .open_table(RAFT_META)
                        .map_err(write_err)?
                        .get(IDENTITY)
                        .map_err(write_err)?
                        .is_some();
                    if !founded {
                        crate::journal::write_secret(&tx, &self.path, secret).map_err(write_err)?;
                        let mut meta = tx.open_table(RAFT_META).map_err(write_err)?;
                        let bytes = postcard::to_stdvec(identity).map_err(write_err)?;
                        meta.insert(IDENTITY, bytes.as_slice()).map_err(write_err)?;
                        let bytes = postcard::to_stdvec(admin).map_err(write_err)?;
                        meta.insert(ADMIN, bytes.as_slice()).map_err(write_err)?;
                    }
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                }
            }
            last = Some(entry.log_id);
        }
        {
            let mut meta = tx.open_table(RAFT_META).map_err(write_err)?;
            if let Some(last) = last {
                let bytes = postcard::to_stdvec(&last).map_err(write_err)?;
                meta.insert(APPLIED, bytes.as_slice()).map_err(write_err)?;
            }
            if let Some(membership) = membership {
                let bytes = postcard::to_stdvec(&membership).map_err(write_err)?;
                meta.insert(MEMBERSHIP, bytes.as_slice())
                    .map_err(write_err)?;
            }
        }
        tx.commit().map_err(write_err)?;
        Ok(vec![(); entries.len()])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<NodeId, super::Member>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        Err(StorageIOError::write_snapshot(
            None,
            &std::io::Error::other(
                "a coordinator group keeps its whole log and takes no snapshots",
            ),
        )
        .into())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(None)
    }
}
