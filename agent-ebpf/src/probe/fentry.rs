//! The fentry/fexit variant, on the syscalls' own functions: `__x64_sys_<name>(const
//! struct pt_regs *regs)` exists, with that signature, on every x86_64 kernel since
//! 4.17, so one program fits 5.10 to 6.18 with no kernel struct but `pt_regs`, whose
//! layout is the x86_64 ABI. Its cost falls on the hooked calls only. Each program is
//! bound to its function at load time, hence one per syscall and side. Other
//! architectures use the tracepoint variant.

use agent_common::{swap::Syscall, watch::WatchCall};
use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use super::{Args, swap, watch};

/// Offsets in x86_64 `struct pt_regs` of the syscall argument registers, in argument
/// order: di, si, dx, r10, r8.
const REGS: [usize; 5] = [112, 104, 96, 56, 72];

/// Argument `i` of the syscall, from its `pt_regs` (the functions' only argument, at
/// entry and at exit alike: the handler returns before `regs->ax` is set). A plain
/// load, not a helper call: the verifier types `regs` from the function's BTF as a
/// `struct pt_regs` pointer and checks the offset against its fields.
#[inline(always)]
fn arg(regs: *const u8, i: usize) -> u64 {
    let offset = match i {
        0 => REGS[0],
        1 => REGS[1],
        2 => REGS[2],
        3 => REGS[3],
        _ => REGS[4],
    };
    // SAFETY: `regs` is the syscall's pt_regs, valid for the whole call, and `offset`
    // one of its register fields; the kernel turns the load into a checked one.
    unsafe { core::ptr::read_volatile(regs.add(offset).cast::<u64>()) }
}

/// All five arguments.
#[inline(always)]
fn args(regs: *const u8) -> Args {
    let mut a = [0u64; 5];
    let mut i = 0;
    while i < 5 {
        a[i] = arg(regs, i);
        i += 1;
    }
    a
}

/// The return value: fexit's arguments are the function's, then what it returned.
#[inline(always)]
fn ret(ctx: &FExitContext) -> i64 {
    ctx.arg(1)
}

/// The swap calls: fexit alone, which sees the arguments and the result, so a call
/// costs one program and no map operation (measured: `cargo xtask bench overhead`).
macro_rules! swap_call {
    ($exit:ident, $function:literal, $syscall:expr) => {
        #[fexit(function = $function)]
        pub fn $exit(ctx: FExitContext) -> u32 {
            let regs: *const u8 = ctx.arg(0);
            swap::complete(|i| arg(regs, i), swap::Layout::of($syscall), ret(&ctx))
        }
    };
}

swap_call!(fexit_rename, "__x64_sys_rename", Syscall::Rename);
swap_call!(fexit_renameat, "__x64_sys_renameat", Syscall::Renameat);
swap_call!(fexit_renameat2, "__x64_sys_renameat2", Syscall::Renameat2);
swap_call!(fexit_symlink, "__x64_sys_symlink", Syscall::Symlink);
swap_call!(fexit_symlinkat, "__x64_sys_symlinkat", Syscall::Symlinkat);

#[fentry(function = "__x64_sys_inotify_add_watch")]
pub fn fentry_inotify_add_watch(ctx: FEntryContext) -> u32 {
    watch::enter(&args(ctx.arg(0)), WatchCall::Add)
}

#[fexit(function = "__x64_sys_inotify_add_watch")]
pub fn fexit_inotify_add_watch(ctx: FExitContext) -> u32 {
    watch::exit(ret(&ctx))
}

#[fentry(function = "__x64_sys_inotify_rm_watch")]
pub fn fentry_inotify_rm_watch(ctx: FEntryContext) -> u32 {
    watch::enter(&args(ctx.arg(0)), WatchCall::Remove)
}

#[fexit(function = "__x64_sys_inotify_rm_watch")]
pub fn fexit_inotify_rm_watch(ctx: FExitContext) -> u32 {
    watch::exit(ret(&ctx))
}

/// No work at all, on the call `cargo xtask bench overhead`'s rename loop makes: what
/// hooking a call costs before any program runs (the kernel's trampoline), the floor
/// under the swap programs' cost. The agent never loads it.
#[fexit(function = "__x64_sys_renameat")]
pub fn floor_renameat(_ctx: FExitContext) -> u32 {
    0
}
