//! The open log: one line per open of the file, written by the consumer and read by
//! whoever checks what it saw (the lab, a test, the real-node harness).
//!
//! ```text
//! open <unix nanos> <head>
//! ready
//! ```
//!
//! `<unix nanos>` is the wall-clock time taken right before open(2); `<head>` is the
//! first [`HEAD_BYTES`] bytes read, in lower-case hex (`-` for an empty file), or
//! `!<errno>` when the open or the read failed. [`READY`] follows the first open once
//! the strategy's watch is in place.

use std::{
    fmt::Write as _,
    fs::File,
    io::{self, Read as _},
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// How much of the file each open logs.
pub const HEAD_BYTES: usize = 32;

/// The line (without its newline) a consumer writes once its watch is in place and its
/// first open is logged.
pub const READY: &str = "ready";

/// One open of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// Wall-clock time taken right before open(2).
    pub at: SystemTime,
    /// The first [`HEAD_BYTES`] bytes it read, or the errno of a failed open or read.
    pub head: Result<Vec<u8>, i32>,
}

impl Open {
    /// Opens `file` and reads it whole, as an application reloading it does. A failed
    /// open or read is the errno, and is said on stderr.
    pub fn read(file: &Path) -> Open {
        let at = SystemTime::now();
        let content = File::open(file).and_then(|mut f| {
            let mut content = Vec::new();
            f.read_to_end(&mut content)?;
            Ok(content)
        });
        let head = match content {
            Ok(mut content) => {
                content.truncate(HEAD_BYTES);
                Ok(content)
            }
            Err(e) => {
                eprintln!("open {file:?}: {e}");
                Err(errno(&e))
            }
        };
        Open { at, head }
    }

    /// `open <unix nanos> <head>\n`; a time before 1970 is 0.
    pub fn line(&self) -> String {
        let nanos = self
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut line = format!("open {nanos} ");
        match &self.head {
            Ok(head) if head.is_empty() => line.push('-'),
            Ok(head) => {
                for b in head {
                    let _ = write!(line, "{b:02x}");
                }
            }
            Err(errno) => {
                let _ = write!(line, "!{errno}");
            }
        }
        line.push('\n');
        line
    }

    /// An `open ...` line (without its newline); `None` for any other line.
    pub fn parse(line: &str) -> Option<Open> {
        let mut parts = line.split(' ');
        if parts.next()? != "open" {
            return None;
        }
        let nanos: u64 = parts.next()?.parse().ok()?;
        let head = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let head = if head == "-" {
            Ok(Vec::new())
        } else if let Some(errno) = head.strip_prefix('!') {
            Err(errno.parse().ok()?)
        } else {
            Ok(unhex(head)?)
        };
        Some(Open {
            at: UNIX_EPOCH + Duration::from_nanos(nanos),
            head,
        })
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        let at = UNIX_EPOCH + Duration::from_nanos(1_795_615_806_123_456_789);
        assert_eq!(
            Open::parse("open 1795615806123456789 72657600ff"),
            Some(Open {
                at,
                head: Ok(b"rev\0\xff".to_vec())
            })
        );
        assert_eq!(
            Open::parse("open 1795615806123456789 -").unwrap().head,
            Ok(vec![])
        );
        assert_eq!(
            Open::parse("open 1795615806123456789 !2").unwrap().head,
            Err(2)
        );
        for bad in [
            "",
            "open",
            "open 1",
            "open x 00",
            "open 1 0",
            "open 1 zz",
            "open 1 00 extra",
            "close 1 00",
            READY,
        ] {
            assert_eq!(Open::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lines_round_trip() {
        let at = UNIX_EPOCH + Duration::from_nanos(1_795_615_806_000_000_001);
        for head in [Ok(b"apiVersion: v1\n".to_vec()), Ok(vec![]), Err(13)] {
            let open = Open { at, head };
            let line = open.line();
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            assert_eq!(Open::parse(line.trim_end()), Some(open));
        }
        assert_eq!(
            Open {
                at,
                head: Ok(vec![0, 0xab])
            }
            .line(),
            "open 1795615806000000001 00ab\n"
        );
    }

    #[test]
    fn read_keeps_the_head_or_the_errno() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("long");
        std::fs::write(&long, [b'x'; HEAD_BYTES + 10]).unwrap();
        let before = SystemTime::now();
        let open = Open::read(&long);
        assert!(open.at >= before && open.at <= SystemTime::now());
        assert_eq!(open.head, Ok(vec![b'x'; HEAD_BYTES]));

        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(Open::read(&empty).head, Ok(vec![]));
        assert_eq!(Open::read(&dir.path().join("none")).head, Err(libc::ENOENT));
        // A directory opens, and its read fails.
        assert_eq!(Open::read(dir.path()).head, Err(libc::EISDIR));
    }
}
