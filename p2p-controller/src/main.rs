use std::process::ExitCode;

use clap::Parser;
use p2p_controller::api::{self, Request};
use p2p_controller::cli::{Cli, ClientArgs, Command, ConfigCommand, DhtCommand, MapsWhich, PubsubCommand, RateCommand};
use p2p_controller::config;
use p2p_controller::error::{Error, Result};
use p2p_controller::{ca_cmd, control, daemon, dataplane, identity, maps_cmd, paths, sys};
use serde_json::json;

fn main() -> ExitCode {
    // RUST_LOG, when set, decides; otherwise everything passes the filter
    // and the level (`run --log-level`, SIGHUP) is the global maximum.
    if std::env::var_os("RUST_LOG").is_some() {
        env_logger::Builder::from_env(env_logger::Env::default()).init();
    } else {
        env_logger::Builder::new().filter_level(log::LevelFilter::Trace).init();
        log::set_max_level(log::LevelFilter::Info);
    }
    // `run --config FILE`: the file's options join the command line first.
    let (argv, config) = match config::merge_argv(std::env::args_os().collect()) {
        Ok(x) => x,
        Err(e) => {
            sys::say(format_args!("p2p-controller: error: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            // A bad value that came from the file: its line.
            if let Some(m) = config.as_ref().and_then(|c| c.locate(&e.to_string())) {
                sys::say(format_args!("p2p-controller: error: {m}"));
                return ExitCode::from(2);
            }
            e.exit()
        }
    };
    if !matches!(cli.command, Command::Run(_) | Command::XdpPass { .. }) {
        // A client whose reader went away (`status | head`) ends quietly,
        // as Unix tools do; the daemon ignores SIGPIPE and writes nothing
        // that can fail it.
        // SAFETY: restoring the default disposition of one signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string();
            let msg = config.and_then(|c| c.locate(&msg)).unwrap_or(msg);
            sys::say(format_args!("p2p-controller: error: {msg}"));
            ExitCode::FAILURE
        }
    }
}

/// `config check`: the file read as `run --config` reads it, then every
/// check `run` makes before it changes anything.
fn config_check(file: &std::path::Path, instance: &str, json: bool, extra: &[String]) -> Result<()> {
    let mut argv: Vec<std::ffi::OsString> = vec!["p2p-controller".into(), "--instance".into(), instance.into()];
    argv.extend(["run".into(), "--config".into(), file.as_os_str().to_owned()]);
    argv.extend(extra.iter().map(Into::into));
    let (argv, cfg) = config::merge_argv(argv)?;
    let cfg = cfg.unwrap_or_default();
    let located = |msg: String| Error::Usage(cfg.locate(&msg).unwrap_or(msg));
    let cli = Cli::try_parse_from(&argv).map_err(|e| located(e.to_string()))?;
    let Command::Run(args) = cli.command else { return Err(Error::Usage("not a run command".into())) };
    daemon::check(&args, instance).map_err(|e| located(e.to_string()))?;
    if json {
        print_json(&json!({"ok": true, "file": file, "options": cfg.len()}));
    } else {
        println!("{}: ok ({} options)", file.display(), cfg.len());
    }
    Ok(())
}

fn socket_path(client: &ClientArgs, instance: &str) -> std::path::PathBuf {
    client.control_socket.clone().unwrap_or_else(|| paths::control_socket(instance))
}

fn ask<T: serde::de::DeserializeOwned>(client: &ClientArgs, instance: &str, req: Request) -> Result<T> {
    control::call(&socket_path(client, instance), instance, &req)
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
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
        Command::Run(args) => daemon::run(*args, instance),
        Command::Maps { which, pin_dir, client, json } => {
            let dir = pin_dir.unwrap_or_else(|| paths::pin_dir(&instance));
            let kad = if matches!(which, MapsWhich::Routes | MapsWhich::Peers) {
                ask::<api::Peers>(&client, &instance, Request::Peers).map_err(|e| e.to_string())
            } else {
                Err(String::new())
            };
            maps_cmd::show(which, &dir, json, kad)
        }
        Command::Peers { client, json } => {
            let v: api::Peers = ask(&client, &instance, Request::Peers)?;
            if json {
                print_json(&v);
            } else {
                println!("{:<54} {:<10} {:<9} {:<28} state", "peer_id", "node_id", "source", "overlay");
                for p in &v.peers {
                    println!(
                        "{:<54} {:<10} {:<9} {:<28} {}{}",
                        p.peer_id.as_deref().unwrap_or("-"),
                        &p.node_id[..8.min(p.node_id.len())],
                        p.source,
                        p.overlay.as_deref().unwrap_or("-"),
                        p.state,
                        if p.connected { ", connected" } else { "" }
                    );
                }
                let routable = v.peers.iter().filter(|p| p.routable).count();
                println!("{} peer(s), {routable} routed by the datapath", v.peers.len());
            }
            Ok(())
        }
        Command::Dht(DhtCommand::Put { key, value, quorum, client, json }) => {
            let v: api::DhtPut =
                ask(&client, &instance, Request::DhtPut { key: key.clone(), value, quorum: quorum.map(|q| q as u64) })?;
            if json {
                print_json(&v);
            } else {
                println!("stored {key} (quorum {}, {} us)", v.quorum, v.rtt_us);
            }
            Ok(())
        }
        Command::Dht(DhtCommand::Get { key, timeout_ms, network, client, json }) => {
            let v: api::DhtGet = ask(&client, &instance, Request::DhtGet { key: key.clone(), timeout_ms, network })?;
            if json {
                print_json(&v);
            } else if v.found {
                println!(
                    "{key} = {}\nfrom {} ({}) in {} us",
                    v.value.as_deref().unwrap_or(""),
                    v.from.as_deref().unwrap_or("this node"),
                    v.source.as_deref().unwrap_or(""),
                    v.rtt_us
                );
            } else {
                return Err(Error::Remote(format!("{key}: not found in the DHT")));
            }
            Ok(())
        }
        Command::Store(cmd) => p2p_controller::store_cmd::run(cmd, &instance, |c| socket_path(c, &instance)),
        Command::Pubsub(PubsubCommand::Publish { topic, message, client, json }) => {
            let v: api::Published = ask(&client, &instance, Request::PubsubPublish { topic: topic.clone(), message })?;
            if json {
                print_json(&v);
            } else {
                println!("published on {topic} to {} peer(s): {}", v.peers, v.message_id);
            }
            Ok(())
        }
        Command::Pubsub(PubsubCommand::Subscribe { topic, count, client, json }) => {
            let path = socket_path(&client, &instance);
            let mut seen = 0u64;
            eprintln!("subscribed to {topic}; Ctrl-C to stop");
            let req = Request::PubsubSubscribe { topic: topic.clone() };
            control::stream(&path, &instance, &req, |m: &api::PubsubMessage| {
                use std::io::Write;
                let line = if json { serde_json::to_string(m).unwrap_or_default() } else { m.data.clone() };
                let mut out = std::io::stdout().lock();
                // A closed stdout (`| head`) ends the subscription quietly.
                if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                    return false;
                }
                seen += 1;
                count.is_none_or(|c| seen < c)
            })
        }
        Command::Status { client, json } => {
            let v: api::Status = ask(&client, &instance, Request::Status)?;
            if json {
                print_json(&v);
            } else {
                println!("instance      {}", v.instance);
                println!("peer_id       {}", v.peer_id);
                println!("node_id       {}", v.node_id);
                println!("datapath      {} {}", v.datapath, v.xdp_mode.as_deref().unwrap_or(""));
                println!("interfaces    {}", v.ifaces.join(" "));
                println!("overlay port  {}", v.overlay_port);
                println!("listen        {}", v.net.listen_addrs.join(" "));
                println!("advertised    {}", v.net.external_addrs.join(" "));
                println!("overlay       {}", v.net.overlay_endpoints.join(" "));
                println!(
                    "peers         {} routed ({} answered ping), {} in Kademlia, {} connected",
                    v.peers, v.peers_answered, v.kad_peers, v.net.connected_peers
                );
                println!("bootstrap     {}", compact(&v.net.bootstrap));
                println!("ready         {}", v.ready);
                println!("delivered     {}", compact(&v.overlay.delivered));
                println!("slow path     {}", v.overlay.slow_path);
                println!("lookups answ. {}", v.overlay.lookups_answered);
                println!("map sync      {}", compact(&v.map_sync));
                if let Some(t) = &v.net.trust {
                    println!(
                        "membership    anchor {}, certificate {} ({}, class {}), {} members, {} pending, {} refused",
                        t.anchor, t.serial, t.certificate, t.class, t.members, t.pending, t.refused_now
                    );
                    for (p, why) in &t.refused_us {
                        println!("refused by    {p}: {why}");
                    }
                }
            }
            Ok(())
        }
        Command::Lookup { key, timeout_ms, no_fallback, client, json } => {
            let v: api::Lookup =
                ask(&client, &instance, Request::Lookup { key: key.clone(), timeout_ms, fallback: !no_fallback })?;
            let s = |o: &Option<String>| o.clone().unwrap_or_default();
            if json {
                print_json(&v);
            } else if v.path == "kademlia" {
                println!("{}", s(&v.fallback_reason));
                if v.found {
                    println!(
                        "{key} = {}\nanswered by Kademlia's iterative get from {} in {} us",
                        s(&v.value),
                        s(&v.answered_by),
                        v.rtt_us
                    );
                } else {
                    println!("{key}: not found by Kademlia either ({} us)", v.rtt_us);
                }
            } else if v.found {
                println!(
                    "{} = {}\nanswered by {} ({}) in {} hop(s), rtt {} us, via {}",
                    key,
                    s(&v.value),
                    s(&v.answered_by),
                    v.owner.as_deref().unwrap_or("this node"),
                    v.hops.unwrap_or(0),
                    v.rtt_us,
                    v.path
                );
            } else {
                println!(
                    "{key}: not found; answered by {} in {} hop(s), rtt {} us",
                    s(&v.answered_by),
                    v.hops.unwrap_or(0),
                    v.rtt_us
                );
            }
            Ok(())
        }
        Command::Send { node_id, data, plaintext, client, json } => {
            if node_id.parse::<libp2p::PeerId>().is_err() {
                node_id
                    .parse::<p2p_common::id::NodeId>()
                    .map_err(|e| Error::Usage(format!("DEST is neither a peer ID nor a node ID: {e}")))?;
            }
            let len = data.len();
            let v: api::Sent = ask(&client, &instance, Request::Send { node_id: node_id.clone(), data, plaintext })?;
            if json {
                print_json(&v);
            } else {
                let how = if v.encrypted { "encrypted end to end" } else { "in plaintext" };
                println!("sent {len} byte(s) to {node_id} via {}, {how}", v.via.as_deref().unwrap_or("this node"));
            }
            Ok(())
        }
        Command::Recv { count, client, json } => {
            let path = socket_path(&client, &instance);
            let mut seen = 0u64;
            eprintln!("receiving DATA; Ctrl-C to stop");
            control::stream(&path, &instance, &Request::Recv, |d: &p2p_controller::e2e::Delivery| {
                use std::io::Write;
                let line = if json {
                    serde_json::to_string(d).unwrap_or_default()
                } else {
                    let from = match &d.from_peer {
                        Some(p) if d.authenticated => format!("{p} (authenticated, encrypted)"),
                        _ => format!("node {} (unauthenticated plaintext)", d.from_node),
                    };
                    format!("{from}: {}", d.data)
                };
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                    return false;
                }
                seen += 1;
                count.is_none_or(|c| seen < c)
            })
        }
        Command::Ping { node_id, timeout_ms, client, json } => {
            node_id.parse::<p2p_common::id::NodeId>().map_err(|e| Error::Usage(format!("NODE_ID: {e}")))?;
            let v: api::Pinged = ask(&client, &instance, Request::Ping { node_id, timeout_ms })?;
            if json {
                print_json(&v);
            } else {
                println!("PONG from {}: rtt {} us", v.from, v.rtt_us);
            }
            Ok(())
        }
        Command::Block { target, duration, reason, client, json } => {
            // Checked here too, so that bad input changes nothing.
            p2p_controller::units::parse_block_target(&target).map_err(Error::Usage)?;
            let for_s = match duration.as_deref().map(p2p_controller::units::parse_duration) {
                None => None,
                Some(Ok(d)) => d.map(|d| d.as_secs().max(1)),
                Some(Err(e)) => return Err(Error::Usage(format!("--for {e}"))),
            };
            let v: api::BlockView = ask(&client, &instance, Request::Block { target, for_s, reason })?;
            if json {
                print_json(&v);
            } else {
                let until = v.ban.remaining_s.map_or("until unblocked".to_string(), |s| format!("for {s} s"));
                println!("blocked {} {until} ({})", v.target, v.ban.text);
            }
            Ok(())
        }
        Command::Unblock { target, client, json } => {
            p2p_controller::units::parse_block_target(&target).map_err(Error::Usage)?;
            let v: api::Unblocked = ask(&client, &instance, Request::Unblock { target })?;
            if json {
                print_json(&v);
            } else if v.was_blocked {
                println!("unblocked {}", v.target);
            } else {
                println!("{} was not blocked by this daemon (any kernel entry for it is removed)", v.target);
            }
            Ok(())
        }
        Command::Reputation { client, json } => {
            let v: api::ReputationView = ask(&client, &instance, Request::Reputation)?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "ban below {} (half-life {} s); bans {} s, doubling to {} s",
                    v.threshold, v.half_life_s, v.ban_base_s, v.ban_max_s
                );
                println!("\n{:<66} {:>8} {:>4}  evidence", "subject", "score", "bans");
                for s in &v.subjects {
                    let ev: Vec<String> = s.evidence.iter().map(|(k, n)| format!("{k}={n}")).collect();
                    println!("{:<66} {:>8.1} {:>4}  {}", s.subject, s.score, s.offences, ev.join(" "));
                }
                println!("\n{:<66} {:<10} {:>10}  why", "blocked", "reason", "remaining");
                for b in &v.blocks {
                    let left = b.ban.remaining_s.map_or("forever".into(), |s| format!("{s} s"));
                    println!("{:<66} {:<10} {:>10}  {} ({})", b.target, b.ban.reason, left, b.ban.text, b.by);
                }
            }
            Ok(())
        }
        Command::Rate { action, client, json } => {
            let req = match action {
                None => Request::Rate,
                Some(RateCommand::Set { class, rate }) => {
                    p2p_controller::units::parse_budget(&rate, std::time::Duration::ZERO).map_err(Error::Usage)?;
                    Request::RateSet { class, rate }
                }
                Some(RateCommand::Assign { node_id, class }) => {
                    node_id.parse::<p2p_common::id::NodeId>().map_err(|e| Error::Usage(format!("NODE_ID: {e}")))?;
                    Request::RateAssign { node_id, class }
                }
            };
            let v: api::RateView = ask(&client, &instance, req)?;
            if json {
                print_json(&v);
            } else {
                for (c, r) in &v.classes {
                    println!("class {c:<16} {r}");
                }
                println!("non-peers        {}", v.nonpeer);
                println!("burst            {} ms of budget", v.burst_ms);
                for (n, c) in &v.assigned {
                    println!("peer {n} in {c}");
                }
            }
            Ok(())
        }
        Command::Ca(cmd) => ca_cmd::run(cmd),
        Command::Config(ConfigCommand::Check { file, json, run_options }) => {
            config_check(&file, &instance, json, &run_options)
        }
        Command::Config(ConfigCommand::Example) => {
            print!("{}", config::example());
            Ok(())
        }
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
                sys::say(format_args!("p2p-controller: pass-through XDP on {i} ({got} mode)"));
            }
            while !sys::wait_signal(&set, std::time::Duration::from_secs(3600)) {}
            dp.detach_all();
            Ok(())
        }
    }
}

/// Compact JSON of a status part, for the human-readable `status`.
fn compact<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
