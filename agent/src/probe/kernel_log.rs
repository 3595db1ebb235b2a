//! `--kernel-log`: the kernel programs' own log lines (aya-log: a full ring buffer or
//! in-flight map, an unreadable path), read from their ring buffer into the agent's
//! log, under the targets of the kernel code's modules (`agent_ebpf::probe::swap`).
//!
//! Off, the loader sets the programs' log level to 0 before they are verified: the
//! verifier then drops the logging code as dead, and the log ring buffer is one page.

use std::os::fd::AsRawFd;

use aya::EbpfLoader;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

/// The log ring buffer's size when nothing reads it.
const OFF_BYTES: u32 = 4096;

/// The level given to the kernel programs: debug and up when `on`, none otherwise.
pub fn level(on: bool) -> u8 {
    if on { aya_log::Level::Debug as u8 } else { 0 }
}

/// Sets the programs' log level (`level`, which must outlive the loader), and shrinks
/// the unread log ring buffer when it is 0.
pub fn configure<'a>(loader: &mut EbpfLoader<'a>, level: &'a u8) {
    loader.override_global(aya_log::LEVEL, level, true);
    if *level == 0 {
        loader.map_max_entries("AYA_LOGS", OFF_BYTES);
    }
}

/// The kernel programs' log, taken from their object.
pub struct KernelLog(EbpfLogger<&'static dyn log::Log>);

impl KernelLog {
    pub fn new(logger: EbpfLogger<&'static dyn log::Log>) -> KernelLog {
        KernelLog(logger)
    }

    /// Forwards each record to the agent's log as it arrives, until `stop`.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let fd = self.0.as_raw_fd();
        // SAFETY: the logger owns its ring buffer's descriptor for the AsyncFd's life.
        let mut fd_log =
            match unsafe { AsyncFd::register_with_interest(self.0, Interest::READABLE) } {
                Ok(a) => a,
                Err(e) => {
                    warn!(fd, error = %e, "the kernel programs' log cannot be read");
                    return;
                }
            };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                ready = fd_log.readable_mut() => match ready {
                    Ok(mut guard) => {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                    Err(e) => {
                        warn!(error = %e, "the kernel programs' log cannot be read");
                        return;
                    }
                },
                _ = &mut stop => return,
            }
        }
    }
}
