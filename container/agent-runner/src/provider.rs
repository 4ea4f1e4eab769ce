//! The `Provider` port: one turn of the agent, whatever runs it.
//!
//! A provider runs one turn: it gets the [`Turn`] (system context, the batch, the continuation of
//! the previous turn) and a [`TurnIo`] — the session DB, the batch's snapshot, the wake link and
//! the event sink — because tools write rows mid-turn (a `send_message` is committed and shown
//! while the turn still runs), and the event sink refreshes the heartbeat and records the tool in
//! flight. It returns the final text, whose `<message to="…">` blocks become replies, plus what
//! the runner needs to write them once (texts already sent, notes for the user). The one
//! implementation is [`crate::agent::Agent`], the tool loop over a [`crate::model::Model`].

use crate::db::{SessionDb, Snapshot};
use crate::prompt::Turn;
use async_trait::async_trait;
use std::path::Path;
use std::time::SystemTime;
use tracing::{debug, warn};

/// A streaming event of a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEvent {
    /// The provider (re)opened its conversation; `continuation` resumes it next turn.
    Init {
        /// Opaque resume token (the transcript's path for the tool loop).
        continuation: String,
    },
    /// Still working (no visible output yet).
    Activity,
    /// A progress note for logs.
    Progress {
        /// What is happening.
        message: String,
    },
    /// A tool call started; `declared_timeout_ms` extends stuck detection while it runs.
    ToolStarted {
        /// Tool name.
        name: String,
        /// How long the tool may legitimately take, in ms.
        declared_timeout_ms: Option<i64>,
    },
    /// The tool call ended.
    ToolFinished,
}

/// Receives a turn's events.
pub trait EventSink: Send {
    /// Called for every event, in order.
    fn event(&mut self, event: ProviderEvent);
}

/// The runner's line to the host, for output committed in the middle of a turn and for waiting
/// on the host's answers (system-action tools).
#[async_trait]
pub trait HostLink: Send {
    /// Tells the host that rows were committed to `outbound.db` (the wake socket's OUTPUT byte).
    async fn output(&mut self);

    /// Waits until the host signals new input in `inbound.db` (the wake socket's INPUT byte) or
    /// `at_most` has passed, whichever comes first. A byte that arrived since the last wait
    /// counts (it is not lost between a read and the wait), so callers read, then wait, then
    /// read again. Without a link this only sleeps.
    async fn input(&mut self, at_most: std::time::Duration) {
        tokio::time::sleep(at_most).await;
    }
}

/// A [`HostLink`] that tells nobody (unit tests, embedders without a wake socket).
#[derive(Debug, Default)]
pub struct NoLink;

#[async_trait]
impl HostLink for NoLink {
    async fn output(&mut self) {}
}

/// Sets the heartbeat file's mtime to now (creating it). A failure is logged, never fatal: a
/// missed beat only makes the host look more closely.
pub fn touch(path: &Path) {
    let result = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = result {
        warn!(path = %path.display(), error = %e, "heartbeat not written");
    }
}

/// What a turn may touch besides its own state: the session DB, the batch it answers, the host
/// link and the heartbeat. It is also the turn's [`EventSink`]: every event refreshes the
/// heartbeat, `Init` stores the continuation at once (a crash mid-turn resumes it), tool events
/// go to `container_state` (the host's stuck detection reads them).
pub struct TurnIo<'a> {
    /// The session DBs.
    pub db: &'a mut SessionDb,
    /// The batch being answered.
    pub snapshot: &'a Snapshot,
    /// The wake link (OUTPUT bytes for mid-turn commits).
    pub link: &'a mut dyn HostLink,
    /// The heartbeat file.
    pub heartbeat: &'a Path,
    /// `continuation:<provider>`.
    pub continuation_key: &'a str,
    /// Prefix of the ids of rows written in this turn (unique per turn).
    pub id_prefix: &'a str,
}

impl EventSink for TurnIo<'_> {
    fn event(&mut self, event: ProviderEvent) {
        touch(self.heartbeat);
        let result = match &event {
            ProviderEvent::Init { continuation } => self.db.set_state(self.continuation_key, continuation),
            ProviderEvent::ToolStarted { name, declared_timeout_ms } => {
                self.db.set_tool(Some((name, *declared_timeout_ms)))
            }
            ProviderEvent::ToolFinished => self.db.set_tool(None),
            ProviderEvent::Progress { message } => {
                debug!(%message, "progress");
                Ok(())
            }
            ProviderEvent::Activity => Ok(()),
        };
        if let Err(e) = result {
            warn!(error = %e, "event not recorded");
        }
    }
}

/// A text a turn already sent through a tool, for the final-answer dedupe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentText {
    /// Channel type of the chat it went to.
    pub channel_type: Option<String>,
    /// Platform id of the chat it went to.
    pub platform_id: Option<String>,
    /// The text, trimmed.
    pub text: String,
}

/// The end of a successful turn.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TurnOutput {
    /// The final text; its message blocks are the replies.
    pub text: String,
    /// Continuation to store for the next turn (`None` keeps the stored one).
    pub continuation: Option<String>,
    /// Texts already sent by tools this turn: a final-answer block repeating one to the same chat
    /// is dropped, so the user sees it once.
    pub sent: Vec<SentText>,
    /// Text the model meant as an answer but addressed to nobody (no `<message>` block, even
    /// after a nudge): sent to the session's own chat.
    pub unaddressed: Option<String>,
    /// Notes for the user (an aborted loop, a reset memory), sent to the chat of the batch.
    pub notes: Vec<String>,
}

/// A failed turn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    /// One line for logs and for the user.
    pub message: String,
    /// A later retry of the same turn may succeed (rate limit, overload, network).
    pub retryable: bool,
    /// The continuation is unusable and must be dropped (the next turn starts fresh).
    pub session_invalid: bool,
}

/// What the runner does on a directive that ends the process (used by tests of crash handling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitRequest(pub i32);

/// A model (or stand-in) that answers turns.
#[async_trait]
pub trait Provider: Send {
    /// Name, used in the continuation key `continuation:<name>`.
    fn name(&self) -> &str;

    /// Runs one turn. Long waits must be `.await`s so SIGTERM can interrupt them.
    async fn run_turn(&mut self, turn: &Turn, io: &mut TurnIo<'_>) -> Result<TurnOutput, TurnFailure>;
}

/// Why a turn did not produce output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnFailure {
    /// The provider failed.
    Error(ProviderError),
    /// The turn asked the runner to exit at once with this code, leaving its claims in place
    /// (a simulated crash: the echo model's `!exit` directive).
    Exit(ExitRequest),
}
