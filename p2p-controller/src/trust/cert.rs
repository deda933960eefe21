//! Membership certificates and revocation lists, encoding v1
//! (docs/TRUST.md): fixed-layout big-endian bytes signed with the network's
//! ed25519 root key, carried in text armor so that they travel well.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use libp2p::identity::{PeerId, ed25519};

/// What a certificate or a revocation list can fail on, for the CLI and,
/// later, for the daemon's decision to refuse a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("not a p2p-nos {expected}: {reason}")]
    Malformed { expected: &'static str, reason: String },
    #[error("version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    #[error("the signature does not verify: altered, or not signed by the key it names")]
    BadSignature,
    #[error("issued by root {found}, not by the trust anchor {anchor}")]
    WrongIssuer { anchor: String, found: String },
    #[error("not valid before {0} (unix seconds); check the clocks")]
    NotYetValid(u64),
    #[error("expired at {0} (unix seconds)")]
    Expired(u64),
    #[error("serial {0} is revoked")]
    Revoked(u64),
    #[error("certifies {certified}, not {presented}")]
    PeerMismatch { certified: String, presented: String },
    #[error("{0}")]
    Invalid(String),
}

/// The encoding version this build writes and reads.
pub const VERSION: u8 = 1;
const CERT_MAGIC: &[u8; 4] = b"P2PC";
const CRL_MAGIC: &[u8; 4] = b"P2PR";
const ROOT_MAGIC: &[u8; 4] = b"P2PK";
/// Signatures cover a context string first, so that no signed certificate
/// can pass for a revocation list or anything else the root ever signs.
const CERT_CONTEXT: &[u8] = b"p2p-nos certificate v1\0";
const CRL_CONTEXT: &[u8] = b"p2p-nos revocations v1\0";
const SIG_LEN: usize = 64;
pub const MAX_CLASS_LEN: usize = 32;
const MAX_PEER_ID_LEN: usize = 64;
const CERT_FIXED: usize = 4 + 1 + 1 + 1 + 1 + 8 + 8 + 8 + 32;
const CRL_FIXED: usize = 4 + 1 + 3 + 8 + 8 + 32 + 4;
const CRL_ENTRY: usize = 16;

/// The big-endian u64 at `o` (the caller checked the length).
fn be_u64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap_or_default())
}

/// Every encoding starts with its magic and the version, then `zero`
/// bytes that v1 leaves zero (reserved bytes, or a certificate's flags).
fn check_head(
    b: &[u8],
    magic: &[u8; 4],
    min_len: usize,
    expected: &'static str,
    zero: usize,
) -> Result<(), TrustError> {
    let bad = |reason: &str| TrustError::Malformed { expected, reason: reason.into() };
    if b.len() < min_len.max(5 + zero) || &b[..4] != magic {
        return Err(bad("wrong magic or too short"));
    }
    if b[4] != VERSION {
        return Err(TrustError::Version(b[4]));
    }
    if b[5..5 + zero].iter().any(|x| *x != 0) {
        return Err(bad("reserved bytes or flags set"));
    }
    Ok(())
}

/// A network root's public key: the trust anchor every member is given.
#[derive(Clone, PartialEq, Eq)]
pub struct RootKey(pub [u8; 32]);

impl RootKey {
    pub fn of(kp: &ed25519::Keypair) -> RootKey {
        RootKey(kp.public().to_bytes())
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        ed25519::PublicKey::try_from_bytes(&self.0).is_ok_and(|pk| pk.verify(msg, sig))
    }

    /// How operators compare roots: the first 16 hex digits of SHA-256.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        hex::encode(&sha2::Sha256::digest(self.0)[..8])
    }

    pub fn to_armor(&self) -> String {
        let mut b = ROOT_MAGIC.to_vec();
        b.push(VERSION);
        b.extend_from_slice(&[0; 3]);
        b.extend_from_slice(&self.0);
        armor(Kind::Root.label(), &b)
    }

    fn from_bytes(b: &[u8]) -> Result<RootKey, TrustError> {
        let bad = |reason: &str| TrustError::Malformed { expected: "root key", reason: reason.into() };
        check_head(b, ROOT_MAGIC, 40, "root key", 3)?;
        if b.len() != 40 {
            return Err(bad("wrong length"));
        }
        let key: [u8; 32] = b[8..].try_into().map_err(|_| bad("short key"))?;
        ed25519::PublicKey::try_from_bytes(&key).map_err(|_| bad("not an ed25519 public key"))?;
        Ok(RootKey(key))
    }
}

