//! Reads the pinned maps of a running (or crashed) node: the `maps`
//! commands work without the daemon.

use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use p2p_common::maps::{self as names, BlockEntry, Config, Counter, PEER_LIVE, PeerEntry, ROUTE_BUCKETS, TrieNode};
use p2p_common::route_build;

use super::{BlockTarget, DataplaneError, Result, map_err, sum_stats};

/// Handle on a pin directory such as `/sys/fs/bpf/p2p/<instance>`.
pub struct PinnedMaps {
    dir: PathBuf,
}

/// One leaf of the live routing generation: which slot owns how many of the
/// 65,536 key prefixes (a prefix shared by several leaves counts for each).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteLeaf {
    /// PEERS slot, or `null` for this node.
    pub slot: Option<u32>,
    pub node_id: String,
    pub buckets: u32,
}

impl PinnedMaps {
    pub fn open(dir: &Path) -> Result<PinnedMaps> {
        if !dir.join(names::STATS).exists() {
            return Err(DataplaneError::Pinned {
                dir: dir.to_path_buf(),
                reason: if Path::new("/sys/fs/bpf").join("p2p").exists() || dir.exists() {
                    "no pinned STATS map here: is the node running with this --instance?".into()
                } else if !is_bpffs_mounted() {
                    "bpffs is not mounted at /sys/fs/bpf (run `cargo xtask setup` or `mount -t bpf bpf /sys/fs/bpf`)"
                        .into()
                } else {
                    "no pinned maps: is a node running with this --instance?".into()
                },
            });
        }
        Ok(PinnedMaps { dir: dir.to_path_buf() })
    }

    fn map_data(&self, name: &'static str) -> Result<MapData> {
        MapData::from_pin(self.dir.join(name)).map_err(|e| DataplaneError::Pinned {
            dir: self.dir.clone(),
            reason: format!("{name}: {}", super::error_chain(&e)),
        })
    }

    fn map(&self, name: &'static str) -> Result<Map> {
        Map::from_map_data(self.map_data(name)?).map_err(map_err(name))
    }

    pub fn stats(&self) -> Result<Vec<Counter>> {
        let m = self.map(names::STATS)?;
        let a: PerCpuArray<_, Counter> = PerCpuArray::try_from(m).map_err(map_err(names::STATS))?;
        sum_stats(&a)
    }

    pub fn config(&self) -> Result<Config> {
        let m = self.map(names::CONFIG)?;
        let a: Array<_, Config> = Array::try_from(m).map_err(map_err(names::CONFIG))?;
        a.get(&0, 0).map_err(map_err(names::CONFIG))
    }

    /// Every value of an array map, by index: in batches, or one lookup per
    /// entry on kernels without BPF_MAP_LOOKUP_BATCH.
    fn array_values<V: aya::Pod + Default>(&self, name: &'static str) -> Result<Vec<V>> {
        let data = self.map_data(name)?;
        let max_entries = data.info().map_err(map_err(name))?.max_entries();
        use std::os::fd::{AsFd, AsRawFd};
        match super::batch::lookup_all::<V>(data.fd().as_fd().as_raw_fd(), max_entries) {
            Ok(v) => Ok(v),
            Err(_) => {
                let a: Array<_, V> =
                    Array::try_from(Map::from_map_data(data).map_err(map_err(name))?).map_err(map_err(name))?;
                a.iter().map(|v| v.map_err(map_err(name))).collect()
            }
        }
    }

    /// Occupied PEERS slots.
    pub fn peers(&self) -> Result<Vec<(u32, PeerEntry)>> {
        let all: Vec<PeerEntry> = self.array_values(names::PEERS)?;
        Ok(all
            .into_iter()
            .enumerate()
            .filter(|(_, e)| e.flags & PEER_LIVE != 0 || e.node_id != [0; 32])
            .map(|(slot, e)| (slot as u32, e))
            .collect())
    }

    /// The live generation's leaves with the number of buckets that reach each.
    pub fn routes(&self) -> Result<(u32, Vec<RouteLeaf>)> {
        let cfg = self.config()?;
        if cfg.route_gen >= names::ROUTE_GENERATIONS {
            return Err(DataplaneError::Pinned {
                dir: self.dir.clone(),
                reason: format!("CONFIG.route_gen is {}: these pins come from another version", cfg.route_gen),
            });
        }
        let peers: std::collections::HashMap<u32, PeerEntry> = self.peers()?.into_iter().collect();
        let routes: Vec<u32> = self.array_values(names::ROUTES)?;
        let trie: Vec<TrieNode> = self.array_values(names::ROUTE_TRIE)?;
        let base = (cfg.route_gen * ROUTE_BUCKETS) as usize;
        let buckets = routes.get(base..base + ROUTE_BUCKETS as usize).ok_or_else(|| DataplaneError::Pinned {
            dir: self.dir.clone(),
            reason: "ROUTES is smaller than this version's: these pins come from another version".into(),
        })?;
        let trie_base = cfg.route_gen * cfg.trie_capacity;
        let counts = route_build::leaf_buckets(buckets, |r| trie.get((trie_base + r) as usize).copied());
        let leaves = counts
            .into_iter()
            .map(|(slot, buckets)| {
                if slot == names::SELF_SLOT {
                    RouteLeaf { slot: None, node_id: hex::encode(cfg.node_id), buckets }
                } else {
                    let id = peers.get(&slot).map(|p| hex::encode(p.node_id)).unwrap_or_default();
                    RouteLeaf { slot: Some(slot), node_id: id, buckets }
                }
            })
            .collect();
        Ok((cfg.route_gen, leaves))
    }

    /// BLOCKED's node IDs and BLOCKED_NETS's prefixes.
    pub fn blocked(&self) -> Result<Vec<(BlockTarget, BlockEntry)>> {
        let mut out = Vec::new();
        let h: BpfHashMap<_, [u8; 32], BlockEntry> =
            BpfHashMap::try_from(self.map(names::BLOCKED)?).map_err(map_err(names::BLOCKED))?;
        for kv in h.iter() {
            let (id, e) = kv.map_err(map_err(names::BLOCKED))?;
            out.push((BlockTarget::Node(id), e));
        }
        let t: LpmTrie<_, [u8; 16], BlockEntry> =
            LpmTrie::try_from(self.map(names::BLOCKED_NETS)?).map_err(map_err(names::BLOCKED_NETS))?;
        for kv in t.iter() {
            let (k, e) = kv.map_err(map_err(names::BLOCKED_NETS))?;
            out.push((BlockTarget::Net { addr: k.data(), prefix_len: k.prefix_len() }, e));
        }
        Ok(out)
    }
}

pub fn is_bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf ")))
        .unwrap_or(false)
}
