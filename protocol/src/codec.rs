//! Length-prefixed, versioned frames of postcard.
//!
//! ```text
//! +----------------+-------------+------------------------------+
//! | len: u32 LE    | version: u16| postcard payload (len bytes) |
//! +----------------+-------------+------------------------------+
//! ```
//!
//! Readers check the header with [`read_header`] before allocating anything for the payload, so a
//! hostile length costs nothing. A frame whose version differs from [`PROTOCOL_VERSION`] is refused
//! whole.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, FRAME_BYTES_MAX, FRAME_HEADER_BYTES, PROTOCOL_VERSION, Result};

/// Encode `value` as one frame. Refuses values whose encoding is over [`FRAME_BYTES_MAX`], so we
/// never send what a peer must refuse.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    encode_max(value, FRAME_BYTES_MAX)
}

/// [`encode`] with another payload limit, for the work protocol's larger frames
/// ([`crate::WORK_FRAME_BYTES_MAX`]).
pub fn encode_max<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>> {
    let mut frame = postcard::to_extend(value, vec![0u8; FRAME_HEADER_BYTES])
        .map_err(|e| Error::Malformed(e.to_string()))?;
    let len = frame.len() - FRAME_HEADER_BYTES;
    if len > max {
        return Err(Error::TooLarge { len, max });
    }
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&header(len));
    Ok(frame)
}

/// The header of a frame whose payload is `len` bytes.
pub fn header(len: usize) -> [u8; FRAME_HEADER_BYTES] {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let len = u32::try_from(len).expect("payload lengths are bounded by FRAME_BYTES_MAX");
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    header
}

/// Check a frame header and return the payload length it announces. Call this before allocating
/// room for the payload.
pub fn read_header(header: &[u8; FRAME_HEADER_BYTES]) -> Result<usize> {
    read_header_max(header, FRAME_BYTES_MAX)
}

