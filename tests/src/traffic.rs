//! Overlay packets crafted with `p2p_common::codec`, sent from a plain UDP
//! socket that lives in a test namespace, at a bounded, paced rate; and a
//! collector for the LOOKUP_REPLYs that come back to that socket.

use crate::netns::enter;
use anyhow::{Context, Result, bail};
use p2p_common::codec::{Packet, lookup_payload_padded};
use p2p_common::id::NodeId;
use p2p_common::wire::*;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A UDP socket bound to `bind` inside namespace `ns`, with a large
/// receive buffer (replies arrive in bursts).
pub fn socket_in(ns: &str, bind: SocketAddr) -> Result<UdpSocket> {
    let sock = enter(ns, move || UdpSocket::bind(bind))?.with_context(|| format!("bind {bind} in {ns}"))?;
    let size: libc::c_int = 8 << 20;
    // SAFETY: setsockopt with a valid fd and an int option value. FORCE needs
    // CAP_NET_ADMIN; the plain one is the fallback (capped by rmem_max).
    unsafe {
        let p = &size as *const libc::c_int as *const libc::c_void;
        let l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, p, l) != 0 {
            libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, p, l);
        }
    }
    Ok(sock)
}

/// A DATA packet from `src` to node `dst`, `len` payload bytes starting with `seq`.
pub fn data(src: NodeId, dst: NodeId, seq: u64, len: usize) -> Vec<u8> {
    let mut payload = vec![0xA5u8; len.max(8)];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    Packet::new(KIND_DATA, src, dst, seq, payload).encode()
}

/// A LOOKUP for record key `key`, answered to `reply`: from a test socket,
/// untagged, so padded (`pad_len`) to be no smaller than the replies the
/// tests expect (docs/WIRE.md "No amplification").
pub fn lookup(src: NodeId, key: &str, reply: SocketAddr, msg_id: u64) -> Vec<u8> {
    let dst = NodeId::from_record_key(key.as_bytes());
    Packet::new(KIND_LOOKUP, src, dst, msg_id, lookup_payload_padded(reply, key.as_bytes(), LOOKUP_PAD)).encode()
}

/// Padding of [`lookup`]: room for a 128-byte value beyond the key.
pub const LOOKUP_PAD: u16 = 132;

/// A PING from `src` to node `dst`.
pub fn ping(src: NodeId, dst: NodeId, msg_id: u64) -> Vec<u8> {
    Packet::new(KIND_PING, src, dst, msg_id, 0u64.to_be_bytes().to_vec()).encode()
}

/// Every docs/WIRE.md step-2 case, as (label, datagram). `src`/`dst` fill the
/// otherwise valid header.
pub fn malformed(src: NodeId, dst: NodeId) -> Vec<(&'static str, Vec<u8>)> {
    let good = data(src, dst, 7, 32);
    let mut out: Vec<(&'static str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("1 byte", vec![0x50]),
        ("magic only", MAGIC.to_vec()),
        ("95 bytes", good[..HEADER_LEN - 1].to_vec()),
    ];
    let mut b = good.clone();
    b[offset::MAGIC] = 0x51;
    out.push(("bad magic byte 0", b));
    let mut b = good.clone();
    b[offset::MAGIC + 1] = 0;
    out.push(("bad magic byte 1", b));
    for (label, v) in [("version 0", 0u8), ("version 3", 3), ("version 255", 255)] {
        let mut b = good.clone();
        b[offset::VERSION] = v;
        out.push((label, b));
    }
    for (label, k) in [("kind 0", 0u8), ("kind 6", 6), ("kind 255", 255)] {
        let mut b = good.clone();
        b[offset::KIND] = k;
        out.push((label, b));
    }
    let mut b = good.clone();
    b[offset::PAYLOAD_LEN + 1] += 1;
    out.push(("payload_len too big", b));
    let mut b = good.clone();
    b[offset::PAYLOAD_LEN + 1] -= 1;
    out.push(("payload_len too small", b));
    let mut b = good.clone();
    b.push(0);
    out.push(("trailing byte", b));
    let mut b = good.clone();
    b[offset::PAYLOAD_LEN] = 0xFF;
    out.push(("payload_len huge", b));
    let mut b = good[..HEADER_LEN].to_vec();
    b[offset::PAYLOAD_LEN..offset::PAYLOAD_LEN + 2].copy_from_slice(&[0, 20]);
    out.push(("lookup header without payload", b));
    out
}

/// Bursts of `burst` datagrams, then `pause`.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub burst: usize,
    pub pause: Duration,
}

