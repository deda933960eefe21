//! Map sync: the only owner of the kernel datapath ([`Dataplane`]). Its
//! thread turns the set of peers the datapath should route to (static
//! peers, plus Kademlia's routing table filtered by liveness and known
//! overlay endpoints) into PEERS slots, the kernel maps and the userspace
//! router, which it publishes to the overlay socket's owner through a
//! `watch` channel; it also writes the block list, the rate budgets and
//! the controller's heartbeat, and reads the datapath's evidence
//! (LAST_SEEN, SOURCE_STATS). Everything else reaches the maps through
//! [`MapSyncHandle`]'s commands; nobody else holds a lock on them.
//!
//! Why slots are handed out this way: a packet that read the previous
//! routing generation may still be on its way to PEERS[slot] while a new
//! generation is swapped in. `Dataplane::set_peers_routed` writes new
//! slots first, flips the generation, waits for an RCU grace period and
//! only then clears removed slots, so the old generation's slots stay
//! valid for every packet still using it. That only holds if a slot freed
//! by one update is never given to another peer by the same update, and if
//! a live slot is never rewritten: [`SlotTable`] keeps freed slots in
//! quarantine until the next plan, and gives a peer whose address changed
//! a new slot. One worker thread applies plans in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use p2p_common::codec;
use p2p_common::id::NodeId;
use p2p_common::maps::{BlockEntry, Counter, LinkKey, PEER_LIVE, PEER_V4, PeerEntry, RateBudget, SourceStats};
use tokio::sync::{oneshot, watch};

use crate::api::{KernelStatus, MapChange, SyncStats};
use crate::dataplane::{BlockTarget, Dataplane, SlotEntry};
use crate::userspace::{Blocks, Peer, Router};

/// One update to apply: every slot in use after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub entries: Vec<(u32, Peer)>,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

/// Stable slot assignment for node IDs, with freed slots quarantined for
/// one plan.
#[derive(Debug, Clone)]
pub struct SlotTable {
    by_id: HashMap<NodeId, (u32, Peer)>,
    free: BTreeSet<u32>,
    /// Slots freed by the last plan: reusable from the next one on.
    quarantine: Vec<u32>,
    /// Slots below this have been handed out at least once.
    high: u32,
    /// Slots there are (`--max-peers`).
    capacity: u32,
}

impl SlotTable {
    pub fn new(capacity: u32) -> Self {
        SlotTable { by_id: HashMap::new(), free: BTreeSet::new(), quarantine: Vec::new(), high: 0, capacity }
    }

    pub fn slot_of(&self, id: &NodeId) -> Option<u32> {
        self.by_id.get(id).map(|(s, _)| *s)
    }

    /// The node in `slot`.
    pub fn node_in(&self, slot: u32) -> Option<NodeId> {
        self.by_id.iter().find(|(_, (s, _))| *s == slot).map(|(id, _)| *id)
    }

