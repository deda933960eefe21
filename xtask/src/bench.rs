//! `cargo xtask bench forward`: transit capacity of B in the chain A — B — C
//! (DESIGN.md "Benchmark method"). `cargo xtask bench lookup` is in
//! `bench_lookup.rs`.
//!
//! - A generates with the XDP live-frames generator (`p2p-bench gen`,
//!   BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES) on CPU 0. The tools are
//!   `p2p-bench` (`tests/bench`), not part of the product.
//! - B's work runs on CPU 1. The generator hands its frames to CPU 1's
//!   cpumap thread, which sends them out of A's veth, so B's NAPI (softirq:
//!   its XDP program, or the stack and the userspace relay's receive path)
//!   runs on CPU 1; the forwarder process is pinned there too. (DESIGN.md's
//!   threaded NAPI is `--rx threaded`: on the 6.18 kernel here a threaded
//!   veth NAPI loses 30-80% of the frames even at 20k pps, lost wake-ups.)
//! - C counts overlay frames with an XDP program that counts and drops
//!   (`p2p-bench count`); that work runs in softirq on B's
//!   core, right after B's redirect (a napi thread beside the generator
//!   would starve and drop).
//! - B is, in turn: the real datapath in XDP mode (offered flat out), the
//!   userspace datapath (capacity = the peak of an offered-rate sweep, since
//!   an overloaded relay collapses), and the minimal XDP forwarder (`p2p-bench
//!   minfwd`: parse, fixed rewrite, redirect) as the ceiling; 3 rounds,
//!   alternated, medians and ratios from the same run.
//! - Then BPF_PROG_TEST_RUN ns per packet of the real datapath with 1k, 10k
//!   and 100k peers (`p2p-bench testrun`).
//!
//! Everything lives in namespaces `pbench-<pid>-*` made here and deleted on
//! exit, on error and on Ctrl-C; traffic is bounded by the run lengths.

use anyhow::{Context, Result, bail};
use clap::Args;
use p2p_tests::netns::{Netns, veth};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util;

#[derive(Args)]
pub struct BenchArgs {
    /// Which benchmark: `forward` (XDP vs userspace transit capacity,
    /// TEST_RUN ns/packet) or `lookup` (lookup RTT over the kernel path vs
    /// Kademlia's iterative get, 12-node testbed).
    #[arg(default_value = "forward", value_parser = ["forward", "lookup"])]
    pub which: String,
    /// lookup: nodes in the testbed.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u16).range(2..=64))]
    pub nodes: u16,
    /// lookup: samples (each one lookup and one Kademlia get).
    #[arg(long, default_value_t = 400)]
    pub lookups: usize,
    /// lookup: records put into the DHT first.
    #[arg(long, default_value_t = 100)]
    pub records: usize,
    /// lookup: Kademlia bucket size (2, as in the 12-node test, makes
    /// lookups cross transit nodes; 20 is libp2p's default).
    #[arg(long, default_value_t = 2)]
    pub kbucket_size: usize,
    /// Rounds of XDP / userspace / minimal forwarder, alternated.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds per XDP and minimal-forwarder run (offered flat out).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Offered rates (pps) of the userspace sweep.
    #[arg(long, value_delimiter = ',', default_value = "50000,100000,150000,200000,250000,300000,400000")]
    pub rates: Vec<u64>,
    /// Seconds per step of the userspace sweep.
    #[arg(long, default_value_t = 3.0)]
    pub sweep_seconds: f64,
    /// Routing-table sizes for the TEST_RUN measurement.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub peers: Vec<u32>,
    /// Overlay payload bytes of the DATA frames.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Forwarders to measure (all three for the report's ratios).
    #[arg(long, value_delimiter = ',', default_value = "xdp,userspace,minimal")]
    pub modes: Vec<String>,
    /// Skip the TEST_RUN measurement.
    #[arg(long)]
    pub no_testrun: bool,
    /// How B's receive work gets onto B's core: `cpumap` (the generator sends
    /// from B's CPU's cpumap thread) or `threaded` (threaded NAPI, pinned).
    #[arg(long, default_value = "cpumap", value_parser = ["cpumap", "threaded"])]
    pub rx: String,
    /// Use the existing release build.
    #[arg(long)]
    pub no_build: bool,
    /// JSON report [default: target/bench/<which>.json]
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const PORT: u16 = 9470;
const A_IP: &str = "10.99.1.1";
const B_LEFT_IP: &str = "10.99.1.2";
const B_RIGHT_IP: &str = "10.99.2.2";
const C_IP: &str = "10.99.2.3";
const A_DEV: &str = "pbA0";
const B_IN: &str = "pbB0";
const B_OUT: &str = "pbB1";
const C_DEV: &str = "pbC0";
/// Nice value of everything the benchmark runs (B's napi thread too).
const PRIORITY: &str = "-10";
/// Measurement window: skip this much of each run's start and end.
const WARMUP: Duration = Duration::from_millis(1000);
const COOLDOWN: Duration = Duration::from_millis(200);

pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub(crate) fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn bench(args: BenchArgs) -> Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    if !args.no_build {
        let mut c = util::cargo();
        c.args(["build", "--release", "-p", "p2p-controller", "-p", "p2p-bench"]);
        util::run_inherit(&mut c, "cargo build --release -p p2p-controller -p p2p-bench")?;
    }
    let bin = util::target_dir().join("release/p2p-controller");
    let tool = util::target_dir().join("release/p2p-bench");
    for b in [&bin, &tool] {
        if !b.is_file() {
            bail!("{} is missing; run without --no-build", b.display());
        }
    }
    if util::stdout_of("mountpoint", ["-q", "/sys/fs/bpf"]).is_none() {
        bail!("bpffs is not mounted at /sys/fs/bpf: run `cargo xtask setup`");
    }
    if args.which == "lookup" {
        let report = crate::bench_lookup::run(&args, bin)?;
        return write_report(&args, &report);
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (gen_cpu, b_cpu) = if cpus >= 2 { (0, 1) } else { (0, 0) };
    if cpus < 2 {
        println!("warning: one CPU only: generator and B share it, figures are not meaningful");
    }
    let rig = Rig::new(bin, tool, gen_cpu, b_cpu, args.payload, args.rx == "threaded")?;
    let result = forward(&rig, &args);
    drop(rig);
    write_report(&args, &result?)
}

fn write_report(args: &BenchArgs, report: &Value) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| util::target_dir().join(format!("bench/{}.json", args.which)));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("write {}", out.display()))?;
    println!("\nwrote {}", out.display());
    Ok(())
}

