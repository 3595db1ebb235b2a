//! The swap probe: syscall tracepoints on the rename and symlink family, and on
//! `inotify_add_watch` / `inotify_rm_watch` for the watch linter.
//!
//! At entry each call's destination path is read and kept only when its last component
//! is `..data` or `..data_tmp` (the kubelet's AtomicWriter names, DOMAIN.md 1); the call
//! is parked per thread until its exit, and reaches user space only if it succeeded.
//! Everything else costs one user-memory string read and returns.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod probe {
    use agent_common::{
        stats,
        swap::{
            AT_FDCWD, COMM_LEN, DATA_NAME, DATA_TMP_NAME, SwapEvent, Syscall, last_component_is,
        },
        watch::{WatchCall, WatchEvent},
    };
    use aya_ebpf::{
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_user_str_bytes,
            generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
        },
        macros::{map, tracepoint},
        maps::{LruHashMap, PerCpuArray, RingBuf},
        programs::TracePointContext,
    };

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

    /// Counters, indexed by `agent_common::stats`.
    #[map]
    static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

    /// Offset of syscall argument `i` in a `sys_enter_*` record (after the common header
    /// and `__syscall_nr`), and of `ret` in a `sys_exit_*` record.
    const fn arg(i: usize) -> usize {
        16 + 8 * i
    }
    const RET: usize = 16;

    #[inline(always)]
    fn count(index: u32) {
        if let Some(p) = STATS.get_ptr_mut(index) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *p += 1 }
        }
    }

    /// Where a syscall keeps its arguments; `None` dfd means `AT_FDCWD`.
    struct Layout {
        syscall: Syscall,
        old: usize,
        old_dfd: Option<usize>,
        new: usize,
        new_dfd: Option<usize>,
        flags: Option<usize>,
    }

    #[inline(always)]
    fn read_dfd(ctx: &TracePointContext, at: Option<usize>) -> i32 {
        match at {
            // SAFETY: offsets come from the tracepoint's format.
            Some(off) => unsafe { ctx.read_at::<u64>(off) }.map_or(AT_FDCWD, |v| v as i32),
            None => AT_FDCWD,
        }
    }

    #[inline(always)]
    fn enter(ctx: &TracePointContext, l: Layout) -> u32 {
        let Some(ev) = SCRATCH.get_ptr_mut(0) else {
            return 0;
        };
        // SAFETY: the per-CPU scratch slot is ours until this program returns.
        let ev = unsafe { &mut *ev };
        let Ok(new_ptr) = (unsafe { ctx.read_at::<u64>(l.new) }) else {
            return 0;
        };
        let new_len = match unsafe {
            bpf_probe_read_user_str_bytes(new_ptr as *const u8, &mut ev.new_path)
        } {
            Ok(s) => s.len(),
            Err(_) => return 0,
        };
        if !last_component_is(&ev.new_path, new_len, DATA_NAME)
            && !last_component_is(&ev.new_path, new_len, DATA_TMP_NAME)
        {
            return 0;
        }
        count(stats::MATCHED);
        ev.old_path[0] = 0;
        if let Ok(old_ptr) = unsafe { ctx.read_at::<u64>(l.old) } {
            let _ =
                unsafe { bpf_probe_read_user_str_bytes(old_ptr as *const u8, &mut ev.old_path) };
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        ev.tgid = (pid_tgid >> 32) as u32;
        ev.pid = pid_tgid as u32;
        // SAFETY: helpers without arguments.
        ev.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
        ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        ev.syscall = l.syscall as u32;
        ev.old_dfd = read_dfd(ctx, l.old_dfd);
        ev.new_dfd = read_dfd(ctx, l.new_dfd);
        ev.flags = match l.flags {
            Some(off) => unsafe { ctx.read_at::<u64>(off) }.map_or(0, |v| v as u32),
            None => 0,
        };
        ev.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        if INFLIGHT.insert(&pid_tgid, ev, 0).is_err() {
            count(stats::INFLIGHT_FULL);
        }
        0
    }

    #[inline(always)]
    fn exit(ctx: &TracePointContext) -> u32 {
        let pid_tgid = bpf_get_current_pid_tgid();
        let Some(ev) = INFLIGHT.get_ptr(&pid_tgid) else {
            return 0;
        };
        let ret = unsafe { ctx.read_at::<i64>(RET) }.unwrap_or(-1);
        if ret == 0 {
            // SAFETY: the entry stays valid until removed below, by this thread only.
            match EVENTS.output(unsafe { &*ev }, 0) {
                Ok(()) => count(stats::EMITTED),
                Err(_) => count(stats::LOST),
            }
        } else {
            count(stats::FAILED);
        }
        let _ = INFLIGHT.remove(&pid_tgid);
        0
    }

    #[tracepoint]
    pub fn sys_enter_rename(ctx: TracePointContext) -> u32 {
        let l = Layout {
            syscall: Syscall::Rename,
            old: arg(0),
            old_dfd: None,
            new: arg(1),
            new_dfd: None,
            flags: None,
        };
        enter(&ctx, l)
    }

    #[tracepoint]
    pub fn sys_enter_renameat(ctx: TracePointContext) -> u32 {
        let l = Layout {
            syscall: Syscall::Renameat,
            old: arg(1),
            old_dfd: Some(arg(0)),
            new: arg(3),
            new_dfd: Some(arg(2)),
            flags: None,
        };
        enter(&ctx, l)
    }

    #[tracepoint]
    pub fn sys_enter_renameat2(ctx: TracePointContext) -> u32 {
        let l = Layout {
            syscall: Syscall::Renameat2,
            old: arg(1),
            old_dfd: Some(arg(0)),
            new: arg(3),
            new_dfd: Some(arg(2)),
            flags: Some(arg(4)),
        };
        enter(&ctx, l)
    }

    #[tracepoint]
    pub fn sys_enter_symlink(ctx: TracePointContext) -> u32 {
        let l = Layout {
            syscall: Syscall::Symlink,
            old: arg(0),
            old_dfd: None,
            new: arg(1),
            new_dfd: None,
            flags: None,
        };
        enter(&ctx, l)
    }

    #[tracepoint]
    pub fn sys_enter_symlinkat(ctx: TracePointContext) -> u32 {
        let l = Layout {
            syscall: Syscall::Symlinkat,
            old: arg(0),
            old_dfd: None,
            new: arg(2),
            new_dfd: Some(arg(1)),
            flags: None,
        };
        enter(&ctx, l)
    }

    /// One exit program serves all five `sys_exit_*` tracepoints: their records share
    /// the layout, and the parked entry says which call it was.
    #[tracepoint]
    pub fn sys_exit_swap(ctx: TracePointContext) -> u32 {
        exit(&ctx)
    }

    /// `inotify_add_watch` / `inotify_rm_watch` calls to user space (the watch linter):
    /// rare calls, so small.
    #[map]
    static WATCH_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

    #[map]
    static WATCH_INFLIGHT: LruHashMap<u64, WatchEvent> = LruHashMap::with_max_entries(1024, 0);

    #[map]
    static WATCH_SCRATCH: PerCpuArray<WatchEvent> = PerCpuArray::with_max_entries(1, 0);

    /// Parks a watch call until its exit. `path_at`: where an add's path is.
    #[inline(always)]
    fn watch_enter(ctx: &TracePointContext, call: WatchCall, path_at: Option<usize>) -> u32 {
        let Some(ev) = WATCH_SCRATCH.get_ptr_mut(0) else {
            return 0;
        };
        // SAFETY: the per-CPU scratch slot is ours until this program returns.
        let ev = unsafe { &mut *ev };
        let pid_tgid = bpf_get_current_pid_tgid();
        ev.tgid = (pid_tgid >> 32) as u32;
        ev.pid = pid_tgid as u32;
        // SAFETY: helpers without arguments; offsets from the tracepoints' formats.
        ev.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
        ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        ev.call = call as u32;
        ev.fd = unsafe { ctx.read_at::<u64>(arg(0)) }.map_or(-1, |v| v as i32);
        ev.path[0] = 0;
        (ev.wd, ev.mask) = (-1, 0);
        match path_at {
            Some(off) => {
                if let Ok(ptr) = unsafe { ctx.read_at::<u64>(off) } {
                    let _ =
                        unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, &mut ev.path) };
                }
                ev.mask = unsafe { ctx.read_at::<u64>(arg(2)) }.map_or(0, |v| v as u32);
            }
            None => ev.wd = unsafe { ctx.read_at::<u64>(arg(1)) }.map_or(-1, |v| v as i32),
        }
        ev.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        let _ = WATCH_INFLIGHT.insert(&pid_tgid, ev, 0);
        0
    }

    #[tracepoint]
    pub fn sys_enter_inotify_add_watch(ctx: TracePointContext) -> u32 {
        watch_enter(&ctx, WatchCall::Add, Some(arg(1)))
    }

    #[tracepoint]
    pub fn sys_enter_inotify_rm_watch(ctx: TracePointContext) -> u32 {
        watch_enter(&ctx, WatchCall::Remove, None)
    }

    /// Both exits: a successful call reaches user space, with the wd an add returned.
    #[tracepoint]
    pub fn sys_exit_watch(ctx: TracePointContext) -> u32 {
        let pid_tgid = bpf_get_current_pid_tgid();
        let Some(ev) = WATCH_INFLIGHT.get_ptr_mut(&pid_tgid) else {
            return 0;
        };
        let ret = unsafe { ctx.read_at::<i64>(RET) }.unwrap_or(-1);
        // SAFETY: the entry stays valid until removed below, by this thread only.
        let ev = unsafe { &mut *ev };
        if ret >= 0 {
            if ev.call == WatchCall::Add as u32 {
                ev.wd = ret as i32;
            }
            match WATCH_EVENTS.output(ev, 0) {
                Ok(()) => count(stats::WATCH_EMITTED),
                Err(_) => count(stats::WATCH_LOST),
            }
        }
        let _ = WATCH_INFLIGHT.remove(&pid_tgid);
        0
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The programs only exist for the bpf target; agent/build.rs builds them.
}
