//! Kademlia's record store, shared: the swarm task owns Kademlia, but the
//! overlay thread answers LOOKUPs from the same records (docs/WIRE.md: "the
//! key's owner answers … from its Kademlia record store").

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use libp2p::PeerId;
use libp2p::kad::store::{MemoryStore, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use p2p_common::id::NodeId;

/// A [`MemoryStore`] behind a mutex, with an index from each record's
/// point in the key space to its key (a "who owns this point" LOOKUP must
/// not hash every record); clones share it.
#[derive(Clone)]
pub struct SharedStore(Arc<Mutex<Inner>>);

struct Inner {
    store: MemoryStore,
    by_point: HashMap<NodeId, RecordKey>,
}

impl SharedStore {
    pub fn new(local: PeerId) -> Self {
        SharedStore(Arc::new(Mutex::new(Inner { store: MemoryStore::new(local), by_point: HashMap::new() })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The unexpired value stored under record key `key` whose point in the
    /// key space is `key_id`. An empty `key` (a "who owns this point"
    /// LOOKUP) matches any record at that point.
    pub fn value_at(&self, key_id: &NodeId, key: &[u8]) -> Option<Vec<u8>> {
        let inner = self.lock();
        let key = if key.is_empty() {
            inner.by_point.get(key_id)?.clone()
        } else if NodeId::from_record_key(key) == *key_id {
            RecordKey::new(&key)
        } else {
            return None;
        };
        let r = inner.store.get(&key).filter(|r| !r.is_expired(Instant::now()))?;
        // The data, out of its signed envelope (verified when it was stored).
        crate::trust::record::open(r.key.as_ref(), &r.value, None).ok().map(|o| o.data.to_vec())
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.lock().by_point.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RecordStore for SharedStore {
    type RecordsIter<'a> = std::vec::IntoIter<Cow<'a, Record>>;
    type ProvidedIter<'a> = std::vec::IntoIter<Cow<'a, ProviderRecord>>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.lock().store.get(k).map(|r| Cow::Owned(r.into_owned()))
    }

    fn put(&mut self, r: Record) -> Result<()> {
        let mut inner = self.lock();
        let (point, key) = (NodeId::from_record_key(r.key.as_ref()), r.key.clone());
        inner.store.put(r)?;
        inner.by_point.insert(point, key);
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        let mut inner = self.lock();
        inner.store.remove(k);
        let point = NodeId::from_record_key(k.as_ref());
        if inner.by_point.get(&point) == Some(k) {
            inner.by_point.remove(&point);
        }
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.lock().store.records().map(|r| Cow::Owned(r.into_owned())).collect::<Vec<_>>().into_iter()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        self.lock().store.add_provider(record)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.lock().store.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.lock().store.provided().map(|r| Cow::Owned(r.into_owned())).collect::<Vec<_>>().into_iter()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.lock().store.remove_provider(k, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_records_by_key_and_by_point() {
        let mut s = SharedStore::new(PeerId::random());
        s.put(Record::new(RecordKey::new(&"alpha"), b"one".to_vec())).unwrap();
        let id = NodeId::from_record_key(b"alpha");
        let clone = s.clone();
        assert_eq!(clone.value_at(&id, b"alpha"), Some(b"one".to_vec()));
        assert_eq!(clone.value_at(&id, b""), Some(b"one".to_vec()), "empty key: whatever lives at the point");
        assert_eq!(clone.value_at(&id, b"beta"), None, "key does not hash to the point");
        assert_eq!(clone.value_at(&NodeId::from_record_key(b"beta"), b"beta"), None);
        let mut expired = Record::new(RecordKey::new(&"old"), b"x".to_vec());
        expired.expires = Some(Instant::now() - std::time::Duration::from_secs(1));
        s.put(expired).unwrap();
        assert_eq!(clone.value_at(&NodeId::from_record_key(b"old"), b"old"), None, "expired");
        assert_eq!(clone.len(), 2);
        s.remove(&RecordKey::new(&"alpha"));
        assert_eq!(clone.value_at(&id, b""), None, "removed from the index too");
        assert_eq!(clone.len(), 1);
    }
}
