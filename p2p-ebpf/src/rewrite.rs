//! Packet rewriting: PONG built in place (step 6) and forwarding to the next
//! hop (step 7): header rewrite, FIB lookup, full checksums, TX or redirect.
//!
//! Checksums are always computed in full over the rewritten packet: on veth
//! the incoming UDP checksum may be only the pseudo-header sum of an
//! offloaded checksum, so patching it incrementally would be wrong.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
        xdp_md,
    },
    helpers::{bpf_csum_diff, bpf_fib_lookup},
    programs::XdpContext,
};
use p2p_common::{
    counters::{DROP_MALFORMED, DROP_NO_ROUTE, DROP_TTL, FWD, FWD_SLOW, LOCAL, PONG},
    maps::{
        Config, EVENT_NO_NEIGH, Event, IFACE_HAS_V4, IFACE_HAS_V6, NEXT_HOP_TTL_NS, NextHopCache, PEER_V4, PeerEntry,
    },
    wire::{DEFAULT_TTL, KIND_PONG, OverlayHeader},
};

use crate::{
    maps::{EVENTS, IFACES, NEXT_HOPS, TX_PORTS},
    parse::{ETH_LEN, EthHdr, IPPROTO_UDP, IPV4_LEN, IPV6_LEN, Ipv4Hdr, Ipv6Hdr, Overlay, UDP_LEN, UdpHdr},
    ptr::{ptr_at, ptr_at_mut},
    stats::Verdict,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// IP TTL / hop limit of packets this node (re-)originates: PONGs and forwarded packets.
const IP_TTL: u8 = 64;
/// Largest UDP length the datapath checksums (a 1500-byte MTU over IPv4);
/// bigger datagrams go to the controller.
pub const MAX_UDP_LEN: usize = 1500 - IPV4_LEN;

/// PONG in place of a PING to this node (step 6).
#[inline(always)]
pub fn pong(ctx: &XdpContext, p: &Overlay, cfg: &Config) -> Verdict {
    // IPv4 options or an oversized PING: the controller answers.
    if (!p.v6 && !p.ihl5) || p.udp_len as usize > MAX_UDP_LEN {
        return Verdict::new(XDP_PASS, LOCAL);
    }
    let v = if p.v6 { pong_in_place::<true>(ctx.ctx, cfg) } else { pong_in_place::<false>(ctx.ctx, cfg) };
    Verdict::unpack(v)
}

/// The rewrite behind [`pong`], a BPF subprogram (see [`forward_to`]).
#[inline(never)]
fn pong_in_place<const V6: bool>(raw: *mut xdp_md, cfg: &Config) -> u32 {
    let ctx = XdpContext::new(raw);
    let ctx = &ctx;
    let Ok(p) = reparse::<V6>(ctx) else {
        return Verdict::new(XDP_DROP, DROP_MALFORMED).pack();
    };
    let p = &p;
    unsafe {
        let eth = &mut *p.eth;
        swap_bytes::<6>(&mut eth.dst, &mut eth.src);
        if p.v6 {
            let ip = &mut *(p.l3 as *mut Ipv6Hdr);
            swap_bytes::<16>(&mut ip.src, &mut ip.dst);
            ip.hop_limit = IP_TTL;
        } else {
            let ip = &mut *(p.l3 as *mut Ipv4Hdr);
            core::mem::swap(&mut ip.src, &mut ip.dst);
            ip.ttl = IP_TTL;
            ipv4_csum(ip);
        }
        let udp = &mut *p.udp;
        core::mem::swap(&mut udp.sport, &mut udp.dport);
        let ov = &mut *p.ov;
        copy_bytes::<32>(&mut ov.dst_key, &ov.src_id);
        copy_bytes::<32>(&mut ov.src_id, &cfg.node_id);
        ov.kind = KIND_PONG;
        // A new packet from this node: no flags, whatever the PING carried;
        // tagged for the link back, or reserved bytes and tag zero.
        ov.flags = 0;
        ov.ttl = DEFAULT_TTL;
        ov.hops = 0;
    }
    if crate::auth::seal_reply::<V6>(raw) > 1 {
        return Verdict::new(XDP_DROP, DROP_MALFORMED).pack();
    }
    if udp_csum(ctx, p).is_err() {
        return Verdict::new(XDP_DROP, DROP_MALFORMED).pack();
    }
    Verdict::new(XDP_TX, PONG).pack()
}

/// What [`forward`] needs to know about the packet (scalars: the rewrite
/// itself re-reads the headers at fixed offsets).
#[derive(Clone, Copy)]
pub struct FwdInfo {
    pub ttl: u8,
    pub v6: bool,
    pub ihl5: bool,
    pub udp_len: u16,
}

/// Forwards to `peer` (step 7, a peer is closer).
#[inline(always)]
pub fn forward(ctx: &XdpContext, f: FwdInfo, cfg: &Config, slot: u32, peer: &PeerEntry, now: u64) -> Verdict {
    if f.ttl <= 1 {
        return Verdict::new(XDP_DROP, DROP_TTL);
    }
    let peer_v4 = peer.flags & PEER_V4 != 0;
    if peer_v4 == f.v6 || (!f.v6 && !f.ihl5) || f.udp_len as usize > MAX_UDP_LEN {
        return Verdict::new(XDP_PASS, FWD_SLOW);
    }
    let v = if f.v6 {
        forward_to::<true>(ctx.ctx, cfg, peer, slot, now)
    } else {
        forward_to::<false>(ctx.ctx, cfg, peer, slot, now)
    };
    Verdict::unpack(v)
}

/// The FIB lookup and rewrite behind [`forward`]. A BPF subprogram that
/// takes only the context, map values and a scalar and re-reads the
/// headers at fixed offsets: the verifier then sees the same state from
/// every path that reaches it (every kind, every trie depth) and prunes,
/// instead of re-walking the rewrite and checksum code for each.
#[inline(never)]
fn forward_to<const V6: bool>(raw: *mut xdp_md, cfg: &Config, peer: &PeerEntry, slot: u32, now: u64) -> u32 {
    let ctx = XdpContext::new(raw);
    let ctx = &ctx;
    let Ok(p) = reparse::<V6>(ctx) else {
        return Verdict::new(XDP_DROP, DROP_MALFORMED).pack();
    };
    let p = &p;
    let slow = Verdict::new(XDP_PASS, FWD_SLOW).pack();
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(hop) = NEXT_HOPS.get_ptr_mut(slot) else {
        return slow;
    };
    let hop = unsafe { &mut *hop };
    if hop.expires_ns <= now || hop.ingress != ingress || hop.peer_generation != peer.generation {
        match fib_next_hop::<V6>(ctx, p, cfg, peer, slot, ingress) {
            Ok(fresh) => {
                *hop = fresh;
                hop.expires_ns = now + NEXT_HOP_TTL_NS;
            }
            Err(()) => return slow,
        }
    }
    let egress = hop.egress;

    unsafe {
        let eth = &mut *p.eth;
        // Not `=`: LLVM makes a 6-byte array assignment a memmove call.
        copy_bytes::<6>(&mut eth.dst, &hop.dmac);
        copy_bytes::<6>(&mut eth.src, &hop.smac);
        if p.v6 {
            let ip = &mut *(p.l3 as *mut Ipv6Hdr);
            copy_bytes::<16>(&mut ip.src, &hop.src);
            copy_bytes::<16>(&mut ip.dst, &peer.addr);
            ip.hop_limit = IP_TTL;
        } else {
            let ip = &mut *(p.l3 as *mut Ipv4Hdr);
            ip.src = [hop.src[0], hop.src[1], hop.src[2], hop.src[3]];
            ip.dst = [peer.addr[12], peer.addr[13], peer.addr[14], peer.addr[15]];
            ip.ttl = IP_TTL;
            ipv4_csum(ip);
        }
        let udp = &mut *p.udp;
        udp.sport = cfg.overlay_port.to_be_bytes();
        udp.dport = peer.port.to_be_bytes();
        let ov = &mut *p.ov;
        ov.ttl -= 1;
        ov.hops = ov.hops.saturating_add(1);
    }
    if crate::auth::seal_to_peer::<V6>(raw, peer, slot) > 1 {
        return Verdict::new(XDP_DROP, DROP_MALFORMED).pack();
    }
    if udp_csum(ctx, p).is_err() {
        return Verdict::new(XDP_DROP, DROP_MALFORMED).pack();
    }
    if egress == ingress {
        return Verdict::new(XDP_TX, FWD).pack();
    }
    match TX_PORTS.redirect(egress, 0) {
        Ok(action) => Verdict::new(action, FWD).pack(),
        // The port vanished since the check above; the frame is rewritten already.
        Err(_) => Verdict::new(XDP_DROP, DROP_NO_ROUTE).pack(),
    }
}

/// Asks the kernel's FIB and neighbour table for the next hop towards
/// `peer`, and checks that this node can send there (an address of the
/// packet's family on the egress interface, the interface in TX_PORTS).
#[inline(always)]
fn fib_next_hop<const V6: bool>(
    ctx: &XdpContext,
    p: &Overlay,
    cfg: &Config,
    peer: &PeerEntry,
    slot: u32,
    ingress: u32,
) -> Result<NextHopCache, ()> {
    // SAFETY: plain C struct, all-zero is its initial state.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.l4_protocol = IPPROTO_UDP;
    fib.sport = cfg.overlay_port.to_be();
    fib.dport = peer.port.to_be();
    fib.ifindex = ingress;
    unsafe {
        if p.v6 {
            let ip = &*(p.l3 as *const Ipv6Hdr);
            fib.family = AF_INET6;
            fib.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.payload_len).wrapping_add(IPV6_LEN as u16);
            fib.__bindgen_anon_2.flowinfo = u32::from_ne_bytes(ip.vtcfl) & 0x0fff_ffffu32.to_be();
            words(&mut fib.__bindgen_anon_3.ipv6_src, &ip.src);
            words(&mut fib.__bindgen_anon_4.ipv6_dst, &peer.addr);
        } else {
            let ip = &*(p.l3 as *const Ipv4Hdr);
            fib.family = AF_INET;
            fib.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
            fib.__bindgen_anon_2.tos = ip.tos;
            fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
            fib.__bindgen_anon_4.ipv4_dst =
                u32::from_ne_bytes([peer.addr[12], peer.addr[13], peer.addr[14], peer.addr[15]]);
        }
    }
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut fib, core::mem::size_of::<FibParams>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            let _ = EVENTS.output(Event { kind: EVENT_NO_NEIGH, slot, ifindex: fib.ifindex, _pad: 0 }, 0);
        }
        return Err(());
    }
    let egress = fib.ifindex;
    let iface = unsafe { &*(IFACES.get_ptr(egress).ok_or(())?) };
    if iface.flags & (if V6 { IFACE_HAS_V6 } else { IFACE_HAS_V4 }) == 0 {
        return Err(());
    }
    if egress != ingress && TX_PORTS.get_ifindex(egress).is_none() {
        return Err(());
    }
    let mut hop = NextHopCache {
        expires_ns: 0,
        src: [0; 16],
        smac: fib.smac,
        dmac: fib.dmac,
        egress,
        ingress,
        peer_generation: peer.generation,
        _pad: [0; 2],
    };
    if V6 {
        copy_bytes::<16>(&mut hop.src, &iface.v6);
    } else {
        hop.src[..4].copy_from_slice(&iface.v4);
    }
    Ok(hop)
}

