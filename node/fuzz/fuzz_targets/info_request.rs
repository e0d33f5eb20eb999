//! Info request parsing from untrusted bytes: never panics, never yields an empty name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(names) = ferry_node::proto::info::parse_request(data) {
        assert!(names.iter().all(|n| !n.is_empty()));
    }
});
