//! Encode and decode overlay packets (the UDP payload: header + payload),
//! with the validation of docs/WIRE.md step 2.

use crate::id::NodeId;
use crate::wire::*;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a datagram is not a valid overlay packet (all counted as `drop_malformed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    TooShort { len: usize },
    BadMagic,
    BadVersion(u8),
    UnknownKind(u8),
    PayloadLenMismatch { header: u16, actual: usize },
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::TooShort { len } => write!(f, "{len} bytes is shorter than the 96-byte header"),
            Malformed::BadMagic => f.write_str("wrong magic"),
            Malformed::BadVersion(v) => write!(f, "unsupported version {v}"),
            Malformed::UnknownKind(k) => write!(f, "unknown kind {k}"),
            Malformed::PayloadLenMismatch { header, actual } => {
                write!(f, "payload_len {header} but {actual} payload bytes")
            }
        }
    }
}
impl std::error::Error for Malformed {}

/// A decoded overlay packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub kind: u8,
    pub flags: u8,
    pub ttl: u8,
    pub hops: u8,
    pub class: u8,
    pub msg_id: u64,
    pub src_id: NodeId,
    pub dst_key: NodeId,
    pub tag: [u8; 8],
    pub payload: Vec<u8>,
}

impl Packet {
    pub fn new(kind: u8, src_id: NodeId, dst_key: NodeId, msg_id: u64, payload: Vec<u8>) -> Self {
        Packet {
            kind,
            flags: 0,
            ttl: DEFAULT_TTL,
            hops: 0,
            class: CLASS_BEST_EFFORT,
            msg_id,
            src_id,
            dst_key,
            tag: [0; 8],
            payload,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind);
        out.push(self.flags);
        out.push(self.ttl);
        out.push(self.hops);
        out.push(self.class);
        out.extend_from_slice(&self.msg_id.to_be_bytes());
        out.extend_from_slice(&self.src_id.0);
        out.extend_from_slice(&self.dst_key.0);
        out.extend_from_slice(&(self.payload.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0; 6]);
        out.extend_from_slice(&self.tag);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes a whole UDP payload.
    pub fn decode(buf: &[u8]) -> Result<Packet, Malformed> {
        validate(buf)?;
        let mut src = [0u8; 32];
        src.copy_from_slice(&buf[16..48]);
        let mut dst = [0u8; 32];
        dst.copy_from_slice(&buf[48..80]);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&buf[88..96]);
        Ok(Packet {
            kind: buf[3],
            flags: buf[4],
            ttl: buf[5],
            hops: buf[6],
            class: buf[7],
            msg_id: u64::from_be_bytes(buf[8..16].try_into().unwrap()),
            src_id: NodeId(src),
            dst_key: NodeId(dst),
            tag,
            payload: buf[HEADER_LEN..].to_vec(),
        })
    }
}

/// docs/WIRE.md step 2: is `buf` (a whole UDP payload) a well-formed overlay
/// packet? Checks without copying anything.
pub fn validate(buf: &[u8]) -> Result<(), Malformed> {
    if buf.len() < HEADER_LEN {
        return Err(Malformed::TooShort { len: buf.len() });
    }
    if buf[0..2] != MAGIC {
        return Err(Malformed::BadMagic);
    }
    if !version_known(buf[2]) {
        return Err(Malformed::BadVersion(buf[2]));
    }
    if !kind_known(buf[3]) {
        return Err(Malformed::UnknownKind(buf[3]));
    }
    let plen = u16::from_be_bytes([buf[80], buf[81]]);
    if plen as usize != buf.len() - HEADER_LEN {
        return Err(Malformed::PayloadLenMismatch { header: plen, actual: buf.len() - HEADER_LEN });
    }
    Ok(())
}

/// IPv6 or IPv4-mapped form used in payloads and maps.
pub fn addr_to_mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Inverse of [`addr_to_mapped`]: IPv4-mapped addresses come back as IPv4.
pub fn mapped_to_addr(b: [u8; 16]) -> IpAddr {
    if is_v4_mapped(&b) { IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15])) } else { IpAddr::V6(Ipv6Addr::from(b)) }
}

/// LOOKUP payload: reply endpoint, then the record key bytes.
pub fn lookup_payload(reply: SocketAddr, record_key: &[u8]) -> Vec<u8> {
    lookup_payload_padded(reply, record_key, 0)
}

/// LOOKUP payload followed by `pad` zero bytes (`pad_len`), so that an
/// unauthenticated LOOKUP is as large as the reply it asks for.
pub fn lookup_payload_padded(reply: SocketAddr, record_key: &[u8], pad: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(LOOKUP_PAYLOAD_LEN + record_key.len() + pad as usize);
    p.extend_from_slice(&addr_to_mapped(reply.ip()));
    p.extend_from_slice(&reply.port().to_be_bytes());
    p.extend_from_slice(&pad.to_be_bytes());
    p.extend_from_slice(record_key);
    p.resize(p.len() + pad as usize, 0);
    p
}

/// Splits a LOOKUP payload into reply endpoint and record key (without
/// the padding); `None` if it is too short for its head and padding.
pub fn parse_lookup_payload(p: &[u8]) -> Option<(SocketAddr, &[u8])> {
    if p.len() < LOOKUP_PAYLOAD_LEN {
        return None;
    }
    let addr: [u8; 16] = p[..16].try_into().ok()?;
    let port = u16::from_be_bytes([p[16], p[17]]);
    let pad = u16::from_be_bytes([p[18], p[19]]) as usize;
    let key = p[LOOKUP_PAYLOAD_LEN..].get(..p.len().checked_sub(LOOKUP_PAYLOAD_LEN + pad)?)?;
    Some((SocketAddr::new(mapped_to_addr(addr), port), key))
}

/// LOOKUP_REPLY payload.
pub fn lookup_reply_payload(status: u8, owner: SocketAddr, value: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(LOOKUP_REPLY_PAYLOAD_LEN + value.len());
    p.push(status);
    p.extend_from_slice(&[0; 3]);
    p.extend_from_slice(&owner.port().to_be_bytes());
    p.extend_from_slice(&[0; 2]);
    p.extend_from_slice(&addr_to_mapped(owner.ip()));
    p.extend_from_slice(value);
    p
}

/// A LOOKUP_REPLY's payload without the owner's signature trailer (when
/// `flags` has SIGNED: docs/WIRE.md "Signed LOOKUP_REPLY"); `None` if the
/// trailer is malformed. Does not verify the signature.
pub fn unsigned_payload(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    if flags & FLAG_SIGNED == 0 {
        return Some(payload);
    }
    let n = payload.len();
    let (k, s) = (*payload.get(n.checked_sub(2)?)? as usize, *payload.get(n - 1)? as usize);
    payload.get(..n.checked_sub(2 + k + s)?)
}

/// Splits a LOOKUP_REPLY payload into status, owner endpoint and value.
pub fn parse_lookup_reply_payload(p: &[u8]) -> Option<(u8, SocketAddr, &[u8])> {
    if p.len() < LOOKUP_REPLY_PAYLOAD_LEN {
        return None;
    }
    let port = u16::from_be_bytes([p[4], p[5]]);
    let addr: [u8; 16] = p[8..24].try_into().ok()?;
    Some((p[0], SocketAddr::new(mapped_to_addr(addr), port), &p[LOOKUP_REPLY_PAYLOAD_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Packet {
        let mut p = Packet::new(
            KIND_DATA,
            NodeId::from_record_key(b"a"),
            NodeId::from_record_key(b"b"),
            0x0102_0304_0506_0708,
            b"hello".to_vec(),
        );
        p.ttl = 7;
        p.hops = 3;
        p.class = CLASS_BULK;
        p
    }

    #[test]
    fn header_layout_is_wire_md() {
        let b = sample().encode();
        assert_eq!(b.len(), HEADER_LEN + 5);
        assert_eq!(&b[0..2], b"PN");
        assert_eq!(b[offset::VERSION], 1);
        assert_eq!(b[offset::KIND], KIND_DATA);
        assert_eq!(b[offset::TTL], 7);
        assert_eq!(b[offset::HOPS], 3);
        assert_eq!(b[offset::CLASS], 2);
        assert_eq!(&b[offset::MSG_ID..offset::MSG_ID + 8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[offset::PAYLOAD_LEN..offset::PAYLOAD_LEN + 2], &[0, 5]);
        assert_eq!(&b[offset::RESERVED..offset::TAG], &[0; 6]);
        assert_eq!(&b[96..], b"hello");
    }

    #[test]
    fn rejects_every_malformed_case() {
        let good = sample().encode();
        assert_eq!(Packet::decode(&good[..95]), Err(Malformed::TooShort { len: 95 }));
        assert_eq!(Packet::decode(&[]), Err(Malformed::TooShort { len: 0 }));
        let mut b = good.clone();
        b[1] = b'X';
        assert_eq!(Packet::decode(&b), Err(Malformed::BadMagic));
        let mut b = good.clone();
        b[2] = 3;
        assert_eq!(Packet::decode(&b), Err(Malformed::BadVersion(3)));
        b[2] = 2;
        assert!(Packet::decode(&b).is_ok(), "version 2 (tagged) is read too");
        for k in [0u8, 6, 255] {
            let mut b = good.clone();
            b[3] = k;
            assert_eq!(Packet::decode(&b), Err(Malformed::UnknownKind(k)));
        }
        let mut b = good.clone();
        b[81] = 6;
        assert_eq!(Packet::decode(&b), Err(Malformed::PayloadLenMismatch { header: 6, actual: 5 }));
        let mut b = good.clone();
        b.push(0);
        assert_eq!(Packet::decode(&b), Err(Malformed::PayloadLenMismatch { header: 5, actual: 6 }));
    }

    #[test]
    fn reserved_bytes_are_ignored_on_receive() {
        let mut b = sample().encode();
        b[offset::RESERVED] = 0xAA;
        assert_eq!(Packet::decode(&b).unwrap(), sample());
    }

    #[test]
    fn lookup_payloads_round_trip() {
        let v4: SocketAddr = "10.1.2.3:9470".parse().unwrap();
        let p = lookup_payload(v4, b"key");
        assert_eq!(&p[..16], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]);
        assert_eq!(parse_lookup_payload(&p), Some((v4, &b"key"[..])));
        let v6: SocketAddr = "[fd00::1]:1".parse().unwrap();
        let padded = lookup_payload_padded(v6, b"key", 40);
        assert_eq!(padded.len(), LOOKUP_PAYLOAD_LEN + 3 + 40);
        assert_eq!(parse_lookup_payload(&padded), Some((v6, &b"key"[..])), "the padding is not key");
        assert_eq!(parse_lookup_payload(&padded[..LOOKUP_PAYLOAD_LEN + 30]), None, "shorter than its padding");
        let r = lookup_reply_payload(STATUS_FOUND, v6, b"value");
        assert_eq!(parse_lookup_reply_payload(&r), Some((STATUS_FOUND, v6, &b"value"[..])));
        assert_eq!(parse_lookup_payload(&p[..19]), None);
        assert_eq!(parse_lookup_reply_payload(&r[..23]), None);
    }

    proptest! {
        #[test]
        fn round_trip(kind in 1u8..=5, flags: u8, ttl: u8, hops: u8, class: u8, msg_id: u64,
                      src: [u8; 32], dst: [u8; 32], tag: [u8; 8],
                      payload in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let p = Packet { kind, flags, ttl, hops, class, msg_id, src_id: NodeId(src),
                             dst_key: NodeId(dst), tag, payload };
            prop_assert_eq!(Packet::decode(&p.encode()).unwrap(), p);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Packet::decode(&bytes);
        }
    }
}
