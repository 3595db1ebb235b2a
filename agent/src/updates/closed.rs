//! A volume's recently closed updates, so that a late sighting of one is not taken for
//! a new update: the last [`KEPT`] data dir names, as 64-bit hashes in a ring.
//!
//! Kept as strings in a deque, they took about 600 bytes per volume once it had had
//! eight updates (the names, their allocations and the deque's buffer): 6 MiB on a
//! node of 10,000 volumes. The ring is 72 bytes in the volume's state and allocates
//! nothing. Two names share a hash with a probability of about 2^-64 per pair.

use std::hash::{DefaultHasher, Hash, Hasher};

/// How many closed updates a volume remembers.
pub const KEPT: usize = 8;

#[derive(Clone, Debug, Default)]
pub struct Closed {
    hashes: [u64; KEPT],
    /// How many of `hashes` are set, up to [`KEPT`].
    len: u8,
    /// Where the next one goes: the oldest once full.
    next: u8,
}

fn hash(ts_dir: &str) -> u64 {
    // Fixed keys: the same name hashes alike in every run.
    let mut h = DefaultHasher::new();
    ts_dir.hash(&mut h);
    h.finish()
}

impl Closed {
    /// Remembers `ts_dir`, forgetting the oldest when [`KEPT`] are remembered.
    pub fn remember(&mut self, ts_dir: &str) {
        self.hashes[usize::from(self.next)] = hash(ts_dir);
        self.next = (self.next + 1) % KEPT as u8;
        self.len = (self.len + 1).min(KEPT as u8);
    }

    pub fn contains(&self, ts_dir: &str) -> bool {
        self.hashes[..usize::from(self.len)].contains(&hash(ts_dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_eight_and_forgets_the_oldest() {
        let mut c = Closed::default();
        assert!(!c.contains("..0") && !c.contains(""));
        let name = |i: usize| format!("..2026_11_25_10_00_0{i}.{i:09}");
        for i in 0..KEPT {
            c.remember(&name(i));
        }
        assert!((0..KEPT).all(|i| c.contains(&name(i))));
        assert!(!c.contains(&name(KEPT)));
        c.remember(&name(KEPT));
        assert!(!c.contains(&name(0)), "the oldest went");
        assert!((1..=KEPT).all(|i| c.contains(&name(i))));
        // Round and round: always the last eight.
        for i in KEPT + 1..5 * KEPT + 3 {
            c.remember(&name(i));
        }
        let last = 4 * KEPT + 3..5 * KEPT + 3;
        assert!(last.clone().all(|i| c.contains(&name(i))));
        assert!(!(0..last.start).any(|i| c.contains(&name(i))));
    }

    #[test]
    fn an_empty_slot_matches_no_name() {
        // A zeroed slot not yet written must not answer for a name hashing to 0: only
        // the slots written count.
        let mut c = Closed::default();
        c.remember("..1");
        assert!(c.contains("..1"));
        assert_eq!(c.hashes[1..], [0; KEPT - 1]);
        assert!(!c.contains("..2"));
    }
}
