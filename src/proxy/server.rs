//! The per-session listener: hyper HTTP/1.1 on `proxy.sock`, one task per connection, all of
//! them aborted when the [`ProxyGuard`] is dropped; and the forwarding of provider calls.

use super::usage::{Recorder, UsageTap};
use super::{Shared, UPSTREAM_FIRST_BYTE_TIMEOUT, UPSTREAM_IDLE_TIMEOUT, is_http, proxy_error};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use nanoclaw_actors::ports::provider::{GatewayError, ProxyEvent, ProxyGuard, ProxyScope};
use nanoclaw_actors::store;
use nanoclaw_protocol::proxy::{self, ProxyErrorKind};
use nanoclaw_protocol::settings::ProviderKind;
use secrecy::ExposeSecret;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

/// Most connections one session's proxy serves at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 8;

/// Longest a client may take to send a request's headers.
pub const REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a client may take to send a request body.
const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `anthropic-version` sent when the runner sent none.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Request headers passed to a provider; every other one (credentials, cookies, `host`,
/// `proxy-*`, hop-by-hop) is dropped.
const REQUEST_HEADERS: &[&str] = &["content-type", "accept", "anthropic-version", "anthropic-beta"];

/// Response headers passed back to the runner.
const RESPONSE_HEADERS: &[&str] =
    &["content-type", "retry-after", "cache-control", "x-request-id", "request-id"];

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of every proxy response.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}

/// One session's proxy: the shared gateway and the session's scope.
pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) scope: ProxyScope,
}

impl Session {
    /// Logs and reports a refusal (one line naming the session and what was refused).
    pub(super) fn refused(&self, what: String) {
        warn!(session = %self.scope.session_id, "proxy refused {what}");
        (self.scope.on_event)(ProxyEvent::Refused { what });
    }

    /// Calls `on_event` when the owner notice `key` is due (at most once per `every`).
    pub(super) async fn tell_owner(&self, key: String, every: Duration, event: ProxyEvent) {
        let due = self.scope.store.call(move |c| store::claim_owner_notice(c, &key, every)).await;
        match due {
            Ok(true) => (self.scope.on_event)(event),
            Ok(false) => {}
            Err(e) => warn!(session = %self.scope.session_id, error = %e, "owner notice not recorded"),
        }
    }
}

