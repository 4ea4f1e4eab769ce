//! A scripted HTTP/1.1 server for tests (never shipped: `publish = false`, dev-dependency only).
//!
//! Tests of HTTP clients (the runner's model providers) and of the host's credential proxy need
//! a server that produces the protocol corners a real one will not give on demand: a stream cut
//! mid-body, a chunk after a long pause, `429` three times in a row. [`FakeServer`] listens on a
//! Unix socket ([`FakeServer::unix`]) or on `127.0.0.1:0` ([`FakeServer::tcp`]) in the test's own
//! tokio runtime (so paused time applies to its delays), answers each request with the next
//! scripted [`Reply`] (first in, first out), and records every request ([`Recorded`]).
//!
//! ```no_run
//! # async fn demo(dir: &std::path::Path) -> std::io::Result<()> {
//! use fake_http::{FakeServer, Reply};
//! let server = FakeServer::unix(&dir.join("proxy.sock")).await?;
//! server.push(Reply::new(429).header("retry-after", "7").body("slow down"));
//! server.push(Reply::sse("data: {\"x\":1}\n\ndata: [DONE]\n\n"));
//! // … run the client against dir/proxy.sock …
//! assert_eq!(server.requests().len(), 2);
//! # Ok(()) }
//! ```
//!
//! A request that finds the script empty is answered `500` with the body
//! `fake-http: no scripted reply`, so a test that sends more requests than it expects fails
//! visibly. Dropping the server stops it and every open connection.

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How a scripted body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The body ends normally (the chunked encoding's last chunk is sent).
    Finish,
    /// The connection is dropped after the last chunk, without ending the body: the client sees
    /// an incomplete message (a connection reset mid-stream).
    Abort,
    /// No answer at all: the connection is closed as soon as the request is read
    /// ([`Reply::hang_up`]).
    HangUp,
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers, in order (names as given).
    pub headers: Vec<(String, String)>,
    /// Body chunks, each sent after waiting its delay (measured from the previous chunk, or from
    /// the response head for the first). The body is sent with chunked transfer encoding.
    pub chunks: Vec<(Duration, Bytes)>,
    /// How the body ends.
    pub end: End,
}

impl Reply {
    /// An answer with `status`, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self { status, headers: Vec::new(), chunks: Vec::new(), end: End::Finish }
    }

    /// A `200` `text/event-stream` answer whose chunks are the events of `text`: it is cut after
    /// every blank line (`"\n\n"`), each piece sent at once as its own chunk.
    pub fn sse(text: &str) -> Self {
        let mut reply = Self::new(200).header("content-type", "text/event-stream");
        let mut rest = text;
        while let Some(at) = rest.find("\n\n") {
            reply = reply.chunk(rest[..at + 2].to_owned());
            rest = &rest[at + 2..];
        }
        if !rest.is_empty() {
            reply = reply.chunk(rest.to_owned());
        }
        reply
    }

    /// An answer with `status`, `content-type: application/json` and `body` as one chunk.
    pub fn json(status: u16, body: &str) -> Self {
        Self::new(status).header("content-type", "application/json").body(body.to_owned())
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds a chunk sent at once.
    pub fn chunk(self, bytes: impl Into<Bytes>) -> Self {
        self.chunk_after(Duration::ZERO, bytes)
    }

    /// Adds a chunk sent `delay` after the previous one.
    pub fn chunk_after(mut self, delay: Duration, bytes: impl Into<Bytes>) -> Self {
        self.chunks.push((delay, bytes.into()));
        self
    }

    /// Same as [`Reply::chunk`] (reads better for a one-chunk body).
    pub fn body(self, bytes: impl Into<Bytes>) -> Self {
        self.chunk(bytes)
    }

    /// Closes the connection without any answer (the client sees a reset before the status
    /// line); status, headers and chunks are ignored.
    pub fn hang_up() -> Self {
        Self { end: End::HangUp, ..Self::new(0) }
    }

    /// Drops the connection after the last chunk instead of ending the body ([`End::Abort`]).
    pub fn abort(mut self) -> Self {
        self.end = End::Abort;
        self
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method (`POST`).
    pub method: String,
    /// Path and query as sent (`/anthropic/v1/messages`).
    pub path: String,
    /// Headers in the order received; names lower-case.
    pub headers: Vec<(String, String)>,
    /// The whole request body.
    pub body: Bytes,
    /// When its head arrived, on tokio's clock (paused time applies).
    pub at: Instant,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive), if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON. Panics (it is a test helper) when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("fake-http: the request body is not JSON")
    }
}

/// Where the server listens.
#[derive(Debug, Clone)]
pub enum Address {
    /// A Unix socket at this path.
    Unix(PathBuf),
    /// A loopback TCP address.
    Tcp(SocketAddr),
}

#[derive(Debug, Default)]
struct State {
    script: VecDeque<Reply>,
    seen: Vec<Recorded>,
}

