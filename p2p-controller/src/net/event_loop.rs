//! The task that owns the swarm: swarm and behaviour events, commands from
//! the control API, and a 100 ms tick (bootstrap retries, liveness). After
//! every event that may change who is routable it recomputes the desired
//! peer set and hands it to map sync, stamped with the time of the change.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::kad::{self, GetRecordOk, PutRecordOk, QueryId, QueryResult, Quorum, Record, RecordKey};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, mdns, ping};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::behaviour::{Behaviour, BehaviourEvent};
use super::bootstrap::Target;
use super::peers::PeerBook;
use super::{GetResult, NetCommand, NetConfig, PeerView, PubsubMessage, Reply, advert};
use crate::daemon::Node;
use crate::datapath::Peer;
use crate::error::{Error, Result};
use crate::identity::node_id_of;
use crate::mapsync::MapSync;
use crate::sys;

const TICK: Duration = Duration::from_millis(100);

fn is_tcp(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
}

struct PendingGet {
    reply: Reply<GetResult>,
    started: Instant,
    network_only: bool,
}

struct PendingPut {
    reply: Reply<Value>,
    started: Instant,
    key: String,
    quorum: usize,
}

pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    node: Arc<Node>,
    cfg: NetConfig,
    kad_protocol: StreamProtocol,
    book: PeerBook,
    targets: Vec<Target>,
    /// Dials made because a routed peer's last connection closed: if one
    /// fails, the peer is dead.
    redials: HashMap<ConnectionId, PeerId>,
    gets: HashMap<QueryId, PendingGet>,
    puts: HashMap<QueryId, PendingPut>,
    subs: HashMap<String, Vec<mpsc::Sender<PubsubMessage>>>,
    /// Messages dropped for subscribers that did not keep up.
    pubsub_dropped: u64,
    /// Bootstraps this node started (automatic ones report progress too).
    bootstrap_queries: HashSet<QueryId>,
    sync: MapSync,
    /// When the first change not yet handed to map sync was seen.
    changed: Option<Instant>,
    last_desired: Option<Vec<Peer>>,
    inbound_requests: u64,
    dead_found: u64,
    ticks: u64,
    /// A re-bootstrap after peers died: refills buckets they leave empty.
    rebootstrap_at: Option<Instant>,
    /// Leaving: answer when every connection is closed or at the deadline.
    leaving: Option<(tokio::sync::oneshot::Sender<()>, Instant)>,
}

