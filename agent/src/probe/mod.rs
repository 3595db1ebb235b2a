//! The eBPF swap probe: loads the kernel programs, attaches them, reads their ring
//! buffer and turns its records into detections.
//!
//! This is the one place that knows which probe variant runs (fentry/fexit or
//! syscall tracepoints, `attach::Variant`); the rest of the agent sees
//! `Probe::start` and detections.

mod attach;
mod kbtf;
pub mod kernel_log;
mod resolve;
pub mod watch_calls;

use std::{path::PathBuf, sync::Arc, time::Duration};

use agent_common::{stats, swap::DecodedSwap};
pub use attach::{Choice, RenameHook, Variant};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
pub use resolve::{Resolver, Skip};
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use crate::{
    events::{Event, Sender},
    node::volumes::Roots,
};

/// The kernel object built by `build.rs` from `agent-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Default ring buffer size: 4 MiB holds about 3,800 events, measured to lose none at
/// 250k matching events/s with a reader (docs/design.md 8).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "loading the eBPF object: {0} (needs CAP_BPF and CAP_PERFMON, or root, on kernels >= 5.8)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("attaching {what}: {source} (is tracefs mounted at /sys/kernel/tracing?)")]
    Attach {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "hooking {what} with fentry/fexit: {source} (some kernels refuse fentry programs: --probe tracepoint)"
    )]
    Hook {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF object lacks {0}")]
    Missing(&'static str),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(#[source] aya::BtfError),
    #[error("the kernel programs' log: {0}")]
    Log(#[source] aya_log::Error),
    #[error("the fentry variant is built for x86_64 only")]
    Arch,
}

/// Kernel-side counters, summed over CPUs (`agent_common::stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub matched: u64,
    pub emitted: u64,
    pub lost: u64,
    pub failed: u64,
    pub inflight_full: u64,
}

/// The variants that did not load, and why.
pub type Tried = Vec<(Variant, ProbeError)>;

/// A loaded, attached probe. Dropping it detaches everything.
pub struct Probe {
    /// Attachments, detached all at once when the probe drops.
    links: attach::Links,
    ebpf: Ebpf,
    btf: Option<aya::Btf>,
    variant: Variant,
    /// fentry: where the renames are hooked.
    renames: Option<RenameHook>,
    stats: PerCpuArray<MapData, u64>,
    /// The kernel programs' log, when asked for and not taken yet.
    kernel_log: Option<kernel_log::KernelLog>,
}

/// Counters of the user-space side of the probe, and who made the volume swaps.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub undecodable: std::sync::atomic::AtomicU64,
    pub skipped: std::sync::atomic::AtomicU64,
    /// The processes (tgids) that made the latest volume updates, newest last: the
    /// kubelet, whatever its command name.
    writers: std::sync::Mutex<std::collections::VecDeque<u32>>,
}

/// How many swap writers are remembered (a kubelet restart makes a new one).
const WRITERS_KEPT: usize = 8;

impl ReaderStats {
    /// Whether `tgid` made one of the latest volume updates.
    pub fn is_writer(&self, tgid: u32) -> bool {
        self.writers.lock().expect("writers lock").contains(&tgid)
    }

    fn add_writer(&self, tgid: u32) {
        let mut w = self.writers.lock().expect("writers lock");
        if w.back() != Some(&tgid) {
            w.retain(|&t| t != tgid);
            if w.len() == WRITERS_KEPT {
                w.pop_front();
            }
            w.push_back(tgid);
        }
    }
}

/// A no-op fexit program where the fentry variant hooks `renameat` (`vfs_rename` or
/// `__x64_sys_renameat`, as `renames` says), attached: what the kernel's trampoline
/// alone costs a hooked call, the floor under the fentry variant's cost. For `cargo
/// xtask bench overhead`; the agent never loads it. Detached when dropped.
pub struct Floor {
    links: attach::Links,
    _ebpf: Ebpf,
}

