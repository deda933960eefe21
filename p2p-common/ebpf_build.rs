//! The one eBPF build step of the workspace's build scripts
//! (p2p-controller/build.rs for the datapath, tests/bench/build.rs for the
//! benchmark programs), included by both with `#[path]`: build scripts
//! cannot depend on a workspace crate's code without building it for the
//! host first, and this is all they share.
//!
//! Builds the eBPF crate `package` in `workspace/crate_dir` with aya-build;
//! the object lands in OUT_DIR as `object_name` (its binary's name), for
//! `include_bytes_aligned!`. With AYA_BUILD_SKIP=1, or when bpf-linker is
//! missing, an empty placeholder is written instead so that `cargo check`
//! and `cargo clippy` work anywhere; the program that embeds it then
//! refuses to load it with a clear error (`consequence` says which).

use std::{env, fs, path::Path, path::PathBuf};

pub fn build_ebpf(workspace: &Path, crate_dir: &str, package: &str, object_name: &str, consequence: &str) {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let object = out_dir.join(object_name);
    let crate_dir = workspace.join(crate_dir);
    // The eBPF crates use p2p-common's map and wire definitions.
    let common_src = workspace.join("p2p-common").join("src");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-changed={}", crate_dir.display());
    println!("cargo:rerun-if-changed={}", common_src.display());

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip || !which("bpf-linker") {
        let why = if skip { "AYA_BUILD_SKIP is set" } else { "bpf-linker is not installed (run `cargo xtask setup`)" };
        println!("cargo:warning={package} not built: {why}; {consequence}");
        fs::write(&object, b"").expect("write placeholder");
        return;
    }
    let root_dir = crate_dir.to_str().expect("utf-8 path");
    let pkg = aya_build::Package { name: package, root_dir, ..Default::default() };
    if let Err(e) = aya_build::build_ebpf([pkg], aya_build::Toolchain::default()) {
        panic!("building {package} failed: {e:#}");
    }
}

/// Whether `program` is on PATH or in cargo's bin directory.
fn which(program: &str) -> bool {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut dirs: Vec<PathBuf> = env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = cargo_home {
        dirs.push(home.join("bin"));
    }
    dirs.iter().any(|d| d.join(program).is_file())
}
