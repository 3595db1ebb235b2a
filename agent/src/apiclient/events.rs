//! `StaleVolumeReload` Events (`--emit-events`): a Warning `events.k8s.io/v1` Event on
//! the pod of a container that stays stale past `--stale-after`. And, under
//! `--reload-signals`, `ReloadSignalFailed` Events: a Warning on the pod of a container
//! whose reload signal could not be sent, posted as the signal loop records them.
//!
//! - At most one per (pod, container, volume, update), and at most [`PER_MINUTE`] a
//!   minute for the whole agent: a ConfigMap that a thousand pods of the node never
//!   reload must not flood the API server. Those over the limit are not posted later;
//!   they are counted in a log line (the metrics still show every stale consumer).
//! - Each is created anew (`create` on `events.k8s.io` `events`; no `patch`): its note
//!   names the container, the volume, its source and how long.
//! - Pods are named by the API (`MetaState::pods`), else by the node (pod log dirs).
//!   Nothing is posted while the API is down; a failed post is retried at the next
//!   sweep.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{kubeapi::Settings, node::volumes::VolumeKey, signals::Unsent, state::Shared};

pub const REASON: &str = "StaleVolumeReload";
/// The reason of a reload signal's failure.
pub const SIGNAL_REASON: &str = "ReloadSignalFailed";
/// How often failed reload signals are looked for.
const UNSENT_EVERY: Duration = Duration::from_millis(500);
/// The Events' `reportingController`.
pub const CONTROLLER: &str = "reloadscope";
/// Events posted in any minute, at most.
pub const PER_MINUTE: usize = 10;
/// The longest wait between two looks for stale consumers.
const SWEEP_MAX: Duration = Duration::from_secs(10);

/// One update not reloaded by one container.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    volume: VolumeKey,
    container: String,
    ts_dir: String,
}

/// A consumer stale past the threshold.
#[derive(Clone, Debug)]
struct Stale {
    key: Key,
    swap: SystemTime,
}

/// A pod's namespace and name.
type PodName = (String, String);

/// Posts up to [`PER_MINUTE`] a minute; remembers what it posted.
struct Poster {
    /// Posted (or suppressed): not again while the volume's data dir is the same.
    done: HashSet<Key>,
    limiter: Limiter,
    suppressed_total: u64,
    failing: bool,
    seq: u64,
}

