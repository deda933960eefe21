//! BPF map names, sizes and key/value layouts. The names are the contract
//! with `bpftool` users: maps are pinned as `/sys/fs/bpf/p2p/<instance>/<NAME>`.
//! Every struct is `#[repr(C)]` with explicit padding and a size assertion.

use core::mem::size_of;

pub const CONFIG: &str = "CONFIG";
pub const ROUTES: &str = "ROUTES";
pub const ROUTE_TRIE: &str = "ROUTE_TRIE";
pub const PEERS: &str = "PEERS";
pub const PEER_ADDRS: &str = "PEER_ADDRS";
pub const IFACES: &str = "IFACES";
pub const BLOCKED: &str = "BLOCKED";
pub const BLOCKED_NETS: &str = "BLOCKED_NETS";
pub const RATE: &str = "RATE";
pub const RATE_SOURCES: &str = "RATE_SOURCES";
pub const SOURCE_STATS: &str = "SOURCE_STATS";
pub const LINK_KEYS: &str = "LINK_KEYS";
pub const REPLAY: &str = "REPLAY";
pub const TX_SEQ: &str = "TX_SEQ";
pub const LAST_SEEN: &str = "LAST_SEEN";
pub const STATS: &str = "STATS";
pub const EVENTS: &str = "EVENTS";
pub const TX_PORTS: &str = "TX_PORTS";
pub const NEXT_HOPS: &str = "NEXT_HOPS";

/// Every map the object declares that is pinned, in the order the README
/// lists them (NEXT_HOPS, a per-CPU cache, is not pinned).
pub const ALL_MAPS: [&str; 18] = [
    CONFIG,
    ROUTES,
    ROUTE_TRIE,
    PEERS,
    PEER_ADDRS,
    IFACES,
    BLOCKED,
    BLOCKED_NETS,
    RATE,
    RATE_SOURCES,
    SOURCE_STATS,
    LINK_KEYS,
    REPLAY,
    TX_SEQ,
    LAST_SEEN,
    STATS,
    EVENTS,
    TX_PORTS,
];

/// Program names in the object.
pub const PROG_XDP: &str = "p2p_xdp";
/// Pass-through program: a veth peer needs an XDP program for redirected
/// frames to be delivered (DESIGN.md), and test rigs attach this one.
pub const PROG_XDP_PASS: &str = "p2p_xdp_pass";

/// Peer slots (PEERS, RATE, LAST_SEEN, NEXT_HOPS) by default: a k = 20
/// Kademlia table in a 10^7-node network holds ~24 × 20 = 480 peers
/// (log2 10^7 ≈ 23 populated buckets); twice that for headroom.
/// `run --max-peers` sets it at load time.
pub const DEFAULT_MAX_PEERS: u32 = 1024;
/// The largest `--max-peers` accepted.
pub const MAX_PEERS_LIMIT: u32 = 1 << 20;
/// Endpoints per peer slot in PEER_ADDRS (peers advertise one per address).
pub const ADDRS_PER_PEER: u32 = 4;
/// Bits of the key consumed by the ROUTES bucket array.
pub const ROUTE_PREFIX_BITS: u32 = 16;
pub const ROUTE_BUCKETS: u32 = 1 << ROUTE_PREFIX_BITS;
/// ROUTES and ROUTE_TRIE hold two generations; CONFIG.route_gen says which is
/// live, so an update is written beside the live one and swapped in at once.
pub const ROUTE_GENERATIONS: u32 = 2;
/// Trie nodes per generation for `max_peers` peer slots: a Patricia trie
/// over n leaves (the peers and this node) has n-1 inner nodes.
pub const fn trie_capacity(max_peers: u32) -> u32 {
    max_peers + 1
}
/// Most trie steps after the bucket the datapath takes (verifier loop bound).
/// The builder refuses tables that would need more.
pub const MAX_TRIE_DEPTH: u32 = 48;
/// Node IDs in BLOCKED and prefixes in BLOCKED_NETS (allocated on use).
pub const MAX_BLOCKED: u32 = 65_536;
/// Sources that are not peers tracked at once (RATE_SOURCES, SOURCE_STATS:
/// LRU, the least recently seen source is forgotten first).
pub const DEFAULT_MAX_SOURCES: u32 = 16_384;
/// LINK_KEYS holds one entry per peer endpoint (`max_peers * ADDRS_PER_PEER`
/// at load time); this is the default.
pub const MAX_LINK_KEYS: u32 = DEFAULT_MAX_PEERS * ADDRS_PER_PEER;
/// REPLAY windows per peer slot (LRU): a link has one per key in use and
/// sending stream (CPU); `max_peers * REPLAY_PER_PEER` at load time.
pub const REPLAY_PER_PEER: u32 = 4;
pub const MAX_IFACES: u32 = 64;
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// `BPF_F_MMAPABLE` (Linux 5.5): ROUTES and ROUTE_TRIE are created with it,
/// so that the controller writes a routing generation by plain stores into
/// a shared mapping instead of one syscall per entry (map sync must finish
/// within 100 ms; a generation is 65,536 buckets).
pub const MMAPABLE_FLAGS: usize = 1 << 10;

