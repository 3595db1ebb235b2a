//! Tests against the real kernel. Most need root: tmpfs mounts, mount namespaces and
//! CAP_SYS_ADMIN for the group.

use std::{
    collections::VecDeque,
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::mount::{MntFlags, MsFlags};
use tempfile::TempDir;

use super::*;

/// A timestamped dir name as the kubelet makes them.
const TS: &str = "..2026_11_25_14_10_06.1";

/// A fresh tmpfs on a temporary dir, unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn new() -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount tmpfs (needs root)");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), MntFlags::MNT_DETACH);
    }
}

/// A volume as the kubelet lays it out: `<vol>/<TS>/key`, `..data -> <TS>`,
/// `key -> ..data/key`. Returns the timestamped dir.
fn volume(vol: &Path) -> PathBuf {
    let ts = vol.join(TS);
    fs::create_dir(&ts).unwrap();
    fs::write(ts.join("key"), "v1").unwrap();
    symlink(TS, vol.join("..data")).unwrap();
    symlink("..data/key", vol.join("key")).unwrap();
    ts
}

/// Runs `cmd` to completion and returns its pid.
fn run(cmd: &mut Command) -> i32 {
    let mut child = cmd.stdout(Stdio::null()).spawn().expect("spawn");
    let pid = child.id() as i32;
    let status = child.wait().unwrap();
    assert!(status.success(), "{cmd:?}: {status}");
    pid
}

fn cat(path: &Path) -> i32 {
    run(Command::new("cat").arg(path))
}

fn open_event(pid: i32, dir: &DirId, name: &str) -> FanEvent {
    FanEvent::Open {
        pid,
        dir: dir.clone(),
        name: name.into(),
    }
}

fn named(name: &'static str) -> impl Fn(&FanEvent) -> bool {
    move |e| matches!(e, FanEvent::Open { name: n, .. } if n == name)
}

struct Reader {
    fan: Fanotify,
    pending: VecDeque<FanEvent>,
}

impl Reader {
    fn new(fan: Fanotify) -> Reader {
        Reader {
            fan,
            pending: VecDeque::new(),
        }
    }

    /// Events up to and including the first one `hit` accepts; panics after 5 s.
    async fn until(&mut self, what: &str, hit: impl Fn(&FanEvent) -> bool) -> Vec<FanEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        loop {
            while let Some(e) = self.pending.pop_front() {
                let done = hit(&e);
                seen.push(e);
                if done {
                    return seen;
                }
            }
            match tokio::time::timeout_at(deadline, self.fan.read()).await {
                Ok(batch) => self.pending.extend(batch.expect("read")),
                Err(_) => panic!("no {what} within 5 s; saw {seen:?}"),
            }
        }
    }
}

#[test]
fn new_outside_a_runtime_is_an_error() {
    let e = Fanotify::new().err().expect("no runtime");
    assert!(e.to_string().contains("tokio runtime"), "{e}");
}

