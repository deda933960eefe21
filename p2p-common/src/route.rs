//! The next-hop walk over the routing tables, shared verbatim by the kernel
//! program (which fetches nodes from ROUTE_TRIE) and userspace (the userspace
//! datapath, the reference tests and the simulator).
//!
//! The table is a Patricia trie over the node IDs of this node and its live
//! peers. Inner nodes branch on the first bit where their subtrees differ, so
//! at a node branching on bit `b` every ID below it shares bits `0..b`, and
//! the child whose bit `b` equals the key's is strictly XOR-closer: following
//! the key's bits down the trie ends at the unique XOR-closest ID. ROUTES
//! short-cuts the first `ROUTE_PREFIX_BITS` steps with a bucket per prefix.

use crate::maps::{MAX_TRIE_DEPTH, REF_LEAF, ROUTE_PREFIX_BITS, TrieNode};

/// Index into ROUTES (within a generation) for `key`.
#[inline(always)]
pub fn bucket_index(key: &[u8; 32]) -> u32 {
    const _: () = assert!(ROUTE_PREFIX_BITS == 16);
    ((key[0] as u32) << 8) | key[1] as u32
}

/// Bit `bit` of `key`, most significant first.
#[inline(always)]
pub fn key_bit(key: &[u8; 32], bit: u16) -> usize {
    let byte = key[((bit >> 3) & 31) as usize];
    ((byte >> (7 - (bit & 7))) & 1) as usize
}

#[inline(always)]
pub fn is_leaf(r: u32) -> bool {
    r & REF_LEAF != 0
}

/// Follows `key` from a bucket reference down to a leaf. `node_at` fetches a
/// trie node by index; `None` (a missing node) or more than `MAX_TRIE_DEPTH`
/// steps gives `None`, which callers treat as "no route".
#[inline(always)]
pub fn walk<F: FnMut(u32) -> Option<TrieNode>>(start: u32, key: &[u8; 32], mut node_at: F) -> Option<u32> {
    let mut r = start;
    let mut i = 0;
    while i < MAX_TRIE_DEPTH {
        if is_leaf(r) {
            return Some(r);
        }
        let node = node_at(r)?;
        // Branch-free child select: indexing `child` by the bit makes LLVM
        // address a stack copy as `fp | (bit << 2)`, which the BPF verifier
        // rejects ("bitwise operator on pointer").
        let mask = 0u32.wrapping_sub(key_bit(key, node.bit) as u32);
        r = node.child[0] ^ ((node.child[0] ^ node.child[1]) & mask);
        i += 1;
    }
    if is_leaf(r) { Some(r) } else { None }
}

/// XOR distance comparison: is `a` closer to `key` than `b`?
#[inline(always)]
pub fn closer(key: &[u8; 32], a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut i = 0;
    while i < 32 {
        let da = a[i] ^ key[i];
        let db = b[i] ^ key[i];
        if da != db {
            return da < db;
        }
        i += 1;
    }
    false
}
