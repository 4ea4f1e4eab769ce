//! The CLI channel: a Unix socket `data/cli.sock` (mode 0600) speaking JSON lines, used by
//! `nanoclaw chat` (DESIGN §9). It is one chat, `cli`/`local`, owned by the user `cli:local`.
//!
//! Client → service: `{"type":"message","id":"<client message id>","text":"…"}`.
//! Service → client: `{"type":"accepted","id":…,"duplicate":false}`, `{"type":"reply","text":…,
//! "in_reply_to":…}`, `{"type":"done","id":…}`, `{"type":"failed","id":…,"reason":…}`,
//! `{"type":"error","message":…}`.
//!
//! Bad input — not JSON, an unknown frame, a line over [`MAX_FRAME_BYTES`], a frame cut off by
//! the end of the stream — gets one `error` line naming the problem, and the connection is
//! closed; other connections and the service are unaffected. Replies delivered while no client is
//! connected are kept (at most [`BACKLOG`]) for the next one.

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use nanoclaw_actors::ports::channel::{
    ChannelAdapter, ChannelError, DeliveryError, InboundEvent, InboundSink, Notice, OutboundMessage,
};
use nanoclaw_actors::store::{CLI_OWNER_USER_ID, CLI_PLATFORM_ID};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};
use tracing::{debug, warn};

/// Largest frame (one line) accepted, in bytes.
pub const MAX_FRAME_BYTES: usize = 128 * 1024;
/// Replies kept for the next client while none is connected.
pub const BACKLOG: usize = 200;
/// Most simultaneous client connections.
pub const MAX_CLIENTS: usize = 64;

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
    },
}

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
    /// The last frame was rejected; the connection closes after this.
    Error {
        /// What was wrong.
        message: String,
    },
}

#[derive(Default)]
struct Inner {
    clients: HashMap<u64, mpsc::Sender<ServerFrame>>,
    backlog: VecDeque<ServerFrame>,
    next_client: u64,
    sent: u64,
    accept: Option<tokio::task::JoinHandle<()>>,
}

/// The CLI channel adapter.
#[derive(Clone)]
pub struct CliChannel {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

impl CliChannel {
    /// A CLI channel serving `path` (normally `data/cli.sock`).
    pub fn new(path: PathBuf) -> Self {
        Self { path, inner: Default::default() }
    }

