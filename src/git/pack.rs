//! Pack files on disk: a finished [`Pack`] written into a repository's `objects/pack`, and the
//! [`PackFile`]s it leaves there, which can be copied to another repository, merged into one and
//! removed.
//!
//! In: the entries a [`crate::git::pack_writer::PackWriter`] made (ids, offsets, CRC-32s) and its
//! bytes. Out: `pack-<checksum>.pack` and `.idx` files. The invariant: a pack's index appears last
//! and whole (each file is written under a temporary name, then renamed), as readers find packs by
//! their index; the index is made here from what the writer already knows, never by reading the
//! pack back (see [`crate::git::pack_writer`] for what that cost).
//!
//! The formats are Git's pack version 2 and pack index version 2 (`gitformat-pack(5)`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git2::Oid;
use openssl::sha::{Sha1, sha1};

/// A finished pack and its index.
pub(crate) struct Pack {
    pub checksum: [u8; 20],
    pub pack: Vec<u8>,
    pub idx: Vec<u8>,
    /// Each object's id, offset and entry CRC-32, by id: what the index holds.
    entries: Vec<(Oid, u64, u32)>,
}

impl Pack {
    /// A pack of `pack`'s bytes (checksum included), with the index of `sorted`.
    pub(crate) fn new(pack: Vec<u8>, checksum: [u8; 20], sorted: Vec<(Oid, u64, u32)>) -> Self {
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

    /// Opens the pack file (not its index) in `pack_dir`, for reading.
    pub(crate) fn open(&self, pack_dir: &Path) -> io::Result<fs::File> {
        fs::File::open(self.path(pack_dir, "pack"))
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
pub(crate) fn pack_name(checksum: &[u8; 20]) -> String {
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

#[cfg(test)]
mod tests {
    use std::process::Command;

    use git2::{ObjectType, Repository};

    use super::*;
    use crate::git::pack_writer::PackWriter;
    use crate::git::tree_edit::Piece;

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
