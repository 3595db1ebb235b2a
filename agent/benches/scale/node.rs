//! The scale benchmark's lab node: thousands of pods with five volumes each on a
//! journaled ext4 image (ConfigMaps), some of them with a Secret on a tmpfs of its own,
//! and `data-dir-watcher` lab containers on a few of the volumes. Made once, used by
//! every phase, torn down at the end with a check that no mount is left.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{
    AtomicWriter, CallStyle, ContainerSpec, LabContainer, LabNode, Strategy, WriteOutcome, payload,
};

use super::Params;
use crate::common::{lab_disk::LabDisk, machine::fs_desc, revision::revision_content};

/// The key consumers read; its content starts with the revision marker.
pub const KEY: &str = "config.yaml";
pub const NAMESPACE: &str = "bench";
/// The consumers' container name (one per pod).
pub const CONSUMER: &str = "watcher";
/// The ext4 image: 2 GiB gives 131,072 inodes; 10,000 volumes use about 80,000.
const IMAGE_MIB: u64 = 2048;

pub fn update_payload(rev: u64) -> reloadscope_lab::Payload {
    payload(&[
        (KEY, &revision_content(rev)),
        ("endpoints.yaml", "primary: https://10.0.0.1:8443\n"),
    ])
}

pub struct Vol {
    pub pod: String,
    pub name: String,
    pub ty: VolumeType,
    pub writer: AtomicWriter,
}

pub struct Ctr {
    pub c: LabContainer,
    pub vol: usize,
}

pub struct ScaleNode {
    pub vols: Vec<Vol>,
    pub ctrs: Vec<Ctr>,
    pub pods: usize,
    /// The pods' uids as their cgroup slice names spell them (`-` as `_`).
    pub slice_uids: std::collections::HashSet<String>,
    pub node: LabNode,
    /// Dropped after the node (its tree lives on it).
    disk: Option<LabDisk>,
    /// Where to look for mounts left after the teardown.
    base: PathBuf,
    /// The file system the ConfigMap volumes are on, for the report.
    pub fs: String,
    pub pods_took: Duration,
    pub consumers_took: Duration,
}

pub struct Teardown {
    pub took: Duration,
    pub errors: Vec<String>,
    /// Mount points under the node's base (or the disk's dir) still in
    /// /proc/self/mountinfo afterwards.
    pub mounts_left: usize,
}

impl ScaleNode {
    pub fn create(p: &Params) -> anyhow::Result<ScaleNode> {
        let bin = &reloadscope_lab::lab_bin()?;
        let disk = match LabDisk::create(IMAGE_MIB) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!(
                    "[scale] no ext4 image for the lab ({e:#}); it goes to the temp dir instead"
                );
                None
            }
        };
        let node = match &disk {
            Some(d) => LabNode::create(&d.path().join("node")),
            None => LabNode::temp(),
        }
        .context("lab node")?;
        let base = match &disk {
            Some(d) => d.path().parent().unwrap_or(d.path()).to_path_buf(),
            None => node.base().to_path_buf(),
        };
        let mut fs = fs_desc(&node.kubelet_root());
        if disk.is_some() {
            fs += &format!(
                ", a loop-mounted {} GiB image made for the run",
                IMAGE_MIB / 1024
            );
        }
        let mut s = ScaleNode {
            vols: Vec::with_capacity(p.pods * p.per_pod),
            ctrs: Vec::new(),
            pods: 0,
            slice_uids: Default::default(),
            node,
            disk,
            base,
            fs,
            pods_took: Duration::ZERO,
            consumers_took: Duration::ZERO,
        };
        let start = Instant::now();
        let mut pods = Vec::with_capacity(p.pods);
        for i in 0..p.pods {
            let pod_name = format!("scale-{i:04}");
            let pod = s.node.add_pod(NAMESPACE, &pod_name)?;
            for j in 0..p.per_pod {
                let (ty, name) = if j == p.per_pod - 1 && i % p.secret_every == 0 {
                    (VolumeType::Secret, "creds".to_owned())
                } else {
                    (VolumeType::ConfigMap, format!("cfg-{j}"))
                };
                let writer = s.node.add_volume(&pod, ty, &name)?;
                match writer.write(&update_payload(0), CallStyle::GoAt)? {
                    WriteOutcome::Written { initial: true, .. } => {}
                    other => bail!("initial population of {pod_name}/{name}: {other:?}"),
                }
                s.vols.push(Vol {
                    pod: pod_name.clone(),
                    name,
                    ty,
                    writer,
                });
            }
            s.slice_uids.insert(pod.uid.replace('-', "_"));
            pods.push(pod);
            s.pods += 1;
            if (i + 1) % 500 == 0 {
                eprintln!(
                    "[scale] setup: {} pods, {} volumes ({:.1} s)",
                    i + 1,
                    s.vols.len(),
                    start.elapsed().as_secs_f64()
                );
            }
        }
        // The setup's dirty pages written back now, not during a measurement.
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        s.pods_took = start.elapsed();

        // Consumers: spread over the pods; odd ones on the pod's last volume (its
        // Secret, when it has one), even ones on its first ConfigMap.
        let start = Instant::now();
        let stride = (p.pods / p.consumers.max(1)).max(1);
        for i in 0..p.consumers.min(p.pods) {
            let pod_i = i * stride;
            let vol = pod_i * p.per_pod + if i % 2 == 1 { p.per_pod - 1 } else { 0 };
            let spec = ContainerSpec::new(
                CONSUMER,
                s.vols[vol].writer.dir(),
                KEY,
                Strategy::DataDirWatcher,
            );
            let c = LabContainer::start(bin, &s.node, &pods[pod_i], &spec)
                .with_context(|| format!("consumer {} of {}", i + 1, p.consumers))?;
            s.ctrs.push(Ctr { c, vol });
            if (i + 1) % 25 == 0 {
                eprintln!(
                    "[scale] setup: {} consumers ({:.1} s)",
                    i + 1,
                    start.elapsed().as_secs_f64()
                );
            }
        }
        s.consumers_took = start.elapsed();
        Ok(s)
    }

    pub fn secrets(&self) -> usize {
        self.vols
            .iter()
            .filter(|v| v.ty == VolumeType::Secret)
            .count()
    }

    /// Stops the consumers, unmounts every tmpfs, removes the tree and the image, then
    /// counts the mounts left under them.
    pub fn teardown(self) -> Teardown {
        let start = Instant::now();
        let mut errors = Vec::new();
        let ScaleNode {
            vols,
            ctrs,
            node,
            disk,
            base,
            ..
        } = self;
        for c in ctrs {
            if let Err(e) = c.c.stop() {
                errors.push(format!("{e:#}"));
            }
        }
        drop(vols);
        drop(node);
        drop(disk);
        let mounts_left = mount_points_under(&base);
        Teardown {
            took: start.elapsed(),
            errors,
            mounts_left,
        }
    }
}

fn mount_points_under(dir: &Path) -> usize {
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return usize::MAX;
    };
    let (mounts, _) = reloadscope::node::mountinfo::parse_bytes(&info);
    mounts
        .iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .count()
}
