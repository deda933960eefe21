//! `cargo xtask run`: setup, release build, then
//! - without arguments: a LAN testbed (DESIGN.md "Test topologies") of 4
//!   nodes in namespaces on one bridge, a controller per node, a steady
//!   bounded stream of DATA and LOOKUP packets between them, and a per-node
//!   table of fwd / local / drops per second until Ctrl-C; then everything is
//!   removed (also on error);
//! - with `-- ARGS…`: `p2p-controller run ARGS…` on this box (exec).

use crate::setup;
use crate::util::{cargo, run_inherit, target_dir};
use anyhow::{Context, Result, bail};
use clap::Args;
use p2p_common::codec::Packet;
use p2p_common::counters::COUNTER_NAMES;
use p2p_common::id::NodeId;
use p2p_common::wire::{KIND_LOOKUP_REPLY, STATUS_FOUND};
use p2p_tests::node::{Controller, Node, NodeSpec, XdpPass, packets};
use p2p_tests::topo::Lan;
use p2p_tests::traffic::{self, keys_owned_by, send_one, socket_in};
use p2p_tests::util::TempDir;
use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct RunArgs {
    /// Testbed: offered load in packets/s, all hosts together (bounded: 1..=50000).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub rate: u32,
    /// Testbed: number of nodes on the bridge (2..=16).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(2..=16))]
    pub nodes: u8,
    /// Testbed: share of LOOKUPs in the stream, in percent.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub lookup_percent: u8,
    /// Arguments for `p2p-controller run` on this box (after `--`), e.g. `-- --iface eth0 --peers peers.json`.
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

/// What a generator needs to know about each node.
struct Target {
    overlay: SocketAddr,
    id: NodeId,
    /// Record keys this node owns (XOR-closest among all nodes).
    keys: Vec<String>,
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
    println!("==> testbed: {n} nodes on a bridge, 10.99.0.1-{n}/24, each in its own network namespace");
    // Declaration order = reverse drop order: threads, nodes, xdp-pass,
    // namespaces, temp dir.
    let tmp = TempDir::new("run")?;
    let lan = Lan::new(n)?;
    let _pass = XdpPass::start(&ctl, &lan.bridge, &lan.port_names(), &tmp.join("xdp-pass.log"))?;

    let mut specs = Vec::new();
    for i in 1..=n {
        specs.push(NodeSpec::new(&ctl, tmp.path(), &format!("h{i}"), lan.host(i), &[Lan::HOST_IF], Lan::addr(i))?);
    }
    let ids: Vec<NodeId> = specs.iter().map(|s| s.node_id).collect();
    let mut targets = Vec::new();
    for (i, spec) in specs.iter_mut().enumerate() {
        let keys = keys_owned_by("demo", i, &ids, 8);
        spec.records = keys.iter().map(|k| (k.clone(), format!("value of {k}"))).collect();
        targets.push(Target { overlay: spec.overlay(), id: spec.node_id, keys });
    }
    let targets = Arc::new(targets);

    let mut nodes = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let peers: Vec<Value> =
            specs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, s)| s.peer_entry()).collect();
        println!("    start {} ({}) in {} as instance {}", spec.name, spec.addr, spec.netns, spec.instance);
        nodes.push(Node::start(&ctl, spec, &peers)?);
    }
    let mut modes = Vec::new();
    for node in &mut nodes {
        let st = node.wait_ready(Duration::from_secs(30))?;
        let mode = match st["xdp_mode"].as_str() {
            Some(m) => format!("{}/{m}", st["datapath"].as_str().unwrap_or("?")),
            None => st["datapath"].as_str().unwrap_or("?").to_string(),
        };
        modes.push(mode);
    }
    println!("==> all {n} controllers ready; logs and state in {}", tmp.path().display());

    let sent = Arc::new(AtomicU64::new(0));
    let replies = Arc::new(AtomicU64::new(0));
    let mut threads: Vec<JoinHandle<Result<()>>> = Vec::new();
    let per_host = (args.rate as f64 / n as f64).max(1.0);
    for (i, spec) in specs.iter().enumerate() {
        let sock = socket_in(&spec.netns, SocketAddr::new(spec.addr, 0))?;
        let rx = sock.try_clone()?;
        let replies = replies.clone();
        threads.push(std::thread::spawn(move || receiver(rx, replies)));
        let (targets, sent) = (targets.clone(), sent.clone());
        let lookup_percent = args.lookup_percent as u64;
        threads.push(std::thread::spawn(move || generator(sock, i, targets, per_host, lookup_percent, sent)));
    }
    println!(
        "==> sending ~{} packets/s ({}% LOOKUP) from every host to random first hops; Ctrl-C to stop",
        args.rate, args.lookup_percent
    );

    let result = monitor(&mut nodes, &modes, &sent, &replies, &threads);
    STOP.store(true, Ordering::SeqCst);
    for t in threads {
        match t.join() {
            Ok(Err(e)) => eprintln!("traffic thread: {e:#}"),
            Err(_) => eprintln!("traffic thread panicked"),
            Ok(Ok(())) => {}
        }
    }
    println!("==> stopping controllers and removing the testbed");
    drop(nodes);
    result
}

