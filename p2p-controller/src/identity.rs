//! The node's ed25519 identity: created on first use in the state
//! directory, reused after. Node ID = SHA-256(peer_id bytes) (docs/WIRE.md).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use libp2p::identity::{Keypair, PeerId};
use p2p_common::id::NodeId;

use crate::error::{Error, Result};
use crate::paths::KEY_FILE;

/// A peer's node ID: SHA-256 of its peer ID (docs/WIRE.md "Identifiers").
pub fn node_id_of(peer: &PeerId) -> NodeId {
    NodeId::from_peer_id_bytes(&peer.to_bytes())
}

pub struct Identity {
    pub keypair: Keypair,
    pub peer_id: PeerId,
    pub node_id: NodeId,
}

impl Identity {
    fn from_keypair(keypair: Keypair) -> Identity {
        let peer_id = keypair.public().to_peer_id();
        Identity { keypair, peer_id, node_id: node_id_of(&peer_id) }
    }

    /// Loads `<state_dir>/node.key`, creating the directory and a new key
    /// (mode 0600) if absent. Returns the identity and whether it was created.
    pub fn load_or_create(state_dir: &Path) -> Result<(Identity, bool)> {
        let path = state_dir.join(KEY_FILE);
        let file_err = |reason: String| Error::File { path: path.clone(), reason };
        match fs::read(&path) {
            Ok(bytes) => {
                let kp = Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                    file_err(format!("not a valid node key ({e}); move it away to create a new identity"))
                })?;
                let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    log::warn!("{} is readable by others (mode {mode:o}); tightening to 0600", path.display());
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
                }
                Ok((Identity::from_keypair(kp), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(state_dir).map_err(|e| Error::File {
                    path: state_dir.to_path_buf(),
                    reason: format!("cannot create the state directory: {e}"),
                })?;
                let kp = Keypair::generate_ed25519();
                let bytes = kp.to_protobuf_encoding().map_err(|e| file_err(e.to_string()))?;
                // Written whole under a private name, then linked into
                // place: another process starting at the same moment sees
                // either no key or a complete one, and never overwrites it.
                let tmp = state_dir.join(format!(".{KEY_FILE}.{}.{:016x}", std::process::id(), rand::random::<u64>()));
                let written = (|| {
                    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
                    f.write_all(&bytes)?;
                    f.sync_all()?;
                    fs::hard_link(&tmp, &path)
                })();
                let _ = fs::remove_file(&tmp);
                match written {
                    Ok(()) => Ok((Identity::from_keypair(kp), true)),
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(state_dir),
                    Err(e) => Err(file_err(format!("cannot create: {e}"))),
                }
            }
            Err(e) => Err(file_err(format!("cannot read: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_mode_0600_and_reused() {
        let dir = std::env::temp_dir().join(format!("p2p-id-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (a, created) = Identity::load_or_create(&dir).unwrap();
        assert!(created);
        let mode = fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = Identity::load_or_create(&dir).unwrap();
        assert!(!created);
        assert_eq!(a.peer_id, b.peer_id);
        assert_eq!(a.node_id, b.node_id);
        assert_eq!(a.node_id, NodeId::from_peer_id_bytes(&a.peer_id.to_bytes()));
        fs::write(dir.join(KEY_FILE), b"garbage").unwrap();
        assert!(Identity::load_or_create(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_first_starts_share_one_key() {
        let dir = std::env::temp_dir().join(format!("p2p-id-race-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let ids: Vec<PeerId> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| Identity::load_or_create(&dir).unwrap().0.peer_id)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "every start reads the one key: {ids:?}");
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(KEY_FILE)], "no temporary files left");
        fs::remove_dir_all(&dir).unwrap();
    }
}
