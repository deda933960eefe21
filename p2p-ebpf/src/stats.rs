//! STATS accounting: one counter per packet, at the index of the step that ended it.

use crate::maps::STATS;

#[inline(always)]
pub fn count(index: u32, bytes: u64) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, valid for the program's run; nothing else on
        // this CPU touches it meanwhile.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// What the datapath does with a packet and under which counter.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: u32,
    pub counter: u32,
}

impl Verdict {
    #[inline(always)]
    pub const fn new(action: u32, counter: u32) -> Self {
        Verdict { action, counter }
    }

    /// As one scalar, for returning from BPF subprograms.
    #[inline(always)]
    pub const fn pack(self) -> u32 {
        self.action | (self.counter << 16)
    }

    #[inline(always)]
    pub const fn unpack(v: u32) -> Self {
        Verdict { action: v & 0xffff, counter: v >> 16 }
    }
}
