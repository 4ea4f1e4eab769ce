//! The runner's side of the session DBs: reads of `inbound.db` (fresh read-only connection each
//! time, seed 002) and the single writer connection of `outbound.db`.

use nanoclaw_protocol::rows::{
    AckStatus, Destination, DestinationType, InboundKind, InboundRow, InboundStatus, OutboundRow,
    SessionRouting, next_outbound_seq,
};
use nanoclaw_protocol::schema::{self, SchemaError};
use nanoclaw_protocol::time::now_ts;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};

/// Errors of the runner's DB work.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Opening a session DB failed.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A statement failed.
    #[error("{what}: {source}")]
    Sqlite {
        /// What the runner was doing.
        what: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
}

trait Ctx<T> {
    fn ctx(self, what: &'static str) -> Result<T, DbError>;
}

impl<T> Ctx<T> for rusqlite::Result<T> {
    fn ctx(self, what: &'static str) -> Result<T, DbError> {
        self.map_err(|source| DbError::Sqlite { what, source })
    }
}

/// What one read of `inbound.db` found.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Due, pending, unclaimed rows (oldest first, at most the prompt limit): chat and task rows,
    /// and the host notes that wake the agent (`system` rows with `trigger = 1`, such as an
    /// approval's outcome); the other notes are in [`Snapshot::notes`].
    pub batch: Vec<InboundRow>,
    /// Named destinations.
    pub destinations: Vec<Destination>,
    /// Default reply address.
    pub routing: SessionRouting,
    /// Largest seq in `messages_in`, for odd-seq allocation.
    pub max_inbound_seq: Option<i64>,
    /// The earliest `process_after` of a pending triggering row not yet due (a retry backoff or a
    /// scheduled message): the runner's next read is due then, with no wake byte to announce it.
    pub next_due: Option<String>,
    /// Notes of the host the model has not seen yet (refused messages, a stopped
    /// agent-to-agent exchange): `(seq, text)`, oldest first, at most [`MAX_NOTES`]. Shown at the
    /// start of the next turn; [`SessionDb::notes_seen`] records them as seen.
    pub notes: Vec<(i64, String)>,
}

/// Most host notes shown in one turn (the rest follow in the next).
pub const MAX_NOTES: usize = 20;

/// `session_state` key: the seq of the newest host note shown to the model.
pub const NOTES_SEEN_KEY: &str = "host_notes_seen";

/// The text of a host note for the model, `None` for the answers a tool waits for (an action's
/// result: the tool call already showed it).
pub fn note_text(content: &str) -> Option<String> {
    use nanoclaw_protocol::content::SystemNotice;
    match serde_json::from_str::<SystemNotice>(content).ok()? {
        SystemNotice::Rejected { message_out_id, reason } => {
            Some(format!("Your message {message_out_id} was not delivered: {reason}"))
        }
        SystemNotice::Note { text } => Some(text),
        SystemNotice::ActionResult { .. } => None,
    }
}

impl Snapshot {
    /// True when the batch holds a row that wakes the agent (`trigger = 1`).
    pub fn has_trigger(&self) -> bool {
        self.batch.iter().any(|r| r.trigger)
    }
}

/// The host's `processing_ack` cursor from `inbound.db` (every ack row below it is final on the
/// host's side); 0 when there is none yet or it cannot be read, which only costs a longer scan.
fn host_ack_cursor(inbound_path: &Path) -> i64 {
    if !inbound_path.exists() {
        return 0;
    }
    schema::open_inbound_reader(inbound_path)
        .ok()
        .and_then(|c| {
            c.query_row("SELECT rowid FROM host_cursors WHERE name = 'processing_ack'", [], |r| r.get(0))
                .optional()
                .ok()
                .flatten()
        })
        .unwrap_or(0)
}

/// The runner's handle on its session DBs.
pub struct SessionDb {
    inbound_path: PathBuf,
    outbound: Connection,
    generation: i64,
}