impl Floor {
    pub fn attach(renames: RenameHook) -> Result<Floor, ProbeError> {
        if !cfg!(target_arch = "x86_64") {
            return Err(ProbeError::Arch);
        }
        let loaded = attach::load(Variant::Fentry, DEFAULT_RING_BYTES, &0)?;
        let (mut ebpf, btf) = (loaded.ebpf, loaded.btf);
        let btf = btf.ok_or(ProbeError::Missing("the kernel's BTF"))?;
        let mut links = Vec::new();
        attach::floor(&mut ebpf, &btf, renames, &mut links)?;
        Ok(Floor { links, _ebpf: ebpf })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        attach::detach_all(std::mem::take(&mut self.links));
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        attach::detach_all(std::mem::take(&mut self.links));
    }
}

impl Probe {
    /// Loads and attaches the tracepoint variant. The returned ring buffer goes to
    /// [`read_events`].
    pub fn load(ring_bytes: u32) -> Result<(Probe, RingBuf<MapData>), ProbeError> {
        Self::load_variant(Variant::Tracepoint, ring_bytes)
    }

    /// Loads and attaches `variant`; fentry hooks renames at `vfs_rename` where the
    /// kernel allows it.
    pub fn load_variant(
        variant: Variant,
        ring_bytes: u32,
    ) -> Result<(Probe, RingBuf<MapData>), ProbeError> {
        Self::load_hooked(variant, ring_bytes, RenameHook::VfsRename)
    }

    /// [`Probe::load_variant`], with fentry's renames hooked at `renames` where the
    /// kernel allows it, else on the syscalls (tests and the overhead benchmark run
    /// both; tracepoints ignore it).
    pub fn load_hooked(
        variant: Variant,
        ring_bytes: u32,
        renames: RenameHook,
    ) -> Result<(Probe, RingBuf<MapData>), ProbeError> {
        Self::load_logged(variant, ring_bytes, renames, false)
    }

    /// [`Probe::load_hooked`], with the kernel programs' log on (`kernel_log`, taken
    /// with [`Probe::take_kernel_log`]) or compiled out by the verifier.
    pub fn load_logged(
        variant: Variant,
        ring_bytes: u32,
        renames: RenameHook,
        kernel_log: bool,
    ) -> Result<(Probe, RingBuf<MapData>), ProbeError> {
        if variant == Variant::Fentry && !cfg!(target_arch = "x86_64") {
            return Err(ProbeError::Arch);
        }
        let level = kernel_log::level(kernel_log);
        let mut loaded = attach::load(variant, ring_bytes, &level)?;
        let mut links = Vec::new();
        let renames = match attach::swaps(&mut loaded, renames, &mut links) {
            Ok(renames) => renames,
            Err(e) => {
                attach::detach_all(links);
                return Err(e);
            }
        };
        let (mut ebpf, btf) = (loaded.ebpf, loaded.btf);
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or(ProbeError::Missing("EVENTS"))?,
        )?;
        let stats =
            PerCpuArray::try_from(ebpf.take_map("STATS").ok_or(ProbeError::Missing("STATS"))?)?;
        let kernel_log = match kernel_log {
            true => Some(kernel_log::KernelLog::new(
                aya_log::EbpfLogger::init(&mut ebpf).map_err(ProbeError::Log)?,
            )),
            false => None,
        };
        let probe = Probe {
            links,
            ebpf,
            btf,
            variant,
            renames,
            stats,
            kernel_log,
        };
        Ok((probe, ring))
    }

    /// The first of `choice`'s variants that loads, with why each one before it did
    /// not; `Err` with every failure when none does.
    pub fn load_choice(
        choice: Choice,
        ring_bytes: u32,
        kernel_log: bool,
    ) -> Result<((Probe, RingBuf<MapData>), Tried), Tried> {
        let mut failed = Vec::new();
        for &v in choice.variants() {
            match Self::load_logged(v, ring_bytes, RenameHook::VfsRename, kernel_log) {
                Ok(p) => return Ok((p, failed)),
                Err(e) => failed.push((v, e)),
            }
        }
        Err(failed)
    }

    /// The kernel programs' log, to forward to the agent's ([`kernel_log::KernelLog::run`]);
    /// None when it is off or was taken.
    pub fn take_kernel_log(&mut self) -> Option<kernel_log::KernelLog> {
        self.kernel_log.take()
    }

    /// Each loaded program's size as the kernel verified and translated it, by name:
    /// what `--kernel-log` off leaves out shows here.
    pub fn translated_sizes(&self) -> std::collections::BTreeMap<String, u32> {
        (self.ebpf.programs())
            .filter_map(|(name, p)| {
                let size = p.info().ok()?.size_translated()?;
                Some((name.to_owned(), size))
            })
            .collect()
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// fentry: where the rename syscalls are hooked; None for tracepoints.
    pub fn rename_hook(&self) -> Option<RenameHook> {
        self.renames
    }

    /// Attaches the `inotify_add_watch` / `inotify_rm_watch` programs of the same
    /// variant and hands over their ring buffer, for [`watch_calls::read_calls`]. Once.
    pub fn watch_calls(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        attach::watch_calls(&mut self.ebpf, self.btf.as_ref(), &mut self.links)?;
        let map = self.ebpf.take_map("WATCH_EVENTS");
        Ok(RingBuf::try_from(
            map.ok_or(ProbeError::Missing("WATCH_EVENTS"))?,
        )?)
    }

    pub fn stats(&self) -> ProbeStats {
        let get = |i: u32| -> u64 {
            self.stats
                .get(&i, 0)
                .map(|v| v.iter().copied().sum())
                .unwrap_or(0)
        };
        ProbeStats {
            matched: get(stats::MATCHED),
            emitted: get(stats::EMITTED),
            lost: get(stats::LOST),
            failed: get(stats::FAILED),
            inflight_full: get(stats::INFLIGHT_FULL),
        }
    }
}

