//! The ephemeral key exchange behind link keys (net::links) and end-to-end
//! sessions (net::sessions): X25519 public keys as hex on the wire, and
//! HKDF-SHA256 from the shared secret to the keys.

use x25519_dalek::PublicKey;

/// A peer's X25519 public key from its 64 hex digits.
pub fn parse_public(hex_key: &str) -> Option<PublicKey> {
    let b: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
    Some(PublicKey::from(b))
}

/// `N` bytes of HKDF-SHA256 output (N ≤ 8160) from `shared` under `salt` and `info`.
pub fn expand<const N: usize>(salt: &[u8], shared: &[u8; 32], info: &[u8]) -> [u8; N] {
    let hk = hkdf::Hkdf::<sha2_011::Sha256>::new(Some(salt), shared);
    let mut okm = [0u8; N];
    hk.expand(info, &mut okm).expect("N is a valid HKDF-SHA256 output length");
    okm
}
