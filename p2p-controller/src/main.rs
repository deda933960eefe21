use std::process::ExitCode;

use clap::Parser;
use p2p_controller::cli::{Cli, ClientArgs, Command, DhtCommand, MapsWhich, PubsubCommand};
use p2p_controller::error::{Error, Result};
use p2p_controller::{control, daemon, dataplane, identity, maps_cmd, paths, sys};
use serde_json::{Value, json};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2p-controller: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn socket_path(client: &ClientArgs, instance: &str) -> std::path::PathBuf {
    client.control_socket.clone().unwrap_or_else(|| paths::control_socket(instance))
}

fn ask(client: &ClientArgs, instance: &str, req: Value) -> Result<Value> {
    control::request(&socket_path(client, instance), instance, &req)
}

fn print_json(v: &Value) {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("ok");
    }
    println!("{v}");
}

fn dispatch(cli: Cli) -> Result<()> {
    let instance = cli.instance;
    match cli.command {
        Command::Id { state_dir, json } => {
            let dir = state_dir.unwrap_or_else(|| paths::state_dir(&instance));
            let (id, _) = identity::Identity::load_or_create(&dir)?;
            if json {
                println!("{}", json!({"peer_id": id.peer_id.to_string(), "node_id": id.node_id.to_string()}));
            } else {
                println!("peer_id {}\nnode_id {}", id.peer_id, id.node_id);
            }
            Ok(())
        }
        Command::Run(args) => daemon::run(args, instance),
        Command::Maps { which, pin_dir, client, json } => {
            let dir = pin_dir.unwrap_or_else(|| paths::pin_dir(&instance));
            let kad = if matches!(which, MapsWhich::Routes | MapsWhich::Peers) {
                ask(&client, &instance, json!({"cmd": "peers"})).map_err(|e| e.to_string())
            } else {
                Err(String::new())
            };
            maps_cmd::show(which, &dir, json, kad)
        }
        Command::Peers { client, json } => {
            let v = ask(&client, &instance, json!({"cmd": "peers"}))?;
            if json {
                print_json(&v);
            } else {
                let peers = v["peers"].as_array().cloned().unwrap_or_default();
                println!("{:<54} {:<10} {:<9} {:<28} state", "peer_id", "node_id", "source", "overlay");
                for p in &peers {
                    println!(
                        "{:<54} {:<10} {:<9} {:<28} {}{}",
                        p["peer_id"].as_str().unwrap_or("-"),
                        &p["node_id"].as_str().unwrap_or("")[..8.min(p["node_id"].as_str().unwrap_or("").len())],
                        p["source"].as_str().unwrap_or(""),
                        p["overlay"].as_str().unwrap_or("-"),
                        p["state"].as_str().unwrap_or(""),
                        if p["connected"].as_bool() == Some(true) { ", connected" } else { "" }
                    );
                }
                let routable = peers.iter().filter(|p| p["routable"].as_bool() == Some(true)).count();
                println!("{} peer(s), {routable} routed by the datapath", peers.len());
            }
            Ok(())
        }
        Command::Dht(DhtCommand::Put { key, value, quorum, client, json }) => {
            let mut req = json!({"cmd": "dht_put", "key": key, "value": value});
            if let Some(q) = quorum {
                req["quorum"] = json!(q);
            }
            let v = ask(&client, &instance, req)?;
            if json {
                print_json(&v);
            } else {
                println!("stored {key} (quorum {}, {} us)", v["quorum"], v["rtt_us"]);
            }
            Ok(())
        }
        Command::Dht(DhtCommand::Get { key, timeout_ms, network, client, json }) => {
            let req = json!({"cmd": "dht_get", "key": key, "timeout_ms": timeout_ms, "network": network});
            let v = ask(&client, &instance, req)?;
            if json {
                print_json(&v);
            } else if v["found"].as_bool() == Some(true) {
                println!(
                    "{key} = {}\nfrom {} ({}) in {} us",
                    v["value"].as_str().unwrap_or(""),
                    v["from"].as_str().unwrap_or("this node"),
                    v["source"].as_str().unwrap_or(""),
                    v["rtt_us"]
                );
            } else {
                return Err(Error::Remote(format!("{key}: not found in the DHT")));
            }
            Ok(())
        }
        Command::Pubsub(PubsubCommand::Publish { topic, message, client, json }) => {
            let v = ask(&client, &instance, json!({"cmd": "pubsub_publish", "topic": topic, "message": message}))?;
            if json {
                print_json(&v);
            } else {
                println!("published on {topic} to {} peer(s): {}", v["peers"], v["message_id"].as_str().unwrap_or(""));
            }
            Ok(())
        }
        Command::Pubsub(PubsubCommand::Subscribe { topic, count, client, json }) => {
            let path = socket_path(&client, &instance);
            let mut seen = 0u64;
            eprintln!("subscribed to {topic}; Ctrl-C to stop");
            control::stream(&path, &instance, &json!({"cmd": "pubsub_subscribe", "topic": topic}), |m| {
                if json {
                    println!("{m}");
                } else {
                    println!("{}", m["data"].as_str().unwrap_or(""));
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
                seen += 1;
                count.is_none_or(|c| seen < c)
            })
        }
        Command::Status { client, json } => {
            let v = ask(&client, &instance, json!({"cmd": "status"}))?;
            if json {
                print_json(&v);
            } else {
                println!("instance      {}", v["instance"].as_str().unwrap_or(""));
                println!("peer_id       {}", v["peer_id"].as_str().unwrap_or(""));
                println!("node_id       {}", v["node_id"].as_str().unwrap_or(""));
                println!(
                    "datapath      {} {}",
                    v["datapath"].as_str().unwrap_or(""),
                    v["xdp_mode"].as_str().unwrap_or("")
                );
                println!("interfaces    {}", v["ifaces"]);
                println!("overlay port  {}", v["overlay_port"]);
                println!("listen        {}", v["listen_addrs"]);
                println!("advertised    {}", v["external_addrs"]);
                println!("overlay       {}", v["overlay_endpoints"]);
                println!(
                    "peers         {} routed ({} answered ping), {} in Kademlia, {} connected",
                    v["peers"], v["peers_answered"], v["kad_peers"], v["connected_peers"]
                );
                println!("bootstrap     {}", v["bootstrap"]);
                println!("ready         {}", v["ready"]);
                println!("delivered     {}", v["delivered"]);
                println!("slow path     {}", v["slow_path"]);
                println!("lookups answ. {}", v["lookups_answered"]);
            }
            Ok(())
        }
        Command::Lookup { key, timeout_ms, no_fallback, client, json } => {
            let req = json!({"cmd": "lookup", "key": key, "timeout_ms": timeout_ms, "fallback": !no_fallback});
            let v = ask(&client, &instance, req)?;
            if json {
                print_json(&v);
            } else if v["path"].as_str() == Some("kademlia") {
                println!("{}", v["fallback_reason"].as_str().unwrap_or(""));
                if v["found"].as_bool() == Some(true) {
                    println!(
                        "{key} = {}\nanswered by Kademlia's iterative get from {} in {} us",
                        v["value"].as_str().unwrap_or(""),
                        v["answered_by"].as_str().unwrap_or(""),
                        v["rtt_us"]
                    );
                } else {
                    println!("{key}: not found by Kademlia either ({} us)", v["rtt_us"]);
                }
            } else if v["found"].as_bool() == Some(true) {
                println!(
                    "{} = {}\nanswered by {} ({}) in {} hop(s), rtt {} us, via {}",
                    key,
                    v["value"].as_str().unwrap_or(""),
                    v["answered_by"].as_str().unwrap_or(""),
                    v["owner"].as_str().unwrap_or("this node"),
                    v["hops"],
                    v["rtt_us"],
                    v["path"].as_str().unwrap_or("")
                );
            } else {
                println!(
                    "{key}: not found; answered by {} in {} hop(s), rtt {} us",
                    v["answered_by"].as_str().unwrap_or(""),
                    v["hops"],
                    v["rtt_us"]
                );
            }
            Ok(())
        }
        Command::Send { node_id, data, client, json } => {
            node_id.parse::<p2p_common::id::NodeId>().map_err(|e| Error::Usage(format!("NODE_ID: {e}")))?;
            let v = ask(&client, &instance, json!({"cmd": "send", "node_id": node_id, "data": data}))?;
            if json {
                print_json(&v);
            } else {
                println!("sent {} byte(s) to {node_id} via {}", data.len(), v["via"].as_str().unwrap_or("this node"));
            }
            Ok(())
        }
        Command::Ping { node_id, timeout_ms, client, json } => {
            node_id.parse::<p2p_common::id::NodeId>().map_err(|e| Error::Usage(format!("NODE_ID: {e}")))?;
            let v = ask(&client, &instance, json!({"cmd": "ping", "node_id": node_id, "timeout_ms": timeout_ms}))?;
            if json {
                print_json(&v);
            } else {
                println!("PONG from {}: rtt {} us", v["from"].as_str().unwrap_or(""), v["rtt_us"]);
            }
            Ok(())
        }
        Command::Bench(args) => p2p_controller::dataplane::bench::run(args),
        Command::XdpPass { netns, ifaces, xdp_mode } => {
            // Blocked from the start: a stop request is taken, not fatal.
            let set = sys::block_signals();
            if let Some(ns) = &netns {
                sys::enter_netns(ns)?;
            }
            sys::check_privileges(netns.is_some())?;
            for i in &ifaces {
                if dataplane::ifindex(i).is_none() {
                    return Err(Error::NoInterface(i.clone()));
                }
            }
            let mut dp = dataplane::Dataplane::load(dataplane::LoadOptions::default())?;
            for i in &ifaces {
                let got = dp.attach(i, xdp_mode, true)?;
                eprintln!("p2p-controller: pass-through XDP on {i} ({got} mode)");
            }
            while !sys::wait_signal(&set, std::time::Duration::from_secs(3600)) {}
            dp.detach_all();
            Ok(())
        }
    }
}
