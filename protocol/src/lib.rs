//! Hearth's wire vocabulary, with no I/O and no async runtime.
//!
//! What flows through this crate:
//! - **Identities.** A [`SecretKey`] (ed25519) signs; its [`PublicKey`] verifies; its [`PeerId`] is the
//!   same string libp2p derives from the same key, so the peer a connection comes from and the signer
//!   of a receipt are one identity.
//! - **Adverts.** A node describes its hardware in [`Capabilities`] and announces them in an
//!   [`Advert`] on gossip, once at start and then on every heartbeat.
//! - **Receipts.** A [`Receipt`] binds a result to the job step, model, input and output by blake3
//!   digests, signed by the peer that computed it.
//! - **Frames.** Every message on the wire is a [`Signed`] envelope in a length-prefixed, versioned
//!   frame ([`codec`]); the length is checked against [`FRAME_BYTES_MAX`] before anything is allocated,
//!   and the signature is checked over the raw payload bytes before the payload is decoded.
#![deny(unsafe_code)]

pub mod api;
mod capabilities;
pub mod codec;
pub mod coop;
mod digest;
mod error;
mod identity;
mod limits;
mod message;
mod receipt;
mod signed;
pub mod work;

pub use capabilities::{Backend, Capabilities, KernelFamily};
pub use digest::{Digest, ModelId};
pub use error::{Error, Result};
pub use identity::{PeerId, PublicKey, SecretKey, Signature};
pub use limits::{
    ADVERT_FEATURES_MAX, ADVERT_MODELS_MAX, ADVERT_STRING_BYTES_MAX, FRAME_BYTES_MAX,
    FRAME_HEADER_BYTES, GENERATE_TOKENS_MAX, PROTOCOL_VERSION, UNIT_INPUT_BYTES_MAX,
    UNIT_ITEMS_MAX, WORK_FRAME_BYTES_MAX, WORK_MESSAGE_BYTES_MAX,
};
pub use message::{
    Advert, HELD_RANGES_MAX, HeldLayers, LINKS_MAX, Link, Message, Reachability, SERVES_MAX,
};
pub use receipt::{Receipt, ReceiptBody, Subject};
pub use signed::Signed;
