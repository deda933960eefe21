//! Everything the kernel program and userspace must agree on: the docs/WIRE.md
//! header and payload layouts, BPF map names, sizes, key/value layouts and the
//! STATS counter indices. `no_std` so that `p2p-ebpf` can use it; feature
//! `user` adds `aya::Pod` impls, a codec and the routing-table builder.
#![cfg_attr(not(feature = "user"), no_std)]

pub mod auth;
pub mod counters;
pub mod maps;
pub mod net;
pub mod route;
pub mod wire;

#[cfg(feature = "user")]
pub mod codec;
#[cfg(feature = "user")]
pub mod id;
#[cfg(feature = "user")]
pub mod route_build;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is #[repr(C)], has explicit padding fields and
    // a compile-time size assertion, so any byte pattern is a valid value.
    unsafe impl aya::Pod for crate::maps::Config {}
    unsafe impl aya::Pod for crate::maps::PeerEntry {}
    unsafe impl aya::Pod for crate::maps::TrieNode {}
    unsafe impl aya::Pod for crate::maps::IfaceAddrs {}
    unsafe impl aya::Pod for crate::maps::BlockEntry {}
    unsafe impl aya::Pod for crate::maps::RateBudget {}
    unsafe impl aya::Pod for crate::maps::RateBucket {}
    unsafe impl aya::Pod for crate::maps::SourceStats {}
    unsafe impl aya::Pod for crate::maps::LinkKey {}
    unsafe impl aya::Pod for crate::maps::LinkSecret {}
    unsafe impl aya::Pod for crate::maps::ReplayKey {}
    unsafe impl aya::Pod for crate::maps::ReplayWindow {}
    unsafe impl aya::Pod for crate::maps::TxSeq {}
    unsafe impl aya::Pod for crate::maps::Counter {}
    unsafe impl aya::Pod for crate::maps::Event {}
    unsafe impl aya::Pod for crate::maps::NextHopCache {}
}
