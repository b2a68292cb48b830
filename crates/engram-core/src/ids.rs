use std::fmt;

use crate::limits::{MAX_MEMORY_ID_LEN, MAX_SPACE_ID_LEN};
use crate::CoreError;

/// The id of a memory space: 1-64 characters of `a-z 0-9 _ -`.
///
/// The alphabet keeps a space id safe to use as a directory name: no `.`, no `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpaceId(String);

impl SpaceId {
    pub const DEFAULT: &'static str = "default";

    pub fn new(id: impl Into<String>) -> Result<Self, CoreError> {
        let id = id.into();
        if Self::is_valid(&id) {
            Ok(Self(id))
        } else {
            Err(CoreError::InvalidSpaceId(id))
        }
    }

    pub fn default_space() -> Self {
        Self(Self::DEFAULT.to_string())
    }

    pub fn is_valid(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= MAX_SPACE_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of the cluster's metadata raft group ([`SpaceId::METADATA_GROUP`]): a group
    /// name, never a space. Its `.` is outside the alphabet of space ids, so no space can
    /// share its name (a space's group is named by the space's id).
    pub fn metadata_group() -> Self {
        Self(Self::METADATA_GROUP.to_string())
    }

    /// The metadata group's name (see [`SpaceId::metadata_group`]).
    pub const METADATA_GROUP: &'static str = "cluster.meta";

    /// A raft group's name: a space id, or the metadata group's.
    pub fn group(id: impl Into<String>) -> Result<Self, CoreError> {
        let id = id.into();
        if id == Self::METADATA_GROUP {
            return Ok(Self(id));
        }
        Self::new(id)
    }

    /// Whether this names the metadata group rather than a space.
    pub fn is_metadata_group(&self) -> bool {
        self.0 == Self::METADATA_GROUP
    }
}

impl fmt::Display for SpaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a memory: 1-128 characters with no `/`, whitespace or control character.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemoryId(String);

impl MemoryId {
    pub fn new(id: impl Into<String>) -> Result<Self, CoreError> {
        let id = id.into();
        if Self::is_valid(&id) {
            Ok(Self(id))
        } else {
            Err(CoreError::InvalidMemoryId(id))
        }
    }

    pub fn is_valid(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= MAX_MEMORY_ID_LEN
            && !id
                .chars()
                .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for MemoryId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_ids() {
        for ok in ["default", "a", "agent_7-x", &"a".repeat(64)] {
            assert!(SpaceId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "../x", "a/b", "a.b", "a b", &"a".repeat(65), "é"] {
            assert!(SpaceId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_ids() {
        for ok in ["m", "mem_00ff", "Ünïcode-ok", "a:b", &"x".repeat(128)] {
            assert!(MemoryId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a b", "a\tb", "a\u{7}", &"x".repeat(129)] {
            assert!(MemoryId::new(bad).is_err(), "{bad}");
        }
    }
}
