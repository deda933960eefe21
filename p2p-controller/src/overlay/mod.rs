//! The overlay socket's owner: the UDP socket of docs/WIRE.md on its own thread
//! ([`relay`]), what reaches this node's controller on it (packets the XDP
//! program passes up: local deliveries and the slow path; or every packet
//! in userspace mode, which runs [`crate::userspace`]'s rules here), the
//! LOOKUP answerer, and packets this node originates. Routing comes from
//! map sync's published router; PONGs go to the liveness component.
//!
//! Everything else talks to it through [`OverlayHandle`].

mod deliver;
pub mod relay;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use p2p_common::codec::Packet;
use p2p_common::id::NodeId;
use p2p_common::wire::KIND_PING;
use tokio::sync::{mpsc, oneshot};

use crate::api::OverlayStatus;
use crate::error::{Error, Result};
use crate::mapsync::{MapSyncHandle, Routing};
use crate::net::store::SharedStore;
use crate::userspace::{AuthPolicy, Counters, LinkTable, ReplayState, SourceState};
use p2p_common::maps::SourceStats;

/// Largest record value a LOOKUP_REPLY carries: the reply, signed, then
/// fits the IPv6 minimum MTU (1280 − 40 IPv6 − 8 UDP − 96 header − 24
/// reply fields − the signature trailer).
pub const MAX_REPLY_VALUE: usize = 1112 - crate::trust::reply::TRAILER_LEN;
/// DATA deliveries a slow `recv` subscriber may fall behind before it
/// misses some (it is told how many).
const DELIVERY_QUEUE: usize = 1024;
/// PONGs queued for the liveness component before newer ones are dropped.
const PONG_QUEUE: usize = 4096;

/// A PONG that reached this node's controller.
#[derive(Debug, Clone, Copy)]
pub struct Pong {
    pub msg_id: u64,
    /// The answering node.
    pub from: NodeId,
    pub at: Instant,
}

/// A reply the control API is waiting for, matched by msg_id.
struct Waiting {
    sent: Instant,
    tx: oneshot::Sender<(Packet, Duration)>,
}

#[derive(Default)]
struct State {
    /// Userspace datapath's counters (STATS layout).
    counters: Counters,
    status: OverlayStatus,
    waiting: HashMap<u64, Waiting>,
    /// Userspace datapath: rate clocks per source (RATE, RATE_SOURCES).
    sources: SourceState,
    /// Userspace datapath: CLOCK_MONOTONIC ns of each peer's last own
    /// packet (LAST_SEEN).
    seen: HashMap<NodeId, u64>,
    /// Userspace datapath: dropped packets per source IP (SOURCE_STATS).
    evidence: HashMap<std::net::IpAddr, SourceStats>,
    /// LOOKUP_REPLYs nobody asked for, per source IP.
    unsolicited: HashMap<std::net::IpAddr, u64>,
    /// Userspace datapath: replay windows (REPLAY).
    replay: ReplayState,
    /// The controller's own sequence stream per link and key.
    tx_seq: HashMap<(SocketAddr, u8), u32>,
}

/// Sources whose evidence the userspace datapath keeps (forgotten all at
/// once beyond this, like an LRU without the order).
const MAX_EVIDENCE: usize = 16_384;

pub struct OverlayConfig {
    pub node_id: NodeId,
    pub port: u16,
    /// This process is the datapath (counts every packet).
    pub userspace: bool,
    /// `--records`: key ID → (record key, value).
    pub records: HashMap<NodeId, (String, String)>,
    /// Kademlia's records (the LOOKUP answerer's second source).
    pub store: SharedStore,
    /// `--auth`.
    pub auth: AuthPolicy,
    /// End-to-end session keys (DATA envelopes are opened with them).
    pub sessions: crate::e2e::Sessions,
    /// This node's identity: it signs its LOOKUP_REPLYs.
    pub identity: libp2p::identity::Keypair,
}

struct Shared {
    cfg: OverlayConfig,
    socket: UdpSocket,
    routing: Routing,
    state: Mutex<State>,
    pongs: mpsc::Sender<Pong>,
    stopping: AtomicBool,
    /// The link keys of every neighbour endpoint (net::links publishes them).
    links: Mutex<Arc<LinkTable>>,
    /// DATA delivered here, for `recv` subscribers.
    deliveries: tokio::sync::broadcast::Sender<crate::e2e::Delivery>,
}

