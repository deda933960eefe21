//! The churn detector: is each peer the datapath routes to alive? It runs
//! [`detector::Detector`] every 25 ms on the evidence the datapath collects
//! (LAST_SEEN in XDP mode, the overlay socket's own record in userspace
//! mode), its PINGs' PONGs and the indirect probes the control plane runs
//! for it, and tells the control plane which peers died and which dead
//! ones answered again. It also keeps the controller's heartbeat fresh in
//! CONFIG, without which XDP stops answering PINGs for this node.

pub mod detector;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2p_common::id::NodeId;
use tokio::sync::{mpsc, oneshot};

use detector::{Action, Detector};
pub use detector::{Source, Timing};

use crate::api::{LivenessStatus, PeerLiveness};
use crate::mapsync::{MapSyncHandle, Routing};
use crate::overlay::{OverlayHandle, Pong, monotonic_ns};
use crate::reputation::{self, ReputationHandle};

const TICK: Duration = Duration::from_millis(25);
/// A node is ready once every routed peer answered, or after this long.
const READY_AFTER: Duration = Duration::from_secs(5);

/// What liveness tells the control plane.
#[derive(Debug)]
pub enum Event {
    /// The peer went silent: take it out of the maps.
    Dead { node: NodeId, reason: String },
    /// A dead peer answered again.
    Alive { node: NodeId },
    /// Ask `helpers` (libp2p) to PING `node` at `addr`; reply whether one did.
    Probe { node: NodeId, addr: SocketAddr, helpers: Vec<NodeId>, reply: oneshot::Sender<bool> },
}

enum Command {
    Status(oneshot::Sender<LivenessStatus>),
    View(oneshot::Sender<HashMap<NodeId, PeerLiveness>>),
    /// The control plane found it dead itself.
    ConnectionDead(NodeId),
    /// The control plane routes to it again.
    Revived(NodeId),
}

/// Talks to the liveness task; clones share it.
#[derive(Clone)]
pub struct LivenessHandle {
    /// Unbounded: the control plane's verdicts must not be dropped, and it
    /// cannot wait (it runs the swarm).
    tx: mpsc::UnboundedSender<Command>,
}

impl LivenessHandle {
    pub async fn status(&self) -> LivenessStatus {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Status(tx));
        rx.await.unwrap_or_default()
    }

    pub async fn view(&self) -> HashMap<NodeId, PeerLiveness> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::View(tx));
        rx.await.unwrap_or_default()
    }

    pub fn connection_dead(&self, node: NodeId) {
        let _ = self.tx.send(Command::ConnectionDead(node));
    }

    pub fn revived(&self, node: NodeId) {
        let _ = self.tx.send(Command::Revived(node));
    }
}

/// Where passive evidence comes from.
pub enum Evidence {
    /// LAST_SEEN, through map sync.
    Kernel(MapSyncHandle),
    /// The overlay socket (userspace datapath).
    Userspace(OverlayHandle),
}

struct Liveness {
    overlay: OverlayHandle,
    sync: MapSyncHandle,
    evidence: Evidence,
    routing: Routing,
    events: mpsc::Sender<Event>,
    started: Instant,
    detector: Detector,
    /// The newest passive evidence taken per peer (CLOCK_MONOTONIC ns).
    passive: HashMap<NodeId, u64>,
    reputation: ReputationHandle,
    /// Indirect rounds in flight report here.
    indirect: (mpsc::Sender<IndirectResult>, mpsc::Receiver<IndirectResult>),
}

/// A peer, and whether one of the helpers reached it.
type IndirectResult = (NodeId, bool);

/// What the liveness task is wired to.
pub struct Links {
    /// PINGs go out through it.
    pub overlay: OverlayHandle,
    /// The heartbeat goes to it.
    pub sync: MapSyncHandle,
    pub evidence: Evidence,
    pub routing: Routing,
    pub pongs: mpsc::Receiver<Pong>,
    /// To the control plane.
    pub events: mpsc::Sender<Event>,
    pub reputation: ReputationHandle,
}

