//! The identity key on disk: 32 secret bytes in `DATA_DIR/identity.key`, mode 0600, written once.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use hearth_protocol::SecretKey;

/// File name of the identity key inside a data folder.
pub const IDENTITY_FILE: &str = "identity.key";

/// Why an identity could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The data folder or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file exists but is not 32 bytes.
    #[error("{path}: not an identity key ({len} bytes, expected 32)")]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The system's random number generator failed.
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// Load the identity in `data_dir`, or make one (creating the folder) if there is none. Returns the key
/// and whether it was created now.
pub fn load_or_create_identity(data_dir: &Path) -> Result<(SecretKey, bool), IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    match load_identity(data_dir) {
        Ok(key) => return Ok((key, false)),
        Err(IdentityError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(other) => return Err(other),
    }
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    create_private_dir(data_dir).map_err(|source| IdentityError::Io {
        path: data_dir.into(),
        source,
    })?;
    let mut seed = [0u8; SecretKey::BYTES];
    getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
    let key = SecretKey::from_bytes(&seed);
    seed.fill(0);

    // Write beside the final name, then link it into place: a crash never leaves a half-written key,
    // and the link fails if another process made a key first, in which case theirs is kept so the
    // folder has one identity.
    let tmp = data_dir.join(format!("{IDENTITY_FILE}.tmp{}", std::process::id()));
    let mut file = private_file_options().open(&tmp).map_err(io)?;
    let mut bytes = key.to_bytes();
    let written = file.write_all(&bytes).and_then(|()| file.sync_all());
    bytes.fill(0);
    let linked = written.and_then(|()| fs::hard_link(&tmp, &path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return load_identity(data_dir).map(|key| (key, false));
        }
        Err(source) => return Err(io(source)),
    }
    Ok((key, true))
}

/// Load the identity in `data_dir`; fails if there is none.
pub fn load_identity(data_dir: &Path) -> Result<SecretKey, IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    let mut bytes = fs::read(&path).map_err(|source| IdentityError::Io {
        path: path.clone(),
        source,
    })?;
    let key = <[u8; SecretKey::BYTES]>::try_from(bytes.as_slice())
        .map(|seed| SecretKey::from_bytes(&seed))
        .map_err(|_| IdentityError::Corrupt {
            path: path.clone(),
            len: bytes.len(),
        });
    bytes.fill(0);
    warn_if_readable_by_others(&path);
    key
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn private_file_options() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    if let Ok(meta) = fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "identity key is readable by other users; chmod 600 it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("node");
        let (first, created) = load_or_create_identity(&data).expect("create");
        assert!(created);
        let (again, created) = load_or_create_identity(&data).expect("load");
        assert!(!created);
        assert_eq!(first.public(), again.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(data.join(IDENTITY_FILE))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_key_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(IDENTITY_FILE), b"short").expect("write");
        assert!(matches!(
            load_or_create_identity(dir.path()),
            Err(IdentityError::Corrupt { len: 5, .. })
        ));
    }
}
