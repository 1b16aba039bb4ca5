//! API keys: who may use the coordinator's HTTP API.
//!
//! At its first start the coordinator writes an admin key to `DATA_DIR/admin.key` (mode 0600). The
//! admin key creates, lists and revokes API keys over HTTP (`hearth apikey …`), so only the running
//! coordinator ever opens the key store (`keys.redb`). Keys are kept as their blake3 hashes, never
//! in the clear; a key is shown once, when it is made. A key may belong to a co-op member (a peer id).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The admin key's file in the data folder.
pub const ADMIN_KEY_FILE: &str = "admin.key";
const KEYS_FILE: &str = "keys.redb";
/// Key id → [`KeyRecord`] (JSON).
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// Keys at most, so a leaked admin key cannot fill the disk.
pub const KEYS_MAX: usize = 10_000;

/// What is stored of a key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Its public id (`key-…`), for listing and revoking.
    pub id: String,
    /// blake3 of the secret, hex.
    pub hash: String,
    /// The co-op member it belongs to, if any.
    pub member: Option<String>,
    /// A name for people.
    pub name: Option<String>,
    /// Milliseconds since the epoch.
    pub created_ms: u64,
    /// When it was revoked.
    pub revoked_ms: Option<u64>,
    /// Its quotas.
    #[serde(default)]
    pub quota: Quota,
}

/// What one key may use; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Requests per minute, over every endpoint.
    pub requests_per_minute: Option<u32>,
    /// Generated tokens per day (chat, completions, generate).
    pub tokens_per_day: Option<u64>,
    /// Work units per day (jobs and embeddings submitted).
    pub units_per_day: Option<u64>,
}

/// What a key used in the current windows.
#[derive(Clone, Debug, Default)]
struct Usage {
    minute: u64,
    requests: u32,
    day: u64,
    tokens: u64,
    units: u64,
}

/// Who a request is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// The admin key.
    Admin,
    /// An API key, by id, and its member.
    Key {
        /// The key's id.
        id: String,
        /// Its member.
        member: Option<String>,
    },
}

/// A coordinator group leader's way to store a key record: through Raft, returning once a quorum
/// has it and it is applied here.
pub(crate) type Replicate = Box<dyn Fn(&KeyRecord) -> Result<()> + Send + Sync>;

/// The key store.
pub struct Keys {
    db: std::sync::Arc<Database>,
    /// In a coordinator group: records go through Raft (and every member's journal file holds
    /// them) rather than straight into `db`.
    replicate: Option<Replicate>,
    path: PathBuf,
    admin_hash: String,
    /// Hash → record, for every key (revoked ones too, to say so).
    by_hash: RwLock<HashMap<String, KeyRecord>>,
    /// Key id → use in the current minute and day (in memory: a restart forgives).
    usage: std::sync::Mutex<HashMap<String, Usage>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn db_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::Journal {
        path: path.into(),
        message: error.to_string(),
    }
}

fn hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| Error::Io {
        path: PathBuf::from("(random)"),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The admin key in `data_dir`, made (mode 0600) when missing. Returns it and whether it was made.
pub fn admin_key(data_dir: &Path) -> Result<(String, bool)> {
    let path = data_dir.join(ADMIN_KEY_FILE);
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok((text.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let key = new_admin_key()?;
    write_admin_key(data_dir, &key)?;
    Ok((key, true))
}

/// Write `record` into `tx` (a lone coordinator's `keys.redb`, or a group member's journal file
/// as it applies the group's log).
pub(crate) fn write_record(
    tx: &redb::WriteTransaction,
    path: &Path,
    record: &KeyRecord,
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| db_error(path, e);
    let bytes = serde_json::to_vec(record).map_err(|e| err(&e))?;
    tx.open_table(KEYS)
        .map_err(|e| err(&e))?
        .insert(record.id.as_str(), bytes.as_slice())
        .map_err(|e| err(&e))?;
    Ok(())
}

/// Write the admin key to `data_dir` (mode 0600) unless it is there already: a coordinator group's
/// members all keep the group's.
pub(crate) fn write_admin_key(data_dir: &Path, key: &str) -> Result<()> {
    let path = data_dir.join(ADMIN_KEY_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == key) {
        return Ok(());
    }
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        writeln!(file, "{key}").map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)
}

/// A fresh admin key.
pub(crate) fn new_admin_key() -> Result<String> {
    Ok(format!("hk-admin-{}", random_hex(24)?))
}

/// A key's quota that a request would pass: the API answers 429 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaExceeded {
    /// `--requests-per-minute`.
    #[error("this key's quota of {0} requests per minute is used up; retry in the next minute")]
    RequestsPerMinute(u32),
    /// `--tokens-per-day`.
    #[error("this key's quota of {0} generated tokens per day is used up")]
    TokensPerDay(u64),
    /// `--units-per-day`.
    #[error(
        "this key's quota of {max} work units per day would be passed ({used} used, {asked} asked)"
    )]
    UnitsPerDay {
        /// The quota.
        max: u64,
        /// Units used today.
        used: u64,
        /// Units the request asks for.
        asked: u64,
    },
}

