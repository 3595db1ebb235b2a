//! User-space decoding of [`SwapEvent`].
extern crate std;

use std::{ffi::OsString, os::unix::ffi::OsStringExt, vec::Vec};

use super::{COMM_LEN, PATH_LEN, SwapEvent, Syscall};

// SAFETY: plain `repr(C)` integers and byte arrays, no padding (checked by a test).
unsafe impl aya::Pod for SwapEvent {}

/// Why bytes from the ring buffer are not a valid event.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is not `size_of::<SwapEvent>()` bytes long.
    Size { got: usize, want: usize },
    /// The syscall number is not one the probe attaches to.
    Syscall(u32),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Size { got, want } => {
                write!(f, "event record of {got} bytes, expected {want}")
            }
            DecodeError::Syscall(n) => write!(f, "unknown call number {n} in event record"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A swap event with its strings cut at their NUL and its syscall checked.
/// Paths stay raw bytes: kubelet paths may hold any byte but NUL and `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedSwap {
    pub ts_boot_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub pid: u32,
    pub syscall: Syscall,
    pub old_dfd: i32,
    pub new_dfd: i32,
    pub flags: u32,
    pub comm: OsString,
    pub old_path: OsString,
    pub new_path: OsString,
}

fn cstr(bytes: &[u8]) -> OsString {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    OsString::from_vec(Vec::from(&bytes[..end]))
}

impl DecodedSwap {
    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let want = core::mem::size_of::<SwapEvent>();
        if bytes.len() != want {
            return Err(DecodeError::Size {
                got: bytes.len(),
                want,
            });
        }
        // SAFETY: length checked; SwapEvent is Pod, read unaligned.
        let ev: SwapEvent = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let syscall = Syscall::from_u32(ev.syscall).ok_or(DecodeError::Syscall(ev.syscall))?;
        Ok(DecodedSwap {
            ts_boot_ns: ev.ts_boot_ns,
            cgroup_id: ev.cgroup_id,
            tgid: ev.tgid,
            pid: ev.pid,
            syscall,
            old_dfd: ev.old_dfd,
            new_dfd: ev.new_dfd,
            flags: ev.flags,
            comm: cstr(&ev.comm[..COMM_LEN]),
            old_path: cstr(&ev.old_path[..PATH_LEN]),
            new_path: cstr(&ev.new_path[..PATH_LEN]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swap::{AT_FDCWD, DATA_NAME, DATA_TMP_NAME, last_component_is};

    fn raw(syscall: u32, old: &[u8], new: &[u8]) -> SwapEvent {
        let mut ev = SwapEvent {
            ts_boot_ns: 42,
            cgroup_id: 7,
            tgid: 100,
            pid: 101,
            syscall,
            old_dfd: AT_FDCWD,
            new_dfd: 3,
            flags: 1,
            comm: [0; COMM_LEN],
            old_path: [0; PATH_LEN],
            new_path: [0; PATH_LEN],
        };
        ev.comm[..7].copy_from_slice(b"kubelet");
        ev.old_path[..old.len()].copy_from_slice(old);
        ev.new_path[..new.len()].copy_from_slice(new);
        ev
    }

    fn bytes(ev: &SwapEvent) -> &[u8] {
        // SAFETY: Pod.
        unsafe {
            core::slice::from_raw_parts(
                (ev as *const SwapEvent).cast(),
                core::mem::size_of::<SwapEvent>(),
            )
        }
    }

    #[test]
    fn layout_has_no_padding() {
        let fields = 8 + 8 + 4 * 6 + COMM_LEN + 2 * PATH_LEN;
        assert_eq!(core::mem::size_of::<SwapEvent>(), fields);
    }

    #[test]
    fn decodes_fields_and_cuts_strings_at_nul() {
        let ev = raw(2, b"/k/..data_tmp", b"/k/..data");
        let d = DecodedSwap::decode(bytes(&ev)).unwrap();
        assert_eq!(d.syscall, Syscall::Renameat2);
        assert_eq!(d.comm, "kubelet");
        assert_eq!(d.old_path, "/k/..data_tmp");
        assert_eq!(d.new_path, "/k/..data");
        assert_eq!(
            (d.tgid, d.pid, d.cgroup_id, d.ts_boot_ns),
            (100, 101, 7, 42)
        );
        assert_eq!((d.old_dfd, d.new_dfd, d.flags), (AT_FDCWD, 3, 1));
    }

    #[test]
    fn keeps_non_utf8_bytes() {
        let ev = raw(0, b"/a/\xff\xfe", b"/a/..data");
        let d = DecodedSwap::decode(bytes(&ev)).unwrap();
        assert_eq!(d.old_path.as_encoded_bytes(), b"/a/\xff\xfe");
    }

    #[test]
    fn rejects_wrong_size_and_unknown_syscall() {
        let ev = raw(9, b"a", b"..data");
        assert_eq!(
            DecodedSwap::decode(bytes(&ev)),
            Err(DecodeError::Syscall(9))
        );
        let short = &bytes(&ev)[..10];
        assert!(matches!(
            DecodedSwap::decode(short),
            Err(DecodeError::Size { got: 10, .. })
        ));
    }

    #[test]
    fn full_length_path_without_nul_is_kept_whole() {
        let mut ev = raw(1, b"", b"");
        ev.new_path = [b'a'; PATH_LEN];
        let d = DecodedSwap::decode(bytes(&ev)).unwrap();
        assert_eq!(d.new_path.len(), PATH_LEN);
    }

    fn path(s: &[u8]) -> [u8; PATH_LEN] {
        let mut p = [0; PATH_LEN];
        p[..s.len()].copy_from_slice(s);
        p
    }

    #[test]
    fn last_component_filter() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"/v/..data", DATA_NAME, true),
            (b"..data", DATA_NAME, true),
            (b"/v/..data_tmp", DATA_TMP_NAME, true),
            (b"/v/..data_tmp", DATA_NAME, false),
            (b"/v/x..data", DATA_NAME, false),
            (b"/v/..data/x", DATA_NAME, false),
            (b"/v/..dat", DATA_NAME, false),
            (b"", DATA_NAME, false),
        ];
        for (p, name, want) in cases {
            let got = last_component_is(&path(p), p.len(), name);
            assert_eq!(
                got,
                *want,
                "{:?} vs {:?}",
                std::string::String::from_utf8_lossy(p),
                name
            );
        }
        // A length at or past the buffer means the kernel read was truncated.
        assert!(!last_component_is(&[b'a'; PATH_LEN], PATH_LEN, DATA_NAME));
    }
}
