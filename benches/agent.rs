//! Benchmarks of issue 6 against the real binary, the real Docker daemon and a real model server
//! (llama.cpp with SmolLM2-135M, see `tests/common/llm.rs`):
//!
//! 1. **Host overhead per turn with a real model**: 100 turns of one chat; each turn is timed
//!    from the message to its reply frame, minus the model's own time for that turn's requests.
//!    The model's time is taken at a pass-through forwarder between the host's proxy and the model
//!    server (from the request's arrival to the last byte of the model's answer), i.e. what the
//!    same request made directly to the server costs. What is left is the host: routing, waking
//!    the container, the runner's prompt building and transcript writes, the proxy, delivery.
//! 2. **Prompt tokens per turn** over those 100 turns (`usage.prompt_tokens` the server reported
//!    for each request), with `context_tokens = 2048`: compaction must keep them bounded.
//! 3. **Runner RSS** (the container's PID 1, read from the host's `/proc`), idle after a turn and
//!    sampled every 10 ms during turns.
//! 4. **`standard` image**: size, and the cold round trip on it (echo provider: container create
//!    and start, runner start, one turn) beside a bare `docker run --rm` of the same image. The
//!    first run on a host also builds the image (minutes) and reports that time.
//!
//! ```sh
//! cargo build --release --workspace && cargo bench --bench agent
//! ```
//!
//! Prints a Markdown report for BENCHMARKS.md. Informational: nothing here asserts a number.

// A synchronous driver of separate processes: blocking sleeps are intended here.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use bytes::Bytes;
use common::llm::LlmServer;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Turns of the long chat.
const TURNS: usize = 100;
/// One turn's budget on a loaded machine.
const TURN: Duration = Duration::from_secs(300);

/// One model request as the forwarder saw it.
#[derive(Debug, Clone)]
struct Call {
    /// When its head arrived, and when the model's last byte left, since the bench started.
    start: Duration,
    end: Duration,
    /// `usage.prompt_tokens` of the answer (0 when absent).
    prompt_tokens: u64,
}

/// A pass-through HTTP forwarder on loopback in front of the model server, recording each call.
/// Streams the answer as it comes. Returns its port.
fn forwarder(
    rt: &tokio::runtime::Runtime,
    upstream: String,
    calls: Arc<Mutex<Vec<Call>>>,
    t0: Instant,
) -> u16 {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = reqwest::Client::new();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            stream.set_nodelay(true).unwrap();
            let (client, upstream, calls) = (client.clone(), upstream.clone(), calls.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (client, upstream, calls) = (client.clone(), upstream.clone(), calls.clone());
                    async move {
                        let start = t0.elapsed();
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let mut up = client
                            .request(parts.method.clone(), format!("{upstream}{}", parts.uri.path()))
                            .body(body);
                        if let Some(ct) = parts.headers.get("content-type") {
                            up = up.header("content-type", ct);
                        }
                        let resp = up.send().await.expect("the model server answers");
                        let status = resp.status();
                        let ct = resp.headers().get("content-type").cloned();
                        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
                        tokio::spawn(async move {
                            let mut resp = resp;
                            let mut seen = Vec::new();
                            while let Ok(Some(chunk)) = resp.chunk().await {
                                seen.extend_from_slice(&chunk);
                                let _ = tx.send(chunk).await;
                            }
                            let end = t0.elapsed();
                            calls.lock().push(Call { start, end, prompt_tokens: prompt_tokens(&seen) });
                        });
                        let s = futures_util::stream::unfold(rx, |mut rx| async move {
                            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
                        });
                        let mut out = Response::builder().status(status.as_u16());
                        if let Some(ct) = ct {
                            out = out.header("content-type", ct);
                        }
                        Ok::<_, std::convert::Infallible>(
                            out.body(StreamBody::new(s).boxed_unsync()).unwrap(),
                        )
                    }
                });
                let _: Result<(), _> = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

/// The last `"prompt_tokens":N` in a streamed answer.
fn prompt_tokens(body: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(body);
    text.rsplit("\"prompt_tokens\":")
        .next()
        .filter(|_| text.contains("\"prompt_tokens\":"))
        .map(|rest| rest.trim_start().chars().take_while(char::is_ascii_digit).collect::<String>())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// The PID (on the host) of the runner in the running agent container of `install`: the
/// container's PID 1, or its child when PID 1 is Docker's init.
fn runner_pid(install: &str) -> u32 {
    let ids = containers_of(install);
    let id = ids.first().expect("a running agent container");
    let pid: u32 = docker(&["inspect", "--format", "{{.State.Pid}}", id]).trim().parse().expect("a pid");
    let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    if comm(pid).trim() == "nanoclaw-agent" {
        return pid;
    }
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|&c| comm(c).trim() == "nanoclaw-agent")
        .unwrap_or_else(|| panic!("no nanoclaw-agent process under pid {pid} ({})", comm(pid).trim()))
}

