//! The signal loop (`--reload-signals`): told of each swap by the state loop, it
//! signals the consuming containers of pods that ask for it ([`crate::signals`]):
//! batched per container, rate limited, each process checked before the signal; and
//! records what it sent and what it could not, for the metrics and the Warning Events.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::stopped;
use crate::{
    node::{
        cgroup::parse_proc_cgroup,
        stat::{self, MainProcess},
    },
    reloads::MountKind,
    signals::{
        Failure, Request, Swapped, Unsent,
        batch::{Batch, Batcher, Container},
        send::{self, Target},
    },
    state::Shared,
};

/// How often what was recorded for gone containers is forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub(super) struct SignalLoop {
    pub shared: Arc<Shared>,
    pub proc_root: PathBuf,
    batcher: Batcher,
}

impl SignalLoop {
    pub fn new(shared: Arc<Shared>, proc_root: PathBuf) -> Self {
        SignalLoop {
            shared,
            proc_root,
            batcher: Batcher::default(),
        }
    }

    pub async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Swapped>,
        stop: watch::Receiver<bool>,
    ) {
        info!(
            "reload signals on: pods annotated reloadscope.dev/reload-signal are signalled at their volumes' swaps"
        );
        let stopped = stopped(stop);
        tokio::pin!(stopped);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            let due = self.batcher.next_due();
            let wake = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => self.swapped(s, Instant::now()),
                    None => return,
                },
                _ = wake => {
                    for batch in self.batcher.due(Instant::now()) {
                        self.signal(batch);
                    }
                }
                _ = prune.tick() => self.prune(),
                _ = &mut stopped => return,
            }
        }
    }

    /// The pod's request, when its annotations make one.
    fn request(&self, pod_uid: &str) -> Option<Request> {
        let meta = self.shared.meta.state.lock().expect("meta lock");
        Request::from_annotations(&meta.pods.get(pod_uid)?.annotations)
    }

    /// A swap: each whole-volume consumer the pod's request names is batched. A subPath
    /// consumer never sees an update: a signal would only have it read its old data.
    fn swapped(&mut self, s: Swapped, now: Instant) {
        let Some(request) = self.request(&s.key.pod_uid) else {
            return;
        };
        let targets: Vec<Container> = {
            let r = self.shared.reloads.lock().expect("reloads lock");
            (r.consumers())
                .filter(|(v, _, c)| **v == s.key && c.mount == MountKind::Volume)
                .filter(|(v, _, c)| request.wants(&c.name, &v.name))
                .map(|(_, id, c)| Container {
                    pod_uid: s.key.pod_uid.clone(),
                    id: id.clone(),
                    name: c.name.clone(),
                })
                .collect()
        };
        for c in targets {
            if self.batcher.swap(c.clone(), s.key.clone(), &s.ts_dir, now) {
                debug!(pod_uid = %c.pod_uid, container = %c.name, volume = %s.key.name, "reload signal batched");
            }
        }
    }

    /// Sends one batch's signal, or records why not.
    fn signal(&mut self, batch: Batch) {
        let c = &batch.container;
        // Read again: the annotation may have changed or gone since the swap.
        let Some(request) = self.request(&c.pod_uid) else {
            return;
        };
        let volumes: Vec<String> = batch.updates.iter().map(|(v, _)| v.name.clone()).collect();
        let signal = match request.signal {
            Ok(s) => s,
            Err(name) => {
                warn!(pod_uid = %c.pod_uid, container = %c.name, signal = %name, "reload signal not sent: reloadscope.dev/reload-signal names no signal");
                self.failed(c, volumes, name, Failure::UnknownSignal);
                return;
            }
        };
        let found = self
            .shared
            .signals
            .lock()
            .expect("signals lock")
            .main
            .get(&c.id)
            .copied();
        let mut result = match found {
            Some(m) => send::send(&self.proc_root, &self.target(c, m), signal.number),
            None => Err(Failure::NoProcess),
        };
        // The container restarted since the last scan: its main process now.
        if matches!(
            result,
            Err(Failure::NoProcess | Failure::PidReused | Failure::ProcessGone)
        ) && let Some(m) = main_process(&self.proc_root, &c.id)
            && Some(m) != found
        {
            result = send::send(&self.proc_root, &self.target(c, m), signal.number);
        }
        match result {
            Ok(()) => {
                debug!(pod_uid = %c.pod_uid, container = %c.name, signal = signal.name, ?volumes, "reload signal sent");
                let (namespace, workload) = self.names(&c.pod_uid);
                let now = SystemTime::now();
                let mut rec = self.shared.signals.lock().expect("signals lock");
                rec.count_sent(namespace, workload);
                for (v, ts) in batch.updates {
                    rec.last.insert((v, c.id.clone()), (ts, now));
                }
            }
            Err(f) => {
                warn!(pod_uid = %c.pod_uid, container = %c.name, signal = signal.name, reason = f.label(), "reload signal not sent: {}", f.describe());
                self.failed(c, volumes, signal.name.to_owned(), f);
            }
        }
    }

    fn target(&self, c: &Container, m: MainProcess) -> Target {
        Target {
            pid: m.pid,
            start_ticks: m.start_ticks,
            pod_uid: c.pod_uid.clone(),
            container_id: c.id.clone(),
        }
    }

    fn failed(&self, c: &Container, volumes: Vec<String>, signal: String, failure: Failure) {
        let (namespace, workload) = self.names(&c.pod_uid);
        let mut rec = self.shared.signals.lock().expect("signals lock");
        *rec.failed
            .entry((namespace, workload, failure))
            .or_default() += 1;
        rec.queue(Unsent {
            pod_uid: c.pod_uid.clone(),
            container: c.name.clone(),
            volumes,
            signal,
            failure,
        });
    }

    /// The pod's namespace and workload name, as the metrics label them.
    fn names(&self, pod_uid: &str) -> (String, String) {
        let on_node = {
            let t = self.shared.tracker.lock().expect("tracker lock");
            t.pod_name(pod_uid).map(|p| p.namespace.clone())
        };
        let meta = self.shared.meta.state.lock().expect("meta lock");
        let namespace = (meta.pods.get(pod_uid).map(|p| p.namespace.clone()))
            .or(on_node)
            .unwrap_or_default();
        (namespace, meta.workload(pod_uid).1.to_owned())
    }

    /// Forgets what was batched or sent for containers that consume nothing now.
    fn prune(&mut self) {
        let live: std::collections::HashSet<String> = {
            let r = self.shared.reloads.lock().expect("reloads lock");
            r.consumers().map(|(_, id, _)| id.clone()).collect()
        };
        self.batcher.retain(|id| live.contains(id));
        let mut rec = self.shared.signals.lock().expect("signals lock");
        rec.last.retain(|(_, id), _| live.contains(id));
        rec.main.retain(|id, _| live.contains(id));
    }
}

