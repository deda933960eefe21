//! A BPF array created with `BPF_F_MMAPABLE`, mapped into this process:
//! writing a routing generation becomes plain stores (the maps file says
//! why). Elements sit at `mmap_stride(size_of::<V>())` bytes apart.

use std::io;
use std::marker::PhantomData;

use p2p_common::maps::mmap_stride;

pub struct MappedArray<V> {
    ptr: *mut u8,
    len: usize,
    entries: u32,
    _v: PhantomData<V>,
}

// SAFETY: the mapping is owned by this value and only written through
// `&mut self`; the kernel side is synchronised by the generation flip (the
// routing maps) or only ever stores whole values (LAST_SEEN).
unsafe impl<V: Send> Send for MappedArray<V> {}

impl<V: Copy> MappedArray<V> {
    const STRIDE: usize = mmap_stride(std::mem::size_of::<V>());

    /// Maps the array behind `fd` (of `entries` elements) read-write.
    pub fn new(fd: i32, entries: u32) -> io::Result<MappedArray<V>> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries as usize * Self::STRIDE).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of a BPF map fd; checked below.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedArray { ptr: ptr.cast(), len, entries, _v: PhantomData })
    }

    /// The value at `index` (`None` out of range), as the kernel side last
    /// stored it.
    pub fn get(&self, index: u32) -> Option<V> {
        // SAFETY: as in `set`.
        (index < self.entries)
            .then(|| unsafe { self.ptr.add(index as usize * Self::STRIDE).cast::<V>().read_volatile() })
    }

    /// Stores `value` at `index` (ignored out of range).
    pub fn set(&mut self, index: u32, value: V) {
        if index < self.entries {
            // SAFETY: in bounds of the mapping; the stride keeps every
            // element 8-byte aligned, enough for V's alignment (≤ 8).
            unsafe { self.ptr.add(index as usize * Self::STRIDE).cast::<V>().write_volatile(value) }
        }
    }
}

impl<V> Drop for MappedArray<V> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
