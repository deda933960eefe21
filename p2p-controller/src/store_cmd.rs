//! `store put|get|status|ls|rm`: the CLI side of storage. Objects travel
//! to and from the daemon one segment per control request, four requests
//! at a time, so neither side holds more than a few segments of them;
//! progress bars on a terminal.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::api::{self, Request};
use crate::blobs::Cid;
use crate::cli::StoreCommand;
use crate::control;
use crate::error::{Error, Result};
use crate::storage::SEGMENT_SIZE;

/// Segments `get` asks the daemon for at once.
const GET_WINDOW: u64 = 4;
/// Segments `put` sends at once (the daemon places them concurrently).
const PUT_WINDOW: usize = 4;

fn bar(len: Option<u64>, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let style =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let b = match len {
        Some(n) => indicatif::ProgressBar::new(n).with_style(style),
        None => indicatif::ProgressBar::new_spinner(),
    };
    b.set_message(what.to_string());
    b
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

pub fn run(cmd: StoreCommand, instance: &str, socket: impl Fn(&crate::cli::ClientArgs) -> PathBuf) -> Result<()> {
    match cmd {
        StoreCommand::Put { file, redundancy, client, json } => {
            let path = socket(&client);
            redundancy.parse::<crate::storage::erasure::Redundancy>().map_err(Error::Usage)?;
            let (mut input, len): (Box<dyn Read>, Option<u64>) = if file == Path::new("-") {
                (Box::new(std::io::stdin().lock()), None)
            } else {
                let f = std::fs::File::open(&file)
                    .map_err(|e| Error::File { path: file.clone(), reason: format!("cannot read: {e}") })?;
                let len = f.metadata().ok().map(|m| m.len());
                (Box::new(f), len)
            };
            let up: api::StoreUpload = control::call(&path, instance, &Request::StorePutBegin { redundancy })?;
            let pb = bar(len, "put");
            let mut bufs = vec![vec![0u8; SEGMENT_SIZE]; PUT_WINDOW];
            let mut index = 0u64;
            let mut ended = false;
            while !ended {
                // Up to PUT_WINDOW segments read, then sent at once.
                let mut batch: Vec<(u64, &[u8])> = Vec::new();
                for buf in bufs.iter_mut() {
                    let n = fill(&mut input, buf)
                        .map_err(|e| Error::File { path: file.clone(), reason: format!("read: {e}") })?;
                    if n > 0 {
                        batch.push((index, &buf[..n]));
                        index += 1;
                    }
                    if n < SEGMENT_SIZE {
                        ended = true;
                        break;
                    }
                }
                let sent: Vec<Result<()>> = std::thread::scope(|s| {
                    let handles: Vec<_> = batch
                        .iter()
                        .map(|&(i, data)| {
                            let (path, upload) = (&path, up.upload);
                            s.spawn(move || -> Result<()> {
                                let req = Request::StorePutSegment { upload, index: Some(i), data: B64.encode(data) };
                                let _: serde_json::Value = control::call(path, instance, &req)?;
                                Ok(())
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|_| Err(Error::Remote("a segment sender panicked".into()))))
                        .collect()
                });
                for r in sent {
                    r?;
                }
                pb.inc(batch.iter().map(|(_, d)| d.len() as u64).sum());
            }
            pb.finish_and_clear();
            let v: api::StorePut = control::call(&path, instance, &Request::StorePutEnd { upload: up.upload })?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{}\n  {} bytes, {} segment(s), {}: {} shards on {} node(s); manifest on {}",
                    v.cid,
                    v.size,
                    v.segments,
                    v.redundancy,
                    v.shards,
                    v.holders,
                    v.manifest_holders.len()
                );
            }
            Ok(())
        }
        StoreCommand::Get { cid, output, client, json } => {
            let path = socket(&client);
            let want: Cid = cid.parse().map_err(Error::Usage)?;
            let info: api::StoreInfo = control::call(&path, instance, &Request::StoreInfo { cid: cid.clone() })?;
            // To a file: written beside it and renamed once verified, so a
            // failed get never leaves wrong or partial data under its name.
            let tmp = output.as_ref().map(|o| {
                let mut t = o.clone().into_os_string();
                t.push(".part");
                PathBuf::from(t)
            });
            let mut out: Box<dyn Write> = match &tmp {
                Some(t) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(t)
                        .map_err(|e| Error::File { path: t.clone(), reason: format!("cannot create: {e}") })?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            let pb = bar(Some(info.size), "get");
            let mut hasher = blake3::Hasher::new();
            let result = (|| -> Result<()> {
                // GET_WINDOW segments asked for at once (the daemon rebuilds
                // them in parallel), written in order.
                let fetch = |index: u64| -> Result<Vec<u8>> {
                    let s: api::StoreSegmentData =
                        control::call(&path, instance, &Request::StoreGetSegment { cid: cid.clone(), index })?;
                    B64.decode(s.data).map_err(|e| Error::Remote(format!("segment {index}: {e}")))
                };
                let mut next = 0;
                while next < info.segments {
                    let batch: Vec<u64> = (next..info.segments.min(next + GET_WINDOW)).collect();
                    next += batch.len() as u64;
                    let got: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
                        let handles: Vec<_> = batch.iter().map(|&i| s.spawn(move || fetch(i))).collect();
                        handles
                            .into_iter()
                            .map(|h| {
                                h.join().unwrap_or_else(|_| Err(Error::Remote("a segment reader panicked".into())))
                            })
                            .collect()
                    });
                    for data in got {
                        let data = data?;
                        hasher.update(&data);
                        out.write_all(&data).map_err(|e| Error::Remote(format!("write: {e}")))?;
                        pb.inc(data.len() as u64);
                    }
                }
                out.flush().map_err(|e| Error::Remote(format!("write: {e}")))?;
                if Cid(*hasher.finalize().as_bytes()) != want {
                    return Err(Error::Remote(format!("the rebuilt object does not hash to {cid}")));
                }
                Ok(())
            })();
            pb.finish_and_clear();
            drop(out);
            match (result, tmp, output) {
                (Ok(()), Some(t), Some(o)) => {
                    std::fs::rename(&t, &o).map_err(|e| Error::File { path: o.clone(), reason: e.to_string() })?;
                    if json {
                        let v =
                            serde_json::json!({"cid": cid, "size": info.size, "segments": info.segments, "output": o});
                        println!("{v}");
                    } else {
                        eprintln!("{cid}: {} bytes to {}", info.size, o.display());
                    }
                    Ok(())
                }
                (Ok(()), _, _) => Ok(()),
                (Err(e), t, _) => {
                    if let Some(t) = t {
                        let _ = std::fs::remove_file(t);
                    }
                    Err(e)
                }
            }
        }
        StoreCommand::Status { cid, client, json } => {
            let v: api::StoreStatus = control::call(&socket(&client), instance, &Request::StoreStatus { cid })?;
            if json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "{} {} bytes {} owner {} revision {}: {}",
                v.cid, v.size, v.redundancy, v.owner, v.revision, v.health
            );
            println!("  manifest on {}", v.manifest_holders.join(", "));
            for s in &v.segments {
                let bad: Vec<String> = s.shards.iter().filter(|x| !x.healthy).map(|x| x.index.to_string()).collect();
                let note = if bad.is_empty() { String::new() } else { format!("  missing: {}", bad.join(",")) };
                println!("  segment {:>4} {:>8} bytes  {}/{} shards live{note}", s.index, s.size, s.healthy, s.total);
            }
            Ok(())
        }
        StoreCommand::Ls { client, json } => {
            let v: api::StoreLs = control::call(&socket(&client), instance, &Request::StoreLs)?;
            if json {
                print_json(&v);
            } else if v.objects.is_empty() {
                println!("no objects' manifests on this node");
            } else {
                for o in &v.objects {
                    let mine = if o.mine { "  (put here)" } else { "" };
                    println!("{} {:>12} bytes {:>5} segments {}{mine}", o.cid, o.size, o.segments, o.redundancy);
                }
            }
            Ok(())
        }
        StoreCommand::Rm { cid, client, json } => {
            let v: api::StoreRm = control::call(&socket(&client), instance, &Request::StoreRm { cid })?;
            if json {
                print_json(&v);
            } else {
                println!("{} removed from {} node(s)", v.cid, v.removed_from);
                if !v.unreachable.is_empty() {
                    println!("  unreachable, still holding copies: {}", v.unreachable.join(", "));
                }
            }
            Ok(())
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}
