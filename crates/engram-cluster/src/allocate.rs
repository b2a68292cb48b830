//! Token allocation: where a joining node's virtual nodes go.
//!
//! [`TokenStrategy::Random`](crate::TokenStrategy) is classic consistent hashing: each token is a
//! hash of the node id and the token number, whatever the ring holds.
//!
//! [`TokenStrategy::Balanced`](crate::TokenStrategy) (the default) places the tokens so that the
//! joining node takes exactly its share from the nodes above theirs:
//!
//! 1. With the joining node counted in, each member's fair part is the total times its capacity
//!    over the total capacity, for two quantities: the spaces that exist (the [`SpaceCatalog`]
//!    passed by the coordinator) and the share of the hash space (where spaces created later
//!    land). Each member above its fair part gives its excess, scaled so that the newcomer ends
//!    exactly at its own.
//! 2. The newcomer's tokens are shared among those members in proportion to what they give. A
//!    member's arcs are candidates as long as its heaviest remaining arcs can still hold what it
//!    gives (with 25% to spare); among them the newcomer prefers the arcs whose predecessor it
//!    needs as a "successor claim" (below); ties go by a hash of the token, never by position.
//! 3. A token placed inside an arc `(p, t]` takes the part `(p, x]`. Spaces are indivisible, so
//!    the spaces each cut takes are fixed first, exactly (the count is the primary goal); each
//!    cut can then go anywhere in the gap between the last space taken and the next one, and
//!    those positions are chosen so that every member gives as nearly as possible its share of
//!    the hash space (one common shift from the ideal for all, within what the gaps allow).
//! 4. Only the member that owned the arc loses spaces, only to the newcomer: nothing else on the
//!    ring moves.
//!
//! Successor claims: removing a node removes its tokens, so each of its arcs falls to the owner
//! of the token after it, which is also that arc's first replica. A token placed in an arc
//! becomes the token after the arc's predecessor. Left to chance, the newest nodes end up after
//! everyone's tokens and a departure pours onto a few nodes (7% standard deviation after a leave,
//! against 2% with claims); step 2 keeps, for every member P, the nodes after P's tokens spread in
//! proportion to capacity. A join followed by the newcomer's departure restores the ring exactly.
//!
//! Everything is integer arithmetic: the same ring, node and catalog give the same tokens on
//! every platform.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::SpaceCatalog;
use crate::hash::{node_hash, placement_hash};
use crate::node::NodeId;

/// Heuristic weights are in units where the whole ring is `2^56` (shares are shifted right by
/// this), so that products of two weights fit in `u128`.
const SHARE_SHIFT: u32 = 8;

/// The whole ring in weight units.
const RING_WEIGHT: u128 = 1 << (64 - SHARE_SHIFT);

/// The arcs a member gives from must hold at least this percentage of what it gives.
const SLACK_PCT: u128 = 125;

/// Arcs shorter than this (in positions) are not cut: a few parts in 2^48 of the ring.
const MIN_CUT_LEN: u128 = 1 << 16;

/// Domain tags of the hashes derived from a node id (placement hash version 1).
const TAG_FIRST: &[u8; 8] = b"first/v1";
const TAG_TOKEN: &[u8; 8] = b"token/v1";
const TAG_TIE: &[u8; 8] = b"tie/v1\0\0";

/// `vnodes` tokens evenly spaced from a hash of the node id: the first node of a ring.
fn even_tokens(node: NodeId, vnodes: usize) -> Vec<u64> {
    let offset = node_hash(TAG_FIRST, node.0, 0);
    let step = ((1u128 << 64) / vnodes.max(1) as u128) as u64;
    let mut out: Vec<u64> = (0..vnodes as u64)
        .map(|i| offset.wrapping_add(i.wrapping_mul(step)))
        .collect();
    out.sort_unstable();
    out
}

