//! Helpers of the integration tests: the real `nanoclaw` binary, temp data dirs, a CLI client.
#![allow(dead_code)]
// These helpers drive a separate process from plain (non-async) tests; blocking is intended.
#![allow(clippy::disallowed_methods)]

pub mod llm;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when the Docker daemon answers. An unreachable daemon FAILS the test (Docker tests never
/// pass by skipping), unless `NANOCLAW_SKIP_DOCKER=1` is set: then it prints a loud line and
/// returns false, and the caller returns early.
pub fn docker_available() -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("NANOCLAW_SKIP_DOCKER").is_ok_and(|v| v == "1") {
            eprintln!(
                "\n!!! SKIPPED (NANOCLAW_SKIP_DOCKER=1): the Docker daemon is unreachable; this test did NOT run !!!\n"
            );
        } else {
            panic!(
                "the Docker daemon is unreachable (`docker info` failed); start dockerd or set DOCKER_HOST, or set NANOCLAW_SKIP_DOCKER=1 to skip the Docker tests knowingly"
            );
        }
    }
    ok
}

/// The built `nanoclaw` binary.
pub fn nanoclaw_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nanoclaw"))
}

/// The built agent runner (beside the `nanoclaw` binary; `cargo nextest run --workspace` builds it).
pub fn agent_bin() -> PathBuf {
    let p = nanoclaw_bin().parent().unwrap().join("nanoclaw-agent");
    assert!(p.is_file(), "{} is missing: build the workspace (cargo build --workspace)", p.display());
    p
}

/// A short temp dir (Unix socket paths are limited to 107 bytes).
pub fn short_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("nc").tempdir_in("/tmp").unwrap()
}

/// One streamed answer of an OpenAI-compatible server (for a `fake_http::FakeServer` behind the
/// credential proxy): `text`, then the end of the stream with a small `usage`.
pub fn openai_answer(text: &str) -> fake_http::Reply {
    let chunk =
        serde_json::json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}]});
    let stop = serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2}});
    fake_http::Reply::sse(&format!("data: {chunk}\n\ndata: {stop}\n\ndata: [DONE]\n\n"))
}

