//! The node-to-node message decoder (`engram_replication::codec::Message::decode`) and the
//! metadata group's decoders (its commands, their answers, and the state of its snapshots'
//! `cluster.state`) must never panic on arbitrary bytes; what the message and command
//! decoders accept must encode back to the same bytes, and a decoded state must read back
//! from its own encoding.
#![no_main]

use engram_replication::codec::Message;
use engram_replication::meta::{MetaAnswer, MetaCommand, MetaState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((group, msg)) = Message::decode(data) {
        assert_eq!(msg.encode(&group), data, "decode then encode gives the bytes back");
    }
    if let Ok(cmd) = MetaCommand::decode(data) {
        assert_eq!(cmd.encode(), data, "a metadata command's one encoding");
    }
    if let Ok(a) = MetaAnswer::decode(data) {
        assert_eq!(a.encode(), data, "a metadata answer's one encoding");
    }
    if let Ok(state) = MetaState::decode(data) {
        let again = MetaState::decode(&state.encode()).expect("its own encoding reads");
        assert_eq!(again, state);
    }
});
