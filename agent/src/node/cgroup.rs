//! Processes to pods (docs/design.md 2): the pod uid and container id of a process,
//! read from the text of its `/proc/<pid>/cgroup`, for both cgroup drivers (systemd,
//! cgroupfs), the runtimes the kubelet drives (containerd, CRI-O, Docker) and kubelets
//! nested in a container (kind, docker-in-docker). Also the names the kubelet gives
//! these cgroups, so the lab can make real ones. Pure string logic: no file
//! system access.
//!
//! The agent usually runs in its own cgroup namespace (the default for containers on cgroup
//! v2), so the paths it reads for other processes start with `..` components that climb from
//! its own cgroup to the common ancestor: `/../../kubepods-besteffort-pod<uid>.slice/...`.
//! Such a leading run of `..` is accepted; a `..` anywhere else makes the path malformed.

/// A container of a pod, as its cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerRef {
    /// The pod uid in its dashed form (`0b5c7f2e-1a2b-4c3d-8e9f-001122334455`), or the 32
    /// hex digits of a static pod's uid as they are.
    pub pod_uid: String,
    /// The runtime's container id alone: hex, at least 12 digits, no `cri-containerd-`,
    /// `crio-` or `docker-` prefix, no `.scope`.
    pub container_id: String,
}

/// A pod's QoS class: the cgroup level between `kubepods` and the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qos {
    /// No level of its own: the pod sits right under `kubepods`.
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// The level's name in cgroup paths, None for guaranteed pods.
    fn level(self) -> Option<&'static str> {
        match self {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        }
    }
}

/// The QoS level names, as cgroupfs dirs and inside systemd slice names.
const QOS_LEVELS: [&str; 2] = ["burstable", "besteffort"];

/// The runtimes' prefixes of a container's scope (systemd driver) or dir (CRI-O under
/// cgroupfs). `crio-conmon-<id>` is CRI-O's monitor process, not the container: after the
/// `crio-` prefix, `conmon-<id>` is not hex and so is refused like any other non-id.
const RUNTIME_PREFIXES: [&str; 3] = ["cri-containerd-", "crio-", "docker-"];

/// The shortest container id accepted (Docker's short form).
const MIN_ID_LEN: usize = 12;

/// The container of a process, from the text of `/proc/<pid>/cgroup`: the cgroup v2 line
/// `0::/path` or the v1 lines `N:controllers:/path`, whichever first names a pod's
/// container. None for processes outside pod containers (host processes, the pod-level
/// cgroup itself, `crio-conmon-<id>.scope` helpers) and for malformed text. An exiting
/// process whose cgroup is already removed still names its container (the kernel then
/// appends ` (deleted)` to the v2 path).
pub fn parse_proc_cgroup(content: &str) -> Option<ContainerRef> {
    content.lines().find_map(|line| {
        let (hierarchy, rest) = line.split_once(':')?;
        let (_controllers, path) = rest.split_once(':')?;
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        if hierarchy.is_empty() || !hierarchy.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        parse_cgroup_path(path)
    })
}

/// The container of one cgroup path: a path from a `/proc/<pid>/cgroup` line, or a dir
/// relative to a cgroup mount. The innermost pod of the path wins (a kubelet nested in a
/// pod's container), and the cgroups a container makes below its own still belong to it.
pub fn parse_cgroup_path(path: &str) -> Option<ContainerRef> {
    let (climbed, parts) = components(path)?;
    let (i, pod_uid) = (0..parts.len())
        .rev()
        .find_map(|i| pod_at(&parts, i, climbed).map(|uid| (i, uid)))?;
    let container_id = container_id(parts.get(i + 1)?)?;
    Some(ContainerRef {
        pod_uid,
        container_id: container_id.to_owned(),
    })
}

/// The pod uid of a pod-level cgroup path (`.../kubepods-burstable-pod<uid>.slice`,
/// `.../kubepods/burstable/pod<uid>`), None for any other path, a container's included.
pub fn pod_of_cgroup_path(path: &str) -> Option<String> {
    let (climbed, parts) = components(path)?;
    pod_at(&parts, parts.len().checked_sub(1)?, climbed)
}

/// The pod-level slice name under the systemd driver:
/// `kubepods-burstable-pod0b5c7f2e_1a2b_4c3d_8e9f_001122334455.slice`
/// (systemd reads `-` as a level separator, so the kubelet writes the uid with `_`).
pub fn systemd_pod_slice(uid: &str, qos: Qos) -> String {
    let uid = uid.replace('-', "_");
    match qos.level() {
        Some(level) => format!("kubepods-{level}-pod{uid}.slice"),
        None => format!("kubepods-pod{uid}.slice"),
    }
}