/// The headers of an overlay packet that `parse` admitted, at the fixed
/// offsets of IPv6 or option-less IPv4.
#[inline(always)]
fn reparse<const V6: bool>(ctx: &XdpContext) -> Result<Overlay, ()> {
    let l4_off = if V6 { ETH_LEN + IPV6_LEN } else { ETH_LEN + IPV4_LEN };
    let eth: *mut EthHdr = ptr_at_mut(ctx, 0)?;
    let l3: *mut u8 = ptr_at_mut::<[u8; IPV4_LEN]>(ctx, ETH_LEN)? as *mut u8;
    if V6 {
        ptr_at::<Ipv6Hdr>(ctx, ETH_LEN)?;
    }
    let udp: *mut UdpHdr = ptr_at_mut(ctx, l4_off)?;
    let ov: *mut OverlayHeader = ptr_at_mut(ctx, l4_off + UDP_LEN)?;
    let udp_len = u16::from_be_bytes(unsafe { (*udp).len });
    Ok(Overlay { eth, l3, v6: V6, ihl5: !V6, udp, ov, udp_len, l4_off: l4_off as u16 })
}

/// Big-endian address bytes into the u32 words `bpf_fib_lookup` takes.
#[inline(always)]
fn words(w: &mut [u32; 4], a: &[u8; 16]) {
    let mut i = 0;
    while i < 4 {
        w[i] = u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
        i += 1;
    }
}

