//! Pacing inside the generator program. One BPF_PROG_RUN call with live
//! frames costs ~20-30 ms beyond its frames on kernel 6.18 (the call's page
//! pool is torn down with an RCU grace period), so pacing by calls from
//! userspace sends 20-30 ms worth of frames at once, and those bursts
//! overflow the queues on the way (2,048 frames in the cpumap). Instead
//! the program itself waits until each frame is due (spinning on the
//! clock, bounded), and userspace makes long calls.

use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::{BENCH_PACE, PACE_INTERVAL, PACE_NEXT, PACE_PAUSES, PACE_SENT};

/// At most this many clock reads per run (~25 ns each): a run that is
/// still early after them is dropped uncounted (rates below ~10 kpps).
const SPIN: u32 = 4096;
/// After a pause (preemption, the gap between calls) the schedule catches
/// up by at most this many frames, then restarts from now: bursts stay well
/// inside a veth's 256-frame ring, and frames the pause cost are not sent
/// (the offered count says so).
const CATCH_UP_FRAMES: u64 = 32;

/// True if this run's frame is due and is to be sent (and counts it).
#[inline(always)]
pub fn due() -> bool {
    let Some(p) = BENCH_PACE.get_ptr_mut(0) else { return false };
    // SAFETY: entry 0 of an array map; only the generator's CPU runs this.
    let st = unsafe { &mut *p };
    let interval = st[PACE_INTERVAL];
    if interval != 0 {
        let next = st[PACE_NEXT];
        // SAFETY: helper without preconditions.
        let mut now = unsafe { bpf_ktime_get_ns() };
        let mut i = 0;
        while now < next && i < SPIN {
            // SAFETY: as above.
            now = unsafe { bpf_ktime_get_ns() };
            i += 1;
        }
        if now < next {
            return false;
        }
        let from = if now - next > CATCH_UP_FRAMES * interval {
            st[PACE_PAUSES] += 1;
            now
        } else {
            next
        };
        st[PACE_NEXT] = from + interval;
    }
    st[PACE_SENT] += 1;
    true
}
