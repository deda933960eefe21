//! docs/WIRE.md step 5 and the tag of every packet the datapath sends on:
//! SipHash-2-4 with the link's keys (LINK_KEYS), a replay window per
//! sender stream (REPLAY), and a sequence number per CPU and next hop
//! (TX_SEQ). The tag itself is `p2p_common::auth`'s, shared with userspace.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action::XDP_DROP, xdp_md},
    helpers::bpf_get_smp_processor_id,
    programs::XdpContext,
};
use p2p_common::{
    auth::{KERNEL_STREAMS, TAG_WORDS, TAG_WORDS_LOOKUP, key_words, replay_check, replay_slot, siphash24, tagged},
    counters::DROP_AUTH,
    maps::{LinkKey, LinkSecret, POLICY_AUTH_REQUIRED, PeerEntry, ReplayKey},
    net::{ETH_LEN, IPV4_LEN, IPV6_LEN, UDP_LEN, UdpHdr},
    wire::{
        FLAG_AUTH, HEADER_LEN, KIND_LOOKUP, KIND_LOOKUP_REPLY, LOOKUP_PAYLOAD_LEN, OverlayHeader, VERSION, VERSION_AUTH,
    },
};

use crate::{
    filter::{Evidence, evidence, sender_slot, src_ip},
    maps::{LINK_KEYS, REPLAY, REPLAY_ZERO, TX_SEQ},
    ptr::{ptr_at, ptr_at_mut},
    stats::Verdict,
};

/// Step 5 for a packet whose UDP header is at `l4_off` (bit 15 of
/// `l4_v6`: IPv6), under CONFIG's `policy`. A BPF subprogram (its stack is
/// its own). Returns 0 to go on, else a packed [`Verdict`].
#[inline(never)]
pub fn verify(raw: *mut xdp_md, policy: u32, l4_v6: u32) -> u32 {
    // As in `filter::steps_3_and_4`: data/data_end loaded here.
    let raw = unsafe { core::ptr::read_volatile(&raw) };
    let ctx = XdpContext::new(raw);
    let l4_off = (l4_v6 & 0x7f) as usize;
    let Some(src) = src_ip(&ctx, l4_v6 & 0x8000 != 0) else { return 0 };
    let (Ok(udp), Ok(ov)) = (ptr_at::<UdpHdr>(&ctx, l4_off), ptr_at::<OverlayHeader>(&ctx, l4_off + UDP_LEN)) else {
        return 0;
    };
    let (version, flags, kind) = unsafe { ((*ov).version, (*ov).flags, (*ov).kind) };
    let fail = || {
        evidence(&src, Evidence::Auth);
        Verdict::new(XDP_DROP, DROP_AUTH).pack()
    };
    if !tagged(version, flags) {
        // A LOOKUP_REPLY comes straight from the owner, rarely a neighbour.
        return if policy & POLICY_AUTH_REQUIRED as u32 != 0 && kind != KIND_LOOKUP_REPLY { fail() } else { 0 };
    }
    let port = u16::from_be_bytes(unsafe { (*udp).sport });
    let ep = LinkKey { addr: src, port, _pad: 0 };
    // SAFETY: read at once; the controller replaces entries whole.
    let Some(secret) = (unsafe { LINK_KEYS.get(ep) }) else { return fail() };
    let (key_id, stream, seq) = unsafe {
        let r = &(*ov).reserved;
        (r[0], r[1], u32::from_be_bytes([r[2], r[3], r[4], r[5]]))
    };
    let key = if key_id != 0 && key_id == secret.rx_id[0] {
        &secret.rx[0]
    } else if key_id != 0 && key_id == secret.rx_id[1] {
        &secret.rx[1]
    } else {
        return fail();
    };
    let lookup_head = if kind == KIND_LOOKUP {
        match ptr_at::<[u8; LOOKUP_PAYLOAD_LEN]>(&ctx, l4_off + UDP_LEN + HEADER_LEN) {
            Ok(p) => p as *const u8,
            Err(()) => return fail(),
        }
    } else {
        core::ptr::null()
    };
    let tag = tag_at(ov as *const u8, lookup_head, key);
    if tag != u64::from_be_bytes(unsafe { (*ov).tag }) {
        return fail();
    }
    // Replay: only packets that verified reach (or create) a window.
    let rk = ReplayKey { addr: src, port, key_id, stream };
    let w = match REPLAY.get_ptr_mut(rk) {
        Some(w) => w,
        None => {
            let Some(zero) = REPLAY_ZERO.get(0) else { return fail() };
            let _ = REPLAY.insert(rk, zero, BPF_NOEXIST as u64);
            match REPLAY.get_ptr_mut(rk) {
                Some(w) => w,
                None => return fail(),
            }
        }
    };
    // SAFETY: a map value, valid for the program's run; `replay_slot` is
    // below REPLAY_BLOCKS. Two CPUs racing on one stream's window can lose
    // one of their updates (docs/WIRE.md says what that allows).
    let word = unsafe { (*w).blocks.as_mut_ptr().add(replay_slot(seq)) };
    match replay_check(unsafe { core::ptr::read_volatile(word) }, seq) {
        Some(next) => {
            unsafe { core::ptr::write_volatile(word, next) };
            0
        }
        None => fail(),
    }
}

