//! The churn detector's state machine, free of I/O and of the clock (the
//! task in `mod.rs` feeds it time, evidence and results, and carries out
//! the actions it returns), so that its timing is unit-tested exactly.
//!
//! Per routed peer (SWIM, with Lifeguard's "any traffic refutes"):
//!
//! - **alive**: any evidence (a packet the peer sent itself, seen by XDP in
//!   LAST_SEEN; a PONG; an indirect probe's ack) keeps it so. Silent for
//!   `probe_interval`: a direct PING (probe).
//! - The probe unanswered after `probe_timeout` (at least 4× its RTT):
//!   indirect probes, up to `helpers` other peers are asked to PING it
//!   (libp2p request-response), while direct PINGs go on.
//! - No ack within `indirect_timeout` (or nobody to ask): **suspect**.
//! - Suspect and still silent after `suspicion`: **dead**; the control plane
//!   takes it out of the maps and Kademlia. Any evidence before that: alive.
//! - A dead peer is PINGed every `dead_probe_interval` for `dead_memory`:
//!   a PONG brings it back at once (the control plane decides whether it
//!   flaps too much to be routed again yet).
//!
//! Why these times: on a LAN the RTT is well under a millisecond, so the
//! 100 ms probe timeout is > 100× the RTT, room for a loaded host's
//! scheduling; a live peer is only declared dead if its probe, every
//! indirect probe and every PING of the suspicion window (4 at 50 ms) are
//! lost: at 1% loss per link, about 0.02 × 0.03³ × 0.02⁴ ≈ 10⁻¹⁴ per
//! episode. Worst case from the last packet to "dead": 100 (silence) +
//! 100 (probe) + 150 (indirect) + 200 (suspicion) + 3 ticks of 25 ms
//! ≈ 625 ms, inside the 1 s target with room for map sync. A peer that
//! has not answered since it entered the maps is allowed 300 ms of silence
//! (its first PINGs may wait for a neighbour entry) instead of 100 + 100:
//! found dead about 700 ms after it entered, if it never answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2p_common::id::NodeId;

use crate::api::{DetectionHistogram, Histogram, PeerLiveness};

/// Silence allowed a peer that has not answered since it entered the maps
/// (or came back) before its first miss counts. Before, such a peer was
/// re-PINGed so often that no PING ever timed out: one that went silent
/// right after entering the maps was never found dead.
const FIRST_ANSWER_GRACE: Duration = Duration::from_millis(300);

/// The detector's clock settings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub indirect_timeout: Duration,
    pub suspicion: Duration,
    pub helpers: usize,
    pub dead_probe_interval: Duration,
    pub dead_memory: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            probe_interval: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(100),
            indirect_timeout: Duration::from_millis(150),
            suspicion: Duration::from_millis(200),
            helpers: 3,
            dead_probe_interval: Duration::from_millis(500),
            dead_memory: Duration::from_secs(600),
        }
    }
}

/// Where a piece of evidence, or a verdict, came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A packet the peer sent itself, seen by the datapath.
    Passive,
    /// A PONG to one of our PINGs.
    Probe,
    /// Another peer PINGed it for us.
    Indirect,
    /// Its libp2p connection closed and a redial was refused.
    Connection,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Passive => "passive",
            Source::Probe => "probe",
            Source::Indirect => "indirect",
            Source::Connection => "connection",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Alive,
    /// Since when.
    Suspect(Instant),
    Dead,
}

#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    /// Routed now (in the maps); dead peers stay here, unrouted, to be
    /// PINGed until they answer or are forgotten.
    routed: bool,
    state: State,
    /// Latest evidence, and its source.
    heard: Instant,
    heard_from: Source,
    /// When it was declared dead, and by what.
    died: Option<(Instant, Source)>,
    /// Times declared dead while known here, and the last time (kept
    /// after it comes back: its uptime record, for storage placement).
    deaths: u32,
    last_death: Option<Instant>,
    /// Answered (any evidence) since it entered the maps.
    answered: bool,
    /// Outstanding direct PING: msg_id and when sent.
    probe: Option<(u64, Instant)>,
    /// An indirect round started at.
    indirect: Option<Instant>,
    rtt: Option<Duration>,
}

