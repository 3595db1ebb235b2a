//! The raw system calls of the lab writer, issued through `syscall(2)` so that the
//! kernel sees exactly the call named: glibc turns `rename` into `renameat2`, `mkdir`
//! into `mkdirat` and so on, depending on its version and the architecture.
//!
//! [`CallStyle::GoAt`] makes the calls Go's syscall package makes on amd64 and arm64:
//! the `*at` family with `AT_FDCWD` and absolute paths. [`CallStyle::Legacy`] makes the
//! old path calls (`mkdir`, `chmod`, `open`, `symlink`, `rename`, `unlink`, `readlink`)
//! where the architecture has them (x86_64); elsewhere it falls back to the `*at` calls,
//! which is what every writer there makes.

use std::{
    ffi::{CString, OsStr, OsString},
    fs::File,
    io,
    os::{
        fd::FromRawFd,
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::Path,
};

use libc::c_long;

/// Which system calls the writer makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallStyle {
    /// Go's syscall package on amd64: `mkdirat`, `fchmodat`, `openat`, `symlinkat`,
    /// `renameat`, `unlinkat`, `readlinkat`, all with `AT_FDCWD` and absolute paths.
    GoAt,
    /// The legacy path calls, as Python or coreutils make them: `mkdir`, `chmod`,
    /// `open`, `symlink`, `rename`, `unlink`, `readlink`.
    Legacy,
}

const CWD: c_long = libc::AT_FDCWD as c_long;

/// Legacy syscall numbers; `None` where the architecture only has the `*at` calls.
#[cfg(target_arch = "x86_64")]
mod legacy {
    use libc::c_long;
    pub const MKDIR: Option<c_long> = Some(libc::SYS_mkdir);
    pub const CHMOD: Option<c_long> = Some(libc::SYS_chmod);
    pub const OPEN: Option<c_long> = Some(libc::SYS_open);
    pub const SYMLINK: Option<c_long> = Some(libc::SYS_symlink);
    pub const RENAME: Option<c_long> = Some(libc::SYS_rename);
    pub const UNLINK: Option<c_long> = Some(libc::SYS_unlink);
    pub const READLINK: Option<c_long> = Some(libc::SYS_readlink);
}

#[cfg(not(target_arch = "x86_64"))]
mod legacy {
    use libc::c_long;
    pub const MKDIR: Option<c_long> = None;
    pub const CHMOD: Option<c_long> = None;
    pub const OPEN: Option<c_long> = None;
    pub const SYMLINK: Option<c_long> = None;
    pub const RENAME: Option<c_long> = None;
    pub const UNLINK: Option<c_long> = None;
    pub const READLINK: Option<c_long> = None;
}

/// Picks the legacy call number when the style asks for it and the architecture has it.
fn legacy_nr(style: CallStyle, nr: Option<c_long>) -> Option<c_long> {
    match style {
        CallStyle::Legacy => nr,
        CallStyle::GoAt => None,
    }
}

