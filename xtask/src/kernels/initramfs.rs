//! The VM's whole userland: busybox (static) as /bin/sh and its applets, the test
//! binaries with their shared libraries and dynamic loader, and an /init that
//! mounts what the probe needs, runs the tests and powers off.

use std::collections::BTreeSet;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::cpio;
use crate::cmd;

/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

/// Marks on the serial console, parsed by `console`.
pub const START: &str = "RELOADSCOPE-VM-START";
pub const BTF: &str = "RELOADSCOPE-VM-BTF=";
pub const SUITE_START: &str = "RELOADSCOPE-VM-SUITE-START ";
pub const SUITE_END: &str = "RELOADSCOPE-VM-SUITE-END ";
pub const EXIT: &str = "RELOADSCOPE-VM-EXIT=";

/// One run of a test binary inside the VM.
pub struct Run {
    /// The executable, `/tests/<binary>` (`integration`, or a benchmark's).
    pub binary: String,
    /// What runs of it (a module of the integration tests, `probe`): names the run.
    pub test: String,
    /// `RELOADSCOPE_PROBE` for this run; `None` leaves it unset.
    pub probe: Option<String>,
    /// Arguments after the test binary (libtest's: filters, `--exact`, ...).
    pub args: Vec<String>,
}

impl Run {
    /// How the run is named in marks and reports: `probe`, or `probe/fentry`.
    pub fn label(&self) -> String {
        match &self.probe {
            Some(probe) => format!("{}/{probe}", self.test),
            None => self.test.clone(),
        }
    }
}

/// What one boot does.
pub struct Plan {
    /// Hide the kernel's BTF from user space (see [`init_script`]).
    pub hide_btf: bool,
    pub runs: Vec<Run>,
}

/// Writes the initramfs for `plan` to `out`: the binaries of `tests` (name, host
/// path) are stripped of debug info and go to `/tests/<name>`.
pub fn build(out: &Path, tests: &[(String, PathBuf)], plan: &Plan) -> Result<()> {
    let mut archive = Archive::new(out)?;
    for dir in ["/dev", "/proc", "/sys", "/tmp", "/root", "/etc", "/tests"] {
        archive.dir(dir)?;
    }
    archive.cpio.char_device("/dev/console", 0o600, 5, 1)?;
    archive.cpio.char_device("/dev/null", 0o666, 1, 3)?;
    archive
        .cpio
        .file("/etc/hosts", 0o644, b"127.0.0.1 localhost\n::1 localhost\n")?;

    archive.file("/bin/busybox", &fs::read(BUSYBOX).context(BUSYBOX)?, 0o755)?;
    for applet in busybox_applets()? {
        archive.cpio.symlink(&format!("/bin/{applet}"), "busybox")?;
    }

    let mut libraries = BTreeSet::new();
    for (name, path) in tests {
        libraries.extend(shared_libraries(path)?);
        archive.file(&format!("/tests/{name}"), &stripped(path)?, 0o755)?;
    }
    for library in libraries {
        let data = fs::read(&library).with_context(|| format!("read {}", library.display()))?;
        archive.file(&library.to_string_lossy(), &data, 0o755)?;
    }

    archive.file("/init", init_script(plan).as_bytes(), 0o755)?;
    archive.finish()
}

/// An archive that adds each parent directory once, before its first entry.
struct Archive {
    cpio: cpio::Writer<BufWriter<fs::File>>,
    dirs: BTreeSet<String>,
    path: PathBuf,
}

impl Archive {
    fn new(path: &Path) -> Result<Self> {
        let file = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self {
            cpio: cpio::Writer::new(BufWriter::new(file)),
            dirs: BTreeSet::new(),
            path: path.to_owned(),
        })
    }

    fn dir(&mut self, dir: &str) -> Result<()> {
        let dir = dir.trim_end_matches('/');
        if dir.is_empty() || self.dirs.contains(dir) {
            return Ok(());
        }
        if let Some((parent, _)) = dir.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.cpio.dir(dir, 0o755)?;
        self.dirs.insert(dir.to_owned());
        Ok(())
    }

    fn file(&mut self, path: &str, data: &[u8], perm: u32) -> Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.cpio
            .file(path, perm, data)
            .with_context(|| format!("write {path} into {}", self.path.display()))
    }

    fn finish(self) -> Result<()> {
        self.cpio
            .finish()
            .with_context(|| format!("write {}", self.path.display()))?;
        Ok(())
    }
}

fn busybox_applets() -> Result<Vec<String>> {
    let mut list = Command::new(BUSYBOX);
    list.arg("--list");
    let output = list.output().with_context(|| {
        format!(
            "could not run `{}` (apt package busybox-static)",
            cmd::display(&list)
        )
    })?;
    if !output.status.success() {
        bail!("`{}` failed", cmd::display(&list));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|applet| !applet.is_empty() && *applet != "busybox" && !applet.contains('/'))
        .map(str::to_owned)
        .collect())
}

