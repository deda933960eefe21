//! The libp2p swarm: TCP and QUIC, Noise, Yamux; identify, ping, Kademlia
//! in server mode, mDNS and gossipsub.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, Swarm, allow_block_list, gossipsub, identify, kad, mdns, noise, ping, tcp, yamux};

use super::NetConfig;
use super::store::SharedStore;

/// identify's protocol version for p2p-nos nodes.
pub const IDENTIFY_PROTOCOL: &str = "/p2p-nos/1.0.0";

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Peers banned by reputation: their connections are refused.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub kad: kad::Behaviour<SharedStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub gossipsub: gossipsub::Behaviour,
    /// Indirect probes for the churn detector.
    pub probe: super::probes::Behaviour,
    /// Membership certificates (anchored networks only).
    pub member: Toggle<super::members::Behaviour>,
    /// Link keys for the overlay's hop-by-hop tags.
    pub link: super::links::Behaviour,
    /// End-to-end DATA sessions.
    pub e2e: super::sessions::Behaviour,
    /// Shards and manifests of stored objects.
    pub store: super::blobs::Behaviour,
}

/// Builds the swarm (no listeners yet).
pub fn build(keypair: &Keypair, cfg: &NetConfig, store: SharedStore) -> Result<Swarm<Behaviour>, String> {
    let protocol = StreamProtocol::try_from_owned(cfg.kad_protocol.clone())
        .map_err(|e| format!("--kad-protocol {:?}: {e} (it must start with '/')", cfg.kad_protocol))?;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| format!("TCP transport: {e}"))?
        .with_quic()
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mut kcfg = kad::Config::new(protocol);
            kcfg.set_replication_factor(cfg.replication);
            kcfg.set_kbucket_size(cfg.kbucket_size);
            kcfg.set_query_timeout(Duration::from_secs(30));
            kcfg.set_periodic_bootstrap_interval(Some(cfg.bootstrap_interval));
            if let Some(ttl) = cfg.record_ttl {
                kcfg.set_record_ttl(Some(ttl));
            }
            if let Some(i) = cfg.republish_interval {
                kcfg.set_publication_interval(Some(i));
            }
            // Records from others are validated before they are stored
            // (net::defense): a bad one is evidence for reputation.
            kcfg.set_record_filtering(kad::StoreInserts::FilterBoth);
            let mut kad = kad::Behaviour::with_config(peer, store, kcfg);
            // Without a confirmed external address kad stays a client and
            // answers nothing (DESIGN.md, libp2p facts).
            kad.set_mode(Some(kad::Mode::Server));

            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("p2p-nos/{}", env!("CARGO_PKG_VERSION")))
                    // Listening on 0.0.0.0 would announce 127.0.0.1: only the
                    // external addresses we add are announced.
                    .with_hide_listen_addrs(true)
                    .with_push_listen_addr_updates(true),
            );
            let mdns = if cfg.mdns {
                let mcfg = mdns::Config { query_interval: Duration::from_secs(30), ..Default::default() };
                Some(mdns::tokio::Behaviour::new(mcfg, peer)?)
            } else {
                None
            };
            let mut gcfg = gossipsub::ConfigBuilder::default();
            gcfg.heartbeat_interval(Duration::from_millis(500));
            if cfg.trust.is_some() {
                // Members only: each message is accepted by net::pubsub.
                gcfg.validate_messages();
            }
            let gcfg = gcfg.build().map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gcfg)
                .map_err(std::io::Error::other)?;
            // Gossipsub v1.1 peer scoring with libp2p's defaults; our own
            // evidence goes in as the application-specific score.
            gossipsub
                .with_peer_score(gossipsub::PeerScoreParams::default(), gossipsub::PeerScoreThresholds::default())
                .map_err(std::io::Error::other)?;
            Ok(Behaviour {
                blocked: Default::default(),
                kad,
                identify,
                ping: ping::Behaviour::default(),
                mdns: Toggle::from(mdns),
                gossipsub,
                probe: super::probes::behaviour(),
                member: Toggle::from(cfg.trust.is_some().then(super::members::behaviour)),
                link: super::links::behaviour(),
                e2e: super::sessions::behaviour(),
                store: super::blobs::behaviour(),
            })
        })
        .map_err(|e| format!("libp2p behaviour: {e}"))?
        // Connections to routing-table peers are what tells us quickly that
        // a peer went away (the connection closes, the redial fails): keep
        // them open instead of closing them after 10 s idle.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}
