//! The agent's defaults, in one place: the command line shows them (`--help`) and
//! [`Config::node_defaults`](super::Config::node_defaults) is made of them.

/// `--kubelet-root`.
pub const KUBELET_ROOT: &str = "/var/lib/kubelet";
/// `--pod-logs-dir`.
pub const POD_LOGS_DIR: &str = "/var/log/pods";
/// `--container-logs-dir`.
pub const CONTAINER_LOGS_DIR: &str = "/var/log/containers";
/// `--proc-root`.
pub const PROC_ROOT: &str = "/proc";
/// `--listen`.
pub const LISTEN: &str = "0.0.0.0:9741";
/// `--metric-labels`: every consumer label.
pub const CONSUMER_LABELS: &str = "namespace,workload,pod,container,volume";
/// `--histogram-labels`: one latency histogram per workload's container and volume,
/// not per pod (its replicas share it); the per-pod view is the stale gauge's.
pub const HISTOGRAM_LABELS: &str = "namespace,workload,container,volume";
/// `--rewatch-grace`, seconds.
pub const REWATCH_GRACE_SECONDS: f64 = crate::linter::REWATCH_GRACE.as_secs_f64();
/// `--propagation-timeout`, seconds.
pub const PROPAGATION_TIMEOUT_SECONDS: f64 = 300.0;
/// `--stale-after`, seconds.
pub const STALE_AFTER_SECONDS: f64 = 600.0;
/// `--ring-bytes`.
pub const RING_BYTES: u32 = crate::probe::DEFAULT_RING_BYTES;
/// `--probe`.
pub const PROBE: crate::probe::Choice = crate::probe::Choice::Auto;
/// `--settled-marks`.
pub const SETTLED_MARKS: crate::opens::SettledMarks = crate::opens::SettledMarks::Auto;
