use std::collections::BTreeMap;

use crate::limits::*;
use crate::{CoreError, MemoryId};

/// A weighted association from one memory to another in the same space. Weight in `(0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub to: MemoryId,
    pub weight: f32,
}

impl Link {
    /// The link-weight rule: a weight is a number in `(0, 1]` (NaN is not). Every place that
    /// accepts a weight (a stored memory, the engine's and the store's `link`, the HTTP wire
    /// types) asks this; `f64` so that a weight read from JSON is judged before it is narrowed
    /// (an `f32` converts to `f64` exactly).
    pub fn is_valid_weight(weight: f64) -> bool {
        weight > 0.0 && weight <= 1.0
    }

    /// The weight of a link derived from the similarity of two memories (auto-linking): the
    /// similarity itself, brought into `(0, 1]` ([`Link::is_valid_weight`]).
    pub fn weight_from_similarity(similarity: f32) -> f32 {
        similarity.clamp(f32::MIN_POSITIVE, 1.0)
    }
}

/// One episode.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub id: MemoryId,
    pub content: String,
    pub embedding: Vec<f32>,
    /// In `[0, 1]`.
    pub confidence: f32,
    /// When the episode happened: microseconds since the Unix epoch.
    pub timestamp_us: i64,
    pub metadata: BTreeMap<String, String>,
    pub links: Vec<Link>,
}

impl Memory {
    /// Checks every limit a stored memory must meet. `dimension` is the space's.
    pub fn validate(&self, dimension: usize) -> Result<(), CoreError> {
        let bad = |m: String| Err(CoreError::InvalidMemory(m));
        if self.content.is_empty() {
            return bad("content is empty".into());
        }
        if self.content.len() > MAX_CONTENT_LEN {
            return bad(format!(
                "content is {} bytes, the limit is {MAX_CONTENT_LEN}",
                self.content.len()
            ));
        }
        if self.embedding.len() != dimension {
            return bad(format!(
                "embedding has {} dimensions, the space has {dimension}",
                self.embedding.len()
            ));
        }
        if let Some(i) = self.embedding.iter().position(|v| !v.is_finite()) {
            return bad(format!("embedding[{i}] is not a finite number"));
        }
        if !(0.0..=1.0).contains(&self.confidence) {
            return bad(format!("confidence {} is outside [0, 1]", self.confidence));
        }
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return bad(format!(
                "{} metadata entries, the limit is {MAX_METADATA_ENTRIES}",
                self.metadata.len()
            ));
        }
        for (k, v) in &self.metadata {
            if k.len() > MAX_METADATA_FIELD_LEN || v.len() > MAX_METADATA_FIELD_LEN {
                return bad(format!(
                    "metadata field {k:?} is longer than {MAX_METADATA_FIELD_LEN} bytes"
                ));
            }
        }
        if self.links.len() > MAX_LINKS {
            return bad(format!(
                "{} links, the limit is {MAX_LINKS}",
                self.links.len()
            ));
        }
        for l in &self.links {
            if !Link::is_valid_weight(f64::from(l.weight)) {
                return bad(format!(
                    "link to {} has weight {}, expected (0, 1]",
                    l.to, l.weight
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_weight_rule() {
        for w in [f64::MIN_POSITIVE, 1e-50, 0.5, 1.0] {
            assert!(Link::is_valid_weight(w), "{w}");
        }
        for w in [0.0, -0.0, -0.5, 1.000_000_1, f64::NAN, f64::INFINITY] {
            assert!(!Link::is_valid_weight(w), "{w}");
        }
        // A derived weight always passes the rule, whatever the similarity.
        for s in [-1.0, -0.0, 0.0, 1e-40, 0.3, 1.0, 1.5] {
            let w = Link::weight_from_similarity(s);
            assert!(Link::is_valid_weight(f64::from(w)), "{s} -> {w}");
        }
        assert_eq!(Link::weight_from_similarity(0.3), 0.3);
        assert_eq!(Link::weight_from_similarity(-1.0), f32::MIN_POSITIVE);
        assert_eq!(Link::weight_from_similarity(1.5), 1.0);
    }
}
