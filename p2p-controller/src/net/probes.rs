//! Indirect probes for the churn detector (SWIM's PING-REQ) over libp2p
//! request-response (`/p2p-nos/probe/1.0.0`, JSON): when a peer misses a
//! direct PING, the liveness component names helpers; each is asked to
//! PING the peer's overlay endpoint itself and say whether it answered.
//! A peer that one helper still reaches is not suspected: the loss was on
//! our path, not the peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use p2p_common::codec::Packet;
use p2p_common::id::NodeId;
use p2p_common::wire::KIND_PING;
use tokio::sync::{mpsc, oneshot};

use super::event_loop::EventLoop;
use crate::overlay::monotonic_ns;

pub const PROTOCOL: &str = "/p2p-nos/probe/1.0.0";
/// How long a helper waits for the peer's PONG.
pub const HELPER_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProbeRequest {
    /// The node to PING (hex node ID) and its overlay endpoint.
    pub node_id: String,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProbeResponse {
    pub acked: bool,
    pub rtt_us: Option<u64>,
}

pub type Behaviour = request_response::json::Behaviour<ProbeRequest, ProbeResponse>;

pub fn behaviour() -> Behaviour {
    let protocol = libp2p::StreamProtocol::new(PROTOCOL);
    let cfg = request_response::Config::default().with_request_timeout(Duration::from_millis(500));
    Behaviour::new([(protocol, request_response::ProtocolSupport::Full)], cfg)
}

/// A helper's PING finished: the answer to send back.
pub type Answered = (ResponseChannel<ProbeResponse>, ProbeResponse);

/// Rounds this node asked for.
#[derive(Default)]
pub(super) struct Probes {
    /// Round → (reply to liveness, requests still out).
    rounds: HashMap<u64, (Option<oneshot::Sender<bool>>, usize)>,
    requests: HashMap<OutboundRequestId, u64>,
    next_round: u64,
    /// Asked by others, PINGs sent / acked.
    pub helped: u64,
    pub helped_acked: u64,
}

impl EventLoop {
    /// The liveness component wants `node` PINGed by `helpers`.
    pub(super) fn probe_indirectly(
        &mut self,
        node: NodeId,
        addr: SocketAddr,
        helpers: Vec<NodeId>,
        reply: oneshot::Sender<bool>,
    ) {
        let peers: Vec<libp2p::PeerId> = helpers.iter().filter_map(|h| self.routed_ids.get(h).copied()).collect();
        if peers.is_empty() {
            let _ = reply.send(false);
            return;
        }
        let round = self.probes.next_round;
        self.probes.next_round += 1;
        for p in &peers {
            let req = ProbeRequest { node_id: node.to_string(), addr };
            let id = self.swarm.behaviour_mut().probe.send_request(p, req);
            self.probes.requests.insert(id, round);
        }
        self.probes.rounds.insert(round, (Some(reply), peers.len()));
    }

    /// One helper's answer (or its failure, `acked: false`).
    fn probe_answered(&mut self, id: OutboundRequestId, acked: bool) {
        let Some(round) = self.probes.requests.remove(&id) else { return };
        let Some((reply, left)) = self.probes.rounds.get_mut(&round) else { return };
        *left -= 1;
        if acked && let Some(r) = reply.take() {
            let _ = r.send(true);
        }
        if *left == 0 {
            if let Some(r) = reply.take() {
                let _ = r.send(false);
            }
            self.probes.rounds.remove(&round);
        }
    }

    pub(super) fn on_probe(
        &mut self,
        e: request_response::Event<ProbeRequest, ProbeResponse>,
        done: &mpsc::Sender<Answered>,
    ) {
        use request_response::{Event, Message};
        match e {
            Event::Message { message: Message::Request { request, channel, .. }, peer, .. } => {
                // Only peers of ours may make us send PINGs.
                if !self.book.get(&peer).is_some_and(|s| s.speaks_kad && s.dead.is_none()) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .probe
                        .send_response(channel, ProbeResponse { acked: false, rtt_us: None });
                    return;
                }
                self.probes.helped += 1;
                let (overlay, done) = (self.overlay.clone(), done.clone());
                tokio::spawn(async move {
                    let resp = match request.node_id.parse::<NodeId>() {
                        Ok(target) => {
                            let ping = Packet::new(
                                KIND_PING,
                                overlay.node_id(),
                                target,
                                rand::random(),
                                monotonic_ns().to_be_bytes().to_vec(),
                            );
                            match overlay.request(&ping, request.addr, HELPER_TIMEOUT).await {
                                Ok((pong, rtt)) if pong.src_id == target => {
                                    ProbeResponse { acked: true, rtt_us: Some(rtt.as_micros() as u64) }
                                }
                                _ => ProbeResponse { acked: false, rtt_us: None },
                            }
                        }
                        Err(_) => ProbeResponse { acked: false, rtt_us: None },
                    };
                    let _ = done.send((channel, resp)).await;
                });
            }
            Event::Message { message: Message::Response { request_id, response }, .. } => {
                self.probe_answered(request_id, response.acked);
            }
            Event::OutboundFailure { request_id, .. } => self.probe_answered(request_id, false),
            Event::InboundFailure { .. } | Event::ResponseSent { .. } => {}
        }
    }

    /// A helper PING of ours finished: answer the asker.
    pub(super) fn probe_done(&mut self, (channel, resp): Answered) {
        self.probes.helped_acked += u64::from(resp.acked);
        let _ = self.swarm.behaviour_mut().probe.send_response(channel, resp);
    }
}
