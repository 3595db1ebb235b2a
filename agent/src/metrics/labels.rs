//! Label and cardinality controls: which labels the per-consumer families keep, and
//! which namespaces and volumes are exported at all.

/// The labels a per-consumer family can keep, in this order.
pub const CONSUMER_LABELS: [&str; 5] = ["namespace", "workload", "pod", "container", "volume"];

#[derive(Clone, Debug)]
pub struct LabelControls {
    /// Labels the per-consumer families keep, of [`CONSUMER_LABELS`].
    pub consumer: Vec<String>,
    /// Namespaces exported; empty: all.
    pub namespaces: Vec<String>,
    /// Namespaces never exported.
    pub exclude_namespaces: Vec<String>,
    /// Volumes (by name) never exported.
    pub exclude_volumes: Option<regex::Regex>,
}

impl Default for LabelControls {
    fn default() -> Self {
        LabelControls {
            consumer: CONSUMER_LABELS.map(String::from).to_vec(),
            namespaces: Vec::new(),
            exclude_namespaces: Vec::new(),
            exclude_volumes: None,
        }
    }
}
