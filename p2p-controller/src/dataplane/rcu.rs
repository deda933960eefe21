//! An RCU grace period on demand. Every XDP program runs inside an RCU
//! read-side section, and the kernel makes a `BPF_MAP_UPDATE_ELEM` on an
//! array-of-maps return only after a grace period (`synchronize_rcu` in
//! `maybe_wait_bpf_programs`), so that userspace knows no program still
//! uses the inner map it replaced. Updating such a map, made for nothing
//! else, is therefore a barrier: when [`RcuBarrier::wait`] returns, every
//! packet that was being processed when it was called has finished. Map
//! sync calls it after each routing-generation flip, instead of sleeping
//! and hoping packets were done. (The kernel's own BPF selftests use the
//! same trick to wait for a grace period.)

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// `union bpf_attr`'s map-create prefix.
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

/// `union bpf_attr`'s element-update member.
#[repr(C)]
struct UpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: attr is a valid bpf_attr prefix for `cmd`, alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn create(attr: &mut CreateAttr) -> io::Result<OwnedFd> {
    let fd = bpf(BPF_MAP_CREATE, attr)?;
    // SAFETY: a fresh fd the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    pub fn new() -> io::Result<RcuBarrier> {
        let inner = create(&mut CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..Default::default()
        })?;
        let outer = create(&mut CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: inner.as_raw_fd() as u32,
            ..Default::default()
        })?;
        Ok(RcuBarrier { outer, inner })
    }

    /// Returns after an RCU grace period.
    pub fn wait(&self) -> io::Result<()> {
        let key = 0u32;
        let value = self.inner.as_raw_fd() as u32;
        let mut attr = UpdateAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}
