//! AS_MSG decoding from untrusted bytes: never panics; whatever decodes survives a re-encode
//! unchanged; compressed frames inflate within their declared size.
#![no_main]

use ferry_node::proto::msg::Msg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Msg::decode(data) {
        assert_eq!(Msg::decode(&msg.encode()).as_ref(), Ok(&msg));
    }
    let _ = ferry_node::proto::decompress(data);
});
