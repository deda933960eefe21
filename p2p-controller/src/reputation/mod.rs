//! Reputation: scores per node ID and per source IP from the evidence the
//! datapath and the control plane collect ([`score`] has the weights), and
//! the bans they lead to, enforced at line rate: a banned node ID and its
//! addresses go into BLOCKED / BLOCKED_NETS with their expiry (XDP drops
//! their packets, `drop_blocked`), and the control plane disconnects it,
//! refuses its connections and blacklists it in gossipsub. Operators add
//! and lift blocks by hand (`block`, `unblock`), on node IDs, addresses and
//! prefixes. When several banned sources share a /24 (IPv4) or /64 (IPv6),
//! the prefix itself is banned.

pub mod score;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use p2p_common::codec::{addr_to_mapped, mapped_to_addr};
use p2p_common::id::NodeId;
use p2p_common::maps::{BlockEntry, REASON_NAMES, REASON_PREFIX, SourceStats, V4_MAPPED_PREFIX};
use tokio::sync::{mpsc, oneshot};

use score::{Ban, Scores, Verdict};
pub use score::{Evidence, Policy, Subject};

use crate::api::{BanView, BlockView, ReputationView, SubjectView};
use crate::dataplane::BlockTarget;
use crate::mapsync::{MapSyncHandle, Routing};
use crate::overlay::{OverlayHandle, monotonic_ns};
use crate::units::{mask, show_target};

const TICK: Duration = Duration::from_millis(250);

/// What reputation tells the control plane.
#[derive(Debug, Clone)]
pub enum Event {
    /// Disconnect, refuse and blacklist this node; drop connections from
    /// these addresses.
    Banned {
        node: Option<NodeId>,
        ips: Vec<IpAddr>,
    },
    Unbanned {
        node: NodeId,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub policy: Policy,
    /// Banned sources in one /24 or /64 that get the prefix banned.
    pub prefix_ban_after: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { policy: Policy::default(), prefix_ban_after: 3 }
    }
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Command {
    Report(Subject, Evidence, u64),
    Block {
        target: BlockTarget,
        length: Option<Duration>,
        text: String,
        reply: Reply<BlockView>,
    },
    Unblock {
        target: BlockTarget,
        reply: Reply<bool>,
    },
    View(oneshot::Sender<ReputationView>),
    NodeScores(oneshot::Sender<Vec<(NodeId, f64)>>),
    /// New scoring and ban settings (SIGHUP); scores and bans in force stay.
    SetConfig(Config),
}

/// Talks to the reputation task; clones share it.
#[derive(Clone)]
pub struct ReputationHandle {
    tx: mpsc::Sender<Command>,
}

impl ReputationHandle {
    /// Evidence against a subject (never blocks: evidence may be dropped
    /// under a flood, counted in the datapath's maps anyway).
    pub fn report(&self, subject: Subject, what: Evidence, count: u64) {
        let _ = self.tx.try_send(Command::Report(subject, what, count));
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| "reputation has stopped".to_string())?;
        rx.await.map_err(|_| "reputation has stopped".to_string())?
    }

    pub async fn block(
        &self,
        target: BlockTarget,
        length: Option<Duration>,
        text: String,
    ) -> Result<BlockView, String> {
        self.call(|reply| Command::Block { target, length, text, reply }).await
    }

    pub async fn unblock(&self, target: BlockTarget) -> Result<bool, String> {
        self.call(|reply| Command::Unblock { target, reply }).await
    }

    /// Applies new settings to later evidence and bans.
    pub async fn set_config(&self, cfg: Config) {
        let _ = self.tx.send(Command::SetConfig(cfg)).await;
    }

    pub async fn view(&self) -> ReputationView {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::View(tx)).await;
        rx.await.unwrap_or_default()
    }

    /// Scores of node IDs (for gossipsub's application-specific score).
    pub async fn node_scores(&self) -> Vec<(NodeId, f64)> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::NodeScores(tx)).await;
        rx.await.unwrap_or_default()
    }
}

/// Where the datapath's per-source evidence comes from.
pub enum Sources {
    /// SOURCE_STATS through map sync (XDP), plus what the controller saw.
    Kernel(MapSyncHandle, OverlayHandle),
    /// The userspace datapath's own counts.
    Userspace(OverlayHandle),
}

