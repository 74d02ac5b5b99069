//! A handler's output, capped: the head and the tail are kept with a marker between them, and the full
//! length and SHA-256 are recorded. Memory and disk stay bounded by the cap whatever the handler
//! writes: the head goes straight to the log file, only the tail is held in memory.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// What the status file records about a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogSummary {
    /// The full length of the output, kept or not.
    pub bytes: u64,
    pub truncated: bool,
    /// SHA-256 of the full output, hex.
    pub sha256: String,
}

pub(crate) struct CappedLog {
    file: File,
    head_limit: u64,
    head_written: u64,
    tail_limit: usize,
    /// The most recent bytes past the head, at most `tail_limit` of them.
    tail: VecDeque<u8>,
    total: u64,
    hasher: Sha256,
}

impl CappedLog {
    /// A log at `path` keeping at most about `limit` bytes (half head, half tail). A file already
    /// there (an emptied spare, see [`crate::run::spare`]) is written over; it is truncated only when it
    /// is not empty. Opening with `O_TRUNC` would truncate an empty file as well, and ext4 then
    /// writes the log's data out at its close (the `auto_da_alloc` rule for files truncated to zero
    /// and written again): a block write started for every request, in the time between two
    /// handlers, for a file that goes once its outcome is committed.
    pub(crate) fn create(path: &Path, limit: u64) -> io::Result<Self> {
        let head_limit = limit / 2;
        let tail_limit = usize::try_from(limit - head_limit).unwrap_or(usize::MAX);
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() > 0 {
            file.set_len(0)?;
        }
        Ok(Self {
            file,
            head_limit,
            head_written: 0,
            tail_limit,
            tail: VecDeque::new(),
            total: 0,
            hasher: Sha256::new(),
        })
    }

    pub(crate) fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        self.hasher.update(buf);
        self.total += buf.len() as u64;
        let room = self.head_limit - self.head_written;
        if room > 0 {
            let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            self.file.write_all(&buf[..n])?;
            self.head_written += n as u64;
            buf = &buf[n..];
        }
        if buf.len() >= self.tail_limit {
            self.tail.clear();
            self.tail.extend(&buf[buf.len() - self.tail_limit..]);
        } else {
            self.tail.extend(buf);
            let excess = self.tail.len().saturating_sub(self.tail_limit);
            self.tail.drain(..excess);
        }
        Ok(())
    }

    /// Writes the tail (after a marker if anything was left out) and returns the summary.
    pub(crate) fn finish(mut self) -> io::Result<LogSummary> {
        let kept = self.head_written + self.tail.len() as u64;
        let truncated = kept < self.total;
        let sha256 = hex::encode(self.hasher.finalize());
        if truncated {
            writeln!(
                self.file,
                "\n[git-dispatch: {} bytes left out here; the full output was {} bytes, sha256 {sha256}]",
                self.total - kept,
                self.total
            )?;
        }
        let (a, b) = self.tail.as_slices();
        self.file.write_all(a)?;
        self.file.write_all(b)?;
        self.file.flush()?;
        Ok(LogSummary {
            bytes: self.total,
            truncated,
            sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(limit: u64, chunks: &[&[u8]]) -> (Vec<u8>, LogSummary) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = CappedLog::create(&path, limit).unwrap();
        for c in chunks {
            log.write(c).unwrap();
        }
        let summary = log.finish().unwrap();
        (std::fs::read(&path).unwrap(), summary)
    }

    #[test]
    fn output_under_the_cap_is_kept_whole() {
        let (bytes, summary) = capture(10, &[b"abc", b"def"]);
        assert_eq!(bytes, b"abcdef");
        assert!(!summary.truncated);
        assert_eq!(summary.bytes, 6);
    }

    #[test]
    fn output_over_the_cap_keeps_head_and_tail_with_a_marker() {
        let (bytes, summary) = capture(6, &[b"0123456789", b"abcdef"]);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("012\n[git-dispatch: 10 bytes left out here"),
            "{text}"
        );
        assert!(text.ends_with("def"), "{text}");
        assert!(summary.truncated);
        assert_eq!(summary.bytes, 16);
        assert_eq!(
            summary.sha256,
            hex::encode(Sha256::digest(b"0123456789abcdef"))
        );
    }

    #[test]
    fn a_log_written_over_an_older_file_holds_only_the_new_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"an older and longer output").unwrap();
        let mut log = CappedLog::create(&path, 100).unwrap();
        log.write(b"new").unwrap();
        log.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }
}
