//! Host checks and settings: privileges, bpffs, sysctls, interface
//! addresses, network namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::error::{Error, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("CapEff:"))
                .and_then(|l| u64::from_str_radix(l["CapEff:".len()..].trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Loading, pinning and attaching need CAP_BPF (or CAP_SYS_ADMIN on older
/// kernels), CAP_NET_ADMIN for XDP, and CAP_SYS_ADMIN for setns and bpffs.
pub fn check_privileges(need_netns: bool) -> Result<()> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if need_netns && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_SYS_ADMIN (for --netns)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Privilege(format!(
            "{} not held; run as root or grant them (e.g. `setcap cap_bpf,cap_net_admin+ep p2p-controller`, plus cap_sys_admin for --netns)",
            missing.join(", ")
        )))
    }
}

pub fn check_bpffs() -> Result<()> {
    if crate::dataplane::is_bpffs_mounted() {
        Ok(())
    } else {
        Err(Error::Usage(
            "bpffs is not mounted at /sys/fs/bpf: run `cargo xtask setup` or `mount -t bpf bpf /sys/fs/bpf`".into(),
        ))
    }
}

/// Enters `/run/netns/<name>` for this thread (and threads it creates
/// later) with setns, leaving mounts alone so pins stay in the shared bpffs.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    let f = std::fs::File::open(&path).map_err(|e| Error::Netns {
        name: name.into(),
        reason: format!("cannot open {}: {e} (create it with `ip netns add {name}`)", path.display()),
    })?;
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a valid fd.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::Netns { name: name.into(), reason: format!("setns: {}", std::io::Error::last_os_error()) });
    }
    Ok(())
}

/// Per-interface forwarding sysctls, which bpf_fib_lookup requires.
/// Returns the previous values to restore on exit.
pub fn enable_forwarding(iface: &str) -> Vec<(String, String)> {
    let mut old = Vec::new();
    for path in
        [format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"), format!("/proc/sys/net/ipv6/conf/{iface}/forwarding")]
    {
        if let Ok(prev) = std::fs::read_to_string(&path) {
            let prev = prev.trim().to_string();
            if prev != "1" && std::fs::write(&path, "1").is_ok() {
                old.push((path, prev));
            }
        }
    }
    old
}

pub fn restore_sysctls(old: &[(String, String)]) {
    for (path, value) in old {
        let _ = std::fs::write(path, value);
    }
}

/// Every interface address of this network namespace: (interface, IP).
pub fn all_addrs() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs/freeifaddrs pair; pointers only read while valid.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    out.push((name, IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)))));
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    out.push((name, IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr))));
                }
                _ => {}
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// IPv4 and global IPv6 addresses of an interface (the first of each).
pub fn iface_addrs(iface: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let mut v4 = None;
    let mut v6 = None;
    for (_, ip) in all_addrs().into_iter().filter(|(name, _)| name == iface) {
        match ip {
            IpAddr::V4(a) if v4.is_none() => v4 = Some(a),
            // Link-local addresses can't be a forwarded packet's source.
            IpAddr::V6(a) if v6.is_none() && (a.segments()[0] & 0xffc0) != 0xfe80 => v6 = Some(a),
            _ => {}
        }
    }
    (v4, v6)
}

/// Blocks SIGINT/SIGTERM for this thread (and threads created later) so
/// that [`wait_signal`] can take them synchronously.
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: plain sigset manipulation.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits up to `timeout` for a signal of `set`; true if one arrived.
pub fn wait_signal(set: &libc::sigset_t, timeout: std::time::Duration) -> bool {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as _ };
    // SAFETY: valid set and timespec.
    let rc = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    rc > 0
}

/// A line for the operator on stderr. Unlike `eprintln!`, a closed or
/// broken stderr (`… 2>&1 | head`, a log pipe that died) is not a panic:
/// the daemon goes on without it.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Capability names by number (linux/capability.h), for what `status` and
/// the log say was kept and dropped.
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn cap_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|c| mask & (1u64 << c) != 0)
        .map(|c| CAP_NAMES.get(c).map(|s| s.to_string()).unwrap_or_else(|| format!("cap_{c}")))
        .collect()
}

/// What the daemon kept and dropped after set-up (`status.privileges`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Privileges {
    pub kept: Vec<String>,
    pub dropped: Vec<String>,
}

/// The capability sets capset(2) gives the thread that runs it
/// ({effective, permitted, inheritable} for capabilities 0-31, then 32-63).
static CAPSET_COPY: [std::sync::atomic::AtomicU32; 6] = [const { std::sync::atomic::AtomicU32::new(0) }; 6];

/// capset(2) on the calling thread with the sets in CAPSET_COPY. Async-signal-safe.
fn capset_this_thread() -> i64 {
    use std::sync::atomic::Ordering::Relaxed;
    // _LINUX_CAPABILITY_VERSION_3, pid 0: this thread.
    let hdr: [u32; 2] = [0x2008_0522, 0];
    let d: [u32; 6] = core::array::from_fn(|i| CAPSET_COPY[i].load(Relaxed));
    // SAFETY: capset with a valid header and two data structs
    // ({effective, permitted, inheritable} × 2 words).
    unsafe { libc::syscall(libc::SYS_capset, hdr.as_ptr(), d.as_ptr()) }
}

extern "C" fn on_capset_signal(_: libc::c_int) {
    capset_this_thread();
}

fn thread_caps(tid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(l["CapEff:".len()..].trim(), 16).ok()
}

fn thread_ids() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// Least privilege after set-up: every thread of the process keeps only
/// CAP_BPF (map updates; CAP_SYS_ADMIN instead where CAP_BPF was not held)
/// and CAP_NET_ADMIN (detaching XDP, restoring sysctls at exit); the rest
/// of its effective and permitted sets goes. Capabilities are per thread:
/// each thread applies capset(2) itself, on a signal, until /proc shows
/// every thread without what was dropped (a thread made meanwhile by one
/// that had not dropped yet is caught by the next round).
pub fn drop_capabilities() -> Result<Privileges> {
    use std::sync::atomic::Ordering::Relaxed;
    let held = effective_caps();
    let bpf = if held & (1u64 << CAP_BPF) != 0 { CAP_BPF } else { CAP_SYS_ADMIN };
    let keep = held & ((1u64 << bpf) | (1u64 << CAP_NET_ADMIN));
    let report = Privileges { kept: cap_names(keep), dropped: cap_names(held & !keep) };
    if held & !keep == 0 {
        return Ok(report);
    }
    let (lo, hi) = (keep as u32, (keep >> 32) as u32);
    for (i, w) in [lo, lo, 0, hi, hi, 0].into_iter().enumerate() {
        CAPSET_COPY[i].store(w, Relaxed);
    }
    let sig = libc::SIGRTMIN() + 5;
    // SAFETY: installs an async-signal-safe handler for a signal nothing else uses.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_capset_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(Error::Privilege(format!(
                "dropping capabilities: sigaction: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    if capset_this_thread() != 0 {
        return Err(Error::Privilege(format!("dropping capabilities: capset: {}", std::io::Error::last_os_error())));
    }
    let pid = std::process::id() as libc::pid_t;
    for _ in 0..50 {
        let pending: Vec<String> =
            thread_ids().into_iter().filter(|t| thread_caps(t).is_some_and(|c| c & !keep != 0)).collect();
        if pending.is_empty() {
            return Ok(report);
        }
        for t in pending {
            if let Ok(tid) = t.parse::<libc::pid_t>() {
                // SAFETY: tgkill to a thread of this process.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(Error::Privilege("dropping capabilities: some threads still hold them after 50 rounds".into()))
}
