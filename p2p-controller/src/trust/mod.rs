//! Membership trust (docs/TRUST.md): the network's root key, the
//! certificates it signs for members, and its revocation list. `cert` is
//! the encoding and its checks; `ca` the authority's directory.

pub mod ca;
pub mod cert;
pub mod kx;
pub mod record;
pub mod reply;

pub use cert::{Armored, Certificate, Revocations, RootKey, TrustError};