/// A block in force: what it covers in the maps, and why.
struct Applied {
    targets: Vec<BlockTarget>,
    ban: Ban,
    applied: Duration,
    /// "operator" or "reputation".
    by: &'static str,
}

struct Reputation {
    cfg: Config,
    scores: Scores,
    sync: MapSyncHandle,
    sources: Sources,
    routing: Routing,
    events: mpsc::Sender<Event>,
    /// The last counters seen per source, to turn them into increments.
    last: HashMap<[u8; 16], SourceStats>,
    last_unsolicited: HashMap<IpAddr, u64>,
    /// Blocks in force, by the key they were made for.
    applied: BTreeMap<String, Applied>,
}

pub fn spawn(
    cfg: Config,
    sync: MapSyncHandle,
    sources: Sources,
    routing: Routing,
    events: mpsc::Sender<Event>,
) -> ReputationHandle {
    let (tx, rx) = mpsc::channel(1024);
    let r = Reputation {
        cfg,
        scores: Scores::new(cfg.policy),
        sync,
        sources,
        routing,
        events,
        last: HashMap::new(),
        last_unsolicited: HashMap::new(),
        applied: BTreeMap::new(),
    };
    tokio::spawn(r.run(rx));
    ReputationHandle { tx }
}

fn subject_key(s: &Subject) -> String {
    match s {
        Subject::Node(id) => id.to_string(),
        Subject::Ip(ip) => ip.to_string(),
    }
}

/// The /24 (IPv4) or /64 (IPv6) holding `ip`, as a block target.
fn prefix_of(ip: IpAddr) -> BlockTarget {
    let prefix_len = if ip.is_ipv4() { V4_MAPPED_PREFIX + 24 } else { 64 };
    BlockTarget::Net { addr: mask(&addr_to_mapped(ip), prefix_len), prefix_len }
}

fn host(ip: IpAddr) -> BlockTarget {
    BlockTarget::Net { addr: addr_to_mapped(ip), prefix_len: 128 }
}

