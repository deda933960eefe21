//! `p2p-controller maps …`: human tables or `--json`, straight from pins.
//! `routes` and `peers` put the daemon's Kademlia view beside the kernel's
//! (a field each, and whether they agree), so a mismatch is visible.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use p2p_common::codec::mapped_to_addr;
use p2p_common::counters::COUNTER_NAMES;
use p2p_common::maps::{BlockEntry, PEER_LIVE, REASON_NAMES};
use serde_json::{Value, json};

use crate::api::Peers;
use crate::cli::MapsWhich;
use crate::dataplane::{BlockTarget, PinnedMaps, RouteLeaf, stats_by_name};
use crate::error::Result;
use crate::units::show_target;

/// The daemon's answer to `{"cmd":"peers"}`, or why there is none.
pub type KadView = std::result::Result<Peers, String>;

/// (node ID, overlay endpoint) of every peer the Kademlia view routes to.
/// A node ID listed twice (a static peer Kademlia also found) counts once,
/// the first, as map sync does.
fn kad_routed(view: &Peers) -> BTreeSet<(String, String)> {
    let mut seen = BTreeSet::new();
    view.peers
        .iter()
        .filter(|p| p.routable)
        .filter_map(|p| Some((p.node_id.clone(), p.overlay.clone()?)))
        .filter(|(id, _)| seen.insert(id.clone()))
        .collect()
}

/// The routes the Kademlia view implies: the same builder the dataplane
/// uses, over the same peers, summarised as node ID → buckets.
fn kad_routes(self_id: &[u8; 32], view: &Peers) -> std::result::Result<BTreeMap<String, u32>, String> {
    let peers: Vec<(u32, [u8; 32])> = kad_routed(view)
        .into_iter()
        .enumerate()
        .map(|(i, (id, _))| {
            let id: p2p_common::id::NodeId = id.parse().map_err(|e| format!("node_id: {e}"))?;
            Ok((i as u32, id.0))
        })
        .collect::<std::result::Result<_, String>>()?;
    let table = p2p_common::route_build::build(self_id, &peers).map_err(|e| e.to_string())?;
    Ok(table
        .leaf_buckets()
        .into_iter()
        .map(|(slot, n)| {
            let id = if slot == p2p_common::maps::SELF_SLOT { *self_id } else { peers[slot as usize].1 };
            (hex::encode(id), n)
        })
        .collect())
}

fn kernel_routes(leaves: &[RouteLeaf]) -> BTreeMap<String, u32> {
    leaves.iter().map(|l| (l.node_id.clone(), l.buckets)).collect()
}

