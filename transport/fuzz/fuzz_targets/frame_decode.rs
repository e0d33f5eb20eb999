//! Fuzz the frame decoder with arbitrary peer bytes: it must never panic, never read past the
//! declared length, and every frame it accepts must re-encode to exactly the bytes it consumed.
//!
//! Run: `cargo +nightly fuzz run frame_decode` from transport/.

#![no_main]

use ferry_transport::frame::{FRAME_VERSION, Frame, FrameHeader, HEADER_LEN, MAX_PAYLOAD_LIMIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A stream of concatenated frames, as a reader with a 64 KiB cap would see it.
    let mut rest = data;
    while let Ok(Some((frame, used))) = Frame::decode(rest, 64 * 1024) {
        assert!(used >= HEADER_LEN && used <= rest.len());
        let bytes = frame.to_bytes().expect("a decoded frame re-encodes");
        assert_eq!(&bytes[..], &rest[..used]);
        let _ = frame.parse_error();
        rest = &rest[used..];
    }
    // One whole stream, with the largest cap.
    if let Ok(frame) = Frame::decode_exact(data, MAX_PAYLOAD_LIMIT) {
        assert_eq!(data.len(), HEADER_LEN + frame.payload.len());
    }
    if let Some(header) = data.first_chunk::<HEADER_LEN>() {
        if let Ok(parsed) = FrameHeader::parse(header, u32::MAX) {
            assert_eq!(header[0], FRAME_VERSION);
            assert!(parsed.payload_len <= MAX_PAYLOAD_LIMIT);
            assert_eq!(&parsed.to_bytes(), header);
        }
    }
});
