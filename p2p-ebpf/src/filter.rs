//! WIRE.md steps 3-5: block list, rate budget, authentication.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use p2p_common::maps::{BLOCK_KIND_IP, BLOCK_KIND_NODE, BlockKey};

use crate::{
    maps::BLOCKED,
    parse::{Ipv4Hdr, Ipv6Hdr, Overlay, mapped_v4},
};

/// Step 3: is the source IP or the origin's node ID blocked (and not expired)?
#[inline(always)]
pub fn blocked(p: &Overlay) -> bool {
    let mut key = BlockKey { kind: BLOCK_KIND_IP, _pad: [0; 3], id: [0; 32] };
    let src = if p.v6 {
        unsafe { (*(p.l3 as *const Ipv6Hdr)).src }
    } else {
        mapped_v4(unsafe { &(*(p.l3 as *const Ipv4Hdr)).src })
    };
    key.id[..16].copy_from_slice(&src);
    if hit(&key) {
        return true;
    }
    key.kind = BLOCK_KIND_NODE;
    key.id = unsafe { (*p.ov).src_id };
    hit(&key)
}

#[inline(always)]
fn hit(key: &BlockKey) -> bool {
    match BLOCKED.get_ptr(key) {
        Some(e) => {
            let expires = unsafe { (*e).expires_ns };
            expires == 0 || unsafe { bpf_ktime_get_ns() } < expires
        }
        None => false,
    }
}

/// Step 4: rate budget (RATE). Placeholder: every packet is within budget.
#[inline(always)]
pub fn over_rate(_p: &Overlay) -> bool {
    false
}

/// Step 5: hop-by-hop authentication (LINK_KEYS). Placeholder: nothing is
/// required yet, so nothing fails.
#[inline(always)]
pub fn auth_fails(_p: &Overlay, _policy: u16) -> bool {
    false
}