impl EventLoop {
    pub fn new(mut swarm: Swarm<Behaviour>, node: Arc<Node>, cfg: NetConfig, sync: MapSync) -> Result<EventLoop> {
        let kad_protocol = StreamProtocol::try_from_owned(cfg.kad_protocol.clone())
            .map_err(|e| Error::Usage(format!("--kad-protocol: {e}")))?;
        let mut listening = 0;
        let mut errors = Vec::new();
        for addr in &cfg.listen {
            match swarm.listen_on(addr.clone()) {
                Ok(_) => listening += 1,
                Err(e) => errors.push(format!("{addr}: {}", crate::dataplane::error_chain(&e))),
            }
        }
        if listening == 0 {
            return Err(Error::Usage(format!(
                "libp2p cannot listen on any address ({}); is the port in use? pick another with --p2p-port or --listen",
                errors.join("; ")
            )));
        }
        for e in &errors {
            log::warn!("libp2p listen: {e}");
        }
        let now = Instant::now();
        let targets: Vec<Target> = cfg.bootstrap.iter().map(|a| Target::new(a.clone(), now)).collect();
        if targets.is_empty() && !cfg.mdns && cfg.static_peers.is_empty() {
            log::info!("no --bootstrap and mDNS is off: this node waits for others to connect to it");
        }
        Ok(EventLoop {
            swarm,
            node,
            cfg,
            kad_protocol,
            book: PeerBook::default(),
            targets,
            redials: HashMap::new(),
            gets: HashMap::new(),
            puts: HashMap::new(),
            subs: HashMap::new(),
            pubsub_dropped: 0,
            bootstrap_queries: HashSet::new(),
            sync,
            changed: Some(now),
            last_desired: None,
            inbound_requests: 0,
            dead_found: 0,
            ticks: 0,
            rebootstrap_at: None,
            leaving: None,
        })
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<NetCommand>) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                cmd = rx.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => return,
                },
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

    fn touch(&mut self) {
        self.changed.get_or_insert_with(Instant::now);
    }

    fn kad(&mut self) -> &mut kad::Behaviour<super::store::SharedStore> {
        &mut self.swarm.behaviour_mut().kad
    }

    /// Static peers, then every peer of Kademlia's table that speaks our
    /// protocol, advertises an overlay endpoint and is not dead.
    fn desired(&mut self) -> Vec<Peer> {
        let mut out = self.cfg.static_peers.clone();
        let mut routed = HashSet::new();
        let table: Vec<PeerId> = self.table();
        for pid in table {
            if let Some(ep) = self.book.get(&pid).and_then(|s| s.routable()) {
                out.push(Peer { node_id: node_id_of(&pid), addr: ep });
                routed.insert(pid);
            }
        }
        self.book.set_in_maps(&routed, Instant::now());
        out
    }

    /// Peer IDs in Kademlia's routing table.
    fn table(&mut self) -> Vec<PeerId> {
        self.kad().kbuckets().flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>()).collect()
    }

    fn sync_maps(&mut self) {
        let Some(since) = self.changed.take() else { return };
        let desired = self.desired();
        if self.last_desired.as_ref() != Some(&desired) {
            self.sync.submit(desired.clone(), since);
            self.last_desired = Some(desired);
        }
    }

    fn should_advertise(&self, ip: IpAddr) -> bool {
        if !advert::usable_ip(ip) {
            return false;
        }
        if !self.cfg.advertise.is_empty() {
            return self.cfg.advertise.contains(&ip);
        }
        if !self.cfg.ifaces.is_empty() {
            return sys::all_addrs().iter().any(|(n, a)| self.cfg.ifaces.contains(n) && *a == ip);
        }
        true
    }

    fn on_new_listen_addr(&mut self, address: Multiaddr) {
        let Some(ip) = advert::ip_of(&address) else { return };
        // `--advertise` addresses that are not this host's (a public
        // address in front of NAT) go out with the ports listened on here.
        let local = sys::all_addrs();
        let foreign: Vec<IpAddr> = self
            .cfg
            .advertise
            .iter()
            .filter(|a| a.is_ipv4() == ip.is_ipv4() && !local.iter().any(|(_, l)| l == *a))
            .copied()
            .collect();
        for public in foreign {
            self.advertise(advert::with_ip(&address, public), public);
        }
        if self.should_advertise(ip) {
            self.advertise(address, ip);
        }
    }

    /// Adds a libp2p address to what identify carries, and the overlay
    /// endpoint on its IP.
    fn advertise(&mut self, address: Multiaddr, ip: IpAddr) {
        if self.swarm.external_addresses().any(|a| *a == address) {
            return;
        }
        log::info!("advertising {address}");
        self.swarm.add_external_address(address);
        // The overlay socket listens on every address unless bound to one.
        let overlay = advert::overlay_multiaddr(ip, self.cfg.overlay_port);
        if self.cfg.overlay_ip.is_none_or(|o| o == ip) && !self.swarm.external_addresses().any(|a| *a == overlay) {
            log::info!("advertising overlay endpoint {overlay}");
            self.swarm.add_external_address(overlay);
        }
    }

    fn on_expired_listen_addr(&mut self, address: Multiaddr) {
        self.swarm.remove_external_address(&address);
        let Some(ip) = advert::ip_of(&address) else { return };
        let still = self.swarm.external_addresses().any(|a| advert::ip_of(a) == Some(ip) && advert::is_dialable(a));
        if !still {
            self.swarm.remove_external_address(&advert::overlay_multiaddr(ip, self.cfg.overlay_port));
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.on_identify(e),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(e)) => self.on_mdns(e),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossipsub(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.on_ping(e),
            SwarmEvent::NewListenAddr { address, .. } => self.on_new_listen_addr(address),
            SwarmEvent::ExpiredListenAddr { address, .. } => self.on_expired_listen_addr(address),
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                let remote = advert::ip_of(endpoint.get_remote_address());
                self.book.on_connected(peer_id, connection_id, remote, Instant::now());
                self.redials.remove(&connection_id);
                for t in self.targets.iter_mut() {
                    if t.dialing == Some(connection_id) || (t.peer == Some(peer_id) && !t.connected) {
                        if !t.connected {
                            log::info!("bootstrap {} reached (peer {peer_id})", t.addr);
                        }
                        t.on_connected(peer_id);
                    }
                }
                self.touch();
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                let last = self.book.on_closed(&peer_id, connection_id);
                if num_established == 0 {
                    let now = Instant::now();
                    for t in self.targets.iter_mut().filter(|t| t.peer == Some(peer_id) && t.connected) {
                        t.on_lost(now);
                    }
                }
                if last && self.book.is_routed(&peer_id) {
                    // Alive peers answer a redial at once; a stopped one
                    // refuses it, and is found dead without waiting for PINGs.
                    log::debug!("last connection to routed peer {peer_id} closed ({cause:?}): redialling");
                    // TCP only: a QUIC dial to a closed port fails only when
                    // its handshake times out, seconds later.
                    let tcp: Vec<Multiaddr> = self.kad_addresses(&peer_id).into_iter().filter(is_tcp).collect();
                    let opts = if tcp.is_empty() {
                        DialOpts::peer_id(peer_id).condition(PeerCondition::DisconnectedAndNotDialing).build()
                    } else {
                        DialOpts::peer_id(peer_id)
                            .addresses(tcp)
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build()
                    };
                    let id = opts.connection_id();
                    if self.swarm.dial(opts).is_ok() {
                        self.redials.insert(id, peer_id);
                    }
                }
                self.touch();
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                let now = Instant::now();
                let err = crate::dataplane::error_chain(&error);
                if let Some(t) = self.targets.iter_mut().find(|t| t.dialing == Some(connection_id)) {
                    let wait = t.on_dial_failed(now, err.clone());
                    log::warn!(
                        "bootstrap {} unreachable ({err}); retrying in {} s (attempt {})",
                        t.addr,
                        wait.as_secs(),
                        t.failures + 1
                    );
                }
                if let Some(peer) = self.redials.remove(&connection_id).or(peer_id.filter(|p| self.book.is_routed(p)))
                    && !self.book.get(&peer).is_some_and(|s| s.connected())
                {
                    self.found_dead(peer, format!("unreachable: {err}"), false);
                }
            }
            _ => {}
        }
    }

    /// Offers Kademlia every connected, living peer that speaks our protocol
    /// and is not in its table. Kademlia inserts a peer only when a
    /// connection comes up: one turned away then because its bucket was full
    /// would stay out after deaths freed room, leaving a bucket empty that
    /// greedy forwarding needs.
    fn refill_from_connected(&mut self) {
        let table: HashSet<PeerId> = self.table().into_iter().collect();
        let offers: Vec<PeerId> = self
            .book
            .iter()
            .filter(|(p, s)| s.connected() && s.speaks_kad && s.dead.is_none() && !table.contains(p))
            .map(|(p, _)| *p)
            .collect();
        for peer in offers {
            if self.offer_to_kad(&peer) {
                log::debug!("routing table: + {peer} (connected, room freed)");
                self.touch();
            }
        }
    }

    /// Gives Kademlia the dialable addresses identify reported for `peer`;
    /// true if it took the peer (or a new address of it).
    fn offer_to_kad(&mut self, peer: &PeerId) -> bool {
        let addrs = self.book.get(peer).map(|s| s.listen_addrs.clone()).unwrap_or_default();
        let mut taken = false;
        for a in addrs {
            taken |= self.kad().add_address(peer, a) == kad::RoutingUpdate::Success;
        }
        taken
    }

    /// Kademlia's addresses for a peer in its table.
    fn kad_addresses(&mut self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut out = Vec::new();
        for b in self.kad().kbuckets() {
            if let Some(e) = b.iter().find(|e| e.node.key.preimage() == peer) {
                out.extend(e.node.value.iter().cloned());
            }
        }
        out
    }

    /// Takes a peer out of the maps and of Kademlia's table.
    fn found_dead(&mut self, peer: PeerId, why: String, by_pong: bool) {
        if self.book.mark_dead(&peer, Instant::now(), why.clone(), by_pong) {
            log::info!("peer {peer} is dead ({why}): removing it from the routing table and the maps");
            self.dead_found += 1;
            self.kad().remove_peer(&peer);
            // Several deaths at once (a host going down) share one query.
            self.rebootstrap_at.get_or_insert(Instant::now() + Duration::from_millis(200));
            self.touch();
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
                self.touch();
            }
            kad::Event::InboundRequest { .. } => self.inbound_requests += 1,
            kad::Event::OutboundQueryProgressed { id, result, step, .. } => match result {
                QueryResult::GetRecord(r) => self.on_get_progress(id, r),
                QueryResult::PutRecord(r) => self.on_put_done(id, r),
                QueryResult::Bootstrap(r) => {
                    // Ours are reported at info; the periodic and automatic
                    // ones (same events, other query ids) at debug.
                    let ours = self.bootstrap_queries.contains(&id);
                    let n = self.table().len();
                    match r {
                        Ok(_) if step.last && ours => {
                            log::info!("Kademlia bootstrap finished: {n} peers in the routing table")
                        }
                        Ok(_) if step.last => log::debug!("periodic Kademlia bootstrap finished: {n} peers"),
                        Err(e) if ours => log::warn!("Kademlia bootstrap: {e}"),
                        Err(e) => log::debug!("periodic Kademlia bootstrap: {e}"),
                        Ok(_) => {}
                    }
                    if step.last {
                        self.bootstrap_queries.remove(&id);
                    }
                    self.touch();
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn on_get_progress(&mut self, id: QueryId, r: std::result::Result<GetRecordOk, kad::GetRecordError>) {
        let Some(pending) = self.gets.get(&id) else { return };
        let elapsed = pending.started.elapsed();
        let outcome = match r {
            Ok(GetRecordOk::FoundRecord(pr)) if pending.network_only && pr.peer.is_none() => return,
            Ok(GetRecordOk::FoundRecord(pr)) => Ok(GetResult { value: Some(pr.record.value), from: pr.peer, elapsed }),
            Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. }) | Err(kad::GetRecordError::NotFound { .. }) => {
                Ok(GetResult { value: None, from: None, elapsed })
            }
            Err(e) => Err(format!("Kademlia get: {e}")),
        };
        if let Some(p) = self.gets.remove(&id) {
            let _ = p.reply.send(outcome);
        }
        if let Some(mut q) = self.kad().query_mut(&id) {
            q.finish();
        }
    }

    fn on_put_done(&mut self, id: QueryId, r: std::result::Result<PutRecordOk, kad::PutRecordError>) {
        let Some(p) = self.puts.remove(&id) else { return };
        let rtt_us = p.started.elapsed().as_micros() as u64;
        let out = match r {
            Ok(_) => Ok(json!({"key": p.key, "stored": true, "quorum": p.quorum, "rtt_us": rtt_us})),
            Err(kad::PutRecordError::QuorumFailed { success, .. })
            | Err(kad::PutRecordError::Timeout { success, .. }) => Err(format!(
                "{}: stored here, but only {} peer(s) took a copy and the quorum is {} (are other nodes reachable? see `status`)",
                p.key,
                success.len(),
                p.quorum
            )),
        };
        let _ = p.reply.send(out);
    }

    fn on_identify(&mut self, e: identify::Event) {
        let identify::Event::Received { connection_id, peer_id, info } = e else { return };
        let speaks = info.protocols.contains(&self.kad_protocol);
        let r = self.book.on_identify(peer_id, connection_id, speaks, &info.agent_version, &info.listen_addrs);
        if speaks {
            // Only now does the peer enter Kademlia's table (DESIGN.md:
            // add_address alone would let a non-speaker in).
            self.offer_to_kad(&peer_id);
            let via_bootstrap = self.targets.iter().any(|t| t.peer == Some(peer_id) && t.connected);
            if via_bootstrap && self.table().len() <= 1 {
                match self.kad().bootstrap() {
                    Ok(id) => {
                        self.bootstrap_queries.insert(id);
                        log::info!("Kademlia bootstrap started through {peer_id}");
                    }
                    Err(e) => log::warn!("Kademlia bootstrap: {e:?}"),
                }
            }
        } else if self.kad().remove_peer(&peer_id).is_some() {
            log::info!("{peer_id} does not speak {}: removed from the routing table", self.kad_protocol);
        }
        if r.endpoint_changed {
            log::debug!("{peer_id}: overlay endpoint {:?}", self.book.get(&peer_id).and_then(|s| s.endpoint));
        }
        self.touch();
    }

    fn on_mdns(&mut self, e: mdns::Event) {
        let mdns::Event::Discovered(list) = e else { return };
        let me = *self.swarm.local_peer_id();
        let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (peer, addr) in list {
            if peer != me && advert::is_dialable(&addr) {
                by_peer.entry(peer).or_default().push(addr);
            }
        }
        for (peer, addrs) in by_peer {
            if self.book.get(&peer).is_some_and(|s| s.connected()) {
                continue;
            }
            log::info!("mDNS: found {peer} at {addrs:?}");
            let opts =
                DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build();
            let _ = self.swarm.dial(opts);
        }
    }

    fn on_gossipsub(&mut self, e: gossipsub::Event) {
        if let gossipsub::Event::Message { message_id, message, .. } = e {
            let msg = PubsubMessage {
                topic: message.topic.to_string(),
                from: message.source.map(|p| p.to_string()),
                message_id: message_id.to_string(),
                data: String::from_utf8_lossy(&message.data).into_owned(),
            };
            self.deliver_local(msg);
        }
    }

    fn deliver_local(&mut self, msg: PubsubMessage) -> usize {
        let Some(list) = self.subs.get_mut(&msg.topic) else { return 0 };
        let mut dropped = 0;
        list.retain(|tx| match tx.try_send(msg.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped += 1;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if dropped > 0 {
            self.pubsub_dropped += dropped;
            log::warn!("pub/sub: {dropped} subscriber(s) of {} fell behind; a message was dropped", msg.topic);
        }
        list.len()
    }

    fn on_ping(&mut self, e: ping::Event) {
        match e.result {
            // A peer that does not run ping (a plain Kademlia node) is fine.
            Ok(_) | Err(ping::Failure::Unsupported) => {}
            Err(err) => {
                log::info!("libp2p ping to {} failed ({err}): closing the connection", e.peer);
                let _ = self.swarm.close_connection(e.connection);
            }
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let now = Instant::now();
        // Bootstrap: dial targets that never answered, with back-off, and
        // all of them again whenever the routing table has run empty.
        let empty = self.table().is_empty();
        for i in 0..self.targets.len() {
            let t = &self.targets[i];
            // Reached once and the table is healthy: Kademlia has taken over.
            let settled = t.reached && !empty;
            if !t.due(now) || settled {
                continue;
            }
            let opts = match t.peer {
                Some(p) => DialOpts::peer_id(p).addresses(vec![t.addr.clone()]).build(),
                None => DialOpts::unknown_peer_id().address(t.addr.clone()).build(),
            };
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => self.targets[i].dialing = Some(id),
                Err(e) => {
                    let err = crate::dataplane::error_chain(&e);
                    let wait = self.targets[i].on_dial_failed(now, err.clone());
                    log::warn!("bootstrap {}: {err}; retrying in {} s", self.targets[i].addr, wait.as_secs());
                }
            }
        }
        if self.rebootstrap_at.is_some_and(|t| now >= t) {
            self.rebootstrap_at = None;
            self.refill_from_connected();
            match self.kad().bootstrap() {
                Ok(id) => {
                    self.bootstrap_queries.insert(id);
                }
                Err(e) => log::debug!("re-bootstrap after deaths: {e:?}"),
            }
        }
        // Liveness: a routed peer silent on the overlay for DEAD_AFTER is dead.
        let overdue: Vec<PeerId> = {
            let st = self.node.state.lock().unwrap();
            self.book
                .routed()
                .filter(|(p, s)| s.overdue(now, st.last_pong.get(&node_id_of(p)).copied()))
                .map(|(p, _)| *p)
                .collect()
        };
        for p in overdue {
            self.found_dead(p, format!("no overlay PONG for {} ms", super::peers::DEAD_AFTER.as_millis()), true);
        }
        for p in self.book.revive_due(now) {
            log::info!("peer {p} may be routed to again (revive back-off over)");
            self.offer_to_kad(&p);
            self.touch();
        }
        // Every 10 s: fill holes from connected peers, forget what no longer
        // matters, drop closed subscribers.
        if self.ticks.is_multiple_of(100) {
            self.refill_from_connected();
            let table: HashSet<PeerId> = self.table().into_iter().collect();
            let recent = |s: &super::peers::PeerState| {
                s.dead.as_ref().is_some_and(|(t, _)| now.duration_since(*t) < Duration::from_secs(600))
            };
            let dead_recently: HashSet<PeerId> = self.book.iter().filter(|(_, s)| recent(s)).map(|(p, _)| *p).collect();
            self.book.prune(|p| table.contains(p) || dead_recently.contains(p));
            self.gets.retain(|_, g| !g.reply.is_closed());
        }
        let idle: Vec<String> = self
            .subs
            .iter_mut()
            .filter_map(|(t, l)| {
                l.retain(|tx| !tx.is_closed());
                l.is_empty().then(|| t.clone())
            })
            .collect();
        for t in idle {
            self.subs.remove(&t);
            self.swarm.behaviour_mut().gossipsub.unsubscribe(&IdentTopic::new(t));
        }
    }

    fn on_command(&mut self, cmd: NetCommand) {
        match cmd {
            NetCommand::Shutdown(reply) => {
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
            NetCommand::Put { key, value, quorum, reply } => {
                let quorum = quorum.unwrap_or(self.cfg.quorum);
                let record = Record::new(RecordKey::new(&key), value);
                match self.kad().put_record(record, Quorum::N(quorum)) {
                    Ok(id) => {
                        self.puts.insert(id, PendingPut { reply, started: Instant::now(), key, quorum: quorum.get() });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(format!("cannot store {key}: {e:?}")));
                    }
                }
            }
            NetCommand::Get { key, network_only, reply } => {
                let id = self.kad().get_record(RecordKey::new(&key));
                self.gets.insert(id, PendingGet { reply, started: Instant::now(), network_only });
            }
            NetCommand::Publish { topic, data, reply } => {
                let me = self.swarm.local_peer_id().to_string();
                let t = IdentTopic::new(topic.clone());
                let published = self.swarm.behaviour_mut().gossipsub.publish(t, data.clone());
                let (message_id, net_err) = match published {
                    Ok(id) => (id.to_string(), None),
                    Err(e) => (format!("local-{}", rand::random::<u64>()), Some(e)),
                };
                let local = self.deliver_local(PubsubMessage {
                    topic: topic.clone(),
                    from: Some(me),
                    message_id: message_id.clone(),
                    data: String::from_utf8_lossy(&data).into_owned(),
                });
                let peers = self.topic_peers(&topic);
                let out = match net_err {
                    None => Ok(
                        json!({"topic": topic, "message_id": message_id, "peers": peers, "local_subscribers": local}),
                    ),
                    // Nobody else subscribes: the local subscribers are all there is to reach.
                    Some(gossipsub::PublishError::NoPeersSubscribedToTopic) if local > 0 => {
                        Ok(json!({"topic": topic, "message_id": message_id, "peers": 0, "local_subscribers": local}))
                    }
                    Some(gossipsub::PublishError::NoPeersSubscribedToTopic) => Err(format!(
                        "no connected peer subscribes to {topic:?} yet (subscriptions spread within a second of connecting)"
                    )),
                    Some(e) => Err(format!("publish to {topic:?}: {e}")),
                };
                let _ = reply.send(out);
            }
            NetCommand::Subscribe { topic, tx, reply } => {
                let r = self.swarm.behaviour_mut().gossipsub.subscribe(&IdentTopic::new(topic.clone()));
                match r {
                    Ok(_) => {
                        self.subs.entry(topic).or_default().push(tx);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(format!("subscribe to {topic:?}: {e}")));
                    }
                }
            }
        }
    }

    /// Connected peers that subscribe to `topic`.
    fn topic_peers(&self, topic: &str) -> usize {
        let hash = IdentTopic::new(topic).hash();
        self.swarm.behaviour().gossipsub.all_peers().filter(|(_, topics)| topics.contains(&&hash)).count()
    }

    fn status(&mut self) -> Value {
        let now = Instant::now();
        let table = self.table();
        let listen: Vec<String> = self.swarm.listeners().map(|a| a.to_string()).collect();
        let external: Vec<String> =
            self.swarm.external_addresses().filter(|a| advert::is_dialable(a)).map(|a| a.to_string()).collect();
        let mut overlay: Vec<String> =
            self.swarm.external_addresses().filter_map(advert::parse_overlay).map(|a| a.to_string()).collect();
        overlay.sort();
        let mut topic_peers = serde_json::Map::new();
        for (_, topics) in self.swarm.behaviour().gossipsub.all_peers() {
            for t in topics {
                let e = topic_peers.entry(t.to_string()).or_insert(json!(0));
                *e = json!(e.as_u64().unwrap_or(0) + 1);
            }
        }
        json!({
            "listen_addrs": listen,
            "external_addrs": external,
            "overlay_endpoints": overlay,
            "kad": {
                "protocol": self.cfg.kad_protocol,
                "mode": self.swarm.behaviour().kad.mode().to_string(),
                "peers": table.len(),
                "routable": self.book.routed().count(),
                "records": self.node.store.len(),
                "replication": self.cfg.replication.get(),
                "quorum": self.cfg.quorum.get(),
                "kbucket_size": self.cfg.kbucket_size.get(),
                "inbound_requests": self.inbound_requests,
            },
            "connected_peers": self.book.connected_count(),
            "dead_found": self.dead_found,
            "bootstrap": self.targets.iter().map(|t| t.status(now)).collect::<Vec<_>>(),
            "mdns": self.cfg.mdns,
            "pubsub": {
                "subscribed": self.subs.keys().collect::<Vec<_>>(),
                "peers": topic_peers,
                "dropped": self.pubsub_dropped,
            },
        })
    }

    fn view(&mut self) -> Vec<PeerView> {
        let mut out: Vec<PeerView> = self
            .cfg
            .static_peers
            .iter()
            .map(|p| PeerView {
                peer_id: None,
                node_id: p.node_id.to_string(),
                source: "static",
                addresses: Vec::new(),
                overlay: Some(p.addr.to_string()),
                connected: false,
                routable: true,
                state: "routable (static)".into(),
                agent: String::new(),
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
                source: "kad",
                addresses,
                overlay: st.endpoint.map(|e| e.to_string()),
                connected: st.connected(),
                routable: self.book.is_routed(&pid),
                state: st.state(),
                agent: st.agent.clone(),
            });
        }
        for (pid, st) in self.book.iter().filter(|(p, s)| !in_table.contains(p) && (s.connected() || s.dead.is_some()))
        {
            out.push(PeerView {
                peer_id: Some(pid.to_string()),
                node_id: node_id_of(pid).to_string(),
                source: "connected",
                addresses: Vec::new(),
                overlay: st.endpoint.map(|e| e.to_string()),
                connected: st.connected(),
                routable: false,
                state: format!("not in the routing table; {}", st.state()),
                agent: st.agent.clone(),
            });
        }
        out
    }
}
