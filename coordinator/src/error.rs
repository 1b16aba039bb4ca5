//! The coordinator's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a coordinator could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The identity key could not be loaded or made.
    #[error(transparent)]
    Identity(#[from] hearth_net::IdentityError),
    /// The swarm could not be built or could not listen.
    #[error("swarm: {0}")]
    Swarm(#[from] hearth_net::BoxError),
    /// The HTTP address could not be bound.
    #[error("cannot serve HTTP on {addr}: {}", bind_reason(.error))]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The underlying error (said in the message, with what to do).
        error: std::io::Error,
    },
    /// A file in the data folder could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The journal could not be opened, read or written. Fatal: nothing may be acknowledged that
    /// is not committed.
    #[error("journal {path}: {message}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A request the coordinator will not carry out.
    #[error("{0}")]
    Refused(String),
}

/// The coordinator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an address could not be bound, and what to do about it.
fn bind_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            "the port is in use (another coordinator?): pick another with --http ADDR:PORT".into()
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root): pick another with --http ADDR:PORT"
                .into()
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "no such address on this machine: --http takes one of its addresses".into()
        }
        _ => error.to_string(),
    }
}
