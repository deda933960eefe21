//! Builds the datapath's eBPF object (p2p-ebpf) into OUT_DIR; see
//! p2p-common/ebpf_build.rs (shared with the benchmark tool's build).

#[path = "../p2p-common/ebpf_build.rs"]
mod ebpf_build;

fn main() {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    ebpf_build::build_ebpf(
        &workspace,
        "p2p-ebpf",
        "p2p-ebpf",
        "p2p",
        "the controller will refuse to load the datapath",
    );
}
