//! The real-node test's workloads: three namespaces, owned by a Deployment, a
//! StatefulSet and nobody (a bare pod), whose containers consume ConfigMap, Secret
//! and projected volumes the ways applications do (`reloadscope-consumer
//! --strategy`, the project's test image), and what the agent must find of each.
//!
//! Each consumer logs its opens on its stdout (`open <unix nanos> <head hex>`), so the
//! kubelet's container log is the container's own record of when it read what.

use std::fmt::Write as _;

/// The test image (`cargo xtask image` builds it) and the pause image (the
/// cluster's sandbox image): a container that mounts a volume and never reads it.
pub const CONSUMER_IMAGE: &str = "reloadscope-test/consumer";
pub const IDLE_IMAGE: &str = "k8s.gcr.io/pause:3.2";

/// How a container is expected to be judged after its volume's update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Reloads each update: its reload time must match its own log within 5 ms.
    Reloads,
    /// Reloads each update only because the agent signals it (its pod's
    /// `reloadscope.dev/reload-signal` annotation): judged as [`Verdict::Reloads`].
    Signalled,
    /// Never reloads: stale, and ReloadscopeConsumerStale fires for it.
    Stale,
    /// Mounts the volume but never reads it: never its stale consumer.
    NeverReads,
    /// Binds one file by subPath: reported as such, never stale.
    SubPath,
    /// Restarted after the update: its new process has the new data.
    Restarted,
}

/// One consuming container.
#[derive(Clone, Copy, Debug)]
pub struct Consumer {
    pub namespace: &'static str,
    pub container: &'static str,
    pub volume: &'static str,
    /// `reloadscope-consumer --strategy`, or None for the idle (pause) container.
    pub strategy: Option<&'static str>,
    /// The file it reads, under its mount.
    pub file: &'static str,
    pub mount: &'static str,
    pub sub_path: Option<&'static str>,
    pub verdict: Verdict,
    /// The watch finding the agent must report, if any.
    pub finding: Option<&'static str>,
}

#[allow(clippy::too_many_arguments)] // a table row's columns, named in `Consumer`
const fn c(
    namespace: &'static str,
    container: &'static str,
    volume: &'static str,
    strategy: Option<&'static str>,
    mount: &'static str,
    file: &'static str,
    verdict: Verdict,
    finding: Option<&'static str>,
) -> Consumer {
    Consumer {
        namespace,
        container,
        volume,
        strategy,
        file,
        mount,
        sub_path: None,
        verdict,
        finding,
    }
}

pub const SHOP: &str = "e2e-shop";
pub const VAULT: &str = "e2e-vault";
pub const BATCH: &str = "e2e-batch";

use Verdict::*;

