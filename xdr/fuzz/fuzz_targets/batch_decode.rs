//! Fuzz the XDR batch decoder with arbitrary peer bytes: it must never panic nor inflate past
//! its cap, and every batch it accepts must encode back to a batch that decodes to itself.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O batch_decode` from xdr/fuzz.

#![no_main]

use ferry_xdr::batch::{Batch, Compression, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = Batch::decode(data) else { return };
    let raw: usize = batch.records.iter().map(|r| r.encoded_len()).sum();
    assert!(raw <= MAX_PAYLOAD);
    for compression in [
        Compression { level: 1, threshold: usize::MAX },
        Compression { level: 1, threshold: 0 },
    ] {
        let (bytes, size) = batch.encode(compression);
        assert_eq!(size.raw, raw);
        assert_eq!(Batch::decode(&bytes).as_ref(), Ok(&batch));
    }
});
