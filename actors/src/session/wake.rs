//! The host end of a session's wake link (`host/wake.sock`; protocol in
//! [`nanoclaw_protocol::wake`]).
//!
//! Bounded by design, because the peer is a container:
//! - The accept loop reads at most [`wake::MAX_HELLO_BYTES`] per connection within
//!   [`HELLO_DEADLINE`], and forwards a connection to the session actor only for a hello of the
//!   generation the session is waiting for, once per generation: a stale or foreign connection
//!   costs the actor nothing, and no container can queue more than one message this way.
//! - The reader of the live connection turns `OUTPUT` and `CLAIMED` bytes into coalescing
//!   notifications of the outbox ([`OutboxPokes`]: a permit plus one wake-up, never one message
//!   per read); it reads into a fixed buffer, and a peer that sends more than
//!   [`FLOOD_BYTES_PER_SEC`] is disconnected — the session then falls back to its slow timer.
//! - Writes to the container never wait: `INPUT` is written with `try_write`; a full socket means
//!   the runner has unread wake bytes already, which is the same message.
//!
//! The accept loop and reader are abort-on-drop tasks owned by [`WakeLink`], which the session
//! actor keeps in its state: however the actor ends, they end, and the socket file is removed.

use super::outbox::OutboxPokes;
use nanoclaw_protocol::wake;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

/// How long a new connection has to send its hello.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(2);

/// Most bytes per second the host reads from a container before it disconnects it. An honest
/// runner sends one byte per commit.
pub const FLOOD_BYTES_PER_SEC: usize = 16 * 1024;

/// No hello is awaited.
const NOT_WAITING: i64 = -1;

/// Connections without a valid, awaited hello tolerated per [`JUNK_WINDOW`] before the link
/// reports the peer as hostile. An honest runner opens one connection per container start.
pub const MAX_JUNK_CONNECTIONS: u32 = 20;

/// The window over which junk connections are counted.
pub const JUNK_WINDOW: Duration = Duration::from_secs(10);

/// What the link reports about a peer that breaks its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeViolation {
    /// Too many connections without a valid, awaited hello.
    JunkConnections(u32),
    /// The live connection sent more than [`FLOOD_BYTES_PER_SEC`].
    Flood(usize),
}

impl std::fmt::Display for WakeViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WakeViolation::JunkConnections(n) => {
                write!(f, "wake.sock: {n} connections without a valid hello within {JUNK_WINDOW:?}")
            }
            WakeViolation::Flood(n) => {
                write!(f, "wake.sock: {n} bytes in one second (limit {FLOOD_BYTES_PER_SEC})")
            }
        }
    }
}

/// Callback for violations; called at most once per connection, from the link's tasks.
type OnViolation = Arc<dyn Fn(WakeViolation) + Send + Sync>;

/// Errors setting the link up. Display names the socket.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}: {source}")]
pub struct WakeError {
    /// The socket path.
    pub path: String,
    /// The operation.
    pub what: &'static str,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// A runner's connection, accepted after a valid hello.
#[derive(Debug)]
pub struct WakeConnection {
    /// Generation from the hello.
    pub generation: i64,
    stream: UnixStream,
}

/// The host end of one session's wake link.
pub struct WakeLink {
    socket: PathBuf,
    /// Generation whose hello is awaited (or [`NOT_WAITING`]); shared with the accept loop.
    expected: Arc<AtomicI64>,
    /// Poked by `OUTPUT` and `CLAIMED` bytes.
    output: Arc<OutboxPokes>,
    /// Told when the peer breaks the link's rules (the session quarantines).
    on_violation: OnViolation,
    /// The live connection: the stream (shared with its reader) and the reader task.
    live: Option<(Arc<UnixStream>, AbortOnDropHandle<()>)>,
    _accept: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for WakeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeLink")
            .field("socket", &self.socket)
            .field("connected", &self.live.is_some())
            .finish()
    }
}

