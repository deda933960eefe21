//! `p2p-controller run`: sets the node up, serves the overlay socket and the
//! control API, and tears everything down on SIGINT/SIGTERM.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2p_common::codec::{self, Packet};
use p2p_common::id::NodeId;
use p2p_common::maps::{IFACE_HAS_V4, IFACE_HAS_V6, IfaceAddrs};
use p2p_common::wire::*;
use serde_json::json;
use tokio::sync::oneshot;

use crate::cli::{DatapathKind, RunArgs};
use crate::datapath::{Counters, Peer, Router, Verdict};
use crate::dataplane::{self, AttachedMode, Dataplane, LoadOptions};
use crate::error::{Error, Result};
use crate::files;
use crate::identity::Identity;
use crate::mapsync::{self, MapSync, SlotTable, SyncStats};
use crate::net::store::SharedStore;
use crate::net::{self, NetConfig, NetHandle};
use crate::paths;
use crate::sys;

/// Largest record value a LOOKUP_REPLY carries: the reply then fits the
/// IPv6 minimum MTU (1280 − 40 IPv6 − 8 UDP − 96 header − 24 reply fields).
pub const MAX_REPLY_VALUE: usize = 1112;

/// A reply the control API is waiting for, matched by msg_id.
pub struct Waiting {
    pub sent: Instant,
    pub tx: oneshot::Sender<(Packet, Duration)>,
}

#[derive(Default, serde::Serialize)]
pub struct Delivered {
    pub data: u64,
    pub lookup: u64,
    pub lookup_reply: u64,
    pub ping: u64,
    pub pong: u64,
}

pub struct State {
    pub router: Router,
    pub counters: Counters,
    pub delivered: Delivered,
    pub delivered_hops: BTreeMap<u8, u64>,
    pub delivered_ttl: BTreeMap<u8, u64>,
    pub slow_path: u64,
    pub lookups_answered: u64,
    pub records: HashMap<NodeId, (String, String)>,
    pub waiting: HashMap<u64, Waiting>,
    /// Routed peers that answered a PING since they entered the maps.
    pub answered: HashSet<NodeId>,
    /// Liveness PINGs in flight, by msg_id: (peer, sent).
    pub peer_pings: HashMap<u64, (NodeId, Instant)>,
    /// When each peer last answered a liveness PING (the control plane
    /// finds peers dead by it).
    pub last_pong: HashMap<NodeId, Instant>,
    pub map_sync: SyncStats,
}

impl State {
    /// The value stored under `key_id` if its record key is `key` (an empty
    /// `key` asks only who owns the point and matches any record there).
    pub fn record(&self, key_id: &NodeId, key: &[u8]) -> Option<&str> {
        self.records.get(key_id).filter(|(k, _)| key.is_empty() || k.as_bytes() == key).map(|(_, v)| v.as_str())
    }
}

pub struct Node {
    pub instance: String,
    pub identity: Identity,
    pub datapath: DatapathKind,
    pub xdp_mode: Option<AttachedMode>,
    pub ifaces: Vec<String>,
    pub overlay_port: u16,
    pub started: Instant,
    /// Overlay socket (dual-stack, blocking): the relay thread receives on
    /// it, anyone may send on it.
    pub socket: Arc<std::net::UdpSocket>,
    pub state: Mutex<State>,
    pub dataplane: Mutex<Option<Dataplane>>,
    /// Kademlia's records: the control plane stores them, LOOKUPs read them.
    pub store: SharedStore,
    /// The control plane (set once it runs).
    pub net: std::sync::OnceLock<NetHandle>,
}

impl Node {
    pub fn ready(&self) -> bool {
        let st = self.state.lock().unwrap();
        let total = st.router.peers().count();
        st.answered.len() >= total || self.started.elapsed() > Duration::from_secs(5)
    }

