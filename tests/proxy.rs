//! The credential proxy against an in-process fake provider (hyper on 127.0.0.1:0): paths,
//! headers, budget, refused keys, egress and streaming. Real SQLite (the central store), real
//! Unix sockets; no Docker.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use nanoclaw::config::{ProviderConfig, ProvidersConfig};
use nanoclaw::proxy::ProxyGateway;
use nanoclaw_actors::ports::provider::{ProviderGateway, ProxyEvent, ProxyGuard, ProxyScope};
use nanoclaw_actors::store::{self, Store};
use nanoclaw_protocol::proxy::{self, EgressResponse, ProxyError, ProxyErrorKind};
use nanoclaw_protocol::settings::ProviderKind;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

const HOST_KEY: &str = "sk-host-secret-0123456789";
const KEY_ENV: &str = "NANOCLAW_TEST_PROVIDER_KEY";

// ---------------------------------------------------------------- fake provider

/// One request the fake received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: hyper::HeaderMap,
    body: Bytes,
}

/// What the fake answers (in order; a default 200 `{}` when the queue is empty).
enum Reply {
    Full {
        status: u16,
        content_type: &'static str,
        body: Bytes,
    },
    /// The body is whatever the test sends on the channel, until it drops the sender.
    Stream {
        rx: mpsc::Receiver<Bytes>,
    },
}

type Script = Arc<Mutex<VecDeque<Reply>>>;

struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Script,
    _task: AbortOnDropHandle<()>,
}

type FakeBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

impl Fake {
    async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(Mutex::new(VecDeque::new()));
        let (seen2, script2) = (seen.clone(), script.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (seen, script) = (seen2.clone(), script2.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, script) = (seen.clone(), script.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            seen.lock().push(Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body,
                            });
                            let reply = script.lock().pop_front();
                            let resp: Response<FakeBody> = match reply {
                                None => Response::new(Full::new(Bytes::from_static(b"{}")).boxed_unsync()),
                                Some(Reply::Full { status, content_type, body }) => Response::builder()
                                    .status(status)
                                    .header("content-type", content_type)
                                    .header("set-cookie", "session=upstream")
                                    .body(Full::new(body).boxed_unsync())
                                    .unwrap(),
                                Some(Reply::Stream { rx }) => {
                                    let s = futures_util::stream::unfold(rx, |mut rx| async move {
                                        rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
                                    });
                                    Response::builder()
                                        .header("content-type", "text/event-stream")
                                        .body(StreamBody::new(s).boxed_unsync())
                                        .unwrap()
                                }
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Fake { addr, seen, script, _task: AbortOnDropHandle::new(task) }
    }

    fn reply(&self, r: Reply) {
        self.script.lock().push_back(r);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

// ---------------------------------------------------------------- proxy under test

struct Proxy {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    store: Store,
    events: Arc<Mutex<Vec<ProxyEvent>>>,
    _guard: ProxyGuard,
}

fn providers(fake: SocketAddr, budget: Option<u64>) -> ProvidersConfig {
    let mut p = ProvidersConfig { daily_token_budget: budget, ..Default::default() };
    for (name, kind, base) in [
        ("anth", ProviderKind::Anthropic, format!("http://{fake}")),
        ("oai", ProviderKind::Openai, format!("http://{fake}/v1")),
    ] {
        p.by_name.insert(
            name.into(),
            ProviderConfig {
                name: name.into(),
                kind,
                base_url: Some(base),
                model: Some("m".into()),
                api_key_env: Some(KEY_ENV.into()),
                context_tokens: 8192,
                max_output_tokens: 1024,
                temperature: None,
                command: vec![],
                max_tokens_field: Default::default(),
            },
        );
    }
    p
}

fn env(k: &str) -> Option<String> {
    (k == KEY_ENV).then(|| HOST_KEY.to_string())
}

async fn open(fake: &Fake, provider: &str, budget: Option<u64>, egress_allow: Vec<String>) -> Proxy {
    let dir = tempfile::Builder::new().prefix("px").tempdir_in("/tmp").unwrap();
    let store = Store::open(&dir.path().join("nanoclaw.db")).await.unwrap();
    let gateway = ProxyGateway::new(&providers(fake.addr, budget), "echo", env).unwrap();
    let socket = dir.path().join(nanoclaw_protocol::layout::PROXY_SOCKET);
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let guard = gateway
        .open(ProxyScope {
            session_id: "sess-test-1".into(),
            agent_group_id: "ag-test".into(),
            provider: provider.into(),
            egress_allow,
            socket: socket.clone(),
            store: store.clone(),
            on_event: Arc::new(move |e| ev.lock().push(e)),
        })
        .await
        .unwrap();
    Proxy { _dir: dir, socket, store, events, _guard: guard }
}

async fn send(socket: &Path, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("no response head within 10 s")
        .unwrap()
}

fn post(path: &str) -> hyper::http::request::Builder {
    Request::builder().method("POST").uri(path).header("host", proxy::AUTHORITY)
}

async fn body_of(resp: Response<Incoming>) -> Bytes {
    tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes()
}

async fn proxy_error_of(resp: Response<Incoming>) -> ProxyError {
    assert_eq!(resp.headers().get(proxy::HEADER_PROXY_ERROR).map(|v| v.as_bytes()), Some(&b"1"[..]));
    let body = body_of(resp).await;
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)))
}

