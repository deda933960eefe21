//! The control API: one JSON request per line on a unix socket (mode 0660),
//! one JSON response line back ([`crate::api`] has the types; README
//! "Control API" an example of each call). The server answers from the
//! components' handles; [`call`] and [`stream`] are the client side.

use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::path::Path;
use std::time::{Duration, Instant};

use p2p_common::codec::{self, Packet};
use p2p_common::id::NodeId;
use p2p_common::wire::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};

use crate::api::{self, Request};
use crate::error::{Error, Result};
use crate::liveness::LivenessHandle;
use crate::mapsync::MapSyncHandle;
use crate::net::NetHandle;
use crate::overlay::{OverlayHandle, monotonic_ns};
use crate::reputation::{Evidence, ReputationHandle, Subject};
use crate::units;

/// What the control API answers from: this node's fixed facts and every
/// component's handle.
#[derive(Clone)]
pub struct Ctx {
    pub instance: String,
    pub peer_id: String,
    pub node_id: NodeId,
    pub datapath: String,
    pub xdp_mode: Option<String>,
    pub ifaces: Vec<String>,
    pub started: Instant,
    pub overlay: OverlayHandle,
    pub net: NetHandle,
    pub sync: MapSyncHandle,
    pub liveness: LivenessHandle,
    pub reputation: ReputationHandle,
    /// `--rate-burst`: new budgets get the same burst.
    pub burst: Duration,
    /// Capabilities kept and dropped after set-up.
    pub privileges: crate::sys::Privileges,
    pub storage: crate::storage::Storage,
}

pub fn serve(ctx: Ctx, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // The instance lock is held, so any socket here is stale.
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::File { path: path.into(), reason: format!("cannot create the control socket: {e}") })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let _ = handle(ctx, stream).await;
            });
        }
    });
    Ok(())
}

fn parse_cid(s: &str) -> Result<crate::blobs::Cid> {
    s.parse().map_err(Error::Usage)
}

async fn write_line(w: &mut OwnedWriteHalf, line: String) -> std::io::Result<()> {
    w.write_all(format!("{line}\n").as_bytes()).await
}

/// `{"ok": true, …fields of v}`.
fn ok_line<T: Serialize>(v: &T) -> String {
    let mut v = serde_json::to_value(v).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("ok".into(), true.into());
    }
    v.to_string()
}

fn err_line(e: impl std::fmt::Display) -> String {
    serde_json::to_string(&api::ErrorResponse { ok: false, error: e.to_string() }).unwrap_or_default()
}

async fn handle(ctx: Ctx, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let req = match parse(&line) {
            Ok(req) => req,
            Err(e) => {
                write_line(&mut w, err_line(e)).await?;
                continue;
            }
        };
        if let Request::PubsubSubscribe { topic } = req {
            return subscribe(&ctx, topic, lines, w).await;
        }
        if let Request::Recv = req {
            return recv(&ctx, lines, w).await;
        }
        let resp = match dispatch(&ctx, req).await {
            Ok(line) => line,
            Err(e) => err_line(e),
        };
        write_line(&mut w, resp).await?;
    }
    Ok(())
}

/// A request line, with an error that says what is wrong with it.
fn parse(line: &str) -> Result<Request> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| Error::Usage(format!("request is not JSON: {e}")))?;
    match v.get("cmd") {
        None => return Err(Error::Usage("missing \"cmd\"".into())),
        Some(serde_json::Value::String(_)) => {}
        Some(_) => return Err(Error::Usage("\"cmd\" must be a string".into())),
    }
    serde_json::from_value(v).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("unknown variant") {
            Error::Usage(format!("unknown command ({})", Request::NAMES))
        } else {
            Error::Usage(msg)
        }
    })
}

/// Streams a topic's messages until the client goes away.
async fn subscribe(
    ctx: &Ctx,
    topic: String,
    mut lines: Lines<BufReader<OwnedReadHalf>>,
    mut w: OwnedWriteHalf,
) -> std::io::Result<()> {
    let mut rx = match ctx.net.subscribe(topic.clone()).await {
        Ok(rx) => rx,
        Err(e) => return write_line(&mut w, err_line(e)).await,
    };
    write_line(&mut w, ok_line(&api::Subscribed { subscribed: topic })).await?;
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => write_line(&mut w, serde_json::to_string(&m).unwrap_or_default()).await?,
                None => return Ok(()),
            },
            l = lines.next_line() => if !matches!(l, Ok(Some(_))) { return Ok(()) },
        }
    }
}

