//! The `.tar.gz` itself: unpacking into memory within limits, and writing one.
//!
//! A bundle is read exactly once, by this reader, into a map of path → bytes; every later step
//! (signature, hashes, the package loader, the registry loader) reads that map, so no two
//! readers can see different files. Only regular files and directories are accepted: a link,
//! a device or a FIFO could point outside the staging directory or change under the loader.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use flate2::read::GzDecoder;

use super::manifest::check_path;
use super::BundleError;

/// Most entries an archive may hold (files and directories).
pub const MAX_ENTRIES: usize = 10_000;

/// An unpacked archive: every regular file by its path.
#[derive(Debug, Default)]
pub struct Files {
    files: BTreeMap<String, Vec<u8>>,
    unpacked: u64,
}

impl Files {
    /// The bytes of `path`, if the archive holds it.
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    /// Remove and return a file.
    pub fn take(&mut self, path: &str) -> Option<Vec<u8>> {
        self.files.remove(path)
    }

    /// Every path, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Every file, sorted by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(p, b)| (p.as_str(), b.as_slice()))
    }

    /// Total bytes of the files.
    pub fn unpacked_bytes(&self) -> u64 {
        self.unpacked
    }

    /// Add a file (for building).
    pub fn insert(&mut self, path: String, bytes: Vec<u8>) {
        self.unpacked += bytes.len() as u64;
        if let Some(old) = self.files.insert(path, bytes) {
            self.unpacked -= old.len() as u64;
        }
    }
}

