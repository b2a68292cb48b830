//! The built ring: sorted tokens, their owners, and a lookup index over the top bits of the hash,
//! so that `space -> primary` is one index load and (almost always) one comparison.

use std::collections::BTreeMap;

use crate::limits::MAX_COPIES;
use crate::node::{NodeId, NodeInfo};
use crate::replica::ReplicaSet;

/// Most bits of the lookup index (4 MiB of `u32`).
const MAX_INDEX_BITS: u32 = 20;

/// An immutable ring of tokens. A space at position `p` belongs to the first token at or after
/// `p` clockwise (wrapping past `u64::MAX` to the first token); its replicas are the next
/// distinct physical nodes clockwise from there.
#[derive(Clone)]
pub(crate) struct Ring {
    /// Token positions, sorted and distinct.
    tokens: Box<[u64]>,
    /// Member index of each token's owner.
    owners: Box<[u16]>,
    /// Node id of each token's owner (the primary lookup reads it directly).
    owner_ids: Box<[NodeId]>,
    /// Member index -> node id (members sorted by id).
    ids: Box<[NodeId]>,
    /// Member index -> rack index (racks sorted by name).
    racks: Box<[u16]>,
    /// Number of distinct racks among the members.
    rack_count: usize,
    /// `index[b]` is the first token at or after the start of bucket `b` (the top `64 - shift`
    /// bits of a position); `tokens.len()` when there is none (wraps to token 0).
    index: Box<[u32]>,
    shift: u32,
}

impl Ring {
    /// Builds the ring of `tokens` (position -> owner, every owner a key of `members`).
    pub(crate) fn build(
        tokens: &BTreeMap<u64, NodeId>,
        members: &BTreeMap<NodeId, NodeInfo>,
    ) -> Self {
        let ids: Box<[NodeId]> = members.keys().copied().collect();
        let rack_names: BTreeMap<&str, u16> = {
            let mut names: Vec<&str> = members.values().map(|m| m.rack.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n, i as u16))
                .collect()
        };
        let racks: Box<[u16]> = members
            .values()
            .map(|m| rack_names[m.rack.as_str()])
            .collect();
        let member_index = |id: NodeId| -> u16 {
            let at = ids.binary_search(&id);
            assert!(at.is_ok(), "token owned by {id}, which is not a member");
            at.unwrap_or_default() as u16
        };
        let positions: Box<[u64]> = tokens.keys().copied().collect();
        let owners: Box<[u16]> = tokens.values().map(|&id| member_index(id)).collect();
        let owner_ids: Box<[NodeId]> = tokens.values().copied().collect();

