//! Durable storage end to end (issue 9): eight nodes on a bridge (k = 20),
//! bootstrapping from h1; h7 stores at most 1 MiB of shards.
//!
//! - h2 puts a small object from standard input with `replicate:3`; h3
//!   reads it, may not remove it. One of its holders is killed; h2
//!   removes it (the dead holder reported unreachable) and it is gone;
//!   the holder restarts with its old copy, finds the tombstone and drops
//!   the copy: the object stays removed.
//! - h1 puts a 16 MiB object of random bytes with `rs:4+2` (16 segments,
//!   96 shards, each segment's six on six distinct nodes, h7 within its
//!   quota); h8 gets it back byte-identical.
//! - A shard corrupted on its holder's disk is found on h8's read, which
//!   still returns the right bytes, and given back to the holder.
//! - A holder cut off by iptables on the bridge (both directions): once h1
//!   no longer routes to it, every segment is back to six live shards
//!   within 5 s; when the rule goes, it rejoins and drops the copies the
//!   repair replaced, so that no shard is held beyond policy.
//! - Uptime: h1 puts a `replicate:5` object; the rejoined node, declared
//!   dead by h1 moments ago, holds none of its five copies (at least five
//!   good nodes take them: the node restarted earlier is poor too, and h7
//!   may be full).
//! - Popularity: the rejoined node reads that object three times: it
//!   caches the segment, serves the fourth read from its cache, and drops
//!   it once no one has read it for 2 s (`--store-cache-cool 2s`; h8,
//!   whose reads must test the holders, caches nothing).
//!
//! - Metrics (`run --metrics 127.0.0.1:9475` on every node, scraped with
//!   curl in its namespace): OpenMetrics text with libp2p's families; h1
//!   shows seven alive peers and PONGs counted by its datapath, and its
//!   `/ready` answers 200; the
//!   corrupt shard's holder counts it; after the kills, every node's
//!   repaired shards and h1's detections equal what `status` says.
//!
//! Then, three times:
//!
//! 1. two holders killed (-9): once h1 no longer routes to them (their
//!    death declared), every segment is back to six live shards within 5 s (`store status --json`), and h8 reads the
//!    object again;
//! 2. two more killed: still readable, and repaired to six live shards on
//!    the four nodes left;
//! 3. three holders of one segment killed at once, before any repair: h8's
//!    `get` fails with the documented error and leaves no output file.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use p2p_tests::testbed::Testbed;
use p2p_tests::util::wait_for;
use p2p_tests::{NodeSpec, require};
use serde_json::Value;

/// Killed nodes keep their pins (kill -9); removed when the test ends.
struct PinSweep(Vec<PathBuf>);