/// Streams DATA deliveries until the client goes away; one that falls
/// behind is told how many it missed.
async fn recv(ctx: &Ctx, mut lines: Lines<BufReader<OwnedReadHalf>>, mut w: OwnedWriteHalf) -> std::io::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = ctx.overlay.deliveries();
    write_line(&mut w, ok_line(&api::Subscribed { subscribed: "data".into() })).await?;
    loop {
        tokio::select! {
            d = rx.recv() => match d {
                Ok(d) => write_line(&mut w, serde_json::to_string(&d).unwrap_or_default()).await?,
                Err(RecvError::Lagged(n)) => log::warn!("a recv client fell {n} deliveries behind"),
                Err(RecvError::Closed) => return Ok(()),
            },
            l = lines.next_line() => if !matches!(l, Ok(Some(_))) { return Ok(()) },
        }
    }
}

/// Where `send` goes: a node ID, or a peer ID (whose node ID is its hash).
async fn send_target(ctx: &Ctx, dest: &str, plaintext: bool) -> Result<(NodeId, Option<libp2p::PeerId>)> {
    if let Ok(peer) = dest.parse::<libp2p::PeerId>() {
        return Ok((crate::identity::node_id_of(&peer), Some(peer)));
    }
    let node = node_id_arg(dest)?;
    if plaintext || node == ctx.node_id {
        return Ok((node, None));
    }
    match ctx.net.peer_of(node).await? {
        Some(p) => Ok((node, Some(p))),
        None => Err(Error::Usage(format!(
            "{node} is not a node this one knows, so its identity (and key) is unknown: give its peer ID \
             instead, or send with --plaintext"
        ))),
    }
}

fn node_id_arg(s: &str) -> Result<NodeId> {
    s.parse().map_err(|e| Error::Usage(format!("node_id: {e}")))
}

fn timeout(ms: u64) -> Duration {
    Duration::from_millis(ms.clamp(1, 60_000))
}

