//! Pod and container names without the API server (docs/design.md 2), from the names of
//! the kubelet's pod log dirs (`/var/log/pods/<namespace>_<pod>_<uid>/`) and container
//! log links:
//! `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`. Pod and namespace
//! names never contain `_` (DNS subdomains and labels), container names never do either
//! but may contain `-`, so the id is what follows the last `-`. Pure string logic: no
//! file system access.

/// Pod names, from the pod-logs dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// `<namespace>_<pod>_<uid>` (docs/design.md 2): namespace and pod names never hold `_`.
pub fn parse_pod_log_dir(name: &str) -> Option<(String, PodName)> {
    let mut it = name.split('_');
    let (ns, pod, uid) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || ns.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    Some((
        uid.to_owned(),
        PodName {
            namespace: ns.to_owned(),
            name: pod.to_owned(),
        },
    ))
}

/// What a `/var/log/containers/` file name says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLogName {
    pub pod: String,
    pub namespace: String,
    pub container: String,
    /// The runtime's container id: 64 hex digits.
    pub container_id: String,
}

/// The length of a container id in these names (a sha256 in hex).
const ID_LEN: usize = 64;

/// A `/var/log/containers/` file name, `<pod>_<namespace>_<container>-<id>.log`, its
/// file name only. None for other names.
pub fn parse_container_log_name(file_name: &str) -> Option<ContainerLogName> {
    let stem = file_name.strip_suffix(".log")?;
    let (pod, rest) = stem.split_once('_')?;
    let (namespace, rest) = rest.split_once('_')?;
    let (container, id) = rest.rsplit_once('-')?;
    let is_id = id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_id || ![pod, namespace, container].into_iter().all(is_name) {
        return None;
    }
    Some(ContainerLogName {
        pod: pod.to_owned(),
        namespace: namespace.to_owned(),
        container: container.to_owned(),
        container_id: id.to_owned(),
    })
}

/// The `/var/log/containers/` file name the kubelet gives a container's log link.
pub fn container_log_name(pod: &str, namespace: &str, container: &str, id: &str) -> String {
    format!("{pod}_{namespace}_{container}-{id}.log")
}

/// A plausible object name: not empty, no `_`, no path separator, no control character.
fn is_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c == '_' || c == '/' || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b7d6e5f40a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718";

    fn log(pod: &str, namespace: &str, container: &str) -> Option<ContainerLogName> {
        Some(ContainerLogName {
            pod: pod.into(),
            namespace: namespace.into(),
            container: container.into(),
            container_id: ID.into(),
        })
    }

    #[test]
    fn container_logs() {
        let cases = [
            (
                format!("nginx-7c5ddbdf54-x2x9k_default_nginx-{ID}.log"),
                log("nginx-7c5ddbdf54-x2x9k", "default", "nginx"),
            ),
            (
                format!("coredns-76f75df574-abcde_kube-system_coredns-{ID}.log"),
                log("coredns-76f75df574-abcde", "kube-system", "coredns"),
            ),
            // Dashes in the container name; dots in the pod name (a static pod's node suffix).
            (
                format!("etcd-node-1.example.com_kube-system_config-reloader-sidecar-{ID}.log"),
                log(
                    "etcd-node-1.example.com",
                    "kube-system",
                    "config-reloader-sidecar",
                ),
            ),
            // A container name that itself looks like an id.
            (
                format!("p_ns_abcdef012345-{ID}.log"),
                log("p", "ns", "abcdef012345"),
            ),
            // Not ours: other extensions, short or non-hex ids, missing parts, paths.
            (format!("p_ns_c-{ID}.log.1"), None),
            (format!("p_ns_c-{ID}"), None),
            (format!("p_ns_c-{}.log", &ID[1..]), None),
            (format!("p_ns_c-{ID}0.log"), None),
            (format!("p_ns_c-{}.log", ID.replace('a', "z")), None),
            (format!("p_ns_c_{ID}.log"), None),
            (format!("p_ns_c{ID}.log"), None),
            (format!("p_ns_-{ID}.log"), None),
            (format!("p__c-{ID}.log"), None),
            (format!("_ns_c-{ID}.log"), None),
            (format!("p_ns_c_d-{ID}.log"), None),
            (format!("p_ns-{ID}.log"), None),
            (format!("/var/log/containers/p_ns_c-{ID}.log"), None),
            (format!("p_ns_c\n-{ID}.log"), None),
            (String::new(), None),
            (".log".into(), None),
            ("__-.log".into(), None),
            ("é_é_é-é.log".into(), None),
            ("_".repeat(100_000), None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_container_log_name(&name), want, "{name:.200}");
        }
    }

    #[test]
    fn container_log_round_trip() {
        let name = container_log_name("web-0", "shop", "app-sidecar", ID);
        assert_eq!(name, format!("web-0_shop_app-sidecar-{ID}.log"));
        assert_eq!(
            parse_container_log_name(&name),
            log("web-0", "shop", "app-sidecar")
        );
    }
}
