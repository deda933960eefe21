//! `erasure`: erasure-coding throughput per core (issue 9), the product's
//! `p2p_controller::storage::erasure` (split, pad, encode; decode with m
//! data shards missing, then truncate) against reed-solomon-simd called
//! directly on the same shards, side by side in one run. Checked
//! independently: every decode must give back the segment, byte for byte.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use clap::Args;
use p2p_controller::storage::erasure::{self, Redundancy};
use serde_json::json;

#[derive(Args, Debug, Clone)]
pub struct ErasureArgs {
    /// Layouts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = ["rs:4+2".to_string(), "rs:16+8".to_string()])]
    pub layouts: Vec<String>,
    /// Segment bytes (the product's segment is 1 MiB).
    #[arg(long, default_value_t = 1 << 20)]
    pub segment: usize,
    /// Time per measurement.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    #[arg(long)]
    pub json: bool,
}

/// Segment bytes per second of `f`, run for about `secs`.
fn rate(bytes: usize, secs: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget || n < 3 {
        f()?;
        n += 1;
    }
    Ok(n as f64 * bytes as f64 / start.elapsed().as_secs_f64())
}

pub fn erasure_cmd(a: ErasureArgs) -> Result<()> {
    let seg: Vec<u8> = (0..a.segment).map(|i| (i * 7 + i / 251) as u8).collect();
    let gib = (1u64 << 30) as f64;
    let mut rows = Vec::new();
    for layout in &a.layouts {
        let r: Redundancy = layout.parse().map_err(anyhow::Error::msg)?;
        let Redundancy::Rs { k, m } = r else { anyhow::bail!("{layout}: only rs:K+M layouts are erasure-coded") };
        let shards = erasure::encode(r, &seg).map_err(anyhow::Error::msg)?;
        // The first m data shards missing: decode must rebuild them.
        let partial: Vec<Option<Vec<u8>>> =
            shards.iter().enumerate().map(|(i, s)| (i >= m.min(k)).then(|| s.clone())).collect();
        let ours_enc = rate(a.segment, a.seconds, || {
            std::hint::black_box(erasure::encode(r, &seg).map_err(anyhow::Error::msg)?);
            Ok(())
        })?;
        let ours_dec = rate(a.segment, a.seconds, || {
            let out = erasure::decode(r, seg.len(), &partial).map_err(anyhow::Error::msg)?;
            ensure!(out == seg, "{layout}: decode gave other bytes");
            Ok(())
        })?;
        let data = &shards[..k];
        let lib_enc = rate(a.segment, a.seconds, || {
            std::hint::black_box(reed_solomon_simd::encode(k, m, data)?);
            Ok(())
        })?;
        let lib_dec = rate(a.segment, a.seconds, || {
            let originals = (m.min(k)..k).map(|i| (i, &shards[i]));
            let recovery = (0..m).map(|i| (i, &shards[k + i]));
            let restored = reed_solomon_simd::decode(k, m, originals, recovery)?;
            ensure!(restored.len() == m.min(k), "{layout}: the library restored {} shards", restored.len());
            Ok(())
        })?;
        let row = json!({
            "layout": layout, "segment_bytes": a.segment,
            "ours_encode_gib_s": ours_enc / gib, "library_encode_gib_s": lib_enc / gib,
            "ours_decode_gib_s": ours_dec / gib, "library_decode_gib_s": lib_dec / gib,
            "encode_overhead": 1.0 - ours_enc / lib_enc, "decode_overhead": 1.0 - ours_dec / lib_dec,
        });
        if !a.json {
            println!(
                "{layout:>8} {} KiB segments: encode {:.2} GiB/s (library {:.2}, overhead {:+.1}%), decode with {m} data shards missing {:.2} GiB/s (library {:.2}, overhead {:+.1}%)",
                a.segment >> 10,
                ours_enc / gib,
                lib_enc / gib,
                (1.0 - ours_enc / lib_enc) * 100.0,
                ours_dec / gib,
                lib_dec / gib,
                (1.0 - ours_dec / lib_dec) * 100.0,
            );
        }
        rows.push(row);
    }
    if a.json {
        println!("{}", json!({ "erasure": rows }));
    }
    Ok(())
}
