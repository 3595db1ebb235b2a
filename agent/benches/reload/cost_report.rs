//! The cost measure's Markdown report: the loops' figures per side, the goals judged on
//! the reload machinery alone (agent / detection only), the stale window's rows, and
//! what each agent start looked like.

use std::fmt::Write as _;

use super::{
    cost::{AGENT, DETECT, EBPF, Group, OFF, Phase, Run, Side, SideStats, Target},
    cost_fleet::{KEY, POD_VOLUMES},
    fanotify_marks::Marks,
};
use crate::common::figures::{fmt_delta_ns, fmt_ns, median, min_max, ratio3};

const UNRELATED_GOAL: f64 = 1.01;
const WATCHED_GOAL: f64 = 1.05;

pub fn report(r: &Run) -> String {
    let mut s = String::new();
    intro(&mut s, r);
    let ebpf = r.sides.len() > EBPF;

    // Between updates: judged against the goals.
    let _ = writeln!(s, "{}", table_head(ebpf, true));
    let mut worst = [(0.0f64, true), (0.0f64, true)];
    let mut worst_off = [0.0f64; 2];
    for (ti, t) in r.targets.iter().enumerate() {
        if t.phase != Phase::Settled {
            continue;
        }
        let g = usize::from(t.group == Group::Watched);
        let (on, base) = (med(r, AGENT, ti), med(r, OFF, ti));
        let goal = [UNRELATED_GOAL, WATCHED_GOAL][g];
        let machinery = median(&paired(r, ti));
        worst[g].0 = worst[g].0.max(machinery);
        worst[g].1 &= machinery < goal;
        worst_off[g] = worst_off[g].max(on / base);
        let _ = writeln!(s, "{}", table_row(r, ti, t, Some(goal)));
    }
    let verdict = |(x, ok): (f64, bool)| {
        let v = if ok { "met" } else { "NOT met" };
        format!("**{v}** (worst {x:.3}x)")
    };
    let _ = writeln!(
        s,
        "\nGoals, judged on the reload machinery alone (agent, `ebpf: false` / agent, \
         detection only; every volume settled): unrelated files under {UNRELATED_GOAL:.2}x \
         {}; watched volume files under {WATCHED_GOAL:.2}x {}. Against no agent at all \
         (detection's inotify watches included): worst {:.3}x (unrelated), {:.3}x (watched).\n",
        verdict(worst[0]),
        verdict(worst[1]),
        worst_off[0],
        worst_off[1],
    );

    // The stale window: not judged.
    let a = &r.stats[AGENT];
    let _ = writeln!(
        s,
        "While a consumer is stale: after the loops above, in every side and round, the two \
         target volumes were updated (the kubelet's calls, new content each time); their \
         read-once consumers never reload, so the agent keeps their new data dirs marked \
         until the side ends. The agent's state showed both consumers stale {} \
         after the writes, and its fanotify group reported opens of both new dirs {} after \
         them (medians, `ebpf: false`; {} round(s) not within 10 s); then the loops ran \
         again on the paths that follow `..data`. These rows are the cost of the window \
         from an update until every consumer of the volume has reloaded; they are not \
         judged against the goals.\n",
        range(&a.stale_state, &|x| fmt_ns(x * 1e9)),
        range(&a.stale_kernel, &|x| fmt_ns(x * 1e9)),
        a.stale_missed,
    );
    let _ = writeln!(s, "{}", table_head(ebpf, false));
    for (ti, t) in r.targets.iter().enumerate() {
        if t.phase == Phase::Stale {
            let _ = writeln!(s, "{}", table_row(r, ti, t, None));
        }
    }
    rounds_table(&mut s, r);
    cpu(&mut s, r);
    for l in &r.leftovers {
        let _ = writeln!(s, "\n**Agent issue:** {l}.");
    }
    s.push_str(&crate::common::holders_note(
        &r.holders,
        "if attached to syscall tracepoints, every side ran on the syscall slow path.",
    ));
    s
}

