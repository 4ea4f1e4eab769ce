//! Host-side validation of what the untrusted container wrote into `outbound.db`.
//!
//! The host reads every column as an untyped SQLite value, through statements built here that
//! never load a value longer than its column's cap ([`Column::max_bytes`]): each selected column
//! comes as `octet_length(col)` — which SQLite answers from the record header, without reading the
//! value — and `CASE WHEN octet_length(col) <= cap THEN col END`. An oversize value therefore
//! arrives as NULL with its length recorded in the raw row's `oversize`, and validation rejects the
//! row naming that column. Raw rows ([`RawOutboundRow`], [`RawAckRow`], [`RawContainerStateRow`])
//! become typed rows ([`ValidOutbound`], [`ValidAck`], [`ValidContainerState`]) or a [`RowError`]
//! naming the table and field.
//!
//! A compromised container can write anything into its own DB, including rows that ignore the
//! schema's CHECK constraints (it can replace the file); nothing here trusts them. The statements
//! are only safe on a DB whose schema was checked first: `actors::container_files` (the host's one
//! door to container-written files) runs them after its file, schema and limit checks.

use crate::content::{OutboundContent, SystemAction};
use crate::rows::{AckStatus, OutboundKind, is_outbound_seq};
use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use std::sync::LazyLock;
use std::time::Duration;

/// Largest `content` the host will load, in bytes.
pub const MAX_CONTENT_BYTES: i64 = 256 * 1024;
/// Largest text of one outbound message, in bytes. Channels split further to their own limits.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Most files in one `file` row.
pub const MAX_FILES: usize = 10;
/// Longest file name of a sent file, in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 255;
/// Longest reaction emoji, in bytes.
pub const MAX_EMOJI_BYTES: usize = 64;
/// Longest card title or button label, in bytes.
pub const MAX_TITLE_BYTES: usize = 256;
/// Most buttons on a card.
pub const MAX_BUTTONS: usize = 10;
/// Longest button URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Largest file the agent may send (the runner refuses bigger ones, the host checks again).
pub const MAX_SEND_FILE_BYTES: u64 = 50 * 1024 * 1024;
/// Largest id (`id`, `in_reply_to`, `message_id`), in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Largest platform or thread id, in bytes.
pub const MAX_PLATFORM_ID_BYTES: usize = 256;
/// Largest channel type, in bytes.
pub const MAX_CHANNEL_TYPE_BYTES: usize = 64;
/// Largest text time column, in bytes ([`crate::time::format_ts`] writes 24).
pub const MAX_TIME_BYTES: usize = 64;
/// Largest enum text column (`kind`, `status`), in bytes.
pub const MAX_ENUM_BYTES: usize = 16;
/// Largest text form of an integer column, in bytes: `i64::MIN` is 20 characters; the slack lets a
/// REAL through to the type check, which names it, instead of a length error.
pub const MAX_INTEGER_BYTES: usize = 24;
/// Largest `container_state.current_tool`, in bytes.
pub const MAX_TOOL_NAME_BYTES: usize = 128;
/// Fewest options of an `ask_user_question`.
pub const MIN_QUESTION_OPTIONS: usize = 2;
/// Most options of an `ask_user_question` (each becomes a button).
pub const MAX_QUESTION_OPTIONS: usize = 10;
/// Longest wait of an `ask_user_question`, in seconds: a day (the runner keeps its heartbeat
/// fresh while a tool waits, so the host does not take the wait for a hang).
pub const MAX_QUESTION_TIMEOUT_S: u32 = 86_400;
/// Default wait of an `ask_user_question`, in seconds.
pub const DEFAULT_QUESTION_TIMEOUT_S: u32 = 300;
/// Longest cron recurrence or IANA time zone name of a task, in bytes.
pub const MAX_SCHEDULE_FIELD_BYTES: usize = 128;

/// A column the host reads from a container-written table, and the most bytes it will load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The column's name in [`crate::schema::OUTBOUND_SCHEMA`].
    pub name: &'static str,
    /// Values longer than this (`octet_length`, bytes of the DB's text encoding) are not loaded.
    pub max_bytes: usize,
}

const fn col(name: &'static str, max_bytes: usize) -> Column {
    Column { name, max_bytes }
}

/// The `messages_out` columns the host reads, in the order of [`RawOutboundRow`].
/// `recurrence` is not read (the host does not use it), so it is never loaded.
pub const MESSAGES_OUT_COLUMNS: [Column; 10] = [
    col("id", MAX_ID_BYTES),
    col("seq", MAX_INTEGER_BYTES),
    col("in_reply_to", MAX_ID_BYTES),
    col("timestamp", MAX_TIME_BYTES),
    col("deliver_after", MAX_TIME_BYTES),
    col("kind", MAX_ENUM_BYTES),
    col("platform_id", MAX_PLATFORM_ID_BYTES),
    col("channel_type", MAX_CHANNEL_TYPE_BYTES),
    col("thread_id", MAX_PLATFORM_ID_BYTES),
    col("content", MAX_CONTENT_BYTES as usize),
];

/// The `processing_ack` columns the host reads, in the order of [`RawAckRow`].
pub const PROCESSING_ACK_COLUMNS: [Column; 4] = [
    col("message_id", MAX_ID_BYTES),
    col("status", MAX_ENUM_BYTES),
    col("status_changed", MAX_TIME_BYTES),
    col("generation", MAX_INTEGER_BYTES),
];

/// The `container_state` columns the host reads, in the order of [`RawContainerStateRow`].
pub const CONTAINER_STATE_COLUMNS: [Column; 3] = [
    col("generation", MAX_INTEGER_BYTES),
    col("current_tool", MAX_TOOL_NAME_BYTES),
    col("tool_declared_timeout_ms", MAX_INTEGER_BYTES),
];

