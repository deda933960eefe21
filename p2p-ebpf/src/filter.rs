//! docs/WIRE.md steps 3 and 4 (block list, rate budget) and the
//! per-source evidence the controller reads: LAST_SEEN (liveness) and
//! SOURCE_STATS (reputation).

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action::XDP_DROP, xdp_md},
    btf_maps::lpm_trie::Key,
    programs::XdpContext,
};
use p2p_common::{
    counters::{DROP_BLOCKED, DROP_RATE},
    maps::{BlockEntry, Config, LAST_SEEN_RESOLUTION_NS, LinkKey, NET_KEY_BITS, RateBucket, SourceStats},
    net::{ETH_LEN, UdpHdr},
    wire::OverlayHeader,
};

use crate::{
    atomic,
    maps::{BLOCKED, BLOCKED_NETS, LAST_SEEN, PEER_ADDRS, PEERS, RATE, RATE_SOURCES, SOURCE_STATS},
    parse::{eq32, mapped_v4},
    ptr::ptr_at,
    stats::Verdict,
};

/// Steps 3 and 4 for a packet `parse` admitted, whose UDP header is at
/// `l4_off` (bit 15 of `l4_v6`: IPv6), at CLOCK_MONOTONIC `now`. A BPF subprogram that re-reads what
/// it needs at fixed offsets: its stack is its own, not added to the
/// caller's (the forward path's subprogram needs most of the 512 bytes).
/// Returns 0 to go on, else a packed [`Verdict`].
#[inline(never)]
pub fn steps_3_and_4(raw: *mut xdp_md, cfg: &Config, bytes: u64, l4_v6: u32, now: u64) -> u32 {
    // The verifier wants `data`/`data_end` loaded from the context here;
    // an opaque copy keeps LLVM from loading them in the caller instead.
    let raw = unsafe { core::ptr::read_volatile(&raw) };
    let ctx = XdpContext::new(raw);
    let v6 = l4_v6 & 0x8000 != 0;
    let l4_off = (l4_v6 & 0x7f) as usize;
    let Some(src_ip) = src_ip(&ctx, v6) else { return 0 };
    let (Ok(udp), Ok(ov)) = (ptr_at::<UdpHdr>(&ctx, l4_off), ptr_at::<OverlayHeader>(&ctx, l4_off + 8)) else {
        return 0;
    };
    let src_port = u16::from_be_bytes(unsafe { (*udp).sport });
    let src_id = unsafe { &(*ov).src_id };
    // Step 3.
    if blocked(cfg, &src_ip, src_id, now) {
        evidence(&src_ip, Evidence::Blocked);
        return Verdict::new(XDP_DROP, DROP_BLOCKED).pack();
    }
    let sender = sender_slot(&src_ip, src_port);
    if let Some(slot) = sender {
        seen(slot, src_id, now);
    }
    // Step 4.
    if over_rate(cfg, sender, &src_ip, bytes, now) {
        evidence(&src_ip, Evidence::Rate);
        return Verdict::new(XDP_DROP, DROP_RATE).pack();
    }
    0
}

/// The packet's source address, IPv4 as IPv4-mapped (as the maps key it).
#[inline(always)]
pub fn src_ip(ctx: &XdpContext, v6: bool) -> Option<[u8; 16]> {
    if v6 {
        ptr_at::<[u8; 16]>(ctx, ETH_LEN + 8).ok().map(|p| unsafe { *p })
    } else {
        ptr_at::<[u8; 4]>(ctx, ETH_LEN + 12).ok().map(|p| mapped_v4(unsafe { &*p }))
    }
}

#[inline(always)]
fn in_force(e: &BlockEntry, now: u64) -> bool {
    e.expires_ns == 0 || now < e.expires_ns
}

/// Step 3: is the source address (or a prefix holding it) or the origin's
/// node ID blocked, and not expired? Expiry is checked here so that a ban
/// never outlives its time, even with the controller gone.
#[inline(always)]
pub fn blocked(cfg: &Config, src_ip: &[u8; 16], src_id: &[u8; 32], now: u64) -> bool {
    if cfg.blocked_nets != 0 {
        let key = Key::new(NET_KEY_BITS, *src_ip);
        if let Some(e) = BLOCKED_NETS.get(&key)
            && in_force(e, now)
        {
            return true;
        }
    }
    // SAFETY: the entry is read at once; a concurrent removal leaves it valid until the program ends.
    if cfg.blocked_nodes != 0
        && let Some(e) = unsafe { BLOCKED.get(src_id) }
        && in_force(e, now)
    {
        return true;
    }
    false
}

/// The peer slot of the sender (the previous hop), from its overlay endpoint.
#[inline(always)]
pub fn sender_slot(src_ip: &[u8; 16], src_port: u16) -> Option<u32> {
    let key = LinkKey { addr: *src_ip, port: src_port, _pad: 0 };
    // SAFETY: copied out at once.
    unsafe { PEER_ADDRS.get(key).copied() }
}