impl WakeLink {
    /// Binds `socket` (replacing a stale file; mode 0666 so the container user can connect — the
    /// folder above is reachable only through the container's mount) and starts accepting.
    /// `on_hello` receives each accepted connection; `output` is poked on `OUTPUT` and `CLAIMED`
    /// bytes; `on_violation` is told when the peer floods or keeps opening connections without a
    /// valid hello.
    pub fn bind(
        socket: &Path,
        output: Arc<OutboxPokes>,
        on_hello: impl Fn(WakeConnection) -> bool + Send + 'static,
        on_violation: impl Fn(WakeViolation) + Send + Sync + 'static,
    ) -> Result<WakeLink, WakeError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |what, source| WakeError { path: socket.display().to_string(), what, source };
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(|e| err("bind", e))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| err("chmod", e))?;
        let expected = Arc::new(AtomicI64::new(NOT_WAITING));
        let on_violation: OnViolation = Arc::new(on_violation);
        let accept = AbortOnDropHandle::new(tokio::spawn(accept_loop(
            listener,
            expected.clone(),
            on_hello,
            on_violation.clone(),
        )));
        Ok(WakeLink {
            socket: socket.to_path_buf(),
            expected,
            output,
            on_violation,
            live: None,
            _accept: accept,
        })
    }

    /// Waits for the hello of container `generation` (replacing any earlier expectation).
    pub fn expect(&self, generation: i64) {
        self.expected.store(generation, Ordering::SeqCst);
    }

    /// Takes a connection forwarded by the accept loop as the live one (closing the previous).
    pub fn connect(&mut self, conn: WakeConnection) {
        let stream = Arc::new(conn.stream);
        let reader = AbortOnDropHandle::new(tokio::spawn(read_loop(
            stream.clone(),
            self.output.clone(),
            self.on_violation.clone(),
        )));
        if let Some((old, _)) = self.live.replace((stream, reader)) {
            close(&old);
        }
    }

    /// Closes the live connection (the container is gone) and stops waiting for hellos.
    pub fn disconnect(&mut self) {
        self.expected.store(NOT_WAITING, Ordering::SeqCst);
        if let Some((stream, _reader)) = self.live.take() {
            close(&stream);
        }
    }

    /// Tells the runner new input exists. Never waits; a dead connection is dropped.
    pub fn wake(&mut self) {
        let Some((stream, reader)) = &self.live else { return };
        if reader.is_finished() {
            self.live = None;
            return;
        }
        match stream.try_write(&[wake::INPUT]) {
            Ok(_) => {}
            // Its buffer is full of wake bytes it has not read: it will read its input anyway.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => self.live = None,
        }
    }

    /// A live connection exists.
    pub fn is_connected(&self) -> bool {
        self.live.as_ref().is_some_and(|(_, r)| !r.is_finished())
    }
}

