//! The docs/WIRE.md rules in userspace: the fallback datapath and the
//! baseline of every benchmark. It also re-decides the packets the XDP
//! program hands up (local deliveries and the slow path), uncounted since
//! XDP counted them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use p2p_common::auth;
use p2p_common::codec::{self, Packet, addr_to_mapped};
use p2p_common::counters::{self as c, COUNTER_COUNT};
use p2p_common::id::NodeId;
use p2p_common::maps::{Counter, LinkSecret, RateBudget, SELF_REF};
use p2p_common::route_build::{self, RouteError, RouteTable};
use p2p_common::wire::*;

/// A neighbour as the datapaths see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node_id: NodeId,
    /// The overlay endpoint packets are sent to.
    pub addr: SocketAddr,
    /// Its other overlay endpoints: packets from any of them are from it.
    pub aliases: Vec<SocketAddr>,
    /// Its rate budget (docs/WIRE.md step 4).
    pub budget: RateBudget,
}

impl Peer {
    pub fn new(node_id: NodeId, addr: SocketAddr) -> Peer {
        Peer { node_id, addr, aliases: Vec::new(), budget: RateBudget::UNLIMITED }
    }

    /// Every endpoint the peer sends from.
    pub fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.addr).chain(self.aliases.iter().copied())
    }
}

/// What to do with one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped, counted under this counter.
    Drop(u32),
    /// For this node's controller (`local`).
    Local(Packet),
    /// Answer a PING to this node (`pong`).
    Pong { to: SocketAddr, bytes: Vec<u8> },
    /// Send on to the next hop (`fwd`).
    Forward { to: SocketAddr, bytes: Vec<u8>, slot: u32 },
}

impl Verdict {
    pub fn counter(&self) -> u32 {
        match self {
            Verdict::Drop(i) => *i,
            Verdict::Local(_) => c::LOCAL,
            Verdict::Pong { .. } => c::PONG,
            Verdict::Forward { .. } => c::FWD,
        }
    }
}

/// `run --auth`: what step 5 demands of packets (docs/WIRE.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthPolicy {
    /// No link keys, no tags: every packet goes out untagged (version 1).
    Off,
    /// Tags are made where a link has keys and verified where present;
    /// untagged packets are accepted.
    #[default]
    Optional,
    /// Untagged packets are dropped (LOOKUP_REPLY excepted); only peers
    /// with link keys are routed to.
    Required,
}

impl AuthPolicy {
    /// CONFIG's policy bits.
    pub fn bits(self) -> u16 {
        use p2p_common::maps::{POLICY_AUTH_REQUIRED, POLICY_AUTH_VERIFY};
        match self {
            AuthPolicy::Off => 0,
            AuthPolicy::Optional => POLICY_AUTH_VERIFY,
            AuthPolicy::Required => POLICY_AUTH_VERIFY | POLICY_AUTH_REQUIRED,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AuthPolicy::Off => "off",
            AuthPolicy::Optional => "optional",
            AuthPolicy::Required => "required",
        }
    }
}

/// The link keys of every neighbour endpoint (what LINK_KEYS holds).
pub type LinkTable = HashMap<SocketAddr, LinkSecret>;

/// Replay windows of the userspace datapath (REPLAY's content), by sender
/// endpoint, key ID and stream.
#[derive(Debug, Default)]
pub struct ReplayState(HashMap<(SocketAddr, u8, u8), [u64; auth::REPLAY_BLOCKS]>);

/// Windows kept before they are all forgotten (REPLAY is an LRU).
const MAX_REPLAY_WINDOWS: usize = 16_384;

