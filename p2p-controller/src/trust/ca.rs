//! A network's certificate authority as a directory (docs/TRUST.md): the
//! root key pair, the log of what it issued and its signed revocation list.
//! `ca sign` and `ca revoke` hold an exclusive lock on the log, so that two
//! operators never hand out one serial twice.

use std::fs;
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use libp2p::identity::{Keypair, PeerId, ed25519};
use serde::{Deserialize, Serialize};

use super::cert::{Armored, Certificate, Revocations, RootKey};
use crate::error::{Error, Result};
use crate::paths::{CA_ISSUED, CA_REVOCATIONS, CA_ROOT_KEY, CA_ROOT_PUB};

/// Certificates start this long before they are signed, so that a member
/// whose clock is a little behind the signer's accepts them at once.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// One line of `issued.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub serial: u64,
    pub peer_id: String,
    pub class: String,
    pub not_before: u64,
    pub not_after: u64,
}

pub struct Ca {
    dir: PathBuf,
    root: ed25519::Keypair,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn file_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::File { path: path.into(), reason: reason.into() }
}

/// Writes under a temporary name, then renames: a reader sees the old file
/// or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(|e| file_err(path, format!("cannot write: {e}")))
}

/// Reads an armored file and says which kind it must be when it is not.
pub fn read_armored(path: &Path) -> Result<Armored> {
    let text = fs::read_to_string(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    text.parse().map_err(|e: super::cert::TrustError| file_err(path, e.to_string()))
}

pub fn read_root_key(path: &Path) -> Result<RootKey> {
    match read_armored(path)? {
        Armored::Root(k) => Ok(k),
        _ => Err(file_err(path, "holds a certificate or revocation list, not a root key (root.pub)")),
    }
}

pub fn read_certificate(path: &Path) -> Result<Certificate> {
    match read_armored(path)? {
        Armored::Certificate(c) => Ok(c),
        _ => Err(file_err(path, "holds a root key or revocation list, not a certificate")),
    }
}

pub fn read_revocations(path: &Path) -> Result<Revocations> {
    match read_armored(path)? {
        Armored::Revocations(r) => Ok(r),
        _ => Err(file_err(path, "holds a root key or certificate, not a revocation list")),
    }
}

/// `ca init --out DIR`: a new root. Refuses if DIR already holds any part
/// of a CA: a network has one root, and overwriting it would orphan every
/// certificate it signed.
pub fn init(dir: &Path) -> Result<RootKey> {
    for name in [CA_ROOT_KEY, CA_ROOT_PUB, CA_ISSUED, CA_REVOCATIONS] {
        let p = dir.join(name);
        if p.exists() {
            return Err(file_err(&p, "exists; refusing to overwrite a network's root (choose another --out)"));
        }
    }
    fs::create_dir_all(dir).map_err(|e| file_err(dir, format!("cannot create: {e}")))?;
    let root = ed25519::Keypair::generate();
    let encoded =
        Keypair::from(root.clone()).to_protobuf_encoding().map_err(|e| file_err(dir, format!("encoding: {e}")))?;
    let key_path = dir.join(CA_ROOT_KEY);
    // create_new: of two `ca init`s racing on one DIR, one fails here.
    let created = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_path)?;
        f.write_all(&encoded)?;
        f.sync_all()
    })();
    created.map_err(|e| file_err(&key_path, format!("cannot create: {e}")))?;
    let anchor = RootKey::of(&root);
    write_atomic(&dir.join(CA_ROOT_PUB), anchor.to_armor().as_bytes(), 0o644)?;
    write_atomic(&dir.join(CA_ISSUED), b"", 0o644)?;
    let empty = Revocations::issue(&root, 0, unix_now(), Vec::new());
    write_atomic(&dir.join(CA_REVOCATIONS), empty.to_armor().as_bytes(), 0o644)?;
    Ok(anchor)
}

