//! The controller binary and the processes the tests start from it: [`Node`]
//! (`p2p-controller run …`) and [`XdpPass`] (`p2p-controller xdp-pass …`).
//! Both stop their process on drop: SIGTERM, then SIGKILL after 3 s. A
//! [`Node`] also removes its pins (`/sys/fs/bpf/p2p/<instance>`) if the
//! controller left them, and prints the tail of its log when the test panics.

use crate::netns::Netns;
use crate::util::{json_u64, tail, unique, wait_for};
use anyhow::{Context, Result, bail};
use p2p_common::id::NodeId;
use serde_json::{Value, json};
use std::fs::{File, OpenOptions};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const PIN_ROOT: &str = "/sys/fs/bpf/p2p";
/// Where the controller keeps per-instance lock and run-state files.
pub const RUN_ROOT: &str = "/run/p2p-nos";

/// The `p2p-controller` binary.
#[derive(Clone, Debug)]
pub struct Controller {
    pub bin: PathBuf,
}

impl Controller {
    /// `$P2P_CONTROLLER`, else `p2p-controller` beside the running test
    /// binary's target dir (`target/debug/deps/..`), else
    /// `<workspace>/target/debug/p2p-controller`. `cargo xtask test` builds
    /// it before running the tests.
    pub fn locate() -> Result<Self> {
        let mut tried = Vec::new();
        if let Some(p) = std::env::var_os("P2P_CONTROLLER") {
            let p = PathBuf::from(p);
            if p.is_file() {
                return Ok(Controller { bin: p });
            }
            tried.push(p);
        }
        if let Ok(exe) = std::env::current_exe() {
            for dir in exe.ancestors().skip(1).take(2) {
                let p = dir.join("p2p-controller");
                if p.is_file() {
                    return Ok(Controller { bin: p });
                }
                tried.push(p);
            }
        }
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/p2p-controller");
        if p.is_file() {
            return Ok(Controller { bin: p });
        }
        tried.push(p);
        bail!(
            "p2p-controller binary not found (tried {}); build it with `cargo build -p p2p-controller` or set P2P_CONTROLLER",
            tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    }

    pub fn at(bin: impl Into<PathBuf>) -> Self {
        Controller { bin: bin.into() }
    }

    pub fn command(&self) -> Command {
        Command::new(&self.bin)
    }

    /// Runs `p2p-controller ARGS…` and parses its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "`p2p-controller {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "`p2p-controller {}` printed no JSON: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim()
            )
        })
    }

    /// `p2p-controller id --instance I --state-dir DIR --json` → node ID
    /// (creates the key on first use).
    pub fn identity(&self, instance: &str, state_dir: &Path) -> Result<NodeId> {
        Ok(self.identity_full(instance, state_dir)?.0)
    }

    /// Node ID and libp2p peer ID.
    pub fn identity_full(&self, instance: &str, state_dir: &Path) -> Result<(NodeId, String)> {
        let dir = state_dir.to_str().context("state dir is not UTF-8")?;
        let v = self.json(&["id", "--instance", instance, "--state-dir", dir, "--json"])?;
        let hex = v["node_id"].as_str().context("`id --json` has no node_id")?;
        let id = hex.parse::<NodeId>().map_err(|e| anyhow::anyhow!("`id --json` node_id: {e}"))?;
        let peer = v["peer_id"].as_str().context("`id --json` has no peer_id")?.to_string();
        Ok((id, peer))
    }

    /// `p2p-controller maps stats --instance I --json`.
    pub fn stats(&self, instance: &str) -> Result<Value> {
        self.json(&["maps", "stats", "--instance", instance, "--json"])
    }
}

/// Packets of `counter` in a `maps stats --json` document.
pub fn packets(stats: &Value, counter: &str) -> u64 {
    json_u64(stats, &format!("{counter}.packets"))
}

/// Everything needed to start one controller; also what other nodes put in
/// their peers file.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Short label used in messages ("h1", "B").
    pub name: String,
    pub instance: String,
    pub netns: String,
    pub ifaces: Vec<String>,
    /// The overlay address other nodes and the test send to.
    pub addr: IpAddr,
    pub port: u16,
    /// Work dir: state/, peers.json, records.json, ctl.sock, log.
    pub dir: PathBuf,
    pub node_id: NodeId,
    /// libp2p peer ID.
    pub peer_id: String,
    pub records: Vec<(String, String)>,
    /// Run mDNS (off by default: tests with static peers must not have
    /// Kademlia add peers they did not list).
    pub mdns: bool,
    /// `--datapath` (None: the controller's default, xdp).
    pub datapath: Option<String>,
    pub extra_args: Vec<String>,
}

