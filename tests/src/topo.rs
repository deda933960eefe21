//! The test topologies of DESIGN.md, each in namespaces of its own that are
//! deleted when the value drops.
//!
//! - [`Lan`]: n hosts on one bridge; the bridge lives in its own namespace,
//!   host i has `eth0` with 10.99.0.i/24 and fd99::i/64, its bridge port is
//!   `vhI` in the bridge namespace.
//! - [`Chain`]: A — B — C, B routes between 10.99.1.0/24 (A `eth0` .1, B
//!   `eth0` .2) and 10.99.2.0/24 (B `eth1` .2, C `eth0` .3); A and C route
//!   the other subnet via B; B has IPv4 forwarding on.
//! - [`Pair`]: A — B on one link, 10.99.3.1/.2 and fd99:3::1/::2.

use crate::netns::{Netns, veth};
use crate::util::unique;
use anyhow::Result;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub struct Lan {
    pub hosts: Vec<Netns>,
    /// Bridge-side veth end of each host, in `bridge`.
    pub ports: Vec<String>,
    pub bridge: Netns,
}

impl Lan {
    pub const HOST_IF: &'static str = "eth0";

    pub fn new(n: usize) -> Result<Lan> {
        assert!((1..=250).contains(&n));
        let bridge = Netns::new(unique("br"))?;
        bridge.bridge("br0")?;
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for i in 1..=n {
            let h = Netns::new(unique(&format!("h{i}")))?;
            let port = format!("vh{i}");
            veth(&h, Self::HOST_IF, &bridge, &port)?;
            bridge.enslave(&port, "br0")?;
            h.addr(Self::HOST_IF, &format!("{}/24", Lan::v4(i)))?;
            h.addr(Self::HOST_IF, &format!("{}/64", Lan::v6(i)))?;
            hosts.push(h);
            ports.push(port);
        }
        Ok(Lan { hosts, ports, bridge })
    }

    /// IPv4 address of host `i` (1-based).
    pub fn v4(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, i as u8)
    }
    pub fn v6(i: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, i as u16)
    }
    pub fn addr(i: usize) -> IpAddr {
        IpAddr::V4(Lan::v4(i))
    }
    /// Host `i` (1-based).
    pub fn host(&self, i: usize) -> &Netns {
        &self.hosts[i - 1]
    }
    pub fn port_names(&self) -> Vec<&str> {
        self.ports.iter().map(|s| s.as_str()).collect()
    }
}

pub struct Chain {
    pub a: Netns,
    pub b: Netns,
    pub c: Netns,
}

impl Chain {
    pub const A: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
    pub const B_LEFT: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 2);
    pub const B_RIGHT: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 2);
    pub const C: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 3);

    pub fn new() -> Result<Chain> {
        let a = Netns::new(unique("A"))?;
        let b = Netns::new(unique("B"))?;
        let c = Netns::new(unique("C"))?;
        veth(&a, "eth0", &b, "eth0")?;
        veth(&c, "eth0", &b, "eth1")?;
        a.addr("eth0", &format!("{}/24", Chain::A))?;
        b.addr("eth0", &format!("{}/24", Chain::B_LEFT))?;
        b.addr("eth1", &format!("{}/24", Chain::B_RIGHT))?;
        c.addr("eth0", &format!("{}/24", Chain::C))?;
        a.route("10.99.2.0/24", &Chain::B_LEFT.to_string())?;
        c.route("10.99.1.0/24", &Chain::B_RIGHT.to_string())?;
        b.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(Chain { a, b, c })
    }
}

pub struct Pair {
    pub a: Netns,
    pub b: Netns,
}

impl Pair {
    pub const A: Ipv4Addr = Ipv4Addr::new(10, 99, 3, 1);
    pub const B: Ipv4Addr = Ipv4Addr::new(10, 99, 3, 2);
    pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd99, 3, 0, 0, 0, 0, 0, 1);
    pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd99, 3, 0, 0, 0, 0, 0, 2);

    pub fn new() -> Result<Pair> {
        let a = Netns::new(unique("A"))?;
        let b = Netns::new(unique("B"))?;
        veth(&a, "eth0", &b, "eth0")?;
        a.addr("eth0", &format!("{}/24", Pair::A))?;
        b.addr("eth0", &format!("{}/24", Pair::B))?;
        a.addr("eth0", &format!("{}/64", Pair::A6))?;
        b.addr("eth0", &format!("{}/64", Pair::B6))?;
        Ok(Pair { a, b })
    }
}

/// iptables rules in the LAN's bridge namespace, for bridged frames (the
/// kernel's br_netfilter hands them to iptables and ip6tables), deleted on
/// drop. ARP is not filtered (arptables): neighbour entries stay valid,
/// as they would for a host that vanished a moment ago.
pub struct BridgeRules<'a> {
    lan: &'a Lan,
    /// (`-A` arguments) per rule, each in iptables and ip6tables.
    rules: Vec<Vec<String>>,
}

impl Lan {
    fn bridge_nf(&self) -> Result<()> {
        for fam in ["iptables", "ip6tables"] {
            self.bridge.sysctl(&format!("net.bridge.bridge-nf-call-{fam}"), "1")?;
        }
        Ok(())
    }

    /// Every frame from or to host `i` (1-based) dropped on its link: the
    /// host vanishes without a FIN or an RST.
    pub fn isolate(&self, i: usize) -> Result<BridgeRules<'_>> {
        let port = self.ports[i - 1].clone();
        let rules = ["--physdev-in", "--physdev-out"]
            .iter()
            .map(|dir| ["FORWARD", "-m", "physdev", dir, &port, "-j", "DROP"].map(String::from).to_vec())
            .collect();
        BridgeRules::install(self, rules)
    }

    /// Each bridged frame dropped with probability `p`: random loss on
    /// every link.
    pub fn lossy(&self, p: f64) -> Result<BridgeRules<'_>> {
        let rule = ["FORWARD", "-m", "statistic", "--mode", "random", "--probability", &format!("{p}"), "-j", "DROP"];
        BridgeRules::install(self, vec![rule.map(String::from).to_vec()])
    }
}

impl<'a> BridgeRules<'a> {
    fn install(lan: &'a Lan, rules: Vec<Vec<String>>) -> Result<BridgeRules<'a>> {
        lan.bridge_nf()?;
        let guard = BridgeRules { lan, rules: Vec::new() };
        let mut guard = guard;
        for r in rules {
            for fam in ["iptables", "ip6tables"] {
                let mut args = vec!["-w", "-A"];
                args.extend(r.iter().map(String::as_str));
                lan.bridge.exec(fam, &args)?;
            }
            guard.rules.push(r);
        }
        Ok(guard)
    }
}

impl Drop for BridgeRules<'_> {
    fn drop(&mut self) {
        for r in &self.rules {
            for fam in ["iptables", "ip6tables"] {
                let mut args = vec!["-w", "-D"];
                args.extend(r.iter().map(String::as_str));
                let _ = self.lan.bridge.exec(fam, &args);
            }
        }
    }
}