/// `vnodes` tokens hashed from the node id (classic consistent hashing), skipping positions for
/// which `taken` is true (rehashing deterministically).
pub(crate) fn random_tokens(node: NodeId, vnodes: usize, taken: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut out = BTreeSet::new();
    for i in 0..vnodes as u32 {
        let mut t = node_hash(TAG_TOKEN, node.0, i);
        while taken(t) || out.contains(&t) {
            t = placement_hash(&t.to_le_bytes());
        }
        out.insert(t);
    }
    out.into_iter().collect()
}

/// Splits `total` into parts proportional to `weights` (largest remainder; ties to the lower
/// index). Deterministic, exact sum. `total * weight` must fit in `u128`.
fn apportion(total: u128, weights: &[u128]) -> Vec<u128> {
    let sum: u128 = weights.iter().sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut parts: Vec<u128> = weights.iter().map(|&w| total * w / sum).collect();
    let mut left = total - parts.iter().sum::<u128>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| (Reverse(total * weights[i] % sum), i));
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
}

/// One arc of the ring: `(pred, tok]`, owned by the owner of `tok`.
struct Arc {
    pred: u64,
    tok: u64,
    /// Length in positions (`2^64` for a ring of one token).
    len: u128,
    owner: NodeId,
    /// Catalog spaces in the arc.
    count: u64,
    /// Heuristic weight: spaces and share together, the whole catalog weighing as much as the
    /// whole ring.
    weight: u128,
    /// Owner and weight of the arc ending at `pred`.
    pred_owner: NodeId,
    pred_weight: u128,
    /// A hash of the token: ties between arcs go by it, not by position, so that choices do not
    /// line up along the ring (which would bias who follows whom, hence replica loads).
    tiebreak: u64,
}

/// The catalog spaces of an arc as offsets from its start, `1..=len`.
fn offsets(catalog: &SpaceCatalog, arc: &Arc) -> Vec<u128> {
    let (a, b) = catalog.arc(arc.pred, arc.tok);
    a.iter()
        .chain(b)
        .map(|&k| match k.wrapping_sub(arc.pred) {
            0 => arc.len, // a ring of one token: the key at the token ends the arc
            o => u128::from(o),
        })
        .collect()
}

/// Where a cut taking exactly `c` of the arc's spaces may go: offsets `lo..=hi` (the gap between
/// the c-th space and the next). Returns the count actually possible (a cut cannot separate two
/// spaces at one position, nor take a space lying on the arc's own token) and the interval.
fn gap(offsets: &[u128], len: u128, mut c: usize) -> (usize, u128, u128) {
    // Spaces at offset len sit on the token: they stay with the owner.
    let cuttable = offsets.iter().take_while(|&&o| o < len).count();
    c = c.min(cuttable);
    loop {
        let lo = if c == 0 { 1 } else { offsets[c - 1] };
        let hi = if c < offsets.len() {
            offsets[c] - 1
        } else {
            len - 1
        };
        if lo <= hi || c >= cuttable {
            return (c, lo, hi.max(lo).min(len - 1));
        }
        c += 1;
    }
}

