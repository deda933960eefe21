//! `cargo xtask sim`: the datapath's routing-table builder and next-hop walk
//! (`p2p_common::route_build`, the very code that fills ROUTES/ROUTE_TRIE)
//! over N simulated nodes with Kademlia-shaped tables (k-buckets, k=20).
//!
//! Tables are generated per node on demand from the sorted ID list (bucket i
//! of a node is a contiguous range of that list), so 1M nodes fit in memory.
//! Churn: a fraction of nodes is dead. "stale" routes with tables that still
//! list them (before map sync); "synced" rebuilds tables without them, as
//! map sync does within 100 ms. A lookup succeeds when it ends at the
//! XOR-closest live node to the key.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Result, bail};
use p2p_common::maps::{REF_LEAF, SELF_REF};
use p2p_common::route_build::{self, RouteTable};

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Fraction of nodes that died (0.0–0.9).
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Lookups to run (random source, random key).
    #[arg(long, default_value_t = 2_000)]
    pub lookups: usize,
    /// Bucket size k.
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn id(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for c in out.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_be_bytes());
        }
        out
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn bit(id: &[u8; 32], i: usize) -> u8 {
    (id[i / 8] >> (7 - i % 8)) & 1
}

struct World {
    ids: Vec<[u8; 32]>, // sorted
    dead: Vec<bool>,
    /// live_before[i] = live nodes among ids[..i].
    live_before: Vec<usize>,
    k: usize,
    seed: u64,
}

impl World {
    /// Index range of the IDs whose first `len` bits equal `key`'s.
    fn prefix_range(&self, key: &[u8; 32], len: usize) -> (usize, usize) {
        let (mut lo_key, mut hi_key) = (*key, *key);
        for i in len..256 {
            let m = 0x80u8 >> (i % 8);
            lo_key[i / 8] &= !m;
            hi_key[i / 8] |= m;
        }
        (self.ids.partition_point(|x| *x < lo_key), self.ids.partition_point(|x| *x <= hi_key))
    }

