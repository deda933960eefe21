//! Content-addressed bytes as nodes hold them (issue 9): the identifiers
//! (CIDv1 over BLAKE3), the on-disk store of shards and manifests with its
//! quota, and the `/p2p-nos/store/1.0.0` messages. A leaf: the swarm
//! (`net::blobs`) answers other nodes from it, the storage component
//! (`storage`) puts, gets and repairs objects with it.

pub mod cid;
pub mod disk;
pub mod proto;

pub use cid::Cid;
pub use disk::{DiskError, ShardStore};
