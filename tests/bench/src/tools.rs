//! `gen`, `count` and `minfwd`: the live-frames generator at A, the counter
//! at C and the minimal forwarder at B of `cargo xtask bench forward`.

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use aya::Ebpf;
use aya::maps::CpuMap;
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use clap::Args;
use p2p_common::id::NodeId;
use p2p_common::wire::DEFAULT_OVERLAY_PORT;
use serde_json::json;

use crate::frame::{self, data_packet, iface_mac, parse_mac, random_id, udp4_frame};
use crate::object::{self as obj, GEN_HDR_WORDS};
use crate::signals;

#[derive(Args, Debug)]
pub struct GenArgs {
    /// Network namespace to enter (setns on /run/netns/NAME).
    #[arg(long)]
    pub netns: Option<String>,
    #[arg(long)]
    pub iface: String,
    /// Destination MAC (B's ingress).
    #[arg(long)]
    pub dst_mac: String,
    /// Source MAC [default: IFACE's]
    #[arg(long)]
    pub src_mac: Option<String>,
    #[arg(long)]
    pub src_ip: Ipv4Addr,
    #[arg(long)]
    pub dst_ip: Ipv4Addr,
    #[arg(long, default_value_t = DEFAULT_OVERLAY_PORT)]
    pub port: u16,
    /// DATA destination node ID (64 hex) [default: random]
    #[arg(long)]
    pub dst_key: Option<String>,
    /// Overlay payload bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Offered rate in packets per second, paced by the program itself; 0 =
    /// as fast as possible. After a pause (preemption) at most 32 frames
    /// catch up; the rest are not sent, and `pauses` counts such restarts.
    #[arg(long, default_value_t = 0)]
    pub pps: u64,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Send from this CPU's cpumap thread instead of the calling CPU, so that
    /// the receiver's NAPI (softirq) runs on that CPU (an alternative to
    /// threaded NAPI).
    #[arg(long)]
    pub via_cpu: Option<u32>,
    /// Frames per kernel batch (BPF_F_TEST_XDP_LIVE_FRAMES batch size, ≤256).
    #[arg(long, default_value_t = 64)]
    pub batch: u32,
    /// Tag every frame (docs/WIRE.md version 2) with this link key (32 hex
    /// digits: B's receive key for this sender) and a fresh sequence number.
    #[arg(long)]
    pub link_key: Option<String>,
    /// Key ID of --link-key (1-255).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub key_id: u8,
    /// Sequence stream of the tagged frames.
    #[arg(long, default_value_t = 7)]
    pub stream: u8,
    /// First sequence number: a later run on the same link must start past
    /// the last one's (`next_seq` in the JSON output), or B drops its frames
    /// as replays.
    #[arg(long, default_value_t = 0)]
    pub seq_from: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CountArgs {
    #[arg(long)]
    pub netns: Option<String>,
    #[arg(long)]
    pub iface: String,
    #[arg(long, default_value_t = DEFAULT_OVERLAY_PORT)]
    pub port: u16,
    /// Stop after this many seconds; 0 = run until SIGINT/SIGTERM.
    #[arg(long, default_value_t = 0.0)]
    pub seconds: f64,
    /// Print a JSON line {"t","packets","bytes"} this often (0 = only the summary).
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MinfwdArgs {
    #[arg(long)]
    pub netns: Option<String>,
    /// Ingress interface (the program is attached here).
    #[arg(long)]
    pub iface: String,
    #[arg(long)]
    pub out_iface: String,
    /// Next hop's MAC.
    #[arg(long)]
    pub dst_mac: String,
    /// New IPv4 source (this node on OUT_IFACE).
    #[arg(long)]
    pub src_ip: Ipv4Addr,
    /// New IPv4 destination (the next hop).
    #[arg(long)]
    pub dst_ip: Ipv4Addr,
    #[arg(long, default_value_t = DEFAULT_OVERLAY_PORT)]
    pub port: u16,
    /// The null forwarder instead: every frame out of OUT_IFACE untouched
    /// (no parsing, no rewrite): what the rig itself costs B's core.
    #[arg(long)]
    pub null: bool,
    /// Print a JSON line {"t","packets","bytes"} of the forwarded count this often (0 = only the summary).
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    #[arg(long)]
    pub json: bool,
}

/// Runs `f` inside `netns` (on a thread that joined it by setns), or here.
pub fn in_netns<T: Send + 'static>(netns: Option<String>, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match netns {
        Some(ns) => p2p_tests::netns::enter(&ns, f)?,
        None => f(),
    }
}

