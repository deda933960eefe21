//! `p2p-controller run`: the wiring. It checks the input, sets the node up
//! (identity, overlay socket, XDP), starts the components and connects
//! them, serves the control API, and tears everything down on
//! SIGINT/SIGTERM. Nothing imports it; components talk to each other only
//! through the handles and channels made here:
//!
//! ```text
//! control API ──► net (swarm) ──► liveness ──► reputation ──► overlay socket ──► map sync ──► dataplane
//!                  ▲   └────────────┴─────────────┴──────────────┴───────────────┘
//!                  └── deaths (liveness) and bans (reputation), by channel
//! ```
//!
//! An arrow is a handle: the component on its left sends commands to the
//! one on its right, never the other way round; the two channels back to
//! the swarm carry events, not handles.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use p2p_common::id::NodeId;
use p2p_common::maps::{IFACE_HAS_V4, IFACE_HAS_V6, IfaceAddrs};
use serde_json::json;

use crate::cli::{DatapathKind, RunArgs};
use crate::dataplane::{self, Dataplane, LoadOptions};
use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::mapsync::MapSyncHandle;
use crate::net::store::SharedStore;
use crate::net::{self, NetConfig};
use crate::overlay::OverlayConfig;
use crate::reputation::ReputationHandle;
use crate::userspace::Peer;
use crate::{control, files, liveness, mapsync, overlay, paths, reputation, sys, trust, units};

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

/// What `run` reads from its options and files, all checked.
struct Inputs {
    listen_ip: IpAddr,
    net_cfg: NetConfig,
    rate: mapsync::RatePolicy,
    timing: liveness::Timing,
    reputation_cfg: reputation::Config,
    burst_ms: u64,
    peers: Vec<files::PeerSpec>,
    records: Vec<files::RecordSpec>,
    state_dir: PathBuf,
    store_quota: u64,
    store_cache: crate::storage::CachePolicy,
}

/// Every check of the options and the files they name that `run` makes
/// before it changes anything (a key created, a lock taken, a program
/// attached); `config check` runs the same.
fn checked_inputs(args: &RunArgs, instance: &str) -> Result<Inputs> {
    if args.datapath == DatapathKind::Xdp && args.ifaces.is_empty() {
        return Err(Error::Usage(
            "--datapath xdp needs at least one --iface to attach to (or use --datapath userspace)".into(),
        ));
    }
    for iface in &args.ifaces {
        if dataplane::ifindex(iface).is_none() {
            return Err(Error::NoInterface(iface.clone()));
        }
    }
    // Every input is checked before anything is changed (a key created,
    // a lock taken, a program attached).
    let (listen_ip, mut net_cfg) = net_config(args)?;
    let rate = rate_policy(args)?;
    let timing = liveness_timing(args)?;
    let reputation_cfg = reputation_config(args)?;
    let burst_ms = units::parse_duration(&args.rate_burst).ok().flatten().unwrap_or_default().as_millis() as u64;
    let peers = match &args.peers {
        Some(p) => files::load_peers(p, None)?,
        None => Vec::new(),
    };
    if let Some(p) = peers.iter().find(|p| p.link.is_none())
        && net_cfg.auth == crate::userspace::AuthPolicy::Required
    {
        return Err(Error::Usage(format!(
            "--peers with --auth required: static peer {} ({}) has no \"link\" keys, and static peers have no \
             libp2p identity to agree them with, so every packet to or from it would be dropped; give it \
             pre-shared keys in the peers file, use --auth optional (or off), or let it join through --bootstrap",
            p.node_id, p.addr
        )));
    }
    if peers.iter().any(|p| p.link.is_some()) && net_cfg.auth == crate::userspace::AuthPolicy::Off {
        log::warn!("--peers: the \"link\" keys of static peers are not used under --auth off");
    }
    net_cfg.static_links = peers
        .iter()
        .filter_map(|p| {
            let l = p.link.as_ref()?;
            let secret = p2p_common::maps::LinkSecret {
                rx: [l.rx, [0; 16]],
                tx: l.tx,
                rx_id: [l.key_id, 0],
                tx_id: l.key_id,
                _pad: [0; 5],
            };
            Some((SocketAddr::new(p.addr, p.port), secret))
        })
        .collect();
    let records = match &args.records {
        Some(p) => files::load_records(p)?,
        None => Vec::new(),
    };
    let state_dir = args.state_dir.clone().unwrap_or_else(|| paths::state_dir(instance));
    net_cfg.trust = trust_config(args, &state_dir)?;
    if net_cfg.trust.is_none() {
        net_cfg.known_peers = Some(net::known::KnownPeers::load(&state_dir.join(paths::KNOWN_PEERS_FILE))?);
    }
    let store_quota = units::parse_size(&args.store_quota).map_err(|e| Error::Usage(format!("--store-quota {e}")))?;
    let store_cache = crate::storage::CachePolicy {
        hot_reads: args.store_hot_reads,
        cool: units::parse_duration(&args.store_cache_cool)
            .map_err(|e| Error::Usage(format!("--store-cache-cool {e}")))?
            .ok_or_else(|| Error::Usage("--store-cache-cool must be finite (e.g. 5m)".into()))?,
    };
    Ok(Inputs {
        listen_ip,
        net_cfg,
        rate,
        timing,
        reputation_cfg,
        burst_ms,
        peers,
        records,
        state_dir,
        store_quota,
        store_cache,
    })
}