/// Talks to the overlay socket's owner; clones share it.
#[derive(Clone)]
pub struct OverlayHandle(Arc<Shared>);

/// The relay thread; [`Relay::stop`] ends it.
pub struct Relay {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    pub fn stop(mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the relay thread on `socket` (blocking, with a receive timeout)
/// and, in userspace mode, the task that mirrors its counters into STATS.
/// Returns the handle, the relay and the PONGs for the liveness component.
pub fn spawn(
    cfg: OverlayConfig,
    socket: UdpSocket,
    routing: Routing,
    sync: MapSyncHandle,
) -> Result<(OverlayHandle, Relay, mpsc::Receiver<Pong>)> {
    let (pongs, pong_rx) = mpsc::channel(PONG_QUEUE);
    let userspace = cfg.userspace;
    let shared = Arc::new(Shared {
        cfg,
        socket,
        routing,
        state: Mutex::new(State::default()),
        pongs,
        stopping: AtomicBool::new(false),
        links: Mutex::new(Arc::new(LinkTable::new())),
        deliveries: tokio::sync::broadcast::channel(DELIVERY_QUEUE).0,
    });
    let rx = shared.clone();
    let thread = std::thread::Builder::new().name("overlay-rx".into()).spawn(move || {
        let mut routing = rx.routing.clone();
        relay::serve(
            &rx.socket,
            |buf, from| deliver::on_datagram(&rx, &mut routing, buf, from),
            || rx.stopping.load(Ordering::Relaxed),
        );
    })?;
    let handle = OverlayHandle(shared.clone());
    if userspace {
        // `maps stats` reads both modes alike.
        let h = handle.clone();
        tokio::spawn(async move {
            while !h.0.stopping.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                sync.mirror_stats(h.state().counters.0.clone());
            }
        });
    }
    Ok((handle, Relay { shared, thread: Some(thread) }, pong_rx))
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn links(&self) -> Arc<LinkTable> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Tags a packet this node sends for the link to `to` (the
    /// controller's sequence stream), or strips its tag when that link
    /// has no keys (docs/WIRE.md v2).
    pub(super) fn seal_for(&self, st: &mut State, links: &LinkTable, bytes: &mut [u8], to: SocketAddr) {
        let secret = links.get(&canonical(to)).filter(|s| s.tx_id != 0);
        match secret {
            Some(s) if self.cfg.auth != AuthPolicy::Off => {
                let seq = st.tx_seq.entry((canonical(to), s.tx_id)).or_insert(0);
                p2p_common::auth::seal(bytes, &s.tx, s.tx_id, p2p_common::auth::STREAM_CONTROLLER, *seq);
                *seq = seq.wrapping_add(1);
            }
            _ => p2p_common::auth::strip(bytes),
        }
    }

    /// Sends on the overlay socket (IPv4 destinations as mapped addresses),
    /// tagged for the link it takes.
    fn send_to(&self, bytes: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        let mut bytes = bytes.to_vec();
        let links = self.links();
        self.seal_for(&mut self.state(), &links, &mut bytes, to);
        let bytes = &bytes[..];
        let to = match to {
            SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
            v6 => v6,
        };
        self.socket.send_to(bytes, to)
    }
}

/// IPv4 as IPv4 (not mapped): how endpoints are keyed.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

impl OverlayHandle {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state()
    }

    /// DATA delivered from now on (`recv`).
    pub fn deliveries(&self) -> tokio::sync::broadcast::Receiver<crate::e2e::Delivery> {
        self.0.deliveries.subscribe()
    }

    /// `--auth`.
    pub fn auth(&self) -> AuthPolicy {
        self.0.cfg.auth
    }

    pub fn sessions(&self) -> &crate::e2e::Sessions {
        &self.0.cfg.sessions
    }

    /// New link keys from net::links: the controller's packets are tagged
    /// with them (and, in userspace mode, verified).
    pub fn set_link_keys(&self, table: Arc<LinkTable>) {
        let mut st = self.state();
        // Sequence numbers of keys no longer in use are forgotten.
        st.tx_seq.retain(|(ep, id), _| table.get(ep).is_some_and(|s| s.tx_id == *id));
        drop(st);
        *self.0.links.lock().unwrap_or_else(|p| p.into_inner()) = table;
    }

    pub fn node_id(&self) -> NodeId {
        self.0.cfg.node_id
    }

    pub fn port(&self) -> u16 {
        self.0.cfg.port
    }

    /// The router map sync published last.
    pub fn routing(&self) -> Arc<crate::userspace::Router> {
        self.0.routing.borrow().clone()
    }

    pub fn send_to(&self, bytes: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        self.0.send_to(bytes, to)
    }

    /// Sends a packet that originates here: to this node itself, or to the
    /// XOR-closest peer. Returns where it went (None = this node).
    pub fn originate(&self, pkt: &Packet) -> Result<Option<SocketAddr>> {
        let hop = match self.routing().next_hop(&pkt.dst_key) {
            None => return Err(Error::Remote("no route: the routing table is inconsistent".into())),
            Some(None) => None,
            Some(Some((_, p))) => Some(p.addr),
        };
        if let Some(to) = hop {
            self.send_to(&pkt.encode(), to)?;
        }
        Ok(hop)
    }

    /// A PING for `dst` straight to `to` (liveness probes, not routed).
    pub fn ping(&self, dst: NodeId, to: SocketAddr, msg_id: u64) -> std::io::Result<usize> {
        let p = Packet::new(KIND_PING, self.node_id(), dst, msg_id, monotonic_ns().to_be_bytes().to_vec());
        self.send_to(&p.encode(), to)
    }

    /// This node's address as seen from `peer` (the source the kernel picks).
    pub fn local_addr_for(peer: SocketAddr) -> IpAddr {
        let bind: SocketAddr = if peer.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        UdpSocket::bind(bind)
            .and_then(|s| s.connect(peer).map(|_| s))
            .and_then(|s| s.local_addr())
            .map(|a| a.ip())
            .unwrap_or(peer.ip())
    }

    /// The value this node serves for record key `key` at point `key_id`:
    /// from the records file first, then from Kademlia's store.
    pub fn value_at(&self, key_id: &NodeId, key: &[u8]) -> Option<Vec<u8>> {
        deliver::value_at(&self.0.cfg, key_id, key)
    }

    /// Records served to LOOKUPs.
    pub fn records(&self) -> usize {
        self.0.cfg.records.len() + self.0.cfg.store.len()
    }

    /// Sends `pkt` to `to` and waits up to `timeout` for the packet that
    /// echoes its msg_id (a LOOKUP_REPLY or PONG); the reply and the RTT.
    pub async fn request(&self, pkt: &Packet, to: SocketAddr, timeout: Duration) -> Result<(Packet, Duration)> {
        let (tx, rx) = oneshot::channel();
        self.state().waiting.insert(pkt.msg_id, Waiting { sent: Instant::now(), tx });
        if let Err(e) = self.send_to(&pkt.encode(), to) {
            self.state().waiting.remove(&pkt.msg_id);
            return Err(e.into());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            _ => {
                self.state().waiting.remove(&pkt.msg_id);
                Err(Error::Remote(format!("no reply within {} ms", timeout.as_millis())))
            }
        }
    }

    pub fn status(&self) -> OverlayStatus {
        self.state().status.clone()
    }

    /// Userspace datapath: when each peer last sent a packet itself.
    pub fn last_seen(&self) -> Vec<(NodeId, u64)> {
        self.state().seen.iter().map(|(id, t)| (*id, *t)).collect()
    }

    /// LOOKUP_REPLYs that answered nothing this node asked, per source.
    pub fn unsolicited(&self) -> Vec<(std::net::IpAddr, u64)> {
        self.state().unsolicited.iter().map(|(ip, n)| (*ip, *n)).collect()
    }

    /// Userspace datapath: dropped packets per source (SOURCE_STATS's
    /// layout, addresses IPv4-mapped).
    pub fn source_stats(&self) -> Vec<([u8; 16], SourceStats)> {
        self.state().evidence.iter().map(|(ip, s)| (p2p_common::codec::addr_to_mapped(*ip), *s)).collect()
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
