//! The three loops, how many calls each makes per side, and the interleaved A/B
//! rounds of one probe variant (A/B/F for fentry: F is its floor, a no-op program).

use std::{
    ffi::CString,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use reloadscope::probe::{DEFAULT_RING_BYTES, Floor, Probe, RenameHook, Variant};

use super::Args;
use crate::common::{
    figures::median,
    machine::{fs_type, own_bpf_progs, tracepoint_prog_holders},
    syscall_loops::{cstr, getppid_loop, loop_dir, rename_loop},
};

/// Each side of a round times each loop in this many chunks of calls, and takes the
/// fastest: what other work on a shared machine (the scheduler, the hypervisor) adds
/// to a chunk only ever slows it, so the fastest chunk is the least disturbed one.
pub const CHUNKS: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loop {
    Getppid,
    OpenClose,
    Rename,
}

impl Loop {
    pub const ALL: [Loop; 3] = [Loop::Getppid, Loop::OpenClose, Loop::Rename];

    pub fn name(self) -> &'static str {
        match self {
            Loop::Getppid => "getppid",
            Loop::OpenClose => "open+close",
            Loop::Rename => "rename",
        }
    }

    /// Issue 7's goals, for the fentry variant: at most 1% on calls it does not hook,
    /// 3% on the renames it hooks and filters out. The tracepoint variant has none.
    pub fn goal(self, variant: Variant) -> Option<f64> {
        match (variant, self) {
            (Variant::Fentry, Loop::Getppid | Loop::OpenClose) => Some(1.01),
            (Variant::Fentry, Loop::Rename) => Some(1.03),
            (Variant::Tracepoint, _) => None,
        }
    }
}

/// The loops' files, in a temporary directory on tmpfs (`/dev/shm`, else `$TMPDIR`).
pub struct Files {
    /// Removed when dropped.
    _dir: tempfile::TempDir,
    pub fs: &'static str,
    /// Opened and closed by the open+close loop.
    read: CString,
    /// Renamed back and forth by the rename loop.
    from: CString,
    to: CString,
}

impl Files {
    pub fn new() -> anyhow::Result<Files> {
        let dir = loop_dir("reloadscope-overhead-")?;
        let (read, a, b) = (
            dir.path().join("key"),
            dir.path().join("a"),
            dir.path().join("b"),
        );
        std::fs::write(&read, b"value\n").context("create the file to open")?;
        std::fs::write(&a, b"x").context("create the file to rename")?;
        Ok(Files {
            fs: fs_type(dir.path()),
            read: cstr(&read)?,
            from: cstr(&a)?,
            to: cstr(&b)?,
            _dir: dir,
        })
    }

    /// ns per call of `l` over `calls` calls: `bench detect`'s getppid and rename
    /// loops, and [`open_close_loop`].
    fn time(&self, l: Loop, calls: u64) -> anyhow::Result<f64> {
        match l {
            Loop::Getppid => Ok(getppid_loop(calls)),
            Loop::OpenClose => open_close_loop(&self.read, calls),
            Loop::Rename => rename_loop(&self.from, &self.to, calls),
        }
    }

    /// ns per call of `l` on one side of a round: the fastest of [`CHUNKS`] chunks of
    /// `calls` calls.
    fn side(&self, l: Loop, calls: u64) -> anyhow::Result<f64> {
        let mut chunks = Vec::with_capacity(CHUNKS);
        for _ in 0..CHUNKS {
            chunks.push(self.time(l, calls)?);
        }
        Ok(chunks.iter().copied().fold(f64::INFINITY, f64::min))
    }
}

/// ns per open+close of `path` over `n` calls. In this process, unlike `bench
/// reload`'s open loop (a child process, so that the agent running inside that
/// benchmark sees its opens as another process's): here nothing watches the opens,
/// and the side is timed in chunks.
fn open_close_loop(path: &CString, n: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: a valid NUL-terminated path.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("open");
        }
        // SAFETY: `fd` was just opened here and is closed once.
        unsafe { libc::close(fd) };
    }
    Ok(start.elapsed().as_nanos() as f64 / n as f64)
}

/// Calls per chunk of each loop ([`CHUNKS`] chunks per side of a round).
pub struct Calls([u64; 3]);

impl Calls {
    pub fn chunk(&self, l: Loop) -> u64 {
        self.0[l as usize]
    }

    pub fn per_side(&self, l: Loop) -> u64 {
        self.chunk(l) * CHUNKS as u64
    }
}

/// Times each loop briefly without any probe and sets its calls so that one side of
/// a round takes about `side`: bounded on a fast host and under emulation alike.
pub fn calibrate(files: &Files, side: Duration) -> anyhow::Result<Calls> {
    let mut calls = [0; 3];
    for l in Loop::ALL {
        let first = match l {
            Loop::Getppid => 20_000,
            Loop::OpenClose | Loop::Rename => 2_000,
        };
        // The first warms caches and the CPU's clock; the median of five more.
        files.time(l, first)?;
        let mut timings = Vec::new();
        for _ in 0..5 {
            timings.push(files.time(l, first)?);
        }
        let ns = median(&timings);
        let per_chunk = side.as_nanos() as f64 / CHUNKS as f64;
        let n = round2(per_chunk / ns.max(1.0)).max(100);
        // The rename loop goes a→b then b→a.
        calls[l as usize] = n + n % 2;
    }
    Ok(Calls(calls))
}

