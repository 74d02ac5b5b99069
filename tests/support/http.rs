//! Reading what a dispatcher serves on `--metrics-addr`: `GET` over HTTP/1.0 and one sample of
//! `/metrics`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

/// `GET path` over HTTP/1.0 on 127.0.0.1:`port`: the status code and the body, `None` if nothing
/// answers (not listening yet, or a broken response).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
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
