//! What the benchmark prints: a Markdown table, or with `--lines` one
//! `RELOADSCOPE-OVERHEAD <json>` line per fact, printed as soon as it is known (in a
//! VM, what was measured before a timeout still reaches xtask over the console).
//!
//! The lines, by `kind`:
//! - `machine`: `kernel`, `nproc`, `cpu`, `loadavg`, `holders` (other processes
//!   holding tracepoint BPF programs), `rounds`, `side_ms`, `fs`, `nice`;
//! - `calls`: calls per side of a round, by loop name, and `chunks`: the side's
//!   timings, whose fastest is its figure;
//! - `variant`: `variant`, and `available` with `load_ms` / `drop_ms` (medians) and
//!   `holders`, or `reason` when it does not load, or `failed`;
//! - `loop`: `variant`, `loop`, `calls` (per side), `rounds`, `a_ns`, `b_ns` (medians
//!   of the rounds), `ratio` (median of the per-round B/A), `ratio_min`, `ratio_max`,
//!   `ci_lo`, `ci_hi` (95% confidence interval of that median), `goal` (or null),
//!   `met` (`ratio` at most `goal`; or null); for fentry two more on `rename`, whose
//!   `floor_of` names the variant: `<variant>, no-op program` (B is a no-op fexit
//!   program on the loop's call alone: the trampoline, the floor under any fentry or
//!   fexit program) and `<variant>, over no-op` (A is that no-op program, B the
//!   probe: the probe's programs' own work);
//! - `done`: `seconds`.

use std::{fmt::Write as _, time::Duration};

use reloadscope::probe::Variant;
use serde_json::{Value, json};

use super::{
    Args,
    rounds::{CHUNKS, Calls, Figures, Loop},
};
use crate::common::{
    figures::{fmt_ns, median},
    machine::{cpu_model, kernel_release, loadavg, nproc, tracepoint_prog_holders},
};

pub const PREFIX: &str = "RELOADSCOPE-OVERHEAD ";

pub struct Report {
    lines: bool,
    head: String,
    rows: String,
    notes: String,
}

fn ms(d: &[Duration]) -> f64 {
    let v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    median(&v)
}

