//! The checker, in the style of Jepsen's set checker: judges a history of operations and
//! what every replica holds once the faults have healed.

use std::collections::BTreeMap;

/// What happened to one operation.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Acknowledged (a write's 201, a read's 200 with its content).
    Ok(Option<String>),
    /// Definitely not done: a read's 404.
    Missing,
    /// Unknown: a 503, a timeout, a refused connection.
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub write: bool,
    pub space: &'static str,
    pub id: String,
    pub node: usize,
    pub start_ms: u64,
    pub end_ms: u64,
    pub outcome: Outcome,
}

/// (space, id) → what each replica of the space answered: (node, outcome).
pub type FinalReads = BTreeMap<(String, String), Vec<(usize, Outcome)>>;

/// Space → each replica's digest of its whole content: (node, digest or the error).
pub type Digests = BTreeMap<String, Vec<(usize, Result<String, String>)>>;

/// Judges the history; the violations found.
pub fn check(
    history: &[Op],
    final_reads: &FinalReads,
    digests: &Digests,
    names: &[String],
) -> Vec<String> {
    let mut bad = Vec::new();
    let mut acked: BTreeMap<&str, u64> = BTreeMap::new();
    for op in history.iter().filter(|o| o.write) {
        if let Outcome::Ok(_) = op.outcome {
            acked.entry(&op.id).or_insert(op.end_ms);
        }
    }
    for op in history.iter().filter(|o| !o.write) {
        match &op.outcome {
            Outcome::Ok(content) => {
                let want = format!("{}/{}", op.space, op.id);
                if content.as_deref() != Some(want.as_str()) {
                    bad.push(format!(
                        "read of {} returned {content:?}, never written",
                        op.id
                    ));
                }
            }
            Outcome::Missing => {
                if acked.get(op.id.as_str()).is_some_and(|&t| t < op.start_ms) {
                    bad.push(format!(
                        "client {}'s read of {} on node {} at {} ms found nothing; the write was acknowledged at {} ms",
                        op.client, op.id, names[op.node], op.start_ms, acked[op.id.as_str()]
                    ));
                }
            }
            Outcome::Unknown(_) => {}
        }
    }
    for ((space, id), on) in final_reads {
        let present: Vec<(&str, bool)> = on
            .iter()
            .map(|(n, o)| (names[*n].as_str(), matches!(o, Outcome::Ok(_))))
            .collect();
        for (n, o) in on {
            match o {
                Outcome::Ok(c) if c.as_deref() != Some(format!("{space}/{id}").as_str()) => {
                    bad.push(format!("{id} on {} holds {c:?}", names[*n]))
                }
                Outcome::Unknown(e) => bad.push(format!("{id} unreadable on {}: {e}", names[*n])),
                _ => {}
            }
        }
        if acked.contains_key(id.as_str()) && !present.iter().all(|p| p.1) {
            bad.push(format!(
                "acknowledged write {id} lost on some replica: {present:?}"
            ));
        }
        if present.iter().any(|p| p.1) && !present.iter().all(|p| p.1) {
            bad.push(format!("replicas diverge on {id}: {present:?}"));
        }
    }
    for (space, on) in digests {
        for (n, d) in on {
            if let Err(e) = d {
                bad.push(format!("space {space} unreadable on {}: {e}", names[*n]));
            }
        }
        let mut seen: Vec<&String> = on.iter().filter_map(|(_, d)| d.as_ref().ok()).collect();
        seen.dedup();
        if seen.len() > 1 {
            let by: Vec<String> = on
                .iter()
                .map(|(n, d)| format!("{}: {}", names[*n], d.as_deref().unwrap_or("?")))
                .collect();
            bad.push(format!(
                "replicas of space {space} differ: {}",
                by.join(", ")
            ));
        }
    }
    bad
}

/// A digest of what a replica holds of a space: the number of memories it counts, and the
/// ids and contents of those it holds, in id order.
pub fn digest(count: u64, mut items: Vec<(String, String)>) -> String {
    items.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, content) in &items {
        for b in id.bytes().chain([0]).chain(content.bytes()).chain([0]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{count} memories, {} read, fnv {h:016x}", items.len())
}

/// The checker has teeth: each kind of violation in a made-up history is found.
#[test]
fn the_checker_catches_what_it_should() {
    let op = |write: bool, id: &str, start_ms, end_ms, outcome| Op {
        client: 0,
        write,
        space: "a",
        id: id.into(),
        node: 0,
        start_ms,
        end_ms,
        outcome,
    };
    let ok = |c: &str| Outcome::Ok(Some(c.to_string()));
    let history = vec![
        op(true, "w1", 0, 10, ok("w1")),
        op(false, "w1", 20, 25, Outcome::Missing),
        op(false, "w1", 5, 8, Outcome::Missing),
        op(false, "w1", 30, 35, ok("a/other")),
        op(true, "w2", 0, 10, Outcome::Unknown("timeout".into())),
        op(true, "w3", 0, 10, ok("w3")),
    ];
    let key = |id: &str| ("a".to_string(), id.to_string());
    let final_reads = BTreeMap::from([
        (
            key("w1"),
            vec![(0, ok("a/w1")), (1, ok("a/w1")), (2, Outcome::Missing)],
        ),
        (
            key("w2"),
            vec![(0, ok("a/w2")), (1, Outcome::Missing), (2, ok("a/w2"))],
        ),
        (
            key("w3"),
            vec![(0, ok("a/w3")), (1, ok("a/w3")), (2, ok("a/w3"))],
        ),
    ]);
    let item = |id: &str| (id.to_string(), format!("a/{id}"));
    let one = digest(1, vec![item("w1")]);
    let two = digest(2, vec![item("w2"), item("w1")]);
    assert_eq!(two, digest(2, vec![item("w1"), item("w2")]), "in id order");
    assert_ne!(one, two);
    let digests = BTreeMap::from([(
        "a".to_string(),
        vec![(0, Ok(one.clone())), (1, Ok(one)), (2, Ok(two))],
    )]);
    let names: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
    let bad = check(&history, &final_reads, &digests, &names);
    let has = |s: &str| bad.iter().any(|b| b.contains(s));
    assert!(has("client 0's read of w1"), "{bad:?}");
    assert!(has("never written"), "{bad:?}");
    assert!(has("acknowledged write w1 lost"), "{bad:?}");
    assert!(has("replicas diverge on w2"), "{bad:?}");
    assert!(has("replicas of space a differ"), "{bad:?}");
    assert_eq!(
        bad.len(),
        6,
        "the read before the acknowledgement is fine: {bad:?}"
    );
}
