//! The control API's types, shared by the daemon (server) and the CLI
//! (client): one JSON request per line on the unix socket, tagged by
//! `"cmd"`, and one JSON response line back, `{"ok": true, …fields}` or
//! `{"ok": false, "error": "…"}`. README "Control API" has an example of
//! each call; the field names are the contract with other tools.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn yes() -> bool {
    true
}

fn default_redundancy() -> String {
    crate::storage::erasure::DEFAULT.to_string()
}

fn lookup_timeout() -> u64 {
    1000
}

fn get_timeout() -> u64 {
    5000
}

fn ping_timeout() -> u64 {
    2000
}

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// The control plane's view of every peer, with liveness.
    Peers,
    Lookup {
        key: String,
        #[serde(default = "lookup_timeout")]
        timeout_ms: u64,
        /// Fall back to Kademlia's iterative get without an overlay answer.
        #[serde(default = "yes")]
        fallback: bool,
    },
    DhtPut {
        key: String,
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quorum: Option<u64>,
    },
    DhtGet {
        key: String,
        #[serde(default = "get_timeout")]
        timeout_ms: u64,
        /// Ignore this node's own copy.
        #[serde(default)]
        network: bool,
    },
    PubsubPublish {
        topic: String,
        message: String,
    },
    /// Starts storing an object (`store put`): its segments follow.
    StorePutBegin {
        /// `rs:K+M` or `replicate:N`.
        #[serde(default = "default_redundancy")]
        redundancy: String,
    },
    /// One segment (base64), all but the last of the first one's length.
    StorePutSegment {
        upload: u64,
        /// Segments may be sent concurrently, each with its index (absent:
        /// the one after the last sent).
        #[serde(default)]
        index: Option<u64>,
        data: String,
    },
    /// The object is complete: its manifest is stored, its CID returned.
    StorePutEnd {
        upload: u64,
    },
    /// An object's size and segments (`store get` asks first).
    StoreInfo {
        cid: String,
    },
    /// Segment `index` of an object, rebuilt and verified (base64).
    StoreGetSegment {
        cid: String,
        index: u64,
    },
    StoreStatus {
        cid: String,
    },
    StoreLs,
    StoreRm {
        cid: String,
    },
    /// Must be the first request on its connection: a first response line,
    /// then one [`PubsubMessage`] line per message until the client leaves.
    PubsubSubscribe {
        topic: String,
    },
    /// DATA to `node_id` (a node ID, or a peer ID): end-to-end encrypted
    /// unless `plaintext`.
    Send {
        node_id: String,
        #[serde(default)]
        data: String,
        #[serde(default)]
        plaintext: bool,
    },
    /// Streams every DATA delivered to this node from now on (first
    /// request on a connection, like `pubsub_subscribe`).
    Recv,
    Ping {
        node_id: String,
        #[serde(default = "ping_timeout")]
        timeout_ms: u64,
    },
    /// Blocks a node ID, an address or a prefix (`10.1.2.0/24`) in the
    /// datapath and the control plane.
    Block {
        target: String,
        /// Seconds; absent: until `unblock`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_s: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Unblock {
        target: String,
    },
    /// Scores, evidence and bans.
    Reputation,
    /// Rate budgets: classes, assignments, the non-peer budget.
    Rate,
    /// Sets a class's budget (`nonpeer`: the budget of sources that are
    /// not peers).
    RateSet {
        class: String,
        rate: String,
    },
    /// Puts a peer in a class.
    RateAssign {
        node_id: String,
        class: String,
    },
}

impl Request {
    /// Every `cmd` name, for error messages.
    pub const NAMES: &'static str = "status, peers, lookup, dht_put, dht_get, pubsub_publish, pubsub_subscribe, send, recv, ping, block, unblock, reputation, rate, rate_set, rate_assign";
}

/// `{"ok": false, "error": …}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub ok: bool,
    pub error: String,
}

/// Packets this node's controller took delivery of, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub data: u64,
    pub lookup: u64,
    pub lookup_reply: u64,
    pub ping: u64,
    pub pong: u64,
}

/// What the overlay socket's owner reports.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct OverlayStatus {
    pub delivered: Delivered,
    /// Histograms of the DATA and LOOKUP packets delivered here, by `hops`
    /// and by `ttl` on arrival.
    pub delivered_hops: BTreeMap<String, u64>,
    pub delivered_ttl: BTreeMap<String, u64>,
    /// Packets the controller forwarded itself (XDP's `fwd_slow`, or all
    /// forwarding in userspace mode).
    pub slow_path: u64,
    pub lookups_answered: u64,
    /// LOOKUPs that arrived without a verified tag and would have been
    /// answered with more bytes than they had (refused, or not answered).
    #[serde(default)]
    pub lookups_refused_unauthenticated: u64,
}

