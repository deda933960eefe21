//! The control API: one JSON request per line on a unix socket (mode 0660),
//! one JSON response line back, `"ok": true` plus the result fields, or
//! `"ok": false, "error": S`. Requests (README "Control API" has an example
//! of each):
//!
//! - `{"cmd":"status"}`
//! - `{"cmd":"peers"}`: the control plane's view of every peer
//! - `{"cmd":"lookup","key":K,"timeout_ms":N,"fallback":true}`
//! - `{"cmd":"dht_put","key":K,"value":V,"quorum":N}` (`quorum` optional)
//! - `{"cmd":"dht_get","key":K,"timeout_ms":N,"network":false}`
//! - `{"cmd":"pubsub_publish","topic":T,"message":M}`
//! - `{"cmd":"pubsub_subscribe","topic":T}`: a first line `{"ok":true,…}`,
//!   then one line per message until the client closes the connection
//! - `{"cmd":"send","node_id":HEX,"data":S}`, `{"cmd":"ping","node_id":HEX,"timeout_ms":N}`

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_common::codec::{self, Packet};
use p2p_common::id::NodeId;
use p2p_common::wire::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use crate::daemon::{Node, Waiting, monotonic_ns};
use crate::error::{Error, Result};
use crate::net::NetHandle;

pub fn serve(node: Arc<Node>, path: &Path) -> Result<()> {
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
            let node = node.clone();
            tokio::spawn(async move {
                let _ = handle(node, stream).await;
            });
        }
    });
    Ok(())
}

async fn write_line(w: &mut OwnedWriteHalf, v: &Value) -> std::io::Result<()> {
    w.write_all(format!("{v}\n").as_bytes()).await
}

fn ok(mut v: Value) -> Value {
    v["ok"] = json!(true);
    v
}

fn err(e: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": e.to_string()})
}

async fn handle(node: Arc<Node>, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let req = match serde_json::from_str::<Value>(&line) {
            Ok(req) => req,
            Err(e) => {
                write_line(&mut w, &err(format!("request is not JSON: {e}"))).await?;
                continue;
            }
        };
        if req["cmd"].as_str() == Some("pubsub_subscribe") {
            return subscribe(&node, &req, lines, w).await;
        }
        let resp = match dispatch(&node, &req).await {
            Ok(v) => ok(v),
            Err(e) => err(e),
        };
        write_line(&mut w, &resp).await?;
    }
    Ok(())
}

/// Streams a topic's messages until the client goes away.
async fn subscribe(
    node: &Node,
    req: &Value,
    mut lines: Lines<BufReader<OwnedReadHalf>>,
    mut w: OwnedWriteHalf,
) -> std::io::Result<()> {
    let started = async {
        let topic = str_arg(req, "topic")?;
        let rx = net(node)?.subscribe(topic.to_string()).await?;
        Ok::<_, Error>((topic.to_string(), rx))
    };
    let (topic, mut rx) = match started.await {
        Ok(x) => x,
        Err(e) => return write_line(&mut w, &err(e)).await,
    };
    write_line(&mut w, &ok(json!({"subscribed": topic}))).await?;
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => write_line(&mut w, &serde_json::to_value(&m).unwrap_or_default()).await?,
                None => return Ok(()),
            },
            l = lines.next_line() => if !matches!(l, Ok(Some(_))) { return Ok(()) },
        }
    }
}

fn net(node: &Node) -> Result<&NetHandle> {
    node.net.get().ok_or_else(|| Error::Remote("the control plane is not running yet".into()))
}

fn str_arg<'a>(req: &'a Value, name: &str) -> Result<&'a str> {
    req[name].as_str().ok_or_else(|| Error::Usage(format!("missing \"{name}\" (a string)")))
}

fn node_id_arg(req: &Value) -> Result<NodeId> {
    let s = str_arg(req, "node_id")?;
    s.parse().map_err(|e| Error::Usage(format!("node_id: {e}")))
}

