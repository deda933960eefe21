//! The swarm's side of storage (`/p2p-nos/store/1.0.0`, crate::blobs):
//! answers other nodes' shard and manifest requests from this node's
//! [`ShardStore`], and sends the storage component's requests. Members
//! only, in an anchored network.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::request_response::{self, OutboundRequestId};
use libp2p::{PeerId, StreamProtocol};

use super::Reply;
use super::event_loop::EventLoop;
use crate::blobs::ShardStore;
use crate::blobs::proto::{PROTOCOL, StoreRequest, StoreResponse};

pub type Behaviour = request_response::cbor::Behaviour<StoreRequest, StoreResponse>;

/// A shard (≤ 4 MiB with the default segment) crosses a slow link in this.
const TIMEOUT: Duration = Duration::from_secs(20);

pub fn behaviour() -> Behaviour {
    let cfg = request_response::Config::default().with_request_timeout(TIMEOUT);
    Behaviour::new([(StreamProtocol::new(PROTOCOL), request_response::ProtocolSupport::Full)], cfg)
}

/// The storage concern's state in the swarm task.
pub(super) struct Blobs {
    pub(super) disk: Option<ShardStore>,
    pending: HashMap<OutboundRequestId, Reply<StoreResponse>>,
}

impl Blobs {
    pub(super) fn new(disk: Option<ShardStore>) -> Blobs {
        Blobs { disk, pending: HashMap::new() }
    }
}

/// What a manifest's JSON claims, read without the storage component's
/// types (it validates the rest when it uses one).
struct Header {
    cid: String,
    revision: u64,
    owner: String,
    /// A tombstone (the object was removed).
    removed: bool,
}

fn manifest_header(bytes: &[u8]) -> Option<Header> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Some(Header {
        cid: v["cid"].as_str()?.to_string(),
        revision: v["revision"].as_u64()?,
        owner: v["owner"].as_str()?.to_string(),
        removed: v["removed"].as_bool().unwrap_or(false),
    })
}

impl EventLoop {
    pub(super) fn store_request(&mut self, peer: PeerId, request: StoreRequest, reply: Reply<StoreResponse>) {
        if self.book.get(&peer).is_some_and(|s| !s.member.admits()) {
            let _ = reply.send(Err(format!("{peer} is not a member of this network")));
            return;
        }
        let id = self.swarm.behaviour_mut().store.send_request(&peer, request);
        self.blobs.pending.insert(id, reply);
    }

    fn answer_store(&self, peer: &PeerId, request: StoreRequest) -> StoreResponse {
        let Some(disk) = &self.blobs.disk else { return StoreResponse::Refused("this node stores nothing".into()) };
        if self.book.get(peer).is_some_and(|s| !s.member.admits()) {
            return StoreResponse::Refused("not a member of this network".into());
        }
        match request {
            StoreRequest::PutShard { object, cid, data } => match disk.put_shard(object.as_ref(), &cid, &data) {
                Ok(()) => StoreResponse::Done,
                Err(e) => StoreResponse::Refused(e.to_string()),
            },
            StoreRequest::Hold { object, shards } => {
                for s in shards.iter().filter(|s| disk.has_shard(s)) {
                    if let Err(e) = disk.add_ref(s, &object) {
                        return StoreResponse::Refused(e.to_string());
                    }
                }
                StoreResponse::Done
            }
            StoreRequest::GetShard { cid } => match disk.get_shard(&cid) {
                Some(d) => StoreResponse::Data(d),
                None => StoreResponse::NotFound,
            },
            StoreRequest::PutManifest { object, manifest } => {
                let Some(new) = manifest_header(&manifest) else {
                    return StoreResponse::Refused("malformed manifest".into());
                };
                if new.cid != object.to_string() {
                    return StoreResponse::Refused(format!("the manifest is of {}, not {object}", new.cid));
                }
                if let Some(held) = disk.get_manifest(&object).as_deref().and_then(manifest_header) {
                    // After a tombstone, anyone may put the object again.
                    if held.owner != new.owner && !held.removed {
                        return StoreResponse::Refused(format!("{object} belongs to {}", held.owner));
                    }
                    // Ours is newer, or a tombstone of the same revision: keep it.
                    if (held.revision, held.removed) > (new.revision, new.removed) {
                        return StoreResponse::Done;
                    }
                }
                match disk.put_manifest(&object, &manifest) {
                    Ok(()) => StoreResponse::Done,
                    Err(e) => StoreResponse::Refused(e.to_string()),
                }
            }
            StoreRequest::GetManifest { object } => match disk.get_manifest(&object) {
                Some(m) => StoreResponse::Data(m),
                None => StoreResponse::NotFound,
            },
            StoreRequest::Remove { object, shards } => {
                let held = disk.get_manifest(&object).as_deref().and_then(manifest_header);
                if let Some(h) = &held
                    && h.owner != peer.to_string()
                {
                    return StoreResponse::Refused(format!("only its owner {} may remove {object}", h.owner));
                }
                // A tombstone stays (the owner sends it to the manifest's holders).
                if !held.is_some_and(|h| h.removed) {
                    disk.remove_manifest(&object);
                }
                for s in shards {
                    disk.release(&s, &object);
                }
                StoreResponse::Done
            }
        }
    }

    pub(super) fn on_store(&mut self, e: request_response::Event<StoreRequest, StoreResponse>) {
        use request_response::{Event, Message};
        match e {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                let resp = self.answer_store(&peer, request);
                let _ = self.swarm.behaviour_mut().store.send_response(channel, resp);
            }
            Event::Message { message: Message::Response { request_id, response }, .. } => {
                if let Some(reply) = self.blobs.pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure { request_id, error, peer, .. } => {
                if let Some(reply) = self.blobs.pending.remove(&request_id) {
                    let _ = reply.send(Err(format!("{peer}: {error}")));
                }
            }
            _ => {}
        }
    }
}
