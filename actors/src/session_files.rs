//! The host's side of a session's files: folders and `inbound.db` (the host is its only writer).
//!
//! The untrusted `outbound.db` and `.heartbeat` are never opened here: they are read only through
//! [`crate::container_files`] (the one door for container files).
//!
//! Every function here blocks (SQLite, file system); the session actor runs them with
//! `spawn_blocking`. The host keeps one connection to a session's `inbound.db`, shared by the
//! clones of its [`SessionPaths`] (the session actor and its outbox): opening one costs a schema
//! read and several pragmas, and a message's path writes this file three times. It is reopened
//! when the file on disk is no longer the one it holds (replaced, removed) and after any error.
//! The container still opens its read-only connection afresh for every read (DESIGN §5): that
//! fresh open is what makes the host's writes visible through a VM's shared folder.

use nanoclaw_protocol::layout;
use nanoclaw_protocol::rows::{AckStatus, DeliveryStatus, Destination, SessionRouting, next_inbound_seq};
use nanoclaw_protocol::schema::{self, SchemaError};
use nanoclaw_protocol::time::{format_ts, now_ts};
use nanoclaw_protocol::validate::ValidAck;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors of session file operations. Display is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum SessionFileError {
    /// Opening a session DB failed.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A statement failed.
    #[error("{path}: {what}: {source}")]
    Sqlite {
        /// The DB file.
        path: String,
        /// The operation.
        what: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file-system operation failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The operation.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl SessionFileError {
    /// SQLite gave up waiting for a lock (after its busy timeout): on `inbound.db` only the
    /// container can hold one (a read transaction), so a busy host write means the container is
    /// stuck or hostile.
    pub fn is_busy(&self) -> bool {
        let source = match self {
            SessionFileError::Sqlite { source, .. } => source,
            SessionFileError::Schema(SchemaError::Sqlite { source, .. }) => source,
            _ => return false,
        };
        matches!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

fn sq<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(rusqlite::Error) -> SessionFileError + 'a {
    move |source| SessionFileError::Sqlite { path: path.display().to_string(), what, source }
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SessionFileError + 'a {
    move |source| SessionFileError::Io { path: path.display().to_string(), what, source }
}

/// Where one session's files live (see [`nanoclaw_protocol::layout`]), and the host's open
/// connection to its `inbound.db` (shared by clones; see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPaths {
    /// `data/sessions/<folder>/<session>`.
    pub root: PathBuf,
    /// Host-written folder (`inbound.db`, `wake.sock`).
    pub host_dir: PathBuf,
    /// Container-written folder (`outbound.db`, `.heartbeat`).
    pub workspace_dir: PathBuf,
    /// The agent group's folder `data/groups/<folder>`.
    pub agent_group_dir: PathBuf,
    inbound: Arc<InboundConnection>,
}

/// The host's one connection to a session's `inbound.db`, with the identity (device, inode) of
/// the file it was opened on. Not part of a [`SessionPaths`]' identity: equal paths are equal.
#[derive(Default)]
struct InboundConnection(Mutex<Option<(Connection, (u64, u64))>>);

impl std::fmt::Debug for InboundConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InboundConnection")
    }
}

