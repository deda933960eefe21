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

/// A peer that proves alive again (a new connection, a PONG) is routed to
/// at once, unless it flaps: found dead by the churn detector at least
/// `FLAP_DEATHS` times within `FLAP_WINDOW`. Then it comes back only after
/// a back-off, `REVIVE_BACKOFF` doubled for every death beyond that, up to
/// `MAX_REVIVE_BACKOFF`. (A clean stop, found by a refused redial, is not
/// a flap: restarts and upgrades come back at once.)
pub const FLAP_DEATHS: usize = 3;
pub const FLAP_WINDOW: Duration = Duration::from_secs(600);
pub const REVIVE_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_REVIVE_BACKOFF: Duration = Duration::from_secs(300);

/// When a peer counts as flapping (`run --flap-deaths`, `--flap-window`).
#[derive(Debug, Clone, Copy)]
pub struct FlapPolicy {
    pub deaths: usize,
    pub window: Duration,
}

impl Default for FlapPolicy {
    fn default() -> Self {
        FlapPolicy { deaths: FLAP_DEATHS, window: FLAP_WINDOW }
    }
}

impl FlapPolicy {
    /// The back-off after `deaths` recent deaths (none below the threshold).
    fn backoff(&self, deaths: usize) -> Duration {
        if deaths < self.deaths {
            return Duration::ZERO;
        }
        let doublings = (deaths - self.deaths).min(10) as u32;
        REVIVE_BACKOFF.saturating_mul(1 << doublings).min(MAX_REVIVE_BACKOFF)
    }
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
    /// When the churn detector found it dead (within `FLAP_WINDOW`).
    pub silent_deaths: Vec<Instant>,
    /// Dead, it proved alive since (a new connection, an overlay PONG),
    /// but flaps: it comes back when its back-off ends.
    pub proven: bool,
    /// Since when the datapath routes to it.
    pub in_maps_since: Option<Instant>,
    /// Banned by reputation: never routed to until the ban ends.
    pub banned: bool,
    /// Refused (why): too many node IDs from its /24 or /64.
    pub refused: Option<String>,
    /// In an anchored network: has it proven membership (net::members)?
    pub member: Membership,
    /// Link keys in both directions (net::links).
    pub linked: bool,
    /// `--auth required`: routed to only once `linked`.
    pub link_required: bool,
}

/// A peer's membership of an anchored network (docs/TRUST.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Membership {
    /// No trust anchor configured: everyone may join.
    #[default]
    Open,
    /// Connected since when, no certificate verified yet.
    Pending(Instant),
    Member {
        serial: u64,
        class: String,
        not_after: u64,
    },
    /// Not a member (why); it may come back with a valid certificate.
    Refused(String),
}

impl Membership {
    pub fn admits(&self) -> bool {
        matches!(self, Membership::Open | Membership::Member { .. })
    }
}

impl PeerState {
    pub fn connected(&self) -> bool {
        !self.connections.is_empty()
    }

    /// The overlay endpoint to route to, if the peer may be routed to.
    pub fn routable(&self) -> Option<SocketAddr> {
        if self.speaks_kad
            && self.dead.is_none()
            && !self.banned
            && self.refused.is_none()
            && self.member.admits()
            && (self.linked || !self.link_required)
        {
            self.endpoint
        } else {
            None
        }
    }

    /// Why the peer is not routed to (for `peers` and `maps`).
    pub fn state(&self) -> String {
        if self.banned {
            // A non-member's packets fail authentication: it is often
            // banned too; say both.
            return match &self.member {
                Membership::Refused(why) => format!("banned; not a member: {why}"),
                _ => "banned".into(),
            };
        }
        if let Some(why) = &self.refused {
            return format!("refused: {why}");
        }
        match &self.member {
            Membership::Refused(why) => return format!("not a member: {why}"),
            Membership::Pending(_) if self.speaks_kad && self.dead.is_none() => {
                return "membership not yet proven".into();
            }
            _ => {}
        }
        match (&self.dead, self.identified, self.speaks_kad, self.endpoint) {
            (Some((_, why)), ..) => format!("dead: {why}"),
            (None, false, ..) => "not identified".into(),
            (None, true, false, _) => "does not speak our Kademlia protocol".into(),
            (None, true, true, None) => "no overlay endpoint advertised".into(),
            (None, true, true, Some(_)) if self.link_required && !self.linked => "no link keys yet".into(),
            (None, true, true, Some(_)) => "routable".into(),
        }
    }

