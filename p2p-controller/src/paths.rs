//! Every filesystem location the controller uses, in one place.

use std::path::PathBuf;

/// Root of all pins; each instance pins under `<root>/<instance>/`.
pub const BPFFS: &str = "/sys/fs/bpf";
pub const PIN_ROOT: &str = "/sys/fs/bpf/p2p";
pub const STATE_ROOT: &str = "/var/lib/p2p-nos";
pub const RUN_ROOT: &str = "/run/p2p-nos";
/// ed25519 key, protobuf-encoded (libp2p-identity), mode 0600.
pub const KEY_FILE: &str = "node.key";
/// Trust on first use: peer IDs first seen at `--bootstrap` addresses, in
/// the state directory (net::known).
pub const KNOWN_PEERS_FILE: &str = "known_peers";
/// Shards and manifests this node stores, under the state directory.
pub const STORE_DIR: &str = "store";
/// Where `ca sign` and `ca revoke` look for the network's CA by default.
pub const CA_DIR: &str = "/var/lib/p2p-nos/ca";
/// The files of a CA directory (docs/TRUST.md): the root key pair
/// (protobuf-encoded like node.key, mode 0600), the trust anchor to give
/// every node, the log of issued certificates, the signed revocation list.
pub const CA_ROOT_KEY: &str = "root.key";
pub const CA_ROOT_PUB: &str = "root.pub";
pub const CA_ISSUED: &str = "issued.jsonl";
pub const CA_REVOCATIONS: &str = "revocations";

pub fn pin_dir(instance: &str) -> PathBuf {
    PathBuf::from(PIN_ROOT).join(instance)
}

pub fn state_dir(instance: &str) -> PathBuf {
    PathBuf::from(STATE_ROOT).join(instance)
}

pub fn control_socket(instance: &str) -> PathBuf {
    PathBuf::from(RUN_ROOT).join(format!("{instance}.sock"))
}

/// Held (flock) by the running controller of an instance.
pub fn lock_file(instance: &str) -> PathBuf {
    PathBuf::from(RUN_ROOT).join(format!("{instance}.lock"))
}

/// What a running instance attached, so that a restart after a crash can
/// clean up after it.
pub fn run_state_file(instance: &str) -> PathBuf {
    PathBuf::from(RUN_ROOT).join(format!("{instance}.json"))
}

/// Instance names become path components: keep them tame.
pub fn valid_instance(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.')
}