/// The running listener; dropping it aborts the accept loop and, with it, every connection, and
/// removes the socket file.
struct Running {
    _accept: AbortOnDropHandle<()>,
    socket: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Binds `scope.socket` (replacing a stale file, mode 0666 so the container's user can connect)
/// and serves it until the guard is dropped.
pub(super) fn open(shared: Arc<Shared>, scope: ProxyScope) -> Result<ProxyGuard, GatewayError> {
    use std::os::unix::fs::PermissionsExt;
    let socket = scope.socket.clone();
    let err =
        |e: std::io::Error| GatewayError::Bind { path: socket.display().to_string(), message: e.to_string() };
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(err)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    let session = Arc::new(Session { shared, scope });
    let accept = AbortOnDropHandle::new(tokio::spawn(accept_loop(listener, session)));
    Ok(ProxyGuard::new(Running { _accept: accept, socket }))
}

async fn accept_loop(listener: UnixListener, session: Arc<Session>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Dropped with this task (the guard aborts it): every connection task is aborted with it.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let session = session.clone();
                        conns.spawn(async move {
                            serve_connection(stream, session).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        debug!(session = %session.scope.session_id, "proxy: over {MAX_CONNECTIONS} connections, one closed");
                        drop(stream);
                    }
                },
                Err(e) => {
                    warn!(session = %session.scope.session_id, error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: UnixStream, session: Arc<Session>) {
    let service = hyper::service::service_fn(move |req| {
        let session = session.clone();
        async move { Ok::<_, Infallible>(handle(&session, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        debug!(error = %e, "proxy connection ended");
    }
}

/// Reads a request body of at most `max` bytes within [`REQUEST_BODY_TIMEOUT`].
pub(super) async fn read_body(body: Incoming, max: usize) -> Result<Bytes, Response<Body>> {
    match tokio::time::timeout(REQUEST_BODY_TIMEOUT, Limited::new(body, max).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(proxy_error(413, ProxyErrorKind::TooLarge, format!("request body over {max} bytes")))
        }
        Ok(Err(e)) => {
            Err(proxy_error(400, ProxyErrorKind::TooLarge, format!("request body unreadable: {e}")))
        }
        Err(_) => Err(proxy_error(408, ProxyErrorKind::TooLarge, "request body not sent in time")),
    }
}

/// Today (UTC) as `YYYY-MM-DD`, the `day` of `token_usage`.
pub(super) fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

async fn handle(session: &Session, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().as_str().to_string();
    if path == proxy::EGRESS_PATH {
        return super::egress::handle(session, req).await;
    }
    let (provider, api_path) = path.trim_start_matches('/').split_once('/').unwrap_or((path.as_str(), ""));
    let scope = &session.scope;
    if provider != scope.provider {
        session.refused(format!("{method} {path} (not this session's provider {})", scope.provider));
        return proxy_error(
            403,
            ProxyErrorKind::PathNotAllowed,
            format!("{method} {path}: this session's provider is {}", scope.provider),
        );
    }
    let (up, base) = match session.shared.usable(provider) {
        Ok(u) => u,
        Err(e) => return proxy_error(503, ProxyErrorKind::ProviderMisconfigured, e.to_string()),
    };
    let kind = up.config.kind;
    let base = match base {
        Some(b) if is_http(kind) && proxy::allowed(kind, &method, api_path) => b.clone(),
        _ => {
            session.refused(format!("{method} {path}"));
            return proxy_error(
                403,
                ProxyErrorKind::PathNotAllowed,
                format!(
                    "{method} /{api_path} is not an API path the {} provider {provider} allows",
                    kind.as_str()
                ),
            );
        }
    };
    let day = today();
    if let Some(budget) = session.shared.daily_token_budget {
        let (group, d) = (scope.agent_group_id.clone(), day.clone());
        let used = match scope.store.call(move |c| store::tokens_on(c, &group, &d)).await {
            Ok(n) => n,
            Err(e) => {
                warn!(session = %scope.session_id, error = %e, "token usage unreadable");
                0
            }
        };
        if used >= budget {
            let key = format!("budget:{}:{day}", scope.agent_group_id);
            session
                .tell_owner(key, Duration::from_secs(24 * 3600), ProxyEvent::BudgetExceeded { used, budget })
                .await;
            return proxy_error(
                429,
                ProxyErrorKind::BudgetExceeded,
                format!(
                    "the daily token budget of this agent group (providers.daily_token_budget = {budget}) is spent: {used} tokens today"
                ),
            );
        }
    }
    let headers = forward_headers(req.headers(), kind, up);
    let body = match read_body(req.into_body(), proxy::MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut url = base;
    {
        let joined = format!("{}/{}", url.path().trim_end_matches('/'), api_path.trim_start_matches('/'));
        url.set_path(&joined);
    }
    let method = if method == "GET" { reqwest::Method::GET } else { reqwest::Method::POST };
    let send = session.shared.client.request(method, url).headers(headers).body(body).send();
    let resp = match tokio::time::timeout(UPSTREAM_FIRST_BYTE_TIMEOUT, send).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return proxy_error(
                502,
                ProxyErrorKind::UpstreamUnreachable,
                format!("provider {provider} could not be reached: {}", e.without_url()),
            );
        }
        Err(_) => {
            return proxy_error(
                504,
                ProxyErrorKind::UpstreamUnreachable,
                format!(
                    "provider {provider} did not answer within {} s",
                    UPSTREAM_FIRST_BYTE_TIMEOUT.as_secs()
                ),
            );
        }
    };
    let status = resp.status().as_u16();
    if status == 401 || status == 403 {
        // The provider's body may echo (part of) the key: never pass it on.
        let env = up.config.api_key_env.clone().unwrap_or_default();
        let message = if env.is_empty() {
            format!(
                "provider {provider} refused the request (no key is configured: set providers.{provider}.api_key_env)"
            )
        } else {
            format!("the API key in {env} was refused")
        };
        warn!(session = %scope.session_id, provider, status, "provider refused the key");
        session
            .tell_owner(
                format!("key-refused:{provider}"),
                Duration::from_secs(3600),
                ProxyEvent::KeyRefused { provider: provider.to_string(), env, status },
            )
            .await;
        return proxy_error(status, ProxyErrorKind::KeyRefused, message);
    }
    let mut out = Response::builder().status(status);
    for name in RESPONSE_HEADERS {
        if let Some(v) = resp.headers().get(*name) {
            out = out.header(*name, v.clone());
        }
    }
    let sse = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let recorder = Recorder {
        store: scope.store.clone(),
        agent_group_id: scope.agent_group_id.clone(),
        day,
        provider: provider.to_string(),
    };
    let tap = UsageTap::new(sse, recorder);
    let stream = futures_util::stream::unfold(Some((resp.bytes_stream(), tap)), |state| async move {
        let (mut s, mut tap) = state?;
        match tokio::time::timeout(UPSTREAM_IDLE_TIMEOUT, s.next()).await {
            Ok(Some(Ok(chunk))) => {
                tap.feed(&chunk);
                Some((Ok(Frame::data(chunk)), Some((s, tap))))
            }
            Ok(Some(Err(e))) => Some((Err(BoxError::from(e.without_url())), None)),
            Ok(None) => None,
            Err(_) => Some((Err(BoxError::from("provider went silent mid-answer")), None)),
        }
    });
    out.body(StreamBody::new(stream).boxed_unsync()).unwrap_or_else(|_| {
        proxy_error(502, ProxyErrorKind::UpstreamUnreachable, "bad response from provider")
    })
}

/// The headers sent upstream: the allowlisted ones of the runner's request plus the host's key.
fn forward_headers(from: &HeaderMap, kind: ProviderKind, up: &super::Upstream) -> reqwest::header::HeaderMap {
    let mut out = reqwest::header::HeaderMap::new();
    for name in REQUEST_HEADERS.iter().copied() {
        if let Some(v) = from.get(name) {
            out.insert(HeaderName::from_static(name), v.clone());
        }
    }
    let key = up.key.as_ref().ok().and_then(|k| k.as_ref());
    match kind {
        ProviderKind::Anthropic => {
            out.entry("anthropic-version").or_insert(HeaderValue::from_static(ANTHROPIC_VERSION));
            if let Some(key) = key
                && let Ok(mut v) = HeaderValue::from_str(key.expose_secret())
            {
                v.set_sensitive(true);
                out.insert("x-api-key", v);
            }
        }
        _ => {
            if let Some(key) = key
                && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
            {
                v.set_sensitive(true);
                out.insert(hyper::header::AUTHORIZATION, v);
            }
        }
    }
    out
}
