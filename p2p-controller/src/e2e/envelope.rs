//! The end-to-end envelope of a DATA payload (docs/WIRE.md): `0xE2`,
//! version `1`, session ID (8 bytes), counter (4 bytes), then the
//! ChaCha20-Poly1305 ciphertext and its 16-byte tag. Nonce: 8 zero bytes
//! and the counter (each direction has its own key). Additional data: the
//! header fields the origin sets and nobody changes (kind, class, msg_id,
//! src_id, dst_key) and the envelope's first 14 bytes.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use p2p_common::wire::{HEADER_LEN, offset};

pub const MAGIC: u8 = 0xE2;
pub const VERSION: u8 = 1;
pub const PREFIX_LEN: usize = 14;
pub const TAG_LEN: usize = 16;
/// Bytes an envelope adds to the data.
pub const OVERHEAD: usize = PREFIX_LEN + TAG_LEN;

/// Whether a DATA payload is an envelope (by its first two bytes).
pub fn is_envelope(payload: &[u8]) -> bool {
    payload.len() >= OVERHEAD && payload[0] == MAGIC && payload[1] == VERSION
}

/// The header fields an envelope is bound to, from an encoded packet.
pub fn aad(packet: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(74);
    if packet.len() >= HEADER_LEN {
        a.push(packet[offset::KIND]);
        a.push(packet[offset::CLASS]);
        a.extend_from_slice(&packet[offset::MSG_ID..offset::MSG_ID + 8]);
        a.extend_from_slice(&packet[offset::SRC_ID..offset::PAYLOAD_LEN]);
    }
    a
}

fn nonce(counter: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// Session ID and counter of an envelope.
pub fn ids(payload: &[u8]) -> Option<(u64, u32)> {
    if !is_envelope(payload) {
        return None;
    }
    let id = u64::from_be_bytes(payload[2..10].try_into().ok()?);
    let counter = u32::from_be_bytes(payload[10..14].try_into().ok()?);
    Some((id, counter))
}

pub fn seal(key: &[u8; 32], session: u64, counter: u32, header_aad: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OVERHEAD + data.len());
    out.push(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&session.to_be_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    let mut aad = header_aad.to_vec();
    aad.extend_from_slice(&out);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce(counter)), Payload { msg: data, aad: &aad })
        .expect("ChaCha20-Poly1305 encrypts any length a packet holds");
    out.extend_from_slice(&ct);
    out
}

pub fn open(key: &[u8; 32], header_aad: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    let (_, counter) = ids(payload)?;
    let mut aad = header_aad.to_vec();
    aad.extend_from_slice(&payload[..PREFIX_LEN]);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    cipher.decrypt(Nonce::from_slice(&nonce(counter)), Payload { msg: &payload[PREFIX_LEN..], aad: &aad }).ok()
}