/// Stride of an element in a mapped BPF array: values are laid out at
/// 8-byte multiples (the kernel's `round_up(value_size, 8)`).
pub const fn mmap_stride(value_size: usize) -> usize {
    value_size.div_ceil(8) * 8
}

/// A ROUTES / trie child reference: bit 31 set means a leaf whose low bits
/// are a PEERS slot (or `SELF_SLOT`); otherwise an index into ROUTE_TRIE
/// relative to the generation's base.
pub const REF_LEAF: u32 = 1 << 31;
/// Leaf slot meaning "this node".
pub const SELF_SLOT: u32 = REF_LEAF - 1;
pub const SELF_REF: u32 = REF_LEAF | SELF_SLOT;

/// CONFIG policy bits.
/// Untagged packets are dropped (`--auth required`); LOOKUP_REPLY, which
/// comes from a node that need not be a neighbour, is exempt.
pub const POLICY_AUTH_REQUIRED: u16 = 1;
/// Tags are verified where present (`--auth optional`, and `required`).
pub const POLICY_AUTH_VERIFY: u16 = 4;
/// aya-log lines are emitted only with this bit (`run --ebpf-log`).
pub const POLICY_LOG: u16 = 2;

/// The datapath answers PINGs itself only while the controller's heartbeat
/// (CONFIG.heartbeat_ns, bumped every `HEARTBEAT_INTERVAL_NS`) is at most
/// this old: a PONG then proves the controller alive, not only its XDP
/// program (docs/WIRE.md step 6).
pub const HEARTBEAT_FRESH_NS: u64 = 500_000_000;
pub const HEARTBEAT_INTERVAL_NS: u64 = 100_000_000;
/// LAST_SEEN is rewritten at most this often per peer (fewer writes to a
/// cache line that every CPU may share).
pub const LAST_SEEN_RESOLUTION_NS: u64 = 1_000_000;

/// A rate budget: a token bucket in its "virtual scheduling" (GCRA) form.
/// Each admitted packet advances a per-source clock by `pkt_cost_ns`
/// (and by its frame bytes × `byte_cost_ps` / 1000); a packet is over
/// budget when that clock would run more than `burst_ns` ahead of now.
/// So the sustained rate is 10^9 / `pkt_cost_ns` packets/s (and 10^12 /
/// `byte_cost_ps` bytes/s), with bursts of `burst_ns` worth of budget.
/// A cost of 0 means no limit of that kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateBudget {
    pub pkt_cost_ns: u64,
    pub byte_cost_ps: u64,
    pub burst_ns: u64,
}
const _: () = assert!(size_of::<RateBudget>() == 24);

impl RateBudget {
    /// No limit.
    pub const UNLIMITED: RateBudget = RateBudget { pkt_cost_ns: 0, byte_cost_ps: 0, burst_ns: 0 };

    /// `pps` packets/s and `bytes_per_s` bytes/s (0: unlimited), bursts of
    /// `burst_ns` worth of budget.
    pub const fn new(pps: u64, bytes_per_s: u64, burst_ns: u64) -> RateBudget {
        RateBudget {
            pkt_cost_ns: cost(1_000_000_000, pps),
            byte_cost_ps: cost(1_000_000_000_000, bytes_per_s),
            burst_ns,
        }
    }

    /// The clock advance for a frame of `bytes` under the byte budget.
    #[inline(always)]
    pub const fn byte_cost_ns(&self, bytes: u64) -> u64 {
        bytes * self.byte_cost_ps / 1000
    }
}

/// `unit / rate`, at least 1; 0 (unlimited) for a rate of 0.
const fn cost(unit: u64, rate: u64) -> u64 {
    match unit.checked_div(rate) {
        None => 0,
        Some(0) => 1,
        Some(c) => c,
    }
}

