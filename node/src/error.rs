//! The node's error type.

use std::path::PathBuf;

/// Why a node could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The identity key could not be loaded or made.
    #[error(transparent)]
    Identity(#[from] hearth_net::IdentityError),
    /// The swarm could not be built or could not listen.
    #[error("swarm: {0}")]
    Swarm(#[from] hearth_net::BoxError),
    /// `--join` is neither a multiaddr nor an http(s) URL.
    #[error("--join {target:?}: {reason}")]
    BadJoin {
        /// What was given.
        target: String,
        /// Why it is not usable.
        reason: String,
    },
    /// The coordinator's HTTP endpoint did not answer with its addresses.
    #[error("could not learn the coordinator's addresses from {url}: {reason}")]
    JoinHttp {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The models folder could not be read.
    #[error("models folder {path}: {source}")]
    Models {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The outbox could not be opened, read or written.
    #[error("outbox {path}: {message}")]
    Outbox {
        /// The outbox file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The node's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