/// `rowid` then, per column, `octet_length(col)` and the value only when it fits its cap.
fn capped_select(table: &str, columns: &[Column], tail: &str) -> String {
    let list: Vec<String> = columns
        .iter()
        .map(|c| {
            let (n, max) = (c.name, c.max_bytes);
            format!(r#"octet_length("{n}"), CASE WHEN octet_length("{n}") <= {max} THEN "{n}" END"#)
        })
        .collect();
    format!("SELECT rowid, {} FROM {table} {tail}", list.join(", "))
}

/// Reads up to `?2` `messages_out` rows with `rowid >= ?1`, in rowid order (the host keeps a
/// low-water mark and reads on from it). Rows of [`RawOutboundRow::from_row`].
pub static SELECT_MESSAGES_OUT: LazyLock<String> = LazyLock::new(|| {
    capped_select("messages_out", &MESSAGES_OUT_COLUMNS, "WHERE rowid >= ?1 ORDER BY rowid LIMIT ?2")
});

/// Reads up to `?2` `processing_ack` rows of every status with `rowid >= ?1`, in rowid order.
/// Rows of [`RawAckRow::from_row`].
pub static SELECT_ACKS: LazyLock<String> = LazyLock::new(|| {
    capped_select("processing_ack", &PROCESSING_ACK_COLUMNS, "WHERE rowid >= ?1 ORDER BY rowid LIMIT ?2")
});

/// Reads up to `?2` claims (`processing_ack` rows `processing` of generation `?1`) with
/// `rowid >= ?3`, in rowid order. `?3` is the host's ack cursor, which never moves past a row
/// still `processing`, so the read is a rowid range seek and costs the same after 100,000 acks as
/// after 10.
/// The filter looks at `status` and `generation` only once their lengths are known to fit, so a
/// huge value in them is never loaded (such a row is not a claim; the ack cursor reports it).
/// Rows of [`RawAckRow::from_row`].
pub static SELECT_CLAIMS: LazyLock<String> = LazyLock::new(|| {
    capped_select(
        "processing_ack",
        &PROCESSING_ACK_COLUMNS,
        &format!(
            "WHERE rowid >= ?3 AND CASE WHEN octet_length(status) <= {MAX_ENUM_BYTES} AND octet_length(generation) <= {MAX_INTEGER_BYTES} \
             THEN status = 'processing' AND generation = ?1 ELSE 0 END ORDER BY rowid LIMIT ?2"
        ),
    )
});

/// Reads the `container_state` row (`id` is the rowid, always 1). Rows of
/// [`RawContainerStateRow::from_row`].
pub static SELECT_CONTAINER_STATE: LazyLock<String> =
    LazyLock::new(|| capped_select("container_state", &CONTAINER_STATE_COLUMNS, "WHERE rowid = 1"));

/// A value that was not loaded because it is longer than its column's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversize {
    /// The column.
    pub column: &'static str,
    /// Its length in bytes (`octet_length`).
    pub bytes: i64,
    /// The column's cap ([`Column::max_bytes`]).
    pub max_bytes: usize,
}

/// Reads the (length, capped value) pairs of `columns` from a row of [`capped_select`]; returns
/// the values (NULL when oversize) and the first oversize column.
fn read_capped<const N: usize>(
    r: &rusqlite::Row<'_>,
    columns: &[Column; N],
) -> rusqlite::Result<([Value; N], Option<Oversize>)> {
    let mut values: [Value; N] = std::array::from_fn(|_| Value::Null);
    let mut oversize = None;
    for (i, c) in columns.iter().enumerate() {
        let len: Option<i64> = r.get(1 + 2 * i)?;
        values[i] = r.get(2 + 2 * i)?;
        if let Some(bytes) = len.filter(|n| *n > c.max_bytes as i64) {
            oversize.get_or_insert(Oversize { column: c.name, bytes, max_bytes: c.max_bytes });
        }
    }
    Ok((values, oversize))
}

/// One `messages_out` row exactly as SQLite returned it, each value capped.
#[derive(Debug, Clone, PartialEq)]
pub struct RawOutboundRow {
    /// SQLite rowid; identifies the row even when `id` is unusable.
    pub rowid: i64,
    /// `id`.
    pub id: Value,
    /// `seq`.
    pub seq: Value,
    /// `in_reply_to`.
    pub in_reply_to: Value,
    /// `timestamp`.
    pub timestamp: Value,
    /// `deliver_after`.
    pub deliver_after: Value,
    /// `kind`.
    pub kind: Value,
    /// `platform_id`.
    pub platform_id: Value,
    /// `channel_type`.
    pub channel_type: Value,
    /// `thread_id`.
    pub thread_id: Value,
    /// `content`.
    pub content: Value,
    /// The first column whose value exceeded its cap (and so reads as NULL above).
    pub oversize: Option<Oversize>,
}

impl RawOutboundRow {
    /// Reads a row of [`SELECT_MESSAGES_OUT`].
    pub fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        let (
            [
                id,
                seq,
                in_reply_to,
                timestamp,
                deliver_after,
                kind,
                platform_id,
                channel_type,
                thread_id,
                content,
            ],
            oversize,
        ) = read_capped(r, &MESSAGES_OUT_COLUMNS)?;
        Ok(Self {
            rowid: r.get(0)?,
            id,
            seq,
            in_reply_to,
            timestamp,
            deliver_after,
            kind,
            platform_id,
            channel_type,
            thread_id,
            content,
            oversize,
        })
    }

    /// The key under which the host records this row in `delivered`: the row's `id` when it is a
    /// valid id, else `#rowid:<n>` so that an unusable row is still recorded (and not retried).
    pub fn ledger_key(&self) -> String {
        row_key(self.rowid, &self.id)
    }
}

/// The key of a row in logs and ledgers: its id column when that is a valid id, else
/// `#rowid:<n>`.
fn row_key(rowid: i64, id: &Value) -> String {
    match Check::new("").id(id, "id") {
        Ok(id) => id,
        Err(_) => format!("#rowid:{rowid}"),
    }
}

/// Why a row was rejected. Displays as `<table>.<field>: <reason>`, one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table}.{field}: {reason}")]
pub struct RowError {
    /// The table (`messages_out`, `processing_ack`, `container_state`).
    pub table: &'static str,
    /// The offending column, or `content.<path>` inside the JSON.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A row that failed validation, with what the host needs to log it and move past it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error} (row {key})")]
pub struct Rejected {
    /// SQLite rowid, so a cursor can move past the row.
    pub rowid: i64,
    /// The row's key: its id column when usable, else `#rowid:<n>`; for `messages_out` this is
    /// the delivery-ledger key ([`RawOutboundRow::ledger_key`]).
    pub key: String,
    /// What is wrong.
    pub error: RowError,
}

/// Where a chat row goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Channel type (`cli`, `telegram`, … or `agent`).
    pub channel_type: String,
    /// Platform chat id (or target agent group id for `agent`).
    pub platform_id: String,
    /// Thread, if any.
    pub thread_id: Option<String>,
}

