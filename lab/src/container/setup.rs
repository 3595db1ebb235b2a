//! A lab container's pieces: names and keys checked, its cgroup, container log and
//! subPath bind made and removed, its process's ready line read.

use super::*;

/// A DNS label, as the API server requires of container names; never '_', the
/// separator of log file names.
pub(super) fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!("invalid container name {name:?}: must be a DNS label");
    }
    Ok(())
}

/// A relative path without `.` or `..` components.
pub(super) fn check_key(key: &str) -> anyhow::Result<()> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && !key.contains('\0')
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok {
        bail!("invalid key {key:?}: must be a relative path without '.' or '..'");
    }
    Ok(())
}

/// 32 random bytes in hex, as containerd's ids.
pub(super) fn container_id() -> io::Result<String> {
    let mut b = [0u8; 32];
    super::super::fill_random(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The cgroup2 mount point, from `/proc/self/mountinfo` (hybrid hosts have it at
/// `/sys/fs/cgroup/unified`, unified ones at `/sys/fs/cgroup`). A mount of the whole
/// hierarchy (root `/`) is preferred.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mounts =
        mountinfo(Path::new("/proc/self/mountinfo")).context("read /proc/self/mountinfo")?;
    let mut v2 = mounts.iter().filter(|m| m.fs_type == "cgroup2");
    let first = v2.clone().next();
    v2.find(|m| m.root == Path::new("/"))
        .or(first)
        .map(|m| m.mount_point.clone())
        .context("no cgroup2 file system is mounted")
}

/// `mkdir -p`, again when a concurrent teardown removed the pod's slice between two
/// levels.
pub(super) fn make_cgroup(dir: &Path) -> anyhow::Result<()> {
    let mut attempts = 0;
    loop {
        match fs::create_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => attempts += 1,
            Err(e) => return Err(e).with_context(|| format!("create cgroup {dir:?}")),
        }
    }
}

/// Removes an emptied cgroup dir; the kernel may still count a just-reaped process
/// for a moment (EBUSY).
pub(super) fn remove_cgroup(dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + CGROUP_RMDIR_TIMEOUT;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).with_context(|| format!("remove cgroup {dir:?}")),
        }
    }
}

/// The kubelet's container log: `<pod log dir>/<container>/<n>.log` (the first `n`
/// free: restarts count up), and the runtime's link to it in the container logs dir.
pub(super) fn make_container_log(
    node: &LabNode,
    pod: &LabPod,
    name: &str,
    link: &Path,
) -> anyhow::Result<()> {
    let dir = node.pod_log_dir(pod).join(name);
    fs::create_dir_all(&dir).with_context(|| format!("create {dir:?}"))?;
    let mut n = 0u32;
    let log = loop {
        let log = dir.join(format!("{n}.log"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&log)
        {
            Ok(_) => break log,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e).with_context(|| format!("create {log:?}")),
        }
    };
    std::os::unix::fs::symlink(&log, link).with_context(|| format!("link {link:?} -> {log:?}"))
}

/// The kubelet's subPath preparation: resolve `<volume>/<key>` through the user-visible
/// link and `..data` to the file in the current timestamped dir, and bind that file on
/// a new empty file at `bind`.
pub(super) fn bind_sub_path(volume_dir: &Path, key: &str, bind: &Path) -> anyhow::Result<()> {
    let vol = fs::canonicalize(volume_dir).with_context(|| format!("resolve {volume_dir:?}"))?;
    let real =
        fs::canonicalize(vol.join(key)).with_context(|| format!("resolve {key} in {vol:?}"))?;
    if !real.starts_with(&vol) || real == vol {
        bail!("subPath {key} resolves to {real:?}, outside volume {vol:?}");
    }
    if !real.is_file() {
        bail!("subPath {key} resolves to {real:?}, not a regular file");
    }
    let parent = bind.parent().context("subPath bind path has no parent")?;
    DirBuilder::new()
        .recursive(true)
        .mode(SUBPATH_DIR_MODE)
        .create(parent)
        .with_context(|| format!("create {parent:?}"))?;
    // Never an existing one: that could be a live bind of a volume file.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(SUBPATH_FILE_MODE)
        .open(bind)
        .with_context(|| format!("create subPath mount point {bind:?}"))?;
    let mounted = nix::mount::mount(
        Some(&real),
        bind,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    );
    if let Err(e) = mounted {
        let _ = fs::remove_file(bind);
        return Err(e).with_context(|| format!("bind {real:?} on {bind:?}"));
    }
    Ok(())
}