/// `config check`: the options' and files' checks, nothing changed.
pub fn check(args: &RunArgs, instance: &str) -> Result<()> {
    checked_inputs(args, instance).map(|_| ())
}

async fn run_async(args: RunArgs, instance: String) -> Result<()> {
    set_log_level(args.log_level);
    // What it started with, for SIGHUP to tell which options changed.
    let started_argv = crate::config::merge_argv(std::env::args_os().collect())?.0;
    let xdp = args.datapath == DatapathKind::Xdp;
    let Inputs {
        listen_ip,
        mut net_cfg,
        rate,
        timing,
        reputation_cfg,
        burst_ms,
        peers,
        records,
        state_dir,
        store_quota,
        store_cache,
    } = checked_inputs(&args, &instance)?;
    if xdp {
        sys::check_privileges(args.netns.is_some())?;
        sys::check_bpffs()?;
    }
    let (identity, created) = Identity::load_or_create(&state_dir)?;
    if let Some(t) = &net_cfg.trust
        && t.cert.peer != identity.peer_id
    {
        return Err(Error::File {
            path: args.cert.clone().unwrap_or_default(),
            reason: format!(
                "certifies {}, but this node is {} (state dir {}); sign one for this node",
                t.cert.peer,
                identity.peer_id,
                state_dir.display()
            ),
        });
    }
    if created {
        log::info!("created a new node key in {}", state_dir.display());
    }
    if let (Some(path), Some(p)) = (&args.peers, peers.iter().find(|p| p.node_id == identity.node_id)) {
        return Err(Error::File {
            path: path.clone(),
            reason: format!("lists this node itself ({}, {}); remove that entry", p.node_id, p.addr),
        });
    }
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
    // Bound before the datapath is set up: a taken address fails the start
    // with nothing attached.
    let metrics_listener = match args.metrics {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let mut metrics_registry = prometheus_client::registry::Registry::default();
    let libp2p_metrics = metrics_listener.as_ref().map(|_| libp2p::metrics::Metrics::new(&mut metrics_registry));

    let pin_dir = paths::pin_dir(&instance);
    let socket_path = args.control_socket.clone().unwrap_or_else(|| paths::control_socket(&instance));
    let (dp, xdp_mode) = setup_dataplane(&args, &identity, &pin_dir, &mut cleanup)?;

    // Static peers go into the maps now; the control plane adds the rest.
    let static_peers: Vec<Peer> = peers.iter().map(|p| Peer::new(p.node_id, SocketAddr::new(p.addr, p.port))).collect();
    let (sync, routing) = mapsync::spawn(identity.node_id, dp, &static_peers, rate, args.ebpf_log)
        .map_err(|e| Error::Usage(format!("the peer set cannot be routed: {e}")))?;

    let records: HashMap<NodeId, (String, String)> =
        records.into_iter().map(|r| (NodeId::from_record_key(r.key.as_bytes()), (r.key, r.value))).collect();
    let nrecords = records.len();
    let store = SharedStore::new(identity.peer_id);
    let sessions = crate::e2e::Sessions::default();
    let overlay_cfg = OverlayConfig {
        node_id: identity.node_id,
        port: args.overlay_port,
        userspace: !xdp,
        records,
        store: store.clone(),
        auth: net_cfg.auth,
        sessions: sessions.clone(),
        identity: identity.keypair.clone(),
    };
    let (overlay, relay, pongs) = overlay::spawn(overlay_cfg, socket, routing.clone(), sync.clone())?;
    let (bans_tx, bans_rx) = tokio::sync::mpsc::channel(256);
    let sources = if xdp {
        reputation::Sources::Kernel(sync.clone(), overlay.clone())
    } else {
        reputation::Sources::Userspace(overlay.clone())
    };
    let reputation = reputation::spawn(reputation_cfg, sync.clone(), sources, routing.clone(), bans_tx);
    let (liveness_tx, liveness_rx) = tokio::sync::mpsc::channel(256);
    let evidence =
        if xdp { liveness::Evidence::Kernel(sync.clone()) } else { liveness::Evidence::Userspace(overlay.clone()) };
    let liveness = liveness::spawn(
        timing,
        liveness::Links {
            overlay: overlay.clone(),
            sync: sync.clone(),
            evidence,
            routing,
            pongs,
            events: liveness_tx,
            reputation: reputation.clone(),
        },
    );
    net_cfg.static_peers = static_peers.clone();
    let shards = crate::blobs::ShardStore::open(&state_dir.join(paths::STORE_DIR), store_quota)
        .map_err(|e| Error::Usage(e.to_string()))?;
    net_cfg.shards = Some(shards.clone());
    let links = net::Links {
        sync: sync.clone(),
        store,
        liveness: liveness_rx,
        liveness_handle: liveness.clone(),
        overlay: overlay.clone(),
        reputation: reputation.clone(),
        bans: bans_rx,
        sessions,
        metrics: libp2p_metrics,
    };
    let net = net::spawn(&identity.keypair, net_cfg, links)?;
    let storage = crate::storage::Storage::spawn(
        identity.peer_id,
        shards,
        net.clone(),
        liveness.clone(),
        reputation.clone(),
        store_cache,
    );

    // Set-up is done: from here on the daemon needs only its maps and, at
    // exit, to detach XDP.
    let privileges = sys::drop_capabilities()?;
    if !privileges.dropped.is_empty() {
        log::info!(
            "dropped capabilities {}; kept {}",
            privileges.dropped.join(", "),
            if privileges.kept.is_empty() { "none".into() } else { privileges.kept.join(", ") }
        );
    }

    let reputation_reload = reputation.clone();
    let ctx = control::Ctx {
        instance: instance.clone(),
        peer_id: identity.peer_id.to_string(),
        node_id: identity.node_id,
        datapath: if xdp { "xdp" } else { "userspace" }.into(),
        xdp_mode: xdp_mode.map(|m| m.to_string()),
        ifaces: args.ifaces.clone(),
        started: Instant::now(),
        overlay,
        net: net.clone(),
        sync: sync.clone(),
        liveness,
        reputation,
        burst: Duration::from_millis(burst_ms),
        privileges,
        storage,
    };
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        crate::metrics::serve(listener, metrics_registry, ctx.clone(), pin_dir.clone());
        sys::say(format_args!("p2p-controller: metrics at http://{addr}/metrics"));
    }
    control::serve(ctx, &socket_path)?;
    cleanup.socket_path = Some(socket_path.clone());

    sys::say(format_args!(
        "p2p-controller: instance {instance} node {} peer {} datapath {:?} on {listen} ({} static peers, {nrecords} records); control {}",
        identity.node_id,
        identity.peer_id,
        args.datapath,
        static_peers.len(),
        socket_path.display()
    ));

    wait_for_signal(&started_argv, &sync, &reputation_reload).await?;
    // Leave first, so that peers drop this node from their maps at once:
    // nothing answers their PINGs any more (XDP without a heartbeat, the
    // relay stopped), then the connections close and their redials are
    // refused.
    sync.leave().await;
    relay.stop();
    net.shutdown(Duration::from_secs(1)).await;
    // QUIC sends its CONNECTION_CLOSE frames from a background task: let
    // them leave before the process (and its endpoint) goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    sys::say(format_args!("p2p-controller: shutting down instance {instance}"));
    sync.stop().await;
    drop(cleanup);
    Ok(())
}

