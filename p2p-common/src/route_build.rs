//! Builds the ROUTES bucket array and ROUTE_TRIE Patricia trie from a peer
//! set, and the brute-force reference that the datapath is proven against.

use crate::maps::{MAX_PEERS_LIMIT, MAX_TRIE_DEPTH, REF_LEAF, ROUTE_BUCKETS, SELF_REF, SELF_SLOT, TrieNode};
use crate::route::{closer, is_leaf, key_bit, walk};
use std::fmt;

/// One generation of the routing tables, ready to be written to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTable {
    /// ROUTES: one reference per 16-bit key prefix.
    pub buckets: Vec<u32>,
    /// ROUTE_TRIE: inner nodes, referenced by index.
    pub nodes: Vec<TrieNode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Two entries (or a peer and this node) share a node ID.
    DuplicateId {
        slot_a: u32,
        slot_b: u32,
    },
    /// A slot number collides with the leaf encoding.
    BadSlot(u32),
    TooManyPeers(usize),
    /// Some key would need more trie steps than the datapath takes.
    TooDeep {
        depth: u32,
    },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::DuplicateId { slot_a, slot_b } => {
                write!(f, "slots {slot_a} and {slot_b} have the same node ID")
            }
            RouteError::BadSlot(s) => write!(f, "peer slot {s} is out of range"),
            RouteError::TooManyPeers(n) => write!(f, "{n} peers exceed the routing capacity"),
            RouteError::TooDeep { depth } => {
                write!(f, "the peer set needs {depth} trie steps, more than the datapath's {MAX_TRIE_DEPTH}")
            }
        }
    }
}
impl std::error::Error for RouteError {}

/// Builds the tables for this node (`self_id`) and its live peers
/// `(slot, node_id)`.
pub fn build(self_id: &[u8; 32], peers: &[(u32, [u8; 32])]) -> Result<RouteTable, RouteError> {
    if peers.len() > MAX_PEERS_LIMIT as usize {
        return Err(RouteError::TooManyPeers(peers.len()));
    }
    let mut leaves: Vec<([u8; 32], u32)> = Vec::with_capacity(peers.len() + 1);
    leaves.push((*self_id, SELF_REF));
    for &(slot, id) in peers {
        if slot >= SELF_SLOT {
            return Err(RouteError::BadSlot(slot));
        }
        leaves.push((id, REF_LEAF | slot));
    }
    leaves.sort_unstable_by_key(|a| a.0);
    for w in leaves.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(RouteError::DuplicateId { slot_a: w[0].1 & !REF_LEAF, slot_b: w[1].1 & !REF_LEAF });
        }
    }
    let mut nodes = Vec::with_capacity(leaves.len());
    let mut depth = Vec::with_capacity(leaves.len());
    let root = build_range(&leaves, &mut nodes, &mut depth);

    let mut buckets = vec![0u32; ROUTE_BUCKETS as usize];
    fill_buckets(&nodes, root, 0, 0, &mut buckets);
    let worst = buckets.iter().map(|&r| if is_leaf(r) { 0 } else { depth[r as usize] }).max().unwrap_or(0);
    if worst > MAX_TRIE_DEPTH {
        return Err(RouteError::TooDeep { depth: worst });
    }
    Ok(RouteTable { buckets, nodes })
}

/// Sets every bucket whose first `bit` bits are `prefix` to the reference
/// the walk reaches after consuming the branch bits below 16: O(buckets).
fn fill_buckets(nodes: &[TrieNode], r: u32, bit: u32, prefix: u32, out: &mut [u32]) {
    const BITS: u32 = crate::maps::ROUTE_PREFIX_BITS;
    if bit == BITS || is_leaf(r) || nodes[r as usize].bit as u32 >= BITS {
        let shift = BITS - bit;
        let start = (prefix << shift) as usize;
        out[start..start + (1usize << shift)].fill(r);
        return;
    }
    let n = nodes[r as usize];
    for v in 0..2u32 {
        // A bit the trie does not branch on leaves the reference unchanged.
        let next = if n.bit as u32 == bit { n.child[v as usize] } else { r };
        fill_buckets(nodes, next, bit + 1, (prefix << 1) | v, out);
    }
}

