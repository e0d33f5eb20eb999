//! Batch-index row decoding from untrusted bytes: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferry_node::command::batch::decode_rows(data);
});