// ---------------------------------------------------------------- gen

pub fn gen_cmd(a: GenArgs) -> Result<()> {
    in_netns(a.netns.clone(), move || generate(a))
}

fn generate(a: GenArgs) -> Result<()> {
    let idx = frame::ifindex(&a.iface)?;
    let dst_mac = parse_mac(&a.dst_mac)?;
    let src_mac = match &a.src_mac {
        Some(m) => parse_mac(m)?,
        None => iface_mac(&a.iface)?,
    };
    let dst_key = match &a.dst_key {
        Some(h) => h.parse::<NodeId>().map_err(|e| anyhow!("--dst-key: {e}"))?.0,
        None => random_id(),
    };
    let mut packet = data_packet(dst_key, a.payload, p2p_common::wire::DEFAULT_TTL);
    let link_key = match &a.link_key {
        Some(h) => {
            let mut k = [0u8; 16];
            hex::decode_to_slice(h, &mut k).map_err(|_| anyhow!("--link-key {h:?}: expected 32 hex digits"))?;
            // The template as the first frame; the program re-tags each one.
            p2p_common::auth::seal(&mut packet, &k, a.key_id, a.stream, a.seq_from);
            Some(k)
        }
        None => None,
    };
    let mut frame = udp4_frame(dst_mac, src_mac, a.src_ip, a.dst_ip, a.port, a.port, &packet);
    if link_key.is_some() {
        // Each frame's tag differs; a UDP checksum of 0 ("none", IPv4) spares
        // the generator recomputing it (B writes a full one when it forwards).
        frame[40..42].fill(0);
    }
    if frame.len() < GEN_HDR_WORDS * 8 {
        bail!("--payload {}: at least 8 bytes", a.payload);
    }
    let mut ebpf = match a.via_cpu {
        Some(_) => obj::load(&[obj::PROG_GEN_CPU, obj::PROG_CPU_TX, obj::PROG_PASS])?,
        None => obj::load(&[obj::PROG_GEN, obj::PROG_PASS])?,
    };
    let mut tpl = [0u64; GEN_HDR_WORDS];
    for (i, w) in tpl.iter_mut().enumerate() {
        *w = u64::from_ne_bytes(frame[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    }
    obj::set0(&mut ebpf, obj::MAP_FRAME, tpl)?;
    if let Some(k) = &link_key {
        let (k0, k1) = p2p_common::auth::key_words(k);
        obj::set0(&mut ebpf, obj::MAP_AUTH, [1u64, k0, k1, a.seq_from as u64])?;
    }
    if let Some(cpu) = a.via_cpu {
        via_cpu_setup(&mut ebpf, cpu, idx)?;
    }
    // Something must run XDP on A's side as well (DESIGN.md).
    obj::attach(&mut ebpf, obj::PROG_PASS, &a.iface)?;
    let ctx = frame::xdp_md(idx, frame.len());
    let batch = a.batch.clamp(1, 256);
    let run_for = Duration::from_secs_f64(a.seconds.max(0.0));
    // The program paces itself (tests/bench-ebpf pace.rs): every run waits
    // until its frame is due. Calls are long, since each one costs ~20-30 ms
    // of set-up and tear-down beyond its frames, and nothing is sent meanwhile
    // (a run that is never due ends its call early; the loop goes on).
    let interval_ns = if a.pps == 0 { 0 } else { (1e9 / a.pps as f64).round().max(1.0) as u64 };
    let prog_name = if a.via_cpu.is_some() { obj::PROG_GEN_CPU } else { obj::PROG_GEN };
    if let Some(k) = &link_key {
        check_tagging(obj::xdp(&mut ebpf, prog_name)?, &frame, idx, k, a.seq_from)?;
    }
    obj::set0(&mut ebpf, obj::MAP_PACE, [interval_ns, 0u64, 0, 0])?;
    let prog = obj::xdp(&mut ebpf, prog_name)?;
    let send = |prog: &Xdp, n: u32| -> Result<()> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = n;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(batch);
        match prog.test_run(opts) {
            Err(_) if signals::stopped() => Ok(()),
            Err(e) => {
                // aya's message leaves out the errno; the source has it.
                let why = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                Err(anyhow!(
                    "BPF_PROG_RUN (live frames): {e}{why} (an EPERM here means this kernel or sandbox does not \
                     let this process send live frames; `grep Cap /proc/self/status` shows its capabilities)"
                ))
            }
            Ok(_) => Ok(()),
        }
    };
    let start = Instant::now();
    loop {
        let left = run_for.saturating_sub(start.elapsed());
        if left.is_zero() || signals::stopped() {
            break;
        }
        let n = if a.pps == 0 {
            // ~0.25 s at 2 Mpps.
            1 << 19
        } else {
            // The rest of the run in one call (each call pauses sending
            // for its set-up and tear-down), at most 2 s worth.
            (a.pps as f64 * left.as_secs_f64().min(2.0)).clamp(1.0, u32::MAX as f64) as u32
        };
        send(prog, n)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let [_, _, sent, pauses] = obj::get0::<[u64; 4]>(&ebpf, obj::MAP_PACE)?;
    let next_seq = obj::get0::<[u64; 4]>(&ebpf, obj::MAP_AUTH)?[3].max(a.seq_from as u64);
    let pps = sent as f64 / secs;
    if a.json {
        let mut v = json!({"sent": sent, "seconds": secs, "pps": pps, "frame_bytes": frame.len(), "pauses": pauses});
        if link_key.is_some() {
            v["next_seq"] = json!(next_seq);
        }
        println!("{v}");
    } else {
        println!("sent {sent} frames of {} bytes in {secs:.2} s: {pps:.0} pps ({pauses} pauses)", frame.len());
    }
    Ok(())
}

/// Before sending live: one plain TEST_RUN of the generator (unpaced), whose
/// output frame must carry sequence number `seq` and the tag that
/// `p2p_common::auth` (what B's datapath verifies with) computes for it.
fn check_tagging(prog: &Xdp, frame: &[u8], ifindex: u32, key: &[u8; 16], seq: u32) -> Result<()> {
    let ctx = frame::xdp_md(ifindex, frame.len());
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    opts.repeat = 1;
    let r = prog.test_run(opts).map_err(|e| anyhow!("BPF_PROG_TEST_RUN (tag check): {e}"))?;
    let pkt = &out[frame::OVERLAY_OFFSET..frame.len()];
    let (_, _, got_seq) = p2p_common::auth::v2_fields(pkt);
    let tag = &pkt[p2p_common::wire::offset::TAG..p2p_common::wire::offset::TAG + 8];
    let want = p2p_common::auth::tag_of(key, pkt).map(u64::to_be_bytes);
    if got_seq != seq || want.as_ref().map(|w| &w[..]) != Some(tag) {
        bail!(
            "the generator's tagged frame is wrong (verdict {}, sequence {got_seq}, want {seq}; tag {}, want {:?}): \
             B would drop every frame",
            r.return_value,
            hex::encode(tag),
            want.map(hex::encode)
        );
    }
    Ok(())
}

/// BENCH_GEN = cpu, BENCH_TX[0] = the generator's device, BENCH_CPUS[cpu] =
/// a queue with `bench_cpu_tx`; the cpumap thread gets this process's nice
/// value (it does the receiver's work too).
fn via_cpu_setup(ebpf: &mut Ebpf, cpu: u32, ifindex: u32) -> Result<()> {
    obj::set0(ebpf, obj::MAP_GEN, cpu)?;
    obj::set_tx_port(ebpf, ifindex)?;
    let fd = obj::xdp(ebpf, obj::PROG_CPU_TX)?
        .fd()
        .map_err(|e| anyhow!("{}: {e}", obj::PROG_CPU_TX))?
        .try_clone()
        .context("dup the cpumap program fd")?;
    let map = ebpf.map_mut(obj::MAP_CPUS).ok_or_else(|| anyhow!("map {} is missing", obj::MAP_CPUS))?;
    let map_id = match &*map {
        aya::maps::Map::CpuMap(d) => d.info().ok().map(|i| i.id()),
        _ => None,
    };
    let mut cpus: CpuMap<_> = CpuMap::try_from(map).map_err(|e| anyhow!("map {}: {e}", obj::MAP_CPUS))?;
    cpus.set(cpu, 2048, Some(&fd), 0).map_err(|e| anyhow!("{}[{cpu}]: {e}", obj::MAP_CPUS))?;
    // SAFETY: plain syscall.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if let Some(id) = map_id {
        let name = format!("cpumap/{cpu}/map:{id}");
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == name
                && let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok())
            {
                // SAFETY: plain syscall.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, nice) };
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- count, minfwd

pub fn count_cmd(a: CountArgs) -> Result<()> {
    in_netns(a.netns.clone(), move || {
        let mut ebpf = obj::load(&[obj::PROG_COUNT])?;
        obj::set0(&mut ebpf, obj::MAP_PORT, a.port as u32)?;
        obj::attach(&mut ebpf, obj::PROG_COUNT, &a.iface)?;
        eprintln!("p2p-bench: counter on {} attached", a.iface);
        report_count(&ebpf, a.seconds, a.interval_ms, a.json, "received")
    })
}

pub fn minfwd_cmd(a: MinfwdArgs) -> Result<()> {
    in_netns(a.netns.clone(), move || {
        let out_idx = frame::ifindex(&a.out_iface)?;
        let mut cfg = [0u8; 32];
        cfg[0..6].copy_from_slice(&parse_mac(&a.dst_mac)?);
        cfg[6..12].copy_from_slice(&iface_mac(&a.out_iface)?);
        cfg[12..16].copy_from_slice(&a.src_ip.octets());
        cfg[16..20].copy_from_slice(&a.dst_ip.octets());
        cfg[20..22].copy_from_slice(&a.port.to_be_bytes());
        let prog = if a.null { obj::PROG_NULL } else { obj::PROG_MINFWD };
        let mut ebpf = obj::load(&[prog])?;
        obj::set0(&mut ebpf, obj::MAP_FWD, cfg)?;
        obj::set_tx_port(&mut ebpf, out_idx)?;
        obj::attach(&mut ebpf, prog, &a.iface)?;
        eprintln!("p2p-bench: {prog} {} -> {} attached", a.iface, a.out_iface);
        report_count(&ebpf, 0.0, a.interval_ms, a.json, "forwarded")
    })
}

/// Until `seconds` pass (0: until SIGINT/SIGTERM), prints BENCH_COUNT every
/// `interval_ms` (if > 0) as JSON lines after a `{"ready": true}` line;
/// then the total.
fn report_count(ebpf: &Ebpf, seconds: f64, interval_ms: u64, json: bool, what: &str) -> Result<()> {
    let start = Instant::now();
    let deadline = (seconds > 0.0).then(|| Duration::from_secs_f64(seconds));
    let tick = Duration::from_millis(if interval_ms > 0 { interval_ms } else { 200 });
    let mut out = std::io::stdout();
    if interval_ms > 0 {
        let _ = writeln!(out, "{}", json!({"t": 0.0, "packets": 0, "bytes": 0, "ready": true}));
        let _ = out.flush();
    }
    loop {
        let mut wait = tick;
        if let Some(d) = deadline {
            let left = d.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            wait = wait.min(left);
        }
        if signals::sleep(wait) {
            break;
        }
        if interval_ms > 0 {
            let (p, b) = obj::read_count(ebpf)?;
            let line = json!({"t": start.elapsed().as_secs_f64(), "packets": p, "bytes": b});
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                break; // the reader went away
            }
        }
    }
    let (p, b) = obj::read_count(ebpf)?;
    let secs = start.elapsed().as_secs_f64();
    if json || interval_ms > 0 {
        let _ = writeln!(out, "{}", json!({"packets": p, "bytes": b, "seconds": secs, "done": true}));
    } else {
        let _ = writeln!(out, "{what} {p} packets, {b} bytes in {secs:.2} s");
    }
    Ok(())
}