/// Returns the reference for `leaves` (sorted, distinct, non-empty);
/// `depth[i]` is the most steps from node i down to a leaf.
fn build_range(leaves: &[([u8; 32], u32)], nodes: &mut Vec<TrieNode>, depth: &mut Vec<u32>) -> u32 {
    if leaves.len() == 1 {
        return leaves[0].1;
    }
    let first = &leaves[0].0;
    let last = &leaves[leaves.len() - 1].0;
    // Sorted: the range's common prefix is first's and last's.
    let bit = first_diff_bit(first, last);
    let split = leaves.partition_point(|l| key_bit(&l.0, bit) == 0);
    let idx = nodes.len();
    nodes.push(TrieNode { bit, _pad: 0, child: [0, 0] });
    depth.push(0);
    let l = build_range(&leaves[..split], nodes, depth);
    let r = build_range(&leaves[split..], nodes, depth);
    let d = |x: u32, depth: &Vec<u32>| if is_leaf(x) { 0 } else { depth[x as usize] };
    depth[idx] = 1 + d(l, depth).max(d(r, depth));
    nodes[idx].child = [l, r];
    idx as u32
}

fn first_diff_bit(a: &[u8; 32], b: &[u8; 32]) -> u16 {
    for i in 0..32 {
        let x = a[i] ^ b[i];
        if x != 0 {
            return (i as u16) * 8 + x.leading_zeros() as u16;
        }
    }
    256
}

/// How many of the bucket prefixes each leaf can answer for: leaf slot
/// (`SELF_SLOT` for this node) → buckets whose subtree holds it. `node_at`
/// fetches trie nodes (from a table, or lazily from a pinned map).
pub fn leaf_buckets(
    buckets: &[u32],
    mut node_at: impl FnMut(u32) -> Option<TrieNode>,
) -> std::collections::BTreeMap<u32, u32> {
    let mut counts = std::collections::BTreeMap::new();
    for &start in buckets {
        let mut stack = vec![start];
        let mut steps = 0;
        while let Some(r) = stack.pop() {
            steps += 1;
            if steps > 4 * (MAX_PEERS_LIMIT + 1) {
                break;
            }
            if is_leaf(r) {
                *counts.entry(r & !REF_LEAF).or_insert(0) += 1;
            } else if let Some(n) = node_at(r) {
                stack.extend(n.child);
            }
        }
    }
    counts
}

impl RouteTable {
    /// See [`leaf_buckets`].
    pub fn leaf_buckets(&self) -> std::collections::BTreeMap<u32, u32> {
        leaf_buckets(&self.buckets, |i| self.nodes.get(i as usize).copied())
    }

    /// The next hop for `key` (a leaf reference), by the same walk the kernel
    /// runs over the maps.
    pub fn next_hop(&self, key: &[u8; 32]) -> Option<u32> {
        let start = self.buckets[crate::route::bucket_index(key) as usize];
        walk(start, key, |i| self.nodes.get(i as usize).copied())
    }

    /// Most trie steps any key takes after its bucket.
    pub fn max_depth(&self) -> u32 {
        let mut best = 0;
        for &b in &self.buckets {
            let mut stack = vec![(b, 0u32)];
            while let Some((r, d)) = stack.pop() {
                if is_leaf(r) {
                    best = best.max(d);
                } else {
                    let n = self.nodes[r as usize];
                    stack.push((n.child[0], d + 1));
                    stack.push((n.child[1], d + 1));
                }
            }
        }
        best
    }
}