impl PartialEq for InboundConnection {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for InboundConnection {}

/// The (device, inode) of the file at `path`, `None` when there is none.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Runs `f` on the host's connection to `inbound.db` (opened, and the file created, when there is
/// none or the file was replaced). Errors: opening, or `f`'s; the connection is closed after an
/// error, so the next call starts from a fresh one.
fn with_inbound<T>(
    paths: &SessionPaths,
    f: impl FnOnce(&mut Connection, &Path) -> Result<T, SessionFileError>,
) -> Result<T, SessionFileError> {
    let db = paths.inbound_db();
    let mut slot = paths.inbound.0.lock();
    let current = file_id(&db);
    if slot.as_ref().is_none_or(|(_, id)| Some(*id) != current) {
        *slot = None;
        let conn = schema::open_inbound_writer(&db)?;
        let id = file_id(&db).ok_or_else(|| SessionFileError::Io {
            path: db.display().to_string(),
            what: "stat",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        *slot = Some((conn, id));
    }
    let (conn, _) = slot.as_mut().expect("opened above");
    let result = f(conn, &db);
    if result.is_err() {
        *slot = None;
    }
    result
}

impl SessionPaths {
    /// Paths of a session under `data_dir`.
    pub fn new(data_dir: &Path, agent_group_folder: &str, session_id: &str) -> Self {
        let root = data_dir.join("sessions").join(agent_group_folder).join(session_id);
        Self {
            host_dir: root.join(layout::HOST_DIR),
            workspace_dir: root.join(layout::WORKSPACE_DIR),
            agent_group_dir: data_dir.join("groups").join(agent_group_folder),
            root,
            inbound: Arc::default(),
        }
    }

    /// `inbound.db`.
    pub fn inbound_db(&self) -> PathBuf {
        self.host_dir.join(layout::INBOUND_DB)
    }

    /// `outbound.db`.
    pub fn outbound_db(&self) -> PathBuf {
        self.workspace_dir.join(layout::OUTBOUND_DB)
    }

    /// `wake.sock`.
    pub fn wake_socket(&self) -> PathBuf {
        self.host_dir.join(layout::WAKE_SOCKET)
    }

    /// `.heartbeat`.
    pub fn heartbeat(&self) -> PathBuf {
        self.workspace_dir.join(layout::HEARTBEAT)
    }
}

/// [`with_inbound`] inside one `BEGIN IMMEDIATE` transaction, committed when `f` succeeds
/// (rolled back when it fails).
fn with_inbound_write<T>(
    paths: &SessionPaths,
    f: impl FnOnce(&Transaction<'_>, &Path) -> Result<T, SessionFileError>,
) -> Result<T, SessionFileError> {
    with_inbound(paths, |conn, db| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sq(db, "begin"))?;
        let out = f(&tx, db)?;
        tx.commit().map_err(sq(db, "commit"))?;
        Ok(out)
    })
}

/// Creates the session's folders and `inbound.db`. The workspace and agent-group folders are
/// given to `owner` (uid, gid) — the container's user — when set, so a non-root container can
/// write them; the host folder stays the host's and is mounted read-only.
pub fn prepare(paths: &SessionPaths, owner: Option<(u32, u32)>) -> Result<(), SessionFileError> {
    use std::os::unix::fs::PermissionsExt;
    for dir in [&paths.host_dir, &paths.workspace_dir, &paths.agent_group_dir] {
        std::fs::create_dir_all(dir).map_err(io(dir, "create folder"))?;
    }
    std::fs::set_permissions(&paths.host_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io(&paths.host_dir, "chmod"))?;
    if let Some((uid, gid)) = owner {
        for dir in [&paths.workspace_dir, &paths.agent_group_dir] {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io(dir, "chown"))?;
        }
    }
    let db = paths.inbound_db();
    with_inbound(paths, |_, _| Ok(()))?;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).map_err(io(&db, "chmod"))?;
    Ok(())
}

/// A row for `messages_in`, before its seq is assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInbound {
    /// Row id; inserting an existing id is a no-op (idempotent re-routing).
    pub id: String,
    /// `chat`, `task`, `system`.
    pub kind: &'static str,
    /// Wakes the agent.
    pub trigger: bool,
    /// Only for a fresh container's first read.
    pub on_wake: bool,
    /// Reply address.
    pub channel_type: Option<String>,
    /// Reply address.
    pub platform_id: Option<String>,
    /// Reply address.
    pub thread_id: Option<String>,
    /// JSON content.
    pub content: String,
    /// Agent-to-agent rows: the sending agent's session (where an answer goes back to).
    pub source_session_id: Option<String>,
}

impl NewInbound {
    /// A host note to the agent (`kind = system`, `trigger = 0`): it never wakes the agent nor
    /// counts as pending work; the runner shows it at the start of the next turn.
    pub fn system_note(id: String, notice: &nanoclaw_protocol::content::SystemNotice) -> Self {
        Self {
            id,
            kind: "system",
            trigger: false,
            on_wake: false,
            channel_type: None,
            platform_id: None,
            thread_id: None,
            content: serde_json::to_string(notice).expect("notice serialises"),
            source_session_id: None,
        }
    }
}

/// Folder of a session's host directory where inbound texts over the size limit are kept in
/// full (host-written; the container sees it read-only at `/session/inbox`).
pub const INBOX_DIR: &str = "inbox";

/// Keeps the full text of every `chat` row over `max_bytes` as `host/inbox/<row id>.txt` and cuts
/// the row's text to `max_bytes` (at a character boundary) with a line naming the file, so a huge
/// message neither bloats every prompt nor gets lost. Rows at or under the limit are untouched.
pub fn spill_long_texts(
    paths: &SessionPaths,
    rows: &mut [NewInbound],
    max_bytes: usize,
) -> Result<(), SessionFileError> {
    use nanoclaw_protocol::content::ChatContent;
    for row in rows.iter_mut().filter(|r| r.kind == "chat" && r.content.len() > max_bytes) {
        let Ok(mut content) = serde_json::from_str::<ChatContent>(&row.content) else { continue };
        if content.text.len() <= max_bytes {
            continue;
        }
        let name: String = row
            .id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
            .collect();
        let name = format!("{name}.txt");
        let dir = paths.host_dir.join(INBOX_DIR);
        std::fs::create_dir_all(&dir).map_err(io(&dir, "create inbox"))?;
        let file = dir.join(&name);
        std::fs::write(&file, content.text.as_bytes()).map_err(io(&file, "write inbox file"))?;
        let mut cut = max_bytes;
        while !content.text.is_char_boundary(cut) {
            cut -= 1;
        }
        let total = content.text.len();
        content.text.truncate(cut);
        content.text.push_str(&format!(
            "\n[message cut at {cut} of {total} bytes; the full text is in {}/{INBOX_DIR}/{name}]",
            nanoclaw_protocol::layout::CONTAINER_SESSION_DIR
        ));
        row.content = serde_json::to_string(&content).expect("content serialises");
    }
    Ok(())
}

