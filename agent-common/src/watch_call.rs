//! The watch event: one successful `inotify_add_watch` or `inotify_rm_watch` call, by
//! any process (they are rare: an application adds its watches at start and after
//! each update). User space keeps those of pod processes.

use crate::swap::{COMM_LEN, PATH_LEN};

/// Which call. `u32` on the wire.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchCall {
    Add = 0,
    Remove = 1,
}

impl WatchCall {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(WatchCall::Add),
            1 => Some(WatchCall::Remove),
            _ => None,
        }
    }
}

/// Kernel layout of the event. `path` (adds only) is NUL-terminated as read from user
/// memory, relative to the caller's cwd and root when not absolute.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WatchEvent {
    /// `bpf_ktime_get_boot_ns()` at the call's entry.
    pub ts_boot_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub pid: u32,
    /// [`WatchCall`] as `u32`.
    pub call: u32,
    /// The inotify fd.
    pub fd: i32,
    /// The watch: returned by an add, given to a remove.
    pub wd: i32,
    /// The mask asked for (adds), `IN_DONT_FOLLOW` and the other flags included.
    pub mask: u32,
    pub comm: [u8; COMM_LEN],
    pub path: [u8; PATH_LEN],
}

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::DecodedWatch;