/// Every consumer of the test's volumes (the `kube-api-access-*` volumes every
/// container mounts and none of these reads come on top). One row a container.
#[rustfmt::skip]
pub const CONSUMERS: &[Consumer] = &[
    // A Deployment's pod: every strategy on a ConfigMap (disk) volume.
    c(SHOP, "watcher", "app-config", Some("data-dir-watcher"), "/etc/app", "key", Reloads, Some("ok")),
    c(SHOP, "rewatcher", "app-config", Some("file-rewatcher"), "/etc/app", "key", Reloads, Some("ok")),
    c(SHOP, "poller", "app-config", Some("timer-poller"), "/etc/app", "key", Reloads, None),
    c(SHOP, "naive", "app-config", Some("naive-modify"), "/etc/app", "key", Stale, Some("no_delete_self")),
    c(SHOP, "dontfollow", "app-config", Some("dont-follow"), "/etc/app", "key", Stale, Some("dont_follow")),
    c(SHOP, "once", "app-config", Some("read-once"), "/etc/app", "key", Stale, None),
    c(SHOP, "restarted", "app-config", Some("read-once"), "/etc/app", "key", Restarted, None),
    // Reads at start and on SIGHUP only; the pod asks the agent for SIGHUP for it
    // alone (SIGNAL_ANNOTATIONS), so the never-reloading ones above stay stale.
    c(SHOP, "hup", "app-config", Some("sighup-reloader"), "/etc/app", "key", Signalled, None),
    // A StatefulSet's pod: a Secret (tmpfs) volume.
    c(VAULT, "watcher", "tls", Some("data-dir-watcher"), "/etc/tls", "tls.crt", Reloads, Some("ok")),
    c(VAULT, "rewatcher", "tls", Some("file-rewatcher"), "/etc/tls", "tls.crt", Reloads, Some("ok")),
    c(VAULT, "once", "tls", Some("read-once"), "/etc/tls", "tls.crt", Stale, None),
    // A bare pod: a projected volume changed through its ConfigMap, and one that the
    // kubelet rewrites alone when it refreshes the token.
    c(BATCH, "bundlewatcher", "bundle", Some("data-dir-watcher"), "/etc/bundle", "mode", Reloads, Some("ok")),
    // A subPath bind of a file keeps its old inode alive: IN_DELETE_SELF never comes
    // to a watcher of that file, which then never reloads (the app-config and tls
    // file re-watchers have no such sibling).
    Consumer {
        sub_path: Some("mode"),
        ..c(BATCH, "pinned", "bundle", Some("timer-poller"), "/etc/pinned/mode", "", SubPath, Some("subpath"))
    },
    c(BATCH, "pinnedwatcher", "bundle", Some("file-rewatcher"), "/etc/bundle", "mode", Stale, Some("pinned_by_subpath")),
    c(BATCH, "tokenpoller", "tok", Some("timer-poller"), "/var/run/tok", "token", Reloads, None),
    c(BATCH, "tokenonce", "tok", Some("read-once"), "/var/run/tok", "token", Stale, None),
    c(BATCH, "idle", "tok", None, "/var/run/tok", "token", NeverReads, None),
];

/// The Deployment's pod annotations: SIGHUP for `hup` at each swap of `app-config`
/// (not of its token's volume; the agent runs with `deploy/components/reload-signals`).
pub const SIGNAL_ANNOTATIONS: &str = "{reloadscope.dev/reload-signal: SIGHUP, \
     reloadscope.dev/reload-containers: hup, reloadscope.dev/reload-volumes: app-config}";

/// The token's lifetime in the `tok` volume: the API's minimum. The kubelet
/// rewrites the volume once the token is older than 80 % of it (480 s), at a sync.
pub const TOKEN_EXPIRATION_SECONDS: u32 = 600;

/// What the test changes through the API, and the content each change writes.
pub struct Change {
    pub namespace: &'static str,
    pub kind: &'static str,
    pub name: &'static str,
    pub key: &'static str,
    pub before: &'static str,
    pub after: &'static str,
    /// The volume it reaches, and the volume's `source_kind` / `source_name` labels.
    pub volume: &'static str,
    pub source_kind: &'static str,
    pub source_name: &'static str,
}

pub const CHANGES: &[Change] = &[
    Change {
        namespace: SHOP,
        kind: "configmap",
        name: "app-config",
        key: "key",
        before: "v1",
        after: "v2",
        volume: "app-config",
        source_kind: "ConfigMap",
        source_name: "app-config",
    },
    Change {
        namespace: VAULT,
        kind: "secret",
        name: "tls",
        key: "tls.crt",
        before: "cert-1",
        after: "cert-2",
        volume: "tls",
        source_kind: "Secret",
        source_name: "tls",
    },
    Change {
        namespace: BATCH,
        kind: "configmap",
        name: "settings",
        key: "mode",
        before: "fast",
        after: "safe",
        volume: "bundle",
        source_kind: "ConfigMap,ServiceAccountToken",
        source_name: "settings,",
    },
];

