//! Measure 3: what the attached probe adds to system calls that are not volume updates.
//! A `renameat` pair loop on a tmpfs file (the probe's own syscalls, filtered out in
//! the kernel because the name is not `..data`) and a `getppid` loop (any syscall
//! tracepoint puts every task on the syscall slow path, docs/design.md 7); and an
//! `inotify_add_watch` + `inotify_rm_watch` loop, the calls the watch-call programs
//! trace. Each round measures them on three sides: no probe (baseline), the probe as
//! `Probe::load` attaches it, and the probe with `Probe::watch_calls` attached too.

use std::{fmt::Write as _, time::Instant};

use anyhow::Context as _;
use reloadscope::probe::{DEFAULT_RING_BYTES, Probe};

use super::watch_reader::{ReaderTotals, WatchReader};
use crate::common::{
    figures::{fmt_delta_ns, fmt_ns, median, min_max},
    machine::{fs_type, own_bpf_progs, tracepoint_prog_holders},
    syscall_loops::{Inotify, cstr, getppid_loop, loop_dir, rename_loop},
};

pub struct Params {
    pub rounds: usize,
    /// Renames per round and side (an even number: a→b then b→a).
    pub renames: u64,
    pub getppids: u64,
    /// `inotify_add_watch` + `inotify_rm_watch` pairs per round and side.
    pub watch_pairs: u64,
}

/// The three sides of a round, in their A B C order.
#[derive(Clone, Copy)]
enum Side {
    NoProbe = 0,
    Probe = 1,
    Watch = 2,
}

const ORDER: [Side; 3] = [Side::NoProbe, Side::Probe, Side::Watch];

/// Per-round ns per call (per add+rm pair for `watch`) of one side.
#[derive(Default)]
struct Samples {
    rename: Vec<f64>,
    getppid: Vec<f64>,
    watch: Vec<f64>,
}

/// One loop's figures in [`Samples`].
type Loop = fn(&Samples) -> &Vec<f64>;

/// What attaching cost, and what the watch ring's reader saw, over all rounds.
#[derive(Default)]
struct Attach {
    /// `Probe::load` (load + attach), ns.
    loads: Vec<f64>,
    /// `probe.watch_calls()`, ns.
    watch_calls: Vec<f64>,
    /// Records of this process's watch calls made and read, summed over the rounds.
    made: u64,
    reader: Vec<ReaderTotals>,
}

struct Loops<'a> {
    p: &'a Params,
    from: std::ffi::CString,
    to: std::ffi::CString,
    inotify: Inotify,
}

impl Loops<'_> {
    fn measure(&self, into: &mut Samples) -> anyhow::Result<()> {
        into.rename
            .push(rename_loop(&self.from, &self.to, self.p.renames)?);
        into.getppid.push(getppid_loop(self.p.getppids));
        into.watch.push(self.inotify.pairs(self.p.watch_pairs)?);
        Ok(())
    }

    /// Loads what `side` attaches, measures the loops, and detaches it.
    fn side(&self, side: Side, into: &mut Samples, attach: &mut Attach) -> anyhow::Result<()> {
        if let Side::NoProbe = side {
            return self.measure(into);
        }
        let t = Instant::now();
        // The swap ring is held, not read: these loops make no `..data` swap, so
        // nothing reaches it.
        let (mut probe, ring) = Probe::load(DEFAULT_RING_BYTES).context("load the probe")?;
        attach.loads.push(t.elapsed().as_nanos() as f64);
        if let Side::Probe = side {
            self.measure(into)?;
        } else {
            let t = Instant::now();
            let calls = probe.watch_calls().context("attach the watch calls")?;
            attach.watch_calls.push(t.elapsed().as_nanos() as f64);
            // The watch ring is read, as the agent reads it: the inotify loop fills it.
            let reader = WatchReader::start(calls);
            let measured = self.measure(into);
            let want = 2 * self.p.watch_pairs;
            reader.wait_for(want);
            attach.made += want;
            attach.reader.push(reader.stop());
            measured?;
        }
        drop(ring);
        drop(probe);
        Ok(())
    }
}

pub fn run(p: &Params) -> anyhow::Result<String> {
    let dir = loop_dir("reloadscope-bench-")?;
    let (a, b, watched) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("watched"),
    );
    std::fs::write(&a, b"x").context("create the rename file")?;
    std::fs::create_dir(&watched).context("create the watched dir")?;
    let loops = Loops {
        p,
        from: cstr(&a)?,
        to: cstr(&b)?,
        inotify: Inotify::new(&watched)?,
    };
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
    rename_loop(&loops.from, &loops.to, (p.renames / 10).max(2))?;
    getppid_loop((p.getppids / 10).max(1));
    loops.inotify.pairs((p.watch_pairs / 10).max(1))?;

    let mut samples: [Samples; 3] = Default::default();
    let mut attach = Attach::default();
    // Dirty pages of the earlier measures written back now, not during the rounds.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    for round in 0..p.rounds {
        // A B C, then C B A: a drift over the run weighs on all sides alike.
        let mut order = ORDER;
        if round % 2 == 1 {
            order.reverse();
        }
        for side in order {
            loops.side(side, &mut samples[side as usize], &mut attach)?;
        }
        let last = |f: Loop| {
            let v: Vec<String> = samples.iter().map(|s| fmt_ns(f(s)[round])).collect();
            v.join(" / ")
        };
        eprintln!(
            "[detect] overhead round {}/{} (no probe / probe / + watch calls): rename {}, \
             getppid {}, inotify add+rm {}",
            round + 1,
            p.rounds,
            last(|s| &s.rename),
            last(|s| &s.getppid),
            last(|s| &s.watch),
        );
    }
    let holders_after = tracepoint_prog_holders();
    drop(loops);
    drop(dir);

    let mut s = report(p, fs, &samples, &attach);
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
    s.push_str(&crate::common::holders_note(
        &holders,
        "if attached to syscall tracepoints, the baseline already ran on the syscall slow \
         path and the added cost is understated; if they trace the inotify calls (another \
         reloadscope agent does), the inotify loop pays for their programs and readers on \
         all three sides.",
    ));
    Ok(s)
}