/// Starts the liveness task; its events go to the control plane.
pub fn spawn(timing: Timing, links: Links) -> LivenessHandle {
    let Links { overlay, sync, evidence, routing, pongs, events, reputation } = links;
    let (tx, rx) = mpsc::unbounded_channel();
    let l = Liveness {
        overlay,
        sync,
        evidence,
        routing,
        events,
        started: Instant::now(),
        detector: Detector::new(timing),
        passive: HashMap::new(),
        reputation,
        indirect: mpsc::channel(64),
    };
    tokio::spawn(l.run(rx, pongs));
    LivenessHandle { tx }
}

impl Liveness {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, mut pongs: mpsc::Receiver<Pong>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.on_tick().await,
                p = pongs.recv() => match p {
                    Some(p) => {
                        let a = self.detector.pong(p.msg_id, p.from, p.at);
                        self.act(a.into_iter().collect()).await;
                    }
                    None => return,
                },
                Some((node, acked)) = self.indirect.1.recv() => {
                    let a = self.detector.indirect_result(node, acked, Instant::now());
                    self.act(a.into_iter().collect()).await;
                }
                c = commands.recv() => match c {
                    Some(Command::Status(reply)) => { let _ = reply.send(self.status()); }
                    Some(Command::View(reply)) => {
                        let _ = reply.send(self.detector.view(Instant::now()).into_iter().collect());
                    }
                    Some(Command::ConnectionDead(node)) => self.detector.connection_dead(node, Instant::now()),
                    Some(Command::Revived(node)) => self.detector.revived(node, Instant::now()),
                    None => return,
                },
            }
        }
    }

    async fn on_tick(&mut self) {
        // The datapath answers PINGs only while this is fresh: a PONG
        // proves this task runs, not only XDP.
        self.sync.heartbeat(monotonic_ns());
        let now = Instant::now();
        if self.routing.has_changed().unwrap_or(false) {
            let router = self.routing.borrow_and_update().clone();
            let routed: Vec<(NodeId, SocketAddr)> = router.peers().map(|(_, p)| (p.node_id, p.addr)).collect();
            self.detector.set_routed(&routed, now);
            self.passive.retain(|id, _| routed.iter().any(|(r, _)| r == id));
        }
        let seen = match &self.evidence {
            Evidence::Kernel(sync) => sync.last_seen().await,
            Evidence::Userspace(overlay) => overlay.last_seen(),
        };
        let (now_ns, now) = (monotonic_ns(), Instant::now());
        let mut actions = Vec::new();
        for (node, ns) in seen {
            if ns == 0 || self.passive.get(&node).is_some_and(|prev| *prev >= ns) {
                continue;
            }
            self.passive.insert(node, ns);
            let at = now.checked_sub(Duration::from_nanos(now_ns.saturating_sub(ns))).unwrap_or(now);
            actions.extend(self.detector.evidence(node, at, Source::Passive));
        }
        actions.extend(self.detector.tick(now));
        self.act(actions).await;
    }

    async fn act(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Ping { node, addr, msg_id } => {
                    let _ = self.overlay.ping(node, addr, msg_id);
                }
                Action::Indirect { node, addr, helpers } => {
                    let (reply, rx) = oneshot::channel();
                    let done = self.indirect.0.clone();
                    if self.events.send(Event::Probe { node, addr, helpers, reply }).await.is_ok() {
                        tokio::spawn(async move {
                            let acked = rx.await.unwrap_or(false);
                            let _ = done.send((node, acked)).await;
                        });
                    }
                }
                Action::Dead { node, reason, latency } => {
                    log::info!(
                        "churn detector: {node} is dead ({reason}; {} ms after its last sign of life)",
                        latency.as_millis()
                    );
                    // A peer that keeps dying hurts routing: a little evidence.
                    self.reputation.report(reputation::Subject::Node(node), reputation::Evidence::FailedProbes, 1);
                    let _ = self.events.send(Event::Dead { node, reason }).await;
                }
                Action::Alive { node } => {
                    log::info!("churn detector: {node} answers again");
                    let _ = self.events.send(Event::Alive { node }).await;
                }
            }
        }
    }

    fn status(&self) -> LivenessStatus {
        let (answered, routed) = self.detector.answered();
        let view = self.detector.view(Instant::now());
        let count = |s: &str| view.iter().filter(|(_, v)| v.state == s).count();
        LivenessStatus {
            peers_answered: answered,
            ready: answered >= routed || self.started.elapsed() > READY_AFTER,
            alive: count("alive"),
            suspect: count("suspect"),
            dead: count("dead"),
            detection: self.detector.histogram(),
        }
    }
}