impl Reputation {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => self.on_tick().await,
                c = rx.recv() => match c {
                    Some(c) => self.on_command(c).await,
                    None => return,
                },
            }
        }
    }

    async fn on_command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::Report(subject, what, count) => {
                if let Some(v) = self.scores.report(subject, what, count, now) {
                    self.carry_out(v).await;
                }
            }
            Command::Block { target, length, text, reply } => {
                let _ = reply.send(self.operator_block(target, length, text, now).await);
            }
            Command::Unblock { target, reply } => {
                let _ = reply.send(self.operator_unblock(target).await);
            }
            Command::View(reply) => {
                let _ = reply.send(self.view(now));
            }
            Command::SetConfig(cfg) => {
                self.scores.policy = cfg.policy;
                self.cfg = cfg;
            }
            Command::NodeScores(reply) => {
                let v = self
                    .scores
                    .all(now)
                    .into_iter()
                    .filter_map(|(s, sc)| match s {
                        Subject::Node(id) => Some((id, sc.value)),
                        Subject::Ip(_) => None,
                    })
                    .collect();
                let _ = reply.send(v);
            }
        }
    }

    /// The addresses a node sends from (its endpoints in the maps).
    fn addresses_of(&self, node: &NodeId) -> Vec<IpAddr> {
        let router = self.routing.borrow().clone();
        let mut ips: Vec<IpAddr> = router
            .peers()
            .filter(|(_, p)| p.node_id == *node)
            .flat_map(|(_, p)| p.endpoints())
            .map(|a| a.ip())
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    fn entry(ban: &Ban) -> BlockEntry {
        let expires_ns = match ban.until {
            Some(u) => monotonic_ns() + u.saturating_duration_since(Instant::now()).as_nanos() as u64,
            None => 0,
        };
        BlockEntry { reason: ban.reason, _pad: 0, expires_ns }
    }

    /// Writes a block's targets into the maps; the control plane acts on it.
    async fn apply(
        &mut self,
        key: String,
        targets: Vec<BlockTarget>,
        ban: Ban,
        by: &'static str,
    ) -> Result<(), String> {
        let entry = Self::entry(&ban);
        for t in &targets {
            self.sync.block(*t, entry).await?;
        }
        let applied = ban.since.elapsed();
        let node = targets.iter().find_map(|t| match t {
            BlockTarget::Node(id) => Some(NodeId(*id)),
            _ => None,
        });
        let ips = targets
            .iter()
            .filter_map(|t| match t {
                BlockTarget::Net { addr, prefix_len: 128 } => Some(mapped_to_addr(*addr)),
                _ => None,
            })
            .collect();
        let _ = self.events.send(Event::Banned { node, ips }).await;
        log::warn!(
            "blocked {} ({}; {}), until {}",
            targets.iter().map(show_target).collect::<Vec<_>>().join(", "),
            REASON_NAMES.get(ban.reason as usize).copied().unwrap_or("?"),
            ban.text,
            ban.until
                .map_or("lifted".to_string(), |u| format!("in {} s", u.saturating_duration_since(ban.since).as_secs()))
        );
        self.applied.insert(key, Applied { targets, ban, applied, by });
        Ok(())
    }

    async fn remove(&mut self, key: &str) -> bool {
        let Some(a) = self.applied.remove(key) else { return false };
        for t in &a.targets {
            if let Err(e) = self.sync.unblock(*t).await {
                log::warn!("lifting the block of {}: {e}", show_target(t));
            }
        }
        for t in &a.targets {
            if let BlockTarget::Node(id) = t {
                let _ = self.events.send(Event::Unbanned { node: NodeId(*id) }).await;
            }
        }
        log::info!("block of {key} lifted");
        true
    }

    async fn carry_out(&mut self, v: Verdict) {
        match v {
            Verdict::Ban { subject, ban } => {
                let targets = match &subject {
                    Subject::Node(id) => {
                        let mut t = vec![BlockTarget::Node(id.0)];
                        t.extend(self.addresses_of(id).into_iter().map(host));
                        t
                    }
                    Subject::Ip(ip) => vec![host(*ip)],
                };
                if let Err(e) = self.apply(subject_key(&subject), targets, ban, "reputation").await {
                    log::error!("cannot ban {}: {e}", subject_key(&subject));
                }
                self.ban_crowded_prefixes().await;
            }
            Verdict::Lift { subject } => {
                self.remove(&subject_key(&subject)).await;
            }
        }
    }

    /// A /24 or /64 with `prefix_ban_after` banned addresses is banned.
    async fn ban_crowded_prefixes(&mut self) {
        let mut per_prefix: HashMap<BlockTarget, usize> = HashMap::new();
        for a in self.applied.values().filter(|a| a.by == "reputation") {
            for t in &a.targets {
                if let BlockTarget::Net { addr, prefix_len: 128 } = t {
                    *per_prefix.entry(prefix_of(mapped_to_addr(*addr))).or_default() += 1;
                }
            }
        }
        let now = Instant::now();
        for (prefix, n) in per_prefix {
            let key = show_target(&prefix);
            if n >= self.cfg.prefix_ban_after && !self.applied.contains_key(&key) {
                let ban = Ban {
                    since: now,
                    until: Some(now + self.cfg.policy.ban_base),
                    reason: REASON_PREFIX,
                    text: format!("{n} banned sources in {key}"),
                };
                if let Err(e) = self.apply(key.clone(), vec![prefix], ban, "reputation").await {
                    log::error!("cannot ban {key}: {e}");
                }
            }
        }
    }

    async fn operator_block(
        &mut self,
        target: BlockTarget,
        length: Option<Duration>,
        text: String,
        now: Instant,
    ) -> Result<BlockView, String> {
        let key = show_target(&target);
        let subject = match target {
            BlockTarget::Node(id) => Some(Subject::Node(NodeId(id))),
            BlockTarget::Net { addr, prefix_len: 128 } => Some(Subject::Ip(mapped_to_addr(addr))),
            BlockTarget::Net { .. } => None,
        };
        let ban = match subject {
            Some(s) => self.scores.operator_ban(s, length, text, now),
            None => Ban { since: now, until: length.map(|l| now + l), reason: p2p_common::maps::REASON_OPERATOR, text },
        };
        // A new block replaces an older one of the same target.
        self.remove(&key).await;
        self.apply(key.clone(), vec![target], ban.clone(), "operator").await?;
        Ok(block_view(&key, &self.applied[&key], Instant::now()))
    }

    async fn operator_unblock(&mut self, target: BlockTarget) -> Result<bool, String> {
        let key = show_target(&target);
        match target {
            BlockTarget::Node(id) => {
                self.scores.lift(&Subject::Node(NodeId(id)));
            }
            BlockTarget::Net { addr, prefix_len: 128 } => {
                self.scores.lift(&Subject::Ip(mapped_to_addr(addr)));
            }
            BlockTarget::Net { .. } => {}
        }
        let was = self.remove(&key).await;
        if !was {
            // Not one of ours (e.g. made before a restart): lift it anyway.
            self.sync.unblock(target).await?;
        }
        Ok(was)
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        for v in self.scores.expire(now) {
            self.carry_out(v).await;
        }
        // Operator blocks on prefixes expire here (the others through scores).
        let expired: Vec<String> = self
            .applied
            .iter()
            .filter(|(_, a)| a.ban.until.is_some_and(|u| now >= u))
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.remove(&k).await;
        }
        self.take_evidence(now).await;
    }

    /// Turns the datapath's counters into evidence against each source IP
    /// and the node(s) it is the endpoint of.
    async fn take_evidence(&mut self, now: Instant) {
        let (stats, overlay) = match &self.sources {
            Sources::Kernel(sync, overlay) => (sync.source_stats().await, overlay),
            Sources::Userspace(overlay) => (overlay.source_stats(), overlay),
        };
        let unsolicited = overlay.unsolicited();
        let router = self.routing.borrow().clone();
        let nodes_at = |ip: IpAddr| -> Vec<NodeId> {
            router.peers().filter(|(_, p)| p.endpoints().any(|e| e.ip() == ip)).map(|(_, p)| p.node_id).collect()
        };
        let mut reports: Vec<(Subject, Evidence, u64)> = Vec::new();
        for (addr, s) in stats {
            let prev = self.last.insert(addr, s).unwrap_or_default();
            // An LRU eviction restarts a source's counters.
            let d = |now: u64, before: u64| if now >= before { now - before } else { now };
            let ip = mapped_to_addr(addr);
            for (what, n) in [
                (Evidence::Malformed, d(s.malformed, prev.malformed)),
                (Evidence::Rate, d(s.rate, prev.rate)),
                (Evidence::Auth, d(s.auth, prev.auth)),
            ] {
                if n > 0 {
                    reports.push((Subject::Ip(ip), what, n));
                    reports.extend(nodes_at(ip).into_iter().map(|id| (Subject::Node(id), what, n)));
                }
            }
        }
        for (ip, n) in unsolicited {
            let prev = self.last_unsolicited.insert(ip, n).unwrap_or(0);
            if n > prev {
                reports.push((Subject::Ip(ip), Evidence::Unsolicited, n - prev));
            }
        }
        for (subject, what, n) in reports {
            if let Some(v) = self.scores.report(subject, what, n, now) {
                self.carry_out(v).await;
            }
        }
    }

    fn view(&self, now: Instant) -> ReputationView {
        let p = self.cfg.policy;
        let subjects = self
            .scores
            .all(now)
            .into_iter()
            .map(|(s, sc)| SubjectView {
                subject: subject_key(&s),
                kind: match s {
                    Subject::Node(_) => "node",
                    Subject::Ip(_) => "ip",
                }
                .into(),
                score: (sc.value * 100.0).round() / 100.0,
                evidence: sc.evidence.iter().map(|(e, n)| (e.name().to_string(), *n)).collect(),
                offences: sc.offences,
                ban: sc.ban.as_ref().map(|b| ban_view(b, now)),
            })
            .collect();
        let blocks = self.applied.iter().map(|(k, a)| block_view(k, a, now)).collect();
        ReputationView {
            threshold: p.threshold,
            half_life_s: p.half_life.as_secs(),
            ban_base_s: p.ban_base.as_secs(),
            ban_max_s: p.ban_max.as_secs(),
            subjects,
            blocks,
        }
    }
}

fn ban_view(b: &Ban, now: Instant) -> BanView {
    BanView {
        reason: REASON_NAMES.get(b.reason as usize).copied().unwrap_or("unknown").into(),
        text: b.text.clone(),
        remaining_s: b.until.map(|u| u.saturating_duration_since(now).as_secs()),
        since_s: now.saturating_duration_since(b.since).as_secs(),
    }
}

fn block_view(target: &str, a: &Applied, now: Instant) -> BlockView {
    BlockView {
        target: target.into(),
        by: a.by.into(),
        applied_us: a.applied.as_micros() as u64,
        ban: ban_view(&a.ban, now),
    }
}