/// The shared libraries and the dynamic loader `binary` needs, as `ldd` lists them.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let mut ldd = Command::new("ldd");
    ldd.arg(binary);
    let output = ldd
        .output()
        .with_context(|| format!("could not run `{}`", cmd::display(&ldd)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            cmd::display(&ldd),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_ldd(&String::from_utf8_lossy(&output.stdout))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`,
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`, `linux-vdso.so.1 (0x...)`.
        let target = line.split_once("=>").map_or(line, |(_, to)| to).trim();
        if target.starts_with("not found") {
            bail!("ldd: {line}");
        }
        let path = target.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// The binary without its debug info (a fifth of its size: the VM unpacks it into
/// RAM); symbols stay, so panics still name functions.
fn stripped(binary: &Path) -> Result<Vec<u8>> {
    let out = std::env::temp_dir().join(format!(
        "reloadscope-vm-{}-{}",
        std::process::id(),
        binary.file_name().unwrap_or_default().to_string_lossy()
    ));
    let result = cmd::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&out),
    )
    .and_then(|()| fs::read(&out).with_context(|| format!("read {}", out.display())));
    let _ = fs::remove_file(&out);
    result
}

/// Quotes `word` for sh.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The VM's /init (busybox sh, PID 1). Output goes to the serial console.
///
/// BTF is hidden by an empty read-only tmpfs over /sys/kernel/btf: vmlinux (and
/// every module's BTF) is absent from user space, as on a kernel built without
/// CONFIG_DEBUG_INFO_BTF. No boot parameter turns BTF off. The kernel keeps its
/// BTF internally, so what this exercises is the agent's user-space fallback
/// (a loader needing vmlinux BTF fails and the agent goes on without it).
pub fn init_script(plan: &Plan) -> String {
    let mut script = String::from(
        r#"#!/bin/sh
export PATH=/bin HOME=/root TMPDIR=/tmp RUST_BACKTRACE=1
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/lib64:/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
ip link set lo up
"#,
    );
    script.push_str(&format!(
        "echo \"{START} kernel=$(uname -r) cpus=$(nproc)\"\n"
    ));
    if plan.hide_btf {
        script.push_str(
            "mount -t tmpfs -o ro,mode=0555 nobtf /sys/kernel/btf\n\
             export RELOADSCOPE_VM_BTF=hidden\n",
        );
    }
    script.push_str(&format!(
        "if [ -r /sys/kernel/btf/vmlinux ]; then echo \"{BTF}present\"; else echo \"{BTF}absent\"; fi\n"
    ));
    script.push_str("status=0\n");
    for run in &plan.runs {
        let label = run.label();
        let mut line = String::new();
        if let Some(probe) = &run.probe {
            line.push_str(&format!("RELOADSCOPE_PROBE={} ", quote(probe)));
        }
        line.push_str(&format!("/tests/{}", run.binary));
        for arg in &run.args {
            line.push(' ');
            line.push_str(&quote(arg));
        }
        script.push_str(&format!(
            "echo \"{SUITE_START}{label}\"\n\
             {line}\n\
             rc=$?\n\
             echo \"{SUITE_END}{label} exit=$rc\"\n\
             [ $rc -eq 0 ] || status=$rc\n"
        ));
    }
    script.push_str(&format!(
        "sync\necho \"{EXIT}$status\"\npoweroff -f\nsleep 5\nreboot -f\n"
    ));
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lists_libraries_and_the_loader_but_not_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007fc79e1d6000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007fc79e1a4000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fc79da1e000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007fc79e1d8000)\n";
        let paths = parse_ldd(text).unwrap();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn init_runs_each_test_with_its_probe_and_quoted_args_then_powers_off() {
        let plan = Plan {
            hide_btf: true,
            runs: vec![
                Run {
                    binary: "integration".into(),
                    test: "probe".into(),
                    probe: None,
                    args: vec!["--include-ignored".into()],
                },
                Run {
                    binary: "integration".into(),
                    test: "detect".into(),
                    probe: Some("fentry".into()),
                    args: vec!["it's".into()],
                },
            ],
        };
        let script = init_script(&plan);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("\n/tests/integration '--include-ignored'\n"));
        assert!(script.contains("\nRELOADSCOPE_PROBE='fentry' /tests/integration 'it'\\''s'\n"));
        assert!(script.contains("echo \"RELOADSCOPE-VM-SUITE-END detect/fentry exit=$rc\""));
        assert!(script.contains("mount -t tmpfs -o ro,mode=0555 nobtf /sys/kernel/btf\n"));
        let btf = script.find("nobtf").unwrap();
        assert!(
            btf < script.find("/tests/integration").unwrap(),
            "BTF is hidden before any test"
        );
        assert!(script.trim_end().ends_with("reboot -f"));
        assert!(
            !init_script(&Plan {
                hide_btf: false,
                runs: vec![]
            })
            .contains("nobtf")
        );
    }
}
