//! Measure 3: what the attached probe adds to system calls that are not volume updates.
//! A `renameat` pair loop on a tmpfs file (the probe's own syscalls, filtered out in
//! the kernel because the name is not `..data`) and a `getppid` loop (any syscall
//! tracepoint puts every task on the syscall slow path, DOMAIN.md 7). Rounds
//! alternate without probe (baseline) and with it loaded and attached.

use std::{
    ffi::CString,
    fmt::Write as _,
    hint::black_box,
    os::unix::ffi::OsStrExt,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use reloadscope::probe::{DEFAULT_RING_BYTES, Probe};

use crate::util::{
    fmt_delta_ns, fmt_ns, fs_type, median, own_bpf_progs, ratio, tracepoint_prog_holders,
};

pub struct Params {
    pub rounds: usize,
    /// Renames per round and side (an even number: a→b then b→a).
    pub renames: u64,
    pub getppids: u64,
}

fn cstr(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path with a NUL byte")
}

/// ns per rename over `n` renames, alternating a→b and b→a.
fn rename_loop(a: &CString, b: &CString, n: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    for _ in 0..n / 2 {
        for (from, to) in [(a, b), (b, a)] {
            // SAFETY: two valid NUL-terminated paths.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_renameat,
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("renameat");
            }
        }
    }
    Ok(start.elapsed().as_nanos() as f64 / (n / 2 * 2) as f64)
}

/// ns per getppid over `n` calls.
fn getppid_loop(n: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: getppid takes no arguments and cannot fail.
        black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

struct Side {
    rename: Vec<f64>,
    getppid: Vec<f64>,
}

pub fn run(p: &Params) -> anyhow::Result<String> {
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() && fs_type(shm) == "tmpfs" {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix("reloadscope-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("temp dir in {parent:?}"))?;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, b"x").context("create the rename file")?;
    let (ca, cb) = (cstr(&a)?, cstr(&b)?);
    let fs = fs_type(dir.path());

    let own_before = own_bpf_progs();
    let holders_before = tracepoint_prog_holders();
    if !holders_before.is_empty() {
        eprintln!(
            "[detect] overhead: WARNING other processes hold tracepoint BPF programs: {}; \
             the baseline is not probe-free",
            holders_before.join(", ")
        );
    }
    // Warm caches and the CPU's frequency before the first round.
    rename_loop(&ca, &cb, (p.renames / 10).max(2))?;
    getppid_loop((p.getppids / 10).max(1));

    let mut off = Side {
        rename: Vec::new(),
        getppid: Vec::new(),
    };
    let mut on = Side {
        rename: Vec::new(),
        getppid: Vec::new(),
    };
    let mut loads = Vec::new();
    // Dirty pages of the earlier measures written back now, not during the rounds.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let measure = |side: &mut Side| -> anyhow::Result<()> {
        side.rename.push(rename_loop(&ca, &cb, p.renames)?);
        side.getppid.push(getppid_loop(p.getppids));
        Ok(())
    };
    for round in 0..p.rounds {
        // A B, then B A: a drift over the run weighs on both sides alike.
        let probe_first = round % 2 == 1;
        if !probe_first {
            measure(&mut off)?;
        }
        let t = Instant::now();
        let (probe, ring) = Probe::load(DEFAULT_RING_BYTES).context("load the probe")?;
        loads.push(t.elapsed());
        measure(&mut on)?;
        drop(ring);
        drop(probe);
        if probe_first {
            measure(&mut off)?;
        }
        eprintln!(
            "[detect] overhead round {}/{}: rename {} -> {}, getppid {} -> {}",
            round + 1,
            p.rounds,
            fmt_ns(off.rename[round]),
            fmt_ns(on.rename[round]),
            fmt_ns(off.getppid[round]),
            fmt_ns(on.getppid[round]),
        );
    }
    let holders_after = tracepoint_prog_holders();
    drop(dir);

    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Cost added to unrelated syscalls by the attached probe\n\n\
         {} rounds, each: the loops without the probe (baseline) and with \
         `Probe::load(DEFAULT_RING_BYTES)` attached (all its syscall tracepoints), in the order \
         A B, B A, ...; medians of the per-round ns per call, spread = min-max over rounds. Probe load + attach took {} \
         (median).\n",
        p.rounds,
        fmt_ns(median(
            &loads
                .iter()
                .map(|d: &Duration| d.as_nanos() as f64)
                .collect::<Vec<_>>()
        )),
    );
    let _ = writeln!(
        s,
        "| loop | calls per round | no probe (baseline) | probe attached | added | ratio |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{} ({}-{})", fmt_ns(median(v)), fmt_ns(lo), fmt_ns(hi))
    };
    for (what, n, a, b) in [
        (
            format!("`renameat` a↔b, {fs} file"),
            p.renames,
            &off.rename,
            &on.rename,
        ),
        (
            "`getppid`".to_owned(),
            p.getppids,
            &off.getppid,
            &on.getppid,
        ),
    ] {
        let (ma, mb) = (median(a), median(b));
        let _ = writeln!(
            s,
            "| {what} | {n} | {} | {} | {} | {} |",
            spread(a),
            spread(b),
            fmt_delta_ns(mb - ma),
            ratio(mb, ma)
        );
    }
    if own_before > 0 {
        let _ = writeln!(
            s,
            "\n**Caveat:** this process held {own_before} BPF program(s) from the earlier \
             measures before the first round: the baseline was not probe-free."
        );
    }
    let mut holders = holders_before;
    holders.extend(holders_after);
    holders.sort();
    holders.dedup();
    s.push_str(&crate::common::holders_note(&holders, "if attached to syscall tracepoints, the baseline already ran on the syscall slow path and the added cost is understated."));
    Ok(s)
}
