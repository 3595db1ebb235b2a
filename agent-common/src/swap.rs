//! The swap event: one successful rename or symlink call whose destination's last
//! path component is `..data` or `..data_tmp`.

/// Bytes kept of each path, NUL included. Kubelet paths of the default root are
/// about 360 bytes at most (253-byte volume names); longer ones are truncated by
/// the kernel read and then fail the name filter, so inotify alone reports them.
pub const PATH_LEN: usize = 512;
/// `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// Destination names the kernel filter lets through.
pub const DATA_NAME: &[u8] = b"..data";
pub const DATA_TMP_NAME: &[u8] = b"..data_tmp";

/// `AT_FDCWD` as the kernel passes it.
pub const AT_FDCWD: i32 = -100;

/// Which syscall produced an event. `u32` on the wire (no Rust enums across the boundary).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Rename = 0,
    Renameat = 1,
    Renameat2 = 2,
    Symlink = 3,
    Symlinkat = 4,
}

impl Syscall {
    pub const ALL: [Syscall; 5] = [
        Syscall::Rename,
        Syscall::Renameat,
        Syscall::Renameat2,
        Syscall::Symlink,
        Syscall::Symlinkat,
    ];

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    /// The syscall's name, as in the `syscalls:sys_enter_<name>` tracepoint.
    pub fn name(self) -> &'static str {
        match self {
            Syscall::Rename => "rename",
            Syscall::Renameat => "renameat",
            Syscall::Renameat2 => "renameat2",
            Syscall::Symlink => "symlink",
            Syscall::Symlinkat => "symlinkat",
        }
    }

    pub fn is_rename(self) -> bool {
        matches!(
            self,
            Syscall::Rename | Syscall::Renameat | Syscall::Renameat2
        )
    }
}

/// Kernel layout of the event. For renames `old_path` is the source and `new_path`
/// the destination; for symlinks `old_path` is the link's target and `new_path`
/// the link itself. Paths are NUL-terminated as read from user memory, relative to
/// `old_dfd` / `new_dfd` when those are not `AT_FDCWD`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SwapEvent {
    /// `bpf_ktime_get_boot_ns()` at the syscall's entry.
    pub ts_boot_ns: u64,
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    pub tgid: u32,
    pub pid: u32,
    /// [`Syscall`] as `u32`.
    pub syscall: u32,
    pub old_dfd: i32,
    pub new_dfd: i32,
    /// `renameat2` flags, 0 for the others.
    pub flags: u32,
    pub comm: [u8; COMM_LEN],
    pub old_path: [u8; PATH_LEN],
    pub new_path: [u8; PATH_LEN],
}

/// True when `path[..len]`'s last component is exactly `name`. Written with
/// masked indexes and a bounded loop so the BPF verifier accepts it.
#[inline(always)]
pub fn last_component_is(path: &[u8; PATH_LEN], len: usize, name: &[u8]) -> bool {
    const MASK: usize = PATH_LEN - 1;
    let n = name.len();
    if len < n || len >= PATH_LEN {
        return false;
    }
    let start = len - n;
    if start > 0 && path[(start - 1) & MASK] != b'/' {
        return false;
    }
    let mut i = 0;
    while i < n {
        if path[(start + i) & MASK] != name[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::{DecodeError, DecodedSwap};
