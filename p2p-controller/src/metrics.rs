//! `run --metrics ADDR` (issue 11): `/metrics` in the OpenMetrics text
//! format, served by hyper. One registry holds libp2p's own metrics
//! (swarm, kad, identify, ping, gossipsub: recorded by the swarm task) and
//! this node's, which are read on each scrape from the components' handles
//! (the same figures `status` shows) and from the pinned STATS map (the
//! datapath's counters, in either datapath), so nothing here keeps a copy
//! that could drift. Names: `p2p_nos_…`, base units, counters `_total`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::api::Status;
use crate::control::Ctx;
use crate::error::{Error, Result};

/// What an OpenMetrics scraper expects.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything read for one scrape.
#[derive(Debug, Default)]
struct Snapshot {
    status: Option<Status>,
    /// Datapath counters by docs/WIRE.md name: packets, bytes.
    datapath: Vec<(&'static str, u64, u64)>,
    /// Bans in force by reason; blocks in force by who made them.
    bans: BTreeMap<String, u64>,
    blocks: BTreeMap<String, u64>,
}

/// Encodes the latest snapshot (taken just before the registry is encoded).
#[derive(Debug, Default, Clone)]
struct NodeCollector(Arc<Mutex<Snapshot>>);

/// A sample: a count, or a quantity in base units.
#[derive(Clone, Copy)]
enum Num {
    Count(u64),
    Real(f64),
}

impl From<u64> for Num {
    fn from(v: u64) -> Num {
        Num::Count(v)
    }
}
impl From<usize> for Num {
    fn from(v: usize) -> Num {
        Num::Count(v as u64)
    }
}
impl From<f64> for Num {
    fn from(v: f64) -> Num {
        Num::Real(v)
    }
}

fn sample(m: &mut prometheus_client::encoding::MetricEncoder, kind: MetricType, v: Num) -> std::fmt::Result {
    match (kind, v) {
        (MetricType::Counter, Num::Count(v)) => m.encode_counter::<NoLabelSet, _, f64>(&v, None),
        (MetricType::Counter, Num::Real(v)) => m.encode_counter::<NoLabelSet, _, f64>(&v, None),
        (_, Num::Count(v)) => m.encode_gauge(&v),
        (_, Num::Real(v)) => m.encode_gauge(&v),
    }
}

/// A metric with no labels.
fn single(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    v: impl Into<Num>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, kind)?;
    sample(&mut m, kind, v.into())
}

/// A histogram in seconds from one counted in `scale` seconds.
fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &crate::api::Histogram,
    scale: f64,
) -> std::fmt::Result {
    let mut buckets: Vec<(f64, u64)> =
        h.bounds.iter().map(|b| *b as f64 * scale).zip(h.counts.iter().copied()).collect();
    buckets.push((f64::INFINITY, h.counts.get(h.bounds.len()).copied().unwrap_or(0)));
    let mut m = e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(h.sum as f64 * scale, h.count, &buckets, None)
}

