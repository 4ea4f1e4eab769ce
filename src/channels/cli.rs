//! The CLI channel: a Unix socket `data/cli.sock` (mode 0600) speaking JSON lines, used by
//! `nanoclaw chat` (DESIGN §9). It is one chat, `cli`/`local`, owned by the user `cli:local`; its
//! account is `cli`.
//!
//! # Frames
//!
//! One JSON object per line, at most [`MAX_FRAME_BYTES`]; `type` names the frame.
//!
//! Client → service:
//! - `{"type":"message","id":"<client message id>","text":"…"}`: a chat message; the id (1–128 of
//!   `[A-Za-z0-9._:-]`) is the dedupe key, so a client re-sends a message it is not sure arrived;
//! - `{"type":"ack","message_out_id":"…"}`: the client has shown the reply with this key; it is
//!   not sent again, to this client or any other. Acks of unknown or already acked keys are
//!   ignored. The service answers nothing;
//! - `{"type":"decision","callback":"nc:<id>:<n>","chat":…,"sender":…}`: a click on option `n`
//!   (0-based) of a `choice` card — the CLI's button. The service answers
//!   `{"type":"decided","callback":…,"text":…}` with one line ("approved …", "not allowed: …").
//!
//! Service → client:
//! - `{"type":"accepted","id":…,"duplicate":false}`: the message is committed;
//! - `{"type":"reply","text":…,"in_reply_to":…,"message_out_id":…}`: a reply. `in_reply_to` (the
//!   client message id it answers) and `message_out_id` (the outbound row id, the idempotency
//!   key) are left out when unknown. A reply may come more than once (until acked, it is sent to
//!   each connection; after a crash its send may repeat): a client shows a key it has seen
//!   before only once (`nanoclaw chat` remembers the last [`RECENT_REPLY_IDS`]);
//! - `{"type":"file","text":…,"files":[{"name":…,"bytes":<size>}],"in_reply_to":…,
//!   "message_out_id":…}`: files from the agent (the caption `text` may be absent; names and
//!   sizes only: the bytes stay on the host); `{"type":"card","title":…,"text":…,"buttons":
//!   [{"label":…,"url":…}],…}`: a card with link buttons; `{"type":"edit","platform_message_id":
//!   …,"text":…,…}`: a new text for the reply whose platform message id (`cli-out-<key>`) is
//!   given; `{"type":"reaction","platform_message_id":…,"emoji":…,…}`: a reaction to a message
//!   (a client message id, or a reply's `cli-out-<key>`); `{"type":"choice","approval_id":…,
//!   "title":…,"text":…,"options":[{"number":1,"label":…,"callback":…}],"reply_hint":…}`: a card
//!   asking for a decision (an approval, an agent's question). These five are kept and acked
//!   like replies, and carry `in_reply_to` and `message_out_id` the same way;
//! - `{"type":"working","tool":…}`: the agent is working (running `tool`, absent between tools);
//!   sent live, at most about once a second, never kept;
//! - `{"type":"done","id":…}`: the agent finished with a message — every reply to it that was
//!   delivered came before; `{"type":"failed","id":…,"reason":…}`: it will not be answered;
//! - `{"type":"error","message":…,"fatal":…}`: the client's last frame was rejected (one line).
//!   `fatal: true` (the default when absent): the connection closes after this frame.
//!
//! Clients ignore fields and frame types they do not know, so older clients read newer frames.
//! The service denies unknown fields in known frames (a message carries nothing else), but a
//! frame of an unknown type gets a non-fatal `error` and the connection stays, so a newer client
//! can try a newer frame.
//!
//! # Keeping replies until a client confirms them
//!
//! The channel is idempotent by key ([`ChannelAdapter::idempotent_sends`]) and acts as a
//! platform that keeps what it accepted: [`CliChannel::deliver`] commits the reply to its own
//! store, `data/cli-replies.db` ([`replies`], beside the socket), before it returns `Ok` (after
//! which the outbox records it delivered, for good); a key already there is not stored or sent
//! again. Each connection is sent every reply still waiting for an ack, in commit order, then
//! each new one as it is committed; so a reply reaches a client that connects later — hours
//! later, after a crash — and one lost with a dead or slow connection is sent again on the next.
//! Frames of a connection keep causal order: a `done` or `accepted` is written after every reply
//! committed before it was queued.
//!
//! Testing knob: `NANOCLAW_CLI_IDEMPOTENT=0` makes the channel declare itself non-idempotent —
//! no key in frames, no dedupe, no store: replies go to the clients connected at the time, or,
//! when none is, are kept in memory (at most [`BACKLOG`]) for the next one — to test the outbox's
//! non-idempotent path.
//!
//! Bad input — not JSON, a known frame with wrong or unknown fields, a line over
//! [`MAX_FRAME_BYTES`], a frame cut off by the end of the stream — gets one fatal `error` line
//! naming the problem, and the connection is closed; other connections and the service are
//! unaffected. A client that leaves [`CLIENT_QUEUE`] frames unread is disconnected (its replies
//! wait for its next connection).
//!
//! One run (from `start` to the drop of its guard) owns the listener, the accept loop, every
//! connection's tasks and the socket file: dropping the guard — also when the channel actor
//! failed and skipped its `post_stop` — closes them and removes the file, so a restart binds
//! again. The reply store outlives runs: it belongs to the channel.

pub mod replies;

use replies::{Put, ReplyStore, ReplyStoreError};

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use nanoclaw_actors::ports::channel::{
    AdapterGuard, ChannelAdapter, ChannelError, ChoiceCard, Click, DeliveryError, EditRequest, InboundEvent,
    InboundSink, MAX_CALLBACK_BYTES, Notice, OutboundCard, OutboundFile, OutboundMessage, ReactionRequest,
};
use nanoclaw_actors::store::{CLI_OWNER_USER_ID, CLI_PLATFORM_ID};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OnceCell, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

/// Largest frame (one line) accepted, in bytes.
pub const MAX_FRAME_BYTES: usize = 128 * 1024;
/// Non-idempotent mode only: replies kept in memory for the next client while none is connected.
pub const BACKLOG: usize = 200;
/// Most simultaneous client connections.
pub const MAX_CLIENTS: usize = 64;
/// Frames other than stored replies (accepted, done, failed, error) queued for one connection;
/// a client that leaves this many unread is disconnected.
pub const CLIENT_QUEUE: usize = 256;
/// Reply keys (`message_out_id`) `nanoclaw chat` remembers to show each reply once.
pub const RECENT_REPLY_IDS: usize = 1_024;
/// Environment variable of the testing knob: `0` makes the CLI channel non-idempotent.
pub const IDEMPOTENT_ENV: &str = "NANOCLAW_CLI_IDEMPOTENT";
/// File name of the reply store, in the directory of the socket.
pub const REPLY_STORE_FILE: &str = "cli-replies.db";
/// Stored replies read per query while a connection catches up.
const REPLAY_PAGE: usize = 64;