/// Hop-by-hop authentication (`run --auth`, docs/WIRE.md v2).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct AuthStatus {
    /// "off", "optional" or "required".
    pub policy: String,
    /// Seconds between link-key renewals.
    pub rotate_s: u64,
    /// Peers with link keys in both directions now.
    pub linked: usize,
    /// Key exchanges completed, and refused by peers, since start.
    pub exchanges: u64,
    pub refused: u64,
}

/// Values counted by bucket: `counts[i]` those ≤ `bounds[i]` (and above
/// the one before), the last count those above every bound.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Histogram {
    pub bounds: Vec<u64>,
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: u64,
    pub max: u64,
}

impl Histogram {
    pub fn new(bounds: &[u64]) -> Histogram {
        Histogram { bounds: bounds.to_vec(), counts: vec![0; bounds.len() + 1], ..Histogram::default() }
    }

    pub fn record(&mut self, v: u64) {
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.count += 1;
        self.sum += v;
        self.max = self.max.max(v);
    }
}

/// The detector's histogram under `status`'s names.
impl From<&Histogram> for DetectionHistogram {
    fn from(h: &Histogram) -> DetectionHistogram {
        DetectionHistogram {
            bounds_ms: h.bounds.clone(),
            counts: h.counts.clone(),
            detections: h.count,
            max_ms: h.max,
            sum_ms: h.sum,
        }
    }
}

impl From<&DetectionHistogram> for Histogram {
    fn from(h: &DetectionHistogram) -> Histogram {
        Histogram {
            bounds: h.bounds_ms.clone(),
            counts: h.counts.clone(),
            count: h.detections,
            sum: h.sum_ms,
            max: h.max_ms,
        }
    }
}

/// What map sync reports.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SyncStats {
    /// Updates applied (kernel maps and userspace router).
    pub updates: u64,
    pub peers: usize,
    /// From the routing-table change to the maps being live, microseconds.
    pub last_us: u64,
    pub max_us: u64,
    /// Updates that took longer than 100 ms.
    pub over_100ms: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// The latest peers that entered or left the maps (newest last, at most
    /// 64), with the CLOCK_MONOTONIC time the change was live.
    pub recent: Vec<MapChange>,
    /// Every update's latency (routing change to maps live), µs.
    #[serde(default)]
    pub latency_us: Histogram,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct MapChange {
    pub node_id: String,
    /// "added" or "removed".
    pub change: String,
    pub mono_ns: u64,
}

/// The kernel maps: how big they were made and what they take.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct KernelStatus {
    /// Peer slots (`--max-peers`); 0 without the kernel datapath.
    pub max_peers: u32,
    /// Non-peer sources tracked (`--max-sources`).
    pub max_sources: u32,
    /// Kernel memory all maps take (their `memlock`), bytes.
    pub memory_bytes: u64,
    /// The same per map.
    pub maps: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct KadStatus {
    pub protocol: String,
    pub mode: String,
    pub peers: usize,
    pub routable: usize,
    pub records: usize,
    pub replication: usize,
    pub quorum: usize,
    pub kbucket_size: usize,
    pub inbound_requests: u64,
}

/// One `--bootstrap` address and how reaching it goes.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct BootstrapStatus {
    pub addr: String,
    pub peer_id: Option<String>,
    pub connected: bool,
    pub reached: bool,
    pub failures: u32,
    pub last_error: Option<String>,
    pub next_retry_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PubsubStatus {
    pub subscribed: Vec<String>,
    /// Connected peers per topic they subscribe to.
    pub peers: BTreeMap<String, usize>,
    /// Messages dropped for local subscribers that did not keep up.
    pub dropped: u64,
}

/// What the libp2p swarm's owner reports.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct NetStatus {
    pub listen_addrs: Vec<String>,
    pub external_addrs: Vec<String>,
    pub overlay_endpoints: Vec<String>,
    pub kad: KadStatus,
    pub connected_peers: usize,
    pub dead_found: u64,
    pub bootstrap: Vec<BootstrapStatus>,
    pub mdns: bool,
    pub pubsub: PubsubStatus,
    /// With `--trust-anchor` only (docs/TRUST.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustStatus>,
    /// Link keys and the tag policy.
    #[serde(default)]
    pub auth: AuthStatus,
}

