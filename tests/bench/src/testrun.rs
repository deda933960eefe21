//! `testrun`: BPF_PROG_TEST_RUN ns per forwarded packet of the real
//! datapath (`p2p_xdp`, loaded through p2p-controller's library API) with
//! 1k, 10k and 100k peers in its routing maps, beside the harness cost (a
//! program that returns at once), the minimal forwarder and one
//! `bpf_fib_lookup`, all on the same frame. Each table size is measured
//! three times: `bare`, a sender that is not a peer, with no block list and
//! no budget (steps 3-5 cost one PEER_ADDRS miss); `filtered`, the
//! product's usual case before issue 8: a peer forwarding its own packets
//! under a rate budget (GCRA on RATE, LAST_SEEN refreshed) while the block
//! lists hold a node ID and a prefix (both looked up); and `auth`, as
//! `filtered` under `--auth required` with every link keyed (tag verified,
//! replay window checked, new tag for the next hop).
//!
//! Independent check: every measured run must be a forward, so the
//! datapath's own `fwd` counter must grow by exactly the number of runs;
//! the row says so (`fwd_counted` against `runs`) and a mismatch fails.
//!
//! Runs in a namespace it makes (the tests' `Netns` guard: removed on exit,
//! error and SIGINT/SIGTERM, which are taken between measurements).

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use p2p_common::codec::addr_to_mapped;
use p2p_common::counters::FWD;
use p2p_common::maps::{
    BlockEntry, IFACE_HAS_V4, IfaceAddrs, LinkKey, LinkSecret, PEER_LIVE, PEER_V4, POLICY_AUTH_REQUIRED,
    POLICY_AUTH_VERIFY, PeerEntry, RateBudget,
};
use p2p_common::route_build;
use p2p_common::wire::DEFAULT_OVERLAY_PORT;
use p2p_controller::dataplane::{AttachMode, BlockTarget, Dataplane, LoadOptions, SlotEntry};
use p2p_tests::netns::{Netns, veth};
use serde_json::{Value, json};

use crate::frame::{self, data_packet_from, iface_mac, random_id, udp4_frame};
use crate::object as obj;
use crate::signals;

#[derive(Args, Debug, Clone)]
pub struct TestrunArgs {
    /// Routing-table sizes (peers), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub peers: Vec<u32>,
    /// Runs per measurement.
    #[arg(long, default_value_t = 200_000)]
    pub repeat: u32,
    /// Random destination keys measured per table size (mean reported).
    #[arg(long, default_value_t = 8)]
    pub keys: usize,
    /// Overlay payload bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Name of the scratch namespace to create (deleted on exit) [default: p2pt-<pid>-…-testrun]
    #[arg(long)]
    pub netns_name: Option<String>,
    #[arg(long)]
    pub json: bool,
}

const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TR_DEV: &str = "pbtr0";
const TR_PEER_DEV: &str = "pbtr1";
const TR_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 200, 1);
/// Runs per BPF_PROG_TEST_RUN call: repeated runs work on the same buffer,
/// so the overlay TTL (255 in the frame) drops by one per run; 254 runs all
/// take the forwarding path.
const RUNS_PER_CALL: u32 = 254;

/// Peer `i`'s overlay address: 10.99.200.2 ..= 10.99.200.251.
fn peer_v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 200, 2 + (i % 250) as u8)
}

/// The sender of the `filtered` frames: a peer (slot `peers`) that
/// originates them.
const SENDER_PEER: Ipv4Addr = Ipv4Addr::new(10, 99, 200, 254);
/// The sender of the `bare` frames: not a peer.
const SENDER_OTHER: Ipv4Addr = Ipv4Addr::new(10, 99, 200, 253);
const SENDER_ID: [u8; 32] = [0xe5; 32];

/// The real datapath, loaded with peer slots for `peers` peers and the sender.
fn load_datapath(peers: u32) -> Result<Dataplane> {
    let opts = LoadOptions { max_peers: peers + 1, ..Default::default() };
    Dataplane::load(opts).with_context(|| format!("loading the datapath for {peers} peers"))
}

