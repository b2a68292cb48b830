//! The node-to-node message decoder (`engram_replication::codec::Message::decode`) and the
//! metadata group's decoders (its commands, their answers, and the state of its snapshots'
//! `cluster.state`) must never panic on arbitrary bytes; what the message and command
//! decoders accept must encode back to the same bytes (a metadata command or answer of an
//! earlier encoding version reads back from its encoding in the current one), and a decoded
//! state must read back from its own encoding.
#![no_main]

use engram_replication::codec::Message;
use engram_replication::meta::{MetaAnswer, MetaCommand, MetaState, META_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((group, creation, msg)) = Message::decode_for(data) {
        assert_eq!(
            msg.encode_for(&group, creation),
            data,
            "decode then encode gives the bytes back"
        );
    }
    let current = data.first() == Some(&META_VERSION);
    if let Ok(cmd) = MetaCommand::decode(data) {
        if current {
            assert_eq!(cmd.encode(), data, "a metadata command's one encoding");
        } else {
            assert_eq!(MetaCommand::decode(&cmd.encode()).unwrap(), cmd);
        }
    }
    if let Ok(a) = MetaAnswer::decode(data) {
        if current {
            assert_eq!(a.encode(), data, "a metadata answer's one encoding");
        } else {
            assert_eq!(MetaAnswer::decode(&a.encode()).unwrap(), a);
        }
    }
    if let Ok(state) = MetaState::decode(data) {
        let again = MetaState::decode(&state.encode()).expect("its own encoding reads");
        assert_eq!(again, state);
    }
});