pub async fn run(
    client: Client,
    settings: Settings,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let every = (settings.stale_after / 2).clamp(Duration::from_millis(200), SWEEP_MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unsent = tokio::time::interval(UNSENT_EVERY);
    unsent.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sweeps = settings.emit_events;
    let mut poster = Poster {
        done: HashSet::new(),
        limiter: Limiter::new(PER_MINUTE, Duration::from_secs(60)),
        suppressed_total: 0,
        failing: false,
        seq: 0,
    };
    if sweeps {
        info!(
            stale_after_s = settings.stale_after.as_secs_f64(),
            "posting {REASON} Events on pods whose containers stay stale"
        );
    }
    loop {
        let sweep = tokio::select! {
            _ = tick.tick(), if sweeps => true,
            _ = unsent.tick() => false,
            _ = stop.wait_for(|s| *s) => return,
        };
        // A post the API server does not answer must not hold the agent's shutdown.
        tokio::select! {
            _ = async {
                if sweep {
                    poster.sweep(&client, &settings, &shared).await
                } else {
                    poster.unsent(&client, &settings, &shared).await
                }
            } => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

impl Poster {
    /// Posts the reload signals' failures the signal loop recorded, within the same
    /// limit; those over it are dropped (the metrics count every one).
    async fn unsent(&mut self, client: &Client, settings: &Settings, shared: &Shared) {
        let mut queued: VecDeque<Unsent> = {
            let mut rec = shared.signals.lock().expect("signals lock");
            std::mem::take(&mut rec.unsent)
        };
        if queued.is_empty() {
            return;
        }
        if !shared.meta.state.lock().expect("meta lock").api_up {
            put_back(shared, queued);
            return;
        }
        let names = pod_names(shared, queued.iter().map(|u| u.pod_uid.as_str()));
        while let Some(u) = queued.pop_front() {
            let Some((namespace, pod)) = names.get(&u.pod_uid) else {
                continue;
            };
            if !self.limiter.allow(Instant::now()) {
                self.suppressed_total += 1;
                continue;
            }
            self.seq += 1;
            let note = format!(
                "{signal} not sent to container {container:?} after the update of volume(s) \
                 {volumes}: {why}.",
                signal = u.signal,
                container = u.container,
                volumes = u.volumes.join(", "),
                why = u.failure.describe(),
            );
            let w = Warning {
                reason: SIGNAL_REASON,
                action: "SignalReload",
                pod_uid: &u.pod_uid,
                container: &u.container,
                note,
            };
            let event = warning(settings, namespace, pod, &w, SystemTime::now(), self.seq);
            let api = Api::<Event>::namespaced(client.clone(), namespace);
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                self.limiter.forget_last();
                if !self.failing {
                    self.failing = true;
                    warn!(error = %e, "cannot post {SIGNAL_REASON} Events (RBAC: create events.k8s.io events)");
                }
                queued.push_front(u);
                put_back(shared, queued);
                return;
            }
            debug!(%namespace, %pod, container = %u.container, "{SIGNAL_REASON} Event posted");
        }
    }

    async fn sweep(&mut self, client: &Client, settings: &Settings, shared: &Shared) {
        let now = SystemTime::now();
        let stale = stale_consumers(shared, settings.stale_after, now);
        // Forget updates no longer current: their volume moved on (or went).
        {
            let t = shared.tracker.lock().expect("tracker lock");
            self.done.retain(|k| {
                t.volume(&k.volume)
                    .is_some_and(|v| v.current.as_deref() == Some(k.ts_dir.as_str()))
            });
        }
        let fresh: Vec<Stale> = stale
            .into_iter()
            .filter(|s| !self.done.contains(&s.key))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let names = pod_names(shared, fresh.iter().map(|s| s.key.volume.pod_uid.as_str()));
        let (api_up, sources) = {
            let st = shared.meta.state.lock().expect("meta lock");
            let sources: HashMap<&Key, (String, String)> = fresh
                .iter()
                .map(|s| {
                    (
                        &s.key,
                        st.source_labels(&s.key.volume.pod_uid, &s.key.volume.name),
                    )
                })
                .collect();
            (st.api_up, sources)
        };
        if !api_up {
            return;
        }
        let mut suppressed = 0;
        for s in &fresh {
            let Some((namespace, pod)) = names.get(&s.key.volume.pod_uid) else {
                continue;
            };
            if !settings.namespaces.is_empty() && !settings.namespaces.contains(namespace) {
                continue;
            }
            if !self.limiter.allow(Instant::now()) {
                suppressed += 1;
                self.done.insert(s.key.clone());
                continue;
            }
            self.seq += 1;
            let source = sources.get(&s.key).cloned().unwrap_or_default();
            let event = event(
                settings,
                namespace,
                pod,
                s,
                &source,
                SystemTime::now(),
                self.seq,
            );
            let api = Api::<Event>::namespaced(client.clone(), namespace);
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => {
                    debug!(%namespace, %pod, container = %s.key.container, volume = %s.key.volume.name, "{REASON} Event posted");
                    self.done.insert(s.key.clone());
                    if self.failing {
                        self.failing = false;
                        info!("{REASON} Events are posted again");
                    }
                }
                Err(e) => {
                    // Not counted against the limit; tried again at the next sweep.
                    self.limiter.forget_last();
                    if !self.failing {
                        self.failing = true;
                        warn!(error = %e, "cannot post {REASON} Events (RBAC: create events.k8s.io events)");
                    }
                    break;
                }
            }
        }
        if suppressed > 0 {
            self.suppressed_total += suppressed;
            info!(
                suppressed,
                suppressed_total = self.suppressed_total,
                "{REASON} Events not posted: at most {PER_MINUTE} a minute"
            );
        }
    }
}

/// Failures not posted yet go back before any recorded since.
fn put_back(shared: &Shared, mut queued: VecDeque<Unsent>) {
    let mut rec = shared.signals.lock().expect("signals lock");
    queued.extend(rec.unsent.drain(..));
    for u in queued {
        rec.queue(u);
    }
}

/// Whole-volume consumers whose newest update is older than `after` and not reloaded.
fn stale_consumers(shared: &Shared, after: Duration, now: SystemTime) -> Vec<Stale> {
    let r = shared.reloads.lock().expect("reloads lock");
    r.consumers()
        .filter(|(_, _, c)| c.measured())
        .filter_map(|(volume, _, c)| {
            let (ts_dir, swap) = c.pending.clone()?;
            now.duration_since(swap).ok().filter(|d| *d >= after)?;
            Some(Stale {
                key: Key {
                    volume: volume.clone(),
                    container: c.name.clone(),
                    ts_dir,
                },
                swap,
            })
        })
        .collect()
}

/// Each pod's namespace and name: the API's, else the node's (pod log dirs).
fn pod_names<'a>(shared: &Shared, uids: impl Iterator<Item = &'a str>) -> HashMap<String, PodName> {
    let uids: Vec<&str> = uids.collect();
    let mut names: HashMap<String, PodName> = {
        let t = shared.tracker.lock().expect("tracker lock");
        uids.iter()
            .filter_map(|uid| {
                let p = t.pod_name(uid)?;
                Some(((*uid).to_owned(), (p.namespace.clone(), p.name.clone())))
            })
            .collect()
    };
    let st = shared.meta.state.lock().expect("meta lock");
    for uid in uids {
        if let Some(p) = st.pods.get(uid) {
            names.insert(uid.to_owned(), (p.namespace.clone(), p.name.clone()));
        }
    }
    names
}

/// The Event for `s` on pod `namespace/pod`.
fn event(
    settings: &Settings,
    namespace: &str,
    pod: &str,
    s: &Stale,
    (source_kind, source_name): &(String, String),
    now: SystemTime,
    seq: u64,
) -> Event {
    let stale_for = now.duration_since(s.swap).unwrap_or_default();
    let source = if source_kind.is_empty() {
        String::new()
    } else {
        format!(" ({source_kind} {source_name})")
    };
    let swapped = rfc3339(s.swap);
    let note = format!(
        "Container {container:?} has not reloaded volume {volume:?}{source} for {stale}: \
         its files were updated at {swapped} and it has not opened the new data since.",
        container = s.key.container,
        volume = s.key.volume.name,
        stale = human(stale_for),
    );
    let w = Warning {
        reason: REASON,
        action: "MeasureReload",
        pod_uid: &s.key.volume.pod_uid,
        container: &s.key.container,
        note,
    };
    warning(settings, namespace, pod, &w, now, seq)
}

/// What a Warning Event on a pod's container says.
struct Warning<'a> {
    reason: &'static str,
    action: &'static str,
    pod_uid: &'a str,
    container: &'a str,
    note: String,
}