/// The pod template's containers of `namespace`, indented for a pod spec.
fn containers(namespace: &str, tag: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for c in CONSUMERS.iter().filter(|c| c.namespace == namespace) {
        let (image, args) = match c.strategy {
            Some(strategy) => {
                let file = if c.file.is_empty() {
                    c.mount.to_owned()
                } else {
                    format!("{}/{}", c.mount, c.file)
                };
                (
                    format!("{CONSUMER_IMAGE}:{tag}"),
                    format!("[--strategy, {strategy}, --file, {file}, --period, \"1\"]"),
                )
            }
            None => (IDLE_IMAGE.to_owned(), "[]".to_owned()),
        };
        let sub_path = c
            .sub_path
            .map(|s| format!(", subPath: {s}"))
            .unwrap_or_default();
        let _ = write!(
            out,
            "{pad}- name: {name}
{pad}  image: {image}
{pad}  imagePullPolicy: Never
{pad}  args: {args}
{pad}  resources: {{requests: {{cpu: 1m, memory: 8Mi}}, limits: {{memory: 32Mi}}}}
{pad}  volumeMounts: [{{name: {volume}, mountPath: {mount}, readOnly: true{sub_path}}}]
",
            name = c.container,
            volume = c.volume,
            mount = c.mount,
        );
    }
    out
}

fn data(change: &Change) -> String {
    let field = if change.kind == "secret" {
        "stringData"
    } else {
        "data"
    };
    format!(
        "apiVersion: v1
kind: {kind}
metadata: {{name: {name}, namespace: {ns}}}
{field}: {{{key}: {value}}}
",
        kind = if change.kind == "secret" {
            "Secret"
        } else {
            "ConfigMap"
        },
        name = change.name,
        ns = change.namespace,
        key = change.key,
        value = change.before,
    )
}

/// Every object of the test, as one multi-document YAML for `kubectl apply -f -`.
pub fn manifests(tag: &str) -> String {
    let mut docs: Vec<String> = [SHOP, VAULT, BATCH]
        .iter()
        .map(|ns| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"))
        .collect();
    docs.extend(CHANGES.iter().map(data));
    docs.push(format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {SHOP}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}, annotations: {SIGNAL_ANNOTATIONS}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
{}      volumes:
        - {{name: app-config, configMap: {{name: app-config}}}}
",
        containers(SHOP, tag, 8)
    ));
    docs.push(format!(
        "apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: {VAULT}}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
{}      volumes:
        - {{name: tls, secret: {{secretName: tls}}}}
",
        containers(VAULT, tag, 8)
    ));
    docs.push(format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: solo, namespace: {BATCH}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
{}  volumes:
    - name: bundle
      projected:
        sources:
          - configMap: {{name: settings}}
          - serviceAccountToken: {{path: bundle-token, expirationSeconds: 3600}}
    - name: tok
      projected:
        sources:
          - serviceAccountToken: {{path: token, expirationSeconds: {TOKEN_EXPIRATION_SECONDS}}}
          - configMap: {{name: kube-root-ca.crt, items: [{{key: ca.crt, path: ca.crt}}]}}
",
        containers(BATCH, tag, 4)
    ));
    docs.join("---\n")
}

/// The patch that makes `change`: a JSON merge patch of its data.
pub fn patch(change: &Change) -> String {
    let field = if change.kind == "secret" {
        "stringData"
    } else {
        "data"
    };
    format!(r#"{{"{field}":{{"{}":"{}"}}}}"#, change.key, change.after)
}

/// Lower-case hex of the first bytes of `content`, as the consumers log it.
pub fn head_hex(content: &str) -> String {
    content
        .bytes()
        .take(32)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_name_is_unique_in_its_namespace_and_every_volume_is_declared() {
        let yaml = manifests("0.0.0");
        for (i, c) in CONSUMERS.iter().enumerate() {
            assert!(
                CONSUMERS[..i]
                    .iter()
                    .all(|o| (o.namespace, o.container) != (c.namespace, c.container)),
                "{}/{} twice",
                c.namespace,
                c.container
            );
            assert!(yaml.contains(&format!("- name: {}\n", c.container)));
            assert!(
                yaml.contains(&format!("{{name: {}, ", c.volume))
                    || yaml.contains(&format!("- name: {}\n      projected", c.volume)),
                "volume {} of {} not declared",
                c.volume,
                c.container
            );
        }
    }

    #[test]
    fn the_patch_is_a_merge_patch_of_the_key() {
        assert_eq!(patch(&CHANGES[0]), r#"{"data":{"key":"v2"}}"#);
        assert_eq!(patch(&CHANGES[1]), r#"{"stringData":{"tls.crt":"cert-2"}}"#);
        assert_eq!(head_hex("v2"), "7632");
    }
}