    /// The plan that takes the table to `desired` (duplicates by node ID:
    /// the first wins), or `None` when nothing changes. A peer whose
    /// endpoint changed moves to a new slot (its old one is quarantined
    /// like any freed slot); other endpoint or budget changes keep the
    /// slot. Peers beyond the capacity are left out with a warning.
    pub fn plan(&mut self, desired: &[Peer]) -> Option<Plan> {
        self.free.extend(self.quarantine.drain(..));
        let mut want: HashMap<NodeId, &Peer> = HashMap::with_capacity(desired.len());
        let mut order = Vec::with_capacity(desired.len());
        for p in desired {
            if let std::collections::hash_map::Entry::Vacant(e) = want.entry(p.node_id) {
                e.insert(p);
                order.push(p.node_id);
            }
        }
        let gone: Vec<NodeId> = self
            .by_id
            .iter()
            .filter(|(id, (_, p))| want.get(id).is_none_or(|w| w.addr != p.addr))
            .map(|(id, _)| *id)
            .collect();
        let mut removed = 0;
        for id in &gone {
            if let Some((slot, _)) = self.by_id.remove(id) {
                self.quarantine.push(slot);
                removed += usize::from(!want.contains_key(id));
            }
        }
        let (mut added, mut changed) = (0, 0);
        for id in order {
            let peer = want[&id];
            match self.by_id.get_mut(&id) {
                Some((_, p)) if p == peer => {}
                Some((_, p)) => {
                    *p = peer.clone();
                    changed += 1;
                }
                None => {
                    let slot = match self.free.pop_first() {
                        Some(s) => s,
                        None if self.high < self.capacity => {
                            self.high += 1;
                            self.high - 1
                        }
                        None => {
                            log::warn!("all {} peer slots in use (--max-peers): {id} is not routed to", self.capacity);
                            continue;
                        }
                    };
                    if gone.contains(&id) {
                        changed += 1;
                    } else {
                        added += 1;
                    }
                    self.by_id.insert(id, (slot, peer.clone()));
                }
            }
        }
        if added + removed + changed == 0 {
            return None;
        }
        let mut entries: Vec<(u32, Peer)> = self.by_id.values().map(|(slot, p)| (*slot, p.clone())).collect();
        entries.sort_unstable_by_key(|(s, _)| *s);
        Some(Plan { entries, added, removed, changed })
    }
}

/// PEERS entry for a live peer (the dataplane assigns generations).
pub fn peer_entry(p: &Peer) -> PeerEntry {
    let mut flags = PEER_LIVE;
    if p.addr.is_ipv4() {
        flags |= PEER_V4;
    }
    PeerEntry {
        node_id: p.node_id.0,
        addr: codec::addr_to_mapped(p.addr.ip()),
        port: p.addr.port(),
        flags,
        reputation: 0,
        generation: 0,
    }
}

fn link_key(a: SocketAddr) -> LinkKey {
    LinkKey { addr: codec::addr_to_mapped(a.ip()), port: a.port(), _pad: 0 }
}

/// The slot as the kernel maps hold it.
fn slot_entry(slot: u32, p: &Peer) -> SlotEntry {
    SlotEntry { slot, peer: peer_entry(p), endpoints: p.endpoints().map(link_key).collect(), budget: p.budget }
}

/// Rate budgets (docs/WIRE.md step 4): one per class, each peer in one
/// class ("default" unless assigned), one for sources that are not peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatePolicy {
    pub classes: BTreeMap<String, RateBudget>,
    pub assigned: HashMap<NodeId, String>,
    pub nonpeer: RateBudget,
}

/// The class every peer is in unless assigned another.
pub const DEFAULT_CLASS: &str = "default";

impl RatePolicy {
    pub fn budget_for(&self, node: &NodeId) -> RateBudget {
        let class = self.assigned.get(node).map(String::as_str).unwrap_or(DEFAULT_CLASS);
        self.classes.get(class).or_else(|| self.classes.get(DEFAULT_CLASS)).copied().unwrap_or(RateBudget::UNLIMITED)
    }
}

/// Takes the maps and the router to `peers` and records how long it took
/// since `since`. A failed update must not stick: the slot table goes back
/// to what the maps hold, so the same set can be tried again.
fn sync(w: &mut Worker, peers: &[Peer], since: Instant) -> Result<(), String> {
    let peers: Vec<Peer> = peers.iter().map(|p| Peer { budget: w.rate.budget_for(&p.node_id), ..p.clone() }).collect();
    let before = w.slots.clone();
    let Some(plan) = w.slots.plan(&peers) else { return Ok(()) };
    let old: std::collections::HashSet<NodeId> = w.entries.iter().map(|(_, p)| p.node_id).collect();
    let result = apply(w, &plan);
    if result.is_err() {
        w.slots = before;
    } else {
        let now = crate::overlay::monotonic_ns();
        let new: std::collections::HashSet<NodeId> = plan.entries.iter().map(|(_, p)| p.node_id).collect();
        let changes =
            new.difference(&old).map(|id| (id, "added")).chain(old.difference(&new).map(|id| (id, "removed")));
        for (id, change) in changes {
            w.stats.recent.push(MapChange { node_id: id.to_string(), change: change.into(), mono_ns: now });
        }
        let excess = w.stats.recent.len().saturating_sub(64);
        w.stats.recent.drain(..excess);
    }
    record(&mut w.stats, &plan, since.elapsed(), result.clone());
    result
}

