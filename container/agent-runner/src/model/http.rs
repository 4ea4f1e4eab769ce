//! HTTP/1.1 to the host's credential proxy over its Unix socket (no TLS, no network).
//!
//! Every provider request goes to `http://nanoclaw-proxy/<provider>/<api path>` over the socket
//! [`nanoclaw_protocol::layout::PROXY_SOCKET`] (mounted at `/session/proxy.sock`); the host adds
//! the key and forwards it (see [`nanoclaw_protocol::proxy`]). The client is hyper-util's legacy
//! client over `hyperlocal`'s Unix connector, not reqwest: reqwest with rustls refuses to build a
//! client where no CA store exists (the `minimal` image), and the runner needs no TLS at all.
//!
//! Limits, all enforced here: request bodies and response bodies at most
//! [`proxy::MAX_BODY_BYTES`] (8 MiB); deadlines [`Deadlines`] (connect 10 s, first byte of the
//! answer 120 s, at most 120 s between two body chunks).

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nanoclaw_protocol::proxy;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Time limits of one HTTP exchange with the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Connecting to the socket.
    pub connect: Duration,
    /// From sending the request to the answer's status line and headers.
    pub first_byte: Duration,
    /// Between two chunks of the answer's body.
    pub idle: Duration,
}

impl Default for Deadlines {
    /// Connect 10 s, first byte 120 s, idle between chunks 120 s.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(120),
            idle: Duration::from_secs(120),
        }
    }
}

/// Why an exchange failed before or while reading the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The proxy could not be reached or dropped the connection before answering (transient).
    #[error("cannot reach the credential proxy: {0}")]
    Connect(String),
    /// No answer within the first-byte deadline.
    #[error("no answer from the provider within {0} s")]
    FirstByte(u64),
    /// The body stalled longer than the idle deadline.
    #[error("the provider's answer stalled for {0} s")]
    Idle(u64),
    /// The body broke off (reset, abort, malformed chunking).
    #[error("the provider's answer broke off after {bytes} bytes: {reason}")]
    Broken {
        /// Bytes received before the break.
        bytes: usize,
        /// hyper's words.
        reason: String,
    },
    /// The body passed [`proxy::MAX_BODY_BYTES`].
    #[error("the provider's answer is over {} MiB", proxy::MAX_BODY_BYTES / (1024 * 1024))]
    TooLarge,
    /// The request body passed [`proxy::MAX_BODY_BYTES`] (nothing was sent).
    #[error("the request is {0} bytes, over the proxy's limit of {max} MiB", max = proxy::MAX_BODY_BYTES / (1024 * 1024))]
    RequestTooLarge(usize),
}

/// A client for one provider behind the proxy.
#[derive(Debug, Clone)]
pub struct ProxyClient {
    client: Client<ProxyConnector, Full<Bytes>>,
    provider: String,
    deadlines: Deadlines,
}

/// An answer whose head has arrived; the body is read with [`Answer::into_stream`] or
/// [`Answer::text`].
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    body: Incoming,
    idle: Duration,
}

impl ProxyClient {
    /// A client sending to `/<provider>/…` over the Unix socket at `socket`, with the default
    /// [`Deadlines`]. Nothing is connected until the first request.
    pub fn new(socket: &Path, provider: &str) -> Self {
        Self::with_deadlines(socket, provider, Deadlines::default())
    }

    /// Same as [`ProxyClient::new`] with other deadlines (tests).
    pub fn with_deadlines(socket: &Path, provider: &str, deadlines: Deadlines) -> Self {
        let connector = ProxyConnector { socket: Arc::from(socket), timeout: deadlines.connect };
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { client, provider: provider.to_owned(), deadlines }
    }