/// A frame from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// A chat message.
    Message {
        /// Client-chosen message id (the dedupe key): 1–128 of `[A-Za-z0-9._:-]`.
        id: String,
        /// The text, non-empty.
        text: String,
        /// The chat (default `local`, the owner's DM): 1–128 of `[A-Za-z0-9._-]`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat: Option<String>,
        /// The thread in the chat: 1–128 of `[A-Za-z0-9._-]`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<String>,
        /// The sender's handle (default `local`, the owner; becomes user `cli:<handle>`): 1–128
        /// of `[A-Za-z0-9._-]`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
        /// The sender's display name: at most 128 characters, no control characters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender_name: Option<String>,
        /// The bot is mentioned (a DM always counts as a mention).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mention: Option<bool>,
        /// The chat is a group chat (default false: a DM).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_group: Option<bool>,
    },
    /// The client has shown the reply with this key: do not send it again.
    Ack {
        /// The reply's `message_out_id`.
        message_out_id: String,
    },
    /// A click on an option of a `choice` card (the CLI's button): its `callback`, as the card
    /// gave it. The service answers with a `decided` frame.
    Decision {
        /// The option's callback data.
        callback: String,
        /// The chat the card is in (default `local`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat: Option<String>,
        /// Who clicks (default `local`, the owner; becomes user `cli:<handle>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
    },
}

/// The `type` of every [`ClientFrame`] (a test checks it against the enum).
pub const CLIENT_FRAME_TYPES: &[&str] = &["message", "ack", "decision"];

/// A frame to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The message is committed (and routed).
    Accepted {
        /// The client's message id.
        id: String,
        /// It was a repeat of an earlier message.
        duplicate: bool,
    },
    /// A reply from the agent.
    Reply {
        /// The text.
        text: String,
        /// The client message id it answers, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_reply_to: Option<String>,
        /// The outbound row id: a reply whose key was seen before is a repeat, not to be shown
        /// again, and the key a client acks. Absent from a non-idempotent channel and from older
        /// services.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_out_id: Option<String>,
        /// The chat it goes to (absent: `local`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat: Option<String>,
        /// The thread it goes to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<String>,
    },
    /// Files from the agent: names and sizes (the bytes stay on the host).
    File {
        /// The caption.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// The files.
        files: Vec<FileInfo>,
        /// As in `reply`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_reply_to: Option<String>,
        /// As in `reply`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_out_id: Option<String>,
        /// The chat it goes to (absent: `local`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat: Option<String>,
        /// The thread it goes to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<String>,
    },
    /// A card with link buttons.
    Card {
        /// The title.
        title: String,
        /// The text.
        text: String,
        /// The link buttons.
        #[serde(default)]
        buttons: Vec<CardLink>,
        /// As in `reply`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_reply_to: Option<String>,
        /// As in `reply`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_out_id: Option<String>,
        /// The chat it goes to (absent: `local`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat: Option<String>,
        /// The thread it goes to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<String>,
    },
    /// A card asking for a decision (an approval, an agent's question): its options numbered,
    /// each with the callback a `decision` frame sends back; or answered by a reply as
    /// `reply_hint` says.
    Choice {
        /// The approval (or question) id.
        approval_id: String,
        /// The title.
        title: String,
        /// The body.
        text: String,
        /// The options, numbered from 1.
        options: Vec<ChoiceInfo>,
        /// How to answer by a reply.
        reply_hint: String,
        /// As in `reply`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_out_id: Option<String>,
        /// The chat it goes to (absent: `local`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat: Option<String>,
        /// The thread it goes to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<String>,
    },
    /// The answer to this connection's `decision` frame (one line: "approved …", "not allowed:
    /// …", "… was already approved by …"). Live, never kept.
    Decided {
        /// The callback of the decision.
        callback: String,
        /// The answer.
        text: String,
    },
    /// A new text for an earlier reply.
    Edit {
        /// The platform message id the channel gave the reply (`cli-out-<its key>`).
        platform_message_id: String,
        /// The new text.
        text: String,
        /// As in `reply`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_reply_to: Option<String>,
        /// As in `reply`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_out_id: Option<String>,
        /// The chat it goes to (absent: `local`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat: Option<String>,
        /// The thread it goes to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<String>,
    },
    /// A reaction to a message (a client message id, or a reply's `cli-out-<key>`).
    Reaction {
        /// The message reacted to.
        platform_message_id: String,
        /// The emoji.
        emoji: String,
        /// As in `reply`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_reply_to: Option<String>,
        /// As in `reply`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_out_id: Option<String>,
        /// The chat it goes to (absent: `local`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat: Option<String>,
        /// The thread it goes to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<String>,
    },
    /// The agent is working (a typing indicator), running `tool` when given.
    Working {
        /// The tool being run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tool: Option<String>,
    },
    /// The agent finished with a message.
    Done {
        /// The client's message id.
        id: String,
    },
    /// A message will not be answered.
    Failed {
        /// The client's message id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The client's last frame was rejected.
    Error {
        /// What was wrong, one line.
        message: String,
        /// The connection closes after this frame; older services sent no field and always
        /// closed.
        #[serde(default = "always")]
        fatal: bool,
    },
}

fn always() -> bool {
    true
}

/// One file of a `file` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// One option of a `choice` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChoiceInfo {
    /// Its number, from 1.
    pub number: usize,
    /// The label.
    pub label: String,
    /// What a `decision` frame sends to pick it.
    pub callback: String,
}

/// A link button of a `card` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardLink {
    /// The label.
    pub label: String,
    /// The URL.
    pub url: String,
}

impl ServerFrame {
    /// The key of a kept frame (`reply`, `file`, `card`, `edit`, `reaction`), which a client acks
    /// and shows once; `None` for live frames and keyless ones.
    pub fn message_out_id(&self) -> Option<&str> {
        match self {
            ServerFrame::Reply { message_out_id, .. }
            | ServerFrame::File { message_out_id, .. }
            | ServerFrame::Card { message_out_id, .. }
            | ServerFrame::Choice { message_out_id, .. }
            | ServerFrame::Edit { message_out_id, .. }
            | ServerFrame::Reaction { message_out_id, .. } => message_out_id.as_deref(),
            _ => None,
        }
    }

    /// The chat of a kept frame (`local` when absent: older services had one chat); `local` for
    /// the others.
    pub fn chat(&self) -> &str {
        let chat = match self {
            ServerFrame::Reply { chat, .. }
            | ServerFrame::File { chat, .. }
            | ServerFrame::Card { chat, .. }
            | ServerFrame::Choice { chat, .. }
            | ServerFrame::Edit { chat, .. }
            | ServerFrame::Reaction { chat, .. } => chat.as_deref(),
            _ => None,
        };
        chat.unwrap_or(CLI_PLATFORM_ID)
    }

    /// The thread of a kept frame, if any.
    pub fn thread(&self) -> Option<&str> {
        match self {
            ServerFrame::Reply { thread, .. }
            | ServerFrame::File { thread, .. }
            | ServerFrame::Card { thread, .. }
            | ServerFrame::Choice { thread, .. }
            | ServerFrame::Edit { thread, .. }
            | ServerFrame::Reaction { thread, .. } => thread.as_deref(),
            _ => None,
        }
    }

    /// The client message id a kept frame answers, when known.
    pub fn in_reply_to(&self) -> Option<&str> {
        match self {
            ServerFrame::Reply { in_reply_to, .. }
            | ServerFrame::File { in_reply_to, .. }
            | ServerFrame::Card { in_reply_to, .. }
            | ServerFrame::Edit { in_reply_to, .. }
            | ServerFrame::Reaction { in_reply_to, .. } => in_reply_to.as_deref(),
            _ => None,
        }
    }