/// One metric per label value.
fn labelled<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, Num)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, kind)?;
    for (value, v) in values {
        let labels = [(label, value)];
        let mut f = m.encode_family(&labels)?;
        sample(&mut f, kind, v)?;
    }
    Ok(())
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let snap = self.0.lock().expect("not poisoned");
        let seconds = Some(&Unit::Seconds);
        let bytes = Some(&Unit::Bytes);
        labelled(
            &mut e,
            "p2p_nos_datapath_packets",
            "Packets by datapath verdict (docs/WIRE.md counter names)",
            None,
            Counter,
            "counter",
            snap.datapath.iter().map(|(n, p, _)| (*n, Num::from(*p))),
        )?;
        labelled(
            &mut e,
            "p2p_nos_datapath",
            "Bytes by datapath verdict",
            bytes,
            Counter,
            "counter",
            snap.datapath.iter().map(|(n, _, b)| (*n, Num::from(*b))),
        )?;
        labelled(
            &mut e,
            "p2p_nos_bans",
            "Reputation and operator bans in force, by reason",
            None,
            Gauge,
            "reason",
            snap.bans.iter().map(|(r, n)| (r.as_str(), Num::from(*n))),
        )?;
        labelled(
            &mut e,
            "p2p_nos_blocks",
            "Blocks in the kernel's block maps, by who made them",
            None,
            Gauge,
            "by",
            snap.blocks.iter().map(|(r, n)| (r.as_str(), Num::from(*n))),
        )?;
        let Some(s) = &snap.status else { return Ok(()) };
        {
            let mut m = e.encode_descriptor("p2p_nos_node", "This node", None, MetricType::Info)?;
            let labels = [
                ("instance_name", s.instance.as_str()),
                ("peer_id", s.peer_id.as_str()),
                ("node_id", s.node_id.as_str()),
                ("datapath", s.datapath.as_str()),
                ("version", env!("CARGO_PKG_VERSION")),
            ];
            m.encode_info(&labels)?;
        }
        single(&mut e, "p2p_nos_uptime", "Time since the daemon started", seconds, Gauge, s.uptime_s)?;
        let l = &s.liveness;
        labelled(
            &mut e,
            "p2p_nos_peers",
            "Peers by the churn detector's state",
            None,
            Gauge,
            "state",
            [("alive", l.alive.into()), ("suspect", l.suspect.into()), ("dead", l.dead.into())],
        )?;
        single(&mut e, "p2p_nos_routed_peers", "Peers in the datapath's maps", None, Gauge, s.peers)?;
        single(&mut e, "p2p_nos_connected_peers", "libp2p connections' peers", None, Gauge, s.net.connected_peers)?;
        single(&mut e, "p2p_nos_kad_peers", "Peers in Kademlia's routing table", None, Gauge, s.kad_peers)?;
        histogram(
            &mut e,
            "p2p_nos_detection_latency",
            "From a peer's last sign of life to its death being declared",
            &(&l.detection).into(),
            1e-3,
        )?;
        let ms = &s.map_sync;
        single(&mut e, "p2p_nos_map_sync_updates", "Routing changes applied to the maps", None, Counter, ms.updates)?;
        single(&mut e, "p2p_nos_map_sync_errors", "Map updates that failed", None, Counter, ms.errors)?;
        single(
            &mut e,
            "p2p_nos_map_sync_slow_updates",
            "Map updates that took longer than 100 ms",
            None,
            Counter,
            ms.over_100ms,
        )?;
        single(
            &mut e,
            "p2p_nos_map_sync_last_latency",
            "From the latest routing-table change to the maps being live",
            seconds,
            Gauge,
            ms.last_us as f64 / 1e6,
        )?;
        histogram(
            &mut e,
            "p2p_nos_map_sync_latency",
            "From a routing-table change to the maps being live",
            &ms.latency_us,
            1e-6,
        )?;
        single(
            &mut e,
            "p2p_nos_map_sync_max_latency",
            "The slowest map update",
            seconds,
            Gauge,
            ms.max_us as f64 / 1e6,
        )?;
        if s.kernel.max_peers > 0 {
            labelled(
                &mut e,
                "p2p_nos_bpf_map_pressure",
                "Fill ratio of a BPF map (entries / max_entries)",
                None,
                Gauge,
                "map_name",
                [(p2p_common::maps::PEERS, Num::Real(s.peers as f64 / s.kernel.max_peers as f64))],
            )?;
        }
        single(
            &mut e,
            "p2p_nos_lookups_answered",
            "LOOKUPs this node answered as the key's owner",
            None,
            Counter,
            s.overlay.lookups_answered,
        )?;
        single(
            &mut e,
            "p2p_nos_lookups_refused_unauthenticated",
            "LOOKUPs not answered because they carried no valid tag",
            None,
            Counter,
            s.overlay.lookups_refused_unauthenticated,
        )?;
        single(
            &mut e,
            "p2p_nos_slow_path",
            "Packets the userspace slow path handled",
            None,
            Counter,
            s.overlay.slow_path,
        )?;
        let a = &s.net.auth;
        single(&mut e, "p2p_nos_link_keys_peers", "Peers with link keys in both directions", None, Gauge, a.linked)?;
        single(
            &mut e,
            "p2p_nos_link_key_exchanges",
            "Link-key exchanges completed (rotations included)",
            None,
            Counter,
            a.exchanges,
        )?;
        single(&mut e, "p2p_nos_link_key_refusals", "Link-key exchanges peers refused", None, Counter, a.refused)?;
        let st = &s.store;
        histogram(
            &mut e,
            "p2p_nos_store_repair_duration",
            "How long repairs made by this node took",
            &st.repair_ms,
            1e-3,
        )?;
        single(&mut e, "p2p_nos_store_shards", "Shards held here", None, Gauge, st.shards)?;
        single(
            &mut e,
            "p2p_nos_store_used",
            "Bytes of shards and cached segments held here",
            bytes,
            Gauge,
            st.used_bytes,
        )?;
        single(&mut e, "p2p_nos_store_quota", "--store-quota", bytes, Gauge, st.quota_bytes)?;
        single(&mut e, "p2p_nos_store_manifests", "Manifests held here", None, Gauge, st.manifests)?;
        single(&mut e, "p2p_nos_store_repairs", "Objects repaired by this node", None, Counter, st.repairs)?;
        single(
            &mut e,
            "p2p_nos_store_repaired_shards",
            "Shards rebuilt and placed by this node",
            None,
            Counter,
            st.repaired_shards,
        )?;
        single(
            &mut e,
            "p2p_nos_store_corrupt_shards",
            "Shards found corrupt on this node's disk",
            None,
            Counter,
            st.corrupt_shards,
        )?;
        single(
            &mut e,
            "p2p_nos_store_lost_segments",
            "Segments found with fewer than k shards",
            None,
            Counter,
            st.lost_segments,
        )?;
        single(
            &mut e,
            "p2p_nos_store_collected_shards",
            "Shard copies dropped as beyond policy",
            None,
            Counter,
            st.collected_shards,
        )?;
        single(&mut e, "p2p_nos_store_cached_segments", "Hot segments cached here", None, Gauge, st.cached_segments)?;
        single(
            &mut e,
            "p2p_nos_store_cache_hits",
            "Segment reads served from the cache",
            None,
            Counter,
            st.cache_hits,
        )?;
        Ok(())
    }
}

