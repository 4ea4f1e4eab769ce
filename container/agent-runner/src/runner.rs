//! The runner's main loop.

use crate::agent::Agent;
use crate::config::RunnerConfig;
use crate::db::{DbError, SessionDb, Snapshot, continuation_key};
use crate::prompt::{build_turn, replies_for, row_to_chat};
use crate::provider::{HostLink, Provider, TurnFailure, TurnIo, TurnOutput, touch};
use crate::tools::ToolRegistry;
use async_trait::async_trait;
use nanoclaw_protocol::content::OutboundContent;
use nanoclaw_protocol::layout;
use nanoclaw_protocol::rows::{AckStatus, OutboundKind, OutboundRow};
use nanoclaw_protocol::settings::{MAX_SETTINGS_BYTES, RunnerSettings};
use nanoclaw_protocol::time::now_ts;
use nanoclaw_protocol::wake;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// Fatal runner errors (the process exits 1 with this message).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// Session DB trouble.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The configured provider does not exist.
    #[error("provider: {0}")]
    Provider(String),
    /// `runner.json` is unreadable or invalid.
    #[error("{path}: {message}")]
    Settings {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// Signal handlers could not be installed.
    #[error("signals: {0}")]
    Signals(std::io::Error),
}

/// The runner's fallback read interval while its wake link is up (DESIGN §6 keeps a 1 s poll only
/// for when the link is down). A safety net, not a clock: a lost byte costs at most this much.
const CONNECTED_FALLBACK: Duration = Duration::from_secs(30);

/// The wake link to the host: a stream on `wake.sock` plus a reader task that turns `INPUT`
/// bytes (and a closed socket) into notifications.
struct WakeLink {
    path: PathBuf,
    /// This container's generation, sent in the hello so the host can tell it from a stale one.
    generation: i64,
    writer: Option<OwnedWriteHalf>,
    notify: Arc<Notify>,
    /// Bursts of `INPUT` bytes (and closed links) seen so far: unlike the notification's permit,
    /// which a tool waiting for the host's answer may take, this tells whether any came since.
    inputs: Arc<AtomicU64>,
    reader: Option<tokio::task::JoinHandle<()>>,
    /// Since when the host has been unreachable, after having been connected once.
    lost_since: Option<std::time::Instant>,
    was_connected: bool,
    /// The poll interval while the link is down (`NANOCLAW_POLL_MS`).
    poll: Duration,
}

impl WakeLink {
    fn new(path: PathBuf, generation: i64, poll: Duration) -> Self {
        Self {
            path,
            generation,
            writer: None,
            notify: Arc::new(Notify::new()),
            inputs: Arc::new(AtomicU64::new(0)),
            reader: None,
            lost_since: None,
            was_connected: false,
            poll,
        }
    }

    /// How long the host has been gone (only after a first connection).
    fn lost_for(&self) -> Option<Duration> {
        self.lost_since.map(|t| t.elapsed())
    }

