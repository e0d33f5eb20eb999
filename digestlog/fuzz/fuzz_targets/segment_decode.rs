//! Fuzzes digest-log segment decoding: any bytes must decode without panicking, and whatever
//! decodes must be a self-consistent prefix (dense LSNs from the header's first LSN).
//!
//! Run: `cargo +nightly fuzz run segment_decode` in `digestlog/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = ferry_digestlog::decode_segment(data) {
        let records = d.entries.len() as u64;
        assert_eq!(
            d.valid_len,
            ferry_digestlog::HEADER_LEN as u64 + records * ferry_digestlog::RECORD_LEN as u64
        );
        for (i, e) in d.entries.iter().enumerate() {
            assert_eq!(e.lsn.0, d.first_lsn.0 + i as u64);
        }
        assert!(d.valid_len <= data.len() as u64);
    }
});
