//! Who signed a commit, as the host's trust says: `git verify-commit` against an OpenSSH
//! `allowed_signers` file (`run --trust`), the format `git` itself uses with `gpg.format=ssh`.
//!
//! No cryptography here: the system `git` checks the signature (with `ssh-keygen -Y verify`, or
//! gpg for OpenPGP signatures) and finds the principal the key belongs to; this module reads its
//! answer. A commit's answer never changes, so each is asked for once (a process per commit that
//! matters: the one that added a request, an approval, a change of the index).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use git2::Oid;

/// What the signature of a commit says, against the trusted keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Signer {
    /// A good signature by a key the file lists for `principal`.
    Trusted {
        principal: String,
        fingerprint: String,
    },
    /// A good signature by a key the file does not list.
    Stranger { fingerprint: String },
    /// No signature.
    Unsigned,
    /// A signature that does not verify, or could not be checked: why.
    Bad(String),
}

impl Signer {
    /// The principal, when trusted.
    pub(crate) fn principal(&self) -> Option<&str> {
        match self {
            Signer::Trusted { principal, .. } => Some(principal),
            _ => None,
        }
    }

    /// `ada@example.org (SHA256:...)`, `an unknown key (SHA256:...)`, `unsigned`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Signer::Trusted {
                principal,
                fingerprint,
            } => format!("`{principal}` ({fingerprint})"),
            Signer::Stranger { fingerprint } => {
                format!("a key the trust file does not list ({fingerprint})")
            }
            Signer::Unsigned => "unsigned".to_owned(),
            Signer::Bad(why) => format!("a signature that does not verify ({why})"),
        }
    }
}

/// Checks commits of the repository at `git_dir` against `allowed_signers`.
pub(crate) struct Verifier {
    git_dir: PathBuf,
    allowed_signers: PathBuf,
    answers: RefCell<HashMap<Oid, Signer>>,
}

impl Verifier {
    pub(crate) fn new(git_dir: &Path, allowed_signers: &Path) -> Self {
        Self {
            git_dir: git_dir.to_owned(),
            allowed_signers: allowed_signers.to_owned(),
            answers: RefCell::default(),
        }
    }

    /// Who signed `commit`.
    pub(crate) fn signer(&self, commit: Oid) -> Signer {
        if let Some(known) = self.answers.borrow().get(&commit) {
            return known.clone();
        }
        let signer = self.ask(commit);
        if !matches!(signer, Signer::Bad(_)) {
            self.answers.borrow_mut().insert(commit, signer.clone());
        }
        signer
    }

    fn ask(&self, commit: Oid) -> Signer {
        let output = Command::new("git")
            .arg("--git-dir")
            .arg(&self.git_dir)
            .arg("-c")
            .arg(format!(
                "gpg.ssh.allowedSignersFile={}",
                self.allowed_signers.display()
            ))
            .args(["verify-commit", "--raw", &commit.to_string()])
            .env("LC_ALL", "C")
            .output();
        match output {
            Ok(output) => read_answer(
                output.status.success(),
                &String::from_utf8_lossy(&output.stderr),
            ),
            Err(e) => Signer::Bad(format!("could not run `git verify-commit`: {e}")),
        }
    }
}

/// How many versions of a path [`Verifier::trusted_version`] looks back at, and how many commits.
const MAX_VERSIONS: usize = 64;
const MAX_WALK: usize = 100_000;

/// The newest version of some paths that an admin signed in, as [`Verifier::trusted_version`]
/// finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trusted {
    /// A commit whose tree holds that version; `None` when no version in reach was signed by an
    /// admin.
    pub at: Option<Oid>,
    /// When the tip's version is not that one: the commit that made it, and who signed it.
    pub newest: Option<(Oid, Signer)>,
}

