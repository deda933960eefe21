//! The command-line contract: clear errors (never a panic) for bad input and
//! bad configuration, and the documented output shapes.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_p2p-controller"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("p2p-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

fn is_root() -> bool {
    // SAFETY: trivial syscall.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn id_creates_then_reuses_the_key_and_prints_json() {
    let d = tmp("id");
    let run = || bin().args(["id", "--json", "--state-dir"]).arg(&d).output().unwrap();
    let a = run();
    assert!(a.status.success(), "{}", stderr(&a));
    let v: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(v["node_id"].as_str().unwrap().len(), 64);
    assert!(v["peer_id"].as_str().unwrap().starts_with("12D3KooW"));
    let b = run();
    assert_eq!(a.stdout, b.stdout, "the identity must persist");
}

#[test]
fn malformed_peer_file_names_line_and_field() {
    let d = tmp("peers");
    let peers = d.join("peers.json");
    std::fs::write(&peers, "[\n  {\"node_id\": \"00\", \"addr\": \"10.0.0.1\", \"port\": 9470}\n]\n").unwrap();
    let o = bin()
        .args([
            "--instance",
            "cli-test-peers",
            "run",
            "--datapath",
            "userspace",
            "--overlay-port",
            "59123",
            "--state-dir",
        ])
        .arg(d.join("state"))
        .arg("--peers")
        .arg(&peers)
        .output()
        .unwrap();
    assert_clean_failure(&o, "line 2");
    assert_clean_failure(&o, "node_id");
    assert!(!d.join("state").join("node.key").exists(), "input is checked before a key is created");
}