impl SessionDb {
    /// Opens `outbound.db` (creating it), records `generation` in `container_state` and drops
    /// `processing` claims left by any other generation: their container is gone, and the host has
    /// already counted the try (DESIGN §5).
    pub fn open(inbound_path: &Path, outbound_path: &Path, generation: i64) -> Result<Self, DbError> {
        let mut outbound = schema::open_outbound_writer(outbound_path)?;
        let tx = outbound.transaction_with_behavior(TransactionBehavior::Immediate).ctx("begin startup")?;
        tx.execute(
            "INSERT INTO container_state (id, generation, updated_at) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET generation = excluded.generation, current_tool = NULL,
               tool_declared_timeout_ms = NULL, tool_started_at = NULL, updated_at = excluded.updated_at",
            params![generation, now_ts()],
        )
        .ctx("record generation")?;
        // Claims are never below the host's ack cursor (it stops at the first row still
        // `processing`), so the delete is a rowid range, not a scan of every turn ever acked.
        let from = host_ack_cursor(inbound_path);
        tx.execute(
            "DELETE FROM processing_ack WHERE rowid >= ?2 AND status = 'processing' AND generation <> ?1",
            params![generation, from],
        )
        .ctx("clear stale claims")?;
        tx.commit().ctx("commit startup")?;
        Ok(Self { inbound_path: inbound_path.to_path_buf(), outbound, generation })
    }