    /// Kademlia-shaped peer set of `node`: up to k from each bucket (the IDs
    /// sharing exactly `len` leading bits with it). `synced` leaves dead
    /// nodes out, as map sync does.
    fn peers(&self, node: usize, synced: bool) -> Vec<usize> {
        let mut rng = Rng((self.seed ^ (node as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
        let me = self.ids[node];
        let mut out = Vec::new();
        for len in 0..256 {
            let mut flipped = me;
            flipped[len / 8] ^= 0x80 >> (len % 8);
            let (lo, hi) = self.prefix_range(&flipped, len + 1);
            let mut cand: Vec<usize> = (lo..hi).filter(|&i| !(synced && self.dead[i])).collect();
            if cand.len() > self.k {
                for i in 0..self.k {
                    let j = i + rng.below(cand.len() - i);
                    cand.swap(i, j);
                }
                cand.truncate(self.k);
            }
            out.extend(cand);
            let (olo, ohi) = self.prefix_range(&me, len + 1);
            if ohi - olo <= 1 {
                break; // nobody else shares a longer prefix: deeper buckets are empty
            }
        }
        out
    }

    fn table(&self, node: usize, synced: bool) -> (RouteTable, Vec<usize>) {
        let peers = self.peers(node, synced);
        let slots: Vec<(u32, [u8; 32])> = peers.iter().enumerate().map(|(s, &i)| (s as u32, self.ids[i])).collect();
        let t = route_build::build(&self.ids[node], &slots).expect("random IDs route");
        (t, peers)
    }

    fn live_in(&self, lo: usize, hi: usize) -> usize {
        self.live_before[hi] - self.live_before[lo]
    }

    /// XOR-closest live node: descend the sorted list bit by bit, keeping
    /// the key's side whenever it still holds a live node.
    fn closest_live(&self, key: &[u8; 32]) -> usize {
        let (mut lo, mut hi) = (0, self.ids.len());
        for b in 0..256 {
            if hi - lo <= 1 {
                break;
            }
            let mid = lo + self.ids[lo..hi].partition_point(|x| bit(x, b) == 0);
            let (same, other) = if bit(key, b) == 0 { ((lo, mid), (mid, hi)) } else { ((mid, hi), (lo, mid)) };
            (lo, hi) = if self.live_in(same.0, same.1) > 0 { same } else { other };
        }
        (lo..hi).find(|&i| !self.dead[i]).expect("some node is alive")
    }
}

#[derive(serde::Serialize)]
struct Report {
    nodes: usize,
    churn: f64,
    mode: &'static str,
    lookups: usize,
    success_rate: f64,
    hops_mean: f64,
    hops_p50: usize,
    hops_p99: usize,
    hops_max: usize,
    hop_histogram: Vec<usize>,
    table_peers_mean: f64,
    table_trie_nodes_mean: f64,
    seconds: f64,
}

pub fn sim(args: SimArgs) -> Result<()> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if !(0.0..=0.9).contains(&args.churn) {
        bail!("--churn is the fraction of dead nodes, 0.0 to 0.9");
    }
    let mut rng = Rng(args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let t0 = Instant::now();
    let mut ids: Vec<[u8; 32]> = (0..args.nodes).map(|_| rng.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    let dead: Vec<bool> = (0..ids.len()).map(|_| (rng.next() as f64 / u64::MAX as f64) < args.churn).collect();
    let mut live_before = Vec::with_capacity(ids.len() + 1);
    live_before.push(0);
    for d in &dead {
        live_before.push(live_before.last().unwrap() + usize::from(!d));
    }
    let world = World { ids, dead, live_before, k: args.k, seed: args.seed };
    eprintln!("sim: {} node IDs in {:.1}s", world.ids.len(), t0.elapsed().as_secs_f64());
    let modes: &[(&str, bool)] =
        if args.churn > 0.0 { &[("stale", false), ("synced", true)] } else { &[("static", true)] };
    let mut reports = Vec::new();
    for &(mode, synced) in modes {
        let t = Instant::now();
        let mut cache: HashMap<usize, (RouteTable, Vec<usize>)> = HashMap::new();
        let mut hops_list = Vec::with_capacity(args.lookups);
        let mut ok = 0usize;
        let mut rng = Rng(args.seed ^ 0xABCD_EF01 | 1);
        for n in 0..args.lookups {
            let key = rng.id();
            let mut cur = loop {
                let c = rng.below(world.ids.len());
                if !world.dead[c] {
                    break c;
                }
            };
            let target = world.closest_live(&key);
            let mut hops = 0usize;
            let success = loop {
                if world.dead[cur] {
                    break false; // forwarded to a node that is gone
                }
                let (table, peers) = cache.entry(cur).or_insert_with(|| world.table(cur, synced));
                let next = table.next_hop(&key).expect("walk ends at a leaf");
                if next == SELF_REF {
                    break cur == target;
                }
                cur = peers[(next & !REF_LEAF) as usize];
                hops += 1;
                if hops > 64 {
                    break false;
                }
            };
            if success {
                ok += 1;
                hops_list.push(hops);
            }
            if cache.len() > 20_000 {
                cache.clear();
            }
            if n > 0 && n % 500 == 0 {
                eprintln!("sim: {mode}: {n}/{} lookups", args.lookups);
            }
        }
        // Table sizes over a sample of nodes.
        let sample: Vec<usize> = (0..200.min(world.ids.len())).map(|_| rng.below(world.ids.len())).collect();
        let (mut peers_sum, mut nodes_sum) = (0usize, 0usize);
        for &s in &sample {
            let (t, p) = world.table(s, synced);
            peers_sum += p.len();
            nodes_sum += t.nodes.len();
        }
        hops_list.sort_unstable();
        let max = hops_list.last().copied().unwrap_or(0);
        let mut hist = vec![0usize; max + 1];
        for &h in &hops_list {
            hist[h] += 1;
        }
        let pct = |p: f64| hops_list.get(((hops_list.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0);
        reports.push(Report {
            nodes: world.ids.len(),
            churn: args.churn,
            mode,
            lookups: args.lookups,
            success_rate: ok as f64 / args.lookups as f64,
            hops_mean: hops_list.iter().sum::<usize>() as f64 / hops_list.len().max(1) as f64,
            hops_p50: pct(0.5),
            hops_p99: pct(0.99),
            hops_max: max,
            hop_histogram: hist,
            table_peers_mean: peers_sum as f64 / sample.len() as f64,
            table_trie_nodes_mean: nodes_sum as f64 / sample.len() as f64,
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string(&reports)?);
    } else {
        println!(
            "{:>9} {:>6} {:>7} {:>8} {:>8} {:>5} {:>5} {:>5} {:>8}  hop histogram",
            "nodes", "churn", "mode", "success", "hops", "p50", "p99", "max", "peers"
        );
        for r in &reports {
            println!(
                "{:>9} {:>6.2} {:>7} {:>7.2}% {:>8.2} {:>5} {:>5} {:>5} {:>8.0}  {:?}",
                r.nodes,
                r.churn,
                r.mode,
                r.success_rate * 100.0,
                r.hops_mean,
                r.hops_p50,
                r.hops_p99,
                r.hops_max,
                r.table_peers_mean,
                r.hop_histogram
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_common::route::closer;

    fn world(n: usize, churn: f64) -> World {
        let mut rng = Rng(7);
        let mut ids: Vec<[u8; 32]> = (0..n).map(|_| rng.id()).collect();
        ids.sort_unstable();
        let dead: Vec<bool> = (0..n).map(|_| (rng.next() as f64 / u64::MAX as f64) < churn).collect();
        let mut live_before = vec![0];
        for d in &dead {
            live_before.push(live_before.last().unwrap() + usize::from(!d));
        }
        World { ids, dead, live_before, k: 20, seed: 3 }
    }

    #[test]
    fn closest_live_matches_a_scan() {
        let w = world(3000, 0.3);
        let mut rng = Rng(11);
        for _ in 0..300 {
            let key = rng.id();
            let mut best = None;
            for (i, id) in w.ids.iter().enumerate() {
                if !w.dead[i] && best.is_none_or(|b: usize| closer(&key, id, &w.ids[b])) {
                    best = Some(i);
                }
            }
            assert_eq!(w.closest_live(&key), best.unwrap());
        }
    }

    #[test]
    fn buckets_hold_exactly_the_ids_with_that_shared_prefix() {
        let w = world(2000, 0.0);
        let node = 123;
        let peers = w.peers(node, true);
        let me = w.ids[node];
        let shared = |id: &[u8; 32]| (0..256).find(|&b| bit(id, b) != bit(&me, b)).unwrap();
        let mut per_bucket = [0usize; 256];
        for &p in &peers {
            per_bucket[shared(&w.ids[p])] += 1;
        }
        for (len, &got) in per_bucket.iter().enumerate() {
            let all = w.ids.iter().filter(|id| **id != me && shared(id) == len).count();
            assert_eq!(got, all.min(20), "bucket {len}");
        }
    }

    #[test]
    fn static_tables_always_reach_the_owner_in_few_hops() {
        let w = world(5000, 0.0);
        let mut rng = Rng(5);
        for _ in 0..200 {
            let key = rng.id();
            let mut cur = rng.below(w.ids.len());
            let mut hops = 0;
            loop {
                let (t, peers) = w.table(cur, true);
                let next = t.next_hop(&key).unwrap();
                if next == SELF_REF {
                    break;
                }
                cur = peers[(next & !REF_LEAF) as usize];
                hops += 1;
                assert!(hops <= 14, "too many hops");
            }
            assert_eq!(cur, w.closest_live(&key));
        }
    }
}
