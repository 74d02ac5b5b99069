//! Talking to what a dispatcher serves on `--http-addr`: `GET` and `POST` over HTTP/1.0 and one
//! sample of `/metrics`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

/// `GET path` over HTTP/1.0 on 127.0.0.1:`port`: the status code and the body, `None` if nothing
/// answers (not listening yet, or a broken response).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    exchange(
        port,
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// `POST path` with `headers` (`Name: value`) and `body`, as [`http_get`]; `Content-Length` is the
/// body's unless `headers` give one.
pub fn http_post(port: u16, path: &str, headers: &[String], body: &[u8]) -> Option<(u16, String)> {
    let mut request = format!("POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("content-length:"))
    {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for header in headers {
        request.push_str(&format!("{header}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    exchange(port, &bytes)
}

/// Sends `request` and reads the response until the server closes the connection.
fn exchange(port: u16, request: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // A server may answer (413) and close before it has read all: a failed write still has a reply.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    // HTTP/1.0: the server closes the connection after the body. A read timeout leaves what arrived.
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((code, body.to_owned()))
}

/// The value of the sample `name` (no labels) on `/metrics`, once served.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let (code, body) = http_get(port, "/metrics")?;
    if code != 200 {
        return None;
    }
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `chromium --headless ARGS URL`: its standard output.
pub fn chromium(args: &[&str], url: &str) -> String {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium is installed (`.ci/run` installs it: apt-get install chromium)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