    /// Reads the due batch. `first_read` admits `on_wake` rows (only a fresh container's first
    /// read may take them, so a dying container never steals a wake message).
    pub fn read(&self, first_read: bool, limit: usize) -> Result<Snapshot, DbError> {
        // A missing inbound.db means the host has not written anything yet.
        if !self.inbound_path.exists() {
            return Ok(Snapshot::default());
        }
        let mut inbound = schema::open_inbound_for_read(&self.inbound_path)?;
        // One read transaction for every statement, the version check included: one consistent
        // view, and one lock and one journal check instead of one per statement.
        let inbound = schema::begin_read(&mut inbound, &self.inbound_path)?;
        let now = now_ts();
        let mut st = inbound
            .prepare(
                "SELECT id, seq, kind, timestamp, status, process_after, recurrence, series_id, tries, trigger,
                        on_wake, platform_id, channel_type, thread_id, content, source_session_id
                 FROM messages_in
                 WHERE status = 'pending' AND (kind <> 'system' OR trigger = 1)
                   AND (process_after IS NULL OR process_after <= ?1)
                   AND (on_wake = 0 OR ?2)
                 ORDER BY seq LIMIT 500",
            )
            .ctx("prepare batch read")?;
        let rows = st
            .query_map(params![now, first_read], |r| {
                let kind: String = r.get(2)?;
                let status: String = r.get(4)?;
                Ok(InboundRow {
                    id: r.get(0)?,
                    seq: r.get(1)?,
                    kind: InboundKind::parse(&kind).unwrap_or(InboundKind::Chat),
                    timestamp: r.get(3)?,
                    status: InboundStatus::parse(&status).unwrap_or(InboundStatus::Pending),
                    process_after: r.get(5)?,
                    recurrence: r.get(6)?,
                    series_id: r.get(7)?,
                    tries: r.get(8)?,
                    trigger: r.get(9)?,
                    on_wake: r.get(10)?,
                    platform_id: r.get(11)?,
                    channel_type: r.get(12)?,
                    thread_id: r.get(13)?,
                    content: r.get(14)?,
                    source_session_id: r.get(15)?,
                })
            })
            .ctx("read batch")?
            .collect::<Result<Vec<_>, _>>()
            .ctx("read batch row")?;
        let mut acked = self
            .outbound
            .prepare_cached("SELECT 1 FROM processing_ack WHERE message_id = ?1")
            .ctx("prepare ack lookup")?;
        let mut batch = Vec::new();
        for row in rows {
            if acked.exists([&row.id]).ctx("ack lookup")? {
                continue;
            }
            batch.push(row);
            if batch.len() == limit {
                break;
            }
        }
        let destinations = inbound
            .prepare("SELECT name, display_name, type, channel_type, platform_id, agent_group_id FROM destinations ORDER BY name")
            .ctx("prepare destinations")?
            .query_map([], |r| {
                let t: String = r.get(2)?;
                Ok(Destination {
                    name: r.get(0)?,
                    display_name: r.get(1)?,
                    kind: DestinationType::parse(&t).unwrap_or(DestinationType::Channel),
                    channel_type: r.get(3)?,
                    platform_id: r.get(4)?,
                    agent_group_id: r.get(5)?,
                })
            })
            .ctx("read destinations")?
            .collect::<Result<Vec<_>, _>>()
            .ctx("read destination row")?;
        let routing = inbound
            .query_row(
                "SELECT channel_type, platform_id, thread_id FROM session_routing WHERE id = 1",
                [],
                |r| {
                    Ok(SessionRouting {
                        channel_type: r.get(0)?,
                        platform_id: r.get(1)?,
                        thread_id: r.get(2)?,
                    })
                },
            )
            .optional()
            .ctx("read routing")?
            .unwrap_or_default();
        let max_inbound_seq =
            inbound.query_row("SELECT max(seq) FROM messages_in", [], |r| r.get(0)).ctx("max seq")?;
        let next_due = inbound
            .query_row(
                "SELECT min(process_after) FROM messages_in
                 WHERE status = 'pending' AND kind <> 'system' AND trigger = 1 AND process_after > ?1",
                params![now],
                |r| r.get(0),
            )
            .ctx("next due")?;
        let seen: i64 = self.state(NOTES_SEEN_KEY)?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let notes = inbound
            .prepare_cached(
                "SELECT seq, content FROM messages_in WHERE kind = 'system' AND trigger = 0 AND seq > ?1
                 ORDER BY seq LIMIT 100",
            )
            .ctx("prepare notes")?
            .query_map([seen], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .ctx("read notes")?
            .collect::<Result<Vec<_>, _>>()
            .ctx("read note")?
            .into_iter()
            .filter_map(|(seq, content)| note_text(&content).map(|t| (seq, t)))
            .take(MAX_NOTES)
            .collect();
        drop(st);
        inbound.commit().ctx("end read")?;
        Ok(Snapshot { batch, destinations, routing, max_inbound_seq, next_due, notes })
    }

    /// Claims rows for this generation.
    pub fn claim(&mut self, ids: &[String]) -> Result<(), DbError> {
        let tx =
            self.outbound.transaction_with_behavior(TransactionBehavior::Immediate).ctx("begin claim")?;
        {
            let mut st = tx
                .prepare("INSERT OR REPLACE INTO processing_ack (message_id, status, status_changed, generation) VALUES (?1, 'processing', ?2, ?3)")
                .ctx("prepare claim")?;
            let now = now_ts();
            for id in ids {
                st.execute(params![id, now, self.generation]).ctx("claim")?;
            }
        }
        tx.commit().ctx("commit claim")
    }

    /// Drops this generation's `processing` claims on `ids` (a turn abandoned at SIGTERM), so
    /// the next container takes them without the host counting a try.
    pub fn release(&mut self, ids: &[String]) -> Result<(), DbError> {
        let mut st = self
            .outbound
            .prepare("DELETE FROM processing_ack WHERE message_id = ?1 AND status = 'processing' AND generation = ?2")
            .ctx("prepare release")?;
        for id in ids {
            st.execute(params![id, self.generation]).ctx("release")?;
        }
        Ok(())
    }

    /// Commits a finished turn atomically: the reply rows (seqs assigned here), the acks of
    /// every claimed row, and the provider continuation. Either the host sees all of it or none.
    pub fn commit_turn(
        &mut self,
        replies: Vec<OutboundRow>,
        acks: &[(String, AckStatus)],
        continuation: Option<(&str, &str)>,
        max_inbound_seq: Option<i64>,
    ) -> Result<Vec<OutboundRow>, DbError> {
        let tx =
            self.outbound.transaction_with_behavior(TransactionBehavior::Immediate).ctx("begin commit")?;
        let max_out: Option<i64> =
            tx.query_row("SELECT max(seq) FROM messages_out", [], |r| r.get(0)).ctx("max out seq")?;
        let mut seq_base = max_out.max(max_inbound_seq);
        let now = now_ts();
        let mut written = Vec::with_capacity(replies.len());
        for mut row in replies {
            let seq = next_outbound_seq(seq_base);
            seq_base = Some(seq);
            row.seq = seq;
            tx.execute(
                "INSERT INTO messages_out (id, seq, in_reply_to, timestamp, deliver_after, kind, platform_id, channel_type, thread_id, content)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    row.id,
                    row.seq,
                    row.in_reply_to,
                    row.timestamp,
                    row.deliver_after,
                    row.kind.as_str(),
                    row.platform_id,
                    row.channel_type,
                    row.thread_id,
                    row.content
                ],
            )
            .ctx("insert reply")?;
            written.push(row);
        }
        for (id, status) in acks {
            tx.execute(
                "INSERT INTO processing_ack (message_id, status, status_changed, generation) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (message_id) DO UPDATE SET status = excluded.status, status_changed = excluded.status_changed,
                   generation = excluded.generation",
                params![id, status.as_str(), now, self.generation],
            )
            .ctx("ack")?;
        }
        if let Some((key, value)) = continuation {
            upsert_state(&tx, key, value)?;
        }
        tx.commit().ctx("commit turn")?;
        Ok(written)
    }

