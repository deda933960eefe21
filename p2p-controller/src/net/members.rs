//! Membership in an anchored network (`run --trust-anchor --cert`,
//! docs/TRUST.md). Right after identify each side sends the other its
//! certificate (and its newest revocation list) over
//! `/p2p-nos/member/1.0.0`. A peer is routed to, kept in Kademlia's table
//! and let into gossipsub only once its certificate verifies under the
//! anchor for its own peer ID; one that presents none within
//! [`PRESENT_WITHIN`], a bad one, or one that expires or is revoked later
//! is dropped and disconnected. Revocation lists spread over the same
//! protocol: a node that takes a newer list (from its `--revocations FILE`,
//! which it re-reads when it changes, or from a peer) sends it to every
//! member it is connected to, and so on. Gossip from a peer that is not a
//! member is rejected (gossipsub validation), so it spreads no further.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use libp2p::request_response;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use super::event_loop::EventLoop;
use super::peers::Membership;
use crate::api::TrustStatus;
use crate::trust::ca::unix_now;
use crate::trust::{Armored, Certificate, Revocations, RootKey};

pub const PROTOCOL: &str = "/p2p-nos/member/1.0.0";
/// A peer that has not presented a valid certificate this long after
/// identify is refused (its connections are closed).
pub const PRESENT_WITHIN: Duration = Duration::from_secs(3);
/// A refused peer's connections are refused this long: else its redials
/// (it may still think us its peer) would loop through handshakes.
pub const REFUSED_FOR: Duration = Duration::from_secs(30);
/// A refused peer is disconnected this long after the verdict, so that the
/// exchange in the other direction (its request, our answer) completes
/// and both sides learn why.
pub const DISCONNECT_AFTER: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRequest {
    /// The sender's certificate, armored.
    pub certificate: String,
    /// The newest revocation list the sender holds, armored.
    pub revocations: Option<String>,
    /// Asks a signer for a new certificate (same class and lifetime).
    #[serde(default)]
    pub renew: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberResponse {
    pub accepted: bool,
    pub reason: Option<String>,
    pub revocations: Option<String>,
    /// This node signs renewals (`run --ca-key`).
    #[serde(default)]
    pub signer: bool,
    /// The renewed certificate, armored, when asked and given.
    #[serde(default)]
    pub renewed: Option<String>,
}

/// A renewal is asked again after this long without an answer.
const RENEW_RETRY: Duration = Duration::from_secs(5);

pub type Behaviour = request_response::json::Behaviour<MemberRequest, MemberResponse>;

pub fn behaviour() -> Behaviour {
    let cfg = request_response::Config::default().with_request_timeout(Duration::from_secs(2));
    Behaviour::new([(StreamProtocol::new(PROTOCOL), request_response::ProtocolSupport::Full)], cfg)
}

/// What `run --trust-anchor --cert [--revocations]` gave, checked.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    pub anchor: RootKey,
    pub cert: Certificate,
    pub revocations: Option<Revocations>,
    /// Re-read when it changes; a newer list there is applied and spread.
    pub revocations_file: Option<PathBuf>,
    /// `--cert`: where a renewed certificate is written.
    pub cert_file: PathBuf,
    /// `--ca-key DIR`: this node signs other members' renewals.
    pub ca_dir: Option<PathBuf>,
}

/// Whether a refused certificate was forged, altered or someone else's
/// (rather than expired, revoked or of another network).
fn forged(armored: &str, peer: &PeerId) -> bool {
    use crate::trust::TrustError;
    match armored.parse::<Armored>() {
        Ok(Armored::Certificate(c)) => c.peer != *peer,
        Ok(_) => true,
        Err(e) => matches!(e, TrustError::BadSignature | TrustError::Malformed { .. }),
    }
}

/// The revocation list a message carries, if it is one.
fn carried_revocations(armored: Option<&str>) -> Option<Revocations> {
    match armored?.parse::<Armored>() {
        Ok(Armored::Revocations(r)) => Some(r),
        _ => None,
    }
}