pub fn show(which: MapsWhich, dir: &Path, as_json: bool, kad: KadView) -> Result<()> {
    let maps = PinnedMaps::open(dir)?;
    match which {
        MapsWhich::Stats => {
            let stats = stats_by_name(&maps.stats()?);
            if as_json {
                let obj: serde_json::Map<String, Value> = stats
                    .iter()
                    .map(|(n, c)| (n.to_string(), json!({"packets": c.packets, "bytes": c.bytes})))
                    .collect();
                println!("{}", Value::Object(obj));
            } else {
                println!("{:<16} {:>14} {:>16}", "counter", "packets", "bytes");
                for name in COUNTER_NAMES {
                    let c = stats[name];
                    println!("{:<16} {:>14} {:>16}", name, c.packets, c.bytes);
                }
            }
        }
        MapsWhich::Peers => {
            let peers = maps.peers()?;
            let kernel: BTreeSet<(String, String)> = peers
                .iter()
                .filter(|(_, p)| p.flags & PEER_LIVE != 0)
                .map(|(_, p)| {
                    (hex::encode(p.node_id), std::net::SocketAddr::new(mapped_to_addr(p.addr), p.port).to_string())
                })
                .collect();
            let kademlia = kad.as_ref().ok().map(kad_routed);
            let agree = kademlia.as_ref().map(|k| *k == kernel);
            if as_json {
                let v: Vec<Value> = peers
                    .iter()
                    .map(|(slot, p)| {
                        json!({
                            "slot": slot,
                            "node_id": hex::encode(p.node_id),
                            "addr": mapped_to_addr(p.addr).to_string(),
                            "port": p.port,
                            "live": p.flags & PEER_LIVE != 0,
                            "flags": p.flags,
                            "reputation": p.reputation,
                            "generation": p.generation,
                        })
                    })
                    .collect();
                let mut out = json!({"kernel": v, "kademlia": kad.as_ref().ok().map(|k| &k.peers), "agree": agree});
                if let Some(k) = &kademlia {
                    let ids =
                        |s: &BTreeSet<(String, String)>| s.iter().map(|(i, _)| i.clone()).collect::<BTreeSet<_>>();
                    let (ki, di) = (ids(&kernel), ids(k));
                    out["mismatch"] = json!({
                        "kernel_only": ki.difference(&di).collect::<Vec<_>>(),
                        "kademlia_only": di.difference(&ki).collect::<Vec<_>>(),
                        "endpoint_differs": kernel.symmetric_difference(k).map(|(i, _)| i).filter(|i| ki.contains(*i) && di.contains(*i)).collect::<BTreeSet<_>>(),
                    });
                }
                if let Err(e) = &kad {
                    out["kademlia_error"] = json!(e);
                }
                println!("{out}");
            } else {
                println!("kernel (PEERS)");
                println!("{:>6}  {:<64}  {:<40} {:>5}  state", "slot", "node_id", "addr", "port");
                for (slot, p) in &peers {
                    let state = if p.flags & PEER_LIVE != 0 { "live" } else { "down" };
                    println!(
                        "{:>6}  {:<64}  {:<40} {:>5}  {}",
                        slot,
                        hex::encode(p.node_id),
                        mapped_to_addr(p.addr).to_string(),
                        p.port,
                        state
                    );
                }
                println!("{} peer(s)", peers.len());
                match &kad {
                    Ok(v) => {
                        println!("\nKademlia (daemon)");
                        println!("{:<64}  {:<46}  state", "node_id", "overlay");
                        for p in &v.peers {
                            println!("{:<64}  {:<46}  {}", p.node_id, p.overlay.as_deref().unwrap_or("-"), p.state);
                        }
                        println!(
                            "{}",
                            if agree == Some(true) {
                                "kernel and Kademlia agree"
                            } else {
                                "MISMATCH between kernel and Kademlia"
                            }
                        );
                    }
                    Err(e) => println!("\nKademlia view unavailable: {e}"),
                }
            }
        }
        MapsWhich::Routes => {
            let (generation, leaves) = maps.routes()?;
            let kernel = kernel_routes(&leaves);
            let self_id = maps.config()?.node_id;
            let kademlia = match &kad {
                Ok(v) => Some(kad_routes(&self_id, v)),
                Err(_) => None,
            };
            let agree = kademlia.as_ref().map(|k| k.as_ref().is_ok_and(|k| *k == kernel));
            if as_json {
                let kad_leaves = kademlia.as_ref().map(|k| match k {
                    Ok(m) => json!(m.iter().map(|(id, n)| json!({"node_id": id, "buckets": n})).collect::<Vec<_>>()),
                    Err(e) => json!({"error": e}),
                });
                let mut out =
                    json!({"generation": generation, "kernel": leaves, "kademlia": kad_leaves, "agree": agree});
                if let Err(e) = &kad {
                    out["kademlia_error"] = json!(e);
                }
                println!("{out}");
            } else {
                println!("live generation {generation}");
                println!("{:>6}  {:<64}  {:>8}  {:>8}", "slot", "next hop node_id", "kernel", "kad");
                for l in &leaves {
                    let slot = l.slot.map(|s| s.to_string()).unwrap_or_else(|| "self".into());
                    let k = kademlia.as_ref().and_then(|k| k.as_ref().ok()).and_then(|k| k.get(&l.node_id));
                    let k = k.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
                    println!("{:>6}  {:<64}  {:>8}  {:>8}", slot, l.node_id, l.buckets, k);
                }
                match agree {
                    Some(true) => println!("kernel and Kademlia agree"),
                    Some(false) => println!("MISMATCH between kernel and Kademlia"),
                    None => {
                        println!("Kademlia view unavailable: {}", kad.as_ref().err().map(String::as_str).unwrap_or(""))
                    }
                }
            }
        }
        MapsWhich::Blocked => {
            let now = crate::overlay::monotonic_ns();
            let blocked = maps.blocked()?;
            let reason = |r: u32| REASON_NAMES.get(r as usize).copied().unwrap_or(REASON_NAMES[0]);
            let left_s = |e: &BlockEntry| (e.expires_ns != 0).then(|| e.expires_ns.saturating_sub(now) / 1_000_000_000);
            if as_json {
                let v: Vec<Value> = blocked
                    .iter()
                    .map(|(t, e)| {
                        let kind = if matches!(t, BlockTarget::Node(_)) { "node" } else { "net" };
                        json!({
                            "target": show_target(t),
                            "kind": kind,
                            "reason": reason(e.reason),
                            "reason_code": e.reason,
                            "expires_ns": e.expires_ns,
                            "remaining_s": left_s(e),
                            "expired": e.expires_ns != 0 && e.expires_ns <= now,
                        })
                    })
                    .collect();
                println!("{}", Value::Array(v));
            } else {
                println!("{:<66}  {:<10}  {:>12}", "node_id, address or prefix", "reason", "remaining");
                for (t, e) in &blocked {
                    let left = match left_s(e) {
                        None => "forever".to_string(),
                        Some(0) => "expired".to_string(),
                        Some(s) => format!("{s} s"),
                    };
                    println!("{:<66}  {:<10}  {:>12}", show_target(t), reason(e.reason), left);
                }
                println!("{} entr(ies)", blocked.len());
            }
        }
    }
    Ok(())
}
