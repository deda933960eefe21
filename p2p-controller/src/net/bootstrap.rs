//! `--bootstrap` targets: dialled until one answers, with exponential
//! back-off (1 s, 2 s, 4 s … 60 s), and again whenever the routing table
//! runs empty. A node with no reachable bootstrap keeps trying and says so;
//! it never exits for it.

use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use serde_json::{Value, json};

pub const FIRST_RETRY: Duration = Duration::from_secs(1);
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// Delay before attempt `failures + 1`.
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    FIRST_RETRY.saturating_mul(1u32 << (failures - 1).min(16)).min(MAX_RETRY)
}

#[derive(Debug)]
pub struct Target {
    pub addr: Multiaddr,
    /// From `/p2p/<id>` in the address, else learnt on connection.
    pub peer: Option<PeerId>,
    pub failures: u32,
    pub next_try: Instant,
    pub dialing: Option<ConnectionId>,
    pub connected: bool,
    /// Connected at least once.
    pub reached: bool,
    pub last_error: Option<String>,
}

impl Target {
    pub fn new(addr: Multiaddr, now: Instant) -> Target {
        let peer = addr.iter().find_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        });
        Target {
            addr,
            peer,
            failures: 0,
            next_try: now,
            dialing: None,
            connected: false,
            reached: false,
            last_error: None,
        }
    }

    /// Due for a dial: not connected, not dialling, back-off elapsed.
    pub fn due(&self, now: Instant) -> bool {
        !self.connected && self.dialing.is_none() && now >= self.next_try
    }

    pub fn on_dial_failed(&mut self, now: Instant, error: String) -> Duration {
        self.dialing = None;
        self.failures += 1;
        let wait = backoff(self.failures);
        self.next_try = now + wait;
        self.last_error = Some(error);
        wait
    }

    pub fn on_connected(&mut self, peer: PeerId) {
        self.dialing = None;
        self.connected = true;
        self.reached = true;
        self.failures = 0;
        self.last_error = None;
        self.peer = Some(peer);
    }

    /// The connection went away: dial again (now if it had been up).
    pub fn on_lost(&mut self, now: Instant) {
        self.connected = false;
        self.next_try = now + backoff(self.failures);
    }

    pub fn status(&self, now: Instant) -> Value {
        json!({
            "addr": self.addr.to_string(),
            "peer_id": self.peer.map(|p| p.to_string()),
            "connected": self.connected,
            "reached": self.reached,
            "failures": self.failures,
            "last_error": self.last_error,
            "next_retry_ms": (!self.connected && self.dialing.is_none())
                .then(|| self.next_try.saturating_duration_since(now).as_millis() as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let secs: Vec<u64> = (0..10).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(secs, vec![0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn retries_until_connected() {
        let t0 = Instant::now();
        let mut t = Target::new("/ip4/10.99.0.1/tcp/9471".parse().unwrap(), t0);
        assert!(t.peer.is_none());
        assert!(t.due(t0));
        t.dialing = Some(ConnectionId::new_unchecked(1));
        assert!(!t.due(t0), "one dial at a time");
        assert_eq!(t.on_dial_failed(t0, "refused".into()), Duration::from_secs(1));
        assert!(!t.due(t0) && t.due(t0 + Duration::from_secs(1)));
        assert_eq!(t.on_dial_failed(t0, "refused".into()), Duration::from_secs(2));
        let p = PeerId::random();
        t.on_connected(p);
        assert!(!t.due(t0 + Duration::from_secs(3600)));
        assert_eq!((t.failures, t.peer, t.reached), (0, Some(p), true));
        t.on_lost(t0);
        assert!(t.due(t0));
        let id = PeerId::random();
        let with_id = Target::new(format!("/ip4/10.99.0.1/tcp/9471/p2p/{id}").parse().unwrap(), t0);
        assert_eq!(with_id.peer, Some(id));
    }
}
