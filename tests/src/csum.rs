//! The Internet checksum (RFC 1071) for frames that tests and benchmarks
//! build or check: the BPF_PROG_TEST_RUN fixtures of p2p-controller and the
//! benchmark tool (`tests/bench`). The kernel side keeps its own (it cannot
//! link userspace code).

use std::net::IpAddr;

/// Sum of big-endian 16-bit words, an odd tail padded with zero; unfolded.
pub fn sum(b: &[u8]) -> u64 {
    b.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64).sum()
}

/// Folds a sum to 16 bits with end-around carry (not complemented).
pub fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The checksum of `b` as it goes into a header field: `!fold(sum(b))`.
/// Over a header that already holds its checksum, `fold(sum(h))` is 0xffff.
pub fn checksum(b: &[u8]) -> u16 {
    !fold(sum(b))
}

/// The UDP/TCP pseudo-header sum (RFC 768, RFC 8200 section 8.1) of a
/// segment of `len` bytes; both addresses of one family.
pub fn pseudo_sum(src: IpAddr, dst: IpAddr, len: u32, proto: u8) -> u64 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum(&s.octets()) + sum(&d.octets()) + proto as u64 + len as u64,
        (IpAddr::V6(s), IpAddr::V6(d)) => sum(&s.octets()) + sum(&d.octets()) + sum(&len.to_be_bytes()) + proto as u64,
        _ => panic!("pseudo_sum: mixed address families"),
    }
}

/// The complete UDP checksum of `udp` (header with a zero checksum field,
/// then payload); 0 is sent as 0xffff (RFC 768).
pub fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    match !fold(pseudo_sum(src, dst, udp.len() as u32, 17) + sum(udp)) {
        0 => 0xffff,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let b = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&b)), 0xddf2);
        assert_eq!(checksum(&b), !0xddf2);
    }

    #[test]
    fn odd_tail_is_padded() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn ipv4_header_verifies() {
        // A header with its checksum field filled in sums to 0xffff.
        let mut h = [0x45, 0, 0, 0x54, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 10, 99, 1, 1, 10, 99, 2, 3];
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(fold(sum(&h)), 0xffff);
    }

    #[test]
    fn udp_checksum_verifies() {
        let (s, d): (IpAddr, IpAddr) = ("10.99.1.1".parse().unwrap(), "10.99.2.3".parse().unwrap());
        let mut udp = vec![0x24, 0xfe, 0x24, 0xfe, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o'];
        let c = udp_checksum(s, d, &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(fold(pseudo_sum(s, d, udp.len() as u32, 17) + sum(&udp)), 0xffff);
    }
}