/// The payload of a valid row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundBody {
    /// A chat message for [`ValidOutbound::target`].
    Chat(OutboundContent),
    /// A system action for the host.
    System(SystemAction),
}

/// A `messages_out` row that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidOutbound {
    /// SQLite rowid.
    pub rowid: i64,
    /// Row id.
    pub id: String,
    /// Odd seq.
    pub seq: i64,
    /// The inbound message this answers.
    pub in_reply_to: Option<String>,
    /// Not before this time (RFC 3339, as written).
    pub deliver_after: Option<DateTime<Utc>>,
    /// Destination of a chat row; `None` for system rows.
    pub target: Option<Target>,
    /// What to deliver or apply.
    pub body: OutboundBody,
}

/// The field checks of one table; every error names the table and the field.
struct Check {
    table: &'static str,
}

impl Check {
    fn new(table: &'static str) -> Self {
        Self { table }
    }

    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> RowError {
        RowError { table: self.table, field: field.into(), reason: reason.into() }
    }

    fn oversize(&self, oversize: Option<Oversize>) -> Result<(), RowError> {
        match oversize {
            None => Ok(()),
            Some(o) => {
                Err(self.err(o.column, format!("{} bytes exceeds the limit of {}", o.bytes, o.max_bytes)))
            }
        }
    }

    fn text<'a>(&self, v: &'a Value, field: &str) -> Result<Option<&'a str>, RowError> {
        match v {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s)),
            Value::Integer(_) => Err(self.err(field, "expected text, found an integer")),
            Value::Real(_) => Err(self.err(field, "expected text, found a real")),
            Value::Blob(_) => Err(self.err(field, "expected text, found a blob")),
        }
    }

    fn integer(&self, v: &Value, field: &str) -> Result<Option<i64>, RowError> {
        match v {
            Value::Null => Ok(None),
            Value::Integer(n) => Ok(Some(*n)),
            _ => Err(self.err(field, "expected an integer")),
        }
    }

    fn id(&self, v: &Value, field: &str) -> Result<String, RowError> {
        let s = self.text(v, field)?.ok_or_else(|| self.err(field, "missing"))?;
        self.check_id(s, field)?;
        Ok(s.to_string())
    }

    fn check_id(&self, s: &str, field: &str) -> Result<(), RowError> {
        if s.is_empty() || s.len() > MAX_ID_BYTES {
            return Err(self.err(field, format!("length {} not in 1..={MAX_ID_BYTES}", s.len())));
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
            return Err(self.err(field, "only ASCII letters, digits and . _ : - are allowed"));
        }
        Ok(())
    }

    fn bounded_text(&self, v: &Value, field: &str, max: usize) -> Result<Option<String>, RowError> {
        match self.text(v, field)? {
            None => Ok(None),
            Some(s) if s.is_empty() || s.len() > max => {
                Err(self.err(field, format!("length {} not in 1..={max}", s.len())))
            }
            Some(s) if s.chars().any(char::is_control) => Err(self.err(field, "contains control characters")),
            Some(s) => Ok(Some(s.to_string())),
        }
    }

    fn time(&self, v: &Value, field: &str) -> Result<Option<DateTime<Utc>>, RowError> {
        match self.text(v, field)? {
            None => Ok(None),
            Some(s) if s.len() > MAX_TIME_BYTES => {
                Err(self.err(field, format!("longer than {MAX_TIME_BYTES} bytes")))
            }
            Some(s) => crate::time::parse_ts(s)
                .map(Some)
                .map_err(|e| self.err(field, format!("not an RFC 3339 time: {e}"))),
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self, content: &str) -> Result<T, RowError> {
        serde_json::from_str(content).map_err(|e| {
            // serde_json messages are one line; keep them short for logs and notes to the agent.
            self.err("content", e.to_string().chars().take(200).collect::<String>())
        })
    }
}

