//! The swarm's side of reputation: bans carried out (disconnect, refuse
//! connections, gossipsub blacklist, out of Kademlia and the maps),
//! evidence from the control plane (DHT records that fail validation,
//! gossipsub's own peer score) fed back, our scores fed into gossipsub's
//! application-specific score, and the limit on node IDs per /24 or /64.

use std::collections::HashSet;
use std::net::IpAddr;

use libp2p::PeerId;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{InboundRequest, Record};
use p2p_common::id::NodeId;

use super::event_loop::EventLoop;
use crate::identity::node_id_of;
use crate::reputation::{self, Evidence, Subject};

/// Largest DHT record value and key accepted from others.
pub const MAX_RECORD_VALUE: usize = 64 * 1024;
pub const MAX_RECORD_KEY: usize = 1024;

/// Why a record from another node is refused, if it is.
pub fn invalid_record(r: &Record) -> Option<String> {
    let key = r.key.as_ref().len();
    if key == 0 || key > MAX_RECORD_KEY {
        return Some(format!("a key of {key} bytes (1..={MAX_RECORD_KEY})"));
    }
    if r.value.len() > MAX_RECORD_VALUE {
        return Some(format!("a value of {} bytes (at most {MAX_RECORD_VALUE})", r.value.len()));
    }
    None
}

/// The /24 (IPv4) or /64 (IPv6) an address is in, as a comparable value.
pub fn prefix_of(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(v4) => (true, (u32::from(v4) >> 8) as u128),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (true, (u32::from(v4) >> 8) as u128),
            None => (false, u128::from(v6) >> 64),
        },
    }
}

impl EventLoop {
    /// Stores a record another node sent us only if it is valid; else it
    /// is evidence against the sender.
    pub(super) fn on_inbound_record(&mut self, request: InboundRequest) {
        match request {
            // An anchored network stores records from members only.
            InboundRequest::PutRecord { source, .. } if !self.trusted(&source) => {
                log::info!("refused a DHT record from {source}: not a member");
            }
            InboundRequest::PutRecord { source, record: Some(r), .. } => {
                match invalid_record(&r).or_else(|| self.unverified_record(&r)) {
                    None => {
                        if let Err(e) = self.kad().store_mut().put(r) {
                            log::debug!("record from {source} not stored: {e:?}");
                        }
                    }
                    Some(why) => {
                        log::info!("refused a DHT record from {source}: {why}");
                        self.reputation.report(Subject::Node(node_id_of(&source)), Evidence::BadRecord, 1);
                    }
                }
            }
            InboundRequest::AddProvider { record: Some(r) } => {
                let _ = self.kad().store_mut().add_provider(r);
            }
            _ => {}
        }
    }

    /// Anchored networks and `--auth required` take signed records only.
    pub(super) fn signed_records_required(&self) -> bool {
        self.membership_required() || self.links.policy == crate::userspace::AuthPolicy::Required
    }

    /// Why a record's signature refuses it: forged or altered, unsigned
    /// where signatures are required, or published by a known non-member.
    fn unverified_record(&self, r: &Record) -> Option<String> {
        match crate::trust::record::open(r.key.as_ref(), &r.value, r.publisher.as_ref()) {
            Err(e) => Some(e.to_string()),
            Ok(o) if o.publisher.is_none() && self.signed_records_required() => {
                Some("an unsigned record (this network requires signed records)".into())
            }
            Ok(o) => o
                .publisher
                .filter(|p| self.book.get(p).is_some_and(|s| !s.member.admits()))
                .map(|p| format!("a record published by {p}, not a member")),
        }
    }

