//! The prerequisite checks that `setup` acts on and `doctor` reports.

use crate::util::{output, stdout_of};
use std::path::{Path, PathBuf};

/// System packages: LLVM for bpf-linker (and what it links against), and the
/// tools the tests and README use.
/// iptables: the namespace tests drop traffic on the testbed's bridge
/// (a vanished host, random loss). curl: they scrape `run --metrics`.
/// systemd: `systemd-analyze` checks deploy/p2p-nos@.service.
pub const APT_PACKAGES: [&str; 10] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "iproute2",
    "ethtool",
    "iptables",
    "curl",
    "systemd",
];
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
pub const BPFFS: &str = "/sys/fs/bpf";
pub const MIN_KERNEL: (u32, u32) = (5, 15);

pub use p2p_tests::env::{CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN, bpffs_mounted, find_program, has_cap, is_root};

pub fn has_nightly() -> bool {
    stdout_of("rustup", ["toolchain", "list"]).is_some_and(|s| s.lines().any(|l| l.starts_with("nightly")))
}

pub fn has_rust_src() -> bool {
    stdout_of("rustup", ["component", "list", "--toolchain", "nightly", "--installed"])
        .is_some_and(|s| s.lines().any(|l| l.trim().starts_with("rust-src")))
}

pub fn apt_installed(pkg: &str) -> bool {
    stdout_of("dpkg-query", ["-W", "-f=${Status}", pkg]).is_some_and(|s| s.contains("install ok installed"))
}

pub fn missing_apt() -> Vec<&'static str> {
    APT_PACKAGES.iter().copied().filter(|p| !apt_installed(p)).collect()
}

/// `bpf-linker --version` from PATH or ~/.cargo/bin.
pub fn bpf_linker() -> Option<(PathBuf, String)> {
    let path = find_program("bpf-linker")?;
    let out = output(path.to_str()?, ["--version"])?;
    out.status.success().then(|| (path, String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// `uname -r` and its (major, minor).
pub fn kernel() -> (String, Option<(u32, u32)>) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let mut it = release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    let ver = match (it.next().and_then(|s| s.parse().ok()), it.next().and_then(|s| s.parse().ok())) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    (release, ver)
}

pub fn btf_present() -> bool {
    Path::new("/sys/kernel/btf/vmlinux").exists()
}
