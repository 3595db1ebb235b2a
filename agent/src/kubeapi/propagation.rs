//! Propagation delay: from a ConfigMap or Secret change seen on the API to the
//! kubelet's swap of each volume on this node that holds it. Pure state.

#[derive(Debug, Default)]
pub struct Propagation {}
