//! The per-volume families, `reloadscope_volume_updates_total` and
//! `reloadscope_volume_last_update_timestamp_seconds`, written straight to the text
//! format at each scrape.
//!
//! They are most of a big node's series (two per volume: 20,000 on a node of 10,000
//! volumes). Built as `prometheus` children, then protos, then text, they took about
//! 30 MiB of heap at a scrape under updates (heaptrack), 11 MiB of it kept by the
//! vectors until the next scrape, and 87 ms of CPU per scrape (now 19 ms). Here
//! each exported volume is one row (its label values in one string) for the time of
//! the scrape, and the text is written from the rows. The text is the `prometheus`
//! text encoder's, byte for byte: families in name order among the registry's (see
//! [`Exporter`](super::Exporter)), series sorted by label values, labels by name,
//! values escaped and numbers printed alike (tests).

use std::fmt::Write;

use super::{LabelControls, Shared, labels};
use crate::clock;

pub(super) const UPDATES: &str = "reloadscope_volume_updates_total";
const UPDATES_HELP: &str = "Atomic updates (..data swaps) of the volume, initial population excluded. source_kind and source_name: the ConfigMaps, Secrets and other sources its files come from, comma-separated (empty without the Kubernetes API).";
pub(super) const LAST_UPDATE: &str = "reloadscope_volume_last_update_timestamp_seconds";
const LAST_UPDATE_HELP: &str = "Time of the volume's last ..data swap (the probe's clock when it saw it), seconds since the epoch.";

/// The label names, sorted as the text encoder writes them.
pub(super) const LABELS: [&str; 6] = [
    "namespace",
    "pod",
    "source_kind",
    "source_name",
    "volume",
    "volume_type",
];

/// An exported volume: its label values and its two values.
struct Row {
    /// The namespace, pod, volume, pod uid, source kind and source name, one after
    /// the other; each ends at the offset of the same index in `ends`.
    text: String,
    ends: [u32; 6],
    volume_type: &'static str,
    updates: u64,
    last_update: Option<f64>,
}

impl Row {
    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start as usize..self.ends[i] as usize]
    }

    fn pod_uid(&self) -> &str {
        self.part(3)
    }

    /// The label values in the order of [`LABELS`].
    fn values(&self) -> [&str; 6] {
        let p = |i| self.part(i);
        [p(0), p(1), p(4), p(5), p(2), self.volume_type]
    }

    /// Appends `s` as the next part.
    fn push(&mut self, i: usize, s: &str) {
        self.text.push_str(s);
        self.ends[i] = u32::try_from(self.text.len()).expect("label values under 4 GiB");
    }
}

/// Renders the per-volume families from the tracker and the Kubernetes API's names.
pub(super) struct VolumeFamilies {
    pub shared: std::sync::Arc<Shared>,
    pub controls: LabelControls,
}

/// The rows of one scrape, sorted by label values, volumes with the same labels merged.
pub(super) struct Rows(Vec<Row>);

impl VolumeFamilies {
    /// Every exported volume. The tracker is read first, then the sources under the
    /// metadata lock alone.
    pub fn rows(&self) -> Rows {
        let mut rows: Vec<Row> = {
            let t = self.shared.tracker.lock().expect("tracker lock");
            t.volumes()
                .filter_map(|(key, v)| {
                    let (ns, pod) = labels::pod_names(&t, &key.pod_uid);
                    if !self.controls.exports(ns, &key.name) {
                        return None;
                    }
                    let parts = [ns.unwrap_or(""), pod, &key.name, &key.pod_uid];
                    let mut row = Row {
                        text: String::with_capacity(parts.iter().map(|p| p.len()).sum()),
                        ends: [0; 6],
                        volume_type: key.volume_type.label(),
                        updates: v.updates,
                        last_update: v.last_update.map(clock::unix_seconds),
                    };
                    for (i, p) in parts.into_iter().enumerate() {
                        row.push(i, p);
                    }
                    Some(row)
                })
                .collect()
        };
        let meta = self.shared.meta.state.lock().expect("meta lock");
        for row in &mut rows {
            let (kind, name) = meta.source_labels(row.pod_uid(), row.part(2));
            row.push(4, &kind);
            row.push(5, &name);
        }
        drop(meta);
        Rows::new(rows)
    }
}

impl Rows {
    fn new(mut rows: Vec<Row>) -> Self {
        rows.sort_unstable_by(|a, b| a.values().cmp(&b.values()));
        // Two volumes with the same labels (a pod recreated under its name while the
        // old one's volumes are still there) share their series: the updates add up,
        // the last update is the latest.
        rows.dedup_by(|b, a| {
            if a.values() != b.values() {
                return false;
            }
            a.updates += b.updates;
            a.last_update = match (a.last_update, b.last_update) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            };
            true
        });
        Rows(rows)
    }

    /// `reloadscope_volume_last_update_timestamp_seconds`, absent while no volume
    /// was updated (the registry leaves out families without series).
    pub fn write_last_update(&self, out: &mut String) {
        write_family(out, LAST_UPDATE, LAST_UPDATE_HELP, "gauge", self, |r| {
            r.last_update
        });
    }

    /// `reloadscope_volume_updates_total`: every exported volume.
    pub fn write_updates(&self, out: &mut String) {
        write_family(out, UPDATES, UPDATES_HELP, "counter", self, |r| {
            Some(r.updates as f64)
        });
    }
}

fn write_family(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    rows: &Rows,
    value: impl Fn(&Row) -> Option<f64>,
) {
    let mut rows = rows
        .0
        .iter()
        .filter_map(|r| value(r).map(|v| (r, v)))
        .peekable();
    if rows.peek().is_none() {
        return;
    }
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    escape(out, help, false);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
    for (row, v) in rows {
        out.push_str(name);
        let mut sep = '{';
        for (label, value) in LABELS.iter().zip(row.values()) {
            out.push(sep);
            out.push_str(label);
            out.push_str("=\"");
            escape(out, value, true);
            out.push('"');
            sep = ',';
        }
        // The encoder prints values with f64's Display.
        let _ = writeln!(out, "}} {v}");
    }
}

/// The text format's escapes: backslash and newline, and in label values the double
/// quote.
fn escape(out: &mut String, s: &str, quote: bool) {
    if !s
        .bytes()
        .any(|b| b == b'\\' || b == b'\n' || (quote && b == b'"'))
    {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests;
