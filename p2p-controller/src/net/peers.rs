//! What the control plane knows about each remote peer beyond Kademlia's
//! table: whether identify showed it speaks our Kademlia protocol, the
//! overlay endpoint it advertises, its connections, and whether it has been
//! found dead. Only peers that speak our protocol, advertise an endpoint
//! and are not dead are routed to by the datapath.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

use super::advert;

/// A peer found dead by missed PINGs while its libp2p side works (a
/// firewall, a wrong endpoint) would flap in and out of the maps with every
/// reconnection: it may come back only after this, doubled each time.
pub const REVIVE_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_REVIVE_BACKOFF: Duration = Duration::from_secs(300);

fn revive_backoff(pong_deaths: u32) -> Duration {
    REVIVE_BACKOFF.saturating_mul(1 << pong_deaths.saturating_sub(1).min(10)).min(MAX_REVIVE_BACKOFF)
}

#[derive(Debug, Default, Clone)]
pub struct PeerState {
    pub identified: bool,
    pub speaks_kad: bool,
    pub agent: String,
    /// Overlay endpoints from identify, in the order advertised.
    pub advertised: Vec<SocketAddr>,
    /// Its dialable libp2p addresses from identify (to re-add to Kademlia).
    pub listen_addrs: Vec<libp2p::Multiaddr>,
    /// The one we send to (see [`advert::pick_endpoint`]).
    pub endpoint: Option<SocketAddr>,
    /// Open connections and the remote IP of each.
    pub connections: HashMap<ConnectionId, Option<IpAddr>>,
    /// Found dead (when, why); cleared by a new connection (after the
    /// back-off, when it was the overlay that failed).
    pub dead: Option<(Instant, String)>,
    /// Times found dead by missed overlay PINGs.
    pub pong_deaths: u32,
    /// Since when the datapath routes to it.
    pub in_maps_since: Option<Instant>,
}

impl PeerState {
    pub fn connected(&self) -> bool {
        !self.connections.is_empty()
    }

    /// The overlay endpoint to route to, if the peer may be routed to.
    pub fn routable(&self) -> Option<SocketAddr> {
        if self.speaks_kad && self.dead.is_none() { self.endpoint } else { None }
    }

    /// Why the peer is not routed to (for `peers` and `maps`).
    pub fn state(&self) -> String {
        match (&self.dead, self.identified, self.speaks_kad, self.endpoint) {
            (Some((_, why)), ..) => format!("dead: {why}"),
            (None, false, ..) => "not identified".into(),
            (None, true, false, _) => "does not speak our Kademlia protocol".into(),
            (None, true, true, None) => "no overlay endpoint advertised".into(),
            (None, true, true, Some(_)) => "routable".into(),
        }
    }

    /// Whether a dead peer may be routed to again on a (new) connection.
    pub fn may_revive(&self, now: Instant) -> bool {
        match &self.dead {
            None => true,
            Some(_) if self.pong_deaths == 0 => true,
            Some((at, _)) => now.saturating_duration_since(*at) >= revive_backoff(self.pong_deaths),
        }
    }
}

/// What identify told us changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Identified {
    pub speaks_kad: bool,
    /// The routable endpoint changed (appeared, moved or went away).
    pub endpoint_changed: bool,
}

#[derive(Debug, Default)]
pub struct PeerBook {
    peers: HashMap<PeerId, PeerState>,
}

impl PeerBook {
    pub fn get(&self, peer: &PeerId) -> Option<&PeerState> {
        self.peers.get(peer)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &PeerState)> {
        self.peers.iter()
    }

    pub fn connected_count(&self) -> usize {
        self.peers.values().filter(|p| p.connected()).count()
    }

    /// A connection came up: a peer found dead gets another chance, unless
    /// it is in its revive back-off.
    pub fn on_connected(&mut self, peer: PeerId, conn: ConnectionId, remote_ip: Option<IpAddr>, now: Instant) {
        let st = self.peers.entry(peer).or_default();
        st.connections.insert(conn, remote_ip);
        if st.may_revive(now) {
            st.dead = None;
        }
    }

    /// Connected peers whose revive back-off has run out: alive again.
    pub fn revive_due(&mut self, now: Instant) -> Vec<PeerId> {
        let mut revived = Vec::new();
        for (id, st) in self.peers.iter_mut() {
            if st.dead.is_some() && st.connected() && st.may_revive(now) {
                st.dead = None;
                revived.push(*id);
            }
        }
        revived
    }

    /// A connection closed; true if it was the last one.
    pub fn on_closed(&mut self, peer: &PeerId, conn: ConnectionId) -> bool {
        match self.peers.get_mut(peer) {
            Some(st) => {
                st.connections.remove(&conn);
                st.connections.is_empty()
            }
            None => true,
        }
    }

    /// identify's answer on connection `conn`: protocols and listen addresses.
    pub fn on_identify(
        &mut self,
        peer: PeerId,
        conn: ConnectionId,
        speaks_kad: bool,
        agent: &str,
        listen_addrs: &[libp2p::Multiaddr],
    ) -> Identified {
        let st = self.peers.entry(peer).or_default();
        let before = st.routable();
        st.identified = true;
        st.speaks_kad = speaks_kad;
        st.agent = agent.to_string();
        st.advertised = advert::overlay_endpoints(listen_addrs);
        st.listen_addrs = listen_addrs.iter().filter(|a| advert::is_dialable(a)).cloned().collect();
        // This connection's address first, then the peer's other connections.
        let mut remote: Vec<IpAddr> = st.connections.get(&conn).copied().flatten().into_iter().collect();
        remote.extend(st.connections.values().flatten().copied());
        st.endpoint = advert::pick_endpoint(&st.advertised, &remote);
        Identified { speaks_kad, endpoint_changed: st.routable() != before }
    }

