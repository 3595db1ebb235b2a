//! The allocator's settings, and handing back the memory a `/metrics` scrape frees.
//!
//! A scrape of a big node used to build every series as `prometheus` protos, then
//! their text: tens of MiB of small blocks for 10,000 volumes, freed when the response
//! is made (the per-volume families are now written straight to text:
//! [`crate::metrics`]' `volumes` module; the settings below still serve the rest).
//! glibc malloc keeps freed blocks in its arenas (one per thread that allocated, up to
//! 8 per core), so the agent's resident memory stayed at its highest scrape, and the
//! arenas of the other threads kept their own free memory beside it. Hence:
//!
//! - [`configure`], first thing in `main`, before any thread: one arena
//!   (`M_ARENA_MAX` 1), and blocks of 1 MiB or more (a scrape's text, its vectors of
//!   series) mapped on their own and unmapped when freed (`M_MMAP_THRESHOLD`, which
//!   also keeps glibc from raising that threshold and the trim threshold as it goes);
//! - [`release`], after each scrape is rendered, on the blocking thread that rendered
//!   it: `malloc_trim(0)`, which gives the kernel every whole free page of the arena.
//!
//! Measured with `cargo xtask bench scale --only agent --idle 10` (10,000 volumes in
//! 2,000 pods, 100 consumers, the agent as deployed; then 1,000 updates/s for 60 s
//! with a scrape every 5 s), 2026-11-25 on the 2-vCPU machine of BENCHMARKS.md, agent
//! at 73e581e; several runs of each, back to back, ranges over runs. Steady = VmRSS
//! after the start-up's scrapes; peak = VmHWM after the updates.
//!
//! | allocator setting | steady | peak | runs |
//! |---|---|---|---|
//! | glibc defaults (before this module) | 102.5-105.3 MiB | 173-184 MiB | 8 |
//! | `malloc_trim(0)` after each scrape | 66.0-67.8 MiB | 155-159 MiB | 5 |
//! | that, `M_MMAP_THRESHOLD` 128 KiB | 62.9-64.1 MiB | 146-152 MiB | 9 |
//! | that, `M_ARENA_MAX` 2 (no mmap threshold) | 69.8 MiB | 151 MiB | 1 |
//! | that, `M_ARENA_MAX` 1 (no mmap threshold) | 64.0-64.3 MiB | 113-117 MiB | 2 |
//! | **trim, `M_ARENA_MAX` 1, `M_MMAP_THRESHOLD` 1 MiB (this)** | 61.7-63.8 MiB | 111-117 MiB | 8 |
//! | the same with `M_MMAP_THRESHOLD` 128 KiB | 62.1-62.6 MiB | 112-117 MiB | 7 |
//! | `M_ARENA_MAX` 1 alone, no trim (an older agent: 88.8 MiB with defaults) | 67.3 MiB | 107 MiB | 1 |
//! | `M_MMAP_THRESHOLD` 128 KiB alone, no trim | 92.8 MiB | 166 MiB | 1 |
//! | jemalloc 5.3 (`LD_PRELOAD`), defaults | 102.3 MiB | 143 MiB | 1 |
//! | jemalloc 5.3, dirty and muzzy decay 0 | 69.4 MiB | 112 MiB | 1 |
//! | mimalloc 2.0.9 (`LD_PRELOAD`), defaults | 98.5 MiB | 144 MiB | 1 |
//! | mimalloc 2.0.9, purge delay 0 | 78.5 MiB | 132 MiB | 1 |
//!
//! Another allocator would add a dependency and still need tuning to come near, and
//! neither came under 64 MiB. What was left when steady: about 42 MiB of heap in use
//! (the agent's state, and the `prometheus` children of the last scrape's volume
//! series, about 11 MiB, which the collector kept until the next scrape), 9.5 MiB of
//! the binary's pages, 8.5 MiB for the probe's 4 MiB ring buffer (mapped twice),
//! 2 MiB of libraries.
//!
//! Since the per-volume families are text and the per-volume state bounded
//! (BENCHMARKS.md, scale, "Per-volume families as text, bounded per-volume state"),
//! with these settings unchanged: steady 46.6-46.8 MiB, peak 60.4-62.1 MiB (VmRSS
//! after the updates 54.2-56.6 MiB), against 61.1-64.1 MiB, 115.1-115.8 MiB
//! (92.0-94.5 MiB) before; about 28 MiB anonymous when steady, 19 MiB of file pages.
//!
//! The cost is on scrapes: the trim takes 0.6-2 ms of CPU (up to 14 ms when a burst
//! of updates freed much), and the next scrape faults in again the pages it gave back.
//! Trimming every other scrape in one run, a scrape after a trim took 69.0 ms of CPU
//! against 63.7 ms after none (medians of 11 and 10, at idle): about 6 ms per scrape.
//! The three settings together, against the same agent without them (3 runs each,
//! alternated): one scrape (20 back to back at idle) 77.5-88.5 ms of CPU against
//! 64.0-72.0 ms, about 15 ms (22 %) more; 0.1 % of a core at a 15 s scrape interval.
//! The CPU under the updates (32.4-36.4 % against 30.1-34.9 % of a core), idle CPU and
//! the swap and reload time errors did not move beyond the runs' spread.

/// Sets the allocator up. Call first in `main`, before any thread starts.
pub fn configure() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes malloc parameters. It returns 0 for a value it
    // refuses, leaving glibc's default in place: nothing to do then.
    unsafe {
        // One arena for every thread: no arena keeps what another thread could reuse.
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // Big blocks (a scrape's text, its vectors of series) on mappings of their
        // own, unmapped when freed; glibc otherwise raises this threshold as it goes.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Hands the kernel every whole free page of the allocator's arena. Call after a
/// scrape's families are dropped, on the thread that rendered them, not on a runtime
/// worker: it takes a few ms.
pub fn release() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
