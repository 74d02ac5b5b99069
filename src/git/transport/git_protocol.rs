//! The `git://` protocol (what `git daemon` serves) for libgit2, over a socket with `TCP_NODELAY`.
//!
//! libgit2's own `git://` transport leaves Nagle's algorithm on. Its writes are small and come in
//! bursts (a request's header and body, a push's commands and then its pack), so the second write
//! waits for the server's ACK of the first, and the server delays that ACK by up to 40 ms. Measured
//! against `git daemon` on 127.0.0.1 (the same effect forced on `git` itself with an `LD_PRELOAD`
//! that set `TCP_NODELAY` after `connect`): a ref listing took 50 ms and 9 ms without the delay, a
//! one-commit push 60 ms and 22 ms. A dispatcher makes a look and a claim push before each pickup,
//! so a push webhook's pickup median went from 107 ms to 48 ms (`scripts/bench.sh --only=6`).
//! libgit2 does not let the caller set socket options, so this module replaces its `git://`
//! transport; everything after the connection (the smart protocol, packs, negotiation) is still
//! libgit2's.
//!
//! The interface is [`register`], which [`crate::git::configure_libgit2`] calls once before any
//! remote is opened, and for [`super::send_pack`]'s pushes [`open`] (the same connection),
//! [`pkt_line`] and [`is_git_url`]. What the protocol asks of the transport is only this: connect,
//! send one pkt-line `git-upload-pack /path\0host=HOST\0` (or `git-receive-pack`), then hand
//! libgit2 the socket for both directions. Timeouts are those of libgit2's own sockets.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use git2::{Error, ErrorClass, ErrorCode};

/// How long a connection may take, and how long the server may stay silent.
#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    silence: Duration,
}

/// The timeouts [`register`] was given, for every connection made here.
static TIMEOUTS: std::sync::OnceLock<Timeouts> = std::sync::OnceLock::new();

/// Until [`register`] runs (unit tests): at most as long as the dispatcher's own bounds.
const UNREGISTERED: Timeouts = Timeouts {
    connect: Duration::from_secs(15),
    silence: Duration::from_secs(120),
};

/// Whether `url` is a `git://` URL.
pub(super) fn is_git_url(url: &str) -> bool {
    url.get(..6)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("git://"))
}

/// One pkt-line holding `data`: its length in four hex digits, then the data.
pub(super) fn pkt_line(data: &[u8]) -> Vec<u8> {
    let mut line = format!("{:04x}", data.len() + 4).into_bytes();
    line.extend_from_slice(data);
    line
}

/// Opens a connection to the server of `url` for `service` (`git-upload-pack` or
/// `git-receive-pack`), with the timeouts [`register`] was given.
pub(super) fn open(url: &str, service: &str) -> Result<Socket, Error> {
    let timeouts = TIMEOUTS.get().copied().unwrap_or(UNREGISTERED);
    Ok(Socket(connect(url, service, timeouts)?))
}

/// Makes `git://` URLs use [`GitProtocol`]. Call once, before any remote is opened (libgit2's
/// transport registry is not synchronised).
///
/// # Safety
/// No other thread may be creating a libgit2 transport meanwhile.
pub(crate) unsafe fn register(connect: Duration, silence: Duration) -> Result<(), Error> {
    let _ = TIMEOUTS.set(Timeouts { connect, silence });
    // SAFETY: the caller guarantees that no transport is being created meanwhile.
    unsafe {
        git2::transport::register("git", |remote| {
            // Stateful (not RPC): one connection carries the listing and then the exchange.
            Transport::smart(remote, false, GitProtocol)
        })
    }
}

/// The `git://` subtransport: one TCP connection per listing, kept for the fetch or push after it
/// (libgit2 asks for the `*Ls` service first and reuses its stream).
struct GitProtocol;

impl SmartSubtransport for GitProtocol {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, Error> {
        let service = match action {
            Service::UploadPackLs | Service::UploadPack => "git-upload-pack",
            Service::ReceivePackLs | Service::ReceivePack => "git-receive-pack",
        };
        Ok(Box::new(open(url, service)?))
    }

    fn close(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// The connection as libgit2 reads and writes it: each read asks the kernel to acknowledge at once
/// what comes next (`TCP_QUICKACK`, which the kernel turns off again by itself), so that the
/// server's own small writes (`git upload-pack` writes a pkt-line's length and its data apart) do
/// not wait for a delayed ACK either.
pub(super) struct Socket(TcpStream);

impl Read for Socket {
    /// Reads again when a signal interrupted the read: a socket with a timeout is not restarted by
    /// the kernel, and libgit2 takes any error for a broken connection (a handler's SIGCHLD once
    /// failed a claim push whose updates the server had made).
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                read => break read?,
            }
        };
        // Only ever a hint: a refusal changes timing, not what is read.
        let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        Ok(read)
    }
}

/// Writes go through `write_all` (git2's stream and [`super::send_pack`] alike), which makes an
/// interrupted write again.
impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Connects to the server of `url` and asks for `service` on its path.
fn connect(url: &str, service: &str, timeouts: Timeouts) -> Result<TcpStream, Error> {
    let target = Target::parse(url)?;
    let addrs = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| net(format!("could not resolve `{}`: {e}", target.host)))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeouts.connect) {
            Ok(stream) => {
                return start(stream, &target, service, timeouts)
                    .map_err(|e| net(format!("{}: {e}", target.authority)));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(net(match last {
        Some(e) => format!("could not connect to {}: {e}", target.authority),
        None => format!("`{}` has no address", target.host),
    }))
}

/// Sets the socket options and sends the request line.
fn start(
    mut stream: TcpStream,
    target: &Target,
    service: &str,
    timeouts: Timeouts,
) -> std::io::Result<TcpStream> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeouts.silence))?;
    stream.set_write_timeout(Some(timeouts.silence))?;
    stream.write_all(&target.request(service))?;
    Ok(stream)
}

