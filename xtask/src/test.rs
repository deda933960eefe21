//! `cargo xtask test`: setup, `cargo fmt --check`, clippy with `-D
//! warnings`, `cargo build --locked --workspace` (the controller's build.rs
//! builds the eBPF object), the unit tests in parallel, then the namespace
//! tests of `p2p-tests` one at a time. Lint failures are reported at once
//! and make the run fail, but the tests still run; the output ends with
//! cargo test's result lines.

use crate::prereq::is_root;
use crate::setup;
use crate::util::{cargo, step, target_dir};
use anyhow::{Result, bail};
use clap::Args;

#[derive(Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments for the test binaries (after `--`), e.g. a name filter.
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

pub fn test(args: TestArgs) -> Result<()> {
    let summary = setup::setup()?;
    if !summary.complete() {
        println!(
            "==> setup incomplete: the namespace tests will skip or fail ({})",
            summary.into_result().err().map(|e| e.to_string()).unwrap_or_default()
        );
    }

    let mut failed: Vec<&str> = Vec::new();
    if !args.no_lint {
        if !step("cargo fmt --all --check", cargo().args(["fmt", "--all", "--check"]))? {
            println!("==> FAILED: cargo fmt --all --check (formatting differs; run `cargo fmt --all`)");
            failed.push("fmt");
        }
        let clippy = ["clippy", "--locked", "--workspace", "--all-targets", "--", "-D", "warnings"];
        if !step("cargo clippy --locked --workspace --all-targets -- -D warnings", cargo().args(clippy))? {
            println!("==> FAILED: clippy reported warnings or errors (see above)");
            failed.push("clippy");
        }
    }

    if !step("cargo build --locked --workspace", cargo().args(["build", "--locked", "--workspace"]))? {
        bail!("build failed");
    }

    let unit = ["test", "--locked", "--no-fail-fast", "--workspace", "--exclude", "p2p-tests", "--"];
    if !step(
        "cargo test --locked --no-fail-fast --workspace --exclude p2p-tests (unit tests, parallel)",
        cargo().args(unit).args(&args.test_args),
    )? {
        failed.push("unit tests");
    }

    // The privileged tests, serially. As root, a missing prerequisite is a
    // failure, not a skip.
    let controller = target_dir().join("debug").join("p2p-controller");
    let mut e2e = cargo();
    e2e.args(["test", "--locked", "--no-fail-fast", "-p", "p2p-tests", "--", "--test-threads=1"])
        .args(&args.test_args)
        .env("P2P_CONTROLLER", &controller);
    if is_root() {
        e2e.env("P2P_TESTS_REQUIRE", "1");
    }
    if !step("cargo test --locked --no-fail-fast -p p2p-tests -- --test-threads=1 (namespace tests, serial)", &mut e2e)?
    {
        failed.push("namespace tests");
    }

    if failed.is_empty() { Ok(()) } else { bail!("failed: {}", failed.join(", ")) }
}