/// Captures log lines of the current thread (the tests run on a current-thread runtime).
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct W(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for W {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let w = W(buf.clone());
    let sub = tracing_subscriber::fmt().with_ansi(false).with_writer(move || w.clone()).finish();
    (buf, tracing::subscriber::set_default(sub))
}

const MESSAGES: &str = r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn path_outside_api_refused() {
    let (logs, _g) = capture_logs();
    let fake = Fake::start().await;
    let p = open(&fake, "anth", None, vec![]).await;
    for (method, path) in [
        ("POST", "/anth/v1/organizations/api_keys"),
        ("POST", "/anth/v1/messages/../../admin"),
        ("DELETE", "/anth/v1/messages"),
        ("POST", "/oai/chat/completions"),
        ("GET", "/anth"),
    ] {
        let req = Request::builder().method(method).uri(path).body(Full::new(Bytes::from(MESSAGES))).unwrap();
        let resp = send(&p.socket, req).await;
        assert_eq!(resp.status(), 403, "{method} {path}");
        let e = proxy_error_of(resp).await;
        assert_eq!(e.error.kind, ProxyErrorKind::PathNotAllowed, "{method} {path}");
    }
    assert!(fake.seen().is_empty(), "nothing reached the provider");
    let logs = String::from_utf8_lossy(&logs.lock()).into_owned();
    let line = logs.lines().find(|l| l.contains("/anth/v1/organizations/api_keys")).expect(&logs);
    assert!(line.contains("sess-test-1") && line.contains("refused"), "{line}");
    assert!(
        p.events
            .lock()
            .iter()
            .any(|e| matches!(e, ProxyEvent::Refused { what } if what.contains("organizations")))
    );
}

#[tokio::test]
async fn container_key_stripped() {
    let fake = Fake::start().await;
    fake.reply(Reply::Full {
        status: 200,
        content_type: "application/json",
        body: Bytes::from_static(br#"{"content":[],"usage":{"input_tokens":11,"output_tokens":7}}"#),
    });
    let p = open(&fake, "anth", None, vec![]).await;
    let req = post("/anth/v1/messages")
        .header("x-api-key", "sk-evil")
        .header("authorization", "Bearer sk-evil")
        .header("api-key", "sk-evil")
        .header("cookie", "a=b")
        .header("proxy-authorization", "Basic evil")
        .header("x-forwarded-for", "1.2.3.4")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(MESSAGES)))
        .unwrap();
    let resp = send(&p.socket, req).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("set-cookie").is_none(), "upstream cookies are not passed back");
    assert!(resp.headers().get(proxy::HEADER_PROXY_ERROR).is_none(), "a provider answer is not the proxy's");
    assert!(body_of(resp).await.starts_with(br#"{"content""#));
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/v1/messages"));
    assert_eq!(s.body, MESSAGES.as_bytes());
    let h = &s.headers;
    assert_eq!(h.get_all("x-api-key").iter().collect::<Vec<_>>(), vec![HOST_KEY]);
    assert_eq!(h.get("anthropic-version").unwrap(), "2023-06-01");
    assert_eq!(h.get("content-type").unwrap(), "application/json");
    for gone in ["authorization", "api-key", "cookie", "proxy-authorization", "x-forwarded-for"] {
        assert!(h.get(gone).is_none(), "{gone} reached the provider");
    }
    assert!(!format!("{h:?}").contains("sk-evil"));
    // The usage of the answer is recorded for the group.
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = day.clone();
        let n = p.store.call(move |c| store::tokens_on(c, "ag-test", &d)).await.unwrap();
        if n == 18 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "usage not recorded (have {n})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn openai_gets_a_bearer_key() {
    let fake = Fake::start().await;
    let p = open(&fake, "oai", None, vec![]).await;
    let req = post("/oai/chat/completions")
        .header("authorization", "Bearer sk-evil")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(send(&p.socket, req).await.status(), 200);
    let seen = fake.seen();
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        seen[0].headers.get_all("authorization").iter().collect::<Vec<_>>(),
        vec![format!("Bearer {HOST_KEY}").as_str()]
    );
    assert!(seen[0].headers.get("x-api-key").is_none());
}