/// When a certificate is renewed: at 2/3 of its life, counted from its
/// signing (`ca sign` backdates `not_before` by the clock-skew allowance).
pub fn renew_at(c: &Certificate) -> u64 {
    c.not_after.saturating_sub(lifetime(c).as_secs() / 3)
}

/// The lifetime a renewal gets: the old certificate's, from signing.
fn lifetime(c: &Certificate) -> Duration {
    let signed = c.not_before.saturating_add(crate::trust::ca::CLOCK_SKEW.as_secs()).min(c.not_after);
    Duration::from_secs((c.not_after - signed).max(1))
}

/// The membership concern's state in the swarm task.
pub(super) struct Members {
    cfg: TrustConfig,
    signer: Option<crate::trust::ca::Ca>,
    /// Members that sign renewals, as their answers say.
    signers: Vec<PeerId>,
    /// When this node last asked for a renewal.
    renew_asked: Option<Instant>,
    pub(super) renewals: u64,
    crl: Option<Revocations>,
    file_mtime: Option<SystemTime>,
    /// Peers that refused our certificate, and why.
    refused_us: HashMap<PeerId, String>,
    /// Refused peers: when their connections are closed and refused
    /// (`None` once done), and until when.
    shut_out: HashMap<PeerId, (Option<Instant>, Instant)>,
    admitted: u64,
    refused: u64,
    own_lapse_logged: bool,
}

impl Members {
    pub(super) fn new(cfg: TrustConfig) -> Members {
        let crl = cfg.revocations.clone();
        let file_mtime = cfg.revocations_file.as_ref().and_then(|p| std::fs::metadata(p).ok()?.modified().ok());
        let signer = cfg.ca_dir.as_deref().and_then(|d| {
            crate::trust::ca::Ca::open(d).map_err(|e| log::error!("--ca-key: {e}; not signing renewals")).ok()
        });
        Members {
            cfg,
            signer,
            signers: Vec::new(),
            renew_asked: None,
            renewals: 0,
            crl,
            file_mtime,
            refused_us: HashMap::new(),
            shut_out: HashMap::new(),
            admitted: 0,
            refused: 0,
            own_lapse_logged: false,
        }
    }

    fn request(&self) -> MemberRequest {
        MemberRequest {
            certificate: self.cfg.cert.to_armor(),
            revocations: self.crl.as_ref().map(|r| r.to_armor()),
            renew: false,
        }
    }

    /// A signer's renewal for `old` (already judged valid).
    fn renew_for(&self, old: &Certificate) -> Option<String> {
        let ca = self.signer.as_ref()?;
        // Not early (each renewal is a new serial the member could keep),
        // and not for a member the CA revoked, even if the revocation has
        // not reached this node's list yet.
        let slack = lifetime(old).as_secs() / 10;
        if unix_now() + slack < renew_at(old) {
            log::info!("{} asked to renew certificate {} early: refused", old.peer, old.serial);
            return None;
        }
        if crate::trust::ca::read_revocations(&ca.revocations_path()).is_ok_and(|r| r.contains(old.serial)) {
            return None;
        }
        match ca.sign(old.peer, &old.class, lifetime(old)) {
            Ok(c) => {
                log::info!("renewed the certificate of {} (serial {} → {})", old.peer, old.serial, c.serial);
                Some(c.to_armor())
            }
            Err(e) => {
                log::warn!("renewing the certificate of {}: {e}", old.peer);
                None
            }
        }
    }

