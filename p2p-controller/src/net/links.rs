//! Link keys (docs/WIRE.md version 2, docs/TRUST.md): every pair of
//! neighbours derives the keys that tag the overlay packets of their link
//! over their authenticated libp2p connection, `/p2p-nos/link/1.0.0`. The
//! node with the smaller node ID starts: it sends a fresh X25519 public key
//! and a key ID, the other answers with its own; HKDF-SHA256 over the
//! shared secret gives one key per direction (forward secrecy: the secrets
//! are dropped at once). The starter renews the keys every `--link-rotate`
//! (at most 2 minutes); the previous receive key stays valid, so packets
//! in flight across a rotation still verify. The answering side installs
//! the new receive key at once but sends with the new key only
//! [`SWITCH_AFTER`] later, by when the starter has installed it too.
//!
//! Only peers that may be routed to (members, in an anchored network) get
//! keys; under `--auth required` a peer is routed to only once it has them.
//! The keys of every neighbour endpoint go to map sync (LINK_KEYS) and to
//! the overlay socket's owner (the controller's own packets).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::request_response::{self, OutboundRequestId};
use libp2p::{PeerId, StreamProtocol};
use p2p_common::id::NodeId;
use p2p_common::maps::LinkSecret;
use serde::{Deserialize, Serialize};
use x25519_dalek::{EphemeralSecret, PublicKey};

use super::event_loop::EventLoop;
use crate::identity::node_id_of;
use crate::trust::kx::parse_public;
use crate::userspace::{AuthPolicy, LinkTable};