    /// The lines a chat prints for a kept frame (`None` for the others): a reply's text;
    /// `[file <name> (<N> bytes)]` per file after the caption; `[card] <title> / <text> /
    /// <label>: <url>`; a choice card as `[<id>] <title>`, its text, `  <n>. <label>` per option
    /// and the reply hint; `[edited <platform message id>] <text>`; `[reaction <emoji> on <id>]`.
    pub fn shown_text(&self) -> Option<String> {
        Some(match self {
            ServerFrame::Reply { text, .. } => text.clone(),
            ServerFrame::File { text, files, .. } => {
                let mut lines: Vec<String> = text.iter().cloned().collect();
                lines.extend(files.iter().map(|f| format!("[file {} ({} bytes)]", f.name, f.bytes)));
                lines.join("\n")
            }
            ServerFrame::Card { title, text, buttons, .. } => {
                let mut parts = vec![format!("[card] {title}"), text.clone()];
                parts.extend(buttons.iter().map(|b| format!("{}: {}", b.label, b.url)));
                parts.join(" / ")
            }
            ServerFrame::Choice { approval_id, title, text, options, reply_hint, .. } => {
                let mut lines = vec![format!("[{approval_id}] {title}"), text.clone()];
                lines.extend(options.iter().map(|o| format!("  {}. {}", o.number, o.label)));
                lines.push(reply_hint.clone());
                lines.join("\n")
            }
            ServerFrame::Edit { platform_message_id, text, .. } => {
                format!("[edited {platform_message_id}] {text}")
            }
            ServerFrame::Reaction { platform_message_id, emoji, .. } => {
                format!("[reaction {emoji} on {platform_message_id}]")
            }
            _ => return None,
        })
    }
}

/// The `type` of every [`ServerFrame`] (a test checks it against the enum).
pub const SERVER_FRAME_TYPES: &[&str] = &[
    "accepted", "reply", "file", "card", "choice", "decided", "edit", "reaction", "working", "done",
    "failed", "error",
];

/// A line read as a frame of a known type, or found to be of a type this build does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<F> {
    /// A frame.
    Frame(F),
    /// An object whose `type` is none of the known ones (from a newer peer).
    UnknownType(String),
}

/// Reads `line` as a frame `F` whose known types are `known`.
///
/// Errors when the line is not a JSON object with a string `type`, or is of a known type but
/// does not fit it (missing, wrong or — for client frames — unknown fields).
pub fn parse_frame<F: DeserializeOwned>(line: &str, known: &[&str]) -> Result<Parsed<F>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: String,
    }
    match serde_json::from_str::<F>(line) {
        Ok(frame) => Ok(Parsed::Frame(frame)),
        Err(e) => match serde_json::from_str::<Kind>(line) {
            Ok(Kind { kind }) if !known.contains(&kind.as_str()) => Ok(Parsed::UnknownType(kind)),
            _ => Err(e),
        },
    }
}

/// A bounded set of recently seen ids: it remembers the last `capacity` and forgets the oldest.
#[derive(Debug)]
pub struct RecentIds {
    order: VecDeque<String>,
    seen: HashSet<String>,
    capacity: usize,
}

impl RecentIds {
    /// An empty set remembering at most `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self { order: VecDeque::new(), seen: HashSet::new(), capacity: capacity.max(1) }
    }

    /// Records `id`; true when it is new (not among the remembered ones).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.order.push_back(id.to_string());
        self.seen.insert(id.to_string());
        true
    }
}

/// A frame for one connection other than a stored reply.
struct Live {
    frame: ServerFrame,
    /// The reply store's head when the frame was queued: every reply up to it is written first.
    after: u64,
}

/// A connected client, as the channel reaches it.
struct ClientSlot {
    frames: mpsc::Sender<Live>,
    /// Cancelled to disconnect it (it does not keep up).
    kick: CancellationToken,
}

#[derive(Default)]
struct Inner {
    clients: HashMap<u64, ClientSlot>,
    /// Non-idempotent mode: replies delivered while no client was connected, for the next one.
    backlog: VecDeque<ServerFrame>,
    next_client: u64,
}

impl Inner {
    /// Queues `frame` for every client; a client whose queue is full is disconnected rather than
    /// stalling delivery. With no client, `keep_if_nobody` keeps it in the backlog.
    fn broadcast(&mut self, frame: ServerFrame, after: u64, keep_if_nobody: bool) {
        if self.clients.is_empty() {
            if keep_if_nobody {
                if self.backlog.len() == BACKLOG {
                    self.backlog.pop_front();
                }
                self.backlog.push_back(frame);
            }
            return;
        }
        self.clients.retain(|id, client| {
            match client.frames.try_send(Live { frame: frame.clone(), after }) {
                Ok(()) => true,
                Err(e) => {
                    if matches!(e, mpsc::error::TrySendError::Full(_)) {
                        warn!(
                            client = id,
                            limit = CLIENT_QUEUE,
                            "cli client does not read its frames; disconnected"
                        );
                    }
                    client.kick.cancel();
                    false
                }
            }
        });
    }
}

/// The CLI channel adapter.
#[derive(Clone)]
pub struct CliChannel {
    path: PathBuf,
    idempotent: bool,
    inner: Arc<Mutex<Inner>>,
    /// The reply store (idempotent mode), opened by the first `start` or `deliver` and kept
    /// across runs.
    store: Arc<OnceCell<ReplyStore>>,
}

impl CliChannel {
    /// A CLI channel serving `path` (normally `data/cli.sock`), keeping replies in
    /// [`REPLY_STORE_FILE`] beside it. Idempotent unless the testing knob [`IDEMPOTENT_ENV`] is
    /// `0`.
    pub fn new(path: PathBuf) -> Self {
        let idempotent = std::env::var(IDEMPOTENT_ENV).map(|v| v.trim() != "0").unwrap_or(true);
        Self { path, idempotent, inner: Default::default(), store: Default::default() }
    }

