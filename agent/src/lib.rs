//! reloadscope: sees every kubelet atomic volume update on a node, from an eBPF probe
//! on the swap syscalls and from inotify, and exports them as Prometheus metrics.

pub mod agent;
pub mod apiclient;
pub mod blind;
pub mod checkpoint;
pub mod clock;
pub mod consumers;
pub mod events;
pub mod fanotify;
pub mod histogram;
pub mod inspect;
pub mod kubeapi;
pub mod limits;
pub mod linter;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod opens;
pub mod probe;
pub mod reloads;
pub mod server;
pub mod signals;
pub mod state;
pub mod updates;
pub mod walker;
