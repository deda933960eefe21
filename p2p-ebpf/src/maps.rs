//! Every BPF map of the datapath, declared once. The static's name is the map
//! name (`p2p_common::maps` constants); layouts come from `p2p_common::maps`,
//! so the controller and `bpftool` see the same maps. The sizes here are
//! defaults: the controller sets the per-peer and per-source ones at load
//! time (`run --max-peers`, `--max-sources`).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use p2p_common::{
    counters::COUNTER_COUNT,
    maps::{
        ADDRS_PER_PEER, BlockEntry, Config, Counter, DEFAULT_MAX_PEERS, DEFAULT_MAX_SOURCES, EVENTS_BYTES, Event,
        IfaceAddrs, LinkKey, LinkSecret, MAX_BLOCKED, MAX_IFACES, MAX_LINK_KEYS, MMAPABLE_FLAGS, NextHopCache,
        PeerEntry, REPLAY_PER_PEER, ROUTE_BUCKETS, ROUTE_GENERATIONS, RateBucket, ReplayKey, ReplayWindow, SourceStats,
        TrieNode, TxSeq, trie_capacity,
    },
};

const PEERS_N: usize = DEFAULT_MAX_PEERS as usize;
const SOURCES_N: usize = DEFAULT_MAX_SOURCES as usize;
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

/// This node: ID, overlay port, policy bits, live route generation, the
/// controller's heartbeat and the budget of non-peer sources (one entry).
#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Bucket per 16-bit key prefix -> leaf or ROUTE_TRIE node, for each of the two generations.
/// Mmapable: the controller writes the idle generation by plain stores.
#[btf_map]
pub static ROUTES: Array<u32, { (ROUTE_BUCKETS * ROUTE_GENERATIONS) as usize }, MMAPABLE_FLAGS> = Array::new();

/// Patricia trie nodes below the buckets; node i of generation g at
/// g * CONFIG.trie_capacity + i. Mmapable, like ROUTES.
#[btf_map]
pub static ROUTE_TRIE: Array<
    TrieNode,
    { (trie_capacity(DEFAULT_MAX_PEERS) * ROUTE_GENERATIONS) as usize },
    MMAPABLE_FLAGS,
> = Array::new();

/// Peer slot -> node ID, overlay address and port, liveness flags.
#[btf_map]
pub static PEERS: Array<PeerEntry, PEERS_N> = Array::new();

/// A peer's overlay endpoint (each address it advertises) -> its slot: who
/// sent a packet (step 3's sender, LAST_SEEN, RATE).
#[btf_map]
pub static PEER_ADDRS: HashMap<LinkKey, u32, { PEERS_N * ADDRS_PER_PEER as usize }> = HashMap::new();

/// Attached interface index -> this node's addresses there (source of forwarded packets).
#[btf_map]
pub static IFACES: HashMap<u32, IfaceAddrs, { MAX_IFACES as usize }> = HashMap::new();

/// Blocked node IDs (origin `src_id`), with reason and expiry (checked here too).
#[btf_map]
pub static BLOCKED: HashMap<[u8; 32], BlockEntry, { MAX_BLOCKED as usize }, NO_PREALLOC> = HashMap::new();

/// Blocked source addresses and prefixes (IPv4 as IPv4-mapped), with reason and expiry.
#[btf_map]
pub static BLOCKED_NETS: LpmTrie<[u8; 16], BlockEntry, { MAX_BLOCKED as usize }> = LpmTrie::new();

/// Peer slot -> rate budget and its clocks (step 4), shared by all CPUs (atomics).
#[btf_map]
pub static RATE: Array<RateBucket, PEERS_N> = Array::new();

/// Source IP that is not a peer -> rate budget and clocks (step 4), least recently seen evicted.
#[btf_map]
pub static RATE_SOURCES: LruHashMap<[u8; 16], RateBucket, SOURCES_N> = LruHashMap::new();

/// Source IP -> packets dropped as malformed, over budget, failing auth or blocked
/// (evidence for reputation), least recently seen evicted.
#[btf_map]
pub static SOURCE_STATS: LruHashMap<[u8; 16], SourceStats, SOURCES_N> = LruHashMap::new();

/// Neighbour endpoint -> the link's tag keys: two to verify with (newest,
/// previous), one to tag with (docs/WIRE.md step 5). Written by the controller only.
#[btf_map]
pub static LINK_KEYS: HashMap<LinkKey, LinkSecret, { MAX_LINK_KEYS as usize }> = HashMap::new();

/// (neighbour endpoint, key ID, sender stream) -> sequence numbers seen
/// (step 5's replay window), created on the first packet that verifies;
/// the least recently used window is forgotten first.
#[btf_map]
pub static REPLAY: LruHashMap<ReplayKey, ReplayWindow, { PEERS_N * REPLAY_PER_PEER as usize }> = LruHashMap::new();

/// One all-zero window, never written: what a new REPLAY entry is copied
/// from (a 512-byte value does not fit on the BPF stack).
#[btf_map]
pub static REPLAY_ZERO: Array<ReplayWindow, 1> = Array::new();

/// Peer slot -> next sequence number and key ID this CPU tags packets to
/// that peer with, per CPU (each CPU is its own sequence stream).
#[btf_map]
pub static TX_SEQ: PerCpuArray<TxSeq, PEERS_N> = PerCpuArray::new();

/// Peer slot -> CLOCK_MONOTONIC ns of the last packet that peer itself sent
/// (its `src_id`): the churn detector's passive evidence. Mmapable: the
/// controller reads it without syscalls.
#[btf_map]
pub static LAST_SEEN: Array<u64, PEERS_N, MMAPABLE_FLAGS> = Array::new();

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
pub static NEXT_HOPS: PerCpuArray<NextHopCache, PEERS_N> = PerCpuArray::new();
