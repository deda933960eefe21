//! Overlay endpoint advertisement.
//!
//! Every node lists its overlay UDP socket among the addresses that
//! identify carries, as a bare `/ip4/A/udp/P` or `/ip6/A/udp/P` multiaddr.
//! Nothing else ends in a bare `/udp/P`: QUIC is `/udp/P/quic-v1`, so the
//! two never mix, and a stock libp2p node that tries to dial the overlay
//! address just fails with "unsupported multiaddr". A peer picks, among the
//! advertised endpoints, the one on the address it reached the node by.

use std::net::{IpAddr, SocketAddr};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// `/ip4/A/udp/P` (or `/ip6/…`) for an overlay socket.
pub fn overlay_multiaddr(ip: IpAddr, port: u16) -> Multiaddr {
    Multiaddr::empty().with(ip_protocol(ip)).with(Protocol::Udp(port))
}

fn ip_protocol(ip: IpAddr) -> Protocol<'static> {
    match ip {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    }
}

/// The overlay endpoint in `addr`, if it is one: IP, then UDP, then nothing
/// but an optional `/p2p/<peer id>`.
pub fn parse_overlay(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut it = addr.iter();
    let ip = match it.next()? {
        Protocol::Ip4(v4) => IpAddr::V4(v4),
        Protocol::Ip6(v6) => IpAddr::V6(v6),
        _ => return None,
    };
    let Protocol::Udp(port) = it.next()? else { return None };
    match it.next() {
        None | Some(Protocol::P2p(_)) if it.next().is_none() => {}
        _ => return None,
    }
    (port != 0 && usable_ip(ip)).then_some(SocketAddr::new(ip, port))
}

