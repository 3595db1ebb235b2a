//! A process's mounts, from its `/proc/<pid>/mountinfo` (proc(5)), and where a path of
//! that process is stored: how a container's mountPath leads back to the filesystem and
//! host path of a kubelet volume (docs/design.md 2). A configmap volume dir bound into a
//! container has the host path as its root; a secret volume's tmpfs has root `/`; a subPath
//! file pinned to an old, removed inode has a root ending in `//deleted`.
//! Pure parsing: no file system access.

use std::{
    ffi::OsString,
    os::unix::ffi::OsStringExt,
    path::{Component, Path, PathBuf},
};

/// One line of mountinfo:
/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_id: u32,
    pub parent_id: u32,
    /// The device of the filesystem (`st_dev` of its files).
    pub major: u32,
    pub minor: u32,
    /// The dir (or file) of the filesystem mounted here, unescaped, without the
    /// `//deleted` the kernel appends when it has been removed.
    pub root: PathBuf,
    /// `root` ended in `//deleted`: the mount pins an inode no longer linked anywhere.
    pub deleted: bool,
    /// Where it is mounted, unescaped, as the process sees it.
    pub mount_point: PathBuf,
    /// `ext4`, `tmpfs`, `overlay`, `fuse.sshfs`, ...
    pub fs_type: String,
    /// The mount source (`/dev/sda1`, `tmpfs`, `overlay`, ...); bytes that are not UTF-8
    /// are replaced, as nothing is looked up by source.
    pub source: String,
}

/// What the kernel appends to the root of a mount whose dentry has been unlinked.
const DELETED: &[u8] = b"//deleted";

/// One mountinfo line (with or without its newline), None if malformed.
pub fn parse_line(line: &str) -> Option<Mount> {
    parse_line_bytes(line.as_bytes())
}

/// The same from the raw bytes of a line: paths need not be UTF-8.
pub fn parse_line_bytes(line: &[u8]) -> Option<Mount> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // The kernel separates fields with one space and escapes spaces inside them.
    let mut fields = line.split(|&b| b == b' ');
    let mount_id = number(fields.next()?)?;
    let parent_id = number(fields.next()?)?;
    let dev = fields.next()?;
    let colon = dev.iter().position(|&b| b == b':')?;
    let major = number(&dev[..colon])?;
    let minor = number(&dev[colon + 1..])?;
    let mut root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let _mount_options = fields.next()?;
    // Optional fields (`shared:1`, `master:2`, ...), zero or more, up to a lone `-`.
    loop {
        match fields.next()? {
            b"-" => break,
            b"" => return None,
            _ => {}
        }
    }
    let fs_type = lossy(&unescape(fields.next()?));
    let source = lossy(&unescape(fields.next()?));
    // The super block options follow; nothing here needs them.

    if root.is_empty() || fs_type.is_empty() || mount_point.first() != Some(&b'/') {
        return None;
    }
    let deleted = root.ends_with(DELETED);
    if deleted {
        root.truncate(root.len() - DELETED.len());
        if root.is_empty() {
            root.push(b'/');
        }
    }
    Some(Mount {
        mount_id,
        parent_id,
        major,
        minor,
        root: PathBuf::from(OsString::from_vec(root)),
        deleted,
        mount_point: PathBuf::from(OsString::from_vec(mount_point)),
        fs_type,
        source,
    })
}

/// Every parseable line of a mountinfo text, and how many lines were skipped as
/// malformed. Blank lines are neither.
pub fn parse(content: &str) -> (Vec<Mount>, usize) {
    parse_bytes(content.as_bytes())
}

/// The same from the raw bytes of the file: paths need not be UTF-8.
pub fn parse_bytes(content: &[u8]) -> (Vec<Mount>, usize) {
    let mut mounts = Vec::new();
    let mut skipped = 0;
    for line in content.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line_bytes(line) {
            Some(mount) => mounts.push(mount),
            None => skipped += 1,
        }
    }
    (mounts, skipped)
}

/// Where `path` (absolute, already normalised, as the process sees it) is stored: the
/// mount whose mount point is the longest component-wise prefix of `path` (the last one
/// in file order when several are stacked on the same point), as (major, minor, the path
/// inside that filesystem: the mount's root joined with the rest of `path`).
///
/// A mount hidden by a later mount on one of its ancestors is not detected: mount
/// namespaces of containers do not stack mounts that way.
pub fn locate(mounts: &[Mount], path: &Path) -> Option<(u32, u32, PathBuf)> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    let mut best: Option<(&Mount, usize)> = None;
    for mount in mounts {
        if !path.starts_with(&mount.mount_point) {
            continue;
        }
        let depth = mount.mount_point.components().count();
        if best.is_none_or(|(_, best_depth)| depth >= best_depth) {
            best = Some((mount, depth));
        }
    }
    let (mount, _) = best?;
    let rest = path.strip_prefix(&mount.mount_point).ok()?;
    let inside = if rest.as_os_str().is_empty() {
        mount.root.clone()
    } else {
        mount.root.join(rest)
    };
    Some((mount.major, mount.minor, inside))
}

