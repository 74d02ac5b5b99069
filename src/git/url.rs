//! A remote's URL as the dispatcher keeps it: its password taken out (kept in memory, never shown
//! or stored), and the local folder it names when it is a path.

use std::path::PathBuf;

/// A password, kept in memory only; never shown.
#[derive(Clone)]
pub(crate) struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// The remote URL without the password of its user info, and that password (decoded): the URL is
/// what is shown and stored in the workdir, the password stays in memory and reaches the transport
/// through a credential callback (libgit2) or a credential helper reading it from the environment
/// (`git`).
pub(crate) fn without_password(remote: &str) -> (String, Option<Password>) {
    let Ok(mut url) = url::Url::parse(remote) else {
        return (remote.to_owned(), None);
    };
    let Some(password) = url.password().map(str::to_owned) else {
        return (remote.to_owned(), None);
    };
    let password = percent_encoding::percent_decode_str(&password)
        .decode_utf8_lossy()
        .into_owned();
    if url.set_password(None).is_err() {
        return (remote.to_owned(), None);
    }
    (url.to_string(), Some(Password(password)))
}

/// The remote as a local folder, where it is one (a path or a `file://` URL).
pub(crate) fn local_path(remote: &str) -> Option<PathBuf> {
    if let Some(path) = remote.strip_prefix("file://") {
        return Some(PathBuf::from(path));
    }
    let scp_like = remote
        .split_once(':')
        .is_some_and(|(host, _)| !host.contains('/'));
    (!remote.contains("://") && !scp_like).then(|| PathBuf::from(remote))
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn a_password_is_taken_out_of_the_url_and_decoded() {
        let (url, password) = without_password("https://bob:p%40ss%3Aword@example.test/x.git");
        assert_eq!(url, "https://bob@example.test/x.git");
        assert_eq!(password.map(|p| p.0).as_deref(), Some("p@ss:word"));
        for plain in [
            "https://bob@example.test/x.git",
            "git@example.test:x.git",
            "/srv/x.git",
        ] {
            let (url, password) = without_password(plain);
            assert_eq!((url.as_str(), password.is_none()), (plain, true));
        }
    }
}