    /// The provider name (first path segment).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// `POST`s `body` (JSON) to `/<provider>/<api_path>` with the extra `headers`, and waits for
    /// the answer's head (any status).
    ///
    /// Errors: [`HttpError::RequestTooLarge`] (nothing sent), [`HttpError::Connect`] (socket
    /// unreachable, or the connection dropped before an answer), [`HttpError::FirstByte`].
    pub async fn post_json(
        &self,
        api_path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer, HttpError> {
        let uri =
            format!("http://{}/{}/{}", proxy::AUTHORITY, self.provider, api_path.trim_start_matches('/'));
        self.post(uri, headers, body).await
    }

    /// `POST`s a `web_fetch` request (JSON [`proxy::EgressRequest`]) to [`proxy::EGRESS_PATH`]
    /// and waits for the answer's head. Errors as [`ProxyClient::post_json`].
    pub async fn post_egress(&self, body: Bytes) -> Result<Answer, HttpError> {
        self.post(format!("http://{}{}", proxy::AUTHORITY, proxy::EGRESS_PATH), &[], body).await
    }

    async fn post(&self, uri: String, headers: &[(&str, &str)], body: Bytes) -> Result<Answer, HttpError> {
        if body.len() > proxy::MAX_BODY_BYTES {
            return Err(HttpError::RequestTooLarge(body.len()));
        }
        let mut request = Request::post(uri)
            .header("content-type", "application/json")
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request =
            request.body(Full::new(body)).map_err(|e| HttpError::Connect(format!("bad request: {e}")))?;
        let first_byte = self.deadlines.first_byte;
        let response = tokio::time::timeout(first_byte, self.client.request(request))
            .await
            .map_err(|_| HttpError::FirstByte(first_byte.as_secs()))?
            .map_err(|e| HttpError::Connect(error_chain(&e)))?;
        let (parts, body) = response.into_parts();
        Ok(Answer { status: parts.status, headers: parts.headers, body, idle: self.deadlines.idle })
    }
}

impl Answer {
    /// The body as a stream of chunks, each within the idle deadline, all together at most
    /// [`proxy::MAX_BODY_BYTES`]. The stream ends after its first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, HttpError>> + Send + Unpin + 'static {
        let state = Some((self.body, 0usize, self.idle));
        Box::pin(futures_util::stream::unfold(state, |state| async move {
            let (mut body, seen, idle) = state?;
            loop {
                let frame = match tokio::time::timeout(idle, body.frame()).await {
                    Err(_) => return Some((Err(HttpError::Idle(idle.as_secs())), None)),
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => {
                        return Some((Err(HttpError::Broken { bytes: seen, reason: error_chain(&e) }), None));
                    }
                    Ok(Some(Ok(frame))) => frame,
                };
                let Ok(data) = frame.into_data() else { continue };
                let seen = seen + data.len();
                if seen > proxy::MAX_BODY_BYTES {
                    return Some((Err(HttpError::TooLarge), None));
                }
                return Some((Ok(data), Some((body, seen, idle))));
            }
        }))
    }

    /// The whole body as (lossy UTF-8) text, at most `limit` bytes kept (for error answers).
    ///
    /// Errors: as [`Answer::into_stream`], except that bytes past `limit` are dropped, not an
    /// error.
    pub async fn text(self, limit: usize) -> Result<String, HttpError> {
        use futures_util::StreamExt;
        let mut stream = self.into_stream();
        let mut kept = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let room = limit.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        Ok(String::from_utf8_lossy(&kept).into_owned())
    }

    /// True when the proxy made this answer itself (header [`proxy::HEADER_PROXY_ERROR`]).
    pub fn from_proxy(&self) -> bool {
        self.headers.contains_key(proxy::HEADER_PROXY_ERROR)
    }

    /// The `retry-after` header in whole seconds, if present and numeric.
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get("retry-after")?.to_str().ok()?;
        value.trim().parse::<u64>().ok().map(Duration::from_secs)
    }
}

/// An error and its sources, `: `-joined (hyper's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// Connects every request to the proxy socket, whatever the URI's authority, within a deadline.
#[derive(Debug, Clone)]
struct ProxyConnector {
    socket: Arc<Path>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = hyperlocal::UnixStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let mut inner = hyperlocal::UnixConnector;
        let uri: Uri = hyperlocal::Uri::new(PathBuf::from(&*self.socket), "/").into();
        let timeout = self.timeout;
        let path = self.socket.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, inner.call(uri)).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(e)) => Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{}: no connection within {} s", path.display(), timeout.as_secs()),
                )),
            }
        })
    }
}