impl Ca {
    /// Opens the CA in `dir`, with an error that says how to make one.
    pub fn open(dir: &Path) -> Result<Ca> {
        let key_path = dir.join(CA_ROOT_KEY);
        let bytes = fs::read(&key_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                file_err(
                    &key_path,
                    format!("no CA here; create one with `p2p-controller ca init --out {}`", dir.display()),
                )
            } else {
                file_err(&key_path, format!("cannot read: {e}"))
            }
        })?;
        let root = Keypair::from_protobuf_encoding(&bytes)
            .ok()
            .and_then(|k| k.try_into_ed25519().ok())
            .ok_or_else(|| file_err(&key_path, "not an ed25519 root key"))?;
        let mode = fs::metadata(&key_path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(file_err(
                &key_path,
                format!(
                    "is readable by others (mode {mode:o}); `chmod 600` it, and consider the root compromised if others read it"
                ),
            ));
        }
        Ok(Ca { dir: dir.into(), root })
    }

    pub fn anchor(&self) -> RootKey {
        RootKey::of(&self.root)
    }

    pub fn revocations_path(&self) -> PathBuf {
        self.dir.join(CA_REVOCATIONS)
    }

    /// Runs `f` holding the CA's lock, with what it issued so far.
    fn locked<T>(&self, f: impl FnOnce(&mut fs::File, Vec<Issued>) -> Result<T>) -> Result<T> {
        let path = self.dir.join(CA_ISSUED);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| file_err(&path, format!("cannot open: {e}")))?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(file_err(&path, format!("cannot lock: {}", std::io::Error::last_os_error())));
        }
        let mut issued = Vec::new();
        for (n, line) in std::io::BufReader::new(&file).lines().enumerate() {
            let line = line.map_err(|e| file_err(&path, format!("cannot read: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            issued.push(serde_json::from_str(&line).map_err(|e| file_err(&path, format!("line {}: {e}", n + 1)))?);
        }
        f(&mut file, issued)
    }

    /// `ca sign`: the next serial, valid from now (less the clock skew
    /// allowance) for `valid`.
    pub fn sign(&self, peer: PeerId, class: &str, valid: Duration) -> Result<Certificate> {
        self.locked(|log, issued| {
            let serial = issued.iter().map(|i| i.serial).max().unwrap_or(0) + 1;
            let now = unix_now();
            let not_before = now.saturating_sub(CLOCK_SKEW.as_secs());
            let not_after = now.saturating_add(valid.as_secs().max(1));
            let cert = Certificate::issue(&self.root, serial, peer, class, not_before, not_after)
                .map_err(|e| Error::Usage(e.to_string()))?;
            let line = serde_json::to_string(&Issued {
                serial,
                peer_id: peer.to_string(),
                class: class.into(),
                not_before,
                not_after,
            })
            .map_err(|e| Error::Usage(e.to_string()))?;
            log.write_all(format!("{line}\n").as_bytes())
                .and_then(|()| log.sync_all())
                .map_err(|e| file_err(&self.dir.join(CA_ISSUED), format!("cannot append: {e}")))?;
            Ok(cert)
        })
    }

    /// `ca revoke SERIAL`: a new revocation list (sequence + 1) with it and
    /// every other unexpired serial issued to the same peer (a member could
    /// otherwise keep using an older or a renewed certificate). Returns the
    /// list, what the serial was issued to, and whether it was already
    /// revoked with all its peer's serials (then nothing changes).
    pub fn revoke(&self, serial: u64) -> Result<(Revocations, Issued, bool)> {
        self.locked(|_, issued| {
            let Some(cert) = issued.iter().find(|i| i.serial == serial).cloned() else {
                let last = issued.iter().map(|i| i.serial).max();
                return Err(Error::Usage(match last {
                    Some(last) => {
                        format!("serial {serial} was never issued by {} (serials 1..={last})", self.dir.display())
                    }
                    None => {
                        format!("serial {serial} was never issued by {} (it has issued nothing)", self.dir.display())
                    }
                }));
            };
            let path = self.revocations_path();
            let current = read_revocations(&path)?;
            if current.issuer != self.anchor().0 {
                return Err(file_err(&path, "is signed by another root"));
            }
            let now = unix_now();
            let fresh: Vec<u64> = issued
                .iter()
                .filter(|i| i.serial == serial || (i.peer_id == cert.peer_id && i.not_after > now))
                .map(|i| i.serial)
                .filter(|s| !current.contains(*s))
                .collect();
            if fresh.is_empty() {
                return Ok((current, cert, true));
            }
            let mut entries = current.entries.clone();
            entries.extend(fresh.iter().map(|s| (*s, now)));
            let next = Revocations::issue(&self.root, current.sequence + 1, now, entries);
            write_atomic(&path, next.to_armor().as_bytes(), 0o644)?;
            Ok((next, cert, false))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("p2p-ca-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    #[test]
    fn init_sign_revoke() {
        let d = tmp("flow");
        let anchor = init(&d).unwrap();
        assert_eq!(fs::metadata(d.join(CA_ROOT_KEY)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_root_key(&d.join(CA_ROOT_PUB)).unwrap(), anchor);
        assert!(init(&d).unwrap_err().to_string().contains("refusing to overwrite"));
        let ca = Ca::open(&d).unwrap();
        let (p, q) = (peer(), peer());
        let a = ca.sign(p, "default", Duration::from_secs(3600)).unwrap();
        let b = ca.sign(q, "mobile", Duration::from_secs(60)).unwrap();
        assert_eq!((a.serial, b.serial), (1, 2), "serials count up");
        let now = unix_now();
        assert!(a.not_before <= now - 299 && a.not_after >= now + 3599);
        assert_eq!(a.verify_for(&p, &anchor, now, None), Ok(()));
        let (crl, who, already) = ca.revoke(2).unwrap();
        assert!(!already);
        assert_eq!((who.peer_id, crl.sequence), (q.to_string(), 1));
        assert_eq!(read_revocations(&ca.revocations_path()).unwrap(), crl);
        assert!(b.verify(&anchor, now, Some(&crl)).is_err());
        assert_eq!(a.verify(&anchor, now, Some(&crl)), Ok(()));
        let (again, _, already) = ca.revoke(2).unwrap();
        assert!(already && again.sequence == 1, "a second revoke changes nothing");
        // A peer's other unexpired certificates go with the one named.
        let renewed = ca.sign(p, "default", Duration::from_secs(3600)).unwrap();
        let (crl, _, _) = ca.revoke(renewed.serial).unwrap();
        assert!(crl.contains(a.serial) && crl.contains(renewed.serial) && crl.sequence == 2);
        assert!(ca.revoke(9).unwrap_err().to_string().contains("serials 1..=3"));
        fs::set_permissions(d.join(CA_ROOT_KEY), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Ca::open(&d).err().unwrap().to_string().contains("chmod 600"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn concurrent_signers_never_share_a_serial() {
        let d = tmp("race");
        init(&d).unwrap();
        let mut serials: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let ca = Ca::open(&d).unwrap();
                        (0..5)
                            .map(|_| ca.sign(peer(), "default", Duration::from_secs(60)).unwrap().serial)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        serials.sort_unstable();
        assert_eq!(serials, (1..=40).collect::<Vec<_>>());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_without_a_ca_says_how_to_make_one() {
        let d = tmp("none");
        assert!(Ca::open(&d).err().unwrap().to_string().contains("ca init --out"));
    }
}