async fn dispatch(ctx: &Ctx, req: Request) -> Result<String> {
    Ok(match req {
        Request::Status => ok_line(&status(ctx).await?),
        Request::Peers => {
            let mut peers = ctx.net.view().await?;
            let live = ctx.liveness.view().await;
            for p in peers.iter_mut() {
                p.liveness = p.node_id.parse::<NodeId>().ok().and_then(|id| live.get(&id).cloned());
            }
            ok_line(&api::Peers { node_id: ctx.node_id.to_string(), peers })
        }
        Request::Lookup { key, timeout_ms, fallback } => {
            ok_line(&lookup(ctx, &key, timeout(timeout_ms), fallback).await?)
        }
        Request::DhtPut { key, value, quorum } => {
            let quorum = match quorum {
                Some(q) => Some(
                    std::num::NonZeroUsize::new(q as usize)
                        .ok_or_else(|| Error::Usage("quorum must be at least 1".into()))?,
                ),
                None => None,
            };
            ok_line(&ctx.net.put(key, value.into_bytes(), quorum).await?)
        }
        Request::DhtGet { key, timeout_ms, network } => {
            let r = ctx.net.get(key.clone(), network, timeout(timeout_ms)).await?;
            ok_line(&api::DhtGet {
                found: r.value.is_some(),
                value: r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                from: r.from.map(|p| p.to_string()),
                answered_by: r.value.as_ref().map(|_| answered_by(ctx, r.from)),
                source: r.value.as_ref().map(|_| if r.from.is_some() { "network" } else { "local" }.to_string()),
                rtt_us: r.elapsed.as_micros() as u64,
                publisher: r.publisher.map(|p| p.to_string()),
                key,
            })
        }
        Request::PubsubPublish { topic, message } => ok_line(&ctx.net.publish(topic, message.into_bytes()).await?),
        Request::StorePutBegin { redundancy } => {
            let r: crate::storage::erasure::Redundancy = redundancy.parse().map_err(Error::Usage)?;
            ok_line(&api::StoreUpload { upload: ctx.storage.put_begin(r) })
        }
        Request::StorePutSegment { upload, index, data } => {
            let data = B64.decode(data).map_err(|e| Error::Usage(format!("segment data: {e}")))?;
            ctx.storage.put_segment(upload, index, data).await?;
            ok_line(&serde_json::json!({}))
        }
        Request::StorePutEnd { upload } => ok_line(&ctx.storage.put_end(upload).await?),
        Request::StoreInfo { cid } => {
            let m = ctx.storage.manifest(&parse_cid(&cid)?).await?;
            ok_line(&api::StoreInfo {
                cid,
                size: m.size,
                segments: m.segments.len() as u64,
                segment_size: m.segment_size,
                redundancy: m.redundancy.to_string(),
            })
        }
        Request::StoreGetSegment { cid, index } => {
            let data = ctx.storage.get_segment(&parse_cid(&cid)?, index).await?;
            ok_line(&api::StoreSegmentData { index, data: B64.encode(data) })
        }
        Request::StoreStatus { cid } => ok_line(&ctx.storage.status(&parse_cid(&cid)?).await?),
        Request::StoreLs => ok_line(&api::StoreLs { objects: ctx.storage.ls() }),
        Request::StoreRm { cid } => {
            let (removed_from, unreachable) = ctx.storage.rm(&parse_cid(&cid)?).await?;
            ok_line(&api::StoreRm { cid, removed_from, unreachable })
        }
        Request::PubsubSubscribe { .. } => {
            return Err(Error::Usage("pubsub_subscribe must be the first request on a connection".into()));
        }
        Request::Recv => {
            return Err(Error::Usage("recv must be the first request on a connection".into()));
        }
        Request::Send { node_id, data, plaintext } => {
            let (dst, peer) = send_target(ctx, &node_id, plaintext).await?;
            let max = if plaintext { 1400 } else { 1400 - crate::e2e::envelope::OVERHEAD };
            if data.len() > max {
                return Err(Error::Usage(format!("DATA of {} bytes does not fit one packet (max {max})", data.len())));
            }
            let mut pkt = Packet::new(KIND_DATA, ctx.node_id, dst, rand::random(), data.clone().into_bytes());
            let encrypted = match peer {
                Some(peer) if !plaintext => {
                    let sessions = ctx.overlay.sessions();
                    if sessions.needs_session(&peer) {
                        ctx.net.open_session(peer, Duration::from_secs(10)).await?;
                    }
                    let aad = crate::e2e::envelope::aad(&pkt.encode());
                    pkt.payload = sessions
                        .seal(&peer, &aad, data.as_bytes())
                        .ok_or_else(|| Error::Remote(format!("no end-to-end session with {peer}")))?;
                    true
                }
                _ => false,
            };
            let sent = match ctx.overlay.originate(&pkt)? {
                Some(via) => api::Sent {
                    sent: true,
                    via: Some(via.to_string()),
                    msg_id: Some(pkt.msg_id),
                    delivered_locally: false,
                    encrypted,
                },
                None if dst == ctx.node_id => {
                    api::Sent { sent: true, via: None, msg_id: None, delivered_locally: true, encrypted: false }
                }
                None => {
                    return Err(Error::Remote(format!(
                        "no route to {dst}: this node is the closest and it is not that node"
                    )));
                }
            };
            ok_line(&sent)
        }
        Request::Block { target, for_s, reason } => {
            let t = units::parse_block_target(&target).map_err(Error::Usage)?;
            if t == crate::dataplane::BlockTarget::Node(ctx.node_id.0) {
                return Err(Error::Usage("that is this node's own ID".into()));
            }
            let length = match for_s {
                Some(0) => return Err(Error::Usage("for_s must be at least 1 (omit it for no end)".into())),
                s => s.map(Duration::from_secs),
            };
            let text = reason.unwrap_or_else(|| "blocked by an operator".into());
            ok_line(&ctx.reputation.block(t, length, text).await.map_err(Error::Remote)?)
        }
        Request::Unblock { target } => {
            let t = units::parse_block_target(&target).map_err(Error::Usage)?;
            let was = ctx.reputation.unblock(t).await.map_err(Error::Remote)?;
            ok_line(&api::Unblocked { target: units::show_target(&t), was_blocked: was })
        }
        Request::Reputation => ok_line(&ctx.reputation.view().await),
        Request::Rate => ok_line(&rate_view(ctx).await?),
        Request::RateSet { class, rate } => {
            let budget = units::parse_budget(&rate, ctx.burst).map_err(Error::Usage)?;
            let mut policy = ctx.sync.rate().await.map_err(Error::Remote)?;
            if class == "nonpeer" {
                policy.nonpeer = budget;
            } else if !class.is_empty() && class.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                policy.classes.insert(class, budget);
            } else {
                return Err(Error::Usage(format!("{class:?}: a class name is letters, digits, '-' or '_'")));
            }
            ctx.sync.set_rate(policy).await.map_err(Error::Remote)?;
            ok_line(&rate_view(ctx).await?)
        }
        Request::RateAssign { node_id, class } => {
            let node = node_id_arg(&node_id)?;
            let mut policy = ctx.sync.rate().await.map_err(Error::Remote)?;
            if class == crate::mapsync::DEFAULT_CLASS {
                policy.assigned.remove(&node);
            } else if policy.classes.contains_key(&class) {
                policy.assigned.insert(node, class);
            } else {
                return Err(Error::Usage(format!(
                    "no class {class:?} (classes: {}); make it with `rate set {class} RATE`",
                    policy.classes.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            ctx.sync.set_rate(policy).await.map_err(Error::Remote)?;
            ok_line(&rate_view(ctx).await?)
        }
        Request::Ping { node_id, timeout_ms } => {
            let dst = node_id_arg(&node_id)?;
            let pkt = Packet::new(KIND_PING, ctx.node_id, dst, rand::random(), monotonic_ns().to_be_bytes().to_vec());
            let via = match ctx.overlay.routing().next_hop(&dst) {
                Some(Some((_, p))) => p.addr,
                _ if dst == ctx.node_id => {
                    return Ok(ok_line(&api::Pinged { rtt_us: 0, from: dst.to_string(), via: None }));
                }
                _ => return Err(Error::Remote(format!("no route to {dst}"))),
            };
            let (reply, rtt) = ctx.overlay.request(&pkt, via, timeout(timeout_ms)).await?;
            ok_line(&api::Pinged {
                rtt_us: rtt.as_micros() as u64,
                from: reply.src_id.to_string(),
                via: Some(via.to_string()),
            })
        }
    })
}

async fn rate_view(ctx: &Ctx) -> Result<api::RateView> {
    let p = ctx.sync.rate().await.map_err(Error::Remote)?;
    Ok(api::RateView {
        classes: p.classes.iter().map(|(k, b)| (k.clone(), units::show_budget(b))).collect(),
        assigned: p.assigned.iter().map(|(n, c)| (n.to_string(), c.clone())).collect(),
        nonpeer: units::show_budget(&p.nonpeer),
        burst_ms: ctx.burst.as_millis() as u64,
    })
}

/// The node ID of the peer a Kademlia answer came from (this node for the
/// local store).
fn answered_by(ctx: &Ctx, from: Option<libp2p::PeerId>) -> String {
    match from {
        Some(p) => crate::identity::node_id_of(&p).to_string(),
        None => ctx.node_id.to_string(),
    }
}

/// What `status` answers (also read by the metrics server).
pub async fn status(ctx: &Ctx) -> Result<api::Status> {
    let net = ctx.net.status().await?;
    let liveness = ctx.liveness.status().await;
    let routed = ctx.overlay.routing().peers().count();
    let (map_sync, kernel) = ctx.sync.status().await;
    Ok(api::Status {
        store: ctx.storage.summary(),
        instance: ctx.instance.clone(),
        peer_id: ctx.peer_id.clone(),
        node_id: ctx.node_id.to_string(),
        datapath: ctx.datapath.clone(),
        xdp_mode: ctx.xdp_mode.clone(),
        ifaces: ctx.ifaces.clone(),
        overlay_port: ctx.overlay.port(),
        peers: routed,
        peers_answered: liveness.peers_answered,
        ready: liveness.ready,
        overlay: ctx.overlay.status(),
        records: ctx.overlay.records(),
        map_sync,
        kernel,
        liveness,
        uptime_s: ctx.started.elapsed().as_secs(),
        overlay_endpoint: net.overlay_endpoints.first().cloned(),
        kad_peers: net.kad.peers,
        net,
        e2e: ctx.overlay.sessions().status(),
        privileges: ctx.privileges.clone(),
    })
}

/// The overlay path of `lookup`: a LOOKUP to the XOR-closest peer, routed
/// hop by hop to the key's owner, whose LOOKUP_REPLY comes straight back.
/// `Err` only for "no reply within the timeout".
async fn overlay_lookup(ctx: &Ctx, key: &str, timeout: Duration) -> Result<api::Lookup> {
    let dst = NodeId::from_record_key(key.as_bytes());
    let first_hop = ctx.overlay.routing().next_hop(&dst).and_then(|h| h.map(|(_, p)| p.addr));
    let Some(first_hop) = first_hop else {
        // This node owns the key.
        let found = ctx.overlay.value_at(&dst, key.as_bytes());
        return Ok(api::Lookup {
            key: key.into(),
            found: found.is_some(),
            status: if found.is_some() { "found" } else { "not_found" }.into(),
            value: found.map(|v| String::from_utf8_lossy(&v).into_owned()),
            answered_by: Some(ctx.node_id.to_string()),
            owner: None,
            hops: Some(0),
            rtt_us: 0,
            path: "local".into(),
            ..Default::default()
        });
    };
    // The reply comes straight back to this node's overlay socket, at the
    // address the first hop sees.
    let reply_addr = std::net::SocketAddr::new(OverlayHandle::local_addr_for(first_hop), ctx.overlay.port());
    // Untagged (`--auth off`), the LOOKUP pads itself to the largest reply:
    // an owner sends no more bytes than an unauthenticated LOOKUP had.
    let pad = match ctx.overlay.auth() {
        crate::userspace::AuthPolicy::Off => {
            (crate::overlay::MAX_REPLY_VALUE + 4).saturating_sub(key.len()).min(u16::MAX as usize) as u16
        }
        _ => 0,
    };
    let payload = codec::lookup_payload_padded(reply_addr, key.as_bytes(), pad);
    let pkt = Packet::new(KIND_LOOKUP, ctx.node_id, dst, rand::random(), payload);
    let (reply, rtt) = ctx.overlay.request(&pkt, first_hop, timeout).await?;
    // A signed reply must verify for the node in its src_id: a forged or
    // altered one fails the lookup (which may fall back to Kademlia).
    let signed =
        crate::trust::reply::verify(&reply.encode()).map_err(|e| Error::Remote(format!("LOOKUP_REPLY: {e}")))?;
    if signed.is_none() && ctx.overlay.auth() == crate::userspace::AuthPolicy::Required {
        return Err(Error::Remote("an unsigned LOOKUP_REPLY (--auth required takes signed ones only)".into()));
    }
    let payload = match signed {
        Some((_, len)) => &reply.payload[..len],
        None => &reply.payload[..],
    };
    let (status, owner, value) = codec::parse_lookup_reply_payload(payload)
        .ok_or_else(|| Error::Remote("malformed LOOKUP_REPLY payload".into()))?;
    // An answer from a node farther from the key than a live peer of ours
    // is not the owner's: a lie, or routing in churn. Evidence either way
    // (small: churn is common, lies are repeated).
    let answerer = reply.src_id;
    let closer = ctx
        .overlay
        .routing()
        .peers()
        .any(|(_, p)| p.node_id != answerer && p2p_common::route::closer(&dst.0, &p.node_id.0, &answerer.0));
    if closer && answerer != ctx.node_id && !p2p_common::route::closer(&dst.0, &ctx.node_id.0, &answerer.0) {
        ctx.reputation.report(Subject::Node(answerer), Evidence::BadLookupReply, 1);
    }
    // The owner echoes the LOOKUP's ttl on arrival in the reply's ttl; each
    // forwarding hop took one.
    let hops = pkt.ttl.saturating_sub(reply.ttl) as u32 + 1;
    let status_name = match status {
        STATUS_FOUND => "found",
        STATUS_NOT_FOUND => "not_found",
        STATUS_REFUSED => "refused",
        _ => "unknown",
    };
    Ok(api::Lookup {
        key: key.into(),
        found: status == STATUS_FOUND,
        status: status_name.into(),
        value: (status == STATUS_FOUND).then(|| String::from_utf8_lossy(value).to_string()),
        answered_by: Some(reply.src_id.to_string()),
        owner: Some(owner.to_string()),
        hops: Some(hops),
        rtt_us: rtt.as_micros() as u64,
        path: "overlay".into(),
        signed_by: signed.map(|(p, _)| p.to_string()),
        ..Default::default()
    })
}

/// `lookup`: the overlay first; without an answer (or with "not found")
/// and `fallback`, Kademlia's iterative get. `path` says which answered.
async fn lookup(ctx: &Ctx, key: &str, timeout: Duration, fallback: bool) -> Result<api::Lookup> {
    let overlay = overlay_lookup(ctx, key, timeout).await;
    let reason = match &overlay {
        Ok(v) if v.found => return overlay,
        Ok(v) if v.status == "refused" => format!(
            "the overlay owner {} refused (a value too large for one datagram)",
            v.answered_by.as_deref().unwrap_or("?")
        ),
        Ok(v) => format!("the overlay owner {} has no record {key:?}", v.answered_by.as_deref().unwrap_or("?")),
        Err(e) => format!("overlay: {e}"),
    };
    if !fallback {
        return overlay;
    }
    let r = ctx.net.get(key.into(), false, Duration::from_secs(10)).await?;
    let found = r.value.is_some();
    Ok(api::Lookup {
        key: key.into(),
        found,
        status: if found { "found" } else { "not_found" }.into(),
        value: r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
        answered_by: found.then(|| answered_by(ctx, r.from)),
        from: r.from.map(|p| p.to_string()),
        owner: None,
        hops: None,
        rtt_us: r.elapsed.as_micros() as u64,
        path: "kademlia".into(),
        // The record's publisher signed it (trust::record).
        signed_by: r.publisher.map(|p| p.to_string()),
        fallback_reason: Some(reason),
        overlay: overlay.ok().map(Box::new),
    })
}

// ---------------------------------------------------------------- client side

fn connect(path: &Path, instance: &str) -> Result<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(path).map_err(|e| Error::Daemon {
        path: path.into(),
        instance: instance.into(),
        reason: e.to_string(),
    })
}

/// One response line: the `T` of an `"ok": true` answer, or the daemon's error.
fn read_response<T: DeserializeOwned>(line: &str, path: &Path, instance: &str) -> Result<T> {
    let daemon_err = |reason: String| Error::Daemon { path: path.into(), instance: instance.into(), reason };
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| daemon_err(format!("bad response: {e}")))?;
    if v["ok"].as_bool() != Some(true) {
        return Err(Error::Remote(v["error"].as_str().unwrap_or("unknown error").to_string()));
    }
    serde_json::from_value(v)
        .map_err(|e| daemon_err(format!("unexpected response ({e}): is the daemon of another version?")))
}

/// Client side: one request, one typed response.
pub fn call<T: DeserializeOwned>(path: &Path, instance: &str, req: &Request) -> Result<T> {
    use std::io::{BufRead, Write};
    let daemon_err = |reason: String| Error::Daemon { path: path.into(), instance: instance.into(), reason };
    let mut s = connect(path, instance)?;
    // Longest request: a lookup's overlay wait (≤ 60 s) plus its Kademlia
    // fallback (≤ 10 s).
    s.set_read_timeout(Some(Duration::from_secs(90)))?;
    let line = serde_json::to_string(req).map_err(|e| Error::Usage(e.to_string()))?;
    s.write_all(format!("{line}\n").as_bytes()).map_err(|e| daemon_err(e.to_string()))?;
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).map_err(|e| daemon_err(e.to_string()))?;
    read_response(&line, path, instance)
}

/// Client side of `pubsub_subscribe` and `recv`: sends `req`, then calls
/// `on_message` for each message until it returns false or the daemon
/// goes away.
pub fn stream<M: serde::de::DeserializeOwned>(
    path: &Path,
    instance: &str,
    req: &Request,
    mut on_message: impl FnMut(&M) -> bool,
) -> Result<()> {
    use std::io::{BufRead, Write};
    let daemon_err = |reason: String| Error::Daemon { path: path.into(), instance: instance.into(), reason };
    let mut s = connect(path, instance)?;
    let req = serde_json::to_string(req).map_err(|e| Error::Usage(e.to_string()))?;
    s.write_all(format!("{req}\n").as_bytes()).map_err(|e| daemon_err(e.to_string()))?;
    let mut lines = std::io::BufReader::new(&s).lines();
    let first = lines.next().ok_or_else(|| daemon_err("closed the connection".into()))??;
    let _: api::Subscribed = read_response(&first, path, instance)?;
    for line in lines {
        let m: M = serde_json::from_str(&line?).map_err(|e| daemon_err(format!("bad message: {e}")))?;
        if !on_message(&m) {
            break;
        }
    }
    Ok(())
}
