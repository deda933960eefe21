//! The only module that touches aya and the BPF maps: loads the embedded
//! object, attaches XDP, pins and fills the maps, reads pinned maps for the
//! `maps` commands, and runs BPF_PROG_TEST_RUN for fixtures and benchmarks
//! (the benchmark's own programs live in `tests/bench`, not here).

mod batch;
mod mapped;
mod pinned;
mod rcu;

pub use pinned::{PinnedMaps, RouteLeaf, is_bpffs_mounted};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::{HashMap, HashSet};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use p2p_common::counters::COUNTER_COUNT;
use p2p_common::maps::{
    self as names, ADDRS_PER_PEER, BlockEntry, Config, Counter, DEFAULT_MAX_PEERS, DEFAULT_MAX_SOURCES, IfaceAddrs,
    LinkKey, LinkSecret, MAX_PEERS_LIMIT, PEER_LIVE, PeerEntry, ROUTE_BUCKETS, ROUTE_GENERATIONS, RateBucket,
    RateBudget, ReplayKey, ReplayWindow, SourceStats, TrieNode, trie_capacity,
};
use p2p_common::route_build::{self, RouteError, RouteTable};

/// The eBPF object built by build.rs (empty when bpf-linker was missing).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/p2p"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this binary was built without the eBPF object (bpf-linker missing or AYA_BUILD_SKIP set); run `cargo xtask setup` and rebuild"
    )]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the kernel verifier rejected {program}: {error}\n--- verifier log ---\n{log}")]
    Verifier { program: String, error: std::io::Error, log: String },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: ProgramError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("attaching XDP to {iface}: {reason}")]
    Attach { iface: String, reason: String },
    #[error("building the routing table: {0}")]
    Route(#[from] RouteError),
    #[error("reading pinned maps in {dir}: {reason}")]
    Pinned { dir: PathBuf, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, DataplaneError>;

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// Requested XDP attach mode; `Auto` tries driver mode, then SKB (generic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Auto,
    Driver,
    Skb,
}

/// Mode an interface actually got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    Driver,
    Skb,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedMode::Driver => "driver",
            AttachedMode::Skb => "skb",
        })
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Pin every map here (created if absent); `None` = no pins (fixtures).
    pub pin_dir: Option<PathBuf>,
    /// Start with aya-log lines enabled (CONFIG policy bit).
    pub ebpf_log: bool,
    /// Peer slots: sizes PEERS, PEER_ADDRS, RATE, LAST_SEEN, NEXT_HOPS and
    /// ROUTE_TRIE (`run --max-peers`).
    pub max_peers: u32,
    /// Non-peer sources tracked at once: sizes RATE_SOURCES and
    /// SOURCE_STATS (`run --max-sources`).
    pub max_sources: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { pin_dir: None, ebpf_log: false, max_peers: DEFAULT_MAX_PEERS, max_sources: DEFAULT_MAX_SOURCES }
    }
}

pub struct TestRunOutcome {
    pub verdict: u32,
    pub frame: Vec<u8>,
}

/// One PEERS slot as map sync wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotEntry {
    pub slot: u32,
    pub peer: PeerEntry,
    /// Every overlay endpoint the peer sends from (PEER_ADDRS).
    pub endpoints: Vec<LinkKey>,
    pub budget: RateBudget,
}

/// A BLOCKED (node ID) or BLOCKED_NETS (address prefix) key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockTarget {
    Node([u8; 32]),
    /// An IPv6 prefix (IPv4 as IPv4-mapped) of `prefix_len` bits.
    Net {
        addr: [u8; 16],
        prefix_len: u32,
    },
}

/// How big the per-peer and per-source maps were made.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize, Default)]
pub struct Sizes {
    pub max_peers: u32,
    pub trie_capacity: u32,
    pub max_sources: u32,
}