    /// The same channel, idempotent or not (what [`IDEMPOTENT_ENV`] sets, for tests in-process).
    pub fn with_idempotent_sends(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// The reply store, opened on first use; `None` in non-idempotent mode.
    async fn store(&self) -> Result<Option<ReplyStore>, ReplyStoreError> {
        if !self.idempotent {
            return Ok(None);
        }
        let path = self.path.with_file_name(REPLY_STORE_FILE);
        self.store.get_or_try_init(|| ReplyStore::open(path)).await.map(|s| Some(s.clone()))
    }

    /// The reply store's head, 0 without a store: what a live frame queued now must follow.
    fn head(&self) -> u64 {
        self.store.get().map_or(0, ReplyStore::head)
    }

    fn broadcast(&self, frame: ServerFrame, keep_if_nobody: bool) {
        let after = self.head();
        self.inner.lock().broadcast(frame, after, keep_if_nobody);
    }

    /// Keeps a frame for the clients under `key` (idempotent mode: committed to the reply store,
    /// once per key; otherwise broadcast, or backlogged while nobody is connected). Returns the
    /// platform message id of the frame, `cli-out-<key>`. Errors: see [`CliChannel::deliver`].
    async fn keep(
        &self,
        platform_id: &str,
        key: &str,
        frame: ServerFrame,
    ) -> Result<Option<String>, DeliveryError> {
        if !valid_name(platform_id) {
            return Err(DeliveryError::rejected(format!("the CLI has no chat {platform_id:?}")));
        }
        let platform_message_id = format!("cli-out-{key}");
        let Some(store) = self.store().await.map_err(|e| DeliveryError::transient(e.to_string()))? else {
            self.broadcast(frame, true);
            return Ok(Some(platform_message_id));
        };
        let line =
            serde_json::to_string(&frame).map_err(|e| DeliveryError::rejected(format!("frame: {e}")))?;
        match store.put(key.to_string(), platform_id.to_string(), line).await {
            Ok(Put::New(seq)) => debug!(row = %key, seq, "cli frame stored"),
            Ok(Put::Known) => debug!(row = %key, "cli frame stored before; not sending it again"),
            Err(e @ ReplyStoreError::Closed { .. }) => {
                return Err(DeliveryError::OutcomeUnknown { message: e.to_string() });
            }
            Err(e) => return Err(DeliveryError::transient(e.to_string())),
        }
        Ok(Some(platform_message_id))
    }
}

/// One connected client's entry in the channel's client list, removed when the connection's task
/// ends or is aborted.
struct ClientEntry {
    inner: Arc<Mutex<Inner>>,
    id: u64,
}

impl Drop for ClientEntry {
    fn drop(&mut self) {
        self.inner.lock().clients.remove(&self.id);
    }
}

/// The socket file of one run: removed on drop if it is still the one this run bound (a later
/// run's socket at the same path is left alone).
struct SocketFile {
    path: PathBuf,
    /// (device, inode) of the bound socket.
    identity: Option<(u64, u64)>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let current = std::fs::symlink_metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
        if current.is_some() && current == self.identity {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What one run of the CLI channel holds. Field order is drop order: the file goes first, so a
/// restart finds the path free even before the aborted accept loop has closed its listener.
struct CliRun {
    _socket: SocketFile,
    /// The accept loop; it owns the listener and, in a `JoinSet`, every connection's task.
    _accept: AbortOnDropHandle<()>,
}

/// A chat, thread or sender handle of a `message` frame: 1–128 of `[A-Za-z0-9._-]`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks the addressing fields of a `message` frame; the error names the field.
fn check_addressing(
    chat: Option<&str>,
    thread: Option<&str>,
    sender: Option<&str>,
    sender_name: Option<&str>,
) -> Result<(), String> {
    for (field, value) in [("chat", chat), ("thread", thread), ("sender", sender)] {
        if let Some(v) = value
            && !valid_name(v)
        {
            let shown: String = v.chars().take(40).flat_map(char::escape_default).collect();
            return Err(format!(
                "invalid frame: {field} must be 1-128 of [A-Za-z0-9._-] (got {} bytes: \"{shown}\")",
                v.len()
            ));
        }
    }
    if let Some(name) = sender_name
        && (name.chars().count() > 128 || name.chars().any(char::is_control))
    {
        return Err(
            "invalid frame: sender_name must be at most 128 characters without control characters".into()
        );
    }
    Ok(())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Writes the stored replies waiting with `sent_up_to < seq <= up_to`, in order, and advances
/// `sent_up_to`. Errors (logged) when the store or the connection failed.
async fn send_stored(
    w: &mut FramedWrite<OwnedWriteHalf, LinesCodec>,
    store: &ReplyStore,
    sent_up_to: &mut u64,
    up_to: u64,
    live_from: u64,
) -> Result<(), ()> {
    while *sent_up_to < up_to {
        let page = store.waiting(*sent_up_to, up_to, live_from, REPLAY_PAGE).await.map_err(|e| {
            warn!(error = %e, "cli replies unreadable; closing the connection");
        })?;
        for reply in &page {
            w.send(reply.frame.as_str()).await.map_err(|_| ())?;
        }
        *sent_up_to = match page.last() {
            Some(last) if page.len() == REPLAY_PAGE => last.seq,
            _ => up_to,
        };
    }
    Ok(())
}

/// The writing side of a connection: every stored reply waiting (first those of before the
/// connection, then each new one), and the live frames, each after the replies committed before
/// it was queued. Ends when the live queue closes, at a fatal error frame, on `kick`, or when
/// the connection or the store fails.
async fn write_frames(
    write: OwnedWriteHalf,
    mut live: mpsc::Receiver<Live>,
    store: Option<ReplyStore>,
    kick: CancellationToken,
) {
    let mut w = FramedWrite::new(write, LinesCodec::new());
    let mut head = store.as_ref().map(ReplyStore::subscribe);
    let mut sent_up_to = 0;
    // Replies committed from now on reach this connection even if another client acks them.
    let live_from = store.as_ref().map_or(0, ReplyStore::head);
    loop {
        if let (Some(store), Some(head)) = (&store, &mut head) {
            let up_to = *head.borrow_and_update();
            if send_stored(&mut w, store, &mut sent_up_to, up_to, live_from).await.is_err() {
                return;
            }
        }
        tokio::select! {
            biased;
            _ = kick.cancelled() => return,
            next = live.recv() => {
                let Some(Live { frame, after }) = next else { return };
                if let Some(store) = &store
                    && send_stored(&mut w, store, &mut sent_up_to, after, live_from).await.is_err()
                {
                    return;
                }
                let last = matches!(frame, ServerFrame::Error { fatal: true, .. });
                if w.send(serde_json::to_string(&frame).unwrap_or_default()).await.is_err() || last {
                    return;
                }
            }
            changed = async {
                match head.as_mut() {
                    Some(head) => head.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if !changed {
                    warn!("cli reply store closed; closing the connection");
                    return;
                }
            }
        }
    }
}

async fn serve_connection(
    stream: UnixStream,
    channel: CliChannel,
    sink: InboundSink,
    store: Option<ReplyStore>,
) {
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Live>(CLIENT_QUEUE);
    let kick = CancellationToken::new();
    let client = {
        let mut inner = channel.inner.lock();
        if inner.clients.len() >= MAX_CLIENTS {
            None
        } else {
            inner.next_client += 1;
            let id = inner.next_client;
            for frame in inner.backlog.drain(..) {
                let _ = tx.try_send(Live { frame, after: 0 });
            }
            inner.clients.insert(id, ClientSlot { frames: tx.clone(), kick: kick.clone() });
            Some(ClientEntry { inner: channel.inner.clone(), id })
        }
    };
    let Some(client) = client else {
        let mut w = FramedWrite::new(write, LinesCodec::new());
        let frame =
            ServerFrame::Error { message: format!("too many clients (limit {MAX_CLIENTS})"), fatal: true };
        let _ = w.send(serde_json::to_string(&frame).unwrap_or_default()).await;
        return;
    };
    let writer = AbortOnDropHandle::new(tokio::spawn(write_frames(write, rx, store.clone(), kick.clone())));
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_FRAME_BYTES));
    // Frames this connection queues for itself wait (bounded) rather than being dropped.
    let answer = |frame: ServerFrame| {
        let live = Live { frame, after: channel.head() };
        let tx = tx.clone();
        async move { tx.send(live).await.is_ok() }
    };
    let fatal = |message: String| ServerFrame::Error { message, fatal: true };
    loop {
        let line = tokio::select! {
            _ = kick.cancelled() => break,
            line = lines.next() => match line {
                Some(line) => line,
                None => break,
            },
        };
        let frame = match line {
            Ok(l) if l.trim().is_empty() => continue,
            Ok(l) => match parse_frame::<ClientFrame>(&l, CLIENT_FRAME_TYPES) {
                Ok(Parsed::Frame(f)) => f,
                Ok(Parsed::UnknownType(kind)) => {
                    let message =
                        format!("unknown frame type {kind:?} ignored (known: {CLIENT_FRAME_TYPES:?})");
                    if !answer(ServerFrame::Error { message, fatal: false }).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    let _ = answer(fatal(format!("invalid frame: {e}"))).await;
                    break;
                }
            },
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                let _ = answer(fatal(format!("frame longer than {MAX_FRAME_BYTES} bytes"))).await;
                break;
            }
            Err(e) => {
                let _ = answer(fatal(format!("unreadable frame: {e}"))).await;
                break;
            }
        };
        let (id, text, chat, thread, sender, sender_name, mention, is_group) = match frame {
            ClientFrame::Message { id, text, chat, thread, sender, sender_name, mention, is_group } => {
                (id, text, chat, thread, sender, sender_name, mention, is_group)
            }
            ClientFrame::Ack { message_out_id } => {
                if let Some(store) = &store
                    && let Err(e) = store.ack(message_out_id).await
                {
                    warn!(error = %e, "cli reply ack not recorded");
                }
                continue;
            }
            ClientFrame::Decision { callback, chat, sender } => {
                if let Err(message) = check_addressing(chat.as_deref(), None, sender.as_deref(), None) {
                    let _ = answer(fatal(message)).await;
                    break;
                }
                if callback.is_empty() || callback.len() > MAX_CALLBACK_BYTES {
                    let _ = answer(fatal(format!(
                        "invalid frame: callback must be 1-{MAX_CALLBACK_BYTES} bytes"
                    )))
                    .await;
                    break;
                }
                let click = Click {
                    platform_id: chat.unwrap_or_else(|| CLI_PLATFORM_ID.to_string()),
                    user_id: sender.map_or_else(|| CLI_OWNER_USER_ID.to_string(), |s| format!("cli:{s}")),
                    callback: callback.clone(),
                };
                let text = match sink.click(click).await {
                    Ok(text) => text,
                    Err(e) => format!("not decided: {e}"),
                };
                if !answer(ServerFrame::Decided { callback, text }).await {
                    break;
                }
                continue;
            }
        };
        if !valid_id(&id) {
            let _ = answer(fatal("invalid frame: id must be 1-128 of [A-Za-z0-9._:-]".into())).await;
            break;
        }
        if text.trim().is_empty() {
            let _ = answer(fatal("invalid frame: text is empty".into())).await;
            break;
        }
        if let Err(message) =
            check_addressing(chat.as_deref(), thread.as_deref(), sender.as_deref(), sender_name.as_deref())
        {
            let _ = answer(fatal(message)).await;
            break;
        }
        // The default is the owner writing in their own DM with the service.
        let chat = chat.unwrap_or_else(|| CLI_PLATFORM_ID.to_string());
        let owner = sender.is_none();
        let event = InboundEvent {
            channel_type: "cli".into(),
            platform_id: chat.clone(),
            thread_id: thread,
            platform_message_id: id.clone(),
            sender_id: Some(sender.map_or_else(|| CLI_OWNER_USER_ID.to_string(), |s| format!("cli:{s}"))),
            sender_name: sender_name.or_else(|| owner.then(|| "Local".to_string())),
            text,
            is_mention: mention.unwrap_or(false),
            is_group: is_group.unwrap_or(false),
            chat_name: Some(chat),
        };
        // `hop:` lines time the stages of one message (`benches/hops.rs`).
        debug!(id = %id, "hop: cli message received");
        let frame = match sink.submit(event).await {
            Ok(ack) => match ack.dropped {
                Some(reason) => {
                    ServerFrame::Failed { id, reason: format!("not delivered to any agent: {reason}") }
                }
                None => ServerFrame::Accepted { id, duplicate: ack.duplicate },
            },
            Err(e) => ServerFrame::Failed { id, reason: e.to_string() },
        };
        if !answer(frame).await {
            break;
        }
    }
    // EOF in the middle of a line surfaces above as an invalid (truncated) frame.
    let client_id = client.id;
    drop(client);
    drop(tx);
    // The writer flushes what is queued (a last error frame) and ends; a kicked client is not
    // waited for.
    if !kick.is_cancelled() {
        let _ = writer.await;
    }
    debug!(client = client_id, "cli client disconnected");
}

/// Removes a stale socket file; errors when a live service still answers on it.
fn claim_socket(path: &Path) -> Result<(), ChannelError> {
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ChannelError(format!("another nanoclaw service is serving {}", path.display())));
        }
        std::fs::remove_file(path).map_err(|e| ChannelError(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Claims `path` and binds a non-blocking listener on it, mode 0600. Blocking: file-system calls.
fn bind_socket(path: PathBuf) -> Result<(std::os::unix::net::UnixListener, SocketFile), ChannelError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    claim_socket(&path)?;
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .map_err(|e| ChannelError(format!("{}: bind: {e}", path.display())))?;
    let identity = std::fs::symlink_metadata(&path).ok().map(|m| (m.dev(), m.ino()));
    // From here on the file is this run's: an error below removes it again.
    let socket = SocketFile { path, identity };
    std::fs::set_permissions(&socket.path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ChannelError(format!("{}: chmod: {e}", socket.path.display())))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ChannelError(format!("{}: non-blocking: {e}", socket.path.display())))?;
    Ok((listener, socket))
}

#[async_trait]
impl ChannelAdapter for CliChannel {
    fn channel_type(&self) -> &str {
        "cli"
    }