#[tokio::test]
async fn budget_refuses_and_tells_owner_daily() {
    let fake = Fake::start().await;
    let p = open(&fake, "anth", Some(100), vec![]).await;
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    // Under the budget: forwarded.
    let d = day.clone();
    p.store.call(move |c| store::record_tokens(c, "ag-test", &d, "anth", 60, 39)).await.unwrap();
    let req = post("/anth/v1/messages").body(Full::new(Bytes::from(MESSAGES))).unwrap();
    assert_eq!(send(&p.socket, req).await.status(), 200);
    assert_eq!(fake.seen().len(), 1);
    // At the budget: refused, twice, the owner told once.
    let d = day.clone();
    p.store.call(move |c| store::record_tokens(c, "ag-test", &d, "other", 1, 0)).await.unwrap();
    for _ in 0..2 {
        let req = post("/anth/v1/messages").body(Full::new(Bytes::from(MESSAGES))).unwrap();
        let resp = send(&p.socket, req).await;
        assert_eq!(resp.status(), 429);
        let e = proxy_error_of(resp).await;
        assert_eq!(e.error.kind, ProxyErrorKind::BudgetExceeded);
        assert!(e.error.message.contains("providers.daily_token_budget"), "{}", e.error.message);
    }
    assert_eq!(fake.seen().len(), 1, "refused calls never reach the provider");
    let budget_events: Vec<_> =
        p.events.lock().iter().filter(|e| matches!(e, ProxyEvent::BudgetExceeded { .. })).cloned().collect();
    assert_eq!(budget_events, vec![ProxyEvent::BudgetExceeded { used: 100, budget: 100 }]);
}