/// A loaded datapath object and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pin_dir: Option<PathBuf>,
    config: Config,
    sizes: Sizes,
    /// What each PEERS slot last held: slots that leave the set are cleared,
    /// and a slot given to another peer gets a new generation (which drops
    /// the datapath's cached next hop for it).
    peer_slots: HashMap<u32, SlotEntry>,
    /// What each ROUTES/ROUTE_TRIE generation holds, so that an update
    /// writes only the entries that differ (a full generation is 65,536
    /// syscalls; map sync must finish within 100 ms).
    route_shadow: [Option<RouteTable>; ROUTE_GENERATIONS as usize],
    /// ROUTES and ROUTE_TRIE mapped into this process (None: mmap was
    /// refused, e.g. by a security policy; updates then go through batched
    /// syscalls).
    route_maps: Option<(mapped::MappedArray<u32>, mapped::MappedArray<TrieNode>)>,
    /// LAST_SEEN mapped into this process (read without syscalls).
    last_seen: Option<mapped::MappedArray<u64>>,
    /// Waits until no packet still uses the routing generation just retired.
    barrier: rcu::RcuBarrier,
    /// BLOCKED / BLOCKED_NETS entries written here (CONFIG counts them).
    blocked: HashMap<BlockTarget, BlockEntry>,
    /// LINK_KEYS as written here, by neighbour endpoint.
    link_keys: HashMap<LinkKey, LinkSecret>,
    links: Vec<(String, XdpLinkId, &'static str)>,
}

