//! Whether the API answers: `MetaState::api_up` from every watcher's last result, one
//! log line per change, and the reconnection backoff.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tracing::{info, warn};

use crate::state::Shared;

/// The first wait after an error; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff with ±20 % jitter, so that a node's agents restarted together do
/// not retry in step; reset by a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    pub fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(BACKOFF_MAX);
        // Jitter from the clock's nanoseconds: no need for better randomness here.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let factor = 0.8 + f64::from(nanos % 1000) / 1000.0 * 0.4;
        base.mul_f64(factor)
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// One watcher's (or the client's) last result.
#[derive(Debug, Default)]
struct Part {
    /// None: no answer yet.
    up: Option<bool>,
    ever_up: bool,
    /// A watcher the agent can do without (ConfigMap and Secret metadata): refused
    /// with 403 before it ever succeeded, it is taken as not granted on purpose
    /// (deploy/base/rbac.yaml allows removing `secrets`) and does not hold
    /// `api_up` down.
    optional: bool,
    not_granted: bool,
}

impl Part {
    fn counts(&self) -> bool {
        !(self.optional && self.not_granted && !self.ever_up)
    }
}

#[derive(Debug, Default)]
struct State {
    parts: BTreeMap<String, Part>,
    /// What was last logged: the API up or down.
    logged: Option<bool>,
}

/// The watchers report here; `api_up` is true while every watcher that counts has
/// succeeded last.
pub struct Health {
    shared: Arc<Shared>,
    /// The API server, for the log lines.
    server: Mutex<String>,
    state: Mutex<State>,
}

impl Health {
    pub fn new(shared: Arc<Shared>) -> Health {
        Health {
            shared,
            server: Mutex::new(String::new()),
            state: Mutex::default(),
        }
    }

    pub fn set_server(&self, url: String) {
        *self.server.lock().expect("health lock") = url;
    }

    /// A watcher (or the client) that reports; `optional`: see [`Part::optional`].
    pub fn register(&self, part: &str, optional: bool) {
        let mut st = self.state.lock().expect("health lock");
        st.parts.entry(part.to_owned()).or_default().optional = optional;
    }

    /// Stops counting `part` (the client, once made).
    pub fn unregister(&self, part: &str) {
        self.state.lock().expect("health lock").parts.remove(part);
        self.publish(None);
    }

    /// `part`'s last call succeeded.
    pub fn up(&self, part: &str) {
        {
            let mut st = self.state.lock().expect("health lock");
            let p = st.parts.entry(part.to_owned()).or_default();
            if p.up == Some(true) {
                return;
            }
            if p.not_granted && !p.ever_up {
                info!(watch = part, "now granted: watching it");
            }
            p.up = Some(true);
            p.ever_up = true;
            p.not_granted = false;
        }
        self.publish(None);
    }

    /// `part`'s last call failed with `error`; `forbidden`: a 403 answer.
    pub fn down(&self, part: &str, error: &str, forbidden: bool) {
        {
            let mut st = self.state.lock().expect("health lock");
            let p = st.parts.entry(part.to_owned()).or_default();
            if p.optional && forbidden && !p.ever_up && !p.not_granted {
                warn!(
                    watch = part,
                    error,
                    "not granted (403): propagation delays of these objects are not \
                     measured; the rest of the API is used"
                );
            }
            p.not_granted = p.optional && forbidden && !p.ever_up;
            p.up = Some(false);
        }
        self.publish(Some(error));
    }

    /// Sets `api_up` from the parts and logs a change of it.
    fn publish(&self, error: Option<&str>) {
        let mut st = self.state.lock().expect("health lock");
        let counted: Vec<&Part> = st.parts.values().filter(|p| p.counts()).collect();
        let up = !counted.is_empty() && counted.iter().all(|p| p.up == Some(true));
        let down = counted.iter().any(|p| p.up == Some(false));
        self.shared.meta.state.lock().expect("meta lock").api_up = up;
        let server = self.server.lock().expect("health lock").clone();
        if up && st.logged != Some(true) {
            st.logged = Some(true);
            info!(
                api = %server,
                "Kubernetes API up: watching this node's pods and ConfigMap and Secret metadata"
            );
        } else if down && st.logged != Some(false) {
            st.logged = Some(false);
            warn!(
                api = %server,
                error = error.unwrap_or("unknown"),
                "Kubernetes API down: pods and volumes keep their on-node names; \
                 retrying with backoff"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::updates::Tracker;

    fn health() -> (Arc<Shared>, Health) {
        let shared = Arc::new(Shared::new(Tracker::new(Duration::from_secs(2), false)));
        let h = Health::new(shared.clone());
        h.register("pods", false);
        h.register("configmaps", true);
        h.register("secrets", true);
        (shared, h)
    }

    fn api_up(shared: &Shared) -> bool {
        shared.meta.state.lock().unwrap().api_up
    }

    #[test]
    fn up_once_every_watcher_has_listed_down_on_any_error() {
        let (shared, h) = health();
        h.up("pods");
        h.up("configmaps");
        assert!(!api_up(&shared));
        h.up("secrets");
        assert!(api_up(&shared));
        h.down("configmaps", "connection refused", false);
        assert!(!api_up(&shared));
        h.up("configmaps");
        assert!(api_up(&shared));
        // Granted once, a 403 later is the API refusing: down.
        h.down("secrets", "403", true);
        assert!(!api_up(&shared));
    }

    #[test]
    fn secrets_never_granted_do_not_hold_the_api_down() {
        let (shared, h) = health();
        h.down("secrets", "403", true);
        h.up("pods");
        h.up("configmaps");
        assert!(api_up(&shared));
        // Any other error of it counts.
        h.down("secrets", "connection reset", false);
        assert!(!api_up(&shared));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..10).map(|_| b.next_wait()).collect();
        assert!(waits[0] >= BACKOFF_FIRST.mul_f64(0.8) && waits[0] <= BACKOFF_FIRST.mul_f64(1.2));
        assert!(waits[1] >= BACKOFF_FIRST.mul_f64(1.6));
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX.mul_f64(1.2)));
        assert!(waits[9] >= BACKOFF_MAX.mul_f64(0.8));
        b.reset();
        assert!(b.next_wait() <= BACKOFF_FIRST.mul_f64(1.2));
    }
}
