//! Batched map access (bpf(2) `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_LOOKUP_BATCH`,
//! Linux 5.6+), which aya 0.14 does not wrap: one syscall moves thousands of
//! array entries, where one per entry makes a routing update or a `maps`
//! read take a large part of a second.

use std::io;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(std::mem::size_of::<BatchAttr>() == 56);

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix whose
    // pointers cover `count` keys and values, alive for the call.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>() as u32) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Writes `values[i]` at array index `keys[i]` (`V` is the map's value type).
pub fn update<V: aya::Pod>(map_fd: i32, keys: &[u32], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map_fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)
}

/// Every entry of an array map of `max_entries` values of type `V`, by
/// index. `V` must be the map's value type (plain old data).
pub fn lookup_all<V: aya::Pod + Default>(map_fd: i32, max_entries: u32) -> io::Result<Vec<V>> {
    let mut out = vec![V::default(); max_entries as usize];
    lookup_batches::<u32, V>(map_fd, 8192, |k, v| {
        if let Some(slot) = out.get_mut(*k as usize) {
            *slot = *v;
        }
    })?;
    Ok(out)
}

/// Every entry of a hash map with keys `K` and values `V` (the map's
/// types, plain old data). Entries added or removed meanwhile may or may
/// not be seen.
pub fn lookup_hash<K: aya::Pod + Default, V: aya::Pod + Default>(map_fd: i32) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    lookup_batches::<K, V>(map_fd, 4096, |k, v| out.push((*k, *v)))?;
    Ok(out)
}

/// Walks a map `chunk` entries per syscall, calling `each` on every entry.
/// Arrays and hash tables alike use a u32 cursor (an index, a bucket).
fn lookup_batches<K: aya::Pod + Default, V: aya::Pod + Default>(
    map_fd: i32,
    chunk: usize,
    mut each: impl FnMut(&K, &V),
) -> io::Result<()> {
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    let mut next: u32 = 0;
    let mut first = true;
    loop {
        let start = next;
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &start as *const u32 as u64 },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map_fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        first = false;
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        for i in 0..attr.count as usize {
            each(&keys[i], &values[i]);
        }
        match r {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
