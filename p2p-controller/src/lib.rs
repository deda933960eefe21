//! p2p-nos node controller. `dataplane` is the only module that touches aya
//! and the BPF maps; `userspace` is the same forwarding rules in this
//! process (the fallback datapath). The daemon (`daemon`) wires the
//! components together: `control` (the API), `net` (the libp2p swarm),
//! `liveness`, `overlay` (the overlay socket) and `mapsync` (the only owner
//! of the loaded `dataplane`).
pub mod api;
pub mod blobs;
pub mod ca_cmd;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod e2e;
pub mod error;
pub mod files;
pub mod identity;
pub mod liveness;
pub mod maps_cmd;
pub mod mapsync;
pub mod metrics;
pub mod net;
pub mod overlay;
pub mod paths;
pub mod reputation;
pub mod storage;
pub mod store_cmd;
pub mod sys;
pub mod trust;
pub mod units;
pub mod userspace;
