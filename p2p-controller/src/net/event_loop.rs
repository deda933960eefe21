//! The task that owns the swarm: it waits for swarm events, commands from
//! the control API, liveness verdicts and a 100 ms tick, and hands each to
//! its concern ([`super::membership`], [`super::dht`], [`super::pubsub`],
//! [`super::bootstrap`]). After every event that may change who is routable
//! it recomputes the desired peer set and hands it to map sync, stamped
//! with the time of the change.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::kad::{self, QueryId};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{PeerId, StreamProtocol, Swarm};
use p2p_common::id::NodeId;
use tokio::sync::{mpsc, oneshot};

use super::behaviour::{Behaviour, BehaviourEvent};
use super::bootstrap::Target;
use super::dht::Dht;
use super::peers::PeerBook;
use super::probes::{Answered, Probes};
use super::pubsub::Pubsub;
use super::store::SharedStore;
use super::{NetCommand, NetConfig};
use crate::api::{NetStatus, PeerView};
use crate::error::{Error, Result};
use crate::identity::node_id_of;
use crate::liveness::{self, LivenessHandle};
use crate::mapsync::MapSyncHandle;
use crate::overlay::OverlayHandle;
use crate::reputation::{self, ReputationHandle};
use crate::userspace::Peer;

const TICK: Duration = Duration::from_millis(100);

pub struct EventLoop {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) cfg: NetConfig,
    pub(super) kad_protocol: StreamProtocol,
    pub(super) store: SharedStore,
    // Membership.
    pub(super) book: PeerBook,
    /// Dials made because a routed peer's last connection closed: if one
    /// fails, the peer is dead.
    pub(super) redials: HashMap<ConnectionId, PeerId>,
    pub(super) dead_found: u64,
    /// Node IDs of the peers handed to map sync (liveness speaks node IDs).
    pub(super) routed_ids: HashMap<NodeId, PeerId>,
    // Bootstrap.
    pub(super) targets: Vec<Target>,
    /// Bootstraps this node started (automatic ones report progress too).
    pub(super) bootstrap_queries: HashSet<QueryId>,
    /// A re-bootstrap after peers died: refills buckets they leave empty.
    pub(super) rebootstrap_at: Option<Instant>,
    pub(super) dht: Dht,
    /// libp2p's metrics (`--metrics`), fed every swarm event.
    pub(super) metrics: Option<libp2p::metrics::Metrics>,
    pub(super) pubsub: Pubsub,
    pub(super) probes: Probes,
    /// Anchored networks only: who has proven membership.
    pub(super) members: Option<super::members::Members>,
    /// Link keys with every routable peer.
    pub(super) links: super::links::LinkKeys,
    /// End-to-end session keys, and the exchanges this node started.
    pub(super) sessions: crate::e2e::Sessions,
    pub(super) pending_sessions: super::sessions::Pending,
    pub(super) blobs: super::blobs::Blobs,
    pub(super) overlay: OverlayHandle,
    pub(super) liveness: LivenessHandle,
    pub(super) reputation: ReputationHandle,
    // Map sync.
    pub(super) sync: MapSyncHandle,
    /// When the first change not yet handed to map sync was seen.
    changed: Option<Instant>,
    last_desired: Option<Vec<Peer>>,
    pub(super) ticks: u64,
    /// The libp2p listeners (closed first when leaving).
    listeners: Vec<libp2p::core::transport::ListenerId>,
    /// Leaving: answer when every connection is closed or at the deadline.
    leaving: Option<(oneshot::Sender<()>, Instant)>,
}