/// Validates one raw `messages_out` row. Every check names the field it failed on.
pub fn validate_outbound(raw: &RawOutboundRow) -> Result<ValidOutbound, RowError> {
    let c = Check::new("messages_out");
    c.oversize(raw.oversize)?;
    let id = c.id(&raw.id, "id")?;
    let seq = match raw.seq {
        Value::Integer(n) if is_outbound_seq(n) => n,
        Value::Integer(n) => return Err(c.err("seq", format!("{n} is not a positive odd number"))),
        _ => return Err(c.err("seq", "expected an integer")),
    };
    let in_reply_to = match c.text(&raw.in_reply_to, "in_reply_to")? {
        None => None,
        Some(s) => {
            c.check_id(s, "in_reply_to")?;
            Some(s.to_string())
        }
    };
    c.time(&raw.timestamp, "timestamp")?.ok_or_else(|| c.err("timestamp", "missing"))?;
    let deliver_after = c.time(&raw.deliver_after, "deliver_after")?;
    let kind_text = c.text(&raw.kind, "kind")?.ok_or_else(|| c.err("kind", "missing"))?;
    let kind =
        OutboundKind::parse(kind_text).map_err(|e| c.err("kind", format!("unknown value {:?}", e.value)))?;
    let content = c.text(&raw.content, "content")?.ok_or_else(|| c.err("content", "missing"))?;

    let (target, body) = match kind {
        OutboundKind::Chat => {
            let channel_type = c
                .bounded_text(&raw.channel_type, "channel_type", MAX_CHANNEL_TYPE_BYTES)?
                .ok_or_else(|| c.err("channel_type", "missing for a chat row"))?;
            if !channel_type
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(
                    c.err("channel_type", "only lowercase ASCII letters, digits, - and _ are allowed")
                );
            }
            let platform_id = c
                .bounded_text(&raw.platform_id, "platform_id", MAX_PLATFORM_ID_BYTES)?
                .ok_or_else(|| c.err("platform_id", "missing for a chat row"))?;
            let thread_id = c.bounded_text(&raw.thread_id, "thread_id", MAX_PLATFORM_ID_BYTES)?;
            let parsed: OutboundContent = c.json(content)?;
            match &parsed {
                OutboundContent::Text { text } => {
                    if text.trim().is_empty() {
                        return Err(c.err("content.text", "empty"));
                    }
                    if text.len() > MAX_TEXT_BYTES {
                        return Err(c.err(
                            "content.text",
                            format!("{} bytes exceeds the limit of {MAX_TEXT_BYTES}", text.len()),
                        ));
                    }
                    if text.contains('\0') {
                        return Err(c.err("content.text", "contains a NUL character"));
                    }
                }
                OutboundContent::File { text, files } => {
                    if let Some(text) = text
                        && (text.len() > MAX_TEXT_BYTES || text.contains('\0'))
                    {
                        return Err(c.err("content.text", "over the size limit or contains a NUL character"));
                    }
                    if files.is_empty() || files.len() > MAX_FILES {
                        return Err(c.err(
                            "content.files",
                            format!("{} files; 1 to {MAX_FILES} allowed", files.len()),
                        ));
                    }
                    for f in files {
                        let name = f.name.as_str();
                        if name.is_empty()
                            || name.len() > MAX_FILE_NAME_BYTES
                            || name == "."
                            || name == ".."
                            || name.contains(['/', '\0'])
                        {
                            return Err(
                                c.err("content.files.name", format!("{name:?} is not a plain file name"))
                            );
                        }
                        // A row may only point into its own outbox folder.
                        if f.path != format!("outbox/{id}/{name}") {
                            return Err(c.err("content.files.path", format!("must be outbox/{id}/{name}")));
                        }
                    }
                }
                OutboundContent::Edit { target, text } => {
                    c.check_id(target, "content.target")?;
                    if text.trim().is_empty() || text.len() > MAX_TEXT_BYTES || text.contains('\0') {
                        return Err(
                            c.err("content.text", "empty, over the size limit or contains a NUL character")
                        );
                    }
                }
                OutboundContent::Reaction { target, emoji } => {
                    c.check_id(target, "content.target")?;
                    if emoji.trim().is_empty() || emoji.len() > MAX_EMOJI_BYTES || emoji.contains('\0') {
                        return Err(
                            c.err("content.emoji", format!("empty or longer than {MAX_EMOJI_BYTES} bytes"))
                        );
                    }
                }
                OutboundContent::Card { title, text, buttons } => {
                    if title.trim().is_empty() || title.len() > MAX_TITLE_BYTES || title.contains('\0') {
                        return Err(
                            c.err("content.title", format!("empty or longer than {MAX_TITLE_BYTES} bytes"))
                        );
                    }
                    if text.len() > MAX_TEXT_BYTES || text.contains('\0') {
                        return Err(c.err("content.text", "over the size limit or contains a NUL character"));
                    }
                    if buttons.len() > MAX_BUTTONS {
                        return Err(c.err(
                            "content.buttons",
                            format!("{} buttons; at most {MAX_BUTTONS}", buttons.len()),
                        ));
                    }
                    for b in buttons {
                        if b.label.trim().is_empty()
                            || b.label.len() > MAX_TITLE_BYTES
                            || b.label.contains('\0')
                        {
                            return Err(c.err("content.buttons.label", "empty or too long"));
                        }
                        let scheme_ok = b.url.starts_with("https://") || b.url.starts_with("http://");
                        if !scheme_ok || b.url.len() > MAX_URL_BYTES || b.url.chars().any(char::is_control) {
                            return Err(
                                c.err("content.buttons.url", "only http(s) URLs of at most 2048 bytes")
                            );
                        }
                    }
                }
            }
            (Some(Target { channel_type, platform_id, thread_id }), OutboundBody::Chat(parsed))
        }
        OutboundKind::System => {
            string_fields(&c, content)?;
            let action: SystemAction = c.json(content)?;
            check_action(&c, &action)?;
            (None, OutboundBody::System(action))
        }
    };
    Ok(ValidOutbound { rowid: raw.rowid, id, seq, in_reply_to, deliver_after, target, body })
}

/// Most packages of one `install_packages` request (seed 003).
pub const MAX_PACKAGES: usize = 20;

/// A Debian package name as Debian policy allows it: lowercase letters, digits, `+`, `-`, `.`,
/// starting with a letter or digit, 2-64 characters. Anything else (a version spec, a space, a
/// `;`) is not a name. Checked by the runner's `install_packages` tool and again by the host.
pub fn debian_name_ok(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.'))
}

/// A Debian version: `[epoch:]upstream[-revision]` of letters, digits, `.+~:-`, starting with a
/// digit, 1-64 characters.
pub fn debian_version_ok(version: &str) -> bool {
    (1..=64).contains(&version.len())
        && version.as_bytes()[0].is_ascii_digit()
        && version.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'~' | b':' | b'-'))
}

/// The list and map fields of system actions whose items must be strings (`apt`, `npm`,
/// `args`, `options`, `env`): a wrong item is refused naming it (`content.env.TOKEN`), which the
/// typed parse of an internally tagged enum cannot do.
fn string_fields(c: &Check, content: &str) -> Result<(), RowError> {
    use serde_json::Value as Json;
    let Ok(Json::Object(map)) = serde_json::from_str::<Json>(content) else { return Ok(()) };
    for field in ["apt", "npm", "args", "options"] {
        if let Some(Json::Array(items)) = map.get(field)
            && let Some(i) = items.iter().position(|v| !v.is_string())
        {
            return Err(c.err(format!("content.{field}[{i}]"), "not a string"));
        }
    }
    if let Some(Json::Object(env)) = map.get("env")
        && let Some((k, _)) = env.iter().find(|(_, v)| !v.is_string())
    {
        return Err(c.err(format!("content.env.{k}"), "not a string"));
    }
    Ok(())
}