fn timeout_arg(req: &Value, default_ms: u64) -> Duration {
    Duration::from_millis(req["timeout_ms"].as_u64().unwrap_or(default_ms).clamp(1, 60_000))
}

async fn dispatch(node: &Arc<Node>, req: &Value) -> Result<Value> {
    match req["cmd"].as_str() {
        Some("status") => status(node).await,
        Some("peers") => {
            let peers = net(node)?.view().await?;
            Ok(json!({"node_id": node.identity.node_id.to_string(), "peers": peers}))
        }
        Some("lookup") => {
            let key = str_arg(req, "key")?;
            lookup(node, key, timeout_arg(req, 1000), req["fallback"].as_bool().unwrap_or(true)).await
        }
        Some("dht_put") => {
            let key = str_arg(req, "key")?;
            let value = str_arg(req, "value")?;
            let quorum = match req.get("quorum").and_then(Value::as_u64) {
                Some(q) => Some(
                    std::num::NonZeroUsize::new(q as usize)
                        .ok_or_else(|| Error::Usage("quorum must be at least 1".into()))?,
                ),
                None => None,
            };
            net(node)?.put(key.into(), value.as_bytes().to_vec(), quorum).await
        }
        Some("dht_get") => {
            let key = str_arg(req, "key")?;
            let network = req["network"].as_bool().unwrap_or(false);
            let r = net(node)?.get(key.into(), network, timeout_arg(req, 5000)).await?;
            Ok(json!({
                "key": key,
                "found": r.value.is_some(),
                "value": r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                "from": r.from.map(|p| p.to_string()),
                "answered_by": r.value.as_ref().map(|_| answered_by(node, r.from)),
                "source": r.value.as_ref().map(|_| if r.from.is_some() { "network" } else { "local" }),
                "rtt_us": r.elapsed.as_micros() as u64,
            }))
        }
        Some("pubsub_publish") => {
            let topic = str_arg(req, "topic")?;
            let message = str_arg(req, "message")?;
            net(node)?.publish(topic.into(), message.as_bytes().to_vec()).await
        }
        Some("send") => {
            let dst = node_id_arg(req)?;
            let data = req["data"].as_str().unwrap_or_default();
            if data.len() > 1400 {
                return Err(Error::Usage(format!("DATA of {} bytes does not fit one packet (max 1400)", data.len())));
            }
            let pkt = Packet::new(KIND_DATA, node.identity.node_id, dst, rand::random(), data.as_bytes().to_vec());
            match node.originate(&pkt).await? {
                Some(via) => Ok(json!({"sent": true, "via": via.to_string(), "msg_id": pkt.msg_id})),
                None if dst == node.identity.node_id => {
                    Ok(json!({"sent": true, "via": null, "delivered_locally": true}))
                }
                None => {
                    Err(Error::Remote(format!("no route to {dst}: this node is the closest and it is not that node")))
                }
            }
        }
        Some("ping") => {
            let dst = node_id_arg(req)?;
            let msg_id = rand::random::<u64>();
            let pkt = Packet::new(KIND_PING, node.identity.node_id, dst, msg_id, monotonic_ns().to_be_bytes().to_vec());
            let rx = wait_for(node, msg_id);
            let via = node.originate(&pkt).await?;
            if via.is_none() {
                node.state.lock().unwrap().waiting.remove(&msg_id);
                return if dst == node.identity.node_id {
                    Ok(json!({"rtt_us": 0, "from": dst.to_string(), "via": null}))
                } else {
                    Err(Error::Remote(format!("no route to {dst}")))
                };
            }
            let (reply, rtt) = await_reply(node, msg_id, rx, timeout_arg(req, 2000)).await?;
            Ok(
                json!({"rtt_us": rtt.as_micros() as u64, "from": reply.src_id.to_string(), "via": via.map(|v| v.to_string())}),
            )
        }
        Some("pubsub_subscribe") => {
            Err(Error::Usage("pubsub_subscribe must be the first request on a connection".into()))
        }
        Some(other) => Err(Error::Usage(format!(
            "unknown command {other:?} (status, peers, lookup, dht_put, dht_get, pubsub_publish, pubsub_subscribe, send, ping)"
        ))),
        None => Err(Error::Usage("missing \"cmd\"".into())),
    }
}

