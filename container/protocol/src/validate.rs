//! Host-side validation of what the untrusted container wrote into `outbound.db`.
//!
//! The host reads every column as an untyped SQLite value ([`RawOutboundRow`]) with
//! [`SELECT_PENDING_OUTBOUND`] — which never loads a `content` larger than
//! [`MAX_CONTENT_BYTES`] — and turns it into a [`ValidOutbound`] or a [`RowError`] naming the field.
//! A compromised container can write anything into its own DB, including rows that ignore the
//! schema's CHECK constraints (it can replace the file); nothing here trusts them.

use crate::content::{OutboundContent, SystemAction};
use crate::rows::{OutboundKind, is_outbound_seq};
use rusqlite::types::Value;

/// Largest `content` the host will load, in bytes.
pub const MAX_CONTENT_BYTES: i64 = 256 * 1024;
/// Largest text of one outbound message, in bytes. Channels split further to their own limits.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Largest id (`id`, `in_reply_to`), in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Largest platform or thread id, in bytes.
pub const MAX_PLATFORM_ID_BYTES: usize = 256;
/// Largest channel type, in bytes.
pub const MAX_CHANNEL_TYPE_BYTES: usize = 64;

/// Selects every `messages_out` row with its `rowid`, the length of its content, and the content
/// only when it is at most [`MAX_CONTENT_BYTES`] long. Parameter `?1`: the smallest rowid to read
/// (rows are append-only for the host's purposes; it remembers how far it has looked).
/// Columns in the order of [`RawOutboundRow::from_row`].
pub const SELECT_PENDING_OUTBOUND: &str = "SELECT rowid, id, seq, in_reply_to, timestamp, deliver_after, kind, \
     platform_id, channel_type, thread_id, length(CAST(content AS BLOB)), \
     CASE WHEN length(CAST(content AS BLOB)) <= 262144 THEN content END \
     FROM messages_out WHERE rowid >= ?1 ORDER BY rowid LIMIT 256";

/// One `messages_out` row exactly as SQLite returned it.
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
    /// `length(content)` in bytes (NULL content gives NULL).
    pub content_len: Value,
    /// `content`, NULL when longer than [`MAX_CONTENT_BYTES`].
    pub content: Value,
}

impl RawOutboundRow {
    /// Reads a row of [`SELECT_PENDING_OUTBOUND`].
    pub fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            rowid: r.get(0)?,
            id: r.get(1)?,
            seq: r.get(2)?,
            in_reply_to: r.get(3)?,
            timestamp: r.get(4)?,
            deliver_after: r.get(5)?,
            kind: r.get(6)?,
            platform_id: r.get(7)?,
            channel_type: r.get(8)?,
            thread_id: r.get(9)?,
            content_len: r.get(10)?,
            content: r.get(11)?,
        })
    }

    /// The key under which the host records this row in `delivered`: the row's `id` when it is a
    /// valid id, else `#rowid:<n>` so that an unusable row is still recorded (and not retried).
    pub fn ledger_key(&self) -> String {
        match valid_id(&self.id, "id") {
            Ok(id) => id,
            Err(_) => format!("#rowid:{}", self.rowid),
        }
    }
}

/// Why a row was rejected. Displays as `messages_out.<field>: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("messages_out.{field}: {reason}")]
pub struct RowError {
    /// The offending column, or `content.<path>` inside the JSON.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> RowError {
    RowError { field: field.into(), reason: reason.into() }
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
    pub deliver_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Destination of a chat row; `None` for system rows.
    pub target: Option<Target>,
    /// What to deliver or apply.
    pub body: OutboundBody,
}

fn text<'a>(v: &'a Value, field: &str) -> Result<Option<&'a str>, RowError> {
    match v {
        Value::Null => Ok(None),
        Value::Text(s) => Ok(Some(s)),
        Value::Integer(_) => Err(err(field, "expected text, found an integer")),
        Value::Real(_) => Err(err(field, "expected text, found a real")),
        Value::Blob(_) => Err(err(field, "expected text, found a blob")),
    }
}

fn valid_id(v: &Value, field: &str) -> Result<String, RowError> {
    let s = text(v, field)?.ok_or_else(|| err(field, "missing"))?;
    check_id(s, field)?;
    Ok(s.to_string())
}

fn check_id(s: &str, field: &str) -> Result<(), RowError> {
    if s.is_empty() || s.len() > MAX_ID_BYTES {
        return Err(err(field, format!("length {} not in 1..={MAX_ID_BYTES}", s.len())));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
        return Err(err(field, "only ASCII letters, digits and . _ : - are allowed"));
    }
    Ok(())
}

fn bounded_text(v: &Value, field: &str, max: usize) -> Result<Option<String>, RowError> {
    match text(v, field)? {
        None => Ok(None),
        Some(s) if s.is_empty() || s.len() > max => {
            Err(err(field, format!("length {} not in 1..={max}", s.len())))
        }
        Some(s) if s.chars().any(char::is_control) => Err(err(field, "contains control characters")),
        Some(s) => Ok(Some(s.to_string())),
    }
}