/// Byte copy through registers, 4 bytes at a time (no stack temporaries:
/// the v6 rewrite must fit the 512-byte stack shared with the caller).
#[inline(always)]
fn copy_bytes<const N: usize>(dst: &mut [u8; N], src: &[u8; N]) {
    let mut i = 0;
    while i + 4 <= N {
        let w = [src[i], src[i + 1], src[i + 2], src[i + 3]];
        dst[i..i + 4].copy_from_slice(&w);
        i += 4;
    }
    while i < N {
        dst[i] = src[i];
        i += 1;
    }
}

/// Swaps two byte arrays through registers (see [`copy_bytes`]).
#[inline(always)]
fn swap_bytes<const N: usize>(a: &mut [u8; N], b: &mut [u8; N]) {
    let mut i = 0;
    while i < N {
        core::mem::swap(&mut a[i], &mut b[i]);
        i += 1;
    }
}

/// Ones-complement sum of `b` as 16-bit words in memory order (the order
/// `bpf_csum_diff` sums in), not folded.
#[inline(always)]
fn sum16<const N: usize>(b: &[u8; N]) -> u64 {
    let mut s = 0u64;
    let mut i = 0;
    while i + 1 < N {
        s += u16::from_ne_bytes([b[i], b[i + 1]]) as u64;
        i += 2;
    }
    s
}

