//! The CLI channel: a Unix socket `data/cli.sock` (mode 0600) speaking JSON lines, used by
//! `nanoclaw chat` (DESIGN §9). It is one chat, `cli`/`local`, owned by the user `cli:local`; its
//! account is `cli`.
//!
//! Client → service: `{"type":"message","id":"<client message id>","text":"…"}`.
//!
//! Service → client:
//! - `{"type":"accepted","id":…,"duplicate":false}`: the message is committed;
//! - `{"type":"reply","text":…,"in_reply_to":…,"message_out_id":…}`: a reply. `in_reply_to` (the
//!   client message id it answers) and `message_out_id` (the outbound row id, the idempotency
//!   key) are left out when unknown; a client shows a reply whose `message_out_id` it has seen
//!   before only once (`nanoclaw chat` remembers the last [`RECENT_REPLY_IDS`]);
//! - `{"type":"done","id":…}`, `{"type":"failed","id":…,"reason":…}`, `{"type":"error","message":…}`.
//!
//! Clients ignore fields they do not know, so older clients read newer frames.
//!
//! Delivery is idempotent by key ([`ChannelAdapter::idempotent_sends`]): the channel does not
//! send a `message_out_id` it sent in the last [`RECENT_REPLY_IDS`] again, and every reply frame
//! carries its key so the client drops repeats this process could not see (a send repeated after
//! a service restart). Testing knob: `NANOCLAW_CLI_IDEMPOTENT=0` makes the channel declare itself
//! non-idempotent — no key in frames, no dedupe — to test the outbox's non-idempotent path.
//!
//! Bad input — not JSON, an unknown frame, a line over [`MAX_FRAME_BYTES`], a frame cut off by
//! the end of the stream — gets one `error` line naming the problem, and the connection is
//! closed; other connections and the service are unaffected. Replies delivered while no client is
//! connected are kept (at most [`BACKLOG`]) for the next one.
//!
//! One run (from `start` to the drop of its guard) owns the listener, the accept loop, every
//! connection's tasks and the socket file: dropping the guard — also when the channel actor
//! failed and skipped its `post_stop` — closes them and removes the file, so a restart binds
//! again.

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use nanoclaw_actors::ports::channel::{
    AdapterGuard, ChannelAdapter, ChannelError, DeliveryError, InboundEvent, InboundSink, Notice,
    OutboundMessage,
};
use nanoclaw_actors::store::{CLI_OWNER_USER_ID, CLI_PLATFORM_ID};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

/// Largest frame (one line) accepted, in bytes.
pub const MAX_FRAME_BYTES: usize = 128 * 1024;
/// Replies kept for the next client while none is connected.
pub const BACKLOG: usize = 200;
/// Most simultaneous client connections.
pub const MAX_CLIENTS: usize = 64;
/// Reply keys (`message_out_id`) remembered to drop repeats, by the channel and by `nanoclaw chat`.
pub const RECENT_REPLY_IDS: usize = 1_024;
/// Environment variable of the testing knob: `0` makes the CLI channel non-idempotent.
pub const IDEMPOTENT_ENV: &str = "NANOCLAW_CLI_IDEMPOTENT";

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
        /// The outbound row id: a reply whose key was seen before is a repeat, not to be shown
        /// again. Absent from a non-idempotent channel and from older services.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_out_id: Option<String>,
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

struct Inner {
    clients: HashMap<u64, mpsc::Sender<ServerFrame>>,
    backlog: VecDeque<ServerFrame>,
    next_client: u64,
    /// Reply keys sent recently (idempotent mode): a repeat is not sent again.
    sent: RecentIds,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            clients: HashMap::new(),
            backlog: VecDeque::new(),
            next_client: 0,
            sent: RecentIds::new(RECENT_REPLY_IDS),
        }
    }
}

impl Inner {
    fn broadcast(&mut self, frame: ServerFrame, keep_if_nobody: bool) {
        if self.clients.is_empty() {
            if keep_if_nobody {
                if self.backlog.len() == BACKLOG {
                    self.backlog.pop_front();
                }
                self.backlog.push_back(frame);
            }
            return;
        }
        // A client that cannot keep up (full queue) is dropped rather than stalling delivery.
        self.clients.retain(|_, tx| tx.try_send(frame.clone()).is_ok());
    }
}

