//! Signed LOOKUP_REPLYs (docs/WIRE.md "Version 2"): an owner answering a
//! LOOKUP that arrived authenticated signs its reply with its identity key,
//! so that the asker, which is not its neighbour, can tell a genuine answer
//! from a forged one: the signature must verify and the key must be the
//! one whose node ID is the reply's `src_id`. The signature trails the
//! payload: public key (libp2p protobuf), signature, their two lengths
//! (one byte each); flag bit 1 (SIGNED) says it is there.

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use p2p_common::id::NodeId;
use p2p_common::wire::{FLAG_SIGNED, HEADER_LEN, offset};

const CONTEXT: &[u8] = b"p2p-nos lookup reply v1";

/// What the signature covers: the context, kind, msg_id, src_id, dst_key
/// (header bytes 3, 8-79: fields no hop changes) and the payload before
/// the trailer.
fn message(pkt: &[u8], payload_end: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 73 + payload_end - HEADER_LEN);
    m.extend_from_slice(CONTEXT);
    m.push(pkt[offset::KIND]);
    m.extend_from_slice(&pkt[offset::MSG_ID..offset::PAYLOAD_LEN]);
    m.extend_from_slice(&pkt[HEADER_LEN..payload_end]);
    m
}

/// Signs an encoded LOOKUP_REPLY in place: trailer appended, SIGNED set,
/// payload_len updated.
pub fn sign(keypair: &Keypair, pkt: &mut Vec<u8>) -> Result<(), String> {
    if pkt.len() < HEADER_LEN {
        return Err("not a packet".into());
    }
    let sig = keypair.sign(&message(pkt, pkt.len())).map_err(|e| e.to_string())?;
    let pk = keypair.public().encode_protobuf();
    let (Ok(pk_len), Ok(sig_len)) = (u8::try_from(pk.len()), u8::try_from(sig.len())) else {
        return Err("key or signature too long".into());
    };
    pkt.extend_from_slice(&pk);
    pkt.extend_from_slice(&sig);
    pkt.extend_from_slice(&[pk_len, sig_len]);
    pkt[offset::FLAGS] |= FLAG_SIGNED;
    let plen = (pkt.len() - HEADER_LEN) as u16;
    pkt[offset::PAYLOAD_LEN..offset::PAYLOAD_LEN + 2].copy_from_slice(&plen.to_be_bytes());
    Ok(())
}

/// Bytes a signature adds to a reply (ed25519 identity keys).
pub const TRAILER_LEN: usize = 36 + 64 + 2;

/// Checks a received LOOKUP_REPLY: `Ok(None)` if unsigned, `Ok(Some((peer,
/// payload length without the trailer)))` if its signature verifies for
/// the node that `src_id` names, `Err` if it is forged or malformed.
pub fn verify(pkt: &[u8]) -> Result<Option<(PeerId, usize)>, String> {
    if pkt.len() < HEADER_LEN || pkt[offset::FLAGS] & FLAG_SIGNED == 0 {
        return Ok(None);
    }
    let n = pkt.len();
    let body = p2p_common::codec::unsigned_payload(pkt[offset::FLAGS], &pkt[HEADER_LEN..])
        .ok_or("a truncated signature trailer")?;
    let end = HEADER_LEN + body.len();
    let (pk_len, sig_len) = (pkt[n - 2] as usize, pkt[n - 1] as usize);
    let pk = PublicKey::try_decode_protobuf(&pkt[end..end + pk_len]).map_err(|_| "a malformed public key")?;
    if !pk.verify(&message(pkt, end), &pkt[end + pk_len..end + pk_len + sig_len]) {
        return Err("a signature that does not verify (forged or altered)".into());
    }
    let peer = pk.to_peer_id();
    let src: [u8; 32] = pkt[offset::SRC_ID..offset::SRC_ID + 32].try_into().map_err(|_| "short header")?;
    if crate::identity::node_id_of(&peer) != NodeId(src) {
        return Err(format!("signed by {peer}, which is not the node in src_id"));
    }
    Ok(Some((peer, end - HEADER_LEN)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_common::codec::{Packet, lookup_reply_payload};
    use p2p_common::wire::{KIND_LOOKUP_REPLY, STATUS_FOUND};

    #[test]
    fn signed_replies_verify_for_their_src_id_only() {
        let k = Keypair::generate_ed25519();
        let me = k.public().to_peer_id();
        let payload = lookup_reply_payload(STATUS_FOUND, "10.0.0.1:9470".parse().unwrap(), b"value");
        let plain = Packet::new(KIND_LOOKUP_REPLY, crate::identity::node_id_of(&me), NodeId([2; 32]), 9, payload);
        let mut pkt = plain.encode();
        assert_eq!(verify(&pkt), Ok(None));
        sign(&k, &mut pkt).unwrap();
        assert_eq!(pkt.len(), plain.encode().len() + TRAILER_LEN);
        let back = Packet::decode(&pkt).expect("still a valid packet");
        assert_eq!(verify(&pkt), Ok(Some((me, plain.payload.len()))));
        assert_eq!(&back.payload[..plain.payload.len()], &plain.payload[..]);
        let mut altered = pkt.clone();
        altered[HEADER_LEN + 30] ^= 1;
        assert!(verify(&altered).is_err(), "value altered");
        let mut other = pkt.clone();
        other[offset::SRC_ID] ^= 1;
        assert!(verify(&other).is_err(), "another src_id");
        // Version, AUTH, reserved, tag, ttl: link fields, not signed.
        let mut relinked = pkt.clone();
        relinked[offset::TTL] = 3;
        relinked[offset::TAG] = 7;
        assert!(verify(&relinked).is_ok());
    }
}
