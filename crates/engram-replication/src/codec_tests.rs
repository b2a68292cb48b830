//! Tests of `codec.rs`.
use super::*;
use crate::types::command;
use engram_core::MemoryId;
use openraft::EntryPayload;

fn lid(term: u64, index: u64) -> Option<LogId> {
    Some(log_id(engram_storage::LogPos { term, index }))
}

fn vote(term: u64, node: u64, committed: bool) -> Vote {
    vote_of(engram_storage::RaftVote {
        term,
        node,
        committed,
    })
}

fn samples() -> Vec<Message> {
    let entries = vec![
        Entry {
            log_id: lid(2, 5).unwrap(),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: lid(2, 6).unwrap(),
            payload: EntryPayload::Normal(command(
                Op::Forget(MemoryId::new("m").unwrap()),
                Some(("k".into(), 5)),
            )),
        },
    ];
    let membership = StoredMembership::new(
        lid(1, 1),
        membership_of(&RaftMembership {
            configs: vec![vec![1, 2]],
            nodes: vec![
                engram_storage::RaftNode {
                    id: 1,
                    name: "a".into(),
                    address: "x:1".into(),
                },
                engram_storage::RaftNode {
                    id: 2,
                    name: "b".into(),
                    address: "x:2".into(),
                },
            ],
        })
        .unwrap(),
    );
    let mut transfer = VoteRequest::new(vote(3, 1, false), lid(2, 6));
    transfer.leadership_transfer = true;
    vec![
        Message::Append(AppendEntriesRequest {
            vote: vote(2, 1, true),
            prev_log_id: lid(2, 4),
            entries,
            leader_commit: lid(2, 4),
        }),
        Message::Append(AppendEntriesRequest {
            vote: vote(2, 1, true),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        }),
        Message::AppendReply(AppendEntriesResponse::Success),
        Message::AppendReply(AppendEntriesResponse::PartialSuccess(lid(2, 5))),
        Message::AppendReply(AppendEntriesResponse::Conflict),
        Message::AppendReply(AppendEntriesResponse::HigherVote(vote(4, 2, false))),
        Message::Vote(VoteRequest::new(vote(3, 1, false), lid(2, 6))),
        Message::Vote(transfer),
        Message::VoteReply(VoteResponse::new(vote(3, 1, false), None, true)),
        Message::Snapshot {
            vote: vote(2, 1, true),
            snapshot: SnapshotTransfer {
                last_log_id: lid(2, 6),
                membership,
                files: vec![
                    ("raft.state".into(), vec![1, 2, 3]),
                    ("space.meta".into(), vec![]),
                ],
            },
        },
        Message::SnapshotReply(SnapshotResponse::new(vote(2, 1, true))),
        Message::Propose(Command {
            op: Op::Forget(MemoryId::new("m").unwrap()),
            request: None,
        }),
        Message::ProposeReply(ProposeOutcome::Applied(Response {
            index: 9,
            at_us: 0,
            answer: None,
            repeat: false,
        })),
        Message::ProposeReply(ProposeOutcome::Applied(Response {
            index: 12,
            at_us: 1_700_000_000_000_000,
            answer: Some(Answer::Stored(vec![
                engram_storage::requests::StoredMemory {
                    id: engram_core::MemoryId::new("m1").unwrap(),
                    confidence: 0.5,
                    links: vec![],
                },
            ])),
            repeat: true,
        })),
        Message::ProposeReply(ProposeOutcome::NotLeader(Some(3))),
        Message::ProposeReply(ProposeOutcome::NotLeader(None)),
        Message::ProposeReply(ProposeOutcome::Failed("no".into())),
        Message::ReadIds,
        Message::ReadIdsReply(Ok(vec!["a".into(), "b".into()])),
        Message::ReadIdsReply(Err(ProposeOutcome::NotLeader(None))),
        Message::Error("gone".into()),
        Message::Quiesce { from: 3 },
        Message::Wake { from: 2 },
        Message::Ack,
        Message::Status,
        Message::StatusReply {
            led: 3,
            resident: 9,
        },
        Message::Join(crate::meta::NodeRecord {
            name: "n2".into(),
            http: "http://127.0.0.1:7432".into(),
            cluster: "127.0.0.1:7433".into(),
            rack: "r1".into(),
            capacity: 100,
            state: crate::meta::NodeState::Joining,
            incarnation: 77,
        }),
    ]
}

#[test]
fn every_message_round_trips_and_every_prefix_is_refused() {
    let g = SpaceId::new("g").unwrap();
    for m in samples() {
        let bytes = m.encode_for(&g, 0x0102_0304_0506_0708);
        let (group, creation, back) = Message::decode_for(&bytes).unwrap();
        assert_eq!(group, g);
        assert_eq!(creation, 0x0102_0304_0506_0708);
        assert_eq!(format!("{back:?}"), format!("{m:?}"));
        assert_eq!(back.encode_for(&g, creation), bytes);
        for cut in 0..bytes.len() {
            assert!(
                Message::decode(&bytes[..cut]).is_err(),
                "{m:?} cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Message::decode(&longer).is_err());
    }
}

#[test]
fn other_versions_and_kinds_are_refused() {
    let g = SpaceId::new("g").unwrap();
    let mut b = Message::ReadIds.encode(&g);
    b[0] = 1;
    assert!(Message::decode(&b).unwrap_err().0.contains("version 1"));
    let mut b = Message::ReadIds.encode(&g);
    b[1] = 99;
    assert!(Message::decode(&b).unwrap_err().0.contains("kind 99"));
}

/// A proposal is a command encoded as an entry at position 0; one at any other position
/// would decode to the same message and encode back differently (found by the fuzzer).
#[test]
fn a_proposal_at_a_log_position_is_refused() {
    let g = SpaceId::new("g").unwrap();
    let m = samples()
        .into_iter()
        .find(|m| matches!(m, Message::Propose(_)))
        .expect("a sample proposal");
    let mut b = m.encode(&g);
    // version, kind, group (str16 "g"), creation, payload length (u64), the entry's term.
    let term_at = 2 + 2 + 1 + 8 + 8;
    b[term_at] = 7;
    assert!(Message::decode(&b).unwrap_err().0.contains("log position"));
}
