//! Who is in the overlay, as the swarm task sees it: connections coming and
//! going, identify's answers (does the peer speak our Kademlia protocol,
//! which overlay endpoint does it advertise), what this node advertises,
//! deaths (a refused redial here, silence on the overlay from the liveness
//! component) and the refills of Kademlia's table that deaths call for.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError};
use libp2p::{Multiaddr, PeerId, identify, kad, mdns, ping};

use super::advert;
use super::event_loop::EventLoop;
use crate::identity::node_id_of;
use crate::liveness;
use crate::sys;

fn is_tcp(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
}

impl EventLoop {
    pub(super) fn on_connection_established(&mut self, peer: PeerId, conn: ConnectionId, remote: &Multiaddr) {
        if self.book.on_connected(peer, conn, advert::ip_of(remote), Instant::now()) {
            self.liveness.revived(node_id_of(&peer));
        }
        self.start_membership_clock(peer);
        self.redials.remove(&conn);
        for t in self.targets.iter_mut() {
            if t.dialing == Some(conn) || (t.peer == Some(peer) && !t.connected) {
                if !t.connected {
                    log::info!("bootstrap {} reached (peer {peer})", t.addr);
                }
                if let Some(known) = self.cfg.known_peers.as_mut() {
                    match known.pin(&t.addr, peer) {
                        Ok(true) => log::info!(
                            "pinned {} to peer {peer} in {} (trust on first use)",
                            t.addr,
                            known.path().display()
                        ),
                        Ok(false) => {}
                        Err(e) => log::warn!("{e}"),
                    }
                }
                t.on_connected(peer);
            }
        }
        self.touch();
    }

    pub(super) fn on_connection_closed(
        &mut self,
        peer: PeerId,
        conn: ConnectionId,
        num_established: u32,
        cause: Option<libp2p::swarm::ConnectionError>,
        remote: &Multiaddr,
    ) {
        let last = self.book.on_closed(&peer, conn);
        if last {
            // A reconnecting peer may be a restarted one without our keys.
            self.forget_link(&peer);
        }
        if num_established == 0 {
            let now = Instant::now();
            for t in self.targets.iter_mut().filter(|t| t.peer == Some(peer) && t.connected) {
                t.on_lost(now);
            }
        }
        // A TCP connection closes when the peer's process ends (its kernel
        // sends FIN or RST); a QUIC one beside it may not notice for many
        // seconds. So the close of either the last connection or a TCP one
        // is checked with a TCP redial.
        if (last || is_tcp(remote)) && self.book.is_routed(&peer) {
            // Alive peers answer a redial at once; a stopped one refuses
            // it, and is found dead without waiting for PINGs.
            log::debug!("connection to routed peer {peer} closed ({cause:?}): redialling");
            // TCP only: a QUIC dial to a closed port fails only when its
            // handshake times out, seconds later.
            let mut known = self.book.get(&peer).map(|s| s.listen_addrs.clone()).unwrap_or_default();
            known.extend(self.kad_addresses(&peer));
            let mut tcp: Vec<Multiaddr> = known.into_iter().filter(is_tcp).collect();
            tcp.dedup();
            let opts = if tcp.is_empty() {
                DialOpts::peer_id(peer).condition(PeerCondition::DisconnectedAndNotDialing).build()
            } else {
                // Even while another dial is under way (a request-response
                // protocol dials a peer it has a request for, over QUIC too,
                // which fails only after its handshake times out): this one
                // is refused at once by a stopped peer.
                DialOpts::peer_id(peer).addresses(tcp).condition(PeerCondition::Always).build()
            };
            let id = opts.connection_id();
            if self.swarm.dial(opts).is_ok() {
                self.redials.insert(id, peer);
            }
        }
        self.touch();
    }

