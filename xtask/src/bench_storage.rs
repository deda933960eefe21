//! `cargo xtask bench storage` (issue 9), all in one run:
//!
//! - erasure encode/decode GiB/s per core of the product's coding against
//!   reed-solomon-simd called directly (`p2p-bench erasure`);
//! - on the 8-node testbed (release build): `store put` of a random object
//!   from h1 and `store get` on h8 (checked byte for byte), against a plain
//!   TCP copy of the same bytes from h1's namespace to h8's;
//! - repair time over `--kills` kills: a random holder (never h1 or h8)
//!   killed with -9, the time from h1 declaring it dead (no longer routed
//!   to) until `store status` on h1 shows every segment's six shards live
//!   again; the node is restarted before the next kill;
//! - the memory high-water mark (VmHWM) of the largest controller.

use anyhow::{Context, Result, bail, ensure};
use p2p_tests::node::Controller;
use p2p_tests::testbed::Testbed;
use p2p_tests::util::{Rng, wait_for};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::bench::{BenchArgs, check_interrupt};
use crate::util;

fn vm_hwm_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A plain TCP copy of `bytes` from namespace `from` to a listener in
/// `to` on `addr`; MB/s as the receiver counts them.
fn tcp_copy(from: &str, to: &str, addr: std::net::SocketAddr, bytes: Vec<u8>) -> Result<f64> {
    let total = bytes.len();
    let listener = p2p_tests::netns::enter(to, move || std::net::TcpListener::bind(addr))??;
    let rx = std::thread::spawn(move || -> Result<(usize, Duration)> {
        let (mut s, _) = listener.accept()?;
        let start = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        loop {
            match s.read(&mut buf)? {
                0 => break,
                k => n += k,
            }
        }
        Ok((n, start.elapsed()))
    });
    p2p_tests::netns::enter(from, move || -> Result<()> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(&bytes)?;
        Ok(())
    })??;
    let (n, took) = rx.join().map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    ensure!(n == total, "TCP copy: {n} of {total} bytes arrived");
    Ok(total as f64 / took.as_secs_f64() / 1e6)
}