impl fmt::Display for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// A membership certificate: the root vouches that `peer` is a member of
/// class `class` from `not_before` to `not_after` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub serial: u64,
    pub not_before: u64,
    pub not_after: u64,
    pub issuer: [u8; 32],
    pub peer: PeerId,
    pub class: String,
    signature: Vec<u8>,
}

/// A peer class as written on a certificate (and used for rate classes):
/// 1 to 32 of a-z, 0-9, `-`, `_`, starting with a letter or digit.
pub fn valid_class(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_CLASS_LEN
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

impl Certificate {
    /// Signs a certificate for `peer` with the root key pair.
    pub fn issue(
        root: &ed25519::Keypair,
        serial: u64,
        peer: PeerId,
        class: &str,
        not_before: u64,
        not_after: u64,
    ) -> Result<Certificate, TrustError> {
        if !valid_class(class) {
            return Err(TrustError::Invalid(format!(
                "class {class:?}: 1 to {MAX_CLASS_LEN} of a-z, 0-9, - and _, starting with a letter or digit"
            )));
        }
        if not_after <= not_before {
            return Err(TrustError::Invalid("the validity window is empty".into()));
        }
        let mut c = Certificate {
            serial,
            not_before,
            not_after,
            issuer: RootKey::of(root).0,
            peer,
            class: class.into(),
            signature: Vec::new(),
        };
        c.signature = root.sign(&[CERT_CONTEXT, &c.signed_bytes()].concat());
        Ok(c)
    }

    /// Everything but the signature, as it is signed and sent.
    fn signed_bytes(&self) -> Vec<u8> {
        let id = self.peer.to_bytes();
        let mut b = Vec::with_capacity(CERT_FIXED + id.len() + self.class.len() + SIG_LEN);
        b.extend_from_slice(CERT_MAGIC);
        b.push(VERSION);
        b.push(0); // flags: none defined in v1
        b.push(id.len() as u8);
        b.push(self.class.len() as u8);
        b.extend_from_slice(&self.serial.to_be_bytes());
        b.extend_from_slice(&self.not_before.to_be_bytes());
        b.extend_from_slice(&self.not_after.to_be_bytes());
        b.extend_from_slice(&self.issuer);
        b.extend_from_slice(&id);
        b.extend_from_slice(self.class.as_bytes());
        b
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.signed_bytes();
        b.extend_from_slice(&self.signature);
        b
    }

    /// Decodes and checks that the certificate is signed by the root it
    /// names; whether that root is *the* anchor is `verify`'s question.
    pub fn from_bytes(b: &[u8]) -> Result<Certificate, TrustError> {
        let bad = |reason: &str| TrustError::Malformed { expected: "certificate", reason: reason.into() };
        // Byte 5 holds flags, none defined in v1.
        check_head(b, CERT_MAGIC, CERT_FIXED + SIG_LEN, "certificate", 1)?;
        let (id_len, class_len) = (b[6] as usize, b[7] as usize);
        if id_len == 0 || id_len > MAX_PEER_ID_LEN || class_len > MAX_CLASS_LEN {
            return Err(bad("peer ID or class length out of range"));
        }
        if b.len() != CERT_FIXED + id_len + class_len + SIG_LEN {
            return Err(bad("length does not match the lengths it declares"));
        }
        let u64_at = |o: usize| be_u64(b, o);
        let id_at = CERT_FIXED;
        let class_at = id_at + id_len;
        let sig_at = class_at + class_len;
        let peer = PeerId::from_bytes(&b[id_at..class_at]).map_err(|_| bad("not a peer ID"))?;
        let class = std::str::from_utf8(&b[class_at..sig_at]).map_err(|_| bad("class is not UTF-8"))?;
        if !valid_class(class) {
            return Err(bad("invalid class"));
        }
        let c = Certificate {
            serial: u64_at(8),
            not_before: u64_at(16),
            not_after: u64_at(24),
            issuer: b[32..64].try_into().map_err(|_| bad("short issuer"))?,
            peer,
            class: class.into(),
            signature: b[sig_at..].to_vec(),
        };
        if !RootKey(c.issuer).verify(&[CERT_CONTEXT, &b[..sig_at]].concat(), &c.signature) {
            return Err(TrustError::BadSignature);
        }
        Ok(c)
    }

    pub fn to_armor(&self) -> String {
        armor(Kind::Certificate.label(), &self.to_bytes())
    }

    /// Is this a certificate the holder of `anchor` must accept at `now`?
    pub fn verify(&self, anchor: &RootKey, now: u64, revoked: Option<&Revocations>) -> Result<(), TrustError> {
        if self.issuer != anchor.0 {
            return Err(TrustError::WrongIssuer {
                anchor: anchor.fingerprint(),
                found: RootKey(self.issuer).fingerprint(),
            });
        }
        if now < self.not_before {
            return Err(TrustError::NotYetValid(self.not_before));
        }
        if now >= self.not_after {
            return Err(TrustError::Expired(self.not_after));
        }
        if revoked.is_some_and(|r| r.issuer == anchor.0 && r.contains(self.serial)) {
            return Err(TrustError::Revoked(self.serial));
        }
        Ok(())
    }

    /// `verify`, and the certificate names the peer that presents it.
    pub fn verify_for(
        &self,
        peer: &PeerId,
        anchor: &RootKey,
        now: u64,
        revoked: Option<&Revocations>,
    ) -> Result<(), TrustError> {
        if &self.peer != peer {
            return Err(TrustError::PeerMismatch { certified: self.peer.to_string(), presented: peer.to_string() });
        }
        self.verify(anchor, now, revoked)
    }
}

/// The root's signed list of revoked serials. `sequence` grows with every
/// change, so that of two valid lists a node keeps the newer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocations {
    pub sequence: u64,
    pub issued_at: u64,
    pub issuer: [u8; 32],
    /// (serial, revoked at), sorted by serial.
    pub entries: Vec<(u64, u64)>,
    signature: Vec<u8>,
}

