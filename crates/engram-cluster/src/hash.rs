//! The placement hash: XXH3, 64-bit, seed 0 (xxHash 0.8 specification), from the maintained
//! `xxhash-rust` crate. `std::hash` is never used: its output may change between Rust releases
//! and `RandomState` differs per process.
//!
//! Version 1 ([`HASH_VERSION`]): a space's ring position is `XXH3_64(utf-8 bytes of the space
//! id)`; the hashes derived from a node id (see [`node_hash`]) are `XXH3_64(8-byte domain tag ||
//! node id as 8 little-endian bytes || number as 4 little-endian bytes)`. XXH3 was chosen over
//! XXH64 for speed on short keys (space ids are 1 to 64 bytes): about 2.5 ns against 11 ns for a
//! 22-byte id on the benchmark machine, more than half of a lookup. rapidhash V3 (the stable,
//! C++-compatible `rapidhash::v3`) was measured as a replacement and not taken: it is faster up
//! to 16 bytes (1.5 against 1.85 ns) and from 33 to 64 bytes (3.6 against 3.7 ns), but from 17
//! to 32 bytes, where the benchmark's ids (`space-` and 16 hex digits) fall, it chains three
//! 128-bit multiplies where XXH3 runs two side by side: 3.3 against 2.45 ns (4.5 against 4.3 ns
//! for a whole lookup).
//!
//! The test vectors below come from the reference implementation's own sanity check (`xxhsum`)
//! and from published string vectors; they pin every position on every platform, and a crate
//! upgrade that changed a single output would fail them. Changing anything here moves spaces
//! between nodes: it needs a new [`HASH_VERSION`] and a migration, never an edit in place.

use xxhash_rust::xxh3::xxh3_64;

/// Version of the placement hash. Stored with every placement table.
pub const HASH_VERSION: u32 = 1;

/// The placement hash of `bytes` (version 1: XXH3 64-bit, seed 0).
#[inline]
pub fn placement_hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// A space's position on the ring: the placement hash of its id. Every placement decision
/// about a space is a function of this key and the placement table, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpaceKey(pub u64);

impl SpaceKey {
    /// The key of the space named `space` (hash version [`HASH_VERSION`]).
    #[inline]
    pub fn of(space: &str) -> Self {
        Self(placement_hash(space.as_bytes()))
    }
}

/// A hash derived from a node id, domain-separated by `tag` (placement hash version 1): the seed
/// of the node's first tokens and its random tokens. `XXH3_64(tag || id (8 bytes LE) || n (4
/// bytes LE))`.
#[inline]
pub fn node_hash(tag: &[u8; 8], id: u64, n: u32) -> u64 {
    let mut buf = [0u8; 20];
    buf[..8].copy_from_slice(tag);
    buf[8..16].copy_from_slice(&id.to_le_bytes());
    buf[16..].copy_from_slice(&n.to_le_bytes());
    placement_hash(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer of xxHash's own sanity check (`XSUM_fillTestBuffer` in xxhsum): byte i is the
    /// top byte of `2654435761 * 11400714785074694797^i` (mod 2^64).
    fn sanity_buffer(len: usize) -> Vec<u8> {
        let mut gen: u64 = 2_654_435_761;
        (0..len)
            .map(|_| {
                let b = (gen >> 56) as u8;
                gen = gen.wrapping_mul(11_400_714_785_074_694_797);
                b
            })
            .collect()
    }

    /// XXH3_64bits, seed 0, from xxhsum's sanity check: one length per code path.
    #[test]
    fn xxh3_reference_vectors() {
        let buf = sanity_buffer(2367);
        for (len, want) in [
            (0usize, 0x2D06_8005_38D3_94C2u64),
            (1, 0xC44B_DFF4_074E_ECDB),
            (6, 0x27B5_6A84_CD2D_7325),
            (12, 0xA713_DAF0_DFBB_77E7),
            (24, 0xA3FE_70BF_9D35_10EB),
            (48, 0x397D_A259_ECBA_1F11),
            (80, 0xBCDE_FBBB_2C47_C90A),
            (195, 0xCD94_217E_E362_EC3A),
            (403, 0xCDEB_804D_65C6_DEA4),
            (2367, 0xCB37_AEB9_E5D3_61ED),
        ] {
            assert_eq!(placement_hash(&buf[..len]), want, "length {len}");
        }
    }

    /// Published string vectors of XXH3_64bits, seed 0.
    #[test]
    fn xxh3_string_vectors() {
        assert_eq!(SpaceKey::of("").0, 0x2D06_8005_38D3_94C2);
        assert_eq!(SpaceKey::of("a").0, 0xE6C6_32B6_1E96_4E1F);
        assert_eq!(SpaceKey::of("abc").0, 0x78AF_5F94_892F_3950);
        assert_eq!(SpaceKey::of("abcd").0, 0x6497_A96F_53A8_9890);
        assert_eq!(SpaceKey::of("abcdefgh").0, 0x6F45_A768_42A9_6483);
        assert_eq!(SpaceKey::of("The quick brown fox").0, 0xF8B9_2649_FD81_22B4);
    }

    #[test]
    fn node_hash_is_the_hash_of_tag_id_and_number() {
        let mut buf = Vec::new();
        buf.extend_from_slice(b"token/v1");
        buf.extend_from_slice(&7u64.to_le_bytes());
        buf.extend_from_slice(&3u32.to_le_bytes());
        assert_eq!(node_hash(b"token/v1", 7, 3), placement_hash(&buf));
    }
}