fn min_max(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// The 95% confidence interval of the median of `v`, from its order statistics
/// (distribution-free; the normal approximation of the binomial ranks). With fewer
/// than 6 values, their range.
fn median_ci(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n < 6 {
        return min_max(v);
    }
    let half = 1.96 * (n as f64).sqrt() / 2.0;
    // 1-based ranks j and k: j = floor(n/2 - half), k = ceil(1 + n/2 + half).
    let j = ((n as f64 / 2.0 - half).floor() as usize).max(1);
    let k = ((1.0 + n as f64 / 2.0 + half).ceil() as usize).min(n);
    (s[j - 1], s[k - 1])
}

impl Report {
    pub fn new(lines: bool) -> Self {
        Report {
            lines,
            head: String::new(),
            rows: String::new(),
            notes: String::new(),
        }
    }

    fn emit(&self, v: Value) {
        if self.lines {
            println!("{PREFIX}{v}");
        }
    }

    pub fn machine(&mut self, args: &Args, fs: &str, nice: i32) {
        let holders = tracepoint_prog_holders();
        let cpu = cpu_model().unwrap_or_else(|| "unknown".into());
        self.emit(json!({
            "kind": "machine",
            "kernel": kernel_release(),
            "nproc": nproc(),
            "cpu": cpu,
            "loadavg": loadavg(),
            "holders": holders,
            "rounds": args.rounds,
            "side_ms": args.side.as_millis() as u64,
            "fs": fs,
            "nice": nice,
        }));
        let holders = if holders.is_empty() {
            "none".to_owned()
        } else {
            holders.join(", ")
        };
        let _ = writeln!(
            self.head,
            "## `cargo bench -p reloadscope --bench bench -- overhead`\n\n\
             - kernel (`uname -r`): {}\n- nproc: {}\n- CPU: {cpu}\n- load average at start: {}\n\
             - other processes holding tracepoint BPF programs at start: {holders}\n\n\
             {} A/B rounds (A B, then B A, alternating): **A** no probe, **B** the probe \
             variant loaded and attached in this process (`Probe::load_variant`), dropped \
             after the side. Each loop runs about {} ms per side, at nice {nice}, timed in \
             {CHUNKS} chunks whose fastest is the side's figure; figures are medians over \
             the rounds, the ratio the median of the per-round B/A (with the 95% confidence \
             interval of that median). fentry rounds have a third side for the rename \
             loop, a no-op fexit program alone on its call: the row `no-op program` is \
             that side against A (the trampoline's cost, the floor under any fentry or \
             fexit program), `over no-op` the probe against it (the programs' own work).",
            kernel_release(),
            nproc(),
            loadavg(),
            args.rounds,
            args.side.as_millis(),
        );
    }

    pub fn calls(&mut self, calls: &Calls) {
        let mut v = serde_json::Map::new();
        v.insert("kind".into(), "calls".into());
        for l in Loop::ALL {
            v.insert(l.name().into(), calls.per_side(l).into());
        }
        v.insert("chunks".into(), CHUNKS.into());
        self.emit(Value::Object(v));
    }

    pub fn figures(&mut self, f: &Figures, calls: &Calls) {
        let label = f.label();
        let label = label.as_str();
        self.emit(json!({
            "kind": "variant",
            "variant": label,
            "available": true,
            "load_ms": ms(&f.loads),
            "drop_ms": ms(&f.drops),
            "holders": f.holders,
        }));
        for l in Loop::ALL {
            let (a, b) = (&f.a[l as usize], &f.b[l as usize]);
            self.ratio_row(label, None, l, calls, a, b, l.goal(f.variant));
        }
        if !f.floor.is_empty() {
            let (l, a, b) = (
                Loop::Rename,
                &f.a[Loop::Rename as usize],
                &f.b[Loop::Rename as usize],
            );
            let no_op = format!("{label}, no-op program");
            self.ratio_row(&no_op, Some(label), l, calls, a, &f.floor, None);
            let over = format!("{label}, over no-op");
            self.ratio_row(&over, Some(label), l, calls, &f.floor, b, None);
        }
        let _ = writeln!(
            self.notes,
            "- {label}: load + attach {:.1} ms, detach {:.1} ms (medians); other processes \
             holding tracepoint BPF programs during the rounds: {}",
            ms(&f.loads),
            ms(&f.drops),
            if f.holders.is_empty() {
                "none".to_owned()
            } else {
                f.holders.join(", ")
            },
        );
    }

    /// One loop's line and row: `b` against `a`, per round.
    #[allow(clippy::too_many_arguments)]
    fn ratio_row(
        &mut self,
        label: &str,
        floor_of: Option<&str>,
        l: Loop,
        calls: &Calls,
        a: &[f64],
        b: &[f64],
        goal: Option<f64>,
    ) {
        let ratios: Vec<f64> = b.iter().zip(a).map(|(b, a)| b / a).collect();
        let ratio = median(&ratios);
        let (lo, hi) = min_max(&ratios);
        let (ci_lo, ci_hi) = median_ci(&ratios);
        let met = goal.map(|g| ratio <= g);
        let (a_ns, b_ns) = (median(a), median(b));
        self.emit(json!({
            "kind": "loop",
            "variant": label,
            "floor_of": floor_of,
            "loop": l.name(),
            "calls": calls.per_side(l),
            "rounds": ratios.len(),
            "a_ns": a_ns,
            "b_ns": b_ns,
            "ratio": ratio,
            "ratio_min": lo,
            "ratio_max": hi,
            "ci_lo": ci_lo,
            "ci_hi": ci_hi,
            "goal": goal,
            "met": met,
        }));
        let _ = writeln!(
            self.rows,
            "| {label} | {} | {} | {} | {} | {:.3}x ({ci_lo:.3}-{ci_hi:.3}) | {} | {} |",
            l.name(),
            calls.per_side(l),
            fmt_ns(a_ns),
            fmt_ns(b_ns),
            ratio,
            goal.map_or("-".into(), |g| format!("≤ {g:.2}x")),
            match met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "-",
            },
        );
    }

    pub fn not_available(&mut self, variant: Variant, reason: &str) {
        let label = variant.label();
        self.emit(json!({
            "kind": "variant",
            "variant": label,
            "available": false,
            "reason": reason,
        }));
        let _ = writeln!(
            self.rows,
            "| {label} | all | | not available: {reason} | | | | |"
        );
    }

    pub fn failed(&mut self, variant: Variant, error: &str) {
        let label = variant.label();
        self.emit(json!({ "kind": "variant", "variant": label, "failed": error }));
        let _ = writeln!(self.rows, "| {label} | all | | FAILED: {error} | | | | |");
    }

    pub fn finish(&self, took: Duration) {
        self.emit(json!({ "kind": "done", "seconds": took.as_secs_f64() }));
        if self.lines {
            return;
        }
        print!(
            "{}\n| variant | loop | calls per side | A: no probe | B: probe | ratio B/A \
             (95% CI) | goal | met |\n|---|---|---|---|---|---|---|---|\n{}\n{}\n\
             _Run took {:.0} s._\n",
            self.head,
            self.rows,
            self.notes,
            took.as_secs_f64()
        );
    }
}
