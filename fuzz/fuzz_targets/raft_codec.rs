//! The node-to-node message decoder (`engram_replication::codec::Message::decode`) must never
//! panic on arbitrary bytes, and what it accepts must encode back to the same bytes.
#![no_main]

use engram_replication::codec::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((group, msg)) = Message::decode(data) {
        assert_eq!(msg.encode(&group), data, "decode then encode gives the bytes back");
    }
});
