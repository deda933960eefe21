//! Maps and packet helpers of the benchmark programs (`bench_main.rs`).

pub mod maps;
pub mod pkt;