/// The listener is bound before anything is set up, so that a taken or
/// foreign address fails the start cleanly.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::Usage(format!("--metrics {addr}: cannot listen: {e}")))
}

/// Serves `/metrics` on `listener` from `registry` (libp2p's metrics
/// already in it) and `ctx`'s handles; `pin_dir` holds the STATS map.
pub fn serve(listener: tokio::net::TcpListener, mut registry: Registry, ctx: Ctx, pin_dir: PathBuf) {
    let collector = NodeCollector::default();
    registry.register_collector(Box::new(collector.clone()));
    let shared = Arc::new(Scrape { registry, collector, ctx, pin_dir, lock: tokio::sync::Mutex::new(()) });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(shared.answer(req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                    log::debug!("metrics: connection: {e}");
                }
            });
        }
    });
}

struct Scrape {
    registry: Registry,
    collector: NodeCollector,
    ctx: Ctx,
    pin_dir: PathBuf,
    /// One scrape at a time (the snapshot is shared).
    lock: tokio::sync::Mutex<()>,
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

impl Scrape {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics or /ready\n".into());
        }
        match req.uri().path() {
            "/metrics" => {}
            // For probes (Kubernetes): 200 once every routed peer answered
            // (`status.ready`), 503 before.
            "/ready" => {
                return match crate::control::status(&self.ctx).await {
                    Ok(s) if s.ready => text(StatusCode::OK, format!("ready: {} peers routed\n", s.peers)),
                    Ok(s) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {} of {} routed peers answered\n", s.peers_answered, s.peers),
                    ),
                    Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
                };
            }
            _ => return text(StatusCode::NOT_FOUND, "not found: this server has /metrics and /ready\n".into()),
        }
        let _one = self.lock.lock().await;
        *self.collector.0.lock().expect("not poisoned") = self.snapshot().await;
        let mut body = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &self.registry) {
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the metrics failed: {e}\n"));
        }
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT_TYPE));
        r
    }

    async fn snapshot(&self) -> Snapshot {
        let status = crate::control::status(&self.ctx).await.map_err(|e| log::warn!("metrics: status: {e}")).ok();
        let datapath = crate::dataplane::PinnedMaps::open(&self.pin_dir)
            .and_then(|m| m.stats())
            .map(|c| p2p_common::counters::COUNTER_NAMES.iter().zip(c).map(|(n, c)| (*n, c.packets, c.bytes)).collect())
            .unwrap_or_else(|e| {
                log::debug!("metrics: datapath counters: {e}");
                Vec::new()
            });
        let rep = self.ctx.reputation.view().await;
        let mut bans = BTreeMap::new();
        let mut blocks = BTreeMap::new();
        for b in &rep.blocks {
            *bans.entry(b.ban.reason.clone()).or_default() += 1;
            *blocks.entry(b.by.clone()).or_default() += 1;
        }
        Snapshot { status, datapath, bans, blocks }
    }
}