/// `x` to two significant digits.
fn round2(x: f64) -> u64 {
    if x < 100.0 {
        return x.ceil() as u64;
    }
    let unit = 10f64.powi(x.log10().floor() as i32 - 1);
    ((x / unit).round() * unit) as u64
}

/// One variant's figures: per loop, the ns per call of each round on each side (its
/// fastest chunk).
pub struct Figures {
    pub variant: Variant,
    /// Where fentry hooked the renames.
    pub renames: Option<RenameHook>,
    /// `[loop][round]`.
    pub a: [Vec<f64>; 3],
    pub b: [Vec<f64>; 3],
    /// `Probe::load_variant` (load + attach) and the probe's drop (detach), per round.
    pub loads: Vec<Duration>,
    pub drops: Vec<Duration>,
    /// Other processes holding tracepoint BPF programs, before or after the rounds.
    pub holders: Vec<String>,
    /// fentry only: the rename loop's ns per call on a third side of each round, with
    /// nothing but a no-op fexit program on its call ([`Floor`]); empty otherwise.
    pub floor: Vec<f64>,
}

impl Figures {
    pub fn label(&self) -> String {
        label(self.variant, self.renames)
    }
}

/// The variant, with where fentry hooks the renames: `fentry (vfs_rename)`.
fn label(variant: Variant, renames: Option<RenameHook>) -> String {
    match renames {
        Some(hook) => format!("{} ({})", variant.label(), hook.label()),
        None => variant.label().to_owned(),
    }
}

/// The sides of a round.
#[derive(Clone, Copy)]
enum Side {
    NoProbe,
    Probe,
    Floor,
}

pub enum Outcome {
    Measured(Box<Figures>),
    /// The variant did not load on this kernel: why.
    NotAvailable(String),
}

fn measure(files: &Files, calls: &Calls, into: &mut [Vec<f64>; 3]) -> anyhow::Result<()> {
    for l in Loop::ALL {
        into[l as usize].push(files.side(l, calls.chunk(l))?);
    }
    Ok(())
}

/// The A/B rounds of `variant`: A B, then B A, alternating, so that a drift over the
/// run weighs on both sides alike. Each B side loads and attaches the probe anew and
/// drops it after; its ring buffer is held, not read (no loop makes a `..data` swap,
/// so nothing reaches it). For fentry each round has a third side, F, which times the
/// rename loop with only a no-op fexit program on its call (A B F, then F B A).
pub fn run(
    variant: Variant,
    want: RenameHook,
    args: &Args,
    files: &Files,
    calls: &Calls,
) -> anyhow::Result<Outcome> {
    let t = Instant::now();
    let renames = match Probe::load_hooked(variant, DEFAULT_RING_BYTES, want) {
        Ok((probe, _)) => probe.rename_hook(),
        Err(e) => {
            let label = variant.label();
            // One line: the loader's message may hold the verifier's, over many.
            let reason = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("[overhead] {label}: not available: {reason}");
            return Ok(Outcome::NotAvailable(reason));
        }
    };
    let label = label(variant, renames);
    eprintln!(
        "[overhead] {label}: loads and attaches ({:.1} ms); {} rounds",
        t.elapsed().as_secs_f64() * 1e3,
        args.rounds
    );
    let mut holders = tracepoint_prog_holders();
    let mut f = Figures {
        variant,
        renames,
        a: Default::default(),
        b: Default::default(),
        loads: Vec::new(),
        drops: Vec::new(),
        holders: Vec::new(),
        floor: Vec::new(),
    };
    let mut sides = vec![Side::NoProbe, Side::Probe];
    if variant == Variant::Fentry {
        sides.push(Side::Floor);
    }
    for round in 0..args.rounds {
        let mut order = sides.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for side in order {
            match side {
                Side::NoProbe => {
                    let held = own_bpf_progs();
                    if held > 0 {
                        bail!(
                            "this process still holds {held} BPF program(s) on the no-probe side"
                        );
                    }
                    measure(files, calls, &mut f.a)?;
                }
                Side::Probe => {
                    let t = Instant::now();
                    let (probe, ring) = Probe::load_hooked(variant, DEFAULT_RING_BYTES, want)
                        .context("load the probe")?;
                    f.loads.push(t.elapsed());
                    let measured = measure(files, calls, &mut f.b);
                    let t = Instant::now();
                    drop(ring);
                    drop(probe);
                    f.drops.push(t.elapsed());
                    measured?;
                }
                Side::Floor => {
                    let floor = Floor::attach(renames.unwrap_or(RenameHook::Syscalls))
                        .context("attach the no-op fexit program")?;
                    let measured = files.side(Loop::Rename, calls.chunk(Loop::Rename));
                    drop(floor);
                    f.floor.push(measured?);
                }
            }
        }
        let mut last: Vec<String> = Loop::ALL
            .iter()
            .map(|&l| {
                let (a, b) = (f.a[l as usize][round], f.b[l as usize][round]);
                format!("{} {:.0}/{:.0} ns {:.3}x", l.name(), a, b, b / a)
            })
            .collect();
        if let Some(floor) = f.floor.get(round) {
            let a = f.a[Loop::Rename as usize][round];
            last.push(format!(
                "rename, no-op program {floor:.0} ns {:.3}x",
                floor / a
            ));
        }
        eprintln!(
            "[overhead] {label} round {}/{} (no probe/probe): {}",
            round + 1,
            args.rounds,
            last.join(", ")
        );
    }
    holders.extend(tracepoint_prog_holders());
    holders.sort();
    holders.dedup();
    f.holders = holders;
    Ok(Outcome::Measured(Box::new(f)))
}
