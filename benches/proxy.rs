//! Latency the host's credential proxy adds (issue 6 "Measure"): per request and per streamed
//! chunk, against an in-process fake provider on loopback TCP, beside the same calls made to the
//! fake directly. No Docker, no model: what is measured is the proxy alone (header filtering, key
//! injection, path check, budget check, the usage tap, the Unix-socket hop and the upstream hop).
//!
//! ```sh
//! cargo bench --bench proxy
//! ```
//!
//! - **Per request**: one small streamed answer (one content chunk, one usage chunk, `[DONE]`),
//!   timed from the request to the last body byte, on one kept-alive connection each way.
//!   Direct and proxied calls alternate; the added latency is the difference pair by pair.
//! - **Per chunk**: the fake streams chunks 1 ms apart, each carrying the instant it was
//!   written; the client notes when each arrives. Direct and proxied streams alternate.
//!
//! Prints a Markdown report for BENCHMARKS.md. Informational: nothing here asserts a number.

// `support` drives the binary through `common` in other benches; here only its statistics are used.
#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use nanoclaw::config::{ProviderConfig, ProvidersConfig};
use nanoclaw::proxy::ProxyGateway;
use nanoclaw_actors::ports::provider::{ProviderGateway, ProxyScope};
use nanoclaw_actors::store::Store;
use nanoclaw_protocol::proxy;
use nanoclaw_protocol::settings::ProviderKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// Requests per series (after warm-up).
const REQUESTS: usize = 2000;
/// Streams per series, and chunks per stream.
const STREAMS: usize = 20;
const CHUNKS: usize = 200;
/// Gap between two streamed chunks.
const CHUNK_GAP: Duration = Duration::from_millis(1);

/// The clock both sides of a chunk read: the fake writes `now - base` into each chunk.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// One OpenAI-shaped streamed chunk carrying the instant it was written.
fn stamped_chunk() -> Bytes {
    let t = base().elapsed().as_nanos();
    Bytes::from(format!(
        "data: {{\"t\":{t},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token\"}}}}]}}\n\n"
    ))
}

const USAGE_CHUNK: &str =
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3}}\n\n";

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// The fake provider: answers every request with `chunks` stamped chunks (the current value),
/// `CHUNK_GAP` apart when more than one, then a usage chunk and `[DONE]`.
async fn fake_provider(chunks: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            stream.set_nodelay(true).unwrap();
            let chunks = chunks.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let n = chunks.load(Ordering::Relaxed);
                    async move {
                        let _ = req.into_body().collect().await;
                        let s = futures_util::stream::unfold(0usize, move |i| async move {
                            let frame = match i {
                                i if i < n => {
                                    if i > 0 {
                                        tokio::time::sleep(CHUNK_GAP).await;
                                    }
                                    stamped_chunk()
                                }
                                i if i == n => Bytes::from_static(USAGE_CHUNK.as_bytes()),
                                i if i == n + 1 => Bytes::from_static(b"data: [DONE]\n\n"),
                                _ => return None,
                            };
                            Some((Ok::<_, std::convert::Infallible>(Frame::data(frame)), i + 1))
                        });
                        let resp: Response<Body> = Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(StreamBody::new(s).boxed_unsync())
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A kept-alive HTTP/1.1 connection, to the fake directly or to the proxy's socket.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &'static str,
}

impl Conn {
    async fn tcp(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self::over(TokioIo::new(stream), "/v1/chat/completions").await
    }

    async fn unix(socket: &std::path::Path) -> Conn {
        let stream = UnixStream::connect(socket).await.unwrap();
        Self::over(TokioIo::new(stream), "/oai/chat/completions").await
    }

    async fn over<T>(io: TokioIo<T>, path: &'static str) -> Conn
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Conn { sender, path }
    }

    /// Sends one request; calls `on_frame` with each body frame as it arrives. Returns the time
    /// from the request to the last body byte.
    async fn call(&mut self, mut on_frame: impl FnMut(&[u8])) -> Duration {
        const BODY: &str = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
        let req = Request::builder()
            .method("POST")
            .uri(self.path)
            .header("host", proxy::AUTHORITY)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
            .unwrap();
        let start = Instant::now();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                on_frame(&data);
            }
        }
        start.elapsed()
    }
}

/// Microseconds from each stamp in `data` to now.
fn chunk_delays(data: &[u8], out: &mut Vec<f64>) {
    let now = base().elapsed().as_nanos() as f64;
    let text = String::from_utf8_lossy(data);
    for part in text.split("\"t\":").skip(1) {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(t) = digits.parse::<f64>() {
            out.push((now - t) / 1000.0);
        }
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run());
}