impl Dataplane {
    /// Loads the embedded object: creates maps sized by `opts` (pinning
    /// them if asked) and loads both programs, so that a verifier rejection
    /// surfaces here.
    pub fn load(opts: LoadOptions) -> Result<Dataplane> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        if opts.max_peers == 0 || opts.max_peers > MAX_PEERS_LIMIT || opts.max_sources == 0 {
            return Err(DataplaneError::Io(std::io::Error::other(format!(
                "max peers must be 1..={MAX_PEERS_LIMIT} and max sources at least 1 (got {} and {})",
                opts.max_peers, opts.max_sources
            ))));
        }
        let sizes = Sizes {
            max_peers: opts.max_peers,
            trie_capacity: trie_capacity(opts.max_peers),
            max_sources: opts.max_sources,
        };
        let mut loader = EbpfLoader::new();
        for name in [names::PEERS, names::RATE, names::LAST_SEEN, names::NEXT_HOPS, names::TX_SEQ] {
            loader.map_max_entries(name, sizes.max_peers);
        }
        for name in [names::PEER_ADDRS, names::LINK_KEYS] {
            loader.map_max_entries(name, sizes.max_peers.saturating_mul(ADDRS_PER_PEER));
        }
        loader.map_max_entries(names::REPLAY, sizes.max_peers.saturating_mul(names::REPLAY_PER_PEER));
        loader.map_max_entries(names::ROUTE_TRIE, sizes.trie_capacity * ROUTE_GENERATIONS);
        loader.map_max_entries(names::RATE_SOURCES, sizes.max_sources);
        loader.map_max_entries(names::SOURCE_STATS, sizes.max_sources);
        let mut ebpf = loader.load(OBJECT)?;
        // The logger must live as long as the programs (its map is shared).
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
        for prog in [names::PROG_XDP, names::PROG_XDP_PASS] {
            let p: &mut Xdp = ebpf
                .program_mut(prog)
                .ok_or(DataplaneError::MissingProgram(prog))?
                .try_into()
                .map_err(|source| DataplaneError::Program { what: prog.into(), source })?;
            p.load().map_err(|e| match e {
                ProgramError::LoadError { io_error, verifier_log } => DataplaneError::Verifier {
                    program: prog.into(),
                    error: io_error,
                    log: tail_lines(&verifier_log.to_string(), 60),
                },
                source => DataplaneError::Program { what: format!("loading {prog}"), source },
            })?;
        }
        if let Some(dir) = &opts.pin_dir {
            std::fs::create_dir_all(dir)?;
            for name in names::ALL_MAPS {
                let map = ebpf.map(name).ok_or(DataplaneError::MissingMap(name))?;
                let path = dir.join(name);
                map.pin(&path).map_err(|source| DataplaneError::Pin { path, source })?;
            }
        }
        let mut dp = Dataplane {
            ebpf,
            logger,
            pin_dir: opts.pin_dir,
            config: Config { trie_capacity: sizes.trie_capacity, ..Config::default() },
            sizes,
            peer_slots: HashMap::new(),
            route_shadow: Default::default(),
            route_maps: None,
            last_seen: None,
            barrier: rcu::RcuBarrier::new()
                .map_err(|e| DataplaneError::Io(std::io::Error::other(format!("RCU barrier map: {e}"))))?,
            blocked: HashMap::new(),
            link_keys: HashMap::new(),
            links: Vec::new(),
        };
        dp.route_maps = match (dp.map_fd(names::ROUTES), dp.map_fd(names::ROUTE_TRIE)) {
            (Some(r), Some(t)) => match (
                mapped::MappedArray::new(r, ROUTE_BUCKETS * ROUTE_GENERATIONS),
                mapped::MappedArray::new(t, sizes.trie_capacity * ROUTE_GENERATIONS),
            ) {
                (Ok(r), Ok(t)) => Some((r, t)),
                (Err(e), _) | (_, Err(e)) => {
                    log::warn!("cannot mmap the routing maps ({e}): route updates use batched syscalls");
                    None
                }
            },
            _ => None,
        };
        dp.last_seen = dp.map_fd(names::LAST_SEEN).and_then(|fd| match mapped::MappedArray::new(fd, sizes.max_peers) {
            Ok(m) => Some(m),
            Err(e) => {
                log::warn!("cannot mmap LAST_SEEN ({e}): the churn detector sees no passive evidence");
                None
            }
        });
        if opts.ebpf_log {
            dp.config.policy |= names::POLICY_LOG;
        }
        dp.write_config()?;
        Ok(dp)
    }

    pub fn sizes(&self) -> Sizes {
        self.sizes
    }

    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// Sets this node's identity and policy. A new node ID also fills both
    /// routing generations with the this-node-only table, so that every
    /// later update writes only what differs (a full generation is 65,536
    /// map writes: too slow for map sync's 100 ms).
    pub fn set_config(&mut self, node_id: [u8; 32], overlay_port: u16, policy: u16) -> Result<()> {
        let new_id = self.config.node_id != node_id;
        self.config.node_id = node_id;
        self.config.overlay_port = overlay_port;
        self.config.policy = policy | (self.config.policy & names::POLICY_LOG);
        if new_id && self.peer_slots.is_empty() {
            let table = route_build::build(&node_id, &[])?;
            for generation in 0..ROUTE_GENERATIONS {
                self.write_routes(generation, &table)?;
            }
        }
        self.write_config()
    }

    fn write_config(&mut self) -> Result<()> {
        self.write_config_value(self.config)
    }

    /// Writes CONFIG; `self.config` follows only once the kernel has it.
    fn write_config_value(&mut self, config: Config) -> Result<()> {
        let mut a: Array<_, Config> = self.map_mut(names::CONFIG)?;
        a.set(0, config, 0).map_err(map_err(names::CONFIG))?;
        self.config = config;
        Ok(())
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))?;
        T::try_from(map).map_err(map_err(name))
    }

    /// Records this node's addresses on an attached interface and makes the
    /// interface a redirect target.
    pub fn set_iface(&mut self, ifindex: u32, addrs: IfaceAddrs) -> Result<()> {
        let mut ifaces: BpfHashMap<_, u32, IfaceAddrs> = self.map_mut(names::IFACES)?;
        ifaces.insert(ifindex, addrs, 0).map_err(map_err(names::IFACES))?;
        let mut ports: DevMapHash<_> = self.map_mut(names::TX_PORTS)?;
        ports.insert(ifindex, ifindex, None, 0).map_err(|e| DataplaneError::Attach {
            iface: format!("ifindex {ifindex}"),
            reason: format!("TX_PORTS: {e}"),
        })
    }

    /// Installs a new peer set (live entries only) with routes built here:
    /// for fixtures and benchmarks. Map sync uses [`Self::set_peers_routed`].
    pub fn set_peers(&mut self, peers: &[(u32, PeerEntry)]) -> Result<()> {
        let slots: Vec<SlotEntry> = peers
            .iter()
            .map(|(slot, p)| SlotEntry {
                slot: *slot,
                peer: *p,
                endpoints: vec![LinkKey { addr: p.addr, port: p.port, _pad: 0 }],
                budget: RateBudget::UNLIMITED,
            })
            .collect();
        let live: Vec<(u32, [u8; 32])> =
            peers.iter().filter(|(_, p)| p.flags & PEER_LIVE != 0).map(|(s, p)| (*s, p.node_id)).collect();
        let table = route_build::build(&self.config.node_id, &live)?;
        self.set_peers_routed(&slots, &table)
    }

    /// Installs a new peer set whose routing table, built from its live
    /// entries, is `table` (map sync shares it with the userspace router).
    ///
    /// Safe by construction for packets in flight: (1) new and changed
    /// slots are written, into slots no live route points at (map sync
    /// gives a peer whose address changed a new slot, and never hands a
    /// slot freed by one update to another peer in the same update); (2)
    /// the routes go into the idle generation, which no packet has used
    /// since the RCU grace period that followed the previous flip; (3) one
    /// CONFIG write flips the generation; (4) an RCU grace period passes
    /// ([`rcu::RcuBarrier`]): every packet that read the old generation has
    /// finished; (5) only then are slots that left the set cleared.
    pub fn set_peers_routed(&mut self, peers: &[SlotEntry], table: &RouteTable) -> Result<()> {
        let live_count = peers.iter().filter(|e| e.peer.flags & PEER_LIVE != 0).count();
        if let Some(e) = peers.iter().find(|e| e.slot >= self.sizes.max_peers) {
            return Err(DataplaneError::Io(std::io::Error::other(format!(
                "slot {} is beyond the {} peer slots the maps were made with (--max-peers)",
                e.slot, self.sizes.max_peers
            ))));
        }
        let entries: Vec<SlotEntry> = peers
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e.peer.generation = match self.peer_slots.get(&e.slot) {
                    Some(prev)
                        if (prev.peer.node_id, prev.peer.addr, prev.peer.port)
                            == (e.peer.node_id, e.peer.addr, e.peer.port) =>
                    {
                        prev.peer.generation
                    }
                    Some(prev) => prev.peer.generation.wrapping_add(1),
                    None => e.peer.generation,
                };
                e
            })
            .collect();
        // (1)
        for e in &entries {
            let prev = self.peer_slots.get(&e.slot).cloned();
            if prev.as_ref() == Some(e) {
                continue;
            }
            let new_peer = prev.as_ref().is_none_or(|p| p.peer.node_id != e.peer.node_id || p.peer.node_id == [0; 32]);
            if new_peer && let Some(m) = self.last_seen.as_mut() {
                m.set(e.slot, 0);
            }
            if new_peer || prev.as_ref().is_some_and(|p| p.budget != e.budget) {
                let bucket = RateBucket { tat_pkt_ns: 0, tat_byte_ns: 0, budget: e.budget };
                let mut a: Array<_, RateBucket> = self.map_mut(names::RATE)?;
                a.set(e.slot, bucket, 0).map_err(map_err(names::RATE))?;
            }
            if prev.as_ref().is_none_or(|p| p.peer != e.peer) {
                let mut a: Array<_, PeerEntry> = self.map_mut(names::PEERS)?;
                a.set(e.slot, e.peer, 0).map_err(map_err(names::PEERS))?;
            }
            let old: Vec<LinkKey> = prev.map(|p| p.endpoints).unwrap_or_default();
            let mut addrs: BpfHashMap<_, LinkKey, u32> = self.map_mut(names::PEER_ADDRS)?;
            for k in old.iter().filter(|k| !e.endpoints.contains(k)) {
                let _ = addrs.remove(k);
            }
            for k in e.endpoints.iter().filter(|k| !old.contains(k)) {
                addrs.insert(k, e.slot, 0).map_err(map_err(names::PEER_ADDRS))?;
            }
        }
        // (2), (3), (4)
        let next_gen = (self.config.route_gen + 1) % ROUTE_GENERATIONS;
        self.write_routes(next_gen, table)?;
        let mut config = self.config;
        config.route_gen = next_gen;
        config.peer_count = live_count as u32;
        self.write_config_value(config)?;
        self.barrier.wait()?;
        // (5) Slots that held a peer and are no longer in the set (cleared
        // ones stay in `peer_slots` only to carry their generation).
        let keep: HashSet<u32> = entries.iter().map(|e| e.slot).collect();
        let stale: Vec<u32> = self
            .peer_slots
            .iter()
            .filter(|(s, e)| !keep.contains(s) && (e.peer.node_id != [0; 32] || e.peer.flags & PEER_LIVE != 0))
            .map(|(s, _)| *s)
            .collect();
        for s in stale {
            let prev = self.peer_slots[&s].clone();
            let cleared = SlotEntry {
                slot: s,
                peer: PeerEntry { generation: prev.peer.generation.wrapping_add(1), ..Default::default() },
                endpoints: Vec::new(),
                budget: RateBudget::UNLIMITED,
            };
            {
                let mut addrs: BpfHashMap<_, LinkKey, u32> = self.map_mut(names::PEER_ADDRS)?;
                for k in &prev.endpoints {
                    let _ = addrs.remove(k);
                }
            }
            let mut a: Array<_, PeerEntry> = self.map_mut(names::PEERS)?;
            a.set(s, cleared.peer, 0).map_err(map_err(names::PEERS))?;
            self.peer_slots.insert(s, cleared);
        }
        for e in entries {
            self.peer_slots.insert(e.slot, e);
        }
        Ok(())
    }

    /// CLOCK_MONOTONIC ns of the last packet each slot's peer sent itself
    /// (0: none since the slot was given to it); empty without the mapping.
    pub fn last_seen(&self, slots: &[u32]) -> Vec<(u32, u64)> {
        match &self.last_seen {
            Some(m) => slots.iter().filter_map(|s| m.get(*s).map(|t| (*s, t))).collect(),
            None => Vec::new(),
        }
    }

    /// Records `now` as the controller's heartbeat: the datapath answers
    /// PINGs itself only while it is fresh.
    pub fn heartbeat(&mut self, now_ns: u64) -> Result<()> {
        self.config.heartbeat_ns = now_ns;
        self.write_config()
    }

    /// The budget of sources that are not peers (RATE_SOURCES entries made
    /// from now on; existing ones are forgotten so that they pick it up).
    pub fn set_nonpeer_budget(&mut self, budget: RateBudget) -> Result<()> {
        if self.config.nonpeer_budget == budget {
            return Ok(());
        }
        self.config.nonpeer_budget = budget;
        self.write_config()?;
        let mut m: BpfHashMap<_, [u8; 16], RateBucket> = self.map_mut(names::RATE_SOURCES)?;
        let keys: Vec<[u8; 16]> = m.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = m.remove(&k);
        }
        Ok(())
    }

    /// Adds or replaces a block-list entry. Expired entries are removed
    /// first: in BLOCKED_NETS the longest prefix wins, so an expired
    /// narrow entry would shadow a live broader one.
    pub fn block(&mut self, target: BlockTarget, entry: BlockEntry) -> Result<()> {
        let now = crate::overlay::monotonic_ns();
        let expired: Vec<BlockTarget> =
            self.blocked.iter().filter(|(_, e)| e.expires_ns != 0 && e.expires_ns <= now).map(|(t, _)| *t).collect();
        for t in expired {
            self.unblock(t)?;
        }
        match target {
            BlockTarget::Node(id) => {
                let mut m: BpfHashMap<_, [u8; 32], BlockEntry> = self.map_mut(names::BLOCKED)?;
                m.insert(id, entry, 0).map_err(map_err(names::BLOCKED))?;
            }
            BlockTarget::Net { addr, prefix_len } => {
                let mut m: LpmTrie<_, [u8; 16], BlockEntry> = self.map_mut(names::BLOCKED_NETS)?;
                m.insert(&LpmKey::new(prefix_len, addr), entry, 0).map_err(map_err(names::BLOCKED_NETS))?;
            }
        }
        self.blocked.insert(target, entry);
        self.write_block_counts()
    }

    /// Makes LINK_KEYS hold `keys` (neighbour endpoint → link keys), writing
    /// only what changed. A receive key new to an endpoint starts with empty
    /// replay windows: windows left from an earlier key with the same ID
    /// (IDs wrap) are removed first.
    pub fn set_link_keys(&mut self, keys: &HashMap<LinkKey, LinkSecret>) -> Result<()> {
        let ncpu = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io(e))? as u32;
        let gone: Vec<LinkKey> = self.link_keys.keys().filter(|k| !keys.contains_key(k)).copied().collect();
        {
            let mut m: BpfHashMap<_, LinkKey, LinkSecret> = self.map_mut(names::LINK_KEYS)?;
            for k in &gone {
                let _ = m.remove(k);
            }
        }
        let mut fresh_ids = Vec::new();
        for (k, v) in keys {
            let old = self.link_keys.get(k);
            if old == Some(v) {
                continue;
            }
            if v.rx_id[0] != 0 && old.is_none_or(|o| !o.rx_id.contains(&v.rx_id[0])) {
                fresh_ids.push((*k, v.rx_id[0]));
            }
        }
        let mut replay: BpfHashMap<_, ReplayKey, ReplayWindow> = self.map_mut(names::REPLAY)?;
        for (k, id) in &fresh_ids {
            let streams = (0..ncpu.min(p2p_common::auth::KERNEL_STREAMS)).map(|c| c as u8);
            for stream in streams.chain([p2p_common::auth::STREAM_CONTROLLER]) {
                let _ = replay.remove(&ReplayKey { addr: k.addr, port: k.port, key_id: *id, stream });
            }
        }
        let changed: Vec<(&LinkKey, &LinkSecret)> =
            keys.iter().filter(|(k, v)| self.link_keys.get(k) != Some(*v)).collect();
        let mut m: BpfHashMap<_, LinkKey, LinkSecret> = self.map_mut(names::LINK_KEYS)?;
        for (k, v) in changed {
            m.insert(k, v, 0).map_err(map_err(names::LINK_KEYS))?;
        }
        self.link_keys = keys.clone();
        Ok(())
    }

    /// Forgets every replay window (REPLAY): the sequence numbers seen.
    pub fn forget_replay_windows(&mut self) -> Result<()> {
        let mut replay: BpfHashMap<_, ReplayKey, ReplayWindow> = self.map_mut(names::REPLAY)?;
        let keys: Vec<ReplayKey> = replay.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = replay.remove(&k);
        }
        Ok(())
    }

    /// Removes a block-list entry (absent: nothing to do).
    pub fn unblock(&mut self, target: BlockTarget) -> Result<()> {
        match target {
            BlockTarget::Node(id) => {
                let mut m: BpfHashMap<_, [u8; 32], BlockEntry> = self.map_mut(names::BLOCKED)?;
                let _ = m.remove(&id);
            }
            BlockTarget::Net { addr, prefix_len } => {
                let mut m: LpmTrie<_, [u8; 16], BlockEntry> = self.map_mut(names::BLOCKED_NETS)?;
                let _ = m.remove(&LpmKey::new(prefix_len, addr));
            }
        }
        self.blocked.remove(&target);
        self.write_block_counts()
    }

    /// CONFIG's counts let the datapath skip empty look-ups.
    fn write_block_counts(&mut self) -> Result<()> {
        let nodes = self.blocked.keys().filter(|t| matches!(t, BlockTarget::Node(_))).count() as u32;
        let nets = self.blocked.len() as u32 - nodes;
        if (self.config.blocked_nodes, self.config.blocked_nets) == (nodes, nets) {
            return Ok(());
        }
        self.config.blocked_nodes = nodes;
        self.config.blocked_nets = nets;
        self.write_config()
    }

    /// Every source's evidence counters (SOURCE_STATS), by address.
    pub fn source_stats(&self) -> Result<Vec<([u8; 16], SourceStats)>> {
        let fd = self.any_map_fd(names::SOURCE_STATS).ok_or(DataplaneError::MissingMap(names::SOURCE_STATS))?;
        batch::lookup_hash::<[u8; 16], SourceStats>(fd)
            .map_err(|e| DataplaneError::Io(std::io::Error::other(format!("{}: {e}", names::SOURCE_STATS))))
    }

    /// Kernel memory each map takes (`memlock` of its fd), by name.
    pub fn memory(&self) -> Vec<(&'static str, u64)> {
        let mut names_all: Vec<&'static str> = names::ALL_MAPS.to_vec();
        names_all.push(names::NEXT_HOPS);
        names_all.into_iter().filter_map(|n| Some((n, memlock(self.any_map_fd(n)?)?))).collect()
    }

    /// Writes `table` into the idle `generation`, skipping entries that
    /// already hold the same value there.
    fn write_routes(&mut self, generation: u32, table: &RouteTable) -> Result<()> {
        if table.nodes.len() > self.sizes.trie_capacity as usize {
            return Err(DataplaneError::Route(RouteError::TooManyPeers(table.nodes.len())));
        }
        let shadow = self.route_shadow[generation as usize].take();
        let (node_keys, nodes) =
            changed(&table.nodes, shadow.as_ref().map(|s| &s.nodes[..]), generation * self.sizes.trie_capacity);
        let (bucket_keys, buckets) =
            changed(&table.buckets, shadow.as_ref().map(|s| &s.buckets[..]), generation * ROUTE_BUCKETS);
        match self.route_maps.as_mut() {
            Some((routes, trie)) => {
                for (k, n) in node_keys.iter().zip(&nodes) {
                    trie.set(*k, *n);
                }
                for (k, r) in bucket_keys.iter().zip(&buckets) {
                    routes.set(*k, *r);
                }
                // Everything stored before the CONFIG write that flips to it.
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            }
            None => {
                self.array_write(names::ROUTE_TRIE, &node_keys, &nodes)?;
                self.array_write(names::ROUTES, &bucket_keys, &buckets)?;
            }
        }
        self.route_shadow[generation as usize] = Some(table.clone());
        Ok(())
    }

    /// The fd of any map of the loaded object.
    fn any_map_fd(&self, name: &'static str) -> Option<i32> {
        use std::os::fd::{AsFd, AsRawFd};
        let data = match self.ebpf.map(name)? {
            aya::maps::Map::Array(d)
            | aya::maps::Map::PerCpuArray(d)
            | aya::maps::Map::HashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::LpmTrie(d)
            | aya::maps::Map::RingBuf(d)
            | aya::maps::Map::DevMapHash(d) => d,
            _ => return None,
        };
        Some(data.fd().as_fd().as_raw_fd())
    }

    /// The fd of an array map of the loaded object.
    fn map_fd(&self, name: &'static str) -> Option<i32> {
        use std::os::fd::{AsFd, AsRawFd};
        match self.ebpf.map(name)? {
            aya::maps::Map::Array(data) => Some(data.fd().as_fd().as_raw_fd()),
            _ => None,
        }
    }

    /// Writes array entries: BPF_MAP_UPDATE_BATCH (one syscall per 8,192
    /// entries), or one update per entry on kernels without it (< 5.6).
    fn array_write<V: aya::Pod>(&mut self, name: &'static str, keys: &[u32], values: &[V]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let batched = match self.map_fd(name) {
            Some(fd) => keys.chunks(8192).zip(values.chunks(8192)).try_for_each(|(k, v)| batch::update(fd, k, v)),
            None => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        };
        match batched {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524 /* ENOTSUPP */)) => {
                let mut a: Array<_, V> = self.map_mut(name)?;
                for (k, v) in keys.iter().zip(values) {
                    a.set(*k, v, 0).map_err(map_err(name))?;
                }
                Ok(())
            }
            Err(e) => Err(DataplaneError::Io(std::io::Error::other(format!("{name}: BPF_MAP_UPDATE_BATCH: {e}")))),
        }
    }

    /// Counters summed over CPUs, indexed by counter index.
    pub fn stats(&self) -> Result<Vec<Counter>> {
        let map = self.ebpf.map(names::STATS).ok_or(DataplaneError::MissingMap(names::STATS))?;
        let a: PerCpuArray<_, Counter> = PerCpuArray::try_from(map).map_err(map_err(names::STATS))?;
        sum_stats(&a)
    }

    /// Userspace datapath: publishes its counters through the same STATS map
    /// (all on CPU 0) so that `maps stats` reads both modes alike.
    pub fn mirror_stats(&mut self, counters: &[Counter]) -> Result<()> {
        let ncpu = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io(e))?;
        let mut a: PerCpuArray<_, Counter> = self.map_mut(names::STATS)?;
        for (i, c) in counters.iter().enumerate() {
            let mut v = vec![Counter::default(); ncpu];
            v[0] = *c;
            let values = PerCpuValues::try_from(v).map_err(|e| DataplaneError::Io(std::io::Error::other(e)))?;
            a.set(i as u32, values, 0).map_err(map_err(names::STATS))?;
        }
        Ok(())
    }

    fn xdp(&mut self, prog: &'static str) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(prog)
            .ok_or(DataplaneError::MissingProgram(prog))?
            .try_into()
            .map_err(|source| DataplaneError::Program { what: prog.into(), source })
    }

    /// Attaches the datapath (or, with `pass_only`, the pass-through program)
    /// to `iface`. `Auto` tries driver mode, then retries in SKB mode.
    pub fn attach(&mut self, iface: &str, mode: AttachMode, pass_only: bool) -> Result<AttachedMode> {
        let prog = if pass_only { names::PROG_XDP_PASS } else { names::PROG_XDP };
        let ifindex = ifindex(iface).ok_or_else(|| DataplaneError::Attach {
            iface: iface.into(),
            reason: "no such interface in this network namespace".into(),
        })?;
        let tries: &[(XdpMode, AttachedMode)] = match mode {
            AttachMode::Auto => &[(XdpMode::Driver, AttachedMode::Driver), (XdpMode::Skb, AttachedMode::Skb)],
            AttachMode::Driver => &[(XdpMode::Driver, AttachedMode::Driver)],
            AttachMode::Skb => &[(XdpMode::Skb, AttachedMode::Skb)],
        };
        let mut last = String::new();
        for (xdp_mode, got) in tries {
            match self.xdp(prog)?.attach_to_if_index(ifindex, *xdp_mode) {
                Ok(id) => {
                    self.links.push((iface.to_string(), id, prog));
                    return Ok(*got);
                }
                Err(e) => last = format!("{got} mode: {}", error_chain(&e)),
            }
        }
        Err(DataplaneError::Attach { iface: iface.into(), reason: last })
    }

    /// Detaches every attachment this process made.
    pub fn detach_all(&mut self) {
        for (iface, id, prog) in std::mem::take(&mut self.links) {
            if let Ok(p) = self.xdp(prog)
                && let Err(e) = p.detach(id)
            {
                log::warn!("detaching from {iface}: {e}");
            }
        }
    }

    /// Removes the pins this dataplane made.
    pub fn unpin(&mut self) {
        if let Some(dir) = self.pin_dir.take() {
            remove_pins(&dir);
        }
    }

    /// Runs `p2p_xdp` once on `frame` as if received on `ingress_ifindex`.
    pub fn test_run(&mut self, frame: &[u8], ingress_ifindex: u32) -> Result<TestRunOutcome> {
        let (out, verdict, _) = self.run_prog(frame, ingress_ifindex, 1)?;
        Ok(TestRunOutcome { verdict, frame: out })
    }

    /// Mean time per run of `p2p_xdp` over `repeat` runs.
    pub fn test_run_repeat(&mut self, frame: &[u8], ingress_ifindex: u32, repeat: u32) -> Result<Duration> {
        Ok(self.run_prog(frame, ingress_ifindex, repeat.max(1))?.2)
    }

    /// BPF_PROG_TEST_RUN of `p2p_xdp`: output frame, verdict, mean duration.
    fn run_prog(&mut self, frame: &[u8], ingress_ifindex: u32, repeat: u32) -> Result<(Vec<u8>, u32, Duration)> {
        test_run_prog(self.xdp(names::PROG_XDP)?, frame, ingress_ifindex, repeat)
            .map_err(|source| DataplaneError::Program { what: "BPF_PROG_TEST_RUN".into(), source })
    }
}

