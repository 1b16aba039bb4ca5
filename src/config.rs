//! The optional TOML config file, and how it layers under flags and `HEARTH_*` variables.
//!
//! ```toml
//! api = "http://127.0.0.1:7070"   # client commands
//! api_key = "…"
//! models = "/srv/hearth/models"
//!
//! [node]
//! data_dir = "/var/lib/hearth/node"
//! join = ["http://coordinator.lan:7070"]
//! listen = ["/ip4/0.0.0.0/udp/7072/quic-v1"]
//! mdns = true
//! max_threads = 4
//!
//! [coordinator]
//! data_dir = "/var/lib/hearth/coordinator"
//! listen = ["/ip4/0.0.0.0/udp/7071/quic-v1", "/ip4/0.0.0.0/tcp/7071"]
//! http = "127.0.0.1:7070"
//! mdns = true
//! ```
//!
//! Precedence, highest first: flag, environment variable, config file, built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// Default coordinator API URL for client commands.
pub(crate) const DEFAULT_API: &str = "http://127.0.0.1:7070";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) api: Option<String>,
    pub(crate) api_key: Option<String>,
    pub(crate) models: Option<PathBuf>,
    #[serde(default)]
    pub(crate) node: NodeSection,
    #[serde(default)]
    pub(crate) coordinator: CoordinatorSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSection {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) join: Option<Vec<String>>,
    pub(crate) listen: Option<Vec<String>>,
    pub(crate) mdns: Option<bool>,
    #[serde(alias = "threads")]
    pub(crate) max_threads: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CoordinatorSection {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) listen: Option<Vec<String>>,
    pub(crate) http: Option<SocketAddr>,
    pub(crate) mdns: Option<bool>,
}

impl FileConfig {
    /// Read the config named by `--config`/`HEARTH_CONFIG`, or the default file if it exists.
    pub(crate) fn load(named: Option<&Path>) -> anyhow::Result<Self> {
        let (path, required) = match named {
            Some(path) => (path.to_path_buf(), true),
            None => match home_path(".config", "XDG_CONFIG_HOME", "hearth/config.toml") {
                Some(path) => (path, false),
                None => return Ok(Self::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default());
            }
            Err(e) => bail!("config {}: {e}", path.display()),
        };
        toml::from_str(&text).map_err(|e| {
            // toml's messages span several lines with a caret diagram; keep the first.
            let reason = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string();
            let line = e.span().map(|s| text[..s.start].lines().count().max(1));
            match line {
                Some(line) => anyhow::anyhow!("config {}: line {line}: {reason}", path.display()),
                None => anyhow::anyhow!("config {}: {reason}", path.display()),
            }
        })
    }
}

/// `$HOME/<dot_dir>/<rest>`, or `$<xdg_var>/<rest>` when that variable is set.
fn home_path(dot_dir: &str, xdg_var: &str, rest: &str) -> Option<PathBuf> {
    if let Some(base) = std::env::var_os(xdg_var).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(base).join(rest));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(dot_dir).join(rest))
}

/// Default data folder of a role (`node`, `coordinator`).
pub(crate) fn default_data_dir(role: &str) -> anyhow::Result<PathBuf> {
    home_path(".local/share", "XDG_DATA_HOME", &format!("hearth/{role}"))
        .context("no HOME to put the data folder in; pass --data-dir")
}

/// Default models folder.
pub(crate) fn default_models_dir() -> anyhow::Result<PathBuf> {
    home_path(".cache", "XDG_CACHE_HOME", "hearth/models")
        .context("no HOME to put models in; pass --models")
}

/// The first of: flag/env value, config value, default.
pub(crate) fn pick<T>(
    flag: Option<T>,
    file: Option<T>,
    default: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match flag.or(file) {
        Some(value) => Ok(value),
        None => default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let dir = std::env::temp_dir().join(format!("hearth-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("config.toml");
        std::fs::write(&path, "api = \"http://x\"\n[node]\nthreads = \"many\"\n").expect("write");
        let error = FileConfig::load(Some(&path))
            .expect_err("bad type")
            .to_string();
        assert!(error.contains("line 3"), "{error}");
        assert!(!error.contains('\n'), "one line: {error}");
        std::fs::write(&path, "[node]\njion = []\n").expect("write");
        assert!(
            FileConfig::load(Some(&path))
                .expect_err("unknown key")
                .to_string()
                .contains("jion")
        );
        std::fs::write(
            &path,
            "models = \"/m\"\n[coordinator]\nhttp = \"0.0.0.0:1\"\n",
        )
        .expect("write");
        let config = FileConfig::load(Some(&path)).expect("valid");
        assert_eq!(config.models.as_deref(), Some(Path::new("/m")));
        assert!(
            FileConfig::load(Some(&dir.join("missing.toml"))).is_err(),
            "a named file must exist"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_default() {
        assert_eq!(pick(Some(1), Some(2), || Ok(3)).expect("value"), 1);
        assert_eq!(pick(None, Some(2), || Ok(3)).expect("value"), 2);
        assert_eq!(pick(None, None, || Ok(3)).expect("value"), 3);
    }
}
