use super::*;
use proptest::prelude::*;

fn mid(s: &str) -> MemoryId {
    MemoryId::new(s).unwrap()
}

fn stored(id: &str) -> Answer {
    Answer::Stored(vec![StoredMemory {
        id: mid(id),
        confidence: 0.5,
        links: vec![Link {
            to: mid("x"),
            weight: 0.25,
        }],
    }])
}

const MIN: i64 = 60 * 1_000_000;

#[test]
fn a_repeat_within_ten_minutes_gets_the_first_answer() {
    let mut t = Requests::default();
    t.record("k", 5, 0, 0, stored("a"));
    // The same entry again (a replay) is not a repeat of itself.
    assert!(t.repeat_of("k", 5, 0, 0).is_none());
    // A later entry with the key, within ten minutes: a repeat.
    let first = t.repeat_of("k", 9, 0, 9 * MIN).unwrap();
    assert_eq!((first.index, &first.answer), (5, &stored("a")));
    // An earlier entry (replayed before the one recorded) is not.
    assert!(t.repeat_of("k", 3, 0, 0).is_none());
    // Past ten minutes, in the entries' time: forgotten.
    assert!(t.repeat_of("k", 9, 0, 10 * MIN + 1).is_none());
    assert!(t.get("k", 10 * MIN).is_some());
    assert!(t.get("k", 10 * MIN + 1).is_none());
    // A newer entry's time moves the horizon for every key.
    t.record("other", 10, 0, 11 * MIN, Answer::SpaceCreated);
    assert!(t.get("k", 0).is_none());
    assert_eq!(t.len(), 1, "the dead key is pruned");
}

#[test]
fn a_record_of_a_later_entry_is_kept() {
    let mut t = Requests::default();
    t.record("k", 7, 0, 100, stored("b"));
    t.record("k", 4, 0, 50, stored("a"));
    assert_eq!(t.get("k", 100).unwrap().index, 7);
    t.record("k", 8, 0, 120, stored("c"));
    assert_eq!(t.get("k", 120).unwrap().index, 8);
    assert_eq!(t.len(), 1);
    assert_eq!(t.by_time.len(), 1);
    // Two commands of one batch entry with the same key: the second repeats the first.
    t.record("j", 9, 0, 200, stored("x"));
    assert_eq!(t.repeat_of("j", 9, 1, 200).unwrap().slot, 0);
    assert!(t.repeat_of("j", 9, 0, 200).is_none(), "a replay of itself");
}

#[test]
fn the_table_is_bounded() {
    let mut t = Requests::default();
    for i in 0..(MAX_REQUESTS as u64 + 10) {
        t.record(&format!("k{i}"), i + 1, 0, i as i64, Answer::SpaceCreated);
    }
    assert_eq!(t.len(), MAX_REQUESTS);
    assert!(t.get("k0", 0).is_none(), "the oldest are forgotten first");
    assert!(t.get(&format!("k{}", MAX_REQUESTS + 9), 0).is_some());
}

fn answer() -> impl Strategy<Value = Answer> {
    let id = "[a-z0-9]{1,12}".prop_map(|s| mid(&s));
    prop_oneof![
        proptest::collection::vec((id.clone(), any::<f32>(), 0usize..3), 0..4).prop_map(|ms| {
            Answer::Stored(
                ms.into_iter()
                    .map(|(id, confidence, n)| StoredMemory {
                        id,
                        confidence,
                        links: (0..n)
                            .map(|i| Link {
                                to: mid(&format!("t{i}")),
                                weight: 0.5,
                            })
                            .collect(),
                    })
                    .collect(),
            )
        }),
        (id.clone(), any::<bool>()).prop_map(|(id, existed)| Answer::Forgot { id, existed }),
        (id.clone(), id.clone(), any::<f32>()).prop_map(|(from, to, weight)| Answer::Linked {
            from,
            to,
            weight
        }),
        (id.clone(), id).prop_map(|(from, to)| Answer::Unlinked { from, to }),
        Just(Answer::SpaceCreated),
        Just(Answer::SpaceDropped),
    ]
}

proptest! {
    #[test]
    fn the_file_round_trips_and_refuses_damage(
        recs in proptest::collection::vec(("[a-z]{1,8}", 1u64..1000, 0i64..(20 * MIN), answer()), 0..20),
        flip in any::<usize>(),
    ) {
        let mut t = Requests::default();
        for (k, index, at, a) in recs {
            t.record(&k, index, 0, at, a);
        }
        let bytes = t.encode();
        let back = Requests::decode(&bytes).unwrap();
        // NaN confidences compare unequal: compare the encodings.
        prop_assert_eq!(back.encode(), bytes.clone());
        prop_assert_eq!(back.len(), t.len());
        let mut bad = bytes.clone();
        let i = flip % bad.len();
        bad[i] ^= 0x40;
        prop_assert!(Requests::decode(&bad).is_err());
        prop_assert!(Requests::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Requests::decode(&bytes);
    }
}
