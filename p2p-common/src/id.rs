//! Node IDs and keys (docs/WIRE.md "Identifiers"), shown as 64 hex digits.

use core::fmt;
use core::str::FromStr;
use sha2::{Digest, Sha256};

/// A point in the 256-bit key space: a node ID or a hashed record key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// `SHA-256(peer_id_bytes)`: pass `PeerId::to_bytes()`.
    pub fn from_peer_id_bytes(peer_id: &[u8]) -> Self {
        NodeId(Sha256::digest(peer_id).into())
    }
    /// `SHA-256(record_key_bytes)`.
    pub fn from_record_key(key: &[u8]) -> Self {
        NodeId(Sha256::digest(key).into())
    }
    pub fn distance(&self, other: &NodeId) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", &hex::encode(&self.0[..6]))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseNodeIdError(pub String);

impl fmt::Display for ParseNodeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ParseNodeIdError {}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(ParseNodeIdError(format!("a node ID is 64 hex digits, got {} characters", s.len())));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| ParseNodeIdError(format!("a node ID is 64 hex digits: {e}")))?;
        Ok(NodeId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = NodeId::from_record_key(b"hello");
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert!("abc".parse::<NodeId>().is_err());
        assert!("zz".repeat(32).parse::<NodeId>().is_err());
    }

    #[test]
    fn record_key_is_sha256() {
        // SHA-256("abc") from FIPS 180-2.
        assert_eq!(
            NodeId::from_record_key(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