/// Step 5 in userspace: whether the datagram from `from` passes `policy`
/// under `links`, marking its sequence number seen.
pub fn auth_passes(
    datagram: &[u8],
    from: SocketAddr,
    policy: AuthPolicy,
    links: &LinkTable,
    replay: &mut ReplayState,
) -> bool {
    if policy == AuthPolicy::Off {
        return true;
    }
    if !auth::tagged(datagram[offset::VERSION], datagram[offset::FLAGS]) {
        return policy != AuthPolicy::Required || datagram[offset::KIND] == KIND_LOOKUP_REPLY;
    }
    let Some(secret) = links.get(&from) else { return false };
    let (key_id, stream, seq) = auth::v2_fields(datagram);
    let key = match key_id {
        0 => return false,
        k if k == secret.rx_id[0] => &secret.rx[0],
        k if k == secret.rx_id[1] => &secret.rx[1],
        _ => return false,
    };
    let tag = u64::from_be_bytes(datagram[offset::TAG..offset::TAG + 8].try_into().expect("validated length"));
    if auth::tag_of(key, datagram) != Some(tag) {
        return false;
    }
    if replay.0.len() >= MAX_REPLAY_WINDOWS && !replay.0.contains_key(&(from, key_id, stream)) {
        replay.0.clear();
    }
    let w = replay.0.entry((from, key_id, stream)).or_insert([0; auth::REPLAY_BLOCKS]);
    let slot = auth::replay_slot(seq);
    match auth::replay_check(w[slot], seq) {
        Some(next) => {
            w[slot] = next;
            true
        }
        None => false,
    }
}

/// A block-list entry: CLOCK_MONOTONIC expiry in ns (0: never).
pub type Expiry = u64;

/// The block list (docs/WIRE.md step 3): node IDs, and address prefixes
/// (IPv6, IPv4 as IPv4-mapped, as BLOCKED_NETS holds them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blocks {
    pub nodes: HashMap<NodeId, Expiry>,
    pub nets: Vec<([u8; 16], u32, Expiry)>,
}

fn in_force(expires: Expiry, now: u64) -> bool {
    expires == 0 || now < expires
}

/// Whether the first `len` bits of `a` and `b` agree.
pub fn prefix_match(a: &[u8; 16], b: &[u8; 16], len: u32) -> bool {
    let full = (len / 8) as usize;
    let rest = len % 8;
    a[..full.min(16)] == b[..full.min(16)]
        && (rest == 0 || full >= 16 || (a[full] ^ b[full]) & (0xffu8 << (8 - rest)) == 0)
}

impl Blocks {
    pub fn blocked(&self, from: IpAddr, src_id: &NodeId, now: u64) -> bool {
        if let Some(e) = self.nodes.get(src_id)
            && in_force(*e, now)
        {
            return true;
        }
        let ip = addr_to_mapped(from);
        self.nets.iter().any(|(net, len, e)| in_force(*e, now) && prefix_match(&ip, net, *len))
    }
}

/// GCRA clocks of the sources the userspace datapath has seen (the kernel
/// keeps them in RATE and RATE_SOURCES), and its per-source evidence.
#[derive(Debug, Default)]
pub struct SourceState {
    peers: HashMap<u32, (u64, u64)>,
    others: HashMap<IpAddr, (u64, u64)>,
}

/// Most non-peer sources whose rate clocks are kept (as RATE_SOURCES's
/// LRU, but forgetting them all at once).
const MAX_SOURCE_CLOCKS: usize = 16_384;

/// One GCRA clock (see p2p-ebpf's `filter::conforms`).
fn conforms(tat: &mut u64, cost: u64, now: u64, burst: u64) -> bool {
    let after = (*tat).max(now) + cost;
    if after > now + burst {
        return false;
    }
    *tat = after;
    true
}

fn admit(clocks: &mut (u64, u64), budget: &RateBudget, bytes: u64, now: u64) -> bool {
    let mut c = *clocks;
    if budget.pkt_cost_ns != 0 && !conforms(&mut c.0, budget.pkt_cost_ns, now, budget.burst_ns) {
        return false;
    }
    if budget.byte_cost_ps != 0 && !conforms(&mut c.1, budget.byte_cost_ns(bytes), now, budget.burst_ns) {
        return false;
    }
    *clocks = c;
    true
}

pub struct Router {
    pub self_id: NodeId,
    table: RouteTable,
    peers: HashMap<u32, Peer>,
    /// Every endpoint of every peer → its slot.
    senders: HashMap<SocketAddr, u32>,
    blocks: Blocks,
    nonpeer_budget: RateBudget,
}

impl Router {
    pub fn new(self_id: NodeId, peers: Vec<(u32, Peer)>) -> Result<Router, RouteError> {
        Router::with_policy(self_id, peers, Blocks::default(), RateBudget::UNLIMITED)
    }