/// What the task must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Ping {
        node: NodeId,
        addr: SocketAddr,
        msg_id: u64,
    },
    /// Ask `helpers` to PING `node` at `addr` for us.
    Indirect {
        node: NodeId,
        addr: SocketAddr,
        helpers: Vec<NodeId>,
    },
    /// Take it out of the maps.
    Dead {
        node: NodeId,
        reason: String,
        latency: Duration,
    },
    /// A dead peer answered: it may be routed to again.
    Alive {
        node: NodeId,
    },
}

pub struct Detector {
    timing: Timing,
    peers: HashMap<NodeId, Peer>,
    next_msg_id: u64,
    hist: Histogram,
}

/// Upper bounds (ms) of the detection-latency histogram's buckets; the
/// last bucket is everything slower.
pub const HIST_BOUNDS_MS: [u64; 7] = [250, 500, 750, 1000, 1500, 2000, 3000];

impl Detector {
    pub fn new(timing: Timing) -> Detector {
        Detector {
            timing,
            peers: HashMap::new(),
            next_msg_id: rand::random::<u64>() | 1,
            hist: Histogram::new(&HIST_BOUNDS_MS),
        }
    }

    fn msg_id(&mut self) -> u64 {
        self.next_msg_id = self.next_msg_id.wrapping_add(2);
        self.next_msg_id
    }

    /// The peers the maps route to now. New ones start alive (their first
    /// PING goes out at once: it also resolves XDP's neighbour entry); one
    /// that left the maps without a verdict is forgotten; dead ones are
    /// kept to be PINGed back.
    pub fn set_routed(&mut self, routed: &[(NodeId, SocketAddr)], now: Instant) {
        let current: HashMap<NodeId, SocketAddr> = routed.iter().copied().collect();
        self.peers.retain(|id, p| {
            p.routed = current.get(id) == Some(&p.addr);
            p.routed || p.state == State::Dead
        });
        for (id, addr) in current {
            let p = self.peers.entry(id).or_insert(Peer {
                addr,
                routed: true,
                state: State::Alive,
                heard: now,
                heard_from: Source::Probe,
                died: None,
                deaths: 0,
                last_death: None,
                answered: false,
                probe: None,
                indirect: None,
                rtt: None,
            });
            if p.addr != addr {
                p.addr = addr;
            }
            if !p.routed {
                // Back in the maps (the control plane revived it).
                p.routed = true;
                p.state = State::Alive;
                p.heard = now;
                p.answered = false;
                p.probe = None;
                p.indirect = None;
            }
        }
    }

    /// Evidence that `node` lived at `at`. A dead one answers: `Alive`.
    pub fn evidence(&mut self, node: NodeId, at: Instant, source: Source) -> Option<Action> {
        let p = self.peers.get_mut(&node)?;
        if at <= p.heard && p.answered {
            return None;
        }
        p.heard = p.heard.max(at);
        p.heard_from = source;
        p.answered = true;
        p.probe = None;
        p.indirect = None;
        match p.state {
            State::Dead => {
                p.state = State::Alive;
                p.died = None;
                Some(Action::Alive { node })
            }
            _ => {
                p.state = State::Alive;
                None
            }
        }
    }

    /// A PONG: evidence if it answers one of our PINGs (its RTT sampled).
    pub fn pong(&mut self, msg_id: u64, from: NodeId, at: Instant) -> Option<Action> {
        let p = self.peers.get_mut(&from)?;
        if let Some((id, sent)) = p.probe
            && id == msg_id
        {
            let sample = at.saturating_duration_since(sent);
            p.rtt = Some(match p.rtt {
                Some(r) => (r * 7 + sample) / 8,
                None => sample,
            });
        } else if msg_id & 1 == 0 || !self.is_ours(msg_id) {
            // Not a liveness PING of ours (the control API's `ping`).
            return None;
        }
        self.evidence(from, at, Source::Probe)
    }

