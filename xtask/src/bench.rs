//! `cargo xtask bench forward`: transit capacity of B in the chain A — B — C
//! (DESIGN.md "Benchmark method"). `cargo xtask bench lookup` is in
//! `bench_lookup.rs`. The tools are `p2p-bench` (`tests/bench`): the
//! generator, the counter, the minimal and null forwarders and TEST_RUN.
//!
//! Where the work runs (2 CPUs):
//!
//! - CPU 0: the generator, an XDP live-frames program (BPF_PROG_RUN with
//!   BPF_F_TEST_XDP_LIVE_FRAMES) that sends out of A's veth into B's ring.
//!   It paces itself: each run waits until its frame is due. (Pacing by
//!   calls from userspace does not work: every call costs 20-30 ms beyond
//!   its frames on kernel 6.18, so the frames of those 20-30 ms left in one
//!   burst and overflowed B's 256-frame ring. That, not lost wake-ups, is
//!   why threaded NAPI looked lossy before.)
//! - CPU 1, "B's core": B's NAPI as a thread pinned there (threaded NAPI on
//!   B's ingress veth), running B's XDP program or the stack and the
//!   userspace relay's receive path; the userspace datapath's process is
//!   pinned there too (the XDP forwarders' processes only load and watch,
//!   so they run on CPU 0, where they cannot take B's core from its NAPI). C's NAPI runs there as well, in softirq right after B's poll:
//!   B's redirect schedules it on the redirecting CPU, and in the same
//!   softirq it drains C's ring after every B poll of ≤ 64 frames, so C
//!   counts every frame B sends (measured: C = B exactly). Moving C to CPU 0
//!   (a threaded NAPI pinned there) makes C wait for the generator, which
//!   spins there, and drop at its ring: C/B 0.98–0.998 at 0.3–1.2 Mpps
//!   (0.72–0.93 with the earlier burst-paced generator), and the generator
//!   offers less. C's receive is thus a fixed cost on B's core for every
//!   forwarder; the `null` mode (redirect untouched) measures that rig
//!   ceiling, and the report gives each forwarder's own cost per packet
//!   above it. `--rx cpumap` sends the generator's frames
//!   from CPU 1's cpumap thread instead (no threaded NAPI), which also puts
//!   A's transmit on B's core: about two thirds of that core at the null
//!   forwarder's rate.
//!
//! Forwarders: the XDP datapath with `--auth off` (`xdp`) and with tags on
//! (`xdp-auth`: `--auth required`, A and C keyed static peers in
//! `peers-auth.json`, the generator tagging each frame with A's key and the
//! next sequence number, carried across steps in `Rig::seq`), the userspace
//! datapath, and the minimal and null forwarders.
//!
//! Method, per forwarder and round: every step offers a paced rate for
//! `--seconds` and counts the same frames three ways, as totals: offered
//! (the frames the generator sent), B's own count (XDP: `fwd` from
//! `p2p-controller maps stats`; userspace: the same, mirrored; minimal and
//! null: their own counter) and delivered (C's counter), read before the
//! step and after the traffic has drained. C must agree with B within 5%
//! at every step, or the benchmark stops with an error: a receiver that
//! loses frames measures itself. Capacity is the highest delivered rate of
//! a step whose delivered frames are ≥ 95% of the offered ones, the same
//! rule for every forwarder (an overloaded userspace relay collapses, so
//! its rate under overload is not its capacity). The rates: a first step
//! flat out (B's rate there is reported as "saturated"), then paced from
//! B's count there, up by 25% while steps pass and down by 20% while they
//! fail, then bisection until the passing and failing rates are within 5%;
//! or exactly the `--rates` given. A step during which other processes or
//! the hypervisor (steal) took more than 10% of a CPU is repeated (twice at
//! most, 3 s apart); one still disturbed then does not count as a failure.
//! Rounds alternate the forwarders; medians and ratios come from the same
//! run. B's rate flat out is reported too ("saturated"), but it is not the
//! capacity: an overflowing ring slows even the XDP forwarders (the XDP
//! datapath carried 1.35 Mpps paced and 1.09 Mpps flat out in one round),
//! and an overloaded userspace relay collapses. Then BPF_PROG_TEST_RUN ns
//! per packet of the datapath with 1k, 10k and 100k peers (`p2p-bench
//! testrun`).
//!
//! Everything lives in namespaces `pbench-<pid>-*` made here (the tests'
//! `Netns` guard) and deleted on exit, on error and on Ctrl-C; traffic is
//! bounded by the step lengths.

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
    /// `storage`: erasure GiB/s, put/get against a TCP copy and repair
    /// times on the 8-node testbed.
    #[arg(default_value = "forward", value_parser = ["forward", "lookup", "storage"])]
    pub which: String,
    /// storage: object size in MiB.
    #[arg(long, default_value_t = 256)]
    pub object_mib: usize,
    /// storage: holders killed one after another, each repair timed.
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
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
    /// Rounds of the forwarders, alternated.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds per step (one offered rate).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Offered rates (pps) to step through for every forwarder, instead of
    /// the search from the flat-out rate.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<u64>,
    /// Routing-table sizes for the TEST_RUN measurement.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub peers: Vec<u32>,
    /// Overlay payload bytes of the DATA frames.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Forwarders to measure: xdp (tags off), xdp-auth (hop-by-hop tags on:
    /// A's frames tagged, B verifies and re-tags each), userspace, minimal
    /// (the ceiling), null (redirect untouched: the rig's own cost).
    #[arg(long, value_delimiter = ',', default_value = "xdp,xdp-auth,userspace,minimal,null")]
    pub modes: Vec<String>,
    /// Skip the TEST_RUN measurement.
    #[arg(long)]
    pub no_testrun: bool,
    /// How B's receive work gets onto B's core: `threaded` (threaded NAPI on
    /// B's ingress, pinned) or `cpumap` (the generator sends from B's CPU's
    /// cpumap thread, which then also does A's transmit on B's core).
    #[arg(long, default_value = "threaded", value_parser = ["threaded", "cpumap"])]
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
/// A step passes when C received at least this share of the offered frames.
const PASS_DELIVERED: f64 = 0.95;
/// C's count and B's own count must agree within this share of B's.
const AGREE: f64 = 0.05;
/// After the flat-out step: at most this many paced steps per forwarder.
const MAX_STEPS: usize = 12;
/// The search stops when the failing rate is within this factor of the passing one.
const RESOLUTION: f64 = 1.05;
/// A step during which other processes, or the hypervisor (steal time),
/// took more than this share of one CPU is repeated (twice at most).
const MAX_FOREIGN: f64 = 0.1;
/// After the generator stops: queues drain, the userspace datapath mirrors
/// its counters (every 100 ms).
const SETTLE: Duration = Duration::from_millis(500);

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
    let forward = args.which == "forward";
    if !args.no_build {
        let mut c = util::cargo();
        c.args(["build", "--release", "-p", "p2p-controller"]);
        if forward || args.which == "storage" {
            c.args(["-p", "p2p-bench"]);
        }
        util::run_inherit(&mut c, "cargo build --release")?;
    }
    let release = util::target_dir().join("release");
    let bin = release.join("p2p-controller");
    let tool = release.join("p2p-bench");
    for b in if args.which != "lookup" { vec![&bin, &tool] } else { vec![&bin] } {
        if !b.is_file() {
            bail!("{} is missing; run without --no-build", b.display());
        }
    }
    if util::stdout_of("mountpoint", ["-q", "/sys/fs/bpf"]).is_none() {
        bail!("bpffs is not mounted at /sys/fs/bpf: run `cargo xtask setup`");
    }
    if args.which == "storage" {
        let report = crate::bench_storage::run(&args, bin, &tool)?;
        return write_report(&args, &report);
    }
    if !forward {
        let report = crate::bench_lookup::run(&args, bin)?;
        return write_report(&args, &report);
    }
    for m in &args.modes {
        if Mode::parse(m).is_none() {
            bail!("--modes: unknown forwarder {m:?} (xdp, xdp-auth, userspace, minimal, null)");
        }
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (gen_cpu, b_cpu) = if cpus >= 2 { (0, 1) } else { (0, 0) };
    if cpus < 2 {
        println!("warning: one CPU only: generator and B share it, figures are not meaningful");
    }
    let busy_before = busy_cpus(Duration::from_secs(1));
    if busy_before.iter().any(|b| *b > 0.1) {
        println!(
            "warning: the CPUs are already busy ({}) before the benchmark starts: figures will be low and noisy",
            busy_before.iter().map(|b| format!("{:.0}%", b * 100.0)).collect::<Vec<_>>().join(", ")
        );
    }
    let rig = Rig::new(bin, tool, gen_cpu, b_cpu, args.payload, args.rx == "threaded")?;
    let mut report = json!({});
    let result = forward_bench(&rig, &args, &mut report);
    drop(rig);
    report["busy_before"] = json!(busy_before);
    report["busy_after"] = json!(busy_cpus(Duration::from_millis(500)));
    if let Err(e) = &result {
        report["error"] = json!(format!("{e:#}"));
    }
    if report.get("benchmark").is_some() || result.is_err() {
        write_report(&args, &report)?;
    }
    result
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

/// Share of each CPU that was busy over `d` (/proc/stat).
fn busy_cpus(d: Duration) -> Vec<f64> {
    fn read() -> Vec<(u64, u64)> {
        let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        s.lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .map(|l| {
                let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                (v.iter().take(8).sum(), idle)
            })
            .collect()
    }
    let a = read();
    std::thread::sleep(d);
    let b = read();
    a.iter()
        .zip(&b)
        .map(|((t0, i0), (t1, i1))| {
            let total = t1.saturating_sub(*t0).max(1) as f64;
            1.0 - i1.saturating_sub(*i0) as f64 / total
        })
        .collect()
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
    counter: Option<Stream>,
    /// `xdp-auth`: B's receive key for A's frames (`peers-auth.json`).
    a_key: String,
    /// The next sequence number of A's tagged frames: runs go on from the
    /// last one's, or B's replay window would drop them.
    seq: std::cell::Cell<u32>,
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
        // program, and the userspace relay's receive path), TSO off; C's too.
        for (ns, dev) in [(&b, B_IN), (&c, C_DEV)] {
            if let Err(e) = ns.exec("ethtool", &["-K", dev, "gro", "on", "tso", "off"]) {
                println!("warning: ethtool -K {dev}: {e:#}");
            }
        }
        if threaded {
            sysfs_write(&b, &format!("/sys/class/net/{B_IN}/threaded"), "1")?;
        }
        let mut random = [0u8; 32 + 32 + 4 * 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        let hex32 = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let c_id = p2p_common::id::NodeId(random[..32].try_into().expect("32 bytes")).to_hex();
        let a_id = p2p_common::id::NodeId(random[32..64].try_into().expect("32 bytes")).to_hex();
        let keys: Vec<String> = random[64..].chunks(16).map(hex32).collect();
        std::fs::write(
            tmp.join("peers.json"),
            serde_json::to_string(&json!([{"node_id": c_id, "addr": C_IP, "port": PORT}]))?,
        )?;
        // `xdp-auth`: every link keyed (pre-shared), so B verifies each
        // frame from A and tags it afresh for C.
        std::fs::write(
            tmp.join("peers-auth.json"),
            serde_json::to_string(&json!([
                {"node_id": c_id, "addr": C_IP, "port": PORT, "link": {"key_id": 1, "rx": keys[0], "tx": keys[1]}},
                {"node_id": a_id, "addr": A_IP, "port": PORT, "link": {"key_id": 1, "rx": keys[2], "tx": keys[3]}},
            ]))?,
        )?;
        let mut rig = Rig {
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
            counter: None,
            a_key: keys[2].clone(),
            seq: std::cell::Cell::new(0),
        };
        let mut cmd = rig.tool_cmd(Some(rig.gen_cpu));
        cmd.args(["count", "--netns", rig.c.name(), "--iface", C_DEV, "--interval-ms", "100"])
            .args(["--port", &PORT.to_string()]);
        rig.counter = Some(Stream::spawn(cmd, rig.tmp.join("count.log"), "the counter at C")?);
        Ok(rig)
    }

    /// `bin` pinned to `cpu` at raised priority (nice PRIORITY): the box
    /// may be shared, and a forwarder or generator that waits for CPU time
    /// would measure the neighbours, not itself.
    fn pinned(&self, bin: &Path, cpu: Option<usize>) -> Command {
        let mut c = Command::new("nice");
        c.args(["-n", PRIORITY]);
        if let Some(cpu) = cpu {
            c.arg("taskset").arg("-c").arg(cpu.to_string());
        }
        c.arg(bin);
        c
    }

    fn ctl_cmd(&self, cpu: Option<usize>) -> Command {
        self.pinned(&self.bin, cpu)
    }

    fn tool_cmd(&self, cpu: Option<usize>) -> Command {
        self.pinned(&self.tool, cpu)
    }

    /// Where B's process runs: the userspace datapath forwards in it, so on
    /// B's core; the XDP forwarders' processes only load and watch (the
    /// forwarding is B's NAPI), so on the other CPU, where they cannot take
    /// B's core from its NAPI thread.
    fn process_cpu(&self, mode: Mode) -> usize {
        if mode == Mode::Userspace { self.b_cpu } else { self.gen_cpu }
    }

    fn counter(&self) -> &Stream {
        self.counter.as_ref().expect("the counter runs while the rig exists")
    }

    /// Starts B in `mode`; returns once it forwards.
    fn start_b(&self, mode: Mode) -> Result<Forwarder> {
        let instance = format!("{}-b", self.prefix);
        let log = self.tmp.join(format!("b-{}.log", mode.name()));
        let auth = mode == Mode::XdpAuth;
        let mut fwd = Forwarder { child: None, stream: None, instance, bin: self.bin.clone(), auth };
        match mode {
            Mode::Xdp | Mode::XdpAuth | Mode::Userspace => {
                let mut cmd = self.ctl_cmd(Some(self.process_cpu(mode)));
                cmd.args(["run", "--netns", self.b.name(), "--iface", B_IN, "--iface", B_OUT, "--no-mdns"])
                    .args(["--datapath", if mode == Mode::Userspace { "userspace" } else { "xdp" }])
                    // Capacity, not the default budgets (200,000 packets/s a peer).
                    .args(["--rate-default", "unlimited", "--rate-nonpeer", "unlimited"])
                    .args(["--auth", if auth { "required" } else { "off" }])
                    .arg("--peers")
                    .arg(self.tmp.join(if auth { "peers-auth.json" } else { "peers.json" }))
                    .arg("--state-dir")
                    .arg(self.tmp.join("b-state"))
                    .args(["--instance", &fwd.instance]);
                let child = cmd
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::from(std::fs::File::create(&log)?))
                    .spawn()
                    .with_context(|| format!("start B ({})", mode.name()))?;
                fwd.child = Some(child);
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    check_interrupt()?;
                    if let Some(st) = fwd.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                        bail!("B ({}) exited ({st}):\n{}", mode.name(), util_tail(&log));
                    }
                    if fwd.own_count().is_ok() && fwd.is_up() {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("B ({}) did not come up in 20 s:\n{}", mode.name(), util_tail(&log));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Mode::Minimal | Mode::Null => {
                let mut cmd = self.tool_cmd(Some(self.process_cpu(mode)));
                cmd.args(["minfwd", "--netns", self.b.name(), "--iface", B_IN, "--out-iface", B_OUT])
                    .args(["--dst-mac", &self.c_mac, "--src-ip", B_RIGHT_IP, "--dst-ip", C_IP])
                    .args(["--port", &PORT.to_string(), "--interval-ms", "100"]);
                if mode == Mode::Null {
                    cmd.arg("--null");
                }
                fwd.stream = Some(Stream::spawn(cmd, log, "B's forwarder")?);
            }
        }
        // The napi thread of B's ingress (re)appears with XDP attach/detach.
        std::thread::sleep(Duration::from_millis(300));
        if self.threaded && !pin_napi(B_IN, self.b_cpu) {
            println!("warning: no napi thread for {B_IN}: B's receive work is not pinned");
        }
        Ok(fwd)
    }

    /// One step: offers `pps` (0 = flat out) for `secs` and counts the
    /// same frames at the generator, at B (its own count) and at C.
    /// One step, repeated (at most twice) while other processes or the
    /// hypervisor (steal) took more than `MAX_FOREIGN` of a CPU during it.
    fn step(&self, b: &Forwarder, pps: u64, secs: f64) -> Result<Step> {
        let mut tries = 1;
        loop {
            let s = self.step_once(b, pps, secs)?;
            if !s.disturbed() || tries == 3 {
                return Ok(Step { tries, ..s });
            }
            tries += 1;
            // Let the disturbance pass.
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    fn step_once(&self, b: &Forwarder, pps: u64, secs: f64) -> Result<Step> {
        check_interrupt()?;
        let (b0, c0) = (b.own_count()?, self.counter().fresh(Instant::now())?);
        let nics0 = self.nic_stats();
        let load0 = LoadSnapshot::take();
        let mut cmd = self.tool_cmd(Some(self.gen_cpu));
        cmd.args(["gen", "--netns", self.a.name(), "--iface", A_DEV, "--dst-mac", &self.b_mac])
            .args(["--src-ip", A_IP, "--dst-ip", B_LEFT_IP, "--port", &PORT.to_string(), "--dst-key", &self.c_id])
            .args(["--payload", &self.payload.to_string(), "--pps", &pps.to_string()])
            .args(["--seconds", &secs.to_string(), "--json"]);
        if !self.threaded {
            cmd.args(["--via-cpu", &self.b_cpu.to_string()]);
        }
        if b.auth {
            cmd.args(["--link-key", &self.a_key, "--key-id", "1", "--seq-from", &self.seq.get().to_string()]);
        }
        let out = cmd.stdin(Stdio::null()).output().context("run the generator")?;
        check_interrupt()?;
        if !out.status.success() {
            bail!("generator failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("generator output")?;
        if b.auth {
            let next = v["next_seq"].as_u64().context("generator output: no next_seq")?;
            if next >= u32::MAX as u64 {
                bail!("the tagged frames' sequence numbers ran out ({next}); fewer or shorter steps");
            }
            self.seq.set(next as u32);
        }
        let (foreign, steal) = LoadSnapshot::take().since(&load0);
        std::thread::sleep(SETTLE);
        let after = Instant::now();
        let (b1, c1) = (b.own_count()?, self.counter().fresh(after)?);
        let nics = diff_stats(&nics0, &self.nic_stats());
        let sent = v["sent"].as_u64().unwrap_or(0);
        let seconds = v["seconds"].as_f64().unwrap_or(secs).max(1e-3);
        Ok(Step {
            requested_pps: pps,
            sent,
            pauses: v["pauses"].as_u64().unwrap_or(0),
            seconds,
            b_frames: b1.saturating_sub(b0),
            c_frames: c1.saturating_sub(c0),
            nics,
            foreign,
            steal,
            tries: 1,
        })
    }

    /// `ethtool -S` of the four veth ends: per-queue XDP packets, redirects,
    /// drops and transmit errors (a full ring at the peer), non-zero only.
    fn nic_stats(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (ns, dev) in [(&self.a, A_DEV), (&self.b, B_IN), (&self.b, B_OUT), (&self.c, C_DEV)] {
            let Ok(text) = ns.exec("ethtool", &["-S", dev]) else { continue };
            for line in text.lines() {
                let Some((k, v)) = line.trim().split_once(':') else { continue };
                if let Ok(v) = v.trim().parse::<u64>()
                    && k != "peer_ifindex"
                {
                    out.push((format!("{dev}.{k}"), v));
                }
            }
        }
        out
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.counter = None;
        let _ = std::fs::remove_dir_all(&self.tmp);
        // What a killed `p2p-bench testrun` or controller may have left.
        let tr = format!("{}-tr", self.prefix);
        if Netns::path_of(&tr).exists() {
            p2p_tests::util::run_quiet("ip", ["netns", "del", &tr]);
        }
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf/p2p").join(format!("{}-b", self.prefix)));
        // Netns A, B, C delete themselves (their own Drop) after this.
        println!("==> removed {}-*", self.prefix);
    }
}

/// CPU time of the processes that are not this benchmark's (not this
/// process or its descendants, not kernel threads), and the hypervisor's
/// steal time, for telling a disturbed step from a measurement.
struct LoadSnapshot {
    at: Instant,
    foreign: std::collections::HashMap<u32, u64>,
    steal: u64,
}

impl LoadSnapshot {
    fn take() -> LoadSnapshot {
        const PF_KTHREAD: u64 = 0x0020_0000;
        let mut procs: Vec<(u32, u32, u64)> = Vec::new(); // pid, ppid, utime + stime
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
            // Fields after the parenthesised command name.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            if num(6) & PF_KTHREAD != 0 {
                continue;
            }
            procs.push((pid, num(1) as u32, num(11) + num(12)));
        }
        let parent: std::collections::HashMap<u32, u32> = procs.iter().map(|(p, pp, _)| (*p, *pp)).collect();
        let me = std::process::id();
        let ours = |mut p: u32| {
            for _ in 0..64 {
                if p == me {
                    return true;
                }
                match parent.get(&p) {
                    Some(pp) if *pp > 1 => p = *pp,
                    _ => return false,
                }
            }
            false
        };
        let foreign = procs.iter().filter(|(p, _, _)| !ours(*p)).map(|(p, _, t)| (*p, *t)).collect();
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let steal =
            stat.lines().next().and_then(|l| l.split_whitespace().nth(8)).and_then(|x| x.parse().ok()).unwrap_or(0);
        LoadSnapshot { at: Instant::now(), foreign, steal }
    }

    /// (other processes, steal) since `before`, in CPUs (1.0 = one CPU busy).
    fn since(&self, before: &LoadSnapshot) -> (f64, f64) {
        // SAFETY: plain sysconf.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let secs = self.at.duration_since(before.at).as_secs_f64().max(1e-3);
        let ticks: u64 = self.foreign.iter().map(|(p, t)| t.saturating_sub(*before.foreign.get(p).unwrap_or(&0))).sum();
        (ticks as f64 / hz / secs, self.steal.saturating_sub(before.steal) as f64 / hz / secs)
    }
}

fn diff_stats(before: &[(String, u64)], after: &[(String, u64)]) -> serde_json::Map<String, Value> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let old = before.iter().find(|(k0, _)| k0 == k).map(|(_, v)| *v).unwrap_or(0);
            let d = v.saturating_sub(old);
            (d > 0).then(|| (k.clone(), json!(d)))
        })
        .collect()
}

