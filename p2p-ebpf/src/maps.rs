//! Every BPF map of the datapath, declared once. The static's name is the map
//! name (`p2p_common::maps` constants); layouts and sizes come from
//! `p2p_common::maps`, so the controller and `bpftool` see the same maps.

use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use p2p_common::{
    counters::COUNTER_COUNT,
    maps::{
        BlockEntry, BlockKey, Config, Counter, EVENTS_BYTES, Event, IfaceAddrs, LinkKey, LinkSecret, MAX_BLOCKED,
        MAX_IFACES, MAX_LINK_KEYS, MAX_PEERS, MMAPABLE_FLAGS, NextHopCache, PeerEntry, ROUTE_BUCKETS,
        ROUTE_GENERATIONS, TRIE_CAPACITY, TokenBucket, TrieNode,
    },
};

/// This node: ID, overlay port, policy bits and the live route generation (one entry).
#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Bucket per 16-bit key prefix -> leaf or ROUTE_TRIE node, for each of the two generations.
/// Mmapable: the controller writes the idle generation by plain stores.
#[btf_map]
pub static ROUTES: Array<u32, { (ROUTE_BUCKETS * ROUTE_GENERATIONS) as usize }, MMAPABLE_FLAGS> = Array::new();

/// Patricia trie nodes below the buckets; node i of generation g at g*TRIE_CAPACITY+i.
/// Mmapable, like ROUTES.
#[btf_map]
pub static ROUTE_TRIE: Array<TrieNode, { (TRIE_CAPACITY * ROUTE_GENERATIONS) as usize }, MMAPABLE_FLAGS> = Array::new();

/// Peer slot -> node ID, overlay address and port, liveness flags.
#[btf_map]
pub static PEERS: Array<PeerEntry, { MAX_PEERS as usize }> = Array::new();

/// Attached interface index -> this node's addresses there (source of forwarded packets).
#[btf_map]
pub static IFACES: HashMap<u32, IfaceAddrs, { MAX_IFACES as usize }> = HashMap::new();

/// Blocked source IPs and node IDs, with optional expiry.
#[btf_map]
pub static BLOCKED: HashMap<BlockKey, BlockEntry, { MAX_BLOCKED as usize }> = HashMap::new();

/// Peer slot -> token bucket (WIRE.md step 4; declared, not used yet).
#[btf_map]
pub static RATE: HashMap<u32, TokenBucket, { MAX_PEERS as usize }> = HashMap::new();

/// Neighbour endpoint -> hop-by-hop tag key (WIRE.md step 5; declared, not used yet).
#[btf_map]
pub static LINK_KEYS: HashMap<LinkKey, LinkSecret, { MAX_LINK_KEYS as usize }> = HashMap::new();

/// Peer slot -> last packet time per CPU (for the churn detector; declared, not used yet).
#[btf_map]
pub static LAST_SEEN: PerCpuArray<u64, { MAX_PEERS as usize }> = PerCpuArray::new();

/// Counter index (p2p_common::counters) -> packets and bytes, per CPU.
#[btf_map]
pub static STATS: PerCpuArray<Counter, { COUNTER_COUNT as usize }> = PerCpuArray::new();

/// Datapath notices for the controller (unresolved neighbours).
#[btf_map]
pub static EVENTS: RingBuf<Event, { EVENTS_BYTES as usize }> = RingBuf::new();

/// Redirect targets: ifindex -> ifindex of every attached interface.
#[btf_map]
pub static TX_PORTS: DevMapHash<{ MAX_IFACES as usize }> = DevMapHash::new();

/// Peer slot -> cached FIB answer (egress, MACs, source address), per CPU.
#[btf_map]
pub static NEXT_HOPS: PerCpuArray<NextHopCache, { MAX_PEERS as usize }> = PerCpuArray::new();