#[test]
fn bad_run_settings_are_refused_before_anything_changes() {
    let d = tmp("settings");
    let run = |extra: &[&str]| {
        bin()
            .args(["--instance", "cli-test-settings", "run", "--datapath", "userspace", "--state-dir"])
            .arg(d.join("state"))
            .args(extra)
            .output()
            .unwrap()
    };
    assert_clean_failure(&run(&["--overlay-port", "0"]), "--overlay-port");
    assert_clean_failure(&run(&["--rate-default", "fast"]), "--rate-default");
    assert_clean_failure(&run(&["--rate-nonpeer", "0pps"]), "unlimited");
    assert_clean_failure(&run(&["--rate-class", "mobile"]), "NAME=RATE");
    assert_clean_failure(&run(&["--rate-class", "mo bile=1pps"]), "class name");
    assert_clean_failure(&run(&["--rate-burst", "soon"]), "--rate-burst");
    assert_clean_failure(&run(&["--max-peers", "0"]), "--max-peers");
    assert_clean_failure(&run(&["--link-rotate", "5m"]), "--link-rotate");
    assert_clean_failure(&run(&["--auth", "sometimes"]), "--auth");
    assert_clean_failure(&run(&["--metrics", "localhost"]), "--metrics");
    assert_clean_failure(&run(&["--store-cache-cool", "forever"]), "--store-cache-cool");
    assert_clean_failure(&run(&["--store-hot-reads", "many"]), "--store-hot-reads");
    let peers = d.join("peers.json");
    let id = "aa".repeat(32);
    std::fs::write(&peers, format!(r#"[{{"node_id": "{id}", "addr": "10.0.0.2", "port": 9470}}]"#)).unwrap();
    let o = run(&["--auth", "required", "--peers", peers.to_str().unwrap()]);
    assert_clean_failure(&o, "static peers have no libp2p identity");
    assert!(!d.join("state").join("node.key").exists(), "nothing was created");
}

#[test]
fn run_refuses_a_certificate_its_peers_would_refuse() {
    let d = tmp("trust");
    let ca = d.join("ca");
    let ok = |args: &[&str]| {
        let o = bin().args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    };
    ok(&["ca", "init", "--out", ca.to_str().unwrap()]);
    let state = d.join("state");
    let other = d.join("other");
    let peer_of = |dir: &std::path::Path| {
        let o = bin().args(["id", "--json", "--state-dir"]).arg(dir).output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["peer_id"].as_str().unwrap().to_string()
    };
    let (me, them) = (peer_of(&state), peer_of(&other));
    let sign = |peer: &str, valid: &str, out: &str| {
        let out = d.join(out);
        ok(&["ca", "sign", peer, "--ca", ca.to_str().unwrap(), "--valid", valid, "--out", out.to_str().unwrap()]);
        out
    };
    let theirs = sign(&them, "1h", "theirs.cert");
    let short = sign(&me, "1s", "short.cert");
    let anchor = ca.join("root.pub");
    let run = |cert: &std::path::Path, state: &std::path::Path| {
        bin()
            .args(["--instance", "cli-test-trust", "run", "--datapath", "userspace", "--overlay-port", "59124"])
            .arg("--state-dir")
            .arg(state)
            .arg("--trust-anchor")
            .arg(&anchor)
            .arg("--cert")
            .arg(cert)
            .output()
            .unwrap()
    };
    assert_clean_failure(&run(&theirs, &state), "certifies");
    let mine = sign(&me, "1h", "mine.cert");
    let other_ca = d.join("other-ca");
    ok(&["ca", "init", "--out", other_ca.to_str().unwrap()]);
    let o = bin()
        .args(["--instance", "cli-test-trust", "run", "--datapath", "userspace", "--overlay-port", "59124"])
        .arg("--state-dir")
        .arg(&state)
        .arg("--trust-anchor")
        .arg(&anchor)
        .arg("--cert")
        .arg(&mine)
        .arg("--ca-key")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert_clean_failure(&o, "is not the --trust-anchor");
    assert_clean_failure(&run(&theirs, &d.join("fresh")), "does not exist");
    assert!(!d.join("fresh").join("node.key").exists(), "no key is created for a certificate of another node");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_clean_failure(&run(&short, &state), "expired");
    assert_clean_failure(&run(&anchor, &state), "not a certificate");
    let o = bin().args(["run", "--datapath", "userspace", "--cert"]).arg(&short).output().unwrap();
    assert_clean_failure(&o, "--trust-anchor");
}

#[test]
fn missing_interface_is_named() {
    let d = tmp("iface");
    let o = bin()
        .args(["--instance", "cli-test-iface", "run", "--iface", "nosuchif0", "--state-dir"])
        .arg(d.join("state"))
        .output()
        .unwrap();
    assert_clean_failure(&o, "nosuchif0");
}

#[test]
fn xdp_without_interface_is_refused() {
    let d = tmp("noiface");
    let o = bin().args(["--instance", "cli-test-noif", "run", "--state-dir"]).arg(d.join("s")).output().unwrap();
    assert_clean_failure(&o, "--iface");
}

#[test]
fn maps_without_pins_says_what_to_do() {
    let d = tmp("maps");
    let o = bin().args(["maps", "stats", "--pin-dir"]).arg(d.join("none")).output().unwrap();
    assert_clean_failure(&o, "pinned");
}

#[test]
fn daemon_commands_without_daemon_say_so() {
    let d = tmp("nodaemon");
    let o = bin().args(["status", "--control-socket"]).arg(d.join("x.sock")).output().unwrap();
    assert_clean_failure(&o, "p2p-controller run --instance");
    let o = bin().args(["send", "nothex", "data"]).output().unwrap();
    assert_clean_failure(&o, "DEST");
    for args in [
        &["dht", "put", "k", "v"][..],
        &["dht", "get", "k"],
        &["pubsub", "publish", "t", "m"],
        &["pubsub", "subscribe", "t"],
        &["peers"],
    ] {
        let o = bin().args(args).arg("--control-socket").arg(d.join("x.sock")).output().unwrap();
        assert_clean_failure(&o, "p2p-controller run --instance");
    }
}

#[test]
fn bad_control_plane_flags_are_refused() {
    let d = tmp("netflags");
    let run = |extra: &[&str]| {
        bin()
            .args(["--instance", "cli-test-net", "run", "--datapath", "userspace", "--no-mdns", "--state-dir"])
            .arg(d.join("s"))
            .args(extra)
            .output()
            .unwrap()
    };
    assert_clean_failure(&run(&["--bootstrap", "10.0.0.1:9471"]), "--bootstrap");
    assert_clean_failure(&run(&["--quorum", "4", "--replication", "3"]), "--quorum 4 exceeds --replication 3");
    assert_clean_failure(&run(&["--replication", "0"]), "--replication must be at least 1");
    assert_clean_failure(&run(&["--listen", "not-an-address"]), "neither an IP address");
    assert_clean_failure(&run(&["--listen", "::", "--listen", "0.0.0.0"]), "at most one IP address");
    assert_clean_failure(&run(&["--kad-protocol", "p2p-nos"]), "--kad-protocol");
}

#[test]
fn bad_instance_name_is_refused() {
    let o = bin().args(["--instance", "../etc", "run", "--datapath", "userspace"]).output().unwrap();
    assert_clean_failure(&o, "--instance");
}

#[test]
fn port_in_use_is_reported() {
    if !is_root() {
        eprintln!("skipped: needs root (the run directory /run/p2p-nos)");
        return;
    }
    let holder = std::net::UdpSocket::bind("[::]:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let d = tmp("port");
    let o = bin()
        .args(["--instance", "cli-test-port", "run", "--datapath", "userspace", "--overlay-port", &port])
        .arg("--state-dir")
        .arg(d.join("s"))
        .arg("--control-socket")
        .arg(d.join("c.sock"))
        .output()
        .unwrap();
    assert_clean_failure(&o, "already in use");
    assert!(!std::path::Path::new("/run/p2p-nos/cli-test-port.lock").exists(), "a failed start leaves no lock file");
    // The metrics address taken: refused before the datapath is set up.
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = web.local_addr().unwrap().to_string();
    drop(holder);
    let o = bin()
        .args(["--instance", "cli-test-port", "run", "--datapath", "userspace", "--overlay-port", &port])
        .args(["--no-mdns", "--p2p-port", "0", "--metrics", &metrics])
        .arg("--state-dir")
        .arg(d.join("s"))
        .arg("--control-socket")
        .arg(d.join("c.sock"))
        .output()
        .unwrap();
    assert_clean_failure(&o, &format!("--metrics {metrics}: cannot listen"));
    assert!(!std::path::Path::new("/run/p2p-nos/cli-test-port.lock").exists(), "a failed start leaves no lock file");
    assert!(!d.join("c.sock").exists(), "nor a control socket");
}

#[test]
fn userspace_node_serves_status_and_stops_on_sigterm() {
    if !is_root() {
        eprintln!("skipped: needs root (the run directory /run/p2p-nos)");
        return;
    }
    let d = tmp("daemon");
    let sock = d.join("c.sock");
    let probe = std::net::UdpSocket::bind("[::]:0").unwrap();
    let port = probe.local_addr().unwrap().port().to_string();
    drop(probe);
    // In the host's own namespace: no mDNS on its real network, and an
    // ephemeral libp2p port.
    let mut child = bin()
        .args(["--instance", "cli-test-daemon", "run", "--datapath", "userspace", "--overlay-port", &port])
        .args(["--no-mdns", "--p2p-port", "0"])
        .arg("--state-dir")
        .arg(d.join("s"))
        .arg("--control-socket")
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its log pipes close at once (`run … 2>&1 | head`, a dead log
    // collector): the daemon goes on without them.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let mut status = None;
    for _ in 0..200 {
        let o = bin().args(["status", "--json", "--control-socket"]).arg(&sock).output().unwrap();
        if o.status.success() {
            status = Some(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let exit = child.wait().unwrap();
    let status = status.expect("daemon never answered status");
    assert_eq!(status["datapath"], "userspace");
    assert_eq!(status["overlay_port"].as_u64().unwrap().to_string(), port);
    assert_eq!(status["delivered"]["data"], 0);
    assert!(status["peer_id"].as_str().unwrap().starts_with("12D3KooW"), "{status}");
    assert_eq!(status["kad"]["protocol"], "/p2p-nos/kad/1.0.0");
    assert_eq!(status["kad"]["mode"], "server", "forced server mode");
    assert_eq!(status["kad"]["replication"], 3, "default: 3 copies");
    assert!(!status["listen_addrs"].as_array().unwrap().is_empty(), "{status}");
    assert_eq!(status["kad_peers"], 0);
    assert!(exit.success(), "SIGTERM must be a clean exit even with its log pipes closed: {exit:?}");
    assert!(!sock.exists(), "the control socket is removed on exit");
}

#[test]
fn missing_capabilities_are_named() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv (util-linux) to drop privileges");
        return;
    }
    let d = tmp("caps");
    std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_p2p-controller"))
        .args(["--instance", "cli-test-caps", "run", "--iface", "lo", "--state-dir"])
        .arg(d.join("s"))
        .output()
        .unwrap();
    assert_clean_failure(&o, "CAP_BPF");
    assert_clean_failure(&o, "CAP_NET_ADMIN");
}

#[test]
fn absent_bpffs_is_reported() {
    if !is_root() || Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and unshare (util-linux) for a private mount namespace");
        return;
    }
    let d = tmp("bpffs");
    // A private mount namespace without /sys/fs/bpf: the host's mount is untouched.
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "umount -l /sys/fs/bpf 2>/dev/null; mountpoint -q /sys/fs/bpf && exit 99; exec {} --instance cli-test-bpffs run --iface lo --state-dir {}",
            env!("CARGO_BIN_EXE_p2p-controller"),
            d.join("s").display()
        ))
        .output()
        .unwrap();
    if o.status.code() == Some(99) {
        eprintln!("skipped: could not hide bpffs in a private mount namespace");
        return;
    }
    assert_clean_failure(&o, "bpffs is not mounted");
}

#[test]
fn ca_issues_checks_and_revokes_certificates() {
    let d = tmp("ca");
    let ca = d.join("ca");
    let ok = |args: &[&str]| {
        let o = bin().args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    let js = |o: &Output| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap();
    let cas = ca.to_str().unwrap();
    let init = js(&ok(&["ca", "init", "--out", cas, "--json"]));
    assert_eq!(init["fingerprint"].as_str().unwrap().len(), 16);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(ca.join("root.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(ca.join("root.key")).unwrap();
    assert_clean_failure(&bin().args(["ca", "init", "--out", cas]).output().unwrap(), "refusing to overwrite");
    assert_eq!(std::fs::read(ca.join("root.key")).unwrap(), before, "the root is untouched");

    let state = d.join("state");
    let id = js(&ok(&["id", "--json", "--state-dir", state.to_str().unwrap()]));
    let peer = id["peer_id"].as_str().unwrap();
    // Bad input changes nothing: no serial is used up.
    for (args, needle) in [
        (vec!["ca", "sign", "not-a-peer", "--ca", cas], "not a peer ID"),
        (vec!["ca", "sign", peer, "--ca", cas, "--valid", "0s"], "longer than 0"),
        (vec!["ca", "sign", peer, "--ca", cas, "--valid", "forever"], "must expire"),
        (vec!["ca", "sign", peer, "--ca", cas, "--class", "High Capacity"], "--class"),
        (vec!["ca", "sign", peer, "--ca", d.join("nope").to_str().unwrap()], "ca init --out"),
        (vec!["ca", "revoke", "1", "--ca", cas], "never issued"),
    ] {
        assert_clean_failure(&bin().args(&args).output().unwrap(), needle);
    }
    assert_eq!(std::fs::read_to_string(ca.join("issued.jsonl")).unwrap(), "");

    let cert = d.join("node.cert");
    let certs = cert.to_str().unwrap();
    let signed =
        js(&ok(&["ca", "sign", peer, "--ca", cas, "--class", "mobile", "--valid", "1h", "--out", certs, "--json"]));
    assert_eq!((signed["serial"].as_u64(), signed["class"].as_str()), (Some(1), Some("mobile")));
    assert_eq!(signed["node_id"], id["node_id"]);
    let life = signed["not_after"].as_u64().unwrap() - signed["not_before"].as_u64().unwrap();
    assert_eq!(life, 3600 + 300, "1 h from now, from 5 min ago");
    let printed = ok(&["ca", "sign", peer, "--ca", cas]);
    assert!(String::from_utf8_lossy(&printed.stdout).starts_with("-----BEGIN P2P-NOS CERTIFICATE-----\n"));

    let anchor = ca.join("root.pub");
    let shown = js(&ok(&["ca", "show", certs, "--anchor", anchor.to_str().unwrap(), "--json"]));
    assert_eq!((shown["accepted"].as_bool(), shown["peer_id"].as_str()), (Some(true), Some(peer)));
    // Another network's root refuses it, and says so in the JSON too.
    let other = d.join("other");
    ok(&["ca", "init", "--out", other.to_str().unwrap()]);
    let o = bin().args(["ca", "show", certs, "--json", "--anchor"]).arg(other.join("root.pub")).output().unwrap();
    assert_clean_failure(&o, "a node would refuse it");
    assert_eq!(js(&o)["accepted"], false);

    let revoked = js(&ok(&["ca", "revoke", "1", "--ca", cas, "--json"]));
    assert_eq!((revoked["sequence"].as_u64(), revoked["already_revoked"].as_bool()), (Some(1), Some(false)));
    let crl = ca.join("revocations");
    let o = bin()
        .args(["ca", "show", certs, "--anchor", anchor.to_str().unwrap(), "--revocations", crl.to_str().unwrap()])
        .output()
        .unwrap();
    assert_clean_failure(&o, "serial 1 is revoked");
    let again = js(&ok(&["ca", "revoke", "1", "--ca", cas, "--json"]));
    assert_eq!((again["sequence"].as_u64(), again["already_revoked"].as_bool()), (Some(1), Some(true)));
    let list = js(&ok(&["ca", "show", crl.to_str().unwrap(), "--json"]));
    assert_eq!(list["revoked"][0]["serial"], 1);

    // A file of the wrong kind, or altered, is named with what is wrong.
    assert_clean_failure(&bin().args(["ca", "show", certs, "--anchor", certs]).output().unwrap(), "not a root key");
    let mut text = std::fs::read_to_string(&cert).unwrap();
    text.insert(text.find('\n').unwrap() + 5, 'A');
    std::fs::write(&cert, text).unwrap();
    assert_clean_failure(&bin().args(["ca", "show", certs]).output().unwrap(), "node.cert");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn config_files_are_checked_line_by_line_and_the_command_line_wins() {
    let d = tmp("config");
    let file = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let check = |p: &std::path::Path| bin().args(["config", "check", "--json"]).arg(p).output().unwrap();
    let good = file(
        "good.toml",
        "# a node\ndatapath = \"userspace\"\nkbucket-size = 8\nno-mdns = true\nbootstrap = [\"/ip4/10.0.0.1/tcp/9471\"]\nstore-quota = \"2GiB\"\n",
    );
    let o = check(&good);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["ok"].as_bool(), v["options"].as_u64()), (Some(true), Some(5)), "{v}");
    // Unknown key, a value clap refuses, a value `run` refuses: each names its line.
    let o = check(&file("unknown.toml", "kbucket-size = 8\n\nstore_quota = \"1GiB\"\n"));
    assert_clean_failure(&o, "line 3: unknown key \"store_quota\" (did you mean store-quota?)");
    let o = check(&file("clap.toml", "datapath = \"userspace\"\nkbucket-size = \"many\"\n"));
    assert_clean_failure(&o, "line 2: kbucket-size");
    let o = check(&file("run.toml", "datapath = \"userspace\"\n\nrate-default = \"fast\"\n"));
    assert_clean_failure(&o, "line 3: rate-default");
    let o = check(&file("syntax.toml", "datapath = \"userspace\"\nkbucket-size = = 3\n"));
    assert_clean_failure(&o, "line 2");
    let o = check(&d.join("absent.toml"));
    assert_clean_failure(&o, "cannot read");
    // `run --config`: the file's bad value is refused with its line before
    // anything is made; the same option on the command line wins.
    let bad = file("bad-port.toml", "datapath = \"userspace\"\noverlay-port = 0\n");
    let run = |extra: &[&str]| {
        bin()
            .args(["--instance", "cli-test-config", "run", "--config"])
            .arg(&bad)
            .args(["--state-dir"])
            .arg(d.join("state"))
            .args(extra)
            .output()
            .unwrap()
    };
    assert_clean_failure(&run(&[]), "line 2: overlay-port");
    assert_clean_failure(&run(&["--overlay-port", "9470", "--kbucket-size", "0"]), "--kbucket-size");
    let o = run(&["--overlay-port", "9470", "--kbucket-size", "0"]);
    assert!(
        !stderr(&o).contains("bad-port.toml"),
        "an error about a command-line option names no file: {}",
        stderr(&o)
    );
    assert!(!d.join("state").join("node.key").exists(), "nothing was created");
}

#[test]
fn deploy_config_is_the_documented_example() {
    let o = bin().args(["config", "example"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let example = String::from_utf8(o.stdout).unwrap();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/p2p-nos.toml")).unwrap();
    assert_eq!(shipped, example, "deploy/p2p-nos.toml is stale: p2p-controller config example > deploy/p2p-nos.toml");
    for key in ["store-quota", "metrics", "bootstrap", "trust-anchor", "rate-default"] {
        assert!(example.contains(&format!("\n#{key} = ")), "{key} missing");
    }
}

#[test]
fn sighup_reloads_rates_bans_and_log_level_from_the_config() {
    if !is_root() {
        eprintln!("skipped: needs root (the run directory /run/p2p-nos)");
        return;
    }
    let d = tmp("reload");
    let (sock, conf, log) = (d.join("c.sock"), d.join("node.toml"), d.join("stderr"));
    let probe = std::net::UdpSocket::bind("[::]:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let write = |extra: &str| {
        let base = format!("datapath = \"userspace\"\nno-mdns = true\np2p-port = 0\noverlay-port = {port}\n");
        std::fs::write(&conf, format!("{base}{extra}")).unwrap();
    };
    write("rate-default = \"1000pps,1MB/s\"\nban-threshold = -100\n");
    let mut child = bin()
        .args(["--instance", "cli-test-reload", "run", "--config"])
        .arg(&conf)
        .arg("--state-dir")
        .arg(d.join("s"))
        .arg("--control-socket")
        .arg(&sock)
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let ask = |what: &str| -> Option<serde_json::Value> {
        let o = bin().args([what, "--json", "--control-socket"]).arg(&sock).output().ok()?;
        o.status.success().then(|| serde_json::from_slice(&o.stdout).ok()).flatten()
    };
    let wait = |what: &str, ok: &dyn Fn(&serde_json::Value) -> bool| {
        for _ in 0..100 {
            if let Some(v) = ask(what).filter(|v| ok(v)) {
                return Some(v);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        None
    };
    let default_rate = |v: &serde_json::Value| v["classes"]["default"].as_str().unwrap_or("").to_string();
    let before = wait("rate", &|v| default_rate(v).contains("1000")).expect("daemon up with the file's rate");
    let hup = |child: &std::process::Child| unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    // A bad file: nothing changes, the log says why and where.
    write("rate-default = \"fast\"\n");
    hup(&child);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(default_rate(&ask("rate").unwrap()), default_rate(&before));
    // A good one: rates, ban settings and log level apply; kbucket-size waits for a restart.
    write("rate-default = \"2000pps,2MB/s\"\nban-threshold = -50\nlog-level = \"debug\"\nkbucket-size = 9\n");
    hup(&child);
    let after = wait("rate", &|v| default_rate(v).contains("2000"));
    let rep = wait("reputation", &|v| v["threshold"].as_f64() == Some(-50.0));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let exit = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(after.is_some(), "rate not reloaded: {text}");
    assert!(rep.is_some(), "ban threshold not reloaded: {text}");
    assert!(text.contains("SIGHUP: nothing reloaded") && text.contains("line 5: rate-default"), "{text}");
    assert!(text.contains("SIGHUP: reloaded") && text.contains("next start: --kbucket-size"), "{text}");
    assert!(text.lines().any(|l| l.contains("DEBUG") && l.contains("log level now DEBUG")), "{text}");
    assert!(exit.success(), "{exit:?}");
}
