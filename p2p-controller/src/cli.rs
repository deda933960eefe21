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
`run` loads the XDP datapath, pins its maps under /sys/fs/bpf/p2p/<instance>/, serves the \
overlay (docs/WIRE.md) on its UDP port and joins the Kademlia network (libp2p): peers found by \
--bootstrap or mDNS fill the datapath's maps by themselves. `maps` reads the pinned maps without \
the daemon. `status`, `peers`, `lookup`, `dht`, `pubsub`, `send` and `ping` talk to a running \
daemon over its unix socket.\n\n\
Example (a first node, then a second one that joins through it):\n  \
p2p-controller run --iface eth0\n  \
p2p-controller run --iface eth0 --bootstrap /ip4/192.0.2.1/tcp/9471\n  \
p2p-controller dht put my-key 'my value'\n  \
p2p-controller lookup my-key\n  \
p2p-controller maps peers --json"
)]
pub struct Cli {
    /// Instance name: separates pins, sockets and state of nodes on one host.
    #[arg(long, global = true, default_value = "default")]
    pub instance: String,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
    Run(Box<RunArgs>),
    /// Read the pinned maps of a node (no daemon needed).
    ///
    /// `routes` and `peers` also ask the daemon for its Kademlia view and
    /// print both side by side (`--json`: fields "kernel" and "kademlia",
    /// and "agree"); without a daemon the Kademlia side is null.
    Maps {
        #[arg(value_enum)]
        which: MapsWhich,
        /// Read pins from this directory instead of /sys/fs/bpf/p2p/<instance>.
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// The daemon's peers: Kademlia's routing table, overlay endpoints, liveness.
    Peers {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Store and fetch records in the Kademlia DHT.
    #[command(subcommand)]
    Dht(DhtCommand),
    /// Publish and subscribe (gossipsub).
    #[command(subcommand)]
    Pubsub(PubsubCommand),
    /// Durable objects: erasure-coded across the nodes closest to them,
    /// verified on every read, repaired when holders die (README "Storage").
    #[command(subcommand)]
    Store(StoreCommand),
    /// Ask the running daemon for its state.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Look a key up through the overlay datapath: prints value, answering node, hops and RTT.
    ///
    /// The LOOKUP is routed hop by hop by the datapaths (XDP) to the node
    /// XOR-closest to SHA-256(KEY), which answers from its record store.
    /// With no reply within --timeout-ms, or a "not found", it falls back to
    /// Kademlia's iterative get and says which path answered.
    Lookup {
        key: String,
        /// Wait this long for the overlay reply, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Overlay only: no Kademlia fallback.
        #[arg(long)]
        no_fallback: bool,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Send DATA to a node through the overlay, encrypted end to end.
    ///
    /// DEST is a peer ID or a node ID (64 hex digits; then this node must
    /// know that node, to learn its identity). The data is encrypted end to
    /// end (ChaCha20-Poly1305, keys agreed with DEST over libp2p): transit
    /// nodes see only ciphertext, and DEST's `recv` shows who sent it.
    #[command(verbatim_doc_comment)]
    Send {
        #[arg(value_name = "DEST")]
        node_id: String,
        data: String,
        /// Send the data as is: readable and forgeable on the way.
        #[arg(long)]
        plaintext: bool,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print DATA delivered to this node as it arrives: the sender (its
    /// peer ID when the data came encrypted end to end: authenticated) and
    /// the data. --json: one object per line.
    Recv {
        /// Stop after this many.
        #[arg(long)]
        count: Option<u64>,
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
    /// Block a node ID (64 hex digits), an address or a prefix (10.1.2.0/24,
    /// fd00::/64): its packets are dropped in XDP (drop_blocked), its
    /// connections closed and refused.
    Block {
        target: String,
        /// How long (90s, 10m, 2h, 1d); default: until `unblock`.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Why (shown by `reputation` and the daemon's log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Lift a block (an operator's or a reputation ban).
    Unblock {
        target: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Reputation scores, their evidence, and the bans in force with their reasons and remaining time.
    Reputation {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Rate budgets (docs/WIRE.md step 4): show them, or change them at run time.
    Rate {
        #[command(subcommand)]
        action: Option<RateCommand>,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, global = true)]
        json: bool,
    },
    /// The network's certificate authority: root key, membership certificates, revocations.
    ///
    /// Files and encodings: docs/TRUST.md. A network is made once with
    /// `ca init`, whose root.pub is the trust anchor every node is given;
    /// `ca sign` issues a member's certificate, `ca revoke` takes one back.
    ///
    /// Nodes check them with `run --trust-anchor ROOT.pub --cert FILE`.
    ///
    /// Example:
    ///   p2p-controller ca init --out /var/lib/p2p-nos/ca
    ///   p2p-controller ca sign "$(p2p-controller id --json | jq -r .peer_id)" --out node.cert
    ///   p2p-controller ca show node.cert --anchor /var/lib/p2p-nos/ca/root.pub
    ///   p2p-controller ca revoke 1
    #[command(subcommand, verbatim_doc_comment)]
    Ca(CaCommand),
    /// Configuration files for `run --config FILE` (TOML: every `run`
    /// option, keyed by its long name; the command line overrides the file).
    ///
    /// Examples:
    ///   p2p-controller config example > /etc/p2p-nos/node.toml
    ///   p2p-controller config check /etc/p2p-nos/node.toml
    ///   p2p-controller run --config /etc/p2p-nos/node.toml --iface eth1
    #[command(subcommand, verbatim_doc_comment)]
    Config(ConfigCommand),
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
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Check a file as `run --config FILE` would (keys, values, the files
    /// it names), without running anything; errors name the line.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// `run` options given beside the file (they override it), as a
        /// unit or a DaemonSet would: `config check node.toml --iface eth0`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "RUN_OPTION")]
        run_options: Vec<String>,
    },
    /// Print a file with every `run` option at its default, commented out,
    /// with its help (deploy/p2p-nos.toml).
    Example,
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Make a network root key pair and its CA directory.
    ///
    /// Writes DIR/root.key (private, mode 0600; keep it offline),
    /// DIR/root.pub (the trust anchor every node is given), issued.jsonl and
    /// an empty signed revocation list. Refuses to overwrite a CA.
    Init {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Issue a membership certificate for PEER_ID.
    ///
    /// `p2p-controller id` prints a node's peer ID. The certificate is
    /// printed, or written to --out; it is valid from 5 minutes before now
    /// (clock skew) for --valid. Serials count up from 1 (issued.jsonl).
    Sign {
        peer_id: String,
        /// How long it is valid (30d, 12h, 90m).
        #[arg(long, default_value = "30d", value_name = "DURATION")]
        valid: String,
        /// The peer's class (a-z, 0-9, -, _; at most 32), e.g. mobile.
        #[arg(long, default_value = "default")]
        class: String,
        #[command(flatten)]
        ca: CaDirArg,
        /// Write the certificate here (replacing it) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Show a root key, certificate or revocation list.
    ///
    /// With --anchor, also judge a certificate as a node would (signature,
    /// issuer, validity window, --revocations) and exit 1 if it would be
    /// refused.
    Show {
        file: PathBuf,
        /// The trust anchor (root.pub) to check a certificate against.
        #[arg(long, value_name = "ROOT_PUB")]
        anchor: Option<PathBuf>,
        /// A revocation list to check the certificate's serial against.
        #[arg(long, value_name = "FILE", requires = "anchor")]
        revocations: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a certificate by its serial.
    ///
    /// The serials are in issued.jsonl. The CA's revocation list is signed
    /// again with the serial in it, and every other unexpired serial issued
    /// to the same peer (its renewals), its sequence number one higher;
    /// revoking a revoked serial changes nothing.
    Revoke {
        serial: u64,
        #[command(flatten)]
        ca: CaDirArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct CaDirArg {
    /// The CA directory (made by `ca init --out DIR`).
    #[arg(long = "ca", value_name = "DIR", env = "P2P_CA_DIR", default_value = crate::paths::CA_DIR)]
    pub dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum DhtCommand {
    /// Store KEY = VALUE on the nodes closest to SHA-256(KEY) (and here).
    Put {
        key: String,
        value: String,
        /// Copies that must be confirmed [default: the daemon's --quorum]
        #[arg(long)]
        quorum: Option<usize>,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Fetch KEY with Kademlia's iterative get.
    Get {
        key: String,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Ignore this node's own store: only a copy fetched from the network counts.
        #[arg(long)]
        network: bool,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Store FILE (`-`: standard input); prints its CID. The object is cut
    /// into 1 MiB segments, each erasure-coded into shards on distinct
    /// nodes closest to it.
    Put {
        /// The file, or `-` for standard input.
        file: PathBuf,
        /// `rs:K+M` (K data + M parity shards a segment: any K rebuild it)
        /// or `replicate:N` (N whole copies).
        #[arg(long, default_value = "rs:4+2")]
        redundancy: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Fetch an object by CID, byte-identical (verified segment by segment
    /// and whole), to FILE or standard output.
    Get {
        cid: String,
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
        /// With -o: a JSON summary {"cid","size","segments","output"} on standard output.
        #[arg(long, requires = "output")]
        json: bool,
    },
    /// Per segment: its shards, their holders and whether they are live.
    Status {
        cid: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Objects whose manifest this node holds.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove an object (its owner only): manifest and shards, wherever reachable.
    Rm {
        cid: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RateCommand {
    /// Set a class's budget (`nonpeer`: every source that is not a peer),
    /// e.g. `rate set mobile 2000pps,2MB/s` or `rate set default unlimited`.
    Set { class: String, rate: String },
    /// Put a peer in a class (`default` to take it out of one).
    Assign { node_id: String, class: String },
}

#[derive(Subcommand, Debug)]
pub enum PubsubCommand {
    /// Publish MESSAGE on TOPIC.
    Publish {
        topic: String,
        message: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print the messages of TOPIC as they arrive, one per line (or one JSON
    /// object per line with --json), until interrupted.
    Subscribe {
        topic: String,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Daemon socket [default: /run/p2p-nos/<instance>.sock]
    #[arg(long, global = true)]
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
    /// Log level of the daemon: error, warn, info, debug or trace (RUST_LOG,
    /// when set, decides instead). Reloaded on SIGHUP.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,
    /// Read options from this TOML file (keys: these options' long names,
    /// e.g. `store-quota = "2GiB"`, `bootstrap = ["/ip4/…"]`); options on
    /// the command line override it. See `config example`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Enter this network namespace first (setns on /run/netns/NAME; mounts untouched, so pins stay visible).
    #[arg(long)]
    pub netns: Option<String>,
    /// Interface to attach XDP to (repeatable).
    #[arg(long = "iface")]
    pub ifaces: Vec<String>,
    /// Overlay UDP port (1-65535).
    #[arg(long, default_value_t = p2p_common::wire::DEFAULT_OVERLAY_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
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
    /// The network's root key (root.pub of `ca init`): only peers with a
    /// valid certificate under it are admitted to Kademlia, gossipsub and
    /// the maps (docs/TRUST.md). Needs --cert.
    #[arg(long, value_name = "ROOT_PUB", requires = "cert")]
    pub trust_anchor: Option<PathBuf>,
    /// This node's certificate (`ca sign`), shown to every peer.
    #[arg(long, value_name = "FILE", requires = "trust_anchor")]
    pub cert: Option<PathBuf>,
    /// A revocation list (the CA's `revocations` file). Re-read when it
    /// changes; a newer list is applied and spread to every member.
    #[arg(long, value_name = "FILE", requires = "trust_anchor")]
    pub revocations: Option<PathBuf>,
    /// Sign other members' certificate renewals with this CA directory
    /// (`ca init --out DIR`; its root must be the --trust-anchor). Members
    /// renew at 2/3 of their certificate's life from any such node.
    #[arg(long, value_name = "DIR", requires = "trust_anchor")]
    pub ca_key: Option<PathBuf>,
    /// Hop-by-hop authentication of overlay packets (docs/WIRE.md v2):
    /// `required` drops every untagged packet (LOOKUP_REPLY excepted) and
    /// routes only to peers with link keys; `optional` tags where a link
    /// has keys and verifies tags where present; `off` makes no link keys
    /// and sends version-1 packets. [default: required with
    /// --trust-anchor, else optional]
    #[arg(long, value_enum, value_name = "POLICY")]
    pub auth: Option<crate::userspace::AuthPolicy>,
    /// How often neighbours renew their link keys (1s to 2m; the previous
    /// key stays valid until the next renewal).
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub link_rotate: String,
    /// Most bytes of other nodes' shards this node stores (in the state
    /// directory's `store/`); a shard over it is refused with the figures
    /// and placed elsewhere.
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    pub store_quota: String,
    /// A segment that `store get` on this node reads this many times within
    /// a minute is cached here whole (in the quota, at most a quarter of
    /// it) and later reads are served from the cache; 0 turns caching off.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub store_hot_reads: u32,
    /// A cached segment not read for this long is dropped.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub store_cache_cool: String,
    /// Control socket [default: /run/p2p-nos/<instance>.sock]
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Serve Prometheus/OpenMetrics metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9475): datapath counters, peers, detection latency, map
    /// sync, bans, link keys, storage, and libp2p's own. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Repeatable. An IP address sets the overlay socket's bind address
    /// (default ::, both families); a multiaddr (/ip4/0.0.0.0/tcp/N,
    /// /ip6/::/udp/N/quic-v1, …) is a libp2p listen address, replacing the
    /// defaults of --p2p-port.
    #[arg(long, value_name = "IP|MULTIADDR")]
    pub listen: Vec<String>,
    /// libp2p port: TCP and QUIC on all addresses, IPv4 and IPv6.
    #[arg(long, default_value_t = crate::net::DEFAULT_P2P_PORT)]
    pub p2p_port: u16,
    /// Join the network through this node (repeatable), e.g.
    /// /ip4/192.0.2.1/tcp/9471 or …/p2p/12D3Koo…; retried with back-off until one answers.
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Do not discover peers on the LAN with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Kademlia protocol name; nodes only peer with nodes that speak the same.
    #[arg(long, default_value = crate::net::DEFAULT_KAD_PROTOCOL)]
    pub kad_protocol: String,
    /// Copies of each DHT record (the closest nodes store it).
    #[arg(long, default_value_t = 3)]
    pub replication: usize,
    /// Copies `dht put` waits for before it reports success.
    #[arg(long, default_value_t = 1)]
    pub quorum: usize,
    /// Kademlia's k: peers per bucket. Small values make lookups cross
    /// transit nodes even on small testbeds.
    #[arg(long, default_value_t = 20)]
    pub kbucket_size: usize,
    /// Record lifetime in seconds [default: libp2p's, 48 h].
    #[arg(long)]
    pub record_ttl: Option<u64>,
    /// Republish own records every this many seconds [default: libp2p's, 22 h].
    #[arg(long)]
    pub republish_interval: Option<u64>,
    /// Seconds between automatic Kademlia re-bootstraps.
    #[arg(long, default_value_t = 300)]
    pub bootstrap_interval: u64,
    /// Peer slots the kernel maps are made with (PEERS, RATE, LAST_SEEN,
    /// NEXT_HOPS, ROUTE_TRIE). The default fits a k = 20 Kademlia table in a
    /// 10^7-node network twice over; `status` shows the kernel memory taken.
    #[arg(long, default_value_t = p2p_common::maps::DEFAULT_MAX_PEERS,
          value_parser = clap::value_parser!(u32).range(1..=p2p_common::maps::MAX_PEERS_LIMIT as i64))]
    pub max_peers: u32,
    /// Sources that are not peers whose rate budgets and evidence are
    /// tracked at once (least recently seen forgotten first).
    #[arg(long, default_value_t = p2p_common::maps::DEFAULT_MAX_SOURCES,
          value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub max_sources: u32,
    /// Rate budget of each peer in the "default" class (docs/WIRE.md step
    /// 4): `unlimited`, or packets and/or bytes per second, e.g.
    /// `200000pps,200MB/s`.
    #[arg(long, value_name = "RATE", default_value = "200000pps,200MB/s")]
    pub rate_default: String,
    /// Rate budget of each source that is not a peer (per source IP).
    #[arg(long, value_name = "RATE", default_value = "20000pps,20MB/s")]
    pub rate_nonpeer: String,
    /// A peer class and its rate budget, e.g. `mobile=2000pps,2MB/s` or
    /// `high-capacity=unlimited` (repeatable; `p2p-controller rate assign`
    /// puts peers in a class at run time).
    #[arg(long, value_name = "NAME=RATE")]
    pub rate_class: Vec<String>,
    /// Bursts allowed above a budget, as this long a share of it.
    #[arg(long, value_name = "DURATION", default_value = "50ms")]
    pub rate_burst: String,
    /// Churn detector: a peer silent this long is PINGed.
    #[arg(long, value_name = "DURATION", default_value = "100ms")]
    pub probe_interval: String,
    /// Churn detector: a PING unanswered this long (at least 4× the
    /// peer's RTT) makes it ask up to 3 other peers to PING it.
    #[arg(long, value_name = "DURATION", default_value = "100ms")]
    pub probe_timeout: String,
    /// Churn detector: no helper reached it within this: suspect.
    #[arg(long, value_name = "DURATION", default_value = "150ms")]
    pub indirect_timeout: String,
    /// Churn detector: suspect and silent this long: dead.
    #[arg(long, value_name = "DURATION", default_value = "200ms")]
    pub suspicion: String,
    /// A peer found dead by the churn detector this many times within
    /// --flap-window flaps: once it proves alive again it waits a back-off
    /// (5 s, doubling per further death, up to 5 min) before it is routed
    /// to. Others come back at once.
    #[arg(long, default_value_t = crate::net::peers::FLAP_DEATHS as u16, value_parser = clap::value_parser!(u16).range(1..))]
    pub flap_deaths: u16,
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub flap_window: String,
    /// Reputation: a node ID or address whose score falls below this is
    /// banned (evidence lowers scores; see the README's weights).
    #[arg(long, default_value_t = -100.0, allow_negative_numbers = true)]
    pub ban_threshold: f64,
    /// Reputation: scores decay back towards 0 with this half-life.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub score_half_life: String,
    /// Reputation: the first ban lasts this long, each further one twice as long…
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub ban_base: String,
    /// …up to this.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub ban_max: String,
    /// Node IDs accepted from one /24 (IPv4) or /64 (IPv6); the excess is refused.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_per_prefix: u32,
    /// Banned addresses in one /24 or /64 that get the whole prefix banned.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub prefix_ban_after: u32,
    /// Addresses to advertise (repeatable): a subset of this node's own, or
    /// a public address in front of NAT (advertised with the ports listened
    /// on here; forward them) [default: the addresses of the --iface
    /// interfaces, or all but loopback].
    #[arg(long, value_name = "IP")]
    pub advertise: Vec<std::net::IpAddr>,
}
