//! The fentry/fexit variant, on the syscalls' own functions: `__x64_sys_<name>(const
//! struct pt_regs *regs)` exists, with that signature, on every x86_64 kernel since
//! 4.17, so one program fits 5.10 to 6.18 with no kernel struct but `pt_regs`, whose
//! layout is the x86_64 ABI. Its cost falls on the hooked calls only. Each program is
//! bound to its function at load time, hence one per syscall and side. Other
//! architectures use the tracepoint variant.
//!
//! Renames, the only hooked calls a node makes often, are cheaper to filter at
//! `vfs_rename` (`fexit_vfs_rename`): where the loader finds its offsets in the
//! kernel's BTF (5.12 and newer) and the kernel takes the program (5.15 and newer,
//! for `bpf_task_pt_regs`), it replaces the three rename syscall programs.

use agent_common::{
    swap::{DATA_NAME, DATA_TMP_NAME, Syscall},
    watch_call::WatchCall,
};
use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use super::{Args, swap, watch_call};

/// Offsets in x86_64 `struct pt_regs` of the syscall argument registers, in argument
/// order: di, si, dx, r10, r8.
const REGS: [usize; 5] = [112, 104, 96, 56, 72];

/// The offset of argument `i`'s register, with constant indexes for the verifier.
#[inline(always)]
fn reg(i: usize) -> usize {
    match i {
        0 => REGS[0],
        1 => REGS[1],
        2 => REGS[2],
        3 => REGS[3],
        _ => REGS[4],
    }
}

/// Argument `i` of the syscall, from its `pt_regs` (the functions' only argument, at
/// entry and at exit alike: the handler returns before `regs->ax` is set). A plain
/// load, not a helper call: the verifier types `regs` from the function's BTF as a
/// `struct pt_regs` pointer and checks the offset against its fields.
#[inline(always)]
fn arg(regs: *const u8, i: usize) -> u64 {
    let offset = reg(i);
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
            swap::complete(
                &ctx,
                |i| arg(regs, i),
                swap::Layout::of($syscall),
                ret(&ctx),
            )
        }
    };
}

// Where the loader finds `vfs_rename` taking a `struct renamedata *` (5.12 and newer),
// the three rename syscalls are hooked there instead: `fexit_vfs_rename` below.
swap_call!(fexit_rename, "__x64_sys_rename", Syscall::Rename);
swap_call!(fexit_renameat, "__x64_sys_renameat", Syscall::Renameat);
swap_call!(fexit_renameat2, "__x64_sys_renameat2", Syscall::Renameat2);
swap_call!(fexit_symlink, "__x64_sys_symlink", Syscall::Symlink);
swap_call!(fexit_symlinkat, "__x64_sys_symlinkat", Syscall::Symlinkat);

/// Offsets in `struct renamedata` and `struct dentry`, read from the kernel's BTF by
/// the loader (`probe::kbtf`): of `new_dentry`, and of `d_name.len` and `d_name.name`.
#[unsafe(no_mangle)]
static RENAME_NEW_DENTRY: u64 = 0;
#[unsafe(no_mangle)]
static DENTRY_NAME_LEN: u64 = 0;
#[unsafe(no_mangle)]
static DENTRY_NAME_PTR: u64 = 0;

/// x86_64 syscall numbers, as `pt_regs->orig_ax` holds them.
const NR_RENAME: u64 = 82;
const NR_RENAMEAT: u64 = 264;
const NR_RENAMEAT2: u64 = 316;
/// Offset of `orig_ax` in x86_64 `struct pt_regs`.
const ORIG_AX: usize = 120;

