//! Liveness of the peers the datapath routes to: PINGs them over the
//! overlay and tells the control plane which ones went silent.
//!
//! Every routed peer is PINGed each second (new ones every 200 ms until they
//! answer); one that leaves three seconds of PINGs unanswered is dead. The
//! PINGs also resolve the neighbour entries that XDP's FIB lookups need.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2p_common::id::NodeId;
use tokio::sync::{mpsc, oneshot};

use crate::api::LivenessStatus;
use crate::mapsync::{MapSyncHandle, Routing};
use crate::overlay::{OverlayHandle, Pong};

/// A routed peer that has not answered an overlay PING for this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_millis(3000);
const TICK: Duration = Duration::from_millis(100);
/// Every routed peer is PINGed this often; unanswered ones every 200 ms.
const PING_ALL_TICKS: u64 = 10;
const PING_NEW_TICKS: u64 = 2;
/// A node is ready once every routed peer answered, or after this long.
const READY_AFTER: Duration = Duration::from_secs(5);

/// What liveness tells the control plane.
#[derive(Debug, Clone)]
pub enum Event {
    /// The peer went silent on the overlay: take it out of the maps.
    Dead { node: NodeId, reason: String },
}

enum Command {
    Status(oneshot::Sender<LivenessStatus>),
}

/// Talks to the liveness task; clones share it.
#[derive(Clone)]
pub struct LivenessHandle {
    tx: mpsc::Sender<Command>,
}

impl LivenessHandle {
    pub async fn status(&self) -> LivenessStatus {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Status(tx)).await;
        rx.await.unwrap_or_default()
    }
}

struct Liveness {
    overlay: OverlayHandle,
    sync: MapSyncHandle,
    routing: Routing,
    events: mpsc::Sender<Event>,
    started: Instant,
    /// Routed peers: endpoint and since when they are routed.
    routed: HashMap<NodeId, (SocketAddr, Instant)>,
    /// Routed peers that answered a PING since they entered the maps.
    answered: HashSet<NodeId>,
    /// PINGs in flight, by msg_id: (peer, sent).
    in_flight: HashMap<u64, (NodeId, Instant)>,
    last_pong: HashMap<NodeId, Instant>,
    /// Reported dead and still routed (map sync has not caught up yet).
    reported: HashSet<NodeId>,
}

/// Starts the liveness task; its events go to the control plane.
pub fn spawn(
    overlay: OverlayHandle,
    sync: MapSyncHandle,
    routing: Routing,
    pongs: mpsc::Receiver<Pong>,
    events: mpsc::Sender<Event>,
) -> LivenessHandle {
    let (tx, rx) = mpsc::channel(16);
    let l = Liveness {
        overlay,
        sync,
        routing,
        events,
        started: Instant::now(),
        routed: HashMap::new(),
        answered: HashSet::new(),
        in_flight: HashMap::new(),
        last_pong: HashMap::new(),
        reported: HashSet::new(),
    };
    tokio::spawn(l.run(rx, pongs));
    LivenessHandle { tx }
}

impl Liveness {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut pongs: mpsc::Receiver<Pong>) {
        let mut tick = tokio::time::interval(TICK);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // The datapath answers PINGs only while this is fresh:
                    // a PONG proves this task runs, not only XDP.
                    self.sync.heartbeat(crate::overlay::monotonic_ns());
                    self.follow_routing();
                    if ticks.is_multiple_of(PING_ALL_TICKS) {
                        self.ping(false);
                    } else if ticks.is_multiple_of(PING_NEW_TICKS) {
                        self.ping(true);
                    }
                    ticks += 1;
                    self.find_dead().await;
                }
                p = pongs.recv() => match p {
                    Some(p) => self.on_pong(p),
                    None => return,
                },
                c = commands.recv() => match c {
                    Some(Command::Status(reply)) => { let _ = reply.send(self.status()); }
                    None => return,
                },
            }
        }
    }

    /// Takes in the routed set map sync published last.
    fn follow_routing(&mut self) {
        if !self.routing.has_changed().unwrap_or(false) {
            return;
        }
        let router = self.routing.borrow_and_update().clone();
        let now = Instant::now();
        let current: HashMap<NodeId, SocketAddr> = router.peers().map(|(_, p)| (p.node_id, p.addr)).collect();
        self.routed.retain(|id, (addr, _)| current.get(id) == Some(addr));
        for (id, addr) in current {
            self.routed.entry(id).or_insert((addr, now));
        }
        self.answered.retain(|id| self.routed.contains_key(id));
        self.reported.retain(|id| self.routed.contains_key(id));
    }

    fn ping(&mut self, only_silent: bool) {
        let now = Instant::now();
        self.in_flight.retain(|_, (_, sent)| now.duration_since(*sent) < Duration::from_secs(10));
        // Peers gone for a minute are forgotten (churn must not grow it).
        self.last_pong.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
        for (id, (addr, _)) in &self.routed {
            if only_silent && self.answered.contains(id) {
                continue;
            }
            let msg_id = rand::random::<u64>();
            self.in_flight.insert(msg_id, (*id, now));
            let _ = self.overlay.ping(*id, *addr, msg_id);
        }
    }

    fn on_pong(&mut self, p: Pong) {
        if let Some((peer, _)) = self.in_flight.remove(&p.msg_id)
            && peer == p.from
        {
            self.answered.insert(peer);
            self.last_pong.insert(peer, p.at);
        }
    }

    /// Routed peers silent for `DEAD_AFTER` since they entered the maps or
    /// last answered.
    async fn find_dead(&mut self) {
        let now = Instant::now();
        let overdue: Vec<NodeId> = self
            .routed
            .iter()
            .filter(|(id, (_, since))| {
                let heard = self.last_pong.get(id).map_or(*since, |p| (*p).max(*since));
                now.saturating_duration_since(heard) > DEAD_AFTER && !self.reported.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for node in overdue {
            self.reported.insert(node);
            let reason = format!("no overlay PONG for {} ms", DEAD_AFTER.as_millis());
            let _ = self.events.send(Event::Dead { node, reason }).await;
        }
    }

    fn status(&self) -> LivenessStatus {
        LivenessStatus {
            peers_answered: self.answered.len(),
            ready: self.answered.len() >= self.routed.len() || self.started.elapsed() > READY_AFTER,
        }
    }
}
