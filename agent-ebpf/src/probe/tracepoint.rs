//! The tracepoint variant: `syscalls:sys_enter_*` / `sys_exit_*`. Any syscall
//! tracepoint puts every task on the syscall slow path (docs/design.md 7).

use agent_common::{swap::Syscall, watch_call::WatchCall};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use super::{Args, swap, watch_call};

/// Argument `i` of a `sys_enter_*` record: each 8 bytes, after the common header and
/// `__syscall_nr`.
#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: offsets from the tracepoints' format; a short record reads as 0.
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
}

/// All five arguments.
#[inline(always)]
fn args(ctx: &TracePointContext) -> Args {
    let mut a = [0u64; 5];
    let mut i = 0;
    while i < 5 {
        a[i] = arg(ctx, i);
        i += 1;
    }
    a
}

/// `ret` of a `sys_exit_*` record.
#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: offset from the tracepoints' format.
    unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1)
}

#[tracepoint]
pub fn sys_enter_rename(ctx: TracePointContext) -> u32 {
    swap::enter(&ctx, |i| arg(&ctx, i), swap::Layout::of(Syscall::Rename))
}

#[tracepoint]
pub fn sys_enter_renameat(ctx: TracePointContext) -> u32 {
    swap::enter(&ctx, |i| arg(&ctx, i), swap::Layout::of(Syscall::Renameat))
}

#[tracepoint]
pub fn sys_enter_renameat2(ctx: TracePointContext) -> u32 {
    swap::enter(&ctx, |i| arg(&ctx, i), swap::Layout::of(Syscall::Renameat2))
}

#[tracepoint]
pub fn sys_enter_symlink(ctx: TracePointContext) -> u32 {
    swap::enter(&ctx, |i| arg(&ctx, i), swap::Layout::of(Syscall::Symlink))
}

#[tracepoint]
pub fn sys_enter_symlinkat(ctx: TracePointContext) -> u32 {
    swap::enter(&ctx, |i| arg(&ctx, i), swap::Layout::of(Syscall::Symlinkat))
}

/// One exit program serves all five `sys_exit_*` tracepoints: their records share
/// the layout, and the parked entry says which call it was.
#[tracepoint]
pub fn sys_exit_swap(ctx: TracePointContext) -> u32 {
    swap::exit(&ctx, ret(&ctx))
}

#[tracepoint]
pub fn sys_enter_inotify_add_watch(ctx: TracePointContext) -> u32 {
    watch_call::enter(&args(&ctx), WatchCall::Add)
}

#[tracepoint]
pub fn sys_enter_inotify_rm_watch(ctx: TracePointContext) -> u32 {
    watch_call::enter(&args(&ctx), WatchCall::Remove)
}

/// Both watch calls' exits.
#[tracepoint]
pub fn sys_exit_watch(ctx: TracePointContext) -> u32 {
    watch_call::exit(&ctx, ret(&ctx))
}