/// Reads the ring buffer until `tx` closes: decodes each record, resolves it to a
/// volume, and sends the detections. Records are drained in batches, so the ring is
/// never held while waiting on the queue.
pub async fn read_events(
    ring: RingBuf<MapData>,
    roots: Roots,
    proc_root: PathBuf,
    tx: Sender,
    stats: Arc<ReaderStats>,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
    // AsyncFd (and so the RingBuf inside it) is dropped.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
    let mut resolver = Resolver::new(roots, proc_root);
    let mut batch = Vec::new();
    loop {
        let mut guard = tokio::select! {
            g = fd.readable_mut() => g?,
            _ = tx.closed() => return Ok(()),
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match DecodedSwap::decode(&item) {
                Ok(ev) => batch.push(ev),
                Err(e) => {
                    stats.undecodable.fetch_add(1, Relaxed);
                    warn!(error = %e, "undecodable swap record");
                }
            }
        }
        guard.clear_ready();
        for ev in batch.drain(..) {
            match resolver.resolve(&ev) {
                Ok(det) => {
                    stats.add_writer(ev.tgid);
                    if tx.send(Event::Detected(det)).await.is_err() {
                        return Ok(());
                    }
                }
                Err(Skip::Staged) => {}
                Err(skip) => {
                    stats.skipped.fetch_add(1, Relaxed);
                    debug!(?skip, path = ?ev.new_path, pid = ev.tgid, "swap record not a volume update");
                }
            }
        }
    }
}

/// How long the agent waits for the probe's load before going on without it.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_swap_writers_are_remembered() {
        let s = ReaderStats::default();
        assert!(!s.is_writer(42));
        for tgid in [42, 42, 7] {
            s.add_writer(tgid);
        }
        assert!(s.is_writer(42) && s.is_writer(7));
        for tgid in 100..100 + WRITERS_KEPT as u32 - 1 {
            s.add_writer(tgid);
        }
        assert!(!s.is_writer(42), "the oldest is forgotten first");
        assert!(s.is_writer(7));
        s.add_writer(7); // seen again: the newest, kept
        s.add_writer(500);
        assert!(s.is_writer(7));
    }
}
