//! `cargo xtask sim`: the datapath's routing-table builder and next-hop walk
//! (`p2p_common::route_build`, the very code that fills ROUTES/ROUTE_TRIE)
//! over N simulated nodes with Kademlia-shaped tables (k-buckets, k=20).
//!
//! Tables are generated per node on demand from the sorted ID list (bucket i
//! of a node is a contiguous range of that list), so 1M nodes fit in memory.
//!
//! Static churn (`--churn F`): a fraction of nodes is dead. "stale" routes
//! with tables that still list them (before map sync); "synced" rebuilds
//! tables without them, as map sync does within 100 ms. A lookup succeeds
//! when it ends at the XOR-closest live node to the key.
//!
//! Churn over time (`--churn-rate R/h --detect S`): N nodes at all times;
//! departures are a Poisson process of rate R·N per hour, each one matched
//! by the arrival of a fresh node, so the ID list holds every node present at
//! some time of the window with its `[join, death)` times. At time t a table
//! lists the nodes that joined at least `--join-delay` ago and are alive or
//! died less than `--detect` ago (dead, not yet detected). A lookup at a
//! random time walks the tables of that instant; it fails when forwarded to
//! a dead node, and succeeds when it ends at the XOR-closest live node that
//! the tables list.

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
    /// Churn over time: the fraction of the nodes replaced per hour, as
    /// `PERCENT%/h` (`20%/h`) or `FRACTION/h` (`0.2/h`). Not with --churn.
    #[arg(long, value_name = "RATE", value_parser = parse_rate, conflicts_with = "churn", requires = "detect")]
    pub churn_rate: Option<f64>,
    /// With --churn-rate: seconds a dead node stays in the tables that list
    /// it before the churn detector removes it.
    #[arg(long, value_name = "SECONDS", requires = "churn_rate")]
    pub detect: Option<f64>,
    /// With --churn-rate: seconds before a node that joined appears in
    /// others' tables.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0, requires = "churn_rate")]
    pub join_delay: f64,
    /// With --churn-rate: simulated seconds; each lookup happens at a
    /// uniformly random time in them.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600.0, requires = "churn_rate")]
    pub window: f64,
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

/// `20%/h` or `0.2/h` → 0.2 (a fraction of the nodes per hour).
fn parse_rate(s: &str) -> Result<f64, String> {
    let bad = || {
        format!(
            "invalid churn rate {s:?}: give a fraction of the nodes per hour as PERCENT%/h (e.g. 20%/h) or FRACTION/h (e.g. 0.2/h)"
        )
    };
    let body = s.trim().strip_suffix("/h").ok_or_else(bad)?;
    let rate = match body.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
        None => body.trim().parse::<f64>().map_err(|_| bad())?,
    };
    if !rate.is_finite() || rate < 0.0 {
        return Err(bad());
    }
    Ok(rate)
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
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn bit(id: &[u8; 32], i: usize) -> u8 {
    (id[i / 8] >> (7 - i % 8)) & 1
}

/// Keeps a uniformly random `k` of `cand` (all of them if there are no more).
fn keep_random(cand: &mut Vec<usize>, k: usize, rng: &mut Rng) {
    if cand.len() > k {
        for i in 0..k {
            let j = i + rng.below(cand.len() - i);
            cand.swap(i, j);
        }
        cand.truncate(k);
    }
}

/// The sorted ID list and what follows from it alone: bucket ranges, route
/// tables for a given peer set, XOR-closest searches.
struct World {
    ids: Vec<[u8; 32]>, // sorted
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

    /// `node`'s k-buckets as index ranges: entry `len` holds the IDs sharing
    /// exactly `len` leading bits with it; it stops where nobody else shares
    /// a longer prefix (deeper buckets are empty).
    fn buckets(&self, node: usize) -> Vec<(usize, usize)> {
        let me = self.ids[node];
        let mut out = Vec::new();
        for len in 0..256 {
            let mut flipped = me;
            flipped[len / 8] ^= 0x80 >> (len % 8);
            out.push(self.prefix_range(&flipped, len + 1));
            let (olo, ohi) = self.prefix_range(&me, len + 1);
            if ohi - olo <= 1 {
                break;
            }
        }
        out
    }