/// The node ID of the peer a Kademlia answer came from (this node for the
/// local store).
fn answered_by(node: &Node, from: Option<libp2p::PeerId>) -> String {
    match from {
        Some(p) => crate::identity::node_id_of(&p).to_string(),
        None => node.identity.node_id.to_string(),
    }
}

async fn status(node: &Node) -> Result<Value> {
    let mut v = node.status_json();
    if let Some(net) = node.net.get() {
        let n = net.status().await?;
        if let (Some(dst), Some(src)) = (v.as_object_mut(), n.as_object()) {
            for (k, val) in src {
                dst.insert(k.clone(), val.clone());
            }
        }
        v["overlay_endpoint"] = n["overlay_endpoints"].get(0).cloned().unwrap_or(Value::Null);
        v["kad_peers"] = n["kad"]["peers"].clone();
    }
    Ok(v)
}

fn wait_for(node: &Node, msg_id: u64) -> oneshot::Receiver<(Packet, Duration)> {
    let (tx, rx) = oneshot::channel();
    node.state.lock().unwrap().waiting.insert(msg_id, Waiting { sent: Instant::now(), tx });
    rx
}

async fn await_reply(
    node: &Node,
    msg_id: u64,
    rx: oneshot::Receiver<(Packet, Duration)>,
    timeout: Duration,
) -> Result<(Packet, Duration)> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => Ok(r),
        _ => {
            node.state.lock().unwrap().waiting.remove(&msg_id);
            Err(Error::Remote(format!("no reply within {} ms", timeout.as_millis())))
        }
    }
}

/// The overlay path of `lookup`: a LOOKUP to the XOR-closest peer, routed
/// hop by hop to the key's owner, whose LOOKUP_REPLY comes straight back.
/// `Err` only for "no reply within the timeout".
async fn overlay_lookup(node: &Node, key: &str, timeout: Duration) -> Result<Value> {
    let dst = NodeId::from_record_key(key.as_bytes());
    let msg_id = rand::random::<u64>();
    let first_hop = {
        let st = node.state.lock().unwrap();
        st.router.next_hop(&dst).and_then(|h| h.map(|(_, p)| p.addr))
    };
    let Some(first_hop) = first_hop else {
        // This node owns the key.
        let found = node.value_at(&node.state.lock().unwrap(), &dst, key.as_bytes());
        return Ok(json!({
            "key": key, "found": found.is_some(), "status": if found.is_some() { "found" } else { "not_found" },
            "value": found.map(|v| String::from_utf8_lossy(&v).into_owned()),
            "answered_by": node.identity.node_id.to_string(), "owner": null,
            "hops": 0, "rtt_us": 0, "path": "local"
        }));
    };
    // The reply comes straight back to this node's overlay socket, at the
    // address the first hop sees.
    let reply_addr = std::net::SocketAddr::new(node.local_addr_towards(first_hop), node.overlay_port);
    let pkt =
        Packet::new(KIND_LOOKUP, node.identity.node_id, dst, msg_id, codec::lookup_payload(reply_addr, key.as_bytes()));
    let rx = wait_for(node, msg_id);
    node.send_to(&pkt.encode(), first_hop)?;
    let (reply, rtt) = await_reply(node, msg_id, rx, timeout).await?;
    let (status, owner, value) = codec::parse_lookup_reply_payload(&reply.payload)
        .ok_or_else(|| Error::Remote("malformed LOOKUP_REPLY payload".into()))?;
    // The owner echoes the LOOKUP's ttl on arrival in the reply's ttl; each
    // forwarding hop took one.
    let hops = pkt.ttl.saturating_sub(reply.ttl) as u32 + 1;
    let status_name = match status {
        STATUS_FOUND => "found",
        STATUS_NOT_FOUND => "not_found",
        STATUS_REFUSED => "refused",
        _ => "unknown",
    };
    Ok(json!({
        "key": key,
        "found": status == STATUS_FOUND,
        "status": status_name,
        "value": (status == STATUS_FOUND).then(|| String::from_utf8_lossy(value).to_string()),
        "answered_by": reply.src_id.to_string(),
        "owner": owner.to_string(),
        "hops": hops,
        "rtt_us": rtt.as_micros() as u64,
        "path": "overlay"
    }))
}