/// Inserts rows into `messages_in` with fresh even seqs. Returns how many were new.
pub fn write_inbound(paths: &SessionPaths, rows: &[NewInbound]) -> Result<usize, SessionFileError> {
    with_inbound_write(paths, |tx, db| insert_inbound(tx, db, rows))
}

fn insert_inbound(tx: &Transaction<'_>, db: &Path, rows: &[NewInbound]) -> Result<usize, SessionFileError> {
    let mut max: Option<i64> =
        tx.query_row("SELECT max(seq) FROM messages_in", [], |r| r.get(0)).map_err(sq(db, "max seq"))?;
    let mut added = 0;
    for row in rows {
        let seq = next_inbound_seq(max);
        let n = tx
            .execute(
                "INSERT OR IGNORE INTO messages_in (id, seq, kind, timestamp, trigger, on_wake, channel_type, platform_id, thread_id, content, source_session_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![row.id, seq, row.kind, now_ts(), row.trigger, row.on_wake, row.channel_type, row.platform_id, row.thread_id, row.content, row.source_session_id],
            )
            .map_err(sq(db, "insert message"))?;
        if n == 1 {
            max = Some(seq);
            added += 1;
        }
    }
    Ok(added)
}

/// Where an agent's message to agent group `peer` goes back to (reference §5.5): the
/// `source_session_id` of the inbound row it answers (`in_reply_to`), else of the newest
/// inbound row from that peer carrying one. `None` when neither names a session. The rows are
/// host-written (`inbound.db`); the caller still checks the session belongs to the peer.
pub fn peer_session(
    paths: &SessionPaths,
    in_reply_to: Option<&str>,
    peer: &str,
) -> Result<Option<String>, SessionFileError> {
    with_inbound(paths, |conn, db| {
        if let Some(id) = in_reply_to {
            let named: Option<Option<String>> = conn
                .query_row(
                    "SELECT source_session_id FROM messages_in WHERE id = ?1 AND channel_type = 'agent' AND platform_id = ?2",
                    params![id, peer],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sq(db, "read answered row"))?;
            if let Some(Some(session)) = named {
                return Ok(Some(session));
            }
        }
        conn.query_row(
            "SELECT source_session_id FROM messages_in
              WHERE channel_type = 'agent' AND platform_id = ?1 AND source_session_id IS NOT NULL
              ORDER BY seq DESC LIMIT 1",
            [peer],
            |r| r.get(0),
        )
        .optional()
        .map_err(sq(db, "read peer session"))
    })
}

/// Rewrites the `destinations` projection and `session_routing` (on every container start).
pub fn project(
    paths: &SessionPaths,
    destinations: &[Destination],
    routing: &SessionRouting,
) -> Result<(), SessionFileError> {
    with_inbound_write(paths, |tx, db| {
        tx.execute("DELETE FROM destinations", []).map_err(sq(db, "clear destinations"))?;
        for d in destinations {
            tx.execute(
                "INSERT INTO destinations (name, display_name, type, channel_type, platform_id, agent_group_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![d.name, d.display_name, d.kind.as_str(), d.channel_type, d.platform_id, d.agent_group_id],
            )
            .map_err(sq(db, "insert destination"))?;
        }
        tx.execute(
            "INSERT INTO session_routing (id, channel_type, platform_id, thread_id) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET channel_type = excluded.channel_type, platform_id = excluded.platform_id, thread_id = excluded.thread_id",
            params![routing.channel_type, routing.platform_id, routing.thread_id],
        )
        .map_err(sq(db, "write routing"))?;
        Ok(())
    })
}

/// How far the host has read each table of `outbound.db` (rowids; every row below is final).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursors {
    /// Low-water mark over `messages_out`: every row below is delivered or failed.
    pub messages_out: i64,
    /// Low-water mark over `processing_ack`: every row below is completed or failed and synced.
    pub processing_ack: i64,
}

/// Reads the persisted [`Cursors`] (zero when never written).
pub fn read_cursors(paths: &SessionPaths) -> Result<Cursors, SessionFileError> {
    with_inbound(paths, |conn, db| {
        let mut st =
            conn.prepare_cached("SELECT name, rowid FROM host_cursors").map_err(sq(db, "read cursors"))?;
        let mut cursors = Cursors::default();
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(sq(db, "read cursors"))?;
        for row in rows {
            let (name, rowid) = row.map_err(sq(db, "read cursors"))?;
            match name.as_str() {
                "messages_out" => cursors.messages_out = rowid,
                "processing_ack" => cursors.processing_ack = rowid,
                _ => {}
            }
        }
        Ok(cursors)
    })
}