/// Loads the XDP object, writes this node's CONFIG and interface addresses,
/// and attaches: the datapath in XDP mode; in userspace mode the
/// pass-through program (so that XDP neighbours can reach this node over
/// veth). Pins go to `pin_dir` when the object loads.
fn setup_dataplane(
    args: &RunArgs,
    identity: &Identity,
    pin_dir: &std::path::Path,
    cleanup: &mut Cleanup,
) -> Result<(Option<Dataplane>, Option<dataplane::AttachedMode>)> {
    let xdp = args.datapath == DatapathKind::Xdp;
    // The userspace datapath still pins STATS and friends when it can, so
    // that `maps` reads both modes alike; without BPF it runs regardless.
    let load = Dataplane::load(LoadOptions {
        pin_dir: Some(pin_dir.to_path_buf()),
        ebpf_log: args.ebpf_log,
        max_peers: args.max_peers,
        max_sources: args.max_sources,
    });
    let mut dp = match load {
        Ok(dp) => {
            cleanup.pin_dir = Some(pin_dir.to_path_buf());
            dp
        }
        Err(e) if xdp => {
            dataplane::remove_pins(pin_dir);
            return Err(e.into());
        }
        Err(e) => {
            log::warn!("userspace datapath without pinned maps (`maps` will not see this node): {e}");
            dataplane::remove_pins(pin_dir);
            return Ok((None, None));
        }
    };
    dp.set_config(identity.node_id.0, args.overlay_port, auth_policy(args).bits())?;
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
    let mut xdp_mode = None;
    if !xdp {
        // A veth drops frames that a peer's XDP sent it (XDP_TX, redirect)
        // unless an XDP program runs on it: hold the pass-through one.
        for iface in &args.ifaces {
            match dp.attach(iface, args.xdp_mode, true) {
                Ok(got) => log::info!("pass-through XDP on {iface} ({got} mode)"),
                Err(e) => log::warn!("no pass-through XDP on {iface}: {e}"),
            }
        }
    } else {
        let state = json!({"pid": std::process::id(), "netns": args.netns, "ifaces": args.ifaces});
        let _ = std::fs::write(&cleanup.run_state, state.to_string());
        for iface in &args.ifaces {
            cleanup.sysctls.extend(sys::enable_forwarding(iface));
            let got = dp.attach(iface, args.xdp_mode, false)?;
            log::info!("XDP attached to {iface} in {got} mode");
            sys::say(format_args!("p2p-controller: XDP attached to {iface} in {got} mode"));
            xdp_mode = Some(got);
        }
    }
    Ok((Some(dp), xdp_mode))
}