/// Liveness evidence: the sender in `slot` sent a packet it originated
/// itself. Transit traffic it forwards does not count: XDP forwards on its
/// own, so only the peer's own packets prove its controller alive.
#[inline(always)]
pub fn seen(slot: u32, src_id: &[u8; 32], now: u64) {
    let Some(peer) = PEERS.get(slot) else { return };
    if !eq32(&peer.node_id, src_id) {
        return;
    }
    if let Some(t) = LAST_SEEN.get_ptr_mut(slot) {
        // SAFETY: a map value, valid for the program's run; a racing write
        // from another CPU stores a time as recent.
        unsafe {
            if now > *t + LAST_SEEN_RESOLUTION_NS {
                *t = now;
            }
        }
    }
}

/// Step 4: is the packet over its source's rate budget? A peer's budget
/// is RATE[slot]; any other source gets CONFIG's non-peer budget in
/// RATE_SOURCES, keyed by its IP.
#[inline(always)]
pub fn over_rate(cfg: &Config, slot: Option<u32>, src_ip: &[u8; 16], bytes: u64, now: u64) -> bool {
    let bucket = match slot {
        Some(s) => match RATE.get_ptr_mut(s) {
            Some(b) => b,
            None => return false,
        },
        None => {
            let nb = cfg.nonpeer_budget;
            if nb.pkt_cost_ns == 0 && nb.byte_cost_ps == 0 {
                return false;
            }
            match RATE_SOURCES.get_ptr_mut(src_ip) {
                Some(b) => b,
                None => {
                    let fresh = RateBucket { tat_pkt_ns: 0, tat_byte_ns: 0, budget: nb };
                    let _ = RATE_SOURCES.insert(src_ip, fresh, BPF_NOEXIST as u64);
                    match RATE_SOURCES.get_ptr_mut(src_ip) {
                        Some(b) => b,
                        None => return false,
                    }
                }
            }
        }
    };
    !admit(bucket, bytes, now)
}

/// GCRA on a bucket shared by every CPU: each clock is advanced with an
/// atomic add, so concurrent packets each pay their cost; a packet that
/// does not conform takes its cost back.
#[inline(always)]
fn admit(b: *mut RateBucket, bytes: u64, now: u64) -> bool {
    // SAFETY: a map value, valid for the program's run.
    let (budget, tat_pkt, tat_byte) = unsafe { ((*b).budget, &raw mut (*b).tat_pkt_ns, &raw mut (*b).tat_byte_ns) };
    let pkt_cost = budget.pkt_cost_ns;
    if pkt_cost != 0 && !conforms(tat_pkt, pkt_cost, now, budget.burst_ns) {
        return false;
    }
    if budget.byte_cost_ps != 0 && !conforms(tat_byte, budget.byte_cost_ns(bytes), now, budget.burst_ns) {
        if pkt_cost != 0 {
            atomic::add(tat_pkt, pkt_cost.wrapping_neg());
        }
        return false;
    }
    true
}

/// One GCRA clock ("theoretical arrival time"): an idle source's clock is
/// first brought up to now, then advanced by `cost`; the packet conforms if
/// the clock is then at most `burst` ahead of now. Only the add is atomic
/// (see `atomic`): when two CPUs handle packets of one source at the same
/// instant, the catch-up store can swallow the other's add (one packet
/// admitted free) or the re-read can see the other's add (one conforming
/// packet dropped) — at most one packet per such race, which the namespace
/// test's ±5% bound over 1 s windows covers.
#[inline(always)]
fn conforms(tat: *mut u64, cost: u64, now: u64, burst: u64) -> bool {
    if atomic::load(tat) < now {
        atomic::store(tat, now);
    }
    atomic::add(tat, cost);
    if atomic::load(tat) > now + burst {
        atomic::add(tat, cost.wrapping_neg());
        return false;
    }
    true
}

/// What a dropped packet is evidence of.
#[derive(Clone, Copy)]
pub enum Evidence {
    Malformed,
    Rate,
    Auth,
    Blocked,
}

/// Counts a dropped packet against its source IP (SOURCE_STATS).
#[inline(always)]
pub fn evidence(src_ip: &[u8; 16], what: Evidence) {
    let s = match SOURCE_STATS.get_ptr_mut(src_ip) {
        Some(s) => s,
        None => {
            let _ = SOURCE_STATS.insert(src_ip, SourceStats::default(), BPF_NOEXIST as u64);
            match SOURCE_STATS.get_ptr_mut(src_ip) {
                Some(s) => s,
                None => return,
            }
        }
    };
    // SAFETY: a map value, valid for the program's run, shared by CPUs.
    let counter = unsafe {
        match what {
            Evidence::Malformed => &raw mut (*s).malformed,
            Evidence::Rate => &raw mut (*s).rate,
            Evidence::Auth => &raw mut (*s).auth,
            Evidence::Blocked => &raw mut (*s).blocked,
        }
    };
    atomic::add(counter, 1);
}