/// The local name of the main agent group's first destination (what `<message to="…">` names).
pub fn main_destination(data_dir: &Path) -> String {
    store_db(data_dir)
        .query_row(
            "SELECT local_name FROM agent_destinations WHERE agent_group_id = 'ag-main' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// A data dir whose config points the default agent at a fake OpenAI-compatible server (a
/// `fake_http::FakeServer` on loopback, served by its own runtime): push answers to `upstream`,
/// read what the credential proxy forwarded from its `requests()`.
pub struct FakeProviderSetup {
    /// Runs the fake server (dropped last).
    pub rt: tokio::runtime::Runtime,
    /// The fake provider.
    pub upstream: fake_http::FakeServer,
    /// `<dir>/data`, not created yet.
    pub data: PathBuf,
    /// The config file (`--config`).
    pub config: PathBuf,
    /// The temp dir holding both.
    pub dir: tempfile::TempDir,
}

impl FakeProviderSetup {
    /// Starts the fake server and writes the config.
    pub fn new() -> Self {
        Self::with("", "")
    }

    /// Same, with `providers` lines added to the `[providers]` table (`daily_token_budget = …`)
    /// and `provider` lines to `[providers.fake]` (`api_key_env = …`).
    pub fn with(providers: &str, provider: &str) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let upstream = rt.block_on(fake_http::FakeServer::tcp()).unwrap();
        let dir = short_tempdir();
        let config = config_file(
            dir.path(),
            &format!(
                "[agent]\nprovider = \"fake\"\n\n[providers]\n{providers}\n\n[providers.fake]\nkind = \"openai\"\n\
                 base_url = \"{}/v1\"\nmodel = \"m\"\ncontext_tokens = 8192\nmax_output_tokens = 256\n{provider}\n",
                upstream.base_url().unwrap()
            ),
        );
        Self { rt, upstream, data: dir.path().join("data"), config, dir }
    }

    /// `["--config", <config>]`.
    pub fn args(&self) -> [&str; 2] {
        ["--config", self.config.to_str().unwrap()]
    }
}

/// Writes `text` as `dir/nanoclaw.toml` and returns its path (for `--config`).
pub fn config_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("nanoclaw.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Where a test service's log goes: outside its temp dir, so it survives a failed test.
pub fn log_path(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join("nanoclaw-test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.log"))
}

/// A `nanoclaw` command with a data dir and the agent binary set.
pub fn nanoclaw(data_dir: &Path) -> Command {
    let mut c = Command::new(nanoclaw_bin());
    c.arg("--data-dir")
        .arg(data_dir)
        .env("NANOCLAW_AGENT_BINARY", agent_bin())
        .env_remove("NANOCLAW_RUNTIME")
        .env_remove("NANOCLAW_CONFIG");
    c
}

/// A running `nanoclaw serve`, killed (SIGKILL) on drop unless stopped.
pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `nanoclaw serve` with extra args/env and waits for `cli.sock` to answer.
    pub fn start(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn_and_wait(data_dir, args, env, Duration::from_millis(50)).0
    }

    /// Like [`Server::start`], and also returns how long it took from the spawn of the process to
    /// the first accepted connection on `cli.sock` (polled every millisecond). The log of the
    /// earlier run of this data dir, if any, is kept in `<log>.1`.
    pub fn start_timed(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Server, Duration) {
        let log = log_path(data_dir);
        if log.exists() {
            let mut old = log.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&log, old).unwrap();
        }
        Self::spawn_and_wait(data_dir, args, env, Duration::from_millis(1))
    }

    fn spawn_and_wait(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        poll: Duration,
    ) -> (Server, Duration) {
        let (server, spawned) = Server::launch(data_dir, args, env, false);
        let sock = data_dir.join("cli.sock");
        let deadline = spawned + Duration::from_secs(120);
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "service did not come up; log: {}", server.log());
            std::thread::sleep(poll);
        }
        let took = spawned.elapsed();
        (server, took)
    }

    /// Starts `nanoclaw serve` with extra args/env without probing its socket, so that the
    /// test's first connection ([`Server::client_when_up`]) is the service's first client: in
    /// the non-idempotent testing mode a probe connection would be a client too, and would take
    /// the replies the CLI channel keeps in memory for absent clients with it. The log of a
    /// previous run on the same data dir is appended to.
    pub fn spawn(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch(data_dir, args, env, true).0
    }

    fn launch(data_dir: &Path, args: &[&str], env: &[(&str, &str)], append_log: bool) -> (Server, Instant) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append_log)
            .truncate(!append_log)
            .open(log_path(data_dir))
            .unwrap();
        let mut cmd = nanoclaw(data_dir);
        cmd.args(args)
            .arg("serve")
            .env("NANOCLAW_LOG_LEVEL", "info,nanoclaw_actors=debug")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let spawned = Instant::now();
        let child = cmd.spawn().unwrap();
        (Server { child, data_dir: data_dir.to_path_buf() }, spawned)
    }

    /// The process id of the service.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client connected as soon as `cli.sock` answers (a stale socket file of a killed run
    /// refuses connections until the new run has bound it); panics after 120 s.
    pub fn client_when_up(&self) -> Client {
        Client::from_stream(self.stream_when_up())
    }

    /// The stream of [`Server::client_when_up`], for clients of their own.
    pub fn stream_when_up(&self) -> UnixStream {
        let sock = self.data_dir.join("cli.sock");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(stream) = UnixStream::connect(&sock) {
                return stream;
            }
            assert!(Instant::now() < deadline, "service did not come up; log: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the service to exit by itself (a test knob that aborts it);
    /// panics, with the log, if it is still running then.
    pub fn wait_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::mem::forget(self);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "service still running after {timeout:?}; log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL of the service and then of the agent processes it started (see
    /// [`kill_agents_of`]): a crash of the whole host. With `--runtime process` the agents would
    /// otherwise outlive it and race the next run's agents on the same session; Docker
    /// containers are reaped by the next run instead.
    pub fn crash(self) {
        let data_dir = self.data_dir.clone();
        self.kill();
        kill_agents_of(&data_dir);
    }

    /// The service's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(&self.data_dir)).unwrap_or_default()
    }

    /// SIGTERM and wait.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }

    /// SIGKILL and wait (a crash). Containers stay, as after a real crash; the next server on the
    /// same data dir reaps them, and its drop removes whatever is left.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    /// A client of this server's CLI socket.
    pub fn client(&self) -> Client {
        Client::connect(&self.data_dir.join("cli.sock"))
    }
}