/// A Warning Event on container `w.container` of pod `namespace/pod`.
fn warning(
    settings: &Settings,
    namespace: &str,
    pod: &str,
    w: &Warning<'_>,
    now: SystemTime,
    seq: u64,
) -> Event {
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let instance = format!("{CONTROLLER}-{}", settings.node_name);
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{pod}.{:x}", nanos.wrapping_add(seq))),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        event_time: Timestamp::try_from(now).ok().map(MicroTime),
        type_: Some("Warning".into()),
        reason: Some(w.reason.into()),
        action: Some(w.action.into()),
        note: Some(truncate(w.note.clone(), 1024)),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.to_owned()),
            name: Some(pod.to_owned()),
            uid: Some(w.pod_uid.to_owned()),
            field_path: Some(format!("spec.containers{{{}}}", w.container)),
            ..ObjectReference::default()
        }),
        reporting_controller: Some(CONTROLLER.into()),
        reporting_instance: Some(truncate(instance, 128)),
        ..Event::default()
    }
}

/// `t` in whole seconds, as the API writes times.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Timestamp::from_second(secs).map_or_else(|_| String::new(), |ts| ts.to_string())
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// `1h2m3s`, `4m5s`, `6s`, `0.7s`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{:.1}s", d.as_secs_f64()),
        1..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m{}s", secs / 3600, secs % 3600 / 60, secs % 60),
    }
}

