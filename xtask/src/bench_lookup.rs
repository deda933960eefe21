//! `cargo xtask bench lookup`: on the 12-node Kademlia testbed, the RTT of
//! `lookup` over the kernel path (a LOOKUP routed hop by hop through the XDP
//! datapaths, answered by the key's owner) against Kademlia's iterative get
//! of the same keys from the same nodes, measured side by side in one run.
//!
//! Both RTTs are measured inside the asking daemon (request sent → answer
//! in hand), so neither includes the control socket. Each sample picks a
//! stored key and a random node that is not the key's owner; the two
//! requests alternate which goes first. The Kademlia get ignores the
//! asker's own store (`"network": true`), so it always crosses the network.

use anyhow::{Result, bail};
use p2p_common::id::NodeId;
use p2p_tests::node::Controller;
use p2p_tests::testbed::Testbed;
use p2p_tests::traffic::closest;
use p2p_tests::util::{Rng, json_u64};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::bench::{BenchArgs, INTERRUPTED, check_interrupt};
use crate::util;

struct Dist {
    median: u64,
    p99: u64,
    mean: f64,
    min: u64,
    max: u64,
}

fn dist(mut v: Vec<u64>) -> Dist {
    v.sort_unstable();
    let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    Dist {
        median: q(0.5),
        p99: q(0.99),
        mean: v.iter().sum::<u64>() as f64 / v.len() as f64,
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn json_of(d: &Dist) -> Value {
    json!({"median_us": d.median, "p99_us": d.p99, "mean_us": d.mean, "min_us": d.min, "max_us": d.max})
}

pub fn run(args: &BenchArgs, bin: std::path::PathBuf) -> Result<Value> {
    if !p2p_tests::env::privileged() {
        bail!("the lookup benchmark needs root (or CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN)");
    }
    p2p_tests::env::cleanup_stale();
    let n = args.nodes as usize;
    let k = args.kbucket_size.to_string();
    println!("==> {n}-node Kademlia testbed (k = {k}), release build");
    let tb = Testbed::start(&Controller::at(bin), n, &["--kbucket-size", &k], true, false)?;
    let started = Instant::now();
    tb.wait_converged(Duration::from_secs(60))?;
    println!("==> routing tables converged in {:.1} s", started.elapsed().as_secs_f64());
    let ids: Vec<NodeId> = tb.ids();
    let mut rng = Rng::from_clock();

    let keys: Vec<String> = (0..args.records).map(|i| format!("bench-{i}-{}", rng.next_u64() % 1_000_000)).collect();
    for (i, key) in keys.iter().enumerate() {
        check_interrupt()?;
        let v = tb.node(i % n).request(&json!({"cmd": "dht_put", "key": key, "value": format!("value of {key}")}))?;
        if v["ok"].as_bool() != Some(true) {
            bail!("dht put {key}: {}", v["error"]);
        }
    }
    println!("==> {} records put; {} samples of lookup (kernel path) and Kademlia get", keys.len(), args.lookups);

    let (mut overlay, mut kad) = (Vec::new(), Vec::new());
    let mut hops: BTreeMap<u64, u64> = BTreeMap::new();
    for s in 0..args.lookups {
        check_interrupt()?;
        let key = &keys[rng.below(keys.len())];
        let owner = closest(&NodeId::from_record_key(key.as_bytes()), &ids);
        let origin = (owner + 1 + rng.below(n - 1)) % n;
        let node = tb.node(origin);
        let ask_overlay = || -> Result<Value> {
            let v = node.request(&json!({"cmd": "lookup", "key": key, "fallback": false, "timeout_ms": 2000}))?;
            if v["ok"].as_bool() != Some(true) || v["path"] != "overlay" || v["found"] != true {
                bail!("lookup {key} from h{}: {v}", origin + 1);
            }
            Ok(v)
        };
        let ask_kad = || -> Result<Value> {
            let v = node.request(&json!({"cmd": "dht_get", "key": key, "network": true, "timeout_ms": 5000}))?;
            if v["ok"].as_bool() != Some(true) || v["found"] != true {
                bail!("Kademlia get {key} from h{}: {v}", origin + 1);
            }
            Ok(v)
        };
        let (o, g) = if s % 2 == 0 {
            let o = ask_overlay()?;
            (o, ask_kad()?)
        } else {
            let g = ask_kad()?;
            (ask_overlay()?, g)
        };
        overlay.push(json_u64(&o, "rtt_us"));
        kad.push(json_u64(&g, "rtt_us"));
        *hops.entry(json_u64(&o, "hops")).or_default() += 1;
    }
    let (o, g) = (dist(overlay), dist(kad));
    let ratio_median = g.median as f64 / o.median.max(1) as f64;
    let ratio_p99 = g.p99 as f64 / o.p99.max(1) as f64;
    println!("\n{:<34} {:>10} {:>10} {:>10}", "path", "median us", "p99 us", "mean us");
    println!("{:<34} {:>10} {:>10} {:>10.0}", "lookup, kernel path (XDP)", o.median, o.p99, o.mean);
    println!("{:<34} {:>10} {:>10} {:>10.0}", "Kademlia iterative get", g.median, g.p99, g.mean);
    println!("ratio (Kademlia / kernel path): median {ratio_median:.1}x, p99 {ratio_p99:.1}x (target: median >= 5x)");
    println!("kernel-path hop counts: {hops:?}");
    Ok(json!({
        "benchmark": "lookup",
        "nodes": n,
        "kbucket_size": args.kbucket_size,
        "records": keys.len(),
        "samples": args.lookups,
        "kernel_path": json_of(&o),
        "kademlia_get": json_of(&g),
        "ratio_median": ratio_median,
        "ratio_p99": ratio_p99,
        "target_ratio_median": 5.0,
        "hops": hops,
        "command": "cargo xtask bench lookup",
        "kernel": util::stdout_of("uname", ["-r"]).unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "interrupted": INTERRUPTED.load(Ordering::SeqCst),
    }))
}
