//! The standard `process_*` metrics of the agent itself, from `/proc/self`. The
//! prometheus crate has a collector for them, but it rounds the CPU time down to whole
//! seconds, which makes the agent's CPU (a few percent of a core) read as 0.

use prometheus::{
    core::{Collector, Desc},
    proto::{Counter, Gauge, Metric, MetricFamily, MetricType},
};

use crate::clock;

/// (name, help, type) of each family, in the order they are collected.
const FAMILIES: [(&str, &str, MetricType); 7] = [
    (
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        MetricType::COUNTER,
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        MetricType::GAUGE,
    ),
    (
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        MetricType::GAUGE,
    ),
    (
        "process_open_fds",
        "Number of open file descriptors.",
        MetricType::GAUGE,
    ),
    (
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        MetricType::GAUGE,
    ),
    (
        "process_threads",
        "Number of OS threads in the process.",
        MetricType::GAUGE,
    ),
    (
        "process_max_fds",
        "Maximum number of open file descriptors.",
        MetricType::GAUGE,
    ),
];

/// What `/proc/self/stat` says, in base units.
#[derive(Debug, PartialEq)]
pub struct Stat {
    pub cpu_seconds: f64,
    pub threads: f64,
    pub start_ticks: f64,
    pub vsize: f64,
    pub rss_pages: f64,
}

/// Parses a `/proc/<pid>/stat` line. The command name may hold spaces and
/// parentheses: fields are counted after its last `)`.
pub fn parse_stat(line: &str, ticks_per_second: f64) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of proc(5), so field n is f[n - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
    Some(Stat {
        cpu_seconds: (num(14)? + num(15)?) / ticks_per_second,
        threads: num(20)?,
        start_ticks: num(22)?,
        vsize: num(23)?,
        rss_pages: num(24)?,
    })
}

pub struct ProcessCollector {
    descs: Vec<Desc>,
}

impl ProcessCollector {
    pub fn new() -> prometheus::Result<Self> {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    vec![],
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(ProcessCollector { descs })
    }
}

fn family(i: usize, value: f64) -> MetricFamily {
    let (name, help, kind) = FAMILIES[i];
    let mut m = Metric::default();
    if kind == MetricType::COUNTER {
        let mut c = Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    let mut mf = MetricFamily::default();
    mf.set_name(name.into());
    mf.set_help(help.into());
    mf.set_field_type(kind);
    mf.set_metric(vec![m]);
    mf
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // SAFETY: sysconf has no preconditions.
        let (hz, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|l| parse_stat(&l, hz.max(1) as f64))
        else {
            return Vec::new();
        };
        let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
        let started_ns = stat.start_ticks / hz.max(1) as f64 * 1e9;
        let started = clock::unix_seconds(clock::boot_to_wall(started_ns as u64));
        vec![
            family(0, stat.cpu_seconds),
            family(1, stat.rss_pages * page as f64),
            family(2, stat.vsize),
            family(3, fds as f64),
            family(4, started),
            family(5, stat.threads),
            family(6, crate::limits::nofile() as f64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_an_awkward_command_name() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 25 0 0 20 0 7 0 \
            1234 987654 321 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = parse_stat(line, 100.0).unwrap();
        assert_eq!(
            s,
            Stat {
                cpu_seconds: 1.75,
                threads: 7.0,
                start_ticks: 1234.0,
                vsize: 987654.0,
                rss_pages: 321.0
            }
        );
        assert!(parse_stat("garbage", 100.0).is_none());
    }

    #[test]
    fn cpu_time_is_not_rounded_to_seconds() {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(start.elapsed());
        }
        let families = ProcessCollector::new().unwrap().collect();
        let cpu = families[0].get_metric()[0].get_counter().get_value();
        assert!(cpu > 0.0 && cpu.fract() != 0.0, "{cpu}");
        assert!(
            families[1].get_metric()[0].get_gauge().get_value() > 0.0,
            "rss"
        );
    }
}
