//! End-to-end sessions (crate::e2e): the exchange that gives an origin and
//! a destination their DATA keys, `/p2p-nos/e2e/1.0.0` over their
//! authenticated libp2p connection (dialled if need be). The asking side
//! sends a session ID and a fresh X25519 public key, the other answers with
//! its own; HKDF-SHA256 over the shared secret, bound to the session ID and
//! both node IDs, gives one key per direction. The secrets are dropped at
//! once, so a later theft of either node's identity key reveals nothing.

use std::time::Duration;

use libp2p::request_response::{self, OutboundRequestId};
use libp2p::{PeerId, StreamProtocol};
use p2p_common::id::NodeId;
use serde::{Deserialize, Serialize};
use x25519_dalek::{EphemeralSecret, PublicKey};

use super::Reply;
use super::event_loop::EventLoop;
use crate::e2e::SessionKeys;
use crate::identity::node_id_of;
use crate::trust::kx::parse_public;

pub const PROTOCOL: &str = "/p2p-nos/e2e/1.0.0";
const SALT: &[u8] = b"p2p-nos/e2e/v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRequest {
    pub session: u64,
    /// X25519 public key, hex.
    pub ephemeral: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionResponse {
    pub ephemeral: Option<String>,
    pub reason: Option<String>,
}

pub type Behaviour = request_response::json::Behaviour<SessionRequest, SessionResponse>;

pub fn behaviour() -> Behaviour {
    let cfg = request_response::Config::default().with_request_timeout(Duration::from_secs(5));
    Behaviour::new([(StreamProtocol::new(PROTOCOL), request_response::ProtocolSupport::Full)], cfg)
}

/// (asker → answerer key, answerer → asker key) of session `session`.
pub fn derive(shared: &[u8; 32], session: u64, asker: &NodeId, answerer: &NodeId) -> ([u8; 32], [u8; 32]) {
    let mut info = b"p2p-nos e2e keys".to_vec();
    info.extend_from_slice(&session.to_be_bytes());
    info.extend_from_slice(&asker.0);
    info.extend_from_slice(&answerer.0);
    let okm: [u8; 64] = crate::trust::kx::expand(SALT, shared, &info);
    (okm[..32].try_into().expect("32"), okm[32..].try_into().expect("32"))
}

/// Exchanges under way: their secret, session ID, peer and who waits.
pub(super) type Pending = std::collections::HashMap<OutboundRequestId, (EphemeralSecret, u64, PeerId, Reply<()>)>;

impl EventLoop {
    /// `send` needs a session with `peer`: starts the exchange; `reply`
    /// answers when the keys are in [`crate::e2e::Sessions`].
    pub(super) fn open_session(&mut self, peer: PeerId, reply: Reply<()>) {
        if peer == *self.swarm.local_peer_id() {
            let _ = reply.send(Err("that is this node".into()));
            return;
        }
        if self.book.get(&peer).is_some_and(|s| !s.member.admits()) {
            let _ = reply.send(Err(format!("{peer} is not a member of this network")));
            return;
        }
        let secret = EphemeralSecret::random();
        let public = PublicKey::from(&secret);
        let session: u64 = rand::random();
        let req = SessionRequest { session, ephemeral: hex::encode(public.as_bytes()) };
        let id = self.swarm.behaviour_mut().e2e.send_request(&peer, req);
        self.pending_sessions.insert(id, (secret, session, peer, reply));
    }

    /// The peer ID of a node ID this node knows (connected or in Kademlia's table).
    pub(super) fn known_peer_of(&mut self, node: &NodeId) -> Option<PeerId> {
        if let Some(p) = self.peer_of(node).first() {
            return Some(*p);
        }
        self.table().into_iter().find(|p| node_id_of(p) == *node)
    }

    pub(super) fn on_e2e(&mut self, e: request_response::Event<SessionRequest, SessionResponse>) {
        use request_response::{Event, Message};
        let me = node_id_of(self.swarm.local_peer_id());
        match e {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                let resp = match parse_public(&request.ephemeral) {
                    _ if self.book.get(&peer).is_some_and(|s| !s.member.admits()) => {
                        SessionResponse { ephemeral: None, reason: Some("not a member of this network".into()) }
                    }
                    None => SessionResponse { ephemeral: None, reason: Some("malformed request".into()) },
                    Some(theirs) => {
                        let secret = EphemeralSecret::random();
                        let public = PublicKey::from(&secret);
                        let shared = secret.diffie_hellman(&theirs);
                        let (from_them, to_them) = derive(shared.as_bytes(), request.session, &node_id_of(&peer), &me);
                        self.sessions.insert(SessionKeys { id: request.session, peer, tx: to_them, rx: from_them });
                        SessionResponse { ephemeral: Some(hex::encode(public.as_bytes())), reason: None }
                    }
                };
                let _ = self.swarm.behaviour_mut().e2e.send_response(channel, resp);
            }
            Event::Message { message: Message::Response { request_id, response }, .. } => {
                let Some((secret, session, peer, reply)) = self.pending_sessions.remove(&request_id) else { return };
                let Some(theirs) = response.ephemeral.as_deref().and_then(parse_public) else {
                    let why = response.reason.unwrap_or_else(|| "no key in the answer".into());
                    let _ = reply.send(Err(format!("{peer} refused an end-to-end session: {why}")));
                    return;
                };
                let shared = secret.diffie_hellman(&theirs);
                let (to_them, from_them) = derive(shared.as_bytes(), session, &me, &node_id_of(&peer));
                self.sessions.insert(SessionKeys { id: session, peer, tx: to_them, rx: from_them });
                let _ = reply.send(Ok(()));
            }
            Event::OutboundFailure { request_id, error, peer, .. } => {
                if let Some((_, _, _, reply)) = self.pending_sessions.remove(&request_id) {
                    let _ = reply.send(Err(format!("no end-to-end session with {peer}: {error}")));
                }
            }
            _ => {}
        }
    }
}
