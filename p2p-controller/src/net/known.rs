//! Trust on first use for open networks (no `--trust-anchor`): a
//! `--bootstrap` address given without `/p2p/<id>` is pinned to the peer ID
//! that first answered there, in `<state dir>/known_peers` (like SSH's
//! `known_hosts`); later dials of it accept only that ID.
//!
//! File format: one `ADDRESS PEER_ID` per line (the multiaddr without its
//! `/p2p` part), `#` comments and blank lines ignored.

use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct KnownPeers {
    path: PathBuf,
    /// (address, peer, line number in the file).
    entries: Vec<(Multiaddr, PeerId, usize)>,
}

/// The address a pin is kept under: without `/p2p/<id>`.
pub fn pin_key(addr: &Multiaddr) -> Multiaddr {
    addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect()
}

impl KnownPeers {
    /// Reads the file (absent: nothing pinned yet); a malformed line is an
    /// error that names it, before the node changes anything.
    pub fn load(path: &Path) -> Result<KnownPeers> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::File { path: path.into(), reason: format!("cannot read: {e}") }),
        };
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| Error::File {
                path: path.into(),
                reason: format!(
                    "line {}: {why} (expected `ADDRESS PEER_ID`, e.g. `/ip4/192.0.2.1/tcp/9471 12D3KooW…`)",
                    n + 1
                ),
            };
            let mut words = line.split_whitespace();
            let (Some(a), Some(p), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad("not two words"));
            };
            let addr: Multiaddr = a.parse().map_err(|_| bad("not a multiaddr"))?;
            let peer: PeerId = p.parse().map_err(|_| bad("not a peer ID"))?;
            entries.push((pin_key(&addr), peer, n + 1));
        }
        Ok(KnownPeers { path: path.into(), entries })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The peer ID `addr` is pinned to, and the line of the pin.
    pub fn pinned(&self, addr: &Multiaddr) -> Option<(PeerId, usize)> {
        let key = pin_key(addr);
        self.entries.iter().find(|(a, _, _)| *a == key).map(|(_, p, n)| (*p, *n))
    }

    /// Pins `addr` to `peer` if it is not pinned yet (appends a line).
    pub fn pin(&mut self, addr: &Multiaddr, peer: PeerId) -> Result<bool> {
        if self.pinned(addr).is_some() {
            return Ok(false);
        }
        let key = pin_key(addr);
        let fresh = !self.path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::File { path: self.path.clone(), reason: format!("cannot write: {e}") })?;
        let mut text = String::new();
        if fresh {
            text.push_str("# Peer IDs first seen at --bootstrap addresses (trust on first use).\n");
            text.push_str("# A node whose key was replaced on purpose: delete its line.\n");
        }
        text.push_str(&format!("{key} {peer}\n"));
        f.write_all(text.as_bytes())
            .map_err(|e| Error::File { path: self.path.clone(), reason: format!("cannot write: {e}") })?;
        let line = std::fs::read_to_string(&self.path).map_or(0, |t| t.lines().count());
        self.entries.push((key, peer, line));
        Ok(true)
    }

    /// What to tell the operator when `addr` answered as `got`.
    pub fn mismatch(&self, addr: &Multiaddr, got: &PeerId) -> Option<String> {
        let (want, line) = self.pinned(addr).filter(|(p, _)| p != got)?;
        Some(format!(
            "{} answered as peer {got}, but {} (line {line}) pins it to {want}: refused. If that node's key was \
             replaced on purpose, delete the line",
            pin_key(addr),
            self.path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_the_first_id_and_names_both_on_a_mismatch() {
        let dir = std::env::temp_dir().join(format!("p2p-known-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("known_peers");
        let (a, b) = (PeerId::random(), PeerId::random());
        let addr: Multiaddr = "/ip4/10.99.0.1/tcp/9471".parse().unwrap();
        let mut k = KnownPeers::load(&path).unwrap();
        assert!(k.pinned(&addr).is_none() && k.mismatch(&addr, &a).is_none());
        assert!(k.pin(&addr, a).unwrap());
        assert!(!k.pin(&addr, b).unwrap(), "the first ID stays");
        // Read back, and keyed without /p2p.
        let k = KnownPeers::load(&path).unwrap();
        let with_id: Multiaddr = format!("/ip4/10.99.0.1/tcp/9471/p2p/{b}").parse().unwrap();
        assert_eq!(k.pinned(&with_id).map(|p| p.0), Some(a));
        assert!(k.mismatch(&addr, &a).is_none());
        let msg = k.mismatch(&addr, &b).unwrap();
        for needle in [a.to_string(), b.to_string(), path.display().to_string(), "line 3".into()] {
            assert!(msg.contains(&needle), "{msg} lacks {needle}");
        }
        std::fs::write(&path, "/ip4/10.99.0.1/tcp/9471\n").unwrap();
        assert!(KnownPeers::load(&path).unwrap_err().to_string().contains("line 1"));
        std::fs::write(&path, "/ip4/10.99.0.1/tcp/9471 nope\n").unwrap();
        assert!(KnownPeers::load(&path).unwrap_err().to_string().contains("not a peer ID"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
