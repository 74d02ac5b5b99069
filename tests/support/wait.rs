//! Waiting with a deadline: `wait_until` polls a condition (the only sleep in the suite) and gives up
//! at its timeout; `free_port` finds a TCP port for a server a test starts.

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

/// How often `wait_until` re-checks its condition.
const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` every 20 ms until it holds (true) or `timeout` passes (false). The only sleep in the suite.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// A TCP port that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener
        .local_addr()
        .expect("bound socket has an address")
        .port()
}
