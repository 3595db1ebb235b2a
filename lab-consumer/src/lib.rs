//! Consumers of a mounted ConfigMap or Secret file: each [`Strategy`] watches or
//! re-reads the file the way one kind of application does (docs/design.md 5), with the
//! same inotify calls, and logs every open of it in the [`openlog`] format.
//!
//! A strategy runs in a [`Host`], which says where its opens go and how it waits: the
//! lab's containers (`reloadscope-lab consumer`, logging to an open-log file) and the
//! `reloadscope-consumer` binary of the real-node test image (logging to stdout, as a
//! container's PID 1) are the two.

pub mod openlog;
mod strategy;
pub mod wait;

pub use openlog::{Open, READY};
pub use strategy::{Host, Strategy, Target, Wake};