/// One offered rate: frames counted by the generator, B and C.
struct Step {
    requested_pps: u64,
    sent: u64,
    /// Times the generator's schedule restarted after a pause (preemption).
    pauses: u64,
    seconds: f64,
    b_frames: u64,
    c_frames: u64,
    nics: serde_json::Map<String, Value>,
    /// CPUs' worth of time other processes used during the step.
    foreign: f64,
    /// CPUs' worth of time the hypervisor took (steal) during the step.
    steal: f64,
    /// Attempts (a step disturbed by other processes is repeated).
    tries: u32,
}

impl Step {
    fn offered_pps(&self) -> f64 {
        self.sent as f64 / self.seconds
    }
    fn b_pps(&self) -> f64 {
        self.b_frames as f64 / self.seconds
    }
    fn c_pps(&self) -> f64 {
        self.c_frames as f64 / self.seconds
    }
    /// C's count over B's own count.
    fn agreement(&self) -> f64 {
        if self.b_frames == 0 {
            if self.c_frames == 0 { 1.0 } else { f64::INFINITY }
        } else {
            self.c_frames as f64 / self.b_frames as f64
        }
    }
    fn agrees(&self) -> bool {
        (self.agreement() - 1.0).abs() <= AGREE
    }
    /// Delivered at C over offered.
    fn delivered(&self) -> f64 {
        self.c_frames as f64 / self.sent.max(1) as f64
    }
    fn passes(&self) -> bool {
        self.agrees() && self.delivered() >= PASS_DELIVERED && self.c_frames > 0
    }
    /// Other processes or the hypervisor took CPU time the rig needed.
    fn disturbed(&self) -> bool {
        self.foreign > MAX_FOREIGN || self.steal > MAX_FOREIGN
    }
    /// The generator could not offer the rate asked of it.
    fn generator_short(&self) -> bool {
        self.requested_pps > 0 && self.offered_pps() < 0.97 * self.requested_pps as f64
    }
    fn json(&self) -> Value {
        json!({
            "requested_pps": self.requested_pps,
            "offered_pps": self.offered_pps(),
            "b_pps": self.b_pps(),
            "delivered_pps": self.c_pps(),
            "seconds": self.seconds,
            "offered_frames": self.sent,
            "generator_pauses": self.pauses,
            "other_processes_cpu": self.foreign,
            "steal_cpu": self.steal,
            "tries": self.tries,
            "b_frames": self.b_frames,
            "c_frames": self.c_frames,
            "c_over_b": self.agreement(),
            "delivered_over_offered": self.delivered(),
            "pass": self.passes(),
            "nic": self.nics,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Xdp,
    /// The XDP datapath with hop-by-hop tags: `--auth required`, A's frames
    /// tagged, B verifies each and tags it for C.
    XdpAuth,
    Userspace,
    Minimal,
    Null,
}

impl Mode {
    const ALL: [Mode; 5] = [Mode::Xdp, Mode::XdpAuth, Mode::Userspace, Mode::Minimal, Mode::Null];

    fn name(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::XdpAuth => "xdp-auth",
            Mode::Userspace => "userspace",
            Mode::Minimal => "minimal",
            Mode::Null => "null",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Xdp => "XDP datapath (p2p_xdp), tags off",
            Mode::XdpAuth => "XDP datapath, tags on",
            Mode::Userspace => "userspace datapath",
            Mode::Minimal => "minimal XDP forwarder (ceiling)",
            Mode::Null => "null forwarder (rig ceiling)",
        }
    }

    /// What "B" counts in this mode.
    fn b_counter(self) -> &'static str {
        match self {
            Mode::Xdp | Mode::XdpAuth | Mode::Userspace => "fwd (maps stats)",
            Mode::Minimal | Mode::Null => "its own counter",
        }
    }
}

/// B's forwarding process; stopped on drop.
struct Forwarder {
    child: Option<Child>,
    /// The minimal and null forwarders' own count.
    stream: Option<Stream>,
    instance: String,
    bin: PathBuf,
    /// Tags on: the generator tags A's frames.
    auth: bool,
}

impl Forwarder {
    fn is_up(&self) -> bool {
        Command::new(&self.bin)
            .args(["status", "--json", "--instance", &self.instance])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Frames B forwarded so far, by its own count.
    fn own_count(&self) -> Result<u64> {
        if let Some(s) = &self.stream {
            return s.fresh(Instant::now());
        }
        self.stat("fwd")
    }

    /// Packets of `p2p-controller maps stats` counter `name`.
    fn stat(&self, name: &str) -> Result<u64> {
        let out =
            util::stdout_of(&self.bin.display().to_string(), ["maps", "stats", "--json", "--instance", &self.instance])
                .with_context(|| format!("`p2p-controller maps stats --instance {}` failed", self.instance))?;
        let v: Value = serde_json::from_str(&out).context("maps stats output")?;
        v[name]["packets"].as_u64().with_context(|| format!("maps stats: no {name} counter"))
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stream = None;
        if let Some(c) = self.child.take() {
            stop(c);
        }
    }
}

/// A `p2p-bench count|minfwd --interval-ms` process and the samples of its
/// counter, read by a thread; stopped on drop.
struct Stream {
    child: Option<Child>,
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    log: PathBuf,
    what: &'static str,
}

impl Stream {
    fn spawn(mut cmd: Command, log: PathBuf, what: &'static str) -> Result<Stream> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .spawn()
            .with_context(|| format!("start {what}"))?;
        let stdout = child.stdout.take().expect("piped");
        let samples = Arc::new(Mutex::new(Vec::new()));
        let s = Stream { child: Some(child), samples: samples.clone(), log, what };
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
            bail!("{what} did not start:\n{}", util_tail(&s.log));
        }
        Ok(s)
    }

