//! `cargo xtask run`: setup, release build, then
//! - without arguments: a Kademlia testbed (DESIGN.md "Test topologies",
//!   LAN) of 8 nodes in namespaces on one bridge, node 1 first and the
//!   others bootstrapping from it, no peer files; DHT records put on random
//!   nodes, a steady bounded stream of lookups from random nodes, and a live
//!   per-node view (peers, routes, fwd / local / drops per second, lookups
//!   answered) until Ctrl-C; then everything is removed (also on error);
//! - with `-- ARGS…`: `p2p-controller run ARGS…` on this box (exec).

use crate::say;
use crate::setup;
use crate::util::{cargo, run_inherit, said, target_dir};
use anyhow::{Context, Result, bail};
use clap::Args;
use p2p_common::counters::COUNTER_NAMES;
use p2p_tests::node::{Controller, packets};
use p2p_tests::testbed::Testbed;
use p2p_tests::util::{Rng, json_u64};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct RunArgs {
    /// Testbed: number of nodes on the bridge (2..=32).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(2..=32))]
    pub nodes: u8,
    /// Testbed: lookups per second, all nodes together (bounded: 1..=2000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub rate: u32,
    /// Testbed: records put into the DHT at start.
    #[arg(long, default_value_t = 32)]
    pub records: u32,
    /// Testbed: Kademlia bucket size. Small buckets make lookups cross
    /// transit nodes on a small testbed; 20 is libp2p's default.
    #[arg(long, default_value_t = 2)]
    pub kbucket_size: u32,
    /// Arguments for `p2p-controller run` on this box (after `--`), e.g.
    /// `-- --iface eth0 --bootstrap /ip4/192.0.2.1/tcp/9471`.
    #[arg(last = true)]
    pub controller_args: Vec<String>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: RunArgs) -> Result<()> {
    setup::setup()?.into_result()?;
    run_inherit(
        cargo().args(["build", "--release", "-p", "p2p-controller"]),
        "cargo build --release -p p2p-controller",
    )?;
    let bin = target_dir().join("release").join("p2p-controller");
    if !bin.is_file() {
        bail!("{} was not built", bin.display());
    }
    if !args.controller_args.is_empty() {
        let err = std::process::Command::new(&bin).arg("run").args(&args.controller_args).exec();
        bail!("exec {} run: {err}", bin.display());
    }
    testbed(Controller::at(bin), &args)
}