/// Prints a table every second until STOP.
fn monitor(
    nodes: &mut [Node],
    modes: &[String],
    sent: &AtomicU64,
    replies: &AtomicU64,
    threads: &[JoinHandle<Result<()>>],
) -> Result<()> {
    let start = Instant::now();
    let mut prev: Vec<Option<Value>> = vec![None; nodes.len()];
    let (mut prev_sent, mut prev_replies) = (0, 0);
    let mut next = Instant::now() + Duration::from_secs(1);
    while !STOP.load(Ordering::SeqCst) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        next += Duration::from_secs(1);
        if threads.iter().any(|t| t.is_finished()) {
            bail!("a traffic thread stopped early (see below)");
        }
        let (s, r) = (sent.load(Ordering::Relaxed), replies.load(Ordering::Relaxed));
        println!(
            "\n[{:>5}s] sent {}/s, lookup replies {}/s",
            start.elapsed().as_secs(),
            s - prev_sent,
            r - prev_replies
        );
        (prev_sent, prev_replies) = (s, r);
        println!(
            "  {:<6} {:<12} {:>9} {:>9} {:>9} {:>10}",
            "node", "datapath", "fwd/s", "local/s", "drops/s", "fwd_slow/s"
        );
        for (i, node) in nodes.iter_mut().enumerate() {
            node.check_alive()?;
            let stats = node.stats().with_context(|| format!("stats of {}", node.name()))?;
            let d = |c: &str| packets(&stats, c) - prev[i].as_ref().map_or(0, |p| packets(p, c));
            let drops: u64 = COUNTER_NAMES.iter().filter(|c| c.starts_with("drop_")).map(|c| d(c)).sum();
            println!(
                "  {:<6} {:<12} {:>9} {:>9} {:>9} {:>10}",
                node.name(),
                modes[i],
                d("fwd"),
                d("local"),
                drops,
                d("fwd_slow")
            );
            prev[i] = Some(stats);
        }
    }
    println!();
    Ok(())
}

/// Xorshift64: enough randomness for picking targets, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Sends from host `me` at `rate` packets/s: to a random other node j as
/// the first hop, DATA for a random node k != j or a LOOKUP for a key k owns,
/// so that j forwards every packet.
fn generator(
    sock: UdpSocket,
    me: usize,
    targets: Arc<Vec<Target>>,
    rate: f64,
    lookup_percent: u64,
    sent: Arc<AtomicU64>,
) -> Result<()> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seed = now.as_nanos() as u64 ^ (me as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = Rng(seed | 1);
    let reply = sock.local_addr()?;
    let src = targets[me].id;
    let n = targets.len();
    let start = Instant::now();
    let mut count: u64 = 0;
    while !STOP.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        if count >= due {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let j = (me + 1 + rng.below(n - 1)) % n;
        let k = (j + 1 + rng.below(n - 1)) % n;
        let t = &targets[k];
        let pkt = if rng.next() % 100 < lookup_percent && !t.keys.is_empty() {
            traffic::lookup(src, &t.keys[rng.below(t.keys.len())], reply, count)
        } else {
            traffic::data(src, t.id, count, 64)
        };
        send_one(&sock, targets[j].overlay, &pkt)?;
        count += 1;
        sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Counts the LOOKUP_REPLYs (status found) that come back to a host's socket.
fn receiver(sock: UdpSocket, replies: Arc<AtomicU64>) -> Result<()> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = vec![0u8; 65536];
    while !STOP.load(Ordering::Relaxed) {
        if let Ok((len, _)) = sock.recv_from(&mut buf)
            && let Ok(p) = Packet::decode(&buf[..len])
            && p.kind == KIND_LOOKUP_REPLY
            && p.payload.first() == Some(&STATUS_FOUND)
        {
            replies.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
