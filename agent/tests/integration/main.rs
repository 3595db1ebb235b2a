//! The agent's integration tests, one binary with a module each, as root: they load
//! the real probe on the running kernel, drive real system calls on lab nodes (tmpfs
//! and disk volumes, containers in cgroups and mount namespaces), and read the agent
//! through its /metrics. `cargo xtask test` runs them with `--include-ignored
//! --test-threads=1`; `cargo test --test integration -- MODULE::` runs one module.

mod support;

mod approximate;
mod detect;
mod faults;
mod faults_limits;
mod faults_names;
mod faults_process;
mod faults_start;
mod faults_tree;
mod follow;
mod inspect;
mod kernel_log;
mod kube_access;
mod kube_api;
mod kube_events;
mod kube_propagation;
mod late;
mod openers;
mod probe;
mod readers;
mod reload;
mod restart;
mod settle;
mod signals;
mod watch_findings;