/// A namespace with a veth pair, this node at 10.99.200.1/24 on TR_DEV,
/// forwarding on, and permanent neighbours for every peer address.
fn scratch(name: String) -> Result<Netns> {
    let ns = Netns::new(name)?;
    veth(&ns, TR_DEV, &ns, TR_PEER_DEV)?;
    ns.addr(TR_DEV, &format!("{TR_ADDR}/24"))?;
    for i in 0..250u32 {
        let lladdr = format!("02:99:00:00:{:02x}:{:02x}", i >> 8, i & 0xff);
        ns.ip(&["neigh", "replace", &peer_v4(i).to_string(), "lladdr", &lladdr, "dev", TR_DEV, "nud", "permanent"])?;
    }
    // The sender is a peer too, so routes may lead to it.
    ns.ip(&[
        "neigh",
        "replace",
        &SENDER_PEER.to_string(),
        "lladdr",
        "02:99:00:00:00:fe",
        "dev",
        TR_DEV,
        "nud",
        "permanent",
    ])?;
    for key in ["all", "default", TR_DEV] {
        ns.sysctl(&format!("net.ipv4.conf.{key}.forwarding"), "1")?;
    }
    Ok(ns)
}

pub fn testrun_cmd(a: TestrunArgs) -> Result<()> {
    let name = a.netns_name.clone().unwrap_or_else(|| p2p_tests::util::unique("testrun"));
    let ns = scratch(name)?;
    let args = a.clone();
    let v = p2p_tests::netns::enter(ns.name(), move || measure(&args))??;
    drop(ns);
    if a.json {
        println!("{v}");
    } else {
        print_text(&v);
    }
    Ok(())
}

fn measure(a: &TestrunArgs) -> Result<Value> {
    let idx = frame::ifindex(TR_DEV)?;
    let dev_mac = iface_mac(TR_DEV)?;
    let repeat = a.repeat.max(RUNS_PER_CALL);
    let frame_to = |variant: Variant, key: [u8; 32]| {
        let (sender, origin) = match variant {
            Variant::Bare => (SENDER_OTHER, random_id()),
            Variant::Filtered => (SENDER_PEER, SENDER_ID),
        };
        let p = data_packet_from(origin, key, a.payload, 255);
        udp4_frame(dev_mac, [2, 0x99, 0, 0, 0, 0xfe], sender, TR_ADDR, DEFAULT_OVERLAY_PORT, DEFAULT_OVERLAY_PORT, &p)
    };

    // Reference points on the same kind of frame: the harness (a program
    // that returns at once), the minimal forwarder, one fib lookup.
    let sample = frame_to(Variant::Bare, random_id());
    let mut bench = obj::load(&[obj::PROG_PASS, obj::PROG_MINFWD, obj::PROG_FIB, obj::PROG_COUNT])?;
    let mut cfg = [0u8; 32];
    cfg[0..6].copy_from_slice(&[2, 0x99, 0, 0, 0, 1]);
    cfg[6..12].copy_from_slice(&dev_mac);
    cfg[12..16].copy_from_slice(&TR_ADDR.octets());
    cfg[16..20].copy_from_slice(&peer_v4(0).octets());
    cfg[20..22].copy_from_slice(&DEFAULT_OVERLAY_PORT.to_be_bytes());
    obj::set0(&mut bench, obj::MAP_FWD, cfg)?;
    obj::set_tx_port(&mut bench, idx)?;
    obj::set0(&mut bench, obj::MAP_PORT, DEFAULT_OVERLAY_PORT as u32)?;
    let (_, harness_ns) = obj::time_prog(obj::xdp(&mut bench, obj::PROG_PASS)?, &sample, idx, repeat)?;
    let (minfwd_verdict, minfwd_ns) = obj::time_prog(obj::xdp(&mut bench, obj::PROG_MINFWD)?, &sample, idx, repeat)?;
    let (fib_verdict, fib_ns) = obj::time_prog(obj::xdp(&mut bench, obj::PROG_FIB)?, &sample, idx, repeat)?;
    let (_, count_ns) = obj::time_prog(obj::xdp(&mut bench, obj::PROG_COUNT)?, &sample, idx, repeat)?;
    drop(bench);

    let mut rows = Vec::new();
    for &n in &a.peers {
        if signals::stopped() {
            bail!("interrupted");
        }
        rows.extend(measure_table(a, n, idx, repeat, &frame_to)?);
    }
    Ok(json!({
        "repeat": repeat,
        "runs_per_call": RUNS_PER_CALL,
        "frame_bytes": sample.len(),
        "harness_ns": harness_ns,
        "minfwd_ns": minfwd_ns,
        "minfwd_verdict": minfwd_verdict,
        "fib_lookup_ns": fib_ns,
        "fib_lookup_ok": fib_verdict == XDP_TX,
        "counter_ns": count_ns,
        "method": "Dataplane::test_run_repeat, 254 runs per call, STATS fwd checked",
        "datapath": rows,
    }))
}

#[derive(Clone, Copy)]
enum Variant {
    Bare,
    Filtered,
}

