//! Harness for the privileged end-to-end tests (`tests/tests/*.rs`) and for
//! `cargo xtask run`: network namespaces, veth links and bridges that delete
//! themselves on drop ([`netns`]), the LAN and chain topologies of DESIGN.md
//! ([`topo`]), controller processes that are stopped on drop ([`node`]), and
//! packets crafted with `p2p_common::codec` sent from a socket inside a
//! namespace ([`traffic`]). [`csum`] is the one Internet-checksum helper of
//! the tests and the benchmark tool.
//!
//! Everything a test makes carries the prefix `p2pt-<pid>-`, so that
//! [`env::cleanup_stale`] can remove what a killed run left behind.

pub mod csum;
pub mod env;
pub mod netns;
pub mod node;
pub mod testbed;
pub mod topo;
pub mod traffic;
pub mod util;

pub use env::{Env, require};
pub use netns::Netns;
pub use node::{Controller, Node, NodeSpec, XdpPass};
