//! Packet fixtures for the XDP datapath through BPF_PROG_TEST_RUN: input
//! bytes -> expected verdict, output bytes and STATS counters, one or more
//! per docs/WIRE.md step and counter, IPv4 and IPv6, plus a next-hop check of the
//! kernel's walk against `route_build::brute_force_next_hop`.
//!
//! Needs root: each test builds its own network namespace (`p2p_tests::Netns`,
//! the guard the namespace tests use) with veth pairs, addresses and
//! permanent neighbour entries (fib lookups and TEST_RUN use the calling
//! thread's namespace), runs on a thread that entered it with setns, and
//! deletes it afterwards, also when the test fails. Without root, or with an eBPF object
//! that was not built (bpf-linker missing), the tests print why and pass.
//!
//! Run: `cargo test -p p2p-controller --test fixtures -- --test-threads=1`

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use p2p_common::codec::{Packet, addr_to_mapped};
use p2p_common::counters::{self, COUNTER_COUNT, COUNTER_NAMES};
use p2p_common::id::NodeId;
use p2p_common::maps::{
    BlockEntry, HEARTBEAT_FRESH_NS, IFACE_HAS_V4, IFACE_HAS_V6, IfaceAddrs, LinkKey, PEER_LIVE, PEER_V4, PeerEntry,
    REF_LEAF, RateBudget, SELF_REF,
};
use p2p_common::route_build::brute_force_next_hop;
use p2p_common::wire::{
    DEFAULT_OVERLAY_PORT, DEFAULT_TTL, HEADER_LEN, KIND_DATA, KIND_LOOKUP, KIND_LOOKUP_REPLY, KIND_PING, KIND_PONG,
    offset,
};
use p2p_controller::dataplane::{BlockTarget, Dataplane, DataplaneError, LoadOptions, SlotEntry};
use p2p_controller::overlay::monotonic_ns;
use p2p_tests::Netns;
use p2p_tests::csum::{fold, pseudo_sum, sum};
use rand::{Rng, SeedableRng, rngs::StdRng};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const PORT: u16 = DEFAULT_OVERLAY_PORT;
const PEER_PORT: u16 = 9471;

// The rig: if1 (ingress) and if2, each a veth whose peer end stays in the
// namespace as a stand-in neighbour.
const IF1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const IF2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
/// Neighbour on if1's link (10.99.1.2 / fd99:1::2): egress = ingress, XDP_TX.
const NB1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
/// Neighbour on if2's link (10.99.2.2 / fd99:2::2): XDP_REDIRECT.
const NB2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];
/// The sender of the test frames, on if1's link.
const SENDER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x09];
const IF1_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
const IF2_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 1);
const SENDER_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 9);
const NB1_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 2);
const NB2_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 2);
/// On if2's subnet, no neighbour entry: fib says NO_NEIGH.
const UNRESOLVED_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 3);

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn if1_v6() -> Ipv6Addr {
    v6("fd99:1::1")
}
fn if2_v6() -> Ipv6Addr {
    v6("fd99:2::1")
}
fn sender_v6() -> Ipv6Addr {
    v6("fd99:1::9")
}
fn nb1_v6() -> Ipv6Addr {
    v6("fd99:1::2")
}
fn nb2_v6() -> Ipv6Addr {
    v6("fd99:2::2")
}
fn unresolved_v6() -> Ipv6Addr {
    v6("fd99:2::3")
}

// ---------------------------------------------------------------- namespace

/// A network namespace (the tests' shared guard, deleted on drop) with the
/// fixture rig: if1 and if2 with addresses, permanent neighbours, a route to
/// the far-away peers, forwarding on.
fn rig_netns() -> Netns {
    let ns = Netns::new(p2p_tests::util::unique("fx")).expect("create the network namespace");
    let ip = |args: &[&str]| {
        ns.ip(args).unwrap_or_else(|e| panic!("{e:#}"));
    };
    let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    for (n, ifmac, nbmac) in [(1, IF1_MAC, NB1_MAC), (2, IF2_MAC, NB2_MAC)] {
        let ifn = format!("if{n}");
        let nb = format!("nb{n}");
        ip(&["link", "add", &ifn, "address", &mac(ifmac), "type", "veth", "peer", "name", &nb, "address", &mac(nbmac)]);
        ip(&["addr", "add", &format!("10.99.{n}.1/24"), "dev", &ifn]);
        ip(&["-6", "addr", "add", &format!("fd99:{n}::1/64"), "dev", &ifn, "nodad"]);
        ip(&["link", "set", &ifn, "up"]);
        ip(&["link", "set", &nb, "up"]);
        let nb4 = format!("10.99.{n}.2");
        ip(&["neigh", "replace", &nb4, "lladdr", &mac(nbmac), "dev", &ifn, "nud", "permanent"]);
        let nb6 = format!("fd99:{n}::2");
        ip(&["-6", "neigh", "replace", &nb6, "lladdr", &mac(nbmac), "dev", &ifn, "nud", "permanent"]);
    }
    // Far-away peers of the random-table test live behind nb2.
    ip(&["route", "add", "10.99.128.0/17", "via", "10.99.2.2", "dev", "if2"]);
    ip(&["-6", "route", "add", "fd99:80::/64", "via", "fd99:2::2", "dev", "if2"]);
    for key in ["net.ipv4.conf.all.forwarding", "net.ipv6.conf.all.forwarding"] {
        ns.sysctl(key, "1").unwrap_or_else(|e| panic!("{e:#}"));
    }
    ns
}

/// Runs `f` on a thread inside `ns`; re-raises its panic.
fn run_in<F: FnOnce() + Send + 'static>(ns: &Netns, f: F) {
    p2p_tests::netns::enter(ns.name(), f).unwrap_or_else(|e| panic!("{e:#}"));
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a fixture: skips without root or without the eBPF object; otherwise
/// builds a namespace and calls `body` inside it with a loaded rig.
fn fixture<F: FnOnce(&mut Rig) + Send + 'static>(name: &str, body: F) {
    if !is_root() {
        eprintln!("skipping {name}: needs root (BPF_PROG_TEST_RUN, network namespaces)");
        return;
    }
    let ns = rig_netns();
    let name = name.to_string();
    run_in(&ns, move || {
        let dp = match Dataplane::load(LoadOptions::default()) {
            Ok(dp) => dp,
            Err(DataplaneError::NoObject) => {
                eprintln!("skipping {name}: the eBPF object was not built (bpf-linker missing?)");
                return;
            }
            Err(e) => panic!("loading the datapath: {e}"),
        };
        let mut rig = Rig::new(dp);
        body(&mut rig);
    });
}

// ---------------------------------------------------------------- rig

fn id(b: u8) -> [u8; 32] {
    [b; 32]
}

/// This node. Peers are chosen so that `[b; 32]` keys route predictably.
const SELF_ID: u8 = 0x10;
/// v4 peer on if1's link (XDP_TX).
const P_TX4: u8 = 0x20;
/// v6 peer on if1's link (XDP_TX).
const P_TX6: u8 = 0x30;
/// v4 peer behind if2 (redirect).
const P_RD4: u8 = 0x40;
/// v6 peer behind if2 (redirect).
const P_RD6: u8 = 0x50;
/// Peers without a neighbour entry.
const P_NN4: u8 = 0x60;
const P_NN6: u8 = 0x70;
/// A key that only this node is closest to, and that nobody owns.
const K_SELF: u8 = 0x11;

struct Rig {
    dp: Dataplane,
    if1: u32,
    /// Expected STATS (packets, bytes) per counter.
    expect: Vec<(u64, u64)>,
}

fn peer(node: u8, addr: IpAddr) -> PeerEntry {
    PeerEntry {
        node_id: id(node),
        addr: addr_to_mapped(addr),
        port: PEER_PORT,
        flags: PEER_LIVE | if addr.is_ipv4() { PEER_V4 } else { 0 },
        reputation: 0,
        generation: 1,
    }
}

fn default_peers() -> Vec<(u32, PeerEntry)> {
    vec![
        (3, peer(P_TX4, NB1_V4.into())),
        (5, peer(P_TX6, nb1_v6().into())),
        (7, peer(P_RD4, NB2_V4.into())),
        (9, peer(P_RD6, nb2_v6().into())),
        (11, peer(P_NN4, UNRESOLVED_V4.into())),
        (13, peer(P_NN6, unresolved_v6().into())),
    ]
}