    /// Connects if not connected; a failure leaves the poll fallback in charge.
    async fn ensure(&mut self) {
        if self.reader.as_ref().is_some_and(|r| r.is_finished()) {
            self.writer = None;
            self.reader = None;
            self.lost_since = Some(std::time::Instant::now());
        }
        if self.writer.is_some() {
            return;
        }
        match UnixStream::connect(&self.path).await {
            Ok(stream) => {
                let (mut read, mut write) = stream.into_split();
                if write.write_all(&wake::hello_frame(self.generation)).await.is_err() {
                    return;
                }
                let (notify, inputs) = (self.notify.clone(), self.inputs.clone());
                self.reader = Some(tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    loop {
                        match read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if buf[..n].contains(&wake::INPUT) {
                                    inputs.fetch_add(1, Ordering::SeqCst);
                                    notify.notify_one();
                                }
                            }
                        }
                    }
                    inputs.fetch_add(1, Ordering::SeqCst);
                    notify.notify_one();
                }));
                self.writer = Some(write);
                self.was_connected = true;
                self.lost_since = None;
                debug!(path = %self.path.display(), "wake socket connected");
            }
            Err(e) => {
                if self.was_connected && self.lost_since.is_none() {
                    self.lost_since = Some(std::time::Instant::now());
                }
                debug!(path = %self.path.display(), error = %e, "wake socket unavailable; polling");
            }
        }
    }

    /// Tells the host that output was committed.
    async fn output(&mut self) {
        self.send(wake::OUTPUT).await;
    }

    /// Tells the host that a turn started (its rows are claimed); the host looks within
    /// [`wake::CLAIM_LOOK_MS`], not at once, so a short turn runs without the host reading
    /// `outbound.db` beside it.
    async fn claimed(&mut self) {
        self.send(wake::CLAIMED).await;
    }

    async fn send(&mut self, byte: u8) {
        if let Some(w) = self.writer.as_mut()
            && w.write_all(&[byte]).await.is_err()
        {
            self.writer = None;
        }
    }

    /// How many bursts of `INPUT` bytes (and closed links) came so far.
    fn inputs(&self) -> u64 {
        self.inputs.load(Ordering::SeqCst)
    }

    /// A connection to the host is up (its reader still runs).
    fn connected(&self) -> bool {
        self.writer.is_some() && self.reader.as_ref().is_some_and(|r| !r.is_finished())
    }

    /// Waits for a wake byte, the next due row, or the fallback, whichever is first. The fallback
    /// is `poll` (at most 1 s) while the host is unreachable, and [`CONNECTED_FALLBACK`] while the
    /// link is up: the host then sends a byte for every write the runner must see (and one at
    /// connect), and a closed link wakes the runner at once.
    async fn wait(&self, poll: Duration, next_due: Option<&str>) {
        let fallback = if self.connected() { CONNECTED_FALLBACK } else { poll };
        let until_due = next_due.and_then(|due| nanoclaw_protocol::time::parse_ts(due).ok()).map(|due| {
            // A few ms late, so the row's `process_after <= now` holds at the read.
            (due - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(5)
        });
        let wait = until_due.map_or(fallback, |d| d.min(fallback));
        let _ = tokio::time::timeout(wait, self.notify.notified()).await;
    }
}

static TURN_COUNTER: AtomicU64 = AtomicU64::new(0);

fn reply_id_prefix(generation: i64) -> String {
    let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("out-{generation}-{ms}-{}", TURN_COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// An error reply for a failed turn, to the chat of the batch's last triggering message.
fn error_reply(snapshot: &Snapshot, message: &str, id: String) -> Option<OutboundRow> {
    let origin = snapshot.batch.iter().rev().find(|r| r.trigger)?;
    let content = OutboundContent::Text { text: format!("Error: {message}") };
    Some(OutboundRow {
        id,
        seq: 0,
        in_reply_to: Some(origin.id.clone()),
        timestamp: now_ts(),
        deliver_after: None,
        kind: OutboundKind::Chat,
        platform_id: origin.platform_id.clone(),
        channel_type: origin.channel_type.clone(),
        thread_id: origin.thread_id.clone(),
        content: serde_json::to_string(&content).expect("outbound content serialises"),
    })
}

#[async_trait]
impl HostLink for WakeLink {
    async fn output(&mut self) {
        WakeLink::output(self).await
    }

    async fn input(&mut self, at_most: Duration) {
        // The reader task stores one permit per burst of INPUT bytes (and one when the link
        // closes), so a byte that came between the caller's read and this wait is not lost.
        // While the link is down no byte can come: wait no longer than the idle poll then.
        let wait = if self.connected() { at_most } else { at_most.min(self.poll) };
        let _ = tokio::time::timeout(wait, self.notify.notified()).await;
    }
}

/// Reads `runner.json` from the session folder: `None` when it does not exist (the offline
/// default applies), an error naming the file when it is too large or invalid — a host and a
/// runner that disagree must fail loudly, not run with defaults.
pub fn load_settings(config: &RunnerConfig) -> Result<Option<RunnerSettings>, RunnerError> {
    let path = config.session_dir.join(layout::RUNNER_SETTINGS);
    let err = |message: String| RunnerError::Settings { path: path.display().to_string(), message };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_SETTINGS_BYTES + 1).read_to_end(&mut bytes).map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_SETTINGS_BYTES {
        return Err(err(format!("larger than {MAX_SETTINGS_BYTES} bytes")));
    }
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut de).map(Some).map_err(|e| err(e.to_string()))
}

