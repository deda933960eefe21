//! `p2p-controller maps …`: human tables or `--json`, straight from pins.

use std::path::Path;

use p2p_common::codec::mapped_to_addr;
use p2p_common::counters::COUNTER_NAMES;
use p2p_common::maps::{BLOCK_KIND_IP, BlockKey, PEER_LIVE};
use serde_json::{Value, json};

use crate::cli::MapsWhich;
use crate::dataplane::{PinnedMaps, stats_by_name};
use crate::error::Result;

pub fn show(which: MapsWhich, dir: &Path, as_json: bool) -> Result<()> {
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
                        })
                    })
                    .collect();
                println!("{}", Value::Array(v));
            } else {
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
            }
        }
        MapsWhich::Routes => {
            let (generation, leaves) = maps.routes()?;
            if as_json {
                println!("{}", json!({"generation": generation, "kernel": leaves}));
            } else {
                println!("live generation {generation}");
                println!("{:>6}  {:<64}  {:>8}", "slot", "next hop node_id", "buckets");
                for l in &leaves {
                    let slot = l.slot.map(|s| s.to_string()).unwrap_or_else(|| "self".into());
                    println!("{:>6}  {:<64}  {:>8}", slot, l.node_id, l.buckets);
                }
            }
        }
        MapsWhich::Blocked => {
            let blocked = maps.blocked()?;
            if as_json {
                let v: Vec<Value> = blocked
                    .iter()
                    .map(|(k, e)| {
                        let what = if k.kind == BLOCK_KIND_IP {
                            json!({"ip": block_key_text(k)})
                        } else {
                            json!({"node_id": block_key_text(k)})
                        };
                        json!({"key": what, "reason": e.reason, "expires_ns": e.expires_ns})
                    })
                    .collect();
                println!("{}", Value::Array(v));
            } else {
                println!("{:<66}  {:>6}  {:>20}", "ip or node_id", "reason", "expires_ns");
                for (k, e) in &blocked {
                    println!("{:<66}  {:>6}  {:>20}", block_key_text(k), e.reason, e.expires_ns);
                }
                println!("{} entr(ies)", blocked.len());
            }
        }
    }
    Ok(())
}

/// A BLOCKED key as a user writes it: the IP, or the node ID in hex.
fn block_key_text(k: &BlockKey) -> String {
    if k.kind == BLOCK_KIND_IP {
        mapped_to_addr(k.id[..16].try_into().expect("16 bytes")).to_string()
    } else {
        hex::encode(k.id)
    }
}