    /// The per-node stream that picks which k of a bucket's candidates a
    /// table holds.
    fn rng_for(&self, node: usize) -> Rng {
        Rng((self.seed ^ (node as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn table(&self, node: usize, peers: Vec<usize>) -> (RouteTable, Vec<usize>) {
        let slots: Vec<(u32, [u8; 32])> = peers.iter().enumerate().map(|(s, &i)| (s as u32, self.ids[i])).collect();
        let t = route_build::build(&self.ids[node], &slots).expect("random IDs route");
        (t, peers)
    }

    /// XOR-closest node to `key` among those `keep` accepts: descend the
    /// sorted list bit by bit, keeping the key's side whenever it still holds
    /// an accepted node (a scan that stops at the first one, which is near
    /// the start whenever most nodes are accepted).
    fn closest_where(&self, key: &[u8; 32], keep: impl Fn(usize) -> bool) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.ids.len());
        for b in 0..256 {
            if hi - lo <= 1 {
                break;
            }
            let mid = lo + self.ids[lo..hi].partition_point(|x| bit(x, b) == 0);
            let (same, other) = if bit(key, b) == 0 { ((lo, mid), (mid, hi)) } else { ((mid, hi), (lo, mid)) };
            (lo, hi) = if (same.0..same.1).any(&keep) { same } else { other };
        }
        (lo..hi).find(|&i| keep(i))
    }
}

/// `--churn F`: a fixed set of dead nodes.
struct Static {
    world: World,
    dead: Vec<bool>,
}

impl Static {
    /// Kademlia-shaped peer set of `node`: up to k from each bucket (the IDs
    /// sharing exactly `len` leading bits with it). `synced` leaves dead
    /// nodes out, as map sync does.
    fn peers(&self, node: usize, synced: bool) -> Vec<usize> {
        let mut rng = self.world.rng_for(node);
        let mut out = Vec::new();
        for (lo, hi) in self.world.buckets(node) {
            let mut cand: Vec<usize> = (lo..hi).filter(|&i| !(synced && self.dead[i])).collect();
            keep_random(&mut cand, self.world.k, &mut rng);
            out.extend(cand);
        }
        out
    }

    fn table(&self, node: usize, synced: bool) -> (RouteTable, Vec<usize>) {
        self.world.table(node, self.peers(node, synced))
    }

    /// XOR-closest live node.
    fn closest_live(&self, key: &[u8; 32]) -> usize {
        self.world.closest_where(key, |i| !self.dead[i]).expect("some node is alive")
    }
}

/// `--churn-rate`: every node that is present at some time of
/// `[-warm-up, window)`, with when it joined and died.
struct Timeline {
    world: World,
    /// Join time in seconds; -inf for the nodes present from the start.
    join: Vec<f64>,
    /// Death time in seconds; +inf for the nodes alive at the end.
    death: Vec<f64>,
    nodes: usize,
    detect: f64,
    join_delay: f64,
    window: f64,
}

/// Seconds simulated before the window.
fn warm_up(detect: f64, join_delay: f64) -> f64 {
    detect.max(join_delay).max(60.0)
}

impl Timeline {
    /// N nodes at all times; departures at `rate`·N per hour, each replaced
    /// at once by a fresh node. The process starts a warm-up before 0 (the
    /// tables at t depend on the events since t − max(detect, join-delay)),
    /// so they are in steady state over `[0, window)`. The warm-up is at
    /// least a minute so that runs differing only in detect or join-delay
    /// (up to a minute) see the very same nodes, deaths and lookups.
    fn new(nodes: usize, rate: f64, window: f64, detect: f64, join_delay: f64, k: usize, seed: u64) -> Self {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut rows: Vec<([u8; 32], f64, f64)> =
            (0..nodes).map(|_| (rng.id(), f64::NEG_INFINITY, f64::INFINITY)).collect();
        let mut present: Vec<usize> = (0..nodes).collect();
        let per_second = rate * nodes as f64 / 3600.0;
        if per_second > 0.0 {
            let mut t = -warm_up(detect, join_delay);
            loop {
                t += -(1.0 - rng.unit()).ln() / per_second;
                if t >= window {
                    break;
                }
                let slot = rng.below(nodes);
                rows[present[slot]].2 = t;
                present[slot] = rows.len();
                rows.push((rng.id(), t, f64::INFINITY));
            }
        }
        rows.sort_unstable_by_key(|r| r.0);
        rows.dedup_by(|a, b| a.0 == b.0);
        Timeline {
            world: World { ids: rows.iter().map(|r| r.0).collect(), k, seed },
            join: rows.iter().map(|r| r.1).collect(),
            death: rows.iter().map(|r| r.2).collect(),
            nodes,
            detect,
            join_delay,
            window,
        }
    }

    /// In the network at `t`.
    fn alive(&self, i: usize, t: f64) -> bool {
        self.join[i] <= t && t < self.death[i]
    }

    /// In the tables at `t`: announced, and alive or dead but not detected.
    fn listed(&self, i: usize, t: f64) -> bool {
        self.join[i] + self.join_delay <= t && t < self.death[i] + self.detect
    }

    /// Alive and in the tables at `t`.
    fn visible(&self, i: usize, t: f64) -> bool {
        self.join[i] + self.join_delay <= t && t < self.death[i]
    }

    /// `node`'s table at `t`: up to k of each bucket's listed nodes, chosen
    /// uniformly. Large buckets are sampled by drawing random members (a
    /// full scan of bucket 0 would cost N/2 per table); small ones, or ones
    /// where few members are listed, are scanned.
    fn peers_at(&self, node: usize, t: f64) -> Vec<usize> {
        let k = self.world.k;
        let mut rng = self.world.rng_for(node);
        let mut out = Vec::new();
        for (lo, hi) in self.world.buckets(node) {
            let start = out.len();
            if hi - lo > 4 * k {
                let mut tries = 0;
                while out.len() - start < k && tries < 32 * k {
                    tries += 1;
                    let i = lo + rng.below(hi - lo);
                    if self.listed(i, t) && !out[start..].contains(&i) {
                        out.push(i);
                    }
                }
                if out.len() - start == k {
                    continue;
                }
                out.truncate(start);
            }
            let mut cand: Vec<usize> = (lo..hi).filter(|&i| self.listed(i, t)).collect();
            keep_random(&mut cand, k, &mut rng);
            out.extend(cand);
        }
        out
    }

    fn table_at(&self, node: usize, t: f64) -> (RouteTable, Vec<usize>) {
        self.world.table(node, self.peers_at(node, t))
    }
}

#[derive(Default, Debug)]
struct TimeStats {
    lookups: usize,
    /// Ended at the XOR-closest live node the tables list.
    ok: usize,
    /// Ended at the XOR-closest live node, listed yet or not.
    owner: usize,
    /// Forwarded to a dead node that the tables still listed.
    dead_next_hop: usize,
    /// Ended at a live node that is not the closest listed live node.
    not_closest: usize,
    hop_limit: usize,
    /// Hops of the successful lookups.
    hops: Vec<usize>,
    /// Tables the walks used, their entries, and the dead ones among them.
    tables: usize,
    entries: usize,
    stale_entries: usize,
}

/// `lookups` lookups, each at a uniformly random time of the window, from a
/// random live node for a random key, over the tables of that instant.
fn run_timeline(tl: &Timeline, lookups: usize, seed: u64, progress: bool) -> TimeStats {
    let mut st = TimeStats { lookups, hops: Vec::with_capacity(lookups), ..Default::default() };
    let mut rng = Rng(seed ^ 0x7135_C0DE_0F71_4E00 | 1);
    let n_ids = tl.world.ids.len();
    for n in 0..lookups {
        let t = tl.window * rng.unit();
        let key = rng.id();
        let mut cur = loop {
            let c = rng.below(n_ids);
            if tl.alive(c, t) {
                break c;
            }
        };
        let target = tl.world.closest_where(&key, |i| tl.visible(i, t)).expect("a listed live node");
        let owner = tl.world.closest_where(&key, |i| tl.alive(i, t)).expect("a live node");
        let mut hops = 0usize;
        loop {
            if !tl.alive(cur, t) {
                st.dead_next_hop += 1;
                break;
            }
            let (table, peers) = tl.table_at(cur, t);
            st.tables += 1;
            st.entries += peers.len();
            st.stale_entries += peers.iter().filter(|&&p| !tl.alive(p, t)).count();
            let next = table.next_hop(&key).expect("walk ends at a leaf");
            if next == SELF_REF {
                st.owner += usize::from(cur == owner);
                if cur == target {
                    st.ok += 1;
                    st.hops.push(hops);
                } else {
                    st.not_closest += 1;
                }
                break;
            }
            cur = peers[(next & !REF_LEAF) as usize];
            hops += 1;
            if hops > 64 {
                st.hop_limit += 1;
                break;
            }
        }
        let done = n + 1;
        if progress && done < lookups && done.is_multiple_of((lookups / 10).max(500)) {
            eprintln!("sim: {done}/{lookups} lookups, {} failed", done - st.ok);
        }
    }
    st
}

/// `x` with up to 4 decimals and no trailing zeros.
fn trim(x: f64) -> String {
    let s = format!("{x:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Wilson score interval (95%) for `ok` successes out of `n`.
fn wilson95(ok: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n) = (1.96f64, n as f64);
    let p = ok as f64 / n;
    let denom = 1.0 + z * z / n;
    let center = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// Successful lookups' hop counts: sorted list → (mean, p50, p99, max, histogram).
fn hop_stats(hops: &mut [usize]) -> (f64, usize, usize, usize, Vec<usize>) {
    hops.sort_unstable();
    let max = hops.last().copied().unwrap_or(0);
    let mut hist = vec![0usize; max + 1];
    for &h in hops.iter() {
        hist[h] += 1;
    }
    let pct = |p: f64| hops.get(((hops.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0);
    let mean = hops.iter().sum::<usize>() as f64 / hops.len().max(1) as f64;
    (mean, pct(0.5), pct(0.99), max, hist)
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

#[derive(serde::Serialize)]
struct TimeReport {
    nodes: usize,
    /// Fraction of the nodes replaced per hour.
    churn_rate_per_hour: f64,
    detect_seconds: f64,
    join_delay_seconds: f64,
    window_seconds: f64,
    /// Nodes present at some time of the window (and its warm-up).
    ids: usize,
    lookups: usize,
    success_rate: f64,
    /// Wilson 95% interval of the success rate.
    success_rate_ci95: (f64, f64),
    /// Ended at the XOR-closest live node, including joiners not yet listed.
    owner_rate: f64,
    failed_dead_next_hop: usize,
    failed_not_closest: usize,
    failed_hop_limit: usize,
    hops_mean: f64,
    hops_p50: usize,
    hops_p99: usize,
    hops_max: usize,
    hop_histogram: Vec<usize>,
    table_peers_mean: f64,
    table_trie_nodes_mean: f64,
    /// Dead (not yet detected) share of the entries of the tables walked.
    stale_entry_rate: f64,
    seconds: f64,
}

pub fn sim(args: SimArgs) -> Result<()> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    match args.churn_rate {
        Some(rate) => sim_over_time(&args, rate),
        None => sim_static(&args),
    }
}

fn sim_over_time(args: &SimArgs, rate: f64) -> Result<()> {
    let Some(detect) = args.detect else { bail!("--churn-rate needs --detect SECONDS") };
    if !(detect.is_finite() && detect >= 0.0) {
        bail!("--detect is a delay in seconds, 0 or more");
    }
    if !(args.join_delay.is_finite() && args.join_delay >= 0.0) {
        bail!("--join-delay is a delay in seconds, 0 or more");
    }
    if !(args.window.is_finite() && args.window > 0.0) {
        bail!("--window is a span in seconds, more than 0");
    }
    if args.lookups == 0 {
        bail!("--lookups must be at least 1");
    }
    let expected_ids = args.nodes as f64 * (1.0 + rate * (args.window + warm_up(detect, args.join_delay)) / 3600.0);
    if expected_ids > 50e6 {
        bail!("{expected_ids:.0} node IDs over the window (nodes × (1 + rate × window)): shorten --window");
    }
    let t0 = Instant::now();
    let tl = Timeline::new(args.nodes, rate, args.window, detect, args.join_delay, args.k, args.seed);
    eprintln!("sim: {} node IDs over the window in {:.1}s", tl.world.ids.len(), t0.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut st = run_timeline(&tl, args.lookups, args.seed, !args.json);
    // Table sizes over a sample of live nodes at random times.
    let mut rng = Rng(args.seed ^ 0x5A3D_1E00 | 1);
    let (mut peers_sum, mut nodes_sum, samples) = (0usize, 0usize, 200);
    for _ in 0..samples {
        let when = tl.window * rng.unit();
        let node = loop {
            let c = rng.below(tl.world.ids.len());
            if tl.alive(c, when) {
                break c;
            }
        };
        let (table, peers) = tl.table_at(node, when);
        peers_sum += peers.len();
        nodes_sum += table.nodes.len();
    }
    let (hops_mean, hops_p50, hops_p99, hops_max, hop_histogram) = hop_stats(&mut st.hops);
    let r = TimeReport {
        nodes: tl.nodes,
        churn_rate_per_hour: rate,
        detect_seconds: detect,
        join_delay_seconds: args.join_delay,
        window_seconds: args.window,
        ids: tl.world.ids.len(),
        lookups: st.lookups,
        success_rate: st.ok as f64 / st.lookups as f64,
        success_rate_ci95: wilson95(st.ok, st.lookups),
        owner_rate: st.owner as f64 / st.lookups as f64,
        failed_dead_next_hop: st.dead_next_hop,
        failed_not_closest: st.not_closest,
        failed_hop_limit: st.hop_limit,
        hops_mean,
        hops_p50,
        hops_p99,
        hops_max,
        hop_histogram,
        table_peers_mean: peers_sum as f64 / samples as f64,
        table_trie_nodes_mean: nodes_sum as f64 / samples as f64,
        stale_entry_rate: st.stale_entries as f64 / st.entries.max(1) as f64,
        seconds: t.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&[&r])?);
    } else {
        println!(
            "{:>9} {:>8} {:>7} {:>6} {:>9} {:>8} {:>17} {:>8} {:>8} {:>8} {:>5} {:>4} {:>4} {:>4} {:>6} {:>7}  hop histogram",
            "nodes",
            "rate",
            "detect",
            "join",
            "lookups",
            "success",
            "95% interval",
            "owner",
            "dead-hop",
            "non-clst",
            "hops",
            "p50",
            "p99",
            "max",
            "peers",
            "stale"
        );
        println!(
            "{:>9} {:>8} {:>6.2}s {:>5.1}s {:>9} {:>7.3}% {:>7.3}%–{:>7.3}% {:>7.3}% {:>8} {:>8} {:>5.2} {:>4} {:>4} {:>4} {:>6.0} {:>6.4}%  {:?}",
            r.nodes,
            format!("{}%/h", trim(r.churn_rate_per_hour * 100.0)),
            r.detect_seconds,
            r.join_delay_seconds,
            r.lookups,
            r.success_rate * 100.0,
            r.success_rate_ci95.0 * 100.0,
            r.success_rate_ci95.1 * 100.0,
            r.owner_rate * 100.0,
            r.failed_dead_next_hop,
            r.failed_not_closest + r.failed_hop_limit,
            r.hops_mean,
            r.hops_p50,
            r.hops_p99,
            r.hops_max,
            r.table_peers_mean,
            r.stale_entry_rate * 100.0,
            r.hop_histogram
        );
    }
    Ok(())
}

fn sim_static(args: &SimArgs) -> Result<()> {
    if !(0.0..=0.9).contains(&args.churn) {
        bail!("--churn is the fraction of dead nodes, 0.0 to 0.9");
    }
    let mut rng = Rng(args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let t0 = Instant::now();
    let mut ids: Vec<[u8; 32]> = (0..args.nodes).map(|_| rng.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    let dead: Vec<bool> = (0..ids.len()).map(|_| (rng.next() as f64 / u64::MAX as f64) < args.churn).collect();
    let sw = Static { world: World { ids, k: args.k, seed: args.seed }, dead };
    let world = &sw.world;
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
                if !sw.dead[c] {
                    break c;
                }
            };
            let target = sw.closest_live(&key);
            let mut hops = 0usize;
            let success = loop {
                if sw.dead[cur] {
                    break false; // forwarded to a node that is gone
                }
                let (table, peers) = cache.entry(cur).or_insert_with(|| sw.table(cur, synced));
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
            let (t, p) = sw.table(s, synced);
            peers_sum += p.len();
            nodes_sum += t.nodes.len();
        }
        let (hops_mean, hops_p50, hops_p99, hops_max, hop_histogram) = hop_stats(&mut hops_list);
        reports.push(Report {
            nodes: world.ids.len(),
            churn: args.churn,
            mode,
            lookups: args.lookups,
            success_rate: ok as f64 / args.lookups as f64,
            hops_mean,
            hops_p50,
            hops_p99,
            hops_max,
            hop_histogram,
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
    use clap::Parser;
    use p2p_common::route::closer;

    fn world(n: usize, churn: f64) -> Static {
        let mut rng = Rng(7);
        let mut ids: Vec<[u8; 32]> = (0..n).map(|_| rng.id()).collect();
        ids.sort_unstable();
        let dead: Vec<bool> = (0..n).map(|_| (rng.next() as f64 / u64::MAX as f64) < churn).collect();
        Static { world: World { ids, k: 20, seed: 3 }, dead }
    }

    #[test]
    fn closest_live_matches_a_scan() {
        let w = world(3000, 0.3);
        let mut rng = Rng(11);
        for _ in 0..300 {
            let key = rng.id();
            let mut best = None;
            for (i, id) in w.world.ids.iter().enumerate() {
                if !w.dead[i] && best.is_none_or(|b: usize| closer(&key, id, &w.world.ids[b])) {
                    best = Some(i);
                }
            }
            assert_eq!(w.closest_live(&key), best.unwrap());
        }
    }

    #[test]
    fn closest_where_matches_a_scan_for_a_sparse_set() {
        // 5% accepted: the descent often finds the key's side empty.
        let w = world(3000, 0.0);
        let keep = |i: usize| (i.wrapping_mul(2_654_435_761) >> 7).is_multiple_of(20);
        let mut rng = Rng(13);
        for _ in 0..300 {
            let key = rng.id();
            let best = (0..w.world.ids.len())
                .filter(|&i| keep(i))
                .reduce(|b, i| if closer(&key, &w.world.ids[i], &w.world.ids[b]) { i } else { b });
            assert_eq!(w.world.closest_where(&key, keep), best);
        }
        assert_eq!(w.world.closest_where(&[0; 32], |_| false), None);
    }

    #[test]
    fn buckets_hold_exactly_the_ids_with_that_shared_prefix() {
        let w = world(2000, 0.0);
        let node = 123;
        let peers = w.peers(node, true);
        let me = w.world.ids[node];
        let shared = |id: &[u8; 32]| (0..256).find(|&b| bit(id, b) != bit(&me, b)).unwrap();
        let mut per_bucket = [0usize; 256];
        for &p in &peers {
            per_bucket[shared(&w.world.ids[p])] += 1;
        }
        for (len, &got) in per_bucket.iter().enumerate() {
            let all = w.world.ids.iter().filter(|id| **id != me && shared(id) == len).count();
            assert_eq!(got, all.min(20), "bucket {len}");
        }
    }

    #[test]
    fn static_tables_always_reach_the_owner_in_few_hops() {
        let w = world(5000, 0.0);
        let mut rng = Rng(5);
        for _ in 0..200 {
            let key = rng.id();
            let mut cur = rng.below(w.world.ids.len());
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

    #[test]
    fn rate_parser_takes_percent_or_fraction_per_hour_only() {
        assert_eq!(parse_rate("20%/h"), Ok(0.2));
        assert_eq!(parse_rate("0.2/h"), Ok(0.2));
        assert_eq!(parse_rate("150%/h"), Ok(1.5));
        assert_eq!(parse_rate("0/h"), Ok(0.0));
        for bad in ["20%", "0.2", "-1/h", "-5%/h", "abc", "", "/h", "%/h", "20%/s", "inf/h", "NaN/h", "20/h%"] {
            let err = parse_rate(bad).expect_err(bad);
            assert!(err.contains("20%/h") && err.contains("0.2/h"), "{bad}: {err}");
        }
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn flags_of_the_two_churn_models_do_not_mix() {
        let parse = |a: &str| Cli::try_parse_from(std::iter::once("sim").chain(a.split_whitespace()));
        let ok = parse("--churn-rate 20%/h --detect 0.8").unwrap().sim;
        assert_eq!((ok.churn_rate, ok.detect, ok.join_delay, ok.window), (Some(0.2), Some(0.8), 2.0, 3600.0));
        let old = parse("--nodes 1000 --churn 0.1").unwrap().sim;
        assert_eq!((old.churn, old.churn_rate, old.detect), (0.1, None, None));
        for bad in [
            "--churn 0.1 --churn-rate 20%/h --detect 0.8",
            "--churn-rate 20%/h",
            "--detect 0.8",
            "--join-delay 1",
            "--window 60",
            "--churn-rate 20% --detect 0.8",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    /// 2,000 nodes over 10 minutes at 100%/h: about 400 replaced.
    fn timeline(detect: f64, join_delay: f64) -> Timeline {
        Timeline::new(2000, 1.0, 600.0, detect, join_delay, 20, 9)
    }

    #[test]
    fn timeline_keeps_n_alive_and_replaces_at_the_rate() {
        let tl = timeline(5.0, 2.0);
        let mut rng = Rng(17);
        for _ in 0..50 {
            let t = tl.window * rng.unit();
            assert_eq!((0..tl.world.ids.len()).filter(|&i| tl.alive(i, t)).count(), 2000);
        }
        // Poisson: mean 2000 × (600 + 60) / 3600, standard deviation ~19.
        let deaths = tl.death.iter().filter(|d| d.is_finite()).count() as f64;
        let expected = 2000.0 * 660.0 / 3600.0;
        assert!((deaths - expected).abs() < 5.0 * expected.sqrt(), "{deaths} deaths, {expected} expected");
        assert_eq!(tl.world.ids.len() as f64, 2000.0 + deaths);
        assert!(tl.world.ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn runs_differing_in_detect_share_their_churn() {
        let (a, b) = (timeline(0.8, 2.0), timeline(30.0, 0.0));
        assert_eq!((a.world.ids, a.join, a.death), (b.world.ids, b.join, b.death));
    }

    #[test]
    fn timeline_tables_hold_k_listed_nodes_per_bucket() {
        // At 300%/h with 20 minutes of detection, half the listed nodes are
        // dead and most IDs unlisted: the sampler must skip the unlisted.
        let tl = Timeline::new(1000, 3.0, 1200.0, 1200.0, 2.0, 20, 4);
        let t = 1199.0;
        for node in [0, 17, 400, 999] {
            let node = (node..).find(|&i| tl.alive(i, t)).unwrap();
            let peers = tl.peers_at(node, t);
            let me = tl.world.ids[node];
            let shared = |id: &[u8; 32]| (0..256).find(|&b| bit(id, b) != bit(&me, b)).unwrap();
            let mut per_bucket = [0usize; 256];
            for &p in &peers {
                assert!(tl.listed(p, t), "unlisted peer");
                per_bucket[shared(&tl.world.ids[p])] += 1;
            }
            let mut sorted = peers.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), peers.len(), "a peer twice");
            for (len, &got) in per_bucket.iter().enumerate() {
                let here = (0..tl.world.ids.len())
                    .filter(|&i| i != node && tl.listed(i, t) && shared(&tl.world.ids[i]) == len)
                    .count();
                assert_eq!(got, here.min(20), "bucket {len}");
            }
        }
    }

    #[test]
    fn instant_detection_and_joins_lose_no_lookup() {
        let tl = timeline(0.0, 0.0);
        let st = run_timeline(&tl, 1500, 1, false);
        assert_eq!(st.ok, 1500, "{st:?}");
        assert_eq!(st.owner, 1500);
        assert_eq!(st.stale_entries, 0);
        assert!(st.hops.iter().all(|&h| h <= 10));
    }

    #[test]
    fn slow_detection_drops_lookups_at_dead_next_hops() {
        // Dead nodes stay listed for 5 minutes: ~15% of the entries are dead.
        let tl = timeline(300.0, 0.0);
        let st = run_timeline(&tl, 1000, 1, false);
        assert!(st.ok < 1000 && st.ok > 100, "{}", st.ok);
        assert_eq!(st.dead_next_hop, 1000 - st.ok);
        assert_eq!((st.not_closest, st.hop_limit), (0, 0));
        assert_eq!(st.owner, st.ok, "without join delay listed and live are the same");
    }

    #[test]
    fn dead_entries_are_the_rate_times_the_detection_delay() {
        // 100%/h for 360 s: dead-listed nodes are 0.1 N next to N live ones.
        let tl = timeline(360.0, 0.0);
        let st = run_timeline(&tl, 300, 2, false);
        let stale = st.stale_entries as f64 / st.entries as f64;
        let expected = 0.1 / 1.1;
        assert!((stale - expected).abs() < 0.015, "{stale} vs {expected}");
    }

    #[test]
    fn join_delay_hides_joiners_from_lookups_but_loses_none() {
        // Joiners are listed only after 5 minutes: ~8% of the live nodes are
        // unlisted, so some keys' owner is not where the lookup ends.
        let tl = timeline(0.0, 300.0);
        let st = run_timeline(&tl, 1000, 3, false);
        assert_eq!(st.dead_next_hop, 0);
        assert!(st.ok >= 995, "{st:?}"); // only an unlisted source can miss
        assert!(st.owner < st.ok, "{} owners of {} ok", st.owner, st.ok);
    }

    #[test]
    fn rates_print_without_float_noise() {
        assert_eq!(trim(0.07 * 100.0), "7");
        assert_eq!(trim(20.0), "20");
        assert_eq!(trim(12.5), "12.5");
    }

    #[test]
    fn wilson_interval_brackets_the_rate() {
        let (lo, hi) = wilson95(9990, 10_000);
        assert!(lo < 0.999 && 0.999 < hi && hi < 1.0 && lo > 0.998, "{lo} {hi}");
        assert_eq!(wilson95(10, 10).1, 1.0);
    }
}