fn net(message: String) -> Error {
    Error::new(ErrorCode::GenericError, ErrorClass::Net, message)
}

/// Where a `git://` URL points.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// The host to resolve (an IPv6 address without its brackets).
    host: String,
    port: u16,
    /// The host as the URL wrote it, with its port if it had one: the request's `host=`.
    authority: String,
    /// The path as the URL wrote it (`~user/...` without its leading slash, as `git` sends it).
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, Error> {
        let invalid = |why: &str| net(format!("`{url}` is not a git:// URL: {why}"));
        let rest = is_git_url(url)
            .then(|| &url[6..])
            .ok_or_else(|| invalid("it does not start with git://"))?;
        let (authority, path) = rest
            .find('/')
            .map(|slash| rest.split_at(slash))
            .ok_or_else(|| invalid("it has no path"))?;
        let parsed =
            url::Url::parse(&format!("git://{authority}/")).map_err(|e| invalid(&e.to_string()))?;
        let host = parsed
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| invalid("it has no host"))?;
        let path = match path.strip_prefix("/~") {
            Some(user) => format!("~{user}"),
            None => path.to_owned(),
        };
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: parsed.port().unwrap_or(9418),
            authority: authority.to_owned(),
            path,
        })
    }

    /// The pkt-line that opens the exchange: `SERVICE PATH\0host=AUTHORITY\0`.
    fn request(&self, service: &str) -> Vec<u8> {
        pkt_line(format!("{service} {}\0host={}\0", self.path, self.authority).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        silence: Duration::from_secs(5),
    };

    #[test]
    fn urls_give_the_host_to_connect_to_and_the_request_that_git_sends() {
        let target = Target::parse("git://127.0.0.1:9999/r.git").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("127.0.0.1", 9999));
        assert_eq!(
            target.request("git-upload-pack"),
            b"002fgit-upload-pack /r.git\0host=127.0.0.1:9999\0".to_vec()
        );
        let v6 = Target::parse("GIT://[::1]/srv/a b.git").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9418));
        assert_eq!(
            (v6.authority.as_str(), v6.path.as_str()),
            ("[::1]", "/srv/a b.git")
        );
        let home = Target::parse("git://example.test/~alice/x.git").unwrap();
        assert_eq!(home.path, "~alice/x.git");
        for bad in [
            "git://",
            "git://host",
            "https://host/x.git",
            "git:///x.git",
            "git://h:99999/x",
        ] {
            let err = Target::parse(bad).map(|_| ()).unwrap_err();
            assert!(
                err.message().contains("is not a git:// URL"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_connection_has_nagle_off_and_opens_with_the_service_request() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("git://{}/repo.git", listener.local_addr().unwrap());
        let client = connect(&url, "git-receive-pack", TIMEOUTS).unwrap();
        assert!(client.nodelay().unwrap(), "TCP_NODELAY is set");
        let (mut server, _) = listener.accept().unwrap();
        drop(client);
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        let expected = format!(
            "git-receive-pack /repo.git\0host={}\0",
            listener.local_addr().unwrap()
        );
        assert_eq!(got[4..], *expected.as_bytes());
        assert_eq!(&got[..4], format!("{:04x}", expected.len() + 4).as_bytes());
    }

    #[test]
    fn a_signal_while_the_server_is_silent_does_not_fail_the_read() {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        extern "C" fn nothing(_: nix::libc::c_int) {}
        // SAFETY: a handler that does nothing; no other test uses SIGUSR2.
        unsafe {
            let quiet = SigAction::new(
                SigHandler::Handler(nothing),
                SaFlags::empty(),
                SigSet::empty(),
            );
            sigaction(Signal::SIGUSR2, &quiet).unwrap();
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("git://{}/repo.git", listener.local_addr().unwrap());
        let (ready, reading) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut socket = Socket(connect(&url, "git-upload-pack", TIMEOUTS).unwrap());
            ready
                .send((nix::unistd::gettid(), unsafe { nix::libc::pthread_self() }))
                .unwrap();
            let mut buf = [0u8; 5];
            socket.read(&mut buf).map(|n| buf[..n].to_vec())
        });
        let (mut server, _) = listener.accept().unwrap();
        let mut request = [0u8; 4];
        server.read_exact(&mut request).unwrap();
        let (tid, thread) = reading.recv().unwrap();
        // Once the reader sleeps (in its read), interrupt it; then answer.
        let stat = format!("/proc/self/task/{tid}/stat");
        let asleep = || {
            std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('S')))
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !asleep() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(asleep(), "the reader never waited");
        // SAFETY: the reader thread is alive: it returns only once the server answers.
        assert_eq!(
            unsafe { nix::libc::pthread_kill(thread, nix::libc::SIGUSR2) },
            0
        );
        server.write_all(b"hello").unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), b"hello");
    }

    #[test]
    fn a_refused_connection_names_the_server() {
        // A port just freed: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = connect(
            &format!("git://127.0.0.1:{port}/x.git"),
            "git-upload-pack",
            TIMEOUTS,
        )
        .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Net);
        assert!(
            err.message()
                .starts_with(&format!("could not connect to 127.0.0.1:{port}:")),
            "{err}"
        );
    }
}