impl Drop for WakeLink {
    fn drop(&mut self) {
        if let Some((stream, _)) = self.live.take() {
            close(&stream);
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn close(stream: &UnixStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both);
}

async fn accept_loop(
    listener: UnixListener,
    expected: Arc<AtomicI64>,
    on_hello: impl Fn(WakeConnection) -> bool + Send + 'static,
    on_violation: OnViolation,
) {
    let mut junk = 0u32;
    let mut window_start = tokio::time::Instant::now();
    let mut reported = false;
    let mut count_junk = |why: &str| {
        let now = tokio::time::Instant::now();
        if now.duration_since(window_start) >= JUNK_WINDOW {
            window_start = now;
            junk = 0;
        }
        junk += 1;
        debug!(junk, "{why}; closed");
        if junk > MAX_JUNK_CONNECTIONS && !reported {
            reported = true;
            on_violation(WakeViolation::JunkConnections(junk));
        }
    };
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "wake socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // One connection at a time: a container that connects and stays silent delays only
        // its own session's next connection, by at most the hello deadline.
        let Ok(Some(generation)) = tokio::time::timeout(HELLO_DEADLINE, read_hello(&mut stream)).await else {
            count_junk("wake connection without a valid hello");
            continue;
        };
        // Forwarded once per awaited generation.
        if expected.compare_exchange(generation, NOT_WAITING, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            count_junk("wake hello of a generation not awaited");
            continue;
        }
        if !on_hello(WakeConnection { generation, stream }) {
            return;
        }
    }
}

/// Reads one hello frame byte by byte (so nothing after it is consumed), at most
/// [`wake::MAX_HELLO_BYTES`].
async fn read_hello(stream: &mut UnixStream) -> Option<i64> {
    let mut frame = Vec::with_capacity(wake::MAX_HELLO_BYTES);
    while frame.len() < wake::MAX_HELLO_BYTES {
        let b = stream.read_u8().await.ok()?;
        frame.push(b);
        if b == b'\n' {
            return wake::parse_hello(&frame);
        }
    }
    None
}

async fn read_loop(stream: Arc<UnixStream>, output: Arc<OutboxPokes>, on_violation: OnViolation) {
    let mut buf = [0u8; 4096];
    let mut window_start = tokio::time::Instant::now();
    let mut window_bytes = 0usize;
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let n = match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        let now = tokio::time::Instant::now();
        if now.duration_since(window_start) >= Duration::from_secs(1) {
            window_start = now;
            window_bytes = 0;
        }
        window_bytes += n;
        if window_bytes > FLOOD_BYTES_PER_SEC {
            warn!(bytes = window_bytes, "wake socket flooded by the container; disconnected");
            close(&stream);
            on_violation(WakeViolation::Flood(window_bytes));
            return;
        }
        if buf[..n].contains(&wake::OUTPUT) {
            output.now.notify_one();
        }
        if buf[..n].contains(&wake::CLAIMED) {
            output.claimed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn only_the_awaited_generation_connects_once_and_a_flood_is_cut_off() {
        let dir = tempfile::Builder::new().prefix("nc").tempdir_in("/tmp").unwrap();
        let sock = dir.path().join("wake.sock");
        let output = Arc::new(OutboxPokes::default());
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let violations = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = violations.clone();
        let mut link = WakeLink::bind(
            &sock,
            output.clone(),
            move |c| tx.try_send(c).is_ok(),
            move |v| seen.lock().push(v),
        )
        .unwrap();
        link.expect(7);

        // A stale generation and junk are closed without reaching the session.
        for frame in [wake::hello_frame(6), b"garbage\n".to_vec()] {
            let mut s = UnixStream::connect(&sock).await.unwrap();
            s.write_all(&frame).await.unwrap();
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).await.unwrap(), 0, "closed by the host");
        }
        let mut runner = UnixStream::connect(&sock).await.unwrap();
        runner.write_all(&wake::hello_frame(7)).await.unwrap();
        let conn = rx.recv().await.unwrap();
        assert_eq!(conn.generation, 7);
        link.connect(conn);
        // A second hello of the same generation is not forwarded again.
        let mut again = UnixStream::connect(&sock).await.unwrap();
        again.write_all(&wake::hello_frame(7)).await.unwrap();
        let mut b = [0u8; 1];
        assert_eq!(again.read(&mut b).await.unwrap(), 0);
        assert!(rx.try_recv().is_err());

        // Output bytes coalesce into notifications, claim bytes into their own; input reaches
        // the runner.
        runner.write_all(&[wake::CLAIMED; 3]).await.unwrap();
        output.claimed.notified().await;
        runner.write_all(&[wake::OUTPUT; 10]).await.unwrap();
        output.now.notified().await;
        let again = tokio::time::timeout(Duration::from_millis(50), output.claimed.notified()).await;
        assert!(again.is_err(), "output bytes are not claim bytes");
        link.wake();
        assert_eq!(runner.read_u8().await.unwrap(), wake::INPUT);

        // A flood is disconnected.
        let junk = vec![wake::OUTPUT; 64 * 1024];
        let flood = async {
            loop {
                if runner.write_all(&junk).await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), flood).await.expect("the host disconnects a flood");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while link.is_connected() {
            assert!(tokio::time::Instant::now() < deadline, "the link must notice the disconnect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(matches!(violations.lock().as_slice(), [WakeViolation::Flood(_)]), "{:?}", violations.lock());
        // A stream of junk connections is reported once, past the tolerance.
        for _ in 0..=MAX_JUNK_CONNECTIONS + 5 {
            let mut s = UnixStream::connect(&sock).await.unwrap();
            s.write_all(b"junk\n").await.unwrap();
            let mut b = [0u8; 1];
            let _ = s.read(&mut b).await;
        }
        let junk: Vec<_> = violations
            .lock()
            .iter()
            .filter(|v| matches!(v, WakeViolation::JunkConnections(_)))
            .cloned()
            .collect();
        assert_eq!(junk.len(), 1, "{junk:?}");
        drop(link);
        assert!(!sock.exists(), "the socket file goes with the link");
    }
}