impl Revocations {
    pub fn issue(root: &ed25519::Keypair, sequence: u64, issued_at: u64, mut entries: Vec<(u64, u64)>) -> Revocations {
        entries.sort_unstable();
        entries.dedup_by_key(|e| e.0);
        let mut r = Revocations { sequence, issued_at, issuer: RootKey::of(root).0, entries, signature: Vec::new() };
        r.signature = root.sign(&[CRL_CONTEXT, &r.signed_bytes()].concat());
        r
    }

    pub fn contains(&self, serial: u64) -> bool {
        self.entries.binary_search_by_key(&serial, |e| e.0).is_ok()
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(CRL_FIXED + self.entries.len() * CRL_ENTRY + SIG_LEN);
        b.extend_from_slice(CRL_MAGIC);
        b.push(VERSION);
        b.extend_from_slice(&[0; 3]);
        b.extend_from_slice(&self.sequence.to_be_bytes());
        b.extend_from_slice(&self.issued_at.to_be_bytes());
        b.extend_from_slice(&self.issuer);
        b.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (serial, at) in &self.entries {
            b.extend_from_slice(&serial.to_be_bytes());
            b.extend_from_slice(&at.to_be_bytes());
        }
        b
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.signed_bytes();
        b.extend_from_slice(&self.signature);
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<Revocations, TrustError> {
        let bad = |reason: &str| TrustError::Malformed { expected: "revocation list", reason: reason.into() };
        check_head(b, CRL_MAGIC, CRL_FIXED + SIG_LEN, "revocation list", 3)?;
        let u64_at = |o: usize| be_u64(b, o);
        let count = u32::from_be_bytes(b[56..60].try_into().unwrap_or_default()) as usize;
        let sig_at = count
            .checked_mul(CRL_ENTRY)
            .and_then(|n| n.checked_add(CRL_FIXED))
            .filter(|&at| at + SIG_LEN == b.len())
            .ok_or_else(|| bad("length does not match the count it declares"))?;
        let entries: Vec<(u64, u64)> =
            (0..count).map(|i| (u64_at(CRL_FIXED + i * CRL_ENTRY), u64_at(CRL_FIXED + i * CRL_ENTRY + 8))).collect();
        if !entries.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(bad("serials not in ascending order"));
        }
        let r = Revocations {
            sequence: u64_at(8),
            issued_at: u64_at(16),
            issuer: b[24..56].try_into().map_err(|_| bad("short issuer"))?,
            entries,
            signature: b[sig_at..].to_vec(),
        };
        if !RootKey(r.issuer).verify(&[CRL_CONTEXT, &b[..sig_at]].concat(), &r.signature) {
            return Err(TrustError::BadSignature);
        }
        Ok(r)
    }

