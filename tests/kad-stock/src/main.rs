//! A stock libp2p node: TCP, Noise, Yamux, identify and libp2p-kad with a
//! `MemoryStore`, nothing of p2p-nos. The interop test runs it against a
//! p2p-nos network: it joins through `--bootstrap`, stores `--put` records
//! and fetches `--get` keys, and prints one JSON line per result.
//!
//! `kad-stock --bootstrap /ip4/…/tcp/9471/p2p/<id> [--protocol /p2p-nos/kad/1.0.0]
//!            [--put KEY=VALUE]… [--get KEY]… [--put-to PEER_ID]… [--stay-ms N] [--advertise ADDR]…`
//!
//! `--put-to` stores the `--put` records at those peers only (libp2p-kad's
//! `put_record_to`), not at the closest nodes: the tests use it to make a
//! record that the key's owner does not hold.
//!
//! Exit status 0 when every put and get succeeded. `--advertise` adds
//! external addresses (identify carries them): the tests use it to pose as
//! a node that advertises an overlay endpoint without speaking the protocol.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use libp2p::kad::{self, GetRecordOk, QueryResult, Quorum, Record, RecordKey, store::MemoryStore};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, StreamProtocol, identify, noise, tcp, yamux};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    bootstrap: Multiaddr,
    #[arg(long, default_value = "/p2p-nos/kad/1.0.0")]
    protocol: String,
    #[arg(long, value_name = "KEY=VALUE")]
    put: Vec<String>,
    #[arg(long)]
    get: Vec<String>,
    #[arg(long, value_name = "PEER_ID")]
    put_to: Vec<libp2p::PeerId>,
    /// Stay connected this long after the work is done.
    #[arg(long, default_value_t = 0)]
    stay_ms: u64,
    #[arg(long)]
    advertise: Vec<Multiaddr>,
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/0")]
    listen: Multiaddr,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let protocol = StreamProtocol::try_from_owned(args.protocol.clone()).context("--protocol")?;
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), kad::Config::new(protocol));
            kad.set_mode(Some(kad::Mode::Server));
            let identify = identify::Behaviour::new(identify::Config::new("/stock/1.0.0".into(), key.public()));
            Behaviour { kad, identify }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.listen_on(args.listen.clone())?;
    for a in &args.advertise {
        swarm.add_external_address(a.clone());
    }
    let Some(Protocol::P2p(boot)) = args.bootstrap.iter().last() else {
        bail!("--bootstrap must end in /p2p/<peer id>");
    };
    swarm.behaviour_mut().kad.add_address(&boot, args.bootstrap.clone());
    swarm.behaviour_mut().kad.bootstrap().context("bootstrap")?;
    eprintln!("kad-stock {} joining through {}", swarm.local_peer_id(), args.bootstrap);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut failed = false;
    let mut phase = 0; // 0 bootstrapping, 1 puts, 2 gets, 3 done
    let mut pending = 0usize;
    // Queries already answered: finishing one still reports a last step.
    let mut done = std::collections::HashSet::new();
    loop {
        if phase == 1 && pending == 0 {
            for kv in &args.put {
                let (k, v) = kv.split_once('=').context("--put KEY=VALUE")?;
                let rec = Record::new(RecordKey::new(&k), v.as_bytes().to_vec());
                if args.put_to.is_empty() {
                    swarm.behaviour_mut().kad.put_record(rec, Quorum::One)?;
                } else {
                    swarm.behaviour_mut().kad.put_record_to(rec, args.put_to.iter().copied(), Quorum::All);
                }
                pending += 1;
            }
            phase = 2;
        }
        if phase == 2 && pending == 0 {
            for k in &args.get {
                swarm.behaviour_mut().kad.get_record(RecordKey::new(k));
                pending += 1;
            }
            phase = 3;
        }
        if phase == 3 && pending == 0 {
            break;
        }
        let ev = tokio::select! {
            ev = swarm.select_next_some() => ev,
            _ = tokio::time::sleep_until(deadline) => bail!("timed out in phase {phase} with {pending} pending"),
        };
        let SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        })) = ev
        else {
            continue;
        };
        if done.contains(&id) {
            continue;
        }
        match result {
            QueryResult::Bootstrap(r) if phase == 0 => {
                if let Err(e) = &r {
                    println!("{}", json!({"op": "bootstrap", "ok": false, "error": e.to_string()}));
                }
                if step.last {
                    let n: usize = swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum();
                    println!("{}", json!({"op": "bootstrap", "ok": n > 0, "peers": n}));
                    failed |= n == 0;
                    phase = 1;
                }
            }
            QueryResult::PutRecord(r) => {
                pending -= 1;
                let ok = r.is_ok();
                failed |= !ok;
                println!("{}", json!({"op": "put", "ok": ok, "error": r.err().map(|e| e.to_string())}));
            }
            QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(pr))) => {
                pending -= 1;
                done.insert(id);
                let key = String::from_utf8_lossy(pr.record.key.as_ref()).into_owned();
                let value = String::from_utf8_lossy(&pr.record.value).into_owned();
                println!(
                    "{}",
                    json!({"op": "get", "ok": true, "key": key, "value": value, "from": pr.peer.map(|p| p.to_string())})
                );
                if let Some(mut q) = swarm.behaviour_mut().kad.query_mut(&id) {
                    q.finish();
                }
            }
            QueryResult::GetRecord(r) if step.last || r.is_err() => {
                pending -= 1;
                done.insert(id);
                failed = true;
                println!("{}", json!({"op": "get", "ok": false, "error": format!("{r:?}")}));
                if let Some(mut q) = swarm.behaviour_mut().kad.query_mut(&id) {
                    q.finish();
                }
            }
            _ => {}
        }
    }
    let stay = tokio::time::Instant::now() + Duration::from_millis(args.stay_ms);
    while tokio::time::Instant::now() < stay {
        tokio::select! {
            _ = swarm.select_next_some() => {}
            _ = tokio::time::sleep_until(stay) => {}
        }
    }
    if failed {
        bail!("some operations failed");
    }
    Ok(())
}
