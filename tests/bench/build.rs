//! Builds the benchmark's eBPF object (tests/bench-ebpf) into OUT_DIR; see
//! p2p-common/ebpf_build.rs (shared with the controller's build).

#[path = "../../p2p-common/ebpf_build.rs"]
mod ebpf_build;

fn main() {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    ebpf_build::build_ebpf(
        &workspace,
        "tests/bench-ebpf",
        "p2p-bench-ebpf",
        "p2p-bench-ebpf",
        "p2p-bench will refuse to run",
    );
}