    pub fn status_json(&self) -> serde_json::Value {
        let ready = self.ready();
        let st = self.state.lock().unwrap();
        let hops: BTreeMap<String, u64> = st.delivered_hops.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let ttl: BTreeMap<String, u64> = st.delivered_ttl.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        json!({
            "instance": self.instance,
            "peer_id": self.identity.peer_id.to_string(),
            "node_id": self.identity.node_id.to_string(),
            "datapath": self.datapath,
            "xdp_mode": self.xdp_mode,
            "ifaces": self.ifaces,
            "overlay_port": self.overlay_port,
            "peers": st.router.peers().count(),
            "peers_answered": st.answered.len(),
            "ready": ready,
            "delivered": st.delivered,
            "delivered_hops": hops,
            "delivered_ttl": ttl,
            "slow_path": st.slow_path,
            "lookups_answered": st.lookups_answered,
            "records": st.records.len() + self.store.len(),
            "map_sync": st.map_sync,
            "uptime_s": self.started.elapsed().as_secs(),
        })
    }

    /// Sends a packet that originates here: to this node itself, or to the
    /// XOR-closest peer. Returns where it went (None = this node).
    pub async fn originate(&self, pkt: &Packet) -> Result<Option<SocketAddr>> {
        let hop = {
            let st = self.state.lock().unwrap();
            match st.router.next_hop(&pkt.dst_key) {
                None => return Err(Error::Remote("no route: the routing table is inconsistent".into())),
                Some(None) => None,
                Some(Some((_, p))) => Some(p.addr),
            }
        };
        if let Some(to) = hop {
            self.send_to(&pkt.encode(), to)?;
        }
        Ok(hop)
    }

    /// This node's address as seen from `peer` (the source the kernel picks).
    pub fn local_addr_towards(&self, peer: SocketAddr) -> IpAddr {
        let bind: SocketAddr = if peer.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
        std::net::UdpSocket::bind(bind)
            .and_then(|s| s.connect(peer).map(|_| s))
            .and_then(|s| s.local_addr())
            .map(|a| a.ip())
            .unwrap_or(peer.ip())
    }

    /// The value this node serves for record key `key` at point `key_id`:
    /// from the records file first, then from Kademlia's store.
    pub fn value_at(&self, st: &State, key_id: &NodeId, key: &[u8]) -> Option<Vec<u8>> {
        st.record(key_id, key).map(|v| v.as_bytes().to_vec()).or_else(|| self.store.value_at(key_id, key))
    }

    /// Answers a LOOKUP this node owns from its record store.
    fn answer_lookup(&self, st: &mut State, pkt: &Packet) -> Option<(SocketAddr, Vec<u8>)> {
        let (reply_to, key) = codec::parse_lookup_payload(&pkt.payload)?;
        let (status, value) = match self.value_at(st, &pkt.dst_key, key) {
            // A reply goes to an address the packet names: keep it to one
            // datagram that fits any path (no fragments to bounce at a
            // victim). The asker falls back to Kademlia for larger values.
            Some(v) if v.len() > MAX_REPLY_VALUE => (STATUS_REFUSED, Vec::new()),
            Some(v) => (STATUS_FOUND, v),
            None => (STATUS_NOT_FOUND, Vec::new()),
        };
        let owner = SocketAddr::new(self.local_addr_towards(reply_to), self.overlay_port);
        let mut reply = Packet::new(
            KIND_LOOKUP_REPLY,
            self.identity.node_id,
            pkt.src_id,
            pkt.msg_id,
            codec::lookup_reply_payload(status, owner, &value),
        );
        // Replies go straight back, unrouted. Their ttl carries the LOOKUP's
        // ttl on arrival so that the origin can tell the hop count.
        reply.ttl = pkt.ttl;
        st.lookups_answered += 1;
        Some((reply_to, reply.encode()))
    }

