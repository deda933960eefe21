//! What the overlay socket's owner does with each datagram: the userspace
//! rules (every packet in userspace mode; in XDP mode only what XDP passed
//! up), then local delivery: LOOKUPs answered from the records, replies
//! handed to whoever waits for them, PONGs to the liveness component.

use std::net::SocketAddr;
use std::time::Instant;

use p2p_common::codec::{self, Packet};
use p2p_common::id::NodeId;
use p2p_common::wire::*;

use super::{MAX_EVIDENCE, MAX_REPLY_VALUE, OverlayConfig, OverlayHandle, Pong, Shared, State};
use crate::mapsync::Routing;
use crate::userspace::{AuthPolicy, Counters, Router, Verdict};
use p2p_common::counters;

/// The value served for record key `key` at point `key_id`: the records
/// file first (an empty `key` matches any record at that point), then
/// Kademlia's store.
pub(super) fn value_at(cfg: &OverlayConfig, key_id: &NodeId, key: &[u8]) -> Option<Vec<u8>> {
    cfg.records
        .get(key_id)
        .filter(|(k, _)| key.is_empty() || k.as_bytes() == key)
        .map(|(_, v)| v.as_bytes().to_vec())
        .or_else(|| cfg.store.value_at(key_id, key))
}

/// One datagram from the overlay socket; returns what to send back out.
/// `from` comes canonical from the relay (IPv4-mapped turned into IPv4).
pub(super) fn on_datagram(
    shared: &Shared,
    routing: &mut Routing,
    buf: &[u8],
    from: SocketAddr,
) -> Option<(SocketAddr, Vec<u8>)> {
    let router = routing.borrow_and_update().clone();
    let now = super::monotonic_ns();
    let mut st = shared.state();
    let st = &mut *st;
    // In XDP mode the kernel charged rate budgets and counted evidence
    // before it passed the packet up.
    let userspace = shared.cfg.userspace;
    let frame_bytes = userspace.then(|| Counters::frame_bytes(buf.len(), from));
    let links = shared.links();
    let auth = userspace.then_some((shared.cfg.auth, &*links, &mut st.replay));
    let verdict = router.process_at(buf, from, now, &mut st.sources, frame_bytes, auth);
    if userspace {
        st.counters.count(verdict.counter(), buf.len(), from);
        record_evidence(st, &router, buf, from, &verdict, now);
    }
    // Authenticated: the previous hop's tag verified (here or in XDP).
    let authenticated =
        shared.cfg.auth != AuthPolicy::Off && p2p_common::auth::tagged(buf[offset::VERSION], buf[offset::FLAGS]);
    let out = match verdict {
        Verdict::Drop(_) => None,
        Verdict::Local(pkt) => deliver(shared, st, pkt, from, authenticated, buf),
        Verdict::Pong { to, bytes } => Some((to, bytes)),
        Verdict::Forward { to, bytes, .. } => {
            // In XDP mode this is the slow path (XDP counted fwd_slow).
            st.status.slow_path += 1;
            Some((to, bytes))
        }
    };
    out.map(|(to, mut bytes)| {
        shared.seal_for(st, &links, &mut bytes, to);
        (to, bytes)
    })
}

/// Userspace datapath: what XDP records in LAST_SEEN and SOURCE_STATS.
fn record_evidence(st: &mut State, router: &Router, buf: &[u8], from: SocketAddr, verdict: &Verdict, now: u64) {
    let field = match verdict {
        Verdict::Drop(c) if *c == counters::DROP_MALFORMED => Some(0),
        Verdict::Drop(c) if *c == counters::DROP_RATE => Some(1),
        Verdict::Drop(c) if *c == counters::DROP_AUTH => Some(2),
        Verdict::Drop(c) if *c == counters::DROP_BLOCKED => Some(3),
        _ => None,
    };
    if let Some(f) = field {
        if st.evidence.len() >= MAX_EVIDENCE && !st.evidence.contains_key(&from.ip()) {
            st.evidence.clear();
        }
        let e = st.evidence.entry(from.ip()).or_default();
        *[&mut e.malformed, &mut e.rate, &mut e.auth, &mut e.blocked][f] += 1;
        return;
    }
    // A packet the sending peer originated itself.
    if let Some(slot) = router.sender(from)
        && let Some(peer) = router.peer(slot)
        && buf.get(offset::SRC_ID..offset::SRC_ID + 32) == Some(&peer.node_id.0[..])
    {
        st.seen.insert(peer.node_id, now);
    }
}

