//! What `--http-addr` serves: `/` (the operator's page, `page/`) and `/logs/<id>`, `/api/status` (the document of `status --json`, from the workdir),
//! `/metrics` and `/healthz` (`metrics.rs`), and `POST /hooks/push` (`webhook.rs`), which wakes the
//! loop through its event channel.
//!
//! The server is hyper on a single-threaded tokio runtime, on a thread of its own. It replaced
//! tiny_http, which, for a request whose body it was not asked to read, allocated the whole declared
//! `Content-Length` to drain it: one `GET /metrics` saying `Content-Length: 1000000000000` aborted
//! the dispatcher (`memory allocation of 1000000000000 bytes failed`), and one that declared 2 MB
//! and sent nothing stalled every route behind it. Here a body is read only by the webhook, never
//! past [`MAX_BODY`], and every connection has deadlines ([`HEADER_TIMEOUT`], [`CONNECTION_TIMEOUT`])
//! and a cap on how many are open at once ([`MAX_CONNECTIONS`]).
//!
//! The invariant: the server only reads. It shares with the loop the metrics (atomics and one small
//! mutex) and a sender of the event channel; what it reads of the repository it reads from the
//! workdir on its own, never from the loop's state.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::config::WebhookSecret;
use crate::daemon::events::Event;
use crate::daemon::metrics::Metrics;
use crate::daemon::webhook::{self, MAX_BODY, RateLimit};

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may stay open, whatever it does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 64;

/// What the server thread holds.
pub(super) struct Http {
    pub(super) metrics: Arc<Metrics>,
    /// Wakes the loop: a verified webhook sends [`Event::RemoteChanged`].
    pub(super) wake: Sender<Event>,
    /// `--webhook-secret-file`; without it `/hooks/push` is not served (404).
    pub(super) secret: Option<WebhookSecret>,
    /// The workdir's bare clone and the branch served: `/api/status` reads them on each request.
    pub(super) repo: std::path::PathBuf,
    pub(super) branch: String,
    /// This dispatcher's id, for the page.
    pub(super) me: String,
    /// Webhooks per source address.
    pub(super) limit: Mutex<RateLimit>,
}