    /// Handles a packet delivered to this node's controller.
    fn deliver(&self, st: &mut State, pkt: Packet) -> Option<(SocketAddr, Vec<u8>)> {
        match pkt.kind {
            KIND_DATA | KIND_LOOKUP => {
                *st.delivered_hops.entry(pkt.hops).or_default() += 1;
                *st.delivered_ttl.entry(pkt.ttl).or_default() += 1;
                if pkt.kind == KIND_DATA {
                    st.delivered.data += 1;
                    None
                } else {
                    st.delivered.lookup += 1;
                    self.answer_lookup(st, &pkt)
                }
            }
            KIND_PING => {
                st.delivered.ping += 1;
                None
            }
            KIND_LOOKUP_REPLY | KIND_PONG => {
                if pkt.kind == KIND_PONG {
                    st.delivered.pong += 1;
                    if let Some((peer, _)) = st.peer_pings.remove(&pkt.msg_id) {
                        st.answered.insert(peer);
                        st.last_pong.insert(peer, Instant::now());
                    }
                } else {
                    st.delivered.lookup_reply += 1;
                }
                if let Some(w) = st.waiting.remove(&pkt.msg_id) {
                    let _ = w.tx.send((pkt, w.sent.elapsed()));
                }
                None
            }
            _ => None,
        }
    }

    /// One datagram from the overlay socket; returns what to send back out.
    /// `from` comes canonical from the relay (IPv4-mapped turned into IPv4).
    fn on_datagram(&self, buf: &[u8], from: SocketAddr) -> Option<(SocketAddr, Vec<u8>)> {
        let userspace = self.datapath == DatapathKind::Userspace;
        let mut st = self.state.lock().unwrap();
        let verdict = st.router.process(buf, from);
        if userspace {
            st.counters.count(verdict.counter(), buf.len(), from);
        }
        match verdict {
            Verdict::Drop(_) => None,
            Verdict::Local(pkt) => self.deliver(&mut st, pkt),
            Verdict::Pong { to, bytes } => Some((to, bytes)),
            Verdict::Forward { to, bytes, .. } => {
                // In XDP mode this is the slow path (XDP counted fwd_slow).
                st.slow_path += 1;
                Some((to, bytes))
            }
        }
    }

    /// Sends on the overlay socket (IPv4 destinations as mapped addresses).
    pub fn send_to(&self, bytes: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        let to = match to {
            SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
            v6 => v6,
        };
        self.socket.send_to(bytes, to)
    }

    /// PINGs every peer directly: proves liveness (the control plane finds
    /// silent peers dead) and, as a side effect, resolves the neighbour
    /// entries that XDP's FIB lookups need.
    fn ping_peers(&self, only_silent: bool) {
        let now = Instant::now();
        let targets: Vec<(NodeId, SocketAddr, u64)> = {
            let mut st = self.state.lock().unwrap();
            st.peer_pings.retain(|_, (_, sent)| now.duration_since(*sent) < Duration::from_secs(10));
            // Peers gone for a minute are forgotten (churn must not grow it).
            st.last_pong.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
            let list: Vec<(NodeId, SocketAddr)> = st
                .router
                .peers()
                .filter(|(_, p)| !only_silent || !st.answered.contains(&p.node_id))
                .map(|(_, p)| (p.node_id, p.addr))
                .collect();
            list.into_iter()
                .map(|(id, a)| {
                    let msg_id = rand::random::<u64>();
                    st.peer_pings.insert(msg_id, (id, now));
                    (id, a, msg_id)
                })
                .collect()
        };
        for (id, addr, msg_id) in targets {
            let now = monotonic_ns();
            let p = Packet::new(KIND_PING, self.identity.node_id, id, msg_id, now.to_be_bytes().to_vec());
            let _ = self.send_to(&p.encode(), addr);
        }
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Everything `run` must undo, undone on drop (also on early errors).
struct Cleanup {
    pin_dir: Option<PathBuf>,
    sysctls: Vec<(String, String)>,
    socket_path: Option<PathBuf>,
    run_state: PathBuf,
    lock_file: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        sys::restore_sysctls(&self.sysctls);
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
        if let Some(dir) = &self.pin_dir {
            dataplane::remove_pins(dir);
        }
        let _ = std::fs::remove_file(&self.run_state);
        let _ = std::fs::remove_file(&self.lock_file);
    }
}

/// Holds the instance lock (flock) for the process lifetime.
struct InstanceLock(#[allow(dead_code)] std::fs::File);

fn lock_instance(instance: &str) -> Result<InstanceLock> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(paths::RUN_ROOT)?;
    let path = paths::lock_file(instance);
    let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
    // SAFETY: flock on a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Err(Error::AlreadyRunning { instance: instance.into(), pid: pid.trim().to_string() });
    }
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{}", std::process::id())?;
    Ok(InstanceLock(f))
}