async fn run() {
    base();
    let chunks = Arc::new(AtomicUsize::new(1));
    let fake = fake_provider(chunks.clone()).await;

    // The proxy, as a session gets it: the real gateway, a real central store, a Unix socket.
    let dir = tempfile::Builder::new().prefix("pxb").tempdir_in("/tmp").unwrap();
    let store = Store::open(&dir.path().join("nanoclaw.db")).await.unwrap();
    let mut providers = ProvidersConfig::default();
    providers.by_name.insert(
        "oai".into(),
        ProviderConfig {
            name: "oai".into(),
            kind: ProviderKind::Openai,
            base_url: Some(format!("http://{fake}/v1")),
            model: Some("m".into()),
            api_key_env: Some("BENCH_KEY".into()),
            context_tokens: 8192,
            max_output_tokens: 1024,
            temperature: None,
            command: vec![],
            max_tokens_field: Default::default(),
        },
    );
    let gateway =
        ProxyGateway::new(&providers, "echo", |k| (k == "BENCH_KEY").then(|| "sk-bench".to_string()))
            .unwrap();
    let socket = dir.path().join(nanoclaw_protocol::layout::PROXY_SOCKET);
    let _guard = gateway
        .open(ProxyScope {
            session_id: "sess-bench-1".into(),
            agent_group_id: "ag-bench".into(),
            provider: "oai".into(),
            egress_allow: vec![],
            socket: socket.clone(),
            store,
            on_event: Arc::new(|_| {}),
        })
        .await
        .unwrap();

    let mut direct = Conn::tcp(fake).await;
    let mut proxied = Conn::unix(&socket).await;

    // Per request.
    for _ in 0..200 {
        direct.call(|_| {}).await;
        proxied.call(|_| {}).await;
    }
    let (mut d, mut p, mut added) = (vec![], vec![], vec![]);
    for i in 0..REQUESTS {
        // Alternate which goes first, so neither always meets a warmer cache.
        let (a, b) = if i % 2 == 0 {
            let a = direct.call(|_| {}).await;
            (a, proxied.call(|_| {}).await)
        } else {
            let b = proxied.call(|_| {}).await;
            (direct.call(|_| {}).await, b)
        };
        d.push(us(a));
        p.push(us(b));
        added.push(us(b) - us(a));
    }
    let (_, d50, _) = support::summary(&mut d);
    let (_, p50, _) = support::summary(&mut p);
    let (_, a50, _) = support::summary(&mut added);
    let (d99, p99, a99) =
        (support::percentile(&d, 0.99), support::percentile(&p, 0.99), support::percentile(&added, 0.99));

    // Per chunk.
    chunks.store(CHUNKS, Ordering::Relaxed);
    let (mut cd, mut cp) = (vec![], vec![]);
    for i in 0..STREAMS {
        if i % 2 == 0 {
            direct.call(|f| chunk_delays(f, &mut cd)).await;
            proxied.call(|f| chunk_delays(f, &mut cp)).await;
        } else {
            proxied.call(|f| chunk_delays(f, &mut cp)).await;
            direct.call(|f| chunk_delays(f, &mut cd)).await;
        }
    }
    assert_eq!(cd.len(), STREAMS * CHUNKS, "every direct chunk was seen");
    assert_eq!(cp.len(), STREAMS * CHUNKS, "every proxied chunk was seen");
    let (_, cd50, _) = support::summary(&mut cd);
    let (_, cp50, _) = support::summary(&mut cp);
    let (cd99, cp99) = (support::percentile(&cd, 0.99), support::percentile(&cp, 0.99));

    println!("## Run of {}\n", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"));
    println!(
        "Machine: {}. Profile: {}.\n",
        support::machine(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    println!("| measure | direct to the fake | through the proxy | added by the proxy | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| one small streamed request, {REQUESTS} pairs | p50 {d50:.0} µs, p99 {d99:.0} µs | p50 {p50:.0} µs, p99 {p99:.0} µs | p50 {a50:.0} µs, p99 {a99:.0} µs | < 1 ms p50 |"
    );
    println!(
        "| one streamed chunk, written → read, {} chunks | p50 {cd50:.0} µs, p99 {cd99:.0} µs | p50 {cp50:.0} µs, p99 {cp99:.0} µs | p50 {:.0} µs | — |",
        STREAMS * CHUNKS,
        cp50 - cd50
    );
}
