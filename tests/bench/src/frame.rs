//! The frames the tools send and test-run: Ethernet + IPv4 + UDP around an
//! overlay DATA packet, with complete checksums (`p2p_tests::csum`).

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, bail};
use p2p_common::codec::Packet;
use p2p_common::id::NodeId;
use p2p_common::wire::KIND_DATA;
use p2p_tests::csum;
use rand::RngCore;

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC address {s:?} (want aa:bb:cc:dd:ee:ff)");
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).map_err(|_| anyhow::anyhow!("bad MAC address {s:?}"))?;
    }
    Ok(m)
}

/// MAC address of `iface` in the calling thread's network namespace.
pub fn iface_mac(iface: &str) -> Result<[u8; 6]> {
    if iface.len() >= libc::IFNAMSIZ {
        bail!("no interface {iface}");
    }
    // SAFETY: ioctl on a socket we own with a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in iface.bytes().enumerate() {
            req.ifr_name[i] = b as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req);
        libc::close(fd);
        if rc != 0 {
            bail!("no interface {iface} in this network namespace");
        }
        let sa = req.ifr_ifru.ifru_hwaddr.sa_data;
        Ok([sa[0] as u8, sa[1] as u8, sa[2] as u8, sa[3] as u8, sa[4] as u8, sa[5] as u8])
    }
}

pub fn ifindex(iface: &str) -> Result<u32> {
    p2p_controller::dataplane::ifindex(iface)
        .ok_or_else(|| anyhow::anyhow!("no interface {iface} in this network namespace"))
}

/// Where the overlay packet starts in a [`udp4_frame`].
pub const OVERLAY_OFFSET: usize = 14 + 20 + 8;

/// Ethernet + IPv4 (DF, TTL 64) + UDP around `udp_payload`, complete checksums.
pub fn udp4_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    udp_payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + udp_payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = csum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(udp_payload);
    let c = csum::udp_checksum(IpAddr::V4(src), IpAddr::V4(dst), &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

pub fn random_id() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// An overlay DATA packet for `dst_key` with `payload` bytes and overlay TTL `ttl`.
pub fn data_packet(dst_key: [u8; 32], payload: usize, ttl: u8) -> Vec<u8> {
    data_packet_from(random_id(), dst_key, payload, ttl)
}

/// A DATA packet that `src_id` originated.
pub fn data_packet_from(src_id: [u8; 32], dst_key: [u8; 32], payload: usize, ttl: u8) -> Vec<u8> {
    let body: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    let mut p = Packet::new(KIND_DATA, NodeId(src_id), NodeId(dst_key), 1, body);
    p.ttl = ttl;
    p.encode()
}

/// `struct xdp_md` for BPF_PROG_RUN: `data_end` = the frame's length (left
/// at 0 the kernel puts the frame into fragments and the program sees an
/// empty linear part) and the ingress interface.
pub fn xdp_md(ingress_ifindex: u32, frame_len: usize) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame_len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_checksums_verify() {
        let (s, d) = (Ipv4Addr::new(10, 99, 1, 1), Ipv4Addr::new(10, 99, 1, 2));
        let f = udp4_frame([2; 6], [4; 6], s, d, 9470, 9470, &data_packet([7; 32], 64, 32));
        assert_eq!(csum::fold(csum::sum(&f[14..34])), 0xffff, "IPv4 header checksum");
        let udp = &f[34..];
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, udp.len());
        let total = csum::pseudo_sum(s.into(), d.into(), udp.len() as u32, 17) + csum::sum(udp);
        assert_eq!(csum::fold(total), 0xffff, "UDP checksum");
        assert_eq!(Packet::decode(&udp[8..]).unwrap().dst_key, NodeId([7; 32]));
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:99:00:0a:ff:01").unwrap(), [2, 0x99, 0, 0xa, 0xff, 1]);
        assert!(parse_mac("02:99:00").is_err());
        assert!(parse_mac("zz:99:00:0a:ff:01").is_err());
    }
}
