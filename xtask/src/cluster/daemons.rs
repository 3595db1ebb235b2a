//! The node's processes: each one's command line, started in a session of its own
//! with its output in `logs/<name>.log`, and recorded as `run/<name>.pid` (pid and
//! the kernel's start time of that pid), so that `down` stops exactly the process
//! `up` started and never one that reused its pid.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Binaries, Layout, NODE};

/// A process of the node: program and arguments.
pub struct Daemon {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
}

/// The command line of daemon `name`, with the node's files from [`super::files`]
/// and [`super::pki`].
pub fn spec(layout: &Layout, bins: &Binaries, name: &str) -> Daemon {
    let pki = |f: &str| layout.pki().join(f).display().to_string();
    let etc = |f: &str| layout.etc().join(f).display().to_string();
    let gw = super::net::GATEWAY;
    let (program, args): (PathBuf, Vec<String>) = match name {
        "etcd" => (
            "etcd".into(),
            vec![
                "--name=node".into(),
                format!("--data-dir={}", layout.state.join("etcd").display()),
                "--listen-client-urls=http://127.0.0.1:2379".into(),
                "--advertise-client-urls=http://127.0.0.1:2379".into(),
                "--listen-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-cluster=node=http://127.0.0.1:2380".into(),
                "--listen-metrics-urls=http://127.0.0.1:2381".into(),
            ],
        ),
        "containerd" => (
            "containerd".into(),
            vec![format!("--config={}", etc("containerd.toml"))],
        ),
        "kube-apiserver" => (
            bins.kube_apiserver(),
            vec![
                "--etcd-servers=http://127.0.0.1:2379".into(),
                // The bridge's address: the host's own, and the one the `kubernetes`
                // Service leads pods to. Nothing on another interface.
                format!("--bind-address={gw}"),
                format!("--advertise-address={gw}"),
                "--secure-port=6443".into(),
                "--insecure-port=0".into(),
                format!("--tls-cert-file={}", pki("apiserver.crt")),
                format!("--tls-private-key-file={}", pki("apiserver.key")),
                format!("--client-ca-file={}", pki("ca.crt")),
                format!("--token-auth-file={}", pki("tokens.csv")),
                "--authorization-mode=Node,RBAC".into(),
                format!("--service-cluster-ip-range={}", super::net::SERVICE_CIDR),
                format!("--service-account-key-file={}", pki("sa.pub")),
                format!("--service-account-signing-key-file={}", pki("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--kubelet-preferred-address-types=Hostname,InternalIP".into(),
                format!("--kubelet-client-certificate={}", pki("kubelet-client.crt")),
                format!("--kubelet-client-key={}", pki("kubelet-client.key")),
                // Pods get the projected `kube-api-access-*` token volume every
                // cluster mounts from 1.21 on (a Secret volume on 1.20 otherwise).
                "--feature-gates=BoundServiceAccountTokenVolume=true".into(),
                format!("--audit-policy-file={}", etc("audit-policy.yaml")),
                format!("--audit-log-path={}", layout.audit_log().display()),
                "--enable-admission-plugins=NodeRestriction".into(),
            ],
        ),
        "kube-controller-manager" => (
            bins.kube_controller_manager(),
            vec![
                format!("--kubeconfig={}", etc("controller-manager.kubeconfig")),
                "--bind-address=127.0.0.1".into(),
                "--port=0".into(),
                "--leader-elect=false".into(),
                // Each controller with its own service account and the RBAC role made
                // for it, as kubeadm runs it: the controller manager's own user may
                // not publish kube-root-ca.crt, for one.
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", pki("sa.key")),
                format!("--root-ca-file={}", pki("ca.crt")),
                "--feature-gates=BoundServiceAccountTokenVolume=true".into(),
            ],
        ),
        "kube-scheduler" => (
            bins.kube_scheduler(),
            vec![
                format!("--kubeconfig={}", etc("scheduler.kubeconfig")),
                "--bind-address=127.0.0.1".into(),
                "--port=0".into(),
                "--leader-elect=false".into(),
            ],
        ),
        "kube-proxy" => (
            bins.kube_proxy(),
            vec![
                format!("--config={}", etc("kube-proxy.yaml")),
                format!("--hostname-override={NODE}"),
            ],
        ),
        "kubelet" => (
            bins.kubelet(),
            vec![
                format!("--config={}", etc("kubelet.yaml")),
                format!("--kubeconfig={}", etc("kubelet.kubeconfig")),
                "--container-runtime=remote".into(),
                format!(
                    "--container-runtime-endpoint=unix://{}",
                    layout.containerd_socket().display()
                ),
                format!("--hostname-override={NODE}"),
                format!("--root-dir={}", super::KUBELET_ROOT),
                "--v=2".into(),
            ],
        ),
        other => unreachable!("no daemon named {other}"),
    };
    Daemon {
        name: name.to_owned(),
        program,
        args,
    }
}

impl Daemon {
    /// Starts it in a session of its own, output appended to its log, and records it.
    pub fn start(&self, layout: &Layout) -> Result<u32> {
        let log_path = layout.logs().join(format!("{}.log", self.name));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("could not open {}", log_path.display()))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .current_dir(&layout.state);
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        // A session of its own: a Ctrl-C in the terminal that ran `up` does not reach it.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("could not start {}: `{}`", self.name, self.display()))?;
        let pid = child.id();
        // The child is reaped in `stop` (waitpid) or, once xtask exits, by init.
        drop(child);
        let start =
            start_time(pid).with_context(|| format!("{} (pid {pid}) exited at once", self.name))?;
        fs::write(pid_file(layout, &self.name), format!("{pid} {start}\n"))?;
        Ok(pid)
    }

    fn display(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn pid_file(layout: &Layout, name: &str) -> PathBuf {
    layout.run().join(format!("{name}.pid"))
}

/// The pid of daemon `name` if the recorded process still runs (not a zombie, and
/// not another process that reused the pid).
pub fn running(layout: &Layout, name: &str) -> Option<u32> {
    let record = fs::read_to_string(pid_file(layout, name)).ok()?;
    let (pid, start) = record.trim().split_once(' ')?;
    let pid: u32 = pid.parse().ok()?;
    (start_time(pid).as_deref() == Some(start)).then_some(pid)
}

/// SIGTERM, then SIGKILL after `grace`; waits until the process is gone. Returns
/// whether it was running.
pub fn stop(layout: &Layout, name: &str, grace: Duration) -> bool {
    let Some(pid) = running(layout, name) else {
        let _ = fs::remove_file(pid_file(layout, name));
        return false;
    };
    let pid_t = pid as libc::pid_t;
    // SAFETY: plain syscalls on a pid checked to be ours just now.
    unsafe { libc::kill(pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    let mut killed = false;
    while running(layout, name).is_some() {
        reap(pid_t);
        if !killed && Instant::now() >= deadline {
            eprintln!("cluster: {name} did not stop within {grace:?} of SIGTERM: killing it");
            // SAFETY: as above.
            unsafe { libc::kill(pid_t, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    reap(pid_t);
    let _ = fs::remove_file(pid_file(layout, name));
    true
}

/// Reaps `pid` if it is this process's child (it is when `up` ran in this process).
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: WNOHANG never blocks; ECHILD for a pid that is not our child is ignored.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot), or None
/// when the process is gone or a zombie.
pub fn start_time(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state).
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(22 - 3).map(|s| (*s).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_and_a_zombie_has_none() {
        let me = std::process::id();
        let start = start_time(me).expect("this process runs");
        assert!(start.parse::<u64>().is_ok(), "{start:?}");
        // A child that exited and is not reaped yet is a zombie.
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while start_time(pid).is_some() {
            assert!(Instant::now() < deadline, "`true` did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
    }
}