    /// Whether `msg_id` is in the range this detector has handed out
    /// (odd, at most 2^20 behind): late PONGs of earlier probes count.
    fn is_ours(&self, msg_id: u64) -> bool {
        self.next_msg_id.wrapping_sub(msg_id) < 1 << 21
    }

    /// An indirect round's outcome.
    pub fn indirect_result(&mut self, node: NodeId, acked: bool, now: Instant) -> Option<Action> {
        if acked {
            return self.evidence(node, now, Source::Indirect);
        }
        let p = self.peers.get_mut(&node)?;
        if p.indirect.is_some() && p.state == State::Alive {
            p.indirect = None;
            p.state = State::Suspect(now);
        }
        None
    }

    /// The control plane routes to a peer this detector found dead again
    /// (a new connection proved it alive). The detector hears of it here,
    /// not from the maps alone: a removal and re-adding between two looks
    /// at the routing table would leave it dead here, routed there, and
    /// never found dead again. The connection is its sign of life (its
    /// datapath is up before its swarm): silent from now on, it is found
    /// dead within the usual bound.
    pub fn revived(&mut self, node: NodeId, now: Instant) {
        if let Some(p) = self.peers.get_mut(&node)
            && p.state == State::Dead
        {
            p.state = State::Alive;
            p.died = None;
            p.heard = now;
            p.answered = true;
            p.probe = None;
            p.indirect = None;
        }
    }

    /// The control plane found it dead itself (a refused redial).
    pub fn connection_dead(&mut self, node: NodeId, now: Instant) {
        if let Some(p) = self.peers.get_mut(&node)
            && p.state != State::Dead
        {
            let latency = now.saturating_duration_since(p.heard);
            p.state = State::Dead;
            p.died = Some((now, Source::Connection));
            p.deaths += 1;
            p.last_death = Some(now);
            self.hist_record(latency);
        }
    }

    fn hist_record(&mut self, latency: Duration) {
        self.hist.record(latency.as_millis() as u64);
    }

