//! Which programs of the object run, per probe variant. This is the one place that
//! knows the variants; the rest of the agent sees a `Probe` and its `variant()`.

use agent_common::swap::Syscall;
use aya::{
    Btf, BtfError, Ebpf, EbpfLoader, Endianness,
    programs::{FEntry, FExit, TracePoint},
};
use tracing::debug;

use super::{OBJECT, ProbeError};

/// Attachments taken out of their programs: each detaches when dropped.
pub type Links = Vec<Box<dyn Send>>;

/// Drops every link at once, one thread each. Detaching a program from a tracepoint
/// waits for an RCU grace period (about 80 ms here): one after the other, the 14
/// attachments took over a second, and SIGTERM must stop the agent within one.
pub fn detach_all(links: Links) {
    std::thread::scope(|s| {
        for link in links {
            s.spawn(move || drop(link));
        }
    });
}

/// How the probe hooks the syscalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// fexit on the syscalls' functions, and on `vfs_rename` for renames where the
    /// kernel allows it (x86_64, BTF, BPF trampolines): the hooked calls pay,
    /// nothing else.
    Fentry,
    /// Syscall tracepoints: any kernel with tracefs, but every syscall on the node
    /// takes the slow path.
    Tracepoint,
}

impl Variant {
    pub fn label(self) -> &'static str {
        match self {
            Variant::Fentry => "fentry",
            Variant::Tracepoint => "tracepoint",
        }
    }
}

/// `--probe`: a variant, the first that loads, or none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// fentry, else tracepoints, else inotify alone.
    #[default]
    Auto,
    /// fentry/fexit only (else inotify alone).
    Fentry,
    /// Syscall tracepoints only (else inotify alone).
    Tracepoint,
    /// No probe: inotify alone (as --no-ebpf).
    Off,
}

impl Choice {
    /// `RELOADSCOPE_PROBE` (auto, fentry, tracepoint, off), for tests and the lab that
    /// run on several kernels; `None` when unset or not one of those.
    pub fn from_env() -> Option<Choice> {
        use clap::ValueEnum;
        let v = std::env::var("RELOADSCOPE_PROBE").ok()?;
        Choice::from_str(&v, true).ok()
    }

    /// The variants to try, in order.
    pub fn variants(self) -> &'static [Variant] {
        match self {
            Choice::Auto => &[Variant::Fentry, Variant::Tracepoint],
            Choice::Fentry => &[Variant::Fentry],
            Choice::Tracepoint => &[Variant::Tracepoint],
            Choice::Off => &[],
        }
    }
}

/// Where the fentry variant hooks the rename syscalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameHook {
    /// `vfs_rename`, filtering on the destination's dentry name (5.12 and newer, with
    /// `bpf_task_pt_regs`, 5.15): unrelated renames read no user memory.
    VfsRename,
    /// The syscalls' own functions, filtering on the new path read from user memory.
    Syscalls,
}

impl RenameHook {
    pub fn label(self) -> &'static str {
        match self {
            RenameHook::VfsRename => "vfs_rename",
            RenameHook::Syscalls => "syscalls",
        }
    }
}

/// The object loaded for `variant`, with the kernel's BTF for fentry, and whether the
/// `vfs_rename` hook's offsets were found in that BTF (`kbtf`) and set.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub btf: Option<Btf>,
    pub vfs_rename: bool,
}

/// The kernel's BTF, read once: parsed for aya, and searched by `kbtf`.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The object, loaded for `variant`.
pub fn load(variant: Variant, ring_bytes: u32, log_level: &u8) -> Result<Loaded, ProbeError> {
    let (btf, offsets) = match variant {
        Variant::Fentry => {
            let raw = std::fs::read(KERNEL_BTF).map_err(|error| {
                ProbeError::Btf(BtfError::FileError {
                    path: KERNEL_BTF.into(),
                    error,
                })
            })?;
            let btf = Btf::parse(&raw, Endianness::default()).map_err(ProbeError::Btf)?;
            (Some(btf), rename_offsets(&raw))
        }
        Variant::Tracepoint => (None, None),
    };
    let mut loader = EbpfLoader::new();
    super::kernel_log::configure(&mut loader, log_level);
    if let Some(btf) = &btf {
        loader.btf(btf);
    }
    if let Some(o) = &offsets {
        loader.override_global("RENAME_NEW_DENTRY", &o.new_dentry, true);
        loader.override_global("DENTRY_NAME_LEN", &o.name_len, true);
        loader.override_global("DENTRY_NAME_PTR", &o.name_ptr, true);
    }
    let ebpf = (loader.map_max_entries("EVENTS", ring_bytes))
        .load(OBJECT)
        .map_err(ProbeError::Load)?;
    Ok(Loaded {
        ebpf,
        btf,
        vfs_rename: offsets.is_some(),
    })
}

/// The `vfs_rename` hook's offsets from the kernel's raw BTF, or None (logged).
fn rename_offsets(raw: &[u8]) -> Option<super::kbtf::RenameOffsets> {
    match super::kbtf::rename_offsets(raw) {
        Ok(Some(o)) => Some(o),
        Ok(None) => {
            debug!(
                "no vfs_rename(struct renamedata *) in the kernel's BTF: rename syscalls hooked"
            );
            None
        }
        Err(e) => {
            debug!("kernel BTF unreadable for vfs_rename's offsets ({e}): rename syscalls hooked");
            None
        }
    }
}

