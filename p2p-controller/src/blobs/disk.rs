//! A node's share of the stored objects, on disk under the state
//! directory: `store/shards/<cid>` (verified against its CID on every
//! read: a corrupt file is deleted and reported missing, so that it is
//! repaired) and `store/manifests/<object cid>`. Shards count against
//! `--store-quota`; a put over it is refused with the figures.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::Cid;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskError {
    #[error("storage quota full: {used} of {quota} bytes used, {wanted} more asked (raise --store-quota)")]
    Full { used: u64, quota: u64, wanted: u64 },
    #[error("the bytes do not hash to {0}")]
    Mismatch(Cid),
    #[error("store {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// Clones share one store.
#[derive(Clone, Debug)]
pub struct ShardStore {
    dir: PathBuf,
    quota: u64,
    used: Arc<Mutex<u64>>,
    corrupt: Arc<Mutex<u64>>,
}

fn io(path: &Path, e: std::io::Error) -> DiskError {
    DiskError::Io { path: path.into(), reason: e.to_string() }
}

impl ShardStore {
    /// Opens (creating) `dir`; counts what it already holds.
    pub fn open(dir: &Path, quota: u64) -> Result<ShardStore, DiskError> {
        for sub in ["shards", "manifests", "refs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| io(dir, e))?;
        }
        let mut used = 0;
        for e in std::fs::read_dir(dir.join("shards")).map_err(|e| io(dir, e))?.flatten() {
            used += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(ShardStore { dir: dir.into(), quota, used: Arc::new(Mutex::new(used)), corrupt: Arc::new(Mutex::new(0)) })
    }

    pub fn used(&self) -> u64 {
        *self.used.lock().expect("not poisoned")
    }
    pub fn quota(&self) -> u64 {
        self.quota
    }
    /// Shards found corrupt on read (and deleted) since start.
    pub fn corrupt(&self) -> u64 {
        *self.corrupt.lock().expect("not poisoned")
    }

    fn shard_path(&self, cid: &Cid) -> PathBuf {
        self.dir.join("shards").join(cid.to_string())
    }
    fn manifest_path(&self, object: &Cid) -> PathBuf {
        self.dir.join("manifests").join(object.to_string())
    }

    fn write_atomic(path: &Path, data: &[u8]) -> Result<(), DiskError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, data).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(path, e))
    }

    /// Stores a shard of `object` that hashes to `cid` (if it is already
    /// here, only the reference is added).
    pub fn put_shard(&self, object: Option<&Cid>, cid: &Cid, data: &[u8]) -> Result<(), DiskError> {
        if Cid::of(data) != *cid {
            return Err(DiskError::Mismatch(*cid));
        }
        if let Some(o) = object {
            self.add_ref(cid, o)?;
        }
        let path = self.shard_path(cid);
        if path.exists() {
            // Touched: the garbage collector's grace period starts again.
            let _ = std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(());
        }
        let mut used = self.used.lock().expect("not poisoned");
        let wanted = data.len() as u64;
        if *used + wanted > self.quota {
            return Err(DiskError::Full { used: *used, quota: self.quota, wanted });
        }
        Self::write_atomic(&path, data)?;
        *used += wanted;
        Ok(())
    }

    /// The shard's bytes if held and intact; a corrupt copy is deleted.
    pub fn get_shard(&self, cid: &Cid) -> Option<Vec<u8>> {
        let path = self.shard_path(cid);
        let data = std::fs::read(&path).ok()?;
        if Cid::of(&data) == *cid {
            return Some(data);
        }
        log::warn!("store: shard {cid} is corrupt on disk; deleted (it will be repaired)");
        *self.corrupt.lock().expect("not poisoned") += 1;
        self.remove_shard(cid);
        None
    }

    pub fn has_shard(&self, cid: &Cid) -> bool {
        self.shard_path(cid).exists()
    }

    fn refs_path(&self, cid: &Cid) -> PathBuf {
        self.dir.join("refs").join(cid.to_string())
    }

    /// The objects a shard here was put for.
    pub fn refs(&self, cid: &Cid) -> Vec<Cid> {
        let text = std::fs::read_to_string(self.refs_path(cid)).unwrap_or_default();
        text.lines().filter_map(|l| l.parse().ok()).collect()
    }

    pub fn add_ref(&self, cid: &Cid, object: &Cid) -> Result<(), DiskError> {
        let mut refs = self.refs(cid);
        if !refs.contains(object) {
            refs.push(*object);
            let text: String = refs.iter().map(|r| format!("{r}\n")).collect();
            Self::write_atomic(&self.refs_path(cid), text.as_bytes())?;
        }
        Ok(())
    }

    /// Drops `object`'s reference to a shard; the shard goes with its last one.
    pub fn release(&self, cid: &Cid, object: &Cid) {
        let refs: Vec<Cid> = self.refs(cid).into_iter().filter(|r| r != object).collect();
        if refs.is_empty() {
            self.remove_shard(cid);
        } else {
            let text: String = refs.iter().map(|r| format!("{r}\n")).collect();
            let _ = Self::write_atomic(&self.refs_path(cid), text.as_bytes());
        }
    }

    /// Shards held here, with how long ago each was last written.
    pub fn shards_with_age(&self) -> Vec<(Cid, std::time::Duration)> {
        let Ok(d) = std::fs::read_dir(self.dir.join("shards")) else { return Vec::new() };
        d.flatten()
            .filter_map(|e| {
                let cid: Cid = e.file_name().to_str()?.parse().ok()?;
                let age = e.metadata().ok()?.modified().ok()?.elapsed().unwrap_or_default();
                Some((cid, age))
            })
            .collect()
    }

    pub fn remove_shard(&self, cid: &Cid) {
        let _ = std::fs::remove_file(self.refs_path(cid));
        let path = self.shard_path(cid);
        if let Ok(m) = std::fs::metadata(&path)
            && std::fs::remove_file(&path).is_ok()
        {
            let mut used = self.used.lock().expect("not poisoned");
            *used = used.saturating_sub(m.len());
        }
    }

    pub fn shard_count(&self) -> usize {
        std::fs::read_dir(self.dir.join("shards"))
            .map(|d| d.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| !n.ends_with(".tmp"))).count())
            .unwrap_or(0)
    }

    pub fn put_manifest(&self, object: &Cid, bytes: &[u8]) -> Result<(), DiskError> {
        Self::write_atomic(&self.manifest_path(object), bytes)
    }

    pub fn get_manifest(&self, object: &Cid) -> Option<Vec<u8>> {
        std::fs::read(self.manifest_path(object)).ok()
    }

    pub fn remove_manifest(&self, object: &Cid) {
        let _ = std::fs::remove_file(self.manifest_path(object));
    }

    /// Objects whose manifest is held here.
    pub fn manifests(&self) -> Vec<Cid> {
        let Ok(d) = std::fs::read_dir(self.dir.join("manifests")) else { return Vec::new() };
        let mut out: Vec<Cid> = d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("p2p-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn verifies_counts_and_refuses_over_quota() {
        let d = tmp("quota");
        let s = ShardStore::open(&d, 10).unwrap();
        let (a, b) = (b"12345678".to_vec(), b"abcdefgh".to_vec());
        let (o1, o2) = (Cid::of(b"o1"), Cid::of(b"o2"));
        assert_eq!(s.put_shard(Some(&o1), &Cid::of(&b), &a), Err(DiskError::Mismatch(Cid::of(&b))));
        s.put_shard(Some(&o1), &Cid::of(&a), &a).unwrap();
        s.put_shard(Some(&o2), &Cid::of(&a), &a).unwrap(); // already here: no double count, one more reference
        assert_eq!(s.used(), 8);
        assert_eq!(s.refs(&Cid::of(&a)), vec![o1, o2]);
        s.release(&Cid::of(&a), &o1);
        assert!(s.has_shard(&Cid::of(&a)), "o2 still refers to it");
        let e = s.put_shard(Some(&o1), &Cid::of(&b), &b).unwrap_err();
        assert!(e.to_string().contains("8 of 10 bytes used, 8 more"), "{e}");
        assert_eq!(s.get_shard(&Cid::of(&a)).unwrap(), a);
        // Reopened, the count survives.
        assert_eq!(ShardStore::open(&d, 10).unwrap().used(), 8);
        // Corrupt on disk: reported missing, deleted, counted.
        std::fs::write(d.join("shards").join(Cid::of(&a).to_string()), b"12345679").unwrap();
        assert_eq!(s.get_shard(&Cid::of(&a)), None);
        assert!(!s.has_shard(&Cid::of(&a)));
        assert_eq!((s.used(), s.corrupt()), (0, 1));
        s.put_manifest(&Cid::of(b"obj"), b"{}").unwrap();
        assert_eq!(s.manifests(), vec![Cid::of(b"obj")]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