impl EventLoop {
    /// One argument per handle the task is wired to (net::Links unpacked).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut swarm: Swarm<Behaviour>,
        cfg: NetConfig,
        sync: MapSyncHandle,
        store: SharedStore,
        overlay: OverlayHandle,
        liveness: LivenessHandle,
        reputation: ReputationHandle,
        sessions: crate::e2e::Sessions,
    ) -> Result<Self> {
        let kad_protocol = StreamProtocol::try_from_owned(cfg.kad_protocol.clone())
            .map_err(|e| Error::Usage(format!("--kad-protocol: {e}")))?;
        let mut listeners = Vec::new();
        let mut errors = Vec::new();
        for addr in &cfg.listen {
            match swarm.listen_on(addr.clone()) {
                Ok(id) => listeners.push(id),
                Err(e) => errors.push(format!("{addr}: {}", crate::dataplane::error_chain(&e))),
            }
        }
        if listeners.is_empty() {
            return Err(Error::Usage(format!(
                "libp2p cannot listen on any address ({}); is the port in use? pick another with --p2p-port or --listen",
                errors.join("; ")
            )));
        }
        for e in &errors {
            log::warn!("libp2p listen: {e}");
        }
        let now = Instant::now();
        let mut targets: Vec<Target> = cfg.bootstrap.iter().map(|a| Target::new(a.clone(), now)).collect();
        // Pinned addresses are dialled for their pinned peer only: libp2p
        // then refuses another (DialError::WrongPeerId).
        for t in targets.iter_mut().filter(|t| t.peer.is_none()) {
            t.peer = cfg.known_peers.as_ref().and_then(|k| k.pinned(&t.addr)).map(|(p, _)| p);
        }
        if targets.is_empty() && !cfg.mdns && cfg.static_peers.is_empty() {
            log::info!("no --bootstrap and mDNS is off: this node waits for others to connect to it");
        }
        Ok(EventLoop {
            swarm,
            kad_protocol,
            store,
            book: PeerBook::new(cfg.flap, cfg.trust.is_some(), cfg.auth == crate::userspace::AuthPolicy::Required),
            members: cfg.trust.clone().map(super::members::Members::new),
            links: super::links::LinkKeys::new(cfg.auth, cfg.link_rotate, cfg.static_links.clone()),
            sessions,
            pending_sessions: Default::default(),
            blobs: super::blobs::Blobs::new(cfg.shards.clone()),
            cfg,
            redials: HashMap::new(),
            dead_found: 0,
            routed_ids: HashMap::new(),
            targets,
            bootstrap_queries: HashSet::new(),
            rebootstrap_at: None,
            dht: Dht::default(),
            metrics: None,
            pubsub: Pubsub::default(),
            probes: Probes::default(),
            overlay,
            liveness,
            reputation,
            sync,
            changed: Some(now),
            last_desired: None,
            ticks: 0,
            listeners,
            leaving: None,
        })
    }

    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<NetCommand>,
        mut liveness: mpsc::Receiver<liveness::Event>,
        mut bans: mpsc::Receiver<reputation::Event>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        let mut scores = tokio::time::interval(Duration::from_secs(1));
        // Helper PINGs for others' indirect probes report here.
        let (probe_tx, mut probe_rx) = mpsc::channel::<Answered>(64);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev, &probe_tx),
                cmd = rx.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                Some(ev) = liveness.recv() => self.on_liveness(ev),
                Some(done) = probe_rx.recv() => self.probe_done(done),
                Some(ev) = bans.recv() => self.on_reputation(ev),
                _ = scores.tick() => {
                    let ours = self.reputation.node_scores().await;
                    self.exchange_scores(ours);
                }
                _ = tick.tick() => self.on_tick(),
            }
            if let Some((_, deadline)) = &self.leaving
                && (self.book.connected_count() == 0 || Instant::now() >= *deadline)
            {
                if let Some((reply, _)) = self.leaving.take() {
                    let _ = reply.send(());
                }
                return;
            }
            self.sync_maps();
        }
    }

    /// Something that may change who is routable happened.
    pub(super) fn touch(&mut self) {
        self.changed.get_or_insert_with(Instant::now);
    }

    pub(super) fn kad(&mut self) -> &mut kad::Behaviour<SharedStore> {
        &mut self.swarm.behaviour_mut().kad
    }

    /// Peer IDs in Kademlia's routing table.
    pub(super) fn table(&mut self) -> Vec<PeerId> {
        self.kad().kbuckets().flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>()).collect()
    }

    /// Static peers, then every peer of Kademlia's table that speaks our
    /// protocol, advertises an overlay endpoint and is not dead.
    fn desired(&mut self) -> Vec<Peer> {
        let mut out = self.cfg.static_peers.clone();
        let mut routed = HashSet::new();
        self.routed_ids.clear();
        for pid in self.table() {
            if let Some(st) = self.book.get(&pid)
                && let Some(ep) = st.routable()
            {
                let node_id = node_id_of(&pid);
                let aliases = st.advertised.iter().filter(|a| **a != ep).copied().collect();
                out.push(Peer { aliases, ..Peer::new(node_id, ep) });
                routed.insert(pid);
                self.routed_ids.insert(node_id, pid);
            }
        }
        self.book.set_in_maps(&routed, Instant::now());
        out
    }

    fn sync_maps(&mut self) {
        let Some(since) = self.changed.take() else { return };
        let desired = self.desired();
        if self.last_desired.as_ref() != Some(&desired) {
            self.sync.submit(desired.clone(), since);
            self.last_desired = Some(desired);
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>, probe_tx: &mpsc::Sender<Answered>) {
        if let Some(m) = &self.metrics {
            use libp2p::metrics::Recorder;
            match &ev {
                SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => m.record(e),
                _ => {}
            }
            m.record(&ev);
        }
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Probe(e)) => self.on_probe(e, probe_tx),
            SwarmEvent::Behaviour(BehaviourEvent::Member(e)) => self.on_member(e),
            SwarmEvent::Behaviour(BehaviourEvent::Link(e)) => self.on_link(e),
            SwarmEvent::Behaviour(BehaviourEvent::E2e(e)) => self.on_e2e(e),
            SwarmEvent::Behaviour(BehaviourEvent::Store(e)) => self.on_store(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.on_identify(e),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(e)) => self.on_mdns(e),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossipsub(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.on_ping(e),
            SwarmEvent::NewListenAddr { address, .. } => self.on_new_listen_addr(address),
            SwarmEvent::ExpiredListenAddr { address, .. } => self.on_expired_listen_addr(address),
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                self.on_connection_established(peer_id, connection_id, endpoint.get_remote_address());
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, endpoint, .. } => {
                self.on_connection_closed(
                    peer_id,
                    connection_id,
                    num_established,
                    cause,
                    endpoint.get_remote_address(),
                );
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                self.on_dial_error(connection_id, peer_id, &error);
            }
            _ => {}
        }
    }

    fn on_kad(&mut self, e: kad::Event) {
        match e {
            kad::Event::RoutingUpdated { peer, old_peer, is_new_peer, .. } => {
                if is_new_peer {
                    log::debug!("routing table: + {peer}");
                }
                if let Some(old) = old_peer {
                    log::debug!("routing table: - {old} (evicted)");
                }
                // Kademlia adds peers that speak its protocol by itself: in
                // an anchored network only members may stay.
                if self.membership_required() && !self.book.get(&peer).is_some_and(|s| s.member.admits()) {
                    self.kad().remove_peer(&peer);
                }
                self.touch();
            }
            kad::Event::InboundRequest { request } => {
                self.dht.inbound_requests += 1;
                self.on_inbound_record(request);
            }
            kad::Event::OutboundQueryProgressed { id, result, step, .. } => match result {
                kad::QueryResult::GetRecord(r) => self.on_get_progress(id, r),
                kad::QueryResult::PutRecord(r) => self.on_put_done(id, r),
                kad::QueryResult::Bootstrap(r) => self.on_bootstrap_progress(id, r, step.last),
                _ => {}
            },
            _ => {}
        }
    }

    /// Every concern's periodic work.
    fn on_tick(&mut self) {
        self.ticks += 1;
        let now = Instant::now();
        self.tick_bootstrap(now);
        self.tick_membership(now);
        self.tick_pubsub();
        self.tick_links(now);
        self.apply_shut_outs(now);
        if self.ticks.is_multiple_of(10) {
            self.tick_members(now);
        }
        if self.ticks.is_multiple_of(100) {
            self.dht.forget_abandoned();
        }
    }

    fn on_command(&mut self, cmd: NetCommand) {
        match cmd {
            NetCommand::Shutdown(reply) => {
                // Listeners first: a peer that sees its connection close
                // redials at once, and must be refused to find this node
                // gone (else it reconnects to a node about to exit).
                for id in std::mem::take(&mut self.listeners) {
                    self.swarm.remove_listener(id);
                }
                let peers: Vec<PeerId> = self.book.iter().filter(|(_, s)| s.connected()).map(|(p, _)| *p).collect();
                log::info!("leaving: closing {} connection(s)", peers.len());
                for p in peers {
                    let _ = self.swarm.disconnect_peer_id(p);
                }
                self.leaving = Some((reply, Instant::now() + Duration::from_millis(500)));
            }
            NetCommand::Status(reply) => {
                let _ = reply.send(self.status());
            }
            NetCommand::View(reply) => {
                let _ = reply.send(self.view());
            }
            NetCommand::Put { key, value, quorum, reply } => self.put(key, value, quorum, reply),
            NetCommand::OpenSession { peer, reply } => self.open_session(peer, reply),
            NetCommand::PeerOf { node, reply } => {
                let _ = reply.send(self.known_peer_of(&node));
            }
            NetCommand::Get { key, network_only, reply } => self.get(key, network_only, reply),
            NetCommand::Publish { topic, data, reply } => self.publish(topic, data, reply),
            NetCommand::Subscribe { topic, tx, reply } => self.subscribe(topic, tx, reply),
            NetCommand::Store { peer, request, reply } => self.store_request(peer, request, reply),
        }
    }

    fn status(&mut self) -> NetStatus {
        let now = Instant::now();
        let table = self.table();
        let listen: Vec<String> = self.swarm.listeners().map(|a| a.to_string()).collect();
        let external: Vec<String> =
            self.swarm.external_addresses().filter(|a| super::advert::is_dialable(a)).map(|a| a.to_string()).collect();
        let mut overlay: Vec<String> =
            self.swarm.external_addresses().filter_map(super::advert::parse_overlay).map(|a| a.to_string()).collect();
        overlay.sort();
        NetStatus {
            listen_addrs: listen,
            external_addrs: external,
            overlay_endpoints: overlay,
            kad: crate::api::KadStatus {
                protocol: self.cfg.kad_protocol.clone(),
                mode: self.swarm.behaviour().kad.mode().to_string(),
                peers: table.len(),
                routable: self.book.routed().count(),
                records: self.store.len(),
                replication: self.cfg.replication.get(),
                quorum: self.cfg.quorum.get(),
                kbucket_size: self.cfg.kbucket_size.get(),
                inbound_requests: self.dht.inbound_requests,
            },
            connected_peers: self.book.connected_count(),
            dead_found: self.dead_found,
            bootstrap: self.targets.iter().map(|t| t.status(now)).collect(),
            mdns: self.cfg.mdns,
            pubsub: self.pubsub_status(),
            trust: self.trust_status(),
            auth: crate::api::AuthStatus {
                policy: self.links.policy.name().into(),
                rotate_s: self.cfg.link_rotate.as_secs(),
                linked: self.links.linked(),
                exchanges: self.links.exchanges,
                refused: self.links.refused,
            },
        }
    }

    fn view(&mut self) -> Vec<PeerView> {
        let mut out: Vec<PeerView> = self
            .cfg
            .static_peers
            .iter()
            .map(|p| PeerView {
                peer_id: None,
                node_id: p.node_id.to_string(),
                source: "static".into(),
                addresses: Vec::new(),
                overlay: Some(p.addr.to_string()),
                connected: false,
                routable: true,
                state: "routable (static)".into(),
                agent: String::new(),
                liveness: None,
            })
            .collect();
        let mut entries: Vec<(PeerId, Vec<String>)> = Vec::new();
        for b in self.kad().kbuckets() {
            for e in b.iter() {
                entries.push((*e.node.key.preimage(), e.node.value.iter().map(|a| a.to_string()).collect()));
            }
        }
        let in_table: HashSet<PeerId> = entries.iter().map(|(p, _)| *p).collect();
        for (pid, addresses) in entries {
            let st = self.book.get(&pid).cloned().unwrap_or_default();
            out.push(PeerView {
                peer_id: Some(pid.to_string()),
                node_id: node_id_of(&pid).to_string(),
                source: "kad".into(),
                addresses,
                overlay: st.endpoint.map(|e| e.to_string()),
                connected: st.connected(),
                routable: self.book.is_routed(&pid),
                state: st.state(),
                agent: st.agent.clone(),
                liveness: None,
            });
        }
        for (pid, st) in self.book.iter().filter(|(p, s)| {
            !in_table.contains(p)
                && (s.connected()
                    || s.dead.is_some()
                    || s.banned
                    || s.refused.is_some()
                    || matches!(s.member, super::peers::Membership::Refused(_)))
        }) {
            out.push(PeerView {
                peer_id: Some(pid.to_string()),
                node_id: node_id_of(pid).to_string(),
                source: "connected".into(),
                addresses: Vec::new(),
                overlay: st.endpoint.map(|e| e.to_string()),
                connected: st.connected(),
                routable: false,
                state: format!("not in the routing table; {}", st.state()),
                agent: st.agent.clone(),
                liveness: None,
            });
        }
        out
    }
}