    /// Advances every peer's state to `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let t = self.timing;
        let mut out = Vec::new();
        let alive_routed: Vec<(NodeId, Instant)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.routed && p.state == State::Alive && p.answered)
            .map(|(id, p)| (*id, p.heard))
            .collect();
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            let msg_id = self.msg_id();
            let p = self.peers.get_mut(&id).expect("listed");
            let timeout = t.probe_timeout.max(p.rtt.unwrap_or_default() * 4);
            // A peer that never answered since it entered the maps has
            // FIRST_ANSWER_GRACE of silence before a miss counts (its first
            // PINGs may wait for a neighbour entry); its PINGs go out every
            // probe interval meanwhile, each missed after `timeout`.
            let grace = if p.answered { timeout } else { timeout.max(FIRST_ANSWER_GRACE) };
            let silent = now.saturating_duration_since(p.heard);
            let probe_due = |p: &Peer, every: Duration| {
                p.probe.is_none_or(|(_, sent)| now.saturating_duration_since(sent) >= every)
            };
            match p.state {
                State::Dead => {
                    let forgotten = p.died.is_some_and(|(at, _)| now.saturating_duration_since(at) > t.dead_memory);
                    if forgotten && !p.routed {
                        self.peers.remove(&id);
                    } else if probe_due(p, t.dead_probe_interval) {
                        p.probe = Some((msg_id, now));
                        out.push(Action::Ping { node: id, addr: p.addr, msg_id });
                    }
                }
                State::Alive => {
                    if let Some(started) = p.indirect {
                        if now.saturating_duration_since(started) >= t.indirect_timeout {
                            p.indirect = None;
                            p.state = State::Suspect(now);
                        }
                    } else if let Some((_, sent)) = p.probe
                        && now.saturating_duration_since(sent) >= timeout
                        && silent >= grace
                    {
                        // A direct miss: ask others (the freshest first).
                        let mut helpers: Vec<(NodeId, Instant)> =
                            alive_routed.iter().filter(|(h, _)| *h != id).copied().collect();
                        helpers.sort_by_key(|(_, heard)| std::cmp::Reverse(*heard));
                        let helpers: Vec<NodeId> = helpers.into_iter().take(t.helpers).map(|(h, _)| h).collect();
                        if helpers.is_empty() {
                            p.state = State::Suspect(now);
                        } else {
                            p.indirect = Some(now);
                            out.push(Action::Indirect { node: id, addr: p.addr, helpers });
                        }
                    }
                    let p = self.peers.get_mut(&id).expect("listed");
                    // Never answered yet: PINGed every probe interval (new
                    // peers, and the neighbour entry XDP needs).
                    let every =
                        if p.answered { t.probe_interval } else { t.probe_interval.min(Duration::from_millis(200)) };
                    if (silent >= t.probe_interval || !p.answered) && probe_due(p, every) {
                        p.probe = Some((msg_id, now));
                        out.push(Action::Ping { node: id, addr: p.addr, msg_id });
                    }
                }
                State::Suspect(since) => {
                    if now.saturating_duration_since(since) >= t.suspicion {
                        p.state = State::Dead;
                        p.died = Some((now, Source::Probe));
                        p.deaths += 1;
                        p.last_death = Some(now);
                        let latency = silent;
                        out.push(Action::Dead {
                            node: id,
                            reason: format!(
                                "silent for {} ms: no PONG to direct or indirect probes",
                                latency.as_millis()
                            ),
                            latency,
                        });
                        self.hist_record(latency);
                    } else if probe_due(p, t.probe_interval / 2) {
                        p.probe = Some((msg_id, now));
                        out.push(Action::Ping { node: id, addr: p.addr, msg_id });
                    }
                }
            }
        }
        out
    }

    /// Routed peers, and whether every one has answered.
    pub fn answered(&self) -> (usize, usize) {
        let routed = self.peers.values().filter(|p| p.routed);
        let (mut n, mut a) = (0, 0);
        for p in routed {
            n += 1;
            a += usize::from(p.answered);
        }
        (a, n)
    }

    pub fn histogram(&self) -> DetectionHistogram {
        (&self.hist).into()
    }

    /// What `peers` shows of each peer the detector knows.
    pub fn view(&self, now: Instant) -> Vec<(NodeId, PeerLiveness)> {
        self.peers
            .iter()
            .map(|(id, p)| {
                let state = match p.state {
                    State::Alive => "alive",
                    State::Suspect(_) => "suspect",
                    State::Dead => "dead",
                };
                (
                    *id,
                    PeerLiveness {
                        state: state.into(),
                        last_seen_ms: p.answered.then(|| now.saturating_duration_since(p.heard).as_millis() as u64),
                        rtt_us: p.rtt.map(|r| r.as_micros() as u64),
                        source: match p.died {
                            Some((_, s)) => s.name().into(),
                            None => p.heard_from.name().into(),
                        },
                        deaths: p.deaths,
                        last_death_ms: p.last_death.map(|t| now.saturating_duration_since(t).as_millis() as u64),
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn node(n: u8) -> NodeId {
        NodeId([n; 32])
    }
    fn addr(n: u8) -> SocketAddr {
        SocketAddr::new([10, 0, 0, n].into(), 9470)
    }

    /// Runs ticks every 25 ms from `from` to `to`, answering nothing;
    /// returns the actions with the time they were taken.
    fn run(d: &mut Detector, from: Instant, to: Instant) -> Vec<(Duration, Action)> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            out.extend(d.tick(t).into_iter().map(|a| (t - from, a)));
            t += 25 * MS;
        }
        out
    }

    fn answer_pings(d: &mut Detector, actions: &[Action], at: Instant) {
        for a in actions {
            if let Action::Ping { node, msg_id, .. } = a {
                d.pong(*msg_id, *node, at);
            }
        }
    }

    #[test]
    fn a_silent_peer_is_declared_dead_within_the_bound_via_indirect_probes() {
        let t0 = Instant::now();
        let mut d = Detector::new(Timing::default());
        d.set_routed(&[(node(1), addr(1)), (node(2), addr(2))], t0);
        let first = d.tick(t0);
        assert_eq!(first.iter().filter(|a| matches!(a, Action::Ping { .. })).count(), 2, "new peers PINGed at once");
        answer_pings(&mut d, &first, t0 + MS);
        // Node 2 keeps talking (passive evidence); node 1 goes silent.
        let mut t = t0 + 25 * MS;
        let mut dead_at = None;
        let mut indirect = None;
        while t < t0 + 2000 * MS && dead_at.is_none() {
            d.evidence(node(2), t, Source::Passive);
            for a in d.tick(t) {
                match a {
                    Action::Indirect { node: n, helpers, .. } => {
                        assert_eq!((n, helpers), (node(1), vec![node(2)]));
                        indirect = Some(t - t0);
                    }
                    Action::Dead { node: n, .. } => {
                        assert_eq!(n, node(1));
                        dead_at = Some(t - t0);
                    }
                    _ => {}
                }
            }
            t += 25 * MS;
        }
        let dead_at = dead_at.expect("declared dead");
        assert!(indirect.is_some_and(|i| i < dead_at), "indirect probes before the verdict");
        assert!(dead_at <= 650 * MS, "dead after {dead_at:?} of silence (bound 625 ms + a tick)");
        assert!(dead_at >= 400 * MS, "not before probe + indirect + suspicion ({dead_at:?})");
        assert_eq!(d.histogram().detections, 1);
    }

    #[test]
    fn any_evidence_during_suspicion_refutes_it() {
        let t0 = Instant::now();
        let mut d = Detector::new(Timing::default());
        d.set_routed(&[(node(1), addr(1))], t0);
        let first = d.tick(t0);
        answer_pings(&mut d, &first, t0);
        // Alone (no helpers): a direct miss makes it suspect.
        let acts = run(&mut d, t0 + 25 * MS, t0 + 300 * MS);
        assert!(acts.iter().all(|(_, a)| !matches!(a, Action::Dead { .. })));
        assert_eq!(d.view(t0 + 300 * MS)[0].1.state, "suspect");
        d.evidence(node(1), t0 + 310 * MS, Source::Passive);
        assert_eq!(d.view(t0 + 310 * MS)[0].1.state, "alive");
        let acts = run(&mut d, t0 + 325 * MS, t0 + 400 * MS);
        assert!(acts.iter().all(|(_, a)| !matches!(a, Action::Dead { .. })));
    }

    /// A peer re-added to the maps just before it vanished (the second CI
    /// failure in churn.rs): it never answers, and must still be found dead,
    /// within the first-answer grace plus the usual bound; one that answers
    /// late in the grace is not.
    #[test]
    fn a_peer_that_never_answers_after_entering_the_maps_is_found_dead() {
        let t0 = Instant::now();
        let mut d = Detector::new(Timing::default());
        d.set_routed(&[(node(1), addr(1)), (node(2), addr(2))], t0);
        let mut t = t0;
        let mut dead = Vec::new();
        while t <= t0 + 2000 * MS {
            // Node 2 is first heard 250 ms in, then all the time.
            if t >= t0 + 250 * MS {
                d.evidence(node(2), t, Source::Passive);
            }
            for a in d.tick(t) {
                if let Action::Dead { node: n, .. } = a {
                    dead.push((n, t - t0));
                }
            }
            t += 25 * MS;
        }
        assert_eq!(dead.len(), 1, "only the silent one: {dead:?}");
        assert_eq!(dead[0].0, node(1));
        assert!(dead[0].1 <= 750 * MS, "found dead {:?} after entering the maps", dead[0].1);
        assert!(dead[0].1 >= 600 * MS, "not before grace + indirect + suspicion ({:?})", dead[0].1);
    }

    /// The CI failure this guards against: the control plane took a dead
    /// peer out of the maps and put it back (a new connection) between two
    /// looks at the routing table, so the detector kept it dead while the
    /// maps routed to it; when it then went silent it was never found dead.
    #[test]
    fn a_peer_the_control_plane_revives_is_found_dead_again_when_silent() {
        let t0 = Instant::now();
        let mut d = Detector::new(Timing::default());
        let routed = [(node(1), addr(1))];
        d.set_routed(&routed, t0);
        let first = d.tick(t0);
        answer_pings(&mut d, &first, t0);
        let dead = |acts: &[(Duration, Action)]| acts.iter().filter(|(_, a)| matches!(a, Action::Dead { .. })).count();
        assert_eq!(dead(&run(&mut d, t0 + 25 * MS, t0 + 1000 * MS)), 1, "silent: found dead");
        // Still routed as far as the detector knows: it stays dead and is
        // not reported again; only the control plane knows it is back.
        let t1 = t0 + 1100 * MS;
        d.set_routed(&routed, t1);
        assert_eq!(dead(&run(&mut d, t1, t1 + 2000 * MS)), 0);
        let t2 = t1 + 2100 * MS;
        d.revived(node(1), t2);
        assert_eq!(d.view(t2)[0].1.state, "alive");
        let acts = run(&mut d, t2, t2 + 2000 * MS);
        assert_eq!(dead(&acts), 1, "silent again: found dead again, once");
        let (at, _) = acts.iter().find(|(_, a)| matches!(a, Action::Dead { .. })).expect("dead");
        assert!(*at <= 650 * MS, "within the bound ({at:?})");
        d.revived(node(2), t2);
        assert_eq!(d.view(t1).len(), 1, "an unknown node is not made up");
    }

    #[test]
    fn an_indirect_ack_keeps_it_alive_and_a_dead_peer_comes_back_on_a_pong() {
        let t0 = Instant::now();
        let mut d = Detector::new(Timing::default());
        d.set_routed(&[(node(1), addr(1)), (node(2), addr(2))], t0);
        let first = d.tick(t0);
        answer_pings(&mut d, &first, t0);
        let mut t = t0;
        let mut got_indirect = false;
        while t < t0 + 400 * MS {
            t += 25 * MS;
            d.evidence(node(2), t, Source::Passive);
            for a in d.tick(t) {
                if let Action::Indirect { node: n, .. } = a {
                    got_indirect = true;
                    d.indirect_result(n, true, t + 5 * MS);
                }
            }
        }
        assert!(got_indirect);
        assert_ne!(d.view(t).iter().find(|(n, _)| *n == node(1)).unwrap().1.state, "dead");
        // Now it dies for real; then its PONG after death revives it.
        d.connection_dead(node(1), t);
        let acts = d.tick(t + 600 * MS);
        let ping = acts.iter().find_map(|a| match a {
            Action::Ping { node: n, msg_id, .. } if *n == node(1) => Some(*msg_id),
            _ => None,
        });
        let ping = ping.expect("dead peers are PINGed back");
        assert_eq!(d.pong(ping, node(1), t + 601 * MS), Some(Action::Alive { node: node(1) }));
        let back = d.view(t + 602 * MS).into_iter().find(|(n, _)| *n == node(1)).unwrap().1;
        assert_eq!(back.source, "probe");
        // Its death stays on record (storage avoids flaky holders).
        assert_eq!((back.state.as_str(), back.deaths, back.last_death_ms), ("alive", 1, Some(602)));
        let never = d.view(t + 602 * MS).into_iter().find(|(n, _)| *n == node(2)).unwrap().1;
        assert_eq!((never.deaths, never.last_death_ms), (0, None));
    }

    #[test]
    fn histogram_buckets() {
        let mut d = Detector::new(Timing::default());
        for ms in [100, 600, 5000] {
            d.hist_record(Duration::from_millis(ms));
        }
        let h = d.histogram();
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[2], 1);
        assert_eq!(*h.counts.last().unwrap(), 1);
        assert_eq!((h.detections, h.max_ms), (3, 5000));
    }
}
