//! The overlay socket's receive loop on a dedicated thread, batched with
//! recvmmsg/sendmmsg: the userspace datapath is the baseline every benchmark
//! compares against, so it should be a fair one.

use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

const BATCH: usize = 64;
const BUF: usize = 2048;

/// Receives datagrams in batches, hands each to `handle`, and sends what it
/// returns in one sendmmsg per batch. Returns when `stop()` is true after a
/// receive timeout (set SO_RCVTIMEO on the socket).
pub fn serve<H, S>(sock: &UdpSocket, mut handle: H, stop: S)
where
    H: FnMut(&[u8], SocketAddr) -> Option<(SocketAddr, Vec<u8>)>,
    S: Fn() -> bool,
{
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; BUF]; BATCH];
    // SAFETY: zeroed sockaddr_in6 / iovec / mmsghdr are valid initial values.
    let mut addrs: Vec<libc::sockaddr_in6> = vec![unsafe { MaybeUninit::zeroed().assume_init() }; BATCH];
    let mut iovs: Vec<libc::iovec> =
        bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: BUF }).collect();
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { MaybeUninit::zeroed().assume_init() }; BATCH];
    let mut out: Vec<(libc::sockaddr_in6, Vec<u8>)> = Vec::with_capacity(BATCH);
    loop {
        for i in 0..BATCH {
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        // SAFETY: msgs/iovs/addrs outlive the call and are sized BATCH.
        let n =
            unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut()) };
        // Checked after every batch: under steady traffic the receive
        // timeout never fires.
        if stop() {
            return;
        }
        if n <= 0 {
            continue;
        }
        out.clear();
        for i in 0..n as usize {
            let len = msgs[i].msg_len as usize;
            let from = from_sockaddr(&addrs[i]);
            if let Some((to, bytes)) = handle(&bufs[i][..len.min(BUF)], from) {
                out.push((to_sockaddr(to), bytes));
            }
        }
        send_batch(fd, &mut out);
    }
}

fn send_batch(fd: i32, out: &mut [(libc::sockaddr_in6, Vec<u8>)]) {
    if out.is_empty() {
        return;
    }
    let mut iovs: Vec<libc::iovec> =
        out.iter_mut().map(|(_, b)| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    // SAFETY: zeroed mmsghdr is valid; pointers set below outlive the call.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { MaybeUninit::zeroed().assume_init() }; out.len()];
    for (i, m) in msgs.iter_mut().enumerate() {
        m.msg_hdr.msg_name = (&mut out[i].0 as *mut libc::sockaddr_in6).cast();
        m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        m.msg_hdr.msg_iov = &mut iovs[i];
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0;
    while sent < msgs.len() {
        // SAFETY: as above.
        let n = unsafe { libc::sendmmsg(fd, msgs[sent..].as_mut_ptr(), (msgs.len() - sent) as u32, 0) };
        if n <= 0 {
            // A failed datagram (e.g. unreachable) must not stall the rest.
            sent += 1;
        } else {
            sent += n as usize;
        }
    }
}

fn from_sockaddr(a: &libc::sockaddr_in6) -> SocketAddr {
    let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
    let port = u16::from_be(a.sin6_port);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
        None => SocketAddr::V6(SocketAddrV6::new(ip, port, a.sin6_flowinfo, a.sin6_scope_id)),
    }
}

/// The overlay socket is dual-stack IPv6: IPv4 peers go as mapped addresses.
fn to_sockaddr(to: SocketAddr) -> libc::sockaddr_in6 {
    // SAFETY: zeroed sockaddr_in6 is valid.
    let mut a: libc::sockaddr_in6 = unsafe { MaybeUninit::zeroed().assume_init() };
    a.sin6_family = libc::AF_INET6 as u16;
    a.sin6_port = to.port().to_be();
    let ip = match to.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    a.sin6_addr.s6_addr = ip.octets();
    a
}