pub(super) fn cpath(path: &Path) -> io::Result<CString> {
    cstr(path.as_os_str())
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

fn check(ret: c_long) -> io::Result<c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `mkdirat(AT_FDCWD, path, mode)` or `mkdir(path, mode)`.
pub(super) fn mkdir(style: CallStyle, path: &Path, mode: u32) -> io::Result<()> {
    let p = cpath(path)?;
    let mode = mode as c_long;
    // SAFETY: `p` is a NUL-terminated string that outlives the call.
    let ret = unsafe {
        match legacy_nr(style, legacy::MKDIR) {
            Some(nr) => libc::syscall(nr, p.as_ptr(), mode),
            None => libc::syscall(libc::SYS_mkdirat, CWD, p.as_ptr(), mode),
        }
    };
    check(ret).map(drop)
}

/// `fchmodat(AT_FDCWD, path, mode)` (no flags argument, as in Go) or `chmod(path, mode)`.
pub(super) fn chmod(style: CallStyle, path: &Path, mode: u32) -> io::Result<()> {
    let p = cpath(path)?;
    let mode = mode as c_long;
    // SAFETY: `p` is a NUL-terminated string that outlives the call.
    let ret = unsafe {
        match legacy_nr(style, legacy::CHMOD) {
            Some(nr) => libc::syscall(nr, p.as_ptr(), mode),
            None => libc::syscall(libc::SYS_fchmodat, CWD, p.as_ptr(), mode),
        }
    };
    check(ret).map(drop)
}

/// `openat(AT_FDCWD, path, O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, mode)` or `open(...)`:
/// what Go's `os.WriteFile` opens a file with.
pub(super) fn create_trunc(style: CallStyle, path: &Path, mode: u32) -> io::Result<File> {
    let p = cpath(path)?;
    let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC) as c_long;
    let mode = mode as c_long;
    // SAFETY: `p` is a NUL-terminated string that outlives the call.
    let ret = unsafe {
        match legacy_nr(style, legacy::OPEN) {
            Some(nr) => libc::syscall(nr, p.as_ptr(), flags, mode),
            None => libc::syscall(libc::SYS_openat, CWD, p.as_ptr(), flags, mode),
        }
    };
    let fd = check(ret)? as libc::c_int;
    // SAFETY: the kernel just returned `fd`; nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `symlinkat(target, AT_FDCWD, link)` or `symlink(target, link)`.
pub(super) fn symlink(style: CallStyle, target: &OsStr, link: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    let l = cpath(link)?;
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let ret = unsafe {
        match legacy_nr(style, legacy::SYMLINK) {
            Some(nr) => libc::syscall(nr, t.as_ptr(), l.as_ptr()),
            None => libc::syscall(libc::SYS_symlinkat, t.as_ptr(), CWD, l.as_ptr()),
        }
    };
    check(ret).map(drop)
}

/// `renameat(AT_FDCWD, from, AT_FDCWD, to)` or `rename(from, to)`. Architectures
/// without `renameat` (riscv64, loongarch64) get `renameat2` with flags 0, as Go does.
pub(super) fn rename(style: CallStyle, from: &Path, to: &Path) -> io::Result<()> {
    let f = cpath(from)?;
    let t = cpath(to)?;
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let ret = unsafe {
        match legacy_nr(style, legacy::RENAME) {
            Some(nr) => libc::syscall(nr, f.as_ptr(), t.as_ptr()),
            None => renameat(f.as_ptr(), t.as_ptr()),
        }
    };
    check(ret).map(drop)
}

#[cfg(any(target_arch = "riscv64", target_arch = "loongarch64"))]
unsafe fn renameat(from: *const libc::c_char, to: *const libc::c_char) -> c_long {
    // SAFETY: the caller passes NUL-terminated strings.
    unsafe { libc::syscall(libc::SYS_renameat2, CWD, from, CWD, to, 0 as c_long) }
}

#[cfg(not(any(target_arch = "riscv64", target_arch = "loongarch64")))]
unsafe fn renameat(from: *const libc::c_char, to: *const libc::c_char) -> c_long {
    // SAFETY: the caller passes NUL-terminated strings.
    unsafe { libc::syscall(libc::SYS_renameat, CWD, from, CWD, to) }
}

/// `unlinkat(AT_FDCWD, path, 0)` or `unlink(path)`.
pub(super) fn unlink(style: CallStyle, path: &Path) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: `p` is a NUL-terminated string that outlives the call.
    let ret = unsafe {
        match legacy_nr(style, legacy::UNLINK) {
            Some(nr) => libc::syscall(nr, p.as_ptr()),
            None => libc::syscall(libc::SYS_unlinkat, CWD, p.as_ptr(), 0 as c_long),
        }
    };
    check(ret).map(drop)
}

/// `readlinkat(AT_FDCWD, path, ...)` or `readlink(path, ...)`.
pub(super) fn readlink(style: CallStyle, path: &Path) -> io::Result<OsString> {
    let p = cpath(path)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let len = buf.len() as c_long;
    // SAFETY: `p` is NUL-terminated; `buf` is writable for `len` bytes.
    let ret = unsafe {
        match legacy_nr(style, legacy::READLINK) {
            Some(nr) => libc::syscall(nr, p.as_ptr(), buf.as_mut_ptr(), len),
            None => libc::syscall(libc::SYS_readlinkat, CWD, p.as_ptr(), buf.as_mut_ptr(), len),
        }
    };
    buf.truncate(check(ret)? as usize);
    Ok(OsString::from_vec(buf))
}