/// Applies a plan: kernel maps first (new slots, generation flip, stale
/// slots cleared), then the userspace router in one swap.
fn apply(w: &mut Worker, plan: &Plan) -> Result<(), String> {
    let router = w.router(plan.entries.clone())?;
    if let Some(dp) = w.dp.as_mut() {
        let entries: Vec<SlotEntry> = plan.entries.iter().map(|(s, p)| slot_entry(*s, p)).collect();
        dp.set_peers_routed(&entries, router.table()).map_err(|e| e.to_string())?;
    }
    w.entries = plan.entries.clone();
    w.routing.send_replace(Arc::new(router));
    Ok(())
}

/// A desired peer set and when the change that produced it was seen.
pub struct Desired {
    pub peers: Vec<Peer>,
    pub since: Instant,
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Command {
    Peers(Desired),
    /// Userspace datapath: its counters into STATS.
    MirrorStats(Vec<Counter>),
    Status(oneshot::Sender<(SyncStats, KernelStatus)>),
    /// The controller is alive (CLOCK_MONOTONIC ns).
    Heartbeat(u64),
    /// Leaving: the heartbeat stops now (XDP stops answering PINGs).
    Leave(oneshot::Sender<()>),
    /// LAST_SEEN of every routed peer.
    LastSeen(oneshot::Sender<Vec<(NodeId, u64)>>),
    SourceStats(oneshot::Sender<Vec<([u8; 16], SourceStats)>>),
    Block(BlockTarget, BlockEntry, Reply<()>),
    Unblock(BlockTarget, Reply<()>),
    Rate(RatePolicy, Reply<()>),
    GetRate(oneshot::Sender<RatePolicy>),
    /// The link keys of every neighbour endpoint (LINK_KEYS).
    LinkKeys(std::sync::Arc<crate::userspace::LinkTable>),
    /// Detach XDP and remove the pins; the thread ends.
    Stop(oneshot::Sender<()>),
}

/// Handle on the map-sync thread; clones share it.
#[derive(Clone)]
pub struct MapSyncHandle {
    tx: Sender<Command>,
}

/// What the map-sync thread owns.
struct Worker {
    self_id: NodeId,
    dp: Option<Dataplane>,
    slots: SlotTable,
    /// The slots the maps hold now.
    entries: Vec<(u32, Peer)>,
    stats: SyncStats,
    routing: watch::Sender<Arc<Router>>,
    blocks: HashMap<BlockTarget, BlockEntry>,
    rate: RatePolicy,
    /// Poll aya-log's ring (`--ebpf-log`).
    flush_logs: bool,
    leaving: bool,
}

impl Worker {
    /// The userspace router for `entries` under the current block list and
    /// non-peer budget.
    fn router(&self, entries: Vec<(u32, Peer)>) -> Result<Router, String> {
        let mut blocks = Blocks::default();
        for (t, e) in &self.blocks {
            match t {
                BlockTarget::Node(id) => {
                    blocks.nodes.insert(NodeId(*id), e.expires_ns);
                }
                BlockTarget::Net { addr, prefix_len } => blocks.nets.push((*addr, *prefix_len, e.expires_ns)),
            }
        }
        Router::with_policy(self.self_id, entries, blocks, self.rate.nonpeer).map_err(|e| e.to_string())
    }

    /// Publishes the router again (the block list or a budget changed).
    fn republish(&mut self) -> Result<(), String> {
        let router = self.router(self.entries.clone())?;
        self.routing.send_replace(Arc::new(router));
        Ok(())
    }

    fn block(&mut self, target: BlockTarget, entry: Option<BlockEntry>) -> Result<(), String> {
        if let Some(dp) = self.dp.as_mut() {
            match entry {
                Some(e) => dp.block(target, e),
                None => dp.unblock(target),
            }
            .map_err(|e| e.to_string())?;
        }
        match entry {
            Some(e) => self.blocks.insert(target, e),
            None => self.blocks.remove(&target),
        };
        self.republish()
    }

