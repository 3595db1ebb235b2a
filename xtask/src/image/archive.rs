//! The docker-archive format (what `docker save` writes, and `docker load`, `podman
//! load` and `ctr images import` read): a tar of `manifest.json`, the image config
//! `<sha256 of it>.json` and each layer as `<sha256 of it>/layer.tar`, an
//! uncompressed tar of the root filesystem.
//!
//! Deterministic: entries in a fixed order, mtime 0, uid and gid 0, no user or group
//! names, so the same root filesystem and config give the same bytes and digests.

use anyhow::Result;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::rootfs::{Kind, Rootfs};

/// Every entry's mtime: the epoch.
pub const MTIME: u64 = 0;

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The layer: `rootfs` as a tar, in its entries' order.
pub fn layer(rootfs: &Rootfs) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, entry) in rootfs.entries() {
        match &entry.kind {
            Kind::Dir => append(&mut tar, path, EntryType::Directory, entry.mode, &[])?,
            Kind::File(content) => append(&mut tar, path, EntryType::Regular, entry.mode, content)?,
        }
    }
    Ok(tar.into_inner()?)
}

/// The archive of one image: its config (JSON), its one layer, and the names it
/// goes by (`repository:tag`).
pub fn docker_archive(config: &[u8], layer: &[u8], repo_tags: &[String]) -> Result<Vec<u8>> {
    let config_name = format!("{}.json", sha256_hex(config));
    let layer_dir = sha256_hex(layer);
    let layer_name = format!("{layer_dir}/layer.tar");
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": repo_tags,
        "Layers": [layer_name],
    }]);
    let manifest = serde_json::to_vec(&manifest)?;
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, &layer_dir, EntryType::Directory, 0o755, &[])?;
    append(&mut tar, &layer_name, EntryType::Regular, 0o644, layer)?;
    append(&mut tar, &config_name, EntryType::Regular, 0o644, config)?;
    append(
        &mut tar,
        "manifest.json",
        EntryType::Regular,
        0o644,
        &manifest,
    )?;
    Ok(tar.into_inner()?)
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: EntryType,
    mode: u32,
    content: &[u8],
) -> Result<()> {
    let mut header = Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_size(content.len() as u64);
    tar.append_data(&mut header, path, content)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    /// (path, type, mode, uid, gid, mtime, content) of each entry.
    type Listing = Vec<(String, EntryType, u32, u64, u64, u64, Vec<u8>)>;

    fn list(archive: &[u8]) -> Listing {
        let mut tar = tar::Archive::new(archive);
        tar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                (
                    e.path().unwrap().to_str().unwrap().to_owned(),
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mtime().unwrap(),
                    content,
                )
            })
            .collect()
    }

    fn rootfs() -> Rootfs {
        let mut fs = Rootfs::default();
        // Added out of order: the layer is sorted whatever the order of adding.
        fs.add_file("usr/bin/tool", 0o755, b"\x7fELF".to_vec())
            .unwrap();
        fs.add_file("etc/passwd", 0o644, b"root:x:0:0::/:\n".to_vec())
            .unwrap();
        fs
    }

    #[test]
    fn the_layer_is_the_rootfs_sorted_owned_by_root_at_the_epoch() {
        let layer = layer(&rootfs()).unwrap();
        let entries = list(&layer);
        let dir = EntryType::Directory;
        let file = EntryType::Regular;
        let expected: Listing = vec![
            ("etc".into(), dir, 0o755, 0, 0, 0, vec![]),
            (
                "etc/passwd".into(),
                file,
                0o644,
                0,
                0,
                0,
                b"root:x:0:0::/:\n".to_vec(),
            ),
            ("usr".into(), dir, 0o755, 0, 0, 0, vec![]),
            ("usr/bin".into(), dir, 0o755, 0, 0, 0, vec![]),
            (
                "usr/bin/tool".into(),
                file,
                0o755,
                0,
                0,
                0,
                b"\x7fELF".to_vec(),
            ),
        ];
        assert_eq!(entries, expected);
        // No user or group names: nothing of the build machine.
        let mut tar = tar::Archive::new(&layer[..]);
        for e in tar.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().username_bytes(), Some(&b""[..]));
            assert_eq!(e.header().groupname_bytes(), Some(&b""[..]));
        }
    }

    #[test]
    fn the_same_tree_gives_the_same_bytes() {
        let a = layer(&rootfs()).unwrap();
        let b = layer(&rootfs()).unwrap();
        assert_eq!(a, b);
        let tags = ["x/y:1".to_owned()];
        assert_eq!(
            docker_archive(b"{}", &a, &tags).unwrap(),
            docker_archive(b"{}", &b, &tags).unwrap()
        );
        let mut other = rootfs();
        other
            .add_file("etc/group", 0o644, b"root:x:0:\n".to_vec())
            .unwrap();
        assert_ne!(layer(&other).unwrap(), a);
    }

    #[test]
    fn the_archive_names_its_parts_by_digest() {
        let layer = layer(&rootfs()).unwrap();
        let config = br#"{"architecture":"amd64"}"#;
        let tags = ["ghcr.io/reloadscope/reloadscope:1.2.3".to_owned()];
        let archive = docker_archive(config, &layer, &tags).unwrap();
        let entries = list(&archive);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let config_name = format!("{}.json", sha256_hex(config));
        let layer_name = format!("{}/layer.tar", sha256_hex(&layer));
        assert_eq!(
            names,
            [
                &layer_name[..layer_name.len() - 10],
                &layer_name,
                &config_name,
                "manifest.json"
            ]
        );
        assert_eq!(entries[1].6, layer);
        assert_eq!(entries[2].6, config);
        let manifest: serde_json::Value = serde_json::from_slice(&entries[3].6).unwrap();
        assert_eq!(
            manifest,
            json!([{"Config": config_name, "RepoTags": tags, "Layers": [layer_name]}])
        );
        assert!(entries.iter().all(|e| e.3 == 0 && e.4 == 0 && e.5 == 0));
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
