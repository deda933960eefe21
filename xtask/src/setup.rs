//! `cargo xtask setup`: idempotent. Each step checks first and prints whether
//! it found the piece in place or did something. Without root, the steps
//! that need it (apt-get, mounting bpffs) are reported, not attempted.

use crate::prereq::*;
use crate::util::{cargo, run_inherit};
use anyhow::{Result, bail};
use std::process::Command;

/// What setup could not do.
#[derive(Default)]
pub struct Summary {
    /// Steps that failed or cannot be done here.
    pub missing: Vec<String>,
    /// Steps that need root (not attempted).
    pub needs_root: Vec<String>,
}

impl Summary {
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.needs_root.is_empty()
    }

    pub fn into_result(self) -> Result<()> {
        if self.complete() {
            return Ok(());
        }
        let mut why = Vec::new();
        if !self.needs_root.is_empty() {
            why.push(format!("needs root: {}", self.needs_root.join(", ")));
        }
        if !self.missing.is_empty() {
            why.push(format!("not done: {}", self.missing.join(", ")));
        }
        bail!("setup incomplete ({})", why.join("; "))
    }
}

fn report(step: &str, state: &str) {
    println!("[setup] {step:<28} {state}");
}

pub fn setup() -> Result<Summary> {
    let mut s = Summary::default();
    let root = is_root();

    // 1. nightly toolchain (the eBPF side is built with it). Installing it
    // needs the Rust dist server, which this project does not assume.
    let step = "nightly toolchain";
    if has_nightly() {
        report(step, "ok (found)");
    } else {
        report(step, "MISSING: run `rustup toolchain install nightly --component rust-src`");
        s.missing.push(step.into());
    }

    // 2. rust-src for -Z build-std=core.
    let step = "rust-src (nightly)";
    if !has_nightly() {
        report(step, "skipped: no nightly toolchain");
        s.missing.push(step.into());
    } else if has_rust_src() {
        report(step, "ok (found)");
    } else {
        report(step, "installing: rustup component add rust-src --toolchain nightly");
        let r = run_inherit(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "rustup component add rust-src --toolchain nightly",
        );
        if r.is_ok() && has_rust_src() {
            report(step, "done (installed)");
        } else {
            report(step, "FAILED");
            s.missing.push(step.into());
        }
    }

    // 3. system packages.
    let step = "apt packages";
    let missing = missing_apt();
    if missing.is_empty() {
        report(step, &format!("ok (found {})", APT_PACKAGES.join(" ")));
    } else if !root {
        report(step, &format!("NEEDS ROOT: apt-get install -y {}", missing.join(" ")));
        s.needs_root.push(format!("apt-get install {}", missing.join(" ")));
    } else {
        report(step, &format!("installing {}", missing.join(" ")));
        let ok = run_inherit(Command::new("apt-get").arg("update"), "apt-get update").is_ok()
            && run_inherit(
                Command::new("apt-get")
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(&missing)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                "apt-get install",
            )
            .is_ok();
        let still = missing_apt();
        if ok && still.is_empty() {
            report(step, "done (installed)");
        } else {
            report(step, &format!("FAILED: still missing {}", still.join(" ")));
            s.missing.push(step.into());
        }
    }

    // 3b. Python tools the tests use.
    let step = "pip: kubernetes-validate";
    let found = || {
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found() {
        report(step, "ok (found)");
    } else {
        report(step, "installing: python3 -m pip install kubernetes-validate");
        let r = run_inherit(
            Command::new("python3").args(["-m", "pip", "install", "-q", "kubernetes-validate"]),
            "python3 -m pip install kubernetes-validate",
        );
        if r.is_ok() && found() {
            report(step, "done (installed)");
        } else {
            // Not fatal: only the manifest test needs it, and it says it skipped.
            report(step, "FAILED (the Kubernetes manifest test will say it skipped)");
        }
    }

    // 4. bpf-linker built against LLVM 22.
    let step = "bpf-linker";
    if let Some((path, ver)) = bpf_linker() {
        report(step, &format!("ok (found {ver} at {})", path.display()));
    } else if !apt_installed("llvm-22-dev") {
        report(step, "MISSING: needs llvm-22-dev first (see apt packages)");
        s.missing.push(step.into());
    } else {
        let what =
            format!("LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --no-default-features --features llvm-22");
        report(step, &format!("installing: {what}"));
        let r = run_inherit(
            cargo()
                .args(["install", "bpf-linker", "--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", LLVM_PREFIX),
            &what,
        );
        match (r, bpf_linker()) {
            (Ok(()), Some((_, ver))) => report(step, &format!("done (installed {ver})")),
            (r, _) => {
                let e = r.err().map(|e| format!(": {e:#}")).unwrap_or_default();
                report(step, &format!("FAILED{e} (is ~/.cargo/bin on PATH?)"));
                s.missing.push(step.into());
            }
        }
    }

    // 5. bpffs at /sys/fs/bpf (pins live there).
    let step = "bpffs at /sys/fs/bpf";
    if bpffs_mounted() {
        report(step, "ok (mounted)");
    } else if !root {
        report(step, &format!("NEEDS ROOT: mount -t bpf bpf {BPFFS}"));
        s.needs_root.push(format!("mount -t bpf bpf {BPFFS}"));
    } else {
        let _ = std::fs::create_dir_all(BPFFS);
        let r = run_inherit(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]), "mount -t bpf bpf /sys/fs/bpf");
        if r.is_ok() && bpffs_mounted() {
            report(step, "done (mounted)");
        } else {
            report(step, "FAILED to mount");
            s.missing.push(step.into());
        }
    }

    if !s.needs_root.is_empty() {
        println!("[setup] not root: run `cargo xtask setup` as root for: {}", s.needs_root.join("; "));
    }
    Ok(s)
}
