//! The sustained writer: the kubelet's calls (`CallStyle::GoAt`) on the volumes in
//! turn, at a fixed rate on an absolute schedule (a late write goes at once, without
//! sleeping), from the calling thread. Logs every update for the phases' matching.

use std::{
    thread,
    time::{Duration, Instant, SystemTime},
};

use reloadscope_lab::{CallStyle, WriteOutcome};

use super::node::{Vol, update_payload};
use crate::common::{procfs::thread_cpu, revision::unix_ns};

/// One update made.
#[derive(Clone, Copy, Debug)]
pub struct Update {
    pub vol: u32,
    pub rev: u64,
    /// The writer's clock right after the rename onto `..data` returned.
    pub swapped_ns: i64,
}

pub struct Burst {
    pub made: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// How far behind its schedule the latest write started.
    pub max_late: Duration,
    pub t0: Instant,
    pub t0_wall: SystemTime,
    pub t_end: Instant,
    pub writer_cpu: Duration,
    pub log: Vec<Update>,
}

impl Burst {
    pub fn secs(&self) -> f64 {
        (self.t_end - self.t0).as_secs_f64()
    }

    /// Updates of each volume in order (indices into `log`), per volume.
    pub fn by_volume(&self, volumes: usize) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); volumes];
        for (i, u) in self.log.iter().enumerate() {
            out[u.vol as usize].push(i);
        }
        out
    }
}

/// `rate` updates a second for `seconds`, round robin over `vols`; revisions from
/// `*next_rev` on (advanced past the last one used).
pub fn sustained(vols: &[Vol], rate: u64, seconds: u64, next_rev: &mut u64, tag: &str) -> Burst {
    let total = rate * seconds;
    let n = vols.len() as u64;
    let mut log = Vec::with_capacity(total as usize);
    let (mut errors, mut max_late, mut first_error) = (0u64, Duration::ZERO, None);
    let cpu0 = thread_cpu();
    let t0_wall = SystemTime::now();
    let t0 = Instant::now();
    for i in 0..total {
        let due = t0 + Duration::from_nanos(i * 1_000_000_000 / rate);
        let now = Instant::now();
        if now < due {
            thread::sleep(due - now);
        } else {
            max_late = max_late.max(now - due);
        }
        let k = (i % n) as usize;
        let rev = *next_rev;
        *next_rev += 1;
        match vols[k].writer.write(&update_payload(rev), CallStyle::GoAt) {
            Ok(WriteOutcome::Written {
                initial: false,
                swapped_at,
                ..
            }) => log.push(Update {
                vol: k as u32,
                rev,
                swapped_ns: unix_ns(swapped_at),
            }),
            Ok(other) => {
                errors += 1;
                first_error.get_or_insert(format!("not an update: {other:?}"));
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
        if (i + 1) % (rate * 10) == 0 {
            eprintln!("[scale] {tag}: {} s, {} updates", (i + 1) / rate, log.len());
        }
    }
    let t_end = Instant::now();
    if let Some(e) = &first_error {
        eprintln!("[scale] {tag}: {errors} failed writes, first: {e}");
    }
    Burst {
        made: log.len() as u64,
        errors,
        first_error,
        max_late,
        t0,
        t0_wall,
        t_end,
        writer_cpu: thread_cpu() - cpu0,
        log,
    }
}

/// The update of `vol` a report made at `at_ns` belongs to: the last one swapped no
/// later than `at_ns + slack_ns` (a report can precede the writer's clock read after
/// the rename). `updates` are the volume's, in order (indices into `log`).
pub fn update_at(log: &[Update], updates: &[usize], at_ns: i64, slack_ns: i64) -> Option<usize> {
    let n = updates.partition_point(|&i| log[i].swapped_ns <= at_ns + slack_ns);
    n.checked_sub(1).map(|j| updates[j])
}
