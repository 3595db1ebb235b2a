//! User-space decoding of [`WatchEvent`].
extern crate std;

use std::{ffi::OsString, os::unix::ffi::OsStringExt, vec::Vec};

use super::{WatchCall, WatchEvent};
use crate::swap::{COMM_LEN, DecodeError, PATH_LEN};

// SAFETY: plain `repr(C)` integers and byte arrays, no padding (checked by a test).
unsafe impl aya::Pod for WatchEvent {}

/// A watch event with its strings cut at their NUL and its call checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedWatch {
    pub ts_boot_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub pid: u32,
    pub call: WatchCall,
    pub fd: i32,
    pub wd: i32,
    pub mask: u32,
    pub comm: OsString,
    pub path: OsString,
}

fn cstr(bytes: &[u8]) -> OsString {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    OsString::from_vec(Vec::from(&bytes[..end]))
}

impl DecodedWatch {
    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let want = core::mem::size_of::<WatchEvent>();
        if bytes.len() != want {
            return Err(DecodeError::Size {
                got: bytes.len(),
                want,
            });
        }
        // SAFETY: length checked; WatchEvent is Pod, read unaligned.
        let ev: WatchEvent = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let call = WatchCall::from_u32(ev.call).ok_or(DecodeError::Syscall(ev.call))?;
        Ok(DecodedWatch {
            ts_boot_ns: ev.ts_boot_ns,
            cgroup_id: ev.cgroup_id,
            tgid: ev.tgid,
            pid: ev.pid,
            call,
            fd: ev.fd,
            wd: ev.wd,
            mask: ev.mask,
            comm: cstr(&ev.comm[..COMM_LEN]),
            path: cstr(&ev.path[..PATH_LEN]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_padding() {
        let fields = 8 + 8 + 4 * 6 + COMM_LEN + PATH_LEN;
        assert_eq!(core::mem::size_of::<WatchEvent>(), fields);
    }

    #[test]
    fn decodes_and_refuses_bad_records() {
        let mut ev = WatchEvent {
            ts_boot_ns: 1,
            cgroup_id: 2,
            tgid: 3,
            pid: 4,
            call: 0,
            fd: 5,
            wd: 6,
            mask: 0x0200_0002,
            comm: [0; COMM_LEN],
            path: [0; PATH_LEN],
        };
        ev.path[..11].copy_from_slice(b"config.yaml");
        // SAFETY: Pod.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (&ev as *const WatchEvent).cast::<u8>(),
                core::mem::size_of::<WatchEvent>(),
            )
        };
        let d = DecodedWatch::decode(bytes).unwrap();
        assert_eq!(
            (d.call, d.fd, d.wd, d.mask),
            (WatchCall::Add, 5, 6, 0x0200_0002)
        );
        assert_eq!(d.path, "config.yaml");
        assert!(DecodedWatch::decode(&bytes[1..]).is_err());
        ev.call = 9;
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (&ev as *const WatchEvent).cast::<u8>(),
                core::mem::size_of::<WatchEvent>(),
            )
        };
        assert_eq!(DecodedWatch::decode(bytes), Err(DecodeError::Syscall(9)));
    }
}