impl Default for Pace {
    /// 50 then 5 ms: at most 10,000 packets/s.
    fn default() -> Self {
        Pace { burst: 50, pause: Duration::from_millis(5) }
    }
}

/// Sends one datagram, retrying briefly on ENOBUFS/EAGAIN.
pub fn send_one(sock: &UdpSocket, to: SocketAddr, pkt: &[u8]) -> Result<()> {
    let mut tries = 0;
    loop {
        match sock.send_to(pkt, to) {
            Ok(_) => return Ok(()),
            Err(e)
                if tries < 200
                    && (e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == std::io::ErrorKind::WouldBlock) =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => bail!("send {} bytes to {to}: {e}", pkt.len()),
        }
    }
}

/// Sends every packet to `to` with `pace`; returns how many were sent.
pub fn send_paced<I>(sock: &UdpSocket, to: SocketAddr, packets: I, pace: Pace) -> Result<usize>
where
    I: IntoIterator<Item = Vec<u8>>,
{
    let mut n = 0;
    for pkt in packets {
        send_one(sock, to, &pkt)?;
        n += 1;
        if pace.burst > 0 && n % pace.burst == 0 {
            std::thread::sleep(pace.pause);
        }
    }
    Ok(n)
}

/// Sends `make(i)` for i = 0, 1, … to `to` at `pps` packets per second
/// for `length`, paced by the clock (a burst each millisecond catches up
/// with what is due); returns how many were sent.
pub fn send_at_rate(
    sock: &UdpSocket,
    to: SocketAddr,
    pps: u64,
    length: Duration,
    mut make: impl FnMut(u64) -> Vec<u8>,
) -> Result<u64> {
    let start = std::time::Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < length {
        let due = (start.elapsed().as_secs_f64() * pps as f64) as u64;
        while sent < due {
            send_one(sock, to, &make(sent))?;
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(sent)
}

/// Reads overlay packets from (a clone of) `sock` on a thread until
/// `expected` arrived or nothing came for `idle`. Undecodable datagrams are
/// returned as errors in the second list.
pub fn collect(sock: &UdpSocket, expected: usize, idle: Duration) -> Result<JoinHandle<(Vec<Packet>, Vec<String>)>> {
    let sock = sock.try_clone()?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut bad = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut last = Instant::now();
        while got.len() < expected && last.elapsed() < idle {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    last = Instant::now();
                    match Packet::decode(&buf[..n]) {
                        Ok(p) => got.push(p),
                        Err(e) => bad.push(format!("{n} bytes from {from}: {e}")),
                    }
                }
                Err(_) => continue,
            }
        }
        (got, bad)
    }))
}

/// Index of the XOR-closest of `ids` to `key`.
pub fn closest(key: &NodeId, ids: &[NodeId]) -> usize {
    (0..ids.len()).min_by_key(|&i| key.distance(&ids[i])).expect("at least one id")
}

/// `n` record keys `"{tag}-{i}"` whose XOR-closest node among `ids` is `ids[owner]`.
pub fn keys_owned_by(tag: &str, owner: usize, ids: &[NodeId], n: usize) -> Vec<String> {
    (0u64..)
        .map(|i| format!("{tag}-{i}"))
        .filter(|k| closest(&NodeId::from_record_key(k.as_bytes()), ids) == owner)
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_cases_are_all_rejected_by_the_codec() {
        let a = NodeId::from_record_key(b"a");
        let b = NodeId::from_record_key(b"b");
        for (label, bytes) in malformed(a, b) {
            assert!(Packet::decode(&bytes).is_err(), "{label} decodes");
        }
        assert!(Packet::decode(&data(a, b, 1, 64)).is_ok());
        let l = lookup(a, "k", "10.99.0.1:4000".parse().unwrap(), 3);
        assert_eq!(Packet::decode(&l).unwrap().dst_key, NodeId::from_record_key(b"k"));
    }

    #[test]
    fn owned_keys_are_closest_to_the_owner() {
        let ids: Vec<NodeId> = (0..4u8).map(|i| NodeId::from_record_key(&[i])).collect();
        let keys = keys_owned_by("k", 3, &ids, 5);
        assert_eq!(keys.len(), 5);
        for k in keys {
            let key = NodeId::from_record_key(k.as_bytes());
            for (i, id) in ids.iter().enumerate().take(3) {
                assert!(key.distance(&ids[3]) < key.distance(id), "{k} closer to {i}");
            }
        }
    }
}
