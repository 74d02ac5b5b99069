//! A push over `git://` that sends the pack the workdir already wrote, as it is, instead of having
//! libgit2 pack the same objects again.
//!
//! Why: libgit2's push walks what the remote has, searches for deltas and compresses every new
//! object again, on a thread that then competes with the handlers for the processors: a push of
//! 300 outcomes took about 1.4 s of a core on the benchmark, so that one of its two cores was
//! packing all through a drain of 1000 requests (perf: a fifth of the dispatcher's samples). The
//! pack the dispatcher wrote while recording those outcomes ([`crate::git::written`]) already holds
//! every object they add, with deltas against objects earlier in it: a push to a local path copies
//! it, and this sends it. What it measured is in `docs/performance.md`.
//!
//! What is spoken is `git send-pack`'s part of the protocol (version 0): read the server's ref
//! advertisement, send one command `OLD NEW REF` with the capabilities `report-status` and
//! `ofs-delta`, then the pack, then read the report. A server that does not offer both is left to
//! libgit2 ([`Sent::Unsupported`]), and so is everything but `git://` and a pack that chains from
//! the remote's tip to the one pushed (the caller checks that). The invariant is the one of every
//! push here: the server moves the ref only if it still holds `OLD` (under its ref lock), and
//! nothing but its `ok` counts as a success. A pack the server refuses after it was sent is left to
//! libgit2's push, which packs the objects itself and reports the refusal.

use std::fs::File;
use std::io::{self, Read, Write};

use git2::Oid;

use super::git_protocol::{self, pkt_line};

/// What the server made of a pushed pack.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Sent {
    /// It stored the pack and moved the ref.
    Pushed,
    /// Nothing was sent: the server's ref is not at `old` (why).
    Moved(String),
    /// It did not store the pack or did not move the ref (why): libgit2's push, which packs the
    /// objects itself, says whether that was the pack or the update.
    Refused(String),
    /// It does not offer what this push needs: push another way.
    Unsupported,
}

/// The longest pkt-line (`LARGE_PACKET_MAX`).
const MAX_PKT: usize = 65520;

/// Pushes `pack` (a whole pack file: every object that `new` adds to `old`, which the server
/// holds with everything it reaches) to `url`, moving `refname` from `old` to `new`.
pub(super) fn send_pack(
    url: &str,
    refname: &str,
    old: Oid,
    new: Oid,
    mut pack: File,
) -> io::Result<Sent> {
    let mut socket = git_protocol::open(url, "git-receive-pack")
        .map_err(|e| io::Error::other(e.message().to_owned()))?;
    let (current, caps) = read_advertisement(&mut socket, refname)?;
    let offered = |cap: &str| caps.split(' ').any(|c| c == cap);
    if !offered("report-status") || !offered("ofs-delta") {
        // No command: the server ends the exchange at the flush.
        socket.write_all(b"0000")?;
        return Ok(Sent::Unsupported);
    }
    if current != Some(old) {
        socket.write_all(b"0000")?;
        return Ok(Sent::Moved(format!(
            "the remote moved: `{refname}` is at {}, not at {old} (fetch first)",
            current.map_or("nothing".to_owned(), |oid| oid.to_string())
        )));
    }
    let command = format!(
        "{old} {new} {refname}\0report-status ofs-delta agent=git-dispatch/{}\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut request = pkt_line(command.as_bytes());
    request.extend_from_slice(b"0000");
    socket.write_all(&request)?;
    io::copy(&mut pack, &mut socket)?;
    socket.flush()?;
    read_report(&mut socket, refname)
}

/// The next pkt-line's data; `None` for a flush. An `ERR` line from the server is an error.
fn read_pkt(stream: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head)?;
    let len = std::str::from_utf8(&head)
        .ok()
        .and_then(|h| usize::from_str_radix(h, 16).ok())
        .ok_or_else(|| invalid(format!("not a pkt-line length: {head:?}")))?;
    if len == 0 {
        return Ok(None);
    }
    if !(4..=MAX_PKT).contains(&len) {
        return Err(invalid(format!("a pkt-line of {len} bytes")));
    }
    let mut data = vec![0; len - 4];
    stream.read_exact(&mut data)?;
    if let Some(message) = data.strip_prefix(b"ERR ") {
        return Err(io::Error::other(format!(
            "the server says: {}",
            String::from_utf8_lossy(message).trim_end()
        )));
    }
    Ok(Some(data))
}

