//! When to signal: one signal per container per update, the volumes of one pod that
//! the kubelet swaps together in one sync (within [`WINDOW`]) joined into one, and at
//! most one signal per container every [`MIN_INTERVAL`]. A pure state machine on the
//! caller's clock.
//!
//! - A swap of a volume a container consumes opens a batch for the container, due
//!   [`WINDOW`] after that first swap; the pod's other swaps before then join it.
//! - The same update reported again (the second source's report of one swap) adds
//!   nothing: each (container, volume, data dir) is signalled once.
//! - A batch due less than [`MIN_INTERVAL`] after the container's last signal waits
//!   until then, gathering the swaps meanwhile: updates faster than that give one
//!   signal per interval, the last carrying them all, and none is lost.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use crate::node::volumes::VolumeKey;

/// How long a container's first swap waits for the rest of its pod's sync.
pub const WINDOW: Duration = Duration::from_millis(50);
/// The shortest time between two signals to one container.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// A container to signal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Container {
    pub pod_uid: String,
    /// The runtime's container id.
    pub id: String,
    /// Its name in the pod.
    pub name: String,
}

/// One signal to send: the container, and the updates (volume, new data dir) it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub container: Container,
    pub updates: Vec<(VolumeKey, String)>,
}

#[derive(Debug)]
struct Open {
    due: Instant,
    updates: Vec<(VolumeKey, String)>,
}

#[derive(Debug)]
pub struct Batcher {
    window: Duration,
    min_interval: Duration,
    open: BTreeMap<Container, Open>,
    last_sent: HashMap<String, Instant>,
    /// The data dir last batched for each (container id, volume).
    batched: HashMap<(String, VolumeKey), String>,
}

impl Default for Batcher {
    fn default() -> Self {
        Batcher::new(WINDOW, MIN_INTERVAL)
    }
}

impl Batcher {
    pub fn new(window: Duration, min_interval: Duration) -> Self {
        Batcher {
            window,
            min_interval,
            open: BTreeMap::new(),
            last_sent: HashMap::new(),
            batched: HashMap::new(),
        }
    }

    /// `volume` of `container`'s pod swapped to `ts_dir` at `now`. False when that
    /// update was batched already.
    pub fn swap(
        &mut self,
        container: Container,
        volume: VolumeKey,
        ts_dir: &str,
        now: Instant,
    ) -> bool {
        let key = (container.id.clone(), volume.clone());
        if self.batched.get(&key).is_some_and(|d| d == ts_dir) {
            return false;
        }
        self.batched.insert(key, ts_dir.to_owned());
        let earliest = self
            .last_sent
            .get(&container.id)
            .map(|t| *t + self.min_interval);
        let open = self.open.entry(container).or_insert_with(|| Open {
            due: (now + self.window).max(earliest.unwrap_or(now)),
            updates: Vec::new(),
        });
        // A newer data dir of the same volume replaces the older one.
        open.updates.retain(|(v, _)| *v != volume);
        open.updates.push((volume, ts_dir.to_owned()));
        true
    }

    /// The batches due at `now`, taken: each counts as the container's signal at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<Batch> {
        let due: Vec<Container> = (self.open.iter())
            .filter(|(_, o)| o.due <= now)
            .map(|(c, _)| c.clone())
            .collect();
        let min = self.min_interval;
        self.last_sent
            .retain(|_, t| now.saturating_duration_since(*t) < min);
        due.into_iter()
            .map(|container| {
                let open = self.open.remove(&container).expect("listed as open");
                self.last_sent.insert(container.id.clone(), now);
                Batch {
                    container,
                    updates: open.updates,
                }
            })
            .collect()
    }

    /// When the next batch is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.open.values().map(|o| o.due).min()
    }

    /// Forgets what it batched for containers `live` says are gone.
    pub fn retain(&mut self, live: impl Fn(&str) -> bool) {
        self.batched.retain(|(id, _), _| live(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::volumes::VolumeType;

    fn container(id: &str) -> Container {
        Container {
            pod_uid: "pod".into(),
            id: id.into(),
            name: format!("c-{id}"),
        }
    }

    fn volume(name: &str) -> VolumeKey {
        VolumeKey {
            pod_uid: "pod".into(),
            volume_type: VolumeType::ConfigMap,
            name: name.into(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_pods_volumes_swapped_together_give_one_signal() {
        let mut b = Batcher::default();
        let t0 = Instant::now();
        assert!(b.swap(container("a"), volume("config"), "..1", t0));
        assert!(b.swap(container("a"), volume("tls"), "..1", t0 + ms(3)));
        // The second source's report of the same swap.
        assert!(!b.swap(container("a"), volume("config"), "..1", t0 + ms(4)));
        assert_eq!(b.next_due(), Some(t0 + WINDOW));
        assert_eq!(b.due(t0 + WINDOW - ms(1)), []);
        let due = b.due(t0 + WINDOW);
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].updates,
            [
                (volume("config"), "..1".into()),
                (volume("tls"), "..1".into())
            ]
        );
        assert_eq!(b.next_due(), None);
        // The same update reported after the signal: not again.
        assert!(!b.swap(container("a"), volume("tls"), "..1", t0 + ms(500)));
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn each_container_of_the_pod_gets_its_own() {
        let mut b = Batcher::default();
        let t0 = Instant::now();
        b.swap(container("a"), volume("config"), "..1", t0);
        b.swap(container("b"), volume("config"), "..1", t0);
        let due = b.due(t0 + WINDOW);
        let ids: Vec<&str> = due.iter().map(|d| d.container.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn at_most_one_signal_per_interval_and_none_lost() {
        let mut b = Batcher::default();
        let t0 = Instant::now();
        b.swap(container("a"), volume("config"), "..1", t0);
        let first = t0 + WINDOW;
        assert_eq!(b.due(first).len(), 1);
        // Two more updates soon after: one signal, a full interval after the first,
        // for the newest data dir.
        b.swap(container("a"), volume("config"), "..2", first + ms(100));
        b.swap(container("a"), volume("config"), "..3", first + ms(300));
        assert_eq!(b.next_due(), Some(first + MIN_INTERVAL));
        assert_eq!(b.due(first + MIN_INTERVAL - ms(1)), []);
        let due = b.due(first + MIN_INTERVAL);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].updates, [(volume("config"), "..3".into())]);
        // Another container is not held by a's limit.
        b.swap(
            container("b"),
            volume("config"),
            "..3",
            first + MIN_INTERVAL,
        );
        assert_eq!(b.next_due(), Some(first + MIN_INTERVAL + WINDOW));
        // Long after, a's next update waits only the window.
        let later = first + 10 * MIN_INTERVAL;
        b.due(later);
        b.swap(container("a"), volume("config"), "..4", later);
        assert_eq!(b.next_due(), Some(later + WINDOW));
    }

    #[test]
    fn gone_containers_are_forgotten() {
        let mut b = Batcher::default();
        let t0 = Instant::now();
        b.swap(container("a"), volume("config"), "..1", t0);
        b.due(t0 + WINDOW);
        b.retain(|id| id != "a");
        // Forgotten: the same data dir for a container of that id is new again.
        assert!(b.swap(
            container("a"),
            volume("config"),
            "..1",
            t0 + MIN_INTERVAL * 2
        ));
    }
}
