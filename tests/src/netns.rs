//! Network namespaces that delete themselves on drop (also when a test
//! panics), veth links and bridges inside them, and [`enter`], which runs a
//! closure on a thread that has joined a namespace by `setns` (never `ip
//! netns exec`, which hides `/sys/fs/bpf`; see DESIGN.md).
//!
//! Devices are created directly inside the namespaces (`ip -n NS link add …
//! peer name … netns OTHER`), so nothing is ever added to the root namespace
//! and names can repeat across namespaces.

use crate::util::{run, run_quiet};
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`, then brings `lo` up.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if Netns::path_of(&name).exists() {
            bail!("network namespace {name} already exists");
        }
        run("ip", ["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Netns::path_of(&self.name)
    }

    pub fn path_of(name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }

    /// `ip -n NAME ARGS…`, returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", all)
    }

    /// Runs any program inside the namespace with `nsenter --net=…` (mounts
    /// stay those of the caller).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let net = format!("--net={}", self.path().display());
        let mut all = vec![net.as_str(), program];
        all.extend_from_slice(args);
        run("nsenter", all)
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward`, …).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        enter(&self.name, move || std::fs::write(&path, &value).with_context(|| format!("write {path}")))?
    }

    /// Adds `addr/len` to `dev` (IPv6 with `nodad`, usable at once) and sets it up.
    pub fn addr(&self, dev: &str, cidr: &str) -> Result<()> {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", dev, "nodad"])?;
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev])?;
        }
        self.up(dev)
    }

    pub fn up(&self, dev: &str) -> Result<()> {
        self.ip(&["link", "set", dev, "up"]).map(|_| ())
    }

    pub fn route(&self, dst: &str, via: &str) -> Result<()> {
        self.ip(&["route", "add", dst, "via", via]).map(|_| ())
    }

    /// A bridge `name` in this namespace, up, STP off.
    pub fn bridge(&self, name: &str) -> Result<()> {
        self.ip(&["link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
        self.up(name)
    }

    /// Puts `dev` into bridge `br` and sets it up.
    pub fn enslave(&self, dev: &str, br: &str) -> Result<()> {
        self.ip(&["link", "set", dev, "master", br])?;
        self.up(dev)
    }

    /// The number of XDP programs attached to `dev` according to
    /// `ip -d link show` (`prog/xdp…` entries).
    pub fn xdp_programs(&self, dev: &str) -> Result<usize> {
        let out = self.ip(&["-d", "link", "show", "dev", dev])?;
        Ok(count_xdp_programs(&out))
    }
}

/// Counts `prog/xdp id N`, `prog/xdpdrv id N`, `prog/xdpgeneric id N`, …
pub fn count_xdp_programs(ip_d_link_show: &str) -> usize {
    ip_d_link_show
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0].starts_with("prog/xdp") && w[1] == "id")
        .count()
}

impl Drop for Netns {
    fn drop(&mut self) {
        run_quiet("ip", ["netns", "del", self.name.as_str()]);
    }
}

/// A veth pair: `dev_a` in `a`, `dev_b` in `b`, both up, no addresses.
pub fn veth(a: &Netns, dev_a: &str, b: &Netns, dev_b: &str) -> Result<()> {
    a.ip(&["link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", b.name()])?;
    a.up(dev_a)?;
    b.up(dev_b)
}

/// Runs `f` on a new thread that has joined network namespace `name` (by
/// `setns` on `/run/netns/NAME`; mounts are left alone). Sockets created in
/// `f` stay in that namespace wherever they are used afterwards.
pub fn enter<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = Netns::path_of(name);
    let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    let handle = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || -> Result<T> {
            // SAFETY: setns on an fd we own; CLONE_NEWNET is allowed for a
            // single thread of a multi-threaded process and affects only it.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns({}): {}", path.display(), std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .context("spawn netns thread")?;
    match handle.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Spawns a long-lived thread inside namespace `name` running `f`.
pub fn spawn_in<T, F>(name: &str, f: F) -> Result<std::thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let path = Netns::path_of(name);
    let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || -> Result<T> {
            // SAFETY: as in `enter`.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns({}): {}", path.display(), std::io::Error::last_os_error());
            }
            f()
        })
        .context("spawn netns thread")
}

#[cfg(test)]
mod tests {
    use super::count_xdp_programs;

    #[test]
    fn counts_xdp_attachments() {
        let one = "2: eth0@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 xdp qdisc noqueue\n    \
                   link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff link-netns x promiscuity 0\n    \
                   veth\n    prog/xdp id 42 name p2p_xdp tag 0123456789abcdef jited";
        assert_eq!(count_xdp_programs(one), 1);
        let two = "xdpmulti qdisc\n prog/xdpdrv id 4 name a tag 1 jited\n prog/xdpgeneric id 5 name b tag 2 jited";
        assert_eq!(count_xdp_programs(two), 2);
        assert_eq!(count_xdp_programs("2: eth0: <UP> mtu 1500 qdisc noqueue"), 0);
    }
}