fn testbed(ctl: Controller, args: &RunArgs) -> Result<()> {
    if !p2p_tests::env::privileged() {
        bail!("the testbed needs root (or CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN)");
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    p2p_tests::env::cleanup_stale();
    let n = args.nodes as usize;
    let k = args.kbucket_size.max(1).to_string();
    say!(
        "==> testbed: {n} nodes on a bridge (10.99.0.1-{n}/24), each in its own network namespace; \
         node 1 first, the others bootstrap from it (Kademlia k = {k})"
    );
    // Each node serves /metrics on its own namespace's loopback.
    let tb = Testbed::start(&ctl, n, &["--kbucket-size", &k, "--metrics", "127.0.0.1:9475"], true, false)?;
    say!("==> all {n} controllers up; logs and state in {}", tb.tmp.path().display());
    say!("==> metrics (OpenMetrics text) of each node, from its namespace:");
    for (i, s) in tb.specs.iter().enumerate() {
        say!("    h{}: ip netns exec {} curl -s http://127.0.0.1:9475/metrics", i + 1, s.netns);
    }
    let started = Instant::now();
    match tb.wait_converged(Duration::from_secs(60)) {
        Ok(t) => {
            say!(
                "==> routing tables converged in {:.1} s: {} routed peers per node",
                started.elapsed().as_secs_f64(),
                t.iter().map(|p| p.len().to_string()).collect::<Vec<_>>().join(" ")
            );
        }
        Err(e) => {
            say!("==> warning: {e:#}");
        }
    }

    let mut keys = Vec::new();
    for i in 0..args.records {
        let key = format!("demo-{i}");
        let node = tb.node(i as usize % n);
        let v = node.request(&json!({"cmd": "dht_put", "key": key, "value": format!("value of demo-{i}")}))?;
        if v["ok"].as_bool() != Some(true) {
            say!("    dht put {key} on {}: {}", node.name(), v["error"]);
        }
        keys.push(key);
    }
    say!(
        "==> {} records put into the DHT; ~{} lookups/s from random nodes (a quarter for absent keys); Ctrl-C to stop",
        args.records,
        args.rate
    );

    let tb = Arc::new(tb);
    let totals = Arc::new(Totals::default());
    let generator = {
        let (tb, totals, rate) = (tb.clone(), totals.clone(), args.rate);
        std::thread::spawn(move || generate(&tb, &keys, rate, &totals))
    };
    let result = monitor(&tb, &totals, &generator);
    STOP.store(true, Ordering::SeqCst);
    let _ = generator.join();
    say!("==> stopping controllers and removing the testbed");
    drop(tb);
    result
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    found: AtomicU64,
    failed: AtomicU64,
    rtts_us: Mutex<Vec<u64>>,
}

/// Lookups at `rate` per second from random nodes, over the control socket.
fn generate(tb: &Testbed, keys: &[String], rate: u32, totals: &Totals) {
    let mut rng = Rng::from_clock();
    let start = Instant::now();
    let mut count: u64 = 0;
    while !STOP.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if count >= due {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        count += 1;
        let alive = tb.alive();
        let node = tb.node(alive[rng.below(alive.len())]);
        let key = if rng.next_u64().is_multiple_of(4) {
            format!("absent-{}", rng.next_u64() % 10_000)
        } else {
            keys[rng.below(keys.len())].clone()
        };
        totals.sent.fetch_add(1, Ordering::Relaxed);
        match node.request(&json!({"cmd": "lookup", "key": key, "fallback": false, "timeout_ms": 1000})) {
            Ok(v) if v["ok"].as_bool() == Some(true) => {
                if v["found"].as_bool() == Some(true) {
                    totals.found.fetch_add(1, Ordering::Relaxed);
                }
                totals.rtts_us.lock().unwrap().push(json_u64(&v, "rtt_us"));
            }
            _ => {
                totals.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Prints a table every second until STOP.
fn monitor(tb: &Testbed, totals: &Totals, generator: &std::thread::JoinHandle<()>) -> Result<()> {
    let start = Instant::now();
    let n = tb.nodes.len();
    let mut prev: Vec<Option<(Value, Value)>> = vec![None; n];
    let mut prev_sent = 0;
    let mut next = Instant::now() + Duration::from_secs(1);
    while !STOP.load(Ordering::SeqCst) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        next += Duration::from_secs(1);
        if generator.is_finished() {
            bail!("the lookup generator stopped early");
        }
        let sent = totals.sent.load(Ordering::Relaxed);
        let mut rtts = std::mem::take(&mut *totals.rtts_us.lock().unwrap());
        rtts.sort_unstable();
        let median = rtts.get(rtts.len() / 2).copied().unwrap_or(0);
        // stdout closed (`cargo xtask run | head`): nobody reads the report
        // any more, so stop and clean up as on Ctrl-C.
        let read = said(format_args!(
            "\n[{:>5}s] lookups {}/s, found {} (of {}), failed {}, median rtt {} us",
            start.elapsed().as_secs(),
            sent - prev_sent,
            totals.found.load(Ordering::Relaxed),
            sent,
            totals.failed.load(Ordering::Relaxed),
            median
        ));
        prev_sent = sent;
        say!(
            "  {:<5} {:>5} {:>6} {:>7} {:>7} {:>8} {:>8} {:>9} {:>8}",
            "node",
            "peers",
            "kad",
            "rt-upd",
            "fwd/s",
            "local/s",
            "drops/s",
            "answer/s",
            "records"
        );
        for (i, prev) in prev.iter_mut().enumerate() {
            let node = tb.node(i);
            let stats = node.stats().with_context(|| format!("stats of {}", node.name()))?;
            let status = node.status().with_context(|| format!("status of {}", node.name()))?;
            let (ps, pst) = prev.clone().unwrap_or((Value::Null, Value::Null));
            let d = |c: &str| packets(&stats, c) - packets(&ps, c);
            let drops: u64 = COUNTER_NAMES.iter().filter(|c| c.starts_with("drop_")).map(|c| d(c)).sum();
            let answered = json_u64(&status, "lookups_answered") - json_u64(&pst, "lookups_answered");
            // Routing-table updates map sync applied (each a generation flip).
            let routes = json_u64(&status, "map_sync.updates");
            say!(
                "  {:<5} {:>5} {:>6} {:>7} {:>7} {:>8} {:>8} {:>9} {:>8}",
                node.name(),
                json_u64(&status, "peers"),
                json_u64(&status, "kad_peers"),
                routes,
                d("fwd"),
                d("local"),
                drops,
                answered,
                json_u64(&status, "records")
            );
            *prev = Some((stats, status));
        }
        if !read {
            p2p_tests::note!("==> stdout closed: stopping");
            break;
        }
    }
    say!("");
    Ok(())
}
