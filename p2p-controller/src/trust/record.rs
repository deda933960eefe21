//! Signed DHT records (docs/TRUST.md): a record's value is the publisher's
//! envelope, `P2PR`, version 1, the publisher's public key (libp2p
//! protobuf encoding, 2-byte length), its signature (2-byte length) over
//! `p2p-nos record v1` ‖ key length (2 bytes) ‖ key ‖ data, then the data.
//! Kademlia carries it as opaque bytes (any libp2p-kad node stores and
//! serves it); p2p-nos nodes verify it before they store or use it.

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};

const MAGIC: &[u8; 4] = b"P2PR";
const VERSION: u8 = 1;
const CONTEXT: &[u8] = b"p2p-nos record v1";

/// A record's data and who vouches for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    pub data: &'a [u8],
    /// The signer, when the value is a signed envelope.
    pub publisher: Option<PeerId>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("a malformed signed-record envelope")]
    Malformed,
    #[error("a signature that does not verify (forged or altered)")]
    BadSignature,
    #[error("signed by {signer}, but the record names {publisher} as publisher")]
    WrongPublisher { signer: String, publisher: String },
}

fn message(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 2 + key.len() + data.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(&(key.len() as u16).to_be_bytes());
    m.extend_from_slice(key);
    m.extend_from_slice(data);
    m
}

/// The signed value of `data` under record key `key`.
pub fn sign(keypair: &Keypair, key: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    let sig = keypair.sign(&message(key, data)).map_err(|e| format!("signing the record: {e}"))?;
    let pk = keypair.public().encode_protobuf();
    let mut v = Vec::with_capacity(4 + 1 + 4 + pk.len() + sig.len() + data.len());
    v.extend_from_slice(MAGIC);
    v.push(VERSION);
    v.extend_from_slice(&(pk.len() as u16).to_be_bytes());
    v.extend_from_slice(&pk);
    v.extend_from_slice(&(sig.len() as u16).to_be_bytes());
    v.extend_from_slice(&sig);
    v.extend_from_slice(data);
    Ok(v)
}

fn take<'a>(v: &mut &'a [u8], n: usize) -> Result<&'a [u8], RecordError> {
    if v.len() < n {
        return Err(RecordError::Malformed);
    }
    let (a, b) = v.split_at(n);
    *v = b;
    Ok(a)
}

fn take_len<'a>(v: &mut &'a [u8]) -> Result<&'a [u8], RecordError> {
    let l = take(v, 2)?;
    take(v, u16::from_be_bytes([l[0], l[1]]) as usize)
}

/// A record's data, its signature verified when it has one (`publisher`:
/// the record's publisher field, which must then be the signer). An
/// unsigned value comes back as is, with no publisher.
pub fn open<'a>(key: &[u8], value: &'a [u8], publisher: Option<&PeerId>) -> Result<Opened<'a>, RecordError> {
    if !value.starts_with(MAGIC) {
        return Ok(Opened { data: value, publisher: None });
    }
    let mut rest = &value[MAGIC.len()..];
    if take(&mut rest, 1)? != [VERSION] {
        return Err(RecordError::Malformed);
    }
    let pk = PublicKey::try_decode_protobuf(take_len(&mut rest)?).map_err(|_| RecordError::Malformed)?;
    let sig = take_len(&mut rest)?;
    let data = rest;
    if !pk.verify(&message(key, data), sig) {
        return Err(RecordError::BadSignature);
    }
    let signer = pk.to_peer_id();
    if let Some(p) = publisher
        && *p != signer
    {
        return Err(RecordError::WrongPublisher { signer: signer.to_string(), publisher: p.to_string() });
    }
    Ok(Opened { data, publisher: Some(signer) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_records_verify_and_tampering_is_caught() {
        let k = Keypair::generate_ed25519();
        let me = k.public().to_peer_id();
        let v = sign(&k, b"key", b"data").unwrap();
        assert_eq!(open(b"key", &v, Some(&me)), Ok(Opened { data: b"data", publisher: Some(me) }));
        assert_eq!(open(b"key", &v, None).unwrap().publisher, Some(me));
        assert_eq!(open(b"other", &v, None), Err(RecordError::BadSignature), "bound to its key");
        let mut altered = v.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(open(b"key", &altered, None), Err(RecordError::BadSignature));
        let someone = PeerId::random();
        assert!(matches!(open(b"key", &v, Some(&someone)), Err(RecordError::WrongPublisher { .. })));
        assert_eq!(open(b"key", &v[..12], None), Err(RecordError::Malformed));
        assert_eq!(open(b"key", b"plain", None), Ok(Opened { data: b"plain", publisher: None }));
    }
}