    /// The count of the first sample read after `after` (samples come every
    /// 100 ms, each read just before it is printed).
    fn fresh(&self, after: Instant) -> Result<u64> {
        let deadline = after + Duration::from_secs(3);
        loop {
            if let Some((_, p)) = self.samples.lock().unwrap().iter().rev().find(|(t, _)| *t > after) {
                return Ok(*p);
            }
            check_interrupt()?;
            if Instant::now() > deadline {
                bail!("{} stopped reporting:\n{}", self.what, util_tail(&self.log));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stream {
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
    p2p_tests::util::tail(p, 15)
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

/// Prints one step, and fails loudly if C disagrees with B's own count.
fn check_step(round: usize, mode: Mode, s: &Step) -> Result<()> {
    let what = if s.requested_pps == 0 { "flat out".to_string() } else { format!("{:>9}", s.requested_pps) };
    println!(
        "  round {round} {:<9} {what:>9}: offered {:>9.0}  B {:>9.0}  C {:>9.0} pps  C/B {:>6.1}%  C/offered {:>5.1}%  {}",
        mode.name(),
        s.offered_pps(),
        s.b_pps(),
        s.c_pps(),
        s.agreement() * 100.0,
        s.delivered() * 100.0,
        if s.passes() {
            "pass"
        } else if s.generator_short() {
            "generator short"
        } else {
            "loss"
        }
    );
    if !s.agrees() {
        bail!(
            "C counted {} frames but B's own count ({}) says {} (C/B {:.1}%, more than {:.0}% apart): the counting end \
             loses or invents frames, so the figures would measure the rig, not B. Per-queue veth counters of the step: {}",
            s.c_frames,
            mode.b_counter(),
            s.b_frames,
            s.agreement() * 100.0,
            AGREE * 100.0,
            Value::Object(s.nics.clone())
        );
    }
    Ok(())
}

/// One forwarder in one round.
struct Capacity {
    /// The highest delivered rate of a passing step (0 if none passed).
    pps: f64,
    /// B's own rate when offered flat out (not with `--rates`).
    saturated: Option<f64>,
    /// A passing step near the generator's own limit fell short of the
    /// rate asked: B may carry more.
    limited: bool,
    steps: Vec<Value>,
}

/// Capacity of `mode` in one round (see the module doc), with every
/// step's record.
fn capacity(rig: &Rig, b: &Forwarder, round: usize, mode: Mode, args: &BenchArgs) -> Result<Capacity> {
    let mut cap = Capacity { pps: 0.0, saturated: None, limited: false, steps: Vec::new() };
    // The generator's own limit: its rate flat out (unknown with --rates).
    let mut gen_max = f64::INFINITY;
    let mut run = |pps: u64, cap: &mut Capacity| -> Result<Step> {
        let s = rig.step(b, pps, args.seconds)?;
        check_step(round, mode, &s)?;
        cap.steps.push(s.json());
        if pps == 0 {
            gen_max = s.offered_pps();
        } else if s.passes() {
            cap.pps = cap.pps.max(s.c_pps());
            cap.limited |= s.generator_short() && pps as f64 >= 0.9 * gen_max;
        }
        Ok(s)
    };
    if !args.rates.is_empty() {
        let mut rates = args.rates.clone();
        rates.sort_unstable();
        for r in rates {
            let s = run(r, &mut cap)?;
            if !s.passes() && cap.pps > 0.0 {
                break; // past the capacity
            }
        }
        return Ok(cap);
    }
    let probe = run(0, &mut cap)?;
    cap.saturated = Some(probe.b_pps());
    let top = probe.offered_pps();
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    let mut r = probe.b_pps().max(1000.0);
    for _ in 0..MAX_STEPS {
        let s = run(r as u64, &mut cap)?;
        if s.passes() {
            lo = Some(r);
        } else if s.disturbed() {
            // Still disturbed after its tries: no evidence either way; the
            // same rate again as the next step.
            continue;
        } else {
            hi = Some(r);
        }
        r = match (lo, hi) {
            (Some(l), Some(h)) if h / l <= RESOLUTION => break,
            (Some(l), Some(h)) => (l * h).sqrt(),
            // Not beyond what the generator offers flat out.
            (Some(l), None) if l >= 0.9 * top => break,
            (Some(l), None) => (l * 1.25).min(0.9 * top),
            (None, Some(h)) if h * 0.8 >= 1000.0 => h * 0.8,
            _ => break,
        };
    }
    Ok(cap)
}

fn forward_bench(rig: &Rig, args: &BenchArgs, report: &mut Value) -> Result<()> {
    let modes: Vec<Mode> = Mode::ALL.into_iter().filter(|m| args.modes.iter().any(|x| x == m.name())).collect();
    // Per forwarder: capacity and saturated rate of each round.
    let mut caps: Vec<(Mode, Vec<f64>, Vec<f64>)> = modes.iter().map(|m| (*m, Vec::new(), Vec::new())).collect();
    let mut runs = Vec::new();
    let search = if args.rates.is_empty() {
        "flat out, then paced rates from B's count there (×1.25 up, ×0.8 down, bisection to 5%)".to_string()
    } else {
        format!("offered rates {:?}", args.rates)
    };
    println!(
        "==> forward: {} round(s) of {}; {} s per step, {search}; capacity = highest delivered rate with C >= {:.0}% of offered, C within {:.0}% of B's own count at every step",
        args.runs,
        modes.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "),
        args.seconds,
        PASS_DELIVERED * 100.0,
        AGREE * 100.0,
    );
    let mut outcome = Ok(());
    'rounds: for round in 1..=args.runs {
        for (mode, cap_runs, sat_runs) in caps.iter_mut() {
            let result = rig.start_b(*mode).and_then(|b| {
                let c = capacity(rig, &b, round, *mode, args)?;
                // Every tagged frame must verify: a drop here is a wrong tag
                // or sequence number, not load.
                let drop_auth = if b.auth { Some(b.stat("drop_auth")?) } else { None };
                Ok((c, drop_auth))
            });
            match result {
                Ok((c, drop_auth)) => {
                    if let Some(n) = drop_auth {
                        println!(
                            "  round {round} {:<9} drop_auth {n} (tagged frames that failed to verify)",
                            mode.name()
                        );
                        if n > 0 {
                            outcome = Err(anyhow::anyhow!(
                                "B dropped {n} of A's tagged frames as unauthentic (drop_auth): the generator's tags \
                                 or sequence numbers are wrong, so the capacity would not be the datapath's"
                            ));
                            break 'rounds;
                        }
                    }
                    let pps = c.pps;
                    println!(
                        "  round {round} {:<9} capacity {pps:>9.0} pps{}",
                        mode.name(),
                        if c.limited { " (generator-limited: B may carry more)" } else { "" }
                    );
                    cap_runs.push(pps);
                    sat_runs.extend(c.saturated);
                    runs.push(json!({
                        "round": round,
                        "mode": mode.name(),
                        "capacity_pps": pps,
                        "saturated_pps": c.saturated,
                        "generator_limited": c.limited,
                        "drop_auth": drop_auth,
                        "steps": c.steps,
                    }));
                    if pps <= 0.0 {
                        outcome = Err(anyhow::anyhow!(
                            "{} passed at no offered rate; B's log:\n{}",
                            mode.name(),
                            util_tail(&rig.tmp.join(format!("b-{}.log", mode.name())))
                        ));
                        break 'rounds;
                    }
                }
                Err(e) => {
                    outcome = Err(e);
                    break 'rounds;
                }
            }
        }
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        return outcome;
    }
    let testrun = match &outcome {
        Ok(()) if !args.no_testrun => testrun(rig, args)?,
        _ => Value::Null,
    };

    let med = |m: Mode| caps.iter().find(|(x, _, _)| *x == m).map(|(_, v, _)| median(v)).unwrap_or(0.0);
    let (mx, mu, mm, mn) = (med(Mode::Xdp), med(Mode::Userspace), med(Mode::Minimal), med(Mode::Null));
    let ratio = |a: f64, b: f64| if a > 0.0 && b > 0.0 { a / b } else { 0.0 };
    // Ratios per round (measured minutes apart, not hours), then their median.
    let runs_of = |m: Mode| caps.iter().find(|(x, _, _)| *x == m).map(|(_, v, _)| v.clone()).unwrap_or_default();
    let per_round = |a: Mode, b: Mode| -> Vec<f64> {
        runs_of(a).iter().zip(runs_of(b).iter()).map(|(x, y)| ratio(*x, *y)).filter(|r| *r > 0.0).collect()
    };
    let (rounds_user, rounds_min) = (per_round(Mode::Xdp, Mode::Userspace), per_round(Mode::Xdp, Mode::Minimal));
    let rounds_auth = per_round(Mode::XdpAuth, Mode::Xdp);
    let ratio_user = median(&rounds_user);
    let ratio_min = median(&rounds_min);
    let ratio_auth = median(&rounds_auth);
    // Each forwarder's own ns per packet on B's core above the rig's (null).
    let own_ns = |pps: f64| (pps > 0.0 && mn > 0.0).then(|| 1e9 / pps - 1e9 / mn);
    let cost_ratio = match (own_ns(mm), own_ns(mx)) {
        (Some(m), Some(x)) if x > 0.0 => Some(m / x),
        _ => None,
    };
    let agreements: Vec<f64> = runs
        .iter()
        .flat_map(|r| r["steps"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["c_over_b"].as_f64())
        .collect();
    let (agree_min, agree_max) = agreements.iter().fold((f64::INFINITY, 0f64), |(lo, hi), a| (lo.min(*a), hi.max(*a)));
    let all_steps: Vec<Value> = runs.iter().flat_map(|r| r["steps"].as_array().cloned().unwrap_or_default()).collect();
    let disturbed = all_steps
        .iter()
        .filter(|s| {
            s["other_processes_cpu"].as_f64().unwrap_or(0.0) > MAX_FOREIGN
                || s["steal_cpu"].as_f64().unwrap_or(0.0) > MAX_FOREIGN
        })
        .count();
    let repeated = all_steps.iter().filter(|s| s["tries"].as_u64().unwrap_or(1) > 1).count();
    let steal = all_steps.iter().filter_map(|s| s["steal_cpu"].as_f64()).sum::<f64>() / all_steps.len().max(1) as f64;

    println!();
    println!("forwarding through B (one core), capacity = delivered at C, median of {} run(s)", args.runs);
    println!("  {:<34} {:>10} {:>11} {:>10}   capacity per run", "B", "capacity", "own ns/pkt", "saturated");
    for (m, v, sat) in &caps {
        let own = own_ns(median(v)).filter(|_| *m != Mode::Null).map(|n| format!("{n:.0}")).unwrap_or("-".into());
        let sat = if sat.is_empty() { "-".to_string() } else { format!("{:.0}", median(sat)) };
        let runs = v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" / ");
        println!("  {:<34} {:>10.0} {:>11} {:>10}   {}", m.label(), median(v), own, sat, runs);
    }
    if !agreements.is_empty() {
        println!(
            "  C's count / B's own count over all {} steps: {:.2}% .. {:.2}% (limit ±{:.0}%)",
            agreements.len(),
            agree_min * 100.0,
            agree_max * 100.0,
            AGREE * 100.0
        );
    }
    println!(
        "  steps repeated for other processes' load or steal: {repeated}, still disturbed: {disturbed}; hypervisor steal {:.0}% of a CPU on average",
        steal * 100.0
    );
    let list = |v: &[f64], scale: f64, unit: &str| {
        v.iter().map(|r| format!("{:.1}{unit}", r * scale)).collect::<Vec<_>>().join(" / ")
    };
    println!(
        "  XDP / userspace  {ratio_user:>6.1}x   (target >= 10x; median of the rounds' {})",
        list(&rounds_user, 1.0, "x")
    );
    println!(
        "  XDP / minimal    {:>6.1}%   (target >= 75%; median of the rounds' {})",
        ratio_min * 100.0,
        list(&rounds_min, 100.0, "%")
    );
    if !rounds_auth.is_empty() {
        println!(
            "  XDP tags on / off {:>5.1}%   (target >= 80%; median of the rounds' {})",
            ratio_auth * 100.0,
            list(&rounds_auth, 100.0, "%")
        );
    }
    let sat_of = |m: Mode| caps.iter().find(|(x, _, _)| *x == m).map(|(_, _, v)| v.clone()).unwrap_or_default();
    let sat_rounds: Vec<f64> =
        sat_of(Mode::Xdp).iter().zip(sat_of(Mode::Minimal).iter()).map(|(x, y)| ratio(*x, *y)).collect();
    let sat_ratio_min = median(&sat_rounds);
    if sat_ratio_min > 0.0 {
        println!("  XDP / minimal offered flat out (saturated rates, not capacities): {:.1}%", sat_ratio_min * 100.0);
    }
    if let Some(c) = cost_ratio {
        println!("  minimal's / XDP's own ns per packet above the rig (null): {:.1}%", c * 100.0);
    }
    println!();
    if !testrun.is_null() {
        println!(
            "BPF_PROG_TEST_RUN ns/packet ({}-byte frame): harness {:.0} ns, minimal forwarder {:.0} ns, counter {:.0} ns",
            testrun["frame_bytes"],
            testrun["harness_ns"].as_f64().unwrap_or(0.0),
            testrun["minfwd_ns"].as_f64().unwrap_or(0.0),
            testrun["counter_ns"].as_f64().unwrap_or(0.0),
        );
    }
    for r in testrun["datapath"].as_array().into_iter().flatten() {
        println!(
            "  p2p_xdp with {:>7} peers, {:<8} {:>7.1} ns  ({}/{} keys forwarded, fwd {} of {} runs)",
            r["peers"],
            r["variant"].as_str().unwrap_or("?"),
            r["ns_per_packet"].as_f64().unwrap_or(0.0),
            r["forwarded_keys"],
            r["keys"],
            r["fwd_counted"],
            r["runs"]
        );
    }

    let kernel = util::stdout_of("uname", ["-r"]).unwrap_or_default().trim().to_string();
    let command =
        std::iter::once("cargo xtask".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    let mode_json = |m: Mode| {
        caps.iter()
            .find(|(x, _, _)| *x == m)
            .map(|(_, v, sat)| json!({"runs": v, "median": median(v), "saturated_runs": sat, "saturated_median": median(sat)}))
            .unwrap_or(Value::Null)
    };
    *report = json!({
        "benchmark": "forward",
        "command": command,
        "kernel": kernel,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "method": {
            "generator": "XDP live frames (BPF_PROG_RUN, BPF_F_TEST_XDP_LIVE_FRAMES) on A, CPU 0",
            "b": if args.rx == "threaded" {
                "threaded NAPI on B's ingress veth pinned to CPU 1; the userspace datapath's process there too, the XDP forwarders' processes on CPU 0"
            } else {
                "generator frames sent from CPU 1's cpumap thread, so B's NAPI runs on CPU 1 (with A's transmit); the userspace datapath's process there too, the XDP forwarders' processes on CPU 0"
            },
            "pacing": "by the generator program itself (each run waits until its frame is due; at most 32 frames catch up after a pause)",
            "counter": "XDP count-and-drop at C, in softirq on B's core right after B's poll",
            "b_count": "xdp, xdp-auth and userspace: fwd of `p2p-controller maps stats`; minimal and null: their own counter",
            "capacity": format!("highest delivered pps of a step with C >= {:.0}% of offered; C within {:.0}% of B's count at every step, else the run fails", PASS_DELIVERED * 100.0, AGREE * 100.0),
            "search": search,
            "seconds_per_step": args.seconds,
            "payload_bytes": args.payload,
            "frame_bytes": testrun["frame_bytes"],
        },
        "xdp_pps": mode_json(Mode::Xdp),
        "xdp_auth_pps": mode_json(Mode::XdpAuth),
        "userspace_pps": mode_json(Mode::Userspace),
        "minimal_pps": mode_json(Mode::Minimal),
        "null_pps": mode_json(Mode::Null),
        "ratio_xdp_userspace": ratio_user,
        "ratio_xdp_userspace_rounds": rounds_user,
        "ratio_xdp_minimal": ratio_min,
        "ratio_xdp_minimal_rounds": rounds_min,
        "ratio_xdp_minimal_saturated": sat_ratio_min,
        "ratio_xdp_auth_xdp": ratio_auth,
        "ratio_xdp_auth_xdp_rounds": rounds_auth,
        "own_ns_per_packet": {
            "xdp": own_ns(mx), "xdp_auth": own_ns(med(Mode::XdpAuth)), "userspace": own_ns(mu), "minimal": own_ns(mm),
        },
        "agreement_c_over_b": {"min": agree_min, "max": agree_max, "steps": agreements.len()},
        "disturbance": {"steps_repeated": repeated, "steps_disturbed": disturbed, "mean_steal_cpu": steal},
        "targets": {
            "xdp_over_userspace_ge_10": ratio_user >= 10.0,
            "xdp_over_minimal_ge_0_75": ratio_min >= 0.75,
            "xdp_auth_over_xdp_ge_0_80": ratio_auth >= 0.80,
        },
        "testrun": testrun,
        "runs": runs,
    });
    outcome
}

/// `p2p-bench testrun` on B's core, in a namespace of its own.
fn testrun(rig: &Rig, args: &BenchArgs) -> Result<Value> {
    println!("==> BPF_PROG_TEST_RUN with {:?} peers", args.peers);
    let peers_arg = args.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    let out = rig
        .tool_cmd(Some(rig.b_cpu))
        .args(["testrun", "--json", "--peers", &peers_arg, "--payload", &args.payload.to_string()])
        .args(["--netns-name", &format!("{}-tr", rig.prefix)])
        .stdin(Stdio::null())
        .output()
        .context("run p2p-bench testrun")?;
    check_interrupt()?;
    if !out.status.success() {
        bail!("p2p-bench testrun failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("p2p-bench testrun output")
}