/// The tokens of a node of `capacity` joining `ring` (position -> owner) whose members have
/// `capacities`, balancing the spaces of `catalog` first and the hash share second. Returns
/// `vnodes` distinct positions, none on the ring.
pub(crate) fn balanced_tokens(
    ring: &BTreeMap<u64, NodeId>,
    capacities: &BTreeMap<NodeId, u32>,
    node: NodeId,
    capacity: u32,
    vnodes: usize,
    catalog: &SpaceCatalog,
) -> Vec<u64> {
    if ring.is_empty() {
        return even_tokens(node, vnodes);
    }
    let k_spaces = catalog.len() as u128;
    // Weight of one space: all spaces together weigh as much as the whole ring.
    let space_unit = RING_WEIGHT.checked_div(k_spaces).unwrap_or(0);
    let positions: Vec<(u64, NodeId)> = ring.iter().map(|(&t, &o)| (t, o)).collect();
    let n = positions.len();
    let mut arcs: Vec<Arc> = (0..n)
        .map(|i| {
            let (tok, owner) = positions[i];
            let (pred, pred_owner) = positions[(i + n - 1) % n];
            let len = if n == 1 {
                1u128 << 64
            } else {
                u128::from(tok.wrapping_sub(pred))
            };
            let count = catalog.count_arc(pred, tok) as u64;
            Arc {
                pred,
                tok,
                len,
                owner,
                count,
                weight: u128::from(count) * space_unit + (len >> SHARE_SHIFT),
                pred_owner,
                pred_weight: 0,
                tiebreak: node_hash(TAG_TIE, tok, 0),
            }
        })
        .collect();
    for i in 0..n {
        arcs[i].pred_weight = arcs[(i + n - 1) % n].weight;
    }

    // What each member holds and what it gives.
    let victims: Vec<NodeId> = capacities.keys().copied().collect();
    let mut counts: BTreeMap<NodeId, u128> = victims.iter().map(|&id| (id, 0)).collect();
    let mut shares: BTreeMap<NodeId, u128> = victims.iter().map(|&id| (id, 0)).collect();
    for a in &arcs {
        *counts.entry(a.owner).or_default() += u128::from(a.count);
        *shares.entry(a.owner).or_default() += a.len >> SHARE_SHIFT;
    }
    let cap = |id: &NodeId| u128::from(capacities.get(id).copied().unwrap_or(0));
    let cap_x = u128::from(capacity);
    let cap_total: u128 = victims.iter().map(cap).sum::<u128>() + cap_x;
    // Counts: excess in units of 1/cap_total of a space (exact integers).
    let count_excess: Vec<u128> = victims
        .iter()
        .map(|id| (counts[id] * cap_total).saturating_sub(k_spaces * cap(id)))
        .collect();
    let gives_count = apportion(
        (k_spaces * cap_x + cap_total / 2) / cap_total,
        &count_excess,
    );
    let share_excess: Vec<u128> = victims
        .iter()
        .map(|id| shares[id].saturating_sub(RING_WEIGHT * cap(id) / cap_total))
        .collect();
    let gives_share = apportion(RING_WEIGHT * cap_x / cap_total, &share_excess);
    let gives: Vec<u128> = (0..victims.len())
        .map(|v| gives_count[v] * space_unit + gives_share[v])
        .collect();
    let tokens_each = apportion(vnodes as u128, &gives);

    // Successor claims: held[(P, V)] is the weight of P's arcs followed by one of V's tokens:
    // what V receives when P departs, and the arcs V is the first replica of. The newcomer
    // wants, on every P, P's fair weight times its capacity over the others' capacity, and
    // takes claims from the members that hold more than their own fair claim.
    let total_weight = k_spaces * space_unit + RING_WEIGHT;
    let fair_claim = |p: &NodeId, claimer_cap: u128| -> i128 {
        let fair_p = total_weight * cap(p) / cap_total;
        (fair_p * claimer_cap / (cap_total - cap(p)).max(1)) as i128
    };
    let mut claims = Claims {
        need: victims.iter().map(|p| (*p, fair_claim(p, cap_x))).collect(),
        held: BTreeMap::new(),
    };
    for a in arcs.iter().filter(|a| a.pred_owner != a.owner) {
        *claims.held.entry((a.pred_owner, a.owner)).or_default() += a.pred_weight as i128;
    }

    // Choose every victim's arcs and the spaces each cut takes; then share out the hash share
    // the newcomer should take among the victims, within what the gaps between spaces allow.
    let mut by_owner: BTreeMap<NodeId, Vec<&Arc>> = BTreeMap::new();
    for a in &arcs {
        by_owner.entry(a.owner).or_default().push(a);
    }
    let mut victim_cuts: Vec<VictimCuts<'_>> = Vec::new();
    for (v, victim) in victims.iter().enumerate() {
        let k = tokens_each[v] as usize;
        if k == 0 || gives[v] == 0 {
            continue;
        }
        let mine = choose_arcs(
            by_owner.remove(victim).unwrap_or_default(),
            *victim,
            k,
            Required {
                count: gives_count[v] * SLACK_PCT / 100,
                weight: gives[v] * SLACK_PCT / 100,
            },
            &mut claims,
            |p: &NodeId| fair_claim(p, cap(victim)),
        );
        victim_cuts.push(plan_cuts(
            catalog,
            mine,
            k,
            gives_count[v],
            gives_share[v] << SHARE_SHIFT,
        ));
    }
    let target_share = (RING_WEIGHT * cap_x / cap_total) << SHARE_SHIFT;
    let shift = water_level(&victim_cuts, target_share);
    let mut taken: BTreeSet<u64> = BTreeSet::new();
    for vc in &victim_cuts {
        let want = (vc.ideal as i128 + shift).clamp(vc.lo as i128, vc.hi as i128) as u128;
        place(vc, want, &mut taken);
    }
    // Tokens that found no room (arcs too small to cut, fewer arcs than tokens): they split the
    // newcomer's own longest arcs, which changes nothing for anyone else.
    while taken.len() < vnodes {
        let Some(mid) = longest_own_gap(ring, &taken) else {
            break;
        };
        taken.insert(mid);
    }
    if taken.len() < vnodes {
        let extra = random_tokens(node, vnodes - taken.len(), |t| {
            ring.contains_key(&t) || taken.contains(&t)
        });
        taken.extend(extra);
    }
    debug_assert!(taken.iter().all(|t| !ring.contains_key(t)));
    taken.into_iter().take(vnodes).collect()
}