/// Every overlay endpoint among identify's listen addresses, in order, once.
pub fn overlay_endpoints(addrs: &[Multiaddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs.iter().filter_map(parse_overlay) {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// The endpoint to send a peer's overlay traffic to. IPv4 when the peer
/// advertises one, else IPv6: every node choosing the same family keeps
/// each lookup in one family from hop to hop, and a change of family costs
/// the slow path (docs/WIRE.md step 7). Within the family, the endpoint on an
/// IP that a libp2p connection reached the peer at, else the first.
pub fn pick_endpoint(advertised: &[SocketAddr], remote_ips: &[IpAddr]) -> Option<SocketAddr> {
    let v4 = advertised.iter().any(|a| a.is_ipv4());
    let family: Vec<SocketAddr> = advertised.iter().filter(|a| a.is_ipv4() == v4).copied().collect();
    let remote: Vec<IpAddr> = remote_ips.iter().map(|ip| canonical(*ip)).collect();
    family.iter().find(|a| remote.contains(&a.ip())).or(family.first()).copied()
}

/// The IP of a multiaddr that starts with one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(v4) => Some(IpAddr::V4(v4)),
        Protocol::Ip6(v6) => Some(canonical(IpAddr::V6(v6))),
        _ => None,
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// An address worth telling other nodes about: not loopback, unspecified,
/// multicast or IPv6 link-local (which needs a scope we cannot carry).
pub fn usable_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// A libp2p address another node can dial: TCP or QUIC on a usable IP.
pub fn is_dialable(addr: &Multiaddr) -> bool {
    let mut it = addr.iter();
    let ip_ok = match it.next() {
        Some(Protocol::Ip4(v4)) => usable_ip(IpAddr::V4(v4)),
        Some(Protocol::Ip6(v6)) => usable_ip(IpAddr::V6(v6)),
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    };
    ip_ok
        && match it.next() {
            Some(Protocol::Tcp(p)) => p != 0,
            Some(Protocol::Udp(p)) => p != 0 && matches!(it.next(), Some(Protocol::QuicV1)),
            _ => false,
        }
}

/// `addr` with its IP replaced: turns a wildcard listen address into the
/// address of one interface.
pub fn with_ip(addr: &Multiaddr, ip: IpAddr) -> Multiaddr {
    let mut out = Multiaddr::empty().with(ip_protocol(ip));
    for p in addr.iter().skip(1) {
        out.push(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn overlay_endpoints_are_bare_udp_only() {
        let pid = "12D3KooWGzh3HTwT6fU3e8dB2NFAodL1m7uN7kNbRG5Yf3jv4A1a";
        let addrs = vec![
            ma("/ip4/10.99.0.2/tcp/9471"),
            ma("/ip4/10.99.0.2/udp/9471/quic-v1"),
            ma("/ip4/10.99.0.2/udp/9470"),
            ma("/ip6/fd99::2/udp/9470"),
            ma(&format!("/ip4/10.99.1.2/udp/9480/p2p/{pid}")),
            ma("/ip4/127.0.0.1/udp/9470"),
            ma("/ip4/0.0.0.0/udp/9470"),
            ma("/ip6/fe80::1/udp/9470"),
            ma("/ip4/10.99.0.2/udp/0"),
            ma("/ip4/10.99.0.2/udp/9470"),
            ma("/dns4/example.org/udp/9470"),
        ];
        let got = overlay_endpoints(&addrs);
        let want: Vec<SocketAddr> = vec![
            "10.99.0.2:9470".parse().unwrap(),
            "[fd99::2]:9470".parse().unwrap(),
            "10.99.1.2:9480".parse().unwrap(),
        ];
        assert_eq!(got, want);
        for a in [ip_of(&addrs[0]).unwrap(), "fd99::7".parse().unwrap()] {
            let m = overlay_multiaddr(a, 9470);
            assert_eq!(parse_overlay(&m), Some(SocketAddr::new(a, 9470)), "{m}");
        }
    }

    #[test]
    fn endpoint_is_ipv4_first_then_the_connection_address() {
        let adv: Vec<SocketAddr> = vec![
            "10.99.1.2:9470".parse().unwrap(),
            "10.99.2.2:9470".parse().unwrap(),
            "[fd99::2]:9470".parse().unwrap(),
        ];
        let pick = |ips: &[&str]| {
            let ips: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
            pick_endpoint(&adv, &ips).unwrap().to_string()
        };
        assert_eq!(pick(&["10.99.2.2"]), "10.99.2.2:9470");
        assert_eq!(pick(&["::ffff:10.99.2.2"]), "10.99.2.2:9470");
        // Reached over IPv6: still IPv4, so lookups stay in one family.
        assert_eq!(pick(&["fd99::2"]), "10.99.1.2:9470");
        assert_eq!(pick(&["fd99::2", "10.99.2.2"]), "10.99.2.2:9470");
        // Reached by another address (NAT, a routed path): the first IPv4.
        assert_eq!(pick(&["192.0.2.1"]), "10.99.1.2:9470");
        assert_eq!(pick(&[]), "10.99.1.2:9470");
        let v6_only: Vec<SocketAddr> = vec!["[fd99::2]:9470".parse().unwrap(), "[fd99::3]:9470".parse().unwrap()];
        assert_eq!(pick_endpoint(&v6_only, &["fd99::3".parse().unwrap()]), Some(v6_only[1]));
        assert_eq!(pick_endpoint(&[], &["10.0.0.1".parse().unwrap()]), None);
    }

    #[test]
    fn dialable_addresses() {
        assert!(is_dialable(&ma("/ip4/10.99.0.2/tcp/9471")));
        assert!(is_dialable(&ma("/ip6/fd99::2/udp/9471/quic-v1")));
        assert!(is_dialable(&ma("/ip4/10.99.0.2/tcp/9471/p2p/12D3KooWGzh3HTwT6fU3e8dB2NFAodL1m7uN7kNbRG5Yf3jv4A1a")));
        assert!(!is_dialable(&ma("/ip4/10.99.0.2/udp/9470")), "overlay endpoint");
        assert!(!is_dialable(&ma("/ip4/127.0.0.1/tcp/9471")), "loopback");
        assert!(!is_dialable(&ma("/ip4/0.0.0.0/tcp/9471")), "wildcard");
        assert!(!is_dialable(&ma("/ip4/10.99.0.2/tcp/0")));
        assert_eq!(
            with_ip(&ma("/ip4/0.0.0.0/udp/9471/quic-v1"), "10.1.2.3".parse().unwrap()).to_string(),
            "/ip4/10.1.2.3/udp/9471/quic-v1"
        );
    }
}