/// One message; milliseconds from sending it to its reply frame (waits for its `done` too).
fn turn(c: &mut Client, id: &str, text: &str) -> (Duration, Duration) {
    let sent = Instant::now();
    c.send(id, text);
    let (mut reply, mut done) = (None, false);
    while reply.is_none() || !done {
        let frames = c.until(TURN, |f| {
            (f["type"] == "reply" && f["in_reply_to"] == id) || (f["type"] == "done" && f["id"] == id)
        });
        if frames.last().unwrap()["type"] == "reply" {
            reply.get_or_insert(sent.elapsed());
        } else {
            done = true;
        }
    }
    (reply.unwrap(), sent.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct ModelFigures {
    overhead: Vec<f64>,
    /// Overhead of the turns with exactly one model request, and with two.
    overhead_one: Vec<f64>,
    overhead_two: Vec<f64>,
    reply: Vec<f64>,
    model: Vec<f64>,
    no_reply: usize,
    /// (turn, prompt tokens of the turn's first request, requests in the turn).
    prompts: Vec<(usize, u64, usize)>,
    rss_idle_kib: u64,
    rss_turn_max_kib: u64,
    rss_hwm_kib: u64,
}

fn real_model(rt: &tokio::runtime::Runtime) -> Option<ModelFigures> {
    let llm = LlmServer::start()?;
    let t0 = Instant::now();
    let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
    let port = forwarder(rt, llm.base_url(), calls.clone(), t0);
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let config = config_file(
        dir.path(),
        &format!(
            "[agent]\nprovider = \"local\"\n\n[providers.local]\nkind = \"openai\"\n\
             base_url = \"http://127.0.0.1:{port}/v1\"\nmodel = \"smollm2\"\ntemperature = 0.0\n\
             context_tokens = 2048\nmax_output_tokens = 48\n"
        ),
    );
    let server =
        Server::start(&data, &["--config", config.to_str().unwrap()], &[("NANOCLAW_LOG_LEVEL", "warn")]);
    // No tools and no skills (a 135M model's context), the minimal image.
    store_db(&data)
        .execute(
            "UPDATE container_configs SET tools = '{\"only\":[]}', skills = '[]', image_tier = 'minimal' \
             WHERE agent_group_id = 'ag-main'",
            [],
        )
        .unwrap();
    let install = nanoclaw::daemon::install_id(&data);
    let mut c = server.client();
    // The first turn starts the container (not part of any figure).
    turn(&mut c, "warm", "Hello.");
    std::thread::sleep(Duration::from_secs(2));
    let pid = runner_pid(&install);
    let rss_idle_kib = support::status_kib(pid, "VmRSS");

    let sampling = Arc::new(AtomicBool::new(true));
    let rss_max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, rss_max) = (sampling.clone(), rss_max.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                rss_max.fetch_max(support::status_kib(pid, "VmRSS"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let mut f = ModelFigures {
        overhead: vec![],
        overhead_one: vec![],
        overhead_two: vec![],
        reply: vec![],
        model: vec![],
        no_reply: 0,
        prompts: vec![],
        rss_idle_kib,
        rss_turn_max_kib: 0,
        rss_hwm_kib: 0,
    };
    for i in 1..=TURNS {
        let before = calls.lock().len();
        let sent_at = t0.elapsed();
        let (reply, _done) =
            turn(&mut c, &format!("t-{i}"), &format!("Tell me one short fact about the number {i}."));
        let reply_at = sent_at + reply;
        let turn_calls: Vec<Call> = calls.lock()[before..].to_vec();
        // The model's own time: its requests that ended before the reply went out.
        let model: Duration = turn_calls.iter().filter(|c| c.end <= reply_at).map(|c| c.end - c.start).sum();
        if turn_calls.is_empty() {
            f.no_reply += 1;
        }
        f.reply.push(ms(reply));
        f.model.push(ms(model));
        f.overhead.push(ms(reply) - ms(model));
        match turn_calls.len() {
            1 => f.overhead_one.push(ms(reply) - ms(model)),
            2 => f.overhead_two.push(ms(reply) - ms(model)),
            _ => {}
        }
        f.prompts.push((i, turn_calls.first().map_or(0, |c| c.prompt_tokens), turn_calls.len()));
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    f.rss_turn_max_kib = rss_max.load(Ordering::Relaxed);
    f.rss_hwm_kib = support::status_kib(pid, "VmHWM");
    drop(c);
    assert!(server.stop().success());
    Some(f)
}

struct StandardFigures {
    ensured_ms: f64,
    image: String,
    size_mib: u64,
    cold: Vec<f64>,
    floor: Vec<f64>,
}

/// Sets the main group of `data` on the `standard` tier (before its first message).
fn standard_tier(data: &Path) {
    let changed = store_db(data)
        .execute("UPDATE container_configs SET image_tier = 'standard' WHERE agent_group_id = 'ag-main'", [])
        .unwrap();
    assert_eq!(changed, 1);
}

fn standard() -> StandardFigures {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let env = [("NANOCLAW_LOG_LEVEL", "warn")];
    let server = Server::start(&data, &[], &env);
    standard_tier(&data);
    let install = nanoclaw::daemon::install_id(&data);
    let mut c = server.client();
    // The first turn ensures the image (builds it when this host has none).
    let (ensured, _) = turn(&mut c, "first", "ping");
    let id = containers_of(&install).first().cloned().expect("a running agent container");
    let image = docker(&["inspect", "--format", "{{.Config.Image}}", &id]).trim().to_string();
    let size: u64 =
        docker(&["image", "inspect", "--format", "{{.Size}}", &image]).trim().parse().unwrap_or(0);
    drop(c);
    assert!(server.stop().success());

    let mut cold = vec![];
    for i in 0..10 {
        let server = Server::start(&data, &[], &env);
        assert!(all_containers_of(&install).is_empty());
        let mut c = server.client();
        cold.push(ms(turn(&mut c, &format!("cold-{i}"), "ping").0));
        drop(c);
        assert!(server.stop().success());
    }
    let floor = support::bare_docker_runs(&image, 10);
    StandardFigures { ensured_ms: ms(ensured), image, size_mib: size >> 20, cold, floor }
}

fn main() {
    if !docker_available() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let machine = format!(
        "{}, Docker {}",
        support::machine(),
        docker(&["version", "--format", "{{.Server.Version}}"]).trim()
    );
    let s = standard();
    let m = real_model(&rt);

    println!("## Run of {}\n", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"));
    println!("Machine: {machine}. Binary: {}.\n", nanoclaw_bin().display());
    println!("| measure | result | target |");
    println!("|---|---|---|");
    if let Some(mut m) = m {
        let (omin, o50, omax) = support::summary(&mut m.overhead);
        let o99 = support::percentile(&m.overhead, 0.99);
        let (_, r50, _) = support::summary(&mut m.reply);
        let (_, m50, _) = support::summary(&mut m.model);
        println!(
            "| host overhead per turn, real model, {TURNS} turns (reply − model time) | p50 {o50:.1} ms, p99 {o99:.1} ms (min {omin:.1}, max {omax:.1}) | p50 ≤ 5 ms |"
        );
        for (what, v) in [("one model request", &mut m.overhead_one), ("two (a nudge)", &mut m.overhead_two)]
        {
            if !v.is_empty() {
                let (_, p50, _) = support::summary(v);
                println!("| … turns with {what}: {} | p50 {p50:.1} ms | — |", v.len());
            }
        }
        println!("| … message → reply | p50 {r50:.0} ms | — |");
        println!("| … the model's own time in the turn | p50 {m50:.0} ms | — |");
        if m.no_reply > 0 {
            println!("| … turns with no model request | {} | 0 |", m.no_reply);
        }
        let at = |n: usize| m.prompts.iter().find(|p| p.0 == n).map_or(0, |p| p.1);
        let max = m.prompts.iter().map(|p| p.1).max().unwrap_or(0);
        let requests: usize = m.prompts.iter().map(|p| p.2).sum();
        println!(
            "| prompt tokens of the turn's first request, `context_tokens = 2048` | turn 1: {}, 10: {}, 50: {}, 100: {}; max {max} | bounded (< 2048) |",
            at(1),
            at(10),
            at(50),
            at(100)
        );
        println!("| model requests in {TURNS} turns (nudges and summaries included) | {requests} | — |");
        println!(
            "| runner RSS (the runner process in the container) | idle {:.1} MiB; during turns max {:.1} MiB (VmHWM {:.1} MiB) | — |",
            m.rss_idle_kib as f64 / 1024.0,
            m.rss_turn_max_kib as f64 / 1024.0,
            m.rss_hwm_kib as f64 / 1024.0
        );
        let series: Vec<String> = m.prompts.iter().map(|p| p.1.to_string()).collect();
        eprintln!("prompt tokens per turn: {}", series.join(" "));
    }
    let (_, c50, cmax) = support::summary(&mut s.cold.clone());
    let (_, f50, _) = support::summary(&mut s.floor.clone());
    println!("| `standard` image `{}`: size | {} MiB | — |", s.image, s.size_mib);
    println!(
        "| first turn on `standard` (image ensured: built if absent) | {:.1} s | — |",
        s.ensured_ms / 1000.0
    );
    println!("| cold round trip on `standard`, 10 runs | p50 {c50:.0} ms, max {cmax:.0} ms | — |");
    println!("| floor: bare `docker run --rm` of it, 10 runs | p50 {f50:.0} ms | — |");
    println!("| cold / floor (p50) | {:.2} × | — |", c50 / f50);
}
