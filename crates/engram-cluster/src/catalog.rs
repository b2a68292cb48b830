//! The spaces a cluster holds, as ring positions: what the token allocator balances.

use crate::hash::SpaceKey;
use crate::limits::MAX_CATALOG;

/// The ring positions of the spaces that exist, sorted. The coordinator that computes a new
/// placement passes it to the token allocator so that a joining node takes an equal share of
/// the spaces that exist, not only of the hash space (see the crate documentation for why and
/// what it costs). An empty catalog balances the hash space alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpaceCatalog {
    keys: Vec<u64>,
}

impl SpaceCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// The catalog of the spaces named by `spaces`. Names are hashed with [`SpaceKey::of`].
    pub fn from_spaces<I, S>(spaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::from_keys(spaces.into_iter().map(|s| SpaceKey::of(s.as_ref())))
    }

    /// The catalog of the given keys (in any order). At most [`MAX_CATALOG`] are kept.
    pub fn from_keys(keys: impl IntoIterator<Item = SpaceKey>) -> Self {
        let mut keys: Vec<u64> = keys.into_iter().map(|k| k.0).take(MAX_CATALOG).collect();
        keys.sort_unstable();
        Self { keys }
    }

    /// Adds a space (kept sorted).
    pub fn insert(&mut self, key: SpaceKey) {
        if self.keys.len() < MAX_CATALOG {
            let at = self.keys.partition_point(|&k| k <= key.0);
            self.keys.insert(at, key.0);
        }
    }

    /// Number of spaces.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the catalog holds no space.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The sorted positions.
    pub fn keys(&self) -> &[u64] {
        &self.keys
    }

    /// The positions in the ring arc `(after, upto]` (clockwise, wrapping past `u64::MAX`), as
    /// two sorted runs: clockwise order is the first run then the second. `after == upto` is the
    /// whole ring (a ring of one token), starting after `after`.
    pub(crate) fn arc(&self, after: u64, upto: u64) -> (&[u64], &[u64]) {
        let k = &self.keys;
        let above = |x: u64| k.partition_point(|&v| v <= x);
        if after < upto {
            (&k[above(after)..above(upto)], &[])
        } else {
            // (after, MAX] then [0, upto]; the whole ring when after == upto.
            (&k[above(after)..], &k[..above(upto)])
        }
    }

    /// Number of spaces in the arc `(after, upto]` (see [`SpaceCatalog::arc`]).
    pub(crate) fn count_arc(&self, after: u64, upto: u64) -> usize {
        let (a, b) = self.arc(after, upto);
        a.len() + b.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arcs_wrap() {
        let c = SpaceCatalog::from_keys([5, 10, 20, u64::MAX - 1, u64::MAX].map(SpaceKey));
        assert_eq!(c.arc(5, 20), (&[10u64, 20][..], &[][..]));
        assert_eq!(c.count_arc(4, 5), 1);
        assert_eq!(c.arc(20, 5), (&[u64::MAX - 1, u64::MAX][..], &[5u64][..]));
        // A ring of one token: everything, clockwise from after the token.
        assert_eq!(
            c.arc(10, 10),
            (&[20, u64::MAX - 1, u64::MAX][..], &[5u64, 10][..])
        );
        assert_eq!(c.count_arc(u64::MAX, u64::MAX), 5);
        assert_eq!(c.count_arc(20, 21), 0);
    }
}