/// Persists the cursors (only ever forward: a lower value than the stored one is ignored).
fn store_cursors(conn: &Connection, db: &Path, cursors: Cursors) -> Result<(), SessionFileError> {
    conn.execute(
        "INSERT INTO host_cursors (name, rowid) VALUES ('messages_out', ?1), ('processing_ack', ?2)
         ON CONFLICT (name) DO UPDATE SET rowid = max(rowid, excluded.rowid)",
        params![cursors.messages_out.max(0), cursors.processing_ack.max(0)],
    )
    .map_err(sq(db, "write cursors"))?;
    Ok(())
}

/// The content of an inbound row parsed as chat content (platform message id, trace id), if the
/// row exists and is chat content.
pub fn chat_content(
    paths: &SessionPaths,
    message_id: &str,
) -> Result<Option<nanoclaw_protocol::content::ChatContent>, SessionFileError> {
    with_inbound(paths, |conn, db| read_chat_content(conn, db, message_id))
}

fn read_chat_content(
    conn: &Connection,
    db: &Path,
    message_id: &str,
) -> Result<Option<nanoclaw_protocol::content::ChatContent>, SessionFileError> {
    let content: Option<String> = conn
        .query_row("SELECT content FROM messages_in WHERE id = ?1", [message_id], |r| r.get(0))
        .optional()
        .map_err(sq(db, "read content"))?;
    Ok(content.and_then(|c| serde_json::from_str(&c).ok()))
}

/// Where an inbound chat row came from: its chat and the platform's id of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundOrigin {
    /// The channel type.
    pub channel_type: String,
    /// The chat.
    pub platform_id: String,
    /// The platform's id of the message.
    pub platform_message_id: String,
}

/// The origin of the inbound chat row `message_id` (written by the host, so trusted), if it
/// exists, is chat content and names all three.
pub fn inbound_origin(
    paths: &SessionPaths,
    message_id: &str,
) -> Result<Option<InboundOrigin>, SessionFileError> {
    let row: Option<(Option<String>, Option<String>, String)> = with_inbound(paths, |conn, db| {
        conn.query_row(
            "SELECT channel_type, platform_id, content FROM messages_in WHERE id = ?1 AND kind = 'chat'",
            [message_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(sq(db, "read origin"))
    })?;
    Ok(row.and_then(|(ct, pid, content)| {
        let content: nanoclaw_protocol::content::ChatContent = serde_json::from_str(&content).ok()?;
        Some(InboundOrigin {
            channel_type: ct?,
            platform_id: pid?,
            platform_message_id: content.platform_message_id?,
        })
    }))
}

/// A `delivered` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// Where the row stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: i64,
    /// The platform's id of the message, recorded when it was delivered (edits and reactions
    /// name a sent message by it).
    pub platform_message_id: Option<String>,
}

/// Looks up the delivery ledger entry of a `messages_out` row.
pub fn delivery_record(paths: &SessionPaths, key: &str) -> Result<Option<DeliveryRecord>, SessionFileError> {
    with_inbound(paths, |conn, db| read_record(conn, db, key))
}

fn read_record(conn: &Connection, db: &Path, key: &str) -> Result<Option<DeliveryRecord>, SessionFileError> {
    conn.query_row(
        "SELECT status, attempts, platform_message_id FROM delivered WHERE message_out_id = ?1",
        [key],
        |r| {
            let status: String = r.get(0)?;
            let status = DeliveryStatus::parse(&status).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
            })?;
            Ok(DeliveryRecord { status, attempts: r.get(1)?, platform_message_id: r.get(2)? })
        },
    )
    .optional()
    .map_err(sq(db, "read delivery record"))
}

fn store_record(conn: &Connection, db: &Path, w: &RecordWrite) -> Result<i64, SessionFileError> {
    conn.query_row(
        "INSERT INTO delivered (message_out_id, platform_message_id, status, attempts, error, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (message_out_id) DO UPDATE SET status = excluded.status,
           platform_message_id = coalesce(excluded.platform_message_id, delivered.platform_message_id),
           attempts = delivered.attempts + ?4, error = excluded.error, updated_at = excluded.updated_at
         RETURNING attempts",
        params![w.key, w.platform_message_id, w.status.as_str(), w.bump_attempt as i64, w.error, now_ts()],
        |r| r.get(0),
    )
    .map_err(sq(db, "record delivery"))
}

/// One write of the delivery ledger: `sending` is the reservation committed before the send
/// (DESIGN §5 invariant 3); `delivered` / `retrying` / `failed` are recorded after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordWrite {
    /// The `messages_out` id.
    pub key: String,
    /// The new status.
    pub status: DeliveryStatus,
    /// The platform's id of the message, once delivered.
    pub platform_message_id: Option<String>,
    /// Why it failed or will be retried (one line).
    pub error: Option<String>,
    /// Counts one more send attempt (the reservation does).
    pub bump_attempt: bool,
}