/// The main process of container `id` now, from a walk of `<proc_root>`.
fn main_process(proc_root: &std::path::Path, id: &str) -> Option<MainProcess> {
    let mut procs = Vec::new();
    for e in std::fs::read_dir(proc_root).ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let dir = e.path();
        let Some(c) = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .as_deref()
            .and_then(parse_proc_cgroup)
        else {
            continue;
        };
        if c.container_id != id {
            continue;
        }
        if let Some(st) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .as_deref()
            .and_then(stat::parse)
        {
            procs.push((pid, st.ppid, st.start_ticks));
        }
    }
    stat::main_process(&procs)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;
    use crate::{
        kubeapi::PodMeta,
        node::volumes::{VolumeKey, VolumeType},
        reloads::Found,
        signals::batch::WINDOW,
        updates::Tracker,
    };

    fn volume(name: &str) -> VolumeKey {
        VolumeKey {
            pod_uid: "pod".into(),
            volume_type: VolumeType::ConfigMap,
            name: name.into(),
        }
    }

    fn found(id: &str, name: &str, mount: MountKind) -> Found {
        Found {
            id: id.into(),
            name: name.into(),
            mount,
            started: SystemTime::UNIX_EPOCH,
            start_ticks: 1,
            mount_path: None,
            holds: Vec::new(),
            listed_at: SystemTime::UNIX_EPOCH,
            watches: false,
        }
    }

    /// A pod whose `config` volume `app`, `sidecar` and `sub` (subPath) consume, and
    /// whose `tls` volume `app` consumes, annotated with `annotations`.
    fn signal_loop(annotations: &[(&str, &str)]) -> SignalLoop {
        let shared = Arc::new(Shared::new(Tracker::new(Duration::from_secs(2), false)));
        {
            let mut r = shared.reloads.lock().unwrap();
            let config = vec![
                found("a", "app", MountKind::Volume),
                found("s", "sidecar", MountKind::Volume),
                found("p", "sub", MountKind::SubPath),
            ];
            r.set_consumers(&volume("config"), config);
            r.set_consumers(&volume("tls"), vec![found("a", "app", MountKind::Volume)]);
        }
        let pod = PodMeta {
            namespace: "shop".into(),
            name: "web".into(),
            workload: None,
            volumes: BTreeMap::new(),
            annotations: (annotations.iter())
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let meta = &mut shared.meta.state.lock().unwrap();
        meta.pods.insert("pod".into(), pod);
        SignalLoop::new(shared.clone(), "/proc".into())
    }

    /// The containers batched by the swaps of `volumes`, by name.
    fn batched(l: &mut SignalLoop, volumes: &[&str]) -> Vec<(String, Vec<String>)> {
        let t0 = Instant::now();
        for v in volumes {
            let s = Swapped {
                key: volume(v),
                ts_dir: "..1".into(),
            };
            l.swapped(s, t0);
        }
        (l.batcher.due(t0 + WINDOW).into_iter())
            .map(|b| {
                let vols = b.updates.into_iter().map(|(v, _)| v.name).collect();
                (b.container.name, vols)
            })
            .collect()
    }

    #[test]
    fn only_annotated_pods_whole_volume_consumers_are_batched() {
        let mut none = signal_loop(&[]);
        assert_eq!(batched(&mut none, &["config", "tls"]), []);

        let mut all = signal_loop(&[("reloadscope.dev/reload-signal", "SIGHUP")]);
        let got = batched(&mut all, &["config", "tls"]);
        let want = [
            (
                "app".to_owned(),
                vec!["config".to_owned(), "tls".to_owned()],
            ),
            ("sidecar".to_owned(), vec!["config".to_owned()]),
        ];
        assert_eq!(got, want, "one batch per container; the subPath one never");
    }

    #[test]
    fn the_lists_narrow_containers_and_volumes() {
        let mut l = signal_loop(&[
            ("reloadscope.dev/reload-signal", "HUP"),
            ("reloadscope.dev/reload-containers", "app"),
            ("reloadscope.dev/reload-volumes", "tls"),
        ]);
        let got = batched(&mut l, &["config", "tls"]);
        assert_eq!(got, [("app".to_owned(), vec!["tls".to_owned()])]);
    }

    /// An unknown signal is batched like any (so that it is counted once per update),
    /// and refused when due: counted, queued for an Event, never sent.
    #[test]
    fn an_unknown_signal_is_counted_and_queued_never_sent() {
        let mut l = signal_loop(&[("reloadscope.dev/reload-signal", "RELOAD")]);
        let t0 = Instant::now();
        l.swapped(
            Swapped {
                key: volume("tls"),
                ts_dir: "..1".into(),
            },
            t0,
        );
        for b in l.batcher.due(t0 + WINDOW) {
            l.signal(b);
        }
        let rec = l.shared.signals.lock().unwrap();
        let key = ("shop".to_owned(), String::new(), Failure::UnknownSignal);
        assert_eq!(rec.failed[&key], 1);
        assert_eq!(rec.sent.values().sum::<u64>(), 0);
        assert_eq!(rec.unsent.len(), 1);
        assert_eq!(rec.unsent[0].signal, "RELOAD");
        assert_eq!(rec.unsent[0].volumes, ["tls"]);
    }
}