impl Drop for PinSweep {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn kill(tb: &mut Testbed, victims: &[usize], pins: &mut PinSweep) -> Vec<NodeSpec> {
    victims
        .iter()
        .map(|&v| {
            let spec = tb.nodes[v].take().expect("running").kill9();
            pins.0.push(spec.pin_dir());
            spec
        })
        .collect()
}

/// Per segment: the testbed indices of its live holders, shard by shard.
fn holders(tb: &Testbed, status: &Value) -> Result<Vec<Vec<Vec<usize>>>> {
    let index: HashMap<&str, usize> = tb.specs.iter().enumerate().map(|(i, s)| (s.peer_id.as_str(), i)).collect();
    let mut out = Vec::new();
    for seg in status["segments"].as_array().context("segments")? {
        let mut shards = Vec::new();
        for sh in seg["shards"].as_array().context("shards")? {
            let live: Vec<usize> = sh["live_holders"]
                .as_array()
                .context("live_holders")?
                .iter()
                .filter_map(|h| index.get(h.as_str()?).copied())
                .collect();
            shards.push(live);
        }
        out.push(shards);
    }
    Ok(out)
}

/// Every segment has all six shards on live nodes, none on `dead`, and
/// (when `distinct`) on six distinct nodes.
fn fully_repaired(tb: &Testbed, status: &Value, dead: &HashSet<usize>, distinct: bool) -> Result<bool> {
    if status["health"] != "full" {
        return Ok(false);
    }
    for seg in holders(tb, status)? {
        if seg.len() != 6 || seg.iter().any(|h| h.is_empty() || h.iter().any(|n| dead.contains(n))) {
            return Ok(false);
        }
        let nodes: HashSet<usize> = seg.iter().map(|h| h[0]).collect();
        if distinct && nodes.len() != 6 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Waits until `observer` routes to none of `victims` (their death
/// declared); when that happened.
fn declared_dead(tb: &Testbed, observer: usize, victims: &[usize]) -> Result<Instant> {
    wait_for(Duration::from_secs(10), || {
        let routed = tb.routed(observer).ok()?.0;
        victims.iter().all(|v| !routed.contains(v)).then(Instant::now)
    })
    .with_context(|| format!("h{} still routes to some of {victims:?}", observer + 1))
}

/// `store put -` with `replicate:3` from h2; read on h3; removed by its
/// owner only, while one holder is down; gone, and still gone once that
/// holder is back with its copy.
fn small_object_put_read_removed(ctl: &p2p_tests::Controller, tb: &mut Testbed, pins: &mut PinSweep) -> Result<()> {
    use std::io::Write;
    use std::process::Stdio;
    let h2 = tb.specs[1].clone();
    let sock = h2.control_socket();
    let mut cmd = ctl.command();
    cmd.args(["store", "put", "-", "--redundancy", "replicate:3", "--json", "--instance", &h2.instance])
        .arg("--control-socket")
        .arg(&sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let text = b"a small object, from standard input".to_vec();
    child.stdin.take().context("stdin")?.write_all(&text)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "put -: {}", String::from_utf8_lossy(&out.stderr));
    let put: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(put["segments"] == 1 && put["shards"] == 3 && put["redundancy"] == "replicate:3", "{put}");
    let cid = put["cid"].as_str().context("cid")?.to_string();
    let st = tb.node(2).cli(&["store", "status", &cid])?;
    ensure!(st["health"] == "full" && st["owner"] == h2.peer_id.as_str(), "{st}");
    ensure!(get(tb, 2, &cid, &tb.tmp.path().join("small"))? == text, "h3's copy of the small object");
    let e = tb.node(2).cli(&["store", "rm", &cid]).expect_err("h3 does not own it");
    ensure!(format!("{e:#}").contains("only its owner"), "{e:#}");

    // A holder (not the owner) is down while the object is removed.
    // Not h2 (the owner) nor h3 (it reads the object while the holder is down).
    let absent =
        holders(tb, &st)?[0].iter().flatten().copied().find(|&h| h != 1 && h != 2).context("a holder but h2, h3")?;
    kill(tb, &[absent], pins);
    let _ = std::fs::remove_dir_all(tb.specs[absent].pin_dir());
    declared_dead(tb, 1, &[absent])?;
    let rm = tb.node(1).cli(&["store", "rm", &cid])?;
    let absent_id = tb.specs[absent].peer_id.clone();
    ensure!(
        rm["removed_from"].as_u64().is_some_and(|n| n >= 2) && rm["unreachable"] == serde_json::json!([absent_id]),
        "{rm}"
    );
    // (h3 reuses a manifest it read for half a second.)
    let removed =
        |tb: &Testbed, node: usize, name: &str, last: &mut String| match get(tb, node, &cid, &tb.tmp.path().join(name))
        {
            Ok(_) => None,
            Err(e) => {
                *last = format!("{e:#}");
                last.contains("was removed by its owner").then_some(())
            }
        };
    let mut last = String::new();
    let gone = wait_for(Duration::from_secs(3), || removed(tb, 2, "small-gone", &mut last));
    ensure!(gone.is_some(), "after rm: {last}");

    // Back with its old copy and manifest: the tombstone wins.
    tb.launch(absent)?;
    let mut held = Value::Null;
    let dropped = wait_for(Duration::from_secs(30), || {
        held = tb.node(absent).status().ok()?["store"].clone();
        (held["shards"] == 0 && removed(tb, absent, "small-back", &mut last).is_some()).then_some(())
    });
    ensure!(dropped.is_some(), "h{} kept the removed object: {held} / {last}", absent + 1);
    let ls = tb.node(absent).cli(&["store", "ls"])?;
    ensure!(ls["objects"] == serde_json::json!([]), "h{} lists a removed object: {ls}", absent + 1);
    ensure!(removed(tb, 2, "small-gone-2", &mut last).is_some(), "after h{} came back: {last}", absent + 1);
    let mesh =
        wait_for(Duration::from_secs(30), || (0..8).all(|i| tb.routed(i).is_ok_and(|r| r.0.len() == 7)).then_some(()));
    ensure!(mesh.is_some(), "h{} did not rejoin after its restart", absent + 1);
    eprintln!("small object removed while h{} was down; it dropped its copy when back", absent + 1);
    Ok(())
}

/// h1 puts a one-segment `replicate:5` object: `flaky` (declared dead by
/// h1 minutes ago) is not among its holders. `flaky` then reads it until
/// it is hot: cached, served from the cache, dropped once cool.
fn uptime_and_popularity(tb: &Testbed, flaky: usize) -> Result<()> {
    let mut object = vec![0u8; 300 << 10];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut object)?;
    let file = tb.tmp.path().join("hot.bin");
    std::fs::write(&file, &object)?;
    let put = tb.node(0).cli(&["store", "put", file.to_str().context("utf-8")?, "--redundancy", "replicate:5"])?;
    let cid = put["cid"].as_str().context("cid")?.to_string();
    let st = tb.node(0).cli(&["store", "status", &cid])?;
    let placed: Vec<usize> = holders(tb, &st)?[0].iter().flatten().copied().collect();
    ensure!(placed.len() == 5, "{st}");
    ensure!(!placed.contains(&flaky), "h{} (recently dead) got a copy: {placed:?}", flaky + 1);

    let cache = |what: &str| -> Result<u64> {
        tb.node(flaky).status()?["store"][what].as_u64().with_context(|| format!("store.{what}"))
    };
    let mut times = Vec::new();
    for read in 1..=4 {
        let t = Instant::now();
        ensure!(get(tb, flaky, &cid, &tb.tmp.path().join(format!("hot-{read}")))? == object, "read {read}");
        times.push(t.elapsed());
        let (cached, hits) = (cache("cached_segments")?, cache("cache_hits")?);
        let want = match read {
            1 | 2 => (0, 0),
            3 => (1, 0),
            _ => (1, 1),
        };
        ensure!((cached, hits) == want, "after read {read}: cached {cached}, hits {hits}, not {want:?}");
    }
    eprintln!("h{} reads of a hot 300 KiB object (`store get`, CLI included): {times:?}", flaky + 1);
    let cooled = wait_for(Duration::from_secs(8), || (cache("cached_segments").ok()? == 0).then_some(()));
    ensure!(cooled.is_some() && cache("cooled_total")? == 1, "h{} kept a cool segment", flaky + 1);
    Ok(())
}

/// Node `i`'s `/metrics` (its `--metrics 127.0.0.1:9475`, in its
/// namespace): the body, after checking the headers and the end marker.
fn scrape(tb: &Testbed, i: usize) -> Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &tb.specs[i].netns, "curl", "-sS", "-i", "--max-time", "5"])
        .arg("http://127.0.0.1:9475/metrics")
        .output()?;
    ensure!(out.status.success(), "curl h{}: {}", i + 1, String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?.replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").context("no header/body split")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "h{}: {head}", i + 1);
    ensure!(
        head.to_lowercase().contains("content-type: application/openmetrics-text; version=1.0.0"),
        "h{}: {head}",
        i + 1
    );
    ensure!(body.ends_with("# EOF\n"), "h{}: no # EOF at the end", i + 1);
    Ok(body.to_string())
}

/// The value of the sample `name{labels}` (exactly as written).
fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Metrics equal to `status`: `metric` read between two `status` reads of
/// `field` lies between them (counters that may move meanwhile).
fn metric_matches_status(tb: &Testbed, i: usize, sample: &str, field: &[&str]) -> Result<f64> {
    let read = || -> Result<f64> {
        let mut v = tb.node(i).status()?;
        for f in field {
            v = v[*f].clone();
        }
        v.as_f64().with_context(|| format!("status {field:?}"))
    };
    let before = read()?;
    let body = scrape(tb, i)?;
    let after = read()?;
    let m = metric(&body, sample).with_context(|| format!("h{} has no {sample}", i + 1))?;
    ensure!(before <= m && m <= after, "h{}: {sample} {m}, status {field:?} {before}..{after}", i + 1);
    Ok(m)
}

/// Every metric deploy/grafana/p2p-nos.json queries is one a node serves.
fn dashboard_uses_only_served_metrics(body: &str) -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/p2p-nos.json");
    let dash: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    // Sample names, and families declared (one with no samples yet: no bans).
    let served: HashSet<&str> = body
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .collect();
    let mut used = 0;
    for panel in dash["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"].as_str().context("expr")?;
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("p2p_nos_") || name.starts_with("libp2p_") {
                    ensure!(served.contains(name), "the dashboard's {name:?} is not served (panel {})", panel["title"]);
                    used += 1;
                }
            }
        }
    }
    ensure!(used >= 10, "the dashboard queries {used} metrics");
    Ok(())
}