impl NodeSpec {
    /// Creates the node's work dir and identity (`p2p-controller id`).
    pub fn new(
        ctl: &Controller,
        base: &Path,
        name: &str,
        netns: &Netns,
        ifaces: &[&str],
        addr: IpAddr,
    ) -> Result<Self> {
        let instance = unique(name);
        let dir = base.join(name);
        std::fs::create_dir_all(dir.join("state"))?;
        let (node_id, peer_id) = ctl.identity_full(&instance, &dir.join("state"))?;
        Ok(NodeSpec {
            name: name.to_string(),
            instance,
            netns: netns.name().to_string(),
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            addr,
            port: p2p_common::wire::DEFAULT_OVERLAY_PORT,
            dir,
            node_id,
            peer_id,
            records: Vec::new(),
            mdns: false,
            datapath: None,
            extra_args: Vec::new(),
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("controller.log")
    }
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(&self.instance)
    }
    pub fn overlay(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }
    /// libp2p TCP address with peer ID, for `--bootstrap`.
    pub fn bootstrap_addr(&self) -> String {
        let ip = match self.addr {
            IpAddr::V4(a) => format!("/ip4/{a}"),
            IpAddr::V6(a) => format!("/ip6/{a}"),
        };
        format!("{ip}/tcp/9471/p2p/{}", self.peer_id)
    }
    /// This node as an entry of a `--peers` file.
    pub fn peer_entry(&self) -> Value {
        self.peer_entry_at(self.addr)
    }
    /// This node as a peer reached at `addr` (a router with several addresses).
    pub fn peer_entry_at(&self, addr: impl Into<IpAddr>) -> Value {
        json!({"node_id": self.node_id.to_hex(), "addr": addr.into().to_string(), "port": self.port})
    }
}

/// A child process stopped on drop (SIGTERM, SIGKILL after 3 s).
struct Proc {
    child: Option<Child>,
    what: String,
}

impl Proc {
    fn spawn(mut cmd: Command, log: &Path, what: String) -> Result<Proc> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        // SAFETY: prctl is async-signal-safe; the child gets SIGTERM when the
        // test thread that started it dies without dropping the guard.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("spawn {what}"))?;
        Ok(Proc { child: Some(child), what })
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// `Some(status)` if the process has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill on the pid of our own, not yet reaped child.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// SIGTERM, wait up to 3 s, then SIGKILL.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        // SAFETY: as in `signal`.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        crate::note!("{} did not exit 3 s after SIGTERM: SIGKILL", self.what);
        let _ = child.kill();
        child.wait().ok()
    }