/// The churn detector's `--probe-interval`, `--probe-timeout`,
/// `--indirect-timeout` and `--suspicion`.
fn liveness_timing(args: &RunArgs) -> Result<liveness::Timing> {
    let d = |flag: &str, s: &str| {
        units::parse_duration(s)
            .map_err(|e| Error::Usage(format!("{flag} {e}")))?
            .ok_or_else(|| Error::Usage(format!("{flag}: give a duration such as 100ms")))
    };
    Ok(liveness::Timing {
        probe_interval: d("--probe-interval", &args.probe_interval)?,
        probe_timeout: d("--probe-timeout", &args.probe_timeout)?,
        indirect_timeout: d("--indirect-timeout", &args.indirect_timeout)?,
        suspicion: d("--suspicion", &args.suspicion)?,
        ..Default::default()
    })
}

/// Reputation's `--ban-threshold`, `--score-half-life`, `--ban-base`,
/// `--ban-max` and `--prefix-ban-after`.
fn reputation_config(args: &RunArgs) -> Result<reputation::Config> {
    let d = |flag: &str, s: &str| {
        units::parse_duration(s)
            .map_err(|e| Error::Usage(format!("{flag} {e}")))?
            .ok_or_else(|| Error::Usage(format!("{flag}: give a duration such as 60s")))
    };
    if args.ban_threshold.is_nan() || args.ban_threshold >= 0.0 {
        return Err(Error::Usage(format!(
            "--ban-threshold {}: scores start at 0 and evidence lowers them; give a negative number",
            args.ban_threshold
        )));
    }
    let policy = reputation::Policy {
        threshold: args.ban_threshold,
        half_life: d("--score-half-life", &args.score_half_life)?,
        ban_base: d("--ban-base", &args.ban_base)?,
        ban_max: d("--ban-max", &args.ban_max)?,
    };
    if policy.ban_max < policy.ban_base {
        return Err(Error::Usage("--ban-max is shorter than --ban-base".into()));
    }
    Ok(reputation::Config { policy, prefix_ban_after: args.prefix_ban_after as usize })
}

