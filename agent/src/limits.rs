//! The agent's descriptor limit: raised to the hard limit at start, so that scrapes,
//! watches and scans do not run out where the runtime handed it a low soft limit
//! (1024 is common).

use tracing::{info, warn};

fn get() -> Option<libc::rlimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: writes one rlimit into a live struct.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r)
}

/// The soft RLIMIT_NOFILE now.
pub fn nofile() -> u64 {
    get().map_or(1024, |r| r.rlim_cur)
}

/// Raises the soft RLIMIT_NOFILE to the hard one, saying so; returns the soft limit
/// in force afterwards.
pub fn raise_nofile() -> u64 {
    let Some(r) = get() else { return nofile() };
    if r.rlim_cur >= r.rlim_max {
        return r.rlim_cur;
    }
    let raised = libc::rlimit {
        rlim_cur: r.rlim_max,
        rlim_max: r.rlim_max,
    };
    // SAFETY: reads one rlimit from a live struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        info!(
            from = r.rlim_cur,
            to = r.rlim_max,
            "file descriptor limit raised to the hard limit"
        );
        r.rlim_max
    } else {
        let e = std::io::Error::last_os_error();
        warn!(limit = r.rlim_cur, error = %e, "cannot raise the file descriptor limit");
        r.rlim_cur
    }
}