/// The middle of the newcomer's longest arc (between one of its tokens in `taken` and the token
/// before it, on the ring or in `taken`), if that arc can be split.
fn longest_own_gap(ring: &BTreeMap<u64, NodeId>, taken: &BTreeSet<u64>) -> Option<u64> {
    let mut best: Option<(u64, u64)> = None;
    for &t in taken {
        let before = |set: &dyn Fn(u64) -> Option<u64>| set(t);
        let prev_ring = ring
            .range(..t)
            .next_back()
            .or_else(|| ring.iter().next_back())
            .map(|(&p, _)| p);
        let prev_taken = taken
            .range(..t)
            .next_back()
            .or_else(|| taken.iter().next_back())
            .copied()
            .filter(|&p| p != t);
        let _ = before;
        // The nearest predecessor clockwise-behind t.
        let pred = [prev_ring, prev_taken]
            .into_iter()
            .flatten()
            .min_by_key(|&p| t.wrapping_sub(p))?;
        let len = t.wrapping_sub(pred);
        if len >= 2 && best.is_none_or(|(l, _)| len > l) {
            best = Some((len, pred.wrapping_add(len / 2)));
        }
    }
    best.map(|(_, mid)| mid)
}

/// The newcomer's successor claims while its arcs are chosen.
struct Claims {
    /// What the newcomer still wants on each member.
    need: BTreeMap<NodeId, i128>,
    /// `(P, V)`: weight of P's arcs followed by a token of V.
    held: BTreeMap<(NodeId, NodeId), i128>,
}