#[tokio::test]
#[ignore = "needs root: run cargo xtask test"]
async fn dir_mark_reports_opener_and_real_dir() {
    let t = Tmpfs::new();
    let ts = volume(t.path());
    fs::write(ts.join("sentinel"), "").unwrap();
    let dir = DirId::of(&ts).unwrap();
    let fan = Fanotify::new().unwrap();
    fan.mark_dir(&ts).unwrap();
    let mut r = Reader::new(fan);

    let pid = cat(&ts.join("key"));
    assert_eq!(
        r.until("direct open", named("key")).await,
        [open_event(pid, &dir, "key")]
    );

    // Through `..data`, and through the user-visible symlink: the real dir.
    let pid = cat(&t.path().join("..data/key"));
    assert_eq!(
        r.until("open via ..data", named("key")).await,
        [open_event(pid, &dir, "key")]
    );
    let pid = cat(&t.path().join("key"));
    assert_eq!(
        r.until("open via key", named("key")).await,
        [open_event(pid, &dir, "key")]
    );

    // Opening the dir itself (no FAN_ONDIR) is not reported; a sentinel shows it.
    run(Command::new("ls").arg(&ts));
    let pid = cat(&ts.join("sentinel"));
    assert_eq!(
        r.until("sentinel", named("sentinel")).await,
        [open_event(pid, &dir, "sentinel")]
    );

    r.fan.unmark_dir(&ts).unwrap();
    assert_eq!(
        r.fan.unmark_dir(&ts).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
}

#[tokio::test]
#[ignore = "needs root: run cargo xtask test"]
async fn other_mount_namespace_through_a_bind_mount() {
    let t = Tmpfs::new();
    let ts = volume(t.path());
    let dir = DirId::of(&ts).unwrap();
    let fan = Fanotify::new().unwrap();
    fan.mark_dir(&ts).unwrap();
    let mut r = Reader::new(fan);

    let pid = cat_through_bind(t.path(), &format!("{TS}/key"));
    assert_eq!(
        r.until("open in the other namespace", named("key")).await,
        [open_event(pid, &dir, "key")]
    );
    let pid = cat_through_bind(t.path(), "key");
    assert_eq!(
        r.until("open via key in the other namespace", named("key"))
            .await,
        [open_event(pid, &dir, "key")]
    );
}

/// Runs `cat <mnt>/<rel>` in a new mount namespace where `src` is bind-mounted on
/// `<mnt>`, as a container sees its volume. Returns cat's pid: unshare execs sh, which
/// execs cat.
fn cat_through_bind(src: &Path, rel: &str) -> i32 {
    let mnt = tempfile::tempdir().unwrap();
    let pid = run(Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$2" && exec cat "$2/$3""#)
        .arg("sh")
        .arg(src)
        .arg(mnt.path())
        .arg(rel));
    // The bind mount stayed in the other namespace.
    assert!(fs::read_dir(mnt.path()).unwrap().next().is_none());
    pid
}

#[tokio::test]
#[ignore = "needs root: run cargo xtask test"]
async fn dir_mark_on_the_timestamped_dir() {
    let base = tempfile::tempdir().unwrap();
    let vol = base.path().join("vol");
    fs::create_dir(&vol).unwrap();
    let ts = volume(&vol);
    let other = base.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("key"), "x").unwrap();
    let side = base.path().join("side");
    fs::create_dir(&side).unwrap();
    fs::write(side.join("sentinel"), "").unwrap();
    let dir = DirId::of(&ts).unwrap();
    let side_id = DirId::of(&side).unwrap();

    let fan = Fanotify::new().unwrap();
    // `..data` and a file are refused: the mark must be on the real dir.
    let not_dir = |r: io::Result<()>| r.unwrap_err().kind() == io::ErrorKind::NotADirectory;
    assert!(not_dir(fan.mark_dir(&vol.join("..data"))));
    assert!(not_dir(fan.mark_dir(&ts.join("key"))));
    fan.mark_dir(&ts).unwrap();
    fan.mark_dir(&side).unwrap();
    let mut r = Reader::new(fan);

    let pid = cat(&vol.join("..data/key"));
    assert_eq!(
        r.until("open via ..data", named("key")).await,
        [open_event(pid, &dir, "key")]
    );
    let pid = cat(&vol.join("key"));
    assert_eq!(
        r.until("open via key", named("key")).await,
        [open_event(pid, &dir, "key")]
    );
    let pid = cat_through_bind(&vol, "key");
    assert_eq!(
        r.until("open in another namespace", named("key")).await,
        [open_event(pid, &dir, "key")]
    );

    // Another dir, the marked dir itself, and the volume dir: nothing before the sentinel.
    cat(&other.join("key"));
    run(Command::new("ls").arg(&ts));
    fs::write(vol.join("plain"), "").unwrap();
    cat(&vol.join("plain"));
    let pid = cat(&side.join("sentinel"));
    assert_eq!(
        r.until("sentinel", named("sentinel")).await,
        [open_event(pid, &side_id, "sentinel")]
    );

    // Unmarked: no more events from it.
    r.fan.unmark_dir(&ts).unwrap();
    cat(&ts.join("key"));
    let pid = cat(&side.join("sentinel"));
    assert_eq!(
        r.until("sentinel after unmark", named("sentinel")).await,
        [open_event(pid, &side_id, "sentinel")]
    );
    assert_eq!(
        r.fan.unmark_dir(&ts).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );

    // Deleting a marked dir (the kubelet removing an old timestamped dir) drops its mark.
    assert_eq!(inode_marks(&r.fan), 1);
    fs::remove_dir_all(&side).unwrap();
    assert_eq!(inode_marks(&r.fan), 0);
}

