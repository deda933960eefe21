//! End-to-end protection of DATA (docs/WIRE.md "End-to-end DATA"): the
//! origin and the destination agree on a session over their authenticated
//! libp2p connection (ephemeral X25519, HKDF-SHA256: one key per
//! direction, `net::sessions` runs the exchange), then every DATA payload
//! between them is a ChaCha20-Poly1305 envelope ([`envelope`]) that only
//! they can open; transit nodes forward ciphertext. The receiver checks the
//! envelope's session belongs to the packet's origin, drops replays, and
//! reports the authenticated sender with each delivery.
//!
//! [`Sessions`] owns the session keys; the control API (sending) and the
//! overlay socket's owner (receiving) hold handles to it.

pub mod envelope;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use p2p_common::auth;
use p2p_common::id::NodeId;
use serde::{Deserialize, Serialize};

use crate::identity::node_id_of;

/// A session is renewed after this long (a new exchange on the next send).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(3600);
/// Sessions are forgotten this long after they were made (the newer one
/// takes over for sending; this leaves time for packets in flight).
const SESSION_KEEP: Duration = Duration::from_secs(2 * 3600);

/// One session's keys (either side's view).
#[derive(Clone)]
pub struct SessionKeys {
    pub id: u64,
    pub peer: PeerId,
    pub tx: [u8; 32],
    pub rx: [u8; 32],
}

struct Session {
    keys: SessionKeys,
    node: NodeId,
    next: u32,
    replay: [u64; auth::REPLAY_BLOCKS],
    made: Instant,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<u64, Session>,
    /// The newest session with each peer (either side made it).
    newest: HashMap<PeerId, u64>,
    sealed: u64,
    opened: u64,
    rejected: u64,
}

/// A DATA delivery, as `recv` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// The origin's node ID (`src_id`).
    pub from_node: String,
    /// The origin's peer ID, proven by the session (encrypted DATA only).
    pub from_peer: Option<String>,
    pub encrypted: bool,
    /// True only when the envelope opened: the sender is who it says.
    pub authenticated: bool,
    pub msg_id: u64,
    pub bytes: usize,
    /// The data, as UTF-8 (invalid bytes replaced).
    pub data: String,
}

/// Why an envelope was not opened.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("no such session")]
    UnknownSession,
    #[error("the session is not the origin's")]
    WrongOrigin,
    #[error("does not decrypt (forged or altered)")]
    Forged,
    #[error("a replay")]
    Replay,
}

/// Counts for `status.e2e`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct E2eStatus {
    pub sessions: usize,
    pub sealed: u64,
    pub opened: u64,
    pub rejected: u64,
}

/// Handle on the session keys; clones share them.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<Inner>>);

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session made by the exchange (either side).
    pub fn insert(&self, keys: SessionKeys) {
        let mut g = self.lock();
        let now = Instant::now();
        g.sessions.retain(|_, s| now.saturating_duration_since(s.made) < SESSION_KEEP);
        g.newest.insert(keys.peer, keys.id);
        let node = node_id_of(&keys.peer);
        g.sessions.insert(keys.id, Session { keys, node, next: 0, replay: [0; auth::REPLAY_BLOCKS], made: now });
    }

    /// Whether sending to `peer` needs a new session first.
    pub fn needs_session(&self, peer: &PeerId) -> bool {
        let g = self.lock();
        match g.newest.get(peer).and_then(|id| g.sessions.get(id)) {
            Some(s) => s.made.elapsed() >= SESSION_LIFETIME || s.next == u32::MAX,
            None => true,
        }
    }

    /// The envelope of `data` for `peer` in a packet with `header_aad`
    /// (see [`envelope::aad`]); `None` without a session.
    pub fn seal(&self, peer: &PeerId, header_aad: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        let mut g = self.lock();
        let id = *g.newest.get(peer)?;
        let s = g.sessions.get_mut(&id)?;
        let counter = s.next;
        s.next = s.next.checked_add(1)?;
        let out = envelope::seal(&s.keys.tx, id, counter, header_aad, data);
        g.sealed += 1;
        Some(out)
    }

    /// Opens an envelope from origin `from`; the data and the sender's peer ID.
    pub fn open(&self, from: &NodeId, header_aad: &[u8], payload: &[u8]) -> Result<(Vec<u8>, PeerId), Rejected> {
        let mut g = self.lock();
        let r = Self::open_in(&mut g, from, header_aad, payload);
        match &r {
            Ok(_) => g.opened += 1,
            Err(_) => g.rejected += 1,
        }
        r
    }

    fn open_in(g: &mut Inner, from: &NodeId, aad: &[u8], payload: &[u8]) -> Result<(Vec<u8>, PeerId), Rejected> {
        let (id, counter) = envelope::ids(payload).ok_or(Rejected::Forged)?;
        let s = g.sessions.get_mut(&id).ok_or(Rejected::UnknownSession)?;
        if s.node != *from {
            return Err(Rejected::WrongOrigin);
        }
        let data = envelope::open(&s.keys.rx, aad, payload).ok_or(Rejected::Forged)?;
        let slot = auth::replay_slot(counter);
        s.replay[slot] = auth::replay_check(s.replay[slot], counter).ok_or(Rejected::Replay)?;
        Ok((data, s.keys.peer))
    }

    pub fn status(&self) -> E2eStatus {
        let g = self.lock();
        E2eStatus { sessions: g.sessions.len(), sealed: g.sealed, opened: g.opened, rejected: g.rejected }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sessions, Sessions, PeerId, PeerId) {
        let (a, b) = (PeerId::random(), PeerId::random());
        let (sa, sb) = (Sessions::default(), Sessions::default());
        sa.insert(SessionKeys { id: 7, peer: b, tx: [1; 32], rx: [2; 32] });
        sb.insert(SessionKeys { id: 7, peer: a, tx: [2; 32], rx: [1; 32] });
        (sa, sb, a, b)
    }

    #[test]
    fn sealed_data_opens_once_for_its_origin_only() {
        let (sa, sb, a, b) = pair();
        let aad = b"header";
        let env = sa.seal(&b, aad, b"secret message").unwrap();
        assert!(!env.windows(6).any(|w| w == b"secret"), "no plaintext in the envelope");
        assert_eq!(sb.open(&node_id_of(&a), aad, &env), Ok((b"secret message".to_vec(), a)));
        assert_eq!(sb.open(&node_id_of(&a), aad, &env), Err(Rejected::Replay));
        let env2 = sa.seal(&b, aad, b"again").unwrap();
        assert_eq!(sb.open(&node_id_of(&b), aad, &env2), Err(Rejected::WrongOrigin), "another src_id");
        assert_eq!(sb.open(&node_id_of(&a), b"HEADER", &env2), Err(Rejected::Forged), "altered header");
        let mut flipped = env2.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(sb.open(&node_id_of(&a), aad, &flipped), Err(Rejected::Forged));
        assert_eq!(sb.open(&node_id_of(&a), aad, &env2).map(|(d, _)| d), Ok(b"again".to_vec()));
        // And back, on the same session.
        let back = sb.seal(&a, aad, b"reply").unwrap();
        assert_eq!(sa.open(&node_id_of(&b), aad, &back), Ok((b"reply".to_vec(), b)));
        assert_eq!(sb.status().rejected, 4);
    }
}
