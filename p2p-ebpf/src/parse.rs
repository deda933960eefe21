//! Ethernet / IPv4 / IPv6 / UDP parsing and the docs/WIRE.md step 1 and 2 checks.

use aya_ebpf::programs::XdpContext;
use p2p_common::wire::{HEADER_LEN, MAGIC, OverlayHeader, kind_known, version_known};

use crate::ptr::ptr_at_mut;

pub use p2p_common::net::{
    ETH_LEN, ETH_P_IP, ETH_P_IPV6, EthHdr, IPPROTO_UDP, IPV4_LEN, IPV6_LEN, Ipv4Hdr, Ipv6Hdr, UDP_LEN, UdpHdr,
};

/// A well-formed overlay packet (steps 1 and 2 passed).
pub struct Overlay {
    pub eth: *mut EthHdr,
    /// `Ipv4Hdr` when `v6` is false, else `Ipv6Hdr`.
    pub l3: *mut u8,
    pub v6: bool,
    /// IPv4 header without options (the only one the forward path rewrites).
    pub ihl5: bool,
    pub udp: *mut UdpHdr,
    pub ov: *mut OverlayHeader,
    /// UDP length (header + overlay header + payload).
    pub udp_len: u16,
    /// Offset of the UDP header in the frame.
    pub l4_off: u16,
}

pub enum Parsed {
    /// Step 1: not UDP to the overlay port.
    Other,
    /// Step 2; the source address (IPv4-mapped for IPv4), for the evidence.
    Malformed([u8; 16]),
    Overlay(Overlay),
}

/// Parses the frame up to the overlay header and runs steps 1 and 2.
#[inline(always)]
pub fn parse(ctx: &XdpContext, overlay_port: u16) -> Parsed {
    match try_parse(ctx, overlay_port) {
        Ok(p) => p,
        // Too short to be UDP to us: not ours.
        Err(()) => Parsed::Other,
    }
}

#[inline(always)]
fn try_parse(ctx: &XdpContext, overlay_port: u16) -> Result<Parsed, ()> {
    let eth: *mut EthHdr = ptr_at_mut(ctx, 0)?;
    let proto = u16::from_be_bytes(unsafe { (*eth).proto });
    if proto == ETH_P_IP {
        let ip: *mut Ipv4Hdr = ptr_at_mut(ctx, ETH_LEN)?;
        let (vihl, frag, ip_proto, tot_len) =
            unsafe { ((*ip).vihl, u16::from_be_bytes((*ip).frag_off), (*ip).proto, u16::from_be_bytes((*ip).tot_len)) };
        // Any fragment (MF or an offset) is left to the stack's reassembly.
        if vihl >> 4 != 4 || ip_proto != IPPROTO_UDP || frag & 0x3fff != 0 {
            return Ok(Parsed::Other);
        }
        let ihl = ((vihl & 0x0f) as usize) << 2;
        if ihl < IPV4_LEN {
            return Ok(Parsed::Other);
        }
        if ihl == IPV4_LEN {
            udp_overlay(
                ctx,
                eth,
                ip as *mut u8,
                false,
                true,
                ETH_LEN + IPV4_LEN,
                tot_len as usize,
                IPV4_LEN,
                overlay_port,
            )
        } else {
            udp_overlay(ctx, eth, ip as *mut u8, false, false, ETH_LEN + ihl, tot_len as usize, ihl, overlay_port)
        }
    } else if proto == ETH_P_IPV6 {
        let ip: *mut Ipv6Hdr = ptr_at_mut(ctx, ETH_LEN)?;
        let (next, plen) = unsafe { ((*ip).next_hdr, u16::from_be_bytes((*ip).payload_len)) };
        if next != IPPROTO_UDP {
            return Ok(Parsed::Other);
        }
        udp_overlay(
            ctx,
            eth,
            ip as *mut u8,
            true,
            false,
            ETH_LEN + IPV6_LEN,
            plen as usize + IPV6_LEN,
            IPV6_LEN,
            overlay_port,
        )
    } else {
        Ok(Parsed::Other)
    }
}

/// `l4_off`: UDP header offset in the frame; `ip_len`/`ip_hdr_len`: the IP
/// packet's declared length and its header length.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn udp_overlay(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    l3: *mut u8,
    v6: bool,
    ihl5: bool,
    l4_off: usize,
    ip_len: usize,
    ip_hdr_len: usize,
    overlay_port: u16,
) -> Result<Parsed, ()> {
    let udp: *mut UdpHdr = ptr_at_mut(ctx, l4_off)?;
    let (dport, udp_len) = unsafe { (u16::from_be_bytes((*udp).dport), u16::from_be_bytes((*udp).len)) };
    if dport != overlay_port {
        return Ok(Parsed::Other);
    }
    // Step 2. The header must be in the frame (checked first, so that the
    // verifier sees this bounds check and no derived one), the datagram must
    // hold the header, fit in the IP packet, and the IP packet in the frame.
    let malformed = || Ok(Parsed::Malformed(src_addr(l3, v6)));
    let ov: *mut OverlayHeader = match ptr_at_mut(ctx, l4_off + UDP_LEN) {
        Ok(p) => p,
        Err(()) => return malformed(),
    };
    let ulen = udp_len as usize;
    if ulen < UDP_LEN + HEADER_LEN || ip_len < ip_hdr_len + ulen {
        return malformed();
    }
    if ctx.data() + ETH_LEN + ip_len > ctx.data_end() {
        return malformed();
    }
    let h = unsafe { &*ov };
    if h.magic[0] != MAGIC[0] || h.magic[1] != MAGIC[1] || !version_known(h.version) || !kind_known(h.kind) {
        return malformed();
    }
    if u16::from_be_bytes(h.payload_len) as usize + HEADER_LEN + UDP_LEN != ulen {
        return malformed();
    }
    Ok(Parsed::Overlay(Overlay { eth, l3, v6, ihl5, udp, ov, udp_len, l4_off: l4_off as u16 }))
}

/// The source address of the IP header at `l3` as BLOCKED_NETS, PEER_ADDRS
/// and SOURCE_STATS store it (IPv4-mapped for IPv4).
#[inline(always)]
pub fn src_addr(l3: *const u8, v6: bool) -> [u8; 16] {
    if v6 { unsafe { (*(l3 as *const Ipv6Hdr)).src } } else { mapped_v4(unsafe { &(*(l3 as *const Ipv4Hdr)).src }) }
}
/// An IPv4 address as BLOCKED_NETS, PEER_ADDRS and PEERS store it: IPv4-mapped.
#[inline(always)]
pub fn mapped_v4(a: &[u8; 4]) -> [u8; 16] {
    // Built as four words: the byte-array literal compiles to a call of
    // a memset subprogram for its ten zero bytes, on every packet.
    let words = [0u32, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes(*a)];
    // SAFETY: [u32; 4] and [u8; 16] have the same size, every bit pattern valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// 32-byte equality without a `bcmp` call. Early exits keep the verifier's
/// path count linear: a branch-free `d |= a[i] ^ b[i]` loop compiled to 32
/// conditional moves (branches in BPF) whose states never merge.
#[inline(always)]
pub fn eq32(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut i = 0;
    while i < 32 {
        let x = u64::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5], a[i + 6], a[i + 7]]);
        let y = u64::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]]);
        if x != y {
            return false;
        }
        i += 8;
    }
    true
}
