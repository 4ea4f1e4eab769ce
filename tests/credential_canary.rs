//! The credential canary (issue 6 "Must hold"): a provider key set only in the environment of
//! `nanoclaw serve` reaches the upstream in `x-api-key` and nothing else: not the container's
//! environment (`docker inspect`), not the environment of any process in it (`/proc/<pid>/environ`
//! of the host pids `docker top` lists), not its `docker logs`, not any byte of any file under the
//! data dir (transcripts included), not the service log, not the chat. Real binary, real Docker, a fake Anthropic upstream on loopback.
//! Fails when Docker is unreachable (`NANOCLAW_SKIP_DOCKER=1` skips it, loudly).

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The canned streamed Messages API answer of the fake: one text block.
const SSE_REPLY: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"fake\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"canned upstream reply\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":3}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

/// One request the fake received: its request line and headers (lowercase names).
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
}

/// A fake Anthropic upstream on 127.0.0.1: answers every request with [`SSE_REPLY`] and records
/// what it received. One thread per connection; lives as long as the test process.
fn fake_upstream() -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let sink = sink.clone();
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let mut headers = vec![];
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.trim_end().split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len.min(16 << 20)];
                let _ = reader.read_exact(&mut body);
                sink.lock().unwrap().push(Seen { line: line.trim_end().to_string(), headers });
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{SSE_REPLY}",
                    SSE_REPLY.len()
                );
                let _ = stream.flush();
            });
        }
    });
    (port, seen)
}

/// Every file under `dir` (not following symlinks) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(ty) = e.file_type() else { continue };
            if ty.is_dir() {
                stack.push(e.path());
            } else if ty.is_file()
                && let Ok(bytes) = std::fs::read(e.path())
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(e.path().display().to_string());
            }
        }
    }
    hits
}

#[test]
fn canary_key_only_reaches_the_upstream() {
    if !docker_available() {
        return;
    }
    let canary = format!("sk-canary-{}-{}", std::process::id(), nanoclaw_protocol::time::now_ts());
    let canary = canary.replace([':', '.', ' '], "");
    let (port, seen) = fake_upstream();
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let config = config_file(
        dir.path(),
        &format!(
            "[agent]\nprovider = \"fake\"\n\n[providers.fake]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
             api_key_env = \"NANOCLAW_CANARY_KEY\"\nmodel = \"fake-model\"\n"
        ),
    );
    let server =
        Server::start(&data, &["--config", config.to_str().unwrap()], &[("NANOCLAW_CANARY_KEY", &canary)]);
    let changed = store_db(&data)
        .execute(
            "UPDATE container_configs SET tools = '{\"only\":[\"send_message\"]}', image_tier = 'minimal' \
             WHERE agent_group_id = 'ag-main'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let mut c = server.client();
    c.send("m-0", "hello");
    let frames = c.until(Duration::from_secs(300), |f| f["type"] == "done" && f["id"] == "m-0");
    assert_eq!(
        replies_to(&frames, "m-0"),
        vec!["canned upstream reply"],
        "{frames:?}; log: {}",
        server.log()
    );

    // The upstream got the key, in x-api-key, on the Messages API path.
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the fake upstream received nothing");
    for s in &seen {
        assert!(s.line.starts_with("POST /v1/messages"), "{s:?}");
        let key: Vec<_> =
            s.headers.iter().filter(|(k, _)| k == "x-api-key").map(|(_, v)| v.as_str()).collect();
        assert_eq!(key, vec![canary.as_str()], "{s:?}");
        assert!(!s.headers.iter().any(|(k, _)| k == "authorization"), "{s:?}");
    }

    // The container: neither its configured environment nor that of any process in it.
    let install = nanoclaw::daemon::install_id(&data);
    let containers = containers_of(&install);
    assert_eq!(containers.len(), 1, "{containers:?}");
    let inspect = docker(&["inspect", "--format", "{{json .Config.Env}}", &containers[0]]);
    assert!(inspect.starts_with('['), "docker inspect failed: {inspect}");
    assert!(!inspect.contains(&canary), "the key is in the container's Env: {inspect}");
    let top = docker(&["top", &containers[0], "-eo", "pid"]);
    let pids: Vec<&str> = top.lines().skip(1).map(str::trim).filter(|p| !p.is_empty()).collect();
    assert!(!pids.is_empty(), "no processes in the container: {top}");
    for pid in pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/environ: {e}"));
        assert!(
            !environ.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "the key is in the environment of container process {pid}"
        );
    }

    let out = std::process::Command::new("docker").args(["logs", &containers[0]]).output().unwrap();
    assert!(out.status.success(), "docker logs failed");
    for stream in [&out.stdout, &out.stderr] {
        assert!(!stream.windows(canary.len()).any(|w| w == canary.as_bytes()), "the key is in docker logs");
    }

    // Not in the chat, not in any file of the data dir, not in the log (while running and after
    // the service stopped and flushed everything).
    assert!(!format!("{frames:?}").contains(&canary));
    assert_eq!(files_containing(&data, canary.as_bytes()), Vec::<String>::new());
    let log_file = log_path(&data);
    drop(c);
    server.stop();
    assert_eq!(files_containing(&data, canary.as_bytes()), Vec::<String>::new());
    let log = std::fs::read(&log_file).unwrap();
    assert!(!log.is_empty());
    assert!(!log.windows(canary.len()).any(|w| w == canary.as_bytes()), "the key is in the service log");
}

/// The process runtime (development and tests) runs the runner as a plain child: it must not
/// inherit the host's environment either, where the providers' keys live. The runner's
/// `/proc/<pid>/environ` holds neither a planted key nor another host variable, but does hold
/// what it needs (its session dir, `PATH`). No Docker.
#[test]
fn process_runtime_runner_inherits_no_host_secrets() {
    let canary = format!("sk-canary-proc-{}", std::process::id());
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &["--runtime", "process"],
        &[("NANOCLAW_CANARY_KEY", &canary), ("SOME_HOST_TOKEN", "host-only-value")],
    );
    let mut c = server.client();
    c.send("m-0", "hello");
    let frames = c.until(Duration::from_secs(60), |f| f["type"] == "done" && f["id"] == "m-0");
    assert_eq!(replies_to(&frames, "m-0"), vec!["echo: hello"], "{frames:?}");
    // The runner: a child of the service running the agent binary.
    let pid = server.pid();
    let children: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter_map(|p| p.parse().ok())
        .collect();
    let runner = children
        .iter()
        .copied()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "nanoclaw-agent")
        })
        .unwrap_or_else(|| panic!("no runner among the children {children:?}"));
    let environ = std::fs::read(format!("/proc/{runner}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
    assert!(!environ.contains(&canary) && !environ.contains("NANOCLAW_CANARY_KEY"), "{environ}");
    assert!(!environ.contains("host-only-value"), "{environ}");
    assert!(environ.contains("NANOCLAW_SESSION_DIR=") && environ.contains("PATH="), "{environ}");
    assert!(server.stop().success());
}
