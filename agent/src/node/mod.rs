//! The node's own formats, read the way the kubelet, the runtime and the kernel write
//! them: volume paths ([`volumes`]), container cgroups ([`cgroup`]), mount tables
//! ([`mountinfo`]), inotify watches in fdinfo ([`fdinfo`]), pod and container log names
//! ([`pod_logs`]), a process's parent and start ([`stat`]), and a volume's `..data` symlink ([`read_target`]). The bottom layer:
//! everything else reads the node through it, and it imports nothing of the agent's.

use std::{os::unix::ffi::OsStrExt as _, path::Path};

pub mod cgroup;
pub mod fdinfo;
pub mod mountinfo;
pub mod pod_logs;
pub mod stat;
pub mod volumes;

/// The last component of a symlink's target, as the timestamped dir name.
pub fn read_target(link: &Path) -> Option<String> {
    let t = std::fs::read_link(link).ok()?;
    let name = t.file_name()?;
    std::str::from_utf8(name.as_bytes()).ok().map(str::to_owned)
}
