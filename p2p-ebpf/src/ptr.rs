//! The one bounds-checked access to packet memory.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;

/// Pointer to a `T` at byte `off` of the frame, or `Err` when the frame is
/// shorter. `off` must be bounded (the verifier needs it).
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    let p = start + off;
    if p + size_of::<T>() > end {
        return Err(());
    }
    Ok(p as *const T)
}

/// Mutable variant of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, ()> {
    ptr_at::<T>(ctx, off).map(|p| p as *mut T)
}