/// What the server advertises for `refname` (`None`: not there) and its capabilities. Only that
/// ref is kept, however many the server lists.
fn read_advertisement(stream: &mut impl Read, refname: &str) -> io::Result<(Option<Oid>, String)> {
    let mut found = None;
    let mut caps = String::new();
    while let Some(line) = read_pkt(stream)? {
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let (line, offered) = match line.iter().position(|b| *b == 0) {
            Some(nul) => (&line[..nul], Some(&line[nul + 1..])),
            None => (line, None),
        };
        if let Some(offered) = offered {
            caps = String::from_utf8_lossy(offered).into_owned();
        }
        let text = String::from_utf8_lossy(line);
        if let Some((oid, name)) = text.split_once(' ')
            && name == refname
        {
            found = Oid::from_str(oid).ok().filter(|oid| !oid.is_zero());
        }
    }
    Ok((found, caps))
}

/// The server's report: `unpack ok`, then `ok REF` or `ng REF REASON`.
fn read_report(stream: &mut impl Read, refname: &str) -> io::Result<Sent> {
    let unpack = read_pkt(stream)?.ok_or_else(|| invalid("no report".to_owned()))?;
    let unpack = String::from_utf8_lossy(&unpack).trim_end().to_owned();
    if unpack != "unpack ok" {
        return Ok(Sent::Refused(format!(
            "the server did not store the pack: {unpack}"
        )));
    }
    while let Some(line) = read_pkt(stream)? {
        let line = String::from_utf8_lossy(&line).trim_end().to_owned();
        if line == format!("ok {refname}") {
            return Ok(Sent::Pushed);
        }
        if let Some(reason) = line.strip_prefix(&format!("ng {refname} ")) {
            return Ok(Sent::Refused(reason.to_owned()));
        }
    }
    Err(invalid(format!("the report does not name `{refname}`")))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertisement_gives_the_ref_and_capabilities_and_an_err_line_is_an_error() {
        let a = "1".repeat(40);
        let b = "2".repeat(40);
        let mut wire =
            pkt_line(format!("{a} refs/heads/main\0report-status ofs-delta\n").as_bytes());
        wire.extend(pkt_line(format!("{b} refs/dispatch/x\n").as_bytes()));
        wire.extend(pkt_line(format!("{b} .have\n").as_bytes()));
        wire.extend_from_slice(b"0000");
        let read = |wire: &[u8], name| read_advertisement(&mut &wire[..], name);
        let (main, caps) = read(&wire, "refs/heads/main").unwrap();
        assert_eq!(caps, "report-status ofs-delta");
        assert_eq!(main, Some(Oid::from_str(&a).unwrap()));
        assert_eq!(
            read(&wire, "refs/dispatch/x").unwrap().0,
            Some(Oid::from_str(&b).unwrap())
        );
        assert_eq!(read(&wire, "refs/heads/other").unwrap().0, None);
        let err = read(&pkt_line(b"ERR access denied"), "refs/heads/main").unwrap_err();
        assert_eq!(err.to_string(), "the server says: access denied");
        let empty = format!("{} capabilities^{{}}\0report-status\n", "0".repeat(40));
        let mut wire = pkt_line(empty.as_bytes());
        wire.extend_from_slice(b"0000");
        assert_eq!(
            read(&wire, "refs/heads/main").unwrap(),
            (None, "report-status".to_owned())
        );
    }

    #[test]
    fn the_report_says_pushed_refused_or_why_the_pack_was_not_stored() {
        let report = |lines: &[&str]| {
            let mut wire: Vec<u8> = lines.iter().flat_map(|l| pkt_line(l.as_bytes())).collect();
            wire.extend_from_slice(b"0000");
            read_report(&mut wire.as_slice(), "refs/heads/main")
        };
        assert_eq!(
            report(&["unpack ok\n", "ok refs/heads/main\n"]).unwrap(),
            Sent::Pushed
        );
        assert_eq!(
            report(&["unpack ok\n", "ng refs/heads/main failed to lock\n"]).unwrap(),
            Sent::Refused("failed to lock".to_owned())
        );
        assert_eq!(
            report(&[
                "unpack index-pack abnormal exit\n",
                "ng refs/heads/main unpacker error\n",
            ])
            .unwrap(),
            Sent::Refused(
                "the server did not store the pack: unpack index-pack abnormal exit".to_owned()
            )
        );
        assert!(report(&["unpack ok\n"]).is_err());
    }
}
