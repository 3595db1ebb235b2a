//! The node the registry tests render: pods `shop/web-0` and `shop/web-1` (StatefulSet
//! `web`) each with volume `app-config` (ConfigMap `app`), `batch/backup-1` (CronJob
//! `backup`) with `kube-api-access-abc` (projected), and pod `u3`, whose name is not
//! known yet, with secret `tls` and no API metadata.
//!
//! Consumers: web-0 `app` reloads 20 ms after the swap and `sidecar` binds a file
//! (subPath); web-1 `app` reloads after 3 s and `naive` (it watches the volume) never
//! does; u3 `c` (it holds a file open) never does; backup-1 `main` is never seen
//! reading its token: whether it reads it is unknown. The linter has one `subpath`
//! finding in each pod (web-1's from `pinned`).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    kubeapi::{PodMeta, SourceKind, VolumeSource, Workload, propagation::ObjectRef},
    linter::{Linter, Seen, VolumeInodes},
    node::{
        pod_logs::PodName,
        volumes::{VolumeKey, VolumeType},
    },
    reloads::{Found, MountKind, Opener, Reloads},
    state::Shared,
    updates::{Detection, Tracker},
};

fn key(uid: &str, ty: VolumeType, name: &str) -> VolumeKey {
    VolumeKey {
        pod_uid: uid.into(),
        volume_type: ty,
        name: name.into(),
    }
}

fn pod_meta(
    ns: &str,
    name: &str,
    owner: (&str, &str),
    vol: &str,
    src: &[(SourceKind, &str)],
) -> PodMeta {
    PodMeta {
        namespace: ns.into(),
        name: name.into(),
        workload: Some(Workload {
            kind: owner.0.into(),
            name: owner.1.into(),
        }),
        volumes: BTreeMap::from([(
            vol.to_owned(),
            src.iter().map(|(k, n)| VolumeSource::new(*k, *n)).collect(),
        )]),
        annotations: BTreeMap::new(),
    }
}

/// An hour ago: the volumes' swaps are a second later.
pub(super) fn t0() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600)
}

/// The node above; `api`: with the API's metadata and two changes of ConfigMaps, one
/// swapped 3 s after it was seen and two still pending 20 minutes later.
pub(super) fn node(api: bool) -> Arc<Shared> {
    let shared = Arc::new(Shared::new(Tracker::new(Duration::from_secs(2), false)));
    let swap = t0() + Duration::from_secs(1);
    let app0 = key("u0", VolumeType::ConfigMap, "app-config");
    let app1 = key("u1", VolumeType::ConfigMap, "app-config");
    let token = key("u2", VolumeType::Projected, "kube-api-access-abc");
    let tls = key("u3", VolumeType::Secret, "tls");
    let mut t = shared.tracker.lock().unwrap();
    for (uid, ns, name) in [
        ("u0", "shop", "web-0"),
        ("u1", "shop", "web-1"),
        ("u2", "batch", "backup-1"),
    ] {
        let name = PodName {
            namespace: ns.into(),
            name: name.into(),
        };
        t.pod_named(uid.into(), name);
    }
    let now = Instant::now();
    for k in [&app0, &app1, &token, &tls] {
        t.volume_found(
            k.clone(),
            "/v".into(),
            Some("..1".into()),
            now,
            t0(),
            || None,
        );
        let d = Detection {
            source: crate::updates::Source::Inotify,
            key: k.clone(),
            ts_dir: "..2".into(),
            at: swap,
        };
        t.detect(d, now);
    }
    drop(t);

    let mut r = Reloads::default();
    let found = |id: &str, mount| Found {
        id: id.into(),
        name: id.into(),
        mount,
        started: t0(),
        start_ticks: 1,
        mount_path: None,
        holds: vec!["..1".into()],
        listed_at: t0(),
        watches: false,
    };
    let whole = MountKind::Volume;
    r.set_consumers(
        &app0,
        vec![found("app", whole), found("sidecar", MountKind::SubPath)],
    );
    let watching = Found {
        holds: Vec::new(),
        watches: true,
        ..found("naive", whole)
    };
    r.set_consumers(&app1, vec![found("app", whole), watching]);
    let unseen = Found {
        holds: Vec::new(),
        ..found("main", whole)
    };
    r.set_consumers(&token, vec![unseen]);
    r.set_consumers(&tls, vec![found("c", whole)]);
    for k in [&app0, &app1, &token, &tls] {
        r.update(k, "..2", swap);
    }
    for (k, ms) in [(&app0, 20), (&app1, 3000)] {
        let opener = Opener::Container {
            pod_uid: k.pod_uid.clone(),
            id: "app".into(),
        };
        r.open(opener, k, "..2", swap + Duration::from_millis(ms));
    }
    *shared.reloads.lock().unwrap() = r;

    let mut l = Linter::default();
    let inodes = VolumeInodes::default();
    for (k, id) in [
        (&app0, "sidecar"),
        (&app1, "pinned"),
        (&token, "main"),
        (&tls, "c"),
    ] {
        let seen = Seen {
            key: k,
            id,
            name: id,
            mount: MountKind::SubPath,
            current: Some("..2"),
            updated_at: Some(swap),
            inodes: &inodes,
            watches: &[],
        };
        l.observe(seen, SystemTime::now());
    }
    l.observed = [("u0", 2), ("u1", 3), ("u2", 1), ("u3", 4)]
        .map(|(u, n)| (u.to_owned(), n))
        .into();
    *shared.linter.lock().unwrap() = l;

    if api {
        let mut m = shared.meta.state.lock().unwrap();
        m.configured = true;
        m.api_up = true;
        let app = [(SourceKind::ConfigMap, "app")];
        let sts = ("StatefulSet", "web");
        m.pods.insert(
            "u0".into(),
            pod_meta("shop", "web-0", sts, "app-config", &app),
        );
        m.pods.insert(
            "u1".into(),
            pod_meta("shop", "web-1", sts, "app-config", &app),
        );
        let token_sources = [
            (SourceKind::ServiceAccountToken, ""),
            (SourceKind::ConfigMap, "kube-root-ca.crt"),
            (SourceKind::DownwardApi, ""),
        ];
        let backup = ("CronJob", "backup");
        let p2 = pod_meta(
            "batch",
            "backup-1",
            backup,
            "kube-api-access-abc",
            &token_sources,
        );
        m.pods.insert("u2".into(), p2);
        let seen = SystemTime::now() - Duration::from_secs(20 * 60);
        let pods = m.pods.clone();
        let cm = |ns: &str, name: &str| ObjectRef {
            kind: SourceKind::ConfigMap,
            namespace: ns.into(),
            name: name.into(),
        };
        m.propagation
            .object_changed(&cm("shop", "app"), seen, &pods);
        m.propagation
            .object_changed(&cm("batch", "kube-root-ca.crt"), seen, &pods);
        m.propagation
            .swapped("u0", "app-config", seen + Duration::from_secs(3));
    }
    shared
}
