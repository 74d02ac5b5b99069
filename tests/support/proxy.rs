//! A TCP proxy on 127.0.0.1 in front of a server of the test (e.g. a `GitDaemon`), which the test can
//! cut: while cut, every connection open through it is shut down and every new one is closed as soon
//! as it is accepted, so the client sees "the remote end hung up", as when a host loses its network.
//! It forwards again once restored. It can also *stall*: connections stay open, but nothing goes
//! through them either way and new ones are accepted and left unanswered, as when a network drops
//! packets without a word (no reset reaches the client). Its threads end when it is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

#[derive(Default)]
struct State {
    cut: AtomicBool,
    stalled: AtomicBool,
    stopping: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

impl State {
    fn shut_all(&self) {
        for stream in self.open.lock().expect("proxy lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Forwards 127.0.0.1:`port` (a free one) to 127.0.0.1:`target`.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let accept = thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if shared.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                if shared.stalled.load(Ordering::SeqCst) {
                    // Accepted, never answered: kept open until restored.
                    shared.open.lock().expect("proxy lock").push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                forward(&shared, client, server);
            }
        });
        Proxy {
            port,
            state,
            accept: Some(accept),
        }
    }

    /// `git://127.0.0.1:PORT/remote.git`: the world's remote through the proxy.
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/remote.git", self.port)
    }

    /// Cuts the remote off: open connections are shut down, new ones closed at once.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.shut_all();
    }

    /// Stalls the remote: nothing goes through the open connections, new ones are never answered.
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::SeqCst);
    }

    /// Forwards again; connections open while stalled are shut down.
    pub fn restore(&self) {
        if self.state.stalled.swap(false, Ordering::SeqCst) {
            self.state.shut_all();
        }
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies both ways on threads of their own, each shutting its destination down at the end.
fn forward(state: &Arc<State>, client: TcpStream, server: TcpStream) {
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        return;
    };
    state.open.lock().expect("proxy lock").extend([c3, s3]);
    pipe(state, client, server);
    pipe(state, s2, c2);
}

/// Copies `from` to `to`; while stalled, what comes is dropped.
fn pipe(state: &Arc<State>, mut from: TcpStream, mut to: TcpStream) {
    let state = Arc::clone(state);
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if state.stalled.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.state.shut_all();
        // Wake the accepting thread so that it sees `stopping`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}
