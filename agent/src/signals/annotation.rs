//! The pod annotations that ask for a reload signal (the pod model keeps the pods'
//! `reloadscope.dev/` annotations only):
//!
//! - `reloadscope.dev/reload-signal: SIGHUP`: the signal, by name, with or without
//!   `SIG`, in any case (`HUP`, `sighup`); a name that is no Linux signal is refused.
//! - `reloadscope.dev/reload-containers: app,sidecar`: only these containers; absent
//!   or empty, every container of the pod that mounts the updated volume.
//! - `reloadscope.dev/reload-volumes: config,tls`: only updates of these volumes;
//!   absent or empty, any of its ConfigMap, Secret, projected or downwardAPI volumes.

use std::collections::BTreeMap;

pub const SIGNAL: &str = "reloadscope.dev/reload-signal";
pub const CONTAINERS: &str = "reloadscope.dev/reload-containers";
pub const VOLUMES: &str = "reloadscope.dev/reload-volumes";

/// A signal the agent can send: its number and its name (`SIGHUP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    pub number: i32,
    pub name: &'static str,
}

/// The standard Linux signals, by name without `SIG`.
const SIGNALS: [(&str, i32); 31] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// `SIGHUP`, `HUP`, `sighup`, ` SIGUSR1 `: the signal; None for anything else
/// (numbers included: a name says what is meant).
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|&(_, number)| Signal {
            number,
            name: signal_name(number),
        })
}

/// `SIGHUP` for `libc::SIGHUP`, as the table spells it.
fn signal_name(number: i32) -> &'static str {
    // Static names, so that a Signal stays Copy.
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    let i = SIGNALS.iter().position(|&(_, n)| n == number).unwrap_or(0);
    NAMES[i]
}

/// What a pod's annotations ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The signal, or the annotation's value when it names none.
    pub signal: Result<Signal, String>,
    /// Only these containers; None: all.
    pub containers: Option<Vec<String>>,
    /// Only these volumes; None: all.
    pub volumes: Option<Vec<String>>,
}

impl Request {
    /// The request of a pod with these annotations; None without `reload-signal`.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<Request> {
        let value = annotations.get(SIGNAL)?;
        Some(Request {
            signal: parse_signal(value).ok_or_else(|| value.clone()),
            containers: list(annotations.get(CONTAINERS)),
            volumes: list(annotations.get(VOLUMES)),
        })
    }

    /// Whether an update of `volume` is to signal `container`.
    pub fn wants(&self, container: &str, volume: &str) -> bool {
        let has =
            |l: &Option<Vec<String>>, x: &str| l.as_ref().is_none_or(|l| l.iter().any(|n| n == x));
        has(&self.containers, container) && has(&self.volumes, volume)
    }
}

/// `a, b,,c` as `[a, b, c]`; None when absent or naming nothing.
fn list(value: Option<&String>) -> Option<Vec<String>> {
    let names: Vec<String> = (value?.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    (!names.is_empty()).then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn signal_names_with_or_without_sig_in_any_case() {
        for name in ["SIGHUP", "HUP", "sighup", "Hup", " SIGHUP "] {
            assert_eq!(
                parse_signal(name),
                Some(Signal {
                    number: libc::SIGHUP,
                    name: "SIGHUP"
                }),
                "{name}"
            );
        }
        assert_eq!(parse_signal("USR2").map(|s| s.name), Some("SIGUSR2"));
        assert_eq!(
            parse_signal("SIGWINCH").map(|s| s.number),
            Some(libc::SIGWINCH)
        );
        for bad in ["", "SIG", "SIGFOO", "1", "HUP1", "SIG HUP", "SIGRTMIN"] {
            assert_eq!(parse_signal(bad), None, "{bad:?}");
        }
        // Every name of the table comes back as itself.
        for (bare, number) in SIGNALS {
            let s = parse_signal(bare).unwrap();
            assert_eq!((s.number, s.name), (number, format!("SIG{bare}").as_str()));
        }
    }

    #[test]
    fn a_request_needs_the_signal_annotation() {
        assert_eq!(Request::from_annotations(&annotations(&[])), None);
        assert_eq!(
            Request::from_annotations(&annotations(&[(CONTAINERS, "app")])),
            None
        );
        let r = Request::from_annotations(&annotations(&[(SIGNAL, "SIGHUP")])).unwrap();
        assert_eq!(r.signal.clone().map(|s| s.number), Ok(libc::SIGHUP));
        assert!(r.wants("any", "volume"));
    }

    #[test]
    fn an_unknown_signal_is_kept_as_written() {
        let r = Request::from_annotations(&annotations(&[(SIGNAL, "SIGRELOAD")])).unwrap();
        assert_eq!(r.signal, Err("SIGRELOAD".to_owned()));
    }

    #[test]
    fn container_and_volume_lists_narrow_it() {
        let r = Request::from_annotations(&annotations(&[
            (SIGNAL, "HUP"),
            (CONTAINERS, " app , proxy,,"),
            (VOLUMES, "config"),
        ]))
        .unwrap();
        assert_eq!(r.containers, Some(vec!["app".into(), "proxy".into()]));
        assert!(r.wants("app", "config"));
        assert!(r.wants("proxy", "config"));
        assert!(!r.wants("app", "tls"), "another volume");
        assert!(!r.wants("sidecar", "config"), "another container");
        assert!(!r.wants("ap", "config"), "names match whole");
        // Empty lists name nothing: all.
        let r = Request::from_annotations(&annotations(&[
            (SIGNAL, "HUP"),
            (CONTAINERS, " , "),
            (VOLUMES, ""),
        ]))
        .unwrap();
        assert_eq!((r.containers.clone(), r.volumes.clone()), (None, None));
        assert!(r.wants("sidecar", "tls"));
    }
}