/// CONFIG[0]: this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub node_id: [u8; 32],
    /// Host byte order.
    pub overlay_port: u16,
    pub policy: u16,
    /// Live generation of ROUTES / ROUTE_TRIE: 0 or 1.
    pub route_gen: u32,
    pub peer_count: u32,
    /// Entries in BLOCKED (node IDs) and BLOCKED_NETS (prefixes): 0 lets
    /// the datapath skip the look-up.
    pub blocked_nodes: u32,
    pub blocked_nets: u32,
    /// ROUTE_TRIE nodes per generation (set at load time).
    pub trie_capacity: u32,
    /// CLOCK_MONOTONIC ns of the controller's last heartbeat.
    pub heartbeat_ns: u64,
    /// The budget of each source that is not a peer (RATE_SOURCES).
    pub nonpeer_budget: RateBudget,
}
const _: () = assert!(size_of::<Config>() == 88);

pub const PEER_LIVE: u8 = 1;
pub const PEER_V4: u8 = 2;

/// PEERS[slot]: a neighbour in the overlay.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerEntry {
    pub node_id: [u8; 32],
    /// IPv6, or IPv4-mapped for IPv4 peers (then PEER_V4 is set too).
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub flags: u8,
    pub reputation: u8,
    /// Bumped whenever the slot is given to another peer.
    pub generation: u32,
}
const _: () = assert!(size_of::<PeerEntry>() == 56);

/// ROUTE_TRIE node: branch on `bit` (0 = most significant bit of the key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrieNode {
    pub bit: u16,
    pub _pad: u16,
    pub child: [u32; 2],
}
const _: () = assert!(size_of::<TrieNode>() == 12);

pub const IFACE_HAS_V4: u32 = 1;
pub const IFACE_HAS_V6: u32 = 2;

/// IFACES[ifindex]: this node's overlay addresses on an attached interface,
/// used as the source of forwarded packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceAddrs {
    pub v4: [u8; 4],
    pub flags: u32,
    pub v6: [u8; 16],
}
const _: () = assert!(size_of::<IfaceAddrs>() == 24);

/// BLOCKED_NETS keys are kernel LPM trie keys over an IPv6 address:
/// `{prefix_len: u32 (host order), addr: [u8; 16]}`, IPv4 as IPv4-mapped
/// (an IPv4 /24 is a /120). BLOCKED's keys are node IDs (`[u8; 32]`).
pub const NET_KEY_BITS: u32 = 128;
/// An IPv4 prefix length as the IPv4-mapped prefix length.
pub const V4_MAPPED_PREFIX: u32 = 96;

/// Why an entry is in BLOCKED / BLOCKED_NETS (reputation's evidence, or
/// an operator's `block`).
pub const REASON_OPERATOR: u32 = 1;
pub const REASON_MALFORMED: u32 = 2;
pub const REASON_RATE: u32 = 3;
pub const REASON_AUTH: u32 = 4;
pub const REASON_PROBES: u32 = 5;
pub const REASON_RECORDS: u32 = 6;
pub const REASON_LOOKUP: u32 = 7;
pub const REASON_GOSSIPSUB: u32 = 8;
pub const REASON_PREFIX: u32 = 9;
pub const REASON_SHARDS: u32 = 10;
/// Reason names by code (index 0: unknown).
pub const REASON_NAMES: [&str; 11] = [
    "unknown",
    "operator",
    "malformed",
    "rate",
    "auth",
    "probes",
    "records",
    "lookup",
    "gossipsub",
    "prefix",
    "shards",
];

/// BLOCKED / BLOCKED_NETS value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    pub reason: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns after which the entry no longer applies; 0 = never.
    pub expires_ns: u64,
}
const _: () = assert!(size_of::<BlockEntry>() == 16);

/// RATE[slot] (a peer) and RATE_SOURCES[ip] (any other source): the
/// budget and the clocks it advances, updated by every CPU with atomics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateBucket {
    /// Theoretical arrival time of the next packet (GCRA), CLOCK_MONOTONIC ns.
    pub tat_pkt_ns: u64,
    pub tat_byte_ns: u64,
    pub budget: RateBudget,
}
const _: () = assert!(size_of::<RateBucket>() == 40);

/// SOURCE_STATS[ip]: packets from one source IP dropped as evidence for
/// reputation, counted by every CPU with atomics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub malformed: u64,
    pub rate: u64,
    pub auth: u64,
    pub blocked: u64,
}
const _: () = assert!(size_of::<SourceStats>() == 32);

/// LINK_KEYS and PEER_ADDRS key: a neighbour's overlay endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<LinkKey>() == 20);

/// LINK_KEYS[endpoint]: the hop-by-hop keys of the link with the
/// neighbour at that endpoint (docs/WIRE.md v2). Packets from it verify
/// under `rx[0]` (the newest key) or `rx[1]` (the previous one, kept so
/// that packets in flight across a rotation still verify), chosen by
/// their key ID; packets to it are tagged with `tx`. Key ID 0: no key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkSecret {
    pub rx: [[u8; 16]; 2],
    pub tx: [u8; 16],
    pub rx_id: [u8; 2],
    pub tx_id: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<LinkSecret>() == 56);

