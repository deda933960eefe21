//! A node's share of the stored objects, on disk under the state
//! directory: `store/shards/<cid>` (verified against its CID on every
//! read: a corrupt file is deleted and reported missing, so that it is
//! repaired), `store/manifests/<object cid>`, and `store/cache/<segment
//! hash>`: whole segments of objects read often here (popularity), kept
//! while they are read. Shards and cached segments count against
//! `--store-quota`; cached segments use at most a quarter of it and give
//! way to shards; a shard put over the quota is refused with the figures.

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
    /// Bytes of shards and cached segments; of which cached segments.
    used: Arc<Mutex<Used>>,
    corrupt: Arc<Mutex<u64>>,
}

#[derive(Debug, Default)]
struct Used {
    all: u64,
    cache: u64,
}

fn io(path: &Path, e: std::io::Error) -> DiskError {
    DiskError::Io { path: path.into(), reason: e.to_string() }
}

impl ShardStore {
    /// Opens (creating) `dir`; counts what it already holds.
    pub fn open(dir: &Path, quota: u64) -> Result<ShardStore, DiskError> {
        for sub in ["shards", "manifests", "refs", "cache"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| io(dir, e))?;
        }
        let size = |sub: &str| -> Result<u64, DiskError> {
            let d = std::fs::read_dir(dir.join(sub)).map_err(|e| io(dir, e))?;
            Ok(d.flatten().map(|e| e.metadata().map(|m| m.len()).unwrap_or(0)).sum())
        };
        let cache = size("cache")?;
        let used = Used { all: size("shards")? + cache, cache };
        Ok(ShardStore { dir: dir.into(), quota, used: Arc::new(Mutex::new(used)), corrupt: Arc::new(Mutex::new(0)) })
    }

    /// Bytes held: shards and cached segments.
    pub fn used(&self) -> u64 {
        self.used.lock().expect("not poisoned").all
    }
    pub fn cache_used(&self) -> u64 {
        self.used.lock().expect("not poisoned").cache
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
        let wanted = data.len() as u64;
        // Cached segments give way, least recently read first.
        let over = self.used().saturating_add(wanted).saturating_sub(self.quota);
        if over > 0 && self.cache_used() > 0 {
            let mut cached = self.cached_with_age();
            cached.sort_by_key(|(_, age, _)| std::cmp::Reverse(*age));
            let mut freed = 0;
            for (c, _, len) in cached {
                if freed >= over {
                    break;
                }
                self.remove_cached(&c);
                freed += len;
            }
        }
        let mut used = self.used.lock().expect("not poisoned");
        if used.all + wanted > self.quota {
            return Err(DiskError::Full { used: used.all, quota: self.quota, wanted });
        }
        Self::write_atomic(&path, data)?;
        used.all += wanted;
        Ok(())
    }

    fn cache_path(&self, hash: &Cid) -> PathBuf {
        self.dir.join("cache").join(hash.to_string())
    }

    /// Caches a segment that hashes to `hash`, if a quarter of the quota
    /// leaves room (false: not cached).
    pub fn put_cached(&self, hash: &Cid, data: &[u8]) -> bool {
        let path = self.cache_path(hash);
        if Cid::of(data) != *hash || path.exists() {
            return false;
        }
        let mut used = self.used.lock().expect("not poisoned");
        let wanted = data.len() as u64;
        if used.all + wanted > self.quota || used.cache + wanted > self.quota / 4 {
            return false;
        }
        if Self::write_atomic(&path, data).is_err() {
            return false;
        }
        used.all += wanted;
        used.cache += wanted;
        true
    }

    /// A cached segment, if held and intact; reading it marks it read now.
    pub fn get_cached(&self, hash: &Cid) -> Option<Vec<u8>> {
        let path = self.cache_path(hash);
        let data = std::fs::read(&path).ok()?;
        if Cid::of(&data) != *hash {
            log::warn!("store: cached segment {hash} is corrupt on disk; deleted");
            self.remove_cached(hash);
            return None;
        }
        let _ = std::fs::File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Some(data)
    }

    /// Cached segments: hash, time since last read, bytes.
    pub fn cached_with_age(&self) -> Vec<(Cid, std::time::Duration, u64)> {
        let Ok(d) = std::fs::read_dir(self.dir.join("cache")) else { return Vec::new() };
        d.flatten()
            .filter_map(|e| {
                let hash: Cid = e.file_name().to_str()?.parse().ok()?;
                let m = e.metadata().ok()?;
                Some((hash, m.modified().ok()?.elapsed().unwrap_or_default(), m.len()))
            })
            .collect()
    }

    pub fn remove_cached(&self, hash: &Cid) {
        let path = self.cache_path(hash);
        if let Ok(m) = std::fs::metadata(&path)
            && std::fs::remove_file(&path).is_ok()
        {
            let mut used = self.used.lock().expect("not poisoned");
            used.all = used.all.saturating_sub(m.len());
            used.cache = used.cache.saturating_sub(m.len());
        }
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
            used.all = used.all.saturating_sub(m.len());
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

    /// How long ago the manifest held here was last written.
    pub fn manifest_age(&self, object: &Cid) -> Option<std::time::Duration> {
        let m = std::fs::metadata(self.manifest_path(object)).ok()?;
        Some(m.modified().ok()?.elapsed().unwrap_or_default())
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

    #[test]
    fn cached_segments_use_a_quarter_of_the_quota_and_give_way_to_shards() {
        let d = tmp("cache");
        let s = ShardStore::open(&d, 36).unwrap();
        let (c1, c2, c3) = (b"cached-1".to_vec(), b"cached-2".to_vec(), b"cached-3".to_vec());
        assert!(!s.put_cached(&Cid::of(&c2), &c1), "wrong hash");
        assert!(s.put_cached(&Cid::of(&c1), &c1));
        assert!(!s.put_cached(&Cid::of(&c2), &c2), "over a quarter of 36 bytes");
        assert_eq!((s.used(), s.cache_used()), (8, 8));
        assert_eq!(s.get_cached(&Cid::of(&c1)), Some(c1.clone()));
        assert_eq!(ShardStore::open(&d, 36).unwrap().cache_used(), 8, "reopened");
        // 32 bytes of shards fit only once the cached segment is dropped.
        for i in 0..4u8 {
            let shard = vec![i; 8];
            s.put_shard(None, &Cid::of(&shard), &shard).unwrap();
        }
        assert_eq!((s.used(), s.cache_used()), (32, 0));
        assert_eq!(s.get_cached(&Cid::of(&c1)), None);
        assert!(!s.put_cached(&Cid::of(&c3), &c3), "no room left");
        s.remove_shard(&Cid::of(&[0u8; 8]));
        assert!(s.put_cached(&Cid::of(&c3), &c3));
        std::fs::write(d.join("cache").join(Cid::of(&c3).to_string()), b"tampered").unwrap();
        assert_eq!(s.get_cached(&Cid::of(&c3)), None, "a corrupt cached segment is not served");
        assert_eq!((s.used(), s.cache_used(), s.cached_with_age().len()), (24, 0, 0));
        let _ = std::fs::remove_dir_all(&d);
    }
}
