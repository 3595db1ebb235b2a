//! `/proc/<pid>/stat`: a process's parent and start time, the fields that tell a
//! container's main process from its children ([`main_process`]) and a pid from its
//! reuse.

/// What the agent reads of one process's `stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The parent's pid (field 4).
    pub ppid: u32,
    /// Start time in clock ticks since boot (field 22): a pid reused by a later
    /// process has another.
    pub start_ticks: u64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may hold spaces
/// and parentheses: fields are counted after its last `)`. None for malformed text.
pub fn parse(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (3), ppid (4), ... starttime (22).
    let ppid = fields.nth(1)?.parse().ok()?;
    let start_ticks = fields.nth(17)?.parse().ok()?;
    Some(Stat { ppid, start_ticks })
}

/// A container's main process: the one the runtime started, whose parent is outside
/// the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MainProcess {
    pub pid: u32,
    /// Its start in clock ticks since boot: a reuse of the pid has another.
    pub start_ticks: u64,
}

/// The main process of a container whose processes are `procs` (pid, parent's pid,
/// start ticks): the one whose parent is not among them (the runtime's shim is its
/// parent); of several such (a process reparented to the shim), the oldest, then the
/// lowest pid.
pub fn main_process(procs: &[(u32, u32, u64)]) -> Option<MainProcess> {
    let pids: std::collections::HashSet<u32> = procs.iter().map(|p| p.0).collect();
    procs
        .iter()
        .filter(|(_, ppid, _)| !pids.contains(ppid))
        .min_by_key(|(pid, _, start)| (*start, *pid))
        .map(|&(pid, _, start_ticks)| MainProcess { pid, start_ticks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_process_is_the_one_whose_parent_is_outside() {
        // 10 started by the shim (1), 11 and 12 its children; 20 reparented to the
        // shim, younger.
        let procs = [(11, 10, 5), (10, 1, 5), (12, 11, 9), (20, 1, 7)];
        assert_eq!(
            main_process(&procs),
            Some(MainProcess {
                pid: 10,
                start_ticks: 5
            })
        );
        assert_eq!(main_process(&[]), None);
    }

    #[test]
    fn parent_and_start_even_with_odd_names() {
        let stat = "42 (a) b (c) S 7 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12345 1000 10 18446744073709551615";
        assert_eq!(
            parse(stat),
            Some(Stat {
                ppid: 7,
                start_ticks: 12345
            })
        );
        assert_eq!(parse("42 (x) S 1"), None);
        assert_eq!(parse("garbage"), None);
    }

    #[test]
    fn this_process_parses() {
        let s = parse(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert_eq!(s.ppid, std::os::unix::process::parent_id());
        assert!(s.start_ticks > 0);
    }
}
