//! The kubelet's volume layout (docs/design.md 2): where volumes live under a kubelet
//! root and what their names mean. Pure path logic: no file system access.

use std::{
    ffi::OsStr,
    fmt,
    path::{Component, Path, PathBuf},
};

/// The volume plugins whose volumes the kubelet writes with the AtomicWriter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VolumeType {
    ConfigMap,
    Secret,
    Projected,
    DownwardApi,
}

impl VolumeType {
    pub const ALL: [VolumeType; 4] = [
        VolumeType::ConfigMap,
        VolumeType::Secret,
        VolumeType::Projected,
        VolumeType::DownwardApi,
    ];

    /// The plugin's directory name under `pods/<uid>/volumes/`.
    pub fn plugin_dir(self) -> &'static str {
        match self {
            VolumeType::ConfigMap => "kubernetes.io~configmap",
            VolumeType::Secret => "kubernetes.io~secret",
            VolumeType::Projected => "kubernetes.io~projected",
            VolumeType::DownwardApi => "kubernetes.io~downward-api",
        }
    }

    pub fn from_plugin_dir(name: &OsStr) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| OsStr::new(t.plugin_dir()) == name)
    }

    /// The `volume_type` label value.
    pub fn label(self) -> &'static str {
        match self {
            VolumeType::ConfigMap => "configmap",
            VolumeType::Secret => "secret",
            VolumeType::Projected => "projected",
            VolumeType::DownwardApi => "downward_api",
        }
    }

    /// Secret and projected volumes are tmpfs mounts of their own.
    pub fn is_tmpfs(self) -> bool {
        matches!(self, VolumeType::Secret | VolumeType::Projected)
    }
}

/// One volume of one pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeKey {
    pub pod_uid: String,
    pub volume_type: VolumeType,
    pub name: String,
}

impl fmt::Display for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.pod_uid,
            self.volume_type.label(),
            self.name
        )
    }
}

/// Why a path under a kubelet root is not one the agent can name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("{0:?} is not valid UTF-8; Kubernetes pod uids and volume names always are")]
    NotUtf8(PathBuf),
    #[error("{0:?} has an empty, '.' or '..' component")]
    BadComponent(PathBuf),
}

pub const DATA: &str = "..data";
pub const DATA_TMP: &str = "..data_tmp";

/// A timestamped data dir of the AtomicWriter: `..2026_11_25_14_10_06.2914482033`.
/// Matched loosely (docs/design.md 1.4): `..`, then a digit, and not one of the fixed
/// names.
pub fn is_timestamped_dir(name: &OsStr) -> bool {
    let b = name.as_encoded_bytes();
    b.len() > 2 && b.starts_with(b"..") && b[2].is_ascii_digit()
}

/// Lexical normalisation: drops `.` and repeated separators, and applies `..` to the
/// components before it (never above `/`). Roots are matched on the result, so a path
/// that climbs out of a root is simply not under it.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// What a path under a kubelet root is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place<'a> {
    /// `<root>/pods`
    PodsDir,
    /// `<root>/pods/<uid>`
    Pod { uid: &'a str },
    /// `<root>/pods/<uid>/volumes`
    VolumesDir { uid: &'a str },
    /// `<root>/pods/<uid>/volumes/kubernetes.io~<plugin>`
    PluginDir {
        uid: &'a str,
        volume_type: VolumeType,
    },
    /// `<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<volume>[/<rest>]`
    Volume {
        key: VolumeKey,
        rest: Option<&'a OsStr>,
    },
    /// Under a root but nothing the agent follows (other plugins, `containers/`, ...).
    Other,
}

/// The configured kubelet roots (`--kubelet-root`, several on mixed nodes).
#[derive(Clone, Debug)]
pub struct Roots {
    roots: Vec<PathBuf>,
}

impl Roots {
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> Self {
        Roots {
            roots: roots.into_iter().map(|r| normalize(&r)).collect(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Path> {
        self.roots.iter().map(PathBuf::as_path)
    }

    /// `<root>/pods` of each root.
    pub fn pods_dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.iter().map(|r| r.join("pods"))
    }

    /// Classifies an absolute, normalised path. `None` when it is under no root.
    pub fn classify<'a>(&self, path: &'a Path) -> Option<Result<Place<'a>, PathError>> {
        let rel = self.iter().find_map(|r| path.strip_prefix(r).ok())?;
        Some(classify_rel(rel, path))
    }

    /// The volume directory of `key` under the first root that has its pod.
    pub fn volume_dir(root: &Path, key: &VolumeKey) -> PathBuf {
        root.join("pods")
            .join(&key.pod_uid)
            .join("volumes")
            .join(key.volume_type.plugin_dir())
            .join(&key.name)
    }
}

fn utf8<'a>(c: &'a OsStr, whole: &Path) -> Result<&'a str, PathError> {
    c.to_str()
        .ok_or_else(|| PathError::NotUtf8(whole.to_owned()))
}