    fn set_rate(&mut self, policy: RatePolicy) -> Result<(), String> {
        if let Some(dp) = self.dp.as_mut() {
            dp.set_nonpeer_budget(policy.nonpeer).map_err(|e| e.to_string())?;
        }
        self.rate = policy;
        // Peers take their (new) budgets through a plan of the same set.
        let peers: Vec<Peer> = self.entries.iter().map(|(_, p)| p.clone()).collect();
        sync(self, &peers, Instant::now())?;
        self.republish()
    }

    fn kernel_status(&self) -> KernelStatus {
        match &self.dp {
            Some(dp) => {
                let sizes = dp.sizes();
                let maps: BTreeMap<String, u64> = dp.memory().into_iter().map(|(n, b)| (n.to_string(), b)).collect();
                KernelStatus {
                    max_peers: sizes.max_peers,
                    max_sources: sizes.max_sources,
                    memory_bytes: maps.values().sum(),
                    maps,
                }
            }
            None => KernelStatus::default(),
        }
    }
}

/// The peers the datapath routes to, as the userspace router: published by
/// map sync after every update.
pub type Routing = watch::Receiver<Arc<Router>>;

/// Starts map sync with `static_peers` already in the maps (an error here
/// is a start-up error: the peer set cannot be routed). `capacity`: the
/// peer slots the maps have.
pub fn spawn(
    self_id: NodeId,
    dp: Option<Dataplane>,
    static_peers: &[Peer],
    rate: RatePolicy,
    flush_logs: bool,
) -> Result<(MapSyncHandle, Routing), String> {
    let capacity = dp.as_ref().map_or(p2p_common::maps::MAX_PEERS_LIMIT, |d| d.sizes().max_peers);
    let router = Router::new(self_id, Vec::new()).map_err(|e| e.to_string())?;
    let (routing, rx) = watch::channel(Arc::new(router));
    let mut w = Worker {
        self_id,
        dp,
        slots: SlotTable::new(capacity),
        entries: Vec::new(),
        stats: SyncStats { latency_us: crate::api::Histogram::new(&SYNC_BOUNDS_US), ..SyncStats::default() },
        routing,
        blocks: HashMap::new(),
        rate: rate.clone(),
        flush_logs,
        leaving: false,
    };
    if let Some(dp) = w.dp.as_mut() {
        dp.set_nonpeer_budget(rate.nonpeer).map_err(|e| e.to_string())?;
    }
    sync(&mut w, static_peers, Instant::now())?;
    w.republish()?;
    let (tx, commands) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("map-sync".into())
        .spawn(move || worker(w, commands))
        .map_err(|e| format!("cannot start the map-sync thread: {e}"))?;
    Ok((MapSyncHandle { tx }, rx))
}

impl MapSyncHandle {
    async fn ask<T: Default>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> T {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(make(tx)).is_err() {
            return T::default();
        }
        rx.await.unwrap_or_default()
    }

