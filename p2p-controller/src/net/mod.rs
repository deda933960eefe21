//! The control plane: one libp2p swarm per node (TCP and QUIC, Noise,
//! Yamux, identify, ping, Kademlia in server mode, mDNS, gossipsub) that
//! finds peers, learns their overlay endpoints and drives map sync.
//!
//! - [`behaviour`]: the composed behaviour and the swarm builder;
//! - [`event_loop`]: the task that owns the swarm and dispatches its events,
//!   the control API's commands and its tick to the concerns below;
//! - [`membership`]: connections, identify, who is routed to, deaths;
//! - [`dht`]: record puts and gets; [`pubsub`]: gossipsub topics;
//! - [`bootstrap`]: `--bootstrap` targets, their back-off, Kademlia bootstraps;
//! - [`peers`]: what we know of each peer (kad speaker, endpoint, dead);
//! - [`members`]: membership certificates in an anchored network;
//! - [`known`]: trust on first use of bootstrap addresses in open ones;
//! - [`links`]: link keys for the overlay's hop-by-hop tags;
//! - [`advert`]: the overlay endpoint advertisement (multiaddr codec);
//! - [`store`]: Kademlia's record store, shared with the LOOKUP answerer.
//!
//! Everything else talks to the task through [`NetHandle`].

pub mod advert;
pub mod behaviour;
mod blobs;
pub mod bootstrap;
mod defense;
mod dht;
mod event_loop;
pub mod known;
pub mod links;
mod members;
mod membership;
pub mod peers;
pub mod probes;
mod pubsub;
pub mod sessions;
pub mod store;

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::api::{DhtPut, NetStatus, PeerView, Published, PubsubMessage};
use crate::error::{Error, Result};
use crate::liveness::{self, LivenessHandle};
use crate::mapsync::MapSyncHandle;
use crate::overlay::OverlayHandle;
use crate::reputation::{self, ReputationHandle};
use crate::userspace::Peer;
pub use members::TrustConfig;

/// Default Kademlia protocol name (`--kad-protocol`).
pub const DEFAULT_KAD_PROTOCOL: &str = "/p2p-nos/kad/1.0.0";
/// Default libp2p port, TCP and QUIC (`--p2p-port`).
pub const DEFAULT_P2P_PORT: u16 = 9471;
/// Messages queued per local pub/sub subscriber.
pub const SUBSCRIBER_QUEUE: usize = 1024;

#[derive(Debug, Clone)]
pub struct NetConfig {
    pub kad_protocol: String,
    /// Copies of each record: the closest nodes that store it.
    pub replication: NonZeroUsize,
    /// Default quorum of `dht put`.
    pub quorum: NonZeroUsize,
    pub kbucket_size: NonZeroUsize,
    /// `None`: libp2p's default.
    pub record_ttl: Option<Duration>,
    pub republish_interval: Option<Duration>,
    pub bootstrap_interval: Duration,
    pub bootstrap: Vec<Multiaddr>,
    pub listen: Vec<Multiaddr>,
    pub mdns: bool,
    /// Addresses to advertise; empty: those of `ifaces`, or with no
    /// interfaces given, every usable address.
    pub advertise: Vec<IpAddr>,
    pub ifaces: Vec<String>,
    pub overlay_port: u16,
    /// The overlay socket's address when bound to one (`--listen IP`): only
    /// that address is advertised as an overlay endpoint.
    pub overlay_ip: Option<IpAddr>,
    /// `--peers`: always routed to, whatever Kademlia says.
    pub static_peers: Vec<Peer>,
    /// `--peers` entries' pre-shared link keys, by endpoint (fixed).
    pub static_links: crate::userspace::LinkTable,
    /// When a peer counts as flapping.
    pub flap: peers::FlapPolicy,
    /// Node IDs accepted from one /24 or /64.
    pub max_per_prefix: usize,
    /// `--trust-anchor`: only members are admitted (net::members).
    pub trust: Option<TrustConfig>,
    /// Open networks: bootstrap addresses pinned to the first peer ID seen.
    pub known_peers: Option<known::KnownPeers>,
    /// `--auth`: link keys are made unless off; required routes only to
    /// peers that have them.
    pub auth: crate::userspace::AuthPolicy,
    /// `--link-rotate`: how often link keys are renewed.
    pub link_rotate: Duration,
    /// Shards and manifests this node holds for others (crate::blobs).
    pub shards: Option<crate::blobs::ShardStore>,
}

/// The answer to a Kademlia get.
#[derive(Debug, Clone)]
pub struct GetResult {
    pub value: Option<Vec<u8>>,
    /// The peer that returned it; `None` for the local store.
    pub from: Option<PeerId>,
    pub elapsed: Duration,
    /// Who signed the record (verified); `None`: unsigned.
    pub publisher: Option<PeerId>,
}

pub(crate) type Reply<T> = oneshot::Sender<std::result::Result<T, String>>;

