//! `cargo xtask doctor`: reports every prerequisite and the kernel's XDP
//! support; changes nothing. Exits non-zero if something needed is missing.

use crate::prereq::*;
use crate::util::target_dir;
use anyhow::{Result, bail};
use std::path::Path;

struct Report {
    needed_missing: Vec<String>,
}

impl Report {
    fn row(&mut self, what: &str, ok: bool, needed: bool, detail: &str) {
        let state = match (ok, needed) {
            (true, _) => "ok",
            (false, true) => "MISSING",
            (false, false) => "no (optional)",
        };
        println!("  {what:<44} {state:<14} {detail}");
        if !ok && needed {
            self.needed_missing.push(what.to_string());
        }
    }
}

pub fn doctor() -> Result<()> {
    let mut r = Report { needed_missing: Vec::new() };

    println!("build prerequisites:");
    r.row("nightly toolchain", has_nightly(), true, "builds the eBPF object");
    r.row("rust-src (nightly)", has_rust_src(), true, "-Z build-std=core for bpfel-unknown-none");
    match bpf_linker() {
        Some((path, ver)) => r.row("bpf-linker", true, true, &format!("{ver} ({})", path.display())),
        None => r.row("bpf-linker", false, true, "cargo xtask setup installs it"),
    }
    for p in APT_PACKAGES {
        r.row(&format!("package {p}"), apt_installed(p), true, "");
    }

    println!("kernel:");
    let (release, ver) = kernel();
    let new_enough = ver.is_some_and(|v| v >= MIN_KERNEL);
    r.row("kernel version", new_enough, true, &format!("{release} (need >= {}.{})", MIN_KERNEL.0, MIN_KERNEL.1));
    r.row("BTF (/sys/kernel/btf/vmlinux)", btf_present(), true, "");
    r.row("bpffs mounted at /sys/fs/bpf", bpffs_mounted(), true, "cargo xtask setup mounts it (root)");
    let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").unwrap_or_default();
    r.row("BPF JIT enabled", jit.trim() == "1" || jit.trim() == "2", false, "");
    let config = kernel_config();
    let opt = |name: &str| -> Option<bool> {
        config.as_ref().map(|c| c.lines().any(|l| l == format!("{name}=y") || l == format!("{name}=m")))
    };
    for (name, needed, why) in [
        ("CONFIG_BPF_SYSCALL", true, "bpf(2)"),
        ("CONFIG_DEBUG_INFO_BTF", true, "BTF for the maps and bpftool"),
        ("CONFIG_BPF_JIT", false, "speed"),
        ("CONFIG_VETH", false, "namespace tests and testbed"),
        ("CONFIG_BRIDGE", false, "LAN testbed"),
    ] {
        match opt(name) {
            Some(on) => r.row(name, on, needed, why),
            None => r.row(name, true, false, "unknown: no /proc/config.gz"),
        }
    }
    let veth = opt("CONFIG_VETH").unwrap_or_else(|| Path::new("/sys/module/veth").exists() || modinfo("veth"));
    r.row(
        "native XDP on veth",
        veth && ver.is_some_and(|v| v >= (4, 19)),
        false,
        "redirect/XDP_TX into a veth needs an XDP program on its peer",
    );

    println!("privileges:");
    let caps: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")]
        .iter()
        .filter(|(c, _)| has_cap(*c))
        .map(|(_, n)| *n)
        .collect();
    let privileged = is_root() || caps.len() == 3;
    let detail = if is_root() {
        "running as root".to_string()
    } else {
        format!("not root; effective capabilities: {}", if caps.is_empty() { "none".into() } else { caps.join(" ") })
    };
    r.row("root or CAP_BPF+CAP_NET_ADMIN+CAP_SYS_ADMIN", privileged, true, &detail);

    println!("tools:");
    for t in ["ip", "nsenter", "bpftool", "ethtool"] {
        let p = find_program(t);
        r.row(t, p.is_some(), t != "ethtool", &p.map(|p| p.display().to_string()).unwrap_or_default());
    }

    println!("kernel memory of a node's maps (estimate; `status` shows the real figure):");
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    for (peers, sources) in [(1024, 16384), (10_000, 65_536)] {
        let bytes = p2p_common::maps::memory_estimate(peers, sources, ncpu);
        println!(
            "  --max-peers {peers:<6} --max-sources {sources:<6} {:>6.1} MiB on {ncpu} CPUs",
            bytes as f64 / (1 << 20) as f64
        );
    }

    println!("project:");
    for profile in ["debug", "release"] {
        let bin = target_dir().join(profile).join("p2p-controller");
        r.row(&format!("p2p-controller ({profile})"), bin.is_file(), false, &bin.display().to_string());
    }

    if r.needed_missing.is_empty() {
        println!("doctor: everything needed is in place");
        Ok(())
    } else {
        bail!("missing: {} (run `cargo xtask setup`, as root where needed)", r.needed_missing.join(", "))
    }
}

/// The running kernel's config from /proc/config.gz (via zcat), if exposed.
fn kernel_config() -> Option<String> {
    crate::util::stdout_of("zcat", ["/proc/config.gz"])
}

fn modinfo(module: &str) -> bool {
    crate::util::output("modinfo", [module]).is_some_and(|o| o.status.success())
}