/// [`read_header`] with another payload limit.
pub fn read_header_max(header: &[u8; FRAME_HEADER_BYTES], max: usize) -> Result<usize> {
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != PROTOCOL_VERSION {
        return Err(Error::Version {
            got: version,
            want: PROTOCOL_VERSION,
        });
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max {
        return Err(Error::TooLarge { len, max });
    }
    Ok(len)
}

/// Split a whole frame into its checked payload.
pub fn payload(frame: &[u8]) -> Result<&[u8]> {
    let header: &[u8; FRAME_HEADER_BYTES] = frame
        .get(..FRAME_HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(Error::Truncated {
            got: frame.len(),
            need: FRAME_HEADER_BYTES,
        })?;
    let announced = read_header(header)?;
    let payload = &frame[FRAME_HEADER_BYTES..];
    if payload.len() != announced {
        return Err(Error::LengthMismatch {
            announced,
            actual: payload.len(),
        });
    }
    Ok(payload)
}

/// Encode `value` as a message of one or more frames: its postcard bytes cut into frames of
/// `frame_max` bytes, the last one shorter (empty when the bytes divide evenly), so a reader knows
/// the message ends at the first frame under `frame_max`. A value that fits one frame is exactly
/// the frame [`encode_max`] makes. Refuses values whose encoding is over `message_max`.
pub fn encode_message<T: Serialize>(
    value: &T,
    frame_max: usize,
    message_max: usize,
) -> Result<Vec<u8>> {
    let payload = postcard::to_stdvec(value).map_err(|e| Error::Malformed(e.to_string()))?;
    if payload.len() > message_max {
        return Err(Error::TooLarge {
            len: payload.len(),
            max: message_max,
        });
    }
    let frames = payload.len() / frame_max + 1;
    let mut message = Vec::with_capacity(payload.len() + frames * FRAME_HEADER_BYTES);
    let mut rest = &payload[..];
    loop {
        let (piece, after) = rest.split_at(rest.len().min(frame_max));
        message.extend_from_slice(&header(piece.len()));
        message.extend_from_slice(piece);
        if piece.len() < frame_max {
            return Ok(message);
        }
        rest = after;
    }
}

/// Gathers a message's payload frame by frame ([`encode_message`]), checking each header before
/// the bytes it announces are taken and the whole against its limit.
#[derive(Debug)]
pub struct MessageReader {
    frame_max: usize,
    message_max: usize,
    payload: Vec<u8>,
}

impl MessageReader {
    /// A reader of messages of frames up to `frame_max` and `message_max` bytes in all.
    pub fn new(frame_max: usize, message_max: usize) -> Self {
        Self {
            frame_max,
            message_max,
            payload: Vec::new(),
        }
    }

    /// The payload length a frame header announces, checked against both limits; call before
    /// taking the payload.
    pub fn header(&self, header: &[u8; FRAME_HEADER_BYTES]) -> Result<usize> {
        let len = read_header_max(header, self.frame_max)?;
        let total = self.payload.len() + len;
        if total > self.message_max {
            return Err(Error::TooLarge {
                len: total,
                max: self.message_max,
            });
        }
        Ok(len)
    }

    /// Add a frame's payload (of the length its header announced); whether the message is whole.
    pub fn push(&mut self, piece: &[u8]) -> bool {
        self.payload.extend_from_slice(piece);
        piece.len() < self.frame_max
    }

    /// The message's payload.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }
}

/// The payload of a whole message of frames ([`encode_message`]); bytes after its last frame are
/// an error.
pub fn message_payload(message: &[u8], frame_max: usize, message_max: usize) -> Result<Vec<u8>> {
    let mut reader = MessageReader::new(frame_max, message_max);
    let mut rest = message;
    loop {
        let header: &[u8; FRAME_HEADER_BYTES] = rest
            .get(..FRAME_HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or(Error::Truncated {
                got: rest.len(),
                need: FRAME_HEADER_BYTES,
            })?;
        let len = reader.header(header)?;
        let piece = rest
            .get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len)
            .ok_or(Error::LengthMismatch {
                announced: len,
                actual: rest.len() - FRAME_HEADER_BYTES,
            })?;
        rest = &rest[FRAME_HEADER_BYTES + len..];
        if reader.push(piece) {
            break;
        }
    }
    if !rest.is_empty() {
        return Err(Error::LengthMismatch {
            announced: message.len() - rest.len(),
            actual: message.len(),
        });
    }
    Ok(reader.into_payload())
}

/// Decode a whole frame into a `T`. Trailing bytes after the value are an error: two encodings of
/// one value must not both be accepted.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T> {
    from_postcard(payload(frame)?)
}

/// Decode exactly one `T` from postcard bytes (a payload already checked), refusing trailing bytes.
pub fn from_postcard<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| Error::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_come_before_allocation() {
        let mut frame = encode(&(1u32, String::from("hi"))).expect("small");
        assert_eq!(
            decode::<(u32, String)>(&frame).expect("ok"),
            (1, "hi".into())
        );

        // Oversized announcement: refused from the header alone.
        frame[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let head: [u8; FRAME_HEADER_BYTES] = frame[..FRAME_HEADER_BYTES].try_into().expect("6");
        assert_eq!(
            read_header(&head),
            Err(Error::TooLarge {
                len: u32::MAX as usize,
                max: FRAME_BYTES_MAX
            })
        );

        // Wrong version.
        let mut frame = encode(&7u8).expect("small");
        frame[4] = 9;
        assert!(matches!(
            decode::<u8>(&frame),
            Err(Error::Version { got: 9, .. })
        ));

        // Truncated and padded.
        let frame = encode(&7u8).expect("small");
        assert!(matches!(
            decode::<u8>(&frame[..3]),
            Err(Error::Truncated { .. })
        ));
        let mut padded = frame.clone();
        padded.push(0);
        assert!(matches!(
            decode::<u8>(&padded),
            Err(Error::LengthMismatch { .. })
        ));
    }

    #[test]
    fn oversized_values_are_not_encoded() {
        let big = vec![0u8; FRAME_BYTES_MAX + 1];
        assert!(matches!(encode(&big), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn a_message_is_cut_into_frames_and_put_back_together() {
        // Frames of 8 bytes: a 3-byte value is one short frame, exactly what `encode_max` gives.
        let small = (1u8, 2u8, 3u8);
        assert_eq!(
            encode_message(&small, 8, 64).expect("fits"),
            encode_max(&small, 8).expect("fits")
        );
        for len in [0usize, 7, 8, 9, 16, 40] {
            // A byte vector's postcard: its length (one byte under 128), then its bytes.
            let value = vec![7u8; len];
            let message = encode_message(&value, 8, 64).expect("fits");
            let frames = (len + 1) / 8 + 1;
            assert_eq!(
                message.len(),
                len + 1 + frames * FRAME_HEADER_BYTES,
                "{len}"
            );
            let payload = message_payload(&message, 8, 64).expect("whole");
            assert_eq!(from_postcard::<Vec<u8>>(&payload).expect("decodes"), value);
            // Cut short, or followed by anything: refused.
            assert!(message_payload(&message[..message.len() - 1], 8, 64).is_err());
            let mut longer = message.clone();
            longer.push(0);
            assert!(message_payload(&longer, 8, 64).is_err());
        }
        // Over the message limit: not encoded, and not read past the limit.
        let big = vec![1u8; 70];
        assert!(matches!(
            encode_message(&big, 8, 64),
            Err(Error::TooLarge { .. })
        ));
        let message = encode_message(&big, 8, 128).expect("fits 128");
        assert!(matches!(
            message_payload(&message, 8, 64),
            Err(Error::TooLarge { max: 64, .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut payload = postcard::to_stdvec(&5u8).expect("small");
        payload.push(0);
        let mut frame = header(payload.len()).to_vec();
        frame.extend_from_slice(&payload);
        assert!(matches!(decode::<u8>(&frame), Err(Error::Malformed(_))));
    }
}