        // About four buckets per token: most buckets then hold no token boundary at all.
        let bits = if positions.is_empty() {
            1
        } else {
            (usize::BITS - (positions.len() - 1).leading_zeros() + 2).clamp(1, MAX_INDEX_BITS)
        };
        let shift = 64 - bits;
        let index: Box<[u32]> = (0..1u64 << bits)
            .map(|b| positions.partition_point(|&t| t < b << shift) as u32)
            .collect();
        Self {
            tokens: positions,
            owners,
            owner_ids,
            ids,
            racks,
            rack_count: rack_names.len(),
            index,
            shift,
        }
    }

    /// Number of tokens.
    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Number of distinct racks among the members.
    pub(crate) fn rack_count(&self) -> usize {
        self.rack_count
    }

    /// Index of the token that owns position `key`. The ring must not be empty.
    #[inline(always)]
    fn token_index(&self, key: u64) -> usize {
        let n = self.tokens.len();
        let mut i = self.index[(key >> self.shift) as usize] as usize;
        while i < n && self.tokens[i] < key {
            i += 1;
        }
        if i == n {
            0
        } else {
            i
        }
    }

    /// The primary of position `key`; `None` on an empty ring.
    #[inline]
    pub(crate) fn primary(&self, key: u64) -> Option<NodeId> {
        if self.tokens.is_empty() {
            return None;
        }
        Some(self.owner_ids[self.token_index(key)])
    }

    /// The primary of `key` by binary search over the tokens, without the index: the reference
    /// that tests compare the indexed lookup with.
    pub(crate) fn primary_by_search(&self, key: u64) -> Option<NodeId> {
        if self.tokens.is_empty() {
            return None;
        }
        let i = self.tokens.partition_point(|&t| t < key);
        let i = if i == self.tokens.len() { 0 } else { i };
        Some(self.ids[self.owners[i] as usize])
    }

    /// The first `copies` distinct physical nodes clockwise from `key` (fewer when the cluster
    /// has fewer nodes). In rack-aware mode, the first node met in each rack is taken, racks in
    /// the order they are met, until there are `copies` or every rack is used; remaining copies
    /// are then the nearest nodes not taken yet (and the set says the racks are shared).
    #[inline]
    pub(crate) fn replica_set(&self, key: u64, copies: usize, rack_aware: bool) -> ReplicaSet {
        let copies = copies.min(MAX_COPIES);
        let mut set = ReplicaSet::new(copies);
        let n = self.tokens.len();
        if n == 0 || copies == 0 {
            return set;
        }
        let want = copies.min(self.ids.len());
        let start = self.token_index(key);
        let mut chosen = [0u16; MAX_COPIES];
        let mut len = 0;
        if rack_aware && self.rack_count > 1 {
            let mut used = [0u16; MAX_COPIES];
            let target = want.min(self.rack_count);
            let mut i = start;
            for _ in 0..n {
                let owner = self.owners[i];
                let rack = self.racks[owner as usize];
                if !used[..len].contains(&rack) {
                    chosen[len] = owner;
                    used[len] = rack;
                    len += 1;
                    if len == target {
                        break;
                    }
                }
                i += 1;
                if i == n {
                    i = 0;
                }
            }
        }
        if rack_aware && want > self.rack_count {
            set.set_racks_shared();
        }
        if len < want {
            let mut i = start;
            for _ in 0..n {
                let owner = self.owners[i];
                if !chosen[..len].contains(&owner) {
                    chosen[len] = owner;
                    len += 1;
                    if len == want {
                        break;
                    }
                }
                i += 1;
                if i == n {
                    i = 0;
                }
            }
        }
        for &c in &chosen[..len] {
            set.push(self.ids[c as usize]);
        }
        set
    }

    /// The share of the ring each member owns, in positions (the whole ring is `2^64`).
    pub(crate) fn ownership(&self) -> BTreeMap<NodeId, u128> {
        let mut out: BTreeMap<NodeId, u128> = self.ids.iter().map(|&id| (id, 0)).collect();
        let n = self.tokens.len();
        for i in 0..n {
            let len = if n == 1 {
                1u128 << 64
            } else {
                let pred = self.tokens[if i == 0 { n - 1 } else { i - 1 }];
                u128::from(self.tokens[i].wrapping_sub(pred))
            };
            *out.entry(self.ids[self.owners[i] as usize]).or_default() += len;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(tokens: &[(u64, u64)], racks: &[(u64, &str)]) -> Ring {
        let members: BTreeMap<NodeId, NodeInfo> = racks
            .iter()
            .map(|&(id, rack)| (NodeId(id), NodeInfo::new(NodeId(id)).with_rack(rack)))
            .collect();
        let tokens: BTreeMap<u64, NodeId> = tokens.iter().map(|&(t, o)| (t, NodeId(o))).collect();
        Ring::build(&tokens, &members)
    }

    #[test]
    fn lookup_walks_clockwise_and_wraps() {
        let r = ring(
            &[(100, 1), (200, 2), (300, 3), (u64::MAX - 5, 1)],
            &[(1, "a"), (2, "a"), (3, "a")],
        );
        for (key, want) in [
            (0, 1),
            (100, 1),
            (101, 2),
            (250, 3),
            (301, 1),
            (u64::MAX, 1),
        ] {
            assert_eq!(r.primary(key), Some(NodeId(want)), "key {key}");
            assert_eq!(r.primary_by_search(key), Some(NodeId(want)), "key {key}");
        }
        let set = r.replica_set(150, 3, false);
        assert_eq!(set.nodes(), &[NodeId(2), NodeId(3), NodeId(1)]);
        // Asking for more copies than nodes gives a short set.
        let set = r.replica_set(150, 5, false);
        assert_eq!(set.len(), 3);
        assert!(set.is_short());
        // One rack: rack-aware mode degrades to distinct nodes and says so.
        let set = r.replica_set(150, 3, true);
        assert_eq!(set.nodes(), &[NodeId(2), NodeId(3), NodeId(1)]);
        assert!(set.racks_shared());
    }

    #[test]
    fn rack_aware_skips_a_used_rack() {
        let r = ring(
            &[(100, 1), (200, 2), (300, 3), (400, 4)],
            &[(1, "a"), (2, "a"), (3, "b"), (4, "c")],
        );
        assert_eq!(
            r.replica_set(50, 3, true).nodes(),
            &[NodeId(1), NodeId(3), NodeId(4)]
        );
        assert_eq!(
            r.replica_set(50, 3, false).nodes(),
            &[NodeId(1), NodeId(2), NodeId(3)]
        );
        // Four copies, three racks: one rack per copy first, then the nearest node left.
        let set = r.replica_set(50, 4, true);
        assert_eq!(set.nodes(), &[NodeId(1), NodeId(3), NodeId(4), NodeId(2)]);
        assert!(set.racks_shared());
        assert!(!r.replica_set(50, 3, true).racks_shared());
    }

    #[test]
    fn empty_and_single_token_rings() {
        let r = ring(&[], &[]);
        assert_eq!(r.primary(7), None);
        assert!(r.replica_set(7, 3, true).is_empty());
        let r = ring(&[(42, 9)], &[(9, "a")]);
        assert_eq!(r.primary(0), Some(NodeId(9)));
        assert_eq!(r.primary(u64::MAX), Some(NodeId(9)));
        assert_eq!(r.ownership()[&NodeId(9)], 1u128 << 64);
    }
}