/// The entries of `new` that differ from `old` (all without `old`), as
/// (map index from `base`, value).
fn changed<V: PartialEq + Copy>(new: &[V], old: Option<&[V]>, base: u32) -> (Vec<u32>, Vec<V>) {
    new.iter()
        .enumerate()
        .filter(|(i, v)| old.is_none_or(|o| o.get(*i) != Some(v)))
        .map(|(i, v)| (base + i as u32, *v))
        .unzip()
}

/// BPF_PROG_TEST_RUN of any XDP program: output frame, verdict, mean duration.
pub(crate) fn test_run_prog(
    prog: &Xdp,
    frame: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> std::result::Result<(Vec<u8>, u32, Duration), ProgramError> {
    let ctx = xdp_md(ingress_ifindex, frame.len());
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    opts.repeat = repeat;
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok((out, r.return_value, r.duration))
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// `struct xdp_md` for BPF_PROG_TEST_RUN: `data_end` covers the whole frame
/// (left at 0, the kernel puts the frame in fragments and the program sees
/// an empty linear part) and the ingress interface is set.
pub(crate) fn xdp_md(ingress_ifindex: u32, frame_len: usize) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame_len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}

fn sum_stats<T: std::borrow::Borrow<MapData>>(a: &PerCpuArray<T, Counter>) -> Result<Vec<Counter>> {
    let mut out = Vec::with_capacity(COUNTER_COUNT as usize);
    for i in 0..COUNTER_COUNT {
        let per_cpu = a.get(&i, 0).map_err(map_err(names::STATS))?;
        let mut c = Counter::default();
        for v in per_cpu.iter() {
            c.packets += v.packets;
            c.bytes += v.bytes;
        }
        out.push(c);
    }
    Ok(out)
}

/// `memlock:` of a BPF map fd (the kernel memory charged for it).
fn memlock(fd: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok())
}

/// Removes the pinned maps in `dir` and the directory itself.
pub fn remove_pins(dir: &Path) {
    for name in names::ALL_MAPS {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
}

pub fn ifindex(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

/// Counters by docs/WIRE.md name.
pub fn stats_by_name(counters: &[Counter]) -> BTreeMap<&'static str, Counter> {
    p2p_common::counters::COUNTER_NAMES
        .iter()
        .zip(counters.iter().copied().chain(std::iter::repeat(Counter::default())))
        .map(|(n, c)| (*n, c))
        .collect()
}

/// The end of a verifier log says why; the whole log can be thousands of lines.
fn tail_lines(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    if lines.len() <= n {
        return log.to_string();
    }
    format!("[… {} earlier lines]\n{}", lines.len() - n, lines[lines.len() - n..].join("\n"))
}