/// The arcs of `victim` (`pool`) that receive the newcomer's `k` tokens. Each time, among the
/// arcs the heaviest remaining ones can still back up (they must hold `required`), the one whose
/// predecessor the newcomer needs most, plus what the victim holds beyond its own fair claim on
/// that predecessor.
fn choose_arcs<'a>(
    pool: Vec<&'a Arc>,
    victim: NodeId,
    k: usize,
    required: Required,
    claims: &mut Claims,
    victim_fair_claim: impl Fn(&NodeId) -> i128,
) -> Vec<&'a Arc> {
    // Arcs too short to cut are no candidates.
    let mut pool: Vec<&Arc> = pool.into_iter().filter(|a| a.len >= MIN_CUT_LEN).collect();
    let score = |a: &Arc, claims: &Claims| {
        let p = a.pred_owner;
        let surplus = if p == victim {
            0
        } else {
            claims.held.get(&(p, victim)).copied().unwrap_or(0) - victim_fair_claim(&p)
        };
        claims.need.get(&p).copied().unwrap_or(0) + surplus
    };
    // Feasibility is measured in spaces when the member gives spaces, else in weight.
    let (by_count, required) = if required.count > 0 {
        (true, required.count)
    } else {
        (false, required.weight)
    };
    let size = |a: &Arc| {
        if by_count {
            u128::from(a.count)
        } else {
            a.weight
        }
    };
    pool.sort_by_key(|a| (Reverse(size(a)), Reverse(a.weight), a.tok));
    let mut chosen_size = 0u128;
    let mut mine: Vec<&Arc> = Vec::with_capacity(k);
    while mine.len() < k && !pool.is_empty() {
        let after = (k - mine.len() - 1).min(pool.len() - 1);
        let top: u128 = pool.iter().take(after + 1).map(|a| size(a)).sum();
        let best = pool
            .iter()
            .enumerate()
            .filter(|&(i, a)| {
                let rest = if i <= after {
                    top - size(a)
                } else {
                    top - size(pool[after])
                };
                chosen_size + size(a) + rest >= required
            })
            .max_by_key(|(_, a)| (score(a, claims), a.tiebreak))
            .map_or(0, |(i, _)| i);
        let arc = pool.remove(best);
        chosen_size += size(arc);
        let w = arc.pred_weight as i128;
        *claims.need.entry(arc.pred_owner).or_default() -= w;
        if arc.pred_owner != victim {
            *claims.held.entry((arc.pred_owner, victim)).or_default() -= w;
        }
        mine.push(arc);
    }
    mine.sort_by_key(|a| (Reverse(a.weight), a.tok));
    mine
}

/// How much of a member's arcs the newcomer's choice must hold: in spaces, and in weight.
struct Required {
    count: u128,
    weight: u128,
}

/// The cuts in one member's arcs: for each arc, the cuts (spaces taken so far, gap interval);
/// the last cut of each arc decides the share taken from it.
struct VictimCuts<'a> {
    arcs: Vec<(&'a Arc, Vec<(u128, u128)>)>,
    /// The least and most hash share the cuts can take, and what the member should give.
    lo: u128,
    hi: u128,
    ideal: u128,
}

/// Plans `k` cuts in the arcs `mine` of one member so that they take exactly `give_count`
/// catalog spaces (spread over the arcs in proportion to their spaces, never more than an arc
/// holds); `give_share` is the hash share the member should give.
fn plan_cuts<'a>(
    catalog: &SpaceCatalog,
    mine: Vec<&'a Arc>,
    k: usize,
    give_count: u128,
    give_share: u128,
) -> VictimCuts<'a> {
    let m = mine.len();
    let held: Vec<u128> = mine.iter().map(|a| u128::from(a.count)).collect();
    let mut per_arc = apportion(give_count.min(held.iter().sum()), &held);
    let mut spill = 0;
    for (p, &h) in per_arc.iter_mut().zip(&held) {
        spill += p.saturating_sub(h);
        *p = (*p).min(h);
    }
    for (p, &h) in per_arc.iter_mut().zip(&held) {
        let more = spill.min(h - *p);
        *p += more;
        spill -= more;
    }
    let mut out = VictimCuts {
        arcs: Vec::with_capacity(m),
        lo: 0,
        hi: 0,
        ideal: give_share,
    };
    for (j, arc) in mine.into_iter().enumerate() {
        if arc.len < 2 {
            continue;
        }
        let mult = k / m + usize::from(j < k % m);
        let offs = offsets(catalog, arc);
        let c = per_arc[j] as usize;
        let cuts: Vec<(u128, u128)> = (1..=mult)
            .map(|q| {
                let (_, lo, hi) = gap(&offs, arc.len, c * q / mult);
                (lo, hi)
            })
            .collect();
        if let Some(&(lo, hi)) = cuts.last() {
            out.lo += lo;
            out.hi += hi;
        }
        out.arcs.push((arc, cuts));
    }
    out
}

