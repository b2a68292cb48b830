//! The history checker: every client operation with when it was invoked, when it returned and
//! what it returned, and the checks the simulation makes of them.

use std::collections::BTreeSet;
use std::time::Duration;

/// How a write ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed and applied (the acknowledgement).
    Acked,
    /// Refused before it was proposed (no leader known): certainly not written.
    Refused,
    /// No answer or a failure: it may or may not have been written.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Write {
    pub id: String,
    pub invoked: Duration,
    pub returned: Duration,
    pub outcome: WriteOutcome,
}

#[derive(Debug, Clone)]
pub struct Read {
    pub invoked: Duration,
    pub returned: Duration,
    /// The ids a linearizable read on the leader returned.
    pub ids: BTreeSet<String>,
}

/// A write sent again with the same idempotency key but a new memory id (as a server makes
/// one for a memory without an explicit id): at most one of the two is ever stored, and the
/// answer names it.
#[derive(Debug, Clone)]
pub struct Retry {
    pub first: String,
    pub again: String,
    /// The memory the retry's answer named, if it was answered.
    pub answered: Option<String>,
}

#[derive(Debug, Default)]
pub struct History {
    pub writes: Vec<Write>,
    pub reads: Vec<Read>,
    pub retries: Vec<Retry>,
    /// The read after every fault healed.
    pub last: Option<BTreeSet<String>>,
}

impl History {
    /// The checks; an error names the first violation.
    pub fn check(&self) -> Result<Stats, String> {
        let attempted: BTreeSet<&str> = self
            .writes
            .iter()
            .filter(|w| w.outcome != WriteOutcome::Refused)
            .map(|w| w.id.as_str())
            .collect();
        // A read sees every write acknowledged before it was invoked, and nothing that was
        // never written (or was invoked only after the read returned).
        for (i, r) in self.reads.iter().enumerate() {
            for w in &self.writes {
                if w.outcome == WriteOutcome::Acked
                    && w.returned < r.invoked
                    && !r.ids.contains(&w.id)
                {
                    return Err(format!(
                        "read {i} (invoked at {:?}) misses {} acknowledged at {:?}",
                        r.invoked, w.id, w.returned
                    ));
                }
            }
            for id in &r.ids {
                let Some(w) = self.writes.iter().find(|w| &w.id == id) else {
                    return Err(format!("read {i} returned {id}, never written"));
                };
                if w.outcome == WriteOutcome::Refused {
                    return Err(format!("read {i} returned {id}, whose write was refused"));
                }
                if w.invoked > r.returned {
                    return Err(format!(
                        "read {i} (returned at {:?}) saw {id}, invoked later at {:?}",
                        r.returned, w.invoked
                    ));
                }
            }
        }
        let last = self
            .last
            .as_ref()
            .ok_or("no read succeeded after the faults healed")?;
        for t in &self.retries {
            for (i, ids) in self.reads.iter().map(|r| &r.ids).chain([last]).enumerate() {
                if ids.contains(&t.first) && ids.contains(&t.again) {
                    return Err(format!(
                        "read {i} holds both {} and its retry {}: stored twice",
                        t.first, t.again
                    ));
                }
            }
            if let Some(a) = &t.answered {
                if a != &t.first && a != &t.again {
                    return Err(format!(
                        "the retry of {} was answered with {a}, neither it nor {}",
                        t.first, t.again
                    ));
                }
            }
        }
        let mut lost = 0;
        for w in &self.writes {
            if w.outcome == WriteOutcome::Acked && !last.contains(&w.id) {
                lost += 1;
                if lost == 1 {
                    return Err(format!(
                        "acknowledged write {} (at {:?}) is missing after healing",
                        w.id, w.returned
                    ));
                }
            }
        }
        for id in last {
            if !attempted.contains(id.as_str()) {
                return Err(format!("{id} is present after healing, never written"));
            }
        }
        Ok(Stats {
            acked: self
                .writes
                .iter()
                .filter(|w| w.outcome == WriteOutcome::Acked)
                .count(),
            unknown: self
                .writes
                .iter()
                .filter(|w| w.outcome == WriteOutcome::Unknown)
                .count(),
            reads: self.reads.len(),
            lost,
            retries: self.retries.len(),
            deduplicated: self
                .retries
                .iter()
                .filter(|t| t.answered.as_ref() == Some(&t.first))
                .count(),
        })
    }
}

/// What a scenario did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub acked: usize,
    pub unknown: usize,
    pub reads: usize,
    pub lost: usize,
    /// Writes sent again with their key, and those answered with the first write's memory.
    pub retries: usize,
    pub deduplicated: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str, inv: u64, ret: u64, outcome: WriteOutcome) -> Write {
        Write {
            id: id.into(),
            invoked: Duration::from_millis(inv),
            returned: Duration::from_millis(ret),
            outcome,
        }
    }

    fn ids(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_checker_catches_what_it_should() {
        let base = || History {
            writes: vec![
                w("a", 0, 10, WriteOutcome::Acked),
                w("b", 5, 20, WriteOutcome::Unknown),
                w("c", 30, 40, WriteOutcome::Refused),
            ],
            reads: vec![Read {
                invoked: Duration::from_millis(15),
                returned: Duration::from_millis(16),
                ids: ids(&["a"]),
            }],
            last: Some(ids(&["a", "b"])),
            retries: vec![],
        };
        assert!(base().check().is_ok());
        let mut lost = base();
        lost.last = Some(ids(&["b"]));
        assert!(lost.check().unwrap_err().contains("missing after healing"));
        let mut phantom = base();
        phantom.last = Some(ids(&["a", "z"]));
        assert!(phantom.check().unwrap_err().contains("never written"));
        let mut stale = base();
        stale.reads[0].ids = ids(&[]);
        assert!(stale.check().unwrap_err().contains("misses a"));
        let mut refused = base();
        refused.reads[0].ids = ids(&["a", "c"]);
        assert!(refused.check().is_err());
        let mut future = base();
        future.writes[1].invoked = Duration::from_millis(17);
        future.reads[0].ids = ids(&["a", "b"]);
        assert!(future.check().unwrap_err().contains("invoked later"));
        let mut twice = base();
        twice.writes.push(w("b2", 21, 22, WriteOutcome::Unknown));
        twice.retries.push(Retry {
            first: "b".into(),
            again: "b2".into(),
            answered: None,
        });
        assert!(twice.check().is_ok());
        twice.last = Some(ids(&["a", "b", "b2"]));
        assert!(twice.check().unwrap_err().contains("stored twice"));
    }
}