/// One routing-table size, both variants: `keys` random destination keys,
/// `repeat` runs each.
fn measure_table(
    a: &TestrunArgs,
    n: u32,
    idx: u32,
    repeat: u32,
    frame_to: &dyn Fn(Variant, [u8; 32]) -> Vec<u8>,
) -> Result<Vec<Value>> {
    let mut dp = load_datapath(n)?;
    // Attached, the program stays in the kernel's XDP dispatcher; else every
    // BPF_PROG_TEST_RUN call adds and removes it there, and waits for an
    // RCU grace period each time (~25 ms: minutes over a measurement).
    dp.attach(TR_PEER_DEV, AttachMode::Auto, false)?;
    let self_id = random_id();
    dp.set_config(self_id, DEFAULT_OVERLAY_PORT, 0)?;
    dp.set_iface(idx, IfaceAddrs { v4: TR_ADDR.octets(), flags: IFACE_HAS_V4, v6: [0; 16] })?;
    let entry = |node_id: [u8; 32], addr: Ipv4Addr| PeerEntry {
        node_id,
        addr: addr_to_mapped(addr.into()),
        port: DEFAULT_OVERLAY_PORT,
        flags: PEER_LIVE | PEER_V4,
        ..Default::default()
    };
    let mut slots: Vec<SlotEntry> = (0..n)
        .map(|i| {
            let peer = entry(random_id(), peer_v4(i));
            let endpoints = vec![LinkKey { addr: peer.addr, port: peer.port, _pad: 0 }];
            SlotEntry { slot: i, peer, endpoints, budget: RateBudget::UNLIMITED }
        })
        .collect();
    // A budget TEST_RUN's rate never reaches: every packet pays the GCRA.
    let sender = entry(SENDER_ID, SENDER_PEER);
    // Repeated runs work on the frame the previous run rewrote, which comes
    // from this node's address: that address is the sender's too, so that
    // every run, not just the first, takes the peer's path.
    let endpoints = vec![
        LinkKey { addr: sender.addr, port: sender.port, _pad: 0 },
        LinkKey { addr: addr_to_mapped(TR_ADDR.into()), port: DEFAULT_OVERLAY_PORT, _pad: 0 },
    ];
    slots.push(SlotEntry { slot: n, peer: sender, endpoints, budget: RateBudget::new(100_000_000, 0, 1_000_000_000) });
    let live: Vec<(u32, [u8; 32])> = slots.iter().map(|e| (e.slot, e.peer.node_id)).collect();
    let table = route_build::build(&self_id, &live)?;
    let t = Instant::now();
    dp.set_peers_routed(&slots, &table)?;
    let install_ms = t.elapsed().as_secs_f64() * 1e3;

    let bare = measure_variant(&mut dp, a, n, idx, repeat, |k| frame_to(Variant::Bare, k), &mut no_hook)?;
    dp.block(BlockTarget::Node([0xbb; 32]), BlockEntry { expires_ns: 0, ..Default::default() })?;
    let net = BlockTarget::Net { addr: addr_to_mapped(Ipv4Addr::new(192, 0, 2, 0).into()), prefix_len: 96 + 24 };
    dp.block(net, BlockEntry { expires_ns: 0, ..Default::default() })?;
    let filtered = measure_variant(&mut dp, a, n, idx, repeat, |k| frame_to(Variant::Filtered, k), &mut no_hook)?;
    // `auth`: as `filtered`, with every link keyed and `--auth required`:
    // each run verifies the tag (SipHash-2-4), checks and marks the
    // sequence number, and tags the packet anew for the next hop. One key
    // for every link, since repeated runs verify what the run before sent.
    let key = [0x6b; 16];
    let secret = LinkSecret { rx: [key, [0; 16]], tx: key, rx_id: [9, 0], tx_id: 9, _pad: [0; 5] };
    let keys = slots.iter().flat_map(|e| e.endpoints.iter().map(|ep| (*ep, secret))).collect();
    dp.set_link_keys(&keys)?;
    dp.set_config(self_id, DEFAULT_OVERLAY_PORT, POLICY_AUTH_VERIFY | POLICY_AUTH_REQUIRED)?;
    // Each call starts again from the frame as built: it gets a fresh
    // sequence number (stream 254); each key starts with empty windows
    // (the next hop's own sequence stream starts where it stood).
    let mut seq = 0u32;
    let mut reseal = |dp: &mut Dataplane, frame: &mut Vec<u8>, new_key: bool| -> Result<()> {
        if new_key {
            dp.forget_replay_windows()?;
        }
        seq += 1;
        p2p_common::auth::seal(&mut frame[OVERLAY_AT..], &key, 9, 254, seq);
        Ok(())
    };
    let auth = measure_variant(&mut dp, a, n, idx, repeat, |k| frame_to(Variant::Filtered, k), &mut reseal)?;
    let row = |variant: &str, mut v: Value| {
        v["peers"] = json!(n);
        v["variant"] = json!(variant);
        v["install_ms"] = json!(install_ms);
        v
    };
    Ok(vec![row("bare", bare), row("filtered", filtered), row("auth", auth)])
}

