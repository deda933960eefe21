use std::process::ExitCode;

use clap::Parser;
use p2p_controller::cli::{Cli, ClientArgs, Command};
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
        Command::Maps { which, pin_dir, json } => {
            let dir = pin_dir.unwrap_or_else(|| paths::pin_dir(&instance));
            maps_cmd::show(which, &dir, json)
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
                println!("peers         {} ({} answered ping)", v["peers"], v["peers_answered"]);
                println!("ready         {}", v["ready"]);
                println!("delivered     {}", v["delivered"]);
                println!("slow path     {}", v["slow_path"]);
                println!("lookups answ. {}", v["lookups_answered"]);
            }
            Ok(())
        }
        Command::Lookup { key, timeout_ms, client, json } => {
            let v = ask(&client, &instance, json!({"cmd": "lookup", "key": key, "timeout_ms": timeout_ms}))?;
            if json {
                print_json(&v);
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