#[tokio::test]
async fn key_refused_tells_owner_once() {
    let fake = Fake::start().await;
    for _ in 0..3 {
        fake.reply(Reply::Full {
            status: 401,
            content_type: "application/json",
            body: Bytes::from(format!(r#"{{"error":{{"message":"invalid x-api-key {HOST_KEY}"}}}}"#)),
        });
    }
    let p = open(&fake, "anth", None, vec![]).await;
    let call = || async {
        let req = post("/anth/v1/messages").body(Full::new(Bytes::from(MESSAGES))).unwrap();
        let resp = send(&p.socket, req).await;
        assert_eq!(resp.status(), 401);
        let e = proxy_error_of(resp).await;
        assert_eq!(e.error.kind, ProxyErrorKind::KeyRefused);
        assert_eq!(e.error.message, format!("the API key in {KEY_ENV} was refused"));
        assert!(!serde_json::to_string(&e).unwrap().contains(HOST_KEY));
    };
    call().await;
    call().await;
    let refused =
        |p: &Proxy| p.events.lock().iter().filter(|e| matches!(e, ProxyEvent::KeyRefused { .. })).count();
    assert_eq!(refused(&p), 1, "told once within the hour");
    // An hour later: told again.
    p.store
        .call(|c| {
            c.execute("UPDATE owner_notices SET sent_at = '2000-01-01T00:00:00.000Z'", [])
                .map_err(|e| store::StoreError::Invalid(e.to_string()))
        })
        .await
        .unwrap();
    call().await;
    assert_eq!(refused(&p), 2);
    assert_eq!(
        p.events.lock().iter().find(|e| matches!(e, ProxyEvent::KeyRefused { .. })).unwrap(),
        &ProxyEvent::KeyRefused { provider: "anth".into(), env: KEY_ENV.into(), status: 401 }
    );
}

async fn egress(p: &Proxy, url: &str) -> Response<Incoming> {
    let body = serde_json::json!({ "url": url }).to_string();
    send(&p.socket, post(proxy::EGRESS_PATH).body(Full::new(Bytes::from(body))).unwrap()).await
}

#[tokio::test]
async fn egress_outside_allow_refused() {
    let fake = Fake::start().await;
    let url = format!("http://127.0.0.1:{}/page", fake.addr.port());
    // Empty list: web_fetch is off, and the message names the setting.
    let p = open(&fake, "anth", None, vec![]).await;
    let resp = egress(&p, &url).await;
    assert_eq!(resp.status(), 403);
    let e = proxy_error_of(resp).await;
    assert_eq!(e.error.kind, ProxyErrorKind::EgressRefused);
    assert!(e.error.message.contains("container_configs.egress_allow"), "{}", e.error.message);
    // A host not in the list (the same server by another name, another port): refused.
    let p = open(&fake, "anth", None, vec![format!("127.0.0.1:{}", fake.addr.port())]).await;
    for other in
        [format!("http://localhost:{}/page", fake.addr.port()), "http://127.0.0.1:1/page".to_string()]
    {
        let resp = egress(&p, &other).await;
        assert_eq!(resp.status(), 403, "{other}");
        assert!(proxy_error_of(resp).await.error.message.contains("egress_allow"));
    }
    assert!(fake.seen().is_empty());
    // The allowed host is fetched.
    fake.reply(Reply::Full {
        status: 200,
        content_type: "text/plain",
        body: Bytes::from_static(b"hello page"),
    });
    let resp = egress(&p, &url).await;
    assert_eq!(resp.status(), 200);
    let r: EgressResponse = serde_json::from_slice(&body_of(resp).await).unwrap();
    assert_eq!((r.status, r.body.as_str(), r.truncated), (200, "hello page", false));
    assert_eq!(r.content_type.as_deref(), Some("text/plain"));
    assert_eq!(fake.seen()[0].path, "/page");
    assert!(fake.seen()[0].headers.get("x-api-key").is_none(), "no key on egress");
    // A big body is cut and marked.
    fake.reply(Reply::Full {
        status: 200,
        content_type: "text/plain",
        body: Bytes::from(vec![b'x'; proxy::EGRESS_MAX_BODY_BYTES + 10]),
    });
    let r: EgressResponse = serde_json::from_slice(&body_of(egress(&p, &url).await).await).unwrap();
    assert!(r.truncated);
    assert_eq!(r.body.len(), proxy::EGRESS_MAX_BODY_BYTES);
}

#[tokio::test]
async fn streaming_passes_chunks_unbuffered() {
    let fake = Fake::start().await;
    let (tx, rx) = mpsc::channel(4);
    fake.reply(Reply::Stream { rx });
    let p = open(&fake, "oai", None, vec![]).await;
    let req = post("/oai/chat/completions").body(Full::new(Bytes::from_static(b"{}"))).unwrap();
    let first = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n");
    tx.send(first.clone()).await.unwrap();
    let resp = send(&p.socket, req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The last chunk is only sent once the first arrived: a buffering proxy would never deliver.
    let mut got = Vec::new();
    while got.len() < first.len() {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the first chunk did not arrive before the stream ended")
            .unwrap()
            .unwrap();
        got.extend_from_slice(&frame.into_data().unwrap());
    }
    assert_eq!(got, first);
    tx.send(Bytes::from_static(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
    ))
    .await
    .unwrap();
    drop(tx);
    let rest =
        tokio::time::timeout(Duration::from_secs(10), body.collect()).await.unwrap().unwrap().to_bytes();
    assert!(rest.ends_with(b"data: [DONE]\n\n"));
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p
        .store
        .call({
            let d = day.clone();
            move |c| store::tokens_on(c, "ag-test", &d)
        })
        .await
        .unwrap()
        != 7
    {
        assert!(tokio::time::Instant::now() < deadline, "streamed usage not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn provider_misconfig_names_the_key() {
    let fake = Fake::start().await;
    let mut cfg = providers(fake.addr, None);
    let mut bad = cfg.by_name["oai"].clone();
    bad.name = "bad".into();
    bad.base_url = Some("not a url".into());
    cfg.by_name.insert("bad".into(), bad);
    let g = ProxyGateway::new(&cfg, "echo", |_| None).unwrap();
    assert_eq!(g.resolve("nope").unwrap_err().to_string().split(':').next(), Some("providers.nope"));
    assert_eq!(
        g.resolve("anth").unwrap_err().to_string(),
        format!("providers.anth.api_key_env: {KEY_ENV} is not set")
    );
    let e = g.resolve("bad").unwrap_err().to_string();
    assert!(e.starts_with("providers.bad.base_url: "), "{e}");
    for e in [g.resolve("nope"), g.resolve("anth"), g.resolve("bad")] {
        assert!(!e.unwrap_err().to_string().contains('\n'));
    }
    let g = ProxyGateway::new(&cfg, "echo", env).unwrap();
    let r = g.resolve("anth").unwrap();
    assert_eq!((r.kind, r.model.as_deref(), r.context_tokens), (ProviderKind::Anthropic, Some("m"), 8192));
    assert_eq!(g.resolve("echo").unwrap().kind, ProviderKind::Echo);
    assert!(!format!("{g:?}").contains(HOST_KEY), "Debug never shows a key");
}

#[tokio::test]
async fn dropping_the_guard_stops_the_proxy() {
    let fake = Fake::start().await;
    let p = open(&fake, "anth", None, vec![]).await;
    let stream = UnixStream::connect(&p.socket).await.unwrap();
    let socket = p.socket.clone();
    let Proxy { _guard, .. } = p;
    drop(_guard);
    assert!(!socket.exists(), "socket file removed");
    assert!(UnixStream::connect(&socket).await.is_err());
    // The open connection is closed too (its task was aborted).
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = post("/anth/v1/messages").body(Full::new(Bytes::from(MESSAGES))).unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().is_err());
}

#[tokio::test]
async fn connections_are_bounded() {
    use tokio::io::AsyncReadExt;
    let fake = Fake::start().await;
    let p = open(&fake, "anth", None, vec![]).await;
    let mut held = Vec::new();
    for _ in 0..nanoclaw::proxy::MAX_CONNECTIONS {
        held.push(UnixStream::connect(&p.socket).await.unwrap());
    }
    // One more is closed at once.
    let mut extra = UnixStream::connect(&p.socket).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the connection over the limit was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Once the held ones go, requests are served again.
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stream = UnixStream::connect(&p.socket).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let req = post("/anth/v1/messages").body(Full::new(Bytes::from(MESSAGES))).unwrap();
        if let Ok(resp) = sender.send_request(req).await {
            assert_eq!(resp.status(), 200);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no connection served after the held ones closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