    pub fn with_policy(
        self_id: NodeId,
        peers: Vec<(u32, Peer)>,
        blocks: Blocks,
        nonpeer_budget: RateBudget,
    ) -> Result<Router, RouteError> {
        let ids: Vec<(u32, [u8; 32])> = peers.iter().map(|(s, p)| (*s, p.node_id.0)).collect();
        let table = route_build::build(&self_id.0, &ids)?;
        let senders = peers.iter().flat_map(|(s, p)| p.endpoints().map(move |e| (e, *s))).collect();
        Ok(Router { self_id, table, peers: peers.into_iter().collect(), senders, blocks, nonpeer_budget })
    }

    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    pub fn peer(&self, slot: u32) -> Option<&Peer> {
        self.peers.get(&slot)
    }

    pub fn peers(&self) -> impl Iterator<Item = (&u32, &Peer)> {
        self.peers.iter()
    }

    /// The XOR-closest of this node and its peers: `None` means this node.
    pub fn next_hop(&self, key: &NodeId) -> Option<Option<(u32, &Peer)>> {
        let r = self.table.next_hop(&key.0)?;
        if r == SELF_REF {
            return Some(None);
        }
        let slot = r & !p2p_common::maps::REF_LEAF;
        self.peers.get(&slot).map(|p| Some((slot, p)))
    }

    /// The peer slot a datagram from `from` comes from.
    pub fn sender(&self, from: SocketAddr) -> Option<u32> {
        self.senders.get(&from).copied()
    }

    /// docs/WIRE.md steps 2–8 without rate budgets and at time 0 (expiring
    /// blocks count as in force): routing decisions alone.
    pub fn process(&self, datagram: &[u8], from: SocketAddr) -> Verdict {
        self.process_at(datagram, from, 0, &mut SourceState::default(), None, None)
    }

    /// docs/WIRE.md "What a node does with a packet to its overlay port",
    /// steps 2–8, at CLOCK_MONOTONIC `now` ns; `frame_bytes`, when given,
    /// is charged to the source's rate budget (`None`: no budgets, as for
    /// the packets XDP hands up, which it already charged); `auth`, when
    /// given, is step 5's policy and state (`None`: XDP verified already).
    /// Reads the header in place: only packets for this node are decoded,
    /// and a forwarded one (or a PONG) is the datagram with its ttl and
    /// hops patched and its tag stripped: the sender tags it for the link
    /// it takes.
    pub fn process_at(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        now: u64,
        sources: &mut SourceState,
        frame_bytes: Option<u64>,
        auth: Option<(AuthPolicy, &LinkTable, &mut ReplayState)>,
    ) -> Verdict {
        if codec::validate(datagram).is_err() {
            return Verdict::Drop(c::DROP_MALFORMED);
        }
        let id_at = |off: usize| NodeId(datagram[off..off + 32].try_into().expect("validated length"));
        let (kind, ttl) = (datagram[offset::KIND], datagram[offset::TTL]);
        let (src_id, dst_key) = (id_at(offset::SRC_ID), id_at(offset::DST_KEY));
        if self.blocks.blocked(from.ip(), &src_id, now) {
            return Verdict::Drop(c::DROP_BLOCKED);
        }
        if let Some(bytes) = frame_bytes {
            let sender = self.sender(from);
            let (clocks, budget) = match sender {
                Some(slot) => (sources.peers.entry(slot).or_default(), self.peers[&slot].budget),
                None => {
                    if sources.others.len() >= MAX_SOURCE_CLOCKS && !sources.others.contains_key(&from.ip()) {
                        sources.others.clear();
                    }
                    (sources.others.entry(from.ip()).or_default(), self.nonpeer_budget)
                }
            };
            if !admit(clocks, &budget, bytes, now) {
                return Verdict::Drop(c::DROP_RATE);
            }
        }
        if let Some((policy, links, replay)) = auth
            && !auth_passes(datagram, from, policy, links, replay)
        {
            return Verdict::Drop(c::DROP_AUTH);
        }
        let for_me = dst_key == self.self_id;
        let local = || Verdict::Local(Packet::decode(datagram).expect("validated"));
        match kind {
            KIND_PING if for_me => {
                let ping = Packet::decode(datagram).expect("validated");
                let pong = Packet {
                    kind: KIND_PONG,
                    flags: 0,
                    ttl: DEFAULT_TTL,
                    hops: 0,
                    class: ping.class,
                    msg_id: ping.msg_id,
                    src_id: self.self_id,
                    dst_key: ping.src_id,
                    tag: [0; 8],
                    payload: ping.payload,
                };
                Verdict::Pong { to: from, bytes: pong.encode() }
            }
            KIND_LOOKUP | KIND_DATA | KIND_PING => match self.next_hop(&dst_key) {
                None => Verdict::Drop(c::DROP_NO_ROUTE),
                Some(None) if kind == KIND_LOOKUP || for_me => local(),
                Some(None) => Verdict::Drop(c::DROP_NO_ROUTE),
                Some(Some(_)) if ttl <= 1 => Verdict::Drop(c::DROP_TTL),
                Some(Some((slot, peer))) => {
                    let mut bytes = datagram.to_vec();
                    bytes[offset::TTL] = ttl - 1;
                    bytes[offset::HOPS] = bytes[offset::HOPS].saturating_add(1);
                    auth::strip(&mut bytes);
                    Verdict::Forward { to: peer.addr, bytes, slot }
                }
            },
            // LOOKUP_REPLY, PONG
            _ if for_me => local(),
            _ => Verdict::Drop(c::DROP_NO_ROUTE),
        }
    }
}

