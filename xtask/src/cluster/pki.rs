//! The node's credentials, made with openssl at each `up`: a CA, the API server's
//! serving certificate and its client certificate to the kubelet, the
//! service-account signing key, and one random bearer token per client (the API
//! server's static token file).

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::process::Command;

use anyhow::{Context, Result};

use super::Layout;
use super::net::{GATEWAY, KUBERNETES_SERVICE_IP};
use crate::cmd;

/// A client of the API server: kubeconfig file name, user, groups.
pub struct Client {
    pub file: &'static str,
    pub user: &'static str,
    pub groups: &'static str,
}

/// Every client's identity. The kubelet's is the one the Node authorizer and the
/// NodeRestriction admission plugin expect of node `localhost`; the others are the
/// users the default RBAC roles name.
pub const CLIENTS: &[Client] = &[
    Client {
        file: "admin.kubeconfig",
        user: "admin",
        groups: "system:masters",
    },
    Client {
        file: "kubelet.kubeconfig",
        user: "system:node:localhost",
        groups: "system:nodes",
    },
    Client {
        file: "controller-manager.kubeconfig",
        user: "system:kube-controller-manager",
        groups: "",
    },
    Client {
        file: "scheduler.kubeconfig",
        user: "system:kube-scheduler",
        groups: "",
    },
    Client {
        file: "kube-proxy.kubeconfig",
        user: "system:kube-proxy",
        groups: "",
    },
];

/// Writes the CA, the serving certificate, the service-account keys and the token
/// file; returns each client's token, in [`CLIENTS`] order.
pub fn write(layout: &Layout) -> Result<Vec<String>> {
    let dir = layout.pki();
    // Arguments split on whitespace: none of them holds a space.
    let openssl = |args: &str| {
        let mut c = Command::new("openssl");
        c.args(args.split_whitespace())
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd::run(&mut c)
    };
    openssl(
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 365 \
         -subj /CN=reloadscope-cluster-ca",
    )?;
    // The names the API server is reached by: the bridge's address (host and pods'
    // endpoint), the `kubernetes` Service's, and its DNS names.
    fs::write(
        dir.join("apiserver.ext"),
        format!(
            "subjectAltName=IP:{GATEWAY},IP:{KUBERNETES_SERVICE_IP},IP:127.0.0.1,DNS:localhost,\
             DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
             DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    openssl(
        "req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
         -subj /CN=kube-apiserver",
    )?;
    openssl(
        "x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
         -out apiserver.crt -days 365 -extfile apiserver.ext",
    )?;
    // The API server's client certificate to the kubelet (logs, exec): the kubelet
    // authenticates it by the CA, and system:masters passes its authorization.
    fs::write(
        dir.join("kubelet-client.ext"),
        "extendedKeyUsage=clientAuth\n",
    )?;
    openssl(
        "req -newkey rsa:2048 -nodes -keyout kubelet-client.key -out kubelet-client.csr \
         -subj /O=system:masters/CN=kube-apiserver-kubelet-client",
    )?;
    openssl(
        "x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
         -out kubelet-client.crt -days 365 -extfile kubelet-client.ext",
    )?;
    openssl("genrsa -out sa.key 2048")?;
    openssl("rsa -in sa.key -pubout -out sa.pub")?;

    let mut tokens = Vec::new();
    let mut csv = String::new();
    for client in CLIENTS {
        let token = random_token()?;
        // token,user,uid,"group1,group2"
        writeln!(
            csv,
            "{token},{},{},\"{}\"",
            client.user, client.user, client.groups
        )?;
        tokens.push(token);
    }
    fs::write(dir.join("tokens.csv"), csv)?;
    Ok(tokens)
}

/// 32 random bytes from the kernel, in hex.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("could not read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
