//! The lab: a model of a Kubernetes node for testing the agent, kept out of the
//! shipped `reloadscope` binary. A kubelet-style directory tree made of real kernel
//! parts (disk directories, tmpfs mounts), a writer that performs the kubelet
//! AtomicWriter's steps with the same system calls (docs/design.md 1 and 2), containers
//! in their own cgroups and mount namespaces, and a Kubernetes API server.
//!
//! Tests and benchmarks drive the agent with it: whatever the agent sees here, it sees
//! the same way on a node. The `reloadscope-lab` binary runs the agent on a lab node
//! with a live table (`cargo xtask lab`), and is the process inside each lab container.
//!
//! - [`LabNode`] makes `<base>/kubelet/pods/<uid>/volumes/kubernetes.io~<plugin>/<volume>`,
//!   `<base>/log/pods/<namespace>_<name>_<uid>/` and `<base>/log/containers/`; secret
//!   and projected volumes are tmpfs mounts of their own, as on a node.
//! - [`AtomicWriter`] is the kubelet's update of one volume, step by step, in Go's
//!   syscall flavour ([`CallStyle::GoAt`]) or the legacy one ([`CallStyle::Legacy`]).

pub mod api;
pub mod apiserver;
pub mod cluster;
mod consumer;
mod container;
pub mod marks;
mod node;
mod run;
pub mod scrape;
mod sys;
mod writer;

pub use consumer::{ConsumerArgs, consumer_main};
pub use container::{ContainerSpec, LabContainer, Open, cgroup2_mount, example_bin, lab_bin};
/// How a lab container's process consumes its file (the `lab_consumer` crate).
pub use lab_consumer::Strategy;
pub use marks::SwapGate;
pub use node::{LabNode, LabPod};
pub use run::{LabArgs, run};
pub use sys::CallStyle;
pub use writer::{AtomicWriter, KeyError, Payload, WriteOutcome, payload};

/// The agent's configuration for `node`: its roots and log dirs, the probe on or off.
pub fn agent_config(
    node: &LabNode,
    ebpf: bool,
    listen: std::net::SocketAddr,
) -> reloadscope::agent::Config {
    reloadscope::agent::Config {
        kubelet_roots: vec![node.kubelet_root()],
        pod_logs_dir: node.pod_logs_dir(),
        container_logs_dir: node.container_logs_dir(),
        listen,
        ebpf,
        // The kernel matrix runs the same tests once per variant.
        probe: reloadscope::probe::Choice::from_env().unwrap_or_default(),
        ..reloadscope::agent::Config::node_defaults()
    }
}

/// Fills `buf` from the kernel's random pool (getrandom(2)).
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe the writable slice `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

/// A random `u32`, the suffix Go's `os.MkdirTemp` appends.
fn random_u32() -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    fill_random(&mut b)?;
    Ok(u32::from_ne_bytes(b))
}
