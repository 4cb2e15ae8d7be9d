//! Coverage-guided fuzzing of request decoding, frame to typed request.
//!
//! Input: one request frame without its 4-byte length prefix, exactly what the connection
//! loop hands to `broker::protocol::parse_frame`. Whatever that accepts (header decoded,
//! body passed the `bounds` walker) goes on to kafka-protocol's `RequestKind::decode`, as
//! the dispatcher does. Neither step may panic, and, run with `-malloc_limit_mb`, neither may
//! allocate more than a real request of that size could need: kafka-protocol pre-allocates
//! arrays and byte strings from wire lengths, and the bounds walker is what stands between
//! a hostile length and a multi-gigabyte `Vec::with_capacity`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(broker::protocol::Parsed::Request {
        header,
        api,
        mut body,
    }) = broker::protocol::parse_frame(bytes::Bytes::copy_from_slice(data))
    {
        let _ = kafka_protocol::messages::RequestKind::decode(
            api,
            &mut body,
            header.request_api_version,
        );
    }
});
