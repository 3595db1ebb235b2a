//! The few kernel struct offsets the fentry variant's `vfs_rename` hook needs, read
//! from the kernel's BTF (`/sys/kernel/btf/vmlinux`) at load time, as a CO-RE loader
//! would: `struct renamedata`'s `new_dentry`, `struct dentry`'s `d_name` and, in that
//! `struct qstr`, `len` and `name`. They differ between kernels (`struct renamedata`
//! exists since 5.12 and its members have moved since; `d_name` sits in an anonymous
//! union on recent kernels), so none is assumed.
//!
//! A reader of the BTF format (kernel docs, `Documentation/bpf/btf.rst`) just wide
//! enough for this: named structs and unions with their members (anonymous ones
//! searched through), and functions with their prototypes.

use std::collections::HashMap;

/// Where the destination's name is, from a `struct renamedata *`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenameOffsets {
    /// `renamedata.new_dentry` (a `struct dentry *`).
    pub new_dentry: u64,
    /// `dentry.d_name.len` (u32), from the dentry.
    pub name_len: u64,
    /// `dentry.d_name.name` (a `const unsigned char *`), from the dentry.
    pub name_ptr: u64,
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;

struct Type {
    kind: u32,
    name: u32,
    /// Size, or the referenced type (FUNC: its prototype).
    size_type: u32,
    kind_flag: bool,
    /// STRUCT/UNION: (name, type, bit offset); FUNC_PROTO: (name, type, 0).
    members: Vec<(u32, u32, u32)>,
}

/// Types by id (index 0 is `void`), and the string section.
struct Parsed<'a> {
    types: Vec<Type>,
    strings: &'a [u8],
}

/// The offsets, or None when the kernel's `vfs_rename` does not take a single
/// `struct renamedata *` (before 5.12) or a member is missing.
pub fn rename_offsets(btf: &[u8]) -> Result<Option<RenameOffsets>, String> {
    let p = parse(btf)?;
    let mut by_name: HashMap<(&[u8], u32), u32> = HashMap::new();
    for (id, t) in p.types.iter().enumerate().skip(1) {
        if let Some(name) = p.string(t.name).filter(|n| !n.is_empty()) {
            by_name.entry((name, t.kind)).or_insert(id as u32);
        }
    }
    let Some(&func) = by_name.get(&(&b"vfs_rename"[..], KIND_FUNC)) else {
        return Ok(None);
    };
    let proto = p.ty(p.ty(func)?.size_type)?;
    if proto.kind != KIND_FUNC_PROTO || proto.members.len() != 1 {
        return Ok(None);
    }
    let structs = |name: &[u8]| by_name.get(&(name, KIND_STRUCT)).copied();
    let (Some(rd), Some(dentry), Some(qstr)) =
        (structs(b"renamedata"), structs(b"dentry"), structs(b"qstr"))
    else {
        return Ok(None);
    };
    let find = |id, member: &[u8]| p.member_offset(id, member);
    let (Some(new_dentry), Some(d_name), Some(len), Some(name)) = (
        find(rd, b"new_dentry")?,
        find(dentry, b"d_name")?,
        find(qstr, b"len")?,
        find(qstr, b"name")?,
    ) else {
        return Ok(None);
    };
    Ok(Some(RenameOffsets {
        new_dentry,
        name_len: d_name + len,
        name_ptr: d_name + name,
    }))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    let s = b.get(at..at + 2).ok_or("BTF: truncated")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    let s = b.get(at..at + 4).ok_or("BTF: truncated")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Bytes each kind's record carries after the common 12: (fixed, per vlen entry).
fn extra(kind: u32) -> Result<(usize, usize), String> {
    Ok(match kind {
        1 | 14 | 17 => (4, 0),      // INT, VAR, DECL_TAG
        3 => (12, 0),               // ARRAY
        4 | 5 | 15 | 19 => (0, 12), // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => (0, 8),           // ENUM, FUNC_PROTO
        2 | 7..=12 | 16 | 18 => (0, 0),
        k => return Err(format!("BTF: unknown kind {k}")),
    })
}

fn parse(b: &[u8]) -> Result<Parsed<'_>, String> {
    if u16_at(b, 0)? != MAGIC {
        return Err("BTF: bad magic (not little-endian BTF)".into());
    }
    let hdr_len = u32_at(b, 4)? as usize;
    let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
    let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
    let types_at = hdr_len + type_off;
    let section = |at: usize, len: usize| b.get(at..at + len).ok_or("BTF: section out of bounds");
    let data = section(types_at, type_len)?;
    let strings = section(hdr_len + str_off, str_len)?;
    let mut types = vec![Type {
        kind: 0,
        name: 0,
        size_type: 0,
        kind_flag: false,
        members: Vec::new(),
    }];
    let mut at = 0;
    while at < data.len() {
        let (name, info, size_type) = (
            u32_at(data, at)?,
            u32_at(data, at + 4)?,
            u32_at(data, at + 8)?,
        );
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let (fixed, each) = extra(kind)?;
        at += 12;
        let mut members = Vec::new();
        if matches!(kind, KIND_STRUCT | KIND_UNION | KIND_FUNC_PROTO) {
            for i in 0..vlen {
                let m = at + i * each;
                let offset = if each == 12 { u32_at(data, m + 8)? } else { 0 };
                members.push((u32_at(data, m)?, u32_at(data, m + 4)?, offset));
            }
        }
        at += fixed + each * vlen;
        types.push(Type {
            kind,
            name,
            size_type,
            kind_flag: info >> 31 == 1,
            members,
        });
    }
    Ok(Parsed { types, strings })
}

