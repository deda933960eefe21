//! The controller's error type: every failure a user can cause gets a
//! message that says what to do.

use std::path::PathBuf;

use crate::dataplane::DataplaneError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("{0}")]
    Usage(String),
    #[error("missing privilege: {0}")]
    Privilege(String),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("network namespace {name}: {reason}")]
    Netns { name: String, reason: String },
    #[error("interface {0} does not exist in this network namespace")]
    NoInterface(String),
    #[error(
        "UDP port {port} is already in use (another node or program listens on it); pick another with --overlay-port"
    )]
    PortInUse { port: u16 },
    #[error("instance {instance} is already running (pid {pid}); stop it or use another --instance")]
    AlreadyRunning { instance: String, pid: String },
    #[error("cannot reach the daemon at {path}: {reason}. Is `p2p-controller run --instance {instance}` running?")]
    Daemon { path: PathBuf, instance: String, reason: String },
    #[error("{0}")]
    Remote(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