    pub(super) fn on_dial_error(&mut self, conn: ConnectionId, peer: Option<PeerId>, error: &DialError) {
        let now = Instant::now();
        let mut err = crate::dataplane::error_chain(error);
        if let Some(t) = self.targets.iter_mut().find(|t| t.dialing == Some(conn)) {
            if let DialError::WrongPeerId { obtained, .. } = error
                && let Some(msg) = self.cfg.known_peers.as_ref().and_then(|k| k.mismatch(&t.addr, obtained))
            {
                err = msg;
            }
            let wait = t.on_dial_failed(now, err.clone());
            log::warn!(
                "bootstrap {} unreachable ({err}); retrying in {} s (attempt {})",
                t.addr,
                wait.as_secs(),
                t.failures + 1
            );
        }
        // A refused redial: its process is gone, whatever other (QUIC)
        // connection still looks open; those are closed too.
        let refused_redial = self.redials.remove(&conn);
        if let Some(peer) = refused_redial {
            self.found_dead(peer, format!("unreachable: {err}"), false);
            let _ = self.swarm.disconnect_peer_id(peer);
        } else if let Some(peer) = peer.filter(|p| self.book.is_routed(p))
            && !self.book.get(&peer).is_some_and(|s| s.connected())
        {
            self.found_dead(peer, format!("unreachable: {err}"), false);
        }
    }

    /// The liveness component's verdicts and requests.
    pub(super) fn on_liveness(&mut self, ev: liveness::Event) {
        match ev {
            liveness::Event::Dead { node, reason } => {
                // Static peers have no peer ID: they are routed to whatever.
                if let Some(peer) = self.routed_ids.get(&node).copied() {
                    self.found_dead(peer, reason, true);
                }
            }
            liveness::Event::Alive { node } => {
                let now = Instant::now();
                let peer = self.book.iter().find(|(p, s)| s.dead.is_some() && node_id_of(p) == node).map(|(p, _)| *p);
                if let Some(peer) = peer
                    && self.book.revive(&peer, now)
                {
                    log::info!("peer {peer} answers on the overlay again: back in the routing table");
                    self.offer_to_kad(&peer);
                    self.reconnect(peer);
                    self.touch();
                }
            }
            liveness::Event::Probe { node, addr, helpers, reply } => self.probe_indirectly(node, addr, helpers, reply),
        }
    }

    /// A routed peer should have a connection: its close (or the refusal
    /// to reopen it) is the fastest sign that it stopped.
    fn reconnect(&mut self, peer: PeerId) {
        if self.book.get(&peer).is_some_and(|s| s.connected()) {
            return;
        }
        let addrs = self.book.get(&peer).map(|s| s.listen_addrs.clone()).unwrap_or_default();
        let mut tcp: Vec<Multiaddr> = addrs.iter().filter(|a| is_tcp(a)).cloned().collect();
        if tcp.is_empty() {
            tcp = addrs;
        }
        let opts = DialOpts::peer_id(peer).addresses(tcp).condition(PeerCondition::DisconnectedAndNotDialing).build();
        let _ = self.swarm.dial(opts);
    }

    /// Takes a peer out of the maps and of Kademlia's table.
    pub(super) fn found_dead(&mut self, peer: PeerId, why: String, by_pong: bool) {
        if self.book.mark_dead(&peer, Instant::now(), why.clone(), by_pong) {
            log::info!("peer {peer} is dead ({why}): removing it from the routing table and the maps");
            if !by_pong {
                self.liveness.connection_dead(node_id_of(&peer));
            }
            // Whatever connection it still seems to have is stale (a QUIC
            // one outlives its process for seconds): a peer that proves
            // alive gets a fresh one, whose close is then news.
            let _ = self.swarm.disconnect_peer_id(peer);
            self.dead_found += 1;
            self.kad().remove_peer(&peer);
            // Several deaths at once (a host going down) share one query.
            self.rebootstrap_at.get_or_insert(Instant::now() + Duration::from_millis(200));
            self.touch();
        }
    }

