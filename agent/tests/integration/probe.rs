//! The swap probe on its own: real programs on this kernel, real syscalls, the
//! kernel-side counters read back. Needs root (CAP_BPF, CAP_PERFMON, tracefs).

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt, fs::symlink},
    path::Path,
};

use reloadscope::probe::{Choice, DEFAULT_RING_BYTES, Probe, ProbeStats, RenameHook, Variant};

/// The probe, in the variant `RELOADSCOPE_PROBE` names (the kernel matrix runs these
/// tests once per variant), else the first that loads.
fn load() -> (Probe, aya::maps::RingBuf<aya::maps::MapData>) {
    let choice = Choice::from_env().unwrap_or_default();
    let ((probe, ring), _) = Probe::load_choice(choice, DEFAULT_RING_BYTES, false)
        .unwrap_or_else(|e| panic!("no probe of {choice:?} loads as root: {e:?}"));
    (probe, ring)
}

/// Runs `f` with the probe of [`load`], and for fentry once per rename hook (at
/// `vfs_rename` where this kernel allows it, then on the syscalls, as older kernels
/// get it), one probe at a time.
fn each_probe(mut f: impl FnMut(&Probe)) {
    let (probe, ring) = load();
    if probe.variant() != Variant::Fentry {
        return f(&probe);
    }
    drop((probe, ring));
    for hook in [RenameHook::VfsRename, RenameHook::Syscalls] {
        let (probe, _ring) = Probe::load_hooked(Variant::Fentry, DEFAULT_RING_BYTES, hook)
            .unwrap_or_else(|e| panic!("fentry with renames at {hook:?}: {e}"));
        eprintln!("renames hooked at {:?}", probe.rename_hook());
        f(&probe);
    }
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> i64 {
    // SAFETY: valid C strings.
    unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            c(from).as_ptr(),
            libc::AT_FDCWD,
            c(to).as_ptr(),
            flags,
        )
    }
}

/// Runs `f` and returns how the probe's counters moved meanwhile. Other processes on the
/// node may rename `..data` at the same time; tests run where nothing else does.
fn delta(probe: &Probe, f: impl FnOnce()) -> ProbeStats {
    let a = probe.stats();
    f();
    let b = probe.stats();
    ProbeStats {
        matched: b.matched - a.matched,
        emitted: b.emitted - a.emitted,
        lost: b.lost - a.lost,
        failed: b.failed - a.failed,
        inflight_full: b.inflight_full - a.inflight_full,
    }
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn unrelated_renames_and_symlinks_send_nothing_to_user_space() {
    each_probe(|probe| {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, "x").unwrap();
        // Names close to the filtered ones must not pass either, of the same lengths
        // too (the vfs_rename hook compares lengths first).
        let near = [
            "..data2",
            "x..data",
            "..data_tm",
            "data",
            "..dat",
            "..datA",
            "..data_tmQ",
        ];
        let d = delta(probe, || {
            let mut at = a.clone();
            for i in 0..10_000 {
                let name = near[i % near.len()];
                let to = if i % 2 == 0 {
                    dir.path().join(name)
                } else {
                    a.clone()
                };
                fs::rename(&at, &to).unwrap();
                at = to;
                let link = dir.path().join(name);
                if !link.exists() {
                    symlink("target", &link).unwrap();
                    fs::remove_file(&link).unwrap();
                }
            }
        });
        assert_eq!(
            d,
            ProbeStats::default(),
            "unrelated calls reached the probe's filter"
        );
        // The same probe does see a swap: the counters above were live.
        let data_tmp = dir.path().join("..data_tmp");
        let d = delta(probe, || {
            symlink("..2026_01_01_00_00_00.1", &data_tmp).unwrap();
            fs::rename(&data_tmp, dir.path().join("..data")).unwrap();
        });
        assert_eq!((d.matched, d.emitted, d.failed), (2, 2, 0));
    });
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn failed_rename_over_data_is_counted_as_failed_not_emitted() {
    each_probe(|probe| {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, data) = (dir.path().join("..data_tmp"), dir.path().join("..data"));
        symlink("..1", &data).unwrap();
        symlink("..2", &tmp).unwrap();
        let d = delta(probe, || {
            // `mv -T` tries RENAME_NOREPLACE first; over an existing ..data it fails,
            // in the syscall's own checks, before `vfs_rename`, so that hook sees no
            // call at all.
            assert_eq!(renameat2(&tmp, &data, libc::RENAME_NOREPLACE), -1);
        });
        let seen = u64::from(probe.rename_hook() != Some(RenameHook::VfsRename));
        assert_eq!((d.matched, d.emitted, d.failed), (seen, 0, seen));
        // A directory over a non-empty one fails in the filesystem, which every
        // hook sees.
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let data_dir = dir.path().join("sub").join("..data");
        fs::create_dir_all(&data_dir).unwrap();
        fs::write(data_dir.join("key"), "v").unwrap();
        let d = delta(probe, || assert_eq!(renameat2(&empty, &data_dir, 0), -1));
        assert_eq!((d.matched, d.emitted, d.failed), (1, 0, 1));
        let d = delta(probe, || assert_eq!(renameat2(&tmp, &data, 0), 0));
        assert_eq!((d.matched, d.emitted, d.failed), (1, 1, 0));
        assert_eq!(fs::read_link(&data).unwrap(), Path::new("..2"));
    });
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn auto_takes_fentry_where_the_kernel_allows_it_else_tracepoints() {
    let fentry = Probe::load_variant(Variant::Fentry, DEFAULT_RING_BYTES).map(drop);
    // The kernel matrix's boot with BTF hidden: fentry cannot load there.
    if std::env::var_os("RELOADSCOPE_VM_BTF").is_some_and(|v| v == "hidden") {
        assert!(fentry.is_err(), "fentry loaded without BTF");
    }
    let ((probe, _ring), tried) =
        Probe::load_choice(Choice::Auto, DEFAULT_RING_BYTES, false).unwrap();
    match fentry {
        Ok(()) => assert_eq!((probe.variant(), tried.len()), (Variant::Fentry, 0)),
        Err(e) => {
            assert_eq!(probe.variant(), Variant::Tracepoint, "fentry refused: {e}");
            assert!(matches!(tried[..], [(Variant::Fentry, _)]), "{tried:?}");
        }
    }
    let off = Probe::load_choice(Choice::Off, DEFAULT_RING_BYTES, false);
    assert!(
        matches!(off, Err(tried) if tried.is_empty()),
        "off loads nothing"
    );
}
