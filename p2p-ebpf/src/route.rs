//! WIRE.md step 7's next hop: the shared `p2p_common::route::walk` over the
//! live generation of ROUTES / ROUTE_TRIE.

use p2p_common::{
    maps::{Config, PEER_LIVE, PeerEntry, REF_LEAF, ROUTE_BUCKETS, SELF_REF, TRIE_CAPACITY, TrieNode},
    route::{bucket_index, key_bit, walk},
};

use crate::maps::{PEERS, ROUTE_TRIE, ROUTES};

pub enum NextHop {
    /// This node is the XOR-closest.
    SelfNode,
    /// A live peer: its slot and entry.
    Peer(u32, &'static PeerEntry),
    /// Missing table entry, over-deep walk or a peer that is not live.
    NoRoute,
}

#[inline(always)]
pub fn next_hop(cfg: &Config, key: &[u8; 32]) -> NextHop {
    let generation = cfg.route_gen & 1;
    let start = match ROUTES.get(generation * ROUTE_BUCKETS + bucket_index(key)) {
        Some(r) => *r,
        None => return NextHop::NoRoute,
    };
    let base = generation * TRIE_CAPACITY;
    // `walk` runs with an all-zero key so that it always takes child[0],
    // and `node_at` puts the child the real key takes (the same `key_bit`
    // choice `walk` makes) there. Letting `walk` index the copied node with
    // the real key made LLVM address the stack slot as `fp | (bit << 2)`,
    // which the verifier rejects ("bitwise operator |= on pointer").
    let node_at = |i: u32| {
        let n = ROUTE_TRIE.get(base.wrapping_add(i))?;
        // Arithmetic select: a branch here picked the child by pointer
        // offset, which the verifier then tracks as two precise states per
        // trie step.
        let mask = 0u32.wrapping_sub(key_bit(key, n.bit) as u32);
        let c = n.child[0] ^ ((n.child[0] ^ n.child[1]) & mask);
        Some(TrieNode { bit: n.bit, _pad: 0, child: [c, c] })
    };
    let leaf = match walk(start, &[0u8; 32], node_at) {
        Some(l) => l,
        None => return NextHop::NoRoute,
    };
    if leaf == SELF_REF {
        return NextHop::SelfNode;
    }
    let slot = leaf & !REF_LEAF;
    match PEERS.get(slot) {
        Some(p) if p.flags & PEER_LIVE != 0 => NextHop::Peer(slot, p),
        _ => NextHop::NoRoute,
    }
}
