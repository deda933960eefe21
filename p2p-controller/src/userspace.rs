//! The WIRE.md rules in userspace: the fallback datapath and the baseline
//! of every benchmark. It also re-decides the packets the XDP program hands
//! up (local deliveries and the slow path), uncounted since XDP counted them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use p2p_common::codec::{self, Packet, addr_to_mapped};
use p2p_common::counters::{self as c, COUNTER_COUNT};
use p2p_common::id::NodeId;
use p2p_common::maps::{BLOCK_KIND_IP, BLOCK_KIND_NODE, BlockKey, Counter, SELF_REF};
use p2p_common::route_build::{self, RouteError, RouteTable};
use p2p_common::wire::*;

/// A neighbour as the userspace datapath sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node_id: NodeId,
    pub addr: SocketAddr,
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

pub struct Router {
    pub self_id: NodeId,
    table: RouteTable,
    peers: HashMap<u32, Peer>,
    blocked: HashSet<BlockKey>,
}

impl Router {
    pub fn new(self_id: NodeId, peers: Vec<(u32, Peer)>) -> Result<Router, RouteError> {
        let ids: Vec<(u32, [u8; 32])> = peers.iter().map(|(s, p)| (*s, p.node_id.0)).collect();
        let table = route_build::build(&self_id.0, &ids)?;
        Ok(Router { self_id, table, peers: peers.into_iter().collect(), blocked: HashSet::new() })
    }

    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    pub fn block(&mut self, key: BlockKey) {
        self.blocked.insert(key);
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

    fn is_blocked(&self, from: SocketAddr, src_id: &NodeId) -> bool {
        if self.blocked.is_empty() {
            return false;
        }
        let mut ip = BlockKey { kind: BLOCK_KIND_IP, ..Default::default() };
        ip.id[..16].copy_from_slice(&addr_to_mapped(from.ip()));
        let node = BlockKey { kind: BLOCK_KIND_NODE, _pad: [0; 3], id: src_id.0 };
        self.blocked.contains(&ip) || self.blocked.contains(&node)
    }

    /// WIRE.md "What a node does with a packet to its overlay port", steps 2–8.
    /// Reads the header in place: only packets for this node are decoded,
    /// and a forwarded one is the datagram with its ttl and hops patched.
    pub fn process(&self, datagram: &[u8], from: SocketAddr) -> Verdict {
        if codec::validate(datagram).is_err() {
            return Verdict::Drop(c::DROP_MALFORMED);
        }
        let id_at = |off: usize| NodeId(datagram[off..off + 32].try_into().expect("validated length"));
        let (kind, ttl) = (datagram[offset::KIND], datagram[offset::TTL]);
        let (src_id, dst_key) = (id_at(offset::SRC_ID), id_at(offset::DST_KEY));
        if self.is_blocked(from, &src_id) {
            return Verdict::Drop(c::DROP_BLOCKED);
        }
        // Steps 4 (rate) and 5 (auth) arrive with their issues.
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
                    bytes[offset::HOPS] = bytes[offset::HOPS].wrapping_add(1);
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
        let ip_hdr = if from.is_ipv4() { 20 } else { 40 };
        let c = &mut self.0[index as usize];
        c.packets += 1;
        c.bytes += (14 + ip_hdr + 8 + udp_payload_len) as u64;
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
            (0, Peer { node_id: id(0x80), addr: "10.0.0.2:9470".parse().unwrap() }),
            (1, Peer { node_id: id(0x40), addr: "10.0.0.3:9471".parse().unwrap() }),
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

    #[test]
    fn blocked_by_ip_and_node() {
        let mut r = router();
        let mut k = BlockKey { kind: BLOCK_KIND_IP, ..Default::default() };
        k.id[..16].copy_from_slice(&addr_to_mapped(from().ip()));
        r.block(k);
        let p = Packet::new(KIND_DATA, id(9), id(0x80), 7, vec![]);
        assert_eq!(r.process(&p.encode(), from()), Verdict::Drop(c::DROP_BLOCKED));
        let mut r = router();
        r.block(BlockKey { kind: BLOCK_KIND_NODE, _pad: [0; 3], id: [9; 32] });
        assert_eq!(r.process(&p.encode(), from()), Verdict::Drop(c::DROP_BLOCKED));
    }
}
