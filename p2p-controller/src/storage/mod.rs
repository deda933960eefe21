//! Durable storage (issue 9; README "Storage"): objects split into
//! segments, each erasure-coded into shards placed on the nodes closest to
//! the segment's hash, a manifest on the nodes closest to the object's CID,
//! every shard verified on every read, and repair: every second the
//! responsible node of each object (the live manifest holder closest to
//! its CID) rebuilds the shards whose holders are gone, dead to the churn
//! detector or disconnected, and places them on new nodes.
//!
//! [`Storage`] is cloned into the control API's handlers; it talks to the
//! swarm through [`NetHandle`] (requests to other nodes) and reads the
//! churn detector's view through [`LivenessHandle`].
//!
//! Popularity: a node that serves `get` counts how often each segment is
//! read through it; a segment read [`CachePolicy::hot_reads`] times within
//! [`HOT_WINDOW`] is kept whole in its cache (near its readers: here), and
//! later reads come from there, verified; a cached segment not read for
//! [`CachePolicy::cool`] is dropped.

pub mod erasure;
pub mod manifest;
pub mod placement;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::PeerId;
use p2p_common::id::NodeId;

use crate::api::{StoreObject, StorePut, StoreSegmentStatus, StoreShardStatus, StoreStatus};
use crate::blobs::proto::{StoreRequest, StoreResponse};
use crate::blobs::{Cid, ShardStore};
use crate::error::{Error, Result};
use crate::identity::node_id_of;
use crate::liveness::LivenessHandle;
use crate::net::NetHandle;
use crate::reputation::{Evidence, ReputationHandle, Subject};
use erasure::Redundancy;
use manifest::{Manifest, Segment, Shard};
use placement::Candidate;

/// Bytes per segment the CLI sends (and the most a segment may have).
pub const SEGMENT_SIZE: usize = 1 << 20;
pub const MAX_SEGMENT: usize = 4 << 20;
/// How often the repair sweep runs.
const SWEEP: Duration = Duration::from_secs(1);
/// Uploads idle this long are dropped.
const UPLOAD_IDLE: Duration = Duration::from_secs(300);
/// How often garbage is collected; the responsible node sends its
/// manifest to the holders every `REFRESH_EVERY` sweeps.
const GC_EVERY: Duration = Duration::from_secs(5);
const REFRESH_EVERY: u64 = 10;
/// A node asked for a manifest answers within this (a peer that died but
/// is not yet declared dead must not stall a read or a repair).
const MANIFEST_WAIT: Duration = Duration::from_secs(2);
/// The same for a shard: past this, a read asks another holder or shard.
const SHARD_WAIT: Duration = Duration::from_secs(5);
/// A shard is collected only this long after it was last written (a
/// repair's new holder gets its shard before the manifest that names it).
const GC_GRACE: Duration = Duration::from_secs(10);
/// A shard no object claimed (its put never ended) goes after this long.
const UNCLAIMED_GRACE: Duration = Duration::from_secs(600);
/// An object degraded this long is repaired by any holder of its manifest.
/// An object degraded this long, plus [`TAKEOVER_PER_SEGMENT`] for each
/// of its segments (the time its responsible node may need to rebuild
/// them: other holders joining a repair in progress only slow it down),
/// is repaired by any holder of its manifest.
const TAKEOVER: Duration = Duration::from_secs(2);
const TAKEOVER_PER_SEGMENT: Duration = Duration::from_millis(20);
/// How long a manifest read for `get` or `status` is reused.
const MANIFEST_TTL: Duration = Duration::from_millis(500);
/// A node declared dead this recently is a poor holder (placed on last).
const FLAKY: Duration = Duration::from_secs(600);
/// Reads of a segment counted for popularity within this window.
pub const HOT_WINDOW: Duration = Duration::from_secs(60);
/// Buckets of the repair-time histogram, ms (the target is 5 s).
const REPAIR_BOUNDS_MS: [u64; 8] = [250, 500, 1_000, 2_000, 3_000, 5_000, 10_000, 30_000];
/// Segments a repair rebuilds at once.
const REPAIR_PARALLEL: usize = 8;
/// Nodes asked for an object's newest manifest: its closest (placement
/// puts at most `redundancy.total()` copies there, repair keeps them there).
const MANIFEST_ASK: usize = 8;
/// How long a tombstone (a removed object's manifest) is kept: a holder
/// away for longer may bring the object back.
const TOMBSTONE_KEEP: Duration = Duration::from_secs(24 * 3600);
/// A tombstone's revision is its object's plus this.
const TOMBSTONE_STEP: u64 = 1 << 32;

/// How far ahead of the first segment not yet received an upload's
/// segments may arrive (they are placed concurrently; the object's hash
/// takes them in order, so those ahead wait in memory).
pub const PUT_AHEAD: u64 = 8;

struct Upload {
    redundancy: Redundancy,
    /// The object's hash over segments 0..hashed.
    hasher: blake3::Hasher,
    hashed: u64,
    size: u64,
    segments: std::collections::BTreeMap<u64, Segment>,
    /// Placed segments after a gap, waiting to be hashed.
    unhashed: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Segments being placed.
    in_flight: HashSet<u64>,
    /// The index a segment sent without one gets.
    next: u64,
    touched: Instant,
}

/// When a segment read here is cached here, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    /// Reads within [`HOT_WINDOW`] that make a segment hot (0: never cache).
    pub hot_reads: u32,
    /// A cached segment not read for this long is dropped.
    pub cool: Duration,
}