/// The agent for this container: `runner.json`'s provider and tools (its MCP servers started),
/// or the offline echo default. The assistant name of `runner.json` replaces the environment's in
/// `config` (the host's settings file is the newer, fuller source).
pub async fn agent_for(config: &mut RunnerConfig) -> Result<Agent, RunnerError> {
    let settings = match load_settings(config)? {
        Some(s) => s,
        None if config.provider == "echo" => RunnerSettings::echo_default(&config.assistant_name),
        None => {
            return Err(RunnerError::Provider(format!(
                "{:?} needs {} in the session folder (only echo runs without it)",
                config.provider,
                layout::RUNNER_SETTINGS
            )));
        }
    };
    let proxy_socket = config.session_dir.join(layout::PROXY_SOCKET);
    let model =
        crate::model::for_settings(&settings.provider, &proxy_socket).map_err(RunnerError::Provider)?;
    let mut tools = ToolRegistry::builtin(&settings.tools, &proxy_socket);
    if config.answer_fallback != crate::tools::system::ANSWER_FALLBACK {
        for tool in crate::tools::system::all().into_iter().filter(|t| settings.tools.allows(t.name())) {
            tools.register(Arc::new(tool.with_answer_fallback(config.answer_fallback)));
        }
    }
    config.assistant_name = settings.assistant_name.clone();
    // MCP servers: those that fail are named in the system prompt; the others' tools are offered.
    let mcp = crate::tools::mcp::McpHost::start(&settings.mcp_servers).await;
    mcp.register_into(&mut tools, &settings.tools);
    let note = mcp.prompt_note();
    Ok(Agent::new(model, settings, tools, config.workspace_dir.clone())
        .with_skills_dir(config.skills_dir.clone())
        .with_system_note(note))
}

/// Rows for what a turn produced: its `<message>` blocks (each text once per chat) minus texts a
/// tool already sent to the same chat, its unaddressed text to the session's own chat, and its notes to the batch's chat.
fn rows_for(output: &TurnOutput, snapshot: &Snapshot, prefix: &str) -> Vec<OutboundRow> {
    let replies = replies_for(&output.text, snapshot, prefix);
    if !replies.scratchpad.is_empty() {
        debug!(scratchpad = %replies.scratchpad, "scratchpad");
    }
    for name in &replies.unknown_destinations {
        warn!(destination = %name, "message to an unknown destination dropped");
    }
    // One text once per chat: a model asked to correct an answer often repeats its good blocks.
    let mut seen = std::collections::HashSet::new();
    let mut rows: Vec<OutboundRow> = replies
        .rows
        .into_iter()
        .filter(|row| seen.insert((row.channel_type.clone(), row.platform_id.clone(), row.content.clone())))
        .filter(|row| {
            // Both texts are trimmed (blocks by the parser, sends by the tool), so equal texts
            // serialise to equal content.
            !output.sent.iter().any(|s| {
                s.channel_type == row.channel_type
                    && s.platform_id == row.platform_id
                    && serde_json::to_string(&OutboundContent::Text { text: s.text.clone() }).ok().as_deref()
                        == Some(row.content.as_str())
            })
        })
        .collect();
    if let Some(text) = &output.unaddressed {
        let own = (snapshot.routing.channel_type.clone(), snapshot.routing.platform_id.clone());
        if own.0.is_some() || own.1.is_some() {
            let content = OutboundContent::Text { text: text.clone() };
            rows.push(row_to_chat(snapshot, own, None, &content, format!("{prefix}-own")));
        }
    }
    for (i, note) in output.notes.iter().enumerate() {
        if let Some(origin) = snapshot.batch.iter().rev().find(|r| r.trigger) {
            let content = OutboundContent::Text { text: note.clone() };
            let address = (origin.channel_type.clone(), origin.platform_id.clone());
            rows.push(row_to_chat(
                snapshot,
                address,
                Some(origin.seq),
                &content,
                format!("{prefix}-note{i}"),
            ));
        }
    }
    rows
}

