//! Pack files written as the outcomes are made, with their index.
//!
//! Outcomes are committed in memory and written out as one pack at a time (see `sync::Staging`).
//! libgit2 would find their deltas by searching (its pack builder compares every object with the
//! ten before it) and then read the whole pack back to index it, inflating each object, applying
//! each delta and hashing the result again; over a local path the remote indexed it once more.
//! That was a third of the main thread's time on the 1000-request bench, and while it ran no
//! request was started. Here each object is compressed once, when it is made, and a new tree can be
//! stored as a delta of an older version (the [`Piece`]s `tree_edit::diff` finds), so the index
//! comes from what is already known: ids, offsets and checksums.
//!
//! The formats are Git's pack version 2 and pack index version 2 (`gitformat-pack(5)`).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::{Compress, Compression, FlushCompress, Status};
use git2::{ObjectType, Oid};
use openssl::sha::{Sha1, sha1};

use crate::git::tree_edit::Piece;

/// Longest chain of deltas before a tree is stored whole again, as `pack.depth` in Git.
const MAX_DEPTH: u32 = 50;
/// The pack type of a delta against an object earlier in the same pack.
const OFS_DELTA: u8 = 6;
/// The most bytes one copy instruction of a delta takes (its size field holds 0 for this).
const MAX_COPY: usize = 0x10000;
/// The most bytes one insert instruction of a delta carries.
const MAX_INSERT: usize = 0x7f;
/// Trees and deltas smaller than this are stored in their zlib streams, not compressed. Their
/// bytes are mostly object ids, which do not compress (a tree of 16 entries, 484 bytes, takes 446 at
/// level 1), while deflating any small input costs about 25 µs, most of it building Huffman tables
/// (2 µs stored). Ten of the thirteen objects of an outcome are such trees: storing them took 10 %
/// off the dispatcher's CPU time on the 1000-request bench and made its packs 5 % larger. Commits
/// and blobs are text and are compressed (a 730-byte status file takes 400 bytes).
const STORE_BELOW: usize = 4096;

/// A pack being written: its entries so far, and what its index needs to know of them.
pub(crate) struct PackWriter {
    /// The pack's bytes; the header's object count is set by [`PackWriter::finish`].
    bytes: Vec<u8>,
    /// Each object's id, offset and the CRC-32 of its entry, in the order written.
    entries: Vec<(Oid, u64, u32)>,
    /// Where each object starts, and the length of its delta chain.
    at: HashMap<Oid, (u64, u32)>,
    /// Level 1, for what is worth compressing.
    deflate: Compress,
    /// Level 0: stored blocks, for small trees and deltas (see [`STORE_BELOW`]).
    store: Compress,
    /// The objects of the packs finished since [`PackWriter::forget_finished`]: not added again,
    /// so that those packs can be merged into one (see [`PackFile::merge`]), whose index lists each
    /// object once (two handlers that print the same thing make the same log blob).
    finished: HashSet<Oid>,
}

/// A finished pack and its index.
pub(crate) struct Pack {
    pub checksum: [u8; 20],
    pub pack: Vec<u8>,
    pub idx: Vec<u8>,
    /// Each object's id, offset and entry CRC-32, by id: what the index holds.
    entries: Vec<(Oid, u64, u32)>,
}

impl Default for PackWriter {
    fn default() -> Self {
        let mut writer = Self {
            bytes: Vec::new(),
            entries: Vec::new(),
            at: HashMap::new(),
            deflate: Compress::new(Compression::fast(), true),
            store: Compress::new(Compression::none(), true),
            finished: HashSet::new(),
        };
        writer.start();
        writer
    }
}