    pub(super) fn on_reputation(&mut self, ev: reputation::Event) {
        match ev {
            reputation::Event::Banned { node, ips } => {
                let mut peers: HashSet<PeerId> = HashSet::new();
                if let Some(node) = node {
                    peers.extend(self.peer_of(&node));
                }
                let ips: HashSet<IpAddr> = ips.into_iter().collect();
                peers.extend(
                    self.book
                        .iter()
                        .filter(|(_, s)| s.connections.values().flatten().any(|ip| ips.contains(ip)))
                        .map(|(p, _)| *p),
                );
                for peer in peers {
                    log::warn!("banned: disconnecting {peer} and refusing it");
                    // Banned before it proved membership (its packets fail
                    // authentication meanwhile): it will not prove it now.
                    if self.book.get(&peer).is_some_and(|s| matches!(s.member, super::peers::Membership::Pending(_))) {
                        self.refuse_member(peer, "no valid certificate presented before it was banned".into());
                    }
                    self.book.set_banned(&peer, true);
                    self.swarm.behaviour_mut().blocked.block_peer(peer);
                    self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
                    self.kad().remove_peer(&peer);
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
                self.touch();
            }
            reputation::Event::Unbanned { node } => {
                for peer in self.peer_of(&node) {
                    log::info!("ban of {peer} lifted");
                    self.book.set_banned(&peer, false);
                    self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                    self.swarm.behaviour_mut().gossipsub.remove_blacklisted_peer(&peer);
                }
                self.touch();
            }
        }
    }

    /// The peer ID of a node ID we know of (routed, or in the book).
    pub(super) fn peer_of(&self, node: &NodeId) -> Vec<PeerId> {
        if let Some(p) = self.routed_ids.get(node) {
            return vec![*p];
        }
        self.book.iter().filter(|(p, _)| node_id_of(p) == *node).map(|(p, _)| *p).collect()
    }

    /// Too many node IDs behind one /24 or /64 (a Sybil's cheap way to
    /// fill a routing table): the excess is refused.
    pub(super) fn over_prefix_limit(&self, peer: &PeerId) -> Option<String> {
        // A peer is "from" the prefixes it connects from and those of the
        // overlay endpoints it advertises (a host with IPv4 and IPv6 is in
        // one /24 and one /64, whichever family its connection took).
        let prefixes = |s: &super::peers::PeerState| -> HashSet<(bool, u128)> {
            s.connections
                .values()
                .flatten()
                .copied()
                .chain(s.advertised.iter().map(|a| a.ip()))
                .map(prefix_of)
                .collect()
        };
        let mine = prefixes(self.book.get(peer)?);
        for prefix in mine {
            let others = self
                .book
                .iter()
                .filter(|(p, s)| *p != peer && s.speaks_kad && s.refused.is_none() && prefixes(s).contains(&prefix))
                .count();
            if others >= self.cfg.max_per_prefix {
                return Some(format!(
                    "{others} other node IDs already come from its {}",
                    if prefix.0 { "/24" } else { "/64" }
                ));
            }
        }
        None
    }

    /// Once a second: gossipsub's verdict on each connected peer is
    /// evidence, and our scores go into gossipsub's.
    pub(super) fn exchange_scores(&mut self, ours: Vec<(NodeId, f64)>) {
        let graylist = libp2p::gossipsub::PeerScoreThresholds::default().graylist_threshold;
        let connected: Vec<PeerId> = self.book.iter().filter(|(_, s)| s.connected()).map(|(p, _)| *p).collect();
        for peer in &connected {
            if let Some(score) = self.swarm.behaviour().gossipsub.peer_score(peer)
                && score < graylist
            {
                self.reputation.report(Subject::Node(node_id_of(peer)), Evidence::Gossipsub, 1);
            }
        }
        for (node, score) in ours {
            for peer in self.peer_of(&node) {
                // Our threshold (-100) maps onto gossipsub's graylist (-80
                // with application weight 10): score / 10.
                self.swarm.behaviour_mut().gossipsub.set_application_score(&peer, score / 10.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::kad;

    #[test]
    fn records_are_validated() {
        let ok = Record::new(kad::RecordKey::new(&"k"), vec![1; 100]);
        assert_eq!(invalid_record(&ok), None);
        let big = Record::new(kad::RecordKey::new(&"k"), vec![1; MAX_RECORD_VALUE + 1]);
        assert!(invalid_record(&big).unwrap().contains("value"));
        let empty = Record::new(kad::RecordKey::new(&""), vec![1]);
        assert!(invalid_record(&empty).is_some());
    }

    #[test]
    fn prefixes() {
        let p = |s: &str| prefix_of(s.parse().unwrap());
        assert_eq!(p("10.1.2.3"), p("10.1.2.200"));
        assert_ne!(p("10.1.2.3"), p("10.1.3.3"));
        assert_eq!(p("::ffff:10.1.2.3"), p("10.1.2.9"));
        assert_eq!(p("fd00::1"), p("fd00::ffff:1"));
        assert_ne!(p("fd00::1"), p("fd00:0:0:1::1"));
    }
}