    /// Marks a peer dead (`by_pong`: it missed overlay PINGs); true if it
    /// was not already.
    pub fn mark_dead(&mut self, peer: &PeerId, now: Instant, why: impl Into<String>, by_pong: bool) -> bool {
        match self.peers.get_mut(peer) {
            Some(st) if st.dead.is_none() => {
                st.dead = Some((now, why.into()));
                st.pong_deaths += u32::from(by_pong);
                true
            }
            _ => false,
        }
    }

    /// Whether the datapath routes to `peer` (it is in the maps).
    pub fn is_routed(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|s| s.in_maps_since.is_some())
    }

    /// The peers the datapath routes to.
    pub fn routed(&self) -> impl Iterator<Item = (&PeerId, &PeerState)> {
        self.peers.iter().filter(|(_, s)| s.in_maps_since.is_some())
    }

    /// Records which peers the datapath routes to now.
    pub fn set_in_maps(&mut self, routed: &std::collections::HashSet<PeerId>, now: Instant) {
        for (id, st) in self.peers.iter_mut() {
            match (routed.contains(id), st.in_maps_since) {
                (true, None) => st.in_maps_since = Some(now),
                (false, Some(_)) => st.in_maps_since = None,
                _ => {}
            }
        }
    }

    /// Forgets peers with no connection that are neither routed to nor
    /// recently dead, so the book does not grow without bound.
    pub fn prune(&mut self, keep: impl Fn(&PeerId) -> bool) {
        self.peers.retain(|id, st| st.connected() || st.in_maps_since.is_some() || keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<libp2p::Multiaddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn only_kad_speakers_with_an_endpoint_are_routable() {
        let mut book = PeerBook::default();
        let (p, c) = (PeerId::random(), ConnectionId::new_unchecked(1));
        book.on_connected(p, c, Some("10.99.0.2".parse().unwrap()), Instant::now());
        assert_eq!(book.get(&p).unwrap().state(), "not identified");
        let adv = addrs(&["/ip4/10.99.0.2/tcp/9471", "/ip4/10.99.0.2/udp/9470"]);
        let r = book.on_identify(p, c, false, "other/1.0", &adv);
        assert_eq!(r, Identified { speaks_kad: false, endpoint_changed: false });
        assert_eq!(book.get(&p).unwrap().routable(), None, "a non-speaker never enters the maps");
        let r = book.on_identify(p, c, true, "p2p-nos/0.1.0", &adv[..1]);
        assert!(!r.endpoint_changed);
        assert_eq!(book.get(&p).unwrap().state(), "no overlay endpoint advertised");
        let r = book.on_identify(p, c, true, "p2p-nos/0.1.0", &adv);
        assert!(r.endpoint_changed);
        assert_eq!(book.get(&p).unwrap().routable(), Some("10.99.0.2:9470".parse().unwrap()));
    }

    #[test]
    fn dead_until_a_new_connection() {
        let mut book = PeerBook::default();
        let p = PeerId::random();
        let c1 = ConnectionId::new_unchecked(1);
        let now = Instant::now();
        book.on_connected(p, c1, Some("10.99.0.2".parse().unwrap()), now);
        book.on_identify(p, c1, true, "", &addrs(&["/ip4/10.99.0.2/udp/9470"]));
        assert!(book.on_closed(&p, c1));
        assert!(book.mark_dead(&p, now, "connection refused", false));
        assert!(!book.mark_dead(&p, now, "again", false), "already dead");
        assert_eq!(book.get(&p).unwrap().routable(), None);
        assert!(book.get(&p).unwrap().state().starts_with("dead: connection refused"));
        book.on_connected(p, ConnectionId::new_unchecked(2), None, now);
        assert!(book.get(&p).unwrap().routable().is_some(), "reconnected: routable again");
    }

    #[test]
    fn a_peer_silent_on_the_overlay_comes_back_only_after_a_growing_backoff() {
        let mut book = PeerBook::default();
        let p = PeerId::random();
        let t0 = Instant::now();
        book.on_connected(p, ConnectionId::new_unchecked(1), None, t0);
        book.on_identify(p, ConnectionId::new_unchecked(1), true, "", &addrs(&["/ip4/10.99.0.2/udp/9470"]));
        assert!(book.mark_dead(&p, t0, "no overlay PONG", true));
        // Reconnecting at once does not bring it back…
        book.on_connected(p, ConnectionId::new_unchecked(2), None, t0 + Duration::from_secs(1));
        assert_eq!(book.get(&p).unwrap().routable(), None);
        assert!(book.revive_due(t0 + Duration::from_secs(4)).is_empty());
        // …the back-off running out while connected does.
        assert_eq!(book.revive_due(t0 + REVIVE_BACKOFF), vec![p]);
        assert!(book.get(&p).unwrap().routable().is_some());
        // The second time it waits twice as long.
        let t1 = t0 + Duration::from_secs(60);
        assert!(book.mark_dead(&p, t1, "no overlay PONG", true));
        assert!(book.revive_due(t1 + REVIVE_BACKOFF).is_empty());
        assert_eq!(book.revive_due(t1 + REVIVE_BACKOFF * 2), vec![p]);
        assert_eq!(revive_backoff(100), MAX_REVIVE_BACKOFF);
    }
}
