//! The control API: one JSON request per line on a unix socket (mode 0660),
//! one JSON response line back. Requests:
//! `{"cmd":"status"}`, `{"cmd":"lookup","key":K,"timeout_ms":N}`,
//! `{"cmd":"send","node_id":HEX,"data":S}`, `{"cmd":"ping","node_id":HEX,"timeout_ms":N}`.
//! Responses carry `"ok": true` and the result fields, or `"ok": false, "error": S`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use p2p_common::codec::{self, Packet};
use p2p_common::id::NodeId;
use p2p_common::wire::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use crate::daemon::{Node, Waiting, monotonic_ns};
use crate::error::{Error, Result};

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

async fn handle(node: Arc<Node>, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Value>(&line) {
            Ok(req) => match dispatch(&node, &req).await {
                Ok(mut v) => {
                    v["ok"] = json!(true);
                    v
                }
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            },
            Err(e) => json!({"ok": false, "error": format!("request is not JSON: {e}")}),
        };
        w.write_all(format!("{resp}\n").as_bytes()).await?;
    }
    Ok(())
}

fn node_id_arg(req: &Value) -> Result<NodeId> {
    let s = req["node_id"].as_str().ok_or_else(|| Error::Usage("missing \"node_id\"".into()))?;
    s.parse().map_err(|e| Error::Usage(format!("node_id: {e}")))
}

fn timeout_arg(req: &Value) -> Duration {
    Duration::from_millis(req["timeout_ms"].as_u64().unwrap_or(2000).clamp(1, 60_000))
}

async fn dispatch(node: &Arc<Node>, req: &Value) -> Result<Value> {
    match req["cmd"].as_str() {
        Some("status") => Ok(node.status_json()),
        Some("lookup") => {
            let key = req["key"].as_str().ok_or_else(|| Error::Usage("missing \"key\"".into()))?;
            lookup(node, key, timeout_arg(req)).await
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
            let (reply, rtt) = await_reply(node, msg_id, rx, timeout_arg(req)).await?;
            Ok(
                json!({"rtt_us": rtt.as_micros() as u64, "from": reply.src_id.to_string(), "via": via.map(|v| v.to_string())}),
            )
        }
        Some(other) => Err(Error::Usage(format!("unknown command {other:?}"))),
        None => Err(Error::Usage("missing \"cmd\"".into())),
    }
}

fn wait_for(node: &Node, msg_id: u64) -> oneshot::Receiver<(Packet, Duration)> {
    let (tx, rx) = oneshot::channel();
    node.state.lock().unwrap().waiting.insert(msg_id, Waiting { sent: std::time::Instant::now(), tx });
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

async fn lookup(node: &Arc<Node>, key: &str, timeout: Duration) -> Result<Value> {
    let dst = NodeId::from_record_key(key.as_bytes());
    let msg_id = rand::random::<u64>();
    // The reply comes straight back to this node's overlay socket, at the
    // address the first hop sees.
    let first_hop = {
        let st = node.state.lock().unwrap();
        st.router.next_hop(&dst).and_then(|h| h.map(|(_, p)| p.addr))
    };
    let Some(first_hop) = first_hop else {
        // This node owns the key.
        let st = node.state.lock().unwrap();
        let found = st.record(&dst, key.as_bytes()).map(str::to_string);
        return Ok(json!({
            "key": key, "found": found.is_some(), "value": found,
            "answered_by": node.identity.node_id.to_string(), "owner": null,
            "hops": 0, "rtt_us": 0, "path": "local"
        }));
    };
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

/// Client side: one request, one response.
pub fn request(path: &Path, instance: &str, req: &Value) -> Result<Value> {
    use std::io::{BufRead, Write};
    let daemon_err = |reason: String| Error::Daemon { path: path.into(), instance: instance.into(), reason };
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| daemon_err(e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(70)))?;
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
