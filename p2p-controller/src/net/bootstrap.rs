//! Joining: `--bootstrap` targets dialled until one answers, with
//! exponential back-off (1 s, 2 s, 4 s … 60 s), and again whenever the
//! routing table runs empty; Kademlia bootstraps once the first target is
//! identified and after deaths. A node with no reachable bootstrap keeps
//! trying and says so; it never exits for it.

use std::time::{Duration, Instant};

use libp2p::kad::{self, QueryId};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId};

use super::event_loop::EventLoop;

use crate::api::BootstrapStatus;

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

    pub fn status(&self, now: Instant) -> BootstrapStatus {
        BootstrapStatus {
            addr: self.addr.to_string(),
            peer_id: self.peer.map(|p| p.to_string()),
            connected: self.connected,
            reached: self.reached,
            failures: self.failures,
            last_error: self.last_error.clone(),
            next_retry_ms: (!self.connected && self.dialing.is_none())
                .then(|| self.next_try.saturating_duration_since(now).as_millis() as u64),
        }
    }
}

impl EventLoop {
    /// Dials targets that never answered, with back-off, and all of them
    /// again whenever the routing table has run empty; runs the
    /// re-bootstrap that deaths scheduled.
    pub(super) fn tick_bootstrap(&mut self, now: Instant) {
        let empty = self.table().is_empty();
        for i in 0..self.targets.len() {
            let t = &self.targets[i];
            // Reached once and the table is healthy: Kademlia has taken over.
            let settled = t.reached && !empty;
            if !t.due(now) || settled {
                continue;
            }
            let opts = match t.peer {
                Some(p) => DialOpts::peer_id(p).addresses(vec![t.addr.clone()]).build(),
                None => DialOpts::unknown_peer_id().address(t.addr.clone()).build(),
            };
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => self.targets[i].dialing = Some(id),
                Err(e) => {
                    let err = crate::dataplane::error_chain(&e);
                    let wait = self.targets[i].on_dial_failed(now, err.clone());
                    log::warn!("bootstrap {}: {err}; retrying in {} s", self.targets[i].addr, wait.as_secs());
                }
            }
        }
        if self.rebootstrap_at.is_some_and(|t| now >= t) {
            self.rebootstrap_at = None;
            self.refill_from_connected();
            match self.kad().bootstrap() {
                Ok(id) => {
                    self.bootstrap_queries.insert(id);
                }
                Err(e) => log::debug!("re-bootstrap after deaths: {e:?}"),
            }
        }
    }

    /// A peer that speaks our protocol was identified: if it is a bootstrap
    /// target and the table is (nearly) empty, Kademlia bootstraps through it.
    pub(super) fn bootstrap_through(&mut self, peer: PeerId) {
        let via_bootstrap = self.targets.iter().any(|t| t.peer == Some(peer) && t.connected);
        if via_bootstrap && self.table().len() <= 1 {
            match self.kad().bootstrap() {
                Ok(id) => {
                    self.bootstrap_queries.insert(id);
                    log::info!("Kademlia bootstrap started through {peer}");
                }
                Err(e) => log::warn!("Kademlia bootstrap: {e:?}"),
            }
        }
    }

    pub(super) fn on_bootstrap_progress(&mut self, id: QueryId, r: kad::BootstrapResult, last: bool) {
        // Ours are reported at info; the periodic and automatic ones (same
        // events, other query ids) at debug.
        let ours = self.bootstrap_queries.contains(&id);
        let n = self.table().len();
        match r {
            Ok(_) if last && ours => log::info!("Kademlia bootstrap finished: {n} peers in the routing table"),
            Ok(_) if last => log::debug!("periodic Kademlia bootstrap finished: {n} peers"),
            Err(e) if ours => log::warn!("Kademlia bootstrap: {e}"),
            Err(e) => log::debug!("periodic Kademlia bootstrap: {e}"),
            Ok(_) => {}
        }
        if last {
            self.bootstrap_queries.remove(&id);
        }
        self.touch();
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