/// Field checks of the task and question actions: ids, sizes, counts, times. Errors name the
/// field as `content.<field>`.
fn check_action(c: &Check, action: &SystemAction) -> Result<(), RowError> {
    // A plain text field: not blank, at most `max` bytes, no NUL.
    let text = |field: &str, s: &str, max: usize| -> Result<(), RowError> {
        if s.trim().is_empty() || s.len() > max || s.contains('\0') {
            return Err(c.err(field, format!("empty, longer than {max} bytes or contains a NUL character")));
        }
        Ok(())
    };
    // A short one-line field (cron, time zone): no control characters either.
    let short = |field: &str, s: &str| -> Result<(), RowError> {
        text(field, s, MAX_SCHEDULE_FIELD_BYTES)?;
        if s.chars().any(char::is_control) {
            return Err(c.err(field, "contains control characters"));
        }
        Ok(())
    };
    match action {
        SystemAction::PauseTask { task_id } | SystemAction::ResumeTask { task_id } => {
            c.check_id(task_id, "content.task_id")
        }
        SystemAction::UpdateTask { task_id, prompt, process_after, recurrence, timezone } => {
            c.check_id(task_id, "content.task_id")?;
            if prompt.is_none() && process_after.is_none() && recurrence.is_none() && timezone.is_none() {
                return Err(c.err("content", "update_task changes nothing"));
            }
            if let Some(p) = prompt {
                text("content.prompt", p, MAX_TEXT_BYTES)?;
            }
            if let Some(t) = process_after {
                c.time(&Value::Text(t.clone()), "content.process_after")?;
            }
            if let Some(r) = recurrence {
                short("content.recurrence", r)?;
            }
            if let Some(z) = timezone {
                short("content.timezone", z)?;
            }
            Ok(())
        }
        SystemAction::AskUserQuestion { title, question, options, timeout_s } => {
            text("content.title", title, MAX_TITLE_BYTES)?;
            text("content.question", question, MAX_TEXT_BYTES)?;
            if !(MIN_QUESTION_OPTIONS..=MAX_QUESTION_OPTIONS).contains(&options.len()) {
                return Err(c.err(
                    "content.options",
                    format!(
                        "{} options; {MIN_QUESTION_OPTIONS} to {MAX_QUESTION_OPTIONS} allowed",
                        options.len()
                    ),
                ));
            }
            for (i, o) in options.iter().enumerate() {
                text("content.options", o, MAX_TITLE_BYTES)?;
                if options[..i].contains(o) {
                    return Err(c.err("content.options", format!("{o:?} is given twice")));
                }
            }
            if !(1..=MAX_QUESTION_TIMEOUT_S).contains(timeout_s) {
                return Err(
                    c.err("content.timeout_s", format!("{timeout_s} not in 1..={MAX_QUESTION_TIMEOUT_S}"))
                );
            }
            Ok(())
        }
        // The other actions are checked by the issues that carry them out.
        _ => Ok(()),
    }
}

/// Validates a raw `messages_out` row into a [`ValidOutbound`] or a [`Rejected`] carrying its
/// ledger key.
pub fn check_outbound(raw: &RawOutboundRow) -> Result<ValidOutbound, Rejected> {
    validate_outbound(raw).map_err(|error| Rejected { rowid: raw.rowid, key: raw.ledger_key(), error })
}

/// One `processing_ack` row exactly as SQLite returned it, each value capped.
#[derive(Debug, Clone, PartialEq)]
pub struct RawAckRow {
    /// SQLite rowid.
    pub rowid: i64,
    /// `message_id`.
    pub message_id: Value,
    /// `status`.
    pub status: Value,
    /// `status_changed`.
    pub status_changed: Value,
    /// `generation`.
    pub generation: Value,
    /// The first column whose value exceeded its cap (and so reads as NULL above).
    pub oversize: Option<Oversize>,
}

impl RawAckRow {
    /// Reads a row of [`SELECT_ACKS`] or [`SELECT_CLAIMS`].
    pub fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        let ([message_id, status, status_changed, generation], oversize) =
            read_capped(r, &PROCESSING_ACK_COLUMNS)?;
        Ok(Self { rowid: r.get(0)?, message_id, status, status_changed, generation, oversize })
    }
}

/// A `processing_ack` row that passed validation: the container's claim (`processing`) or
/// outcome (`completed`, `failed`) of one `messages_in` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAck {
    /// SQLite rowid.
    pub rowid: i64,
    /// The `messages_in` id it is about.
    pub message_id: String,
    /// Claim or outcome.
    pub status: AckStatus,
    /// When the status was set (for a claim: when it was claimed).
    pub status_changed: DateTime<Utc>,
    /// The container generation that wrote it (DESIGN §5); never negative.
    pub generation: i64,
}

/// Validates one raw `processing_ack` row. Every check names the field it failed on.
pub fn validate_ack(raw: &RawAckRow) -> Result<ValidAck, RowError> {
    let c = Check::new("processing_ack");
    c.oversize(raw.oversize)?;
    let message_id = c.id(&raw.message_id, "message_id")?;
    let status_text = c.text(&raw.status, "status")?.ok_or_else(|| c.err("status", "missing"))?;
    let status =
        AckStatus::parse(status_text).map_err(|e| c.err("status", format!("unknown value {:?}", e.value)))?;
    let status_changed =
        c.time(&raw.status_changed, "status_changed")?.ok_or_else(|| c.err("status_changed", "missing"))?;
    let generation = match c.integer(&raw.generation, "generation")? {
        Some(n) if n >= 0 => n,
        Some(n) => return Err(c.err("generation", format!("{n} is negative"))),
        None => return Err(c.err("generation", "missing")),
    };
    Ok(ValidAck { rowid: raw.rowid, message_id, status, status_changed, generation })
}

/// Validates a raw `processing_ack` row into a [`ValidAck`] or a [`Rejected`] keyed by its
/// `message_id` when usable.
pub fn check_ack(raw: &RawAckRow) -> Result<ValidAck, Rejected> {
    validate_ack(raw).map_err(|error| Rejected {
        rowid: raw.rowid,
        key: row_key(raw.rowid, &raw.message_id),
        error,
    })
}

/// The `container_state` row exactly as SQLite returned it, each value capped.
#[derive(Debug, Clone, PartialEq)]
pub struct RawContainerStateRow {
    /// SQLite rowid (the `id` column, 1).
    pub rowid: i64,
    /// `generation`.
    pub generation: Value,
    /// `current_tool`.
    pub current_tool: Value,
    /// `tool_declared_timeout_ms`.
    pub tool_declared_timeout_ms: Value,
    /// The first column whose value exceeded its cap (and so reads as NULL above).
    pub oversize: Option<Oversize>,
}

impl RawContainerStateRow {
    /// Reads a row of [`SELECT_CONTAINER_STATE`].
    pub fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        let ([generation, current_tool, tool_declared_timeout_ms], oversize) =
            read_capped(r, &CONTAINER_STATE_COLUMNS)?;
        Ok(Self { rowid: r.get(0)?, generation, current_tool, tool_declared_timeout_ms, oversize })
    }
}

/// The `container_state` row that passed validation: what the running container says it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidContainerState {
    /// The container generation that wrote it; never negative.
    pub generation: i64,
    /// The tool in flight, if any (at most [`MAX_TOOL_NAME_BYTES`], no control characters).
    pub current_tool: Option<String>,
    /// The timeout the tool in flight declared; `None` when unset or 0. Untrusted: the caller
    /// caps it.
    pub declared_timeout: Option<Duration>,
}

