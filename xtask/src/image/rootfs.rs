//! An image's root filesystem: what goes in, in one sorted list that both the layer
//! archive and the `--rootfs` directory are made from.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// `/etc/passwd`: root alone, with no shell to log in to.
const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n";
/// `/etc/group`: root alone.
const GROUP: &str = "root:x:0:\n";

/// Where an installed binary goes, relative to the root.
pub fn bin_path(binary: &str) -> String {
    format!("usr/bin/{binary}")
}

/// One entry: a directory, or a file with its content.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    /// Permission bits (no file type).
    pub mode: u32,
    pub kind: Kind,
}

/// Entries by their path relative to the root (`usr/bin/x`, no leading `/`), in
/// byte order: a directory comes before what it holds.
#[derive(Debug, Default)]
pub struct Rootfs {
    entries: BTreeMap<String, Entry>,
}

impl Rootfs {
    /// Adds a file and, as 0755 directories, the parents it needs.
    pub fn add_file(&mut self, path: &str, mode: u32, content: Vec<u8>) -> Result<()> {
        check_path(path)?;
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.add_dir(parent, 0o755)?;
        }
        let entry = Entry {
            mode,
            kind: Kind::File(content),
        };
        ensure!(
            self.entries.insert(path.to_owned(), entry).is_none(),
            "{path} is in the image twice"
        );
        Ok(())
    }

    /// Adds a directory and its parents, unless there; a parent added here is 0755.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        check_path(path)?;
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.add_dir(parent, 0o755)?;
        }
        match self.entries.get(path) {
            None => {
                let entry = Entry {
                    mode,
                    kind: Kind::Dir,
                };
                self.entries.insert(path.to_owned(), entry);
                Ok(())
            }
            Some(Entry {
                kind: Kind::Dir, ..
            }) => Ok(()),
            Some(_) => bail!("{path} is a file in the image, not a directory"),
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries
            .iter()
            .map(|(path, entry)| (path.as_str(), entry))
    }

    /// Lays the entries out under `root`, which must be absent or empty (nothing
    /// else ends up in it), with their modes whatever the umask.
    pub fn write_dir(&self, root: &Path) -> Result<()> {
        if root.exists() {
            let mut listing = fs::read_dir(root)
                .with_context(|| format!("{} is not a directory", root.display()))?;
            ensure!(
                listing.next().is_none(),
                "{} is not empty: the root filesystem goes in an empty or new directory",
                root.display()
            );
        }
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
        for (path, entry) in self.entries() {
            let target = root.join(path);
            match &entry.kind {
                Kind::Dir => fs::create_dir(&target),
                Kind::File(content) => fs::write(&target, content),
            }
            .with_context(|| format!("writing {}", target.display()))?;
        }
        // Modes last: a directory without write permission would refuse its entries.
        for (path, entry) in self.entries() {
            let target = root.join(path);
            fs::set_permissions(&target, fs::Permissions::from_mode(entry.mode))
                .with_context(|| format!("chmod {}", target.display()))?;
        }
        Ok(())
    }
}

/// A relative path of plain components, as the entries are named.
fn check_path(path: &str) -> Result<()> {
    let normal = !path.is_empty()
        && !path.ends_with('/')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !path.contains("//");
    ensure!(normal, "{path:?} is not a plain relative path");
    Ok(())
}

/// The root filesystem of one binary: it at `/usr/bin/<name>`, each shared object it
/// loads and its ELF interpreter at the path `ldd` finds it at on this machine (copied
/// from there), and an `/etc/passwd` and `/etc/group` naming root. Nothing else: no
/// shell.
pub fn for_binary(binary: &Path, name: &str) -> Result<Rootfs> {
    let mut rootfs = Rootfs::default();
    let content = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    rootfs.add_file(&bin_path(name), 0o755, content)?;
    for object in shared_objects(binary)? {
        let content = fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
        let path = object
            .strip_prefix("/")
            .ok()
            .and_then(Path::to_str)
            .with_context(|| format!("{} is not an absolute UTF-8 path", object.display()))?;
        // The interpreter must be executable; the libraries are mapped the same way.
        rootfs.add_file(path, 0o755, content)?;
    }
    rootfs.add_file("etc/passwd", 0o644, PASSWD.into())?;
    rootfs.add_file("etc/group", 0o644, GROUP.into())?;
    Ok(rootfs)
}

/// The shared objects `binary` loads, its ELF interpreter included, as this
/// machine's dynamic loader finds them (`ldd`: the DT_NEEDED entries, recursively);
/// none for a static binary.
fn shared_objects(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("could not run ldd")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("`ldd {}` failed: {}", binary.display(), stderr.trim());
    }
    parse_ldd(&stdout).with_context(|| format!("ldd {}", binary.display()))
}