/// The rename syscalls, at `vfs_rename(struct renamedata *)`: the destination's name
/// is in kernel memory there (`new_dentry->d_name`), so an unrelated rename costs two
/// kernel reads and a length compare, and no read of user memory. A rename whose
/// last component is `..data` or `..data_tmp` is then reported from the syscall's
/// own arguments (its `pt_regs`), like the syscall hooks do, with `vfs_rename`'s
/// result. A call that fails before `vfs_rename` (a lookup, `RENAME_NOREPLACE` over
/// an existing name) is not seen, and renames not made by these syscalls (io_uring,
/// nfsd, overlayfs copy-up) are skipped.
#[fexit(function = "vfs_rename")]
pub fn fexit_vfs_rename(ctx: FExitContext) -> u32 {
    let rd: *const u8 = ctx.arg(0);
    // `int` result: the low 32 bits of the slot.
    let ret = ctx.arg::<u64>(1) as i32 as i64;
    // SAFETY: constants the loader sets; volatile so they are not folded to 0.
    let (at_dentry, at_len, at_name) = unsafe {
        (
            core::ptr::read_volatile(&RENAME_NEW_DENTRY) as usize,
            core::ptr::read_volatile(&DENTRY_NAME_LEN) as usize,
            core::ptr::read_volatile(&DENTRY_NAME_PTR) as usize,
        )
    };
    if at_dentry == 0 {
        return 0;
    }
    // SAFETY: kernel reads with the checked helper, at offsets from the BTF.
    let Ok(dentry) = (unsafe { bpf_probe_read_kernel(rd.add(at_dentry).cast::<u64>()) }) else {
        return 0;
    };
    let dentry = dentry as *const u8;
    let Ok(len) = (unsafe { bpf_probe_read_kernel(dentry.add(at_len).cast::<u32>()) }) else {
        return 0;
    };
    let want = match len as usize {
        n if n == DATA_NAME.len() => DATA_NAME,
        n if n == DATA_TMP_NAME.len() => DATA_TMP_NAME,
        _ => return 0,
    };
    let Ok(name) = (unsafe { bpf_probe_read_kernel(dentry.add(at_name).cast::<u64>()) }) else {
        return 0;
    };
    let mut buf = [0u8; 10];
    let got = &mut buf[..want.len()];
    if unsafe { bpf_probe_read_kernel_buf(name as *const u8, got) }.is_err() || got != want {
        return 0;
    }
    // SAFETY: helpers on the current task; its pt_regs are the syscall's.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    let nr = unsafe { bpf_probe_read_kernel(regs.add(ORIG_AX).cast::<u64>()) }.unwrap_or(0);
    let syscall = match nr {
        NR_RENAME => Syscall::Rename,
        NR_RENAMEAT => Syscall::Renameat,
        NR_RENAMEAT2 => Syscall::Renameat2,
        _ => return 0,
    };
    swap::complete(&ctx, |i| read_arg(regs, i), swap::Layout::of(syscall), ret)
}

/// Argument `i` from a `pt_regs` the verifier does not type (a helper's result).
#[inline(always)]
fn read_arg(regs: *const u8, i: usize) -> u64 {
    let offset = reg(i);
    // SAFETY: the task's pt_regs, read with the kernel-read helper.
    unsafe { bpf_probe_read_kernel(regs.add(offset).cast::<u64>()) }.unwrap_or(0)
}

#[fentry(function = "__x64_sys_inotify_add_watch")]
pub fn fentry_inotify_add_watch(ctx: FEntryContext) -> u32 {
    watch_call::enter(&args(ctx.arg(0)), WatchCall::Add)
}

#[fexit(function = "__x64_sys_inotify_add_watch")]
pub fn fexit_inotify_add_watch(ctx: FExitContext) -> u32 {
    watch_call::exit(&ctx, ret(&ctx))
}

#[fentry(function = "__x64_sys_inotify_rm_watch")]
pub fn fentry_inotify_rm_watch(ctx: FEntryContext) -> u32 {
    watch_call::enter(&args(ctx.arg(0)), WatchCall::Remove)
}

#[fexit(function = "__x64_sys_inotify_rm_watch")]
pub fn fexit_inotify_rm_watch(ctx: FExitContext) -> u32 {
    watch_call::exit(&ctx, ret(&ctx))
}

/// No work at all, on the call `cargo xtask bench overhead`'s rename loop makes: what
/// hooking a call costs before any program runs (the kernel's trampoline), the floor
/// under the swap programs' cost. The agent never loads it.
#[fexit(function = "__x64_sys_renameat")]
pub fn floor_renameat(_ctx: FExitContext) -> u32 {
    0
}

/// The same, on `vfs_rename`, where the swap probe hooks renames on 5.12 and newer.
#[fexit(function = "vfs_rename")]
pub fn floor_vfs_rename(_ctx: FExitContext) -> u32 {
    0
}
