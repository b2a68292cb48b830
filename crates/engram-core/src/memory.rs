use std::collections::BTreeMap;

use crate::limits::*;
use crate::{CoreError, MemoryId};

/// A weighted association from one memory to another in the same space. Weight in `(0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub to: MemoryId,
    pub weight: f32,
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
            if !(l.weight > 0.0 && l.weight <= 1.0) {
                return bad(format!(
                    "link to {} has weight {}, expected (0, 1]",
                    l.to, l.weight
                ));
            }
        }
        Ok(())
    }
}