pub(crate) enum NetCommand {
    Status(oneshot::Sender<NetStatus>),
    View(oneshot::Sender<Vec<PeerView>>),
    Put {
        key: String,
        value: Vec<u8>,
        quorum: Option<NonZeroUsize>,
        reply: Reply<DhtPut>,
    },
    Get {
        key: String,
        network_only: bool,
        reply: Reply<GetResult>,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: Reply<Published>,
    },
    Subscribe {
        topic: String,
        tx: mpsc::Sender<PubsubMessage>,
        reply: Reply<()>,
    },
    /// Keys for end-to-end DATA with a peer (into crate::e2e::Sessions).
    OpenSession {
        peer: PeerId,
        reply: Reply<()>,
    },
    /// A storage request to `peer` (crate::blobs::proto).
    Store {
        peer: PeerId,
        request: crate::blobs::proto::StoreRequest,
        reply: Reply<crate::blobs::proto::StoreResponse>,
    },
    /// The peer ID of a node ID, if this node knows it.
    PeerOf {
        node: p2p_common::id::NodeId,
        reply: oneshot::Sender<Option<PeerId>>,
    },
    /// Close every connection (peers see the node leave at once, QUIC ones
    /// too), then stop the swarm.
    Shutdown(oneshot::Sender<()>),
}

/// Talks to the swarm task.
#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<NetCommand>,
}

fn gone() -> Error {
    Error::Remote("the control plane has stopped".into())
}

impl NetHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> NetCommand) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    pub async fn status(&self) -> Result<NetStatus> {
        self.ask(NetCommand::Status).await
    }

    pub async fn view(&self) -> Result<Vec<PeerView>> {
        self.ask(NetCommand::View).await
    }

    pub async fn put(&self, key: String, value: Vec<u8>, quorum: Option<NonZeroUsize>) -> Result<DhtPut> {
        self.ask(|reply| NetCommand::Put { key, value, quorum, reply }).await?.map_err(Error::Remote)
    }

    /// Kademlia's iterative get; `network_only` ignores the local store.
    pub async fn get(&self, key: String, network_only: bool, timeout: Duration) -> Result<GetResult> {
        let fut = self.ask(|reply| NetCommand::Get { key, network_only, reply });
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r?.map_err(Error::Remote),
            Err(_) => Err(Error::Remote(format!("Kademlia get: no answer within {} ms", timeout.as_millis()))),
        }
    }

    pub async fn publish(&self, topic: String, data: Vec<u8>) -> Result<Published> {
        self.ask(|reply| NetCommand::Publish { topic, data, reply }).await?.map_err(Error::Remote)
    }

    /// Makes an end-to-end session with `peer` (dialling it if need be).
    pub async fn open_session(&self, peer: PeerId, timeout: Duration) -> Result<()> {
        let fut = self.ask(|reply| NetCommand::OpenSession { peer, reply });
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r?.map_err(Error::Remote),
            Err(_) => {
                Err(Error::Remote(format!("no end-to-end session with {peer} within {} ms", timeout.as_millis())))
            }
        }
    }

    /// Sends a storage request to `peer` (dialled if need be).
    pub async fn store(
        &self,
        peer: PeerId,
        request: crate::blobs::proto::StoreRequest,
    ) -> Result<crate::blobs::proto::StoreResponse> {
        self.ask(|reply| NetCommand::Store { peer, request, reply }).await?.map_err(Error::Remote)
    }

    /// The peer ID of node `node`, if this node knows it.
    pub async fn peer_of(&self, node: p2p_common::id::NodeId) -> Result<Option<PeerId>> {
        self.ask(|reply| NetCommand::PeerOf { node, reply }).await
    }

    /// Leaves the network gracefully: waits (at most `timeout`) until every
    /// connection is closed and the swarm has stopped.
    pub async fn shutdown(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.ask(NetCommand::Shutdown)).await;
    }

    /// Messages of `topic` for a local subscriber. A subscriber that falls
    /// [`SUBSCRIBER_QUEUE`] messages behind loses the newest ones (counted in
    /// `status.pubsub.dropped`) rather than growing the daemon's memory.
    pub async fn subscribe(&self, topic: String) -> Result<mpsc::Receiver<PubsubMessage>> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        self.ask(|reply| NetCommand::Subscribe { topic, tx, reply }).await?.map_err(Error::Remote)?;
        Ok(rx)
    }
}

/// What the swarm task is wired to.
pub struct Links {
    pub sync: MapSyncHandle,
    /// Kademlia's records (shared with the LOOKUP answerer).
    pub store: store::SharedStore,
    /// Verdicts and requests of the liveness component.
    pub liveness: mpsc::Receiver<liveness::Event>,
    /// Told of the deaths found here (refused redials).
    pub liveness_handle: LivenessHandle,
    /// Indirect probes PING through it.
    pub overlay: OverlayHandle,
    pub reputation: ReputationHandle,
    /// Bans to carry out.
    pub bans: mpsc::Receiver<reputation::Event>,
    /// End-to-end session keys (the exchange puts them there).
    pub sessions: crate::e2e::Sessions,
    /// `--metrics`: libp2p's own metrics, recorded from the swarm's events.
    pub metrics: Option<libp2p::metrics::Metrics>,
}

/// Builds the swarm, starts listening and spawns its task.
pub fn spawn(keypair: &Keypair, cfg: NetConfig, links: Links) -> Result<NetHandle> {
    let swarm = behaviour::build(keypair, &cfg, links.store.clone()).map_err(Error::Usage)?;
    let (tx, rx) = mpsc::channel(64);
    let lp = event_loop::EventLoop::new(
        swarm,
        cfg,
        links.sync,
        links.store,
        links.overlay,
        links.liveness_handle,
        links.reputation,
        links.sessions,
    )?;
    let mut lp = lp;
    lp.dht.signer = Some(keypair.clone());
    lp.metrics = links.metrics;
    tokio::spawn(lp.run(rx, links.liveness, links.bans));
    Ok(NetHandle { tx })
}