/// Membership in an anchored network, as `status` reports it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TrustStatus {
    /// The anchor's fingerprint.
    pub anchor: String,
    /// This node's certificate: serial, class, end of validity (unix s),
    /// "valid" or "expired".
    pub serial: u64,
    pub class: String,
    pub not_after: u64,
    pub certificate: String,
    /// When this node asks a signer for a new certificate (unix s), how
    /// many renewals it got, and whether it signs others' (`--ca-key`).
    pub renew_at: u64,
    pub renewals: u64,
    pub signer: bool,
    /// Sequence of the newest revocation list held, if any.
    pub revocations_sequence: Option<u64>,
    /// Peers known now by membership state.
    pub members: usize,
    pub pending: usize,
    pub refused_now: usize,
    /// Admissions and refusals since start.
    pub admitted: u64,
    pub refused: u64,
    /// Peers that refused this node's certificate, and why.
    pub refused_us: std::collections::BTreeMap<String, String>,
}

/// How long the churn detector took to declare deaths: from a peer's
/// last evidence of life to the verdict.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DetectionHistogram {
    /// Upper bounds of the buckets, ms; `counts` has one more (slower).
    pub bounds_ms: Vec<u64>,
    pub counts: Vec<u64>,
    pub detections: u64,
    pub max_ms: u64,
    pub sum_ms: u64,
}

/// What the liveness component reports.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct LivenessStatus {
    /// Routed peers that showed life since they entered the maps.
    pub peers_answered: usize,
    /// Every routed peer answered (or the node has run for 5 s).
    pub ready: bool,
    /// Peers alive, suspect and dead (dead ones are PINGed back for a while).
    pub alive: usize,
    pub suspect: usize,
    pub dead: usize,
    pub detection: DetectionHistogram,
}

/// The churn detector's view of one peer.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PeerLiveness {
    /// "alive", "suspect" or "dead".
    pub state: String,
    /// Since the last evidence of life, ms (null: none yet).
    pub last_seen_ms: Option<u64>,
    /// Smoothed round-trip time of its PONGs.
    pub rtt_us: Option<u64>,
    /// Where the last evidence came from, or what declared it dead:
    /// "passive", "probe", "indirect" or "connection".
    pub source: String,
    /// Times it was declared dead while this node knew it, and how long
    /// ago the last time was (ms).
    #[serde(default)]
    pub deaths: u32,
    #[serde(default)]
    pub last_death_ms: Option<u64>,
}

/// `status`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Shards and manifests held here, repairs made (`store`).
    #[serde(default)]
    pub store: StoreSummary,
    pub instance: String,
    pub peer_id: String,
    pub node_id: String,
    /// "xdp" or "userspace".
    pub datapath: String,
    /// "driver" or "skb" (XDP mode only).
    pub xdp_mode: Option<String>,
    pub ifaces: Vec<String>,
    pub overlay_port: u16,
    /// Peers the datapath routes to.
    pub peers: usize,
    pub peers_answered: usize,
    pub ready: bool,
    #[serde(flatten)]
    pub overlay: OverlayStatus,
    /// Records served to LOOKUPs (records file and Kademlia store).
    pub records: usize,
    pub map_sync: SyncStats,
    pub kernel: KernelStatus,
    pub liveness: LivenessStatus,
    pub uptime_s: u64,
    #[serde(flatten)]
    pub net: NetStatus,
    /// The first of `overlay_endpoints`.
    pub overlay_endpoint: Option<String>,
    /// Peers in Kademlia's routing table.
    pub kad_peers: usize,
    /// End-to-end DATA sessions and envelopes.
    #[serde(default)]
    pub e2e: crate::e2e::E2eStatus,
    /// Capabilities the daemon kept after set-up, and those it dropped.
    #[serde(default)]
    pub privileges: crate::sys::Privileges,
}

/// One peer as the control plane sees it (`peers`, `maps … --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    /// `null` for static peers (a peers file names node IDs only).
    pub peer_id: Option<String>,
    pub node_id: String,
    /// "kad" (in Kademlia's routing table), "static" (`--peers`) or
    /// "connected" (connected, not in the table).
    pub source: String,
    /// Kademlia's addresses for it.
    pub addresses: Vec<String>,
    /// The overlay endpoint the datapath sends to.
    pub overlay: Option<String>,
    pub connected: bool,
    /// Whether map sync puts it in PEERS/ROUTES.
    pub routable: bool,
    pub state: String,
    pub agent: String,
    /// The churn detector's view (null: it does not watch this peer).
    #[serde(default)]
    pub liveness: Option<PeerLiveness>,
}