/// The tag of the header at `ov` (and, for a LOOKUP, of the 20-byte
/// payload head at `lookup_head`, else null) under `key`.
#[inline(always)]
fn tag_at(ov: *const u8, lookup_head: *const u8, key: &[u8; 16]) -> u64 {
    let (k0, k1) = key_words(key);
    let word = |p: *const u8, i: usize| unsafe { u64::from_le_bytes(*(p.add(8 * i) as *const [u8; 8])) };
    if lookup_head.is_null() {
        siphash24::<TAG_WORDS>(k0, k1, |i| word(ov, i))
    } else {
        siphash24::<TAG_WORDS_LOOKUP>(k0, k1, |i| {
            if i < TAG_WORDS {
                word(ov, i)
            } else if i < TAG_WORDS + 2 {
                word(lookup_head, i - TAG_WORDS)
            } else {
                // Payload bytes 16..20 and four zero bytes.
                let t = unsafe { *(lookup_head.add(16) as *const [u8; 4]) };
                u32::from_le_bytes(t) as u64
            }
        })
    }
}

/// Tags a packet this node forwards to `peer` (in PEERS `slot`), whose
/// headers are at the fixed offsets of IPv6 (`V6`) or option-less IPv4 and
/// whose ttl and hops are already rewritten; strips the tag when the link
/// has no key. Before the UDP checksum. A BPF subprogram; returns whether
/// it tagged (a scalar return: a subprogram returning nothing may leave a
/// stack pointer in R0, which the verifier refuses).
#[inline(never)]
pub fn seal_to_peer<const V6: bool>(raw: *mut xdp_md, peer: &PeerEntry, slot: u32) -> u32 {
    let ctx = XdpContext::new(raw);
    let ep = LinkKey { addr: peer.addr, port: peer.port, _pad: 0 };
    opaque(seal::<V6>(&ctx, &ep, slot))
}

/// Whether a PING's sender has link keys but no peer slot here (it is not
/// routed to yet, e.g. while its first keys are being installed): the
/// datapath then has no sequence stream for that link, and the controller
/// answers instead, tagged from its own stream. A BPF subprogram.
#[inline(never)]
pub fn reply_needs_controller(raw: *mut xdp_md, l4_v6: u32) -> u32 {
    let raw = unsafe { core::ptr::read_volatile(&raw) };
    let ctx = XdpContext::new(raw);
    let l4_off = (l4_v6 & 0x7f) as usize;
    let Some(src) = src_ip(&ctx, l4_v6 & 0x8000 != 0) else { return 0 };
    let Ok(udp) = ptr_at::<UdpHdr>(&ctx, l4_off) else { return 0 };
    let port = u16::from_be_bytes(unsafe { (*udp).sport });
    if sender_slot(&src, port).is_some() {
        return 0;
    }
    let ep = LinkKey { addr: src, port, _pad: 0 };
    // SAFETY: read at once.
    match unsafe { LINK_KEYS.get(ep) } {
        Some(s) if s.tx_id != 0 => 1,
        _ => 0,
    }
}