/// A decimal number: digits only (no sign, no spaces), fitting in a u32.
fn number(field: &[u8]) -> Option<u32> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Undoes the kernel's escaping of path fields: `\ooo` (three octal digits) is one byte
/// (`\040` space, `\011` tab, `\012` newline, `\134` backslash). Anything else is kept.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(byte) = field.get(i + 1..i + 4).and_then(octal)
        {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// The byte of three octal digits, None past `\377` or for other characters.
fn octal(digits: &[u8]) -> Option<u8> {
    let &[a, b, c] = digits else { return None };
    let ok = (b'0'..=b'3').contains(&a) && [b, c].iter().all(|d| (b'0'..=b'7').contains(d));
    ok.then(|| ((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0'))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt};

    use super::*;

    const UID: &str = "0b5c7f2e-1a2b-4c3d-8e9f-001122334455";

    /// A container's mountinfo as containerd on a kubeadm node shows it: an overlay root,
    /// a projected (service account) and a secret tmpfs, a configmap dir on the node's
    /// ext4 disk, a subPath file whose inode the kubelet has since replaced, and the
    /// `..data` swap dir of another configmap mounted twice on the same point.
    fn container() -> String {
        let pod = format!("/var/lib/kubelet/pods/{UID}");
        [
            "1436 1338 0:224 / / rw,relatime master:451 - overlay overlay rw,lowerdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/77/fs,upperdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/78/fs,workdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/78/work".to_owned(),
            "1437 1436 0:226 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw".to_owned(),
            "1438 1436 0:227 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755,inode64".to_owned(),
            format!("1445 1436 259:1 {pod}/etc-hosts /etc/hosts rw,relatime - ext4 /dev/nvme0n1p1 rw,discard,errors=remount-ro"),
            format!("1446 1436 259:1 {pod}/volumes/kubernetes.io~configmap/app-config /etc/app rw,relatime - ext4 /dev/nvme0n1p1 rw,discard,errors=remount-ro"),
            format!("1447 1436 259:1 {pod}/volumes/kubernetes.io~configmap/cfg/..2026_11_25_14_10_06.2914482033/app.conf//deleted /etc/nginx/app.conf ro,relatime - ext4 /dev/nvme0n1p1 rw,discard,errors=remount-ro"),
            "1448 1436 0:212 / /etc/tls ro,relatime - tmpfs tmpfs rw,size=262144k,inode64,noswap".to_owned(),
            "1449 1436 0:213 / /var/run/secrets/kubernetes.io/serviceaccount ro,relatime - tmpfs tmpfs rw,size=262144k,inode64,noswap".to_owned(),
            format!("1450 1436 259:1 {pod}/volumes/kubernetes.io~configmap/old /etc/stacked ro,relatime shared:1 master:2 - ext4 /dev/nvme0n1p1 rw"),
            format!("1451 1450 259:1 {pod}/volumes/kubernetes.io~configmap/new /etc/stacked ro,relatime - ext4 /dev/nvme0n1p1 rw"),
        ]
        .join("\n")
            + "\n"
    }

    #[test]
    fn proc5_example() {
        let m = parse_line(
            "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        let want = Mount {
            mount_id: 36,
            parent_id: 35,
            major: 98,
            minor: 0,
            root: "/mnt1".into(),
            deleted: false,
            mount_point: "/mnt2".into(),
            fs_type: "ext3".into(),
            source: "/dev/root".into(),
        };
        assert_eq!(m, want);
        // No optional field, several, a trailing newline, no super options.
        let line = "36 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root rw\n";
        assert_eq!(parse_line(line).unwrap(), want);
        let line = "36 35 98:0 /mnt1 /mnt2 rw shared:3 master:1 propagate_from:2 unbindable - ext3 /dev/root rw\r\n";
        assert_eq!(parse_line(line).unwrap(), want);
        assert_eq!(
            parse_line("36 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root").unwrap(),
            want
        );
    }

    #[test]
    fn container_volumes() {
        let (mounts, skipped) = parse(&container());
        assert_eq!((mounts.len(), skipped), (10, 0));
        let pod = format!("/var/lib/kubelet/pods/{UID}");

        let tls = &mounts[6];
        assert_eq!(
            (tls.fs_type.as_str(), tls.root.as_path()),
            ("tmpfs", Path::new("/"))
        );
        let sub = &mounts[5];
        assert!(sub.deleted);
        assert_eq!(
            sub.root,
            PathBuf::from(format!(
                "{pod}/volumes/kubernetes.io~configmap/cfg/..2026_11_25_14_10_06.2914482033/app.conf"
            ))
        );
        assert_eq!(sub.mount_point, Path::new("/etc/nginx/app.conf"));
        assert_eq!(mounts[9].parent_id, 1450);

        let at = |p: &str| locate(&mounts, Path::new(p));
        let disk = |p: String| Some((259, 1, PathBuf::from(p)));
        // A secret or projected tmpfs: the path inside the tmpfs.
        assert_eq!(at("/etc/tls/tls.crt"), Some((0, 212, "/tls.crt".into())));
        assert_eq!(at("/etc/tls"), Some((0, 212, "/".into())));
        assert_eq!(
            at("/var/run/secrets/kubernetes.io/serviceaccount/..data/token"),
            Some((0, 213, "/..data/token".into()))
        );
        // A configmap dir on the disk: the host path.
        let cm = format!("{pod}/volumes/kubernetes.io~configmap/app-config");
        assert_eq!(at("/etc/app/..data/key"), disk(format!("{cm}/..data/key")));
        assert_eq!(at("/etc/app"), disk(cm));
        // The subPath file: its old path.
        assert_eq!(
            at("/etc/nginx/app.conf"),
            disk(sub.root.display().to_string())
        );
        // Stacked on one point: the last wins; a sibling prefix is no prefix.
        let new = format!("{pod}/volumes/kubernetes.io~configmap/new/k");
        assert_eq!(at("/etc/stacked/k"), disk(new));
        assert_eq!(at("/etc/hosts"), disk(format!("{pod}/etc-hosts")));
        assert_eq!(at("/etc/hostsx"), Some((0, 224, "/etc/hostsx".into())));
        assert_eq!(at("/etc/apps/x"), Some((0, 224, "/etc/apps/x".into())));
        assert_eq!(at("/"), Some((0, 224, "/".into())));
        // Not absolute, or not normalised.
        assert_eq!(at("etc/app"), None);
        assert_eq!(at("/etc/app/../tls"), None);
        assert_eq!(locate(&[], Path::new("/etc")), None);
    }

    #[test]
    fn escapes() {
        let m = parse_line(
            r"50 1 8:1 /data/my\040dir/tab\011nl\012bs\134x /mnt/a\040b rw - ext4 /dev/my\040disk rw",
        )
        .unwrap();
        assert_eq!(m.root, Path::new("/data/my dir/tab\tnl\nbs\\x"));
        assert_eq!(m.mount_point, Path::new("/mnt/a b"));
        assert_eq!(m.source, "/dev/my disk");
        // Paths that are not UTF-8, raw or escaped; a lone or short backslash is kept.
        let m =
            parse_line_bytes(b"50 1 8:1 /caf\xe9 /m\\377\\x\\12 rw - ext4 /dev/sda1 rw").unwrap();
        assert_eq!(m.root.as_os_str(), OsStr::from_bytes(b"/caf\xe9"));
        assert_eq!(
            m.mount_point.as_os_str(),
            OsStr::from_bytes(b"/m\xff\\x\\12")
        );
        let m = parse_line(r"50 1 8:1 /a\400 /b rw - ext4 /dev/sda1 rw").unwrap();
        assert_eq!(m.root, Path::new(r"/a\400"));
        // An escaped name that itself ends in `//deleted`-like text is still a path.
        let m = parse_line(r"50 1 8:1 /x\040//deleted /b rw - ext4 /dev/sda1 rw").unwrap();
        assert_eq!((m.root.as_path(), m.deleted), (Path::new("/x "), true));
        let m = parse_line("50 1 8:1 //deleted /b rw - ext4 /dev/sda1 rw").unwrap();
        assert_eq!((m.root.as_path(), m.deleted), (Path::new("/"), true));
    }

    #[test]
    fn malformed() {
        let long = "1 ".repeat(50_000);
        let cases = [
            "",
            "-",
            "36",
            "36 35 98:0 /mnt1 /mnt2 rw",
            "36 35 98:0 /mnt1 /mnt2 rw master:1",
            "36 35 98:0 /mnt1 /mnt2 rw master:1 -",
            "36 35 98:0 /mnt1 /mnt2 rw master:1 - ext3",
            "36 35 98:0 /mnt1 /mnt2 rw -  /dev/root rw",
            "36 35 98 /mnt1 /mnt2 rw - ext3 /dev/root rw",
            "36 35 98:0: /mnt1 /mnt2 rw - ext3 /dev/root rw",
            "36 35 :0 /mnt1 /mnt2 rw - ext3 /dev/root rw",
            "+36 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root rw",
            "-1 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root rw",
            "4294967296 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root rw",
            "36 35 98:0  /mnt2 rw - ext3 /dev/root rw",
            "36 35 98:0 /mnt1 mnt2 rw - ext3 /dev/root rw",
            "36 35 98:0 /mnt1 /mnt2 rw  - ext3 /dev/root rw",
            "36\t35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root rw",
            "x y z",
            &long,
        ];
        for line in cases {
            assert_eq!(parse_line(line), None, "{line:.100}");
        }
        let text = format!(
            "{}\n\ngarbage\n  \n36 35 98:0 /a /b rw - ext3 /dev/root rw",
            container()
        );
        let (mounts, skipped) = parse(&text);
        assert_eq!((mounts.len(), skipped), (11, 1));
        assert_eq!(parse(""), (vec![], 0));
        let (mounts, skipped) = parse_bytes(b"1 0 8:1 /\xff / rw - ext4 /dev/sda1 rw\n\xff\xfe\n");
        assert_eq!((mounts.len(), skipped), (1, 1));
    }
}
