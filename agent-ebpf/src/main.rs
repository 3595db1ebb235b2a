//! The swap probe: the rename and symlink family, and `inotify_add_watch` /
//! `inotify_rm_watch` for the watch linter, in two variants the loader chooses from:
//! syscall tracepoints (any kernel with tracefs) or fentry/fexit on the syscalls' own
//! functions (`__x64_sys_*`, kernels with BTF and BPF trampolines), whose cost falls on
//! the hooked calls only.
//!
//! At entry each call's destination path is read and kept only when its last component
//! is `..data` or `..data_tmp` (the kubelet's AtomicWriter names, docs/design.md 1);
//! the call is parked per thread until its exit, and reaches user space only if it
//! succeeded. Everything else costs one user-memory string read and returns.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod probe;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The programs only exist for the bpf target; agent/build.rs builds them.
}
