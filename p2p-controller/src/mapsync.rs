//! Map sync: the only owner of the kernel datapath ([`Dataplane`]). Its
//! thread turns the set of peers the datapath should route to (static
//! peers, plus Kademlia's routing table filtered by liveness and known
//! overlay endpoints) into PEERS slots, the kernel maps and the userspace
//! router, which it publishes to the overlay socket's owner through a
//! `watch` channel. Everything else reaches the maps through
//! [`MapSyncHandle`]'s commands; nobody else holds a lock on them.
//!
//! Why slots are handed out this way: a packet that read the previous
//! routing generation may still be on its way to PEERS[slot] while a new
//! generation is swapped in. `Dataplane::set_peers` writes new slots first,
//! flips the generation, and clears removed slots only after a grace
//! period, so the old generation's slots stay valid. That only holds if a
//! slot freed by one update is never given to another peer by the same
//! update: [`SlotTable`] keeps freed slots in quarantine until the next
//! plan, which is applied after the previous one finished (one worker
//! thread applies plans in order).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use p2p_common::codec;
use p2p_common::id::NodeId;
use p2p_common::maps::{Counter, MAX_PEERS, PEER_LIVE, PEER_V4, PeerEntry};
use tokio::sync::{oneshot, watch};

use crate::api::SyncStats;
use crate::dataplane::Dataplane;
use crate::userspace::{Peer, Router};

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
#[derive(Debug, Default, Clone)]
pub struct SlotTable {
    by_id: HashMap<NodeId, (u32, SocketAddr)>,
    free: BTreeSet<u32>,
    /// Slots freed by the last plan: reusable from the next one on.
    quarantine: Vec<u32>,
    /// Slots below this have been handed out at least once.
    high: u32,
}

