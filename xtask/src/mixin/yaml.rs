//! A small YAML writer for JSON values, enough for rule files: block mappings and
//! sequences, multi-line strings as literal blocks, and every other string plain
//! when it is unambiguous, else single-quoted (double-quoted, as JSON writes it,
//! when it has control characters).

use serde_json::Value;

/// `value` as a YAML document (objects and arrays in block style).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    node(&mut out, value, 0);
    out
}

/// Writes `value` as the content of a block at `indent`, each line ending in `\n`.
fn node(out: &mut String, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, v) in map {
                out.push_str(&format!("{pad}{}:", scalar(key, indent)));
                nested(out, v, indent);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&format!("{pad}-"));
                if let Value::Object(map) = item
                    && !map.is_empty()
                {
                    // `- key: value`: the item's first key on the dash's line, the
                    // rest lined up under it.
                    let mut inner = String::new();
                    node(&mut inner, item, indent + 2);
                    out.push(' ');
                    out.push_str(&inner[indent + 2..]);
                } else {
                    nested(out, item, indent);
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", inline(other, indent))),
    }
}

/// After `key:` or `-`: a collection on the next lines, a scalar on this one.
fn nested(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            node(out, value, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            node(out, value, indent + 2);
        }
        other => out.push_str(&format!(" {}\n", inline(other, indent))),
    }
}

fn inline(value: &Value, indent: usize) -> String {
    match value {
        Value::String(s) => scalar(s, indent),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

/// A string as a plain scalar, a literal block (`|-`, content at `indent + 2`), a
/// single-quoted or a double-quoted scalar, in that order of preference.
fn scalar(s: &str, indent: usize) -> String {
    if is_plain(s) {
        return s.to_owned();
    }
    let block_safe = s.contains('\n')
        && !s.starts_with([' ', '\n'])
        && !s.ends_with('\n')
        && !s.contains(['\r', '\t'])
        && s.lines().all(|l| l == l.trim_end());
    if block_safe {
        let pad = " ".repeat(indent + 2);
        let lines: Vec<String> = s
            .lines()
            .map(|l| {
                if l.is_empty() {
                    String::new()
                } else {
                    format!("{pad}{l}")
                }
            })
            .collect();
        return format!("|-\n{}", lines.join("\n"));
    }
    if !s.chars().any(char::is_control) {
        // Single-quoted: everything is literal but `'`, written twice.
        return format!("'{}'", s.replace('\'', "''"));
    }
    serde_json::to_string(s).expect("a string serializes")
}

/// Whether `s` reads back as the same string when written bare: words and simple
/// punctuation only, not starting with an indicator, not a YAML 1.1 bool, null or
/// number.
fn is_plain(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~",
    ];
    let Some(first) = s.chars().next() else {
        return false;
    };
    (first.is_ascii_alphanumeric() || first == '_')
        && !s.ends_with(' ')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " _./-,()'".contains(c))
        && !WORDS.contains(&s.to_ascii_lowercase().as_str())
        && s.parse::<f64>().is_err()
        && !s
            .replace('_', "")
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_are_plain_only_when_unambiguous() {
        assert_eq!(scalar("ReloadscopeAgentDown", 0), "ReloadscopeAgentDown");
        assert_eq!(scalar("10m", 0), "10m");
        assert_eq!(scalar("A container has it.", 0), "A container has it.");
        for quoted in [
            "", "yes", "Off", "0", "1e3", "1_000", "a: b", "a #b", "-x", "x ",
        ] {
            assert_eq!(scalar(quoted, 0), format!("'{quoted}'"));
        }
        assert_eq!(scalar(r#"up{job="x"} == 0"#, 0), r#"'up{job="x"} == 0'"#);
        assert_eq!(scalar("it's", 0), "it's");
        assert_eq!(scalar("'x: y'", 0), "'''x: y'''");
        assert_eq!(scalar("a\tb", 0), r#""a\tb""#);
    }

    #[test]
    fn documents_nest_in_block_style() {
        let doc = json!({"groups": [{"name": "g", "rules": [
            {"alert": "A", "expr": "x\n  > 0", "labels": {"severity": "warning"}, "v": []}
        ]}]});
        let expected = "\
groups:
  - name: g
    rules:
      - alert: A
        expr: |-
          x
            > 0
        labels:
          severity: warning
        v: []
";
        assert_eq!(to_yaml(&doc), expected);
    }
}
