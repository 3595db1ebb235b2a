//! Parsing what `read(2)` returns from a FID-reporting fanotify group.
//!
//! Layout (uapi `linux/fanotify.h`, `linux/fcntl.h`): events back to back, each a
//! `fanotify_event_metadata` (`event_len` covers the whole event) followed by info
//! records up to `event_len`. Each record starts with a `fanotify_event_info_header`
//! (`len` covers the whole record). A `FAN_EVENT_INFO_TYPE_DFID_NAME` record is a
//! `fanotify_event_info_fid` (header, fsid), a `struct file_handle` (`handle_bytes`,
//! `handle_type`, then `handle_bytes` bytes), then the NUL-terminated name, padded.
//! Every length read from the buffer is checked against what is left of it.

use std::{ffi::OsString, mem::size_of, os::unix::ffi::OsStringExt};

use libc::{
    fanotify_event_info_fid, fanotify_event_info_header, fanotify_event_metadata, file_handle,
};

use super::{DirId, FanEvent};

/// `FAN_EVENT_METADATA_LEN`.
const META_LEN: usize = size_of::<fanotify_event_metadata>();
const HEADER_LEN: usize = size_of::<fanotify_event_info_header>();
const FID_LEN: usize = size_of::<fanotify_event_info_fid>();
const HANDLE_LEN: usize = size_of::<file_handle>();

// The uapi sizes: the parser relies on libc agreeing with the kernel.
const _: () = assert!(META_LEN == 24);
const _: () = assert!(HEADER_LEN == 4);
const _: () = assert!(FID_LEN == 12);
const _: () = assert!(HANDLE_LEN == 8);

