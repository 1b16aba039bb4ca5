//! Every limit of the wire format, in one place, each with the reason for its size.

/// Version of the framing and message schema. A frame with another version is refused whole: postcard
/// is not self-describing, so decoding a newer schema with an older one would misread it silently.
pub const PROTOCOL_VERSION: u16 = 3;

/// Bytes before a frame's payload: a `u32` payload length and a `u16` version, both little-endian.
pub const FRAME_HEADER_BYTES: usize = 6;

/// Largest payload a frame may carry. Adverts and receipts are well under 4 KiB; 16 KiB leaves room
/// for a long model list while keeping what a hostile peer can make us buffer small. Tensors never
/// travel in these frames (they use their own streams).
pub const FRAME_BYTES_MAX: usize = 16 * 1024;

/// Most models one advert may list; a volunteer machine holds a handful, not thousands.
pub const ADVERT_MODELS_MAX: usize = 64;

/// Most CPU features one advert may list; the kernels care about a dozen.
pub const ADVERT_FEATURES_MAX: usize = 64;

/// Longest free-text field (device name, CPU feature, class string) an advert may carry.
pub const ADVERT_STRING_BYTES_MAX: usize = 256;

/// Largest payload of a work-protocol frame (assignments, results). A unit of embeddings is
/// `items × 384 × 4` bytes; a unit of prompts is bounded by [`UNIT_INPUT_BYTES_MAX`]. Both fit with
/// room to spare, and a hostile length still costs nothing before the header is checked.
pub const WORK_FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Largest work message, carried as a run of frames of at most [`WORK_FRAME_BYTES_MAX`] each
/// ([`crate::codec::encode_message`]): a long prompt's hidden states (tokens × width × 4 bytes; a
/// full 8,192-token context of the default model is 18.9 MB; a 3,584-wide 7B model carries 9,300
/// tokens) and the kept inputs a check fetches. A reader grows its buffer frame by frame as the bytes arrive, so a
/// hostile sender must send what it makes us hold.
pub const WORK_MESSAGE_BYTES_MAX: usize = 128 * 1024 * 1024;

/// Most bytes of input text one work unit carries, so an assignment always fits its frame.
pub const UNIT_INPUT_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Most inputs in one work unit.
pub const UNIT_ITEMS_MAX: usize = 1024;

/// Most tokens a batch-generate unit may ask for per prompt.
pub const GENERATE_TOKENS_MAX: u32 = 4096;
