//! Approvals and denials: `git-dispatch approve ID` and `deny ID` each commit a file
//! `approvals/ID/<ulid>.yml`, signed by whoever runs them:
//!
//! ```yaml
//! request: db-main-7
//! request_blob: 3f2c...          # the version of the request approved
//! verdict: approve               # or deny
//! comment: "checked the plan"    # (deny: the reason)
//! ```
//!
//! Who approved is the verified signer of the commit that added the file
//! ([`crate::git::verify`]), never anything the file says. An approval of another version of the
//! request (its `request_blob`) does not count.

use std::path::Path;

use git2::{Oid, Repository};
use serde_yaml::Value as Yaml;

use crate::inbox::yaml::parse_yaml_mapping;

/// The folder of approvals, one subfolder per request id.
pub(crate) const APPROVALS: &str = "approvals";

/// How many commits are looked back for the one that added an approval.
const MAX_WALK: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Approve,
    Deny,
}

/// One file of `approvals/ID/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The commit that added it (its signer is the approver), and its time.
    pub commit: Oid,
    pub time: i64,
    pub verdict: Verdict,
    pub request_blob: Option<Oid>,
    /// The comment, or a denial's reason.
    pub text: String,
}

/// The approvals of request `id` at `tip`, oldest first; files that do not read are left out.
pub(crate) fn read(repo: &Repository, tip: Oid, id: &str) -> Result<Vec<Found>, git2::Error> {
    let tree = repo.find_commit(tip)?.tree()?;
    let folder = format!("{APPROVALS}/{id}");
    let Ok(entry) = tree.get_path(Path::new(&folder)) else {
        return Ok(Vec::new());
    };
    let Ok(folder_tree) = repo.find_tree(entry.id()) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for file in folder_tree.iter() {
        let Ok(name) = file.name() else { continue };
        let Ok(blob) = repo.find_blob(file.id()) else {
            continue;
        };
        let Some(mut item) = parse(blob.content()) else {
            continue;
        };
        let path = format!("{folder}/{name}");
        let Some((commit, time)) = added_by(repo, tip, &path, file.id())? else {
            continue;
        };
        item.commit = commit;
        item.time = time;
        found.push(item);
    }
    found.sort_by_key(|f| f.time);
    Ok(found)
}

/// An approval file's fields (the commit is filled in by [`read`]).
fn parse(bytes: &[u8]) -> Option<Found> {
    let map = parse_yaml_mapping(bytes).ok()?;
    let text = |key: &str| map.get(key).and_then(Yaml::as_str).map(str::to_owned);
    let verdict = match text("verdict")?.as_str() {
        "approve" => Verdict::Approve,
        "deny" => Verdict::Deny,
        _ => return None,
    };
    Some(Found {
        commit: Oid::ZERO_SHA1,
        time: 0,
        verdict,
        request_blob: text("request_blob").and_then(|b| Oid::from_str(&b).ok()),
        text: text("comment")
            .or_else(|| text("reason"))
            .unwrap_or_default(),
    })
}

/// The commit along first parents from `tip` that added `path` with `blob`, and its time.
fn added_by(
    repo: &Repository,
    tip: Oid,
    path: &str,
    blob: Oid,
) -> Result<Option<(Oid, i64)>, git2::Error> {
    let holds = |c: &git2::Commit<'_>| {
        c.tree()
            .ok()
            .and_then(|t| t.get_path(Path::new(path)).ok())
            .is_some_and(|e| e.id() == blob)
    };
    let mut commit = repo.find_commit(tip)?;
    if !holds(&commit) {
        return Ok(None);
    }
    for _ in 0..MAX_WALK {
        match commit.parent(0) {
            Ok(parent) if holds(&parent) => commit = parent,
            _ => return Ok(Some((commit.id(), commit.time().seconds()))),
        }
    }
    Ok(None)
}

/// The YAML of an approval file.
pub(crate) fn file(id: &str, request_blob: Oid, verdict: Verdict, text: &str) -> String {
    let quoted = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let (word, key) = match verdict {
        Verdict::Approve => ("approve", "comment"),
        Verdict::Deny => ("deny", "reason"),
    };
    let mut yaml = format!(
        "request: {}\nrequest_blob: {request_blob}\nverdict: {word}\n",
        quoted(id)
    );
    if !text.is_empty() {
        yaml.push_str(&format!("{key}: {}\n", quoted(text)));
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approval_file_reads_back() {
        let blob = Oid::from_str("3f2c1d0e3f2c1d0e3f2c1d0e3f2c1d0e3f2c1d0e").unwrap();
        let approve =
            parse(file("db-7", blob, Verdict::Approve, "ok: \"plan\" checked").as_bytes()).unwrap();
        assert_eq!(approve.verdict, Verdict::Approve);
        assert_eq!(approve.request_blob, Some(blob));
        assert_eq!(approve.text, "ok: \"plan\" checked");
        let deny = parse(file("db-7", blob, Verdict::Deny, "").as_bytes()).unwrap();
        assert_eq!((deny.verdict, deny.text.as_str()), (Verdict::Deny, ""));
        assert_eq!(parse(b"verdict: maybe\n"), None);
    }
}