/// Where the overlay header starts in the IPv4 frames measured.
const OVERLAY_AT: usize = 14 + 20 + 8;

/// A variant's preparation of the frame before each BPF_PROG_TEST_RUN
/// call (`true`: the first call for a new key).
type Hook<'a> = dyn FnMut(&mut Dataplane, &mut Vec<u8>, bool) -> Result<()> + 'a;

fn no_hook(_: &mut Dataplane, _: &mut Vec<u8>, _: bool) -> Result<()> {
    Ok(())
}

/// `keys` random destination keys, `repeat` runs each, in frames from
/// `frame_to` (prepared by `hook` before each call); every run must be
/// counted as a forward.
fn measure_variant(
    dp: &mut Dataplane,
    a: &TestrunArgs,
    n: u32,
    idx: u32,
    repeat: u32,
    frame_to: impl Fn([u8; 32]) -> Vec<u8>,
    hook: &mut Hook<'_>,
) -> Result<Value> {
    let fwd_before = dp.stats()?[FWD as usize].packets;
    let mut samples = Vec::new();
    let mut verdicts = std::collections::BTreeMap::<u32, usize>::new();
    let mut runs_total: u64 = 0;
    for _ in 0..a.keys.max(1) {
        if signals::stopped() {
            bail!("interrupted");
        }
        let mut frame = frame_to(random_id());
        hook(dp, &mut frame, true)?;
        let verdict = dp.test_run(&frame, idx)?.verdict;
        runs_total += 1;
        *verdicts.entry(verdict).or_default() += 1;
        let mut total_ns = 0f64;
        let mut runs = 0u32;
        while runs < repeat {
            hook(dp, &mut frame, false)?;
            let d = dp.test_run_repeat(&frame, idx, RUNS_PER_CALL)?;
            total_ns += d.as_nanos() as f64 * RUNS_PER_CALL as f64;
            runs += RUNS_PER_CALL;
        }
        runs_total += runs as u64;
        samples.push(total_ns / runs as f64);
    }
    let fwd_counted = dp.stats()?[FWD as usize].packets - fwd_before;
    let forwarded_keys: usize =
        verdicts.iter().filter(|(v, _)| **v == XDP_TX || **v == XDP_REDIRECT).map(|(_, c)| c).sum();
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let min = samples.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = samples.iter().cloned().fold(0.0, f64::max);
    if fwd_counted != runs_total {
        bail!(
            "with {n} peers the datapath counted {fwd_counted} forwards for {runs_total} runs \
             (verdicts {verdicts:?}): the ns figure would not be the forwarding path's"
        );
    }
    Ok(json!({
        "ns_per_packet": mean,
        "min_ns": min,
        "max_ns": max,
        "keys": samples.len(),
        "forwarded_keys": forwarded_keys,
        "verdicts": verdicts.iter().map(|(v, c)| (v.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "runs": runs_total,
        "fwd_counted": fwd_counted,
    }))
}

fn print_text(v: &Value) {
    println!(
        "BPF_PROG_TEST_RUN, {} runs per measurement, {}-byte frame ({})",
        v["repeat"],
        v["frame_bytes"],
        v["method"].as_str().unwrap_or("")
    );
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    println!("  harness (XDP_PASS program)   {:>8.1} ns", f("harness_ns"));
    println!("  minimal forwarder            {:>8.1} ns", f("minfwd_ns"));
    println!("  counter at C (count and drop) {:>7.1} ns", f("counter_ns"));
    println!("  one bpf_fib_lookup (probe)   {:>8.1} ns  (success: {})", f("fib_lookup_ns"), v["fib_lookup_ok"]);
    for r in v["datapath"].as_array().into_iter().flatten() {
        println!(
            "  p2p_xdp, {:>7} peers, {:<8} {:>8.1} ns  (min {:.1}, max {:.1}; {}/{} keys forwarded; fwd {} of {} runs)",
            r["peers"],
            r["variant"].as_str().unwrap_or(""),
            r["ns_per_packet"].as_f64().unwrap_or(0.0),
            r["min_ns"].as_f64().unwrap_or(0.0),
            r["max_ns"].as_f64().unwrap_or(0.0),
            r["forwarded_keys"],
            r["keys"],
            r["fwd_counted"],
            r["runs"],
        );
    }
}
