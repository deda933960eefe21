//! `/p2p-nos/store/1.0.0`: request-response in CBOR over the nodes'
//! authenticated libp2p connections (so every request's sender is a known
//! peer ID). Shards and manifests are verified by their receivers against
//! the CIDs that name them; nothing is taken on trust.

use serde::{Deserialize, Serialize};

use super::Cid;

pub const PROTOCOL: &str = "/p2p-nos/store/1.0.0";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StoreRequest {
    /// Hold this shard (it must hash to `cid`) of `object` (unknown while
    /// the object is still being put: `Hold` follows).
    PutShard {
        object: Option<Cid>,
        cid: Cid,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    GetShard {
        cid: Cid,
    },
    /// The shards this node was given during a put belong to `object`.
    Hold {
        object: Cid,
        shards: Vec<Cid>,
    },
    /// Hold the manifest of `object` (JSON, see `storage::manifest`); a
    /// holder keeps the highest revision it was given.
    PutManifest {
        object: Cid,
        #[serde(with = "serde_bytes")]
        manifest: Vec<u8>,
    },
    GetManifest {
        object: Cid,
    },
    /// The owner removes `object`: its manifest and these shards go.
    Remove {
        object: Cid,
        shards: Vec<Cid>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StoreResponse {
    Done,
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    NotFound,
    Refused(String),
}
