//! `aead`: end-to-end DATA envelopes per core (issue 8): one thread seals
//! DATA payloads of several sizes through the product's session table
//! (`p2p_controller::e2e::Sessions`, as `send` does), and a second table
//! (the destination's) opens every one, replay check included. Checked
//! independently: every opened payload must equal what was sealed, and
//! the opened count must equal the sealed count.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use clap::Args;
use libp2p::PeerId;
use p2p_controller::e2e::{SessionKeys, Sessions};
use p2p_controller::identity::node_id_of;
use serde_json::json;

#[derive(Args, Debug, Clone)]
pub struct AeadArgs {
    /// Payload sizes (bytes), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 512, 1024, 1370])]
    pub sizes: Vec<usize>,
    /// Time per size and direction.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    #[arg(long)]
    pub json: bool,
}

pub fn aead_cmd(a: AeadArgs) -> Result<()> {
    let (alice, bob) = (PeerId::random(), PeerId::random());
    let mut rows = Vec::new();
    for &size in &a.sizes {
        // A fresh session per size: counters (and replay windows) start at 0.
        let (tx, rx) = (Sessions::default(), Sessions::default());
        let id = rand::random();
        tx.insert(SessionKeys { id, peer: bob, tx: [1; 32], rx: [2; 32] });
        rx.insert(SessionKeys { id, peer: alice, tx: [2; 32], rx: [1; 32] });
        let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let aad = [7u8; 74];
        let budget = Duration::from_secs_f64(a.seconds);
        let mut sealed = Vec::new();
        let t = Instant::now();
        while t.elapsed() < budget {
            for _ in 0..256 {
                sealed.push(tx.seal(&bob, &aad, &data).expect("a session"));
            }
        }
        let seal_s = t.elapsed().as_secs_f64();
        let from = node_id_of(&alice);
        let t = Instant::now();
        let mut opened = 0usize;
        for env in &sealed {
            let (d, who) = rx.open(&from, &aad, env).map_err(|e| anyhow::anyhow!("open: {e}"))?;
            ensure!(d == data && who == alice, "an envelope opened to something else");
            opened += 1;
        }
        let open_s = t.elapsed().as_secs_f64();
        ensure!(opened == sealed.len(), "{opened} opened of {} sealed", sealed.len());
        let n = sealed.len() as f64;
        rows.push(json!({
            "payload_bytes": size,
            "envelopes": sealed.len(),
            "seal_per_s": n / seal_s,
            "seal_mb_per_s": n * size as f64 / seal_s / 1e6,
            "open_per_s": n / open_s,
            "open_mb_per_s": n * size as f64 / open_s / 1e6,
        }));
    }
    let v = json!({"method": "one thread; Sessions::seal then Sessions::open of each (replay check), payloads compared", "rows": rows});
    if a.json {
        println!("{v}");
    } else {
        println!("end-to-end DATA envelopes (ChaCha20-Poly1305) on one core:");
        for r in &rows {
            println!(
                "  {:>5} B: seal {:>9.0}/s ({:>6.0} MB/s), open {:>9.0}/s ({:>6.0} MB/s), {} envelopes checked",
                r["payload_bytes"],
                r["seal_per_s"].as_f64().unwrap_or(0.0),
                r["seal_mb_per_s"].as_f64().unwrap_or(0.0),
                r["open_per_s"].as_f64().unwrap_or(0.0),
                r["open_mb_per_s"].as_f64().unwrap_or(0.0),
                r["envelopes"],
            );
        }
    }
    Ok(())
}
