//! Reads the agent's /metrics over plain HTTP/1.0: the lab's live table and the
//! integration tests look at the agent only through what it exports.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Samples of `name` whose labels include every `(key, value)` of `with`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample matching, if exactly one does.
    pub fn get(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        let mut it = self.matching(name, with);
        let first = it.next()?;
        it.next().is_none().then_some(first.value)
    }

    /// Sum over the samples matching (0 when none does).
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.matching(name, with).map(|s| s.value).sum()
    }
}

/// GET `path` from `addr`; the body on a 2xx answer.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .ok_or_else(bad)?;
    Ok((status, body))
}

/// Scrapes and parses `http://addr/metrics`.
pub fn scrape(addr: SocketAddr) -> std::io::Result<Samples> {
    let (status, body) = get(addr, "/metrics")?;
    if status != 200 {
        return Err(std::io::Error::other(format!("/metrics answered {status}")));
    }
    parse(&body).map_err(|line| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad metrics line: {line}"),
        )
    })
}

/// Parses the text format; `Err` carries the first line it cannot read.
pub fn parse(text: &str) -> Result<Samples, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).ok_or_else(|| line.to_owned())?);
    }
    Ok(Samples(out))
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = line.split_at(line.find(['{', ' '])?);
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches(',');
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let (k, after) = r.split_once("=\"")?;
            let mut v = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => v.push('\n'),
                        other => v.push(other),
                    },
                    '"' => break i,
                    c => v.push(c),
                }
            };
            labels.insert(k.to_owned(), v);
            r = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_values() {
        let text =
            "# HELP x y\n# TYPE x counter\nx 1\ny{a=\"b\",c=\"q\\\"uote\\\\\"} 2.5\nz{} +Inf\n";
        let s = parse(text).unwrap();
        assert_eq!(s.get("x", &[]), Some(1.0));
        assert_eq!(s.get("y", &[("a", "b")]), Some(2.5));
        assert_eq!(s.0[1].labels["c"], "q\"uote\\");
        assert_eq!(s.get("z", &[]), Some(f64::INFINITY));
        assert_eq!(s.sum("nope", &[]), 0.0);
    }

    #[test]
    fn rejects_garbage_and_ambiguity() {
        assert_eq!(parse("x{a=\"b\" 1\n").unwrap_err(), "x{a=\"b\" 1");
        assert!(parse("novalue\n").is_err());
        let s = parse("m{a=\"1\"} 1\nm{a=\"2\"} 2\n").unwrap();
        assert_eq!(s.get("m", &[]), None);
        assert_eq!(s.sum("m", &[]), 3.0);
    }
}