impl Drop for Server {
    /// Stops the service gracefully (so it removes its containers), kills it after 20 s, and
    /// removes any container of this install a crash test left behind.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_containers_of(&self.data_dir);
    }
}

/// Removes every container labelled with the install id of `data_dir`.
pub fn remove_containers_of(data_dir: &Path) {
    let install = nanoclaw::daemon::install_id(data_dir);
    for id in all_containers_of(&install) {
        docker(&["rm", "-f", &id]);
    }
}

/// The ack of a reply frame that has a key, as `nanoclaw chat` sends it: the CLI channel keeps
/// a reply (and sends it to every connection) until a client acks it.
pub fn ack_line(frame: &Value) -> Option<String> {
    let key = frame["message_out_id"].as_str().filter(|_| frame["type"] == "reply")?;
    Some(format!("{}\n", serde_json::json!({"type": "ack", "message_out_id": key})))
}

/// A line-oriented CLI-socket client. Like an interactive `nanoclaw chat`, it acks every reply
/// it reads.
pub struct Client {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects.
    pub fn connect(path: &Path) -> Client {
        Client::from_stream(UnixStream::connect(path).unwrap())
    }

    /// A client over a connected stream.
    pub fn from_stream(stream: UnixStream) -> Client {
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Every frame until the service closes the connection (it stopped or crashed); panics
    /// after `timeout`.
    pub fn until_closed(&mut self, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut seen = vec![];
        let mut line = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the connection is still open; frames so far: {seen:?}");
            self.stream.set_read_timeout(Some(left.min(Duration::from_millis(500)))).unwrap();
            // A line cut by a read timeout stays in `line` and is completed by the next read.
            match self.reader.read_line(&mut line) {
                Ok(0) => return seen,
                Ok(_) if line.ends_with('\n') => {
                    seen.push(self.received(&line));
                    line.clear();
                }
                Ok(_) => {}
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return seen,
            }
        }
    }

    /// A frame read: parsed, and acked when it is a reply with a key (a failed ack is no
    /// error: the service may be gone; the reply is then sent again to the next connection).
    fn received(&mut self, line: &str) -> Value {
        let frame: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad frame {line:?}: {e}"));
        if let Some(ack) = ack_line(&frame) {
            let _ = self.stream.write_all(ack.as_bytes());
        }
        frame
    }

    /// Sends raw bytes. A write error is returned, not a panic: the service may close a
    /// connection while a bad frame is still being written.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends one frame (a JSON object) as a line.
    pub fn send_frame(&mut self, frame: &Value) {
        self.send_raw(format!("{frame}\n").as_bytes()).unwrap();
    }

    /// Sends a chat message.
    pub fn send(&mut self, id: &str, text: &str) {
        let frame = serde_json::json!({"type": "message", "id": id, "text": text});
        self.send_raw(format!("{frame}\n").as_bytes()).unwrap();
    }

    /// The next frame, or `None` on timeout or end of stream.
    pub fn next(&mut self, timeout: Duration) -> Option<Value> {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(self.received(&line)),
        }
    }

    /// Frames until `pred` matches one (returned last), or panics after `timeout`.
    pub fn until(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut seen = vec![];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out; frames so far: {seen:?}");
            if let Some(f) = self.next(left.min(Duration::from_millis(500))) {
                let done = pred(&f);
                seen.push(f);
                if done {
                    return seen;
                }
            }
        }
    }

    /// Every frame that arrives within `window`.
    pub fn drain(&mut self, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        let mut seen = vec![];
        while Instant::now() < deadline {
            if let Some(f) = self.next(Duration::from_millis(100)) {
                seen.push(f);
            }
        }
        seen
    }
}

