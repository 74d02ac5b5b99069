//! The writer of the packs of outcomes: objects are added as they are made, each compressed once,
//! and a new tree may be stored as a delta of an older version in the same pack.
//!
//! In: objects (id, type, bytes) and, for a tree, the [`Piece`]s `tree_edit::diff` found against
//! the whole tree it started from. Out: a [`Pack`] with its index (see [`crate::git::pack`]),
//! whose entries are in the order they were added; every delta's base is earlier in the same pack.
//!
//! Why it exists: libgit2 would find the deltas by searching (its pack builder compares every
//! object with the ten before it) and then read the whole pack back to index it, inflating each
//! object, applying each delta and hashing the result again; over a local path the remote indexed
//! it once more. That was a third of the main thread's time on the 1000-request bench, and while it
//! ran no request was started. Here the index comes from what is already known: ids, offsets and
//! checksums.
//!
//! The format is Git's pack version 2 (`gitformat-pack(5)`).

use std::collections::{HashMap, HashSet};

use flate2::{Compress, Compression, FlushCompress, Status};
use git2::{ObjectType, Oid};
use openssl::sha::sha1;

use crate::git::pack::Pack;
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
    /// so that those packs can be merged into one (see [`crate::git::pack::PackFile::merge`]),
    /// whose index lists each object once (two handlers that print the same thing make the same
    /// log blob).
    finished: HashSet<Oid>,
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
    use std::fs;
    use std::process::Command;

    use git2::Repository;

    use super::*;
    use crate::git::pack::pack_name;

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
}