    /// Deaths by silence within the window before `now`.
    pub fn recent_deaths(&self, now: Instant, flap: &FlapPolicy) -> usize {
        self.silent_deaths.iter().filter(|t| now.saturating_duration_since(**t) < flap.window).count()
    }

    /// Whether a dead peer may be routed to again once it proves alive.
    pub fn may_revive(&self, now: Instant, flap: &FlapPolicy) -> bool {
        match &self.dead {
            None => true,
            Some((at, _)) => now.saturating_duration_since(*at) >= flap.backoff(self.recent_deaths(now, flap)),
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
    pub flap: FlapPolicy,
    /// Anchored network: new peers start `Pending`, not `Open`.
    membership_required: bool,
    /// `--auth required`: peers are routed to only with link keys.
    links_required: bool,
}

impl PeerBook {
    pub fn new(flap: FlapPolicy, membership_required: bool, links_required: bool) -> PeerBook {
        PeerBook { peers: HashMap::new(), flap, membership_required, links_required }
    }

    pub fn get(&self, peer: &PeerId) -> Option<&PeerState> {
        self.peers.get(peer)
    }

    pub fn get_mut(&mut self, peer: &PeerId) -> Option<&mut PeerState> {
        self.peers.get_mut(peer)
    }

    fn entry(&mut self, peer: PeerId) -> &mut PeerState {
        let (required, link_required) = (self.membership_required, self.links_required);
        self.peers.entry(peer).or_insert_with(|| PeerState {
            member: if required { Membership::Pending(Instant::now()) } else { Membership::Open },
            link_required,
            ..PeerState::default()
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &PeerState)> {
        self.peers.iter()
    }

    pub fn connected_count(&self) -> usize {
        self.peers.values().filter(|p| p.connected()).count()
    }

    /// A connection came up: proof of life for a peer found dead; true if
    /// it is alive again now.
    pub fn on_connected(&mut self, peer: PeerId, conn: ConnectionId, remote_ip: Option<IpAddr>, now: Instant) -> bool {
        self.entry(peer).connections.insert(conn, remote_ip);
        self.revive(&peer, now)
    }

    /// A dead peer proved alive (a new connection, an overlay PONG): alive
    /// again at once unless it flaps; then `revive_due` brings it back when
    /// the back-off ends. True if it is alive again now.
    pub fn revive(&mut self, peer: &PeerId, now: Instant) -> bool {
        match self.peers.get_mut(peer) {
            Some(st) if st.dead.is_some() => {
                if st.may_revive(now, &self.flap) {
                    st.dead = None;
                    st.proven = false;
                    true
                } else {
                    st.proven = true;
                    false
                }
            }
            _ => false,
        }
    }

    /// Flapping peers that proved alive and whose back-off has run out.
    pub fn revive_due(&mut self, now: Instant) -> Vec<PeerId> {
        let mut revived = Vec::new();
        for (id, st) in self.peers.iter_mut() {
            if st.dead.is_some() && st.proven && st.may_revive(now, &self.flap) {
                st.dead = None;
                st.proven = false;
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
        let st = self.entry(peer);
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
                st.proven = false;
                if by_pong {
                    let window = self.flap.window;
                    st.silent_deaths.retain(|t| now.saturating_duration_since(*t) < window);
                    st.silent_deaths.push(now);
                }
                true
            }
            _ => false,
        }
    }

    pub fn set_banned(&mut self, peer: &PeerId, banned: bool) {
        self.entry(*peer).banned = banned;
    }

    pub fn set_refused(&mut self, peer: &PeerId, why: Option<String>) {
        if let Some(st) = self.peers.get_mut(peer) {
            st.refused = why;
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
        self.peers.retain(|id, st| st.connected() || st.in_maps_since.is_some() || st.banned || keep(id));
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
    fn in_an_anchored_network_only_members_are_routable() {
        let mut book = PeerBook::new(FlapPolicy::default(), true, false);
        let (p, c) = (PeerId::random(), ConnectionId::new_unchecked(1));
        book.on_connected(p, c, Some("10.99.0.2".parse().unwrap()), Instant::now());
        book.on_identify(p, c, true, "p2p-nos/0.1.0", &addrs(&["/ip4/10.99.0.2/udp/9470"]));
        let st = book.get(&p).unwrap();
        assert_eq!((st.routable(), st.state().as_str()), (None, "membership not yet proven"));
        book.get_mut(&p).unwrap().member = Membership::Member { serial: 1, class: "default".into(), not_after: 9 };
        assert_eq!(book.get(&p).unwrap().routable(), Some("10.99.0.2:9470".parse().unwrap()));
        book.get_mut(&p).unwrap().member = Membership::Refused("certificate 1 revoked".into());
        let st = book.get(&p).unwrap();
        assert_eq!((st.routable(), st.state().as_str()), (None, "not a member: certificate 1 revoked"));
        // Without an anchor, every peer is open.
        let mut open = PeerBook::new(FlapPolicy::default(), false, false);
        open.on_connected(p, c, None, Instant::now());
        open.on_identify(p, c, true, "", &addrs(&["/ip4/10.99.0.2/udp/9470"]));
        assert!(open.get(&p).unwrap().routable().is_some());
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
        // Silent on the overlay while its connection stays up: dead until
        // it proves alive, however long that takes.
        assert!(book.mark_dead(&p, now, "silent", true));
        assert!(book.revive_due(now + Duration::from_secs(3600)).is_empty());
        assert!(book.revive(&p, now + Duration::from_secs(1)), "a PONG brings it back");
    }

    #[test]
    fn only_a_peer_that_flaps_waits_for_a_growing_backoff() {
        let mut book = PeerBook::default();
        let p = PeerId::random();
        let t0 = Instant::now();
        book.on_connected(p, ConnectionId::new_unchecked(1), None, t0);
        book.on_identify(p, ConnectionId::new_unchecked(1), true, "", &addrs(&["/ip4/10.99.0.2/udp/9470"]));
        let s = Duration::from_secs(1);
        // Two silent deaths in 10 minutes: back at once each time.
        for i in 0..2u32 {
            let t = t0 + s * 60 * i;
            assert!(book.mark_dead(&p, t, "silent", true));
            assert!(book.revive(&p, t + s / 2), "death {} of a non-flapping peer", i + 1);
        }
        // The third makes it a flapper: 5 s before it may come back…
        let t2 = t0 + s * 120;
        assert!(book.mark_dead(&p, t2, "silent", true));
        assert!(!book.revive(&p, t2 + s));
        book.on_connected(p, ConnectionId::new_unchecked(2), None, t2 + s);
        assert_eq!(book.get(&p).unwrap().routable(), None, "a reconnection does not bypass the back-off");
        assert!(book.revive_due(t2 + s * 4).is_empty());
        assert_eq!(book.revive_due(t2 + REVIVE_BACKOFF), vec![p]);
        // …the fourth, 10 s.
        let t3 = t2 + s * 30;
        assert!(book.mark_dead(&p, t3, "silent", true));
        assert!(!book.revive(&p, t3 + REVIVE_BACKOFF));
        assert!(book.revive(&p, t3 + REVIVE_BACKOFF * 2));
        // Deaths older than the window are forgotten; clean stops never count.
        let later = t3 + FLAP_WINDOW + s;
        assert!(book.mark_dead(&p, later, "refused", false));
        assert!(book.revive(&p, later));
        assert_eq!(FlapPolicy::default().backoff(100), MAX_REVIVE_BACKOFF);
    }
}