    /// A renewal of our own certificate arrived: checked, then used and
    /// written to `--cert`.
    fn take_renewal(&mut self, me: &PeerId, armored: &str) -> bool {
        let cert = match armored.parse::<Armored>() {
            Ok(Armored::Certificate(c)) => c,
            _ => return false,
        };
        if cert.verify_for(me, &self.cfg.anchor, unix_now(), self.crl.as_ref()).is_err()
            || cert.not_after <= self.cfg.cert.not_after
        {
            return false;
        }
        if let Err(e) = crate::trust::ca::write_atomic(&self.cfg.cert_file, cert.to_armor().as_bytes(), 0o644) {
            log::warn!("{e}: the renewed certificate is used until the next start");
        }
        log::info!(
            "certificate renewed: serial {} → {}, valid until {}",
            self.cfg.cert.serial,
            cert.serial,
            cert.not_after
        );
        self.cfg.cert = cert;
        self.renew_asked = None;
        self.renewals += 1;
        true
    }

    fn judge(&self, peer: &PeerId, armored: &str) -> Result<Certificate, String> {
        match armored.parse::<Armored>().map_err(|e| e.to_string())? {
            Armored::Certificate(c) => {
                c.verify_for(peer, &self.cfg.anchor, unix_now(), self.crl.as_ref()).map_err(|e| e.to_string())?;
                Ok(c)
            }
            _ => Err("presented something that is not a certificate".into()),
        }
    }

    /// Takes `r` if it is the anchor's and newer than ours.
    fn take_revocations(&mut self, r: Revocations) -> bool {
        if r.issuer != self.cfg.anchor.0 || self.crl.as_ref().is_some_and(|c| c.sequence >= r.sequence) {
            return false;
        }
        log::info!("revocation list {} of the trust anchor: {} serial(s) revoked", r.sequence, r.entries.len());
        self.crl = Some(r);
        true
    }
}

impl EventLoop {
    pub(super) fn membership_required(&self) -> bool {
        self.members.is_some()
    }

    /// A connection came up: a peer not (yet) a member has
    /// [`PRESENT_WITHIN`] from now to prove it, whatever it speaks.
    pub(super) fn start_membership_clock(&mut self, peer: PeerId) {
        if !self.membership_required() {
            return;
        }
        if let Some(st) = self.book.get_mut(&peer)
            && !st.member.admits()
        {
            st.member = Membership::Pending(Instant::now());
        }
    }

    /// identify says `peer` speaks our Kademlia: present our certificate.
    pub(super) fn present_certificate(&mut self, peer: PeerId) {
        let Some(m) = &self.members else { return };
        let req = m.request();
        // Admitted already (a new connection of a member): back into
        // Kademlia's table now that identify gave its addresses.
        if self.book.get(&peer).is_some_and(|s| matches!(s.member, Membership::Member { .. })) {
            self.offer_to_kad(&peer);
            self.bootstrap_through(peer);
        }
        if let Some(rr) = self.swarm.behaviour_mut().member.as_mut() {
            rr.send_request(&peer, req);
        }
    }