/// The running server; see the crate documentation. Dropping it stops it.
#[derive(Debug)]
pub struct FakeServer {
    address: Address,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Listens on a new Unix socket at `path` (which must not exist).
    ///
    /// Errors: binding the socket.
    pub async fn unix(path: &Path) -> io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        let state = Arc::<Mutex<State>>::default();
        let task = tokio::spawn(accept_loop(Listener::Unix(listener), state.clone()));
        Ok(Self { address: Address::Unix(path.to_owned()), state, task })
    }

    /// Listens on `127.0.0.1` on a free port ([`FakeServer::address`] names it).
    ///
    /// Errors: binding the socket.
    pub async fn tcp() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::<Mutex<State>>::default();
        let task = tokio::spawn(accept_loop(Listener::Tcp(listener), state.clone()));
        Ok(Self { address: Address::Tcp(addr), state, task })
    }

    /// Where it listens.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// `http://127.0.0.1:<port>` for a TCP server, `None` for a Unix one.
    pub fn base_url(&self) -> Option<String> {
        match &self.address {
            Address::Tcp(addr) => Some(format!("http://{addr}")),
            Address::Unix(_) => None,
        }
    }

    /// Queues `reply` as the answer to the next unanswered request.
    pub fn push(&self, reply: Reply) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).script.push_back(reply);
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).seen.clone()
    }

    /// How many scripted replies are still unused.
    pub fn pending(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).script.len()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
        if let Address::Unix(path) = &self.address {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

async fn accept_loop(listener: Listener, state: Arc<Mutex<State>>) {
    // Connection tasks live in the set: aborting the accept task drops it and stops them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = async {
                match &listener {
                    Listener::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
                    Listener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
                }
            } => match accepted {
                Ok(Conn::Unix(stream)) => { conns.spawn(serve(stream, state.clone())); }
                Ok(Conn::Tcp(stream)) => { conns.spawn(serve(stream, state.clone())); }
                Err(_) => {}
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn serve<S>(stream: S, state: Arc<Mutex<State>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| answer(req, state.clone()));
    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Pause before a scripted abort, so the chunks before it reach the client.
const ABORT_PAUSE: Duration = Duration::from_millis(20);

async fn answer(req: Request<Incoming>, state: Arc<Mutex<State>>) -> Result<Response<Body>, io::Error> {
    let at = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = req.into_body().collect().await.map_err(io::Error::other)?.to_bytes();
    let reply = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.seen.push(Recorded { method, path, headers, body, at });
        state.script.pop_front()
    };
    let reply = reply.unwrap_or_else(|| Reply::new(500).body("fake-http: no scripted reply"));
    if reply.end == End::HangUp {
        // An error from the service makes hyper close the connection without a response.
        return Err(io::Error::new(io::ErrorKind::ConnectionReset, "fake-http: scripted hang-up"));
    }
    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    let end = reply.end;
    let frames = stream::unfold((VecDeque::from(reply.chunks), end), |(mut chunks, end)| async move {
        match chunks.pop_front() {
            Some((delay, bytes)) => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok(Frame::data(bytes)), (chunks, end)))
            }
            None if end == End::Abort => {
                // hyper flushes what it buffered while the body is pending; without this pause
                // it may drop the connection with the head and chunks still unsent.
                tokio::time::sleep(ABORT_PAUSE).await;
                Some((
                    Err(io::Error::new(io::ErrorKind::ConnectionAborted, "fake-http: scripted abort")),
                    (chunks, End::Finish),
                ))
            }
            None => None,
        }
    });
    response.body(BodyExt::boxed_unsync(StreamBody::new(frames))).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn raw(server: &FakeServer, request: &str) -> String {
        let Address::Tcp(addr) = server.address() else { panic!("tcp") };
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        String::from_utf8(out).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_replies_in_order_and_requests_recorded() {
        let server = FakeServer::tcp().await.unwrap();
        assert!(server.base_url().unwrap().starts_with("http://127.0.0.1:"));
        server.push(Reply::new(201).header("x-one", "1").chunk("a").chunk_after(Duration::from_secs(5), "b"));
        server.push(Reply::sse("data: 1\n\ndata: 2\n\n").abort());
        let started = Instant::now();
        let first =
            raw(&server, "POST /p/q?x=1 HTTP/1.1\r\nHost: h\r\nX-Key: k\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi").await;
        assert!(first.starts_with("HTTP/1.1 201"), "{first}");
        assert!(first.contains("x-one: 1") && first.ends_with("1\r\na\r\n1\r\nb\r\n0\r\n\r\n"), "{first:?}");
        assert!(started.elapsed() >= Duration::from_secs(5), "the delay is kept");

        let second = raw(&server, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
        assert!(
            second.contains("content-type: text/event-stream") && second.contains("data: 2"),
            "{second:?}"
        );
        assert!(!second.ends_with("0\r\n\r\n"), "an aborted body has no last chunk: {second:?}");

        server.push(Reply::hang_up());
        let hung = raw(&server, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
        assert_eq!(hung, "", "no answer at all");

        let third = raw(&server, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
        assert!(third.starts_with("HTTP/1.1 500") && third.contains("no scripted reply"), "{third}");

        let seen = server.requests();
        assert_eq!(seen.len(), 4);
        assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("POST", "/p/q?x=1"));
        assert_eq!(seen[0].header("X-KEY"), Some("k"));
        assert_eq!(&seen[0].body[..], b"hi");
        assert_eq!(server.pending(), 0);
    }
}
