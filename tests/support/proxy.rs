//! A TCP proxy on 127.0.0.1 in front of a server of the test (e.g. a `GitDaemon`), which the test can
//! cut: while cut, every connection open through it is shut down and every new one is closed as soon
//! as it is accepted, so the client sees "the remote end hung up", as when a host loses its network.
//! It forwards again once restored. Its threads end when it is dropped.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

#[derive(Default)]
struct State {
    cut: AtomicBool,
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

    /// Forwards again.
    pub fn restore(&self) {
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
    pipe(client, server);
    pipe(s2, c2);
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
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