/// `lookup`: the overlay first; without an answer (or with "not found")
/// and `fallback`, Kademlia's iterative get. `path` says which answered.
async fn lookup(node: &Node, key: &str, timeout: Duration, fallback: bool) -> Result<Value> {
    let overlay = overlay_lookup(node, key, timeout).await;
    let reason = match &overlay {
        Ok(v) if v["found"].as_bool() == Some(true) => return overlay,
        Ok(v) if v["status"] == "refused" => format!(
            "the overlay owner {} refused (a value too large for one datagram)",
            v["answered_by"].as_str().unwrap_or("?")
        ),
        Ok(v) => format!("the overlay owner {} has no record {key:?}", v["answered_by"].as_str().unwrap_or("?")),
        Err(e) => format!("overlay: {e}"),
    };
    if !fallback {
        return overlay;
    }
    let net = net(node)?;
    let r = net.get(key.into(), false, Duration::from_secs(10)).await?;
    let found = r.value.is_some();
    Ok(json!({
        "key": key,
        "found": found,
        "status": if found { "found" } else { "not_found" },
        "value": r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
        "answered_by": found.then(|| answered_by(node, r.from)),
        "from": r.from.map(|p| p.to_string()),
        "owner": null,
        "hops": null,
        "rtt_us": r.elapsed.as_micros() as u64,
        "path": "kademlia",
        "fallback_reason": reason,
        "overlay": overlay.ok(),
    }))
}

/// Client side: one request, one response.
pub fn request(path: &Path, instance: &str, req: &Value) -> Result<Value> {
    use std::io::{BufRead, Write};
    let daemon_err = |reason: String| Error::Daemon { path: path.into(), instance: instance.into(), reason };
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| daemon_err(e.to_string()))?;
    // Longest request: a lookup's overlay wait (≤ 60 s) plus its Kademlia
    // fallback (≤ 10 s).
    s.set_read_timeout(Some(Duration::from_secs(90)))?;
    s.write_all(format!("{req}\n").as_bytes()).map_err(|e| daemon_err(e.to_string()))?;
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).map_err(|e| daemon_err(e.to_string()))?;
    let v: Value = serde_json::from_str(&line).map_err(|e| daemon_err(format!("bad response: {e}")))?;
    if v["ok"].as_bool() == Some(true) {
        Ok(v)
    } else {
        Err(Error::Remote(v["error"].as_str().unwrap_or("unknown error").to_string()))
    }
}

/// Client side of `pubsub_subscribe`: calls `on_message` for each message
/// line until it returns false or the daemon goes away.
pub fn stream(path: &Path, instance: &str, req: &Value, mut on_message: impl FnMut(&Value) -> bool) -> Result<()> {
    use std::io::{BufRead, Write};
    let daemon_err = |reason: String| Error::Daemon { path: path.into(), instance: instance.into(), reason };
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| daemon_err(e.to_string()))?;
    s.write_all(format!("{req}\n").as_bytes()).map_err(|e| daemon_err(e.to_string()))?;
    let mut lines = std::io::BufReader::new(&s).lines();
    let first = lines.next().ok_or_else(|| daemon_err("closed the connection".into()))??;
    let v: Value = serde_json::from_str(&first).map_err(|e| daemon_err(format!("bad response: {e}")))?;
    if v["ok"].as_bool() != Some(true) {
        return Err(Error::Remote(v["error"].as_str().unwrap_or("unknown error").to_string()));
    }
    for line in lines {
        let v: Value = serde_json::from_str(&line?).map_err(|e| daemon_err(format!("bad message: {e}")))?;
        if !on_message(&v) {
            break;
        }
    }
    Ok(())
}
