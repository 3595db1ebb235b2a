//! Maps, counters and the call logic shared by both variants: each variant only says
//! where a call's arguments and result are.

pub mod fentry;
pub mod swap;
pub mod tracepoint;
pub mod watch_call;

use agent_common::stats;
use aya_ebpf::{macros::map, maps::PerCpuArray};

/// Counters, indexed by `agent_common::stats`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 }
    }
}

/// The raw arguments of a syscall, as the variant found them.
pub type Args = [u64; 5];