    /// Records the host notes of `snapshot` as shown to the model (after its turn was
    /// committed), so the next turn does not show them again. Nothing to do without notes.
    pub fn notes_seen(&mut self, snapshot: &Snapshot) -> Result<(), DbError> {
        match snapshot.notes.last() {
            Some((seq, _)) => self.set_state(NOTES_SEEN_KEY, &seq.to_string()),
            None => Ok(()),
        }
    }

    /// Reads a `session_state` value.
    pub fn state(&self, key: &str) -> Result<Option<String>, DbError> {
        self.outbound
            .query_row("SELECT value FROM session_state WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .ctx("read session state")
    }

    /// Writes a `session_state` value at once (a continuation is stored on `init` so a crash
    /// mid-turn can resume, reference §9).
    pub fn set_state(&mut self, key: &str, value: &str) -> Result<(), DbError> {
        upsert_state(&self.outbound, key, value)
    }

    /// Records (or clears, with `None`) the tool in flight and its declared timeout, which the
    /// host's stuck detection honours.
    pub fn set_tool(&mut self, tool: Option<(&str, Option<i64>)>) -> Result<(), DbError> {
        let (name, timeout, started) = match tool {
            Some((n, t)) => (Some(n), t, Some(now_ts())),
            None => (None, None, None),
        };
        self.outbound
            .execute(
                "UPDATE container_state SET current_tool = ?1, tool_declared_timeout_ms = ?2, tool_started_at = ?3, updated_at = ?4 WHERE id = 1",
                params![name, timeout, started, now_ts()],
            )
            .ctx("set tool state")?;
        Ok(())
    }
}

fn upsert_state(conn: &Connection, key: &str, value: &str) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO session_state (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        params![key, value, now_ts()],
    )
    .ctx("write session state")?;
    Ok(())
}

impl SessionDb {
    /// The host's answer to the system action row `out_id` (a `system` row `note-<out_id>` in
    /// `inbound.db`), once it exists. An unparsable answer counts as none.
    pub fn action_result(
        &self,
        out_id: &str,
    ) -> Result<Option<nanoclaw_protocol::content::SystemNotice>, DbError> {
        if !self.inbound_path.exists() {
            return Ok(None);
        }
        let inbound = schema::open_inbound_reader(&self.inbound_path)?;
        let content: Option<String> = inbound
            .query_row(
                "SELECT content FROM messages_in WHERE id = ?1 AND kind = 'system'",
                [format!("note-{out_id}")],
                |r| r.get(0),
            )
            .optional()
            .ctx("read action result")?;
        Ok(content.and_then(|c| serde_json::from_str(&c).ok()))
    }
}

/// A message of this session named by its agent-visible seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqTarget {
    /// Its `messages_in` or `messages_out` id.
    pub id: String,
    /// True for a message the agent sent (odd seq, `messages_out`).
    pub sent: bool,
    /// The chat it belongs to.
    pub channel_type: Option<String>,
    /// The chat it belongs to.
    pub platform_id: Option<String>,
}

impl SessionDb {
    /// The chat message with agent-visible `seq`: odd seqs are the agent's own (`messages_out`),
    /// even ones received (`messages_in`, system rows excluded).
    pub fn message_by_seq(&self, seq: i64) -> Result<Option<SeqTarget>, DbError> {
        let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(String, Option<String>, Option<String>)> {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        };
        let sent = seq.rem_euclid(2) == 1;
        let row = if sent {
            self.outbound
                .query_row(
                    "SELECT id, channel_type, platform_id FROM messages_out WHERE seq = ?1 AND kind = 'chat'",
                    [seq],
                    map,
                )
                .optional()
                .ctx("read message by seq")?
        } else {
            if !self.inbound_path.exists() {
                return Ok(None);
            }
            schema::open_inbound_reader(&self.inbound_path)?
                .query_row(
                    "SELECT id, channel_type, platform_id FROM messages_in WHERE seq = ?1 AND kind <> 'system'",
                    [seq],
                    map,
                )
                .optional()
                .ctx("read message by seq")?
        };
        Ok(row.map(|(id, channel_type, platform_id)| SeqTarget { id, sent, channel_type, platform_id }))
    }
}

/// Key of a provider's continuation in `session_state` (DESIGN §5).
pub fn continuation_key(provider: &str) -> String {
    format!("continuation:{provider}")
}