/// Reference: scans every candidate for the XOR-closest to `key`.
pub fn brute_force_next_hop(self_id: &[u8; 32], peers: &[(u32, [u8; 32])], key: &[u8; 32]) -> u32 {
    let mut best = SELF_REF;
    let mut best_id = *self_id;
    for &(slot, id) in peers {
        if closer(key, &id, &best_id) {
            best = REF_LEAF | slot;
            best_id = id;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random_table(rng: &mut StdRng, n: usize) -> ([u8; 32], Vec<(u32, [u8; 32])>) {
        let self_id: [u8; 32] = rng.r#gen();
        // Non-contiguous slots, as after churn.
        let peers = (0..n).map(|i| ((i * 3 + 1) as u32, rng.r#gen())).collect();
        (self_id, peers)
    }

    /// Keys that stress the trie: random, peer IDs themselves, IDs with one
    /// bit flipped (deep ties in prefix).
    fn check(self_id: &[u8; 32], peers: &[(u32, [u8; 32])], rng: &mut StdRng, keys: usize) {
        let t = build(self_id, peers).unwrap();
        for i in 0..keys {
            let key: [u8; 32] = match i % 3 {
                0 if !peers.is_empty() => {
                    let mut k = peers[rng.gen_range(0..peers.len())].1;
                    let bit = rng.gen_range(0..256);
                    k[bit / 8] ^= 0x80 >> (bit % 8);
                    k
                }
                1 if !peers.is_empty() => peers[rng.gen_range(0..peers.len())].1,
                _ => rng.r#gen(),
            };
            assert_eq!(t.next_hop(&key), Some(brute_force_next_hop(self_id, peers, &key)), "key {}", hex::encode(key));
        }
    }

    #[test]
    fn only_self_routes_everything_home() {
        let t = build(&[7; 32], &[]).unwrap();
        assert!(t.buckets.iter().all(|&b| b == SELF_REF));
        assert_eq!(t.next_hop(&[0; 32]), Some(SELF_REF));
    }

    #[test]
    fn agrees_with_brute_force_over_100k_keys_on_random_tables() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut total = 0;
        for n in [1usize, 2, 3, 20, 160, 1000, 5000] {
            for _ in 0..3 {
                let (s, p) = random_table(&mut rng, n);
                check(&s, &p, &mut rng, 5000);
                total += 5000;
            }
        }
        assert!(total >= 100_000);
    }

    #[test]
    fn agrees_on_clustered_ids() {
        // IDs sharing a 24-bit prefix put every branch bit past the bucket bits.
        let mut rng = StdRng::seed_from_u64(42);
        let base: [u8; 32] = rng.r#gen();
        let peers: Vec<(u32, [u8; 32])> = (0..500u32)
            .map(|i| {
                let mut id: [u8; 32] = rng.r#gen();
                id[..3].copy_from_slice(&base[..3]);
                (i, id)
            })
            .collect();
        let t = build(&base, &peers).unwrap();
        assert!(t.nodes.iter().all(|n| n.bit >= 24));
        check(&base, &peers, &mut rng, 20_000);
    }

    #[test]
    fn refuses_tables_deeper_than_the_datapath_walks() {
        // A chain: each ID differs from the next at one later bit.
        let peers: Vec<(u32, [u8; 32])> = (0..60u32)
            .map(|i| {
                let mut id = [0u8; 32];
                let bit = 100 + i as usize;
                id[bit / 8] |= 0x80 >> (bit % 8);
                (i, id)
            })
            .collect();
        assert!(matches!(build(&[0; 32], &peers), Err(RouteError::TooDeep { depth: 60 })));
    }

    #[test]
    fn rejects_duplicates_and_bad_slots() {
        let err = build(&[1; 32], &[(4, [1; 32])]).unwrap_err();
        assert_eq!(err, RouteError::DuplicateId { slot_a: SELF_SLOT, slot_b: 4 });
        assert!(matches!(build(&[1; 32], &[(2, [3; 32]), (5, [3; 32])]), Err(RouteError::DuplicateId { .. })));
        assert_eq!(build(&[1; 32], &[(SELF_SLOT, [3; 32])]), Err(RouteError::BadSlot(SELF_SLOT)));
    }

    #[test]
    fn depth_stays_small_for_large_random_tables() {
        let mut rng = StdRng::seed_from_u64(9);
        let (s, p) = random_table(&mut rng, 100_000);
        let t = build(&s, &p).unwrap();
        assert!(t.max_depth() <= 16, "depth {}", t.max_depth());
        assert_eq!(t.nodes.len(), p.len());
    }
}