/// The pod's cgroup path relative to the cgroup root under the systemd driver:
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice`, or
/// `kubepods.slice/kubepods-pod<uid_>.slice` for a guaranteed pod.
pub fn systemd_pod_path(uid: &str, qos: Qos) -> String {
    let slice = systemd_pod_slice(uid, qos);
    match qos.level() {
        Some(level) => format!("kubepods.slice/kubepods-{level}.slice/{slice}"),
        None => format!("kubepods.slice/{slice}"),
    }
}

/// A containerd container's scope under the systemd driver: `cri-containerd-<id>.scope`.
pub fn containerd_scope(id: &str) -> String {
    format!("cri-containerd-{id}.scope")
}

/// The non-empty components of `path` after a leading run of `..`, and whether there was
/// one (the path is relative to the reader's cgroup namespace and misses its top).
/// None if a `.` or a later `..` appears.
fn components(path: &str) -> Option<(bool, Vec<&str>)> {
    let mut parts = path.split('/').filter(|c| !c.is_empty()).peekable();
    let mut climbed = false;
    while parts.next_if_eq(&"..").is_some() {
        climbed = true;
    }
    let parts: Vec<&str> = parts.collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return None;
    }
    Some((climbed, parts))
}

/// The pod uid if `parts[i]` is a pod-level cgroup. `climbed`: the path misses its top.
fn pod_at(parts: &[&str], i: usize, climbed: bool) -> Option<String> {
    let name = *parts.get(i)?;
    if let Some(stem) = name.strip_suffix(".slice") {
        // systemd: `[<prefix>-]kubepods[-<qos>]-pod<uid>.slice`; the self-describing name
        // needs no parent (kind's nested kubelet uses the prefix `kubelet-`).
        let (owner, uid) = stem.rsplit_once("-pod")?;
        let owner = QOS_LEVELS
            .iter()
            .find_map(|level| owner.strip_suffix(level)?.strip_suffix('-'))
            .unwrap_or(owner);
        if owner != "kubepods" && !owner.ends_with("-kubepods") {
            return None;
        }
        return normalise_uid(uid);
    }
    // cgroupfs: `kubepods/[<qos>/]pod<uid>`. Ancestors cut off by the reader's cgroup
    // namespace cannot be checked and are let pass.
    let uid = name.strip_prefix("pod")?;
    let mut above = parts[..i].iter().rev();
    let mut parent = above.next();
    if parent.is_some_and(|level| QOS_LEVELS.contains(level)) {
        parent = above.next();
    }
    match parent {
        Some(&"kubepods") => normalise_uid(uid),
        None if climbed => normalise_uid(uid),
        _ => None,
    }
}

/// A pod uid in its dashed form: 8-4-4-4-12 hex digits separated by `-` or `_`, or 32 hex
/// digits without separators (static pods: the kubelet's hash of the manifest), kept as is.
fn normalise_uid(uid: &str) -> Option<String> {
    let b = uid.as_bytes();
    match b.len() {
        32 if b.iter().all(u8::is_ascii_hexdigit) => Some(uid.to_owned()),
        36 => {
            let mut out = String::with_capacity(36);
            for (i, &c) in b.iter().enumerate() {
                match i {
                    8 | 13 | 18 | 23 if c == b'-' || c == b'_' => out.push('-'),
                    8 | 13 | 18 | 23 => return None,
                    _ if c.is_ascii_hexdigit() => out.push(char::from(c)),
                    _ => return None,
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// The container id of a container cgroup's name: `<prefix><id>.scope` (systemd),
/// `crio-<id>` (CRI-O under cgroupfs) or a bare `<id>` (containerd and Docker under cgroupfs).
fn container_id(name: &str) -> Option<&str> {
    let name = name.strip_suffix(".scope").unwrap_or(name);
    let id = RUNTIME_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    let hex = id.len() >= MIN_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b5c7f2e-1a2b-4c3d-8e9f-001122334455";
    const UID_: &str = "0b5c7f2e_1a2b_4c3d_8e9f_001122334455";
    const STATIC_UID: &str = "6e4b1c0a9f8d7e6c5b4a39281706f5e4";
    const ID: &str = "3f2a9c1b7d6e5f40a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718";

    fn cref(uid: &str, id: &str) -> Option<ContainerRef> {
        Some(ContainerRef {
            pod_uid: uid.to_owned(),
            container_id: id.to_owned(),
        })
    }

    #[test]
    fn container_paths() {
        let short = &ID[..12];
        let cases: Vec<(String, Option<ContainerRef>)> = vec![
            // systemd driver, containerd, each QoS class.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                cref(UID, ID),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                cref(UID, ID),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                cref(UID, ID),
            ),
            // CRI-O and Docker under systemd; CRI-O's own sub-cgroup of the container.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"
                ),
                cref(UID, ID),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope/container"),
                cref(UID, ID),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"
                ),
                cref(UID, ID),
            ),
            // cgroupfs driver: containerd and Docker ids bare, CRI-O prefixed.
            (format!("/kubepods/burstable/pod{UID}/{ID}"), cref(UID, ID)),
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), cref(UID, ID)),
            (format!("/kubepods/pod{UID}/{ID}"), cref(UID, ID)),
            (format!("/kubepods/pod{UID}/crio-{ID}"), cref(UID, ID)),
            // Nested kubelets: kind, docker-in-docker, a kind node that is itself a pod.
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                cref(UID, ID),
            ),
            (
                format!("/docker/{ID}/kubepods/burstable/pod{UID}/{short}"),
                cref(UID, short),
            ),
            (
                format!(
                    "/kubepods/burstable/pod{STATIC_UID}/{short}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                cref(UID, ID),
            ),
            // Seen from the agent's own cgroup namespace.
            (
                format!(
                    "/../../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                cref(UID, ID),
            ),
            (format!("/../../../besteffort/pod{UID}/{ID}"), cref(UID, ID)),
            (format!("/../../pod{UID}/{ID}"), cref(UID, ID)),
            // Static pods keep their undashed uid; relative dirs, trailing slashes; upper case.
            (
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{ID}.scope/"
                ),
                cref(STATIC_UID, ID),
            ),
            (
                format!("kubepods/pod{STATIC_UID}/{}", ID.to_uppercase()),
                cref(STATIC_UID, &ID.to_uppercase()),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parse_cgroup_path(&path), want, "{path}");
        }
    }

    #[test]
    fn not_containers() {
        let long = "a".repeat(100_000);
        let cases: Vec<String> = vec![
            String::new(),
            "/".into(),
            "//".into(),
            "/init.scope".into(),
            "/system.slice/containerd.service".into(),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/kubepods/{ID}"),
            "/user.slice/user-1000.slice/session-3.scope".into(),
            "/kubepods.slice".into(),
            "/kubepods.slice/kubepods-burstable.slice".into(),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
            format!("/kubepods/burstable/pod{UID}"),
            format!("/kubepods/burstable/pod{UID}/"),
            // CRI-O's monitor, under both drivers.
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            format!("/kubepods/pod{UID}/crio-conmon-{ID}"),
            // Ids too short, not hex, with an unknown prefix.
            format!("/kubepods/pod{UID}/{}", &ID[..11]),
            format!("/kubepods/pod{UID}/{}", ID.replace('a', "g")),
            format!("/kubepods/pod{UID}/containerd-{ID}"),
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-.scope"),
            // Bad uids, bad owners, bad parents.
            format!("/kubepods/pod{}/{ID}", &UID[1..]),
            format!("/kubepods/pod{}/{ID}", UID.replace('-', "x")),
            format!("/kubepods/pod{}/{ID}", UID.replacen('b', "z", 1)),
            format!("/kubepods.slice/notkubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-guaranteed-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            format!("/system/burstable/pod{UID}/{ID}"),
            format!("/other/pod{UID}/{ID}"),
            format!("/pod{UID}/{ID}"),
            format!("/burstable/pod{UID}/{ID}"),
            // `.` and `..` after the start.
            format!("/kubepods/burstable/pod{UID}/../pod{UID}/{ID}"),
            format!("/kubepods/burstable/pod{UID}/{ID}/.."),
            format!("/kubepods/./pod{UID}/{ID}"),
            "/../..".into(),
            // Odd bytes and sizes.
            format!("/kubepods/pod{UID}/{ID}é"),
            format!("/kubepods/pod{UID}\0/{ID}"),
            format!("/kubepods/pod{UID} /{ID}"),
            format!("/{long}/kubepods/pod{long}/{long}"),
            "-pod.slice".into(),
            "pod".into(),
            ".slice/.scope".into(),
        ];
        for path in cases {
            assert_eq!(parse_cgroup_path(&path), None, "{path:.200}");
        }
    }

    #[test]
    fn proc_cgroup_files() {
        let v2 = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parse_proc_cgroup(&v2), cref(UID, ID));
        assert_eq!(parse_proc_cgroup(&format!("{v2}\n")), cref(UID, ID));
        assert_eq!(parse_proc_cgroup(&format!("{v2}\r\n")), cref(UID, ID));
        assert_eq!(
            parse_proc_cgroup(&format!("{v2} (deleted)\n")),
            cref(UID, ID)
        );

        // cgroup v1, cgroupfs driver: every hierarchy names the container.
        let v1 = format!(
            "12:memory:/kubepods/burstable/pod{UID}/{ID}\n\
             11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n\
             0::/\n"
        );
        assert_eq!(parse_proc_cgroup(&v1), cref(UID, ID));

        // cgroup v1, systemd driver, some hierarchies not (yet) moved: any line does.
        let hybrid = format!(
            "13:rdma:/\n\
             12:pids:/system.slice/containerd.service\n\
             1:name=systemd:/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope\n\
             0::/"
        );
        assert_eq!(parse_proc_cgroup(&hybrid), cref(UID, ID));
    }

    #[test]
    fn proc_cgroup_not_containers() {
        let long = format!("0::/{}", "kubepods/".repeat(20_000));
        let cases: Vec<String> = vec![
            String::new(),
            "\n".into(),
            "0::/".into(),
            "0::".into(),
            "::".into(),
            ":".into(),
            "0::/init.scope\n".into(),
            "0::/system.slice/kubelet.service\n".into(),
            "12:memory:/\n11:cpu,cpuacct:/user.slice\n0::/user.slice\n".into(),
            format!("0::/kubepods.slice/kubepods-pod{UID_}.slice\n"),
            format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope\n"),
            // A container path without a well-formed hierarchy number before it.
            format!("/kubepods/pod{UID}/{ID}"),
            format!("x::/kubepods/pod{UID}/{ID}"),
            format!(":/kubepods/pod{UID}/{ID}"),
            format!("-1::/kubepods/pod{UID}/{ID}"),
            long,
        ];
        for content in cases {
            assert_eq!(parse_proc_cgroup(&content), None, "{content:.200}");
        }
    }

    #[test]
    fn pod_paths() {
        let cases: Vec<(String, Option<&str>)> = vec![
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
                ),
                Some(UID),
            ),
            (
                format!("kubepods.slice/kubepods-pod{UID_}.slice/"),
                Some(UID),
            ),
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice"
                ),
                Some(UID),
            ),
            (format!("/kubepods/burstable/pod{UID}"), Some(UID)),
            (format!("/kubepods/pod{STATIC_UID}"), Some(STATIC_UID)),
            (format!("/../../kubepods-pod{UID_}.slice"), Some(UID)),
            (format!("/kubepods/burstable/pod{UID}/{ID}"), None),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                None,
            ),
            ("/kubepods.slice/kubepods-burstable.slice".into(), None),
            ("/kubepods/burstable".into(), None),
            ("/".into(), None),
            (String::new(), None),
            (format!("/kubepods/burstable/pod{UID}/.."), None),
        ];
        for (path, want) in cases {
            assert_eq!(pod_of_cgroup_path(&path).as_deref(), want, "{path}");
        }
    }

    #[test]
    fn kubelet_names() {
        assert_eq!(
            systemd_pod_slice(UID, Qos::Burstable),
            format!("kubepods-burstable-pod{UID_}.slice")
        );
        assert_eq!(
            systemd_pod_path(UID, Qos::Burstable),
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice")
        );
        assert_eq!(
            systemd_pod_path(UID, Qos::BestEffort),
            format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice")
        );
        assert_eq!(
            systemd_pod_path(UID, Qos::Guaranteed),
            format!("kubepods.slice/kubepods-pod{UID_}.slice")
        );
        assert_eq!(containerd_scope(ID), format!("cri-containerd-{ID}.scope"));

        // What the lab makes, the agent reads back.
        for qos in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
            for uid in [UID, STATIC_UID] {
                let pod = systemd_pod_path(uid, qos);
                assert_eq!(pod_of_cgroup_path(&pod).as_deref(), Some(uid));
                let container = format!("/{pod}/{}", containerd_scope(ID));
                assert_eq!(parse_cgroup_path(&container), cref(uid, ID));
                assert_eq!(
                    parse_proc_cgroup(&format!("0::{container}\n")),
                    cref(uid, ID)
                );
            }
        }
    }
}
