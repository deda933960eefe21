//! Command line (clap). Read commands take `--json`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::dataplane::AttachMode;

#[derive(Parser, Debug)]
#[command(
    name = "p2p-controller",
    version,
    about = "p2p-nos node: an overlay whose forwarding runs in XDP, driven by this controller",
    long_about = "p2p-nos node controller.\n\n\
`run` loads the XDP datapath, pins its maps under /sys/fs/bpf/p2p/<instance>/ and serves the \
overlay (WIRE.md) on its UDP port. `maps` reads the pinned maps without the daemon. \
`status`, `lookup`, `send` and `ping` talk to a running daemon over its unix socket.\n\n\
Example (one node, static peers):\n  \
p2p-controller run --iface eth0 --peers peers.json --records records.json\n  \
p2p-controller maps stats\n  p2p-controller lookup my-key"
)]
pub struct Cli {
    /// Instance name: separates pins, sockets and state of nodes on one host.
    #[arg(long, global = true, default_value = "default")]
    pub instance: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print this node's peer ID and node ID (creates the key if absent).
    Id {
        /// State directory holding node.key [default: /var/lib/p2p-nos/<instance>]
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run the node until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Read the pinned maps of a node (no daemon needed).
    Maps {
        #[arg(value_enum)]
        which: MapsWhich,
        /// Read pins from this directory instead of /sys/fs/bpf/p2p/<instance>.
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon for its state.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Look a key up through the overlay datapath: prints value, answering node, hops and RTT.
    Lookup {
        key: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Send DATA to a node ID (64 hex digits) through the overlay.
    Send {
        node_id: String,
        data: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// PING a node ID through the overlay and print the round-trip time.
    Ping {
        node_id: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Attach the pass-through XDP program until interrupted. A veth only
    /// delivers redirected or XDP_TX'd frames when its peer runs XDP: test
    /// rigs put this on bridge-side veth ends and on benchmark generators.
    XdpPass {
        /// Network namespace to enter (by setns on /run/netns/NAME).
        #[arg(long)]
        netns: Option<String>,
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: AttachMode,
    },
    #[command(hide = true)]
    Bench(crate::dataplane::bench::BenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Daemon socket [default: /run/p2p-nos/<instance>.sock]
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapsWhich {
    Routes,
    Peers,
    Stats,
    Blocked,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    /// Forward in the kernel (XDP).
    Xdp,
    /// Forward in this process (fallback and benchmark baseline).
    Userspace,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Enter this network namespace first (setns on /run/netns/NAME; mounts untouched, so pins stay visible).
    #[arg(long)]
    pub netns: Option<String>,
    /// Interface to attach XDP to (repeatable).
    #[arg(long = "iface")]
    pub ifaces: Vec<String>,
    /// Overlay UDP port.
    #[arg(long, default_value_t = p2p_common::wire::DEFAULT_OVERLAY_PORT)]
    pub overlay_port: u16,
    #[arg(long, value_enum, default_value = "xdp")]
    pub datapath: DatapathKind,
    /// auto tries driver mode, then SKB (generic), and says which it got.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: AttachMode,
    /// Static peers: JSON array of {"node_id": "<64 hex>", "addr": "<ip>", "port": N}.
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// Records served to LOOKUPs: JSON array of {"key": "<string>", "value": "<string>"}.
    #[arg(long)]
    pub records: Option<PathBuf>,
    /// State directory (node key) [default: /var/lib/p2p-nos/<instance>]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Emit aya-log lines from the XDP program (off by default: they cost).
    #[arg(long)]
    pub ebpf_log: bool,
    /// Control socket [default: /run/p2p-nos/<instance>.sock]
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Listen address of the overlay socket.
    #[arg(long, default_value = "::")]
    pub listen: std::net::IpAddr,
}