/// A settled volume's data dir, ignored: no event through any mark (filesystem, mount,
/// dir) until the ignore is taken back, while a new data dir (the next update's) reports
/// at once. `ignore_dir` or its pre-6.0 fallback `ignore_files`, and their undoing.
type Mark = fn(&Fanotify, &Path) -> io::Result<()>;

async fn ignored_dir_is_silent_for_every_mark(ignore: Mark, unignore: Mark) {
    let t = Tmpfs::new();
    let ts = volume(t.path());
    let bind = tempfile::tempdir().unwrap();
    nix::mount::mount(
        Some(t.path()),
        bind.path(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let _unbind = scopeguard(bind.path());
    let next = t.path().join("..2026_11_25_14_12_00.2");
    fs::create_dir(&next).unwrap();
    fs::write(next.join("key"), "v2").unwrap();
    let (dir, next_id) = (DirId::of(&ts).unwrap(), DirId::of(&next).unwrap());

    let fan = Fanotify::new().unwrap();
    fan.mark_filesystem(t.path()).unwrap();
    fan.mark_mount(bind.path()).unwrap();
    fan.mark_dir(&ts).unwrap();
    ignore(&fan, &ts).unwrap();
    let mut r = Reader::new(fan);

    cat(&t.path().join("..data/key"));
    cat(&t.path().join("key"));
    cat(&bind.path().join("key"));
    cat_through_bind(t.path(), "key");
    let pid = cat(&next.join("key"));
    assert_eq!(
        r.until("the next data dir's open", named("key")).await,
        [open_event(pid, &next_id, "key")],
        "opens of the ignored dir's files were reported"
    );

    unignore(&r.fan, &ts).unwrap();
    let pid = cat(&bind.path().join("key"));
    assert_eq!(
        r.until("open after the ignore is taken back", named("key"))
            .await,
        [open_event(pid, &dir, "key")]
    );
}

/// Detaches a mount when dropped.
fn scopeguard(path: &Path) -> impl Drop + use<> {
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
    Unmount(path.to_owned())
}

#[tokio::test]
#[ignore = "needs root: run cargo xtask test"]
async fn ignored_dir_is_silent_until_taken_back() {
    ignored_dir_is_silent_for_every_mark(Fanotify::ignore_dir, Fanotify::unignore_dir).await;
}

#[tokio::test]
#[ignore = "needs root: run cargo xtask test"]
async fn ignored_files_are_silent_until_taken_back() {
    ignored_dir_is_silent_for_every_mark(Fanotify::ignore_files, Fanotify::unignore_files).await;
}

/// The group's inode marks, as `/proc/self/fdinfo` lists them.
fn inode_marks(fan: &Fanotify) -> usize {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", fan.fd.as_raw_fd())).unwrap();
    info.lines()
        .filter(|l| l.starts_with("fanotify ino:"))
        .count()
}

#[tokio::test]
#[ignore = "needs root: run cargo xtask test"]
async fn queue_overflow_is_reported() {
    let limit: usize = fs::read_to_string("/proc/sys/fs/fanotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t = Tmpfs::new();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    // Distinct names: the kernel merges an open identical to a queued one.
    let n = limit + 1000;
    for i in 0..n {
        fs::File::create(d.join(i.to_string())).unwrap();
    }
    let fan = Fanotify::new().unwrap();
    fan.mark_dir(&d).unwrap();
    let start = Instant::now();
    for i in 0..n {
        fs::File::open(d.join(i.to_string())).unwrap();
    }
    let mut r = Reader::new(fan);
    let seen = r.until("overflow", |e| *e == FanEvent::Overflow).await;
    let took = start.elapsed();
    eprintln!("{} events before the overflow, {took:?}", seen.len() - 1);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        seen[..seen.len() - 1]
            .iter()
            .all(|e| matches!(e, FanEvent::Open { .. }))
    );
}

/// Drops CAP_SYS_ADMIN from the calling thread's effective set (capabilities are per
/// thread; the raw syscall touches no other thread).
fn drop_cap_sys_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAP_SYS_ADMIN: u32 = 21; // linux/capability.h
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: header and two data structs, as version 3 wants.
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) },
        0
    );
    d[0].effective &= !(1 << CAP_SYS_ADMIN);
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) },
        0
    );
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn without_cap_sys_admin_new_says_so() {
    std::thread::spawn(|| {
        drop_cap_sys_admin();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _in = rt.enter();
        let e = Fanotify::new()
            .err()
            .expect("an unprivileged group must be refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}");
    })
    .join()
    .unwrap();
}