    /// Threads are part of the local simulator (`thread` in a `message` frame).
    fn supports_threads(&self) -> bool {
        true
    }

    fn idempotent_sends(&self) -> bool {
        self.idempotent
    }

    async fn start(&self, inbound: InboundSink) -> Result<AdapterGuard, ChannelError> {
        // The store first: no client is served before its waiting replies can be read.
        let store = self.store().await.map_err(|e| ChannelError(e.to_string()))?;
        let path = self.path.clone();
        // File-system work (probe, unlink, bind, chmod) off the executor.
        let (listener, socket) = tokio::task::spawn_blocking(move || bind_socket(path))
            .await
            .map_err(|e| ChannelError(format!("cli socket: bind task: {e}")))??;
        let listener = UnixListener::from_std(listener)
            .map_err(|e| ChannelError(format!("{}: listen: {e}", self.path.display())))?;
        let channel = self.clone();
        let accept = AbortOnDropHandle::new(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            connections.spawn(serve_connection(stream, channel.clone(), inbound.clone(), store.clone()));
                        }
                        Err(e) => {
                            warn!(error = %e, "cli socket accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    },
                    // Reaps finished connections so the set stays as large as the live ones.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        }));
        Ok(AdapterGuard::new(CliRun { _socket: socket, _accept: accept }))
    }

    /// Idempotent mode: `Ok` once the reply is committed to the reply store (or its key was
    /// there already); the connections send it from there. Errors: `NotSent` (retryable) when
    /// the store failed, `OutcomeUnknown` when its thread died with the commit in flight.
    async fn deliver(&self, message: &OutboundMessage) -> Result<Option<String>, DeliveryError> {
        let frame = ServerFrame::Reply {
            text: message.text.clone(),
            in_reply_to: message.in_reply_to.clone(),
            message_out_id: self.idempotent.then(|| message.message_out_id.clone()),
            chat: Some(message.platform_id.clone()),
            thread: message.thread_id.clone(),
        };
        self.keep(&message.platform_id, &message.message_out_id, frame).await
    }

    /// A `file` frame with names and sizes; the bytes are not sent to clients (a terminal chat
    /// has nowhere sensible to put them). Kept and acked like a reply.
    async fn deliver_files(
        &self,
        message: &OutboundMessage,
        files: &[OutboundFile],
    ) -> Result<Option<String>, DeliveryError> {
        let frame = ServerFrame::File {
            text: (!message.text.is_empty()).then(|| message.text.clone()),
            files: files
                .iter()
                .map(|f| FileInfo { name: f.name.clone(), bytes: f.bytes.len() as u64 })
                .collect(),
            in_reply_to: message.in_reply_to.clone(),
            message_out_id: self.idempotent.then(|| message.message_out_id.clone()),
            chat: Some(message.platform_id.clone()),
            thread: message.thread_id.clone(),
        };
        self.keep(&message.platform_id, &message.message_out_id, frame).await
    }

    /// A `card` frame, kept and acked like a reply.
    async fn deliver_card(
        &self,
        message: &OutboundMessage,
        card: &OutboundCard,
    ) -> Result<Option<String>, DeliveryError> {
        let frame = ServerFrame::Card {
            title: card.title.clone(),
            text: card.text.clone(),
            buttons: card
                .buttons
                .iter()
                .map(|b| CardLink { label: b.label.clone(), url: b.url.clone() })
                .collect(),
            in_reply_to: message.in_reply_to.clone(),
            message_out_id: self.idempotent.then(|| message.message_out_id.clone()),
            chat: Some(message.platform_id.clone()),
            thread: message.thread_id.clone(),
        };
        self.keep(&message.platform_id, &message.message_out_id, frame).await
    }

    /// The CLI's buttons are the `decision` frames a client sends back.
    fn supports_buttons(&self) -> bool {
        true
    }

    /// A `choice` frame, kept and acked like a reply.
    async fn deliver_choice(
        &self,
        message: &OutboundMessage,
        card: &ChoiceCard,
    ) -> Result<Option<String>, DeliveryError> {
        let frame = ServerFrame::Choice {
            approval_id: card.id.clone(),
            title: card.title.clone(),
            text: card.text.clone(),
            options: card
                .options
                .iter()
                .enumerate()
                .map(|(i, o)| ChoiceInfo {
                    number: i + 1,
                    label: o.label.clone(),
                    callback: o.callback.clone(),
                })
                .collect(),
            reply_hint: card.reply_hint.clone(),
            message_out_id: self.idempotent.then(|| message.message_out_id.clone()),
            chat: Some(message.platform_id.clone()),
            thread: message.thread_id.clone(),
        };
        self.keep(&message.platform_id, &message.message_out_id, frame).await
    }

    /// An `edit` frame naming the reply by the platform message id this channel gave it.
    async fn edit(&self, edit: &EditRequest) -> Result<(), DeliveryError> {
        let frame = ServerFrame::Edit {
            platform_message_id: edit.platform_message_id.clone(),
            text: edit.text.clone(),
            in_reply_to: edit.in_reply_to.clone(),
            message_out_id: self.idempotent.then(|| edit.message_out_id.clone()),
            chat: Some(edit.platform_id.clone()),
            thread: None,
        };
        self.keep(&edit.platform_id, &edit.message_out_id, frame).await.map(|_| ())
    }

    /// A `reaction` frame.
    async fn react(&self, reaction: &ReactionRequest) -> Result<(), DeliveryError> {
        let frame = ServerFrame::Reaction {
            platform_message_id: reaction.platform_message_id.clone(),
            emoji: reaction.emoji.clone(),
            in_reply_to: reaction.in_reply_to.clone(),
            message_out_id: self.idempotent.then(|| reaction.message_out_id.clone()),
            chat: Some(reaction.platform_id.clone()),
            thread: None,
        };
        self.keep(&reaction.platform_id, &reaction.message_out_id, frame).await.map(|_| ())
    }

    async fn notice(&self, notice: &Notice) {
        let frame = match notice {
            Notice::Processed { platform_message_id, .. } => {
                ServerFrame::Done { id: platform_message_id.clone() }
            }
            Notice::Failed { platform_message_id, reason, .. } => {
                ServerFrame::Failed { id: platform_message_id.clone(), reason: reason.clone() }
            }
            Notice::Working { tool, .. } => ServerFrame::Working { tool: tool.clone() },
        };
        self.broadcast(frame, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nanoclaw_actors::testing::{Failable, FakeRuntime};
    use std::time::Duration;

    fn socket_dir() -> tempfile::TempDir {
        // Unix socket paths are limited to 108 bytes: keep them short.
        tempfile::Builder::new().prefix("nc-cli").tempdir_in("/tmp").unwrap()
    }

    struct Client {
        frames: FramedRead<tokio::net::unix::OwnedReadHalf, LinesCodec>,
        out: FramedWrite<tokio::net::unix::OwnedWriteHalf, LinesCodec>,
    }

    impl Client {
        async fn connect(path: &Path) -> std::io::Result<Client> {
            let (read, write) = UnixStream::connect(path).await?.into_split();
            Ok(Client {
                frames: FramedRead::new(read, LinesCodec::new()),
                out: FramedWrite::new(write, LinesCodec::new()),
            })
        }

        async fn send_frame(&mut self, frame: &ClientFrame) {
            self.out.send(serde_json::to_string(frame).unwrap()).await.unwrap();
        }

        async fn send(&mut self, id: &str, text: &str) {
            self.send_frame(&crate::chat::Address::default().message(id.into(), text.into())).await;
        }

        async fn ack(&mut self, key: &str) {
            self.send_frame(&ClientFrame::Ack { message_out_id: key.into() }).await;
        }

        /// The next frame; `None` at the end of the stream. Fails the test after 10 s.
        async fn next(&mut self) -> Option<ServerFrame> {
            let line = tokio::time::timeout(Duration::from_secs(10), self.frames.next())
                .await
                .expect("a frame or the end of the stream within 10 s")?
                .ok()?;
            Some(serde_json::from_str(&line).unwrap())
        }

        /// The key of the next frame, which must be a reply.
        async fn next_reply_key(&mut self) -> String {
            match self.next().await {
                Some(ServerFrame::Reply { message_out_id: Some(key), .. }) => key,
                other => panic!("expected a reply with a key, got {other:?}"),
            }
        }
    }

    fn reply(key: &str) -> OutboundMessage {
        OutboundMessage {
            platform_id: CLI_PLATFORM_ID.into(),
            thread_id: None,
            text: format!("reply {key}"),
            in_reply_to: Some("m1".into()),
            message_out_id: key.into(),
        }
    }

    /// Polls `check` every 20 ms until it holds; fails with `what` after 20 s.
    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` clients are registered.
    async fn clients(channel: &CliChannel, n: usize) {
        eventually(&format!("{n} client(s) registered"), || channel.inner.lock().clients.len() == n).await;
    }

    #[test]
    fn recent_ids_remember_the_last_ones_only() {
        let mut recent = RecentIds::new(2);
        assert!(recent.insert("a") && recent.insert("b"));
        assert!(!recent.insert("a"), "a repeat is not new");
        assert!(recent.insert("c"), "c pushes out a");
        assert!(recent.insert("a"), "a was forgotten");
        assert!(!recent.insert("c"));
    }

    #[test]
    fn the_lists_of_frame_types_match_the_enums_and_unknown_types_are_told_apart() {
        let client = [
            ClientFrame::Message {
                id: "m".into(),
                text: "t".into(),
                chat: None,
                thread: None,
                sender: None,
                sender_name: None,
                mention: None,
                is_group: None,
            },
            ClientFrame::Ack { message_out_id: "k".into() },
            ClientFrame::Decision { callback: "nc:abcdef:0".into(), chat: None, sender: None },
        ];
        let server = [
            ServerFrame::Accepted { id: "m".into(), duplicate: false },
            ServerFrame::Reply {
                text: "t".into(),
                in_reply_to: None,
                message_out_id: None,
                chat: None,
                thread: None,
            },
            ServerFrame::File {
                text: None,
                files: vec![FileInfo { name: "a".into(), bytes: 1 }],
                in_reply_to: None,
                message_out_id: None,
                chat: None,
                thread: None,
            },
            ServerFrame::Card {
                title: "t".into(),
                text: "x".into(),
                buttons: vec![],
                in_reply_to: None,
                message_out_id: None,
                chat: None,
                thread: None,
            },
            ServerFrame::Choice {
                approval_id: "abcdef".into(),
                title: "t".into(),
                text: "x".into(),
                options: vec![],
                reply_hint: "h".into(),
                message_out_id: None,
                chat: None,
                thread: None,
            },
            ServerFrame::Decided { callback: "nc:abcdef:0".into(), text: "approved".into() },
            ServerFrame::Edit {
                platform_message_id: "p".into(),
                text: "t".into(),
                in_reply_to: None,
                message_out_id: None,
                chat: None,
                thread: None,
            },
            ServerFrame::Reaction {
                platform_message_id: "p".into(),
                emoji: "e".into(),
                in_reply_to: None,
                message_out_id: None,
                chat: None,
                thread: None,
            },
            ServerFrame::Working { tool: None },
            ServerFrame::Done { id: "m".into() },
            ServerFrame::Failed { id: "m".into(), reason: "r".into() },
            ServerFrame::Error { message: "e".into(), fatal: true },
        ];
        let kind = |v: serde_json::Value| v["type"].as_str().unwrap().to_string();
        let client: Vec<String> = client.iter().map(|f| kind(serde_json::to_value(f).unwrap())).collect();
        let server: Vec<String> = server.iter().map(|f| kind(serde_json::to_value(f).unwrap())).collect();
        assert_eq!(client, CLIENT_FRAME_TYPES);
        assert_eq!(server, SERVER_FRAME_TYPES);
        let parse = |line: &str| parse_frame::<ClientFrame>(line, CLIENT_FRAME_TYPES);
        assert_eq!(parse(r#"{"type":"typing","x":1}"#).unwrap(), Parsed::UnknownType("typing".into()));
        assert!(parse(r#"{"type":"message","id":"a"}"#).is_err(), "a known type must fit");
        assert!(parse(r#"{"type":"ack","message_out_id":"k","admin":true}"#).is_err(), "no smuggled fields");
        assert!(parse(r#"{"kind":"message"}"#).is_err() && parse("[1]").is_err());
        // An error frame of an older service has no `fatal`: it closed the connection.
        let old: ServerFrame = serde_json::from_str(r#"{"type":"error","message":"bad"}"#).unwrap();
        assert_eq!(old, ServerFrame::Error { message: "bad".into(), fatal: true });
    }

    #[tokio::test]
    async fn dropping_a_run_closes_its_socket_and_connections_and_a_new_run_binds_again() {
        let dir = socket_dir();
        let path = dir.path().join("cli.sock");
        let channel = CliChannel::new(path.clone()).with_idempotent_sends(true);
        let (sink, _receivers) = InboundSink::new(8);
        let run = channel.start(sink.clone()).await.unwrap();
        let mut old = Client::connect(&path).await.unwrap();
        // The accept loop registers the client; a reply reaches it.
        clients(&channel, 1).await;
        channel.deliver(&reply("o1")).await.unwrap();
        assert_eq!(old.next_reply_key().await, "o1");
        old.ack("o1").await;
        // The ack is fire-and-forget: wait until the channel committed it.
        let store = channel.store().await.unwrap().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !store.waiting(0, u64::MAX >> 1, u64::MAX >> 1, 10).await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for the ack");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A second start while the run lives is refused: the socket is in use.
        let err = channel.start(sink.clone()).await.unwrap_err();
        assert!(err.0.contains("another nanoclaw service"), "{err}");
        drop(run);
        assert!(!path.exists(), "the socket file goes with the run");
        assert!(old.next().await.is_none(), "the run's connections are closed");
        let _run = channel.start(sink).await.unwrap();
        let mut new = Client::connect(&path).await.unwrap();
        clients(&channel, 1).await;
        channel.deliver(&reply("o2")).await.unwrap();
        assert_eq!(new.next_reply_key().await, "o2", "o1 was acked: not sent again");
    }

    #[tokio::test]
    async fn a_repeated_key_is_sent_once_and_each_reply_carries_its_key() {
        let dir = socket_dir();
        let path = dir.path().join("cli.sock");
        let channel = CliChannel::new(path.clone()).with_idempotent_sends(true);
        assert!(channel.idempotent_sends());
        let (sink, _receivers) = InboundSink::new(8);
        let _run = channel.start(sink).await.unwrap();
        let mut client = Client::connect(&path).await.unwrap();
        clients(&channel, 1).await;
        let first = channel.deliver(&reply("k1")).await.unwrap();
        assert_eq!(
            channel.deliver(&reply("k1")).await.unwrap(),
            first,
            "a repeat answers like the first send"
        );
        channel.deliver(&reply("k2")).await.unwrap();
        assert_eq!(client.next_reply_key().await, "k1");
        assert_eq!(client.next_reply_key().await, "k2", "k1 once, then k2");
    }

    #[tokio::test]
    async fn a_reply_waits_for_an_ack_across_connections_and_restarts_and_comes_before_later_frames() {
        let dir = socket_dir();
        let path = dir.path().join("cli.sock");
        let (sink, _receivers) = InboundSink::new(8);
        let done = |id: &str| Notice::Processed {
            platform_id: CLI_PLATFORM_ID.into(),
            platform_message_id: id.into(),
        };
        {
            let channel = CliChannel::new(path.clone()).with_idempotent_sends(true);
            let _run = channel.start(sink.clone()).await.unwrap();
            // No client: kept.
            channel.deliver(&reply("w1")).await.unwrap();
            channel.deliver(&reply("w2")).await.unwrap();
            // A client that reads but does not ack (it crashed before showing them).
            let mut first = Client::connect(&path).await.unwrap();
            assert_eq!(first.next_reply_key().await, "w1");
            assert_eq!(first.next_reply_key().await, "w2");
            // The service restarts (a new channel on the same files).
        }
        let channel = CliChannel::new(path.clone()).with_idempotent_sends(true);
        let _run = channel.start(sink).await.unwrap();
        channel.deliver(&reply("w1")).await.unwrap(); // the outbox's re-send after the crash
        let mut two = [Client::connect(&path).await.unwrap(), Client::connect(&path).await.unwrap()];
        clients(&channel, 2).await;
        channel.deliver(&reply("w3")).await.unwrap();
        channel.notice(&done("m1")).await;
        for client in &mut two {
            // Waiting replies in order, each once, then the new one, then the notice after it.
            for key in ["w1", "w2", "w3"] {
                assert_eq!(client.next_reply_key().await, key);
            }
            assert_eq!(client.next().await, Some(ServerFrame::Done { id: "m1".into() }));
        }
        // One client acks w1 and w3: a later connection gets only w2.
        two[0].ack("w1").await;
        two[0].ack("w3").await;
        two[0].send_frame(&ClientFrame::Ack { message_out_id: "never-sent".into() }).await;
        let store = channel.store().await.unwrap().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while store.waiting(0, u64::MAX >> 1, u64::MAX >> 1, 10).await.unwrap().len() != 1 {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for the acks");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut later = Client::connect(&path).await.unwrap();
        assert_eq!(later.next_reply_key().await, "w2");
        channel.notice(&done("m2")).await;
        assert_eq!(later.next().await, Some(ServerFrame::Done { id: "m2".into() }), "nothing else");
    }

    #[tokio::test]
    async fn a_frame_of_an_unknown_type_gets_a_non_fatal_error_and_the_connection_stays() {
        let dir = socket_dir();
        let path = dir.path().join("cli.sock");
        let channel = CliChannel::new(path.clone()).with_idempotent_sends(true);
        let (sink, _receivers) = InboundSink::new(8);
        let _run = channel.start(sink).await.unwrap();
        let mut client = Client::connect(&path).await.unwrap();
        client.out.send(r#"{"type":"typing","chat":"local"}"#).await.unwrap();
        match client.next().await {
            Some(ServerFrame::Error { message, fatal: false }) => {
                assert!(message.contains("unknown frame type \"typing\""), "{message}");
                assert!(!message.contains('\n'), "{message}");
            }
            other => panic!("expected a non-fatal error, got {other:?}"),
        }
        channel.deliver(&reply("k1")).await.unwrap();
        assert_eq!(client.next_reply_key().await, "k1", "still connected");
        // A known type with a smuggled field is still fatal.
        client.out.send(r#"{"type":"ack","message_out_id":"k1","admin":true}"#).await.unwrap();
        assert!(matches!(client.next().await, Some(ServerFrame::Error { fatal: true, .. })));
        assert!(client.next().await.is_none(), "closed after a fatal error");
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_disconnected_and_its_replies_wait_for_its_next_connection() {
        let dir = socket_dir();
        let path = dir.path().join("cli.sock");
        let channel = CliChannel::new(path.clone()).with_idempotent_sends(true);
        let (sink, _receivers) = InboundSink::new(8);
        let _run = channel.start(sink).await.unwrap();
        let mut client = Client::connect(&path).await.unwrap();
        clients(&channel, 1).await;
        channel.deliver(&reply("k1")).await.unwrap();
        // Notices queue faster than the connection's writer runs: the queue bound is reached.
        let mut queued = 0;
        while channel.inner.lock().clients.len() == 1 {
            assert!(queued <= CLIENT_QUEUE, "{queued} notices queued and the client still registered");
            let id = format!("m{queued}");
            channel
                .notice(&Notice::Processed { platform_id: CLI_PLATFORM_ID.into(), platform_message_id: id })
                .await;
            queued += 1;
        }
        assert_eq!(queued, CLIENT_QUEUE + 1, "dropped at the first frame over the bound");
        // Whatever was written before, then the end of the stream.
        while client.next().await.is_some() {}
        let mut next = Client::connect(&path).await.unwrap();
        assert_eq!(next.next_reply_key().await, "k1", "not acked: sent again");
    }

    #[tokio::test]
    async fn a_non_idempotent_cli_channel_sends_repeats_without_keys() {
        let dir = socket_dir();
        let path = dir.path().join("cli.sock");
        let channel = CliChannel::new(path.clone()).with_idempotent_sends(false);
        assert!(!channel.idempotent_sends());
        let (sink, _receivers) = InboundSink::new(8);
        let _run = channel.start(sink).await.unwrap();
        let mut client = Client::connect(&path).await.unwrap();
        clients(&channel, 1).await;
        channel.deliver(&reply("k1")).await.unwrap();
        channel.deliver(&reply("k1")).await.unwrap();
        for _ in 0..2 {
            match client.next().await {
                Some(ServerFrame::Reply { message_out_id: None, .. }) => {}
                other => panic!("expected a reply without key, got {other:?}"),
            }
        }
        assert!(!dir.path().join(REPLY_STORE_FILE).exists(), "no store in non-idempotent mode");
    }

    #[test]
    fn reply_frames_without_a_key_still_parse_and_keys_are_left_out_when_absent() {
        let old: ServerFrame =
            serde_json::from_str(r#"{"type":"reply","text":"hi","in_reply_to":"m1"}"#).unwrap();
        assert_eq!(
            old,
            ServerFrame::Reply {
                text: "hi".into(),
                in_reply_to: Some("m1".into()),
                message_out_id: None,
                chat: None,
                thread: None
            }
        );
        let line = serde_json::to_string(&old).unwrap();
        assert!(!line.contains("message_out_id"), "{line}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_cli_channel_actor_releases_its_socket_and_its_restart_answers_again() {
        let dir = socket_dir();
        let data = dir.path().join("data");
        let path = data.join("cli.sock");
        let cli = Failable::new(CliChannel::new(path.clone()));
        let config = nanoclaw_actors::ServiceConfig::new(&data, "test-cli");
        let service = nanoclaw_actors::Service::start(
            config,
            Arc::new(FakeRuntime::idle()),
            vec![Arc::new(cli.clone())],
        )
        .await
        .unwrap();
        let accepted = |f: Option<ServerFrame>, id: &str| {
            assert_eq!(f, Some(ServerFrame::Accepted { id: id.into(), duplicate: false }));
        };
        // Channels start after `Service::start` returns: wait for the socket.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut client = loop {
            match Client::connect(&path).await {
                Ok(client) => break client,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "the socket never answered: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        client.send("before", "hello").await;
        accepted(client.next().await, "before");
        // The channel actor fails (a handler returns an error): ractor skips its post_stop.
        assert!(cli.fail("test: connection lost"));
        assert!(client.next().await.is_none(), "the failed run's connections close");
        let health = |s: &nanoclaw_actors::Service| {
            s.channel_health().into_iter().find(|h| h.account == "cli").unwrap()
        };
        eventually("the restarted channel connected", || {
            let h = health(&service);
            h.restarts == 1 && h.state == nanoclaw_actors::ports::channel::ChannelState::Connected
        })
        .await;
        let mut client = Client::connect(&path).await.unwrap();
        client.send("after", "hello again").await;
        accepted(client.next().await, "after");
        assert!(health(&service).last_error.unwrap().contains("test: connection lost"));
        service.shutdown(Duration::from_secs(20)).await;
        assert!(!path.exists(), "shutdown removes the socket");
    }
}