pub const PROTOCOL: &str = "/p2p-nos/link/1.0.0";
/// `run --link-rotate` default and its largest value.
pub const DEFAULT_ROTATE: Duration = Duration::from_secs(60);
pub const MAX_ROTATE: Duration = Duration::from_secs(120);
/// The answering side sends with a new key this long after answering.
pub const SWITCH_AFTER: Duration = Duration::from_millis(500);
/// An exchange without an answer is tried again after this long.
const RETRY: Duration = Duration::from_secs(2);
const SALT: &[u8] = b"p2p-nos/link/v2";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkRequest {
    /// The key ID both directions' new keys get (1..=255).
    pub key_id: u8,
    /// The starter's ephemeral X25519 public key, hex.
    pub ephemeral: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkResponse {
    /// The answerer's ephemeral X25519 public key, hex; none if refused.
    pub ephemeral: Option<String>,
    pub reason: Option<String>,
}

pub type Behaviour = request_response::json::Behaviour<LinkRequest, LinkResponse>;

pub fn behaviour() -> Behaviour {
    let cfg = request_response::Config::default().with_request_timeout(RETRY);
    Behaviour::new([(StreamProtocol::new(PROTOCOL), request_response::ProtocolSupport::Full)], cfg)
}

/// The two directions' keys of exchange `key_id` between `starter` and
/// `answerer`: (starter → answerer, answerer → starter).
pub fn derive(shared: &[u8; 32], key_id: u8, starter: &NodeId, answerer: &NodeId) -> ([u8; 16], [u8; 16]) {
    let mut info = Vec::with_capacity(18 + 1 + 64);
    info.extend_from_slice(b"p2p-nos link keys");
    info.push(key_id);
    info.extend_from_slice(&starter.0);
    info.extend_from_slice(&answerer.0);
    let okm: [u8; 32] = crate::trust::kx::expand(SALT, shared, &info);
    let (a, b) = okm.split_at(16);
    (a.try_into().expect("16 bytes"), b.try_into().expect("16 bytes"))
}

/// One link's keys.
#[derive(Default)]
struct Link {
    /// Receive keys, newest first (ID 0: none).
    rx: [(u8, [u8; 16]); 2],
    tx: (u8, [u8; 16]),
    /// The answering side's new send key and when it takes over.
    pending_tx: Option<(Instant, u8, [u8; 16])>,
    /// When the newest keys were installed.
    since: Option<Instant>,
    /// The starter's exchange under way.
    asking: Option<(OutboundRequestId, EphemeralSecret, u8, Instant)>,
    /// Refused: not asked again before then.
    retry_at: Option<Instant>,

    last_id: u8,
}

impl Link {
    fn install_rx(&mut self, id: u8, key: [u8; 16]) {
        self.rx = [(id, key), self.rx[0]];
        self.since = Some(Instant::now());
    }

    fn next_id(&mut self) -> u8 {
        self.last_id = if self.last_id == 255 { 1 } else { self.last_id + 1 };
        self.last_id
    }

    fn secret(&self) -> LinkSecret {
        LinkSecret {
            rx: [self.rx[0].1, self.rx[1].1],
            tx: self.tx.1,
            rx_id: [self.rx[0].0, self.rx[1].0],
            tx_id: self.tx.0,
            _pad: [0; 5],
        }
    }
}

/// The link-key concern's state in the swarm task.
pub(super) struct LinkKeys {
    pub(super) policy: AuthPolicy,
    rotate: Duration,
    links: HashMap<PeerId, Link>,
    /// Static peers' pre-shared keys (`--peers`), always published.
    fixed: LinkTable,
    published: Arc<LinkTable>,
    pub(super) exchanges: u64,
    pub(super) refused: u64,
}

impl LinkKeys {
    pub(super) fn new(policy: AuthPolicy, rotate: Duration, fixed: LinkTable) -> LinkKeys {
        LinkKeys {
            policy,
            rotate,
            links: HashMap::new(),
            fixed,
            published: Arc::new(LinkTable::new()),
            exchanges: 0,
            refused: 0,
        }
    }

    /// Peers with keys in both directions.
    pub(super) fn linked(&self) -> usize {
        self.links.values().filter(|l| l.tx.0 != 0 && l.rx[0].0 != 0).count()
    }
}

impl EventLoop {
    fn node_id(&self) -> NodeId {
        node_id_of(self.swarm.local_peer_id())
    }

    fn links_on(&self) -> bool {
        self.links.policy != AuthPolicy::Off
    }

    /// May `peer` have link keys: connected, speaks our protocol, admitted.
    fn link_eligible(&self, peer: &PeerId) -> bool {
        self.book.get(peer).is_some_and(|s| s.connected() && s.speaks_kad && s.member.admits() && !s.banned)
    }

    /// The last connection to `peer` closed (or it was refused): its keys go.
    pub(super) fn forget_link(&mut self, peer: &PeerId) {
        if self.links.links.remove(peer).is_some() {
            self.set_linked(peer, false);
        }
    }

    fn set_linked(&mut self, peer: &PeerId, linked: bool) {
        if let Some(st) = self.book.get_mut(peer)
            && st.linked != linked
        {
            st.linked = linked;
            self.touch();
        }
    }

    /// Every tick: start exchanges this node owes, switch pending send
    /// keys, drop keys of peers no longer eligible, publish changes.
    pub(super) fn tick_links(&mut self, now: Instant) {
        if !self.links_on() {
            return;
        }
        let me = self.node_id();
        let gone: Vec<PeerId> = self.links.links.keys().filter(|p| !self.link_eligible(p)).copied().collect();
        for p in gone {
            self.forget_link(&p);
        }
        let eligible: Vec<PeerId> = self.book.iter().map(|(p, _)| *p).filter(|p| self.link_eligible(p)).collect();
        for peer in eligible {
            let starter = me < node_id_of(&peer);
            let rotate = self.links.rotate;
            let link = self.links.links.entry(peer).or_default();
            if let Some((at, id, key)) = link.pending_tx
                && now >= at
            {
                link.tx = (id, key);
                link.pending_tx = None;
            }
            let due = link.since.is_none_or(|t| now.saturating_duration_since(t) >= rotate);
            let waiting = link.asking.as_ref().is_some_and(|(_, _, _, at)| now.saturating_duration_since(*at) < RETRY)
                || link.retry_at.is_some_and(|t| now < t);
            if starter && due && !waiting {
                let secret = EphemeralSecret::random();
                let public = PublicKey::from(&secret);
                let key_id = link.next_id();
                let req = LinkRequest { key_id, ephemeral: hex::encode(public.as_bytes()) };
                let id = self.swarm.behaviour_mut().link.send_request(&peer, req);
                if let Some(link) = self.links.links.get_mut(&peer) {
                    link.asking = Some((id, secret, key_id, now));
                }
            }
        }
        let states: Vec<(PeerId, bool)> =
            self.links.links.iter().map(|(p, l)| (*p, l.rx[0].0 != 0 && l.tx.0 != 0)).collect();
        for (peer, has) in states {
            self.set_linked(&peer, has);
        }
        self.publish_links();
    }

    /// The keys of every endpoint of every linked peer (and of static
    /// peers with pre-shared keys), to map sync and
    /// the overlay socket's owner, when they changed.
    fn publish_links(&mut self) {
        let mut table = self.links.fixed.clone();
        for (peer, link) in &self.links.links {
            if link.rx[0].0 == 0 && link.tx.0 == 0 {
                continue;
            }
            if let Some(st) = self.book.get(peer) {
                for ep in &st.advertised {
                    table.insert(*ep, link.secret());
                }
            }
        }
        if *self.links.published != table {
            let table = Arc::new(table);
            self.links.published = table.clone();
            self.sync.set_link_keys(table.clone());
            self.overlay.set_link_keys(table);
        }
    }

    pub(super) fn on_link(&mut self, e: request_response::Event<LinkRequest, LinkResponse>) {
        use request_response::{Event, Message};
        match e {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                let resp = self.answer_link(peer, &request);
                // The new receive key is in LINK_KEYS before the answer
                // leaves: the starter tags with it as soon as it arrives.
                self.publish_links();
                let _ = self.swarm.behaviour_mut().link.send_response(channel, resp);
            }
            Event::Message { peer, message: Message::Response { request_id, response }, .. } => {
                let me = self.node_id();
                let Some(link) = self.links.links.get_mut(&peer) else { return };
                let Some((id, secret, key_id, _)) = link.asking.take() else { return };
                if id != request_id {
                    link.asking = Some((id, secret, key_id, Instant::now()));
                    return;
                }
                let Some(theirs) = response.ephemeral.as_deref().and_then(parse_public) else {
                    if link.retry_at.is_none() {
                        log::warn!("{peer} refused link keys: {}", response.reason.unwrap_or_default());
                    }
                    link.retry_at = Some(Instant::now() + RETRY);
                    self.links.refused += 1;
                    return;
                };
                link.retry_at = None;
                let shared = secret.diffie_hellman(&theirs);
                let (to_them, from_them) = derive(shared.as_bytes(), key_id, &me, &node_id_of(&peer));
                link.install_rx(key_id, from_them);
                link.tx = (key_id, to_them);
                self.links.exchanges += 1;
                log::debug!("link keys {key_id} with {peer}");
                self.publish_links();
            }
            Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(link) = self.links.links.get_mut(&peer)
                    && link.asking.as_ref().is_some_and(|(id, ..)| *id == request_id)
                {
                    log::debug!("link keys with {peer}: {error}");
                }
            }
            _ => {}
        }
    }

    fn answer_link(&mut self, peer: PeerId, request: &LinkRequest) -> LinkResponse {
        let refuse = |why: &str| LinkResponse { ephemeral: None, reason: Some(why.into()) };
        if !self.links_on() {
            return refuse("this node runs with --auth off");
        }
        if !self.link_eligible(&peer) {
            return refuse("not a peer this node routes to (not a member, or banned)");
        }
        let me = self.node_id();
        if me < node_id_of(&peer) {
            return refuse("the node with the smaller node ID starts the exchange");
        }
        let Some(theirs) = parse_public(&request.ephemeral).filter(|_| request.key_id != 0) else {
            return refuse("malformed request");
        };
        let secret = EphemeralSecret::random();
        let public = PublicKey::from(&secret);
        let shared = secret.diffie_hellman(&theirs);
        let (from_them, to_them) = derive(shared.as_bytes(), request.key_id, &node_id_of(&peer), &me);
        let link = self.links.links.entry(peer).or_default();
        link.install_rx(request.key_id, from_them);
        if link.tx.0 == 0 {
            // The first keys: until now this side sent untagged, which the
            // starter drops under `required` (its PONGs, say); the starter
            // sends tagged only after it has the answer.
            link.tx = (request.key_id, to_them);
        } else {
            link.pending_tx = Some((Instant::now() + SWITCH_AFTER, request.key_id, to_them));
        }
        self.links.exchanges += 1;
        LinkResponse { ephemeral: Some(hex::encode(public.as_bytes())), reason: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_the_same_keys_one_per_direction() {
        let (a, b) = (EphemeralSecret::random(), EphemeralSecret::random());
        let (pa, pb) = (PublicKey::from(&a), PublicKey::from(&b));
        let (s, t) = (NodeId([1; 32]), NodeId([2; 32]));
        let at_starter = derive(a.diffie_hellman(&pb).as_bytes(), 7, &s, &t);
        let at_answerer = derive(b.diffie_hellman(&pa).as_bytes(), 7, &s, &t);
        assert_eq!(at_starter, at_answerer);
        assert_ne!(at_starter.0, at_starter.1, "one key per direction");
        let other_id = derive(&[0; 32], 8, &s, &t);
        assert_ne!(derive(&[0; 32], 7, &s, &t), other_id, "the key ID is bound in");
    }

    #[test]
    fn a_new_key_keeps_the_previous_one_for_packets_in_flight() {
        let mut l = Link::default();
        l.install_rx(1, [1; 16]);
        l.install_rx(2, [2; 16]);
        let s = l.secret();
        assert_eq!((s.rx_id, s.rx), ([2, 1], [[2; 16], [1; 16]]));
        l.last_id = 255;
        assert_eq!(l.next_id(), 1, "key IDs skip 0");
    }
}