#[derive(Default)]
struct Counters {
    repaired_shards: u64,
    repairs: u64,
    lost_segments: u64,
    last_repair_ms: Option<u64>,
    sweeps: u64,
    /// Shard copies dropped by garbage collection.
    collected: u64,
    repair_ms: crate::api::Histogram,
    /// Segment reads served from the cache; segments cached; dropped cool.
    cache_hits: u64,
    cached: u64,
    cooled: u64,
}

struct Inner {
    me: PeerId,
    node: NodeId,
    disk: ShardStore,
    net: NetHandle,
    liveness: LivenessHandle,
    reputation: ReputationHandle,
    uploads: Mutex<HashMap<u64, Upload>>,
    counters: Mutex<Counters>,
    /// Manifests recently read, for `get`'s segment requests.
    manifests: Mutex<HashMap<Cid, (Instant, Manifest)>>,
    /// Since when each object held here has needed repair.
    degraded: Mutex<HashMap<Cid, Instant>>,
    cache: CachePolicy,
    /// Recent `get` reads through this node, by segment hash.
    reads: Mutex<HashMap<Cid, Vec<Instant>>>,
}

/// Clones share one storage component.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

fn remote(e: impl std::fmt::Display) -> Error {
    Error::Remote(e.to_string())
}

impl Storage {
    /// Starts the repair sweep.
    pub fn spawn(
        me: PeerId,
        disk: ShardStore,
        net: NetHandle,
        liveness: LivenessHandle,
        reputation: ReputationHandle,
        cache: CachePolicy,
    ) -> Storage {
        let s = Storage {
            inner: Arc::new(Inner {
                me,
                node: node_id_of(&me),
                disk,
                net,
                liveness,
                reputation,
                uploads: Mutex::new(HashMap::new()),
                counters: Mutex::new(Counters {
                    repair_ms: crate::api::Histogram::new(&REPAIR_BOUNDS_MS),
                    ..Counters::default()
                }),
                manifests: Mutex::new(HashMap::new()),
                degraded: Mutex::new(HashMap::new()),
                cache,
                reads: Mutex::new(HashMap::new()),
            }),
        };
        let sweeper = s.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(SWEEP);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                sweeper.sweep().await;
            }
        });
        // Garbage collection asks other nodes for manifests: its own task,
        // so that a slow answer never holds up a repair.
        let collector = s.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(GC_EVERY);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t.tick().await;
            loop {
                t.tick().await;
                collector.collect_garbage().await;
            }
        });
        s
    }

    fn me(&self) -> String {
        self.inner.me.to_string()
    }

    /// Live nodes that may hold something: this one and every peer that
    /// is connected or routed to, unless the churn detector calls it dead;
    /// poor (placed on last) if banned, suspect, or dead within [`FLAKY`].
    async fn candidates(&self) -> Vec<Candidate> {
        let mut out = vec![Candidate { peer: self.me(), node: self.inner.node, ip: None, poor: false }];
        let Ok(view) = self.inner.net.view().await else { return out };
        let live = self.inner.liveness.view().await;
        for p in view {
            let (Some(peer), Ok(node)) = (p.peer_id.clone(), p.node_id.parse::<NodeId>()) else { continue };
            if !(p.connected || p.routable) || live.get(&node).is_some_and(|l| l.state == "dead") {
                continue;
            }
            let ip = p.overlay.as_deref().and_then(|o| o.parse::<SocketAddr>().ok()).map(|a| a.ip());
            let flaky = live.get(&node).is_some_and(|l| {
                l.state == "suspect" || l.last_death_ms.is_some_and(|ms| Duration::from_millis(ms) < FLAKY)
            });
            out.push(Candidate { peer, node, ip, poor: p.state.contains("banned") || flaky });
        }
        out
    }

    async fn send(&self, peer: &str, request: StoreRequest) -> std::result::Result<StoreResponse, String> {
        let id: PeerId = peer.parse().map_err(|e| format!("peer {peer}: {e}"))?;
        self.inner.net.store(id, request).await.map_err(|e| e.to_string())
    }

    /// Puts a shard of `object` (None: still being put) on `peer` (this
    /// node: its own disk).
    async fn put_shard(
        &self,
        peer: &str,
        object: Option<Cid>,
        cid: Cid,
        data: Vec<u8>,
    ) -> std::result::Result<(), String> {
        if peer == self.me() {
            return self.inner.disk.put_shard(object.as_ref(), &cid, &data).map_err(|e| e.to_string());
        }
        match self.send(peer, StoreRequest::PutShard { object, cid, data }).await? {
            StoreResponse::Done => Ok(()),
            StoreResponse::Refused(why) => Err(why),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// The shard from one of its live holders, verified; and the live
    /// holders that did not have it intact (to be given it again).
    async fn fetch_shard(&self, shard: &Shard, live: &HashSet<String>) -> (Option<Vec<u8>>, Vec<String>) {
        let mut failed = Vec::new();
        for h in shard.holders.iter().filter(|h| live.contains(*h)) {
            if *h == self.me() {
                match self.inner.disk.get_shard(&shard.cid) {
                    Some(d) => return (Some(d), failed),
                    None => failed.push(h.clone()),
                }
                continue;
            }
            let answer = tokio::time::timeout(SHARD_WAIT, self.send(h, StoreRequest::GetShard { cid: shard.cid }));
            match answer.await.unwrap_or_else(|_| Err(format!("{h}: no answer within {SHARD_WAIT:?}"))) {
                Ok(StoreResponse::Data(d)) if Cid::of(&d) == shard.cid => return (Some(d), failed),
                Ok(StoreResponse::Data(_)) => {
                    // An honest holder checks its copy before sending it.
                    log::warn!("store: {h} answered shard {} with wrong bytes (reputation evidence)", shard.cid);
                    if let Ok(p) = h.parse::<PeerId>() {
                        self.inner.reputation.report(Subject::Node(node_id_of(&p)), Evidence::BadShard, 1);
                    }
                    failed.push(h.clone());
                }
                Ok(StoreResponse::NotFound) => failed.push(h.clone()),
                _ => {}
            }
        }
        (None, failed)
    }

    /// The segment, from any `needed()` of its shards (data shards first,
    /// fetched concurrently, more asked for as some fail); checked against
    /// its hash.
    async fn read_segment(&self, m: &Manifest, seg: &Segment, live: &HashSet<String>) -> Result<Vec<u8>> {
        let need = m.redundancy.needed();
        let mut have: Vec<Option<Vec<u8>>> = vec![None; seg.shards.len()];
        // Live holders whose copy was missing or corrupt, by shard.
        let mut lacking: Vec<(usize, Vec<String>)> = Vec::new();
        let mut next = 0;
        let mut got = 0;
        while got < need && next < seg.shards.len() {
            let batch: Vec<usize> = (next..seg.shards.len()).take(need - got).collect();
            next += batch.len();
            let fetched =
                futures::future::join_all(batch.iter().map(|&j| self.fetch_shard(&seg.shards[j], live))).await;
            for (j, (d, failed)) in batch.into_iter().zip(fetched) {
                if d.is_some() {
                    got += 1;
                }
                if !failed.is_empty() {
                    lacking.push((j, failed));
                }
                have[j] = d;
            }
        }
        if got < need {
            return Err(Error::Remote(format!(
                "segment {} of {}: only {got} of {} shards could be read, {need} needed: the object cannot be \
                 rebuilt now (too many holders unreachable; `store status {}` shows which)",
                seg.index,
                m.cid,
                seg.shards.len(),
                m.cid
            )));
        }
        let data = erasure::decode(m.redundancy, seg.size as usize, &have).map_err(remote)?;
        if Cid::of(&data) != seg.hash {
            return Err(Error::Remote(format!(
                "segment {} of {}: rebuilt bytes do not match its hash",
                seg.index, m.cid
            )));
        }
        if !lacking.is_empty() {
            self.read_repair(m, seg, &data, lacking).await;
        }
        Ok(data)
    }

    /// Read repair: live holders found without an intact copy of a shard
    /// (deleted, or corrupt and so deleted on read) get it again, rebuilt
    /// from the segment just read.
    async fn read_repair(&self, m: &Manifest, seg: &Segment, data: &[u8], lacking: Vec<(usize, Vec<String>)>) {
        let Ok(all) = erasure::encode(m.redundancy, data) else { return };
        for (j, holders) in lacking {
            let (Some(shard), Some(want)) = (all.get(j), seg.shards.get(j)) else { continue };
            if Cid::of(shard) != want.cid {
                continue;
            }
            for h in holders {
                match self.put_shard(&h, Some(m.cid), want.cid, shard.clone()).await {
                    Ok(()) => {
                        log::info!("store: shard {j} of segment {} of {} given again to {h}", seg.index, m.cid);
                        self.inner.counters.lock().expect("not poisoned").repaired_shards += 1;
                    }
                    Err(e) => log::warn!("store: read repair of shard {} on {h}: {e}", want.cid),
                }
            }
        }
    }

    fn live_set(cands: &[Candidate]) -> HashSet<String> {
        cands.iter().map(|c| c.peer.clone()).collect()
    }

    // ---------------------------------------------------------------- put

    pub fn put_begin(&self, redundancy: Redundancy) -> u64 {
        let id: u64 = rand::random();
        let mut uploads = self.inner.uploads.lock().expect("not poisoned");
        uploads.retain(|_, u| u.touched.elapsed() < UPLOAD_IDLE);
        uploads.insert(
            id,
            Upload {
                redundancy,
                hasher: blake3::Hasher::new(),
                hashed: 0,
                size: 0,
                segments: Default::default(),
                unhashed: Default::default(),
                in_flight: HashSet::new(),
                next: 0,
                touched: Instant::now(),
            },
        );
        id
    }

    /// Encodes and places segment `index` (None: the one after the last
    /// sent) of upload `id`; segments may arrive out of order, up to
    /// [`PUT_AHEAD`] ahead, and be placed concurrently.
    pub async fn put_segment(&self, id: u64, index: Option<u64>, data: Vec<u8>) -> Result<()> {
        let no_upload = || Error::Usage(format!("no upload {id} (expired?)"));
        let (redundancy, index) = {
            let mut uploads = self.inner.uploads.lock().expect("not poisoned");
            let u = uploads.get_mut(&id).ok_or_else(no_upload)?;
            if data.is_empty() || data.len() > MAX_SEGMENT {
                return Err(Error::Usage(format!("a segment has 1 to {MAX_SEGMENT} bytes, not {}", data.len())));
            }
            let index = index.unwrap_or(u.next);
            if u.segments.contains_key(&index) || u.in_flight.contains(&index) {
                return Err(Error::Usage(format!("segment {index} was sent twice")));
            }
            if index >= u.hashed + PUT_AHEAD {
                return Err(Error::Usage(format!(
                    "segment {index} is {PUT_AHEAD} or more ahead of segment {}, the first not yet received",
                    u.hashed
                )));
            }
            u.in_flight.insert(index);
            u.next = u.next.max(index + 1);
            u.touched = Instant::now();
            (u.redundancy, index)
        };
        let hash = Cid::of(&data);
        let placed = match erasure::encode(redundancy, &data).map_err(remote) {
            Ok(shards) => {
                let cands = self.candidates().await;
                self.place(None, hash.key(), shards, &cands, &[])
                    .await
                    .map_err(|e| Error::Remote(format!("segment {index}: {e}")))
            }
            Err(e) => Err(e),
        };
        let mut uploads = self.inner.uploads.lock().expect("not poisoned");
        let u = uploads.get_mut(&id).ok_or_else(no_upload)?;
        u.in_flight.remove(&index);
        let placed = placed?;
        u.segments.insert(index, Segment { index, size: data.len() as u64, hash, shards: placed });
        u.unhashed.insert(index, data);
        while let Some(d) = u.unhashed.remove(&u.hashed) {
            u.hasher.update(&d);
            u.size += d.len() as u64;
            u.hashed += 1;
        }
        Ok(())
    }

    /// Puts `shards` (all of a segment's, or the missing ones: `None` for
    /// those not to place) on distinct nodes closest to `key`, skipping
    /// `exclude`; a refusal moves the shard to the next node.
    async fn place(
        &self,
        object: Option<Cid>,
        key: NodeId,
        shards: Vec<Vec<u8>>,
        cands: &[Candidate],
        exclude: &[String],
    ) -> std::result::Result<Vec<Shard>, String> {
        // Nodes holding none of the segment's shards first; the others
        // only when there are too few (two shards on a node beat one lost).
        let mut order = placement::choose(&key, cands, cands.len(), exclude);
        if order.len() < shards.len() {
            let held: Vec<String> = order.iter().map(|c| c.peer.clone()).collect();
            order.extend(placement::choose(&key, cands, cands.len(), &held));
        }
        if order.is_empty() {
            return Err("no node to place shards on".into());
        }
        // Shard j on the j-th node, all at once; a refused one then on the
        // first node not yet holding a shard of this segment, one by one.
        let cids: Vec<Cid> = shards.iter().map(|d| Cid::of(d)).collect();
        let first = futures::future::join_all(
            shards
                .iter()
                .enumerate()
                .map(|(j, d)| self.put_shard(&order[j % order.len()].peer, object, cids[j], d.clone())),
        )
        .await;
        let mut placed: Vec<Option<String>> = vec![None; shards.len()];
        let mut errors: Vec<Vec<String>> = vec![Vec::new(); shards.len()];
        for (j, r) in first.into_iter().enumerate() {
            let peer = &order[j % order.len()].peer;
            match r {
                Ok(()) => placed[j] = Some(peer.clone()),
                Err(e) => errors[j].push(format!("{peer}: {e}")),
            }
        }
        for j in 0..shards.len() {
            if placed[j].is_some() {
                continue;
            }
            let used: HashSet<String> = placed.iter().flatten().cloned().collect();
            let tried = order[j % order.len()].peer.clone();
            let next =
                order.iter().filter(|c| !used.contains(&c.peer)).chain(order.iter().filter(|c| used.contains(&c.peer)));
            for c in next.filter(|c| c.peer != tried) {
                match self.put_shard(&c.peer, object, cids[j], shards[j].clone()).await {
                    Ok(()) => {
                        placed[j] = Some(c.peer.clone());
                        break;
                    }
                    Err(e) => errors[j].push(format!("{}: {e}", c.peer)),
                }
            }
        }
        placed
            .into_iter()
            .zip(cids)
            .enumerate()
            .map(|(j, (p, cid))| match p {
                Some(p) => Ok(Shard { cid, holders: vec![p] }),
                None => Err(format!("shard {j}: no node took it ({})", errors[j].join("; "))),
            })
            .collect()
    }

    /// Ends upload `id`: its manifest goes to the nodes closest to its CID.
    pub async fn put_end(&self, id: u64) -> Result<StorePut> {
        let u = self
            .inner
            .uploads
            .lock()
            .expect("not poisoned")
            .remove(&id)
            .ok_or_else(|| Error::Usage(format!("no upload {id} (expired?)")))?;
        if u.segments.is_empty() {
            return Err(Error::Usage("an empty object cannot be stored".into()));
        }
        if !u.in_flight.is_empty() || !u.unhashed.is_empty() {
            let missing: Vec<u64> = (0..u.next).filter(|i| !u.segments.contains_key(i)).collect();
            return Err(Error::Usage(format!("segments {missing:?} were not placed: the object is incomplete")));
        }
        let segments: Vec<Segment> = u.segments.into_values().collect();
        let segment_size = segments[0].size;
        let last = segments.len() - 1;
        if segments.iter().enumerate().any(|(i, s)| s.size > segment_size || (i < last && s.size < segment_size)) {
            return Err(Error::Usage("segments after the first must be as long as it, the last may be shorter".into()));
        }
        let cid = Cid(*u.hasher.finalize().as_bytes());
        let cands = self.candidates().await;
        // Put again (after a removal, or by its owner): a later revision.
        let revision = match self.newest_manifest(&cid, &cands).await {
            Some(old) if !old.removed && old.owner != self.me() => {
                return Err(Error::Usage(format!("{cid} is already stored by {}", old.owner)));
            }
            Some(old) => old.revision + 1,
            None => 1,
        };
        let holders: Vec<String> =
            placement::choose(&cid.key(), &cands, u.redundancy.total(), &[]).into_iter().map(|c| c.peer).collect();
        let m = Manifest {
            version: manifest::VERSION,
            cid,
            size: u.size,
            segment_size,
            redundancy: u.redundancy,
            owner: self.me(),
            revision,
            manifest_holders: holders,
            segments,
            removed: false,
        };
        let stored = self.push_manifest(&m).await;
        if stored == 0 {
            return Err(Error::Remote(format!("no node took the manifest of {cid}")));
        }
        // The holders learn which object their shards belong to (for their
        // garbage collection).
        let mut by_holder: HashMap<String, Vec<Cid>> = HashMap::new();
        for s in &m.segments {
            for x in &s.shards {
                for h in &x.holders {
                    by_holder.entry(h.clone()).or_default().push(x.cid);
                }
            }
        }
        let holds = by_holder.into_iter().map(|(h, shards)| async move {
            if h == self.me() {
                for s in &shards {
                    let _ = self.inner.disk.add_ref(s, &cid);
                }
            } else if let Err(e) = self.send(&h, StoreRequest::Hold { object: cid, shards }).await {
                log::warn!("store: {h} was not told which object its shards belong to: {e}");
            }
        });
        futures::future::join_all(holds).await;
        let distinct: HashSet<&String> =
            m.segments.iter().flat_map(|s| s.shards.iter().flat_map(|x| &x.holders)).collect();
        Ok(StorePut {
            cid: cid.to_string(),
            size: m.size,
            segments: m.segments.len() as u64,
            redundancy: m.redundancy.to_string(),
            shards: m.segments.iter().map(|s| s.shards.len() as u64).sum(),
            holders: distinct.len() as u64,
            manifest_holders: m.manifest_holders.clone(),
        })
    }

    /// Sends `m` to its holders (this node: its disk); drops the holders
    /// that refuse. How many hold it.
    async fn push_manifest(&self, m: &Manifest) -> usize {
        let bytes = m.encode();
        let object = m.cid;
        let sends = m.manifest_holders.iter().map(|h| {
            let bytes = bytes.clone();
            async move {
                if *h == self.me() {
                    return self.inner.disk.put_manifest(&object, &bytes).is_ok();
                }
                let r = self.send(h, StoreRequest::PutManifest { object, manifest: bytes }).await;
                matches!(r, Ok(StoreResponse::Done))
            }
        });
        let ok = futures::future::join_all(sends).await;
        ok.iter().filter(|x| **x).count()
    }

    // ---------------------------------------------------------------- get

    /// The manifest of `cid`: the newest of this node's copy and those of
    /// the live nodes closest to the CID (a copy here may be stale: this
    /// node may have stopped holding it), kept for [`MANIFEST_TTL`] so that
    /// a `get` asks once, not once a segment.
    pub async fn manifest(&self, cid: &Cid) -> Result<Manifest> {
        if let Some((at, m)) = self.inner.manifests.lock().expect("not poisoned").get(cid)
            && at.elapsed() < MANIFEST_TTL
        {
            return Ok(m.clone());
        }
        let cands = self.candidates().await;
        let m = self.newest_manifest(cid, &cands).await.ok_or_else(|| {
            Error::Remote(format!(
                "{cid}: no reachable node has its manifest (not stored, removed, or its holders are down)"
            ))
        })?;
        if m.removed {
            return Err(Error::Remote(format!("{cid} was removed by its owner {}", m.owner)));
        }
        self.inner.manifests.lock().expect("not poisoned").insert(*cid, (Instant::now(), m.clone()));
        Ok(m)
    }

    /// Segment `index` of `cid`, verified: from the cache if it is hot
    /// here, else from its shards' holders (then cached if now hot).
    pub async fn get_segment(&self, cid: &Cid, index: u64) -> Result<Vec<u8>> {
        let m = self.manifest(cid).await?;
        let seg = m
            .segments
            .get(index as usize)
            .ok_or_else(|| Error::Usage(format!("{cid} has {} segments, not {}", m.segments.len(), index + 1)))?;
        if let Some(data) = self.inner.disk.get_cached(&seg.hash) {
            self.inner.counters.lock().expect("not poisoned").cache_hits += 1;
            return Ok(data);
        }
        let hot = self.read_is_hot(&seg.hash);
        let live = Self::live_set(&self.candidates().await);
        let data = self.read_segment(&m, seg, &live).await?;
        let me = self.me();
        let holds_a_shard = seg.shards.iter().any(|x| x.holders.contains(&me));
        if hot && !holds_a_shard && self.inner.disk.put_cached(&seg.hash, &data) {
            log::info!("store: segment {index} of {cid} is read often here: cached");
            self.inner.counters.lock().expect("not poisoned").cached += 1;
        }
        Ok(data)
    }

    /// Counts a read of segment `hash`; whether it has been read
    /// `hot_reads` times within [`HOT_WINDOW`].
    fn read_is_hot(&self, hash: &Cid) -> bool {
        let need = self.inner.cache.hot_reads as usize;
        if need == 0 {
            return false;
        }
        let now = Instant::now();
        let mut reads = self.inner.reads.lock().expect("not poisoned");
        reads.retain(|_, r| {
            r.retain(|t| now.duration_since(*t) < HOT_WINDOW);
            !r.is_empty()
        });
        let r = reads.entry(*hash).or_default();
        r.push(now);
        r.len() >= need
    }

    /// Drops cached segments not read for [`CachePolicy::cool`].
    fn cool_down(&self) {
        for (hash, idle, _) in self.inner.disk.cached_with_age() {
            if idle >= self.inner.cache.cool {
                self.inner.disk.remove_cached(&hash);
                log::info!("store: cached segment {hash} not read for {idle:?}: dropped");
                self.inner.counters.lock().expect("not poisoned").cooled += 1;
            }
        }
    }

    // ---------------------------------------------------------------- status, ls, rm

    pub async fn status(&self, cid: &Cid) -> Result<StoreStatus> {
        let m = self.manifest(cid).await?;
        let live = Self::live_set(&self.candidates().await);
        let segments: Vec<StoreSegmentStatus> = m
            .segments
            .iter()
            .map(|s| {
                let shards: Vec<StoreShardStatus> = s
                    .shards
                    .iter()
                    .enumerate()
                    .map(|(j, x)| StoreShardStatus {
                        index: j as u64,
                        cid: x.cid.to_string(),
                        holders: x.holders.clone(),
                        live_holders: x.holders.iter().filter(|h| live.contains(*h)).cloned().collect(),
                        healthy: x.holders.iter().any(|h| live.contains(h)),
                    })
                    .collect();
                let healthy = shards.iter().filter(|x| x.healthy).count() as u64;
                StoreSegmentStatus { index: s.index, size: s.size, healthy, total: s.shards.len() as u64, shards }
            })
            .collect();
        let (total, needed) = (m.redundancy.total() as u64, m.redundancy.needed() as u64);
        let health = if segments.iter().all(|s| s.healthy == total) {
            "full"
        } else if segments.iter().all(|s| s.healthy >= needed) {
            "degraded"
        } else {
            "lost"
        };
        let c = self.inner.counters.lock().expect("not poisoned");
        Ok(StoreStatus {
            cid: m.cid.to_string(),
            size: m.size,
            redundancy: m.redundancy.to_string(),
            owner: m.owner.clone(),
            revision: m.revision,
            health: health.into(),
            manifest_holders: m.manifest_holders.clone(),
            segments,
            repairs_here: c.repairs,
            repaired_shards_here: c.repaired_shards,
            last_repair_ms: c.last_repair_ms,
        })
    }

    pub fn ls(&self) -> Vec<StoreObject> {
        let me = self.me();
        self.inner
            .disk
            .manifests()
            .into_iter()
            .filter_map(|c| Manifest::decode(&c, &self.inner.disk.get_manifest(&c)?).ok())
            .filter(|m| !m.removed)
            .map(|m| StoreObject {
                cid: m.cid.to_string(),
                size: m.size,
                segments: m.segments.len() as u64,
                redundancy: m.redundancy.to_string(),
                mine: m.owner == me,
                revision: m.revision,
            })
            .collect()
    }

    /// Removes `cid` everywhere this node can reach (owner only), and
    /// leaves a tombstone with the manifest's holders.
    pub async fn rm(&self, cid: &Cid) -> Result<(u64, Vec<String>)> {
        self.inner.manifests.lock().expect("not poisoned").remove(cid);
        let mut m = self.manifest(cid).await?;
        if m.owner != self.me() {
            return Err(Error::Usage(format!("{cid} belongs to {}; only its owner may remove it", m.owner)));
        }
        let shards = m.shard_cids();
        let mut nodes: Vec<String> = m.manifest_holders.clone();
        nodes.extend(m.segments.iter().flat_map(|s| s.shards.iter().flat_map(|x| x.holders.clone())));
        nodes.sort();
        nodes.dedup();
        let (mut done, mut missed) = (0u64, Vec::new());
        for n in nodes {
            if n == self.me() {
                self.inner.disk.remove_manifest(cid);
                for s in &shards {
                    self.inner.disk.release(s, cid);
                }
                done += 1;
                continue;
            }
            match self.send(&n, StoreRequest::Remove { object: *cid, shards: shards.clone() }).await {
                Ok(StoreResponse::Done) => done += 1,
                _ => missed.push(n),
            }
        }
        // Far above any revision a stale holder's repairs could reach.
        m.revision += TOMBSTONE_STEP;
        m.removed = true;
        let kept = self.push_manifest(&m).await;
        log::info!("store: {cid} removed; its tombstone is kept by {kept} of {} nodes", m.manifest_holders.len());
        Ok((done, missed))
    }

    // ---------------------------------------------------------------- repair

    /// One pass over the manifests held here (see the module doc).
    async fn sweep(&self) {
        let pass = {
            let mut c = self.inner.counters.lock().expect("not poisoned");
            c.sweeps += 1;
            c.sweeps
        };
        self.cool_down();
        let objects = self.inner.disk.manifests();
        if objects.is_empty() {
            return;
        }
        let cands = self.candidates().await;
        let live = Self::live_set(&cands);
        for cid in objects {
            let Some(m) = self.inner.disk.get_manifest(&cid).and_then(|b| Manifest::decode(&cid, &b).ok()) else {
                continue;
            };
            if m.removed {
                if self.inner.disk.manifest_age(&cid).is_some_and(|a| a > TOMBSTONE_KEEP) {
                    self.inner.disk.remove_manifest(&cid);
                }
                continue;
            }
            // Needs repair: a shard or a manifest holder without a live node.
            let degraded =
                m.segments.iter().flat_map(|s| &s.shards).any(|x| !x.holders.iter().any(|h| live.contains(h)))
                    || m.manifest_holders.iter().any(|h| !live.contains(h));
            let since = {
                let mut d = self.inner.degraded.lock().expect("not poisoned");
                if degraded { Some(*d.entry(cid).or_insert_with(Instant::now)) } else { d.remove(&cid).and(None) }
            };
            // The responsible node repairs; any other holder takes over once
            // an object stays degraded for TAKEOVER+ (the responsible node
            // may lack the manifest, or see the network otherwise).
            let patience = TAKEOVER + TAKEOVER_PER_SEGMENT * m.segments.len() as u32;
            let takeover = since.is_some_and(|t| t.elapsed() >= patience);
            let responsible = self.responsible(&m, &live);
            if !responsible && !takeover {
                continue;
            }
            // Repair from the newest revision (this copy may be stale: a
            // node back from a restart or a cut sees holders missing that
            // are not); a tombstone ends it.
            let m = match since {
                Some(_) => match self.newest_manifest(&cid, &cands).await {
                    Some(n) if n.removed => {
                        log::info!("store: {cid} was removed while this node was away: not repaired");
                        let _ = self.inner.disk.put_manifest(&cid, &n.encode());
                        continue;
                    }
                    Some(n) if n.supersedes(&m) => {
                        if n.manifest_holders.contains(&self.me()) {
                            let _ = self.inner.disk.put_manifest(&cid, &n.encode());
                        }
                        n
                    }
                    _ => m,
                },
                None => m,
            };
            if !responsible {
                log::info!("store: {cid} degraded for {:?}: repairing it from here", since.map(|t| t.elapsed()));
            }
            let started = Instant::now();
            let refresh = pass % REFRESH_EVERY == 0;
            match self.repair(m, &cands, &live, refresh).await {
                Ok(0) => {}
                Ok(n) => {
                    let ms = started.elapsed().as_millis() as u64;
                    log::info!("store: repaired {n} shards of {cid} in {ms} ms");
                    let mut c = self.inner.counters.lock().expect("not poisoned");
                    c.repairs += 1;
                    c.repaired_shards += n;
                    c.last_repair_ms = Some(ms);
                    c.repair_ms.record(ms);
                }
                Err(e) => log::warn!("store: repair of {cid}: {e}"),
            }
        }
    }

    /// This node repairs `m` if it is the live manifest holder closest to
    /// the object's CID, and sees a majority of the manifest's holders live
    /// (a node cut off from the others must not rewrite the manifest).
    fn responsible(&self, m: &Manifest, live: &HashSet<String>) -> bool {
        let key = m.cid.key();
        let alive: Vec<PeerId> =
            m.manifest_holders.iter().filter(|h| live.contains(*h)).filter_map(|h| h.parse().ok()).collect();
        if alive.len() * 2 <= m.manifest_holders.len() {
            return false;
        }
        alive.iter().min_by_key(|p| key.distance(&node_id_of(p))) == Some(&self.inner.me)
    }

    /// Rebuilds and re-places the shards of `m` without a live holder and
    /// tops up its manifest holders; pushes the new revision. Shards placed.
    async fn repair(
        &self,
        mut m: Manifest,
        cands: &[Candidate],
        live: &HashSet<String>,
        refresh: bool,
    ) -> std::result::Result<u64, String> {
        let mut placed = 0u64;
        let mut changed = false;
        // Segments are rebuilt REPAIR_PARALLEL at a time.
        let jobs = (0..m.segments.len()).filter_map(|si| {
            let seg = &m.segments[si];
            let missing: Vec<usize> =
                (0..seg.shards.len()).filter(|&j| !seg.shards[j].holders.iter().any(|h| live.contains(h))).collect();
            if missing.is_empty() {
                return None;
            }
            if seg.shards.len() - missing.len() < m.redundancy.needed() {
                self.inner.counters.lock().expect("not poisoned").lost_segments += 1;
                log::warn!(
                    "store: segment {si} of {}: {} shards left, {} needed: lost",
                    m.cid,
                    seg.shards.len() - missing.len(),
                    m.redundancy.needed()
                );
                return None;
            }
            Some(self.repair_segment(&m, si, missing, cands, live))
        });
        let results: Vec<_> = futures::stream::iter(jobs).buffer_unordered(REPAIR_PARALLEL).collect().await;
        for r in results {
            match r {
                Ok((si, new)) => {
                    for (j, holders) in new {
                        m.segments[si].shards[j].holders = holders;
                        placed += 1;
                    }
                    changed = true;
                }
                Err(e) => log::warn!("store: {e}"),
            }
        }
        // Shards with live holders keep only those (one without any keeps
        // its list: its holders may come back).
        for seg in m.segments.iter_mut() {
            for x in seg.shards.iter_mut() {
                if x.holders.iter().any(|h| live.contains(h)) {
                    let before = x.holders.len();
                    x.holders.retain(|h| live.contains(h));
                    changed |= x.holders.len() != before;
                }
            }
        }
        let alive: Vec<String> = m.manifest_holders.iter().filter(|h| live.contains(*h)).cloned().collect();
        let want = m.redundancy.total().min(cands.len());
        if alive.len() < want || alive.len() != m.manifest_holders.len() {
            let extra = placement::choose(&m.cid.key(), cands, want - alive.len().min(want), &alive);
            m.manifest_holders = alive.into_iter().chain(extra.into_iter().map(|c| c.peer)).collect();
            changed = true;
        }
        if changed {
            m.revision += 1;
            self.push_manifest(&m).await;
        } else if refresh {
            // Anti-entropy: a holder that missed a revision (cut off for a
            // while) gets the current one.
            self.push_manifest(&m).await;
        }
        Ok(placed)
    }

    /// Rebuilds segment `si`'s `missing` shards from the others and places
    /// them on nodes closest to it that hold none of its shards; the new
    /// holders by shard.
    async fn repair_segment(
        &self,
        m: &Manifest,
        si: usize,
        missing: Vec<usize>,
        cands: &[Candidate],
        live: &HashSet<String>,
    ) -> std::result::Result<(usize, Vec<(usize, Vec<String>)>), String> {
        let seg = &m.segments[si];
        let data = self.read_segment(m, seg, live).await.map_err(|e| e.to_string())?;
        let all = erasure::encode(m.redundancy, &data)?;
        let holding: Vec<String> =
            seg.shards.iter().flat_map(|x| x.holders.iter().filter(|h| live.contains(*h)).cloned()).collect();
        let rebuilt: Vec<Vec<u8>> = missing.iter().map(|&j| all[j].clone()).collect();
        for (&j, d) in missing.iter().zip(&rebuilt) {
            if Cid::of(d) != seg.shards[j].cid {
                return Err(format!("segment {si} shard {j} rebuilt with another hash"));
            }
        }
        let new = self.place(Some(m.cid), seg.hash.key(), rebuilt, cands, &holding).await?;
        Ok((si, missing.into_iter().zip(new.into_iter().map(|s| s.holders)).collect()))
    }

    /// The newest manifest of `object` this node can find: its own copy
    /// and those of the live nodes closest to the CID.
    async fn newest_manifest(&self, object: &Cid, cands: &[Candidate]) -> Option<Manifest> {
        let mut best = self.inner.disk.get_manifest(object).and_then(|b| Manifest::decode(object, &b).ok());
        // The closest nodes, where placement put the manifest, all at once.
        let ask = placement::choose(&object.key(), cands, MANIFEST_ASK, &[self.me()]);
        let answers = futures::future::join_all(ask.iter().map(|c| {
            tokio::time::timeout(MANIFEST_WAIT, self.send(&c.peer, StoreRequest::GetManifest { object: *object }))
        }))
        .await;
        for (c, answer) in ask.iter().zip(answers) {
            let Ok(Ok(StoreResponse::Data(b))) = answer else { continue };
            match Manifest::decode(object, &b) {
                Ok(m) if best.as_ref().is_none_or(|x| m.supersedes(x)) => best = Some(m),
                Ok(_) => {}
                Err(e) => log::warn!("store: {} sent a bad manifest: {e}", c.peer),
            }
        }
        best
    }

    /// Drops what this node holds beyond policy: shards the newest
    /// manifest of their object no longer places here (a holder that was
    /// cut off and repaired around, then came back), shards no object ever
    /// claimed ([`UNCLAIMED_GRACE`]: a put that never ended), and stale
    /// manifests of objects whose manifest moved elsewhere.
    async fn collect_garbage(&self) {
        let cands = self.candidates().await;
        let me = self.me();
        let mut newest: HashMap<Cid, Option<Manifest>> = HashMap::new();
        let disk = &self.inner.disk;
        for (cid, age) in disk.shards_with_age() {
            let refs = disk.refs(&cid);
            if refs.is_empty() {
                if age > UNCLAIMED_GRACE {
                    disk.remove_shard(&cid);
                }
                continue;
            }
            if age < GC_GRACE {
                continue;
            }
            for object in refs {
                if let std::collections::hash_map::Entry::Vacant(e) = newest.entry(object) {
                    e.insert(self.newest_manifest(&object, &cands).await);
                }
                let Some(Some(m)) = newest.get(&object) else { continue };
                let placed_here = !m.removed
                    && m.segments.iter().flat_map(|s| &s.shards).any(|x| x.cid == cid && x.holders.contains(&me));
                if !placed_here {
                    let why = if m.removed { "was removed" } else { "is no longer placed here" };
                    log::info!("store: shard {cid} of {object} {why} (revision {}): dropped", m.revision);
                    disk.release(&cid, &object);
                    self.inner.counters.lock().expect("not poisoned").collected += 1;
                }
            }
        }
        for object in disk.manifests() {
            let Some(local) = disk.get_manifest(&object).and_then(|b| Manifest::decode(&object, &b).ok()) else {
                continue;
            };
            if let std::collections::hash_map::Entry::Vacant(e) = newest.entry(object) {
                e.insert(self.newest_manifest(&object, &cands).await);
            }
            if let Some(Some(m)) = newest.get(&object)
                && m.supersedes(&local)
            {
                if m.manifest_holders.contains(&me) {
                    let _ = disk.put_manifest(&object, &m.encode());
                } else {
                    disk.remove_manifest(&object);
                }
            }
        }
    }

    /// For `status`: what this node holds and has repaired.
    pub fn summary(&self) -> crate::api::StoreSummary {
        let c = self.inner.counters.lock().expect("not poisoned");
        crate::api::StoreSummary {
            repair_ms: c.repair_ms.clone(),
            shards: self.inner.disk.shard_count() as u64,
            used_bytes: self.inner.disk.used(),
            quota_bytes: self.inner.disk.quota(),
            manifests: self.inner.disk.manifests().len() as u64,
            corrupt_shards: self.inner.disk.corrupt(),
            repairs: c.repairs,
            repaired_shards: c.repaired_shards,
            lost_segments: c.lost_segments,
            collected_shards: c.collected,
            cached_segments: self.inner.disk.cached_with_age().len() as u64,
            cache_bytes: self.inner.disk.cache_used(),
            cache_hits: c.cache_hits,
            cached_total: c.cached,
            cooled_total: c.cooled,
        }
    }
}