    async fn call(&self, make: impl FnOnce(Reply<()>) -> Command) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| "map sync has stopped".to_string())?;
        rx.await.map_err(|_| "map sync has stopped".to_string())?
    }

    /// Takes the maps to `peers` (the newest set wins when several queue up).
    pub fn submit(&self, peers: Vec<Peer>, since: Instant) {
        let _ = self.tx.send(Command::Peers(Desired { peers, since }));
    }

    pub fn mirror_stats(&self, counters: Vec<Counter>) {
        let _ = self.tx.send(Command::MirrorStats(counters));
    }

    /// Writes the link keys into LINK_KEYS (XDP mode; nothing otherwise).
    pub fn set_link_keys(&self, table: std::sync::Arc<crate::userspace::LinkTable>) {
        let _ = self.tx.send(Command::LinkKeys(table));
    }

    pub fn heartbeat(&self, now_ns: u64) {
        let _ = self.tx.send(Command::Heartbeat(now_ns));
    }

    pub async fn status(&self) -> (SyncStats, KernelStatus) {
        self.ask(Command::Status).await
    }

    /// LAST_SEEN of every routed peer (empty without the kernel datapath).
    pub async fn last_seen(&self) -> Vec<(NodeId, u64)> {
        self.ask(Command::LastSeen).await
    }

    /// SOURCE_STATS (empty without the kernel datapath).
    pub async fn source_stats(&self) -> Vec<([u8; 16], SourceStats)> {
        self.ask(Command::SourceStats).await
    }

    pub async fn block(&self, target: BlockTarget, entry: BlockEntry) -> Result<(), String> {
        self.call(|r| Command::Block(target, entry, r)).await
    }

    pub async fn unblock(&self, target: BlockTarget) -> Result<(), String> {
        self.call(|r| Command::Unblock(target, r)).await
    }

    pub async fn rate(&self) -> Result<RatePolicy, String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::GetRate(tx)).map_err(|_| "map sync has stopped".to_string())?;
        rx.await.map_err(|_| "map sync has stopped".to_string())
    }

    pub async fn set_rate(&self, policy: RatePolicy) -> Result<(), String> {
        self.call(|r| Command::Rate(policy, r)).await
    }

    /// Stops the heartbeat for good: from now on XDP does not answer PINGs
    /// for this node (it is leaving).
    pub async fn leave(&self) {
        self.ask(Command::Leave).await
    }

    /// Detaches XDP and removes the pins; returns once done (or at once if
    /// the thread is gone).
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// How long a failed update waits before it is tried again.
const RETRY: Duration = Duration::from_millis(500);
/// How often the thread wakes up without commands (aya-log lines).
const IDLE: Duration = Duration::from_millis(100);

fn worker(mut w: Worker, rx: Receiver<Command>) {
    let mut failed: Option<Desired> = None;
    loop {
        let wait = if failed.is_some() { RETRY } else { IDLE };
        let first = match rx.recv_timeout(wait) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // The newest desired set wins; a failed one is retried unless a
        // newer one arrived meanwhile.
        let mut desired = failed.take();
        for cmd in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match cmd {
                Command::Peers(d) => {
                    let since = desired.as_ref().map_or(d.since, |p| p.since.min(d.since));
                    desired = Some(Desired { peers: d.peers, since });
                }
                Command::MirrorStats(c) => {
                    if let Some(dp) = w.dp.as_mut()
                        && let Err(e) = dp.mirror_stats(&c)
                    {
                        log::debug!("mirroring stats: {e}");
                    }
                }
                Command::LinkKeys(table) => {
                    if let Some(dp) = w.dp.as_mut() {
                        let keys = table
                            .iter()
                            .map(|(ep, s)| {
                                let k = p2p_common::maps::LinkKey {
                                    addr: p2p_common::codec::addr_to_mapped(ep.ip()),
                                    port: ep.port(),
                                    _pad: 0,
                                };
                                (k, *s)
                            })
                            .collect();
                        if let Err(e) = dp.set_link_keys(&keys) {
                            log::warn!("writing LINK_KEYS: {e}");
                        }
                    }
                }
                Command::Heartbeat(now) => {
                    if !w.leaving
                        && let Some(dp) = w.dp.as_mut()
                        && let Err(e) = dp.heartbeat(now)
                    {
                        log::warn!("heartbeat: {e}");
                    }
                }
                Command::Leave(reply) => {
                    w.leaving = true;
                    if let Some(dp) = w.dp.as_mut()
                        && let Err(e) = dp.heartbeat(0)
                    {
                        log::warn!("heartbeat: {e}");
                    }
                    let _ = reply.send(());
                }
                Command::Status(reply) => {
                    let _ = reply.send((w.stats.clone(), w.kernel_status()));
                }
                Command::LastSeen(reply) => {
                    let seen = match w.dp.as_ref() {
                        Some(dp) => {
                            let slots: Vec<u32> = w.entries.iter().map(|(s, _)| *s).collect();
                            let by_slot: HashMap<u32, NodeId> =
                                w.entries.iter().map(|(s, p)| (*s, p.node_id)).collect();
                            dp.last_seen(&slots).into_iter().map(|(s, t)| (by_slot[&s], t)).collect()
                        }
                        None => Vec::new(),
                    };
                    let _ = reply.send(seen);
                }
                Command::SourceStats(reply) => {
                    let stats = w.dp.as_ref().and_then(|dp| dp.source_stats().ok()).unwrap_or_default();
                    let _ = reply.send(stats);
                }
                Command::Block(t, e, reply) => {
                    let _ = reply.send(w.block(t, Some(e)));
                }
                Command::Unblock(t, reply) => {
                    let _ = reply.send(w.block(t, None));
                }
                Command::Rate(policy, reply) => {
                    let _ = reply.send(w.set_rate(policy));
                }
                Command::GetRate(reply) => {
                    let _ = reply.send(w.rate.clone());
                }
                Command::Stop(reply) => {
                    if let Some(mut dp) = w.dp.take() {
                        dp.detach_all();
                        dp.unpin();
                    }
                    let _ = reply.send(());
                    return;
                }
            }
        }
        if let Some(d) = desired
            && sync(&mut w, &d.peers, d.since).is_err()
        {
            log::info!("retrying the map update in {} ms", RETRY.as_millis());
            failed = Some(d);
        }
        if w.flush_logs
            && let Some(dp) = w.dp.as_mut()
        {
            dp.flush_logs();
        }
    }
}