/// The swap programs of the loaded variant; their attachments go to `links`. For
/// fentry, where the renames are hooked (None for tracepoints): at `want` where the
/// kernel allows it, else on the syscalls.
pub fn swaps(
    loaded: &mut Loaded,
    want: RenameHook,
    links: &mut Links,
) -> Result<Option<RenameHook>, ProbeError> {
    let ebpf = &mut loaded.ebpf;
    match &loaded.btf {
        Some(btf) => {
            let mut renames = RenameHook::Syscalls;
            if loaded.vfs_rename && want == RenameHook::VfsRename {
                match fexit(ebpf, btf, "fexit_vfs_rename", "vfs_rename", links) {
                    Ok(()) => renames = RenameHook::VfsRename,
                    Err(e) => debug!("vfs_rename not hooked ({e}): rename syscalls hooked"),
                }
            }
            for sc in Syscall::ALL {
                let rename = !matches!(sc, Syscall::Symlink | Syscall::Symlinkat);
                if !(rename && renames == RenameHook::VfsRename) {
                    hook(ebpf, btf, sc.name(), false, links)?;
                }
            }
            Ok(Some(renames))
        }
        None => {
            for sc in Syscall::ALL {
                let name = format!("sys_enter_{}", sc.name());
                tracepoint(ebpf, &name, &[&name], links)?;
            }
            let exits: Vec<String> = (Syscall::ALL.iter())
                .map(|s| format!("sys_exit_{}", s.name()))
                .collect();
            let exits: Vec<&str> = exits.iter().map(String::as_str).collect();
            tracepoint(ebpf, "sys_exit_swap", &exits, links)?;
            Ok(None)
        }
    }
}

/// The `inotify_add_watch` / `inotify_rm_watch` programs of the same variant.
pub fn watch_calls(
    ebpf: &mut Ebpf,
    btf: Option<&Btf>,
    links: &mut Links,
) -> Result<(), ProbeError> {
    let calls = ["inotify_add_watch", "inotify_rm_watch"];
    match btf {
        Some(btf) => calls
            .iter()
            .try_for_each(|c| hook(ebpf, btf, c, true, links)),
        None => {
            for call in calls {
                let name = format!("sys_enter_{call}");
                tracepoint(ebpf, &name, &[&name], links)?;
            }
            let exits = ["sys_exit_inotify_add_watch", "sys_exit_inotify_rm_watch"];
            tracepoint(ebpf, "sys_exit_watch", &exits, links)
        }
    }
}

fn attach_err(what: &str) -> impl Fn(aya::programs::ProgramError) -> ProbeError + '_ {
    move |source| ProbeError::Attach {
        what: what.to_owned(),
        source,
    }
}

fn hook_err(what: &str) -> impl Fn(aya::programs::ProgramError) -> ProbeError + '_ {
    move |source| ProbeError::Hook {
        what: what.to_owned(),
        source,
    }
}

fn tracepoint(
    ebpf: &mut Ebpf,
    program: &str,
    tracepoints: &[&str],
    links: &mut Links,
) -> Result<(), ProbeError> {
    let prog: &mut TracePoint = (ebpf.program_mut(program))
        .ok_or(ProbeError::Missing("a tracepoint program"))?
        .try_into()
        .map_err(attach_err(program))?;
    prog.load().map_err(attach_err(program))?;
    for tp in tracepoints {
        let id = prog.attach("syscalls", tp).map_err(attach_err(tp))?;
        links.push(Box::new(prog.take_link(id).map_err(attach_err(tp))?));
    }
    Ok(())
}

/// A no-op fexit program where `renames` hooks the benchmark's `renameat`:
/// `floor_vfs_rename` or `floor_renameat`.
pub fn floor(
    ebpf: &mut Ebpf,
    btf: &Btf,
    renames: RenameHook,
    links: &mut Links,
) -> Result<(), ProbeError> {
    match renames {
        RenameHook::VfsRename => fexit(ebpf, btf, "floor_vfs_rename", "vfs_rename", links),
        RenameHook::Syscalls => fexit(ebpf, btf, "floor_renameat", "__x64_sys_renameat", links),
    }
}

/// `fexit_<call>` on `__x64_sys_<call>`, after `fentry_<call>` if `entry`.
fn hook(
    ebpf: &mut Ebpf,
    btf: &Btf,
    call: &str,
    entry: bool,
    links: &mut Links,
) -> Result<(), ProbeError> {
    let function = format!("__x64_sys_{call}");
    if entry {
        let name = format!("fentry_{call}");
        let prog: &mut FEntry = (ebpf.program_mut(&name))
            .ok_or(ProbeError::Missing("an fentry program"))?
            .try_into()
            .map_err(hook_err(&name))?;
        prog.load(&function, btf).map_err(hook_err(&function))?;
        let id = prog.attach().map_err(hook_err(&function))?;
        links.push(Box::new(prog.take_link(id).map_err(hook_err(&function))?));
    }
    fexit(ebpf, btf, &format!("fexit_{call}"), &function, links)
}

/// The fexit program `name` on the kernel function `function`.
fn fexit(
    ebpf: &mut Ebpf,
    btf: &Btf,
    name: &str,
    function: &str,
    links: &mut Links,
) -> Result<(), ProbeError> {
    let prog: &mut FExit = (ebpf.program_mut(name))
        .ok_or(ProbeError::Missing("an fexit program"))?
        .try_into()
        .map_err(hook_err(name))?;
    prog.load(function, btf).map_err(hook_err(function))?;
    let id = prog.attach().map_err(hook_err(function))?;
    links.push(Box::new(prog.take_link(id).map_err(hook_err(function))?));
    Ok(())
}