#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Full IPv4 header checksum (IHL 5).
#[inline(always)]
fn ipv4_csum(ip: &mut Ipv4Hdr) {
    ip.check = [0, 0];
    let mut s = 0u64;
    s += u16::from_ne_bytes([ip.vihl, ip.tos]) as u64;
    s += u16::from_ne_bytes(ip.tot_len) as u64;
    s += u16::from_ne_bytes(ip.id) as u64;
    s += u16::from_ne_bytes(ip.frag_off) as u64;
    s += u16::from_ne_bytes([ip.ttl, ip.proto]) as u64;
    s += sum16(&ip.src);
    s += sum16(&ip.dst);
    ip.check = (!fold(s)).to_ne_bytes();
}

/// Full UDP checksum of the (rewritten) datagram, written into its header.
/// Only for IHL-5 IPv4 and IPv6 and `udp_len <= MAX_UDP_LEN`.
#[inline(always)]
fn udp_csum(ctx: &XdpContext, p: &Overlay) -> Result<(), ()> {
    let len = p.udp_len as usize;
    if len > MAX_UDP_LEN {
        return Err(());
    }
    let len_word = u16::from_ne_bytes(p.udp_len.to_be_bytes()) as u64;
    let proto_word = u16::from_ne_bytes([0, IPPROTO_UDP]) as u64;
    unsafe { (*p.udp).check = [0, 0] };
    // The addresses of the pseudo-header are summed where they lie in the
    // packet (src and dst are adjacent): summing them from byte loads made
    // LLVM keep 32 bytes in spill slots across the body's helper calls.
    let (addrs, l4_off) = if p.v6 {
        (chunk::<32>(ctx, ETH_LEN + 8, 0)?, ETH_LEN + IPV6_LEN)
    } else {
        (chunk::<8>(ctx, ETH_LEN + 12, 0)?, ETH_LEN + IPV4_LEN)
    };
    let pseudo = addrs as u64 + len_word + proto_word;
    let body = sum_packet(ctx, l4_off, len)?;
    let mut c = !fold(pseudo + body);
    if c == 0 {
        c = 0xffff;
    }
    unsafe { (*p.udp).check = c.to_ne_bytes() };
    Ok(())
}

