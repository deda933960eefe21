//! Where shards and manifests go: the nodes closest to the key (Kademlia's
//! XOR distance), one per IPv4 /24 or IPv6 /64 while there are enough
//! distinct prefixes, poor nodes (banned, suspect, or recently dead) last.

use std::net::IpAddr;

use p2p_common::id::NodeId;

/// A node that may hold something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub peer: String,
    pub node: NodeId,
    pub ip: Option<IpAddr>,
    /// Banned, suspect or recently declared dead: used only if nothing else.
    pub poor: bool,
}

fn prefix(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets()[..3].to_vec(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.octets()[..3].to_vec(),
            None => a.octets()[..8].to_vec(),
        },
    }
}

/// Up to `n` of `candidates` for `key`, skipping `exclude` (peer IDs):
/// closest first, a new prefix before a repeated one, poor ones last.
pub fn choose(key: &NodeId, candidates: &[Candidate], n: usize, exclude: &[String]) -> Vec<Candidate> {
    let mut c: Vec<&Candidate> = candidates.iter().filter(|c| !exclude.contains(&c.peer)).collect();
    c.sort_by_key(|c| (c.poor, key.distance(&c.node)));
    c.dedup_by(|a, b| a.peer == b.peer);
    let mut out: Vec<Candidate> = Vec::new();
    let mut used: Vec<Vec<u8>> = Vec::new();
    // First pass: good nodes of distinct prefixes; second: the rest, in order.
    for c in c.iter().filter(|c| !c.poor) {
        if out.len() == n {
            break;
        }
        let p = c.ip.as_ref().map(prefix);
        if p.as_ref().is_none_or(|p| !used.contains(p)) {
            if let Some(p) = p {
                used.push(p);
            }
            out.push((*c).clone());
        }
    }
    for c in &c {
        if out.len() == n {
            break;
        }
        if !out.iter().any(|o| o.peer == c.peer) {
            out.push((*c).clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(i: u8, ip: &str, poor: bool) -> Candidate {
        Candidate { peer: format!("p{i}"), node: NodeId([i; 32]), ip: ip.parse().ok(), poor }
    }

    #[test]
    fn closest_distinct_prefixes_poor_last() {
        let key = NodeId([0; 32]);
        let cs = vec![
            cand(1, "10.0.1.1", false),
            cand(2, "10.0.1.2", false), // same /24 as p1
            cand(3, "10.0.2.1", false),
            cand(4, "fd00::1", true),
            cand(5, "fd00:0:0:1::1", false),
        ];
        let peers = |v: Vec<Candidate>| v.into_iter().map(|c| c.peer).collect::<Vec<_>>();
        assert_eq!(peers(choose(&key, &cs, 3, &[])), ["p1", "p3", "p5"]);
        // Not enough prefixes: the repeated one, then the poor one.
        assert_eq!(peers(choose(&key, &cs, 5, &[])), ["p1", "p3", "p5", "p2", "p4"]);
        assert_eq!(peers(choose(&key, &cs, 2, &["p1".into()])), ["p2", "p3"]);
        // Closeness is XOR distance to the key.
        assert_eq!(peers(choose(&NodeId([5; 32]), &cs, 1, &[])), ["p5"]);
    }
}