impl Verifier {
    /// The newest version of `paths` (taken together) along the first-parent history of `tip`
    /// whose change was made by a commit an admin signed. The commit that made a version is the
    /// oldest commit since which the paths hold it.
    pub(crate) fn trusted_version(
        &self,
        repo: &git2::Repository,
        tip: Oid,
        paths: &[&str],
        admins: &[String],
    ) -> Result<Trusted, git2::Error> {
        let value = |c: &git2::Commit<'_>| -> Vec<Option<Oid>> {
            let tree = c.tree().ok();
            paths
                .iter()
                .map(|p| {
                    tree.as_ref()
                        .and_then(|t| t.get_path(Path::new(p)).ok())
                        .map(|e| e.id())
                })
                .collect()
        };
        let mut found = Trusted {
            at: None,
            newest: None,
        };
        let mut commit = repo.find_commit(tip)?;
        let mut walked = 0;
        for _ in 0..MAX_VERSIONS {
            let version = value(&commit);
            // Back to the commit that made this version.
            loop {
                walked += 1;
                match commit.parent(0) {
                    Ok(parent) if walked < MAX_WALK && value(&parent) == version => {
                        commit = parent;
                    }
                    _ => break,
                }
            }
            let signer = self.signer(commit.id());
            if signer
                .principal()
                .is_some_and(|p| admins.iter().any(|a| a == p))
            {
                found.at = Some(commit.id());
                return Ok(found);
            }
            if found.newest.is_none() {
                found.newest = Some((commit.id(), signer));
            }
            match commit.parent(0) {
                Ok(parent) if walked < MAX_WALK => commit = parent,
                _ => break,
            }
        }
        Ok(found)
    }
}

/// `git verify-commit`'s verdict and standard error -> the signer.
fn read_answer(good: bool, stderr: &str) -> Signer {
    let fingerprint = |line: &str| {
        line.split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .unwrap_or_default()
            .to_owned()
    };
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix("Good \"git\" signature ") else {
            continue;
        };
        if let Some(named) = rest.strip_prefix("for ")
            && good
        {
            let principal = named.split(" with ").next().unwrap_or_default().to_owned();
            return Signer::Trusted {
                principal,
                fingerprint: fingerprint(rest),
            };
        }
        return Signer::Stranger {
            fingerprint: fingerprint(rest),
        };
    }
    let text = stderr.trim();
    if text.is_empty() {
        Signer::Unsigned
    } else {
        Signer::Bad(text.lines().next().unwrap_or_default().to_owned())
    }
}

/// The principals an `allowed_signers` file names (each line's first field, comma-separated).
pub(crate) fn principals(text: &str) -> Vec<String> {
    let mut all = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        for principal in line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .split(',')
        {
            let principal = principal.trim_matches('"').to_owned();
            if !principal.is_empty() && !all.contains(&principal) {
                all.push(principal);
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_verify_commits_words_are_read_as_who_signed() {
        assert_eq!(
            read_answer(
                true,
                "Good \"git\" signature for ada@example.org with ED25519 key SHA256:qtu7\n"
            ),
            Signer::Trusted {
                principal: "ada@example.org".into(),
                fingerprint: "SHA256:qtu7".into()
            }
        );
        assert_eq!(
            read_answer(
                false,
                "Good \"git\" signature with ED25519 key SHA256:hdu+\nNo principal matched.\n"
            ),
            Signer::Stranger {
                fingerprint: "SHA256:hdu+".into()
            }
        );
        // A good signature git did not accept (a "for" line with a failing status) is no trust.
        assert!(matches!(
            read_answer(
                false,
                "Good \"git\" signature for ada with ED25519 key SHA256:x\n"
            ),
            Signer::Stranger { .. }
        ));
        assert_eq!(read_answer(false, ""), Signer::Unsigned);
        assert!(matches!(
            read_answer(false, "Bad signature from ada\n"),
            Signer::Bad(_)
        ));
    }

    #[test]
    fn an_allowed_signers_file_names_its_principals() {
        let text = "# ops\nada@example.org ssh-ed25519 AAAA\nbob@x,\"cy@x\" namespaces=\"git\" ssh-ed25519 BBBB\n\nada@example.org ssh-rsa CCCC\n";
        assert_eq!(principals(text), ["ada@example.org", "bob@x", "cy@x"]);
    }
}