/// The CLI channel adapter.
#[derive(Clone)]
pub struct CliChannel {
    path: PathBuf,
    idempotent: bool,
    inner: Arc<Mutex<Inner>>,
}

impl CliChannel {
    /// A CLI channel serving `path` (normally `data/cli.sock`). Idempotent unless the testing
    /// knob [`IDEMPOTENT_ENV`] is `0`.
    pub fn new(path: PathBuf) -> Self {
        let idempotent = std::env::var(IDEMPOTENT_ENV).map(|v| v.trim() != "0").unwrap_or(true);
        Self { path, idempotent, inner: Default::default() }
    }

    /// The same channel, idempotent or not (what [`IDEMPOTENT_ENV`] sets, for tests in-process).
    pub fn with_idempotent_sends(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    fn broadcast(&self, frame: ServerFrame, keep_if_nobody: bool) {
        self.inner.lock().broadcast(frame, keep_if_nobody);
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

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

async fn serve_connection(stream: UnixStream, channel: CliChannel, sink: InboundSink) {
    let (read, write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<ServerFrame>(256);
    let client = {
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
            Some(ClientEntry { inner: channel.inner.clone(), id })
        }
    };
    let Some(client) = client else {
        let mut w = FramedWrite::new(write, LinesCodec::new());
        let frame = ServerFrame::Error { message: format!("too many clients (limit {MAX_CLIENTS})") };
        let _ = w.send(serde_json::to_string(&frame).unwrap_or_default()).await;
        return;
    };
    let writer = AbortOnDropHandle::new(tokio::spawn(async move {
        let mut w = FramedWrite::new(write, LinesCodec::new());
        while let Some(frame) = rx.recv().await {
            let is_error = matches!(frame, ServerFrame::Error { .. });
            let line = serde_json::to_string(&frame).unwrap_or_default();
            if w.send(line).await.is_err() || is_error {
                break;
            }
        }
    }));
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
    let client_id = client.id;
    drop(client);
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

    fn supports_threads(&self) -> bool {
        false
    }

    fn idempotent_sends(&self) -> bool {
        self.idempotent
    }

    async fn start(&self, inbound: InboundSink) -> Result<AdapterGuard, ChannelError> {
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
                            connections.spawn(serve_connection(stream, channel.clone(), inbound.clone()));
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

    async fn deliver(&self, message: &OutboundMessage) -> Result<Option<String>, DeliveryError> {
        if message.platform_id != CLI_PLATFORM_ID {
            return Err(DeliveryError::rejected(format!("the CLI has no chat {:?}", message.platform_id)));
        }
        let platform_message_id = format!("cli-out-{}", message.message_out_id);
        let mut inner = self.inner.lock();
        if self.idempotent && !inner.sent.insert(&message.message_out_id) {
            debug!(row = %message.message_out_id, "cli reply sent before; not sending it again");
            return Ok(Some(platform_message_id));
        }
        inner.broadcast(
            ServerFrame::Reply {
                text: message.text.clone(),
                in_reply_to: message.in_reply_to.clone(),
                message_out_id: self.idempotent.then(|| message.message_out_id.clone()),
            },
            true,
        );
        Ok(Some(platform_message_id))
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

        async fn send(&mut self, id: &str, text: &str) {
            let frame = ClientFrame::Message { id: id.into(), text: text.into() };
            self.out.send(serde_json::to_string(&frame).unwrap()).await.unwrap();
        }

        /// The next frame; `None` at the end of the stream. Fails the test after 10 s.
        async fn next(&mut self) -> Option<ServerFrame> {
            let line = tokio::time::timeout(Duration::from_secs(10), self.frames.next())
                .await
                .expect("a frame or the end of the stream within 10 s")?
                .ok()?;
            Some(serde_json::from_str(&line).unwrap())
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

    #[test]
    fn recent_ids_remember_the_last_ones_only() {
        let mut recent = RecentIds::new(2);
        assert!(recent.insert("a") && recent.insert("b"));
        assert!(!recent.insert("a"), "a repeat is not new");
        assert!(recent.insert("c"), "c pushes out a");
        assert!(recent.insert("a"), "a was forgotten");
        assert!(!recent.insert("c"));
    }

    #[tokio::test]
    async fn dropping_a_run_closes_its_socket_and_connections_and_a_new_run_binds_again() {
        let dir = socket_dir();
        let path = dir.path().join("cli.sock");
        let channel = CliChannel::new(path.clone());
        let (sink, _submissions, _fail) = InboundSink::new(8);
        let run = channel.start(sink.clone()).await.unwrap();
        let mut old = Client::connect(&path).await.unwrap();
        // The accept loop registers the client; a reply reaches it.
        eventually("the client registered", || !channel.inner.lock().clients.is_empty()).await;
        channel.deliver(&reply("o1")).await.unwrap();
        assert!(matches!(old.next().await, Some(ServerFrame::Reply { .. })));
        // A second start while the run lives is refused: the socket is in use.
        let err = channel.start(sink.clone()).await.unwrap_err();
        assert!(err.0.contains("another nanoclaw service"), "{err}");
        drop(run);
        assert!(!path.exists(), "the socket file goes with the run");
        assert!(old.next().await.is_none(), "the run's connections are closed");
        let _run = channel.start(sink).await.unwrap();
        let mut new = Client::connect(&path).await.unwrap();
        eventually("the new client registered", || channel.inner.lock().clients.len() == 1).await;
        channel.deliver(&reply("o2")).await.unwrap();
        assert!(matches!(new.next().await, Some(ServerFrame::Reply { .. })));
    }

    #[tokio::test]
    async fn a_repeated_key_is_sent_once_and_each_reply_carries_its_key() {
        let dir = socket_dir();
        let path = dir.path().join("cli.sock");
        let channel = CliChannel::new(path.clone()).with_idempotent_sends(true);
        assert!(channel.idempotent_sends());
        let (sink, _submissions, _fail) = InboundSink::new(8);
        let _run = channel.start(sink).await.unwrap();
        let mut client = Client::connect(&path).await.unwrap();
        eventually("the client registered", || !channel.inner.lock().clients.is_empty()).await;
        let first = channel.deliver(&reply("k1")).await.unwrap();
        assert_eq!(
            channel.deliver(&reply("k1")).await.unwrap(),
            first,
            "a repeat answers like the first send"
        );
        channel.deliver(&reply("k2")).await.unwrap();
        let keys: Vec<Option<String>> = [client.next().await, client.next().await]
            .into_iter()
            .map(|f| match f {
                Some(ServerFrame::Reply { message_out_id, .. }) => message_out_id,
                other => panic!("expected a reply, got {other:?}"),
            })
            .collect();
        assert_eq!(keys, vec![Some("k1".to_string()), Some("k2".to_string())], "k1 once, then k2");
    }

    #[tokio::test]
    async fn a_non_idempotent_cli_channel_sends_repeats_without_keys() {
        let dir = socket_dir();
        let path = dir.path().join("cli.sock");
        let channel = CliChannel::new(path.clone()).with_idempotent_sends(false);
        assert!(!channel.idempotent_sends());
        let (sink, _submissions, _fail) = InboundSink::new(8);
        let _run = channel.start(sink).await.unwrap();
        let mut client = Client::connect(&path).await.unwrap();
        eventually("the client registered", || !channel.inner.lock().clients.is_empty()).await;
        channel.deliver(&reply("k1")).await.unwrap();
        channel.deliver(&reply("k1")).await.unwrap();
        for _ in 0..2 {
            match client.next().await {
                Some(ServerFrame::Reply { message_out_id: None, .. }) => {}
                other => panic!("expected a reply without key, got {other:?}"),
            }
        }
    }

    #[test]
    fn reply_frames_without_a_key_still_parse_and_keys_are_left_out_when_absent() {
        let old: ServerFrame =
            serde_json::from_str(r#"{"type":"reply","text":"hi","in_reply_to":"m1"}"#).unwrap();
        assert_eq!(
            old,
            ServerFrame::Reply { text: "hi".into(), in_reply_to: Some("m1".into()), message_out_id: None }
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
        let mut client = Client::connect(&path).await.unwrap();
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
