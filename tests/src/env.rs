//! Whether this box can run the privileged tests, and clean-up of what a
//! killed earlier run left behind.
//!
//! A test calls [`require`] first: without root (or CAP_BPF, CAP_NET_ADMIN
//! and CAP_SYS_ADMIN), a mounted bpffs, bpf-linker or the controller binary
//! it prints `SKIP …` and returns. With `P2P_TESTS_REQUIRE=1` (set by `cargo
//! xtask test` when it runs as root) a missing prerequisite fails the test
//! instead, so CI never passes by skipping.

use crate::node::Controller;
use crate::util::run_quiet;
use std::path::{Path, PathBuf};
use std::sync::Once;

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_BPF: u32 = 39;

/// What a privileged test needs.
pub struct Env {
    pub ctl: Controller,
}

/// The prerequisites of the namespace tests, or `None` after printing why
/// the test is skipped (panics instead under `P2P_TESTS_REQUIRE=1`).
pub fn require(test: &str) -> Option<Env> {
    match check() {
        Ok(env) => {
            static CLEAN: Once = Once::new();
            CLEAN.call_once(cleanup_stale);
            Some(env)
        }
        Err(why) => {
            if std::env::var("P2P_TESTS_REQUIRE").is_ok_and(|v| v == "1") {
                panic!("{test}: prerequisite missing and P2P_TESTS_REQUIRE=1: {why}");
            }
            // Straight to fd 2: libtest captures eprintln!, and a skip should show.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
            None
        }
    }
}

fn check() -> Result<Env, String> {
    if !privileged() {
        return Err("needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN".into());
    }
    if !bpffs_mounted() {
        return Err("bpffs is not mounted at /sys/fs/bpf (run `cargo xtask setup`)".into());
    }
    if find_program("bpf-linker").is_none() {
        return Err("bpf-linker is not installed, so the eBPF object was not built (run `cargo xtask setup`)".into());
    }
    for tool in ["ip", "nsenter"] {
        if find_program(tool).is_none() {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    let ctl = Controller::locate().map_err(|e| format!("{e:#}"))?;
    Ok(Env { ctl })
}

/// Effective capability set of this process.
pub fn effective_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

pub fn has_cap(cap: u32) -> bool {
    effective_caps() & (1u64 << cap) != 0
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Root, or the three capabilities the controller needs.
pub fn privileged() -> bool {
    is_root() || [CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN].iter().all(|c| has_cap(*c))
}

/// Is a bpffs mounted at /sys/fs/bpf?
pub fn bpffs_mounted() -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    })
}

/// `program` on PATH or in `$CARGO_HOME/bin` (`~/.cargo/bin`).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(program)).find(|p| p.is_file())
}

/// Removes namespaces, pins and temp dirs named `p2pt-<pid>-…` whose process
/// is gone (a run that was killed before its guards could drop).
pub fn cleanup_stale() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix("p2pt-") else {
            return false;
        };
        let pid = rest.split('-').next().unwrap_or("");
        !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) && !Path::new("/proc").join(pid).exists()
    };
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    for ns in names(Path::new("/run/netns")) {
        if dead(&ns) {
            eprintln!("removing stale network namespace {ns}");
            run_quiet("ip", ["netns", "del", ns.as_str()]);
        }
    }
    let pins = Path::new("/sys/fs/bpf/p2p");
    for inst in names(pins) {
        if dead(&inst) {
            eprintln!("removing stale pins {}", pins.join(&inst).display());
            let _ = std::fs::remove_dir_all(pins.join(&inst));
        }
    }
    let run = Path::new("/run/p2p-nos");
    for f in names(run) {
        if dead(&f) {
            let _ = std::fs::remove_file(run.join(&f));
        }
    }
    let tmp = std::env::temp_dir();
    for d in names(&tmp) {
        if dead(&d) {
            let _ = std::fs::remove_dir_all(tmp.join(&d));
        }
    }
}