/// `peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peers {
    pub node_id: String,
    pub peers: Vec<PeerView>,
}

/// `lookup`: the overlay's answer, or Kademlia's after a fallback.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Lookup {
    pub key: String,
    pub found: bool,
    /// "found", "not_found" or "refused".
    pub status: String,
    pub value: Option<String>,
    /// Node ID of the node that answered.
    pub answered_by: Option<String>,
    /// The owner's overlay endpoint (overlay path; null when local).
    pub owner: Option<String>,
    /// Links the LOOKUP crossed (null for Kademlia).
    pub hops: Option<u32>,
    pub rtt_us: u64,
    /// "overlay", "local" or "kademlia".
    pub path: String,
    /// Who vouches for the answer (a peer ID): overlay path, the owner in
    /// `answered_by`, which signed its LOOKUP_REPLY; Kademlia path, the
    /// record's publisher. Null: unsigned (a LOOKUP not authenticated on its
    /// last hop; an unsigned record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// Kademlia path: the peer that returned the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Kademlia path: why the overlay's answer was not taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// Kademlia path: the overlay's answer, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<Box<Lookup>>,
}

/// `dht_put`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DhtPut {
    pub key: String,
    pub stored: bool,
    pub quorum: usize,
    pub rtt_us: u64,
}

/// `dht_get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DhtGet {
    pub key: String,
    pub found: bool,
    pub value: Option<String>,
    /// Peer ID of the peer that returned it (null: this node's store).
    pub from: Option<String>,
    pub answered_by: Option<String>,
    /// "network" or "local".
    pub source: Option<String>,
    pub rtt_us: u64,
    /// The peer that signed the record (verified); null: unsigned.
    #[serde(default)]
    pub publisher: Option<String>,
}

/// `pubsub_publish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Published {
    pub topic: String,
    pub message_id: String,
    /// Connected peers subscribed to the topic.
    pub peers: usize,
    pub local_subscribers: usize,
}

/// `store_put_begin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreUpload {
    pub upload: u64,
}

/// `store_put_end` (`store put --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorePut {
    pub cid: String,
    pub size: u64,
    pub segments: u64,
    pub redundancy: String,
    /// Shards placed in all.
    pub shards: u64,
    /// Distinct nodes holding them.
    pub holders: u64,
    /// Peer IDs of the nodes holding the manifest.
    pub manifest_holders: Vec<String>,
}

/// `store_info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreInfo {
    pub cid: String,
    pub size: u64,
    pub segments: u64,
    pub segment_size: u64,
    pub redundancy: String,
}

/// `store_get_segment`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreSegmentData {
    pub index: u64,
    /// base64.
    pub data: String,
}

/// `store status --json`: per segment its shards, their holders and health.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreStatus {
    pub cid: String,
    pub size: u64,
    pub redundancy: String,
    pub owner: String,
    pub revision: u64,
    /// "full" (every segment has all its shards on live nodes), "degraded"
    /// (readable, repair due) or "lost" (some segment has fewer than needed).
    pub health: String,
    pub manifest_holders: Vec<String>,
    pub segments: Vec<StoreSegmentStatus>,
    /// Repairs this node made (of any object) and the last one's duration.
    pub repairs_here: u64,
    pub repaired_shards_here: u64,
    pub last_repair_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreSegmentStatus {
    pub index: u64,
    pub size: u64,
    /// Shards with at least one live holder.
    pub healthy: u64,
    pub total: u64,
    pub shards: Vec<StoreShardStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreShardStatus {
    pub index: u64,
    pub cid: String,
    pub holders: Vec<String>,
    pub live_holders: Vec<String>,
    pub healthy: bool,
}

/// `store ls --json`: the objects whose manifest this node holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreObject {
    pub cid: String,
    pub size: u64,
    pub segments: u64,
    pub redundancy: String,
    /// Put from this node (only its owner may remove it).
    pub mine: bool,
    pub revision: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreLs {
    pub objects: Vec<StoreObject>,
}

/// `store rm --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreRm {
    pub cid: String,
    /// Nodes that removed their manifest and shards.
    pub removed_from: u64,
    /// Holders that could not be reached (their copies stay until repair
    /// finds no manifest for them).
    pub unreachable: Vec<String>,
}