fn get(tb: &Testbed, node: usize, cid: &str, out: &Path) -> Result<Vec<u8>> {
    let o = out.to_str().context("utf-8")?;
    let v = tb.node(node).cli(&["store", "get", cid, "-o", o])?;
    ensure!(v["cid"] == cid, "{v}");
    Ok(std::fs::read(out)?)
}

#[test]
fn objects_survive_holder_deaths_and_are_repaired() -> Result<()> {
    let Some(env) = require("objects_survive_holder_deaths_and_are_repaired") else { return Ok(()) };
    let ctl = &env.ctl;
    let args = ["--kbucket-size", "20", "--store-cache-cool", "2s", "--metrics", "127.0.0.1:9475"];
    let mut tb = Testbed::prepare(ctl, 8, &args, true, false)?;
    tb.specs[6].extra_args.extend(["--store-quota".to_string(), "1MiB".to_string()]);
    tb.specs[7].extra_args.extend(["--store-hot-reads".to_string(), "0".to_string()]);
    let mut pins = PinSweep(Vec::new());
    for i in 0..8 {
        tb.launch(i)?;
    }
    let mesh =
        wait_for(Duration::from_secs(60), || (0..8).all(|i| tb.routed(i).is_ok_and(|r| r.0.len() == 7)).then_some(()));
    ensure!(mesh.is_some(), "no full mesh: {:?}", (0..8).map(|i| tb.routed(i).map(|r| r.0)).collect::<Vec<_>>());

    // The detector may confirm the last peers a moment after routing does.
    let mut m = String::new();
    let settled = wait_for(Duration::from_secs(5), || {
        m = scrape(&tb, 0).ok()?;
        let seven = |s: &str| metric(&m, s) == Some(7.0);
        (seven(r#"p2p_nos_peers{state="alive"}"#) && seven("p2p_nos_routed_peers")).then_some(())
    });
    ensure!(settled.is_some(), "h1 metrics, not 7 alive and routed peers: {m}");
    ensure!(m.contains(&format!(r#"peer_id="{}""#, tb.specs[0].peer_id)), "h1 metrics: {m}");
    ensure!(metric(&m, r#"p2p_nos_datapath_packets_total{counter="pong"}"#).is_some_and(|v| v > 0.0), "{m}");
    ensure!(m.lines().any(|l| l.starts_with("libp2p_swarm_connections_established_total")), "no libp2p metrics: {m}");
    let mut code = String::new();
    let ready = wait_for(Duration::from_secs(5), || {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", &tb.specs[0].netns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg("http://127.0.0.1:9475/ready")
            .output()
            .ok()?;
        code = String::from_utf8_lossy(&o.stdout).into_owned();
        (code == "200").then_some(())
    });
    ensure!(ready.is_some(), "h1 /ready: {code}");

    small_object_put_read_removed(ctl, &mut tb, &mut pins)?;

    let mut object = vec![0u8; 16 << 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut object)?;
    let file = tb.tmp.path().join("object.bin");
    std::fs::write(&file, &object)?;
    let t = Instant::now();
    let put = tb.node(0).cli(&["store", "put", file.to_str().context("utf-8")?, "--redundancy", "rs:4+2"])?;
    eprintln!("put 16 MiB in {:?}: {put}", t.elapsed());
    let cid = put["cid"].as_str().context("cid")?.to_string();
    ensure!(put["segments"] == 16 && put["shards"] == 96 && put["size"] == 16 << 20, "{put}");
    let status = tb.node(0).cli(&["store", "status", &cid])?;
    ensure!(fully_repaired(&tb, &status, &HashSet::new(), true)?, "after put: {status}");
    let ls = tb.node(0).cli(&["store", "ls"])?;
    ensure!(ls["objects"].as_array().is_some_and(|o| o.iter().any(|x| x["cid"] == cid && x["mine"] == true)), "{ls}");
    let h7 = tb.node(6).status()?["store"].clone();
    ensure!(h7["used_bytes"].as_u64().is_some_and(|u| u <= 1 << 20), "h7 over its quota: {h7}");
    let t = Instant::now();
    ensure!(get(&tb, 7, &cid, &tb.tmp.path().join("got1"))? == object, "h8's copy differs");
    eprintln!("get 16 MiB from h8 in {:?}", t.elapsed());

    // A corrupt shard: segment 0's first shard, on its holder's disk.
    let seg0 = &status["segments"][0]["shards"][0];
    let (shard_cid, holder) = (seg0["cid"].as_str().context("cid")?, holders(&tb, &status)?[0][0][0]);
    let path = tb.specs[holder].state_dir().join("store").join("shards").join(shard_cid);
    let intact = std::fs::read(&path)?;
    let mut bad = intact.clone();
    bad[7] ^= 0xff;
    std::fs::write(&path, &bad)?;
    ensure!(get(&tb, 7, &cid, &tb.tmp.path().join("got-corrupt"))? == object, "read with a corrupt shard");
    let st = tb.node(holder).status()?["store"].clone();
    ensure!(st["corrupt_shards"] == 1, "h{}: {st}", holder + 1);
    let m = scrape(&tb, holder)?;
    ensure!(metric(&m, "p2p_nos_store_corrupt_shards_total") == Some(1.0), "h{} metrics: {m}", holder + 1);
    ensure!(std::fs::read(&path).ok() == Some(intact), "the corrupt shard was not given back intact");

    // A holder cut off on the bridge, then back.
    let victim = holders(&tb, &status)?[1].iter().map(|h| h[0]).find(|n| ![0, 6, 7].contains(n)).context("victim")?;
    {
        let _cut = tb.lan.isolate(victim + 1)?;
        let declared = declared_dead(&tb, 0, &[victim])?;
        let mut last = Value::Null;
        let gone = HashSet::from([victim]);
        let at = wait_for(Duration::from_secs(15), || {
            last = tb.node(0).cli(&["store", "status", &cid]).ok()?;
            fully_repaired(&tb, &last, &gone, true).ok()?.then(Instant::now)
        });
        let Some(at) = at else { bail!("not repaired around cut-off h{}: {last}", victim + 1) };
        let took = at.saturating_duration_since(declared);
        eprintln!("h{} cut off: repaired {took:?} after h1 declared it dead", victim + 1);
        ensure!(took <= Duration::from_secs(5), "repair took {took:?} (target 5 s)");
    }
    // Back in every node's maps (the next repair places on it again).
    let back =
        wait_for(Duration::from_secs(30), || (0..8).all(|i| tb.routed(i).is_ok_and(|r| r.0.len() == 7)).then_some(()));
    ensure!(
        back.is_some(),
        "h{} did not rejoin: {:?}",
        victim + 1,
        (0..8).map(|i| tb.routed(i).map(|r| r.0)).collect::<Vec<_>>()
    );
    let mut last = (Value::Null, Value::Null);
    let tidy = wait_for(Duration::from_secs(40), || {
        let st = tb.node(0).cli(&["store", "status", &cid]).ok()?;
        let placed: usize = holders(&tb, &st).ok()?.iter().flatten().filter(|h| h.contains(&victim)).count();
        let held = tb.node(victim).status().ok()?["store"].clone();
        let once = holders(&tb, &st).ok()?.iter().flatten().all(|h| h.len() == 1);
        last = (st, held.clone());
        (once && held["shards"].as_u64() == Some(placed as u64)).then_some(())
    });
    ensure!(tidy.is_some(), "h{} holds copies beyond policy after rejoining: {:?}", victim + 1, last);
    uptime_and_popularity(&tb, victim)?;

    let mut dead: HashSet<usize> = HashSet::new();
    let mut repair_times = Vec::new();
    // Rounds 1 and 2: two holders of segment 0 each time (never h1, which
    // observes, nor h8, which reads).
    for round in 1..=2 {
        let status = tb.node(0).cli(&["store", "status", &cid])?;
        let segs = holders(&tb, &status)?;
        let mut nodes: Vec<usize> = segs[0].iter().map(|h| h[0]).filter(|n| ![0, 6, 7].contains(n)).collect();
        nodes.sort_unstable();
        nodes.dedup();
        // Two of segment 0's holders (not h1, which observes, h7, whose
        // quota is checked at the end, or h8, which reads) whose loss leaves every segment
        // readable (h7, once full, makes repairs put two shards of a
        // segment on one node; losing three shards of one is round 3).
        let survivable = |a: usize, b: usize| {
            segs.iter().all(|seg| seg.iter().filter(|h| h.iter().all(|n| *n == a || *n == b)).count() <= 2)
        };
        let pair = nodes
            .iter()
            .enumerate()
            .flat_map(|(i, a)| nodes[i + 1..].iter().map(move |b| (*a, *b)))
            .find(|(a, b)| survivable(*a, *b));
        let Some((a, b)) = pair else { bail!("round {round}: no two holders of segment 0 to lose: {status}") };
        let victims = vec![a, b];
        kill(&mut tb, &victims, &mut pins);
        dead.extend(&victims);
        let declared = declared_dead(&tb, 0, &victims)?;
        let mut last = Value::Null;
        let repaired = wait_for(Duration::from_secs(15), || {
            last = tb.node(0).cli(&["store", "status", &cid]).ok()?;
            // Not six distinct nodes any more: h7 is full (its quota).
            fully_repaired(&tb, &last, &dead, false).ok()?.then(Instant::now)
        });
        let Some(at) = repaired else { bail!("round {round}: not repaired after killing {victims:?}: {last}") };
        let took = at.saturating_duration_since(declared);
        eprintln!(
            "round {round}: killed h{:?}; every segment back to 6 live shards {took:?} after h1 declared them dead",
            victims.iter().map(|v| v + 1).collect::<Vec<_>>()
        );
        repair_times.push(took);
        ensure!(took <= Duration::from_secs(5), "round {round}: repair took {took:?} (target 5 s)");
        let got = get(&tb, 7, &cid, &tb.tmp.path().join(format!("got-r{round}")))?;
        ensure!(got == object, "round {round}: h8's copy differs");
    }
    let summary: u64 = (0..8)
        .filter(|i| !dead.contains(i))
        .map(|i| tb.node(i).status().map(|s| s["store"]["repaired_shards"].as_u64().unwrap_or(0)).unwrap_or(0))
        .sum();
    ensure!(summary > 0, "no node reports repaired shards in status.store");
    let mut from_metrics = 0.0;
    for i in (0..8).filter(|i| !dead.contains(i)) {
        from_metrics +=
            metric_matches_status(&tb, i, "p2p_nos_store_repaired_shards_total", &["store", "repaired_shards"])?;
    }
    ensure!(from_metrics > 0.0, "no node's metrics show repaired shards");
    for i in (0..8).filter(|i| !dead.contains(i)) {
        metric_matches_status(&tb, i, "p2p_nos_store_repair_duration_seconds_count", &["store", "repairs"])?;
    }
    metric_matches_status(&tb, 0, "p2p_nos_map_sync_latency_seconds_count", &["map_sync", "updates"])?;
    let detections = metric_matches_status(
        &tb,
        0,
        "p2p_nos_detection_latency_seconds_count",
        &["liveness", "detection", "detections"],
    )?;
    ensure!(detections >= 4.0, "h1 detected the four killed nodes: {detections}");
    dashboard_uses_only_served_metrics(&scrape(&tb, 0)?)?;
    let h7 = tb.node(6).status()?["store"].clone();
    ensure!(h7["used_bytes"].as_u64().is_some_and(|u| u <= 1 << 20), "h7 over its quota: {h7}");

    // Round 3: every live holder of segment 0 but h8 killed at once.
    let status = tb.node(0).cli(&["store", "status", &cid])?;
    let mut victims: Vec<usize> = holders(&tb, &status)?[0].iter().flatten().copied().filter(|n| *n != 7).collect();
    victims.sort_unstable();
    victims.dedup();
    let left = holders(&tb, &status)?[0].iter().filter(|h| h.iter().any(|n| !victims.contains(n))).count();
    ensure!(victims.len() >= 2 && left < 4, "round 3: segment 0 would keep {left} shards: {status}");
    kill(&mut tb, &victims, &mut pins);
    let out = tb.tmp.path().join("got-lost");
    let e = get(&tb, 7, &cid, &out).expect_err("a get with fewer than 4 shards of a segment must fail");
    let msg = format!("{e:#}");
    ensure!(msg.contains("shards could be read") && msg.contains("4 needed"), "{msg}");
    ensure!(!out.exists() && !tb.tmp.path().join("got-lost.part").exists(), "a failed get left a file");
    eprintln!("round 3: killed {victims:?}; get fails: {msg}");
    Ok(())
}
