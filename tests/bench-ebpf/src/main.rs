//! The forwarding benchmark's XDP programs (object `p2p-bench-ebpf`, embedded
//! in and loaded by the `p2p-bench` tool of `tests/bench`; DESIGN.md
//! "Benchmark method"). Never part of the product.
//!
//! - `bench_gen`: the live-frames generator. Run by BPF_PROG_RUN with
//!   BPF_F_TEST_XDP_LIVE_FRAMES on A's veth; the frame is the run's input
//!   and the program only sends it (`XDP_TX`, turned into a redirect to the
//!   ingress device by the kernel) after rewriting its first bytes, paced
//!   by the program itself (`pace.rs`), counting what it sent; with
//!   BENCH_AUTH on, tagged for B's link key with a fresh sequence number.
//! - `bench_gen_cpu` + `bench_cpu_tx`: the same, sent from another CPU's
//!   cpumap thread (so that the receiver's NAPI runs there).
//! - `bench_count`: at C, counts UDP frames to the overlay port into a
//!   per-CPU counter and drops them; everything else passes.
//! - `bench_minfwd`: the ceiling at B: parse Ethernet/IPv4/UDP to the overlay
//!   port, fixed rewrite of MACs and IPs from BENCH_FWD, IPv4 header checksum
//!   in full, UDP checksum patched incrementally, redirect through a devmap.
//! - `bench_null`: the null forwarder at B: every frame out through
//!   BENCH_TX untouched, counted: what the rig itself costs B's core.
//! - `bench_pass`: returns XDP_PASS (A's side; harness cost in TEST_RUN).
//! - `bench_fib`: one `bpf_fib_lookup` (cost probe for TEST_RUN).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code))]

mod maps;
mod pace;
mod pkt;

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};

/// Generator: when the frame is due (BENCH_PACE, `pace.rs`), rewrites its
/// headers from BENCH_FRAME and sends it; runs that are not due are dropped
/// uncounted.
/// Live-frames pages are recycled without being re-initialised, and the
/// forwarder under test rewrites them in place (TTL, addresses), so every
/// run writes the headers afresh; the payload is never changed downstream.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    if !pace::due() {
        return XDP_DROP;
    }
    match maps::BENCH_FRAME.get(0) {
        Some(tpl) if pkt::write_headers(&ctx, tpl) && pkt::seal(&ctx) => XDP_TX,
        _ => XDP_ABORTED,
    }
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Generator variant that hands each frame to another CPU (BENCH_CPUS entry
/// BENCH_GEN[0]) whose cpumap thread sends it with `bench_cpu_tx`: the
/// receiver's NAPI then runs on that CPU, without threaded NAPI.
#[xdp]
pub fn bench_gen_cpu(ctx: XdpContext) -> u32 {
    if !pace::due() {
        return XDP_DROP;
    }
    let Some(tpl) = maps::BENCH_FRAME.get(0) else { return XDP_ABORTED };
    if !pkt::write_headers(&ctx, tpl) || !pkt::seal(&ctx) {
        return XDP_ABORTED;
    }
    let cpu = match maps::BENCH_GEN.get(0) {
        Some(c) => *c,
        None => return XDP_ABORTED,
    };
    match maps::BENCH_CPUS.redirect(cpu, 0) {
        Ok(a) => a,
        Err(a) => a,
    }
}

/// Second stage of `bench_gen_cpu`, on the target CPU: out through BENCH_TX[0].
#[xdp(map = "cpumap")]
pub fn bench_cpu_tx(_ctx: XdpContext) -> u32 {
    match maps::BENCH_TX.redirect(0, 0) {
        Ok(a) => a,
        Err(a) => a,
    }
}

/// Counter: overlay-port UDP frames are counted and dropped.
#[xdp]
pub fn bench_count(ctx: XdpContext) -> u32 {
    let port = match maps::BENCH_PORT.get(0) {
        Some(p) => *p as u16,
        None => return XDP_PASS,
    };
    match pkt::udp4_to(&ctx, port) {
        Some(_) => {
            maps::count(ctx.data_end() - ctx.data());
            XDP_DROP
        }
        None => XDP_PASS,
    }
}

/// Minimal forwarder: fixed rewrite and redirect.
#[xdp]
pub fn bench_minfwd(ctx: XdpContext) -> u32 {
    let cfg = match maps::BENCH_FWD.get(0) {
        Some(c) => c,
        None => return XDP_ABORTED,
    };
    let port = u16::from_be_bytes([cfg[maps::FWD_PORT], cfg[maps::FWD_PORT + 1]]);
    let p = match pkt::udp4_to(&ctx, port) {
        Some(p) => p,
        None => return XDP_PASS,
    };
    pkt::rewrite(&p, cfg);
    maps::count(ctx.data_end() - ctx.data());
    match maps::BENCH_TX.redirect(0, 0) {
        Ok(a) => a,
        Err(a) => a,
    }
}

/// Null forwarder: no parsing, no rewrite, counted and redirected.
#[xdp]
pub fn bench_null(ctx: XdpContext) -> u32 {
    maps::count(ctx.data_end() - ctx.data());
    match maps::BENCH_TX.redirect(0, 0) {
        Ok(a) => a,
        Err(a) => a,
    }
}

/// Cost probe: one IPv4 `bpf_fib_lookup` towards BENCH_FWD's destination
/// from the ingress interface; XDP_TX on success, else XDP_PASS. Run by
/// `bench testrun` only, to put the datapath's figure in proportion.
#[xdp]
pub fn bench_fib(ctx: XdpContext) -> u32 {
    let Some(cfg) = maps::BENCH_FWD.get(0) else { return XDP_ABORTED };
    if pkt::fib_v4(&ctx, cfg) { XDP_TX } else { XDP_PASS }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
