//! The benchmark's eBPF object (`tests/bench-ebpf`, built by build.rs):
//! loading, attaching and the maps the tools read and write.

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, DevMap, PerCpuArray};
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};

use crate::frame;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/p2p-bench-ebpf"));

pub const PROG_GEN: &str = "bench_gen";
pub const PROG_GEN_CPU: &str = "bench_gen_cpu";
pub const PROG_CPU_TX: &str = "bench_cpu_tx";
pub const PROG_PASS: &str = "bench_pass";
pub const PROG_COUNT: &str = "bench_count";
pub const PROG_MINFWD: &str = "bench_minfwd";
pub const PROG_NULL: &str = "bench_null";
pub const PROG_FIB: &str = "bench_fib";
pub const MAP_GEN: &str = "BENCH_GEN";
pub const MAP_CPUS: &str = "BENCH_CPUS";
pub const MAP_PORT: &str = "BENCH_PORT";
pub const MAP_COUNT: &str = "BENCH_COUNT";
pub const MAP_FWD: &str = "BENCH_FWD";
pub const MAP_TX: &str = "BENCH_TX";
pub const MAP_FRAME: &str = "BENCH_FRAME";
/// [interval ns, next due ns, frames sent, 0] (tests/bench-ebpf `maps::BENCH_PACE`).
pub const MAP_PACE: &str = "BENCH_PACE";
pub const MAP_AUTH: &str = "BENCH_AUTH";
/// Header bytes the generator writes into every frame, in words
/// (tests/bench-ebpf `maps::GEN_HDR_WORDS`).
pub const GEN_HDR_WORDS: usize = 18;

/// Loads the object and the named programs.
pub fn load(progs: &[&'static str]) -> Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!(
            "p2p-bench was built without its eBPF object (bpf-linker missing or AYA_BUILD_SKIP set): \
             run `cargo xtask setup` and rebuild"
        );
    }
    let mut ebpf = EbpfLoader::new().load(OBJECT).context("loading the benchmark eBPF object")?;
    for name in progs {
        xdp(&mut ebpf, name)?.load().map_err(|e| match e {
            ProgramError::LoadError { io_error, verifier_log } => {
                anyhow!("the verifier rejected {name}: {io_error}\n{verifier_log}")
            }
            e => anyhow!("loading {name}: {e}"),
        })?;
    }
    Ok(ebpf)
}

pub fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    let p = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} is missing from the object"))?;
    p.try_into().map_err(|e| anyhow!("{name}: {e}"))
}

/// Attaches `name` to `iface` in driver mode, else SKB mode (said on stderr).
pub fn attach(ebpf: &mut Ebpf, name: &'static str, iface: &str) -> Result<()> {
    let idx = frame::ifindex(iface)?;
    let p = xdp(ebpf, name)?;
    if let Err(first) = p.attach_to_if_index(idx, XdpMode::Driver) {
        p.attach_to_if_index(idx, XdpMode::Skb)
            .map_err(|e| anyhow!("attaching {name} to {iface}: driver mode: {first}; skb mode: {e}"))?;
        eprintln!("p2p-bench: {name} on {iface} in SKB mode (driver mode failed: {first})");
    }
    Ok(())
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} is missing from the object"))?;
    T::try_from(map).map_err(|e| anyhow!("map {name}: {e}"))
}

/// Entry 0 of the array map `name`.
pub fn set0<V: aya::Pod>(ebpf: &mut Ebpf, name: &'static str, value: V) -> Result<()> {
    let mut a: Array<_, V> = map_mut(ebpf, name)?;
    a.set(0, value, 0).map_err(|e| anyhow!("map {name}: {e}"))
}

/// Entry 0 of the array map `name`.
pub fn get0<V: aya::Pod>(ebpf: &Ebpf, name: &'static str) -> Result<V> {
    let map = ebpf.map(name).ok_or_else(|| anyhow!("map {name} is missing from the object"))?;
    let a: Array<_, V> = Array::try_from(map).map_err(|e| anyhow!("map {name}: {e}"))?;
    a.get(&0, 0).map_err(|e| anyhow!("map {name}: {e}"))
}

/// BENCH_TX[0] = `ifindex`: where the minimal forwarder and the
/// generator's cpumap stage send.
pub fn set_tx_port(ebpf: &mut Ebpf, ifindex: u32) -> Result<()> {
    let mut tx: DevMap<_> = map_mut(ebpf, MAP_TX)?;
    tx.set(0, ifindex, None, 0).map_err(|e| anyhow!("{MAP_TX}[0] = ifindex {ifindex}: {e}"))
}

/// (packets, bytes) of BENCH_COUNT summed over CPUs.
pub fn read_count(ebpf: &Ebpf) -> Result<(u64, u64)> {
    let map = ebpf.map(MAP_COUNT).ok_or_else(|| anyhow!("map {MAP_COUNT} is missing"))?;
    let a: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(|e| anyhow!("map {MAP_COUNT}: {e}"))?;
    let p: u64 = a.get(&0, 0).map_err(|e| anyhow!("map {MAP_COUNT}: {e}"))?.iter().sum();
    let b: u64 = a.get(&1, 0).map_err(|e| anyhow!("map {MAP_COUNT}: {e}"))?.iter().sum();
    Ok((p, b))
}

/// BPF_PROG_TEST_RUN of `prog` on `frame` received on `ingress`, `repeat`
/// times: (verdict, mean ns per run).
pub fn time_prog(prog: &Xdp, frame: &[u8], ingress: u32, repeat: u32) -> Result<(u32, f64)> {
    let ctx = frame::xdp_md(ingress, frame.len());
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    opts.repeat = repeat.max(1);
    let r = prog.test_run(opts).map_err(|e| anyhow!("BPF_PROG_TEST_RUN: {e}"))?;
    Ok((r.return_value, r.duration.as_nanos() as f64))
}
