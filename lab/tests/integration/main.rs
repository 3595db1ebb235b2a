//! The lab's integration tests, one binary with a module each, as root: its binary as
//! a user runs it (`cli`), its containers' cgroups, mounts and logs (`containers`), and
//! the consumer strategies' inotify calls in a real container (`watchers`).

mod cli;
mod containers;
mod watchers;