fn time(v: &Value, field: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, RowError> {
    match text(v, field)? {
        None => Ok(None),
        Some(s) if s.len() > 64 => Err(err(field, "longer than 64 bytes")),
        Some(s) => {
            crate::time::parse_ts(s).map(Some).map_err(|e| err(field, format!("not an RFC 3339 time: {e}")))
        }
    }
}

/// Validates one raw row. Every check names the field it failed on.
pub fn validate_outbound(raw: &RawOutboundRow) -> Result<ValidOutbound, RowError> {
    let id = valid_id(&raw.id, "id")?;
    let seq = match raw.seq {
        Value::Integer(n) if is_outbound_seq(n) => n,
        Value::Integer(n) => return Err(err("seq", format!("{n} is not a positive odd number"))),
        _ => return Err(err("seq", "expected an integer")),
    };
    let in_reply_to = match text(&raw.in_reply_to, "in_reply_to")? {
        None => None,
        Some(s) => {
            check_id(s, "in_reply_to")?;
            Some(s.to_string())
        }
    };
    time(&raw.timestamp, "timestamp")?.ok_or_else(|| err("timestamp", "missing"))?;
    let deliver_after = time(&raw.deliver_after, "deliver_after")?;
    let kind_text = text(&raw.kind, "kind")?.ok_or_else(|| err("kind", "missing"))?;
    let kind =
        OutboundKind::parse(kind_text).map_err(|e| err("kind", format!("unknown value {:?}", e.value)))?;

    let content_len = match raw.content_len {
        Value::Integer(n) => n,
        Value::Null => return Err(err("content", "missing")),
        _ => return Err(err("content", "unreadable length")),
    };
    if content_len > MAX_CONTENT_BYTES {
        return Err(err("content", format!("{content_len} bytes exceeds the limit of {MAX_CONTENT_BYTES}")));
    }
    let content = text(&raw.content, "content")?.ok_or_else(|| err("content", "missing"))?;

    let (target, body) = match kind {
        OutboundKind::Chat => {
            let channel_type = bounded_text(&raw.channel_type, "channel_type", MAX_CHANNEL_TYPE_BYTES)?
                .ok_or_else(|| err("channel_type", "missing for a chat row"))?;
            if !channel_type
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(err("channel_type", "only lowercase ASCII letters, digits, - and _ are allowed"));
            }
            let platform_id = bounded_text(&raw.platform_id, "platform_id", MAX_PLATFORM_ID_BYTES)?
                .ok_or_else(|| err("platform_id", "missing for a chat row"))?;
            let thread_id = bounded_text(&raw.thread_id, "thread_id", MAX_PLATFORM_ID_BYTES)?;
            let parsed: OutboundContent = parse_json(content)?;
            match &parsed {
                OutboundContent::Text { text } => {
                    if text.trim().is_empty() {
                        return Err(err("content.text", "empty"));
                    }
                    if text.len() > MAX_TEXT_BYTES {
                        return Err(err(
                            "content.text",
                            format!("{} bytes exceeds the limit of {MAX_TEXT_BYTES}", text.len()),
                        ));
                    }
                    if text.contains('\0') {
                        return Err(err("content.text", "contains a NUL character"));
                    }
                }
            }
            (Some(Target { channel_type, platform_id, thread_id }), OutboundBody::Chat(parsed))
        }
        OutboundKind::System => (None, OutboundBody::System(parse_json(content)?)),
    };
    Ok(ValidOutbound { rowid: raw.rowid, id, seq, in_reply_to, deliver_after, target, body })
}

fn parse_json<T: serde::de::DeserializeOwned>(content: &str) -> Result<T, RowError> {
    serde_json::from_str(content).map_err(|e| {
        let msg = e.to_string();
        // serde_json messages are one line; keep them short for logs and notes to the agent.
        err("content", msg.chars().take(200).collect::<String>())
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
            content_len: Value::Integer(content.len() as i64),
            content: Value::Text(content.into()),
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
        assert_eq!(
            field_of(RawOutboundRow {
                content_len: Value::Integer(MAX_CONTENT_BYTES + 1),
                content: Value::Null,
                ..raw()
            }),
            "content"
        );
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
    fn unusable_ids_get_a_rowid_ledger_key() {
        assert_eq!(raw().ledger_key(), "out-1");
        assert_eq!(RawOutboundRow { id: Value::Null, rowid: 9, ..raw() }.ledger_key(), "#rowid:9");
    }

    #[test]
    fn system_rows_parse_typed_actions() {
        let c = r#"{"action":"request_rebuild","reason":"new deps"}"#;
        let r = RawOutboundRow {
            kind: Value::Text("system".into()),
            content: Value::Text(c.into()),
            content_len: Value::Integer(c.len() as i64),
            ..raw()
        };
        let v = validate_outbound(&r).unwrap();
        assert!(v.target.is_none());
        assert!(matches!(v.body, OutboundBody::System(SystemAction::RequestRebuild { .. })));
        let bad = RawOutboundRow { content: Value::Text(r#"{"action":"format_disk"}"#.into()), ..r };
        assert_eq!(field_of(bad), "content");
    }

    #[test]
    fn select_reads_real_rows_and_skips_oversized_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outbound.db");
        let w = crate::schema::open_outbound_writer(&p).unwrap();
        w.execute(
            "INSERT INTO messages_out (id, seq, timestamp, kind, platform_id, channel_type, content) VALUES ('a', 1, '2026-01-01T00:00:00.000Z', 'chat', 'local', 'cli', ?1)",
            [r#"{"type":"text","text":"hi"}"#],
        )
        .unwrap();
        let huge = "x".repeat(MAX_CONTENT_BYTES as usize + 10);
        w.execute(
            "INSERT INTO messages_out (id, seq, timestamp, kind, content) VALUES ('b', 3, '2026-01-01T00:00:00.000Z', 'chat', ?1)",
            [&huge],
        )
        .unwrap();
        let r = crate::schema::open_outbound_reader(&p).unwrap();
        let mut st = r.prepare(SELECT_PENDING_OUTBOUND).unwrap();
        let rows: Vec<RawOutboundRow> =
            st.query_map([0], RawOutboundRow::from_row).unwrap().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        assert!(validate_outbound(&rows[0]).is_ok());
        assert_eq!(rows[1].content, Value::Null);
        assert_eq!(validate_outbound(&rows[1]).unwrap_err().field, "content");
    }
}