/// Tags a PONG for the link back to the PING's sender (the packet's
/// destination once rewritten), or strips the tag. A BPF subprogram,
/// returning as [`seal_to_peer`].
#[inline(never)]
pub fn seal_reply<const V6: bool>(raw: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(raw);
    let l4_off = ETH_LEN + if V6 { IPV6_LEN } else { IPV4_LEN };
    let dst = if V6 {
        match ptr_at::<[u8; 16]>(&ctx, ETH_LEN + 24) {
            Ok(p) => unsafe { *p },
            Err(()) => return 0,
        }
    } else {
        match ptr_at::<[u8; 4]>(&ctx, ETH_LEN + 16) {
            Ok(p) => crate::parse::mapped_v4(unsafe { &*p }),
            Err(()) => return 0,
        }
    };
    let Ok(udp) = ptr_at::<UdpHdr>(&ctx, l4_off) else { return 0 };
    let port = u16::from_be_bytes(unsafe { (*udp).dport });
    let slot = sender_slot(&dst, port).unwrap_or(u32::MAX);
    let ep = LinkKey { addr: dst, port, _pad: 0 };
    opaque(seal::<V6>(&ctx, &ep, slot))
}

/// `v`, through a volatile read: LLVM cannot prove the caller's check of a
/// subprogram's result always false and drop the result (R0 would then
/// be left holding whatever it held, which the verifier refuses).
#[inline(always)]
fn opaque(v: u32) -> u32 {
    unsafe { core::ptr::read_volatile(&v) }
}

#[inline(always)]
fn seal<const V6: bool>(ctx: &XdpContext, ep: &LinkKey, slot: u32) -> u32 {
    let l4_off = ETH_LEN + if V6 { IPV6_LEN } else { IPV4_LEN };
    let Ok(ov) = ptr_at_mut::<OverlayHeader>(ctx, l4_off + UDP_LEN) else { return 0 };
    // SAFETY: read at once; the controller replaces entries whole.
    let secret: Option<&LinkSecret> = unsafe { LINK_KEYS.get(ep) };
    let seq = match (secret, TX_SEQ.get_ptr_mut(slot)) {
        (Some(s), Some(seq)) if s.tx_id != 0 => {
            // SAFETY: this CPU's TX_SEQ value; nothing else on it runs meanwhile.
            unsafe {
                if (*seq).key_id != s.tx_id {
                    (*seq).key_id = s.tx_id;
                    (*seq).next = 0;
                }
                let n = (*seq).next;
                (*seq).next = n.wrapping_add(1);
                Some((s, n))
            }
        }
        _ => None,
    };
    let h = unsafe { &mut *ov };
    let Some((secret, seq)) = seq else {
        h.version = VERSION;
        h.flags &= !FLAG_AUTH;
        h.reserved = [0; 6];
        h.tag = [0; 8];
        return 0;
    };
    let stream = (unsafe { bpf_get_smp_processor_id() } % KERNEL_STREAMS) as u8;
    let s = seq.to_be_bytes();
    h.version = VERSION_AUTH;
    h.flags |= FLAG_AUTH;
    h.reserved = [secret.tx_id, stream, s[0], s[1], s[2], s[3]];
    let lookup_head = if h.kind == KIND_LOOKUP {
        match ptr_at::<[u8; LOOKUP_PAYLOAD_LEN]>(ctx, l4_off + UDP_LEN + HEADER_LEN) {
            Ok(p) => p as *const u8,
            Err(()) => {
                // Not a LOOKUP the verifier of the next hop would accept.
                h.tag = [0; 8];
                return 0;
            }
        }
    } else {
        core::ptr::null()
    };
    h.tag = tag_at(ov as *const u8, lookup_head, &secret.tx).to_be_bytes();
    1
}
