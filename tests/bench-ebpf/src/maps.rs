//! Maps of the benchmark object. Values are plain integers and byte arrays
//! so that the controller needs no shared struct for them.

use aya_ebpf::{
    btf_maps::{Array, CpuMap, DevMap, PerCpuArray},
    macros::btf_map,
};

/// Overlay UDP port the counter matches (host order, in a u32).
#[btf_map]
pub static BENCH_PORT: Array<u32, 1> = Array::new();

/// Per-CPU [packets, bytes] of the counter or the minimal forwarder.
#[btf_map]
pub static BENCH_COUNT: PerCpuArray<u64, 2> = PerCpuArray::new();

/// Minimal forwarder's rewrite: see the FWD_* offsets.
#[btf_map]
pub static BENCH_FWD: Array<[u8; 32], 1> = Array::new();

/// Generator's frame template: the first GEN_HDR_BYTES are written into
/// every frame.
#[btf_map]
pub static BENCH_FRAME: Array<[u64; GEN_HDR_WORDS], 1> = Array::new();

/// Ethernet + IPv4 + UDP + overlay header = 138 bytes, rounded up to words.
pub const GEN_HDR_WORDS: usize = 18;

/// Generator pacing, entry 0: PACE_INTERVAL ns between frames (0 = flat
/// out), PACE_NEXT the clock time the next frame is due, PACE_SENT frames
/// sent, PACE_PAUSES times the schedule restarted after a pause (see
/// `pace.rs`).
#[btf_map]
pub static BENCH_PACE: Array<[u64; 4], 1> = Array::new();
pub const PACE_INTERVAL: usize = 0;
pub const PACE_NEXT: usize = 1;
pub const PACE_SENT: usize = 2;
pub const PACE_PAUSES: usize = 3;

/// Generator's hop-by-hop tag (docs/WIRE.md v2), entry 0: AUTH_ON (0:
/// frames go out as the template has them), the SipHash key words, and
/// AUTH_SEQ the next sequence number. The template carries version 2, the
/// AUTH flag, key ID and stream; each sent frame gets the next sequence
/// number and its tag, so that B's replay window accepts every one.
#[btf_map]
pub static BENCH_AUTH: Array<[u64; 4], 1> = Array::new();
pub const AUTH_ON: usize = 0;
pub const AUTH_K0: usize = 1;
pub const AUTH_K1: usize = 2;
pub const AUTH_SEQ: usize = 3;

/// `bench_gen_cpu`: target CPU (entry 0).
#[btf_map]
pub static BENCH_GEN: Array<u32, 1> = Array::new();

/// `bench_gen_cpu`: CPU -> queue and `bench_cpu_tx`.
#[btf_map]
pub static BENCH_CPUS: CpuMap<64> = CpuMap::new();

/// Minimal forwarder's egress, and the generator's device for `bench_cpu_tx`: entry 0.
#[btf_map]
pub static BENCH_TX: DevMap<1> = DevMap::new();

/// BENCH_FWD layout: destination MAC, source MAC, IPv4 source, IPv4
/// destination, overlay port (big-endian); the rest is zero.
pub const FWD_DST_MAC: usize = 0;
pub const FWD_SRC_MAC: usize = 6;
pub const FWD_SRC_IP: usize = 12;
pub const FWD_DST_IP: usize = 16;
pub const FWD_PORT: usize = 20;

#[inline(always)]
pub fn count(bytes: usize) {
    if let Some(p) = BENCH_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU's program run touches it.
        unsafe { *p += 1 };
    }
    if let Some(b) = BENCH_COUNT.get_ptr_mut(1) {
        // SAFETY: as above.
        unsafe { *b += bytes as u64 };
    }
}
