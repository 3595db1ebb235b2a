//! Types shared by the kernel programs (`agent-ebpf`) and the agent (`agent`).
//!
//! One module per event kind, kernel layout and user-space decoding side by side,
//! so the byte layout and its parsing cannot drift apart.
#![no_std]

pub mod stats;
pub mod swap;
pub mod watch_call;