impl SlotTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn slot_of(&self, id: &NodeId) -> Option<u32> {
        self.by_id.get(id).map(|(s, _)| *s)
    }

    /// The plan that takes the table to `desired` (duplicates by node ID:
    /// the first wins), or `None` when nothing changes. Peers beyond
    /// `MAX_PEERS` slots are left out with a warning.
    pub fn plan(&mut self, desired: &[Peer]) -> Option<Plan> {
        self.free.extend(self.quarantine.drain(..));
        let mut want: HashMap<NodeId, SocketAddr> = HashMap::with_capacity(desired.len());
        let mut order = Vec::with_capacity(desired.len());
        for p in desired {
            if let std::collections::hash_map::Entry::Vacant(e) = want.entry(p.node_id) {
                e.insert(p.addr);
                order.push(p.node_id);
            }
        }
        let gone: Vec<NodeId> = self.by_id.keys().filter(|id| !want.contains_key(id)).copied().collect();
        let mut removed = 0;
        for id in &gone {
            if let Some((slot, _)) = self.by_id.remove(id) {
                self.quarantine.push(slot);
                removed += 1;
            }
        }
        let (mut added, mut changed) = (0, 0);
        for id in order {
            let addr = want[&id];
            match self.by_id.get_mut(&id) {
                Some((_, a)) if *a == addr => {}
                Some((_, a)) => {
                    *a = addr;
                    changed += 1;
                }
                None => {
                    let slot = match self.free.pop_first() {
                        Some(s) => s,
                        None if self.high < MAX_PEERS => {
                            self.high += 1;
                            self.high - 1
                        }
                        None => {
                            log::warn!("all {MAX_PEERS} peer slots in use: {id} is not routed to");
                            continue;
                        }
                    };
                    self.by_id.insert(id, (slot, addr));
                    added += 1;
                }
            }
        }
        if added + removed + changed == 0 {
            return None;
        }
        let mut entries: Vec<(u32, Peer)> =
            self.by_id.iter().map(|(id, (slot, addr))| (*slot, Peer { node_id: *id, addr: *addr })).collect();
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

/// Takes the maps and the router to `peers` and records how long it took
/// since `since`. A failed update must not stick: the slot table goes back
/// to what the maps hold, so the same set can be tried again.
fn sync(w: &mut Worker, peers: &[Peer], since: Instant) -> Result<(), String> {
    let before = w.slots.clone();
    let Some(plan) = w.slots.plan(peers) else { return Ok(()) };
    let result = apply(w, &plan);
    if result.is_err() {
        w.slots = before;
    }
    record(&mut w.stats, &plan, since.elapsed(), result.clone());
    result
}

/// Applies a plan: kernel maps first (new slots, generation flip, stale
/// slots cleared), then the userspace router in one swap.
fn apply(w: &mut Worker, plan: &Plan) -> Result<(), String> {
    let entries: Vec<(u32, PeerEntry)> = plan.entries.iter().map(|(s, p)| (*s, peer_entry(p))).collect();
    let router = Router::new(w.self_id, plan.entries.clone()).map_err(|e| e.to_string())?;
    if let Some(dp) = w.dp.as_mut() {
        dp.set_peers_routed(&entries, router.table()).map_err(|e| e.to_string())?;
    }
    w.routing.send_replace(Arc::new(router));
    Ok(())
}

/// A desired peer set and when the change that produced it was seen.
pub struct Desired {
    pub peers: Vec<Peer>,
    pub since: Instant,
}

enum Command {
    Peers(Desired),
    /// Userspace datapath: its counters into STATS.
    MirrorStats(Vec<Counter>),
    Status(oneshot::Sender<SyncStats>),
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
    stats: SyncStats,
    routing: watch::Sender<Arc<Router>>,
    /// Poll aya-log's ring (`--ebpf-log`).
    flush_logs: bool,
}

/// The peers the datapath routes to, as the userspace router: published by
/// map sync after every update.
pub type Routing = watch::Receiver<Arc<Router>>;

/// Starts map sync with `static_peers` already in the maps (an error here
/// is a start-up error: the peer set cannot be routed).
pub fn spawn(
    self_id: NodeId,
    dp: Option<Dataplane>,
    static_peers: &[Peer],
    flush_logs: bool,
) -> Result<(MapSyncHandle, Routing), String> {
    let router = Router::new(self_id, Vec::new()).map_err(|e| e.to_string())?;
    let (routing, rx) = watch::channel(Arc::new(router));
    let mut w = Worker { self_id, dp, slots: SlotTable::new(), stats: SyncStats::default(), routing, flush_logs };
    sync(&mut w, static_peers, Instant::now())?;
    let (tx, commands) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("map-sync".into())
        .spawn(move || worker(w, commands))
        .map_err(|e| format!("cannot start the map-sync thread: {e}"))?;
    Ok((MapSyncHandle { tx }, rx))
}

impl MapSyncHandle {
    /// Takes the maps to `peers` (the newest set wins when several queue up).
    pub fn submit(&self, peers: Vec<Peer>, since: Instant) {
        let _ = self.tx.send(Command::Peers(Desired { peers, since }));
    }

    pub fn mirror_stats(&self, counters: Vec<Counter>) {
        let _ = self.tx.send(Command::MirrorStats(counters));
    }

    pub async fn status(&self) -> SyncStats {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Status(tx));
        rx.await.unwrap_or_default()
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
                Command::Status(reply) => {
                    let _ = reply.send(w.stats.clone());
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

fn record(stats: &mut SyncStats, plan: &Plan, took: Duration, result: Result<(), String>) {
    match result {
        Ok(()) => {
            stats.updates += 1;
            stats.peers = plan.entries.len();
            stats.last_us = took.as_micros() as u64;
            stats.max_us = stats.max_us.max(stats.last_us);
            stats.over_100ms += u64::from(took > Duration::from_millis(100));
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
        Peer { node_id: NodeId([n; 32]), addr: SocketAddr::new([10, 0, 0, n].into(), port) }
    }

    fn slots(plan: &Plan) -> HashMap<u32, NodeId> {
        plan.entries.iter().map(|(s, p)| (*s, p.node_id)).collect()
    }

    #[test]
    fn unchanged_set_is_no_plan_and_slots_are_stable() {
        let mut t = SlotTable::new();
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
    fn address_change_keeps_the_slot() {
        let mut t = SlotTable::new();
        t.plan(&[peer(1, 1), peer(2, 1)]).unwrap();
        let s2 = t.slot_of(&NodeId([2; 32])).unwrap();
        let p = t.plan(&[peer(1, 1), peer(2, 7)]).unwrap();
        assert_eq!((p.added, p.removed, p.changed), (0, 0, 1));
        assert_eq!(t.slot_of(&NodeId([2; 32])), Some(s2));
        assert!(p.entries.contains(&(s2, peer(2, 7))));
    }

    #[test]
    fn freed_slot_is_not_reused_by_the_same_plan() {
        let mut t = SlotTable::new();
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
        let mut t = SlotTable::new();
        let p = t.plan(&[peer(1, 1), peer(1, 2)]).unwrap();
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].1, peer(1, 1));
    }

    /// The property the datapath relies on, over random churn: between two
    /// consecutive plans, a slot either keeps its node ID, or was unused in
    /// one of the two. A slot never moves from one peer straight to another.
    #[test]
    fn random_churn_never_hands_a_slot_straight_to_another_peer() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut t = SlotTable::new();
        let mut prev: HashMap<u32, NodeId> = HashMap::new();
        let mut live: Vec<u8> = Vec::new();
        for _ in 0..5_000 {
            for _ in 0..rng.gen_range(0..4) {
                if !live.is_empty() && rng.gen_bool(0.5) {
                    live.swap_remove(rng.gen_range(0..live.len()));
                }
            }
            for _ in 0..rng.gen_range(0..4) {
                let n: u8 = rng.r#gen();
                if !live.contains(&n) {
                    live.push(n);
                }
            }
            let desired: Vec<Peer> = live.iter().map(|n| peer(*n, 9470)).collect();
            let cur = match t.plan(&desired) {
                Some(p) => slots(&p),
                None => prev.clone(),
            };
            for (s, id) in &cur {
                if let Some(old) = prev.get(s) {
                    assert_eq!(old, id, "slot {s} went from one peer to another in one plan");
                }
            }
            let want: HashSet<NodeId> = desired.iter().map(|p| p.node_id).collect();
            assert_eq!(cur.values().copied().collect::<HashSet<_>>(), want);
            assert!(cur.keys().all(|s| *s < 512), "slots are reused, not leaked");
            prev = cur;
        }
    }
}