/// `median (min-max)` of per-round figures, with `fmt` for each.
fn spread(v: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let (lo, hi) = min_max(v);
    format!("{} ({}-{})", fmt(median(v)), fmt(lo), fmt(hi))
}

/// Per-round ratios `num[i] / den[i]` (the sides of a round run back to back), as
/// `median (min-max)`.
fn ratios(num: &[f64], den: &[f64]) -> String {
    let r: Vec<f64> = num.iter().zip(den).map(|(n, d)| n / d).collect();
    spread(&r, |x| format!("{x:.2}x"))
}

fn report(p: &Params, fs: &str, samples: &[Samples; 3], attach: &Attach) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Cost added to unrelated syscalls by the attached probe, and by its watch-call programs\n\n\
         {} rounds, each measuring the loops on three sides: **A** no probe (baseline); \
         **B** `Probe::load(DEFAULT_RING_BYTES)` attached (the swap probe's syscall \
         tracepoints); **C** the same, then `probe.watch_calls()` (enter programs on \
         `inotify_add_watch` and `inotify_rm_watch`, one exit program on both). Order A B C, \
         then C B A, alternating; each side loads the probe anew and drops it after. The swap \
         ring buffer is held, not read (no loop makes a `..data` swap, so nothing reaches it); \
         on side C a thread drains the watch ring buffer throughout, as the agent reads it \
         (the inotify loop fills it). The inotify loop adds a watch on a {fs} directory and \
         removes it, from one inotify fd, whose `IN_IGNORED` events are read every 256 pairs, \
         outside the timed spans. Figures: median of the per-round ns per call (per add+rm \
         pair for the inotify loop), (min-max over rounds). Probe load + attach took {} \
         (median), `watch_calls()` {}.\n",
        p.rounds,
        fmt_ns(median(&attach.loads)),
        fmt_ns(median(&attach.watch_calls)),
    );
    let rows: [(String, String, Loop); 3] = [
        (
            format!("`renameat` a↔b, {fs} file"),
            p.renames.to_string(),
            |s| &s.rename,
        ),
        ("`getppid`".into(), p.getppids.to_string(), |s| &s.getppid),
        (
            "`inotify_add_watch` + `inotify_rm_watch` (per pair)".into(),
            format!("{} pairs", p.watch_pairs),
            |s| &s.watch,
        ),
    ];
    let _ = writeln!(
        s,
        "| loop | calls per round | A: no probe (baseline) | B: probe | C: probe + watch calls | B − A | C − B |\n\
         |---|---|---|---|---|---|---|"
    );
    for (what, n, get) in &rows {
        let [a, b, c] = [0, 1, 2].map(|i| get(&samples[i]).as_slice());
        let _ = writeln!(
            s,
            "| {what} | {n} | {} | {} | {} | {} | {} |",
            spread(a, fmt_ns),
            spread(b, fmt_ns),
            spread(c, fmt_ns),
            fmt_delta_ns(median(b) - median(a)),
            fmt_delta_ns(median(c) - median(b)),
        );
    }
    let _ = writeln!(
        s,
        "\nRatios: median of the per-round ratios (min-max over rounds).\n\n\
         | loop | B/A: probe | C/A: probe + watch calls | C/B: the watch calls' own cost |\n\
         |---|---|---|---|"
    );
    for (what, _, get) in &rows {
        let [a, b, c] = [0, 1, 2].map(|i| get(&samples[i]).as_slice());
        let _ = writeln!(
            s,
            "| {what} | {} | {} | {} |",
            ratios(b, a),
            ratios(c, a),
            ratios(c, b)
        );
    }
    let sum = |f: fn(&ReaderTotals) -> u64| attach.reader.iter().map(f).sum::<u64>();
    let (read, others, undecodable) = (sum(|r| r.own), sum(|r| r.others), sum(|r| r.undecodable));
    let cpu: f64 = attach.reader.iter().map(|r| r.cpu.as_nanos() as f64).sum();
    let pairs = attach.made / 2;
    let _ = writeln!(
        s,
        "\nWatch ring buffer on side C, over all rounds: {read} records of this process's calls \
         read of {} made, **{} lost** (ring full); the reader thread used {} of CPU per \
         add+rm pair ({} in all); {others} records of other processes' calls{}.",
        attach.made,
        attach.made.saturating_sub(read),
        fmt_ns(cpu / pairs.max(1) as f64),
        fmt_ns(cpu),
        if undecodable > 0 {
            format!(", {undecodable} undecodable")
        } else {
            String::new()
        },
    );
    s
}