/// Waits as [`WakeLink::wait`] does; false when SIGTERM or SIGINT came first (the runner stops).
async fn idle(
    link: &WakeLink,
    poll: Duration,
    next_due: Option<&str>,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> bool {
    tokio::select! {
        _ = link.wait(poll, next_due) => {
            debug!("hop: woken");
            true
        }
        _ = term.recv() => false,
        _ = int.recv() => false,
    }
}

/// Runs the runner until SIGTERM/SIGINT (exit code 0) or a turn asks to exit mid-turn (that
/// code, claims left in place). Returns the process exit code.
pub async fn run(config: RunnerConfig) -> Result<i32, RunnerError> {
    let mut config = config;
    let agent = agent_for(&mut config).await?;
    run_with(config, Box::new(agent)).await
}

/// [`run`] with a given provider (for tests and embedders).
pub async fn run_with(config: RunnerConfig, mut provider: Box<dyn Provider>) -> Result<i32, RunnerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunnerError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunnerError::Signals)?;
    let mut db = SessionDb::open(&config.inbound_db(), &config.outbound_db(), config.generation)?;
    let heartbeat = config.heartbeat();
    touch(&heartbeat);
    let key = continuation_key(provider.name());
    let poll = Duration::from_millis(config.poll_ms);
    let mut link = WakeLink::new(config.wake_socket(), config.generation, poll);
    link.ensure().await;
    info!(generation = config.generation, provider = provider.name(), "runner started");
    let mut first_read = true;
    // After a turn that took every due row, when no wake byte came since the read before it and
    // the link is up: the next read waits for a byte (or the next due row) instead of running at
    // once beside the host's delivery of the reply. The host sends a byte for every write the
    // runner must see, so nothing waits longer for it.
    let mut after_turn: Option<Option<String>> = None;

    loop {
        if let Some(next_due) = after_turn.take()
            && link.connected()
            && !idle(&link, poll, next_due.as_deref(), &mut term, &mut int).await
        {
            return Ok(0);
        }
        let inputs_before_read = link.inputs();
        let snapshot = db.read(first_read, config.max_messages_per_prompt)?;
        first_read = false;
        debug!(batch = snapshot.batch.len(), "hop: inbound read");
        if !snapshot.has_trigger() {
            link.ensure().await;
            if let (Some(limit), Some(lost)) = (config.host_lost_exit, link.lost_for())
                && lost >= limit
            {
                info!(?lost, "host unreachable; exiting");
                return Ok(0);
            }
            if !idle(&link, poll, snapshot.next_due.as_deref(), &mut term, &mut int).await {
                return Ok(0);
            }
            continue;
        }
        let ids: Vec<String> = snapshot.batch.iter().map(|r| r.id.clone()).collect();
        db.claim(&ids)?;
        debug!("hop: claimed");
        // The host's stuck detection, its "working" notice and `ncl` read the claim.
        link.claimed().await;
        let traces: Vec<String> = snapshot
            .batch
            .iter()
            .filter_map(|r| {
                serde_json::from_str::<nanoclaw_protocol::content::ChatContent>(&r.content).ok()?.trace_id
            })
            .collect();
        info!(batch = ids.len(), traces = %traces.join(","), "turn started");

        let prefix = reply_id_prefix(config.generation);
        let turn = build_turn(&snapshot, &config.assistant_name, db.state(&key)?);
        debug!("hop: turn built");
        let result = {
            let mut io = TurnIo {
                db: &mut db,
                snapshot: &snapshot,
                link: &mut link,
                heartbeat: &heartbeat,
                continuation_key: &key,
                id_prefix: &prefix,
            };
            tokio::select! {
                r = provider.run_turn(&turn, &mut io) => Some(r),
                _ = term.recv() => None,
                _ = int.recv() => None,
            }
        };
        debug!("hop: provider returned");
        // Retries of transient model failures happen inside the model; a turn that still fails
        // is acked `failed` and the host decides about another try.
        match result {
            None => {
                // Stopping mid-turn: hand the batch back untouched, so no try is counted.
                db.release(&ids)?;
                info!("stopped mid-turn; claims released");
                return Ok(0);
            }
            Some(Ok(output)) => {
                let rows = rows_for(&output, &snapshot, &prefix);
                let acks: Vec<(String, AckStatus)> =
                    ids.iter().map(|id| (id.clone(), AckStatus::Completed)).collect();
                let written = db.commit_turn(
                    rows,
                    &acks,
                    output.continuation.as_deref().map(|c| (key.as_str(), c)),
                    snapshot.max_inbound_seq,
                )?;
                debug!(replies = written.len(), "turn committed");
                db.notes_seen(&snapshot)?;
            }
            Some(Err(TurnFailure::Error(e))) => {
                warn!(error = %e, "turn failed");
                let rows = error_reply(&snapshot, &e.message, format!("{prefix}-err")).into_iter().collect();
                let acks: Vec<(String, AckStatus)> =
                    ids.iter().map(|id| (id.clone(), AckStatus::Failed)).collect();
                db.commit_turn(rows, &acks, None, snapshot.max_inbound_seq)?;
            }
            Some(Err(TurnFailure::Exit(code))) => {
                // A simulated crash: return at once, claims left in place for the host.
                warn!(code = code.0, "exit requested mid-turn");
                return Ok(code.0);
            }
        }
        touch(&heartbeat);
        link.output().await;
        if snapshot.batch.len() < config.max_messages_per_prompt && link.inputs() == inputs_before_read {
            after_turn = Some(snapshot.next_due.clone());
        }
    }
}