/// `status.store`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreSummary {
    /// How long each repair took, ms (from the sweep's start to the new
    /// manifest sent).
    #[serde(default)]
    pub repair_ms: Histogram,
    pub shards: u64,
    pub used_bytes: u64,
    pub quota_bytes: u64,
    pub manifests: u64,
    pub corrupt_shards: u64,
    pub repairs: u64,
    pub repaired_shards: u64,
    pub lost_segments: u64,
    /// Shard copies dropped as beyond policy (garbage collection).
    pub collected_shards: u64,
    /// Hot segments cached here now (popularity), and their bytes.
    pub cached_segments: u64,
    pub cache_bytes: u64,
    /// Segment reads served from the cache; segments ever cached here;
    /// cached segments dropped because no one read them (cooled).
    pub cache_hits: u64,
    pub cached_total: u64,
    pub cooled_total: u64,
}

/// `pubsub_subscribe`'s first line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscribed {
    pub subscribed: String,
}

/// A pub/sub message for a local subscriber (one line each).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PubsubMessage {
    pub topic: String,
    /// The publisher's peer ID.
    pub from: Option<String>,
    pub message_id: String,
    pub data: String,
}

/// `send`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    pub sent: bool,
    /// The first hop (null: delivered to this node).
    pub via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delivered_locally: bool,
    /// End-to-end encrypted (the envelope only the destination opens).
    #[serde(default)]
    pub encrypted: bool,
}

/// `ping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pinged {
    pub rtt_us: u64,
    /// Node ID of the node that answered.
    pub from: String,
    pub via: Option<String>,
}

/// A ban or block in force.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BanView {
    /// "operator", "malformed", "rate", "auth", "probes", "records",
    /// "lookup", "gossipsub", "prefix" or "shards".
    pub reason: String,
    pub text: String,
    /// Null: until lifted.
    pub remaining_s: Option<u64>,
    /// How long it has been in force.
    pub since_s: u64,
}

/// One block the daemon made (`block`, or a reputation ban).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BlockView {
    /// A node ID, an address or a prefix.
    pub target: String,
    /// "operator" or "reputation".
    pub by: String,
    /// From the decision to the kernel maps holding it, microseconds.
    pub applied_us: u64,
    #[serde(flatten)]
    pub ban: BanView,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubjectView {
    /// A node ID or an address.
    pub subject: String,
    /// "node" or "ip".
    pub kind: String,
    pub score: f64,
    /// Events of evidence by kind.
    pub evidence: BTreeMap<String, u64>,
    pub offences: u32,
    pub ban: Option<BanView>,
}

/// `reputation`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReputationView {
    pub threshold: f64,
    pub half_life_s: u64,
    pub ban_base_s: u64,
    pub ban_max_s: u64,
    /// Lowest score first.
    pub subjects: Vec<SubjectView>,
    pub blocks: Vec<BlockView>,
}

/// `unblock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unblocked {
    pub target: String,
    /// Whether the daemon had that block.
    pub was_blocked: bool,
}

/// `rate` (and the answer to `rate_set` / `rate_assign`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RateView {
    /// Class → budget ("default" is every peer not assigned another).
    pub classes: BTreeMap<String, String>,
    /// Node ID → class.
    pub assigned: BTreeMap<String, String>,
    pub nonpeer: String,
    pub burst_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = Histogram::new(&[10, 100]);
        for v in [0, 10, 11, 100, 101, 5000] {
            h.record(v);
        }
        assert_eq!(h.counts, [2, 2, 2]);
        assert_eq!((h.count, h.sum, h.max), (6, 5222, 5000));
    }

    #[test]
    fn requests_read_as_documented() {
        let r: Request = serde_json::from_str(r#"{"cmd":"lookup","key":"k"}"#).unwrap();
        assert_eq!(r, Request::Lookup { key: "k".into(), timeout_ms: 1000, fallback: true });
        let r: Request = serde_json::from_str(r#"{"cmd":"dht_put","key":"k","value":"v","quorum":2}"#).unwrap();
        assert_eq!(r, Request::DhtPut { key: "k".into(), value: "v".into(), quorum: Some(2) });
        assert_eq!(serde_json::to_string(&Request::Status).unwrap(), r#"{"cmd":"status"}"#);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"lookup"}"#).is_err(), "key is required");
    }

    #[test]
    fn status_is_flat() {
        let s = Status { overlay_port: 9470, ..Default::default() };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["overlay_port"], 9470);
        assert!(v["delivered"].is_object() && v["kad"].is_object() && v["bootstrap"].is_array());
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back.overlay_port, 9470);
    }
}
