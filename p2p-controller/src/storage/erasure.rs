//! Redundancy of a segment: Reed–Solomon (reed-solomon-simd, GF(2^16),
//! any k of k + m shards rebuild the segment) or plain copies.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case")]
pub enum Redundancy {
    /// k data + m parity shards.
    Rs { k: usize, m: usize },
    /// n identical copies.
    Replicate { n: usize },
}

pub const DEFAULT: Redundancy = Redundancy::Rs { k: 4, m: 2 };
/// Most shards a segment may have (one per holder).
pub const MAX_SHARDS: usize = 64;

impl Redundancy {
    /// Shards per segment.
    pub fn total(&self) -> usize {
        match *self {
            Redundancy::Rs { k, m } => k + m,
            Redundancy::Replicate { n } => n,
        }
    }
    /// Shards needed to read a segment.
    pub fn needed(&self) -> usize {
        match *self {
            Redundancy::Rs { k, .. } => k,
            Redundancy::Replicate { .. } => 1,
        }
    }
}

impl fmt::Display for Redundancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Redundancy::Rs { k, m } => write!(f, "rs:{k}+{m}"),
            Redundancy::Replicate { n } => write!(f, "replicate:{n}"),
        }
    }
}

impl FromStr for Redundancy {
    type Err = String;
    fn from_str(s: &str) -> Result<Redundancy, String> {
        let bad = || format!("--redundancy {s:?}: expected rs:K+M (e.g. rs:4+2) or replicate:N (e.g. replicate:3)");
        let r = if let Some(km) = s.strip_prefix("rs:") {
            let (k, m) = km.split_once('+').ok_or_else(bad)?;
            Redundancy::Rs { k: k.parse().map_err(|_| bad())?, m: m.parse().map_err(|_| bad())? }
        } else if let Some(n) = s.strip_prefix("replicate:") {
            Redundancy::Replicate { n: n.parse().map_err(|_| bad())? }
        } else {
            return Err(bad());
        };
        match r {
            Redundancy::Rs { k, m } if k == 0 || m == 0 => Err(format!("--redundancy {s}: K and M must be at least 1")),
            Redundancy::Replicate { n: 0 } => Err(format!("--redundancy {s}: N must be at least 1")),
            _ if r.total() > MAX_SHARDS => Err(format!("--redundancy {s}: at most {MAX_SHARDS} shards a segment")),
            _ => Ok(r),
        }
    }
}

/// Bytes of each shard of a `len`-byte segment: the segment split into k
/// parts, rounded up to an even length (reed-solomon-simd's unit).
pub fn shard_len(r: Redundancy, len: usize) -> usize {
    match r {
        Redundancy::Rs { k, .. } => {
            let per = len.div_ceil(k).max(1);
            per + per % 2
        }
        Redundancy::Replicate { .. } => len,
    }
}

/// The segment's `total()` shards (data shards first, zero-padded).
pub fn encode(r: Redundancy, segment: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    match r {
        Redundancy::Replicate { n } => Ok(vec![segment.to_vec(); n]),
        Redundancy::Rs { k, m } => {
            let len = shard_len(r, segment.len());
            // Data shards are borrowed from the segment; only the last,
            // padded, and any empty ones are new (zeros).
            let pad: Vec<Vec<u8>> = (0..k)
                .filter(|i| (i + 1) * len > segment.len())
                .map(|i| {
                    let mut t = segment.get(i * len..).unwrap_or(&[]).to_vec();
                    t.resize(len, 0);
                    t
                })
                .collect();
            let full = k - pad.len();
            let parts: Vec<&[u8]> =
                (0..k).map(|i| if i < full { &segment[i * len..(i + 1) * len] } else { &pad[i - full][..] }).collect();
            let parity = reed_solomon_simd::encode(k, m, &parts).map_err(|e| format!("erasure encode: {e}"))?;
            let mut out: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
            out.extend(parity);
            Ok(out)
        }
    }
}

/// The `len`-byte segment from any `needed()` of its shards (`shards[i]`:
/// shard i if at hand).
pub fn decode(r: Redundancy, len: usize, shards: &[Option<Vec<u8>>]) -> Result<Vec<u8>, String> {
    let have = shards.iter().filter(|s| s.is_some()).count();
    if have < r.needed() {
        return Err(format!("{have} of {} shards at hand, {} needed", r.total(), r.needed()));
    }
    let mut out = match r {
        Redundancy::Replicate { .. } => shards.iter().flatten().next().cloned().unwrap_or_default(),
        Redundancy::Rs { k, m } => {
            let mut restored = std::collections::BTreeMap::new();
            if shards[..k].iter().any(|s| s.is_none()) {
                let originals = shards[..k].iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (i, s)));
                let recovery = shards[k..].iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (i, s)));
                restored =
                    reed_solomon_simd::decode(k, m, originals, recovery).map_err(|e| format!("erasure decode: {e}"))?;
            }
            let mut out = Vec::with_capacity(len + shard_len(r, len));
            for (i, s) in shards[..k].iter().enumerate() {
                if out.len() >= len {
                    break;
                }
                match s.as_ref().or_else(|| restored.get(&i)) {
                    Some(s) => out.extend_from_slice(s),
                    None => return Err(format!("erasure decode: data shard {i} was not rebuilt")),
                }
            }
            out
        }
    };
    if out.len() < len {
        return Err(format!("shards hold {} bytes, the segment {len}", out.len()));
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!("rs:4+2".parse::<Redundancy>().unwrap(), Redundancy::Rs { k: 4, m: 2 });
        assert_eq!("replicate:3".parse::<Redundancy>().unwrap(), Redundancy::Replicate { n: 3 });
        assert_eq!(DEFAULT.to_string(), "rs:4+2");
        for bad in ["rs:4", "rs:0+2", "rs:4+0", "replicate:0", "raid5", "rs:40+40"] {
            assert!(bad.parse::<Redundancy>().is_err(), "{bad}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any `needed()` of the shards give the segment back, whichever are missing.
        #[test]
        fn any_k_of_k_plus_m_rebuild(
            k in 1usize..8, m in 1usize..5, len in 0usize..3000, seed: u64, drop_seed: u64,
        ) {
            let r = Redundancy::Rs { k, m };
            let seg: Vec<u8> = (0..len).map(|i| (seed.wrapping_mul(i as u64 + 1) >> 7) as u8).collect();
            let shards = encode(r, &seg).unwrap();
            prop_assert_eq!(shards.len(), k + m);
            // Drop m shards chosen by drop_seed.
            let mut idx: Vec<usize> = (0..k + m).collect();
            let mut s = drop_seed;
            for i in (1..idx.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                idx.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut have: Vec<Option<Vec<u8>>> = shards.into_iter().map(Some).collect();
            for &i in &idx[..m] {
                have[i] = None;
            }
            prop_assert_eq!(decode(r, len, &have).unwrap(), seg.clone());
            // One more missing: refused, never wrong bytes.
            have[idx[m]] = None;
            prop_assert!(decode(r, len, &have).is_err());
        }
    }

    #[test]
    fn copies_need_one() {
        let r = Redundancy::Replicate { n: 3 };
        let s = encode(r, b"abc").unwrap();
        assert_eq!(decode(r, 3, &[None, None, Some(s[2].clone())]).unwrap(), b"abc");
        assert!(decode(r, 3, &[None, None, None]).is_err());
    }
}