// ------------------------------------------------------------------ the rig

/// A — B — C, the counter at C, temp files; all removed on drop.
struct Rig {
    bin: PathBuf,
    tool: PathBuf,
    prefix: String,
    tmp: PathBuf,
    a: Netns,
    b: Netns,
    c: Netns,
    b_mac: String,
    c_mac: String,
    c_id: String,
    gen_cpu: usize,
    b_cpu: usize,
    payload: usize,
    /// Threaded NAPI on B's ingress instead of sending from B's CPU.
    threaded: bool,
    counter: Mutex<Option<Child>>,
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
}

impl Rig {
    fn new(bin: PathBuf, tool: PathBuf, gen_cpu: usize, b_cpu: usize, payload: usize, threaded: bool) -> Result<Rig> {
        let prefix = format!("pbench-{}", std::process::id());
        let tmp = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&tmp)?;
        println!("==> topology: {prefix}-a — {prefix}-b — {prefix}-c (10.99.1.0/24, 10.99.2.0/24)");
        let a = Netns::new(format!("{prefix}-a"))?;
        let b = Netns::new(format!("{prefix}-b"))?;
        let c = Netns::new(format!("{prefix}-c"))?;
        veth(&a, A_DEV, &b, B_IN)?;
        veth(&b, B_OUT, &c, C_DEV)?;
        a.addr(A_DEV, &format!("{A_IP}/24"))?;
        b.addr(B_IN, &format!("{B_LEFT_IP}/24"))?;
        b.addr(B_OUT, &format!("{B_RIGHT_IP}/24"))?;
        c.addr(C_DEV, &format!("{C_IP}/24"))?;
        a.route("10.99.2.0/24", B_LEFT_IP)?;
        c.route("10.99.1.0/24", B_RIGHT_IP)?;
        let b_mac = mac_of(&b, B_IN)?;
        let c_mac = mac_of(&c, C_DEV)?;
        // B never has to resolve C during a run (and A nothing: it only sends).
        b.ip(&["neigh", "replace", C_IP, "lladdr", &c_mac, "dev", B_OUT, "nud", "permanent"])?;
        // B's ingress: GRO on (NAPI for XDP_TX'd frames without an XDP
        // program, and the userspace relay's receive path), TSO off. C's
        // veth: its counting runs in softirq right after B's redirect, on
        // B's core (a small fixed cost per packet, the same for every B).
        for (ns, dev) in [(&b, B_IN), (&c, C_DEV)] {
            if let Err(e) = ns.exec("ethtool", &["-K", dev, "gro", "on", "tso", "off"]) {
                println!("warning: ethtool -K {dev}: {e:#}");
            }
        }
        if threaded {
            sysfs_write(&b, &format!("/sys/class/net/{B_IN}/threaded"), "1")?;
        }
        let mut id = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut id)?;
        let c_id = p2p_common::id::NodeId(id).to_hex();
        std::fs::write(
            tmp.join("peers.json"),
            serde_json::to_string(&json!([{"node_id": c_id, "addr": C_IP, "port": PORT}]))?,
        )?;
        let rig = Rig {
            bin,
            tool,
            prefix,
            tmp,
            a,
            b,
            c,
            b_mac,
            c_mac,
            c_id,
            gen_cpu,
            b_cpu,
            payload,
            threaded,
            counter: Mutex::new(None),
            samples: Arc::new(Mutex::new(Vec::new())),
        };
        rig.start_counter()?;
        Ok(rig)
    }

    /// `p2p-controller` pinned to `cpu` at raised priority (nice
    /// PRIORITY): the box may be shared, and a forwarder or generator that
    /// waits for CPU time would measure the neighbours, not itself.
    fn ctl(&self, cpu: Option<usize>) -> Command {
        self.pinned(&self.bin, cpu)
    }

    /// `p2p-bench` the same way.
    fn tool(&self, cpu: Option<usize>) -> Command {
        self.pinned(&self.tool, cpu)
    }

    fn pinned(&self, bin: &Path, cpu: Option<usize>) -> Command {
        let mut c = Command::new("nice");
        c.args(["-n", PRIORITY]);
        if let Some(cpu) = cpu {
            c.arg("taskset").arg("-c").arg(cpu.to_string());
        }
        c.arg(bin);
        c
    }

    /// `p2p-bench count` at C, its samples collected by a reader thread.
    fn start_counter(&self) -> Result<()> {
        let mut child = self
            .tool(Some(self.gen_cpu))
            .args(["count", "--netns", self.c.name(), "--iface", C_DEV, "--interval-ms", "100"])
            .args(["--port", &PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(self.tmp.join("count.log"))?))
            .spawn()
            .context("start the counter at C")?;
        let stdout = child.stdout.take().expect("piped");
        *self.counter.lock().unwrap() = Some(child);
        let samples = self.samples.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                if v.get("ready").is_some() {
                    let _ = ready_tx.send(());
                }
                if let Some(p) = v["packets"].as_u64() {
                    samples.lock().unwrap().push((Instant::now(), p));
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            bail!("the counter at C did not start: {}", util_tail(&self.tmp.join("count.log")));
        }
        Ok(())
    }

    /// Packets per second delivered at C between `from` and `to`.
    fn delivered(&self, from: Instant, to: Instant) -> Option<f64> {
        let s = self.samples.lock().unwrap();
        let first = s.iter().find(|(t, _)| *t >= from)?;
        let last = s.iter().rev().find(|(t, _)| *t <= to)?;
        let dt = last.0.checked_duration_since(first.0)?.as_secs_f64();
        (dt > 0.2).then(|| (last.1 - first.1) as f64 / dt)
    }

    /// Starts B in `mode`; returns once it forwards.
    fn start_b(&self, mode: Mode) -> Result<Forwarder> {
        let instance = format!("{}-b", self.prefix);
        let log = self.tmp.join(format!("b-{}.log", mode.name()));
        let mut cmd = if mode == Mode::Minimal { self.tool(Some(self.b_cpu)) } else { self.ctl(Some(self.b_cpu)) };
        match mode {
            Mode::Xdp | Mode::Userspace => {
                cmd.args(["run", "--netns", self.b.name(), "--iface", B_IN, "--iface", B_OUT])
                    .args(["--datapath", if mode == Mode::Xdp { "xdp" } else { "userspace" }])
                    .arg("--peers")
                    .arg(self.tmp.join("peers.json"))
                    .arg("--state-dir")
                    .arg(self.tmp.join("b-state"))
                    .args(["--instance", &instance]);
            }
            Mode::Minimal => {
                cmd.args(["minfwd", "--netns", self.b.name(), "--iface", B_IN, "--out-iface", B_OUT])
                    .args(["--dst-mac", &self.c_mac, "--src-ip", B_RIGHT_IP, "--dst-ip", C_IP])
                    .args(["--port", &PORT.to_string()]);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .spawn()
            .with_context(|| format!("start B ({})", mode.name()))?;
        let mut fwd = Forwarder { child: Some(child), log, instance, mode, bin: self.bin.clone() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            check_interrupt()?;
            if let Some(st) = fwd.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("B ({}) exited ({st}):\n{}", mode.name(), util_tail(&fwd.log));
            }
            if fwd.is_up() {
                break;
            }
            if Instant::now() > deadline {
                bail!("B ({}) did not come up in 20 s:\n{}", mode.name(), util_tail(&fwd.log));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The napi thread of B's ingress (re)appears with XDP attach/detach.
        std::thread::sleep(Duration::from_millis(300));
        if self.threaded && !pin_napi(B_IN, self.b_cpu) {
            println!("warning: no napi thread for {B_IN}: B's receive work is not pinned");
        }
        Ok(fwd)
    }

    /// Runs the generator at `pps` (0 = flat out) for `secs`; returns
    /// (offered pps, delivered pps at C over the window).
    fn offer(&self, pps: u64, secs: f64) -> Result<(f64, f64)> {
        check_interrupt()?;
        let t0 = Instant::now();
        let out = self
            .tool(Some(self.gen_cpu))
            .args(["gen", "--netns", self.a.name(), "--iface", A_DEV, "--dst-mac", &self.b_mac])
            .args(["--src-ip", A_IP, "--dst-ip", B_LEFT_IP, "--port", &PORT.to_string(), "--dst-key", &self.c_id])
            .args(["--payload", &self.payload.to_string(), "--pps", &pps.to_string()])
            .args(["--seconds", &secs.to_string(), "--json"])
            .args(if self.threaded { vec![] } else { vec!["--via-cpu".to_string(), self.b_cpu.to_string()] })
            .stdin(Stdio::null())
            .output()
            .context("run the generator")?;
        let t1 = Instant::now();
        if !out.status.success() {
            bail!("generator failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("generator output")?;
        let offered = v["pps"].as_f64().unwrap_or(0.0);
        // Let the last samples arrive.
        std::thread::sleep(Duration::from_millis(150));
        let from = t0 + WARMUP;
        let to = t1.checked_sub(COOLDOWN).unwrap_or(t1);
        let delivered = self.delivered(from, to).context("too few counter samples in the window")?;
        Ok((offered, delivered))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(c) = self.counter.lock().unwrap().take() {
            stop(c);
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
        // What a killed `p2p-bench testrun` or controller may have left.
        let tr = format!("{}-tr", self.prefix);
        if Path::new("/run/netns").join(&tr).exists() {
            let _ = Command::new("ip").args(["netns", "del", &tr]).status();
        }
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf").join(&tr));
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf/p2p").join(format!("{}-b", self.prefix)));
        // Netns A, B, C delete themselves (their own Drop) after this.
        println!("==> removed {}-*", self.prefix);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Xdp,
    Userspace,
    Minimal,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::Userspace => "userspace",
            Mode::Minimal => "minimal",
        }
    }
}

/// B's forwarding process; stopped on drop.
struct Forwarder {
    child: Option<Child>,
    log: PathBuf,
    instance: String,
    mode: Mode,
    bin: PathBuf,
}

impl Forwarder {
    fn is_up(&self) -> bool {
        match self.mode {
            Mode::Minimal => std::fs::read_to_string(&self.log).is_ok_and(|s| s.contains("attached")),
            _ => Command::new(&self.bin)
                .args(["status", "--json", "--instance", &self.instance])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        }
    }

    /// B's STATS counters (real datapath modes), before it stops.
    fn stats(&self) -> Value {
        if self.mode == Mode::Minimal {
            return Value::Null;
        }
        util::stdout_of(&self.bin.display().to_string(), ["maps", "stats", "--json", "--instance", &self.instance])
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop(c);
        }
    }
}

/// SIGTERM, then SIGKILL after 5 s.
fn stop(mut c: Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn util_tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn mac_of(ns: &Netns, dev: &str) -> Result<String> {
    let out = ns.ip(&["-o", "link", "show", "dev", dev])?;
    let mut it = out.split_whitespace();
    while let Some(w) = it.next() {
        if w == "link/ether" {
            return it.next().map(str::to_string).context("no MAC");
        }
    }
    bail!("no MAC address on {dev}")
}

/// Writes a file under /sys as seen from `ns` (`ip netns exec` remounts
/// /sys for the namespace, which is what this needs).
fn sysfs_write(ns: &Netns, path: &str, value: &str) -> Result<()> {
    let st = Command::new("ip")
        .args(["netns", "exec", ns.name(), "sh", "-c", &format!("echo {value} > {path}")])
        .status()?;
    if !st.success() {
        bail!("cannot write {value} to {path} in {}", ns.name());
    }
    Ok(())
}

/// Pins every `napi/<dev>-N` kernel thread to `cpu` (and raises its
/// priority like the processes'); false if none found.
fn pin_napi(dev: &str, cpu: usize) -> bool {
    let prefix = format!("napi/{dev}-");
    let mut found = false;
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            found |= Command::new("taskset")
                .args(["-p", "-c", &cpu.to_string(), pid])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            let _ = Command::new("renice").args(["-n", PRIORITY, "-p", pid]).stdout(Stdio::null()).status();
        }
    }
    found
}

// ------------------------------------------------------------------ the benchmark

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats[name]["packets"].as_u64().unwrap_or(0)
}

fn forward(rig: &Rig, args: &BenchArgs) -> Result<Value> {
    let mut xdp = Vec::new();
    let mut user = Vec::new();
    let mut minimal = Vec::new();
    let mut runs = Vec::new();
    for m in &args.modes {
        if !["xdp", "userspace", "minimal"].contains(&m.as_str()) {
            bail!("--modes: unknown forwarder {m:?} (xdp, userspace, minimal)");
        }
    }
    let want = |m: &str| args.modes.iter().any(|x| x == m);
    println!(
        "==> forward: {} round(s); XDP and minimal {}s flat out, userspace sweep {:?} pps × {}s",
        args.runs, args.seconds, args.rates, args.sweep_seconds
    );
    for round in 1..=args.runs {
        // XDP datapath.
        if want("xdp") {
            let b = rig.start_b(Mode::Xdp)?;
            let (offered, delivered) = rig.offer(0, args.seconds)?;
            let stats = b.stats();
            drop(b);
            println!(
                "  round {round} xdp       offered {:>10.0} pps  delivered {:>10.0} pps  (B fwd {} fwd_slow {})",
                offered,
                delivered,
                counter(&stats, "fwd"),
                counter(&stats, "fwd_slow")
            );
            if delivered < 1.0 {
                println!("    B's log:\n{}", util_tail(&rig.tmp.join("b-xdp.log")));
            }
            xdp.push(delivered);
            runs.push(json!({"round": round, "mode": "xdp", "offered_pps": offered, "delivered_pps": delivered, "b_stats": stats}));
        }
        // Userspace datapath: sweep.
        if want("userspace") {
            let b = rig.start_b(Mode::Userspace)?;
            let mut steps = Vec::new();
            let mut peak: f64 = 0.0;
            let mut below = 0;
            for &rate in &args.rates {
                let (offered, delivered) = rig.offer(rate, args.sweep_seconds)?;
                println!("  round {round} userspace offered {:>10.0} pps  delivered {:>10.0} pps", offered, delivered);
                steps.push(json!({"offered_pps": offered, "delivered_pps": delivered}));
                if delivered > peak {
                    peak = delivered;
                    below = 0;
                } else {
                    below += 1;
                }
                // Past the peak and collapsing: further steps add nothing.
                if below >= 2 && delivered < 0.7 * offered {
                    break;
                }
            }
            let stats = b.stats();
            drop(b);
            println!("  round {round} userspace capacity (peak) {peak:.0} pps (B fwd {})", counter(&stats, "fwd"));
            user.push(peak);
            runs.push(
                json!({"round": round, "mode": "userspace", "capacity_pps": peak, "sweep": steps, "b_stats": stats}),
            );
        }
        // Minimal forwarder: the ceiling.
        if want("minimal") {
            let b = rig.start_b(Mode::Minimal)?;
            let (offered, delivered) = rig.offer(0, args.seconds)?;
            drop(b);
            println!("  round {round} minimal   offered {:>10.0} pps  delivered {:>10.0} pps", offered, delivered);
            minimal.push(delivered);
            runs.push(json!({"round": round, "mode": "minimal", "offered_pps": offered, "delivered_pps": delivered}));
        }
    }
    check_interrupt()?;

    let testrun = if args.no_testrun { Value::Null } else { testrun(rig, args)? };

    let (mx, mu, mm) = (median(&xdp), median(&user), median(&minimal));
    let ratio_user = if mu > 0.0 { mx / mu } else { 0.0 };
    let ratio_min = if mm > 0.0 { mx / mm } else { 0.0 };
    let ns_at = |n: u64| {
        testrun["datapath"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["peers"].as_u64() == Some(n)))
            .and_then(|r| r["ns_per_packet"].as_f64())
    };

    println!();
    println!("forwarding through B (one core), delivered at C, median of {} run(s)", args.runs);
    println!("  {:<34} {:>12} {:>30}", "B", "pps", "runs");
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{:.0}", x)).collect::<Vec<_>>().join(" / ");
    println!("  {:<34} {:>12.0} {:>30}", "XDP datapath (p2p_xdp)", mx, fmt(&xdp));
    println!("  {:<34} {:>12.0} {:>30}", "userspace datapath (sweep peak)", mu, fmt(&user));
    println!("  {:<34} {:>12.0} {:>30}", "minimal XDP forwarder (ceiling)", mm, fmt(&minimal));
    println!("  XDP / userspace  {ratio_user:>6.1}x   (target >= 10x)");
    println!("  XDP / minimal    {:>6.1}%   (target >= 60%)", ratio_min * 100.0);
    println!();
    if !testrun.is_null() {
        println!(
            "BPF_PROG_TEST_RUN ns/packet ({}-byte frame, {}): harness {} ns, minimal forwarder {} ns",
            testrun["frame_bytes"],
            testrun["method"].as_str().unwrap_or(""),
            testrun["harness_ns"],
            testrun["minfwd_ns"]
        );
    }
    for r in testrun["datapath"].as_array().into_iter().flatten() {
        println!(
            "  p2p_xdp with {:>7} peers  {:>7.1} ns  ({}/{} keys forwarded)",
            r["peers"],
            r["ns_per_packet"].as_f64().unwrap_or(0.0),
            r["forwarded_keys"],
            r["keys"]
        );
    }
    if let Some(ns) = ns_at(10_000) {
        println!("  at 10k peers: {ns:.1} ns (target <= 150 ns)");
    }

    let kernel = util::stdout_of("uname", ["-r"]).unwrap_or_default().trim().to_string();
    Ok(json!({
        "benchmark": "forward",
        "command": "cargo xtask bench forward",
        "kernel": kernel,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "method": {
            "generator": "XDP live frames (BPF_PROG_RUN, BPF_F_TEST_XDP_LIVE_FRAMES) on A, CPU 0",
            "b": if args.rx == "threaded" {
                "threaded NAPI on B's ingress veth pinned to CPU 1, forwarder process pinned there too"
            } else {
                "generator frames sent from CPU 1's cpumap thread, so B's NAPI runs on CPU 1; forwarder process pinned there too"
            },
            "counter": "XDP count-and-drop at C",
            "seconds": args.seconds,
            "sweep_seconds": args.sweep_seconds,
            "sweep_rates": args.rates,
            "payload_bytes": args.payload,
            "frame_bytes": testrun["frame_bytes"],
        },
        "xdp_pps": {"runs": xdp, "median": mx},
        "userspace_pps": {"runs": user, "median": mu},
        "minimal_pps": {"runs": minimal, "median": mm},
        "ratio_xdp_userspace": ratio_user,
        "ratio_xdp_minimal": ratio_min,
        "targets": {
            "xdp_over_userspace_ge_10": ratio_user >= 10.0,
            "xdp_over_minimal_ge_0_6": ratio_min >= 0.6,
            "testrun_10k_le_150ns": ns_at(10_000).is_some_and(|n| n <= 150.0),
        },
        "testrun": testrun,
        "runs": runs,
    }))
}

/// `p2p-bench testrun` on B's core, in a namespace of its own.
fn testrun(rig: &Rig, args: &BenchArgs) -> Result<Value> {
    println!("==> BPF_PROG_TEST_RUN with {:?} peers", args.peers);
    let peers_arg = args.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    let out = rig
        .tool(Some(rig.b_cpu))
        .args(["testrun", "--json", "--peers", &peers_arg, "--payload", &args.payload.to_string()])
        .args(["--netns-name", &format!("{}-tr", rig.prefix)])
        .stdin(Stdio::null())
        .output()
        .context("run p2p-bench testrun")?;
    if !out.status.success() {
        bail!("p2p-bench testrun failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("p2p-bench testrun output")
}
