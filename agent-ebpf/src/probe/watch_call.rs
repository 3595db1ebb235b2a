//! `inotify_add_watch(fd, path, mask)` and `inotify_rm_watch(fd, wd)`: every successful
//! call reaches user space (they are rare), which keeps those of pod processes.

use agent_common::{
    stats,
    swap::COMM_LEN,
    watch_call::{WatchCall, WatchEvent},
};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_user_str_bytes,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use aya_log_ebpf::warn;

use super::{Args, count};

/// Watch calls to user space: rare calls, so small.
#[map]
static WATCH_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

#[map]
static WATCH_INFLIGHT: LruHashMap<u64, WatchEvent> = LruHashMap::with_max_entries(1024, 0);

#[map]
static WATCH_SCRATCH: PerCpuArray<WatchEvent> = PerCpuArray::with_max_entries(1, 0);

/// Parks a watch call until its exit.
#[inline(always)]
pub fn enter(args: &Args, call: WatchCall) -> u32 {
    let Some(ev) = WATCH_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU scratch slot is ours until this program returns.
    let ev = unsafe { &mut *ev };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.pid = pid_tgid as u32;
    // SAFETY: helpers without arguments.
    ev.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.call = call as u32;
    ev.fd = args[0] as i32;
    ev.path[0] = 0;
    (ev.wd, ev.mask) = (-1, 0);
    match call {
        WatchCall::Add => {
            let _ = unsafe { bpf_probe_read_user_str_bytes(args[1] as *const u8, &mut ev.path) };
            ev.mask = args[2] as u32;
        }
        WatchCall::Remove => ev.wd = args[1] as i32,
    }
    ev.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    let _ = WATCH_INFLIGHT.insert(&pid_tgid, ev, 0);
    0
}

/// A successful call reaches user space, with the wd an add returned.
#[inline(always)]
pub fn exit(ctx: &impl EbpfContext, ret: i64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(ev) = WATCH_INFLIGHT.get_ptr_mut(&pid_tgid) else {
        return 0;
    };
    // SAFETY: the entry stays valid until removed below, by this thread only.
    let ev = unsafe { &mut *ev };
    if ret >= 0 {
        if ev.call == WatchCall::Add as u32 {
            ev.wd = ret as i32;
        }
        match WATCH_EVENTS.output(ev, 0) {
            Ok(()) => count(stats::WATCH_EMITTED),
            Err(_) => {
                count(stats::WATCH_LOST);
                warn!(ctx, "watch call lost: the ring buffer is full");
            }
        }
    }
    let _ = WATCH_INFLIGHT.remove(&pid_tgid);
    0
}
