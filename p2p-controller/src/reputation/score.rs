//! Reputation scores, free of I/O and of the clock: every subject (a node
//! ID, or a source IP) has a score that evidence lowers and that decays
//! back towards 0 with a half-life; below the threshold the subject is
//! banned, for a time that doubles with every offence.
//!
//! Weights (negative: each event lowers the score by that much):
//!
//! | evidence | weight | why |
//! |---|---|---|
//! | malformed packet (XDP `drop_malformed`) | −2 | a correct node never sends one |
//! | packet over its rate budget (`drop_rate`) | −0.05 | bursts happen; a flood of 2,000 is a ban |
//! | failed authentication (`drop_auth`) | −5 | a forged or replayed tag |
//! | invalid or oversized DHT record | −20 | deliberate or badly broken |
//! | LOOKUP answer that does not match the request | −10 | a lie about who owns a key (or churn) |
//! | unsolicited LOOKUP_REPLY / PONG | −1 | spoofing or reflection attempts |
//! | found dead by the churn detector | −5 | flapping nodes hurt routing; 20 deaths before decay is a ban |
//! | gossipsub score below its graylist threshold | −10 per second | gossipsub's own verdict |
//!
//! With the default threshold (−100) and half-life (5 min), honest nodes
//! stay far from a ban; a node sending garbage at 100 pps is banned within
//! a second.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use p2p_common::id::NodeId;
use p2p_common::maps::{
    REASON_AUTH, REASON_GOSSIPSUB, REASON_LOOKUP, REASON_MALFORMED, REASON_OPERATOR, REASON_PROBES, REASON_RATE,
    REASON_RECORDS, REASON_SHARDS,
};

/// Whose score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Node(NodeId),
    Ip(IpAddr),
}

/// A piece of evidence against a subject (`count` events of one kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Evidence {
    Malformed,
    Rate,
    Auth,
    BadRecord,
    BadLookupReply,
    Unsolicited,
    FailedProbes,
    Gossipsub,
    /// A storage holder answered a shard request with bytes that do not
    /// hash to the shard's CID.
    BadShard,
}

impl Evidence {
    pub fn weight(self) -> f64 {
        match self {
            Evidence::Malformed => -2.0,
            Evidence::Rate => -0.05,
            Evidence::Auth => -5.0,
            Evidence::BadRecord => -20.0,
            Evidence::BadLookupReply => -10.0,
            Evidence::Unsolicited => -1.0,
            Evidence::FailedProbes => -5.0,
            Evidence::Gossipsub => -10.0,
            Evidence::BadShard => -25.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Evidence::Malformed => "malformed",
            Evidence::Rate => "rate",
            Evidence::Auth => "auth",
            Evidence::BadRecord => "records",
            Evidence::BadLookupReply => "lookup",
            Evidence::Unsolicited => "unsolicited",
            Evidence::FailedProbes => "probes",
            Evidence::Gossipsub => "gossipsub",
            Evidence::BadShard => "shards",
        }
    }

    /// The BLOCKED reason code a ban for it carries.
    pub fn reason(self) -> u32 {
        match self {
            Evidence::Malformed | Evidence::Unsolicited => REASON_MALFORMED,
            Evidence::Rate => REASON_RATE,
            Evidence::Auth => REASON_AUTH,
            Evidence::BadRecord => REASON_RECORDS,
            Evidence::BadLookupReply => REASON_LOOKUP,
            Evidence::FailedProbes => REASON_PROBES,
            Evidence::Gossipsub => REASON_GOSSIPSUB,
            Evidence::BadShard => REASON_SHARDS,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub threshold: f64,
    pub half_life: Duration,
    pub ban_base: Duration,
    pub ban_max: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            threshold: -100.0,
            half_life: Duration::from_secs(300),
            ban_base: Duration::from_secs(60),
            ban_max: Duration::from_secs(3600),
        }
    }
}

/// A ban in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Ban {
    pub since: Instant,
    /// `None`: until lifted by an operator.
    pub until: Option<Instant>,
    /// BLOCKED reason code.
    pub reason: u32,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Score {
    pub value: f64,
    updated: Instant,
    pub evidence: BTreeMap<Evidence, u64>,
    /// Bans so far (the next one lasts `ban_base` × 2^offences).
    pub offences: u32,
    pub ban: Option<Ban>,
}

/// What the component must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Ban { subject: Subject, ban: Ban },
    Lift { subject: Subject },
}

pub struct Scores {
    pub policy: Policy,
    scores: HashMap<Subject, Score>,
}

/// Subjects with a score this close to 0 and no ban are forgotten.
const FORGET_BELOW: f64 = 0.5;

impl Scores {
    pub fn new(policy: Policy) -> Scores {
        Scores { policy, scores: HashMap::new() }
    }

    fn decay(&self, s: &mut Score, now: Instant) {
        let dt = now.saturating_duration_since(s.updated).as_secs_f64();
        s.value *= 0.5f64.powf(dt / self.policy.half_life.as_secs_f64().max(1e-3));
        s.updated = now;
    }

    fn entry(&mut self, subject: Subject, now: Instant) -> &mut Score {
        self.scores.entry(subject).or_insert(Score {
            value: 0.0,
            updated: now,
            evidence: BTreeMap::new(),
            offences: 0,
            ban: None,
        })
    }