/// A previous run of this instance that died without cleaning up: remove
/// its pins and any XDP program of ours it left on its interfaces.
fn clear_stale(instance: &str) {
    let pin_dir = paths::pin_dir(instance);
    if pin_dir.exists() {
        log::info!("removing stale pins of instance {instance} in {}", pin_dir.display());
        dataplane::remove_pins(&pin_dir);
    }
    let state = paths::run_state_file(instance);
    if let Ok(text) = std::fs::read_to_string(&state) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            for iface in v["ifaces"].as_array().into_iter().flatten().filter_map(|i| i.as_str()) {
                detach_if_ours(iface);
            }
        }
        let _ = std::fs::remove_file(&state);
    }
}

/// bpf_link attachments vanish with their process; a netlink attachment
/// (older kernels) stays. Remove it only if it is our program.
fn detach_if_ours(iface: &str) {
    let Ok(out) = std::process::Command::new("ip").args(["-d", "-j", "link", "show", "dev", iface]).output() else {
        return;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else { return };
    let name = &v[0]["xdp"]["prog"]["name"];
    if name.as_str() == Some(p2p_common::maps::PROG_XDP) {
        log::info!("detaching stale XDP program from {iface}");
        for mode in ["xdp", "xdpgeneric", "xdpdrv"] {
            let _ = std::process::Command::new("ip").args(["link", "set", "dev", iface, mode, "off"]).status();
        }
    }
}

pub fn run(args: RunArgs, instance: String) -> Result<()> {
    if !paths::valid_instance(&instance) {
        return Err(Error::Usage(format!(
            "--instance {instance:?}: use letters, digits, '-', '_' or '.' (it names pin and socket paths)"
        )));
    }
    if let Some(ns) = &args.netns {
        // Before any thread exists: threads inherit the namespace.
        sys::enter_netns(ns)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run_async(args, instance))
}

async fn run_async(args: RunArgs, instance: String) -> Result<()> {
    let xdp = args.datapath == DatapathKind::Xdp;
    if xdp && args.ifaces.is_empty() {
        return Err(Error::Usage(
            "--datapath xdp needs at least one --iface to attach to (or use --datapath userspace)".into(),
        ));
    }
    for iface in &args.ifaces {
        if dataplane::ifindex(iface).is_none() {
            return Err(Error::NoInterface(iface.clone()));
        }
    }
    if xdp {
        sys::check_privileges(args.netns.is_some())?;
        sys::check_bpffs()?;
    }
    let (listen_ip, mut net_cfg) = net_config(&args)?;
    let state_dir = args.state_dir.clone().unwrap_or_else(|| paths::state_dir(&instance));
    let (identity, created) = Identity::load_or_create(&state_dir)?;
    if created {
        log::info!("created a new node key in {}", state_dir.display());
    }
    let peers = match &args.peers {
        Some(p) => files::load_peers(p, Some(&identity.node_id))?,
        None => Vec::new(),
    };
    let records = match &args.records {
        Some(p) => files::load_records(p)?,
        None => Vec::new(),
    };
    let _lock = lock_instance(&instance)?;
    clear_stale(&instance);
    // From here on every exit, early errors included, undoes what was made.
    let mut cleanup = Cleanup {
        pin_dir: None,
        sysctls: Vec::new(),
        socket_path: None,
        run_state: paths::run_state_file(&instance),
        lock_file: paths::lock_file(&instance),
    };

    // One dual-stack IPv6 socket serves both families (IPv4 as mapped).
    let listen_ip = match listen_ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    };
    let listen = SocketAddr::new(listen_ip, args.overlay_port);
    let socket = bind_overlay(listen)?;

    let pin_dir = paths::pin_dir(&instance);
    let socket_path = args.control_socket.clone().unwrap_or_else(|| paths::control_socket(&instance));

    // The userspace datapath still pins STATS and friends when it can, so
    // that `maps` reads both modes alike; without BPF it runs regardless.
    let load = Dataplane::load(LoadOptions { pin_dir: Some(pin_dir.clone()), ebpf_log: args.ebpf_log });
    let mut dp = match load {
        Ok(dp) => {
            cleanup.pin_dir = Some(pin_dir.clone());
            Some(dp)
        }
        Err(e) if xdp => {
            dataplane::remove_pins(&pin_dir);
            return Err(e.into());
        }
        Err(e) => {
            log::warn!("userspace datapath without pinned maps (`maps` will not see this node): {e}");
            dataplane::remove_pins(&pin_dir);
            None
        }
    };

    let static_peers: Vec<Peer> =
        peers.iter().map(|p| Peer { node_id: p.node_id, addr: SocketAddr::new(p.addr, p.port) }).collect();
    let router = Router::new(identity.node_id, Vec::new())
        .map_err(|e| Error::Usage(format!("the peer set cannot be routed: {e}")))?;

    let mut xdp_mode = None;
    if let Some(dp) = dp.as_mut() {
        dp.set_config(identity.node_id.0, args.overlay_port, 0)?;
        for iface in &args.ifaces {
            let (v4, v6) = sys::iface_addrs(iface);
            let mut a = IfaceAddrs::default();
            if let Some(v4) = v4 {
                a.v4 = v4.octets();
                a.flags |= IFACE_HAS_V4;
            }
            if let Some(v6) = v6 {
                a.v6 = v6.octets();
                a.flags |= IFACE_HAS_V6;
            }
            if a.flags == 0 && xdp {
                log::warn!("{iface} has no IP address: packets cannot be forwarded out of it");
            }
            dp.set_iface(dataplane::ifindex(iface).unwrap_or(0), a)?;
        }
        if !xdp {
            // A veth drops frames that a peer's XDP sent it (XDP_TX,
            // redirect) unless an XDP program runs on it: hold the
            // pass-through one, so XDP neighbours can reach this node.
            for iface in &args.ifaces {
                match dp.attach(iface, args.xdp_mode, true) {
                    Ok(got) => log::info!("pass-through XDP on {iface} ({got} mode)"),
                    Err(e) => log::warn!("no pass-through XDP on {iface}: {e}"),
                }
            }
        }
        if xdp {
            let state = json!({"pid": std::process::id(), "netns": args.netns, "ifaces": args.ifaces});
            let _ = std::fs::write(&cleanup.run_state, state.to_string());
            for iface in &args.ifaces {
                cleanup.sysctls.extend(sys::enable_forwarding(iface));
                let got = dp.attach(iface, args.xdp_mode, false)?;
                log::info!("XDP attached to {iface} in {got} mode");
                eprintln!("p2p-controller: XDP attached to {iface} in {got} mode");
                xdp_mode = Some(got);
            }
        }
    }

    let records: HashMap<NodeId, (String, String)> =
        records.into_iter().map(|r| (NodeId::from_record_key(r.key.as_bytes()), (r.key, r.value))).collect();

    let store = SharedStore::new(identity.peer_id);
    let node = Arc::new(Node {
        instance: instance.clone(),
        identity,
        datapath: args.datapath,
        xdp_mode,
        ifaces: args.ifaces.clone(),
        overlay_port: args.overlay_port,
        started: Instant::now(),
        socket: Arc::new(socket),
        state: Mutex::new(State {
            router,
            counters: Counters::new(),
            delivered: Delivered::default(),
            delivered_hops: BTreeMap::new(),
            delivered_ttl: BTreeMap::new(),
            slow_path: 0,
            lookups_answered: 0,
            records,
            waiting: HashMap::new(),
            answered: HashSet::new(),
            peer_pings: HashMap::new(),
            last_pong: HashMap::new(),
            map_sync: SyncStats::default(),
        }),
        dataplane: Mutex::new(dp),
        store,
        net: std::sync::OnceLock::new(),
    });

    // Static peers go into the maps now; the control plane adds the rest.
    let mut slots = SlotTable::new();
    mapsync::sync(&node, &mut slots, &static_peers, Instant::now())
        .map_err(|e| Error::Usage(format!("the peer set cannot be routed: {e}")))?;
    let sync = MapSync::spawn(node.clone(), slots)?;
    net_cfg.static_peers = static_peers;
    let handle = net::spawn(node.clone(), net_cfg, sync)?;
    let _ = node.net.set(handle);

    crate::control::serve(node.clone(), &socket_path)?;
    cleanup.socket_path = Some(socket_path.clone());

    let (npeers, nrecords) = {
        let st = node.state.lock().unwrap();
        (st.router.peers().count(), st.records.len())
    };
    eprintln!(
        "p2p-controller: instance {instance} node {} peer {} datapath {:?} on {listen} ({npeers} static peers, {nrecords} records); control {}",
        node.identity.node_id,
        node.identity.peer_id,
        args.datapath,
        socket_path.display()
    );

    // Overlay socket: its own thread, batched.
    let rx = node.clone();
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_flag = stopping.clone();
    let relay = std::thread::Builder::new().name("overlay-rx".into()).spawn(move || {
        let sock = rx.socket.clone();
        crate::relay::serve(
            &sock,
            |buf, from| rx.on_datagram(buf, from),
            || stop_flag.load(std::sync::atomic::Ordering::Relaxed),
        );
    })?;

    // Liveness pings: every peer each second, new ones every 200 ms until
    // they answer.
    let pinger = node.clone();
    tokio::spawn(async move {
        let mut tick = 0u64;
        loop {
            let all = {
                let st = pinger.state.lock().unwrap();
                st.answered.len() >= st.router.peers().count()
            };
            if tick.is_multiple_of(5) {
                pinger.ping_peers(false);
            } else if !all {
                pinger.ping_peers(true);
            }
            tick += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    // Userspace counters into STATS; aya-log lines out of their ring.
    let ticker = node.clone();
    let mirror = args.datapath == DatapathKind::Userspace;
    let ebpf_log = args.ebpf_log;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let counters = mirror.then(|| ticker.state.lock().unwrap().counters.0.clone());
            let mut dp = ticker.dataplane.lock().unwrap();
            if let Some(dp) = dp.as_mut() {
                if let Some(c) = counters
                    && let Err(e) = dp.mirror_stats(&c)
                {
                    log::debug!("mirroring stats: {e}");
                }
                if ebpf_log {
                    dp.flush_logs();
                }
            }
        }
    });

    wait_for_signal().await?;
    // Leave first: peers see the connections close and drop this node from
    // their maps at once, instead of waiting for missed PINGs.
    if let Some(net) = node.net.get() {
        net.shutdown(Duration::from_secs(1)).await;
    }
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = relay.join();
    eprintln!("p2p-controller: shutting down instance {instance}");
    if let Some(mut dp) = node.dataplane.lock().unwrap().take() {
        dp.detach_all();
        dp.unpin();
    }
    drop(cleanup);
    Ok(())
}

