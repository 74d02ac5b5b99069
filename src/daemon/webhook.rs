//! `POST /hooks/push`: a forge's push webhook, verified with `--webhook-secret-file`'s secret, wakes
//! the dispatcher to look at the remote at once (instead of at its next poll).
//!
//! Three forms are accepted: GitHub's `X-Hub-Signature-256: sha256=<hex>` and Gitea's
//! `X-Gitea-Signature: <hex>` (each the HMAC-SHA256 of the body with the secret), and GitLab's
//! `X-Gitlab-Token: <the secret>`. Signatures and tokens are compared in constant time (`hmac`'s
//! `verify_slice`, `subtle`'s `ConstantTimeEq`). The body is never parsed: a verified webhook only
//! says "look now", and the look itself fetches what the remote holds.
//!
//! The invariants: nothing but a verified webhook wakes the loop; a body over [`MAX_BODY`] is
//! refused before it is read; each source address gets at most [`RATE`] webhooks a second (bursts
//! of [`BURST`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The largest body read: a push event of a few hundred commits is well below it.
pub(super) const MAX_BODY: usize = 1024 * 1024;
/// Webhooks a second per source address, on average.
pub(super) const RATE: f64 = 10.0;
/// Webhooks one source address may send at once.
pub(super) const BURST: f64 = 20.0;
/// Source addresses remembered at most; past it, those whose bucket is full again are forgotten.
const MAX_SOURCES: usize = 4096;

/// Which forge's form verified a webhook.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) enum Forge {
    GitHub,
    Gitea,
    GitLab,
}

/// Checks the webhook's headers (`header(name)`, case-insensitive) against `secret`.
pub(super) fn verify(
    secret: &[u8],
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<Forge, &'static str> {
    if let Some(signature) = header("X-Hub-Signature-256") {
        let hex = signature
            .trim()
            .strip_prefix("sha256=")
            .ok_or("`X-Hub-Signature-256` does not start with `sha256=`")?;
        return signed(secret, hex, body).map(|()| Forge::GitHub);
    }
    if let Some(signature) = header("X-Gitea-Signature") {
        return signed(secret, signature.trim(), body).map(|()| Forge::Gitea);
    }
    if let Some(token) = header("X-Gitlab-Token") {
        return match bool::from(token.as_bytes().ct_eq(secret)) {
            true => Ok(Forge::GitLab),
            false => Err("`X-Gitlab-Token` is not the secret"),
        };
    }
    Err("no signature: expected `X-Hub-Signature-256`, `X-Gitea-Signature` or `X-Gitlab-Token`")
}

/// Whether `hex` is the HMAC-SHA256 of `body` with `secret`.
fn signed(secret: &[u8], hex: &str, body: &[u8]) -> Result<(), &'static str> {
    let signature = hex::decode(hex).map_err(|_| "the signature is not hexadecimal")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&signature)
        .map_err(|_| "the signature does not match the body")
}

/// A token bucket per source address.
#[derive(Default)]
pub(super) struct RateLimit {
    /// Tokens left and when they were counted, by address.
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimit {
    /// Takes a token for `source` at `now`; `false` when its bucket is empty.
    pub(super) fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_SOURCES {
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * RATE < BURST
            });
        }
        let (tokens, at) = self.buckets.entry(source).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * RATE).min(BURST);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn headers(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name.to_ascii_lowercase())
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn each_forge_s_form_verifies_and_a_wrong_one_does_not() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = hmac_hex(b"s3cret", body);
        let bad = hmac_hex(b"other", body);
        let github = |sig: &str| headers(&[("X-Hub-Signature-256", format!("sha256={sig}"))]);
        assert_eq!(verify(b"s3cret", github(&good), body), Ok(Forge::GitHub));
        assert!(verify(b"s3cret", github(&bad), body).is_err());
        assert!(verify(b"s3cret", github(&good), b"{}").is_err());
        let gitea = |sig: &str| headers(&[("X-Gitea-Signature", sig.to_owned())]);
        assert_eq!(verify(b"s3cret", gitea(&good), body), Ok(Forge::Gitea));
        assert!(verify(b"s3cret", gitea(&bad), body).is_err());
        assert!(verify(b"s3cret", gitea("zz"), body).is_err());
        let gitlab = |token: &str| headers(&[("X-Gitlab-Token", token.to_owned())]);
        assert_eq!(verify(b"s3cret", gitlab("s3cret"), body), Ok(Forge::GitLab));
        assert!(verify(b"s3cret", gitlab("s3cre"), body).is_err());
        assert!(verify(b"s3cret", gitlab(""), body).is_err());
        assert!(verify(b"s3cret", headers(&[]), body).is_err());
    }

    #[test]
    fn a_source_gets_a_burst_then_the_rate() {
        let mut limit = RateLimit::default();
        let one: IpAddr = "127.0.0.1".parse().unwrap();
        let two: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| limit.allow(one, t0)).count();
        assert_eq!(allowed, BURST as usize);
        // Another address has a bucket of its own.
        assert!(limit.allow(two, t0));
        // A second later, RATE more.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..100).filter(|_| limit.allow(one, t1)).count();
        assert_eq!(allowed, RATE as usize);
    }
}
