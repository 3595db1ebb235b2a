//! The rename and symlink family: filter at entry, park, report successes at exit
//! (tracepoints); or filter and report at exit, with the call's arguments (fexit).

use agent_common::{
    stats,
    swap::{AT_FDCWD, COMM_LEN, DATA_NAME, DATA_TMP_NAME, SwapEvent, Syscall, last_component_is},
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
use aya_log_ebpf::{debug, warn};

use super::count;

/// Events to user space. Its size can be changed by the loader.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Calls that passed the filter, parked from entry to exit, by pid_tgid.
/// LRU so a thread killed inside the syscall cannot leak an entry forever.
#[map]
static INFLIGHT: LruHashMap<u64, SwapEvent> = LruHashMap::with_max_entries(4096, 0);

/// The event is larger than the 512-byte BPF stack: it is built here.
#[map]
static SCRATCH: PerCpuArray<SwapEvent> = PerCpuArray::with_max_entries(1, 0);

/// Which argument is which; `None` dfd means `AT_FDCWD`.
pub struct Layout {
    pub syscall: Syscall,
    pub old: usize,
    pub old_dfd: Option<usize>,
    pub new: usize,
    pub new_dfd: Option<usize>,
    pub flags: Option<usize>,
}

impl Layout {
    pub const fn of(syscall: Syscall) -> Layout {
        let (old, old_dfd, new, new_dfd, flags) = match syscall {
            Syscall::Rename => (0, None, 1, None, None),
            Syscall::Renameat => (1, Some(0), 3, Some(2), None),
            Syscall::Renameat2 => (1, Some(0), 3, Some(2), Some(4)),
            Syscall::Symlink => (0, None, 1, None, None),
            Syscall::Symlinkat => (0, None, 2, Some(1), None),
        };
        Layout {
            syscall,
            old,
            old_dfd,
            new,
            new_dfd,
            flags,
        }
    }
}

/// The call's event, built in the per-CPU scratch slot, when its new path ends in
/// `..data` or `..data_tmp` (counted as matched); None for every other call.
/// `arg(i)` reads argument `i` (the layouts' constant indexes): the new path's first,
/// the others only for a call that matched.
#[inline(always)]
fn matched(
    ctx: &impl EbpfContext,
    arg: impl Fn(usize) -> u64,
    l: Layout,
) -> Option<&'static mut SwapEvent> {
    let ev = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch slot is ours until this program returns.
    let ev = unsafe { &mut *ev };
    let new_ptr = arg(l.new);
    let new_len =
        match unsafe { bpf_probe_read_user_str_bytes(new_ptr as *const u8, &mut ev.new_path) } {
            Ok(s) => s.len(),
            Err(e) => {
                debug!(
                    ctx,
                    "syscall {}: new path unreadable ({})", l.syscall as u32, e
                );
                return None;
            }
        };
    if !last_component_is(&ev.new_path, new_len, DATA_NAME)
        && !last_component_is(&ev.new_path, new_len, DATA_TMP_NAME)
    {
        return None;
    }
    count(stats::MATCHED);
    ev.old_path[0] = 0;
    let old_ptr = arg(l.old);
    let _ = unsafe { bpf_probe_read_user_str_bytes(old_ptr as *const u8, &mut ev.old_path) };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.pid = pid_tgid as u32;
    // SAFETY: helpers without arguments.
    ev.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.syscall = l.syscall as u32;
    let dfd = |at: Option<usize>| at.map_or(AT_FDCWD, |i| arg(i) as i32);
    ev.old_dfd = dfd(l.old_dfd);
    ev.new_dfd = dfd(l.new_dfd);
    ev.flags = l.flags.map_or(0, |i| arg(i) as u32);
    ev.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    Some(ev)
}

/// At a call's entry (tracepoints): parks a matching call until its exit.
#[inline(always)]
pub fn enter(ctx: &impl EbpfContext, arg: impl Fn(usize) -> u64, l: Layout) -> u32 {
    let syscall = l.syscall as u32;
    let Some(ev) = matched(ctx, arg, l) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    if INFLIGHT.insert(&pid_tgid, ev, 0).is_err() {
        count(stats::INFLIGHT_FULL);
        warn!(
            ctx,
            "syscall {}: in-flight map full, the call is not followed", syscall
        );
    }
    0
}

/// At a call's exit, with its arguments and result (fexit): one program, no parking.
/// The paths are read after the call, from the same user memory; the stamp is the
/// call's end rather than its start.
#[inline(always)]
pub fn complete(ctx: &impl EbpfContext, arg: impl Fn(usize) -> u64, l: Layout, ret: i64) -> u32 {
    let Some(ev) = matched(ctx, arg, l) else {
        return 0;
    };
    report(ctx, ev, ret);
    0
}

/// Sends a matched call's event if the call succeeded; counts it either way.
#[inline(always)]
fn report(ctx: &impl EbpfContext, ev: &SwapEvent, ret: i64) {
    if ret == 0 {
        match EVENTS.output(ev, 0) {
            Ok(()) => count(stats::EMITTED),
            Err(_) => {
                count(stats::LOST);
                warn!(ctx, "swap event lost: the ring buffer is full");
            }
        }
    } else {
        count(stats::FAILED);
    }
}

#[inline(always)]
pub fn exit(ctx: &impl EbpfContext, ret: i64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(ev) = INFLIGHT.get_ptr(&pid_tgid) else {
        return 0;
    };
    // SAFETY: the entry stays valid until removed below, by this thread only.
    report(ctx, unsafe { &*ev }, ret);
    let _ = INFLIGHT.remove(&pid_tgid);
    0
}
