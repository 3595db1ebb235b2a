//! The consumers' own record of their reads: the kubelet's container logs under
//! `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`, in the CRI
//! format (`<RFC 3339 time> stdout F <line>`), whose lines from
//! `reloadscope-consumer` are `open <unix nanos> <head hex>` and `ready`.

use std::fs;
use std::path::{Path, PathBuf};

/// One open a consumer logged: wall-clock nanoseconds taken right before open(2),
/// and the hex of the first bytes it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub unix_nanos: u128,
    pub head: String,
}

impl Open {
    pub fn seconds(&self) -> f64 {
        self.unix_nanos as f64 / 1e9
    }
}

/// The log files of one container (every restart), oldest first.
pub fn files(pod_logs: &Path, namespace: &str, pod: &str, container: &str) -> Vec<PathBuf> {
    let prefix = format!("{namespace}_{pod}_");
    let mut out: Vec<(u32, PathBuf)> = fs::read_dir(pod_logs)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .flat_map(|e| {
            fs::read_dir(e.path().join(container))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let restart = name.strip_suffix(".log")?.parse().ok()?;
            Some((restart, e.path()))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, p)| p).collect()
}

/// The consumer's lines (the CRI prefix taken off) of every log file, in order.
pub fn lines(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .flat_map(|f| {
            fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| cri_message(&l).map(str::to_owned))
        .collect()
}

/// `2026-12-06T02:55:00.123456789Z stdout F open 1 ab` -> `open 1 ab`; None for a
/// partial line (`P`) or anything else.
pub fn cri_message(line: &str) -> Option<&str> {
    let mut parts = line.splitn(4, ' ');
    let (_time, _stream, tag, message) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (tag == "F").then_some(message)
}

/// The opens among a consumer's lines.
pub fn opens(lines: &[String]) -> Vec<Open> {
    lines
        .iter()
        .filter_map(|l| {
            let mut w = l.strip_prefix("open ")?.split(' ');
            Some(Open {
                unix_nanos: w.next()?.parse().ok()?,
                head: w.next()?.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_give_the_consumers_opens() {
        let raw = [
            "2026-12-06T02:55:00.1Z stdout F ready",
            "2026-12-06T02:55:00.2Z stdout F open 1765000000123456789 7631",
            "2026-12-06T02:55:00.3Z stdout P open 17650000",
            "2026-12-06T02:55:01.0Z stderr F something went wrong",
            "garbage",
        ];
        let lines: Vec<String> = raw
            .iter()
            .filter_map(|l| cri_message(l))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            lines,
            [
                "ready",
                "open 1765000000123456789 7631",
                "something went wrong"
            ]
        );
        let opens = opens(&lines);
        assert_eq!(
            opens,
            [Open {
                unix_nanos: 1_765_000_000_123_456_789,
                head: "7631".into()
            }]
        );
        assert!((opens[0].seconds() - 1_765_000_000.123_456_8).abs() < 1e-6);
    }

    #[test]
    fn restarts_are_read_in_order() {
        let dir = std::env::temp_dir().join(format!("xtask-podlogs-{}", std::process::id()));
        let c = dir.join("ns_web-1_uid/app");
        fs::create_dir_all(&c).unwrap();
        for (n, text) in [
            (1, "T stdout F open 2 b\n"),
            (0, "T stdout F open 1 a\n"),
            (10, "T stdout F ready\n"),
        ] {
            fs::write(c.join(format!("{n}.log")), text).unwrap();
        }
        let files = files(&dir, "ns", "web-1", "app");
        let got = lines(&files);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got, ["open 1 a", "open 2 b", "ready"]);
        assert!(super::files(Path::new("/nonexistent"), "ns", "p", "c").is_empty());
    }
}
