//! The report of `inspect` and its two renderings: a table for people, JSON for tools.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// `{"volumes": [...]}`
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub volumes: Vec<VolumeReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VolumeReport {
    /// Empty while the pod's name is unknown (no pod-logs entry).
    pub namespace: String,
    /// The pod uid while its name is unknown.
    pub pod: String,
    pub pod_uid: String,
    pub volume: String,
    /// `configmap`, `secret`, `projected` or `downward_api`.
    #[serde(rename = "type")]
    pub volume_type: &'static str,
    /// The `..data` target; `None` while the volume has none.
    pub data_dir: Option<String>,
    /// The `..data` symlink's mtime.
    pub last_update_unix_seconds: Option<f64>,
    pub consumers: Vec<ConsumerReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConsumerReport {
    pub container: String,
    pub container_id: String,
    /// `volume` or `subpath`, as the `mount` label of the agent's metrics.
    pub mount: &'static str,
    /// Where the container has the volume (or, for a subPath, the file).
    pub mount_path: Option<String>,
    pub verdict: &'static str,
    /// What to do about it; `None` for a consumer without a problem.
    pub hint: Option<&'static str>,
    /// What its inotify watches on the volume will do at the next update (the
    /// `finding` labels of `reloadscope_consumer_watch_findings`; `not_rewatched` needs
    /// an update seen by the running agent).
    pub watches: Vec<&'static str>,
    /// The fixes for those findings.
    pub watch_hints: Vec<&'static str>,
}

pub fn json(report: &Report) -> String {
    let s = serde_json::to_string_pretty(report).expect("the report serialises");
    // serde_json leaves DEL, the C1 controls and bidi overrides raw: `\uXXXX` too (the
    // pretty-printer's own newlines are the only raw control characters left).
    let mut out = String::with_capacity(s.len() + 1);
    for c in s.chars() {
        if c != '\n' && hidden(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push('\n');
    out
}

/// A character a terminal would act on or hide rather than show: control characters
/// (escape sequences start with them) and the bidirectional overrides and isolates
/// that reorder what follows.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` as the table prints it: each [`hidden`] character as `\u{..}`.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(hidden) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if hidden(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// How long ago, shortly: `4.2s ago`, `3m05s ago`, `2h10m ago`, `5d03h ago`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s ago", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s ago", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m ago", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h ago", s / 86400, s % 86400 / 3600),
    }
}

const HEADER: [&str; 8] = [
    "NAMESPACE/POD",
    "VOLUME",
    "TYPE",
    "LAST UPDATE",
    "CONTAINER",
    "MOUNT",
    "VERDICT",
    "WATCHES",
];

/// One row per consumer (one with `-` for a volume without any), the hint of a
/// consumer with a problem on an indented line under its row.
pub fn table(report: &Report, now: SystemTime) -> String {
    let mut rows: Vec<([String; 8], Vec<&str>)> = Vec::new();
    for v in &report.volumes {
        let pod = if v.namespace.is_empty() {
            printable(&v.pod).into_owned()
        } else {
            printable(&format!("{}/{}", v.namespace, v.pod)).into_owned()
        };
        let updated = v.last_update_unix_seconds.map_or_else(
            || "-".to_owned(),
            |t| {
                let at = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0));
                age(now.duration_since(at).unwrap_or_default())
            },
        );
        let row = |container: &str, mount: &str, verdict: &str, watches: &str| {
            [
                pod.clone(),
                printable(&v.volume).into_owned(),
                v.volume_type.to_owned(),
                updated.clone(),
                printable(container).into_owned(),
                mount.to_owned(),
                verdict.to_owned(),
                watches.to_owned(),
            ]
        };
        if v.consumers.is_empty() {
            rows.push((row("-", "-", "-", "-"), Vec::new()));
        }
        for c in &v.consumers {
            let watches = if c.watches.is_empty() {
                "-".to_owned()
            } else {
                c.watches.join(",")
            };
            let hints = c
                .hint
                .into_iter()
                .chain(c.watch_hints.iter().copied())
                .collect();
            rows.push((row(&c.container, c.mount, c.verdict, &watches), hints));
        }
    }
    let mut widths = HEADER.map(|h| h.chars().count());
    for (cells, _) in &rows {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&HEADER);
    for (cells, hints) in &rows {
        out.push_str(&line(&cells.each_ref().map(String::as_str)));
        for h in hints {
            out.push_str(&format!("    hint: {h}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let consumer = |name: &str, mount, verdict, hint: Option<&'static str>| ConsumerReport {
            container: name.into(),
            container_id: "c".repeat(64),
            mount,
            mount_path: Some("/etc/config".into()),
            verdict,
            hint,
            watches: if hint.is_some() {
                vec!["no_delete_self"]
            } else {
                vec![]
            },
            watch_hints: hint.map(|_| "FIX").into_iter().collect(),
        };
        Report {
            volumes: vec![
                VolumeReport {
                    namespace: "shop".into(),
                    pod: "web".into(),
                    pod_uid: "u1".into(),
                    volume: "app-config".into(),
                    volume_type: "configmap",
                    data_dir: Some("..2026_01_01_00_00_00.1".into()),
                    last_update_unix_seconds: Some(1000.0),
                    consumers: vec![
                        consumer("app", "volume", "reloaded-at-start", None),
                        consumer("side", "subpath", "subpath", Some("HINT")),
                    ],
                },
                VolumeReport {
                    namespace: String::new(),
                    pod: "u2".into(),
                    pod_uid: "u2".into(),
                    volume: "tls".into(),
                    volume_type: "secret",
                    data_dir: None,
                    last_update_unix_seconds: None,
                    consumers: vec![],
                },
            ],
        }
    }

    #[test]
    fn ages() {
        assert_eq!(age(Duration::from_millis(4200)), "4.2s ago");
        assert_eq!(age(Duration::from_secs(185)), "3m05s ago");
        assert_eq!(age(Duration::from_secs(2 * 3600 + 600)), "2h10m ago");
        assert_eq!(age(Duration::from_secs(5 * 86400 + 3 * 3600)), "5d03h ago");
    }

    #[test]
    fn table_rows_and_hints() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1062);
        let t = table(&report(), now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6, "{t}");
        assert!(lines[0].starts_with("NAMESPACE/POD  VOLUME"));
        assert!(lines[1].starts_with("shop/web       app-config  configmap  1m02s ago"));
        assert!(
            lines[1].ends_with("app        volume   reloaded-at-start  -"),
            "{t}"
        );
        assert!(
            lines[2].ends_with("side       subpath  subpath            no_delete_self"),
            "{t}"
        );
        assert_eq!(lines[3], "    hint: HINT");
        assert_eq!(lines[4], "    hint: FIX");
        assert!(lines[5].starts_with("u2             tls         secret     -"));
        assert!(
            lines[5].ends_with("-          -        -                  -"),
            "{t}"
        );
        // Columns line up.
        let col = lines[0].find("CONTAINER").unwrap();
        assert_eq!(lines[1].find("app ").unwrap(), col);
    }

    #[test]
    fn names_print_escaped() {
        let mut r = report();
        r.volumes[0].volume = "app\u{1b}[2Jconfig".into();
        r.volumes[0].consumers[0].container = "a\u{9b}31m\u{202e}pp".into();
        r.volumes[1].pod = "u2\rX".into();
        let t = table(&r, SystemTime::UNIX_EPOCH);
        assert!(!t.chars().any(|c| c != '\n' && hidden(c)), "{t:?}");
        assert!(t.contains("app\\u{1b}[2Jconfig"), "{t}");
        assert!(t.contains("a\\u{9b}31m\\u{202e}pp"), "{t}");
        assert!(t.contains("u2\\u{d}X"), "{t}");
        let j = json(&r);
        assert!(!j.chars().any(|c| c != '\n' && hidden(c)), "{j:?}");
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(
            v["volumes"][0]["volume"], "app\u{1b}[2Jconfig",
            "names kept"
        );
        let c = &v["volumes"][0]["consumers"][0]["container"];
        assert_eq!(c, "a\u{9b}31m\u{202e}pp");
    }

    #[test]
    fn json_shape() {
        let v: serde_json::Value = serde_json::from_str(&json(&report())).unwrap();
        let vol = &v["volumes"][0];
        assert_eq!(vol["type"], "configmap");
        assert_eq!(vol["last_update_unix_seconds"], 1000.0);
        assert_eq!(vol["consumers"][1]["verdict"], "subpath");
        assert_eq!(vol["consumers"][1]["mount"], "subpath");
        assert!(vol["consumers"][0]["hint"].is_null());
        assert_eq!(
            vol["consumers"][1]["watches"],
            serde_json::json!(["no_delete_self"])
        );
        assert!(v["volumes"][1]["data_dir"].is_null());
        assert_eq!(v["volumes"][1]["consumers"], serde_json::json!([]));
    }
}
