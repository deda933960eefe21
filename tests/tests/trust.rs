//! Membership in an anchored network end to end (issue 8, first part):
//! five nodes on a bridge (k = 20), bootstrapping from h1.
//!
//! - h1, h2, h3 hold certificates of root A and run with A as anchor; h3's
//!   certificate lasts only a minute.
//! - h4 holds a certificate of another root B (anchor B); h5 runs open.
//! - h1–h3 route to each other and never to h4 or h5, which are not in
//!   their Kademlia tables either; `peers` and `status` say why.
//! - `ca revoke` of h2's serial, the new list copied to h1's
//!   `--revocations` file: h2 is gone from h1's maps and, the list passed
//!   on by h1, from h3's, within 5 s.
//! - h3's certificate expires: h1 drops it within 2 s.
//!
//! A second testbed checks renewal: h1 signs (`--ca-key`), h2's
//! certificate lasts 20 s and is renewed before it expires, again and again:
//! h2 stays in h1's maps well past its first certificate's end.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use p2p_common::id::NodeId;
use p2p_tests::testbed::Testbed;
use p2p_tests::util::wait_for;
use p2p_tests::{Controller, require};
use serde_json::{Value, json};
use std::net::SocketAddr;

#[test]
fn certificates_are_renewed_before_they_expire() -> Result<()> {
    let Some(env) = require("certificates_are_renewed_before_they_expire") else { return Ok(()) };
    let ctl = &env.ctl;
    let mut tb = Testbed::prepare(ctl, 2, &["--kbucket-size", "20"], true, false)?;
    let s = |p: &std::path::Path| p.to_str().unwrap_or_default().to_string();
    let ca = tb.tmp.path().join("ca");
    ctl.json(&["ca", "init", "--out", &s(&ca), "--json"])?;
    let mut first = Vec::new();
    for (i, valid) in [(0, "1h"), (1, "20s")] {
        let cert = tb.specs[i].dir.join("node.cert");
        let peer = tb.specs[i].peer_id.clone();
        let v = ctl.json(&["ca", "sign", &peer, "--ca", &s(&ca), "--valid", valid, "--out", &s(&cert), "--json"])?;
        first.push(v);
        let anchor = s(&ca.join("root.pub"));
        tb.specs[i].extra_args.extend(["--trust-anchor".into(), anchor, "--cert".into(), s(&cert)]);
    }
    tb.specs[0].extra_args.extend(["--ca-key".into(), s(&ca)]);
    tb.launch(0)?;
    tb.launch(1)?;
    let joined = wait_for(Duration::from_secs(30), || (tb.routed(0).ok()?.0 == [1]).then_some(()));
    ensure!(joined.is_some(), "h1 does not route to h2: {:?}", tb.routed(0)?.0);
    // Past the first certificate's end, h2 is still routed.
    let end = first[1]["not_after"].as_u64().context("not_after")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    std::thread::sleep(Duration::from_secs(end.saturating_sub(now) + 3));
    ensure!(tb.routed(0)?.0 == [1], "h2 fell out when its first certificate ended: {:?}", tb.routed(0)?.0);
    let trust = &tb.node(1).status()?["trust"];
    ensure!(trust["renewals"].as_u64() >= Some(1) && trust["not_after"].as_u64() > Some(end), "h2: {trust}");
    ensure!(tb.node(0).status()?["trust"]["signer"] == true, "h1 signs");
    // The renewed certificate is on disk, for the next start.
    let cert = s(&tb.specs[1].dir.join("node.cert"));
    let shown = ctl.json(&["ca", "show", &cert, "--anchor", &s(&ca.join("root.pub")), "--json"])?;
    ensure!(shown["accepted"] == true && shown["serial"].as_u64() > first[1]["serial"].as_u64(), "{shown}");
    let peers = peer_states(&tb.node(0).cli(&["peers"])?);
    ensure!(peers.iter().any(|(_, _, st)| st == "routable"), "h1's view of h2: {peers:?}");
    Ok(())
}