/// Validates the raw `container_state` row. Every check names the field it failed on.
pub fn validate_container_state(raw: &RawContainerStateRow) -> Result<ValidContainerState, RowError> {
    let c = Check::new("container_state");
    c.oversize(raw.oversize)?;
    let generation = match c.integer(&raw.generation, "generation")? {
        Some(n) if n >= 0 => n,
        Some(n) => return Err(c.err("generation", format!("{n} is negative"))),
        None => return Err(c.err("generation", "missing")),
    };
    let current_tool = c.bounded_text(&raw.current_tool, "current_tool", MAX_TOOL_NAME_BYTES)?;
    let declared_timeout = match c.integer(&raw.tool_declared_timeout_ms, "tool_declared_timeout_ms")? {
        None | Some(0) => None,
        Some(ms) if ms > 0 => Some(Duration::from_millis(ms as u64)),
        Some(ms) => return Err(c.err("tool_declared_timeout_ms", format!("{ms} is negative"))),
    };
    Ok(ValidContainerState { generation, current_tool, declared_timeout })
}

/// Validates the raw `container_state` row into a [`ValidContainerState`] or a [`Rejected`].
pub fn check_container_state(raw: &RawContainerStateRow) -> Result<ValidContainerState, Rejected> {
    validate_container_state(raw).map_err(|error| Rejected {
        rowid: raw.rowid,
        key: format!("#rowid:{}", raw.rowid),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawOutboundRow {
        let content = r#"{"type":"text","text":"echo: hi"}"#;
        RawOutboundRow {
            rowid: 1,
            id: Value::Text("out-1".into()),
            seq: Value::Integer(3),
            in_reply_to: Value::Text("m1:main".into()),
            timestamp: Value::Text("2026-01-01T00:00:00.000Z".into()),
            deliver_after: Value::Null,
            kind: Value::Text("chat".into()),
            platform_id: Value::Text("local".into()),
            channel_type: Value::Text("cli".into()),
            thread_id: Value::Null,
            content: Value::Text(content.into()),
            oversize: None,
        }
    }

    fn field_of(r: RawOutboundRow) -> String {
        validate_outbound(&r).unwrap_err().field
    }

    #[test]
    fn a_well_formed_row_passes() {
        let v = validate_outbound(&raw()).unwrap();
        assert_eq!(v.id, "out-1");
        assert_eq!(v.target.unwrap().platform_id, "local");
        assert_eq!(v.body, OutboundBody::Chat(OutboundContent::Text { text: "echo: hi".into() }));
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(RawOutboundRow { id: Value::Integer(5), ..raw() }), "id");
        assert_eq!(field_of(RawOutboundRow { id: Value::Text("../../etc".into()), ..raw() }), "id");
        assert_eq!(field_of(RawOutboundRow { id: Value::Text("x".repeat(500)), ..raw() }), "id");
        assert_eq!(field_of(RawOutboundRow { seq: Value::Integer(4), ..raw() }), "seq");
        assert_eq!(field_of(RawOutboundRow { seq: Value::Text("3".into()), ..raw() }), "seq");
        assert_eq!(
            field_of(RawOutboundRow { timestamp: Value::Text("yesterday".into()), ..raw() }),
            "timestamp"
        );
        assert_eq!(field_of(RawOutboundRow { kind: Value::Text("exec".into()), ..raw() }), "kind");
        assert_eq!(field_of(RawOutboundRow { channel_type: Value::Null, ..raw() }), "channel_type");
        assert_eq!(
            field_of(RawOutboundRow { channel_type: Value::Text("CLI!".into()), ..raw() }),
            "channel_type"
        );
        assert_eq!(field_of(RawOutboundRow { platform_id: Value::Blob(vec![1, 2]), ..raw() }), "platform_id");
        assert_eq!(field_of(RawOutboundRow { thread_id: Value::Text("a\nb".into()), ..raw() }), "thread_id");
        assert_eq!(field_of(RawOutboundRow { content: Value::Null, ..raw() }), "content");
        assert_eq!(field_of(RawOutboundRow { content: Value::Text("{not json".into()), ..raw() }), "content");
        assert_eq!(
            field_of(RawOutboundRow {
                content: Value::Text(r#"{"type":"text","text":"  "}"#.into()),
                ..raw()
            }),
            "content.text"
        );
        let big = format!(r#"{{"type":"text","text":"{}"}}"#, "a".repeat(MAX_TEXT_BYTES + 1));
        assert_eq!(field_of(RawOutboundRow { content: Value::Text(big), ..raw() }), "content.text");
    }

    #[test]
    fn an_oversize_column_is_named_before_anything_else() {
        for c in MESSAGES_OUT_COLUMNS {
            let oversize = Oversize { column: c.name, bytes: 1 << 26, max_bytes: c.max_bytes };
            let e = validate_outbound(&RawOutboundRow { oversize: Some(oversize), ..raw() }).unwrap_err();
            assert_eq!(e.field, c.name);
            assert_eq!(
                e.to_string(),
                format!("messages_out.{}: 67108864 bytes exceeds the limit of {}", c.name, c.max_bytes)
            );
        }
    }

    #[test]
    fn unusable_ids_get_a_rowid_ledger_key() {
        assert_eq!(raw().ledger_key(), "out-1");
        assert_eq!(RawOutboundRow { id: Value::Null, rowid: 9, ..raw() }.ledger_key(), "#rowid:9");
        let rejected =
            check_outbound(&RawOutboundRow { id: Value::Integer(1), rowid: 4, ..raw() }).unwrap_err();
        assert_eq!(
            (rejected.rowid, rejected.key.as_str(), rejected.error.field.as_str()),
            (4, "#rowid:4", "id")
        );
    }

    #[test]
    fn file_rows_point_only_into_their_own_outbox_folder() {
        let file = |name: &str, path: &str| {
            let content =
                serde_json::json!({"type": "file", "files": [{"name": name, "path": path}]}).to_string();
            RawOutboundRow { content: Value::Text(content), ..raw() }
        };
        let id = match raw().id {
            Value::Text(t) => t,
            other => panic!("{other:?}"),
        };
        let ok = validate_outbound(&file("a.txt", &format!("outbox/{id}/a.txt"))).unwrap();
        assert!(matches!(ok.body, OutboundBody::Chat(OutboundContent::File { .. })));
        assert_eq!(field_of(file("a.txt", "outbox/other/a.txt")), "content.files.path");
        assert_eq!(field_of(file("..", &format!("outbox/{id}/.."))), "content.files.name");
        assert_eq!(field_of(file("x/y", &format!("outbox/{id}/x/y"))), "content.files.name");
        let none = RawOutboundRow { content: Value::Text(r#"{"type":"file","files":[]}"#.into()), ..raw() };
        assert_eq!(field_of(none), "content.files");
    }

    #[test]
    fn edits_reactions_and_cards_are_checked_by_field() {
        let row = |content: serde_json::Value| RawOutboundRow {
            content: Value::Text(content.to_string()),
            ..raw()
        };
        validate_outbound(&row(serde_json::json!({"type": "edit", "target": "out-1", "text": "new"})))
            .unwrap();
        validate_outbound(&row(serde_json::json!({"type": "reaction", "target": "m1:main", "emoji": "👍"})))
            .unwrap();
        let card = serde_json::json!({"type": "card", "title": "T", "text": "x",
            "buttons": [{"label": "docs", "url": "https://example.org/a"}]});
        validate_outbound(&row(card)).unwrap();
        assert_eq!(
            field_of(row(serde_json::json!({"type": "edit", "target": "", "text": "x"}))),
            "content.target"
        );
        assert_eq!(
            field_of(row(serde_json::json!({"type": "reaction", "target": "m1", "emoji": "x".repeat(65)}))),
            "content.emoji"
        );
        let js = serde_json::json!({"type": "card", "title": "T", "text": "",
            "buttons": [{"label": "x", "url": "javascript:alert(1)"}]});
        assert_eq!(field_of(row(js)), "content.buttons.url");
    }

    #[test]
    fn system_rows_parse_typed_actions() {
        let c = r#"{"action":"request_rebuild","reason":"new deps"}"#;
        let r =
            RawOutboundRow { kind: Value::Text("system".into()), content: Value::Text(c.into()), ..raw() };
        let v = validate_outbound(&r).unwrap();
        assert!(v.target.is_none());
        assert!(matches!(v.body, OutboundBody::System(SystemAction::RequestRebuild { .. })));
        // A value of the wrong type is refused naming its field.
        let c = r#"{"action":"add_mcp_server","name":"x","command":"c","env":{"TOKEN":1}}"#;
        let bad = RawOutboundRow { content: Value::Text(c.into()), ..r.clone() };
        let err = validate_outbound(&bad).unwrap_err().to_string();
        assert!(err.contains("content.env.TOKEN"), "{err}");
        let bad = RawOutboundRow { content: Value::Text(r#"{"action":"format_disk"}"#.into()), ..r };
        assert_eq!(field_of(bad), "content");
    }

    #[test]
    fn task_and_question_actions_are_checked_by_field() {
        let row = |content: serde_json::Value| RawOutboundRow {
            kind: Value::Text("system".into()),
            content: Value::Text(content.to_string()),
            ..raw()
        };
        let question = |options: serde_json::Value, timeout_s: u32| {
            row(serde_json::json!({"action": "ask_user_question", "title": "Lunch", "question": "Which?",
                "options": options, "timeout_s": timeout_s}))
        };
        validate_outbound(&row(serde_json::json!({"action": "list_tasks"}))).unwrap();
        validate_outbound(&row(serde_json::json!({"action": "pause_task", "task_id": "task-1"}))).unwrap();
        validate_outbound(&question(serde_json::json!(["a", "b"]), 300)).unwrap();
        validate_outbound(&row(serde_json::json!({"action": "update_task", "task_id": "t1",
            "process_after": "2026-07-01T09:00:00Z", "recurrence": "0 9 * * *"})))
        .unwrap();
        assert_eq!(
            field_of(row(serde_json::json!({"action": "resume_task", "task_id": "a b"}))),
            "content.task_id"
        );
        assert_eq!(field_of(row(serde_json::json!({"action": "update_task", "task_id": "t1"}))), "content");
        assert_eq!(
            field_of(row(
                serde_json::json!({"action": "update_task", "task_id": "t1", "process_after": "soon"})
            )),
            "content.process_after"
        );
        assert_eq!(
            field_of(row(
                serde_json::json!({"action": "update_task", "task_id": "t1", "timezone": "x".repeat(200)})
            )),
            "content.timezone"
        );
        assert_eq!(field_of(question(serde_json::json!(["only"]), 300)), "content.options");
        let eleven: Vec<String> = (0..11).map(|i| i.to_string()).collect();
        assert_eq!(field_of(question(serde_json::json!(eleven), 300)), "content.options");
        assert_eq!(field_of(question(serde_json::json!(["a", "a"]), 300)), "content.options");
        assert_eq!(field_of(question(serde_json::json!(["a", "x".repeat(300)]), 300)), "content.options");
        assert_eq!(field_of(question(serde_json::json!(["a", "b"]), 0)), "content.timeout_s");
        assert_eq!(field_of(question(serde_json::json!(["a", "b"]), 86_401)), "content.timeout_s");
        assert!(
            validate_outbound(&question(serde_json::json!(["a", "b"]), 86_400)).is_ok(),
            "a day is allowed"
        );
        let untitled = row(serde_json::json!({"action": "ask_user_question", "title": " ", "question": "q",
            "options": ["a", "b"], "timeout_s": 5}));
        assert_eq!(field_of(untitled), "content.title");
    }

    fn ack() -> RawAckRow {
        RawAckRow {
            rowid: 2,
            message_id: Value::Text("m1".into()),
            status: Value::Text("processing".into()),
            status_changed: Value::Text("2026-01-01T00:00:00.000Z".into()),
            generation: Value::Integer(3),
            oversize: None,
        }
    }

    #[test]
    fn acks_validate_each_field() {
        let v = validate_ack(&ack()).unwrap();
        assert_eq!((v.message_id.as_str(), v.status, v.generation), ("m1", AckStatus::Processing, 3));
        let field = |r: RawAckRow| validate_ack(&r).unwrap_err().field;
        assert_eq!(field(RawAckRow { message_id: Value::Text("a b".into()), ..ack() }), "message_id");
        assert_eq!(field(RawAckRow { status: Value::Text("done".into()), ..ack() }), "status");
        assert_eq!(field(RawAckRow { status: Value::Null, ..ack() }), "status");
        assert_eq!(field(RawAckRow { status_changed: Value::Text("now".into()), ..ack() }), "status_changed");
        assert_eq!(field(RawAckRow { generation: Value::Integer(-1), ..ack() }), "generation");
        assert_eq!(field(RawAckRow { generation: Value::Real(1.0), ..ack() }), "generation");
        let o = Oversize { column: "status", bytes: 99, max_bytes: MAX_ENUM_BYTES };
        let e = check_ack(&RawAckRow { oversize: Some(o), ..ack() }).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.error.to_string().as_str()),
            ("m1", "processing_ack.status: 99 bytes exceeds the limit of 16")
        );
    }

    fn state() -> RawContainerStateRow {
        RawContainerStateRow {
            rowid: 1,
            generation: Value::Integer(2),
            current_tool: Value::Text("bash".into()),
            tool_declared_timeout_ms: Value::Integer(90_000),
            oversize: None,
        }
    }

    #[test]
    fn container_state_validates_each_field() {
        let v = validate_container_state(&state()).unwrap();
        assert_eq!(v.declared_timeout, Some(Duration::from_secs(90)));
        assert_eq!(v.current_tool.as_deref(), Some("bash"));
        let zero = RawContainerStateRow { tool_declared_timeout_ms: Value::Integer(0), ..state() };
        assert_eq!(validate_container_state(&zero).unwrap().declared_timeout, None);
        let field = |r: RawContainerStateRow| validate_container_state(&r).unwrap_err().field;
        assert_eq!(
            field(RawContainerStateRow { tool_declared_timeout_ms: Value::Integer(-5), ..state() }),
            "tool_declared_timeout_ms"
        );
        assert_eq!(
            field(RawContainerStateRow { current_tool: Value::Text("a\u{7}".into()), ..state() }),
            "current_tool"
        );
        assert_eq!(field(RawContainerStateRow { generation: Value::Null, ..state() }), "generation");
    }

    /// A DB with the honest schema, a `SQLITE_LIMIT_LENGTH` below the big values (loading one
    /// would fail the statement with SQLITE_TOOBIG), and CHECK constraints off, as an attacker's.
    fn hostile_db() -> (tempfile::TempDir, rusqlite::Connection) {
        let dir = tempfile::tempdir().unwrap();
        let w = crate::schema::open_outbound_writer(&dir.path().join("outbound.db")).unwrap();
        w.pragma_update(None, "ignore_check_constraints", true).unwrap();
        (dir, w)
    }

    const BIG: &str = "CAST(zeroblob(2097152) AS TEXT)";

    fn limit_reads(conn: &rusqlite::Connection) {
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, 1 << 20).unwrap();
    }

    #[test]
    fn selects_never_load_an_oversize_value() {
        let (_d, w) = hostile_db();
        w.execute(
            "INSERT INTO messages_out (id, seq, timestamp, kind, platform_id, channel_type, content) VALUES ('a', 1, '2026-01-01T00:00:00.000Z', 'chat', 'local', 'cli', ?1)",
            [r#"{"type":"text","text":"hi"}"#],
        )
        .unwrap();
        for (i, c) in MESSAGES_OUT_COLUMNS.iter().enumerate() {
            let mut values: Vec<String> = vec![
                format!("'id{i}'"),
                format!("{}", 2 * i + 3),
                "NULL".into(),
                "'2026-01-01T00:00:00.000Z'".into(),
                "NULL".into(),
                "'chat'".into(),
                "'local'".into(),
                "'cli'".into(),
                "NULL".into(),
                "'{}'".into(),
            ];
            values[i] = BIG.into();
            let names: Vec<&str> = MESSAGES_OUT_COLUMNS.iter().map(|c| c.name).collect();
            w.execute(
                &format!("INSERT INTO messages_out ({}) VALUES ({})", names.join(","), values.join(",")),
                [],
            )
            .unwrap_or_else(|e| panic!("insert big {}: {e}", c.name));
        }
        w.execute(&format!("INSERT INTO processing_ack VALUES ({BIG}, 'processing', 't', 1)"), []).unwrap();
        w.execute(&format!("INSERT INTO processing_ack VALUES ('m', {BIG}, 't', 1)"), []).unwrap();
        w.execute(&format!("INSERT INTO processing_ack VALUES ('n', 'processing', {BIG}, 1)"), []).unwrap();
        w.execute(&format!("INSERT INTO processing_ack VALUES ('o', 'processing', 't', {BIG})"), []).unwrap();
        w.execute(&format!("INSERT INTO container_state VALUES (1, 1, {BIG}, 5, NULL, 't')"), []).unwrap();
        limit_reads(&w);

        let rows: Vec<RawOutboundRow> = w
            .prepare(&SELECT_MESSAGES_OUT)
            .unwrap()
            .query_map([0, 100], RawOutboundRow::from_row)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 1 + MESSAGES_OUT_COLUMNS.len());
        assert!(validate_outbound(&rows[0]).is_ok());
        for (row, c) in rows[1..].iter().zip(MESSAGES_OUT_COLUMNS) {
            let o = row.oversize.unwrap();
            assert_eq!((o.column, o.bytes), (c.name, 2097152));
            assert_eq!(validate_outbound(row).unwrap_err().field, c.name);
        }
        assert!(rows.iter().all(|r| {
            [&r.id, &r.seq, &r.timestamp, &r.kind, &r.platform_id, &r.channel_type, &r.content]
                .iter()
                .all(|v| !matches!(v, Value::Text(t) if t.len() > 1 << 20))
        }));

        let acks: Vec<RawAckRow> = w
            .prepare(&SELECT_ACKS)
            .unwrap()
            .query_map([0, 100], RawAckRow::from_row)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let named: Vec<String> = acks.iter().map(|a| validate_ack(a).unwrap_err().field).collect();
        assert_eq!(named, ["message_id", "status", "status_changed", "generation"]);
        // The claim filter never loads status or generation: only rows with small ones qualify.
        let claims: Vec<RawAckRow> = w
            .prepare(&SELECT_CLAIMS)
            .unwrap()
            .query_map([1, 100, 0], RawAckRow::from_row)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(claims.iter().map(|a| a.rowid).collect::<Vec<_>>(), vec![1, 3]);
        // From the host's ack cursor on: rows below it are not read.
        let from_2: Vec<i64> = w
            .prepare(&SELECT_CLAIMS)
            .unwrap()
            .query_map([1, 100, 2], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(from_2, vec![3]);
        let state = w.query_row(&SELECT_CONTAINER_STATE, [], RawContainerStateRow::from_row).unwrap();
        assert_eq!(state.current_tool, Value::Null);
        assert_eq!(validate_container_state(&state).unwrap_err().field, "current_tool");
    }
}
