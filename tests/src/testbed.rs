//! The Kademlia testbed of DESIGN.md's LAN topology: n nodes on one bridge,
//! node 1 started first and the others bootstrapping from it (or finding
//! each other by mDNS), no static peers. Shared by the end-to-end tests,
//! `cargo xtask run` and `cargo xtask bench lookup`.

use crate::node::{Controller, Node, NodeSpec, XdpPass};
use crate::topo::Lan;
use crate::util::TempDir;
use anyhow::{Context, Result, bail};
use p2p_common::id::NodeId;
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(60);

/// Nodes on one bridge; node 1 first, the others bootstrap from it (or
/// find each other by mDNS). Drop order: nodes, xdp-pass, namespaces, dir.
pub struct Testbed {
    pub nodes: Vec<Option<Node>>,
    pub specs: Vec<NodeSpec>,
    ctl: Controller,
    _pass: XdpPass,
    pub lan: Lan,
    pub tmp: TempDir,
}

impl Testbed {
    /// Starts `n` nodes with `extra` arguments each; `bootstrap`: nodes
    /// 2..n get `--bootstrap` to node 1; `mdns`: mDNS on.
    pub fn start(ctl: &Controller, n: usize, extra: &[&str], bootstrap: bool, mdns: bool) -> Result<Testbed> {
        let mut tb = Testbed::prepare(ctl, n, extra, bootstrap, mdns)?;
        // All start before any is waited for: they find each other sooner.
        for i in 0..n {
            tb.nodes[i] = Some(Node::start(ctl, &tb.specs[i], &[])?);
        }
        for node in tb.nodes.iter_mut().flatten() {
            node.wait_ready(READY)?;
        }
        Ok(tb)
    }

    /// The namespaces, bridge and node specs of [`Testbed::start`], with no
    /// node running yet: a test may change a spec, then [`Testbed::launch`].
    pub fn prepare(ctl: &Controller, n: usize, extra: &[&str], bootstrap: bool, mdns: bool) -> Result<Testbed> {
        let tmp = TempDir::new("kad")?;
        let lan = Lan::new(n)?;
        let pass = XdpPass::start(ctl, &lan.bridge, &lan.port_names(), &tmp.join("xdp-pass.log"))?;
        let mut specs: Vec<NodeSpec> = Vec::new();
        for i in 1..=n {
            let mut s = NodeSpec::new(ctl, tmp.path(), &format!("h{i}"), lan.host(i), &[Lan::HOST_IF], Lan::addr(i))?;
            s.mdns = mdns;
            s.extra_args = extra.iter().map(|a| a.to_string()).collect();
            if bootstrap && i > 1 {
                s.extra_args.extend(["--bootstrap".to_string(), specs[0].bootstrap_addr()]);
            }
            specs.push(s);
        }
        let nodes = specs.iter().map(|_| None).collect();
        Ok(Testbed { nodes, specs, ctl: ctl.clone(), _pass: pass, lan, tmp })
    }

    /// Starts node `i` (0-based) from its spec and waits until it is ready.
    pub fn launch(&mut self, i: usize) -> Result<&mut Node> {
        let mut node = Node::start(&self.ctl, &self.specs[i], &[])?;
        node.wait_ready(READY)?;
        Ok(self.nodes[i].insert(node))
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.specs.iter().map(|s| s.node_id).collect()
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()).collect()
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.node_id.to_string() == id)
    }

    /// The peers node `i`'s kernel maps route to (live PEERS slots), and
    /// whether `maps peers` says kernel and Kademlia agree.
    pub fn routed(&self, i: usize) -> Result<(Vec<usize>, bool)> {
        let v = self.node(i).cli(&["maps", "peers"])?;
        let mut out = Vec::new();
        for p in v["kernel"].as_array().context("maps peers: no kernel")? {
            if p["live"].as_bool() == Some(true) {
                let id = p["node_id"].as_str().unwrap_or("");
                out.push(self.index_of(id).with_context(|| format!("h{} routes to unknown node {id}", i + 1))?);
            }
        }
        out.sort_unstable();
        Ok((out, v["agree"].as_bool() == Some(true)))
    }

    /// Every live node's routed peers, once all are converged: kernel and
    /// Kademlia agree, only live nodes are routed to, and every bucket range
    /// (distance prefix) that holds a live node holds one of the node's
    /// peers, the condition under which greedy XOR forwarding is exact.
    pub fn converged(&self) -> Result<std::result::Result<Vec<Vec<usize>>, String>> {
        let ids = self.ids();
        let alive = self.alive();
        let mut tables = vec![Vec::new(); self.nodes.len()];
        for &i in &alive {
            let (routed, agree) = self.routed(i)?;
            if !agree {
                return Ok(Err(format!("h{}: kernel and Kademlia views disagree", i + 1)));
            }
            if let Some(d) = routed.iter().find(|j| !alive.contains(j)) {
                return Ok(Err(format!("h{} still routes to stopped h{}", i + 1, d + 1)));
            }
            for &j in alive.iter().filter(|j| **j != i) {
                let b = bucket(&ids[i], &ids[j]);
                if !routed.iter().any(|k| bucket(&ids[i], &ids[*k]) == b) {
                    return Ok(Err(format!("h{} knows no node in bucket {b} (h{} is there)", i + 1, j + 1)));
                }
            }
            tables[i] = routed;
        }
        Ok(Ok(tables))
    }

    /// Converged, and unchanged over three polls half a second apart.
    pub fn wait_stable(&self, timeout: Duration) -> Result<Vec<Vec<usize>>> {
        let end = Instant::now() + timeout;
        let mut last: Option<Vec<Vec<usize>>> = None;
        let mut same = 0;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let t = self.wait_converged(left)?;
            same = if last.as_ref() == Some(&t) { same + 1 } else { 0 };
            if same == 2 {
                return Ok(t);
            }
            last = Some(t);
            if Instant::now() >= end {
                bail!("routing tables converged but kept changing for {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn wait_converged(&self, timeout: Duration) -> Result<Vec<Vec<usize>>> {
        let end = Instant::now() + timeout;
        loop {
            let why = match self.converged()? {
                Ok(t) => return Ok(t),
                Err(why) => why,
            };
            if Instant::now() >= end {
                bail!("routing tables did not converge within {timeout:?}: {why}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Kademlia bucket of `b` as seen from `a`: leading zero bits of a XOR b.
pub fn bucket(a: &NodeId, b: &NodeId) -> u32 {
    let d = a.distance(b);
    let mut z = 0;
    for byte in d {
        if byte == 0 {
            z += 8;
        } else {
            z += byte.leading_zeros();
            break;
        }
    }
    z
}

/// The path a LOOKUP takes: from `origin`, to the XOR-closest to `key` among
/// the current node and its routed peers, until the current node is closest.
pub fn greedy_path(tables: &[Vec<usize>], ids: &[NodeId], origin: usize, key: &NodeId) -> Vec<usize> {
    let mut path = vec![origin];
    let mut cur = origin;
    loop {
        let best = std::iter::once(cur).chain(tables[cur].iter().copied()).min_by_key(|&x| key.distance(&ids[x]));
        match best {
            Some(b) if b != cur && path.len() < 64 => {
                path.push(b);
                cur = b;
            }
            _ => return path,
        }
    }
}
