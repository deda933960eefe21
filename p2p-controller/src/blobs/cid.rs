//! CIDv1 (multiformats) over BLAKE3-256: `b` (base32, lower case, no
//! padding) + varint version 1 + varint codec (`raw`, 0x55) + multihash
//! (BLAKE3 0x1e, length 32, digest). Objects, shards and manifests are all
//! named by the BLAKE3 hash of their bytes this way.

use std::fmt;
use std::str::FromStr;

use p2p_common::id::NodeId;

/// multicodec `raw`.
const CODEC_RAW: u8 = 0x55;
/// multihash `blake3`.
const MH_BLAKE3: u8 = 0x1e;
const PREFIX: [u8; 4] = [0x01, CODEC_RAW, MH_BLAKE3, 32];

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid(pub [u8; 32]);

impl Cid {
    pub fn of(bytes: &[u8]) -> Cid {
        Cid(*blake3::hash(bytes).as_bytes())
    }

    /// The key-space position of what this names (Kademlia distance).
    pub fn key(&self) -> NodeId {
        NodeId(self.0)
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = Vec::with_capacity(36);
        b.extend_from_slice(&PREFIX);
        b.extend_from_slice(&self.0);
        write!(f, "b{}", data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase())
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for Cid {
    type Err = String;
    fn from_str(s: &str) -> Result<Cid, String> {
        let bad =
            |why: &str| format!("{s:?} is not a p2p-nos CID ({why}; expected `b` + base32 of CIDv1 raw BLAKE3-256)");
        let body = s.strip_prefix('b').ok_or_else(|| bad("no `b` multibase prefix"))?;
        let bytes =
            data_encoding::BASE32_NOPAD.decode(body.to_ascii_uppercase().as_bytes()).map_err(|_| bad("not base32"))?;
        if bytes.len() != 36 || bytes[..4] != PREFIX {
            return Err(bad("not CIDv1 raw with a 32-byte BLAKE3 multihash"));
        }
        Ok(Cid(bytes[4..].try_into().expect("32 bytes")))
    }
}

impl serde::Serialize for Cid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Cid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cid, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_hash() {
        let c = Cid::of(b"hello");
        let s = c.to_string();
        assert!(s.starts_with("bafkr4i"), "{s}"); // CIDv1 raw blake3, as other tools print it
        assert_eq!(s.parse::<Cid>().unwrap(), c);
        assert_eq!(c.0, *blake3::hash(b"hello").as_bytes());
        assert!("xafkr4i".parse::<Cid>().is_err());
        assert!(s[..20].parse::<Cid>().is_err());
        assert!(format!("b{}", "a".repeat(58)).parse::<Cid>().is_err());
    }
}