/// What the outbox commits to `inbound.db` in one transaction: acks synced, delivery-ledger
/// writes (in order; the last one names the reservation when the batch precedes a send), notes to
/// the agent, cursors. One transaction is one set of journal syncs; the outbox used to pay one
/// set per item, five or more for a one-reply turn.
///
/// The outbox commits a batch right before each send (carrying that send's reservation and the
/// outcome of the send before it) and at the end of its pass, so DESIGN §5 invariant 3 holds: a
/// reservation is durable before its send, and a send's outcome before the next reservation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerBatch {
    /// Acks to copy into `messages_in.status`: each final one as itself (a failed claim stays
    /// failed, DESIGN §5 invariant 5); `processing` acks are ignored, and only `pending` rows change.
    pub acks: Vec<ValidAck>,
    /// Delivery-ledger writes, applied in order.
    pub records: Vec<RecordWrite>,
    /// Notes to the agent (`messages_in` rows; their ids deduplicate them).
    pub notes: Vec<NewInbound>,
    /// Cursors to persist (only ever forward).
    pub cursors: Option<Cursors>,
}

impl LedgerBatch {
    /// Nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.records.is_empty() && self.notes.is_empty() && self.cursors.is_none()
    }
}

/// What committing a [`LedgerBatch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchCommitted {
    /// Inbound rows the acks made final, with their new status and reply address.
    pub finished: Vec<FinishedMessage>,
    /// Attempts of the last record written (the reservation's, when the batch ends with one).
    pub last_attempts: Option<i64>,
    /// Notes newly written (not already present).
    pub notes_added: usize,
}

/// Commits `batch` in one `inbound.db` transaction. Errors: opening or any statement; nothing of
/// the batch is committed then.
pub fn commit_batch(paths: &SessionPaths, batch: &LedgerBatch) -> Result<BatchCommitted, SessionFileError> {
    if batch.is_empty() {
        return Ok(BatchCommitted::default());
    }
    with_inbound_write(paths, |tx, db| {
        let finished = sync_acks(tx, db, &batch.acks)?;
        let mut last_attempts = None;
        for w in &batch.records {
            last_attempts = Some(store_record(tx, db, w)?);
        }
        let notes_added = if batch.notes.is_empty() { 0 } else { insert_inbound(tx, db, &batch.notes)? };
        if let Some(c) = batch.cursors {
            store_cursors(tx, db, c)?;
        }
        Ok(BatchCommitted { finished, last_attempts, notes_added })
    })
}

/// What the outbox needs from `inbound.db` to handle a page of `messages_out`, read in one
/// connection: the delivery records of its rows and the chat content of the messages they answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageView {
    /// Delivery records by `messages_out` id (absent: never handled).
    pub records: std::collections::HashMap<String, DeliveryRecord>,
    /// Chat content by `messages_in` id (absent: no such row, or not chat content).
    pub answered: std::collections::HashMap<String, nanoclaw_protocol::content::ChatContent>,
}

/// Reads the [`PageView`] of the rows `keys` answering `answered` (`messages_in` ids).
pub fn page_view(
    paths: &SessionPaths,
    keys: &[String],
    answered: &[String],
) -> Result<PageView, SessionFileError> {
    let mut view = PageView::default();
    if keys.is_empty() && answered.is_empty() {
        return Ok(view);
    }
    with_inbound(paths, |conn, db| {
        let tx = conn.transaction().map_err(sq(db, "begin"))?;
        for key in keys {
            if let Some(r) = read_record(&tx, db, key)? {
                view.records.insert(key.clone(), r);
            }
        }
        for id in answered {
            if let Some(c) = read_chat_content(&tx, db, id)? {
                view.answered.insert(id.clone(), c);
            }
        }
        tx.commit().map_err(sq(db, "commit"))?;
        Ok(view)
    })
}

/// Copies finished acks (`completed`, `failed`) into `messages_in.status`, each as itself — a
/// failed claim stays failed (DESIGN §5 invariant 5); `processing` acks are ignored, and only
/// `pending` rows change. Returns the rows that changed, with their new status and reply address.
fn sync_acks(
    tx: &Transaction<'_>,
    db: &Path,
    acks: &[ValidAck],
) -> Result<Vec<FinishedMessage>, SessionFileError> {
    let mut changed = Vec::new();
    for ack in acks.iter().filter(|a| a.status != AckStatus::Processing) {
        let failed = ack.status == AckStatus::Failed;
        let row: Option<(Option<String>, Option<String>, String, String)> = tx
            .query_row(
                "UPDATE messages_in SET status = ?2 WHERE id = ?1 AND status = 'pending' RETURNING channel_type, platform_id, kind, content",
                params![ack.message_id, ack.status.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(sq(db, "sync ack"))?;
        if let Some((channel_type, platform_id, kind, content)) = row {
            let platform_message_id = (kind == "chat")
                .then(|| serde_json::from_str::<nanoclaw_protocol::content::ChatContent>(&content).ok())
                .flatten()
                .and_then(|c| c.platform_message_id);
            changed.push(FinishedMessage {
                id: ack.message_id.clone(),
                failed,
                channel_type,
                platform_id,
                kind,
                platform_message_id,
            });
        }
    }
    Ok(changed)
}

/// An inbound row that reached a final status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedMessage {
    /// `messages_in` id.
    pub id: String,
    /// Failed rather than completed.
    pub failed: bool,
    /// Reply address.
    pub channel_type: Option<String>,
    /// Reply address.
    pub platform_id: Option<String>,
    /// Row kind.
    pub kind: String,
    /// The platform's id of the message, for chat rows that carry one (the notice names it).
    pub platform_message_id: Option<String>,
}

/// What happened to one in-flight row of a container that died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOutcome {
    /// `messages_in` id.
    pub id: String,
    /// Tries after this one.
    pub tries: i64,
    /// Out of tries: marked failed.
    pub failed: bool,
    /// Reply address, to tell the user.
    pub channel_type: Option<String>,
    /// Reply address.
    pub platform_id: Option<String>,
}