/// REPLAY key: one sender stream under one key of one link.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReplayKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub key_id: u8,
    pub stream: u8,
}
const _: () = assert!(size_of::<ReplayKey>() == 20);

/// REPLAY value: the sequence numbers seen (see `auth::replay_check`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayWindow {
    pub blocks: [u64; crate::auth::REPLAY_BLOCKS],
}
const _: () = assert!(size_of::<ReplayWindow>() == 8 * crate::auth::REPLAY_BLOCKS);

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow { blocks: [0; crate::auth::REPLAY_BLOCKS] }
    }
}

/// TX_SEQ[slot], per CPU: the next sequence number this CPU tags packets
/// to that peer with, under key `key_id` (a new key starts again at 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxSeq {
    pub next: u32,
    pub key_id: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<TxSeq>() == 8);

/// STATS[counter]: per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

pub const EVENT_NO_NEIGH: u32 = 1;

/// EVENTS record: datapath notices for the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub slot: u32,
    pub ifindex: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Event>() == 16);

/// How long the datapath reuses a FIB/neighbour answer for a peer slot
/// before asking the kernel again (a changed neighbour MAC or route is
/// picked up within this time).
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// NEXT_HOPS[slot], per CPU: the last successful FIB answer for a peer, so
/// that forwarding skips `bpf_fib_lookup` (the costliest step) most of the
/// time. Valid while unexpired, for the same ingress interface and the same
/// peer generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHopCache {
    pub expires_ns: u64,
    /// This node's address on the egress interface (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub egress: u32,
    pub ingress: u32,
    pub peer_generation: u32,
    pub _pad: [u32; 2],
}
const _: () = assert!(size_of::<NextHopCache>() == 56);

/// The kernel memory (bytes, as the kernel charges it: `memlock`) the maps
/// of a node take with `max_peers` peer slots and `max_sources` tracked
/// sources on `ncpu` CPUs: an estimate from each map's layout, within a
/// few percent of what `status` reports (`kernel.memory_bytes`, read from
/// the loaded maps), for `cargo xtask doctor` to show before a node runs.
pub const fn memory_estimate(max_peers: u32, max_sources: u32, ncpu: u32) -> u64 {
    const fn r8(x: usize) -> u64 {
        (x as u64).div_ceil(8) * 8
    }
    const PAGE: u64 = 4096;
    let (p, s, c) = (max_peers as u64, max_sources as u64, ncpu as u64);
    // Arrays: one 8-byte-rounded value per entry (mmapable ones page-rounded).
    let routes = ((ROUTE_BUCKETS * ROUTE_GENERATIONS) as u64 * r8(4)).div_ceil(PAGE) * PAGE + PAGE;
    let trie =
        ((trie_capacity(max_peers) * ROUTE_GENERATIONS) as u64 * r8(size_of::<TrieNode>())).div_ceil(PAGE) * PAGE;
    let last_seen = (p * 8).div_ceil(PAGE) * PAGE + PAGE;
    let arrays = p * r8(size_of::<PeerEntry>()) + p * r8(size_of::<RateBucket>()) + r8(size_of::<Config>());
    // Per-CPU arrays: one value per entry and CPU.
    let per_cpu = c
        * (p * r8(size_of::<NextHopCache>())
            + p * r8(size_of::<TxSeq>())
            + crate::counters::COUNTER_COUNT as u64 * r8(size_of::<Counter>()));
    // Hash maps (preallocated): an element header, key and value per entry,
    // and a bucket per entry (rounded up to a power of two).
    const fn hash(entries: u64, key: usize, value: usize) -> u64 {
        entries * (48 + r8(key) + r8(value)) + entries.next_power_of_two() * 16
    }
    let hashes = hash(p * ADDRS_PER_PEER as u64, size_of::<LinkKey>(), 4)
        + hash(s, 16, size_of::<RateBucket>())
        + hash(s, 16, size_of::<SourceStats>())
        + hash(p * ADDRS_PER_PEER as u64, size_of::<LinkKey>(), size_of::<LinkSecret>())
        + hash(p * REPLAY_PER_PEER as u64, size_of::<ReplayKey>(), size_of::<ReplayWindow>())
        + hash(MAX_IFACES as u64, 4, size_of::<IfaceAddrs>());
    // BLOCKED and BLOCKED_NETS allocate on use: only BLOCKED's buckets.
    let blocked = (MAX_BLOCKED as u64).next_power_of_two() * 16;
    routes + trie + last_seen + arrays + per_cpu + hashes + blocked + EVENTS_BYTES as u64
}