/// Unpack `archive` (gzip-compressed tar) into memory. At most `max_unpacked` bytes of files
/// in total and [`MAX_ENTRIES`] entries; every path must pass [`check_path`] (a leading `./`
/// is dropped, as `tar -C dir .` writes it); a path may appear once.
pub fn unpack(archive: &[u8], max_unpacked: u64) -> Result<Files, BundleError> {
    let truncated = |e: std::io::Error| {
        BundleError::Archive(format!("not a complete gzip-compressed tar archive: {e}"))
    };
    // Everything the decompressor yields counts: file data, but also headers, GNU long names
    // and PAX records (which the tar reader buffers whole) and the data of skipped entries.
    let tripped = std::rc::Rc::new(std::cell::Cell::new(false));
    let budget = max_unpacked.saturating_add(TAR_OVERHEAD);
    let bounded = Bounded {
        inner: GzDecoder::new(archive),
        left: budget,
        tripped: tripped.clone(),
    };
    let truncated = |e: std::io::Error| {
        if tripped.get() {
            too_big(max_unpacked)
        } else {
            truncated(e)
        }
    };
    let mut tar = tar::Archive::new(bounded);
    let mut files = Files::default();
    let mut entries_seen = 0usize;
    let mut directories = std::collections::BTreeSet::new();
    for entry in tar.entries().map_err(truncated)? {
        let mut entry = entry.map_err(truncated)?;
        entries_seen += 1;
        if entries_seen > MAX_ENTRIES {
            return Err(BundleError::Archive(format!(
                "holds more than {MAX_ENTRIES} entries"
            )));
        }
        let raw_path = entry.path_bytes();
        let path = std::str::from_utf8(&raw_path)
            .map_err(|_| BundleError::Archive("an entry's path is not UTF-8".to_owned()))?
            .to_owned();
        let kind = entry.header().entry_type();
        let path = path.strip_prefix("./").unwrap_or(&path).to_owned();
        if kind.is_dir() {
            if entry.header().size().map_err(truncated)? != 0 {
                return Err(BundleError::Archive(format!(
                    "directory `{path}` carries data"
                )));
            }
            let dir = path.trim_end_matches('/');
            if dir.is_empty() || dir == "." {
                continue;
            }
            check_path(dir).map_err(BundleError::Archive)?;
            directories.insert(dir.to_owned());
            continue;
        }
        check_path(&path).map_err(BundleError::Archive)?;
        if !kind.is_file() {
            return Err(BundleError::Archive(format!(
                "`{path}` is not a regular file or directory (links, devices and FIFOs are refused)"
            )));
        }
        let declared = entry.header().size().map_err(truncated)?;
        let room = max_unpacked.saturating_sub(files.unpacked);
        if declared > room {
            return Err(too_big(max_unpacked));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
        (&mut entry)
            .take(room.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(truncated)?;
        if bytes.len() as u64 > room {
            return Err(too_big(max_unpacked));
        }
        if bytes.len() as u64 != declared {
            return Err(BundleError::Archive(format!(
                "`{path}` is shorter than its header says"
            )));
        }
        if files.files.contains_key(&path) {
            return Err(BundleError::Archive(format!("`{path}` appears twice")));
        }
        files.insert(path, bytes);
    }
    // A file may not sit where another file's directory would be (`a` and `a/b`): both could
    // not be written out, and which one a loader saw would depend on the order.
    for path in files.files.keys() {
        let mut ancestor = path.as_str();
        while let Some((parent, _)) = ancestor.rsplit_once('/') {
            if files.files.contains_key(parent) {
                return Err(BundleError::Archive(format!(
                    "`{parent}` is both a file and the directory of `{path}`"
                )));
            }
            ancestor = parent;
        }
    }
    if let Some(clash) = directories.iter().find(|d| files.files.contains_key(*d)) {
        return Err(BundleError::Archive(format!(
            "`{clash}` is both a file and a directory"
        )));
    }
    Ok(files)
}

/// Room for what a tar holds besides file data: a 512-byte header per entry, padding to 512
/// bytes, long names and the two end blocks.
const TAR_OVERHEAD: u64 = (MAX_ENTRIES as u64) * 2048 + (1 << 20);

/// A reader that fails once it has given `left` bytes, and says so in `tripped`.
struct Bounded<R> {
    inner: R,
    left: u64,
    tripped: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One more byte would be over: find out whether there is one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.tripped.set(true);
                    Err(std::io::Error::other("over the unpacked size limit"))
                }
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(buf.get_mut(..want).unwrap_or_default())?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn too_big(max: u64) -> BundleError {
    BundleError::TooLarge(format!(
        "unpacks to more than {max} bytes (--bundle-max-bytes)"
    ))
}

/// Write `files` as a gzip-compressed tar: sorted paths, regular files of mode 0644, owner 0,
/// the given modification time — the same files give the same bytes.
pub fn pack(files: &Files, mtime: u64) -> Result<Vec<u8>, std::io::Error> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for (path, bytes) in files.iter() {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        tar.append_data(&mut header, path, bytes)?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn raw_tar(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, kind, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            // Written raw, so that `..` and absolute paths reach the reader as an attacker
            // would send them (the builder's own path checks would refuse them).
            let name = path.as_bytes();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_cksum();
            tar.append(&header, *bytes).unwrap();
        }
        let plain = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        gz.finish().unwrap()
    }

    fn refused(archive: &[u8], max: u64) -> String {
        unpack(archive, max).expect_err("refused").to_string()
    }

    #[test]
    fn packed_files_unpack_to_the_same_files() {
        let mut files = Files::default();
        files.insert("manifest.json".into(), b"{}".to_vec());
        files.insert(
            "package/p/a.cedar".into(),
            b"permit(principal,action,resource);".to_vec(),
        );
        let packed = pack(&files, 1).unwrap();
        assert_eq!(pack(&files, 1).unwrap(), packed, "deterministic");
        let back = unpack(&packed, 1 << 20).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            files.iter().collect::<Vec<_>>()
        );
    }

    #[test]
    fn hostile_archives_are_refused_with_the_reason() {
        let reg = tar::EntryType::Regular;
        assert!(refused(&raw_tar(&[("../evil", reg, b"x")]), 100).contains("`..`"));
        assert!(refused(&raw_tar(&[("/etc/x", reg, b"x")]), 100).contains("absolute"));
        assert!(refused(&raw_tar(&[("l", tar::EntryType::Symlink, b"")]), 100).contains("link"));
        assert!(refused(&raw_tar(&[("a", reg, b"1"), ("a", reg, b"2")]), 100).contains("twice"));
        assert!(
            refused(&raw_tar(&[("a", reg, b"1"), ("a/b", reg, b"2")]), 100)
                .contains("both a file and the directory")
        );
        assert!(refused(&raw_tar(&[("a", reg, &[0u8; 101])]), 100).contains("--bundle-max-bytes"));
        let whole = raw_tar(&[("a", reg, &[7u8; 4096])]);
        assert!(refused(&whole[..whole.len() / 2], 1 << 20).contains("not a complete"));
        assert!(refused(b"not gzip", 100).contains("not a complete"));
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        // 64 MiB of zeros compress to about 64 KiB; the reader must stop at 1 MiB.
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(64 << 20);
        header.set_mode(0o644);
        tar.append_data(&mut header, "zeros", std::io::repeat(0).take(64 << 20))
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&tar.into_inner().unwrap()).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        assert!(refused(&bomb, 1 << 20).contains("unpacks to more than"));
    }
}
