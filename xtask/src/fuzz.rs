//! `cargo xtask fuzz`: differential fuzzing of the two datapaths (the
//! fixture `differential_fuzz_xdp_against_userspace` of p2p-controller's
//! BPF_PROG_TEST_RUN fixtures) at full length: a million generated and
//! mutated frames through `p2p_xdp` and through the userspace datapath,
//! which must agree on verdict, counter and output bytes for every frame.
//! `cargo xtask test` runs the same fixture with 100,000 frames.

use anyhow::{Result, bail};
use clap::Args;

use crate::util::{cargo, step};

#[derive(Args)]
pub struct FuzzArgs {
    /// Frames to generate and mutate.
    #[arg(long, default_value_t = 1_000_000)]
    pub frames: u64,
    /// Seed of the generator (the same seed gives the same frames).
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
}

pub fn fuzz(args: FuzzArgs) -> Result<()> {
    crate::setup::setup()?.into_result()?;
    if !crate::prereq::is_root() {
        bail!("the fuzzer runs BPF_PROG_TEST_RUN in a network namespace: it needs root");
    }
    let mut c = cargo();
    c.args(["test", "--locked", "-p", "p2p-controller", "--test", "fixtures", "--"])
        .args(["--test-threads=1", "--nocapture", "--exact", "differential_fuzz_xdp_against_userspace"])
        .env("P2P_FUZZ_FRAMES", args.frames.to_string())
        .env("P2P_FUZZ_SEED", args.seed.to_string());
    if !step(&format!("differential fuzzing: {} frames, seed {}", args.frames, args.seed), &mut c)? {
        bail!("the datapaths disagreed (or a frame faulted): see above");
    }
    Ok(())
}