/// The shift `s` such that the members giving `clamp(ideal + s, lo, hi)` each give the newcomer
/// `target` in total (or as near as their ranges allow): every member is off its ideal by the
/// same amount, except those held by their range.
fn water_level(victims: &[VictimCuts<'_>], target: u128) -> i128 {
    let total = |s: i128| -> u128 {
        victims
            .iter()
            .map(|v| (v.ideal as i128 + s).clamp(v.lo as i128, v.hi as i128) as u128)
            .sum()
    };
    let (mut lo, mut hi) = (-(1i128 << 65), 1i128 << 65);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if total(mid) < target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Places the cuts of one member so that its last cuts take `want` positions of hash share in
/// total (one common fraction of every last cut's gap); other cuts go mid-gap.
fn place(vc: &VictimCuts<'_>, want: u128, taken: &mut BTreeSet<u64>) {
    const ONE: u128 = 1 << 32;
    let width = vc.hi - vc.lo;
    let lambda = (want.saturating_sub(vc.lo).min(width) * ONE)
        .checked_div(width)
        .unwrap_or(ONE / 2);
    for (arc, cuts) in &vc.arcs {
        let mut last = 0u128;
        for (q, &(lo, hi)) in cuts.iter().enumerate() {
            let mut d = if q + 1 == cuts.len() {
                lo + (((hi - lo) * lambda) >> 32)
            } else {
                lo + (hi - lo) / 2
            };
            if d <= last {
                d = last + 1;
            }
            if d >= arc.len {
                break;
            }
            last = d;
            taken.insert(arc.pred.wrapping_add(d as u64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_is_exact_and_proportional() {
        assert_eq!(apportion(10, &[1, 1, 2]), vec![3, 2, 5]);
        assert_eq!(apportion(7, &[0, 0]), vec![0, 0]);
        assert_eq!(apportion(5, &[3, 0, 1]).iter().sum::<u128>(), 5);
    }

    #[test]
    fn gaps_between_spaces() {
        let offs = [10u128, 20, 20, 30];
        assert_eq!(gap(&offs, 100, 0), (0, 1, 9));
        assert_eq!(gap(&offs, 100, 1), (1, 10, 19));
        // Two spaces at one position cannot be separated: the cut takes both.
        assert_eq!(gap(&offs, 100, 2), (3, 20, 29));
        assert_eq!(gap(&offs, 100, 4), (4, 30, 99));
        // A space on the token stays with the owner.
        assert_eq!(gap(&[5, 50], 50, 2), (1, 5, 49));
    }

    #[test]
    fn a_joining_node_takes_its_share() {
        let catalog = SpaceCatalog::from_spaces((0..2000).map(|i| format!("s{i}")));
        let mut ring = BTreeMap::new();
        let mut caps = BTreeMap::new();
        for id in 1..=4u64 {
            let toks = balanced_tokens(&ring, &caps, NodeId(id), 100, 64, &catalog);
            assert_eq!(toks.len(), 64);
            for t in toks {
                assert!(ring.insert(t, NodeId(id)).is_none());
            }
            caps.insert(NodeId(id), 100);
        }
        let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
        for &k in catalog.keys() {
            let owner = ring.range(k..).next().or(ring.iter().next()).unwrap().1;
            *counts.entry(*owner).or_default() += 1;
        }
        for (&id, &c) in &counts {
            assert!((495..=505).contains(&c), "{id} holds {c} of 2000 spaces");
        }
        // Without a catalog, the hash share is split evenly.
        let empty = SpaceCatalog::new();
        let mut ring = BTreeMap::new();
        let mut caps = BTreeMap::new();
        for id in 1..=4u64 {
            for t in balanced_tokens(&ring, &caps, NodeId(id), 100, 64, &empty) {
                ring.insert(t, NodeId(id));
            }
            caps.insert(NodeId(id), 100);
        }
        let toks: Vec<(u64, NodeId)> = ring.iter().map(|(&t, &o)| (t, o)).collect();
        let mut share: BTreeMap<NodeId, u128> = BTreeMap::new();
        for i in 0..toks.len() {
            let pred = toks[(i + toks.len() - 1) % toks.len()].0;
            *share.entry(toks[i].1).or_default() += u128::from(toks[i].0.wrapping_sub(pred));
        }
        for (&id, &s) in &share {
            let pct = s as f64 / 2f64.powi(64) * 100.0;
            assert!((24.9..=25.1).contains(&pct), "{id} owns {pct}% of the ring");
        }
    }
}
