//! Builds the benchmark's eBPF object (`tests/bench-ebpf`) with aya-build
//! and leaves it in OUT_DIR for `include_bytes_aligned!`, as
//! p2p-controller/build.rs does for the datapath. With AYA_BUILD_SKIP=1, or
//! when bpf-linker is missing, an empty placeholder is written instead so
//! that `cargo check` and `cargo clippy` work anywhere; the tool then
//! refuses to run with a clear error.

use std::{env, fs, path::PathBuf};

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let object = out_dir.join("p2p-bench-ebpf");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let ebpf_dir = manifest_dir.join("..").join("bench-ebpf");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-changed=../../p2p-common/src");

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let have_linker = which("bpf-linker");
    if skip || !have_linker {
        let why = if skip { "AYA_BUILD_SKIP is set" } else { "bpf-linker is not installed (run `cargo xtask setup`)" };
        println!("cargo:warning=benchmark eBPF object not built: {why}; p2p-bench will refuse to run");
        fs::write(&object, b"").expect("write placeholder");
        return;
    }
    let root_dir = ebpf_dir.to_str().expect("utf-8 path");
    let package = aya_build::Package { name: "p2p-bench-ebpf", root_dir, ..Default::default() };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::default()) {
        panic!("building the benchmark eBPF object failed: {e:#}");
    }
}

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