    fn kill9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `p2p-controller run` for one [`NodeSpec`].
pub struct Node {
    spec: NodeSpec,
    ctl: Controller,
    proc: Proc,
    /// Set by [`Node::kill9`]: leave the pins for the next start to clean.
    keep_pins: bool,
}

impl Node {
    /// Writes the node's peers file (entries from [`NodeSpec::peer_entry`])
    /// and records file, and starts the controller.
    pub fn start(ctl: &Controller, spec: &NodeSpec, peers: &[Value]) -> Result<Node> {
        let peers_file = spec.dir.join("peers.json");
        let records_file = spec.dir.join("records.json");
        std::fs::write(&peers_file, serde_json::to_vec_pretty(peers)?)?;
        let records_json: Vec<Value> = spec.records.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        std::fs::write(&records_file, serde_json::to_vec_pretty(&records_json)?)?;

        let mut cmd = ctl.command();
        cmd.arg("run").args(["--instance", &spec.instance, "--netns", &spec.netns]);
        for iface in &spec.ifaces {
            cmd.args(["--iface", iface]);
        }
        cmd.arg("--overlay-port").arg(spec.port.to_string());
        cmd.arg("--peers").arg(&peers_file);
        cmd.arg("--records").arg(&records_file);
        cmd.arg("--state-dir").arg(spec.state_dir());
        cmd.arg("--control-socket").arg(spec.control_socket());
        if let Some(dp) = &spec.datapath {
            cmd.args(["--datapath", dp]);
        }
        if !spec.mdns {
            cmd.arg("--no-mdns");
        }
        cmd.args(&spec.extra_args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let log = spec.log_path();
        {
            use std::io::Write;
            let mut f = OpenOptions::new().create(true).append(true).open(&log)?;
            writeln!(f, "=== {:?}", cmd)?;
        }
        let what = format!("controller {} ({})", spec.name, spec.instance);
        let proc = Proc::spawn(cmd, &log, what)?;
        Ok(Node { spec: spec.clone(), ctl: ctl.clone(), proc, keep_pins: false })
    }

    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    pub fn pid(&self) -> Option<i32> {
        self.proc.pid()
    }

    /// `p2p-controller status --instance I --control-socket S --json`.
    pub fn status(&self) -> Result<Value> {
        let sock = self.spec.control_socket();
        let sock = sock.to_str().context("socket path is not UTF-8")?;
        self.ctl.json(&["status", "--instance", &self.spec.instance, "--control-socket", sock, "--json"])
    }

    /// `p2p-controller maps stats --instance I --json`.
    pub fn stats(&self) -> Result<Value> {
        self.ctl.stats(&self.spec.instance)
    }

    /// One control-API request straight over the unix socket (no CLI
    /// process: for load generators); the response, `ok` or not.
    pub fn request(&self, req: &Value) -> Result<Value> {
        use std::io::{BufRead, Write};
        let path = self.spec.control_socket();
        let mut s =
            std::os::unix::net::UnixStream::connect(&path).with_context(|| format!("connect {}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(format!("{req}\n").as_bytes())?;
        let mut line = String::new();
        std::io::BufReader::new(&s).read_line(&mut line)?;
        serde_json::from_str(&line).with_context(|| format!("bad response to {req}: {line:?}"))
    }

    /// `p2p-controller ARGS… --instance I --control-socket S --json`.
    pub fn cli(&self, args: &[&str]) -> Result<Value> {
        let sock = self.spec.control_socket();
        let sock = sock.to_str().context("socket path is not UTF-8")?;
        let mut all = args.to_vec();
        all.extend(["--instance", &self.spec.instance, "--control-socket", sock, "--json"]);
        self.ctl.json(&all)
    }

    /// Packets of one STATS counter.
    pub fn counter(&self, name: &str) -> Result<u64> {
        Ok(packets(&self.stats()?, name))
    }

    /// Fails if the controller has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.proc.exited() {
            bail!("controller {} exited ({st}); log:\n{}", self.spec.name, self.log_tail(40));
        }
        Ok(())
    }

    /// Waits until `status.ready` is true.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Value> {
        let end = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let last_err = match self.status() {
                Ok(v) if v["ready"].as_bool() == Some(true) => return Ok(v),
                Ok(v) => format!("not ready: {v}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= end {
                bail!(
                    "controller {} not ready after {timeout:?}: {last_err}; log:\n{}",
                    self.spec.name,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `status` until `f` accepts it (or `timeout`); returns the last status.
    pub fn wait_status(&self, timeout: Duration, f: impl Fn(&Value) -> bool) -> Result<Value> {
        self.poll(timeout, Node::status, f)
    }

    /// Polls `maps stats` until `f` accepts it (or `timeout`); returns the last one.
    pub fn wait_stats(&self, timeout: Duration, f: impl Fn(&Value) -> bool) -> Result<Value> {
        self.poll(timeout, Node::stats, f)
    }

    fn poll(&self, timeout: Duration, read: fn(&Node) -> Result<Value>, f: impl Fn(&Value) -> bool) -> Result<Value> {
        let mut last = None;
        let ok = wait_for(timeout, || {
            let v = read(self).ok()?;
            let done = f(&v);
            last = Some(v.clone());
            done.then_some(v)
        });
        match ok.or(last) {
            Some(v) => Ok(v),
            None => read(self),
        }
    }

    /// SIGKILL; the pins and attachments it made are left for the next
    /// start of the same instance to clean up. Returns the spec to restart.
    pub fn kill9(mut self) -> NodeSpec {
        self.proc.kill9();
        self.keep_pins = true;
        self.spec.clone()
    }

    /// Graceful stop (SIGTERM); the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.proc.stop()
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.spec.log_path(), n)
    }

    /// Sends a signal to the controller.
    pub fn signal(&self, sig: i32) {
        self.proc.signal(sig)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let status = self.proc.stop();
        if std::thread::panicking() {
            crate::note!(
                "--- controller {} ({}) exit {:?}, last log lines:\n{}\n---",
                self.spec.name,
                self.spec.instance,
                status,
                self.log_tail(30)
            );
        }
        if self.keep_pins {
            return;
        }
        let pins = self.spec.pin_dir();
        if pins.exists() {
            crate::note!("controller {} left pins at {}: removing", self.spec.name, pins.display());
            let _ = std::fs::remove_dir_all(&pins);
        }
        // Lock and run-state files the controller keeps per instance.
        for ext in ["lock", "json", "sock"] {
            let _ = std::fs::remove_file(Path::new(RUN_ROOT).join(format!("{}.{ext}", self.spec.instance)));
        }
    }
}

/// `p2p-controller xdp-pass --netns NS --iface IF…`: the pass-through
/// program on veth ends that must accept XDP_TX/redirected frames.
pub struct XdpPass {
    proc: Proc,
}

impl XdpPass {
    /// Starts it and waits until every interface shows an XDP program.
    pub fn start(ctl: &Controller, ns: &Netns, ifaces: &[&str], log: &Path) -> Result<XdpPass> {
        let mut cmd = ctl.command();
        cmd.args(["xdp-pass", "--netns", ns.name()]);
        for i in ifaces {
            cmd.args(["--iface", i]);
        }
        let _ = File::create(log)?;
        let mut proc = Proc::spawn(cmd, log, format!("xdp-pass in {}", ns.name()))?;
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = proc.exited() {
                bail!("xdp-pass exited ({st}): {}", tail(log, 20));
            }
            let mut all = true;
            for i in ifaces {
                all &= ns.xdp_programs(i).unwrap_or(0) > 0;
            }
            if all {
                return Ok(XdpPass { proc });
            }
            if Instant::now() >= end {
                bail!("xdp-pass did not attach to {ifaces:?} within 60 s: {}", tail(log, 20));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        self.proc.stop();
    }
}