    fn broadcast(&self, frame: ServerFrame, keep_if_nobody: bool) {
        let mut inner = self.inner.lock();
        if inner.clients.is_empty() {
            if keep_if_nobody {
                if inner.backlog.len() == BACKLOG {
                    inner.backlog.pop_front();
                }
                inner.backlog.push_back(frame);
            }
            return;
        }
        // A client that cannot keep up (full queue) is dropped rather than stalling delivery.
        inner.clients.retain(|_, tx| tx.try_send(frame.clone()).is_ok());
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

async fn serve_connection(stream: UnixStream, channel: CliChannel, sink: InboundSink) {
    let (read, write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<ServerFrame>(256);
    let client_id = {
        let mut inner = channel.inner.lock();
        if inner.clients.len() >= MAX_CLIENTS {
            None
        } else {
            inner.next_client += 1;
            let id = inner.next_client;
            for frame in inner.backlog.drain(..) {
                let _ = tx.try_send(frame);
            }
            inner.clients.insert(id, tx.clone());
            Some(id)
        }
    };
    let Some(client_id) = client_id else {
        let mut w = FramedWrite::new(write, LinesCodec::new());
        let frame = ServerFrame::Error { message: format!("too many clients (limit {MAX_CLIENTS})") };
        let _ = w.send(serde_json::to_string(&frame).unwrap_or_default()).await;
        return;
    };
    let writer = tokio::spawn(async move {
        let mut w = FramedWrite::new(write, LinesCodec::new());
        while let Some(frame) = rx.recv().await {
            let is_error = matches!(frame, ServerFrame::Error { .. });
            let line = serde_json::to_string(&frame).unwrap_or_default();
            if w.send(line).await.is_err() || is_error {
                break;
            }
        }
    });
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_FRAME_BYTES));
    let reject = |message: String| ServerFrame::Error { message };
    while let Some(line) = lines.next().await {
        let frame = match line {
            Ok(l) if l.trim().is_empty() => continue,
            Ok(l) => match serde_json::from_str::<ClientFrame>(&l) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(reject(format!("invalid frame: {e}"))).await;
                    break;
                }
            },
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                let _ = tx.send(reject(format!("frame longer than {MAX_FRAME_BYTES} bytes"))).await;
                break;
            }
            Err(e) => {
                let _ = tx.send(reject(format!("unreadable frame: {e}"))).await;
                break;
            }
        };
        let ClientFrame::Message { id, text } = frame;
        if !valid_id(&id) {
            let _ = tx.send(reject("invalid frame: id must be 1-128 of [A-Za-z0-9._:-]".into())).await;
            break;
        }
        if text.trim().is_empty() {
            let _ = tx.send(reject("invalid frame: text is empty".into())).await;
            break;
        }
        let event = InboundEvent {
            channel_type: "cli".into(),
            platform_id: CLI_PLATFORM_ID.into(),
            thread_id: None,
            platform_message_id: id.clone(),
            sender_id: Some(CLI_OWNER_USER_ID.into()),
            sender_name: Some("Local".into()),
            text,
            is_mention: true,
            is_group: false,
        };
        let frame = match sink.submit(event).await {
            Ok(ack) => match ack.dropped {
                Some(reason) => {
                    ServerFrame::Failed { id, reason: format!("not delivered to any agent: {reason}") }
                }
                None => ServerFrame::Accepted { id, duplicate: ack.duplicate },
            },
            Err(e) => ServerFrame::Failed { id, reason: e.to_string() },
        };
        if tx.send(frame).await.is_err() {
            break;
        }
    }
    // EOF in the middle of a line surfaces above as an invalid (truncated) frame.
    channel.inner.lock().clients.remove(&client_id);
    drop(tx);
    let _ = writer.await;
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

#[async_trait]
impl ChannelAdapter for CliChannel {
    fn channel_type(&self) -> &str {
        "cli"
    }

    fn supports_threads(&self) -> bool {
        false
    }

    async fn start(&self, inbound: InboundSink) -> Result<(), ChannelError> {
        claim_socket(&self.path)?;
        let listener = UnixListener::bind(&self.path)
            .map_err(|e| ChannelError(format!("{}: bind: {e}", self.path.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| ChannelError(format!("{}: chmod: {e}", self.path.display())))?;
        }
        let channel = self.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_connection(stream, channel.clone(), inbound.clone()));
                    }
                    Err(e) => {
                        warn!(error = %e, "cli socket accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        self.inner.lock().accept = Some(task);
        Ok(())
    }

    async fn stop(&self) {
        let mut inner = self.inner.lock();
        if let Some(t) = inner.accept.take() {
            t.abort();
        }
        inner.clients.clear();
        let _ = std::fs::remove_file(&self.path);
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Option<String>, DeliveryError> {
        if message.platform_id != CLI_PLATFORM_ID {
            return Err(DeliveryError {
                message: format!("the CLI has no chat {:?}", message.platform_id),
                retryable: false,
            });
        }
        self.broadcast(
            ServerFrame::Reply { text: message.text.clone(), in_reply_to: message.in_reply_to.clone() },
            true,
        );
        let mut inner = self.inner.lock();
        inner.sent += 1;
        Ok(Some(format!("cli-out-{}", inner.sent)))
    }

    async fn notice(&self, notice: &Notice) {
        let frame = match notice {
            Notice::Processed { platform_message_id, .. } => {
                ServerFrame::Done { id: platform_message_id.clone() }
            }
            Notice::Failed { platform_message_id, reason, .. } => {
                ServerFrame::Failed { id: platform_message_id.clone(), reason: reason.clone() }
            }
        };
        self.broadcast(frame, false);
    }
}