fn intro(s: &mut String, r: &Run) {
    let (p, fleet) = (r.p, r.fleet);
    let want = fleet.expected_marks(Side::Agent { ebpf: false }, p.settled);
    let cms = fleet.volumes.len() - fleet.secrets();
    let _ = writeln!(
        s,
        "### Cost added to open+close by the reload machinery, {} watched volumes\n\n\
         Lab node: {} pods x {} volumes = {} volumes ({cms} ConfigMap volumes on disk, {} Secret \
         volumes each on a tmpfs of its own), and {} lab containers, one per volume, each binding \
         its volume whole in a mount namespace of its own and reading `{KEY}` once at start \
         (`read-once`: they sit in poll(2) afterwards, so only the loops below open volume \
         files); set up in {:.0} s. The agent runs in-process (2 tokio workers), started and \
         stopped for each of its rounds, with `--settled-marks {}`; before its loops run it \
         has every volume and every consumer, and every volume settled (each consumer has its \
         current data, so its data dir is ignored in the kernel, or unmarked): {} inode, {} \
         filesystem and {} mount marks, {} with an ignore mask, counted in \
         `/proc/self/fdinfo` of its fanotify group. Detection only (`reloads: false`): ready \
         with every volume known; no fanotify group, no /proc scans.\n",
        fleet.volumes.len(),
        p.pods,
        POD_VOLUMES.len(),
        fleet.volumes.len(),
        fleet.secrets(),
        fleet.containers.len(),
        fleet.setup.as_secs_f64(),
        settled_label(p.settled),
        want.inode,
        want.filesystem,
        want.mount,
        want.ignored,
    );
    let order = r.sides.iter().map(|x| x.label()).collect::<Vec<_>>();
    let letters = ["A", "B", "C", "D"][..r.sides.len()].join(" ");
    let _ = writeln!(
        s,
        "{} rounds; each runs every loop once per side ({}), sides in the order {letters}, \
         then reversed, alternately. Each loop is {} `open(O_RDONLY)` + `close` calls (after {} \
         unmeasured ones) in a process of its own, a host process outside any pod (the agent \
         attributes each open it is told about through `/proc/<pid>`, then counts it as a \
         foreign opener's), so the agent's own threads compete with it for the 2 CPUs as they \
         would on a node. Figures: medians of the per-round ns per call, spread = min-max over \
         rounds. The goals are judged on the reload machinery's own cost: in each round, the \
         agent with reloads over the agent for detection only, both `ebpf: false` (sides that \
         ran one after the other, so the machine's load weighs on both), median over rounds, \
         spread min-max. That leaves out what \
         detection costs: its inotify watches on the kubelet dirs (any inotify watch on a \
         filesystem costs every open there a little, with no agent running) and the probe's \
         syscall tracepoints (their cost on every syscall is the detect benchmark's); the \
         ratio against no agent stands beside it{}.\n",
        p.rounds,
        order.join("; "),
        p.calls,
        (p.calls / 10).max(1),
        if r.sides.len() > EBPF {
            "; the last columns are the agent as deployed, probe attached"
        } else {
            ""
        },
    );
}

/// Per round, the agent with reloads over the agent for detection only: the two sides
/// ran one after the other, so what loads the machine meanwhile weighs on both.
fn paired(r: &Run, ti: usize) -> Vec<f64> {
    let (on, det) = (&r.stats[AGENT].ns[ti], &r.stats[DETECT].ns[ti]);
    on.iter().zip(det).map(|(a, d)| a / d).collect()
}

fn med(r: &Run, side: usize, ti: usize) -> f64 {
    median(&r.stats[side].ns[ti])
}

fn spread(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    format!("{} ({}-{})", fmt_ns(median(v)), fmt_ns(lo), fmt_ns(hi))
}

fn table_head(ebpf: bool, goal: bool) -> String {
    let mut head =
        "| open+close of | no agent (baseline) | agent, detection only | agent, `ebpf: false` \
         | added by reloads | reload machinery: agent / detection only |"
            .to_owned();
    if goal {
        head.push_str(" goal |");
    }
    head.push_str(" agent / no agent | agent's CPU meanwhile |");
    if ebpf {
        head.push_str(" agent, `ebpf: true` | `ebpf: true` / no agent |");
    }
    let cols = head.matches(" |").count();
    format!("{head}\n|{}", "---|".repeat(cols))
}

fn table_row(r: &Run, ti: usize, t: &Target, goal: Option<f64>) -> String {
    let (base, det, on) = (med(r, OFF, ti), med(r, DETECT, ti), med(r, AGENT, ti));
    let ns = |side: usize| spread(&r.stats[side].ns[ti]);
    let mut row = format!(
        "| {} | {} | {} | {} | {} | {} |",
        t.label,
        ns(OFF),
        ns(DETECT),
        ns(AGENT),
        fmt_delta_ns(on - det),
        range(&paired(r, ti), &|x| format!("{x:.3}x")),
    );
    if let Some(goal) = goal {
        let met = if median(&paired(r, ti)) < goal {
            "met"
        } else {
            "**NOT met**"
        };
        let _ = write!(row, " < {goal:.2}x: {met} |");
    }
    let _ = write!(
        row,
        " {} | {:.0} % |",
        ratio3(on, base),
        median(&r.stats[AGENT].cpu_share[ti]) * 100.0
    );
    if r.sides.len() > EBPF {
        let _ = write!(row, " {} | {} |", ns(EBPF), ratio3(med(r, EBPF, ti), base));
    }
    row
}

/// `median (min-max)` of per-round figures, or the one value when they all agree.
fn range(v: &[f64], fmt: &dyn Fn(f64) -> String) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let (lo, hi) = min_max(v);
    if lo == hi {
        fmt(lo)
    } else {
        format!("{} ({}-{})", fmt(median(v)), fmt(lo), fmt(hi))
    }
}

fn counts(v: impl Iterator<Item = usize>) -> String {
    range(&v.map(|c| c as f64).collect::<Vec<_>>(), &|x| {
        format!("{x:.0}")
    })
}

