//! The agent as its own process, as a node runs it: started from the built binary,
//! read through its /readyz and its stderr.

use std::{
    net::SocketAddr,
    process::Child,
    time::{Duration, Instant},
};

use reloadscope_lab::scrape;

use super::{blocking, wait_for};

/// The agent process; killed if the test fails before [`stop`].
pub struct Agent(pub Option<Child>);

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for /readyz of the agent `child` serves on `addr`, failing at once if it exits.
pub async fn ready(child: &mut Child, addr: SocketAddr) {
    wait_for("/readyz", || {
        let exited = child.try_wait().unwrap();
        async move {
            assert!(exited.is_none(), "the agent exited: {exited:?}");
            let (code, _) = blocking(move || scrape::get(addr, "/readyz")).await.ok()?;
            (code == 200).then_some(())
        }
    })
    .await;
}

/// SIGTERM; the time it took to exit (with status 0) and its stderr (JSON log lines).
pub async fn stop(mut agent: Agent) -> (Duration, String) {
    let child = agent.0.take().unwrap();
    let start = Instant::now();
    // SAFETY: our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = blocking(move || child.wait_with_output().unwrap()).await;
    let took = start.elapsed();
    assert!(out.status.success(), "{:?}", out.status);
    (took, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The WARN and ERROR lines of a JSON log.
pub fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect()
}
