//! What users type for rates, durations and block targets, parsed with
//! errors that say what is accepted.

use std::net::IpAddr;
use std::time::Duration;

use p2p_common::codec::addr_to_mapped;
use p2p_common::id::NodeId;
use p2p_common::maps::{NET_KEY_BITS, RateBudget, V4_MAPPED_PREFIX};

use crate::dataplane::BlockTarget;

/// A rate budget as typed: `unlimited`, or a comma-separated list of
/// `N pps` and `N B/s` (with SI prefixes k, M, G: `20MB/s`), e.g.
/// `20000pps,20MB/s`. Missing parts are unlimited.
pub fn parse_budget(s: &str, burst: Duration) -> Result<RateBudget, String> {
    let err = || {
        format!(
            "{s:?}: a rate is `unlimited` or PACKETS and/or BYTES, e.g. `20000pps,20MB/s`, `5kpps`, `100MB/s` (SI prefixes k, M, G)"
        )
    };
    let t = s.trim().to_ascii_lowercase();
    if t == "unlimited" {
        return Ok(RateBudget::UNLIMITED);
    }
    let (mut pps, mut bps) = (None, None);
    for part in t.split(',').map(str::trim) {
        let (num, unit_is_pps) = if let Some(n) = part.strip_suffix("pps") {
            (n, true)
        } else if let Some(n) = part.strip_suffix("b/s") {
            (n, false)
        } else {
            return Err(err());
        };
        let v = si_number(num.trim()).ok_or_else(err)?;
        if v == 0 {
            return Err(format!("{s:?}: a rate of 0 would drop everything; say `unlimited` for no limit"));
        }
        let slot = if unit_is_pps { &mut pps } else { &mut bps };
        if slot.replace(v).is_some() {
            return Err(err());
        }
    }
    Ok(RateBudget::new(pps.unwrap_or(0), bps.unwrap_or(0), burst.as_nanos() as u64))
}

/// `1500`, `20k`, `1.5M`, `2g` → the number.
fn si_number(s: &str) -> Option<u64> {
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1e3),
        'm' => (&s[..s.len() - 1], 1e6),
        'g' => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0 && v * mult < 1e18).then(|| (v * mult).round() as u64)
}

/// A budget as a user reads it.
pub fn show_budget(b: &RateBudget) -> String {
    if b.pkt_cost_ns == 0 && b.byte_cost_ps == 0 {
        return "unlimited".into();
    }
    let mut parts = Vec::new();
    if let Some(pps) = 1_000_000_000u64.checked_div(b.pkt_cost_ns) {
        parts.push(format!("{pps}pps"));
    }
    if let Some(bps) = 1_000_000_000_000u64.checked_div(b.byte_cost_ps) {
        parts.push(format!("{bps}B/s"));
    }
    parts.join(",")
}

/// `512MiB`, `1GiB`, `2G` (binary multiples), `1000000` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: not a size; e.g. 512MiB, 1GiB, 100G"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use B, KiB, MiB, GiB or TiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?}: too large"))
}

/// `90s`, `5m`, `1h 30m`, `2d` (humantime), `forever`/`never` → None.
pub fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    match s.trim() {
        "forever" | "never" => Ok(None),
        t => match humantime::parse_duration(t) {
            Ok(d) if d.is_zero() => Err(format!("{s:?}: a duration must be longer than 0")),
            Ok(d) => Ok(Some(d)),
            Err(e) => Err(format!("{s:?}: not a duration ({e}); e.g. 90s, 5m, 1h, 2d, or forever")),
        },
    }
}

/// What `block` and `unblock` take: a node ID (64 hex digits), an IP
/// address, or a prefix `ADDR/LEN` (the address must have no bits set
/// beyond LEN).
pub fn parse_block_target(s: &str) -> Result<BlockTarget, String> {
    let s = s.trim();
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        let id: NodeId = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
        return Ok(BlockTarget::Node(id.0));
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        format!("{s:?}: not a node ID (64 hex digits), an IP address or a prefix like 10.1.2.0/24 or fd00::/64")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u32>().ok().filter(|l| *l <= max).ok_or_else(|| {
            format!("{s:?}: the prefix length must be 0..={max} for an IPv{} address", if max == 32 { 4 } else { 6 })
        })?,
        None => max,
    };
    let prefix_len = if ip.is_ipv4() { V4_MAPPED_PREFIX + len } else { len };
    let mapped = addr_to_mapped(ip);
    let masked = mask(&mapped, prefix_len);
    if masked != mapped {
        return Err(format!(
            "{s:?}: has bits set beyond /{len}; did you mean {}/{len}?",
            p2p_common::codec::mapped_to_addr(masked)
        ));
    }
    Ok(BlockTarget::Net { addr: mapped, prefix_len })
}

/// `addr` with every bit beyond `prefix_len` cleared.
pub fn mask(addr: &[u8; 16], prefix_len: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in addr.iter().enumerate() {
        let bits = prefix_len.saturating_sub(i as u32 * 8).min(8);
        out[i] = if bits == 0 { 0 } else { b & (0xffu8 << (8 - bits)) };
    }
    out
}

/// A block target as a user writes it.
pub fn show_target(t: &BlockTarget) -> String {
    match t {
        BlockTarget::Node(id) => hex::encode(id),
        BlockTarget::Net { addr, prefix_len } => {
            let ip = p2p_common::codec::mapped_to_addr(*addr);
            let full = if ip.is_ipv4() { V4_MAPPED_PREFIX + 32 } else { NET_KEY_BITS };
            let len = if ip.is_ipv4() { prefix_len.saturating_sub(V4_MAPPED_PREFIX) } else { *prefix_len };
            if *prefix_len == full { ip.to_string() } else { format!("{ip}/{len}") }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets() {
        let burst = Duration::from_millis(50);
        let b = parse_budget("20000pps,20MB/s", burst).unwrap();
        assert_eq!((b.pkt_cost_ns, b.byte_cost_ps, b.burst_ns), (50_000, 50_000, 50_000_000));
        assert_eq!(show_budget(&b), "20000pps,20000000B/s");
        assert_eq!(parse_budget("5kpps", burst).unwrap().byte_cost_ps, 0);
        assert_eq!(parse_budget("unlimited", burst).unwrap(), RateBudget::UNLIMITED);
        for bad in ["", "20000", "5 apples", "0pps", "1pps,2pps", "-5pps"] {
            assert!(parse_budget(bad, burst).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 30m").unwrap(), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("forever").unwrap(), None);
        for bad in ["0s", "soon", "5", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn block_targets() {
        let id = "ab".repeat(32);
        assert_eq!(parse_block_target(&id).unwrap(), BlockTarget::Node([0xab; 32]));
        let t = parse_block_target("10.1.2.0/24").unwrap();
        assert_eq!(t, BlockTarget::Net { addr: addr_to_mapped("10.1.2.0".parse().unwrap()), prefix_len: 120 });
        assert_eq!(show_target(&t), "10.1.2.0/24");
        assert_eq!(show_target(&parse_block_target("10.1.2.3").unwrap()), "10.1.2.3");
        assert_eq!(show_target(&parse_block_target("fd00::/64").unwrap()), "fd00::/64");
        let e = parse_block_target("10.1.2.3/24").unwrap_err();
        assert!(e.contains("10.1.2.0/24"), "{e}");
        for bad in ["10.1.2.0/33", "fd00::/129", "nope", "abcd", "10.1.2.0/x"] {
            assert!(parse_block_target(bad).is_err(), "{bad}");
        }
    }
}
