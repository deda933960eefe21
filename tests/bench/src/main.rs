//! `p2p-bench`: the tools of `cargo xtask bench forward` (DESIGN.md
//! "Benchmark method"). Not part of the product: its XDP programs live in
//! `tests/bench-ebpf` (built by build.rs with aya-build, embedded here), and
//! the real datapath is reached only through p2p-controller's library API.
//!
//! - `gen`: the XDP live-frames generator (BPF_PROG_RUN with
//!   BPF_F_TEST_XDP_LIVE_FRAMES on A's veth), paced or flat out.
//! - `count`: the counting-and-dropping XDP program at C; prints samples.
//! - `minfwd`: the minimal XDP forwarder (the ceiling) at B, or with
//!   `--null` the null forwarder (redirect untouched: the rig's own cost),
//!   with its own count, until SIGINT/SIGTERM.
//! - `testrun`: BPF_PROG_TEST_RUN ns per packet of the real datapath with
//!   1k/10k/100k peers in its routing maps, in a namespace it creates.

mod aead;
mod erasure;
mod frame;
mod object;
mod signals;
mod testrun;
mod tools;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "p2p-bench", about = "Tools of `cargo xtask bench forward` (needs root)")]
struct Cli {
    #[command(subcommand)]
    tool: Tool,
}

#[derive(Subcommand)]
enum Tool {
    /// Live-frames generator: sends one overlay DATA frame out of IFACE, paced to --pps (0 = flat out).
    Gen(tools::GenArgs),
    /// Count overlay-port UDP frames arriving on IFACE (and drop them).
    Count(tools::CountArgs),
    /// Minimal XDP forwarder (fixed rewrite; or --null: none) from IFACE to OUT_IFACE until SIGINT/SIGTERM.
    Minfwd(tools::MinfwdArgs),
    /// BPF_PROG_TEST_RUN ns per forwarded packet of the real datapath per routing-table size.
    Testrun(testrun::TestrunArgs),
    /// End-to-end DATA envelopes sealed and opened per second on one core (no root needed).
    Aead(aead::AeadArgs),
    /// Erasure encode/decode GiB/s per core, ours against the library (no root needed).
    Erasure(erasure::ErasureArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    signals::install();
    let needs_root = !matches!(cli.tool, Tool::Aead(_) | Tool::Erasure(_));
    if needs_root && !p2p_tests::env::privileged() {
        eprintln!("p2p-bench: needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN");
        return ExitCode::FAILURE;
    }
    let result = match cli.tool {
        Tool::Gen(a) => tools::gen_cmd(a),
        Tool::Count(a) => tools::count_cmd(a),
        Tool::Minfwd(a) => tools::minfwd_cmd(a),
        Tool::Testrun(a) => testrun::testrun_cmd(a),
        Tool::Aead(a) => aead::aead_cmd(a),
        Tool::Erasure(a) => erasure::erasure_cmd(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2p-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
