//! Ethernet/IPv4/UDP parsing and the minimal forwarder's rewrite.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use core::mem::size_of;

use crate::maps::{
    AUTH_K0, AUTH_K1, AUTH_ON, AUTH_SEQ, BENCH_AUTH as AUTH, FWD_DST_IP, FWD_DST_MAC, FWD_SRC_IP, FWD_SRC_MAC,
    GEN_HDR_WORDS,
};

use p2p_common::auth::{TAG_WORDS, siphash24};
use p2p_common::net::{ETH_LEN, ETH_P_IP, EthHdr, IPPROTO_UDP, IPV4_LEN, Ipv4Hdr, UDP_LEN, UdpHdr};
use p2p_common::wire::{HEADER_LEN, offset};

pub struct Udp4 {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub udp: *mut UdpHdr,
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// An IPv4 (no options, not a fragment) UDP frame to `port`.
#[inline(always)]
pub fn udp4_to(ctx: &XdpContext, port: u16) -> Option<Udp4> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    if u16::from_be_bytes(unsafe { (*eth).proto }) != ETH_P_IP {
        return None;
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    let (vihl, proto, frag) = unsafe { ((*ip).vihl, (*ip).proto, u16::from_be_bytes((*ip).frag_off)) };
    if vihl != 0x45 || proto != IPPROTO_UDP || frag & 0x3fff != 0 {
        return None;
    }
    let udp: *mut UdpHdr = ptr_at(ctx, ETH_LEN + IPV4_LEN)?;
    if u16::from_be_bytes(unsafe { (*udp).dport }) != port {
        return None;
    }
    Some(Udp4 { eth, ip, udp })
}

#[inline(always)]
fn word(b: &[u8], i: usize) -> u32 {
    ((b[i] as u32) << 8) | b[i + 1] as u32
}

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Fixed rewrite: MACs and IPv4 addresses from `cfg`, the IPv4 header
/// checksum in full, the UDP checksum patched for the address change
/// (RFC 1624; the generator's frames carry complete checksums).
#[inline(always)]
pub fn rewrite(p: &Udp4, cfg: &[u8; 32]) {
    // SAFETY: the pointers were bounds-checked by `udp4_to`.
    unsafe {
        let eth = &mut *p.eth;
        let ip = &mut *p.ip;
        let udp = &mut *p.udp;
        let mut i = 0;
        while i < 6 {
            eth.dst[i] = cfg[FWD_DST_MAC + i];
            eth.src[i] = cfg[FWD_SRC_MAC + i];
            i += 1;
        }
        let old_src = ip.src;
        let old_dst = ip.dst;
        let new_src = [cfg[FWD_SRC_IP], cfg[FWD_SRC_IP + 1], cfg[FWD_SRC_IP + 2], cfg[FWD_SRC_IP + 3]];
        let new_dst = [cfg[FWD_DST_IP], cfg[FWD_DST_IP + 1], cfg[FWD_DST_IP + 2], cfg[FWD_DST_IP + 3]];
        ip.src = new_src;
        ip.dst = new_dst;
        // IPv4 header checksum over the 20 rewritten bytes.
        ip.check = [0, 0];
        let h = &*(p.ip as *const [u8; 20]);
        let mut s = 0u32;
        let mut k = 0;
        while k < 20 {
            s += word(h, k);
            k += 2;
        }
        ip.check = (!fold(s)).to_be_bytes();
        // UDP: 0 means "no checksum" over IPv4; leave it so.
        let c = u16::from_be_bytes(udp.check) as u32;
        if c != 0 {
            let mut s = (!c) & 0xffff;
            s += (!word(&old_src, 0)) & 0xffff;
            s += (!word(&old_src, 2)) & 0xffff;
            s += (!word(&old_dst, 0)) & 0xffff;
            s += (!word(&old_dst, 2)) & 0xffff;
            s += word(&new_src, 0) + word(&new_src, 2) + word(&new_dst, 0) + word(&new_dst, 2);
            let mut out = !fold(s);
            if out == 0 {
                out = 0xffff;
            }
            udp.check = out.to_be_bytes();
        }
    }
}

/// Copies the template's words over the start of the frame; false if the
/// frame is shorter than the template.
#[inline(always)]
pub fn write_headers(ctx: &XdpContext, tpl: &[u64; GEN_HDR_WORDS]) -> bool {
    let Some(p) = ptr_at::<[u64; GEN_HDR_WORDS]>(ctx, 0) else { return false };
    let mut i = 0;
    while i < GEN_HDR_WORDS {
        // SAFETY: bounds checked above; unaligned stores are fine in XDP.
        unsafe { core::ptr::write_unaligned((p as *mut u64).add(i), tpl[i]) };
        i += 1;
    }
    true
}

/// BENCH_AUTH on: the next sequence number and the tag into the overlay
/// header after Ethernet/IPv4/UDP (the template's UDP checksum is 0, "none":
/// B's datapath writes a full one when it forwards). False if the frame is
/// too short.
#[inline(always)]
pub fn seal(ctx: &XdpContext) -> bool {
    let Some(a) = AUTH.get_ptr_mut(0) else { return false };
    // SAFETY: a map value, valid for the run; the generator runs on one CPU.
    let a = unsafe { &mut *a };
    if a[AUTH_ON] == 0 {
        return true;
    }
    let Some(ov) = ptr_at::<[u8; HEADER_LEN]>(ctx, ETH_LEN + IPV4_LEN + UDP_LEN) else { return false };
    let seq = a[AUTH_SEQ] as u32;
    a[AUTH_SEQ] += 1;
    let ov = ov as *mut u8;
    // SAFETY: within the bounds-checked header.
    unsafe {
        core::ptr::write_unaligned(ov.add(offset::SEQ) as *mut [u8; 4], seq.to_be_bytes());
        let tag = siphash24::<TAG_WORDS>(a[AUTH_K0], a[AUTH_K1], |i| {
            u64::from_le_bytes(core::ptr::read_unaligned(ov.add(8 * i) as *const [u8; 8]))
        });
        core::ptr::write_unaligned(ov.add(offset::TAG) as *mut [u8; 8], tag.to_be_bytes());
    }
    true
}

/// `bpf_fib_lookup` for the frame's IPv4 source towards the configured
/// destination, from the ingress interface; true on success.
#[inline(always)]
pub fn fib_v4(ctx: &XdpContext, cfg: &[u8; 32]) -> bool {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else { return false };
    // SAFETY: plain C struct, all-zero is its initial state; ip bounds-checked.
    unsafe {
        let mut fib: FibParams = core::mem::zeroed();
        fib.family = 2;
        fib.l4_protocol = IPPROTO_UDP;
        fib.ifindex = ctx.ingress_ifindex() as u32;
        fib.__bindgen_anon_1.tot_len = u16::from_be_bytes((*ip).tot_len);
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes((*ip).src);
        fib.__bindgen_anon_4.ipv4_dst =
            u32::from_ne_bytes([cfg[FWD_DST_IP], cfg[FWD_DST_IP + 1], cfg[FWD_DST_IP + 2], cfg[FWD_DST_IP + 3]]);
        let rc = bpf_fib_lookup(ctx.as_ptr(), &mut fib, size_of::<FibParams>() as i32, 0);
        rc == BPF_FIB_LKUP_RET_SUCCESS as i64
    }
}