/// Splits `--listen` into the overlay bind IP and libp2p listen
/// addresses, and checks the control-plane flags.
fn net_config(args: &RunArgs) -> Result<(IpAddr, NetConfig)> {
    use libp2p::Multiaddr;
    let mut overlay_ip: Option<IpAddr> = None;
    let mut listen: Vec<Multiaddr> = Vec::new();
    for l in &args.listen {
        if let Ok(ip) = l.parse::<IpAddr>() {
            if overlay_ip.replace(ip).is_some() {
                return Err(Error::Usage(
                    "--listen: give at most one IP address (the overlay socket's); libp2p addresses are multiaddrs"
                        .into(),
                ));
            }
        } else {
            let m = l.parse::<Multiaddr>().map_err(|e| {
                Error::Usage(format!(
                    "--listen {l:?}: neither an IP address (overlay socket) nor a multiaddr like /ip4/0.0.0.0/tcp/9471 ({e})"
                ))
            })?;
            listen.push(m);
        }
    }
    if listen.is_empty() {
        let p = args.p2p_port;
        listen = [
            format!("/ip4/0.0.0.0/tcp/{p}"),
            format!("/ip6/::/tcp/{p}"),
            format!("/ip4/0.0.0.0/udp/{p}/quic-v1"),
            format!("/ip6/::/udp/{p}/quic-v1"),
        ]
        .iter()
        .map(|s| s.parse().expect("valid multiaddr"))
        .collect();
    }
    let bootstrap = args
        .bootstrap
        .iter()
        .map(|b| {
            b.parse::<Multiaddr>().map_err(|e| {
                Error::Usage(format!("--bootstrap {b:?}: not a multiaddr ({e}); e.g. /ip4/192.0.2.1/tcp/9471"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let positive = |n: usize, flag: &str| {
        std::num::NonZeroUsize::new(n).ok_or_else(|| Error::Usage(format!("{flag} must be at least 1")))
    };
    let replication = positive(args.replication, "--replication")?;
    let quorum = positive(args.quorum, "--quorum")?;
    if quorum > replication {
        return Err(Error::Usage(format!(
            "--quorum {quorum} exceeds --replication {replication}: a put could never succeed"
        )));
    }
    let cfg = NetConfig {
        kad_protocol: args.kad_protocol.clone(),
        replication,
        quorum,
        kbucket_size: positive(args.kbucket_size, "--kbucket-size")?,
        record_ttl: args.record_ttl.map(Duration::from_secs),
        republish_interval: args.republish_interval.map(Duration::from_secs),
        bootstrap_interval: Duration::from_secs(args.bootstrap_interval.max(1)),
        bootstrap,
        listen,
        mdns: !args.no_mdns,
        advertise: args.advertise.clone(),
        ifaces: args.ifaces.clone(),
        overlay_port: args.overlay_port,
        overlay_ip: overlay_ip.filter(|ip| !ip.is_unspecified()),
        static_peers: Vec::new(),
    };
    if !cfg.kad_protocol.starts_with('/') {
        return Err(Error::Usage(format!("--kad-protocol {:?}: a protocol name starts with '/'", cfg.kad_protocol)));
    }
    Ok((overlay_ip.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)), cfg))
}

fn bind_overlay(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let sock = std::net::UdpSocket::bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::PortInUse { port: addr.port() }
        } else {
            Error::Usage(format!("cannot bind the overlay socket {addr}: {e}"))
        }
    })?;
    set_rcvbuf(&sock, 8 << 20);
    // The relay thread wakes up this often to notice shutdown.
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(sock)
}

/// Bursts of transit packets must not overflow the default buffer.
fn set_rcvbuf(sock: &std::net::UdpSocket, bytes: i32) {
    use std::os::fd::AsRawFd;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a valid int.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &bytes as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as u32,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
