//! Revisions a benchmark writes into a volume key, and finding them again in a lab
//! consumer's open log: which open first read which revision, and when. The reload
//! benchmark's accuracy measure (`reload/accuracy.rs`) does the same with `rev=` and
//! six digits, one update at a time.

use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use reloadscope_lab::Open;

/// Digits of the revision; a consumer logs the first 32 bytes it read, so the marker
/// `rev=<digits>\n` must fit in them.
const DIGITS: usize = 10;

/// The marker a revision's content starts with.
pub fn revision_marker(rev: u64) -> String {
    format!("rev={rev:0DIGITS$}\n")
}

/// Content of the key consumers read, revision `rev`.
pub fn revision_content(rev: u64) -> String {
    format!(
        "{}log.level=info\nfeature.fast-path=true\n",
        revision_marker(rev)
    )
}

/// The revision an open read, from the head the consumer logged.
pub fn revision_of(open: &Open) -> Option<u64> {
    let head = open.head.as_ref().ok()?;
    let rest = head.strip_prefix(b"rev=")?;
    let digits = rest.get(..DIGITS)?;
    if rest.get(DIGITS) != Some(&b'\n') {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Each revision's first open in a consumer's log: the consumer's clock right before
/// the open(2) that first read it.
pub fn first_opens(reads: &[Open]) -> HashMap<u64, SystemTime> {
    let mut out = HashMap::new();
    for o in reads {
        if let Some(rev) = revision_of(o) {
            out.entry(rev).or_insert(o.at);
        }
    }
    out
}

/// `a - b` in nanoseconds, signed.
pub fn ns_between(a: SystemTime, b: SystemTime) -> i64 {
    match a.duration_since(b) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

/// Nanoseconds since the epoch.
pub fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
