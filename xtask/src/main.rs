//! `cargo xtask …`: project automation, one module per command.
//!
//! - `setup`: install what building and running need (idempotent).
//! - `doctor`: report prerequisites and the kernel's XDP support, change nothing.
//! - `test`: setup, fmt, clippy, build, unit tests, namespace tests.
//! - `run`: setup, release build, an 8-node Kademlia testbed with a live view;
//!   `run -- ARGS` runs `p2p-controller run ARGS` on this box instead.
//! - `bench`: benchmarks.
//! - `sim`: routing simulation at scale.
//! - `fuzz`: differential fuzzing of the XDP and userspace datapaths.

mod bench;
mod bench_lookup;
mod bench_storage;
mod doctor;
mod fuzz;
mod prereq;
mod run;
mod setup;
mod sim;
mod test;
mod util;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "p2p-nos project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain pieces, system packages and bpf-linker; mount bpffs. Idempotent.
    Setup,
    /// Report every prerequisite and the kernel's XDP support without changing anything.
    Doctor,
    /// Setup, fmt and clippy checks, build, unit tests, then the namespace tests one at a time.
    Test(test::TestArgs),
    /// Setup, release build, then an 8-node Kademlia testbed with a live per-node view until Ctrl-C.
    /// `cargo xtask run -- ARGS…` instead runs `p2p-controller run ARGS…` on this box.
    Run(run::RunArgs),
    /// Benchmarks: `bench forward` (XDP vs userspace transit capacity, TEST_RUN ns/packet),
    /// `bench lookup` (lookup RTT over the kernel path vs Kademlia's iterative get).
    Bench(bench::BenchArgs),
    /// Differential fuzzing: a million frames through the XDP datapath
    /// (BPF_PROG_TEST_RUN) and the userspace one, which must agree on each.
    Fuzz(fuzz::FuzzArgs),
    /// Routing simulation: the datapath's table builder and next-hop walk over N
    /// simulated nodes with Kademlia-shaped tables (k=20), with and without churn.
    Sim(sim::SimArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::setup().and_then(|s| s.into_result()),
        Command::Doctor => doctor::doctor(),
        Command::Test(args) => test::test(args),
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::bench(args),
        Command::Sim(args) => sim::sim(args),
        Command::Fuzz(args) => fuzz::fuzz(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
