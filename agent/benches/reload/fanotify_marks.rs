//! The fanotify marks this process holds, from `/proc/self/fdinfo`: how many of each
//! kind, and which inode each inode mark is on.

use std::{fs, path::Path};

use crate::common::machine::own_fds;

/// The marks of every fanotify group this process holds, by kind, from
/// `/proc/self/fdinfo` (fs/notify/fdinfo.c prints one line per mark).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    pub groups: usize,
    /// `fanotify ino:...`: inode (directory) marks.
    pub inode: usize,
    /// `fanotify mnt_id:...`: mount marks.
    pub mount: usize,
    /// `fanotify sdev:...`: filesystem marks.
    pub filesystem: usize,
    /// Marks of any kind whose `ignored_mask:` is not zero (the agent places none).
    pub ignored: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkKind {
    Inode,
    Mount,
    Filesystem,
}

/// One mark line of a fanotify group's fdinfo, as this kernel prints it (hex fields):
/// `fanotify ino:9ae0a3 sdev:fe00000 mflags:440 mask:8000020 ignored_mask:8000020
/// fhandle-bytes:8 ...`, `fanotify mnt_id:3e3 mflags:0 mask:8000020 ignored_mask:0`,
/// `fanotify sdev:103 mflags:0 mask:8000020 ignored_mask:0`. The group's own line
/// (`fanotify flags:c03 event-flags:88000`) is not a mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkLine {
    pub kind: MarkKind,
    /// Inode marks: the inode number and the kernel's `dev_t` (major << 20 | minor).
    pub ino: u64,
    pub sdev: u64,
    pub mask: u64,
    pub ignored: u64,
}

impl MarkLine {
    pub fn parse(line: &str) -> Option<MarkLine> {
        let rest = line.strip_prefix("fanotify ")?;
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|t| t.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| u64::from_str_radix(v, 16).ok())
        };
        let kind = match rest.split(':').next()? {
            "ino" => MarkKind::Inode,
            "mnt_id" => MarkKind::Mount,
            "sdev" => MarkKind::Filesystem,
            _ => return None,
        };
        Some(MarkLine {
            kind,
            ino: field("ino").unwrap_or(0),
            sdev: field("sdev").unwrap_or(0),
            mask: field("mask")?,
            ignored: field("ignored_mask")?,
        })
    }

    /// Whether this is an inode mark on the inode [`inode_id`] gave.
    pub fn is_on(&self, id: (u64, u64)) -> bool {
        self.kind == MarkKind::Inode && (self.sdev, self.ino) == id
    }
}

/// `path`'s device as the kernel prints it in fdinfo (`major << 20 | minor`) and its
/// inode number, to find its marks among [`MarkLine`]s.
pub fn inode_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::metadata(path).ok()?;
    let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
    Some(((u64::from(major) << 20) | u64::from(minor), m.ino()))
}

/// The mark lines of every fanotify group this process holds, and how many groups.
pub fn own_fanotify_mark_lines() -> (usize, Vec<MarkLine>) {
    let (mut groups, mut lines) = (0, Vec::new());
    for fd in own_fds("anon_inode:[fanotify]") {
        let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        groups += 1;
        lines.extend(info.lines().filter_map(MarkLine::parse));
    }
    (groups, lines)
}

pub fn own_fanotify_marks() -> Marks {
    let (groups, lines) = own_fanotify_mark_lines();
    let mut m = Marks {
        groups,
        ..Marks::default()
    };
    for l in lines {
        match l.kind {
            MarkKind::Inode => m.inode += 1,
            MarkKind::Mount => m.mount += 1,
            MarkKind::Filesystem => m.filesystem += 1,
        }
        m.ignored += usize::from(l.ignored != 0);
    }
    m
}
