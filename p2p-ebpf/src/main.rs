//! p2p-nos kernel datapath: XDP programs that run docs/WIRE.md's steps on overlay
//! packets. Entry points are thin; parsing, filtering, routing and rewriting
//! live in their own modules, and every map is declared in `maps.rs`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code))]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod atomic;
mod auth;
mod filter;
mod maps;
mod parse;
mod ptr;
mod rewrite;
mod route;
mod stats;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::{bpf_ktime_get_ns, bpf_xdp_get_buff_len},
    macros::xdp,
    programs::XdpContext,
};
use aya_log_ebpf::info;
use p2p_common::{
    counters::{DROP_MALFORMED, DROP_NO_ROUTE, LOCAL, PASS_OTHER},
    maps::{Config, HEARTBEAT_FRESH_NS, POLICY_AUTH_REQUIRED, POLICY_AUTH_VERIFY, POLICY_LOG},
    wire::{HEADER_LEN, KIND_DATA, KIND_LOOKUP, KIND_PING},
};

use crate::{
    filter::Evidence,
    parse::{Parsed, eq32},
    rewrite::FwdInfo,
    route::NextHop,
    stats::Verdict,
};

/// The datapath (docs/WIRE.md "What a node does with a packet").
#[xdp]
pub fn p2p_xdp(ctx: XdpContext) -> u32 {
    match try_p2p_xdp(&ctx) {
        Ok(action) => action,
        // Not configured yet: leave all traffic to the stack.
        Err(()) => XDP_PASS,
    }
}

/// Pass-through: a veth peer needs an XDP program to accept redirected frames.
#[xdp]
pub fn p2p_xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[inline(always)]
fn try_p2p_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let cfg = maps::CONFIG.get(0).ok_or(())?;
    if cfg.overlay_port == 0 {
        // The controller has not written CONFIG yet.
        return Err(());
    }
    let bytes = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    let v = process(ctx, cfg, bytes);
    stats::count(v.counter, bytes);
    if cfg.policy & POLICY_LOG != 0 {
        info!(ctx, "p2p_xdp: ifindex {} counter {} action {}", ctx.ingress_ifindex() as u32, v.counter, v.action);
    }
    Ok(v.action)
}

#[inline(always)]
fn process(ctx: &XdpContext, cfg: &Config, bytes: u64) -> Verdict {
    let local = Verdict::new(XDP_PASS, LOCAL);
    let no_route = Verdict::new(XDP_DROP, DROP_NO_ROUTE);
    // Steps 1 and 2.
    let p = match parse::parse(ctx, cfg.overlay_port) {
        Parsed::Other => return Verdict::new(XDP_PASS, PASS_OTHER),
        Parsed::Malformed(src) => {
            filter::evidence(&src, Evidence::Malformed);
            return Verdict::new(XDP_DROP, DROP_MALFORMED);
        }
        Parsed::Overlay(p) => p,
    };
    // One clock read per packet, for every step that needs the time.
    let now = unsafe { bpf_ktime_get_ns() };
    // Steps 3 and 4.
    let l4_v6 = p.l4_off as u32 | if p.v6 { 0x8000 } else { 0 };
    let v = filter::steps_3_and_4(ctx.ctx, cfg, bytes, l4_v6, now);
    if v != 0 {
        return Verdict::unpack(v);
    }
    // Step 5.
    if cfg.policy & (POLICY_AUTH_REQUIRED | POLICY_AUTH_VERIFY) != 0 {
        let v = auth::verify(ctx.ctx, cfg.policy as u32, l4_v6);
        if v != 0 {
            return Verdict::unpack(v);
        }
    }
    let (kind, key) = unsafe { ((*p.ov).kind, (*p.ov).dst_key) };
    let to_self = eq32(&key, &cfg.node_id);
    match kind {
        // Step 6, while the controller's heartbeat is fresh (a PONG must
        // prove the controller alive); else the controller answers, or
        // nobody does.
        KIND_PING
            if to_self
                && now.wrapping_sub(cfg.heartbeat_ns) <= HEARTBEAT_FRESH_NS
                // Link keys exist only under an auth policy: with none, skip
                // the two map lookups on every PING.
                && (cfg.policy & (POLICY_AUTH_REQUIRED | POLICY_AUTH_VERIFY) == 0
                    || auth::reply_needs_controller(ctx.ctx, l4_v6) == 0) =>
        {
            return rewrite::pong(ctx, &p, cfg);
        }
        KIND_PING if to_self => return local,
        KIND_LOOKUP | KIND_DATA | KIND_PING => {}
        // Step 8: LOOKUP_REPLY and PONG (parse admitted known kinds only).
        _ => return if to_self { local } else { no_route },
    }
    // Step 7. The verifier re-walks the trie loop for every distinct state
    // that reaches it, so nothing path-specific may be live across it: the
    // kind, the ttl and "is it for me" are read again afterwards (volatile,
    // so that LLVM does not keep the values from before).
    let (ov, v6, ihl5) = (p.ov, p.v6, p.ihl5);
    let hop = route::next_hop(cfg, &key);
    let (kind, ttl, payload_len) = unsafe {
        (
            core::ptr::read_volatile(&(*ov).kind),
            core::ptr::read_volatile(&(*ov).ttl),
            u16::from_be_bytes(core::ptr::read_volatile(&(*ov).payload_len)),
        )
    };
    match hop {
        NextHop::SelfNode if kind == KIND_LOOKUP || is_self(cfg, &key) => local,
        NextHop::SelfNode | NextHop::NoRoute => no_route,
        NextHop::Peer(slot, peer) => {
            let udp_len = payload_len.wrapping_add((HEADER_LEN + parse::UDP_LEN) as u16);
            rewrite::forward(ctx, FwdInfo { ttl, v6, ihl5, udp_len }, cfg, slot, peer, now)
        }
    }
}

/// `dst_key == node_id`, reading this node's ID afresh (see `process`),
/// four bytes at a time straight from the map value (`Config` is 4-aligned).
#[inline(always)]
fn is_self(cfg: &Config, key: &[u8; 32]) -> bool {
    let id = cfg.node_id.as_ptr() as *const u32;
    let mut i = 0;
    while i < 8 {
        let a = unsafe { core::ptr::read_volatile(id.add(i)) };
        let b = u32::from_ne_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]]);
        if a != b {
            return false;
        }
        i += 1;
    }
    true
}

/// bpf_fib_lookup and the redirect helpers are GPL-only: the kernel must see
/// a GPL-compatible license string.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