/// The rate budgets of `--rate-default`, `--rate-nonpeer`, `--rate-class`.
fn rate_policy(args: &RunArgs) -> Result<mapsync::RatePolicy> {
    let burst = units::parse_duration(&args.rate_burst)
        .map_err(|e| Error::Usage(format!("--rate-burst {e}")))?
        .ok_or_else(|| Error::Usage("--rate-burst: give a duration such as 50ms".into()))?;
    let budget = |flag: &str, s: &str| units::parse_budget(s, burst).map_err(|e| Error::Usage(format!("{flag} {e}")));
    let mut classes = std::collections::BTreeMap::new();
    classes.insert(mapsync::DEFAULT_CLASS.to_string(), budget("--rate-default", &args.rate_default)?);
    for c in &args.rate_class {
        let (name, rate) = c
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--rate-class {c:?}: give NAME=RATE, e.g. mobile=2000pps,2MB/s")))?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(Error::Usage(format!("--rate-class {c:?}: a class name is letters, digits, '-' or '_'")));
        }
        classes.insert(name.to_string(), budget("--rate-class", rate)?);
    }
    Ok(mapsync::RatePolicy {
        classes,
        assigned: HashMap::new(),
        nonpeer: budget("--rate-nonpeer", &args.rate_nonpeer)?,
    })
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
        static_links: Default::default(),
        shards: None,
        max_per_prefix: args.max_per_prefix as usize,
        trust: None,
        known_peers: None,
        auth: auth_policy(args),
        link_rotate: match units::parse_duration(&args.link_rotate) {
            Ok(Some(d)) if d >= Duration::from_secs(1) && d <= net::links::MAX_ROTATE => d,
            Ok(_) => {
                return Err(Error::Usage(format!(
                    "--link-rotate {}: must be between 1s and 2m (keys are renewed at least every 2 minutes)",
                    args.link_rotate
                )));
            }
            Err(e) => return Err(Error::Usage(format!("--link-rotate {e}"))),
        },
        flap: net::peers::FlapPolicy {
            deaths: args.flap_deaths as usize,
            window: units::parse_duration(&args.flap_window)
                .map_err(|e| Error::Usage(format!("--flap-window {e}")))?
                .unwrap_or(Duration::MAX),
        },
    };
    if !cfg.kad_protocol.starts_with('/') {
        return Err(Error::Usage(format!("--kad-protocol {:?}: a protocol name starts with '/'", cfg.kad_protocol)));
    }
    Ok((overlay_ip.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)), cfg))
}

/// `--auth`, or its default: required in an anchored network.
fn auth_policy(args: &RunArgs) -> crate::userspace::AuthPolicy {
    use crate::userspace::AuthPolicy;
    args.auth.unwrap_or(if args.trust_anchor.is_some() { AuthPolicy::Required } else { AuthPolicy::Optional })
}