/// A container died holding claims on `ids`: each still-pending row gets one more try
/// (`tries + 1`, `process_after = now + base × 2^(tries-1)`), or is marked `failed` once it reaches
/// `max_tries` (reference §1.10: 5 tries, 5 s × 2^n).
pub fn count_failed_try(
    paths: &SessionPaths,
    ids: &[String],
    max_tries: i64,
    backoff_base: std::time::Duration,
) -> Result<Vec<RetryOutcome>, SessionFileError> {
    with_inbound_write(paths, |tx, db| {
        let mut out = Vec::new();
        for id in ids {
            let row: Option<(i64, Option<String>, Option<String>)> = tx
                .query_row("SELECT tries, channel_type, platform_id FROM messages_in WHERE id = ?1 AND status = 'pending'", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
                .map_err(sq(db, "read tries"))?;
            let Some((tries, channel_type, platform_id)) = row else { continue };
            let tries = tries + 1;
            let failed = tries >= max_tries;
            if failed {
                tx.execute(
                    "UPDATE messages_in SET tries = ?2, status = 'failed' WHERE id = ?1",
                    params![id, tries],
                )
                .map_err(sq(db, "fail message"))?;
            } else {
                let delay = backoff_base.saturating_mul(1u32 << (tries - 1).clamp(0, 16) as u32);
                let after = chrono::Utc::now()
                    + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
                tx.execute(
                    "UPDATE messages_in SET tries = ?2, process_after = ?3 WHERE id = ?1",
                    params![id, tries, format_ts(after)],
                )
                .map_err(sq(db, "schedule retry"))?;
            }
            out.push(RetryOutcome { id: id.clone(), tries, failed, channel_type, platform_id });
        }
        Ok(out)
    })
}

/// The agent cannot run at all (its container keeps failing to start): every pending triggering
/// row is marked `failed`. Returns them, with their reply addresses, so the user can be told.
pub fn fail_pending(paths: &SessionPaths) -> Result<Vec<RetryOutcome>, SessionFileError> {
    with_inbound(paths, |conn, db| {
        let mut st = conn
            .prepare_cached(
                "UPDATE messages_in SET status = 'failed' WHERE status = 'pending' AND trigger = 1
                 RETURNING id, tries, channel_type, platform_id",
            )
            .map_err(sq(db, "prepare"))?;
        let rows = st
            .query_map([], |r| {
                Ok(RetryOutcome {
                    id: r.get(0)?,
                    tries: r.get(1)?,
                    failed: true,
                    channel_type: r.get(2)?,
                    platform_id: r.get(3)?,
                })
            })
            .map_err(sq(db, "fail pending"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sq(db, "fail pending"))?;
        Ok(rows)
    })
}

/// Pending work in `inbound.db`: whether a triggering row is due now, else when the next one is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PendingWork {
    /// Pending rows of any kind (for "is this session busy").
    pub pending: i64,
    /// A pending `trigger = 1` row is due now.
    pub due_now: bool,
    /// The earliest future `process_after` of a pending triggering row.
    pub next_due: Option<String>,
}

/// Reads [`PendingWork`]. Only triggering rows count (a host note that wakes the agent, such as
/// an approval's outcome, is one): the other notes to the agent and accumulated context
/// (`trigger = 0`) ride along with the next turn and never keep a session busy on their own.
pub fn pending_work(paths: &SessionPaths) -> Result<PendingWork, SessionFileError> {
    let db = paths.inbound_db();
    if !db.exists() {
        return Ok(PendingWork::default());
    }
    let now = now_ts();
    let (pending, due, next): (i64, i64, Option<String>) = with_inbound(paths, |conn, db| {
        conn.query_row(
            "SELECT count(*),
                    coalesce(sum(process_after IS NULL OR process_after <= ?1), 0),
                    min(CASE WHEN process_after > ?1 THEN process_after END)
               FROM messages_in WHERE status = 'pending' AND trigger = 1",
            [&now],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(sq(db, "pending work"))
    })?;
    Ok(PendingWork { pending, due_now: due > 0, next_due: next })
}

/// Removes the heartbeat before a spawn so a fresh container is not judged by a stale one.
pub fn clear_heartbeat(paths: &SessionPaths) {
    let _ = std::fs::remove_file(paths.heartbeat());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn paths() -> (tempfile::TempDir, SessionPaths) {
        let dir = tempfile::tempdir().unwrap();
        let p = SessionPaths::new(dir.path(), "main", "sess-1");
        prepare(&p, None).unwrap();
        (dir, p)
    }

    fn chat(id: &str) -> NewInbound {
        NewInbound {
            id: id.into(),
            kind: "chat",
            trigger: true,
            on_wake: false,
            channel_type: Some("cli".into()),
            platform_id: Some("local".into()),
            thread_id: None,
            content: r#"{"text":"hi"}"#.into(),
            source_session_id: None,
        }
    }

    #[test]
    fn inbound_writes_are_idempotent_with_even_seqs() {
        let (_d, p) = paths();
        assert_eq!(write_inbound(&p, &[chat("a"), chat("b")]).unwrap(), 2);
        assert_eq!(write_inbound(&p, &[chat("a")]).unwrap(), 0);
        let c = schema::open_inbound_reader(&p.inbound_db()).unwrap();
        let seqs: Vec<i64> = c
            .prepare("SELECT seq FROM messages_in ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(seqs, vec![2, 4]);
        assert!(pending_work(&p).unwrap().due_now);
    }

    fn inbound_ids(p: &SessionPaths) -> Vec<String> {
        let c = schema::open_inbound_reader(&p.inbound_db()).unwrap();
        c.prepare("SELECT id FROM messages_in ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn the_kept_connection_is_shared_by_clones_and_follows_a_replaced_file() {
        let (_d, p) = paths();
        let clone = p.clone();
        write_inbound(&p, &[chat("a")]).unwrap();
        assert_eq!(pending_work(&clone).unwrap().pending, 1, "the clone sees the write");
        assert!(Arc::ptr_eq(&p.inbound, &clone.inbound), "one connection per session");
        // The file replaced under the host: the next write goes to the new file, not to the
        // unlinked one the kept connection had open.
        std::fs::remove_file(p.inbound_db()).unwrap();
        let _ = std::fs::remove_file(p.host_dir.join("inbound.db-journal"));
        write_inbound(&clone, &[chat("b")]).unwrap();
        assert_eq!(inbound_ids(&p), ["b"]);
        assert_eq!(pending_work(&p).unwrap().pending, 1);
    }

    #[test]
    fn failed_tries_back_off_then_fail_at_the_limit() {
        let (_d, p) = paths();
        write_inbound(&p, &[chat("a")]).unwrap();
        let ids = vec!["a".to_string()];
        for n in 1..5 {
            let r = count_failed_try(&p, &ids, 5, Duration::from_secs(60)).unwrap();
            assert_eq!(r[0].tries, n);
            assert!(!r[0].failed);
            let w = pending_work(&p).unwrap();
            assert!(!w.due_now && w.next_due.is_some(), "retry must wait for its backoff");
        }
        let r = count_failed_try(&p, &ids, 5, Duration::from_secs(60)).unwrap();
        assert!(r[0].failed);
        assert_eq!(pending_work(&p).unwrap().pending, 0);
        assert!(count_failed_try(&p, &ids, 5, Duration::from_secs(60)).unwrap().is_empty());
    }

    #[test]
    fn deliveries_count_attempts_and_keep_the_platform_id() {
        let (_d, p) = paths();
        let record = |w: RecordWrite| {
            commit_batch(&p, &LedgerBatch { records: vec![w], ..LedgerBatch::default() })
                .unwrap()
                .last_attempts
        };
        assert_eq!(record(write("o1", DeliveryStatus::Sending, true)), Some(1));
        assert_eq!(record(write("o2", DeliveryStatus::Sending, true)), Some(1));
        record(RecordWrite {
            platform_message_id: Some("p-9".into()),
            ..write("o2", DeliveryStatus::Delivered, false)
        });
        assert_eq!(delivery_record(&p, "o1").unwrap().unwrap().status, DeliveryStatus::Sending);
        assert_eq!(
            delivery_record(&p, "o2").unwrap().unwrap(),
            DeliveryRecord {
                status: DeliveryStatus::Delivered,
                attempts: 1,
                platform_message_id: Some("p-9".into())
            }
        );
    }

    fn acks(p: &SessionPaths, rows: &[(&str, &str)]) -> Vec<ValidAck> {
        let out = schema::open_outbound_writer(&p.outbound_db()).unwrap();
        for (id, status) in rows {
            out.execute(
                "INSERT INTO processing_ack VALUES (?1, ?2, ?3, 1)",
                [id, status, &now_ts().as_str()],
            )
            .unwrap();
        }
        drop(out);
        let req = crate::container_files::OutboundRequest { acks_from_rowid: Some(0), ..Default::default() };
        let limits = crate::container_files::ReadLimits::default();
        crate::container_files::read_blocking(p, &limits, &req)
            .unwrap()
            .acks
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    fn write(key: &str, status: DeliveryStatus, bump_attempt: bool) -> RecordWrite {
        RecordWrite { key: key.into(), status, platform_message_id: None, error: None, bump_attempt }
    }

    #[test]
    fn a_batch_commits_acks_records_notes_and_cursors_together() {
        let (_d, p) = paths();
        let mut answered = chat("a");
        answered.content = r#"{"text":"hi","platform_message_id":"pm-a"}"#.into();
        write_inbound(&p, &[answered]).unwrap();
        let batch = LedgerBatch {
            acks: acks(&p, &[("a", "completed")]),
            records: vec![
                RecordWrite {
                    platform_message_id: Some("pm-1".into()),
                    ..write("o1", DeliveryStatus::Delivered, false)
                },
                write("o2", DeliveryStatus::Sending, true),
            ],
            notes: vec![NewInbound { id: "note-o0".into(), kind: "system", trigger: false, ..chat("x") }],
            cursors: Some(Cursors { messages_out: 3, processing_ack: 2 }),
        };
        let done = commit_batch(&p, &batch).unwrap();
        assert_eq!(done.last_attempts, Some(1), "the last record is the reservation");
        assert_eq!(done.notes_added, 1);
        assert_eq!(done.finished.len(), 1);
        assert_eq!(
            done.finished[0].platform_message_id.as_deref(),
            Some("pm-a"),
            "the notice names the message"
        );
        assert_eq!(read_cursors(&p).unwrap(), Cursors { messages_out: 3, processing_ack: 2 });
        assert_eq!(delivery_record(&p, "o1").unwrap().unwrap().platform_message_id.as_deref(), Some("pm-1"));
        assert_eq!(delivery_record(&p, "o2").unwrap().unwrap().status, DeliveryStatus::Sending);

        // Committed again: acks and notes are idempotent, the reservation counts a second attempt.
        let again = commit_batch(&p, &batch).unwrap();
        assert_eq!((again.finished.len(), again.notes_added, again.last_attempts), (0, 0, Some(2)));

        let view = page_view(&p, &["o1".into(), "o9".into()], &["a".into(), "nope".into()]).unwrap();
        assert_eq!(view.records.keys().collect::<Vec<_>>(), vec!["o1"]);
        assert_eq!(view.answered["a"].platform_message_id.as_deref(), Some("pm-a"));
        assert!(!view.answered.contains_key("nope"));
    }

    #[test]
    fn a_batch_that_fails_commits_nothing_and_the_next_operation_reopens() {
        let (_d, p) = paths();
        // The cursors are written last; this trigger makes that statement fail.
        schema::open_inbound_writer(&p.inbound_db())
            .unwrap()
            .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON host_cursors BEGIN SELECT RAISE(ABORT, 'refused'); END")
            .unwrap();
        let batch = LedgerBatch {
            records: vec![write("o1", DeliveryStatus::Delivered, false)],
            notes: vec![NewInbound { id: "note-o0".into(), kind: "system", trigger: false, ..chat("x") }],
            cursors: Some(Cursors { messages_out: 5, processing_ack: 5 }),
            ..LedgerBatch::default()
        };
        let e = commit_batch(&p, &batch).unwrap_err();
        assert!(e.to_string().contains("write cursors"), "{e}");
        assert!(p.inbound.0.lock().is_none(), "the kept connection is closed after an error");
        assert_eq!(delivery_record(&p, "o1").unwrap(), None, "the record rolled back with the cursors");
        assert!(chat_content(&p, "note-o0").unwrap().is_none(), "so did the note");
    }

    #[test]
    fn acks_sync_each_as_itself() {
        let (_d, p) = paths();
        write_inbound(&p, &[chat("a"), chat("b"), chat("c")]).unwrap();
        let out = schema::open_outbound_writer(&p.outbound_db()).unwrap();
        for (id, status) in [("a", "completed"), ("b", "failed"), ("c", "processing")] {
            out.execute("INSERT INTO processing_ack VALUES (?1, ?2, ?3, 1)", [id, status, &now_ts()])
                .unwrap();
        }
        drop(out);
        let req = crate::container_files::OutboundRequest { acks_from_rowid: Some(0), ..Default::default() };
        let limits = crate::container_files::ReadLimits::default();
        let acks: Vec<ValidAck> = crate::container_files::read_blocking(&p, &limits, &req)
            .unwrap()
            .acks
            .into_iter()
            .map(Result::unwrap)
            .filter(|a| a.status != AckStatus::Processing)
            .collect();
        let apply = |acks: &[ValidAck]| {
            commit_batch(&p, &LedgerBatch { acks: acks.to_vec(), ..LedgerBatch::default() }).unwrap().finished
        };
        let mut changed = apply(&acks);
        changed.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(
            changed.iter().map(|c| (c.id.as_str(), c.failed)).collect::<Vec<_>>(),
            vec![("a", false), ("b", true)]
        );
        assert!(apply(&acks).is_empty(), "applying acks is idempotent");
        assert_eq!(pending_work(&p).unwrap().pending, 1, "the claimed row stays pending");
    }
}
