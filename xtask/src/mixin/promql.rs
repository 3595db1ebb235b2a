//! The metric and label names a PromQL query uses, and the check that the agent
//! exports each of them. A tokenizer is enough: strings, numbers, durations and
//! ranges are skipped; identifiers are a function (or aggregation), a keyword, a
//! label (inside `{}` or a `by`/`on`/... list) or a metric name.

use std::collections::{BTreeMap, BTreeSet};

/// The names one query uses.
#[derive(Debug, Default, PartialEq)]
pub struct Names {
    pub metrics: BTreeSet<String>,
    /// `(metric, label)` for every label matcher; the metric is empty for `{...}`
    /// without a name.
    pub matchers: BTreeSet<(String, String)>,
    /// Labels of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    pub grouping: BTreeSet<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan",
];

pub fn names(expr: &str) -> Names {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Names::default();
    let (mut i, mut in_braces, mut grouping_next, mut in_grouping) = (0, false, false, false);
    let mut last_metric = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if in_braces {
                names.matchers.insert((last_metric.clone(), word));
            } else if in_grouping {
                names.grouping.insert(word);
            } else if GROUPING.contains(&word.as_str()) {
                grouping_next = true;
            } else if next == Some(&'(')
                || AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
            {
                // a function call, an aggregation (`sum by (x) (...)`) or a keyword
            } else {
                names.metrics.insert(word.clone());
                last_metric = word;
            }
            continue;
        } else if c == '{' {
            in_braces = true;
        } else if c == '}' {
            in_braces = false;
            last_metric.clear();
        } else if c == '(' && grouping_next {
            (grouping_next, in_grouping) = (false, true);
        } else if c == ')' {
            in_grouping = false;
        } else if !in_braces && !c.is_whitespace() {
            last_metric.clear();
        }
        i += 1;
    }
    names
}

/// Metric names and their label names, from a text exposition (`/metrics`).
pub fn exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = metrics.entry(line[..end].to_owned()).or_default();
        let Some(rest) = line[end..].strip_prefix('{') else {
            continue;
        };
        // `name="value",...}`: a label name runs to `=`; its value is a quoted
        // string with `\` escapes.
        let mut chars = rest.chars();
        let mut name = String::new();
        while let Some(c) = chars.next() {
            match c {
                '=' => {
                    labels.insert(std::mem::take(&mut name));
                    chars.next(); // the opening quote
                    while let Some(v) = chars.next() {
                        match v {
                            '\\' => drop(chars.next()),
                            '"' => break,
                            _ => {}
                        }
                    }
                }
                ',' | ' ' => {}
                '}' => break,
                _ => name.push(c),
            }
        }
    }
    metrics
}

/// Labels Prometheus adds to every scraped series, and the series it makes itself.
const TARGET_LABELS: &[&str] = &["job", "instance"];
const SYNTHETIC: &[&str] = &["up"];

/// Every metric or label of `expr` (and of `also`, labels such as a legend's or an
/// annotation's `{{ $labels.x }}`) that `exported` does not have, described.
pub fn unexported(
    expr: &str,
    also: &[String],
    exported: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let names = names(expr);
    let target = |l: &str| TARGET_LABELS.contains(&l);
    let mut problems = Vec::new();
    let mut known_labels = BTreeSet::new();
    for metric in &names.metrics {
        match exported.get(metric) {
            Some(labels) => known_labels.extend(labels.iter().cloned()),
            None if SYNTHETIC.contains(&metric.as_str()) => {}
            None => problems.push(format!("metric {metric} is not exported")),
        }
    }
    for (metric, label) in &names.matchers {
        let on_metric = exported.get(metric).is_some_and(|ls| ls.contains(label));
        if !(on_metric || target(label) || (metric.is_empty() && known_labels.contains(label))) {
            problems.push(format!("label {label} is not exported on {metric}"));
        }
    }
    for label in names.grouping.iter().chain(also) {
        if !(known_labels.contains(label) || target(label)) {
            problems.push(format!("label {label} is on none of its metrics"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_sorts_identifiers_by_their_place() {
        let n = names(
            r#"histogram_quantile(0.99, sum by (le, pod) (
                   rate(x_bucket{job="a", pod=~"$pod"}[$__rate_interval])
               )) * on (pod) group_left (node) y{mount="a{b}"} > 1e3 and bool z offset 5m"#,
        );
        assert_eq!(n.metrics, set(&["x_bucket", "y", "z"]));
        assert_eq!(n.grouping, set(&["le", "pod", "node"]));
        let m: Vec<_> = n.matchers.iter().map(|(m, l)| format!("{m}.{l}")).collect();
        assert_eq!(m, ["x_bucket.job", "x_bucket.pod", "y.mount"]);
    }

    #[test]
    fn exposition_reads_names_and_labels_with_escapes() {
        let text = "# TYPE a counter\na_total{x=\"1,\\\"}\",y=\"\"} 3\nb 1\n";
        let e = exposition(text);
        assert_eq!(e["a_total"], set(&["x", "y"]));
        assert!(e["b"].is_empty());
    }

    #[test]
    fn unexported_names_the_offenders() {
        let exported = exposition("m{pod=\"p\"} 1\nn 2\n");
        assert!(
            unexported(r#"sum by (pod, instance) (m{job="j"}) + n"#, &[], &exported).is_empty()
        );
        assert!(unexported("absent(up{job=\"j\"} == 1)", &[], &exported).is_empty());
        assert_eq!(
            unexported(
                r#"sum by (node) (m{container="c"}) + gone"#,
                &["pod".into()],
                &exported
            ),
            [
                "metric gone is not exported",
                "label container is not exported on m",
                "label node is on none of its metrics",
            ]
        );
    }
}