/// Handles a packet delivered to this node's controller.
fn deliver(
    shared: &Shared,
    st: &mut State,
    pkt: Packet,
    from: SocketAddr,
    authenticated: bool,
    buf: &[u8],
) -> Option<(SocketAddr, Vec<u8>)> {
    let received = buf.len();
    let status = &mut st.status;
    match pkt.kind {
        KIND_DATA | KIND_LOOKUP => {
            *status.delivered_hops.entry(pkt.hops.to_string()).or_default() += 1;
            *status.delivered_ttl.entry(pkt.ttl.to_string()).or_default() += 1;
            if pkt.kind == KIND_DATA {
                status.delivered.data += 1;
                deliver_data(shared, &pkt, buf);
                None
            } else {
                status.delivered.lookup += 1;
                let mut reply = answer_lookup(shared, &pkt, STATUS_FOUND, authenticated);
                // No amplification: a LOOKUP no neighbour vouched for gets
                // no reply larger than itself (the value is refused, or
                // nothing is sent).
                if !authenticated && reply.as_ref().is_some_and(|(_, r)| r.len() > received) {
                    st.status.lookups_refused_unauthenticated += 1;
                    reply = answer_lookup(shared, &pkt, STATUS_REFUSED, false).filter(|(_, r)| r.len() <= received);
                }
                if reply.is_some() {
                    st.status.lookups_answered += 1;
                }
                reply
            }
        }
        KIND_PING => {
            status.delivered.ping += 1;
            None
        }
        KIND_LOOKUP_REPLY | KIND_PONG => {
            if pkt.kind == KIND_PONG {
                status.delivered.pong += 1;
                // Liveness matches its probes by msg_id; a full queue only
                // delays its verdict by a probe.
                let _ = shared.pongs.try_send(Pong { msg_id: pkt.msg_id, from: pkt.src_id, at: Instant::now() });
            } else {
                status.delivered.lookup_reply += 1;
            }
            match st.waiting.remove(&pkt.msg_id) {
                Some(w) => {
                    let _ = w.tx.send((pkt, w.sent.elapsed()));
                }
                // Evidence for reputation: replies to nothing (PONGs may be
                // the liveness component's).
                None if pkt.kind == KIND_LOOKUP_REPLY => {
                    if st.unsolicited.len() >= MAX_EVIDENCE && !st.unsolicited.contains_key(&from.ip()) {
                        st.unsolicited.clear();
                    }
                    *st.unsolicited.entry(from.ip()).or_default() += 1;
                }
                None => {}
            }
            None
        }
        _ => None,
    }
}

/// Opens an end-to-end envelope (a DATA payload that is one) and hands the
/// delivery to `recv` subscribers, with the sender it proves. An envelope
/// that does not open is not delivered (`status.e2e.rejected`).
fn deliver_data(shared: &Shared, pkt: &Packet, buf: &[u8]) {
    use crate::e2e::{Delivery, envelope};
    let mut d = Delivery {
        from_node: pkt.src_id.to_string(),
        from_peer: None,
        encrypted: false,
        authenticated: false,
        msg_id: pkt.msg_id,
        bytes: pkt.payload.len(),
        data: String::new(),
    };
    if envelope::is_envelope(&pkt.payload) {
        match shared.cfg.sessions.open(&pkt.src_id, &envelope::aad(buf), &pkt.payload) {
            Ok((data, peer)) => {
                d.encrypted = true;
                d.authenticated = true;
                d.from_peer = Some(peer.to_string());
                d.bytes = data.len();
                d.data = String::from_utf8_lossy(&data).into_owned();
            }
            Err(why) => {
                log::debug!("DATA envelope from {} not opened: {why}", pkt.src_id);
                return;
            }
        }
    } else {
        d.data = String::from_utf8_lossy(&pkt.payload).into_owned();
    }
    // No subscriber: nobody is listening, nothing to keep.
    let _ = shared.deliveries.send(d);
}

/// Answers a LOOKUP this node owns from its record store (`at_most`
/// STATUS_REFUSED: refuses whatever the store holds), signed when the
/// LOOKUP came `authenticated` (an unauthenticated one may not make the
/// reply grow by a signature).
fn answer_lookup(shared: &Shared, pkt: &Packet, at_most: u8, authenticated: bool) -> Option<(SocketAddr, Vec<u8>)> {
    let (reply_to, key) = codec::parse_lookup_payload(&pkt.payload)?;
    let (status, value) = match value_at(&shared.cfg, &pkt.dst_key, key) {
        _ if at_most == STATUS_REFUSED => (STATUS_REFUSED, Vec::new()),
        // A reply goes to an address the packet names: keep it to one
        // datagram that fits any path (no fragments to bounce at a
        // victim). The asker falls back to Kademlia for larger values.
        Some(v) if v.len() > MAX_REPLY_VALUE => (STATUS_REFUSED, Vec::new()),
        Some(v) => (STATUS_FOUND, v),
        None => (STATUS_NOT_FOUND, Vec::new()),
    };
    let owner = SocketAddr::new(OverlayHandle::local_addr_for(reply_to), shared.cfg.port);
    let mut reply = Packet::new(
        KIND_LOOKUP_REPLY,
        shared.cfg.node_id,
        pkt.src_id,
        pkt.msg_id,
        codec::lookup_reply_payload(status, owner, &value),
    );
    // Replies go straight back, unrouted. Their ttl carries the LOOKUP's
    // ttl on arrival so that the origin can tell the hop count.
    reply.ttl = pkt.ttl;
    let mut bytes = reply.encode();
    if authenticated && let Err(e) = crate::trust::reply::sign(&shared.cfg.identity, &mut bytes) {
        log::warn!("signing a LOOKUP_REPLY: {e}");
    }
    Some((reply_to, bytes))
}
