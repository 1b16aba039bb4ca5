//! The work protocol's decoders: requests and answers off the wire, and result bytes parsed after
//! their digest checked. None may panic, hang or allocate without bound; what they accept must
//! re-encode to the same value.
#![no_main]

use hearth_protocol::work::{UnitOutput, decode_request, decode_response};
use hearth_protocol::{WORK_FRAME_BYTES_MAX, codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data) {
        let frame = codec::encode_max(&request, WORK_FRAME_BYTES_MAX).expect("accepted requests re-encode");
        assert_eq!(decode_request(&frame).expect("re-encoded requests decode"), request);
    }
    if let Ok(response) = decode_response(data) {
        let frame = codec::encode_max(&response, WORK_FRAME_BYTES_MAX).expect("accepted answers re-encode");
        assert_eq!(decode_response(&frame).expect("re-encoded answers decode"), response);
    }
    if let Ok(output) = UnitOutput::from_canonical(data) {
        // NaN payloads differ as floats but not as bits: compare the canonical bytes.
        assert_eq!(output.canonical(), data);
    }
});