fn classify_rel<'a>(rel: &'a Path, whole: &Path) -> Result<Place<'a>, PathError> {
    let mut parts = rel.components().map(|c| match c {
        Component::Normal(s) => Ok(s),
        _ => Err(PathError::BadComponent(whole.to_owned())),
    });
    match parts.next().transpose()? {
        Some(p) if p == "pods" => {}
        _ => return Ok(Place::Other),
    }
    let Some(uid) = parts.next().transpose()? else {
        return Ok(Place::PodsDir);
    };
    let uid = utf8(uid, whole)?;
    match parts.next().transpose()? {
        None => return Ok(Place::Pod { uid }),
        Some(p) if p == "volumes" => {}
        Some(_) => return Ok(Place::Other),
    }
    let Some(plugin) = parts.next().transpose()? else {
        return Ok(Place::VolumesDir { uid });
    };
    let Some(volume_type) = VolumeType::from_plugin_dir(plugin) else {
        return Ok(Place::Other);
    };
    let Some(name) = parts.next().transpose()? else {
        return Ok(Place::PluginDir { uid, volume_type });
    };
    let key = VolumeKey {
        pod_uid: uid.to_owned(),
        volume_type,
        name: utf8(name, whole)?.to_owned(),
    };
    let rest = parts.next().transpose()?;
    if parts.next().is_some() {
        // Deeper than the volume's own entries: a file inside a timestamped dir.
        return Ok(Place::Other);
    }
    Ok(Place::Volume { key, rest })
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsString, os::unix::ffi::OsStringExt};

    use super::*;

    const UID: &str = "0b5c7f2e-1a2b-4c3d-8e9f-001122334455";

    fn roots() -> Roots {
        Roots::new([
            PathBuf::from("/var/lib/kubelet"),
            PathBuf::from("/var/lib/k0s/kubelet"),
        ])
    }

    fn place(p: &str) -> Option<Place<'static>> {
        let path: &'static Path = Box::leak(PathBuf::from(p).into_boxed_path());
        roots().classify(path).map(Result::unwrap)
    }

    #[test]
    fn classifies_every_level() {
        let base = format!("/var/lib/kubelet/pods/{UID}");
        assert_eq!(place("/var/lib/kubelet/pods"), Some(Place::PodsDir));
        assert_eq!(place(&base), Some(Place::Pod { uid: UID }));
        assert_eq!(
            place(&format!("{base}/volumes")),
            Some(Place::VolumesDir { uid: UID })
        );
        assert_eq!(
            place(&format!("{base}/volumes/kubernetes.io~secret")),
            Some(Place::PluginDir {
                uid: UID,
                volume_type: VolumeType::Secret
            })
        );
        let key = VolumeKey {
            pod_uid: UID.into(),
            volume_type: VolumeType::DownwardApi,
            name: "podinfo".into(),
        };
        assert_eq!(
            place(&format!(
                "{base}/volumes/kubernetes.io~downward-api/podinfo"
            )),
            Some(Place::Volume {
                key: key.clone(),
                rest: None
            })
        );
        assert_eq!(
            place(&format!(
                "{base}/volumes/kubernetes.io~downward-api/podinfo/..data"
            )),
            Some(Place::Volume {
                key,
                rest: Some(OsStr::new("..data"))
            })
        );
    }

    #[test]
    fn second_root_and_unrelated_paths() {
        let p = format!(
            "/var/lib/k0s/kubelet/pods/{UID}/volumes/kubernetes.io~configmap/cfg/..data_tmp"
        );
        assert!(
            matches!(place(&p), Some(Place::Volume { rest: Some(r), .. }) if r == "..data_tmp")
        );
        assert_eq!(place("/etc/passwd"), None);
        assert_eq!(place("/var/lib/kubelet/plugins/x"), Some(Place::Other));
        assert_eq!(
            place(&format!("/var/lib/kubelet/pods/{UID}/containers/app")),
            Some(Place::Other)
        );
        assert_eq!(
            place(&format!(
                "/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~csi/v"
            )),
            Some(Place::Other)
        );
        let deep = format!(
            "/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~secret/s/..2026_01_01_00_00_00.1/tls.crt"
        );
        assert_eq!(place(&deep), Some(Place::Other));
    }

    #[test]
    fn refuses_non_utf8_names_and_dotdot() {
        let mut raw = b"/var/lib/kubelet/pods/".to_vec();
        raw.extend_from_slice(b"\xff\xfe/volumes");
        let path = PathBuf::from(OsString::from_vec(raw));
        assert!(matches!(
            roots().classify(&path),
            Some(Err(PathError::NotUtf8(_)))
        ));
        let climbed = normalize(Path::new("/var/lib/kubelet/pods/../../etc"));
        assert_eq!(climbed, PathBuf::from("/var/lib/etc"));
        assert!(roots().classify(&climbed).is_none());
        assert_eq!(
            normalize(Path::new("/a//b/./c/../d")),
            PathBuf::from("/a/b/d")
        );
        assert_eq!(normalize(Path::new("/../..")), PathBuf::from("/"));
    }

    #[test]
    fn timestamped_dir_names() {
        for yes in [
            "..2026_11_25_14_10_06.2914482033",
            "..2022_09_22_15_29_04.1",
            "..9",
        ] {
            assert!(is_timestamped_dir(OsStr::new(yes)), "{yes}");
        }
        for no in [
            "..data",
            "..data_tmp",
            "..",
            ".",
            "2026_11_25",
            "..x2026",
            "tls.crt",
        ] {
            assert!(!is_timestamped_dir(OsStr::new(no)), "{no}");
        }
    }

    #[test]
    fn volume_type_round_trips() {
        for t in VolumeType::ALL {
            assert_eq!(
                VolumeType::from_plugin_dir(OsStr::new(t.plugin_dir())),
                Some(t)
            );
        }
        assert_eq!(VolumeType::DownwardApi.label(), "downward_api");
        assert!(VolumeType::Secret.is_tmpfs() && !VolumeType::ConfigMap.is_tmpfs());
    }
}