/// `bpf_csum_diff` over `N` bytes (a multiple of 4, at most 512) at `off`.
#[inline(always)]
fn chunk<const N: usize>(ctx: &XdpContext, off: usize, seed: u32) -> Result<u32, ()> {
    let p: *const [u8; N] = ptr_at(ctx, off)?;
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, N as u32, seed) };
    if r < 0 { Err(()) } else { Ok(r as u32) }
}

/// `bpf_csum_diff` over `size` bytes at `off`, where `size` is 0 or `N`.
/// No branch on `size`: branching on bits of the length would split the
/// verifier's state once per bit (2^8 paths through the rest of the
/// program); a variable size only needs `N` bytes to be in the frame, and
/// when they are not, `size` is 0 anyway (the datagram is in the frame).
#[inline(always)]
fn sized_chunk<const N: usize>(ctx: &XdpContext, off: usize, size: usize, seed: u32) -> u32 {
    match ptr_at::<[u8; N]>(ctx, off) {
        Ok(p) => {
            let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, size as u32, seed) };
            if r < 0 { seed } else { r as u32 }
        }
        Err(()) => seed,
    }
}

/// One bit of the length: the `B` bytes that follow the higher bits' bytes.
#[inline(always)]
fn bit_chunk<const B: usize>(ctx: &XdpContext, start: usize, len: usize, seed: u32) -> u32 {
    sized_chunk::<B>(ctx, start + (len & !(2 * B - 1)), len & B, seed)
}

/// Unfolded ones-complement sum of `len` (<= MAX_UDP_LEN < 2048) frame
/// bytes from `start`, by the binary decomposition of `len`.
#[inline(always)]
fn sum_packet(ctx: &XdpContext, start: usize, len: usize) -> Result<u64, ()> {
    let len = len & 2047;
    let half = (len & 1024) >> 1;
    let mut s = sized_chunk::<512>(ctx, start, half, 0);
    s = sized_chunk::<512>(ctx, start + half, half, s);
    s = bit_chunk::<512>(ctx, start, len, s);
    s = bit_chunk::<256>(ctx, start, len, s);
    s = bit_chunk::<128>(ctx, start, len, s);
    s = bit_chunk::<64>(ctx, start, len, s);
    s = bit_chunk::<32>(ctx, start, len, s);
    s = bit_chunk::<16>(ctx, start, len, s);
    s = bit_chunk::<8>(ctx, start, len, s);
    s = bit_chunk::<4>(ctx, start, len, s);
    let mut total = s as u64;
    let off = start + (len & !3);
    if len & 2 != 0 {
        let w: *const [u8; 2] = ptr_at(ctx, off)?;
        total += u16::from_ne_bytes(unsafe { *w }) as u64;
    }
    if len & 1 != 0 {
        // The last byte, read with the one before it (the datagram is at
        // least 104 bytes): a 1-byte bounds check compiles to `p >= end`,
        // from which the verifier derives no readable range.
        let w: *const [u8; 2] = ptr_at(ctx, off + (len & 2) - 1)?;
        total += u16::from_ne_bytes([unsafe { (*w)[1] }, 0]) as u64;
    }
    Ok(total)
}
