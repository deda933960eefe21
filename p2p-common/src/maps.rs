//! BPF map names, sizes and key/value layouts. The names are the contract
//! with `bpftool` users: maps are pinned as `/sys/fs/bpf/p2p/<instance>/<NAME>`.
//! Every struct is `#[repr(C)]` with explicit padding and a size assertion.

use core::mem::size_of;

pub const CONFIG: &str = "CONFIG";
pub const ROUTES: &str = "ROUTES";
pub const ROUTE_TRIE: &str = "ROUTE_TRIE";
pub const PEERS: &str = "PEERS";
pub const IFACES: &str = "IFACES";
pub const BLOCKED: &str = "BLOCKED";
pub const RATE: &str = "RATE";
pub const LINK_KEYS: &str = "LINK_KEYS";
pub const LAST_SEEN: &str = "LAST_SEEN";
pub const STATS: &str = "STATS";
pub const EVENTS: &str = "EVENTS";
pub const TX_PORTS: &str = "TX_PORTS";
pub const NEXT_HOPS: &str = "NEXT_HOPS";

/// Every map the object declares, in the order the README lists them.
pub const ALL_MAPS: [&str; 12] =
    [CONFIG, ROUTES, ROUTE_TRIE, PEERS, IFACES, BLOCKED, RATE, LINK_KEYS, LAST_SEEN, STATS, EVENTS, TX_PORTS];

/// Program names in the object.
pub const PROG_XDP: &str = "p2p_xdp";
/// Pass-through program: a veth peer needs an XDP program for redirected
/// frames to be delivered (DESIGN.md), and test rigs attach this one.
pub const PROG_XDP_PASS: &str = "p2p_xdp_pass";

/// Peer slots in PEERS (and RATE, LAST_SEEN).
pub const MAX_PEERS: u32 = 131_072;
/// Bits of the key consumed by the ROUTES bucket array.
pub const ROUTE_PREFIX_BITS: u32 = 16;
pub const ROUTE_BUCKETS: u32 = 1 << ROUTE_PREFIX_BITS;
/// ROUTES and ROUTE_TRIE hold two generations; CONFIG.route_gen says which is
/// live, so an update is written beside the live one and swapped in at once.
pub const ROUTE_GENERATIONS: u32 = 2;
/// Trie nodes per generation: a Patricia trie over n leaves has n-1 inner nodes.
pub const TRIE_CAPACITY: u32 = MAX_PEERS + 1;
/// Most trie steps after the bucket the datapath takes (verifier loop bound).
/// The builder refuses tables that would need more.
pub const MAX_TRIE_DEPTH: u32 = 48;
pub const MAX_BLOCKED: u32 = 65_536;
pub const MAX_LINK_KEYS: u32 = 4_096;
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
pub const POLICY_AUTH_REQUIRED: u16 = 1;
/// aya-log lines are emitted only with this bit (`run --ebpf-log`).
pub const POLICY_LOG: u16 = 2;

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
    /// Entries in BLOCKED: 0 lets the datapath skip its two hash look-ups.
    pub blocked_count: u32,
}
const _: () = assert!(size_of::<Config>() == 48);

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

pub const BLOCK_KIND_IP: u8 = 1;
pub const BLOCK_KIND_NODE: u8 = 2;

/// BLOCKED key: an IP (IPv6 or IPv4-mapped in `id[..16]`, rest zero) or a node ID.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub kind: u8,
    pub _pad: [u8; 3],
    pub id: [u8; 32],
}
const _: () = assert!(size_of::<BlockKey>() == 36);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    pub reason: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns after which the entry no longer applies; 0 = never.
    pub expires_ns: u64,
}
const _: () = assert!(size_of::<BlockEntry>() == 16);

/// RATE[slot]: token bucket (filled by the bandwidth-management issue).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub tokens: u64,
    pub last_ns: u64,
    pub rate_pps: u32,
    pub burst: u32,
}
const _: () = assert!(size_of::<TokenBucket>() == 24);

/// LINK_KEYS key: a neighbour's overlay endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<LinkKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkSecret {
    pub key: [u8; 32],
}
const _: () = assert!(size_of::<LinkSecret>() == 32);

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
