//! Everything a peer can send us goes through these decoders first: none may panic, hang or
//! allocate without bound, and whatever they accept must re-encode to the same value.
#![no_main]

use hearth_protocol::{Message, Receipt, Signed, codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, message)) = Signed::open(data) {
        let again: Message = codec::decode(&codec::encode(&message).expect("accepted messages re-encode"))
            .expect("re-encoded messages decode");
        assert_eq!(again, message);
    }
    // A peer can sign any payload with its own key, so the decoders behind the signature check see
    // attacker-chosen bytes too: fuzz them directly.
    // Only messages that pass validation must round-trip: it refuses what cannot (a NaN score).
    if let Ok(message) = codec::decode::<Message>(data)
        && message.validate().is_ok()
    {
        let again: Message = codec::decode(&codec::encode(&message).expect("accepted messages re-encode"))
            .expect("re-encoded messages decode");
        assert_eq!(again, message);
    }
    if let Ok(envelope) = codec::decode::<Signed>(data) {
        let again: Signed = codec::decode(&codec::encode(&envelope).expect("accepted envelopes re-encode"))
            .expect("re-encoded envelopes decode");
        assert_eq!(again, envelope);
    }
    if let Ok(receipt) = codec::decode::<Receipt>(data) {
        let again: Receipt = codec::decode(&codec::encode(&receipt).expect("accepted receipts re-encode"))
            .expect("re-encoded receipts decode");
        assert_eq!(again, receipt);
        let _ = receipt.verify();
    }
    if let Ok(header) = <&[u8; hearth_protocol::FRAME_HEADER_BYTES]>::try_from(data.get(..6).unwrap_or_default()) {
        if let Ok(len) = codec::read_header(header) {
            assert!(len <= hearth_protocol::FRAME_BYTES_MAX);
        }
    }
});