/// At most `max` in any `window`.
#[derive(Debug)]
struct Limiter {
    max: usize,
    window: Duration,
    sent: VecDeque<Instant>,
}

impl Limiter {
    fn new(max: usize, window: Duration) -> Self {
        Limiter {
            max,
            window,
            sent: VecDeque::new(),
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.sent.pop_front();
        }
        if self.sent.len() >= self.max {
            return false;
        }
        self.sent.push_back(now);
        true
    }

    /// The last allowed one was not used.
    fn forget_last(&mut self) {
        self.sent.pop_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_per_window() {
        let mut l = Limiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let allowed: Vec<bool> = (0..5)
            .map(|i| l.allow(t0 + Duration::from_secs(i)))
            .collect();
        assert_eq!(allowed, [true, true, true, false, false]);
        // The first leaves the window 60 s after it was sent.
        assert!(!l.allow(t0 + Duration::from_millis(59_999)));
        assert!(l.allow(t0 + Duration::from_secs(60)));
        assert!(!l.allow(t0 + Duration::from_secs(60)));
        l.forget_last();
        assert!(l.allow(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human(Duration::from_millis(700)), "0.7s");
        assert_eq!(human(Duration::from_secs(6)), "6s");
        assert_eq!(human(Duration::from_secs(245)), "4m5s");
        assert_eq!(human(Duration::from_secs(3723)), "1h2m3s");
    }

    #[test]
    fn the_event_is_a_valid_warning_on_the_container() {
        let settings = Settings {
            kubeconfig: None,
            node_name: "n1".into(),
            propagation_timeout: Duration::from_secs(300),
            emit_events: true,
            stale_after: Duration::from_secs(600),
            namespaces: Vec::new(),
        };
        let swap = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_638_694);
        let s = Stale {
            key: Key {
                volume: VolumeKey {
                    pod_uid: "u1".into(),
                    volume_type: crate::node::volumes::VolumeType::ConfigMap,
                    name: "app-config".into(),
                },
                container: "once".into(),
                ts_dir: "..2026_11_25_20_31_34.1".into(),
            },
            swap,
        };
        let source = ("ConfigMap".to_owned(), "app-config".to_owned());
        let e = event(
            &settings,
            "shop",
            "web-0",
            &s,
            &source,
            swap + Duration::from_secs(725),
            1,
        );
        assert_eq!(e.reason.as_deref(), Some(REASON));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reporting_instance.as_deref(), Some("reloadscope-n1"));
        let regarding = e.regarding.unwrap();
        assert_eq!(regarding.uid.as_deref(), Some("u1"));
        assert_eq!(
            regarding.field_path.as_deref(),
            Some("spec.containers{once}")
        );
        assert_eq!(
            e.note.as_deref(),
            Some(
                "Container \"once\" has not reloaded volume \"app-config\" (ConfigMap \
                 app-config) for 12m5s: its files were updated at 2026-11-25T20:31:34Z and it \
                 has not opened the new data since."
            )
        );
        assert!(e.metadata.name.unwrap().starts_with("web-0."));
    }
}