    /// `count` events of `what` against `subject`; a ban if it crossed the
    /// threshold.
    pub fn report(&mut self, subject: Subject, what: Evidence, count: u64, now: Instant) -> Option<Verdict> {
        if count == 0 {
            return None;
        }
        let policy = self.policy;
        let mut s = self.entry(subject, now).clone();
        self.decay(&mut s, now);
        s.value += what.weight() * count as f64;
        *s.evidence.entry(what).or_default() += count;
        let mut verdict = None;
        if s.value < policy.threshold && s.ban.is_none() {
            let length = policy.ban_base.saturating_mul(1 << s.offences.min(16)).min(policy.ban_max);
            s.offences += 1;
            let ban = Ban {
                since: now,
                until: Some(now + length),
                reason: what.reason(),
                text: format!("score {:.0} below {:.0} ({} evidence)", s.value, policy.threshold, what.name()),
            };
            s.ban = Some(ban.clone());
            // A ban resets most of the debt: the next offence is judged
            // afresh, and lasts twice as long.
            s.value = policy.threshold / 2.0;
            verdict = Some(Verdict::Ban { subject, ban });
        }
        self.scores.insert(subject, s);
        verdict
    }

    /// An operator's ban (`block`): `length` None is forever.
    pub fn operator_ban(&mut self, subject: Subject, length: Option<Duration>, text: String, now: Instant) -> Ban {
        let ban = Ban { since: now, until: length.map(|l| now + l), reason: REASON_OPERATOR, text };
        self.entry(subject, now).ban = Some(ban.clone());
        ban
    }

    /// Lifts a ban (operator `unblock`); false if there was none.
    pub fn lift(&mut self, subject: &Subject) -> bool {
        self.scores.get_mut(subject).and_then(|s| s.ban.take()).is_some()
    }

    /// Bans that ran out (they are lifted), and forgets quiet subjects.
    pub fn expire(&mut self, now: Instant) -> Vec<Verdict> {
        let mut out = Vec::new();
        for (subject, s) in self.scores.iter_mut() {
            if s.ban.as_ref().is_some_and(|b| b.until.is_some_and(|u| now >= u)) {
                s.ban = None;
                out.push(Verdict::Lift { subject: *subject });
            }
        }
        let policy = self.policy;
        self.scores.retain(|_, s| {
            let dt = now.saturating_duration_since(s.updated).as_secs_f64();
            let v = s.value * 0.5f64.powf(dt / policy.half_life.as_secs_f64().max(1e-3));
            s.ban.is_some() || s.offences > 0 || v.abs() >= FORGET_BELOW
        });
        out
    }

    /// Every subject's decayed score.
    pub fn all(&self, now: Instant) -> Vec<(Subject, Score)> {
        let mut v: Vec<(Subject, Score)> = self
            .scores
            .iter()
            .map(|(k, s)| {
                let mut s = s.clone();
                self.decay(&mut s, now);
                (*k, s)
            })
            .collect();
        v.sort_by(|a, b| a.1.value.total_cmp(&b.1.value));
        v
    }

    pub fn value(&self, subject: &Subject, now: Instant) -> f64 {
        self.scores.get(subject).map_or(0.0, |s| {
            let mut s = s.clone();
            self.decay(&mut s, now);
            s.value
        })
    }

    pub fn is_banned(&self, subject: &Subject) -> bool {
        self.scores.get(subject).is_some_and(|s| s.ban.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Subject {
        Subject::Node(NodeId([7; 32]))
    }

    #[test]
    fn garbage_bans_and_the_ban_doubles_up_to_the_cap() {
        let t0 = Instant::now();
        let mut s = Scores::new(Policy::default());
        // 49 malformed packets: -98, no ban; the 51st crosses -100.
        assert_eq!(s.report(node(), Evidence::Malformed, 49, t0), None);
        let Some(Verdict::Ban { ban, .. }) = s.report(node(), Evidence::Malformed, 2, t0) else { panic!("no ban") };
        assert_eq!(ban.until, Some(t0 + Duration::from_secs(60)));
        assert_eq!(ban.reason, REASON_MALFORMED);
        // Banned: no second verdict.
        assert_eq!(s.report(node(), Evidence::Malformed, 100, t0), None);
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(s.expire(t1), vec![Verdict::Lift { subject: node() }]);
        let Some(Verdict::Ban { ban, .. }) = s.report(node(), Evidence::Malformed, 100, t1) else { panic!() };
        assert_eq!(ban.until, Some(t1 + Duration::from_secs(120)), "the second ban lasts twice as long");
        for i in 2..12u64 {
            let t = t1 + Duration::from_secs(10_000 * i);
            s.expire(t);
            let Some(Verdict::Ban { ban, .. }) = s.report(node(), Evidence::Auth, 100, t) else { panic!() };
            assert!(ban.until.unwrap() - t <= Duration::from_secs(3600), "capped at an hour");
        }
    }

    #[test]
    fn scores_decay_with_the_half_life() {
        let t0 = Instant::now();
        let mut s = Scores::new(Policy::default());
        s.report(node(), Evidence::BadRecord, 4, t0);
        assert!((s.value(&node(), t0) + 80.0).abs() < 1e-9);
        assert!((s.value(&node(), t0 + Duration::from_secs(300)) + 40.0).abs() < 1e-6);
        // Decayed, the same evidence no longer reaches the threshold.
        assert_eq!(s.report(node(), Evidence::BadRecord, 2, t0 + Duration::from_secs(300)), None);
        // Quiet subjects are forgotten.
        s.expire(t0 + Duration::from_secs(300 * 20));
        assert!(s.all(t0 + Duration::from_secs(300 * 20)).is_empty());
    }

    #[test]
    fn operator_bans_last_until_lifted() {
        let t0 = Instant::now();
        let mut s = Scores::new(Policy::default());
        let ip = Subject::Ip("10.0.0.1".parse().unwrap());
        s.operator_ban(ip, None, "by hand".into(), t0);
        assert!(s.expire(t0 + Duration::from_secs(1_000_000)).is_empty());
        assert!(s.is_banned(&ip));
        assert!(s.lift(&ip));
        assert!(!s.lift(&ip));
    }
}
