//! poll(2), for the hosts' [`Host::wait`](crate::Host::wait).

use std::{io, os::fd::RawFd, time::Duration};

/// A descriptor to wait on for input.
pub fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Whether poll(2) reported something on it: input, end of file, an error.
pub fn ready(fd: &libc::pollfd) -> bool {
    fd.revents != 0
}

/// Blocks until one of `fds` has input or end of file, `timeout` passes (`None`: no
/// limit) or a signal interrupts; the number of ready descriptors, 0 for the last two.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    for fd in fds.iter_mut() {
        fd.revents = 0;
    }
    let ms = match timeout {
        // Rounded up: a timer that wakes early would spin until its time.
        Some(t) => t
            .as_nanos()
            .div_ceil(1_000_000)
            .try_into()
            .unwrap_or(i32::MAX),
        None => -1,
    };
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, os::fd::AsRawFd as _, os::unix::net::UnixStream, time::Instant};

    use super::*;

    #[test]
    fn readable_end_of_file_and_timeout() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut fds = [pollfd(b.as_raw_fd())];
        let start = Instant::now();
        assert_eq!(
            poll(&mut fds, Some(Duration::from_micros(1500))).unwrap(),
            0
        );
        // Rounded up to whole milliseconds, never down to a busy 0 or 1 ms.
        assert!(start.elapsed() >= Duration::from_millis(2));
        assert!(!ready(&fds[0]));

        a.write_all(b"x").unwrap();
        assert_eq!(poll(&mut fds, None).unwrap(), 1);
        assert!(ready(&fds[0]));

        let (c, d) = UnixStream::pair().unwrap();
        drop(c);
        let mut both = [pollfd(b.as_raw_fd()), pollfd(d.as_raw_fd())];
        assert_eq!(poll(&mut both, Some(Duration::ZERO)).unwrap(), 2);
        assert!(both.iter().all(ready));
    }
}
