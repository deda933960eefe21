//! p2p-nos node controller. `dataplane` is the only module that touches aya
//! and the BPF maps.
pub mod cli;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod dataplane;
pub mod error;
pub mod files;
pub mod identity;
pub mod maps_cmd;
pub mod mapsync;
pub mod net;
pub mod paths;
pub mod relay;
pub mod sys;
