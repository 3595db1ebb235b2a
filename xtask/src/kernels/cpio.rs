//! A minimal writer of the cpio "newc" format, the one the kernel unpacks as an
//! initramfs: directories, regular files, symlinks and character devices, all
//! owned by root. No compression: the kernel takes a plain archive, and a few tens
//! of MB are copied faster than they are compressed.

use std::io::{self, Write};

/// An archive being written to `out`. Parents must be added before their entries.
pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), &[])
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        (rdev_major, rdev_minor): (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        // Names are relative to the archive's root: "bin/sh", not "/bin/sh".
        let name = path.trim_start_matches('/');
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{path}: larger than 4 GiB")))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // dev major
            0, // dev minor
            rdev_major,
            rdev_minor,
            name.len() as u32 + 1, // with its NUL
            0,                     // check
        ];
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Header plus name, and data, each end on a 4-byte boundary.
    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.put(&[0; 3][..pad as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut Writer<Vec<u8>>) -> io::Result<()>) -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        build(&mut w).unwrap();
        w.finish().unwrap()
    }

    /// (name, mode, rdev, data)
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// The entries of a newc archive.
    fn entries(mut bytes: &[u8]) -> Vec<Entry> {
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        let up4 = |n: usize| n.div_ceil(4) * 4;
        let mut out = Vec::new();
        loop {
            assert_eq!(&bytes[..6], b"070701");
            let (mode, size, namesize) = (field(bytes, 1), field(bytes, 6), field(bytes, 11));
            let rdev = (field(bytes, 9), field(bytes, 10));
            let name_end = 110 + namesize as usize;
            assert_eq!(bytes[name_end - 1], 0, "names end with NUL");
            let name = String::from_utf8(bytes[110..name_end - 1].to_vec()).unwrap();
            let data_start = up4(name_end);
            let data = bytes[data_start..data_start + size as usize].to_vec();
            bytes = &bytes[up4(data_start + size as usize)..];
            if name == "TRAILER!!!" {
                assert!(bytes.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn entries_round_trip_with_padding() {
        let bytes = archive(|w| {
            w.dir("/bin", 0o755)?;
            w.file("/bin/busybox", 0o755, b"12345")?;
            w.symlink("/bin/sh", "busybox")?;
            w.dir("/dev", 0o755)?;
            w.char_device("/dev/console", 0o600, 5, 1)?;
            w.file("/init", 0o755, b"#!/bin/sh\n")
        });
        assert_eq!(bytes.len() % 4, 0);
        let got = entries(&bytes);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "init"]
        );
        assert_eq!(got[0].1, 0o040_755);
        assert_eq!((got[1].1, got[1].3.as_slice()), (0o100_755, &b"12345"[..]));
        assert_eq!(
            (got[2].1, got[2].3.as_slice()),
            (0o120_777, &b"busybox"[..])
        );
        assert_eq!((got[4].1, got[4].2), (0o020_600, (5, 1)));
        assert_eq!(got[5].3, b"#!/bin/sh\n");
    }
}