fn marks(v: &[Marks]) -> String {
    let f = |g: fn(&Marks) -> usize| counts(v.iter().map(g));
    format!(
        "{} / {} / {} / {}",
        f(|m| m.inode),
        f(|m| m.ignored),
        f(|m| m.filesystem),
        f(|m| m.mount)
    )
}

fn rounds_table(s: &mut String, r: &Run) {
    let agents = &r.sides[DETECT..];
    let labels: Vec<&str> = agents.iter().map(|x| x.label()).collect();
    let _ = writeln!(
        s,
        "\n| per agent round | {} |\n|---|{}",
        labels.join(" | "),
        "---|".repeat(agents.len())
    );
    let mut row = |name: &str, f: &dyn Fn(&SideStats) -> String| {
        let cells: Vec<String> = r.stats[DETECT..].iter().map(f).collect();
        let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
    };
    let secs = |x: f64| format!("{x:.2} s");
    row(
        "start to steady (every volume, consumer and mark; settled)",
        &|st| range(&st.steady_took, &secs),
    );
    row("consumers found", &|st| {
        counts(st.consumers.iter().copied())
    });
    row(
        "fanotify marks when steady: inode / with an ignore mask / filesystem / mount",
        &|st| marks(&st.marks),
    );
    row(
        "update of the 2 targets to the agent's state showing it (consumers stale; detection only: the new data dirs)",
        &|st| range(&st.stale_state, &|x| fmt_ns(x * 1e9)),
    );
    row(
        "update of the 2 targets to the kernel reporting opens of both new data dirs",
        &|st| range(&st.stale_kernel, &|x| fmt_ns(x * 1e9)),
    );
    row(
        "rounds where the stale window was not reached within 10 s",
        &|st| st.stale_missed.to_string(),
    );
    row(
        "fanotify marks while the targets' consumers are stale: inode / with an ignore mask / filesystem / mount",
        &|st| marks(&st.stale_marks),
    );
    row("inotify watches", &|st| counts(st.watches.iter().copied()));
    row(
        "opens of volume files attributed (foreign, host) per round",
        &|st| range(&st.host_opens, &|x| format!("{x:.0}")),
    );
    row(
        "data dirs marked after their swap (late marks, all rounds)",
        &|st| st.late_marks.to_string(),
    );
    row("fanotify queue overflows (all rounds)", &|st| {
        st.overflows.to_string()
    });
}

fn cpu(s: &mut String, r: &Run) {
    let max_share = |side: usize| {
        r.stats[side]
            .cpu_share
            .iter()
            .map(|v| median(v))
            .fold(0.0, f64::max)
            * 100.0
    };
    let loops: usize = r
        .stats
        .iter()
        .map(|st| st.ns.iter().map(Vec::len).sum::<usize>())
        .sum();
    let _ = writeln!(
        s,
        "\n\"agent's CPU meanwhile\": this process's CPU time (getrusage, all threads: the \
         agent's; the main thread waits for the loop's process) over the loop's wall time, in \
         % of one core, median over rounds (`ebpf: false`); without the agent it is at most \
         {:.1} %, with the agent for detection only at most {:.1} %. {loops} loops ran in {:.0} \
         s of rounds.",
        max_share(OFF),
        max_share(DETECT),
        r.rounds_took.as_secs_f64()
    );
    let opened = r.p.calls + (r.p.calls / 10).max(1);
    let _ = writeln!(
        s,
        "\nWhere the agent's CPU goes (`ebpf: false`, medians over rounds): each loop opens \
         its file {opened} times; an open no mark sees is never queued, and fanotify merges an open \
         into an identical event still queued, so the agent is told of fewer, and attributes \
         each one it is told of through `/proc/<pid>`.\n\n\
         | open+close of | opens the agent was told of | agent CPU | agent CPU per open told of |\n\
         |---|---|---|---|"
    );
    let st = &r.stats[AGENT];
    for (ti, t) in r.targets.iter().enumerate() {
        if t.group != Group::Watched {
            continue;
        }
        let told = median(&st.told[ti]);
        let per: Vec<f64> = st.cpu_secs[ti]
            .iter()
            .zip(&st.told[ti])
            .filter(|(_, n)| **n > 0.0)
            .map(|(c, n)| c * 1e9 / n)
            .collect();
        let _ = writeln!(
            s,
            "| {} | {told:.0} ({:.0} %) | {:.2} s | {} |",
            t.label,
            told * 100.0 / opened as f64,
            median(&st.cpu_secs[ti]),
            if per.is_empty() {
                "n/a".into()
            } else {
                fmt_ns(median(&per))
            },
        );
    }
}

/// `--settled-marks`' value as the agent's flag spells it.
pub fn settled_label(s: reloadscope::opens::SettledMarks) -> &'static str {
    match s {
        reloadscope::opens::SettledMarks::Ignore => "ignore",
        reloadscope::opens::SettledMarks::Remove => "remove",
        reloadscope::opens::SettledMarks::Auto => "auto",
    }
}
