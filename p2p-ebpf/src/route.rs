//! docs/WIRE.md step 7's next hop: the shared `p2p_common::route::walk` over the
//! live generation of ROUTES / ROUTE_TRIE.

use p2p_common::{
    maps::{Config, PEER_LIVE, PeerEntry, REF_LEAF, ROUTE_BUCKETS, SELF_REF},
    route::{bucket_index, walk},
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
    let base = generation * cfg.trie_capacity;
    let node_at = |i: u32| ROUTE_TRIE.get(base.wrapping_add(i)).copied();
    let leaf = match walk(start, key, node_at) {
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
