//! The node's configuration files, under `etc/` of its state dir: a kubeconfig per
//! client, containerd's and the CNI network's configuration, the kubelet's and
//! kube-proxy's, and the API server's audit policy.

use std::fs;

use anyhow::{Context, Result};

use super::net::{BRIDGE, GATEWAY, POD_CIDR, SERVICE_CIDR};
use super::pki::CLIENTS;
use super::{Layout, SYNC_FREQUENCY};

/// Writes every file; `tokens` are the clients' tokens in [`CLIENTS`] order.
pub fn write(layout: &Layout, tokens: &[String]) -> Result<()> {
    let etc = layout.etc();
    let ca = layout.pki().join("ca.crt");
    for (client, token) in CLIENTS.iter().zip(tokens) {
        // The admin's goes at the top of the state dir, for users.
        let path = if client.file == "admin.kubeconfig" {
            layout.admin_kubeconfig()
        } else {
            etc.join(client.file)
        };
        write_file(
            &path,
            &kubeconfig(&ca.display().to_string(), client.user, token),
        )?;
    }
    let files = [
        ("containerd.toml", containerd(layout)),
        ("cni/10-reloadscope.conflist", cni()),
        ("kubelet.yaml", kubelet(layout)),
        ("kube-proxy.yaml", kube_proxy(layout)),
        ("audit-policy.yaml", AUDIT_POLICY.to_owned()),
    ];
    for (name, text) in files {
        write_file(&etc.join(name), &text)?;
    }
    Ok(())
}

fn write_file(path: &std::path::Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, text).with_context(|| format!("could not write {}", path.display()))
}

fn kubeconfig(ca: &str, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
  - name: reloadscope-cluster
    cluster:
      server: https://{GATEWAY}:6443
      certificate-authority: {ca}
users:
  - name: {user}
    user:
      token: {token}
contexts:
  - name: reloadscope-cluster
    context:
      cluster: reloadscope-cluster
      user: {user}
current-context: reloadscope-cluster
"
    )
}

/// containerd with its root, state and socket in the node's state dir, the CRI
/// plugin's sandbox image the kubelet of 1.20 names, and the node's CNI network.
/// `restrict_oom_score_adj`: a process without CAP_SYS_RESOURCE (a container
/// sandbox) may not lower oom_score_adj, which the kubelet asks for.
fn containerd(layout: &Layout) -> String {
    let state = layout.state.display();
    let socket = layout.containerd_socket();
    let socket = socket.display();
    let cni = layout.etc().join("cni");
    let cni = cni.display();
    format!(
        r#"version = 2
root = "{state}/containerd/root"
state = "{state}/containerd/state"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
"#
    )
}

/// The pause image, built from the Kubernetes tree (`build/pause/linux/pause.c`).
pub const PAUSE_IMAGE: &str = "k8s.gcr.io/pause:3.2";

/// A bridge that holds the pods' gateway address, host-local addresses, and a route
/// to the Service range only: pods reach the bridge's subnet (the host, other pods)
/// and the `kubernetes` Service, and have no default route.
fn cni() -> String {
    format!(
        r#"{{
  "cniVersion": "0.4.0",
  "name": "reloadscope",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{POD_CIDR}", "gateway": "{GATEWAY}"}}]],
        "routes": [{{"dst": "{SERVICE_CIDR}"}}]
      }}
    }},
    {{"type": "loopback"}}
  ]
}}
"#
    )
}

/// The kubelet: servers on loopback only, the cgroupfs driver (the runc default),
/// swap allowed, the file limit this machine grants, and a short sync period so an
/// API change reaches the volumes within about 10 s.
fn kubelet(layout: &Layout) -> String {
    let ca = layout.pki().join("ca.crt");
    let ca = ca.display();
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
cgroupDriver: cgroupfs
failSwapOn: false
maxOpenFiles: 20000
syncFrequency: {SYNC_FREQUENCY}
clusterDomain: cluster.local
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
"
    )
}

/// kube-proxy in iptables mode, its servers on loopback; `maxPerCore: 0` leaves the
/// conntrack sysctls as they are (the machine may not let them be changed).
fn kube_proxy(layout: &Layout) -> String {
    let kubeconfig = layout.etc().join("kube-proxy.kubeconfig");
    let kubeconfig = kubeconfig.display();
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
mode: iptables
clusterCIDR: {POD_CIDR}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
"
    )
}

/// Every request at the Metadata level (who asked for what, never a body), except
/// the agent's requests on Secrets, whose responses are logged whole: the real-node
/// test reads them to show that the agent only ever received Secrets' metadata.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: RequestResponse
    users: [\"system:serviceaccount:reloadscope:reloadscope\"]
    resources:
      - group: \"\"
        resources: [secrets]
  - level: Metadata
";
