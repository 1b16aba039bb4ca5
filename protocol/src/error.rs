//! The crate's one error type.

/// Why bytes from the wire, or a key, were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than a frame header.
    #[error("frame truncated: {got} bytes, the header alone is {need}")]
    Truncated {
        /// Bytes present.
        got: usize,
        /// Bytes required.
        need: usize,
    },
    /// The header announces a payload over [`crate::FRAME_BYTES_MAX`].
    #[error("frame too large: {len} bytes announced, limit {max}")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header's length does not match the bytes that follow it.
    #[error("frame length mismatch: header says {announced} bytes, {actual} follow")]
    LengthMismatch {
        /// Length in the header.
        announced: usize,
        /// Bytes actually present after the header.
        actual: usize,
    },
    /// The frame is of a protocol version this build does not speak.
    #[error("protocol version {got} not supported (this build speaks {want})")]
    Version {
        /// Version in the frame.
        got: u16,
        /// Version this build speaks.
        want: u16,
    },
    /// The payload is not a valid encoding of the expected type.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// A signature does not verify under the claimed key.
    #[error("bad signature")]
    BadSignature,
    /// Bytes that should be an ed25519 public key are not one.
    #[error("invalid public key")]
    InvalidKey,
    /// A string is not a valid peer id.
    #[error("invalid peer id: {0}")]
    InvalidPeerId(String),
    /// A decoded message breaks a limit the schema alone cannot express.
    #[error("limit exceeded: {0}")]
    Limit(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
