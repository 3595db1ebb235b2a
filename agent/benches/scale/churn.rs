//! Other users' containers on this shared machine: the agent follows the node's
//! kubepods cgroup tree and rescans `/proc` for consumers when a container starts or
//! stops, and when a pod process adds or removes an inotify watch. Lab containers of
//! other developers (same cgroup layout) wake it as a node's pods would. This samples
//! the tree every 200 ms during a window and counts container scopes appearing and
//! disappearing that are not this benchmark's, to say whether a window was disturbed.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

pub struct Churn {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<usize>>,
}

fn dirs(p: &Path) -> Vec<PathBuf> {
    fs::read_dir(p).map_or_else(
        |_| Vec::new(),
        |rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        },
    )
}

/// Container scopes under `<cgroup2>/kubepods.slice/<qos>/<pod>/` of pods whose uid
/// is not in `ours` (also scopes directly under a pod slice of the guaranteed class).
fn foreign_scopes(base: &Path, ours: &HashSet<String>) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    let mine = |p: &Path| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        name.is_some_and(|n| ours.iter().any(|u| n.contains(u.as_str())))
    };
    for a in dirs(&base.join("kubepods.slice")) {
        for b in dirs(&a) {
            if mine(&b) {
                continue;
            }
            for c in dirs(&b) {
                out.insert(c);
            }
        }
        if a.file_name()
            .is_some_and(|n| n.to_string_lossy().contains("-pod"))
            && !mine(&a)
        {
            for c in dirs(&a) {
                out.insert(c);
            }
        }
    }
    out
}

impl Churn {
    /// `ours`: this benchmark's pod uids with `-` as `_` (as in the slice names).
    pub fn start(ours: HashSet<String>) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let Ok(base) = reloadscope_lab::cgroup2_mount() else {
            return Churn { stop, handle: None };
        };
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut last = foreign_scopes(&base, &ours);
            let mut changes = 0;
            while !flag.load(Relaxed) {
                thread::sleep(Duration::from_millis(200));
                let now = foreign_scopes(&base, &ours);
                changes += now.symmetric_difference(&last).count();
                last = now;
            }
            changes
        });
        Churn {
            stop,
            handle: Some(handle),
        }
    }

    /// Container scopes of other pods that appeared or disappeared meanwhile.
    pub fn end(mut self) -> Option<usize> {
        self.stop.store(true, Relaxed);
        self.handle.take()?.join().ok()
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}