/// One response: status code, content type, body.
struct Reply {
    code: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn into_response(self, head: bool) -> Response<Full<Bytes>> {
        let body = if head { Vec::new() } else { self.body };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() =
            hyper::StatusCode::from_u16(self.code).expect("the codes used are valid");
        response.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(self.content_type),
        );
        response
    }

    fn text(code: u16, body: impl Into<String>) -> Self {
        Self {
            code,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

impl Http {
    /// Listens on `addr` (an error here is the caller's) and serves from a thread of its own until
    /// the process ends.
    pub(super) fn serve(self, addr: SocketAddr) -> std::io::Result<()> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let http = Arc::new(self);
        thread::Builder::new()
            .name("http".to_owned())
            .spawn(move || runtime.block_on(accept(listener, http)))?;
        Ok(())
    }

    /// One request: routed, answered in full (bodies are small).
    async fn handle(&self, request: Request<Incoming>, peer: IpAddr) -> Reply {
        let path = request.uri().path().to_owned();
        match (request.method(), path.as_str()) {
            (_, "/hooks/push") => self.webhook(request, peer).await,
            (&Method::GET | &Method::HEAD, "/metrics") => Reply {
                code: 200,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: self.metrics.text().into_bytes(),
            },
            (&Method::GET | &Method::HEAD, "/healthz") => match self.metrics.health() {
                Ok(()) => Reply::text(200, "ok\n"),
                Err(reason) => Reply::text(503, format!("{reason}\n")),
            },
            (&Method::GET | &Method::HEAD, "/api/status") => match self.status() {
                Ok(document) => Reply {
                    code: 200,
                    content_type: "application/json",
                    body: format!("{document:#}\n").into_bytes(),
                },
                Err(e) => Reply::text(503, format!("the status could not be read: {e}\n")),
            },
            (&Method::GET | &Method::HEAD, "/") => match self.status() {
                Ok(document) => Reply {
                    code: 200,
                    content_type: "text/html; charset=utf-8",
                    body: crate::daemon::page::render(&document, self.metrics.health(), &self.me)
                        .into_bytes(),
                },
                Err(e) => Reply::text(503, format!("the status could not be read: {e}\n")),
            },
            (&Method::GET | &Method::HEAD, logs) if logs.starts_with("/logs/") => {
                match self.logs(&logs["/logs/".len()..]) {
                    Some(text) => Reply::text(200, text),
                    None => Reply::text(404, "no log recorded for that id\n"),
                }
            }
            (&Method::GET | &Method::HEAD, _) => {
                Reply::text(404, "not found: try /, /api/status, /metrics or /healthz\n")
            }
            _ => Reply::text(405, "method not allowed: only GET, and POST /hooks/push\n"),
        }
    }

    /// The status document (`status --json`'s) at the workdir's branch, read afresh (the branch
    /// moves only once its objects are on disk, so what it names can be read), with the records
    /// of the dispatchers the loop last read from the remote.
    fn status(&self) -> Result<serde_json::Value, String> {
        let repo = git2::Repository::open_bare(&self.repo).map_err(|e| e.to_string())?;
        let tip = repo
            .refname_to_id(&crate::git::transport::local_ref(&self.branch))
            .map_err(|_| "no tip yet: the remote was not looked at".to_owned())?;
        let now = crate::clock::now_seconds();
        let records = self.metrics.fleet_now();
        let no_beats = records.is_empty();
        let fleet = crate::report::fleet::Fleet::of_records(&repo, tip, records, now);
        let mut document = crate::report::read(&repo, (&self.branch, tip), &fleet, now)?;
        // What runs here, this process knows better than its last heartbeat; before the first
        // records are read, that a dispatcher is alive (this one) is no reason for a request to
        // wait.
        let running = self.metrics.running_now();
        if let Some(queue) = document["queue"].as_array_mut() {
            for item in queue {
                if no_beats {
                    item["blocked"] = serde_json::Value::Null;
                }
                if let Some((_, _, since)) = running.iter().find(|(id, ..)| item["id"] == *id) {
                    item["state"] = "running".into();
                    item["dispatcher"] = self.me.clone().into();
                    item["running_since"] = since.clone().into();
                    item["blocked"] = serde_json::Value::Null;
                }
            }
        }
        if no_beats && let Some(blockers) = document["blockers"].as_array_mut() {
            blockers.retain(|b| b["what"] != "no_dispatcher");
        }
        Ok(document)
    }

    /// The logs of request `id` at the workdir's branch, as committed.
    fn logs(&self, id: &str) -> Option<String> {
        let repo = git2::Repository::open_bare(&self.repo).ok()?;
        let tip = repo
            .refname_to_id(&crate::git::transport::local_ref(&self.branch))
            .ok()?;
        crate::daemon::page::logs(&repo, tip, id)
    }

    /// `POST /hooks/push`: bounded, verified, counted; a verified one wakes the loop.
    async fn webhook(&self, request: Request<Incoming>, peer: IpAddr) -> Reply {
        let Some(secret) = &self.secret else {
            return Reply::text(
                404,
                "not found: webhooks are served only with --webhook-secret-file\n",
            );
        };
        if request.method() != Method::POST {
            return Reply::text(405, "method not allowed: webhooks are POSTed\n");
        }
        let reply = self.verified(request, peer, &secret.0).await;
        self.metrics.webhook(reply.code == 202);
        reply
    }

    /// 202 for a verified webhook (the loop woken), otherwise why not: 429, 413 or 401.
    async fn verified(&self, request: Request<Incoming>, peer: IpAddr, secret: &[u8]) -> Reply {
        let allowed = self
            .limit
            .lock()
            .expect("no thread panics holding it")
            .allow(peer, Instant::now());
        if !allowed {
            return Reply::text(429, "too many webhooks from this address; slow down\n");
        }
        let (head, body) = request.into_parts();
        let declared = head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let too_large = || Reply::text(413, format!("the body is over {MAX_BODY} bytes\n"));
        // Refused on what it says before any of it is read; otherwise read no further than the limit.
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return too_large();
        }
        let Ok(body) = Limited::new(body, MAX_BODY).collect().await else {
            return too_large();
        };
        let body = body.to_bytes();
        let header = |name: &str| -> Option<String> {
            head.headers.get(name)?.to_str().ok().map(str::to_owned)
        };
        match webhook::verify(secret, header, &body) {
            Ok(_) => {
                let _ = self.wake.send(Event::RemoteChanged);
                Reply::text(202, "accepted: looking at the remote now\n")
            }
            Err(why) => Reply::text(401, format!("not verified: {why}\n")),
        }
    }
}

/// One open connection, counted out when dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections and serves each on a task of its own, with its deadlines.
async fn accept(listener: std::net::TcpListener, http: Arc<Http>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of descriptors, most likely: let some close.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (http, open) = (Arc::clone(&http), Arc::clone(&open));
        tokio::spawn(async move {
            // Counted out however the task ends, a panic included.
            let _open = Open(open);
            let service = hyper::service::service_fn(|request| {
                let http = Arc::clone(&http);
                async move {
                    let head = request.method() == Method::HEAD;
                    let reply = http.handle(request, peer.ip()).await;
                    Ok::<_, Infallible>(reply.into_response(head))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}
