//! STATS counter indices. Names are docs/WIRE.md's; the order follows its steps.

pub const PASS_OTHER: u32 = 0;
pub const DROP_MALFORMED: u32 = 1;
pub const DROP_BLOCKED: u32 = 2;
pub const DROP_RATE: u32 = 3;
pub const DROP_AUTH: u32 = 4;
pub const PONG: u32 = 5;
pub const LOCAL: u32 = 6;
pub const FWD: u32 = 7;
pub const FWD_SLOW: u32 = 8;
pub const DROP_TTL: u32 = 9;
pub const DROP_NO_ROUTE: u32 = 10;

/// Number of counters; the STATS map has exactly this many entries.
pub const COUNTER_COUNT: u32 = 11;

/// docs/WIRE.md names, indexed by counter index.
pub const COUNTER_NAMES: [&str; COUNTER_COUNT as usize] = [
    "pass_other",
    "drop_malformed",
    "drop_blocked",
    "drop_rate",
    "drop_auth",
    "pong",
    "local",
    "fwd",
    "fwd_slow",
    "drop_ttl",
    "drop_no_route",
];

/// Index of a counter by its docs/WIRE.md name.
pub fn counter_index(name: &str) -> Option<u32> {
    let mut i = 0;
    while i < COUNTER_NAMES.len() {
        if eq(COUNTER_NAMES[i].as_bytes(), name.as_bytes()) {
            return Some(i as u32);
        }
        i += 1;
    }
    None
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}
