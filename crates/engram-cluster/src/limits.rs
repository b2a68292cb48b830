//! Limits of placement, with the relations between them checked at compile time.

/// Most physical nodes in one cluster (member indexes are `u16`).
pub const MAX_NODES: usize = 4096;

/// Most copies of a space (primary + replicas): a replica set is an inline array of this size.
pub const MAX_COPIES: usize = 8;

/// Most virtual nodes per standard node (`PlacementConfig::vnodes_per_node`).
pub const MAX_VNODES_PER_NODE: u32 = 4096;

/// Largest node capacity (100 is a standard node, so 100 times a standard node).
pub const MAX_CAPACITY: u32 = 10_000;

/// Most tokens on one ring (the lookup index stores token positions as `u32`).
pub const MAX_TOKENS: usize = 1 << 22;

/// Longest rack name, in bytes.
pub const MAX_RACK_LEN: usize = 64;

/// Most spaces in a catalog handed to the token allocator.
pub const MAX_CATALOG: usize = 1 << 32;

const _: () = assert!(MAX_NODES <= u16::MAX as usize + 1);
const _: () = assert!(MAX_COPIES <= u8::MAX as usize && MAX_COPIES >= 1);
const _: () = assert!(MAX_TOKENS <= u32::MAX as usize);
// One node of the largest capacity with the most virtual nodes still fits on a ring.
const _: () = assert!((MAX_VNODES_PER_NODE as usize) * (MAX_CAPACITY as usize) / 100 <= MAX_TOKENS);