    pub fn to_armor(&self) -> String {
        armor(Kind::Revocations.label(), &self.to_bytes())
    }
}

/// What an armored file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Root,
    Certificate,
    Revocations,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Root => "P2P-NOS ROOT KEY",
            Kind::Certificate => "P2P-NOS CERTIFICATE",
            Kind::Revocations => "P2P-NOS REVOCATIONS",
        }
    }
}

/// Any of the three, read from armored text.
#[derive(Debug, Clone)]
pub enum Armored {
    Root(RootKey),
    Certificate(Certificate),
    Revocations(Revocations),
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootKey({})", self.fingerprint())
    }
}

impl FromStr for Armored {
    type Err = TrustError;

    fn from_str(text: &str) -> Result<Armored, TrustError> {
        let (kind, bytes) = dearmor(text)?;
        Ok(match kind {
            Kind::Root => Armored::Root(RootKey::from_bytes(&bytes)?),
            Kind::Certificate => Armored::Certificate(Certificate::from_bytes(&bytes)?),
            Kind::Revocations => Armored::Revocations(Revocations::from_bytes(&bytes)?),
        })
    }
}

fn armor(label: &str, bytes: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

fn dearmor(text: &str) -> Result<(Kind, Vec<u8>), TrustError> {
    let bad =
        |reason: String| TrustError::Malformed { expected: "file (root key, certificate or revocations)", reason };
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().ok_or_else(|| bad("empty".into()))?;
    let kind = [Kind::Root, Kind::Certificate, Kind::Revocations]
        .into_iter()
        .find(|k| first == format!("-----BEGIN {}-----", k.label()))
        .ok_or_else(|| bad(format!("first line {first:?} is no -----BEGIN P2P-NOS …----- line")))?;
    let end = format!("-----END {}-----", kind.label());
    let mut b64 = String::new();
    let mut ended = false;
    for l in lines.by_ref() {
        if l == end {
            ended = true;
            break;
        }
        b64.push_str(l);
    }
    if !ended {
        return Err(bad(format!("no {end} line")));
    }
    if lines.next().is_some() {
        return Err(bad(format!("text after {end}")));
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| bad(format!("base64: {e}")))?;
    Ok((kind, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519().public().to_peer_id()
    }

    #[test]
    fn certificate_round_trips_and_verifies_only_under_its_root_within_its_window() {
        let root = ed25519::Keypair::generate();
        let anchor = RootKey::of(&root);
        let p = peer();
        let c = Certificate::issue(&root, 7, p, "mobile", 1000, 2000).unwrap();
        let back: Armored = c.to_armor().parse().unwrap();
        let Armored::Certificate(back) = back else { panic!("kind") };
        assert_eq!(back, c);
        assert_eq!((back.serial, back.class.as_str(), back.peer), (7, "mobile", p));
        assert_eq!(c.verify_for(&p, &anchor, 1000, None), Ok(()));
        assert_eq!(c.verify(&anchor, 999, None), Err(TrustError::NotYetValid(1000)));
        assert_eq!(c.verify(&anchor, 2000, None), Err(TrustError::Expired(2000)));
        let other = RootKey::of(&ed25519::Keypair::generate());
        assert!(matches!(c.verify(&other, 1500, None), Err(TrustError::WrongIssuer { .. })));
        assert!(matches!(c.verify_for(&peer(), &anchor, 1500, None), Err(TrustError::PeerMismatch { .. })));
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let root = ed25519::Keypair::generate();
        let bytes = Certificate::issue(&root, 1, peer(), "default", 0, u64::MAX).unwrap().to_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(Certificate::from_bytes(&b).is_err(), "byte {i} flipped was accepted");
        }
        for n in 0..bytes.len() {
            assert!(Certificate::from_bytes(&bytes[..n]).is_err(), "truncated to {n} accepted");
        }
        let crl = Revocations::issue(&root, 3, 10, vec![(5, 1), (2, 1)]).to_bytes();
        for i in 0..crl.len() {
            let mut b = crl.clone();
            b[i] ^= 0x80;
            assert!(Revocations::from_bytes(&b).is_err(), "revocations byte {i} flipped was accepted");
        }
    }

    #[test]
    fn a_signature_of_one_kind_never_passes_for_another() {
        // The same bytes signed without the context would verify if the
        // contexts were missing; with them, a certificate signature cannot
        // be moved onto a revocation list.
        let root = ed25519::Keypair::generate();
        let c = Certificate::issue(&root, 1, peer(), "default", 0, 10).unwrap();
        let r = Revocations::issue(&root, 1, 0, vec![]);
        let mut forged = r.signed_bytes();
        forged.extend_from_slice(&c.signature);
        assert_eq!(Revocations::from_bytes(&forged), Err(TrustError::BadSignature));
    }

    #[test]
    fn revocations_revoke_only_under_their_own_root() {
        let root = ed25519::Keypair::generate();
        let anchor = RootKey::of(&root);
        let c = Certificate::issue(&root, 42, peer(), "default", 0, 100).unwrap();
        let r = Revocations::issue(&root, 1, 5, vec![(42, 5), (9, 5), (42, 6)]);
        assert_eq!(r.entries, vec![(9, 5), (42, 5)], "sorted, one entry per serial");
        let r: Revocations = match r.to_armor().parse().unwrap() {
            Armored::Revocations(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(c.verify(&anchor, 50, Some(&r)), Err(TrustError::Revoked(42)));
        let foreign = Revocations::issue(&ed25519::Keypair::generate(), 9, 5, vec![(42, 5)]);
        assert_eq!(c.verify(&anchor, 50, Some(&foreign)), Ok(()), "another root cannot revoke ours");
    }

    #[test]
    fn armor_errors_say_what_is_wrong() {
        let root = ed25519::Keypair::generate();
        let key = RootKey::of(&root).to_armor();
        assert!(matches!(key.parse::<Armored>(), Ok(Armored::Root(k)) if k == RootKey::of(&root)));
        for (text, needle) in [
            ("", "empty"),
            ("hello\n", "BEGIN"),
            ("-----BEGIN P2P-NOS CERTIFICATE-----\nAAAA\n", "END"),
            ("-----BEGIN P2P-NOS CERTIFICATE-----\n!!!!\n-----END P2P-NOS CERTIFICATE-----\n", "base64"),
            ("-----BEGIN P2P-NOS CERTIFICATE-----\nAAAA\n-----END P2P-NOS CERTIFICATE-----\n", "too short"),
        ] {
            let e = text.parse::<Armored>().unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let trailing = format!("{key}junk\n");
        assert!(trailing.parse::<Armored>().unwrap_err().to_string().contains("after"));
        let mut b = ROOT_MAGIC.to_vec();
        b.push(2);
        b.extend_from_slice(&[0; 3]);
        b.extend_from_slice(&RootKey::of(&root).0);
        let v2 = armor(Kind::Root.label(), &b);
        assert_eq!(v2.parse::<Armored>().unwrap_err(), TrustError::Version(2));
    }

    #[test]
    fn classes_are_checked() {
        for ok in ["default", "mobile", "high-capacity", "a", "x_1"] {
            assert!(valid_class(ok), "{ok}");
        }
        for bad in ["", "-x", "Mobile", "a b", "é", &"a".repeat(33)] {
            assert!(!valid_class(bad), "{bad}");
        }
        let root = ed25519::Keypair::generate();
        assert!(Certificate::issue(&root, 1, peer(), "Bad", 0, 1).is_err());
        assert!(Certificate::issue(&root, 1, peer(), "ok", 5, 5).is_err());
    }
}