/// Whether `f` is a `reply` frame whose text starts with `prefix`.
pub fn is_reply(f: &Value, prefix: &str) -> bool {
    f["type"] == "reply" && f["text"].as_str().is_some_and(|t| t.starts_with(prefix))
}

/// Replies among frames answering `id`.
pub fn replies_to<'a>(frames: &'a [Value], id: &str) -> Vec<&'a str> {
    frames
        .iter()
        .filter(|f| f["type"] == "reply" && f["in_reply_to"] == id)
        .filter_map(|f| f["text"].as_str())
        .collect()
}

/// Docker CLI output lines.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Running containers of an install (by label).
pub fn containers_of(install_id: &str) -> Vec<String> {
    docker(&["ps", "-q", "--filter", &format!("label=nanoclaw.install={install_id}")])
        .lines()
        .map(str::to_string)
        .collect()
}

/// All containers (running or not) of an install.
pub fn all_containers_of(install_id: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", &format!("label=nanoclaw.install={install_id}")])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The session folder of the only session of agent group main.
pub fn session_dir(data_dir: &Path) -> PathBuf {
    let main = data_dir.join("sessions/main");
    let entry = std::fs::read_dir(&main).unwrap().next().expect("a session").unwrap();
    entry.path()
}

/// `processing` claims in a session's `outbound.db`, read-only (never creates the file: the
/// container must be the one to create it).
pub fn processing_claims(data_dir: &Path) -> i64 {
    let Some(main) =
        data_dir.join("sessions/main").read_dir().ok().and_then(|mut d| d.next()).and_then(Result::ok)
    else {
        return 0;
    };
    let path = main.path().join("workspace/outbound.db");
    if !path.exists() {
        return 0;
    }
    rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.query_row("SELECT count(*) FROM processing_ack WHERE status='processing'", [], |r| r.get(0))
        })
        .unwrap_or(0)
}

/// Resident set size (`VmRSS` in `/proc/<pid>/status`) of process `pid`, in bytes; `None` when
/// the process is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A CLI-socket client whose frames a background thread collects in arrival order, so that
/// several waits can overlap (a round trip of one session while the note of another is awaited).
/// Dropping it closes the connection and joins the thread.
pub struct ChatLog {
    writer: std::sync::Mutex<UnixStream>,
    frames: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ChatLog {
    /// Connects to `cli.sock` at `path` and starts collecting frames.
    pub fn connect(path: &Path) -> ChatLog {
        let stream = UnixStream::connect(path).unwrap();
        let frames = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (read, sink) = (stream.try_clone().unwrap(), frames.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(read).lines() {
                let Ok(line) = line else { return };
                let frame: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad frame {line:?}: {e}"));
                sink.lock().unwrap().push(frame);
            }
        });
        ChatLog { writer: std::sync::Mutex::new(stream), frames, reader: Some(reader) }
    }

    /// Sends a chat message.
    pub fn send(&self, id: &str, text: &str) {
        let frame = serde_json::json!({"type": "message", "id": id, "text": text});
        self.writer.lock().unwrap().write_all(format!("{frame}\n").as_bytes()).unwrap();
    }

    /// Sends any frame (a `decision`, …).
    pub fn send_frame(&self, frame: &Value) {
        self.writer.lock().unwrap().write_all(format!("{frame}\n").as_bytes()).unwrap();
    }

    /// Every frame so far.
    pub fn frames(&self) -> Vec<Value> {
        self.frames.lock().unwrap().clone()
    }

    /// The first frame so far that matches `pred`.
    pub fn find(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.frames.lock().unwrap().iter().find(|f| pred(f)).cloned()
    }