    pub(super) fn on_member(&mut self, e: request_response::Event<MemberRequest, MemberResponse>) {
        use request_response::{Event, Message};
        let Some(m) = self.members.as_mut() else { return };
        match e {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                let fresh = carried_revocations(request.revocations.as_deref()).is_some_and(|r| m.take_revocations(r));
                let verdict = m.judge(&peer, &request.certificate);
                let renewed = match &verdict {
                    Ok(old) if request.renew => m.renew_for(old),
                    _ => None,
                };
                let resp = MemberResponse {
                    accepted: verdict.is_ok(),
                    reason: verdict.as_ref().err().cloned(),
                    revocations: m.crl.as_ref().map(|r| r.to_armor()),
                    signer: m.signer.is_some(),
                    renewed,
                };
                if let Some(rr) = self.swarm.behaviour_mut().member.as_mut() {
                    let _ = rr.send_response(channel, resp);
                }
                match verdict {
                    Ok(cert) => self.admit(peer, &cert),
                    Err(why) => {
                        // A forged or altered certificate, or another
                        // node's, is an attack, not a lapse: evidence.
                        if forged(&request.certificate, &peer) {
                            self.reputation.report(
                                crate::reputation::Subject::Node(crate::identity::node_id_of(&peer)),
                                crate::reputation::Evidence::Auth,
                                1,
                            );
                        }
                        self.refuse_member(peer, why)
                    }
                }
                if fresh {
                    self.rejudge_members();
                    self.spread_revocations();
                }
            }
            Event::Message { peer, message: Message::Response { response, .. }, .. } => {
                if response.signer && !m.signers.contains(&peer) {
                    m.signers.push(peer);
                } else if !response.signer {
                    m.signers.retain(|p| *p != peer);
                }
                let me = *self.swarm.local_peer_id();
                let renewed = response.renewed.as_deref().is_some_and(|t| m.take_renewal(&me, t));
                if let Some(why) = response.reason.filter(|_| !response.accepted) {
                    log::warn!("{peer} refuses our certificate: {why}");
                    m.refused_us.insert(peer, why);
                } else {
                    m.refused_us.remove(&peer);
                }
                let newer = carried_revocations(response.revocations.as_deref());
                if newer.is_some_and(|r| m.take_revocations(r)) {
                    self.rejudge_members();
                    self.spread_revocations();
                } else if renewed {
                    // The same message carries the new certificate to all.
                    self.spread_revocations();
                }
            }
            Event::OutboundFailure { peer, error, .. } => {
                log::debug!("membership exchange with {peer} failed: {error}");
            }
            Event::InboundFailure { .. } | Event::ResponseSent { .. } => {}
        }
    }

    fn admit(&mut self, peer: PeerId, cert: &Certificate) {
        let Some(st) = self.book.get_mut(&peer) else { return };
        let was = st.member.admits();
        let banned = st.banned;
        st.member = Membership::Member { serial: cert.serial, class: cert.class.clone(), not_after: cert.not_after };
        if !was {
            log::info!("{peer} is a member (certificate {}, class {})", cert.serial, cert.class);
        }
        if let Some(m) = self.members.as_mut() {
            m.admitted += u64::from(!was);
            // A verdict of "late" whose certificate arrived within the
            // disconnect delay is taken back.
            if m.shut_out.remove(&peer).is_some() && !banned {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
        }
        // Only now may it enter Kademlia's table and the maps; a member
        // that reconnected (inbound: Kademlia does not insert it by
        // itself) is offered again.
        self.offer_to_kad(&peer);
        self.bootstrap_through(peer);
        self.touch();
    }

    /// Not (or no longer) a member: out of Kademlia, gossipsub and the
    /// maps, disconnected. It may come back with a valid certificate.
    pub(super) fn refuse_member(&mut self, peer: PeerId, why: String) {
        let again = self.book.get(&peer).is_some_and(|st| matches!(&st.member, Membership::Refused(w) if *w == why));
        if let Some(st) = self.book.get_mut(&peer) {
            st.member = Membership::Refused(why.clone());
        }
        if !again {
            log::warn!("refusing {peer}: not a member of this network ({why})");
        }
        if let Some(m) = self.members.as_mut() {
            m.refused += u64::from(!again);
            let now = Instant::now();
            m.shut_out.entry(peer).or_insert((Some(now + DISCONNECT_AFTER), now + REFUSED_FOR));
        }
        // Not blacklisted in gossipsub: that would also ignore its
        // subscriptions once it comes back a member; the validation in
        // net::pubsub rejects its gossip meanwhile. The block list then
        // closes its connections and refuses new ones for a while.
        self.kad().remove_peer(&peer);
        self.touch();
    }

    /// A newer revocation list (or our renewed certificate) goes to every
    /// member connected: each that takes a newer list passes it on, so it
    /// reaches every member in a few round trips.
    fn spread_revocations(&mut self) {
        let Some(m) = &self.members else { return };
        let req = m.request();
        let to: Vec<PeerId> = self
            .book
            .iter()
            .filter(|(_, s)| s.connected() && matches!(s.member, Membership::Member { .. }))
            .map(|(p, _)| *p)
            .collect();
        for p in to {
            if let Some(rr) = self.swarm.behaviour_mut().member.as_mut() {
                rr.send_request(&p, req.clone());
            }
        }
    }

    /// Every tick: refused peers are blocked (their connections closed)
    /// once the exchange had its time, and unblocked when the time is up.
    pub(super) fn apply_shut_outs(&mut self, now: Instant) {
        let Some(m) = self.members.as_mut() else { return };
        let mut block = Vec::new();
        let mut unblock = Vec::new();
        m.shut_out.retain(|p, (at, until)| {
            if at.is_some_and(|t| now >= t) {
                *at = None;
                block.push(*p);
            }
            let keep = now < *until;
            if !keep {
                unblock.push(*p);
            }
            keep
        });
        for p in block {
            self.swarm.behaviour_mut().blocked.block_peer(p);
        }
        for p in unblock {
            // A reputation ban keeps its own block.
            if !self.book.get(&p).is_some_and(|s| s.banned) {
                self.swarm.behaviour_mut().blocked.unblock_peer(p);
            }
        }
    }

    /// Refused peers kept in the book while shut out (so `peers` says why).
    pub(super) fn shut_out(&self) -> HashSet<PeerId> {
        self.members.as_ref().map(|m| m.shut_out.keys().copied().collect()).unwrap_or_default()
    }

    /// An open network, or a proven member: whose gossip and DHT records
    /// are accepted.
    pub(super) fn trusted(&self, peer: &PeerId) -> bool {
        !self.membership_required()
            || self.book.get(peer).is_some_and(|s| matches!(s.member, Membership::Member { .. }))
    }

    /// After a newer revocation list: members it revokes are refused.
    fn rejudge_members(&mut self) {
        let Some(m) = &self.members else { return };
        let revoked: Vec<(PeerId, u64)> = self
            .book
            .iter()
            .filter_map(|(p, s)| match &s.member {
                Membership::Member { serial, .. } if m.crl.as_ref().is_some_and(|r| r.contains(*serial)) => {
                    Some((*p, *serial))
                }
                _ => None,
            })
            .collect();
        for (p, serial) in revoked {
            self.refuse_member(p, format!("certificate {serial} revoked"));
        }
    }

    /// Every second: certificates that lapsed, peers that never presented
    /// one, our own certificate, and the revocation file.
    pub(super) fn tick_members(&mut self, now: Instant) {
        let Some(m) = self.members.as_mut() else { return };
        let wall = unix_now();
        if wall >= m.cfg.cert.not_after && !m.own_lapse_logged {
            log::error!(
                "this node's certificate {} expired at {}: members will refuse it; get a new one (ca sign)",
                m.cfg.cert.serial,
                m.cfg.cert.not_after
            );
            m.own_lapse_logged = true;
        }
        let file_change = m.cfg.revocations_file.clone().and_then(|p| {
            let mtime = std::fs::metadata(&p).ok()?.modified().ok()?;
            (Some(mtime) != m.file_mtime).then_some((p, mtime))
        });
        let due = wall >= renew_at(&m.cfg.cert) && m.renew_asked.is_none_or(|t| now.duration_since(t) >= RENEW_RETRY);
        let signer =
            m.signers.iter().copied().find(|p| {
                self.book.get(p).is_some_and(|s| s.connected() && matches!(s.member, Membership::Member { .. }))
            });
        let mut renewed_own = false;
        if due && m.signer.is_some() {
            // A signer renews its own.
            m.renew_asked = Some(now);
            let me = *self.swarm.local_peer_id();
            let own = m.cfg.cert.clone();
            renewed_own = m.renew_for(&own).is_some_and(|c| m.take_renewal(&me, &c));
        } else if due && let Some(signer) = signer {
            // The next ask goes to another signer, should this one not
            // answer with a renewal.
            if let Some(i) = m.signers.iter().position(|p| *p == signer) {
                let s = m.signers.remove(i);
                m.signers.push(s);
            }
            m.renew_asked = Some(now);
            log::info!(
                "asking {signer} to renew certificate {} (expires at {})",
                m.cfg.cert.serial,
                m.cfg.cert.not_after
            );
            let req = MemberRequest { renew: true, ..m.request() };
            if let Some(rr) = self.swarm.behaviour_mut().member.as_mut() {
                rr.send_request(&signer, req);
            }
        }
        let mut new_list = false;
        if let Some((path, mtime)) = file_change {
            // A file read while it is being written fails to verify: it
            // is read again next second (its time is kept only once read).
            match crate::trust::ca::read_revocations(&path) {
                Ok(r) if r.issuer != m.cfg.anchor.0 => {
                    m.file_mtime = Some(mtime);
                    log::warn!("{}: signed by another root than the trust anchor; ignored", path.display());
                }
                Ok(r) => {
                    m.file_mtime = Some(mtime);
                    new_list = m.take_revocations(r);
                }
                Err(e) => log::debug!("--revocations: {e}"),
            }
        }
        if new_list {
            self.rejudge_members();
        }
        if new_list || renewed_own {
            self.spread_revocations();
        }
        let mut lapsed = Vec::new();
        for (p, s) in self.book.iter() {
            match &s.member {
                Membership::Member { serial, not_after, .. } if wall >= *not_after => {
                    lapsed.push((*p, format!("certificate {serial} expired at {not_after}")));
                }
                Membership::Pending(since) if now.duration_since(*since) >= PRESENT_WITHIN && s.connected() => {
                    lapsed.push((*p, format!("presented no valid certificate within {} s", PRESENT_WITHIN.as_secs())));
                }
                _ => {}
            }
        }
        for (p, why) in lapsed {
            self.refuse_member(p, why);
        }
    }

    pub(super) fn trust_status(&self) -> Option<TrustStatus> {
        let m = self.members.as_ref()?;
        let wall = unix_now();
        let count = |f: fn(&Membership) -> bool| self.book.iter().filter(|(_, s)| f(&s.member)).count();
        Some(TrustStatus {
            anchor: m.cfg.anchor.fingerprint(),
            serial: m.cfg.cert.serial,
            class: m.cfg.cert.class.clone(),
            not_after: m.cfg.cert.not_after,
            certificate: if wall >= m.cfg.cert.not_after { "expired" } else { "valid" }.into(),
            renew_at: renew_at(&m.cfg.cert),
            renewals: m.renewals,
            signer: m.signer.is_some(),
            revocations_sequence: m.crl.as_ref().map(|r| r.sequence),
            members: count(|s| matches!(s, Membership::Member { .. })),
            pending: count(|s| matches!(s, Membership::Pending(_))),
            refused_now: count(|s| matches!(s, Membership::Refused(_))),
            admitted: m.admitted,
            refused: m.refused,
            refused_us: m.refused_us.iter().map(|(p, w)| (p.to_string(), w.clone())).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::ed25519;

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_life_from_signing() {
        let root = ed25519::Keypair::generate();
        let signed = 1_000_000;
        let skew = crate::trust::ca::CLOCK_SKEW.as_secs();
        let c = Certificate::issue(&root, 1, PeerId::random(), "default", signed - skew, signed + 30 * 86_400).unwrap();
        assert_eq!(renew_at(&c), signed + 20 * 86_400);
        assert_eq!(lifetime(&c), Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn only_forged_or_borrowed_certificates_count_as_evidence() {
        let root = ed25519::Keypair::generate();
        let (me, other) = (PeerId::random(), PeerId::random());
        let expired = Certificate::issue(&root, 1, me, "default", 0, 1).unwrap().to_armor();
        assert!(!forged(&expired, &me), "a lapse is no attack");
        assert!(forged(&expired, &other), "someone else's certificate");
        let mut altered = expired.clone().into_bytes();
        altered[40] ^= 1;
        assert!(forged(&String::from_utf8(altered).unwrap(), &me));
        assert!(forged(&RootKey::of(&root).to_armor(), &me), "not a certificate at all");
    }
}