impl Parsed<'_> {
    fn string(&self, off: u32) -> Option<&[u8]> {
        let s = self.strings.get(off as usize..)?;
        Some(&s[..s.iter().position(|&c| c == 0)?])
    }

    fn ty(&self, id: u32) -> Result<&Type, String> {
        self.types
            .get(id as usize)
            .ok_or(format!("BTF: no type {id}"))
    }

    /// `id` with typedefs and qualifiers (const, volatile, restrict, type tags) peeled.
    fn peel(&self, mut id: u32) -> Result<&Type, String> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            if !matches!(t.kind, 8..=11 | 18) {
                return Ok(t);
            }
            id = t.size_type;
        }
        Err("BTF: type chain too long".into())
    }

    /// Byte offset of `member` in struct or union `id`, searching anonymous members.
    fn member_offset(&self, id: u32, member: &[u8]) -> Result<Option<u64>, String> {
        self.member_in(self.peel(id)?, member, 0)
    }

    fn member_in(&self, t: &Type, member: &[u8], depth: u32) -> Result<Option<u64>, String> {
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return Ok(None);
        }
        for &(name, ty, offset) in &t.members {
            // With kind_flag the offset's low 24 bits are the bit offset.
            let bits = if t.kind_flag {
                offset & 0xff_ffff
            } else {
                offset
            };
            if !bits.is_multiple_of(8) {
                continue;
            }
            let bytes = u64::from(bits / 8);
            match self.string(name) {
                Some(n) if n == member => return Ok(Some(bytes)),
                Some([]) | None => {
                    if let Some(inner) = self.member_in(self.peel(ty)?, member, depth + 1)? {
                        return Ok(Some(bytes + inner));
                    }
                }
                Some(_) => {}
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: strings first, then types, built by the test.
    #[derive(Default)]
    struct Blob {
        types: Vec<u8>,
        strings: Vec<u8>,
        next: u32,
    }

    impl Blob {
        fn new() -> Self {
            Blob {
                strings: vec![0],
                next: 1,
                ..Default::default()
            }
        }

        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            at
        }

        fn ty(&mut self, name: &str, kind: u32, vlen: usize, size_type: u32, rest: &[u32]) -> u32 {
            let n = self.s(name);
            for w in [n, (kind << 24) | vlen as u32, size_type]
                .iter()
                .chain(rest)
            {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.next += 1;
            self.next - 1
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.ty(name, 1, 0, size, &[size * 8])
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.ty("", 2, 0, to, &[])
        }

        /// (name, type, byte offset) members.
        fn aggregate(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut rest = Vec::new();
            for &(m, ty, off) in members {
                rest.extend([self.s(m), ty, off * 8]);
            }
            self.ty(name, kind, members.len(), size, &rest)
        }

        fn bytes(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(&MAGIC.to_le_bytes());
            b.extend_from_slice(&[1, 0]);
            for w in [
                24,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                b.extend_from_slice(&w.to_le_bytes());
            }
            b.extend_from_slice(&self.types);
            b.extend_from_slice(&self.strings);
            b
        }
    }

    /// A kernel whose `d_name` is in an anonymous union (as on 6.15 and newer) and
    /// whose qstr keeps `len` in an anonymous struct inside an anonymous union.
    fn kernel(vfs_rename_params: usize) -> Vec<u8> {
        let mut b = Blob::new();
        let u32_ = b.int("u32", 4);
        let u64_ = b.int("u64", 8);
        let hash = b.aggregate(KIND_STRUCT, "", 8, &[("hash", u32_, 0), ("len", u32_, 4)]);
        let hash_len = b.aggregate(KIND_UNION, "", 8, &[("", hash, 0), ("hash_len", u64_, 0)]);
        let uchar = b.int("unsigned char", 1);
        let name_ptr = b.ptr(uchar);
        let qstr = b.aggregate(
            KIND_STRUCT,
            "qstr",
            16,
            &[("", hash_len, 0), ("name", name_ptr, 8)],
        );
        let names = b.aggregate(
            KIND_UNION,
            "",
            16,
            &[("d_name", qstr, 0), ("__d_name", qstr, 0)],
        );
        let dentry = b.aggregate(
            KIND_STRUCT,
            "dentry",
            64,
            &[("d_flags", u32_, 0), ("", names, 32)],
        );
        let dentry_ptr = b.ptr(dentry);
        let rd = b.aggregate(
            KIND_STRUCT,
            "renamedata",
            56,
            &[
                ("old_dentry", dentry_ptr, 16),
                ("new_dentry", dentry_ptr, 32),
            ],
        );
        let rd_ptr = b.ptr(rd);
        let int = b.int("int", 4);
        let params: Vec<u32> = (0..vfs_rename_params).flat_map(|_| [0, rd_ptr]).collect();
        let proto = b.ty("", KIND_FUNC_PROTO, vfs_rename_params, int, &params);
        b.ty("vfs_rename", KIND_FUNC, 0, proto, &[]);
        b.bytes()
    }

    #[test]
    fn offsets_come_through_anonymous_unions_and_structs() {
        let offsets = rename_offsets(&kernel(1)).unwrap();
        assert_eq!(
            offsets,
            Some(RenameOffsets {
                new_dentry: 32,
                name_len: 36,
                name_ptr: 40,
            })
        );
    }

    #[test]
    fn a_vfs_rename_without_renamedata_is_none() {
        assert_eq!(rename_offsets(&kernel(6)).unwrap(), None);
    }

    #[test]
    fn bad_or_truncated_btf_is_an_error() {
        assert!(rename_offsets(b"\x9f\xeb").is_err());
        assert!(rename_offsets(&[0u8; 24]).unwrap_err().contains("magic"));
        let mut cut = kernel(1);
        cut.truncate(cut.len() - 40);
        assert!(rename_offsets(&cut).is_err());
    }

    #[test]
    fn this_kernels_btf_has_the_offsets() {
        // The development kernel (6.18) has BTF and renamedata.
        let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("read the kernel's BTF");
        let o = rename_offsets(&btf)
            .unwrap()
            .expect("vfs_rename takes a renamedata");
        assert!(o.new_dentry > 0 && o.new_dentry.is_multiple_of(8), "{o:?}");
        assert_eq!(o.name_ptr - o.name_len, 4, "{o:?}");
    }
}