    /// The first frame matching `pred`, waiting up to `timeout` for it; `None` after that.
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.find(&pred) {
                return Some(f);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The text of the first reply to client message `id`, if one arrived.
    pub fn reply_to(&self, id: &str) -> Option<String> {
        self.find(|f| f["type"] == "reply" && f["in_reply_to"] == id)
            .and_then(|f| f["text"].as_str().map(str::to_string))
    }

    /// Sends `text` as message `id` and waits up to `timeout` for a reply to it: the time from
    /// the send to the reply, or an error naming the message and the frames about it.
    pub fn round_trip(&self, id: &str, text: &str, timeout: Duration) -> Result<Duration, String> {
        let sent = Instant::now();
        self.send(id, text);
        match self.wait(timeout, |f| f["type"] == "reply" && f["in_reply_to"] == id) {
            Some(_) => Ok(sent.elapsed()),
            None => {
                let about: Vec<Value> =
                    self.frames().into_iter().filter(|f| f["id"] == id || f["in_reply_to"] == id).collect();
                Err(format!("no reply to {id} ({text:?}) within {timeout:?}; its frames: {about:?}"))
            }
        }
    }
}

impl Drop for ChatLog {
    fn drop(&mut self) {
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The central DB `data/nanoclaw.db`, opened read-write beside the running service (WAL), with a
/// 5 s busy timeout.
pub fn store_db(data_dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(data_dir.join("nanoclaw.db")).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// Adds agent group `folder` (id `ag-<folder>`, echo provider) wired to the CLI chat with the
/// engage pattern `pattern`, and makes the main group engage only on `main_pattern`: two
/// sessions in the one CLI chat, told apart by the text of each message. SQL into the central DB
/// of a running service (the CLI frames cannot address a second chat); the router reads wirings
/// per message.
pub fn add_cli_agent_group(data_dir: &Path, folder: &str, pattern: &str, main_pattern: &str) {
    let now = nanoclaw_protocol::time::now_ts();
    let ag = format!("ag-{folder}");
    let c = store_db(data_dir);
    c.execute(
        "UPDATE messaging_group_agents SET engage_mode = 'pattern', engage_pattern = ?1 WHERE messaging_group_id = 'mg-cli-local' AND agent_group_id = 'ag-main'",
        [main_pattern],
    )
    .unwrap();
    c.execute(
        "INSERT INTO agent_groups (id, name, folder, created_at) VALUES (?1, ?2, ?2, ?3)",
        [&ag, folder, &now],
    )
    .unwrap();
    c.execute(
        "INSERT INTO container_configs (agent_group_id, provider, updated_at) VALUES (?1, 'echo', ?2)",
        [&ag, &now],
    )
    .unwrap();
    c.execute(
        "INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, session_mode, engage_mode, engage_pattern, created_at)
         VALUES (?1, 'mg-cli-local', ?2, 'shared', 'pattern', ?3, ?4)",
        [&format!("wiring-cli-{folder}"), &ag, pattern, &now],
    )
    .unwrap();
    c.execute(
        "INSERT INTO agent_destinations (agent_group_id, local_name, target_type, target_id, created_at)
         VALUES (?1, 'cli', 'channel', 'mg-cli-local', ?2)",
        [&ag, &now],
    )
    .unwrap();
}

/// Chat `team` of the CLI simulator (a group, messaging group `mg-team`, policy `policy`) wired
/// to agent group main engaging on every message, with main's destination `team`. SQL into the
/// central DB of a running service (the router reads wirings per message).
pub fn wire_cli_team(data_dir: &Path, policy: &str) {
    let now = nanoclaw_protocol::time::now_ts();
    store_db(data_dir)
        .execute_batch(&format!(
            "INSERT INTO messaging_groups (id, channel_type, platform_id, name, is_group, unknown_sender_policy, created_at)
               VALUES ('mg-team', 'cli', 'team', 'team', 1, '{policy}', '{now}');
             INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, engage_mode, engage_pattern, created_at)
               VALUES ('w-team', 'mg-team', 'ag-main', 'pattern', '.', '{now}');
             INSERT INTO agent_destinations (agent_group_id, local_name, target_type, target_id, created_at)
               VALUES ('ag-main', 'team', 'channel', 'mg-team', '{now}');"
        ))
        .unwrap();
}

/// Adds agent group `ag-<folder>` named `name` with the echo provider.
pub fn add_echo_group(data_dir: &Path, folder: &str, name: &str) {
    let now = nanoclaw_protocol::time::now_ts();
    store_db(data_dir)
        .execute_batch(&format!(
            "INSERT INTO agent_groups (id, name, folder, created_at) VALUES ('ag-{folder}', '{name}', '{folder}', '{now}');
             INSERT INTO container_configs (agent_group_id, provider, updated_at) VALUES ('ag-{folder}', 'echo', '{now}');"
        ))
        .unwrap();
}

/// The id and folder of the only session of agent group folder `folder`.
pub fn session_of(data_dir: &Path, folder: &str) -> (String, PathBuf) {
    let entry = std::fs::read_dir(data_dir.join("sessions").join(folder))
        .unwrap()
        .next()
        .expect("a session")
        .unwrap();
    (entry.file_name().to_string_lossy().to_string(), entry.path())
}

/// `sessions.status` and `status_reason` of a session in the central DB.
pub fn session_status(data_dir: &Path, session_id: &str) -> (String, Option<String>) {
    store_db(data_dir)
        .query_row("SELECT status, status_reason FROM sessions WHERE id = ?1", [session_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
}

/// Runs `nanoclaw sessions <args…>` on a data dir.
pub fn sessions_cmd(data_dir: &Path, args: &[&str]) -> std::process::Output {
    nanoclaw(data_dir).arg("sessions").args(args).output().unwrap()
}

/// The 99th percentile (nearest rank) of `samples`; zero when empty.
pub fn p99(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    match s.len() {
        0 => Duration::ZERO,
        n => s[(n * 99).div_ceil(100) - 1],
    }
}

/// SIGKILLs every agent process (`--runtime process`) whose session folder is under `data_dir`,
/// found by its `NANOCLAW_SESSION_DIR`; returns how many. Processes of other tests (other data
/// dirs) are left alone.
pub fn kill_agents_of(data_dir: &Path) -> usize {
    let roots: Vec<String> = [Some(data_dir.to_path_buf()), data_dir.canonicalize().ok()]
        .into_iter()
        .flatten()
        .map(|p| format!("{}={}/", nanoclaw_protocol::layout::ENV_SESSION_DIR, p.display()))
        .collect();
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        // Processes of other users, and ones that just ended, are not readable: not ours.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let ours =
            environ.split(|b| *b == 0).any(|var| roots.iter().any(|root| var.starts_with(root.as_bytes())));
        if ours
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
                .is_ok()
        {
            killed += 1;
        }
    }
    killed
}

/// One row of a session's delivery ledger (`delivered` in its `inbound.db`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// The outbound row id (the `message_out_id` of the reply frame).
    pub key: String,
    /// `sending`, `retrying`, `delivered` or `failed`.
    pub status: String,
    /// Why it failed or waits for a retry.
    pub error: Option<String>,
}

/// The delivery ledger of the only session of agent group main (empty while there is none),
/// read-only, in insertion order.
pub fn delivery_rows(data_dir: &Path) -> Vec<DeliveryRow> {
    let Some(session) =
        data_dir.join("sessions/main").read_dir().ok().and_then(|mut d| d.next()).and_then(Result::ok)
    else {
        return vec![];
    };
    let path = session.path().join("host/inbound.db");
    if !path.exists() {
        return vec![];
    }
    let db =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut st = db.prepare("SELECT message_out_id, status, error FROM delivered ORDER BY rowid").unwrap();
    st.query_map([], |r| Ok(DeliveryRow { key: r.get(0)?, status: r.get(1)?, error: r.get(2)? }))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Whether a reply frame's `message_out_id` is the channel key of the `messages_out` row `row_key`
/// (keys are scoped by session: `<session id>:<row id>`).
pub fn is_key_of(frame: &Value, row_key: &str) -> bool {
    frame["message_out_id"]
        .as_str()
        .is_some_and(|k| k.rsplit_once(':').is_some_and(|(_, row)| row == row_key))
}