/// `--trust-anchor`, `--cert`, `--revocations`, checked before anything
/// changes: this node's own certificate must be one its peers accept.
fn trust_config(args: &RunArgs, state_dir: &std::path::Path) -> Result<Option<net::TrustConfig>> {
    let (Some(anchor_path), Some(cert_path)) = (&args.trust_anchor, &args.cert) else { return Ok(None) };
    let anchor = trust::ca::read_root_key(anchor_path)?;
    let cert = trust::ca::read_certificate(cert_path)?;
    let revocations = args.revocations.as_deref().map(trust::ca::read_revocations).transpose()?;
    if let (Some(r), Some(p)) = (&revocations, &args.revocations)
        && r.issuer != anchor.0
    {
        return Err(Error::File { path: p.clone(), reason: "signed by another root than --trust-anchor".into() });
    }
    cert.verify(&anchor, trust::ca::unix_now(), revocations.as_ref())
        .map_err(|e| Error::File { path: cert_path.clone(), reason: format!("peers would refuse it: {e}") })?;
    if !state_dir.join(paths::KEY_FILE).exists() {
        return Err(Error::File {
            path: state_dir.join(paths::KEY_FILE),
            reason: format!("does not exist, so --cert (for {}) cannot be this node's", cert.peer),
        });
    }
    if let Some(dir) = &args.ca_key {
        let ca = trust::ca::Ca::open(dir)?;
        if ca.anchor() != anchor {
            return Err(Error::File {
                path: dir.clone(),
                reason: format!("--ca-key: root {} is not the --trust-anchor {}", ca.anchor(), anchor),
            });
        }
    }
    Ok(Some(net::TrustConfig {
        anchor,
        cert,
        revocations,
        revocations_file: args.revocations.clone(),
        cert_file: cert_path.clone(),
        ca_dir: args.ca_key.clone(),
    }))
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

/// Until SIGTERM or SIGINT; each SIGHUP reloads (see [`reload`]).
async fn wait_for_signal(
    started: &[std::ffi::OsString],
    sync: &MapSyncHandle,
    reputation: &ReputationHandle,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                if let Err(e) = reload(started, sync, reputation).await {
                    log::error!("SIGHUP: nothing reloaded: {e}");
                }
            }
        }
    }
}

/// SIGHUP: reads the command line and `--config` file again and applies
/// what can change while running, rate budgets (operator class
/// assignments kept), reputation and ban settings, and the log level,
/// without touching the datapath's attachment; other options that changed
/// are named as needing a restart.
async fn reload(started: &[std::ffi::OsString], sync: &MapSyncHandle, reputation: &ReputationHandle) -> Result<()> {
    let (argv, cfg) = crate::config::merge_argv(std::env::args_os().collect())?;
    let located = |msg: String| Error::Usage(cfg.as_ref().and_then(|c| c.locate(&msg)).unwrap_or(msg));
    let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(&argv).map_err(|e| located(e.to_string()))?;
    let crate::cli::Command::Run(new) = cli.command else { return Err(Error::Usage("not a run command".into())) };
    let mut rate = rate_policy(&new).map_err(|e| located(e.to_string()))?;
    let rep = reputation_config(&new).map_err(|e| located(e.to_string()))?;
    rate.assigned = sync.rate().await.map_err(Error::Usage)?.assigned;
    sync.set_rate(rate).await.map_err(Error::Usage)?;
    reputation.set_config(rep).await;
    set_log_level(new.log_level);
    log::debug!("log level now {}", new.log_level);
    let restart = restart_needed(started, &argv)?;
    log::info!(
        "SIGHUP: reloaded rate budgets, reputation and ban settings, log level {}{}",
        new.log_level,
        if restart.is_empty() {
            String::new()
        } else {
            format!("; changed but applied only at the next start: {}", restart.join(", "))
        }
    );
    Ok(())
}

/// Options a reload applies (long names).
const RELOADABLE: [&str; 10] = [
    "rate-default",
    "rate-nonpeer",
    "rate-class",
    "rate-burst",
    "ban-threshold",
    "score-half-life",
    "ban-base",
    "ban-max",
    "prefix-ban-after",
    "log-level",
];

/// The options a reload does not apply that `new` sets otherwise than `old`.
fn restart_needed(old: &[std::ffi::OsString], new: &[std::ffi::OsString]) -> Result<Vec<String>> {
    let (before, after) = (crate::config::run_option_values(old)?, crate::config::run_option_values(new)?);
    Ok(after
        .into_iter()
        .filter(|(k, v)| !RELOADABLE.contains(&k.as_str()) && before.get(k) != Some(v))
        .map(|(k, _)| format!("--{k}"))
        .collect())
}

/// `--log-level`, unless RUST_LOG decides.
pub fn set_log_level(level: log::LevelFilter) {
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(level);
    }
}
