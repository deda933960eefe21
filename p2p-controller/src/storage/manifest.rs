//! The manifest of an object (version 1, JSON; README "Storage"): what
//! `get` needs to rebuild it and what repair keeps current. Stored on the
//! nodes closest to the object's CID (`manifest_holders`), each keeping
//! the highest `revision`; only `owner` may remove the object. Removal
//! leaves a tombstone: the manifest with `removed: true` and a higher
//! revision, kept by the same nodes for a day so that a holder that was
//! away when the object was removed drops its copies instead of
//! repairing them back.

use serde::{Deserialize, Serialize};

use super::erasure::Redundancy;
use crate::blobs::Cid;

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    /// The object's CID (BLAKE3 of all its bytes).
    pub cid: Cid,
    pub size: u64,
    /// Bytes per segment (the last may be shorter).
    pub segment_size: u64,
    pub redundancy: Redundancy,
    /// Peer ID of the node that put it.
    pub owner: String,
    /// Raised by every change (repair); holders keep the highest.
    pub revision: u64,
    /// Peer IDs of the nodes that hold this manifest.
    pub manifest_holders: Vec<String>,
    pub segments: Vec<Segment>,
    /// A tombstone: the owner removed the object (absent: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub index: u64,
    pub size: u64,
    /// BLAKE3 of the segment's bytes: its key (placement) and its check.
    pub hash: Cid,
    /// `redundancy.total()` shards, data shards first.
    pub shards: Vec<Shard>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub cid: Cid,
    /// Peer IDs of the nodes that hold it.
    pub holders: Vec<String>,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest serialises")
    }

    /// Parses and checks that `bytes` are a consistent manifest of `object`.
    pub fn decode(object: &Cid, bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("malformed manifest of {object}: {e}"))?;
        let bad = |why: String| Err(format!("manifest of {object}: {why}"));
        if m.version != VERSION {
            return bad(format!("version {} (this node reads {VERSION})", m.version));
        }
        if m.cid != *object {
            return bad(format!("it describes {}", m.cid));
        }
        if m.segment_size == 0 || m.size.div_ceil(m.segment_size) != m.segments.len() as u64 {
            return bad(format!("{} segments of {} bytes for {} bytes", m.segments.len(), m.segment_size, m.size));
        }
        let mut total = 0;
        for (i, s) in m.segments.iter().enumerate() {
            if s.index != i as u64 || s.shards.len() != m.redundancy.total() || s.size > m.segment_size {
                return bad(format!("segment {i} is inconsistent"));
            }
            total += s.size;
        }
        if total != m.size {
            return bad(format!("segments add up to {total} bytes, not {}", m.size));
        }
        Ok(m)
    }

    /// Whether this copy replaces `other`: a higher revision, or a
    /// tombstone of the same revision (a stale holder's repair must not
    /// bring a removed object back).
    pub fn supersedes(&self, other: &Manifest) -> bool {
        (self.revision, self.removed) > (other.revision, other.removed)
    }

    /// Every shard CID it names, once.
    pub fn shard_cids(&self) -> Vec<Cid> {
        let mut v: Vec<Cid> = self.segments.iter().flat_map(|s| s.shards.iter().map(|x| x.cid)).collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let seg = |i: u64, size: u64| Segment {
            index: i,
            size,
            hash: Cid::of(&i.to_be_bytes()),
            shards: (0..3).map(|j| Shard { cid: Cid::of(&[i as u8, j]), holders: vec![format!("p{j}")] }).collect(),
        };
        Manifest {
            version: VERSION,
            cid: Cid::of(b"object"),
            size: 25,
            segment_size: 10,
            redundancy: Redundancy::Rs { k: 2, m: 1 },
            owner: "p0".into(),
            revision: 1,
            manifest_holders: vec!["p0".into()],
            segments: vec![seg(0, 10), seg(1, 10), seg(2, 5)],
            removed: false,
        }
    }

    #[test]
    fn codec_round_trips_and_checks() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&m.cid, &bytes).unwrap(), m);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""redundancy":{"scheme":"rs","k":2,"m":1}"#), "{text}");
        assert!(Manifest::decode(&Cid::of(b"other"), &bytes).unwrap_err().contains("describes"));
        let mut short = m.clone();
        short.segments.pop();
        assert!(Manifest::decode(&m.cid, &short.encode()).is_err());
        let mut sizes = m.clone();
        sizes.segments[2].size = 4;
        assert!(Manifest::decode(&m.cid, &sizes.encode()).unwrap_err().contains("add up"));
        let mut shards = m.clone();
        shards.segments[1].shards.pop();
        assert!(Manifest::decode(&m.cid, &shards.encode()).is_err());
        let mut v2 = m.clone();
        v2.version = 2;
        assert!(Manifest::decode(&m.cid, &v2.encode()).unwrap_err().contains("version 2"));
        assert!(Manifest::decode(&m.cid, b"{").is_err());
        assert_eq!(m.shard_cids().len(), 9);
        assert!(!text.contains("removed"), "{text}");
    }

    #[test]
    fn tombstones_win_ties_and_lose_to_later_revisions() {
        let m = sample();
        let mut dead = m.clone();
        dead.removed = true;
        assert!(String::from_utf8(dead.encode()).unwrap().contains(r#""removed":true"#));
        assert_eq!(Manifest::decode(&m.cid, &dead.encode()).unwrap(), dead);
        assert!(dead.supersedes(&m) && !m.supersedes(&dead) && !m.supersedes(&m));
        let mut again = m.clone();
        again.revision = 2;
        assert!(again.supersedes(&dead) && !dead.supersedes(&again));
    }
}
