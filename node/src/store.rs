//! The models a node holds: files in its models folder, named by the blake3 of their bytes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use hearth_protocol::ModelId;

use crate::limits::MODEL_FILES_MAX;
use crate::{Error, Result};

/// File extensions that hold models Hearth can run.
const MODEL_EXTENSIONS: [&str; 2] = ["gguf", "safetensors"];

/// The ids of the model files in `dir` and in its direct subfolders (a safetensors model is a folder
/// of weights, config and tokenizer), in path order. A missing folder holds no models; an unreadable
/// one is an error. At most [`MODEL_FILES_MAX`] files are hashed.
pub fn scan_models(dir: &Path) -> Result<Vec<(PathBuf, ModelId)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Models {
                path: dir.into(),
                source,
            });
        }
    };
    let is_model = |path: &Path| {
        path.is_file()
            && path
                .extension()
                .and_then(|ext| ext.to_str())
                .is_some_and(|ext| MODEL_EXTENSIONS.contains(&ext))
    };
    let mut files = Vec::new();
    for path in entries.filter_map(|entry| entry.ok().map(|e| e.path())) {
        if path.is_dir() {
            // Hidden folders are fetches in progress.
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            let inner = fs::read_dir(&path).map_err(|source| Error::Models {
                path: path.clone(),
                source,
            })?;
            files.extend(
                inner
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| is_model(p)),
            );
        } else if is_model(&path) {
            files.push(path);
        }
    }
    files.sort();
    if files.len() > MODEL_FILES_MAX {
        tracing::warn!(
            found = files.len(),
            kept = MODEL_FILES_MAX,
            "more model files than an advert can list"
        );
        files.truncate(MODEL_FILES_MAX);
    }
    files
        .into_iter()
        .map(|path| {
            let id = hearth_kernels::model_id(&path).map_err(|source| Error::Models {
                path: path.clone(),
                source,
            })?;
            Ok((path, id))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_model_files_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("b.gguf"), b"weights").expect("write");
        fs::write(dir.path().join("a.safetensors"), b"").expect("write");
        fs::write(dir.path().join("notes.txt"), b"not a model").expect("write");
        fs::create_dir(dir.path().join("embedder")).expect("mkdir");
        fs::write(dir.path().join("embedder/model.safetensors"), b"bert").expect("write");
        fs::create_dir(dir.path().join(".fetch-123")).expect("mkdir");
        fs::write(dir.path().join(".fetch-123/x.gguf"), b"partial").expect("write");
        let found = scan_models(dir.path()).expect("scan");
        let ids: Vec<ModelId> = found.iter().map(|(_, id)| *id).collect();
        assert_eq!(
            ids,
            vec![
                ModelId::of_bytes(b""),
                ModelId::of_bytes(b"weights"),
                ModelId::of_bytes(b"bert")
            ]
        );
        assert!(
            scan_models(&dir.path().join("missing"))
                .expect("missing is empty")
                .is_empty()
        );
    }
}
