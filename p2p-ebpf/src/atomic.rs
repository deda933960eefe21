//! Atomic adds on map memory shared by every CPU. The BPF target has no
//! read-modify-write in `core::sync::atomic` (its spec says `atomic-cas:
//! false`), and rustc links for `--cpu generic`, where LLVM has the atomic
//! add (BPF_ATOMIC | BPF_ADD, "XADD") but neither its fetching form nor
//! compare-and-swap (those need `-mcpu=v3`, which rustc cannot be told
//! through aya-build). So the kernel side adds with the compiler intrinsic
//! and never uses its result; the host build (clippy) uses `AtomicU64`.

#[cfg(target_arch = "bpf")]
mod imp {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};

    /// `*p += v`, atomically; the old value is not returned (XADD).
    #[inline(always)]
    pub fn add(p: *mut u64, v: u64) {
        // SAFETY: the caller passes a valid, aligned map value field.
        unsafe {
            atomic_xadd::<u64, u64, { Relaxed }>(p, v);
        }
    }
}

#[cfg(not(target_arch = "bpf"))]
mod imp {
    use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

    pub fn add(p: *mut u64, v: u64) {
        // SAFETY: the caller passes a valid, aligned map value field.
        unsafe { AtomicU64::from_ptr(p) }.fetch_add(v, Relaxed);
    }
}

pub use imp::add;

/// A plain load of a value other CPUs change: an aligned 64-bit BPF load is
/// one instruction.
#[inline(always)]
pub fn load(p: *mut u64) -> u64 {
    // SAFETY: the caller passes a valid, aligned map value field.
    unsafe { core::ptr::read_volatile(p) }
}

/// A plain store (see [`load`]).
#[inline(always)]
pub fn store(p: *mut u64, v: u64) {
    // SAFETY: as in `load`.
    unsafe { core::ptr::write_volatile(p, v) }
}
