//! Fuzz the XDR acknowledgement decoder with arbitrary peer bytes: it must never panic nor
//! allocate for refusals the bytes do not hold, and every ack it accepts must encode back to
//! exactly those bytes.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O ack_decode` from xdr/fuzz.

#![no_main]

use ferry_xdr::ack::Ack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(ack) = Ack::decode(data) else { return };
    assert!(ack.refused.len() <= data.len() / 21);
    assert_eq!(&ack.encode()[..], data);
});