/// Counters of the userspace datapath, in STATS layout. Bytes are counted as
/// the Ethernet frame the XDP program would have seen, so modes compare.
#[derive(Clone, Debug)]
pub struct Counters(pub Vec<Counter>);

impl Default for Counters {
    fn default() -> Self {
        Counters(vec![Counter::default(); COUNTER_COUNT as usize])
    }
}

impl Counters {
    /// `from` is canonical (IPv4 peers as IPv4, as the relay hands them over).
    pub fn count(&mut self, index: u32, udp_payload_len: usize, from: SocketAddr) {
        let c = &mut self.0[index as usize];
        c.packets += 1;
        c.bytes += Counters::frame_bytes(udp_payload_len, from);
    }

    /// The Ethernet frame XDP would have seen for a datagram of
    /// `udp_payload_len` bytes from `from` (no IP options).
    pub fn frame_bytes(udp_payload_len: usize, from: SocketAddr) -> u64 {
        let ip_hdr = if from.is_ipv4() { 20 } else { 40 };
        (14 + ip_hdr + 8 + udp_payload_len) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }
    fn from() -> SocketAddr {
        "10.0.0.9:9470".parse().unwrap()
    }
    fn router() -> Router {
        let peers = vec![
            (0, Peer::new(id(0x80), "10.0.0.2:9470".parse().unwrap())),
            (1, Peer::new(id(0x40), "10.0.0.3:9471".parse().unwrap())),
        ];
        Router::new(id(0x01), peers).unwrap()
    }