#[test]
fn membership_certificates_admit_expire_and_revoke() -> Result<()> {
    let Some(env) = require("membership_certificates_admit_expire_and_revoke") else { return Ok(()) };
    run(&env.ctl)
}

fn peer_states(v: &Value) -> Vec<(String, String, String)> {
    v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["node_id"].as_str().unwrap_or("").to_string(),
                p["source"].as_str().unwrap_or("").to_string(),
                p["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn run(ctl: &Controller) -> Result<()> {
    let mut tb = Testbed::prepare(ctl, 5, &["--kbucket-size", "20"], true, false)?;
    let dir = tb.tmp.path().to_path_buf();
    let s = |p: &std::path::Path| p.to_str().unwrap_or_default().to_string();
    let (ca_a, ca_b) = (dir.join("ca-a"), dir.join("ca-b"));
    ctl.json(&["ca", "init", "--out", &s(&ca_a), "--json"])?;
    ctl.json(&["ca", "init", "--out", &s(&ca_b), "--json"])?;
    // h3's certificate runs out 60 s from now: after the network formed.
    let mut serials = Vec::new();
    for (i, ca, valid) in [(0, &ca_a, "1h"), (1, &ca_a, "1h"), (2, &ca_a, "60s"), (3, &ca_b, "1h")] {
        let cert = tb.specs[i].dir.join("node.cert");
        let v = ctl.json(&[
            "ca",
            "sign",
            &tb.specs[i].peer_id.clone(),
            "--ca",
            &s(ca),
            "--valid",
            valid,
            "--out",
            &s(&cert),
            "--json",
        ])?;
        serials.push(v["serial"].as_u64().context("serial")?);
        let anchor = ca.join("root.pub");
        tb.specs[i].extra_args.extend(["--trust-anchor".into(), s(&anchor), "--cert".into(), s(&cert)]);
    }
    let h3_expires = ctl.json(&["ca", "show", &s(&tb.specs[2].dir.join("node.cert")), "--json"])?["not_after"]
        .as_u64()
        .context("not_after")?;
    // h1 follows a copy of CA A's revocation list.
    let h1_crl = tb.specs[0].dir.join("revocations");
    std::fs::copy(ca_a.join("revocations"), &h1_crl)?;
    tb.specs[0].extra_args.extend(["--revocations".into(), s(&h1_crl)]);
    for i in 0..5 {
        tb.launch(i)?;
    }
    let ids = tb.ids();

    // Members route to each other, and only to each other.
    let members = wait_for(Duration::from_secs(60), || {
        (0..3)
            .all(|i| tb.routed(i).is_ok_and(|(r, agree)| agree && r == (0..3).filter(|j| *j != i).collect::<Vec<_>>()))
            .then_some(())
    });
    ensure!(
        members.is_some(),
        "h1-h3 must route to each other only: {:?}",
        (0..5).map(|i| tb.routed(i).map(|r| r.0)).collect::<Vec<_>>()
    );
    // h1 (the bootstrap node, reached by both) refuses h4 and h5 and says why.
    let said = |node: usize, j: usize, why: &str| -> bool {
        let id = ids[j].to_string();
        tb.node(node).cli(&["peers"]).is_ok_and(|v| {
            peer_states(&v).iter().any(|(n, _, st)| *n == id && st.contains("not a member") && st.contains(why))
        })
    };
    let refused = wait_for(Duration::from_secs(10), || {
        (said(0, 3, "issued by root") && said(0, 4, "no valid certificate")).then_some(())
    });
    ensure!(refused.is_some(), "h1's peers must show h4 and h5 refused: {}", tb.node(0).cli(&["peers"])?);
    // h5 (open) takes h1 for a peer and sends it overlay packets, untagged or
    // tagged with no key h1 has: h1's XDP drops them (--auth required).
    let dropped = wait_for(Duration::from_secs(10), || (tb.node(0).counter("drop_auth").ok()? > 0).then_some(()));
    ensure!(dropped.is_some(), "h1 dropped none of the non-members' packets as drop_auth");
    for i in 0..3 {
        let (routed, _) = tb.routed(i)?;
        ensure!(!routed.contains(&3) && !routed.contains(&4), "h{} routes to a non-member: {routed:?}", i + 1);
        let peers = peer_states(&tb.node(i).cli(&["peers"])?);
        for j in [3, 4] {
            let id = ids[j].to_string();
            ensure!(
                !peers.iter().any(|(n, src, _)| *n == id && src == "kad"),
                "h{} has non-member h{} in its Kademlia table: {peers:?}",
                i + 1,
                j + 1
            );
        }
    }
    let trust = &tb.node(0).status()?["trust"];
    ensure!(trust["members"].as_u64() == Some(2) && trust["refused"].as_u64() >= Some(2), "h1 status.trust: {trust}");
    ensure!(tb.routed(3)?.0.is_empty(), "h4 (root B) must route to nobody of root A: {:?}", tb.routed(3)?.0);
    let refused_h4 = &tb.node(3).status()?["trust"]["refused_us"];
    ensure!(refused_h4.as_object().is_some_and(|o| !o.is_empty()), "h4 is told that it is refused: {refused_h4}");

    // Revocation of h2: the new list reaches h1 through its file, h3 from h1.
    let r = ctl.json(&["ca", "revoke", &serials[1].to_string(), "--ca", &s(&ca_a), "--json"])?;
    ensure!(r["sequence"].as_u64() == Some(1), "{r}");
    let revoked = Instant::now();
    std::fs::copy(ca_a.join("revocations"), &h1_crl)?;
    let gone = wait_for(Duration::from_secs(10), || {
        (tb.routed(0).is_ok_and(|(r, _)| r == [2]) && tb.routed(2).is_ok_and(|(r, _)| r == [0])).then_some(())
    });
    ensure!(gone.is_some(), "h2 revoked but h1 routes to {:?} and h3 to {:?}", tb.routed(0)?.0, tb.routed(2)?.0);
    let took = revoked.elapsed();
    eprintln!("revoked certificate dropped within {took:?}");
    ensure!(took <= Duration::from_secs(5), "h2 dropped {took:?} after the revocation (≤ 5 s)");
    ensure!(
        wait_for(Duration::from_secs(5), || said(0, 1, "revoked").then_some(())).is_some(),
        "h1 says h2 is revoked: {}",
        tb.node(0).cli(&["peers"])?
    );
    for i in [0, 2] {
        let seq = tb.node(i).status()?["trust"]["revocations_sequence"].as_u64();
        ensure!(seq == Some(1), "h{} holds revocation list 1: {seq:?}", i + 1);
    }

    // h3's certificate expires: h1 drops it within 2 s of the moment.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    ensure!(now + 2 < h3_expires, "the network took too long to form; h3 expired before it was checked");
    std::thread::sleep(Duration::from_secs(h3_expires - now));
    let gone = wait_for(Duration::from_secs(10), || tb.routed(0).is_ok_and(|(r, _)| r.is_empty()).then_some(()));
    ensure!(gone.is_some(), "h3 expired but h1 still routes to {:?}", tb.routed(0)?.0);
    let expiry = std::time::UNIX_EPOCH + Duration::from_secs(h3_expires);
    let took = std::time::SystemTime::now().duration_since(expiry).unwrap_or_default();
    eprintln!("expired certificate dropped within {took:?}");
    ensure!(took <= Duration::from_secs(2), "h3 dropped {took:?} after its certificate expired (≤ 2 s)");
    ensure!(
        wait_for(Duration::from_secs(5), || said(0, 2, "expired").then_some(())).is_some(),
        "h1 says h3 expired: {}",
        tb.node(0).cli(&["peers"])?
    );
    Ok(())
}

/// Hop-by-hop tags and end-to-end DATA (docs/WIRE.md v2): three members
/// under `--auth required` (the anchored default) renew their link keys
/// every second; a steady stream of end-to-end encrypted DATA through the
/// rotations loses nothing and no node drops a single packet of theirs as
/// drop_auth; the receiver's `recv` names the authenticated sender of
/// encrypted DATA and none for plaintext; untagged and forged packets from
/// an outsider (a test socket beside h1) are dropped in XDP, counted, and
/// never reach h2's controller.
#[test]
fn link_tags_required_in_xdp() -> Result<()> {
    let Some(env) = require("link_tags_required_in_xdp") else { return Ok(()) };
    let ctl = &env.ctl;
    let mut tb = Testbed::prepare(ctl, 3, &["--kbucket-size", "20", "--link-rotate", "1s"], true, false)?;
    let s = |p: &std::path::Path| p.to_str().unwrap_or_default().to_string();
    let ca = tb.tmp.path().join("ca");
    ctl.json(&["ca", "init", "--out", &s(&ca), "--json"])?;
    for i in 0..3 {
        let cert = tb.specs[i].dir.join("node.cert");
        let peer = tb.specs[i].peer_id.clone();
        ctl.json(&["ca", "sign", &peer, "--ca", &s(&ca), "--out", &s(&cert), "--json"])?;
        let anchor = s(&ca.join("root.pub"));
        tb.specs[i].extra_args.extend(["--trust-anchor".into(), anchor, "--cert".into(), s(&cert)]);
    }
    for i in 0..3 {
        tb.launch(i)?;
    }
    for i in 0..3 {
        let others: Vec<usize> = (0..3).filter(|j| *j != i).collect();
        let ok = wait_for(Duration::from_secs(30), || (tb.routed(i).ok()?.0 == others).then_some(()));
        ensure!(
            ok.is_some(),
            "h{} routes to {:?}; peers {:?}; status.auth {}; log:\n{}",
            i + 1,
            tb.routed(i)?.0,
            peer_states(&tb.node(i).cli(&["peers"])?),
            tb.node(i).status()?["auth"],
            tb.node(i).log_tail(20)
        );
        let auth = &tb.node(i).status()?["auth"];
        ensure!(auth["policy"] == "required" && auth["linked"] == 2, "h{}: {auth}", i + 1);
    }
    // Members drop none of each other's packets, from the first keys on.
    std::thread::sleep(Duration::from_secs(1));
    let auth0: Vec<u64> = (0..3).map(|i| tb.node(i).counter("drop_auth")).collect::<Result<_>>()?;
    ensure!(auth0 == [0, 0, 0], "drop_auth among members while keys were set up: {auth0:?}");
    // A steady stream through at least four key rotations.
    let dst = tb.specs[2].node_id.to_string();
    let before = tb.node(2).status()?["delivered"]["data"].as_u64().unwrap_or(0);
    let ex0 = tb.node(0).status()?["auth"]["exchanges"].as_u64().unwrap_or(0);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(5) {
        tb.node(0).cli(&["send", &dst, &format!("m{sent}")])?;
        sent += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = wait_for(Duration::from_secs(5), || {
        let n = tb.node(2).status().ok()?["delivered"]["data"].as_u64()?;
        (n >= before + sent).then_some(n)
    });
    let ex1 = tb.node(0).status()?["auth"]["exchanges"].as_u64().unwrap_or(0);
    ensure!(ex1 >= ex0 + 4, "keys renewed {} times in 5 s at --link-rotate 1s", ex1 - ex0);
    ensure!(got == Some(before + sent), "{sent} DATA sent across rotations, {:?} delivered (from {before})", got);
    for (i, before) in auth0.iter().enumerate() {
        let n = tb.node(i).counter("drop_auth")? - before;
        ensure!(n == 0, "h{} dropped {n} members' packets as drop_auth across rotations", i + 1);
    }
    // The stream went end to end encrypted (h1 knows h3: `send` by node ID
    // encrypts); h3 opened every envelope.
    let e2e = &tb.node(2).status()?["e2e"];
    ensure!(e2e["opened"].as_u64() >= Some(sent) && e2e["rejected"] == 0, "h3 e2e {e2e}");
    // `recv` shows who sent what: the authenticated peer ID for encrypted
    // DATA, only a claimed node ID for plaintext.
    let sock = tb.specs[2].control_socket();
    let mut recv = ctl
        .command()
        .args(["recv", "--json", "--count", "2", "--instance", &tb.specs[2].instance, "--control-socket"])
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let h3_peer = tb.specs[2].peer_id.clone();
    let v = tb.node(0).cli(&["send", &h3_peer, "secret-e2e-payload"])?;
    ensure!(v["encrypted"] == true, "send by peer ID: {v}");
    std::thread::sleep(Duration::from_millis(200));
    let v = tb.node(0).cli(&["send", &dst, "plain-payload", "--plaintext"])?;
    ensure!(v["encrypted"] == false, "send --plaintext: {v}");
    let out = wait_for(Duration::from_secs(5), || recv.try_wait().ok().flatten().map(|_| ()));
    if out.is_none() {
        let _ = recv.kill();
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut recv.stdout.take().context("recv stdout")?, &mut text)?;
    let got: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    ensure!(got.len() == 2, "recv printed: {text}");
    let h1_peer = tb.specs[0].peer_id.clone();
    ensure!(
        got[0]["data"] == "secret-e2e-payload"
            && got[0]["authenticated"] == true
            && got[0]["encrypted"] == true
            && got[0]["from_peer"] == h1_peer.as_str(),
        "encrypted delivery: {}",
        got[0]
    );
    ensure!(
        got[1]["data"] == "plain-payload" && got[1]["authenticated"] == false && got[1]["from_peer"].is_null(),
        "plaintext delivery: {}",
        got[1]
    );
    // DHT records are signed by their publisher; a get says who that is.
    tb.node(0).cli(&["dht", "put", "signed-key", "signed value"])?;
    let v = tb.node(1).cli(&["dht", "get", "signed-key", "--network"])?;
    ensure!(v["value"] == "signed value" && v["publisher"] == h1_peer.as_str(), "h2's get: {v}");
    // The overlay's answer to a LOOKUP that came authenticated is signed by
    // the owner (any node but the asker: try from each).
    let mut signed_seen = false;
    for i in 0..3 {
        let v = tb.node(i).cli(&["lookup", "signed-key"])?;
        if v["path"] == "overlay" {
            let owner = tb.index_of(v["answered_by"].as_str().unwrap_or_default()).context("answerer")?;
            ensure!(v["value"] == "signed value", "h{} lookup: {v}", i + 1);
            ensure!(v["signed_by"] == tb.specs[owner].peer_id.as_str(), "h{} lookup: {v}", i + 1);
            signed_seen = true;
        }
    }
    ensure!(signed_seen, "no lookup took the overlay path");
    // Least privilege: after set-up every thread of every daemon holds
    // only CAP_BPF and CAP_NET_ADMIN, and status says what went.
    for i in 0..3 {
        let p = &tb.node(i).status()?["privileges"];
        ensure!(p["kept"] == serde_json::json!(["CAP_NET_ADMIN", "CAP_BPF"]), "h{} kept {p}", i + 1);
        ensure!(p["dropped"].as_array().is_some_and(|d| d.iter().any(|c| c == "CAP_SYS_ADMIN")), "h{}: {p}", i + 1);
        let pid = tb.node(i).pid().context("pid")?;
        let keep: u64 = (1 << 12) | (1 << 39);
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let status = std::fs::read_to_string(task?.path().join("status"))?;
            for set in ["CapEff:", "CapPrm:"] {
                let line = status.lines().find(|l| l.starts_with(set)).context("no caps line")?;
                let caps = u64::from_str_radix(line[set.len()..].trim(), 16)?;
                ensure!(caps & !keep == 0, "h{} thread holds {set} {caps:#x}: {status}", i + 1);
            }
        }
    }
    // An outsider beside h1: untagged (version 1) and forged tags.
    let sock = p2p_tests::traffic::socket_in(&tb.specs[0].netns, std::net::SocketAddr::new(tb.specs[0].addr, 0))?;
    let h2 = tb.specs[1].overlay();
    let data_before = tb.node(1).status()?["delivered"]["data"].as_u64().unwrap_or(0);
    let mut forged = p2p_tests::traffic::data(tb.specs[0].node_id, tb.specs[1].node_id, 1, 16);
    p2p_common::auth::seal(&mut forged, &[7; 16], 1, 0, 1);
    let plain = p2p_tests::traffic::data(tb.specs[0].node_id, tb.specs[1].node_id, 2, 16);
    for p in [&plain, &forged, &plain, &forged] {
        p2p_tests::traffic::send_one(&sock, h2, p)?;
    }
    let dropped =
        wait_for(Duration::from_secs(3), || (tb.node(1).counter("drop_auth").ok()? >= auth0[1] + 4).then_some(()));
    ensure!(dropped.is_some(), "h2 drop_auth {}", tb.node(1).counter("drop_auth")?);
    std::thread::sleep(Duration::from_millis(300));
    ensure!(tb.node(1).counter("drop_auth")? == auth0[1] + 4, "exactly the outsider's 4 packets");
    let data_after = tb.node(1).status()?["delivered"]["data"].as_u64().unwrap_or(0);
    ensure!(data_after == data_before, "nothing reached h2's controller ({data_before} → {data_after})");
    Ok(())
}

/// Pre-shared link keys of static peers (`--peers` entries with `"link"`),
/// as `cargo xtask bench forward`'s `xdp-auth` mode uses them: h2 runs with
/// `--auth required` and two keyed static peers, two test sockets in h1's
/// namespace (no controller there). A DATA from the first, tagged with the
/// key h2 expects, is forwarded in XDP to the second, tagged afresh with
/// that link's key and a sequence number; the same packet again (a
/// replay), one under a wrong key and an untagged one are each dropped and
/// counted, and none of them is forwarded; a later sequence number is.
#[test]
fn static_peers_with_preshared_link_keys() -> Result<()> {
    use p2p_common::auth::{seal, tag_of, v2_fields};
    use p2p_common::wire::{VERSION_AUTH, offset};
    let Some(env) = require("static_peers_with_preshared_link_keys") else { return Ok(()) };
    let tb = Testbed::prepare(&env.ctl, 2, &["--auth", "required"], false, false)?;
    let (h1, h2) = (&tb.specs[0], &tb.specs[1]);
    let (a_ep, b_ep) = (SocketAddr::new(h1.addr, 40000), SocketAddr::new(h1.addr, 40001));
    let (a_id, b_id) = (NodeId([0xa1; 32]), NodeId([0xb2; 32]));
    // h2 verifies A's packets with K_IN and tags those for B with K_OUT.
    const K_IN: [u8; 16] = [0x11; 16];
    const K_OUT: [u8; 16] = [0x22; 16];
    let link = |rx: [u8; 16], tx: [u8; 16]| json!({"key_id": 3, "rx": hex::encode(rx), "tx": hex::encode(tx)});
    let peers = [
        json!({"node_id": a_id.to_string(), "addr": h1.addr, "port": 40000, "link": link(K_IN, [0x33; 16])}),
        json!({"node_id": b_id.to_string(), "addr": h1.addr, "port": 40001, "link": link([0x44; 16], K_OUT)}),
    ];
    let mut node = p2p_tests::Node::start(&env.ctl, h2, &peers)?;
    node.wait_ready(Duration::from_secs(60))?;
    let a = p2p_tests::traffic::socket_in(&h1.netns, a_ep)?;
    let b = p2p_tests::traffic::socket_in(&h1.netns, b_ep)?;
    b.set_read_timeout(Some(Duration::from_millis(200)))?;
    // B's DATA only (h2 PINGs its static peers too).
    let receive = |wait: Duration| -> Vec<Vec<u8>> {
        let (mut got, mut buf, end) = (Vec::new(), [0u8; 2048], Instant::now() + wait);
        while Instant::now() < end {
            if let Ok(n) = b.recv(&mut buf)
                && n > offset::TAG
                && buf[offset::KIND] == p2p_common::wire::KIND_DATA
            {
                got.push(buf[..n].to_vec());
            }
        }
        got
    };
    let tagged = |seq: u32, key: &[u8; 16]| {
        let mut p = p2p_tests::traffic::data(a_id, b_id, seq as u64, 32);
        seal(&mut p, key, 3, 9, seq);
        p
    };
    // Until h2 routes to its static peers: a fresh sequence number each try.
    let mut seq = 100;
    let mut last = Vec::new();
    let first = wait_for(Duration::from_secs(20), || {
        seq += 1;
        last = tagged(seq, &K_IN);
        p2p_tests::traffic::send_one(&a, h2.overlay(), &last).ok()?;
        receive(Duration::from_millis(300)).pop()
    });
    let first = first.with_context(|| format!("nothing forwarded to B; h2's log:\n{}", node.log_tail(30)))?;
    ensure!(first[offset::VERSION] == VERSION_AUTH, "forwarded untagged: {first:02x?}");
    let (key_id, stream0, seq0) = v2_fields(&first);
    ensure!(key_id == 3, "key id {key_id}");
    let tag = u64::from_be_bytes(first[offset::TAG..offset::TAG + 8].try_into()?);
    ensure!(tag_of(&K_OUT, &first) == Some(tag), "B's tag does not verify under the B link's key");
    let _ = receive(Duration::from_millis(500)); // a slower try's copy
    let drops0 = node.counter("drop_auth")?;
    let mut untagged = p2p_tests::traffic::data(a_id, b_id, 1001, 32);
    untagged[offset::FLAGS] &= !p2p_common::wire::FLAG_AUTH;
    // The last try again (it verified, so its number is in the window).
    for p in [&last, &tagged(1000, &[0x55; 16]), &untagged] {
        p2p_tests::traffic::send_one(&a, h2.overlay(), p)?;
    }
    let dropped = wait_for(Duration::from_secs(3), || (node.counter("drop_auth").ok()? >= drops0 + 3).then_some(()));
    ensure!(dropped.is_some(), "drop_auth {} → {}", drops0, node.counter("drop_auth")?);
    ensure!(receive(Duration::from_millis(500)).is_empty(), "a replayed, forged or untagged packet was forwarded");
    p2p_tests::traffic::send_one(&a, h2.overlay(), &tagged(1002, &K_IN))?;
    let next = receive(Duration::from_secs(2));
    ensure!(next.len() == 1, "seq 1002: {} forwarded", next.len());
    let (_, stream1, seq1) = v2_fields(&next[0]);
    // One sequence per CPU (stream): a later packet on the same CPU is numbered higher.
    ensure!(stream1 != stream0 || seq1 > seq0, "h2's sequence towards B: {seq0} then {seq1} on stream {stream0}");
    let tag = u64::from_be_bytes(next[0][offset::TAG..offset::TAG + 8].try_into()?);
    ensure!(tag_of(&K_OUT, &next[0]) == Some(tag), "second tag");
    ensure!(node.counter("drop_auth")? == drops0 + 3, "exactly three drops");
    Ok(())
}
