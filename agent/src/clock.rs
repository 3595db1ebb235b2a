//! Clocks: the probe's `CLOCK_BOOTTIME` stamps as wall-clock time, and the monotonic
//! milliseconds the liveness heartbeat is kept in.

use std::{
    sync::OnceLock,
    time::{Duration, Instant, SystemTime},
};

/// Milliseconds since the agent's first call, monotonic.
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn now_ns(clock: libc::clockid_t) -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// `bpf_ktime_get_boot_ns()` value to wall-clock time, through the current offset
/// between the two clocks (a wall-clock step between the event and now shifts it).
pub fn boot_to_wall(boot_ns: u64) -> SystemTime {
    let boot_now = now_ns(libc::CLOCK_BOOTTIME);
    let wall_now = now_ns(libc::CLOCK_REALTIME);
    let age = boot_now.saturating_sub(boot_ns as u128);
    let wall = wall_now.saturating_sub(age);
    SystemTime::UNIX_EPOCH + Duration::from_nanos(wall as u64)
}

/// Seconds since the epoch, as Prometheus timestamps are given.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_now_is_wall_now() {
        let before = SystemTime::now();
        let t = boot_to_wall(now_ns(libc::CLOCK_BOOTTIME) as u64);
        let after = SystemTime::now();
        assert!(t + Duration::from_millis(1) >= before && t <= after + Duration::from_millis(1));
    }

    #[test]
    fn older_boot_stamps_are_earlier() {
        let now = now_ns(libc::CLOCK_BOOTTIME) as u64;
        let a = boot_to_wall(now - 5_000_000_000);
        let b = boot_to_wall(now);
        let d = b.duration_since(a).unwrap();
        assert!(
            d >= Duration::from_millis(4_990) && d <= Duration::from_millis(5_010),
            "{d:?}"
        );
    }
}
