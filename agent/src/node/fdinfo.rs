//! The inotify watches a process holds, as the kernel lists them in
//! `/proc/<pid>/fdinfo/<fd>` for each inotify fd (fs/notify/fdinfo.c):
//! `inotify wd:3 ino:1a2b sdev:800001 mask:8000ffe ignored_mask:0 fhandle-bytes:8 ...`.
//! `ino` and `mask` are hex; `sdev` is the kernel's dev_t (`major << 20 | minor`).

use std::{
    io,
    path::{Path, PathBuf},
};

/// An inode as `st_dev` + `st_ino`.
pub type Ino = (u64, u64);

/// One inotify watch of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Watch {
    pub wd: i32,
    /// The watched inode, and its filesystem as `st_dev` gives it.
    pub ino: u64,
    pub dev: u64,
    /// The events asked for (`IN_*`), with `IN_ONESHOT` / `IN_EXCL_UNLINK` when set.
    /// `IN_DONT_FOLLOW` is not kept by the kernel: it shows in which inode is watched.
    pub mask: u32,
}

/// The watches in one fdinfo file; lines that are not inotify watches are skipped.
pub fn parse(content: &str) -> Vec<Watch> {
    content.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Watch> {
    let rest = line.strip_prefix("inotify ")?;
    let field = |name: &str| {
        rest.split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| u64::from_str_radix(v, 16).ok())
    };
    let sdev = field("sdev")?;
    Some(Watch {
        wd: i32::try_from(field("wd")?).ok()?,
        ino: field("ino")?,
        // dev_t as user space sees it (glibc's makedev) from the kernel's encoding.
        dev: libc::makedev((sdev >> 20) as u32, (sdev & 0xfffff) as u32),
        mask: u32::try_from(field("mask")?).ok()?,
    })
}

/// Every inotify watch `pid` holds, over all its inotify fds; the target of each of
/// its other fds goes to `other` (a path, never opened). A process that is gone or
/// unreadable gives an error; an fd closed meanwhile is skipped.
pub fn of_process(
    proc_root: &Path,
    pid: u32,
    mut other: impl FnMut(PathBuf),
) -> io::Result<Vec<Watch>> {
    let dir = proc_root.join(pid.to_string());
    let mut watches = Vec::new();
    for fd in std::fs::read_dir(dir.join("fd"))? {
        let fd = fd?;
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if target.as_os_str() != "anon_inode:inotify" {
            other(target);
            continue;
        }
        if let Ok(info) = std::fs::read_to_string(dir.join("fdinfo").join(fd.file_name())) {
            watches.extend(parse(&info));
        }
    }
    Ok(watches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_lines() {
        let info = "pos:\t0\nflags:\t02004000\nmnt_id:\t15\nino:\t1057\n\
            inotify wd:2 ino:1a2b sdev:800001 mask:400 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2b1a000000000000\n\
            inotify wd:1 ino:ff sdev:2a mask:8000fff ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:ff00000000000000\n";
        assert_eq!(
            parse(info),
            [
                Watch {
                    wd: 2,
                    ino: 0x1a2b,
                    dev: libc::makedev(8, 1),
                    mask: 0x400
                },
                Watch {
                    wd: 1,
                    ino: 0xff,
                    dev: libc::makedev(0, 0x2a),
                    mask: 0x0800_0fff
                },
            ]
        );
        assert!(
            parse("inotify wd:x ino:1 sdev:1 mask:1\nfanotify ino:1 sdev:1 mask:1\n").is_empty()
        );
    }

    #[test]
    fn reads_its_own_watches() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let wd = unsafe {
            libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MOVED_TO | libc::IN_DELETE_SELF)
        };
        assert!(wd >= 0);
        let meta = std::fs::metadata(dir.path()).unwrap();
        let held = dir.path().join("held");
        let file = std::fs::File::create(&held).unwrap();
        let mut others = Vec::new();
        let mine = of_process(Path::new("/proc"), std::process::id(), |t| others.push(t)).unwrap();
        unsafe { libc::close(fd) };
        drop(file);
        assert!(others.contains(&held), "{others:?}");
        assert!(!others.iter().any(|t| t.as_os_str() == "anon_inode:inotify"));
        let w = mine
            .iter()
            .find(|w| w.ino == meta.ino() && w.dev == meta.dev())
            .expect("the watch");
        assert_eq!(w.mask, libc::IN_MOVED_TO | libc::IN_DELETE_SELF);
        assert!(of_process(Path::new("/proc"), u32::MAX, drop).is_err());
    }
}