impl PackWriter {
    fn start(&mut self) {
        self.bytes.clear();
        self.bytes.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\0");
        self.entries.clear();
        self.at.clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `oid` is in this pack or in one finished since [`PackWriter::forget_finished`].
    pub(crate) fn contains(&self, oid: Oid) -> bool {
        self.at.contains_key(&oid) || self.finished.contains(&oid)
    }

    /// Forgets the packs finished so far: their objects may be added again.
    pub(crate) fn forget_finished(&mut self) {
        self.finished.clear();
    }

    /// Adds an object whole.
    pub(crate) fn add(&mut self, oid: Oid, kind: ObjectType, data: &[u8]) {
        if self.contains(oid) {
            return;
        }
        let type_code = match kind {
            ObjectType::Commit => 1,
            ObjectType::Tree => 2,
            ObjectType::Blob => 3,
            _ => 4,
        };
        let offset = self.entry_header(type_code, data.len());
        self.compress(data, kind != ObjectType::Tree || data.len() >= STORE_BELOW);
        self.close_entry(oid, offset, 0);
    }

    /// Adds a tree made of `base` by `pieces` (`len` bytes in all) as a delta of it, when `base`
    /// is in this pack, its chain is not too long and the delta is less than half the tree; returns
    /// whether it did.
    pub(crate) fn add_delta(
        &mut self,
        oid: Oid,
        base: Oid,
        base_len: usize,
        pieces: &[Piece],
        len: usize,
    ) -> bool {
        if self.contains(oid) {
            return true;
        }
        let Some(&(base_offset, depth)) = self.at.get(&base) else {
            return false;
        };
        if depth >= MAX_DEPTH || u32::try_from(base_len).is_err() {
            return false;
        }
        let delta = delta(base_len, pieces, len);
        if delta.len() > len / 2 {
            return false;
        }
        let offset = self.entry_header(OFS_DELTA, delta.len());
        // The distance back to the base, most significant group first, each group but the last
        // biased by one (`gitformat-pack(5)`, "offset encoding").
        let mut distance = offset - base_offset;
        let mut encoded = vec![(distance & 0x7f) as u8];
        distance >>= 7;
        while distance > 0 {
            distance -= 1;
            encoded.push(0x80 | (distance & 0x7f) as u8);
            distance >>= 7;
        }
        encoded.reverse();
        self.bytes.extend_from_slice(&encoded);
        self.compress(&delta, delta.len() >= STORE_BELOW);
        self.close_entry(oid, offset, depth + 1);
        true
    }

    /// Writes an entry's type and size; returns where the entry starts.
    fn entry_header(&mut self, type_code: u8, size: usize) -> u64 {
        let offset = self.bytes.len() as u64;
        let mut size = size as u64;
        let mut byte = (type_code << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            self.bytes.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        self.bytes.push(byte);
        offset
    }

    /// Appends `data` as a zlib stream, deflated at level 1 or, without `deflate`, stored.
    fn compress(&mut self, data: &[u8], deflate: bool) {
        let zlib = if deflate {
            &mut self.deflate
        } else {
            &mut self.store
        };
        zlib.reset();
        let mut input = data;
        loop {
            self.bytes.reserve(input.len() + 64);
            let before = zlib.total_in();
            let status = zlib
                .compress_vec(input, &mut self.bytes, FlushCompress::Finish)
                .expect("deflating into memory cannot fail");
            input = &input[(zlib.total_in() - before) as usize..];
            if status == Status::StreamEnd {
                break;
            }
        }
    }

    fn close_entry(&mut self, oid: Oid, offset: u64, depth: u32) {
        let crc = crc32fast::hash(&self.bytes[offset as usize..]);
        self.entries.push((oid, offset, crc));
        self.at.insert(oid, (offset, depth));
    }

    /// The pack and its index; the writer is empty again after.
    pub(crate) fn finish(&mut self) -> Pack {
        let count = u32::try_from(self.entries.len()).expect("fewer than 2^32 objects");
        self.bytes[8..12].copy_from_slice(&count.to_be_bytes());
        let checksum = sha1(&self.bytes);
        let mut pack = std::mem::take(&mut self.bytes);
        pack.extend_from_slice(&checksum);

        let mut sorted = std::mem::take(&mut self.entries);
        sorted.sort_unstable_by_key(|e| e.0);
        self.finished.extend(sorted.iter().map(|e| e.0));
        self.start();
        Pack::new(pack, checksum, sorted)
    }
}

impl Pack {
    /// A pack of `pack`'s bytes (checksum included), with the index of `sorted`.
    fn new(pack: Vec<u8>, checksum: [u8; 20], sorted: Vec<(Oid, u64, u32)>) -> Self {
        Pack {
            idx: index(&sorted, &checksum),
            checksum,
            pack,
            entries: sorted,
        }
    }

    /// What is known of this pack once its files are written: its bytes are dropped.
    pub(crate) fn into_file(self) -> PackFile {
        PackFile {
            checksum: self.checksum,
            entries: self.entries,
        }
    }

    /// Writes the pack and then its index into `pack_dir` (`objects/pack` of a repository), each
    /// under a temporary name first: a reader looks for packs by their index, which appears last
    /// and whole.
    pub(crate) fn write_to(&self, pack_dir: &Path) -> io::Result<()> {
        let name = pack_name(&self.checksum);
        put(pack_dir, &format!("{name}.pack"), |file| {
            file.write_all(&self.pack)
        })?;
        put(pack_dir, &format!("{name}.idx"), |file| {
            file.write_all(&self.idx)
        })
    }
}

/// A pack written into a folder, known by its checksum and its index's entries; its bytes are
/// only on disk (the packs of a push were kept in memory until it, 1.7 MB for 500 outcomes).
pub(crate) struct PackFile {
    checksum: [u8; 20],
    /// As [`Pack::entries`].
    entries: Vec<(Oid, u64, u32)>,
}

impl PackFile {
    fn path(&self, pack_dir: &Path, ext: &str) -> PathBuf {
        pack_dir.join(format!("{}.{ext}", pack_name(&self.checksum)))
    }

    /// Copies the pack and then its index from the folder `from` into `to`, as
    /// [`Pack::write_to`] writes them.
    pub(crate) fn copy(&self, from: &Path, to: &Path) -> io::Result<()> {
        for ext in ["pack", "idx"] {
            let source = self.path(from, ext);
            let name = source.file_name().expect("a file name").to_string_lossy();
            let mut source = fs::File::open(&source)?;
            put(to, &name, |file| io::copy(&mut source, file).map(drop))?;
        }
        Ok(())
    }

    /// Removes this pack's files from `pack_dir`, index first, as `git repack -d` does.
    pub(crate) fn remove_from(&self, pack_dir: &Path) -> io::Result<()> {
        for ext in ["idx", "pack"] {
            match fs::remove_file(self.path(pack_dir, ext)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// One pack of the objects of `parts`, whose files are in `pack_dir`, written there: their
    /// entries one after the other as they are (a delta names its base by its distance back, and
    /// every base is in its delta's pack, so no entry changes; only the header's count, the offsets
    /// in the index and the checksums are new), read and written one part at a time. `None` when
    /// two parts hold the same object (an index lists each object once).
    pub(crate) fn merge(parts: &[&PackFile], pack_dir: &Path) -> io::Result<Option<PackFile>> {
        let count: usize = parts.iter().map(|p| p.entries.len()).sum();
        let count = u32::try_from(count).map_err(io::Error::other)?;
        let mut entries = Vec::with_capacity(count as usize);
        let mut shift = 0;
        for part in parts {
            let body = fs::metadata(part.path(pack_dir, "pack"))?.len() - 12 - 20;
            entries.extend(
                part.entries
                    .iter()
                    .map(|&(oid, at, crc)| (oid, at + shift, crc)),
            );
            shift += body;
        }
        entries.sort_unstable_by_key(|e| e.0);
        if entries.windows(2).any(|w| w[0].0 == w[1].0) {
            return Ok(None);
        }
        let tmp = pack_dir.join(format!("tmp_merge_{}.pack", std::process::id()));
        let written = (|| {
            let mut hasher = Sha1::new();
            let mut file = fs::File::create(&tmp)?;
            let mut header = b"PACK\0\0\0\x02".to_vec();
            header.extend_from_slice(&count.to_be_bytes());
            hasher.update(&header);
            file.write_all(&header)?;
            for part in parts {
                let path = part.path(pack_dir, "pack");
                let bytes = fs::read(&path)?;
                if bytes.len() < 32 || &bytes[..4] != b"PACK" {
                    let what = format!("`{}` is not a pack", path.display());
                    return Err(io::Error::other(what));
                }
                let body = &bytes[12..bytes.len() - 20];
                hasher.update(body);
                file.write_all(body)?;
            }
            let checksum = hasher.finish();
            file.write_all(&checksum)?;
            Ok(checksum)
        })();
        let checksum = match written {
            Ok(checksum) => checksum,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let merged = PackFile { checksum, entries };
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444))?;
        fs::rename(&tmp, merged.path(pack_dir, "pack"))?;
        let idx = index(&merged.entries, &checksum);
        put(pack_dir, &format!("{}.idx", pack_name(&checksum)), |f| {
            f.write_all(&idx)
        })?;
        Ok(Some(merged))
    }
}

/// The file name of the pack with `checksum`, without its extension, as Git names it.
fn pack_name(checksum: &[u8; 20]) -> String {
    format!(
        "pack-{}",
        Oid::from_bytes(checksum).expect("a SHA-1 is 20 bytes")
    )
}

/// Writes the read-only file `name` in `dir` through `write`, under a temporary name first; a file
/// already there (the same pack, named by its checksum) is kept.
fn put(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let path = dir.join(name);
    if path.exists() {
        return Ok(());
    }
    let tmp = dir.join(format!("tmp_{name}"));
    let mut file = fs::File::create(&tmp)?;
    write(&mut file)?;
    drop(file);
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444))?;
    fs::rename(&tmp, &path)
}

/// A version 2 index of the entries `sorted` (by id) of the pack with `checksum`.
fn index(sorted: &[(Oid, u64, u32)], checksum: &[u8; 20]) -> Vec<u8> {
    let mut idx = Vec::with_capacity(8 + 1024 + sorted.len() * 28 + 40);
    idx.extend_from_slice(b"\xfftOc\0\0\0\x02");
    let mut fanout = [0u32; 256];
    for (oid, _, _) in sorted {
        fanout[usize::from(oid.as_bytes()[0])] += 1;
    }
    let mut total = 0;
    for n in fanout {
        total += n;
        idx.extend_from_slice(&total.to_be_bytes());
    }
    for (oid, _, _) in sorted {
        idx.extend_from_slice(oid.as_bytes());
    }
    for (_, _, crc) in sorted {
        idx.extend_from_slice(&crc.to_be_bytes());
    }
    let mut large = Vec::new();
    for (_, offset, _) in sorted {
        let small = match u32::try_from(*offset) {
            Ok(small) if small < 0x8000_0000 => small,
            _ => {
                large.push(*offset);
                0x8000_0000 | (large.len() as u32 - 1)
            }
        };
        idx.extend_from_slice(&small.to_be_bytes());
    }
    for offset in large {
        idx.extend_from_slice(&offset.to_be_bytes());
    }
    idx.extend_from_slice(checksum);
    let idx_checksum = sha1(&idx);
    idx.extend_from_slice(&idx_checksum);
    idx
}

/// A delta that makes `len` bytes out of a base of `base_len` by `pieces`.
fn delta(base_len: usize, pieces: &[Piece], len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for size in [base_len, len] {
        let mut size = size as u64;
        loop {
            let byte = (size & 0x7f) as u8;
            size >>= 7;
            if size == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    for piece in pieces {
        match piece {
            Piece::Copy { start, len } => {
                let mut start = *start;
                let end = start + len;
                while start < end {
                    let size = (end - start).min(MAX_COPY);
                    let at = out.len();
                    out.push(0x80);
                    for (i, byte) in (start as u32).to_le_bytes().into_iter().enumerate() {
                        if byte != 0 {
                            out[at] |= 1 << i;
                            out.push(byte);
                        }
                    }
                    // A size of 0x10000 is written as no size bytes at all.
                    let size_bytes = (size as u32 & 0xffff).to_le_bytes();
                    for (i, byte) in size_bytes.into_iter().take(3).enumerate() {
                        if byte != 0 {
                            out[at] |= 0x10 << i;
                            out.push(byte);
                        }
                    }
                    start += size;
                }
            }
            Piece::Insert(bytes) => {
                for chunk in bytes.chunks(MAX_INSERT) {
                    out.push(chunk.len() as u8);
                    out.extend_from_slice(chunk);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use git2::Repository;

    use super::*;

    /// Builds a pack of a blob, a small tree, a large object and two deltas chained on it (one with
    /// copies longer than one instruction carries), then has Git index it: Git's index must be ours
    /// byte for byte, and every object must read back from the pack as it was made. The small tree
    /// and the deltas are stored, the large object is compressed.
    #[test]
    fn packs_and_indexes_are_the_ones_git_makes() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let mut writer = PackWriter::default();
        let blob = b"hello\n".to_vec();
        let blob_oid = Oid::hash_object(ObjectType::Blob, &blob).unwrap();
        writer.add(blob_oid, ObjectType::Blob, &blob);
        // A "tree" of 70,000 bytes, so that copies need two instructions; Git checks only the
        // objects' ids here, not that a tree parses.
        let base: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let base_oid = Oid::hash_object(ObjectType::Blob, &base).unwrap();
        writer.add(base_oid, ObjectType::Blob, &base);
        let mut tree = b"100644 hello\0".to_vec();
        tree.extend_from_slice(blob_oid.as_bytes());
        let tree_oid = Oid::hash_object(ObjectType::Tree, &tree).unwrap();
        writer.add(tree_oid, ObjectType::Tree, &tree);
        let mut expected = vec![
            (blob_oid, blob.clone()),
            (base_oid, base.clone()),
            (tree_oid, tree.clone()),
        ];
        let mut prev = (base_oid, base);
        for round in 0..2u8 {
            let pieces = vec![
                Piece::Copy {
                    start: 0,
                    len: 66_000,
                },
                Piece::Insert(vec![round; 300]),
                Piece::Copy {
                    start: 66_100,
                    len: prev.1.len() - 66_100,
                },
            ];
            let mut made = prev.1[..66_000].to_vec();
            made.extend_from_slice(&[round; 300]);
            made.extend_from_slice(&prev.1[66_100..]);
            let oid = Oid::hash_object(ObjectType::Blob, &made).unwrap();
            assert!(writer.add_delta(oid, prev.0, prev.1.len(), &pieces, made.len()));
            expected.push((oid, made.clone()));
            prev = (oid, made);
        }
        let absent = Oid::hash_object(ObjectType::Blob, b"absent").unwrap();
        assert!(
            !writer.add_delta(absent, absent, 6, &[], 0),
            "no base, no delta"
        );
        let pack = writer.finish();
        assert!(writer.is_empty());
        assert!(
            pack.pack.windows(tree.len()).any(|w| w == tree),
            "a small tree is stored as it is"
        );
        assert!(
            pack.pack.len() < 70_000 / 2,
            "the large object is compressed: {} bytes",
            pack.pack.len()
        );

        let pack_dir = dir.path().join("objects").join("pack");
        pack.write_to(&pack_dir).unwrap();
        let name = pack_dir.join(pack_name(&pack.checksum));
        let git_idx = dir.path().join("git.idx");
        let status = Command::new("git")
            .arg("index-pack")
            .arg("-o")
            .arg(&git_idx)
            .arg(name.with_extension("pack"))
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(fs::read(git_idx).unwrap(), pack.idx);
        let odb = repo.odb().unwrap();
        odb.refresh().unwrap();
        for (oid, bytes) in expected {
            assert_eq!(odb.read(oid).unwrap().data(), &bytes[..], "{oid}");
        }
    }

    /// Two packs, each with a delta on a base of its own, merged: Git indexes the merged pack as
    /// we do, and every object reads back; the writer does not add an object of a pack it finished
    /// again, and packs that share an object are not merged.
    #[test]
    fn packs_merged_into_one_are_indexed_by_git_as_here_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let mut writer = PackWriter::default();
        let mut expected = Vec::new();
        let mut parts = Vec::new();
        for round in 0..2u8 {
            let base: Vec<u8> = (0..5000u32).map(|i| (i * 13 % 251) as u8 ^ round).collect();
            let base_oid = Oid::hash_object(ObjectType::Blob, &base).unwrap();
            writer.add(base_oid, ObjectType::Blob, &base);
            let mut made = base[..4000].to_vec();
            made.extend_from_slice(&[round; 40]);
            let pieces = [
                Piece::Copy {
                    start: 0,
                    len: 4000,
                },
                Piece::Insert(vec![round; 40]),
            ];
            let oid = Oid::hash_object(ObjectType::Blob, &made).unwrap();
            assert!(writer.add_delta(oid, base_oid, base.len(), &pieces, made.len()));
            let note = format!("note {round}\n").into_bytes();
            let note_oid = Oid::hash_object(ObjectType::Blob, &note).unwrap();
            writer.add(note_oid, ObjectType::Blob, &note);
            expected.extend([(base_oid, base), (oid, made), (note_oid, note)]);
            parts.push(writer.finish());
        }
        let pack_dir = dir.path().join("objects").join("pack");
        let parts: Vec<PackFile> = parts
            .into_iter()
            .map(|part| {
                part.write_to(&pack_dir).unwrap();
                part.into_file()
            })
            .collect();
        let merged = PackFile::merge(&[&parts[0], &parts[1]], &pack_dir)
            .unwrap()
            .expect("no object in both");
        assert_eq!(merged.entries.len(), 6);
        for part in &parts {
            part.remove_from(&pack_dir).unwrap();
        }
        let git_idx = dir.path().join("git.idx");
        let status = Command::new("git")
            .arg("index-pack")
            .arg("-o")
            .arg(&git_idx)
            .arg(merged.path(&pack_dir, "pack"))
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            fs::read(git_idx).unwrap(),
            fs::read(merged.path(&pack_dir, "idx")).unwrap()
        );
        let odb = repo.odb().unwrap();
        odb.refresh().unwrap();
        for (oid, bytes) in expected {
            assert_eq!(odb.read(oid).unwrap().data(), &bytes[..], "{oid}");
        }
        // Copied elsewhere, whole; then removed.
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        merged.copy(&pack_dir, &elsewhere).unwrap();
        assert_eq!(
            fs::read(merged.path(&elsewhere, "pack")).unwrap(),
            fs::read(merged.path(&pack_dir, "pack")).unwrap()
        );
        merged.remove_from(&pack_dir).unwrap();
        assert_eq!(fs::read_dir(&pack_dir).unwrap().count(), 0);

        // An object of a pack finished since the last `forget_finished` is not added again; once
        // forgotten, it is, and two packs that hold it are not merged.
        let shared = b"the same in both\n";
        let shared_oid = Oid::hash_object(ObjectType::Blob, shared).unwrap();
        let mut packs = Vec::new();
        for forget in [false, false, true] {
            if forget {
                writer.forget_finished();
            }
            writer.add(shared_oid, ObjectType::Blob, shared);
            let pack = writer.finish();
            pack.write_to(&pack_dir).unwrap();
            packs.push(pack.into_file());
        }
        assert_eq!(packs[0].entries.len(), 1);
        assert!(packs[1].entries.is_empty(), "added again before forgetting");
        assert_eq!(packs[2].entries.len(), 1);
        assert!(
            PackFile::merge(&[&packs[0], &packs[2]], &pack_dir)
                .unwrap()
                .is_none()
        );
    }
}
