//! What the bench applies: per mode, a kustomization of the workspace's deploy/ that
//! adds `--settled-marks <mode>` alone, and the bench pod with its ConfigMap and Secret.

use super::*;

/// The temporary kustomization: the workspace's deploy/ (by a relative path:
/// kustomize refuses absolute ones) with `--settled-marks <mode>` added to the
/// agent's args, and nothing else changed.
pub(super) fn kustomization_yaml(deploy: &Path, mode: Mode) -> String {
    format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {}
patches:
  - target: {{group: apps, version: v1, kind: DaemonSet, name: reloadscope}}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --settled-marks
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: {}
",
        deploy.display(),
        mode.name()
    )
}

/// `to` as a path relative to the directory `from` (both made canonical).
pub(super) fn relative(from: &Path, to: &Path) -> Result<PathBuf> {
    let from = fs::canonicalize(from).with_context(|| format!("{}", from.display()))?;
    let to = fs::canonicalize(to).with_context(|| format!("{}", to.display()))?;
    Ok(relative_between(&from, &to))
}

pub(super) fn relative_between(from: &Path, to: &Path) -> PathBuf {
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c);
    }
    out
}

/// The bench's objects: its namespace, ConfigMap, Secret and pod.
pub(super) fn manifests(pod: &str, tag: &str, mode: Mode) -> String {
    let initial = format!("{}-initial", mode.name());
    let mut containers = String::new();
    for c in &CONSUMERS {
        let v = &VOLUMES[c.volume];
        containers.push_str(&format!(
            "    - name: {name}
      image: {CONSUMER_IMAGE}:{tag}
      imagePullPolicy: Never
      args: [--strategy, {strategy}, --file, {mount}/{key}, --period, \"1\"]
      resources: {{requests: {{cpu: 1m, memory: 8Mi}}, limits: {{memory: 32Mi}}}}
      volumeMounts: [{{name: {volume}, mountPath: {mount}, readOnly: true}}]
",
            name = c.container,
            strategy = c.strategy,
            mount = c.mount,
            key = v.key,
            volume = v.name,
        ));
    }
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: {cm}, namespace: {NAMESPACE}}}
data: {{{cm_key}: {initial}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: {secret}, namespace: {NAMESPACE}}}
stringData: {{{secret_key}: {initial}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {NAMESPACE}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
{containers}  volumes:
    - {{name: {cm_vol}, configMap: {{name: {cm}}}}}
    - {{name: {secret_vol}, secret: {{secretName: {secret}}}}}
",
        cm = VOLUMES[0].object,
        cm_key = VOLUMES[0].key,
        cm_vol = VOLUMES[0].name,
        secret = VOLUMES[1].object,
        secret_key = VOLUMES[1].key,
        secret_vol = VOLUMES[1].name,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kustomization_adds_only_the_mode_to_the_agents_args() {
        let yaml = kustomization_yaml(Path::new("../../work/main/deploy"), Mode::Remove);
        assert!(yaml.contains("resources:\n  - ../../work/main/deploy\n"));
        assert!(yaml.contains("value: --settled-marks\n"));
        assert!(yaml.contains("value: remove\n"));
        assert_eq!(yaml.matches("- op:").count(), 2);
    }

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        let rel = |a: &str, b: &str| relative_between(Path::new(a), Path::new(b));
        assert_eq!(
            rel("/tmp/bench-1/auto", "/work/main/deploy"),
            Path::new("../../../work/main/deploy")
        );
        assert_eq!(
            rel("/work/main/target/x", "/work/main/deploy"),
            Path::new("../../deploy")
        );
    }

    #[test]
    fn the_bench_pod_mounts_each_volume_its_consumers_read() {
        let yaml = manifests("bench-auto", "0.1.0", Mode::Auto);
        for c in &CONSUMERS {
            assert!(yaml.contains(&format!("- name: {}\n", c.container)));
            assert!(yaml.contains(&format!("--strategy, {}", c.strategy)));
        }
        assert!(yaml.contains("data: {key: auto-initial}"));
        assert!(yaml.contains("stringData: {tls.crt: auto-initial}"));
        assert!(yaml.contains("{name: secret, secret: {secretName: bench-secret}}"));
    }
}
