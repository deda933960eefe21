//! p2p-nos node controller. `dataplane` is the only module that touches aya
//! and the BPF maps.
pub mod dataplane;