/// `default_peers` as map sync writes them: each at its own endpoint,
/// without a rate budget.
fn default_slots() -> Vec<SlotEntry> {
    default_peers()
        .into_iter()
        .map(|(slot, peer)| SlotEntry {
            slot,
            peer,
            endpoints: vec![LinkKey { addr: peer.addr, port: peer.port, _pad: 0 }],
            budget: RateBudget::UNLIMITED,
        })
        .collect()
}

impl Rig {
    fn new(mut dp: Dataplane) -> Rig {
        let if1 = p2p_controller::dataplane::ifindex("if1").expect("if1");
        let if2 = p2p_controller::dataplane::ifindex("if2").expect("if2");
        // if1 receives every test frame; if2 is the other attached interface.
        dp.set_config(id(SELF_ID), PORT, 0).unwrap();
        for (ix, v4, v6) in [(if1, IF1_V4, if1_v6()), (if2, IF2_V4, if2_v6())] {
            let addrs = IfaceAddrs { v4: v4.octets(), flags: IFACE_HAS_V4 | IFACE_HAS_V6, v6: v6.octets() };
            dp.set_iface(ix, addrs).unwrap();
        }
        dp.set_peers(&default_peers()).unwrap();
        // The controller is alive: XDP answers PINGs itself.
        dp.heartbeat(monotonic_ns()).unwrap();
        let mut rig = Rig { dp, if1, expect: vec![(0, 0); COUNTER_COUNT as usize] };
        rig.probe();
        rig
    }

    /// A LOOKUP this node owns must count as `local`. If it counts as
    /// `pass_other` the program saw an empty frame: BPF_PROG_TEST_RUN with a
    /// `struct xdp_md` whose `data_end` is 0 puts the whole frame into
    /// fragments (kernel 6.18) and leaves the linear part empty.
    fn probe(&mut self) {
        let f = Frame::overlay(false, &pkt(KIND_LOOKUP, ORIGIN, id(K_SELF), vec![0; 20])).bytes();
        let out = self.dp.test_run(&f, self.if1).expect("test_run");
        let stats = self.dp.stats().expect("stats");
        assert!(
            stats[counters::PASS_OTHER as usize].packets == 0,
            "the program saw no packet data: Dataplane::test_run must pass a struct xdp_md with \
             data_end = frame length (bytes 4..8), or the kernel hands XDP an empty linear part"
        );
        assert_eq!(verdict_name(out.verdict), "XDP_PASS");
        self.expect[counters::LOCAL as usize].0 += 1;
        self.expect[counters::LOCAL as usize].1 += f.len() as u64;
    }

    /// Runs `frame` in on if1; checks the verdict and records the counter.
    fn run(&mut self, frame: &[u8], verdict: u32, counter: u32) -> Vec<u8> {
        let out = self.dp.test_run(frame, self.if1).expect("test_run");
        assert_eq!(
            verdict_name(out.verdict),
            verdict_name(verdict),
            "verdict for a frame expected to count as {}",
            COUNTER_NAMES[counter as usize]
        );
        self.expect[counter as usize].0 += 1;
        self.expect[counter as usize].1 += frame.len() as u64;
        out.frame
    }

    /// Runs `frame` and checks that it came out unmodified.
    fn run_same(&mut self, frame: &[u8], verdict: u32, counter: u32) {
        let out = self.run(frame, verdict, counter);
        assert_eq!(hex(&out), hex(frame), "{} must leave the frame alone", COUNTER_NAMES[counter as usize]);
    }