/// Buckets of the map-sync latency histogram, µs (the target is 100 ms).
const SYNC_BOUNDS_US: [u64; 9] = [500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000];

fn record(stats: &mut SyncStats, plan: &Plan, took: Duration, result: Result<(), String>) {
    match result {
        Ok(()) => {
            stats.updates += 1;
            stats.peers = plan.entries.len();
            stats.last_us = took.as_micros() as u64;
            stats.max_us = stats.max_us.max(stats.last_us);
            stats.over_100ms += u64::from(took > Duration::from_millis(100));
            stats.latency_us.record(stats.last_us);
            log::debug!(
                "map sync: {} peers (+{} -{} ~{}) live after {:?}",
                plan.entries.len(),
                plan.added,
                plan.removed,
                plan.changed,
                took
            );
        }
        Err(e) => {
            log::error!("map sync failed: {e}");
            stats.errors += 1;
            stats.last_error = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    fn peer(n: u8, port: u16) -> Peer {
        Peer::new(NodeId([n; 32]), SocketAddr::new([10, 0, 0, n].into(), port))
    }

    fn slots(plan: &Plan) -> HashMap<u32, NodeId> {
        plan.entries.iter().map(|(s, p)| (*s, p.node_id)).collect()
    }

    #[test]
    fn unchanged_set_is_no_plan_and_slots_are_stable() {
        let mut t = SlotTable::new(1024);
        let p = t.plan(&[peer(1, 1), peer(2, 1), peer(3, 1)]).unwrap();
        assert_eq!((p.added, p.removed, p.changed), (3, 0, 0));
        assert_eq!(t.plan(&[peer(3, 1), peer(2, 1), peer(1, 1)]), None, "order does not matter");
        let before = slots(&p);
        let p = t.plan(&[peer(1, 1), peer(3, 1)]).unwrap();
        assert_eq!((p.added, p.removed), (0, 1));
        for (s, id) in slots(&p) {
            assert_eq!(before[&s], id, "surviving peers keep their slots");
        }
    }

    #[test]
    fn address_change_moves_to_a_new_slot() {
        let mut t = SlotTable::new(1024);
        t.plan(&[peer(1, 1), peer(2, 1)]).unwrap();
        let s2 = t.slot_of(&NodeId([2; 32])).unwrap();
        let p = t.plan(&[peer(1, 1), peer(2, 7)]).unwrap();
        assert_eq!((p.added, p.removed, p.changed), (0, 0, 1));
        let moved = t.slot_of(&NodeId([2; 32])).unwrap();
        assert_ne!(moved, s2, "a live slot is never rewritten in place");
        assert!(p.entries.contains(&(moved, peer(2, 7))));
        // Another endpoint or a new budget keeps the slot.
        let mut more = peer(2, 7);
        more.aliases.push("10.0.9.2:7".parse().unwrap());
        let p = t.plan(&[peer(1, 1), more.clone()]).unwrap();
        assert_eq!((p.added, p.removed, p.changed), (0, 0, 1));
        assert_eq!(t.slot_of(&NodeId([2; 32])), Some(moved));
    }

    #[test]
    fn capacity_is_respected() {
        let mut t = SlotTable::new(2);
        let p = t.plan(&[peer(1, 1), peer(2, 1), peer(3, 1)]).unwrap();
        assert_eq!(p.entries.len(), 2);
        assert!(p.entries.iter().all(|(s, _)| *s < 2));
    }

    #[test]
    fn freed_slot_is_not_reused_by_the_same_plan() {
        let mut t = SlotTable::new(1024);
        t.plan(&[peer(1, 1)]).unwrap();
        let s1 = t.slot_of(&NodeId([1; 32])).unwrap();
        // Peer 1 leaves while peer 2 arrives: 2 must not take 1's slot now…
        t.plan(&[peer(2, 1)]).unwrap();
        assert_ne!(t.slot_of(&NodeId([2; 32])), Some(s1));
        // …but the slot is free again for the plan after.
        t.plan(&[peer(2, 1), peer(3, 1)]).unwrap();
        assert_eq!(t.slot_of(&NodeId([3; 32])), Some(s1));
    }

    #[test]
    fn duplicates_keep_the_first() {
        let mut t = SlotTable::new(1024);
        let p = t.plan(&[peer(1, 1), peer(1, 2)]).unwrap();
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].1, peer(1, 1));
    }

    /// The property the datapath relies on, over random churn (peers come,
    /// go and change address): between two consecutive plans, a slot
    /// either keeps its peer and endpoint, or was unused in one of the two.
    /// A slot never moves from one peer straight to another, and a live
    /// slot is never rewritten in place.
    #[test]
    fn random_churn_never_rewrites_a_live_slot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut t = SlotTable::new(1024);
        let mut prev: HashMap<u32, (NodeId, SocketAddr)> = HashMap::new();
        let mut live: Vec<(u8, u16)> = Vec::new();
        let mut moves = 0;
        for _ in 0..5_000 {
            for _ in 0..rng.gen_range(0..4) {
                if !live.is_empty() && rng.gen_bool(0.5) {
                    live.swap_remove(rng.gen_range(0..live.len()));
                }
            }
            for _ in 0..rng.gen_range(0..4) {
                let n: u8 = rng.r#gen();
                if !live.iter().any(|(m, _)| *m == n) {
                    live.push((n, 9470));
                }
            }
            if !live.is_empty() && rng.gen_bool(0.2) {
                let i = rng.gen_range(0..live.len());
                live[i].1 = live[i].1.wrapping_add(1);
                moves += 1;
            }
            let desired: Vec<Peer> = live.iter().map(|(n, port)| peer(*n, *port)).collect();
            let cur: HashMap<u32, (NodeId, SocketAddr)> = match t.plan(&desired) {
                Some(p) => p.entries.iter().map(|(s, p)| (*s, (p.node_id, p.addr))).collect(),
                None => prev.clone(),
            };
            for (s, now) in &cur {
                if let Some(old) = prev.get(s) {
                    assert_eq!(old, now, "slot {s} was rewritten while live");
                }
            }
            let want: HashSet<(NodeId, SocketAddr)> = desired.iter().map(|p| (p.node_id, p.addr)).collect();
            assert_eq!(cur.values().copied().collect::<HashSet<_>>(), want);
            assert!(cur.keys().all(|s| *s < 512), "slots are reused, not leaked");
            prev = cur;
        }
        assert!(moves > 500, "the churn moved peers ({moves})");
    }
}