fn holders_live(status: &Value) -> bool {
    status["health"] == "full"
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Popularity: a one-segment object (1 MiB, rs:4+2) read ten times by a
/// node that holds none of its shards; reads 1–3 go to the holders (the
/// third makes it hot), 4–10 to the reader's cache. Checked against the
/// reader's own count of cache hits.
fn hot_reads(tb: &Testbed) -> Result<Value> {
    println!("==> popularity: read latency of a hot object (`store get`, whole command)");
    let mut object = vec![0u8; 1 << 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut object)?;
    let file = tb.tmp.path().join("hot.bin");
    std::fs::write(&file, &object)?;
    let put = tb.node(0).cli(&["store", "put", file.to_str().context("utf-8")?])?;
    let cid = put["cid"].as_str().context("cid")?.to_string();
    let st = tb.node(0).cli(&["store", "status", &cid])?;
    let holders: Vec<&str> = st["segments"][0]["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|x| x["holders"].as_array().into_iter().flatten().filter_map(|h| h.as_str()))
        .collect();
    let reader = (1..tb.specs.len())
        .find(|&i| !holders.contains(&tb.specs[i].peer_id.as_str()))
        .context("every node holds a shard")?;
    let hits_before = tb.node(reader).status()?["store"]["cache_hits"].as_u64().unwrap_or(0);
    let out = tb.tmp.path().join("hot-got.bin");
    let mut ms = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        tb.node(reader).cli(&["store", "get", &cid, "-o", out.to_str().context("utf-8")?])?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(std::fs::read(&out)? == object, "a hot read differs");
    }
    let hits = tb.node(reader).status()?["store"]["cache_hits"].as_u64().unwrap_or(0) - hits_before;
    ensure!(hits == 7, "h{} counts {hits} cache hits over reads 4-10, not 7", reader + 1);
    let (cold, hot) = (median(&mut ms[..3].to_vec()), median(&mut ms[3..].to_vec()));
    println!(
        "  h{} (no shard): cold reads {:.1?} ms (median {cold:.1}), hot reads median {hot:.1} ms (hot/cold {:.2}); cache hits counted by h{}: {hits}",
        reader + 1,
        &ms[..3],
        hot / cold,
        reader + 1
    );
    Ok(
        json!({"object_mib": 1, "reads_ms": ms, "cold_median_ms": cold, "hot_median_ms": hot, "ratio_hot_cold": hot / cold, "cache_hits": hits}),
    )
}

pub fn run(args: &BenchArgs, bin: PathBuf, tool: &Path) -> Result<Value> {
    if !p2p_tests::env::privileged() {
        bail!("the storage benchmark needs root (or CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN)");
    }
    println!("==> erasure coding, one core (`p2p-bench erasure`)");
    let erasure: Value = serde_json::from_str(
        &util::stdout_of(&tool.display().to_string(), ["erasure", "--json"]).context("p2p-bench erasure failed")?,
    )?;
    for r in erasure["erasure"].as_array().into_iter().flatten() {
        println!(
            "  {:>8}: encode {:.2} GiB/s (library {:.2}), decode {:.2} GiB/s (library {:.2})",
            r["layout"].as_str().unwrap_or(""),
            r["ours_encode_gib_s"].as_f64().unwrap_or(0.0),
            r["library_encode_gib_s"].as_f64().unwrap_or(0.0),
            r["ours_decode_gib_s"].as_f64().unwrap_or(0.0),
            r["library_decode_gib_s"].as_f64().unwrap_or(0.0),
        );
    }

    p2p_tests::env::cleanup_stale();
    let n = 8;
    println!("==> {n}-node testbed (k = 20), release build");
    let ctl = Controller::at(bin);
    let mut tb = Testbed::start(&ctl, n, &["--kbucket-size", "20"], true, false)?;
    tb.wait_converged(Duration::from_secs(60))?;
    let mb = args.object_mib;
    let mut object = vec![0u8; mb << 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut object)?;
    let file = tb.tmp.path().join("object.bin");
    std::fs::write(&file, &object)?;
    let t = Instant::now();
    let put = tb.node(0).cli(&["store", "put", file.to_str().context("utf-8")?])?;
    let put_s = t.elapsed().as_secs_f64();
    let cid = put["cid"].as_str().context("cid")?.to_string();
    let out = tb.tmp.path().join("got.bin");
    let t = Instant::now();
    tb.node(7).cli(&["store", "get", &cid, "-o", out.to_str().context("utf-8")?])?;
    let get_s = t.elapsed().as_secs_f64();
    ensure!(std::fs::read(&out)? == object, "the object read back differs");
    let _ = std::fs::remove_file(&out);
    let bytes = object.len() as f64;
    let tcp = tcp_copy(
        &tb.specs[0].netns,
        &tb.specs[7].netns,
        std::net::SocketAddr::new(tb.specs[7].addr, 45001),
        object.clone(),
    )?;
    drop(object);
    let (put_mbs, get_mbs) = (bytes / put_s / 1e6, bytes / get_s / 1e6);
    println!(
        "  {mb} MiB: put {put_mbs:.1} MB/s, get {get_mbs:.1} MB/s; plain TCP copy h1 -> h8 {tcp:.1} MB/s (put/TCP {:.3}, get/TCP {:.3})",
        put_mbs / tcp,
        get_mbs / tcp
    );

    let hot = hot_reads(&tb)?;

    println!("==> repair after {} kills", args.kills);
    let mut rng = Rng::from_clock();
    let mut times = Vec::new();
    for kill in 1..=args.kills {
        check_interrupt()?;
        // A node holding shards of the object (one restarted by an earlier
        // kill may hold none: its death would cost no repair).
        let st = tb.node(0).cli(&["store", "status", &cid])?;
        let holding: Vec<usize> = (1..n - 1)
            .filter(|&i| {
                let id = tb.specs[i].peer_id.as_str();
                st["segments"].as_array().into_iter().flatten().any(|s| {
                    s["shards"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|x| x["live_holders"].as_array().is_some_and(|h| h.iter().any(|h| h == id)))
                })
            })
            .collect();
        ensure!(!holding.is_empty(), "kill {kill}: no node but h1 and h8 holds a shard");
        let victim = holding[rng.below(holding.len())];
        let spec = tb.nodes[victim].take().context("running")?.kill9();
        let declared =
            wait_for(Duration::from_secs(10), || (!tb.routed(0).ok()?.0.contains(&victim)).then(Instant::now))
                .with_context(|| format!("h1 still routes to killed h{}", victim + 1))?;
        let at = wait_for(Duration::from_secs(30), || {
            let st = tb.node(0).cli(&["store", "status", &cid]).ok()?;
            let dead =
                st["segments"].as_array()?.iter().any(|s| {
                    s["shards"].as_array().into_iter().flatten().any(|x| {
                        x["live_holders"].as_array().is_some_and(|h| h.iter().any(|h| h == spec.peer_id.as_str()))
                    })
                });
            (holders_live(&st) && !dead).then(Instant::now)
        })
        .with_context(|| format!("kill {kill}: not repaired within 30 s"))?;
        let ms = at.saturating_duration_since(declared).as_secs_f64() * 1e3;
        println!("  kill {kill:>2}: h{} — all segments full again {ms:.0} ms after h1 declared it dead", victim + 1);
        times.push(ms);
        let _ = std::fs::remove_dir_all(spec.pin_dir());
        tb.launch(victim)?;
        // Back in every node's maps before the next kill.
        wait_for(Duration::from_secs(60), || {
            (0..n).all(|i| tb.routed(i).is_ok_and(|r| r.0.len() == n - 1)).then_some(())
        })
        .with_context(|| format!("h{} did not rejoin every node's maps", victim + 1))?;
    }
    let hwm = (0..n).filter_map(|i| tb.nodes[i].as_ref()?.pid()).map(vm_hwm_kib).max().unwrap_or(0);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| {
        sorted
            .get(((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1)
            .copied()
            .unwrap_or(0.0)
    };
    let (median, p99, max) = (q(0.5), q(0.99), sorted.last().copied().unwrap_or(0.0));
    println!("  repair: median {median:.0} ms, p99 {p99:.0} ms, max {max:.0} ms (target 5000 ms)");
    println!("  largest controller's memory high-water mark: {:.1} MiB", hwm as f64 / 1024.0);
    Ok(json!({
        "benchmark": "storage",
        "command": "cargo xtask bench storage",
        "erasure": erasure["erasure"],
        "object_mib": mb,
        "put_mb_s": put_mbs,
        "get_mb_s": get_mbs,
        "tcp_copy_mb_s": tcp,
        "ratio_put_tcp": put_mbs / tcp,
        "ratio_get_tcp": get_mbs / tcp,
        "repair_ms": {"samples": times, "median": median, "p99": p99, "max": max},
        "hot_read": hot,
        "max_vm_hwm_kib": hwm,
        "kernel": util::stdout_of("uname", ["-r"]).unwrap_or_default().trim(),
    }))
}