    /// Offers Kademlia every connected, living peer that speaks our protocol
    /// and is not in its table. Kademlia inserts a peer only when a
    /// connection comes up: one turned away then because its bucket was full
    /// would stay out after deaths freed room, leaving a bucket empty that
    /// greedy forwarding needs.
    pub(super) fn refill_from_connected(&mut self) {
        let table: HashSet<PeerId> = self.table().into_iter().collect();
        let offers: Vec<PeerId> = self
            .book
            .iter()
            .filter(|(p, s)| s.connected() && s.routable().is_some() && !table.contains(p))
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
    pub(super) fn offer_to_kad(&mut self, peer: &PeerId) -> bool {
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

    pub(super) fn on_identify(&mut self, e: identify::Event) {
        let identify::Event::Received { connection_id, peer_id, info } = e else { return };
        let speaks = info.protocols.contains(&self.kad_protocol);
        let r = self.book.on_identify(peer_id, connection_id, speaks, &info.agent_version, &info.listen_addrs);
        let refused = if speaks { self.over_prefix_limit(&peer_id) } else { None };
        if let Some(why) = &refused {
            log::warn!("refusing {peer_id}: {why} (--max-per-prefix {})", self.cfg.max_per_prefix);
            self.book.set_refused(&peer_id, refused.clone());
            self.kad().remove_peer(&peer_id);
            let _ = self.swarm.disconnect_peer_id(peer_id);
        } else if speaks {
            self.book.set_refused(&peer_id, None);
            if self.membership_required() {
                // It enters Kademlia's table once its certificate verifies.
                self.present_certificate(peer_id);
            } else {
                // Only now does the peer enter Kademlia's table (DESIGN.md:
                // add_address alone would let a non-speaker in).
                self.offer_to_kad(&peer_id);
                self.bootstrap_through(peer_id);
            }
        } else if self.kad().remove_peer(&peer_id).is_some() {
            log::info!("{peer_id} does not speak {}: removed from the routing table", self.kad_protocol);
        }
        if r.endpoint_changed {
            log::debug!("{peer_id}: overlay endpoint {:?}", self.book.get(&peer_id).and_then(|s| s.endpoint));
        }
        self.touch();
    }

    pub(super) fn on_mdns(&mut self, e: mdns::Event) {
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

    pub(super) fn on_ping(&mut self, e: ping::Event) {
        match e.result {
            // A peer that does not run ping (a plain Kademlia node) is fine.
            Ok(_) | Err(ping::Failure::Unsupported) => {}
            Err(err) => {
                log::info!("libp2p ping to {} failed ({err}): closing the connection", e.peer);
                let _ = self.swarm.close_connection(e.connection);
            }
        }
    }

    /// Revivals whose back-off ran out; every 10 s, holes filled from
    /// connected peers and the book pruned.
    pub(super) fn tick_membership(&mut self, now: Instant) {
        for p in self.book.revive_due(now) {
            log::info!("peer {p} may be routed to again (revive back-off over)");
            self.liveness.revived(node_id_of(&p));
            self.offer_to_kad(&p);
            self.reconnect(p);
            self.touch();
        }
        if self.ticks.is_multiple_of(100) {
            self.refill_from_connected();
            let table: HashSet<PeerId> = self.table().into_iter().collect();
            let recent = |s: &super::peers::PeerState| {
                s.dead.as_ref().is_some_and(|(t, _)| now.duration_since(*t) < Duration::from_secs(600))
            };
            let dead_recently: HashSet<PeerId> = self.book.iter().filter(|(_, s)| recent(s)).map(|(p, _)| *p).collect();
            let shut_out = self.shut_out();
            self.book.prune(|p| table.contains(p) || dead_recently.contains(p) || shut_out.contains(p));
        }
    }

    // ------------------------------------------------ what this node advertises

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

    pub(super) fn on_new_listen_addr(&mut self, address: Multiaddr) {
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

    pub(super) fn on_expired_listen_addr(&mut self, address: Multiaddr) {
        self.swarm.remove_external_address(&address);
        let Some(ip) = advert::ip_of(&address) else { return };
        let still = self.swarm.external_addresses().any(|a| advert::ip_of(a) == Some(ip) && advert::is_dialable(a));
        if !still {
            self.swarm.remove_external_address(&advert::overlay_multiaddr(ip, self.cfg.overlay_port));
        }
    }
}