    fn check_stats(&self) {
        let got = self.dp.stats().expect("stats");
        for (i, name) in COUNTER_NAMES.iter().enumerate() {
            assert_eq!((got[i].packets, got[i].bytes), self.expect[i], "STATS {name} (packets, bytes)");
        }
    }
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------- frames

#[derive(Clone, Copy, Debug, PartialEq)]
enum Csum {
    /// A complete, valid UDP checksum.
    Full,
    /// Only the pseudo-header sum, as veth hands over offloaded checksums.
    Partial,
    /// No checksum (0).
    Zero,
}

/// An Ethernet + IP + UDP frame around `udp_payload`.
#[derive(Clone)]
struct Frame {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    csum: Csum,
    /// IPv4 fragment field (flags + offset).
    frag: u16,
    /// IPv4 options (a multiple of 4 bytes).
    ip_opts: Vec<u8>,
    payload: Vec<u8>,
}

impl Frame {
    /// An overlay packet from the sender to this node's if1 address.
    fn overlay(v6: bool, pkt: &Packet) -> Frame {
        let (src, dst): (IpAddr, IpAddr) =
            if v6 { (sender_v6().into(), if1_v6().into()) } else { (SENDER_V4.into(), IF1_V4.into()) };
        Frame {
            src_mac: SENDER_MAC,
            dst_mac: IF1_MAC,
            src,
            dst,
            sport: 40000,
            dport: PORT,
            proto: 17,
            csum: Csum::Full,
            frag: 0,
            ip_opts: Vec::new(),
            payload: pkt.encode(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        let udp_len = (8 + self.payload.len()) as u16;
        let mut l4 = Vec::new();
        if self.proto == 17 {
            l4.extend_from_slice(&self.sport.to_be_bytes());
            l4.extend_from_slice(&self.dport.to_be_bytes());
            l4.extend_from_slice(&udp_len.to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        } else {
            // A TCP-ish header: ports at the same place.
            l4.extend_from_slice(&self.sport.to_be_bytes());
            l4.extend_from_slice(&self.dport.to_be_bytes());
            l4.extend_from_slice(&[0; 16]);
        }
        l4.extend_from_slice(&self.payload);
        let pseudo = pseudo_sum(self.src, self.dst, l4.len() as u32, self.proto);
        if self.proto == 17 {
            let c = match self.csum {
                Csum::Full => {
                    let c = !fold(pseudo + sum(&l4));
                    if c == 0 { 0xffff } else { c }
                }
                Csum::Partial => fold(pseudo),
                Csum::Zero => 0,
            };
            l4[6..8].copy_from_slice(&c.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[0x08, 0x00]);
                let hl = 20 + self.ip_opts.len();
                let mut ip = vec![0x40 | (hl / 4) as u8, 0];
                ip.extend_from_slice(&((hl + l4.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34]);
                ip.extend_from_slice(&self.frag.to_be_bytes());
                ip.extend_from_slice(&[64, self.proto, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&self.ip_opts);
                let c = !fold(sum(&ip));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&[0x86, 0xdd]);
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                f.extend_from_slice(&[self.proto, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed address families"),
        }
        f.extend_from_slice(&l4);
        f
    }
}

/// A parsed output frame, with both checksums verified independently.
#[derive(Debug)]
struct Out {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    ip_ttl: u8,
    sport: u16,
    dport: u16,
    overlay: Packet,
    raw_overlay: Vec<u8>,
}

fn parse_out(f: &[u8]) -> Out {
    let dst_mac: [u8; 6] = f[0..6].try_into().unwrap();
    let src_mac: [u8; 6] = f[6..12].try_into().unwrap();
    let (src, dst, ip_ttl, l4): (IpAddr, IpAddr, u8, &[u8]) = match [f[12], f[13]] {
        [0x08, 0x00] => {
            let ip = &f[14..34];
            assert_eq!(ip[0], 0x45);
            assert_eq!(fold(sum(ip)), 0xffff, "IPv4 header checksum invalid: {}", hex(ip));
            let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (s.into(), d.into(), ip[8], &f[34..14 + tot])
        }
        [0x86, 0xdd] => {
            let ip = &f[14..54];
            let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (s.into(), d.into(), ip[7], &f[54..54 + plen])
        }
        t => panic!("ethertype {t:02x?}"),
    };
    let udp_len = u16::from_be_bytes([l4[4], l4[5]]) as usize;
    assert_eq!(udp_len, l4.len(), "UDP length");
    let check = u16::from_be_bytes([l4[6], l4[7]]);
    assert_ne!(check, 0, "UDP checksum must be set");
    let total = pseudo_sum(src, dst, l4.len() as u32, 17) + sum(l4);
    assert_eq!(fold(total), 0xffff, "UDP checksum {check:#06x} invalid");
    Out {
        dst_mac,
        src_mac,
        src,
        dst,
        ip_ttl,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        overlay: Packet::decode(&l4[8..]).expect("overlay packet decodes"),
        raw_overlay: l4[8..].to_vec(),
    }
}

fn pkt(kind: u8, src: u8, dst: [u8; 32], payload: Vec<u8>) -> Packet {
    Packet::new(kind, NodeId(id(src)), NodeId(dst), 0x0102_0304_0506_0708, payload)
}

/// A sender node ID that is nobody's in the rig.
const ORIGIN: u8 = 0xe0;

// ---------------------------------------------------------------- fixtures

#[test]
fn step1_pass_other() {
    fixture("step1_pass_other", |rig| {
        for v6 in [false, true] {
            let base = Frame::overlay(v6, &pkt(KIND_DATA, ORIGIN, id(K_SELF), vec![1, 2, 3]));
            // UDP to another port.
            let mut f = base.clone();
            f.dport = 53;
            rig.run_same(&f.bytes(), XDP_PASS, counters::PASS_OTHER);
            // Not UDP (TCP to the overlay port).
            let mut f = base.clone();
            f.proto = 6;
            rig.run_same(&f.bytes(), XDP_PASS, counters::PASS_OTHER);
        }
        // IPv4 fragments (a later one, and a first one with MF).
        let base = Frame::overlay(false, &pkt(KIND_DATA, ORIGIN, id(K_SELF), vec![9; 40]));
        for frag in [0x0004u16, 0x2000] {
            let mut f = base.clone();
            f.frag = frag;
            rig.run_same(&f.bytes(), XDP_PASS, counters::PASS_OTHER);
        }
        // ARP.
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&SENDER_MAC);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        rig.run_same(&arp, XDP_PASS, counters::PASS_OTHER);
        // A frame too short to hold its IPv4 header.
        rig.run_same(&base.bytes()[..30], XDP_PASS, counters::PASS_OTHER);
        rig.check_stats();
    });
}

#[test]
fn step2_drop_malformed() {
    fixture("step2_drop_malformed", |rig| {
        for v6 in [false, true] {
            let good = pkt(KIND_DATA, ORIGIN, id(K_SELF), b"hello".to_vec()).encode();
            let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
            cases.push(("shorter than the header", good[..HEADER_LEN - 1].to_vec()));
            cases.push(("empty", Vec::new()));
            let mut b = good.clone();
            b[1] = b'X';
            cases.push(("bad magic", b));
            let mut b = good.clone();
            b[offset::VERSION] = 3;
            cases.push(("bad version", b));
            for k in [0u8, 6, 255] {
                let mut b = good.clone();
                b[offset::KIND] = k;
                cases.push(("unknown kind", b));
            }
            let mut b = good.clone();
            b[offset::PAYLOAD_LEN + 1] = 6;
            cases.push(("payload_len too big", b));
            let mut b = good.clone();
            b[offset::PAYLOAD_LEN + 1] = 4;
            cases.push(("payload_len too small", b));
            for (what, payload) in cases {
                let mut f = Frame::overlay(v6, &pkt(KIND_DATA, ORIGIN, id(K_SELF), vec![]));
                f.payload = payload;
                let frame = f.bytes();
                let out = rig.dp.test_run(&frame, rig.if1).unwrap();
                assert_eq!(verdict_name(out.verdict), "XDP_DROP", "{what} (v6: {v6})");
                rig.expect[counters::DROP_MALFORMED as usize].0 += 1;
                rig.expect[counters::DROP_MALFORMED as usize].1 += frame.len() as u64;
            }
            // A UDP length beyond the frame (truncated datagram).
            let f = Frame::overlay(v6, &pkt(KIND_DATA, ORIGIN, id(K_SELF), vec![7; 30]));
            let mut frame = f.bytes();
            frame.truncate(frame.len() - 10);
            rig.run(&frame, XDP_DROP, counters::DROP_MALFORMED);
        }
        rig.check_stats();
        let ev: u64 = rig.dp.source_stats().unwrap().iter().map(|(_, s)| s.malformed).sum();
        assert_eq!(ev, rig.expect[counters::DROP_MALFORMED as usize].0, "every malformed packet is evidence");
    });
}

#[test]
fn step3_drop_blocked() {
    fixture("step3_drop_blocked", |rig| {
        let forever = BlockEntry { reason: 1, _pad: 0, expires_ns: 0 };
        let expired = BlockEntry { reason: 1, _pad: 0, expires_ns: 1 };
        let net = |ip: IpAddr, len: u32| BlockTarget::Net { addr: addr_to_mapped(ip), prefix_len: len };
        // By source IP, v4 (as IPv4-mapped, a /128) and v6.
        let blocked_v4 = Ipv4Addr::new(10, 99, 1, 50);
        let blocked_v6 = v6("fd99:1::50");
        for ip in [IpAddr::from(blocked_v4), IpAddr::from(blocked_v6)] {
            rig.dp.block(net(ip, 128), forever).unwrap();
        }
        // An expired prefix no longer applies: the sender (10.99.1.9) is in it.
        rig.dp.block(net(Ipv4Addr::new(10, 99, 1, 0).into(), 96 + 28), expired).unwrap();
        // By node ID, and an expired node entry that no longer applies.
        rig.dp.block(BlockTarget::Node(id(0xb0)), forever).unwrap();
        rig.dp.block(BlockTarget::Node(id(0xb1)), expired).unwrap();

        for v6 in [false, true] {
            let lookup = pkt(KIND_LOOKUP, ORIGIN, id(K_SELF), vec![0; 20]);
            let mut f = Frame::overlay(v6, &lookup);
            f.src = if v6 { blocked_v6.into() } else { blocked_v4.into() };
            rig.run_same(&f.bytes(), XDP_DROP, counters::DROP_BLOCKED);
            let f = Frame::overlay(v6, &pkt(KIND_LOOKUP, 0xb0, id(K_SELF), vec![0; 20]));
            rig.run_same(&f.bytes(), XDP_DROP, counters::DROP_BLOCKED);
            // Also a PONG (not routed) from a blocked node.
            let f = Frame::overlay(v6, &pkt(KIND_PONG, 0xb0, id(SELF_ID), vec![0; 8]));
            rig.run_same(&f.bytes(), XDP_DROP, counters::DROP_BLOCKED);
            // Expired: goes on to step 7 (this node is closest: local).
            let f = Frame::overlay(v6, &pkt(KIND_LOOKUP, 0xb1, id(K_SELF), vec![0; 20]));
            rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
            // Same IP family, other address: not blocked.
            let f = Frame::overlay(v6, &lookup);
            rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
        }
        // A prefix holding the sender (10.99.1.0/24, fd99:1::/64), then
        // lifted again. (The expired /28 above would shadow it, being the
        // longer match: adding an entry removes expired ones first.)
        let prefixes = [net(Ipv4Addr::new(10, 99, 1, 0).into(), 96 + 24), net(v6("fd99:1::").into(), 64)];
        for (v6, t) in [(false, prefixes[0]), (true, prefixes[1])] {
            let f = Frame::overlay(v6, &pkt(KIND_LOOKUP, ORIGIN, id(K_SELF), vec![0; 20]));
            rig.dp.block(t, forever).unwrap();
            rig.run_same(&f.bytes(), XDP_DROP, counters::DROP_BLOCKED);
            rig.dp.unblock(t).unwrap();
            rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
        }
        rig.check_stats();
        // Evidence per source: the one packet each blocked IP sent.
        let ev = rig.dp.source_stats().unwrap();
        for ip in [IpAddr::from(blocked_v4), IpAddr::from(blocked_v6)] {
            let got = ev.iter().find(|(a, _)| *a == addr_to_mapped(ip)).map(|(_, s)| s.blocked);
            assert_eq!(got, Some(1), "SOURCE_STATS blocked for {ip}");
        }
    });
}

/// A PING to this node is answered by XDP only while the controller's
/// heartbeat is fresh; after that it goes up to the controller (which, if
/// alive, answers), so a PONG always means the controller lives.
#[test]
fn step6_pong_needs_a_fresh_heartbeat() {
    fixture("step6_pong_needs_a_fresh_heartbeat", |rig| {
        let ping = Frame::overlay(false, &pkt(KIND_PING, ORIGIN, id(SELF_ID), vec![1; 8])).bytes();
        rig.run(&ping, XDP_TX, counters::PONG);
        rig.dp.heartbeat(monotonic_ns() - HEARTBEAT_FRESH_NS - 1_000_000).unwrap();
        rig.run_same(&ping, XDP_PASS, counters::LOCAL);
        rig.dp.heartbeat(0).unwrap();
        rig.run_same(&ping, XDP_PASS, counters::LOCAL);
        rig.dp.heartbeat(monotonic_ns()).unwrap();
        rig.run(&ping, XDP_TX, counters::PONG);
        rig.check_stats();
    });
}

/// LAST_SEEN[slot] records packets a peer sent itself (its `src_id`) from
/// one of its endpoints; transit traffic it forwards and packets from
/// elsewhere do not count.
#[test]
fn last_seen_records_a_peers_own_packets() {
    fixture("last_seen_records_a_peers_own_packets", |rig| {
        let sender = |addr: IpAddr| LinkKey { addr: addr_to_mapped(addr), port: 40000, _pad: 0 };
        let mut slots = default_slots();
        // Peer P_TX4 (slot 3) also sends from the test sender's endpoints.
        slots[0].endpoints.extend([sender(SENDER_V4.into()), sender(sender_v6().into())]);
        let live: Vec<(u32, [u8; 32])> = slots.iter().map(|e| (e.slot, e.peer.node_id)).collect();
        let table = p2p_common::route_build::build(&id(SELF_ID), &live).unwrap();
        rig.dp.set_peers_routed(&slots, &table).unwrap();
        let seen = |rig: &Rig| rig.dp.last_seen(&[3, 7])[0].1;
        assert_eq!(seen(rig), 0);
        for v6 in [false, true] {
            // Transit: another origin's packet from P_TX4's endpoint.
            let f = Frame::overlay(v6, &pkt(KIND_LOOKUP, ORIGIN, id(K_SELF), vec![0; 20]));
            rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
            assert_eq!(seen(rig), 0, "transit traffic is not evidence");
        }
        let before = monotonic_ns();
        let f = Frame::overlay(false, &pkt(KIND_LOOKUP, P_TX4, id(K_SELF), vec![0; 20]));
        rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
        let t = seen(rig);
        assert!(t >= before && t <= monotonic_ns(), "LAST_SEEN {t} is the time of the packet ({before}..)");
        // Its own packet from an address that is not its endpoint: nothing.
        let mut f = Frame::overlay(false, &pkt(KIND_LOOKUP, P_RD4, id(K_SELF), vec![0; 20]));
        f.sport = 40001;
        rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
        assert_eq!(rig.dp.last_seen(&[7])[0].1, 0);
        rig.check_stats();
    });
}

/// Step 4: a peer's budget (RATE[slot]) and the non-peer budget
/// (RATE_SOURCES): a burst beyond it is dropped as drop_rate and counted
/// against the source (SOURCE_STATS).
#[test]
fn step4_token_bucket() {
    fixture("step4_token_bucket", |rig| {
        // 1,000 packets/s with 20 ms of burst: 20 packets at once.
        let budget = RateBudget::new(1_000, 0, 20_000_000);
        let mut slots = default_slots();
        slots[0].endpoints.push(LinkKey { addr: addr_to_mapped(SENDER_V4.into()), port: 40000, _pad: 0 });
        slots[0].budget = budget;
        let live: Vec<(u32, [u8; 32])> = slots.iter().map(|e| (e.slot, e.peer.node_id)).collect();
        let table = p2p_common::route_build::build(&id(SELF_ID), &live).unwrap();
        rig.dp.set_peers_routed(&slots, &table).unwrap();
        let burst = |rig: &mut Rig, v6: bool| {
            let f = Frame::overlay(v6, &pkt(KIND_LOOKUP, ORIGIN, id(K_SELF), vec![0; 20])).bytes();
            let t0 = monotonic_ns();
            let mut passed = 0;
            for _ in 0..60 {
                let out = rig.dp.test_run(&f, rig.if1).unwrap();
                let c = if out.verdict == XDP_PASS { counters::LOCAL } else { counters::DROP_RATE };
                passed += u64::from(out.verdict == XDP_PASS);
                rig.expect[c as usize].0 += 1;
                rig.expect[c as usize].1 += f.len() as u64;
            }
            // One more packet's worth per millisecond the loop took.
            (passed, (monotonic_ns() - t0) / 1_000_000)
        };
        let (passed, ms) = burst(rig, false);
        assert!(passed >= 20 && passed <= 20 + ms + 1, "peer budget: {passed} of 60 passed in {ms} ms");
        // The v6 sender is not a peer: unlimited until a non-peer budget is set.
        assert_eq!(burst(rig, true).0, 60);
        rig.dp.set_nonpeer_budget(budget).unwrap();
        let (passed, ms) = burst(rig, true);
        assert!(passed >= 20 && passed <= 20 + ms + 1, "non-peer budget: {passed} of 60 passed in {ms} ms");
        rig.check_stats();
        let ev = rig.dp.source_stats().unwrap();
        let drops = |ip: IpAddr| ev.iter().find(|(a, _)| *a == addr_to_mapped(ip)).map_or(0, |(_, s)| s.rate);
        let dropped = rig.expect[counters::DROP_RATE as usize].0;
        assert_eq!(drops(SENDER_V4.into()) + drops(sender_v6().into()), dropped, "every drop is evidence");
    });
}

#[test]
fn step6_pong_in_place() {
    fixture("step6_pong_in_place", |rig| {
        for v6 in [false, true] {
            for csum in [Csum::Full, Csum::Partial, Csum::Zero] {
                for payload in [vec![1, 2, 3, 4, 5, 6, 7, 8], vec![0xab; 301]] {
                    let mut ping = pkt(KIND_PING, ORIGIN, id(SELF_ID), payload.clone());
                    ping.ttl = 9;
                    ping.hops = 4;
                    let mut f = Frame::overlay(v6, &ping);
                    f.csum = csum;
                    let out = parse_out(&rig.run(&f.bytes(), XDP_TX, counters::PONG));
                    assert_eq!(out.dst_mac, SENDER_MAC);
                    assert_eq!(out.src_mac, IF1_MAC);
                    assert_eq!((out.src, out.dst), (f.dst, f.src), "IP addresses swapped");
                    assert_eq!((out.sport, out.dport), (PORT, 40000), "UDP ports swapped");
                    let o = &out.overlay;
                    assert_eq!(o.kind, KIND_PONG);
                    assert_eq!(o.src_id, NodeId(id(SELF_ID)));
                    assert_eq!(o.dst_key, NodeId(id(ORIGIN)));
                    assert_eq!(o.msg_id, ping.msg_id);
                    assert_eq!((o.ttl, o.hops), (DEFAULT_TTL, 0));
                    assert_eq!(o.payload, payload, "payload echoed");
                    assert_eq!(out.ip_ttl, 64);
                }
            }
        }
        rig.check_stats();
    });
}

#[test]
fn step7_8_local_delivery() {
    fixture("step7_8_local_delivery", |rig| {
        for v6 in [false, true] {
            // LOOKUP for a key this node is closest to.
            let f = Frame::overlay(v6, &pkt(KIND_LOOKUP, ORIGIN, id(K_SELF), vec![0; 24]));
            rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
            // DATA to this node's ID.
            let f = Frame::overlay(v6, &pkt(KIND_DATA, ORIGIN, id(SELF_ID), b"for you".to_vec()));
            rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
            // Replies to this node.
            let f = Frame::overlay(v6, &pkt(KIND_LOOKUP_REPLY, P_RD4, id(SELF_ID), vec![0; 24]));
            rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
            let f = Frame::overlay(v6, &pkt(KIND_PONG, P_RD4, id(SELF_ID), vec![0; 8]));
            rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
        }
        // IPv4 with options (IHL 6): parsed at the variable offset. A PING
        // to this node is left to the controller to answer (no in-place PONG
        // with options).
        let mut f = Frame::overlay(false, &pkt(KIND_LOOKUP, ORIGIN, id(K_SELF), vec![0; 20]));
        f.ip_opts = vec![1, 1, 1, 0];
        rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
        let mut f = Frame::overlay(false, &pkt(KIND_PING, ORIGIN, id(SELF_ID), vec![0; 8]));
        f.ip_opts = vec![1, 1, 1, 0];
        rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
        rig.check_stats();
    });
}

#[test]
fn step7_8_drop_no_route() {
    fixture("step7_8_drop_no_route", |rig| {
        for v6 in [false, true] {
            // DATA and PING to an ID nobody has, this node being closest.
            let f = Frame::overlay(v6, &pkt(KIND_DATA, ORIGIN, id(K_SELF), b"lost".to_vec()));
            rig.run_same(&f.bytes(), XDP_DROP, counters::DROP_NO_ROUTE);
            let f = Frame::overlay(v6, &pkt(KIND_PING, ORIGIN, id(K_SELF), vec![0; 8]));
            rig.run_same(&f.bytes(), XDP_DROP, counters::DROP_NO_ROUTE);
            // Replies that are not for this node are never routed.
            let f = Frame::overlay(v6, &pkt(KIND_LOOKUP_REPLY, ORIGIN, id(P_RD4), vec![0; 24]));
            rig.run_same(&f.bytes(), XDP_DROP, counters::DROP_NO_ROUTE);
            let f = Frame::overlay(v6, &pkt(KIND_PONG, ORIGIN, id(P_RD4), vec![0; 8]));
            rig.run_same(&f.bytes(), XDP_DROP, counters::DROP_NO_ROUTE);
        }
        rig.check_stats();
    });
}

#[test]
fn step7_drop_ttl() {
    fixture("step7_drop_ttl", |rig| {
        for (v6, target) in [(false, P_RD4), (true, P_RD6)] {
            for ttl in [1u8, 0] {
                let mut p = pkt(KIND_DATA, ORIGIN, id(target), b"x".to_vec());
                p.ttl = ttl;
                rig.run_same(&Frame::overlay(v6, &p).bytes(), XDP_DROP, counters::DROP_TTL);
            }
            // ttl 1 to this node is still delivered (the ttl only limits forwarding).
            let mut p = pkt(KIND_DATA, ORIGIN, id(SELF_ID), b"x".to_vec());
            p.ttl = 1;
            rig.run_same(&Frame::overlay(v6, &p).bytes(), XDP_PASS, counters::LOCAL);
        }
        rig.check_stats();
    });
}

/// Checks a forwarded frame against its input.
fn check_forwarded(input: &Frame, out: &[u8], src: IpAddr, dst: IpAddr, src_mac: [u8; 6], dst_mac: [u8; 6]) {
    let o = parse_out(out);
    let i = Packet::decode(&input.payload).unwrap();
    assert_eq!(o.dst_mac, dst_mac, "destination MAC from the neighbour table");
    assert_eq!(o.src_mac, src_mac, "source MAC of the egress interface");
    assert_eq!(o.src, src, "source: this node's address on the egress interface");
    assert_eq!(o.dst, dst, "destination: the peer");
    assert_eq!((o.sport, o.dport), (PORT, PEER_PORT));
    assert_eq!(o.ip_ttl, 64);
    assert_eq!(o.overlay.ttl, i.ttl - 1, "ttl - 1");
    assert_eq!(o.overlay.hops, i.hops + 1, "hops + 1");
    let mut expect = i.clone();
    expect.ttl -= 1;
    expect.hops += 1;
    assert_eq!(o.overlay, expect, "only ttl and hops change in the overlay header");
    assert_eq!(o.raw_overlay.len(), input.payload.len());
    assert_eq!(out.len(), input.bytes().len(), "frame length");
}

/// Payload sizes that exercise every checksum chunk path, up to a full
/// 1500-byte IPv4 packet.
const SIZES_V4: [usize; 10] = [0, 1, 2, 3, 5, 63, 100, 513, 1001, 1500 - 20 - 8 - HEADER_LEN];
const SIZES_V6: [usize; 10] = [0, 1, 2, 3, 5, 63, 100, 513, 1001, 1500 - 40 - 8 - HEADER_LEN];

fn fwd_case(rig: &mut Rig, v6: bool, target: u8, size: usize, csum: Csum, kind: u8, expect: u32) -> (Frame, Vec<u8>) {
    let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
    let mut p = pkt(kind, ORIGIN, id(target), payload);
    p.ttl = 5;
    p.hops = 2;
    let mut f = Frame::overlay(v6, &p);
    f.csum = csum;
    let out = rig.run(&f.bytes(), expect, counters::FWD);
    (f, out)
}

/// Source and destination IP, source and destination MAC of an egress link.
type EgressLink = (IpAddr, IpAddr, [u8; 6], [u8; 6]);

/// One forwarding fixture: every payload size of both families, rotating
/// the incoming checksum form and the packet kind; checks each output frame
/// against the egress link's addresses.
fn fwd_fixture(
    name: &str,
    targets: [(bool, u8); 2],
    csums: [Csum; 3],
    kinds: [u8; 3],
    verdict: u32,
    link: fn(bool) -> EgressLink,
) {
    fixture(name, move |rig| {
        for (v6, target) in targets {
            let sizes = if v6 { SIZES_V6 } else { SIZES_V4 };
            for (n, size) in sizes.into_iter().enumerate() {
                let (f, out) = fwd_case(rig, v6, target, size, csums[n % 3], kinds[n % 3], verdict);
                let (src, dst, smac, dmac) = link(v6);
                check_forwarded(&f, &out, src, dst, smac, dmac);
            }
        }
        rig.check_stats();
    });
}

#[test]
fn step7_fwd_xdp_tx() {
    fwd_fixture(
        "step7_fwd_xdp_tx",
        [(false, P_TX4), (true, P_TX6)],
        [Csum::Full, Csum::Partial, Csum::Zero],
        [KIND_DATA, KIND_LOOKUP, KIND_PING],
        XDP_TX,
        |v6| {
            if v6 {
                (if1_v6().into(), nb1_v6().into(), IF1_MAC, NB1_MAC)
            } else {
                (IF1_V4.into(), NB1_V4.into(), IF1_MAC, NB1_MAC)
            }
        },
    );
}

#[test]
fn step7_fwd_redirect() {
    fwd_fixture(
        "step7_fwd_redirect",
        [(false, P_RD4), (true, P_RD6)],
        [Csum::Partial, Csum::Zero, Csum::Full],
        [KIND_LOOKUP, KIND_PING, KIND_DATA],
        XDP_REDIRECT,
        |v6| {
            if v6 {
                (if2_v6().into(), nb2_v6().into(), IF2_MAC, NB2_MAC)
            } else {
                (IF2_V4.into(), NB2_V4.into(), IF2_MAC, NB2_MAC)
            }
        },
    );
}

#[test]
fn step7_fwd_slow() {
    fixture("step7_fwd_slow", |rig| {
        for v6 in [false, true] {
            // Unresolved neighbour: left unmodified for the controller.
            let target = if v6 { P_NN6 } else { P_NN4 };
            let f = Frame::overlay(v6, &pkt(KIND_DATA, ORIGIN, id(target), b"slow".to_vec()));
            rig.run_same(&f.bytes(), XDP_PASS, counters::FWD_SLOW);
            // Next hop of the other address family.
            let target = if v6 { P_RD4 } else { P_RD6 };
            let f = Frame::overlay(v6, &pkt(KIND_LOOKUP, ORIGIN, id(target), vec![0; 20]));
            rig.run_same(&f.bytes(), XDP_PASS, counters::FWD_SLOW);
        }
        // Datagrams too big for the egress MTU.
        let f = Frame::overlay(true, &pkt(KIND_DATA, ORIGIN, id(P_RD6), vec![3; 1400]));
        rig.run_same(&f.bytes(), XDP_PASS, counters::FWD_SLOW);
        let f = Frame::overlay(false, &pkt(KIND_DATA, ORIGIN, id(P_RD4), vec![3; 1377]));
        rig.run_same(&f.bytes(), XDP_PASS, counters::FWD_SLOW);
        // IPv4 options: the forward path rewrites option-less headers only.
        let mut f = Frame::overlay(false, &pkt(KIND_DATA, ORIGIN, id(P_RD4), b"opts".to_vec()));
        f.ip_opts = vec![1, 1, 1, 0];
        rig.run_same(&f.bytes(), XDP_PASS, counters::FWD_SLOW);
        // The ttl is checked before the neighbour: drop_ttl, not fwd_slow.
        let mut p = pkt(KIND_DATA, ORIGIN, id(P_NN4), b"x".to_vec());
        p.ttl = 1;
        rig.run_same(&Frame::overlay(false, &p).bytes(), XDP_DROP, counters::DROP_TTL);
        rig.check_stats();
    });
}

#[test]
fn step7_next_hop_matches_brute_force() {
    fixture("step7_next_hop_matches_brute_force", |rig| {
        let mut rng = StdRng::seed_from_u64(0x9e37_79b9);
        let self_id: [u8; 32] = rng.r#gen();
        rig.dp.set_config(self_id, PORT, 0).unwrap();
        let mut peers = Vec::new();
        let mut table = Vec::new();
        for i in 0..200u32 {
            let node: [u8; 32] = rng.r#gen();
            let slot = i * 3 + 1;
            // Every other peer IPv6; all behind nb2.
            let addr: IpAddr = if i % 2 == 0 {
                Ipv4Addr::new(10, 99, 128 + (i / 200) as u8, (i % 200) as u8 + 1).into()
            } else {
                v6(&format!("fd99:80::{:x}", i + 1)).into()
            };
            let mut e = peer(0, addr);
            e.node_id = node;
            peers.push((slot, e));
            table.push((slot, node));
        }
        rig.dp.set_peers(&peers).unwrap();
        let addr_of = |slot: u32| {
            peers.iter().find(|(s, _)| *s == slot).map(|(_, e)| p2p_common::codec::mapped_to_addr(e.addr)).unwrap()
        };
        let (mut fwd, mut home) = (0, 0);
        for n in 0..2000 {
            let key: [u8; 32] = match n % 4 {
                // A peer's ID with one bit flipped: deep shared prefixes.
                0 => {
                    let mut k = table[rng.gen_range(0..table.len())].1;
                    let bit = rng.gen_range(0..256);
                    k[bit / 8] ^= 0x80 >> (bit % 8);
                    k
                }
                1 => table[rng.gen_range(0..table.len())].1,
                _ => rng.r#gen(),
            };
            let want = brute_force_next_hop(&self_id, &table, &key);
            // The packet's family follows the expected next hop's, so that
            // the chosen peer is visible in the output; a mismatch would go
            // to the slow path (covered by step7_fwd_slow).
            let v6 = if want == SELF_REF { rng.gen_bool(0.5) } else { addr_of(want & !REF_LEAF).is_ipv6() };
            let mut p = Packet::new(KIND_LOOKUP, NodeId(id(ORIGIN)), NodeId(key), n, vec![0; 20]);
            p.ttl = 10;
            let f = Frame::overlay(v6, &p);
            if want == SELF_REF {
                rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
                home += 1;
                continue;
            }
            let dst = addr_of(want & !REF_LEAF);
            let out = rig.run(&f.bytes(), XDP_REDIRECT, counters::FWD);
            let o = parse_out(&out);
            assert_eq!(o.dst, dst, "key {}: next hop slot {}", hex(&key), want & !REF_LEAF);
            fwd += 1;
        }
        eprintln!("next hops: {fwd} forwarded (checked against the reference), {home} local");
        assert!(fwd > 1500 && home > 0);
        rig.check_stats();
    });
}

/// With aya-log lines on (CONFIG policy bit), verdicts are unchanged.
#[test]
fn logging_on_keeps_verdicts() {
    if !is_root() {
        eprintln!("skipping logging_on_keeps_verdicts: needs root");
        return;
    }
    let ns = rig_netns();
    run_in(&ns, || {
        let dp = match Dataplane::load(LoadOptions { ebpf_log: true, ..Default::default() }) {
            Ok(dp) => dp,
            Err(DataplaneError::NoObject) => {
                eprintln!("skipping logging_on_keeps_verdicts: the eBPF object was not built");
                return;
            }
            Err(e) => panic!("loading the datapath: {e}"),
        };
        let mut rig = Rig::new(dp);
        let f = Frame::overlay(false, &pkt(KIND_LOOKUP, ORIGIN, id(K_SELF), vec![0; 20]));
        rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
        let (f, out) = fwd_case(&mut rig, true, P_RD6, 10, Csum::Partial, KIND_DATA, XDP_REDIRECT);
        check_forwarded(&f, &out, if2_v6().into(), nb2_v6().into(), IF2_MAC, NB2_MAC);
        rig.check_stats();
    });
}

/// `memory_estimate` (what `cargo xtask doctor` shows before a node runs)
/// is within 5% of what the kernel charges for the loaded maps, at the
/// default sizes and at 10,000 peers.
#[test]
fn memory_estimate_matches_loaded_maps() {
    if !is_root() {
        eprintln!("skipping memory_estimate_matches_loaded_maps: needs root");
        return;
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    for (max_peers, max_sources) in
        [(LoadOptions::default().max_peers, LoadOptions::default().max_sources), (10_000, 65_536)]
    {
        let dp = match Dataplane::load(LoadOptions { max_peers, max_sources, ..Default::default() }) {
            Ok(dp) => dp,
            Err(DataplaneError::NoObject) => {
                eprintln!("skipping memory_estimate_matches_loaded_maps: the eBPF object was not built");
                return;
            }
            Err(e) => panic!("loading the datapath: {e}"),
        };
        let measured: u64 = dp.memory().iter().map(|(_, b)| b).sum();
        let estimate = p2p_common::maps::memory_estimate(max_peers, max_sources, ncpu);
        let off = (estimate as f64 - measured as f64).abs() / measured as f64;
        eprintln!(
            "{max_peers} peers, {max_sources} sources: estimate {estimate} B, kernel {measured} B ({:.1}%)",
            off * 100.0
        );
        assert!(off < 0.05, "estimate {estimate} B is {:.1}% off the kernel's {measured} B", off * 100.0);
    }
}

// ---------------------------------------------------------------- differential fuzzing

/// What the harness expects of a frame, from docs/WIRE.md step 1 and 2's
/// frame-level checks (the userspace datapath sees only datagrams the
/// kernel's stack delivered; these checks stand in for the stack).
enum RefFrame {
    Other,
    Malformed,
    Datagram { from: std::net::SocketAddr, data: Vec<u8>, v6: bool, ihl5: bool },
}

fn be16(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}

fn ref_parse(f: &[u8]) -> RefFrame {
    use p2p_common::wire::{MAGIC, VERSION, kind_known};
    if f.len() < 14 {
        return RefFrame::Other;
    }
    let (l4, ip_len, ip_hdr, src, v6, ihl5) = match be16(&f[12..14]) {
        0x0800 => {
            if f.len() < 34 || f[14] >> 4 != 4 || f[23] != 17 || be16(&f[20..22]) & 0x3fff != 0 {
                return RefFrame::Other;
            }
            let ihl = ((f[14] & 15) as usize) * 4;
            if ihl < 20 {
                return RefFrame::Other;
            }
            let s: [u8; 4] = f[26..30].try_into().unwrap();
            (14 + ihl, be16(&f[16..18]), ihl, IpAddr::from(s), false, ihl == 20)
        }
        0x86dd => {
            if f.len() < 54 || f[20] != 17 {
                return RefFrame::Other;
            }
            let s: [u8; 16] = f[22..38].try_into().unwrap();
            (54, be16(&f[18..20]) + 40, 40, IpAddr::from(s), true, false)
        }
        _ => return RefFrame::Other,
    };
    if f.len() < l4 + 8 || be16(&f[l4 + 2..]) != PORT as usize {
        return RefFrame::Other;
    }
    let ulen = be16(&f[l4 + 4..]);
    if f.len() < l4 + 8 + HEADER_LEN || ulen < 8 + HEADER_LEN || ip_len < ip_hdr + ulen || 14 + ip_len > f.len() {
        return RefFrame::Malformed;
    }
    let h = &f[l4 + 8..];
    if h[0] != MAGIC[0]
        || h[1] != MAGIC[1]
        || h[2] != VERSION
        || !kind_known(h[3])
        || be16(&h[80..]) + HEADER_LEN + 8 != ulen
    {
        return RefFrame::Malformed;
    }
    let from = std::net::SocketAddr::new(src, be16(&f[l4..]) as u16);
    RefFrame::Datagram { from, data: f[l4 + 8..l4 + ulen].to_vec(), v6, ihl5 }
}

/// A frame to fuzz with: a valid overlay packet of a random kind, family,
/// destination, size and source, often mutated afterwards.
fn fuzz_frame(rng: &mut StdRng) -> Vec<u8> {
    let kinds = [KIND_LOOKUP, KIND_LOOKUP_REPLY, KIND_DATA, KIND_PING, KIND_PONG];
    let dsts = [id(SELF_ID), id(K_SELF), id(P_TX4), id(P_TX6), id(P_RD4), id(P_RD6), id(P_NN4), id(P_NN6)];
    let kind = kinds[rng.gen_range(0..kinds.len())];
    let dst = if rng.gen_bool(0.8) { dsts[rng.gen_range(0..dsts.len())] } else { rng.r#gen() };
    let src = [ORIGIN, 0xb0, 0xb1, P_TX4][rng.gen_range(0..4)];
    let len = if rng.gen_bool(0.5) { rng.gen_range(0..40) } else { rng.gen_range(0..700) };
    let payload: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
    let mut p = pkt(kind, src, dst, payload);
    p.ttl = rng.gen_range(0..=33);
    p.hops = rng.r#gen();
    if rng.gen_bool(0.1) {
        p.flags = rng.r#gen();
        p.class = rng.r#gen();
        p.tag = rng.r#gen();
    }
    let v6 = rng.gen_bool(0.5);
    let mut f = Frame::overlay(v6, &p);
    if rng.gen_bool(0.1) {
        f.src = if v6 { v6addr("fd99:1::50").into() } else { Ipv4Addr::new(10, 99, 1, 50).into() };
    }
    if !v6 && rng.gen_bool(0.1) {
        f.ip_opts = vec![1; 4 * rng.gen_range(1..=3)];
    }
    f.csum = [Csum::Full, Csum::Partial, Csum::Zero][rng.gen_range(0..3)];
    let mut b = f.bytes();
    // Mutations: none, truncation, bit flips, overwritten bytes.
    match rng.gen_range(0..10) {
        0..=3 => {}
        4 | 5 => {
            let n = rng.gen_range(0..b.len());
            b.truncate(n);
        }
        6 | 7 => {
            for _ in 0..rng.gen_range(1..=3) {
                let i = rng.gen_range(0..b.len());
                b[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        8 => {
            // Somewhere in the headers, where it matters most.
            let i = rng.gen_range(0..b.len().min(14 + 60 + 8 + HEADER_LEN));
            b[i] = rng.r#gen();
        }
        _ => {
            b.extend((0..rng.gen_range(1..20)).map(|_| rng.r#gen::<u8>()));
        }
    }
    b
}

fn v6addr(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// docs/WIRE.md run by both datapaths on the same frames: `P2P_FUZZ_FRAMES`
/// generated and mutated frames (100,000 by default; `cargo xtask fuzz`
/// runs 1,000,000) through `p2p_xdp` by BPF_PROG_TEST_RUN and through the
/// userspace datapath (`Router::process_at`, after the harness's stand-in
/// for the kernel stack). Every frame must end under exactly one STATS
/// counter, and both must agree on verdict, counter and output bytes. The
/// equivalences allowed: XDP's `fwd_slow` (it hands the packet to its
/// controller, which forwards it) for the userspace's `fwd`, and XDP's
/// `local` for a PONG it leaves to its controller (IPv4 options).
#[test]
fn differential_fuzz_xdp_against_userspace() {
    fixture("differential_fuzz_xdp_against_userspace", |rig| {
        use p2p_controller::userspace::{Blocks, Peer, Router, SourceState, Verdict};
        let frames: usize = std::env::var("P2P_FUZZ_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
        let seed: u64 = std::env::var("P2P_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
        let mut rng = StdRng::seed_from_u64(seed);
        // The same block list on both sides.
        let forever = BlockEntry { reason: 1, _pad: 0, expires_ns: 0 };
        rig.dp.block(BlockTarget::Node(id(0xb0)), forever).unwrap();
        rig.dp
            .block(
                BlockTarget::Net { addr: addr_to_mapped(Ipv4Addr::new(10, 99, 1, 50).into()), prefix_len: 128 },
                forever,
            )
            .unwrap();
        rig.dp
            .block(BlockTarget::Net { addr: addr_to_mapped(v6addr("fd99:1::50").into()), prefix_len: 128 }, forever)
            .unwrap();
        let mut blocks = Blocks::default();
        blocks.nodes.insert(NodeId(id(0xb0)), 0);
        blocks.nets.push((addr_to_mapped(Ipv4Addr::new(10, 99, 1, 50).into()), 128, 0));
        blocks.nets.push((addr_to_mapped(v6addr("fd99:1::50").into()), 128, 0));
        let peers: Vec<(u32, Peer)> = default_peers()
            .into_iter()
            .map(|(s, e)| {
                (
                    s,
                    Peer::new(
                        NodeId(e.node_id),
                        std::net::SocketAddr::new(p2p_common::codec::mapped_to_addr(e.addr), e.port),
                    ),
                )
            })
            .collect();
        let router = Router::with_policy(NodeId(id(SELF_ID)), peers, blocks, RateBudget::UNLIMITED).unwrap();
        let mut sources = SourceState::default();
        let mut before = rig.dp.stats().unwrap();
        let mut tally: std::collections::BTreeMap<&str, u64> = Default::default();
        for n in 0..frames {
            if n % 10_000 == 0 {
                rig.dp.heartbeat(monotonic_ns()).unwrap();
            }
            let mut f = fuzz_frame(&mut rng);
            // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet
            // header (no interface delivers one either).
            while f.len() < 14 {
                f = fuzz_frame(&mut rng);
            }
            let out =
                rig.dp.test_run(&f, rig.if1).unwrap_or_else(|e| panic!("frame {n}: TEST_RUN fault {e}: {}", hex(&f)));
            let after = rig.dp.stats().unwrap();
            let moved: Vec<usize> =
                (0..COUNTER_COUNT as usize).filter(|i| after[*i].packets != before[*i].packets).collect();
            assert!(
                moved.len() == 1 && after[moved[0]].packets == before[moved[0]].packets + 1,
                "frame {n} moved counters {moved:?}: {}",
                hex(&f)
            );
            before = after;
            let got = moved[0] as u32;
            let (vx, ctr) = (verdict_name(out.verdict), COUNTER_NAMES[got as usize]);
            *tally.entry(ctr).or_default() += 1;
            let ctx = || format!("frame {n} ({}): XDP {vx}/{ctr}", hex(&f));
            match ref_parse(&f) {
                RefFrame::Other => {
                    assert_eq!((vx, got), ("XDP_PASS", counters::PASS_OTHER), "{}", ctx());
                    assert_eq!(out.frame, f, "{}", ctx());
                }
                RefFrame::Malformed => assert_eq!((vx, got), ("XDP_DROP", counters::DROP_MALFORMED), "{}", ctx()),
                RefFrame::Datagram { from, data, v6, ihl5 } => {
                    match router.process_at(&data, from, monotonic_ns(), &mut sources, None, None) {
                        Verdict::Drop(c) => {
                            assert_eq!(
                                (vx, got),
                                ("XDP_DROP", c),
                                "{}: userspace drops as {}",
                                ctx(),
                                COUNTER_NAMES[c as usize]
                            )
                        }
                        Verdict::Local(_) => {
                            assert_eq!((vx, got), ("XDP_PASS", counters::LOCAL), "{}: userspace delivers", ctx());
                            assert_eq!(out.frame, f, "{}", ctx());
                        }
                        Verdict::Pong { to, bytes } => {
                            if !v6 && !ihl5 {
                                assert_eq!((vx, got), ("XDP_PASS", counters::LOCAL), "{}: IPv4 options", ctx());
                                continue;
                            }
                            assert_eq!((vx, got), ("XDP_TX", counters::PONG), "{}: userspace answers", ctx());
                            let o = parse_out(&out.frame);
                            assert_eq!(o.raw_overlay, bytes, "{}: PONG bytes", ctx());
                            assert_eq!(std::net::SocketAddr::new(o.dst, o.dport), to, "{}", ctx());
                        }
                        Verdict::Forward { to, bytes, .. } => {
                            if got == counters::FWD_SLOW {
                                assert_eq!(vx, "XDP_PASS", "{}", ctx());
                                continue;
                            }
                            assert_eq!(got, counters::FWD, "{}: userspace forwards to {to}", ctx());
                            assert!(vx == "XDP_TX" || vx == "XDP_REDIRECT", "{}", ctx());
                            let o = parse_out(&out.frame);
                            assert_eq!(o.raw_overlay, bytes, "{}: forwarded bytes", ctx());
                            assert_eq!(std::net::SocketAddr::new(o.dst, o.dport), to, "{}", ctx());
                        }
                    }
                }
            }
        }
        eprintln!("differential fuzz: {frames} frames (seed {seed}), both datapaths agree; outcomes {tally:?}");
        for c in [
            "pass_other",
            "drop_malformed",
            "drop_blocked",
            "pong",
            "local",
            "fwd",
            "fwd_slow",
            "drop_ttl",
            "drop_no_route",
        ] {
            assert!(tally.get(c).copied().unwrap_or(0) > 0 || frames < 10_000, "no frame ended as {c}: {tally:?}");
        }
    });
}

// ---------------------------------------------------------------- step 5

/// Step 5 (docs/WIRE.md v2): tags verified under the sender's link keys
/// (the newest and the previous), every rejection counted as drop_auth
/// and as evidence against the source, replays dropped at the window's
/// edges, and a forwarded packet re-tagged for the next link (or stripped
/// when that link has no keys), for IPv4 and IPv6.
#[test]
fn step5_link_tags() {
    use p2p_common::auth::{self, REPLAY_BLOCKS, REPLAY_WINDOW};
    use p2p_common::maps::{LinkSecret, POLICY_AUTH_REQUIRED, POLICY_AUTH_VERIFY};
    fixture("step5_link_tags", |rig| {
        let (k_new, k_old, k_tx) = ([0x5a; 16], [0x4b; 16], [0x3c; 16]);
        let sender = |v6: bool| {
            let ip: IpAddr = if v6 { sender_v6().into() } else { SENDER_V4.into() };
            LinkKey { addr: addr_to_mapped(ip), port: 40000, _pad: 0 }
        };
        let from_sender = LinkSecret { rx: [k_new, k_old], tx: [0; 16], rx_id: [5, 4], tx_id: 0, _pad: [0; 5] };
        let to_peer = LinkSecret { rx: [[0; 16]; 2], tx: k_tx, rx_id: [0, 0], tx_id: 9, _pad: [0; 5] };
        let mut keys = std::collections::HashMap::new();
        keys.insert(sender(false), from_sender);
        keys.insert(sender(true), from_sender);
        keys.insert(LinkKey { addr: addr_to_mapped(NB1_V4.into()), port: PEER_PORT, _pad: 0 }, to_peer);
        keys.insert(LinkKey { addr: addr_to_mapped(nb1_v6().into()), port: PEER_PORT, _pad: 0 }, to_peer);
        rig.dp.set_link_keys(&keys).unwrap();
        rig.dp.set_config(id(SELF_ID), PORT, POLICY_AUTH_VERIFY | POLICY_AUTH_REQUIRED).unwrap();
        let mut auth_drops = 0u64;
        for v6 in [false, true] {
            let target = if v6 { P_TX6 } else { P_TX4 };
            let sealed = |p: &Packet, key: &[u8; 16], id: u8, stream: u8, seq: u32| {
                let mut b = p.encode();
                assert!(auth::seal(&mut b, key, id, stream, seq));
                b
            };
            let frame = |b: Vec<u8>| Frame { payload: b, ..Frame::overlay(v6, &pkt(KIND_DATA, ORIGIN, id(0), vec![])) };
            let mut data = pkt(KIND_DATA, ORIGIN, id(target), b"tagged".to_vec());
            data.ttl = 9;
            // Verified under the newest key, forwarded re-tagged for the next link.
            let out = rig.run(&frame(sealed(&data, &k_new, 5, 0, 1)).bytes(), XDP_TX, counters::FWD);
            let o = parse_out(&out);
            let raw = &o.raw_overlay;
            assert!(auth::tagged(raw[offset::VERSION], raw[offset::FLAGS]), "forwarded packets are tagged");
            let (kid, _stream, seq) = auth::v2_fields(raw);
            assert_eq!((kid, seq), (9, 0), "the next link's key, the first sequence number under it");
            let tag = u64::from_be_bytes(raw[offset::TAG..offset::TAG + 8].try_into().unwrap());
            assert_eq!(auth::tag_of(&k_tx, raw), Some(tag), "the new tag verifies under the next link's key");
            assert_eq!((o.overlay.ttl, o.overlay.hops), (8, 1));
            // The same packet again: a replay.
            rig.run(&frame(sealed(&data, &k_new, 5, 0, 1)).bytes(), XDP_DROP, counters::DROP_AUTH);
            // The previous key still verifies (packets in flight across a rotation).
            let out = rig.run(&frame(sealed(&data, &k_old, 4, 0, 1)).bytes(), XDP_TX, counters::FWD);
            assert_eq!(auth::v2_fields(&parse_out(&out).raw_overlay).2, 1, "the next sequence number");
            // Forged tag, altered header, unknown key ID, key of another
            // link, stripped tag (version 1), AUTH cleared: all dropped.
            let mut b = sealed(&data, &k_new, 5, 0, 2);
            b[offset::TAG] ^= 1;
            let mut altered = sealed(&data, &k_new, 5, 0, 3);
            altered[offset::TTL] = 30;
            let mut cleared = sealed(&data, &k_new, 5, 0, 4);
            cleared[offset::FLAGS] = 0;
            for bad in
                [b, altered, sealed(&data, &k_new, 7, 0, 5), sealed(&data, &k_tx, 5, 0, 6), data.encode(), cleared]
            {
                rig.run(&frame(bad).bytes(), XDP_DROP, counters::DROP_AUTH);
            }
            auth_drops += 7;
            // The LOOKUP's reply address is covered.
            let mut lookup = pkt(KIND_LOOKUP, ORIGIN, id(K_SELF), vec![0; 20]);
            lookup.payload[15] = 9;
            let good = sealed(&lookup, &k_new, 5, 1, 0);
            let mut redirected = good.clone();
            redirected[HEADER_LEN + 15] = 10;
            rig.run(&frame(redirected).bytes(), XDP_DROP, counters::DROP_AUTH);
            rig.run(&frame(good).bytes(), XDP_PASS, counters::LOCAL);
            auth_drops += 1;
            // An untagged LOOKUP_REPLY (from an owner, not a neighbour) is exempt.
            let reply = pkt(KIND_LOOKUP_REPLY, ORIGIN, id(SELF_ID), vec![0; 24]);
            rig.run(&Frame::overlay(v6, &reply).bytes(), XDP_PASS, counters::LOCAL);
            // Window edges, on stream 2: the newest N; N - (W - 1) is
            // inside (once); a number a whole window of slots older is not.
            let n = 100_000u32;
            let stream = 2;
            rig.run(&frame(sealed(&data, &k_new, 5, stream, n)).bytes(), XDP_TX, counters::FWD);
            let oldest = n - (REPLAY_WINDOW - 1);
            rig.run(&frame(sealed(&data, &k_new, 5, stream, oldest)).bytes(), XDP_TX, counters::FWD);
            rig.run(&frame(sealed(&data, &k_new, 5, stream, oldest)).bytes(), XDP_DROP, counters::DROP_AUTH);
            let stale = n - 32 * REPLAY_BLOCKS as u32;
            rig.run(&frame(sealed(&data, &k_new, 5, stream, stale)).bytes(), XDP_DROP, counters::DROP_AUTH);
            auth_drops += 2;
        }
        let ev: u64 = rig.dp.source_stats().unwrap().iter().map(|(_, s)| s.auth).sum();
        assert_eq!(ev, auth_drops, "every drop_auth is evidence against its source");
        // A PING from a link with a send key but no peer slot (not routed
        // to yet): XDP has no sequence stream for it; the controller answers.
        for v6 in [false, true] {
            let ping = pkt(KIND_PING, ORIGIN, id(SELF_ID), vec![0; 8]);
            let mut b = ping.encode();
            assert!(auth::seal(&mut b, &k_new, 5, 4, 0));
            let f = Frame { payload: b, ..Frame::overlay(v6, &ping) };
            let mut with_tx = keys.clone();
            with_tx.insert(sender(v6), LinkSecret { tx: k_tx, tx_id: 9, ..from_sender });
            rig.dp.set_link_keys(&with_tx).unwrap();
            rig.run_same(&f.bytes(), XDP_PASS, counters::LOCAL);
            rig.dp.set_link_keys(&keys).unwrap();
        }
        // Optional: untagged packets pass; a link without keys gets them stripped.
        rig.dp.set_config(id(SELF_ID), PORT, POLICY_AUTH_VERIFY).unwrap();
        for v6 in [false, true] {
            let target = if v6 { P_RD6 } else { P_RD4 };
            let data = pkt(KIND_DATA, ORIGIN, id(target), b"plain".to_vec());
            let mut b = data.encode();
            assert!(auth::seal(&mut b, &k_new, 5, 3, 0));
            let f = Frame { payload: b, ..Frame::overlay(v6, &data) };
            let out = rig.run(&f.bytes(), XDP_REDIRECT, counters::FWD);
            let raw = parse_out(&out).raw_overlay;
            assert_eq!(raw[offset::VERSION], 1, "no keys for that link: sent as version 1");
            assert!(raw[offset::RESERVED..offset::TAG + 8].iter().all(|b| *b == 0));
            let out = rig.run(&Frame::overlay(v6, &data).bytes(), XDP_REDIRECT, counters::FWD);
            assert_eq!(parse_out(&out).overlay, Packet { ttl: DEFAULT_TTL - 1, hops: 1, ..data.clone() });
        }
        rig.check_stats();
    });
}