/// The paths in `ldd` output: `name => /path (0x...)` and the interpreter's
/// `/path (0x...)`; the vDSO (no path) is left out, a library not found is an error.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut paths = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "statically linked" {
            continue;
        }
        let (name, found) = match line.split_once("=>") {
            Some((name, found)) => (name.trim(), found.trim()),
            None => ("", line),
        };
        if found.starts_with("not found") {
            bail!("{name} not found");
        }
        // `/path (0x...)`, `(0x...)` alone for a vDSO listed with `=>`.
        let path = found.split(" (0x").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            paths.insert(PathBuf::from(path));
        } else if !(name.starts_with("linux-vdso")
            || path.starts_with("linux-vdso")
            || path.starts_with('(')
            || path.is_empty())
        {
            bail!("unexpected ldd line {line:?}");
        }
    }
    Ok(paths.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_interpreter() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc6b5f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f2a1c6b0000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2a1c4cf000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f2a1d5e8000)
";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2",
            ]
            .map(PathBuf::from)
        );
        // Older loaders list the vDSO with an empty path.
        assert!(
            parse_ldd("\tlinux-vdso.so.1 =>  (0x00007ffc6b5f2000)\n")
                .unwrap()
                .is_empty()
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        let err = parse_ldd("\tlibssl.so.3 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libssl.so.3"), "{err}");
        assert!(parse_ldd("\tsomething odd\n").is_err());
    }

    #[test]
    fn parents_come_first_and_paths_are_plain() {
        let mut fs = Rootfs::default();
        fs.add_file("usr/bin/tool", 0o755, b"x".to_vec()).unwrap();
        fs.add_file("etc/passwd", 0o644, PASSWD.into()).unwrap();
        fs.add_dir("usr/lib", 0o700).unwrap();
        fs.add_file("usr/lib/x.so", 0o755, b"y".to_vec()).unwrap();
        let paths: Vec<&str> = fs.entries().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "etc",
                "etc/passwd",
                "usr",
                "usr/bin",
                "usr/bin/tool",
                "usr/lib",
                "usr/lib/x.so"
            ]
        );
        assert_eq!(fs.entries().nth(5).unwrap().1.mode, 0o700);

        assert!(fs.add_file("usr/bin/tool", 0o755, vec![]).is_err(), "twice");
        assert!(
            fs.add_file("usr/bin/tool/x", 0o755, vec![]).is_err(),
            "under a file"
        );
        for bad in ["", "/etc/x", "etc/../x", "./x", "etc//x", "etc/"] {
            assert!(fs.add_file(bad, 0o644, vec![]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_binary_gets_exactly_what_it_loads() {
        // This very test binary: dynamically linked against the C library.
        let exe = std::env::current_exe().unwrap();
        let fs = for_binary(&exe, "tool").unwrap();
        let paths: Vec<&str> = fs.entries().map(|(p, _)| p).collect();
        assert!(paths.contains(&"usr/bin/tool"));
        assert!(paths.contains(&"etc/passwd") && paths.contains(&"etc/group"));
        let objects = shared_objects(&exe).unwrap();
        assert!(
            objects
                .iter()
                .any(|o| o.to_string_lossy().contains("libc.so"))
        );
        for object in &objects {
            let path = object.to_str().unwrap().trim_start_matches('/');
            let (_, entry) = fs.entries().find(|(p, _)| *p == path).unwrap();
            assert_eq!(entry.kind, Kind::File(fs::read(object).unwrap()), "{path}");
        }
        // The binary, its objects, passwd and group: no other file.
        let files = fs
            .entries()
            .filter(|(_, e)| matches!(e.kind, Kind::File(_)));
        assert_eq!(files.count(), objects.len() + 3);
        assert!(!paths.iter().any(|p| p.ends_with("/sh")), "no shell");
    }

    #[test]
    fn the_directory_gets_the_entries_with_their_modes() {
        let tmp = std::env::temp_dir().join(format!("xtask-rootfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let mut rootfs = Rootfs::default();
        rootfs
            .add_file("usr/bin/tool", 0o755, b"#!x".to_vec())
            .unwrap();
        rootfs.add_file("etc/group", 0o644, GROUP.into()).unwrap();
        rootfs.add_dir("tmp", 0o1777).unwrap();
        rootfs.write_dir(&tmp).unwrap();
        let mode = |p: &str| fs::metadata(tmp.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("usr/bin/tool"), 0o755);
        assert_eq!(mode("etc/group"), 0o644);
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(fs::read(tmp.join("etc/group")).unwrap(), GROUP.as_bytes());
        // Not into a directory that holds something.
        assert!(rootfs.write_dir(&tmp).is_err());
        fs::remove_dir_all(&tmp).unwrap();
    }
}