    #[test]
    fn forwards_to_xor_closest_with_ttl_and_hops() {
        let r = router();
        let p = Packet::new(KIND_DATA, id(9), id(0x80), 7, b"x".to_vec());
        match r.process(&p.encode(), from()) {
            Verdict::Forward { to, bytes, slot } => {
                assert_eq!(slot, 0);
                assert_eq!(to, "10.0.0.2:9470".parse().unwrap());
                let out = Packet::decode(&bytes).unwrap();
                assert_eq!((out.ttl, out.hops), (DEFAULT_TTL - 1, 1));
                assert_eq!(out.payload, b"x");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn every_step_has_its_counter() {
        let r = router();
        assert_eq!(r.process(b"short", from()), Verdict::Drop(c::DROP_MALFORMED));
        let mut ttl1 = Packet::new(KIND_DATA, id(9), id(0x40), 1, vec![]);
        ttl1.ttl = 1;
        assert_eq!(r.process(&ttl1.encode(), from()), Verdict::Drop(c::DROP_TTL));
        // This node is closest to 0x00.. but it is not its ID: DATA has no route.
        let lost = Packet::new(KIND_DATA, id(9), id(0x00), 1, vec![]);
        assert_eq!(r.process(&lost.encode(), from()), Verdict::Drop(c::DROP_NO_ROUTE));
        let lookup = Packet::new(KIND_LOOKUP, id(9), id(0x00), 1, vec![0; 20]);
        assert!(matches!(r.process(&lookup.encode(), from()), Verdict::Local(_)));
        let ping = Packet::new(KIND_PING, id(9), id(0x01), 5, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        match r.process(&ping.encode(), from()) {
            Verdict::Pong { to, bytes } => {
                let pong = Packet::decode(&bytes).unwrap();
                assert_eq!(to, from());
                assert_eq!((pong.kind, pong.src_id, pong.dst_key, pong.msg_id), (KIND_PONG, id(1), id(9), 5));
                assert_eq!(pong.payload, ping.payload);
            }
            v => panic!("{v:?}"),
        }
        let reply_elsewhere = Packet::new(KIND_LOOKUP_REPLY, id(9), id(0x40), 1, vec![0; 24]);
        assert_eq!(r.process(&reply_elsewhere.encode(), from()), Verdict::Drop(c::DROP_NO_ROUTE));
        let reply_here = Packet::new(KIND_PONG, id(9), id(0x01), 1, vec![]);
        assert!(matches!(r.process(&reply_here.encode(), from()), Verdict::Local(_)));
    }

    fn blocked_router(blocks: Blocks) -> Router {
        let r = router();
        let peers = r.peers().map(|(s, p)| (*s, p.clone())).collect();
        Router::with_policy(id(0x01), peers, blocks, RateBudget::UNLIMITED).unwrap()
    }

    #[test]
    fn blocked_by_ip_prefix_and_node_until_expiry() {
        let p = Packet::new(KIND_DATA, id(9), id(0x80), 7, vec![]).encode();
        let mut b = Blocks::default();
        b.nets.push((addr_to_mapped("10.0.0.0".parse().unwrap()), 96 + 24, 0));
        let r = blocked_router(b);
        assert_eq!(r.process(&p, from()), Verdict::Drop(c::DROP_BLOCKED), "10.0.0.9 is in 10.0.0.0/24");
        assert!(matches!(r.process(&p, "10.0.1.9:9470".parse().unwrap()), Verdict::Forward { .. }));
        let mut b = Blocks::default();
        b.nodes.insert(id(9), 1_000);
        let r = blocked_router(b);
        let mut st = SourceState::default();
        assert_eq!(r.process_at(&p, from(), 999, &mut st, None, None), Verdict::Drop(c::DROP_BLOCKED));
        assert!(matches!(r.process_at(&p, from(), 1_000, &mut st, None, None), Verdict::Forward { .. }), "expired");
    }

    #[test]
    fn prefixes_match_bit_by_bit() {
        let a = addr_to_mapped("10.1.2.3".parse().unwrap());
        let b = addr_to_mapped("10.1.3.3".parse().unwrap());
        assert!(prefix_match(&a, &b, 96 + 23));
        assert!(!prefix_match(&a, &b, 96 + 24));
        assert!(prefix_match(&a, &a, 128) && prefix_match(&a, &b, 0));
    }

    #[test]
    fn rate_budget_admits_its_rate_and_burst() {
        let budget = RateBudget::new(1000, 0, 10_000_000);
        let peers = vec![(0, Peer { budget, ..Peer::new(id(0x80), from()) })];
        let r = Router::new(id(0x01), peers).unwrap();
        let p = Packet::new(KIND_DATA, id(9), id(0x80), 7, vec![]).encode();
        let mut st = SourceState::default();
        let t0 = 5_000_000_000u64;
        // 1 ms per packet, 10 ms of burst: 10 packets at one instant, then
        // one per ms.
        let at_once = (0..50)
            .filter(|_| !matches!(r.process_at(&p, from(), t0, &mut st, Some(100), None), Verdict::Drop(_)))
            .count();
        assert_eq!(at_once, 10);
        let spread = (1..=100u64)
            .filter(|i| {
                !matches!(r.process_at(&p, from(), t0 + i * 1_000_000, &mut st, Some(100), None), Verdict::Drop(_))
            })
            .count();
        assert_eq!(spread, 100);
        // A non-peer source is unlimited here (non-peer budget unlimited).
        assert!(matches!(
            r.process_at(&p, "10.9.9.9:1".parse().unwrap(), t0, &mut st, Some(100), None),
            Verdict::Forward { .. }
        ));
    }
}