/// Reads a `T` at `off`, unaligned; `None` when the buffer is too short.
///
/// # Safety
/// `T` must be a C struct of integers (every bit pattern valid).
unsafe fn read_struct<T>(buf: &[u8], off: usize) -> Option<T> {
    let bytes = buf.get(off..off.checked_add(size_of::<T>())?)?;
    // SAFETY: `bytes` holds size_of::<T>() bytes; the caller vouches for `T`.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Parses events from a `read(2)` of the group. Stops at the first event whose length
/// does not fit the buffer or whose version is not the one this parser knows; skips
/// events and records it does not know. Never panics.
pub(crate) fn parse(buf: &[u8]) -> Vec<FanEvent> {
    let mut out = Vec::new();
    let mut off = 0;
    // SAFETY: fanotify_event_metadata is integers only.
    while let Some(meta) = unsafe { read_struct::<fanotify_event_metadata>(buf, off) } {
        let event_len = meta.event_len as usize;
        if event_len < META_LEN || event_len > buf.len() - off {
            break;
        }
        if meta.vers != libc::FANOTIFY_METADATA_VERSION {
            break;
        }
        let event = &buf[off..off + event_len];
        off += event_len;
        let meta_len = meta.metadata_len as usize;
        if meta_len < META_LEN || meta_len > event_len {
            continue;
        }
        if meta.mask & libc::FAN_Q_OVERFLOW != 0 {
            out.push(FanEvent::Overflow);
        } else if meta.mask & libc::FAN_OPEN != 0
            && let Some((dir, name)) = dfid_name(&event[meta_len..])
        {
            out.push(FanEvent::Open {
                pid: meta.pid,
                dir,
                name,
            });
        }
    }
    out
}

/// The first well-formed `DFID_NAME` record among an event's info records.
fn dfid_name(mut records: &[u8]) -> Option<(DirId, OsString)> {
    // SAFETY: fanotify_event_info_header is integers only.
    while let Some(hdr) = unsafe { read_struct::<fanotify_event_info_header>(records, 0) } {
        let len = hdr.len as usize;
        if len < HEADER_LEN || len > records.len() {
            return None;
        }
        let (record, rest) = records.split_at(len);
        records = rest;
        if hdr.info_type == libc::FAN_EVENT_INFO_TYPE_DFID_NAME
            && let Some(found) = parse_dfid_name(record)
        {
            return Some(found);
        }
    }
    None
}

fn parse_dfid_name(record: &[u8]) -> Option<(DirId, OsString)> {
    // SAFETY: both are integers only.
    let fid = unsafe { read_struct::<fanotify_event_info_fid>(record, 0) }?;
    let fh = unsafe { read_struct::<file_handle>(record, FID_LEN) }?;
    let start = FID_LEN + HANDLE_LEN;
    let end = start.checked_add(fh.handle_bytes as usize)?;
    let handle = record.get(start..end)?;
    let tail = &record[end..];
    let name = &tail[..tail.iter().position(|&b| b == 0)?];
    if name.is_empty() {
        return None;
    }
    let dir = DirId {
        fsid: fid.fsid.val,
        handle_type: fh.handle_type,
        handle: handle.to_vec(),
    };
    Some((dir, OsString::from_vec(name.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FSID: [i32; 2] = [0x1234, -7];
    const HANDLE: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8];

    /// A `DFID_NAME` record as the kernel writes it, built by hand (not with the libc
    /// structs the parser uses), padded to 4 bytes.
    fn record(info_type: u8, handle: &[u8], name: &[u8], nul: bool) -> Vec<u8> {
        let mut body = Vec::new();
        for v in FSID {
            body.extend(v.to_ne_bytes());
        }
        body.extend((handle.len() as u32).to_ne_bytes());
        body.extend(1i32.to_ne_bytes()); // handle_type
        body.extend(handle);
        body.extend(name);
        if nul {
            body.push(0);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut rec = vec![info_type, 0];
        rec.extend(((body.len() + 4) as u16).to_ne_bytes());
        rec.extend(body);
        rec
    }

    fn event(mask: u64, pid: i32, records: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = records.concat();
        let mut ev = Vec::new();
        ev.extend(((24 + body.len()) as u32).to_ne_bytes());
        ev.push(libc::FANOTIFY_METADATA_VERSION);
        ev.push(0);
        ev.extend(24u16.to_ne_bytes());
        ev.extend(mask.to_ne_bytes());
        ev.extend(libc::FAN_NOFD.to_ne_bytes());
        ev.extend(pid.to_ne_bytes());
        ev.extend(body);
        ev
    }

    fn open(pid: i32, name: &str) -> FanEvent {
        FanEvent::Open {
            pid,
            dir: DirId {
                fsid: FSID,
                handle_type: 1,
                handle: HANDLE.to_vec(),
            },
            name: name.into(),
        }
    }

    fn key_event(pid: i32) -> Vec<u8> {
        event(libc::FAN_OPEN, pid, &[record(2, HANDLE, b"key", true)])
    }

    #[test]
    fn valid_events() {
        let mut buf = key_event(42);
        buf.extend(event(
            libc::FAN_OPEN,
            43,
            &[record(2, HANDLE, b"tls.crt", true)],
        ));
        assert_eq!(parse(&buf), vec![open(42, "key"), open(43, "tls.crt")]);
    }

    #[test]
    fn overflow_without_info_record() {
        let mut buf = event(libc::FAN_Q_OVERFLOW, 0, &[]);
        buf.extend(key_event(5));
        assert_eq!(parse(&buf), vec![FanEvent::Overflow, open(5, "key")]);
    }

    #[test]
    fn truncated_buffer() {
        let one = key_event(42);
        let mut two = one.clone();
        two.extend(key_event(43));
        for cut in 0..two.len() {
            let got = parse(&two[..cut]);
            let want = if cut >= one.len() {
                vec![open(42, "key")]
            } else {
                vec![]
            };
            assert_eq!(got, want, "cut at {cut}");
        }
    }

    #[test]
    fn event_len_smaller_than_metadata() {
        for len in [0u32, 1, 8, 23] {
            let mut buf = key_event(42);
            buf[..4].copy_from_slice(&len.to_ne_bytes());
            assert_eq!(parse(&buf), vec![], "event_len {len}");
        }
    }

    #[test]
    fn bad_metadata_len_skips_the_event_only() {
        for meta_len in [0u16, 23, 1000] {
            let mut buf = key_event(42);
            buf[6..8].copy_from_slice(&meta_len.to_ne_bytes());
            buf.extend(key_event(43));
            assert_eq!(
                parse(&buf),
                vec![open(43, "key")],
                "metadata_len {meta_len}"
            );
        }
    }

    #[test]
    fn unknown_version_stops() {
        let mut buf = key_event(42);
        buf[4] = libc::FANOTIFY_METADATA_VERSION + 1;
        buf.extend(key_event(43));
        assert_eq!(parse(&buf), vec![]);
    }

    #[test]
    fn unknown_info_type_is_skipped() {
        let unknown = record(99, HANDLE, b"zzz", true);
        let buf = event(
            libc::FAN_OPEN,
            42,
            &[unknown.clone(), record(2, HANDLE, b"key", true)],
        );
        assert_eq!(parse(&buf), vec![open(42, "key")]);
        // Only an unknown record: no event.
        let buf = event(libc::FAN_OPEN, 42, &[unknown]);
        assert_eq!(parse(&buf), vec![]);
        // A plain DFID record (type 3, no name) is not enough either.
        let buf = event(libc::FAN_OPEN, 42, &[record(3, HANDLE, b"", false)]);
        assert_eq!(parse(&buf), vec![]);
    }

    #[test]
    fn name_without_nul_is_dropped() {
        let buf = event(libc::FAN_OPEN, 42, &[record(2, HANDLE, b"key", false)]);
        assert_eq!(parse(&buf), vec![]);
        let mut buf = buf;
        buf.extend(key_event(43));
        assert_eq!(parse(&buf), vec![open(43, "key")]);
    }

    #[test]
    fn empty_name_is_dropped() {
        let buf = event(libc::FAN_OPEN, 42, &[record(2, HANDLE, b"", true)]);
        assert_eq!(parse(&buf), vec![]);
    }

    #[test]
    fn handle_longer_than_record() {
        let mut rec = record(2, HANDLE, b"key", true);
        // handle_bytes sits after the header (4) and fsid (8).
        rec[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(parse(&event(libc::FAN_OPEN, 42, &[rec])), vec![]);
    }

    #[test]
    fn info_len_zero_or_too_long() {
        for len in [0u16, 3, 1000] {
            let mut rec = record(2, HANDLE, b"key", true);
            rec[2..4].copy_from_slice(&len.to_ne_bytes());
            assert_eq!(
                parse(&event(libc::FAN_OPEN, 42, &[rec])),
                vec![],
                "info len {len}"
            );
        }
    }

    #[test]
    fn other_masks_are_skipped() {
        let mut buf = event(
            libc::FAN_CLOSE_NOWRITE,
            42,
            &[record(2, HANDLE, b"key", true)],
        );
        buf.extend(key_event(43));
        assert_eq!(parse(&buf), vec![open(43, "key")]);
    }

    /// Every byte of a two-event buffer set to odd values, at every length: no panic.
    #[test]
    fn odd_bytes_never_panic() {
        let mut base = event(
            libc::FAN_OPEN,
            42,
            &[
                record(99, HANDLE, b"x", true),
                record(2, HANDLE, b"key", true),
            ],
        );
        base.extend(event(libc::FAN_Q_OVERFLOW, 0, &[]));
        for i in 0..base.len() {
            for v in [0u8, 1, 3, 4, 0x7f, 0x80, 0xff] {
                let mut buf = base.clone();
                buf[i] = v;
                for cut in [buf.len(), buf.len() - 1, i + 1] {
                    parse(&buf[..cut]);
                }
            }
        }
    }
}