impl Keys {
    /// Open the store in `data_dir`, making the admin key on first start.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let (admin, made) = admin_key(data_dir)?;
        if made {
            tracing::info!(file = %data_dir.join(ADMIN_KEY_FILE).display(), "admin key written");
        }
        let path = data_dir.join(KEYS_FILE);
        let db = Database::create(&path).map_err(|e| db_error(&path, e))?;
        Self::load(std::sync::Arc::new(db), path, &admin, None)
    }

    /// A coordinator group leader's key store: the records in the group's journal file, the
    /// group's admin key, new records stored through `replicate`.
    pub(crate) fn replicated(
        db: std::sync::Arc<Database>,
        path: PathBuf,
        admin: &str,
        replicate: Replicate,
    ) -> Result<Self> {
        Self::load(db, path, admin, Some(replicate))
    }

    fn load(
        db: std::sync::Arc<Database>,
        path: PathBuf,
        admin: &str,
        replicate: Option<Replicate>,
    ) -> Result<Self> {
        let tx = db.begin_write().map_err(|e| db_error(&path, e))?;
        tx.open_table(KEYS).map_err(|e| db_error(&path, e))?;
        tx.commit().map_err(|e| db_error(&path, e))?;
        let mut by_hash = HashMap::new();
        {
            let tx = db.begin_read().map_err(|e| db_error(&path, e))?;
            let table = tx.open_table(KEYS).map_err(|e| db_error(&path, e))?;
            for row in table.iter().map_err(|e| db_error(&path, e))? {
                let (_, value) = row.map_err(|e| db_error(&path, e))?;
                let record: KeyRecord =
                    serde_json::from_slice(value.value()).map_err(|e| db_error(&path, e))?;
                by_hash.insert(record.hash.clone(), record);
            }
        }
        Ok(Self {
            db,
            replicate,
            path,
            admin_hash: hash(admin),
            by_hash: RwLock::new(by_hash),
            usage: Default::default(),
        })
    }

    /// Read the records again (a coordinator group follower's copy, as the group's log adds keys).
    pub(crate) fn reload(&self) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| db_error(&self.path, e);
        let tx = self.db.begin_read().map_err(|e| err(&e))?;
        let table = tx.open_table(KEYS).map_err(|e| err(&e))?;
        let mut by_hash = HashMap::new();
        for row in table.iter().map_err(|e| err(&e))? {
            let (_, value) = row.map_err(|e| err(&e))?;
            let record: KeyRecord = serde_json::from_slice(value.value()).map_err(|e| err(&e))?;
            by_hash.insert(record.hash.clone(), record);
        }
        *self.by_hash.write().unwrap_or_else(|e| e.into_inner()) = by_hash;
        Ok(())
    }

    /// Who presents `secret`: the admin, a live key, or nobody (`Err` says why).
    pub fn check(&self, secret: &str) -> std::result::Result<Access, &'static str> {
        self.check_hash(&hash(secret))
    }

    /// The blake3 of `secret`, hex: what a browser session remembers instead of the key.
    pub fn hash_of(secret: &str) -> String {
        hash(secret)
    }

    /// [`Self::check`] by the key's hash.
    pub fn check_hash(&self, h: &str) -> std::result::Result<Access, &'static str> {
        if h == self.admin_hash {
            return Ok(Access::Admin);
        }
        let keys = self.by_hash.read().unwrap_or_else(|e| e.into_inner());
        match keys.get(h) {
            Some(k) if k.revoked_ms.is_some() => Err("this API key was revoked"),
            Some(k) => Ok(Access::Key {
                id: k.id.clone(),
                member: k.member.clone(),
            }),
            None => Err("invalid API key"),
        }
    }

    fn store(&self, record: &KeyRecord) -> Result<()> {
        if let Some(replicate) = &self.replicate {
            return replicate(record);
        }
        let err = |e: &dyn std::fmt::Display| db_error(&self.path, e);
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        write_record(&tx, &self.path, record)?;
        tx.commit().map_err(|e| err(&e))
    }

    /// Count one request for key `id` (and `units` work units); `Err` says which quota it would
    /// pass. Tokens are counted after the fact with [`Self::add_tokens`]; a key over its daily
    /// tokens is refused from then on.
    pub fn admit(&self, id: &str, units: u64) -> std::result::Result<(), QuotaExceeded> {
        let quota = self
            .by_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|k| k.id == id)
            .map(|k| k.quota)
            .unwrap_or_default();
        let now = now_ms();
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let u = usage.entry(id.to_string()).or_default();
        let (minute, day) = (now / 60_000, now / 86_400_000);
        if u.minute != minute {
            u.minute = minute;
            u.requests = 0;
        }
        if u.day != day {
            u.day = day;
            u.tokens = 0;
            u.units = 0;
        }
        if let Some(max) = quota.requests_per_minute
            && u.requests >= max
        {
            return Err(QuotaExceeded::RequestsPerMinute(max));
        }
        if let Some(max) = quota.tokens_per_day
            && u.tokens >= max
        {
            return Err(QuotaExceeded::TokensPerDay(max));
        }
        if let Some(max) = quota.units_per_day
            && u.units + units > max
        {
            return Err(QuotaExceeded::UnitsPerDay {
                max,
                used: u.units,
                asked: units,
            });
        }
        if units == 0 {
            u.requests += 1;
        }
        u.units += units;
        Ok(())
    }

    /// Count `tokens` generated for key `id`.
    pub fn add_tokens(&self, id: &str, tokens: u64) {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage.entry(id.to_string()).or_default().tokens += tokens;
    }

    /// Make a key; returns its record and the secret, shown this once.
    pub fn create(
        &self,
        member: Option<String>,
        name: Option<String>,
    ) -> Result<(KeyRecord, String)> {
        self.create_with(member, name, Quota::default())
    }

    /// [`Self::create`] with quotas.
    pub fn create_with(
        &self,
        member: Option<String>,
        name: Option<String>,
        quota: Quota,
    ) -> Result<(KeyRecord, String)> {
        if self.by_hash.read().unwrap_or_else(|e| e.into_inner()).len() >= KEYS_MAX {
            return Err(Error::Refused(format!(
                "{KEYS_MAX} keys exist; revoke some first"
            )));
        }
        let secret = format!("hk-{}", random_hex(24)?);
        let record = KeyRecord {
            id: format!("key-{}", random_hex(6)?),
            hash: hash(&secret),
            member,
            name,
            created_ms: now_ms(),
            revoked_ms: None,
            quota,
        };
        self.store(&record)?;
        self.by_hash
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.hash.clone(), record.clone());
        Ok((record, secret))
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Vec<KeyRecord> {
        let mut all: Vec<KeyRecord> = self
            .by_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        all
    }

    /// Revoke key `id`; `None` if there is no such key. Takes effect on the next request.
    pub fn revoke(&self, id: &str) -> Result<Option<KeyRecord>> {
        let mut keys = self.by_hash.write().unwrap_or_else(|e| e.into_inner());
        let Some(record) = keys.values_mut().find(|k| k.id == id) else {
            return Ok(None);
        };
        if record.revoked_ms.is_none() {
            record.revoked_ms = Some(now_ms());
        }
        let record = record.clone();
        self.store(&record)?;
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_check_revoke_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Keys::open(dir.path()).expect("open");
        let (admin, made) = admin_key(dir.path()).expect("admin");
        assert!(!made, "made once, at the first open");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(ADMIN_KEY_FILE))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(keys.check(&admin), Ok(Access::Admin));
        let (record, secret) = keys.create(Some("peer".into()), None).expect("create");
        assert_eq!(
            keys.check(&secret),
            Ok(Access::Key {
                id: record.id.clone(),
                member: Some("peer".into())
            })
        );
        assert_eq!(keys.check("hk-nonsense"), Err("invalid API key"));
        drop(keys);
        let keys = Keys::open(dir.path()).expect("reopen");
        assert!(keys.check(&secret).is_ok(), "kept across restarts");
        assert!(keys.revoke(&record.id).expect("revoke").is_some());
        assert_eq!(keys.check(&secret), Err("this API key was revoked"));
        assert!(keys.revoke("key-none").expect("revoke").is_none());
        assert_eq!(keys.list().len(), 1);
        assert!(!keys.list()[0].hash.contains(&secret));
    }
}