/// `{file}` and `{dir}` in `arg` replaced by `file` and `dir`.
pub(super) fn substitute(arg: &OsStr, file: &Path, dir: &Path) -> OsString {
    let mut out = Vec::with_capacity(arg.len());
    let mut rest = arg.as_bytes();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(b"{file}") {
            out.extend_from_slice(file.as_os_str().as_bytes());
            rest = after;
        } else if let Some(after) = rest.strip_prefix(b"{dir}") {
            out.extend_from_slice(dir.as_os_str().as_bytes());
            rest = after;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    OsString::from_vec(out)
}

/// Reads the process's stdout until `ready\n`; `Err` says why not.
pub(super) fn wait_ready(stdout: &ChildStdout, deadline: Instant) -> Result<(), String> {
    let got = read_stdout(stdout, deadline, Some(b"ready\n"))?;
    if contains(&got, b"ready\n") {
        Ok(())
    } else {
        Err("exited before it was ready".into())
    }
}

/// An external program's start: the consumer writes `exec\n` once set up, then execs
/// it; the pipe is close-on-exec, so end of file after `exec\n` without `exec
/// failed\n` is a successful execve(2), provided the process is alive (not killed in
/// between, nor the program already gone). `Err` says why not.
pub(super) fn wait_exec(
    stdout: &ChildStdout,
    deadline: Instant,
    child: &mut Child,
) -> Result<(), String> {
    let got = read_stdout(stdout, deadline, None)?;
    if contains(&got, b"exec failed\n") {
        return Err("could not exec the program".into());
    }
    if !contains(&got, b"exec\n") {
        return Err("exited before it was ready".into());
    }
    match child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err("the program exited at once".into()),
        Err(e) => Err(format!("wait: {e}")),
    }
}

pub(super) fn contains(got: &[u8], what: &[u8]) -> bool {
    got.windows(what.len()).any(|w| w == what)
}

/// Reads the process's stdout until `until` appears in it, or to end of file (`None`,
/// or the process closed it first); returns what it read. `Err` on the deadline or a
/// read error.
pub(super) fn read_stdout(
    stdout: &ChildStdout,
    deadline: Instant,
    until: Option<&[u8]>,
) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        if until.is_some_and(|u| contains(&got, u)) {
            return Ok(got);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("not ready after {READY_TIMEOUT:?}"));
        }
        let mut pfd = libc::pollfd {
            fd: stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll its stdout: {e}"));
        }
        if n == 0 {
            continue;
        }
        // SAFETY: `buf` is writable for its length; the fd is open (`stdout`).
        let r = unsafe { libc::read(pfd.fd, buf.as_mut_ptr().cast(), buf.len()) };
        match r {
            0 => return Ok(got),
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("read its stdout: {e}"));
                }
            }
            r => got.extend_from_slice(&buf[..r as usize]),
        }
    }
}

pub(super) fn remove_file(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {path:?}"))
        }
        _ => Ok(()),
    }
}

/// The mounts listed in a mountinfo file (the agent's own parser).
pub(crate) fn mountinfo(path: &Path) -> io::Result<Vec<Mount>> {
    Ok(mountinfo::parse_bytes(&fs::read(path)?).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys() {
        for ok in ["app", "a-1", "x"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "a_b", "A", "a/b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["config.yaml", "sub/key", "..data-free"] {
            check_key(ok).unwrap();
        }
        for bad in ["", "/abs", "a/../b", "..", ".", "a//b", "a/", "a\0b"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn placeholders() {
        let (file, dir) = (Path::new("/c/x/config.yaml"), Path::new("/c/x"));
        for (arg, want) in [
            ("{file}", "/c/x/config.yaml"),
            ("--dir={dir}/", "--dir=/c/x/"),
            ("{dir}{file}", "/c/x/c/x/config.yaml"),
            ("{file}s {files} {di}", "/c/x/config.yamls {files} {di}"),
            ("plain", "plain"),
            ("", ""),
        ] {
            assert_eq!(substitute(OsStr::new(arg), file, dir), want, "{arg:?}");
        }
        let odd = OsStr::from_bytes(b"\xff{file}");
        assert_eq!(
            substitute(odd, file, dir).as_bytes(),
            b"\xff/c/x/config.yaml"
        );
    }

    #[test]
    fn ids_are_64_hex() {
        let a = container_id().unwrap();
        let b = container_id().unwrap();
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
