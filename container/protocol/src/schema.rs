//! Schemas of the two session DBs and the rules for opening them.
//!
//! Both DBs use a rollback journal (WAL's shared-memory index does not work across bind mounts
//! into VMs and needs write access for readers; crates.md §3.3) — `journal_mode=TRUNCATE` with
//! `synchronous=NORMAL`, see [`open_writer`] — a busy wait of
//! [`BUSY_TIMEOUT_MS`] in fine steps ([`busy_wait`]), and are opened per operation. Every open refuses a symlinked DB file (`SQLITE_OPEN_NOFOLLOW`).
//!
//! Each file has exactly one writer (DESIGN §5 invariant 1): the host writes `inbound.db`, the
//! runner writes `outbound.db`. The other side opens read-only. Schema versions live in
//! `PRAGMA user_version`; a DB newer than [`SCHEMA_VERSION`] is refused rather than misread.

use rusqlite::{Connection, OpenFlags};
use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

/// Version of both session-DB schemas, stored in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 2;

/// How long a connection waits for the other side's lock before `SQLITE_BUSY`, in milliseconds.
pub const BUSY_TIMEOUT_MS: u64 = 5000;

/// Between two tries of a busy lock during the first [`BUSY_FINE`] of a wait.
pub const BUSY_STEP: Duration = Duration::from_micros(50);

/// How long a wait tries every [`BUSY_STEP`] before it slows to one try per millisecond.
pub const BUSY_FINE: Duration = Duration::from_millis(5);

thread_local! {
    /// When the current lock wait of this thread began (SQLite calls the busy handler on the
    /// thread running the statement, with `tries` back at 0 for each new wait).
    static WAIT_STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// SQLite busy handler for locks held across the session boundary: tries again every
/// [`BUSY_STEP`] for the first [`BUSY_FINE`], then every millisecond, and gives up (`SQLITE_BUSY`)
/// once `LIMIT_MS` milliseconds have passed since the wait began.
///
/// Why not `busy_timeout`: SQLite's own handler sleeps 1, 2, 5, 10, 15… ms between tries, while
/// the host and the runner hold these locks for one commit or one read, well under a millisecond.
/// The runner's read of `inbound.db` right after its reply meets the host's delivery commit on
/// most turns; each meeting cost 1–8 ms of the turn (seen with `strace`: 1, 2, 5 ms sleeps).
pub fn busy_wait<const LIMIT_MS: u64>(tries: i32) -> bool {
    let now = Instant::now();
    let started = WAIT_STARTED.with(|w| match (tries, w.get()) {
        (1.., Some(t)) => t,
        _ => {
            w.set(Some(now));
            now
        }
    });
    let waited = now - started;
    if waited >= Duration::from_millis(LIMIT_MS) {
        return false;
    }
    // A busy handler runs inside a blocking SQLite call, which is what SQLite's own handler
    // does too: callers already keep these calls off async workers (or accept the wait).
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(if waited < BUSY_FINE { BUSY_STEP } else { Duration::from_millis(1) });
    true
}

/// Schema of `inbound.db` (host-written).
pub const INBOUND_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS messages_in (
    id                TEXT PRIMARY KEY,
    seq               INTEGER NOT NULL UNIQUE CHECK (seq > 0 AND seq % 2 = 0),
    kind              TEXT NOT NULL DEFAULT 'chat' CHECK (kind IN ('chat','task','system','webhook')),
    timestamp         TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','completed','failed','paused')),
    process_after     TEXT,
    recurrence        TEXT,
    series_id         TEXT,
    tries             INTEGER NOT NULL DEFAULT 0 CHECK (tries >= 0),
    trigger           INTEGER NOT NULL DEFAULT 1 CHECK (trigger IN (0,1)),
    on_wake           INTEGER NOT NULL DEFAULT 0 CHECK (on_wake IN (0,1)),
    platform_id       TEXT,
    channel_type      TEXT,
    thread_id         TEXT,
    content           TEXT NOT NULL,
    source_session_id TEXT
);
CREATE INDEX IF NOT EXISTS messages_in_due ON messages_in (status, process_after);
CREATE INDEX IF NOT EXISTS messages_in_series ON messages_in (series_id);

CREATE TABLE IF NOT EXISTS delivered (
    message_out_id      TEXT PRIMARY KEY,
    platform_message_id TEXT,
    status              TEXT NOT NULL DEFAULT 'sending' CHECK (status IN ('sending','retrying','delivered','failed')),
    attempts            INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error               TEXT,
    updated_at          TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS destinations (
    name           TEXT PRIMARY KEY,
    display_name   TEXT,
    type           TEXT NOT NULL DEFAULT 'channel' CHECK (type IN ('channel','agent')),
    channel_type   TEXT,
    platform_id    TEXT,
    agent_group_id TEXT
);

-- How far the host has read the container's outbound.db: every row below `rowid` of that table
-- is final on the host's side (version 2). Start-up and each pass resume from here instead of
-- walking the whole table.
CREATE TABLE IF NOT EXISTS host_cursors (
    name  TEXT PRIMARY KEY CHECK (name IN ('messages_out','processing_ack')),
    rowid INTEGER NOT NULL CHECK (rowid >= 0)
);

CREATE TABLE IF NOT EXISTS session_routing (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    channel_type TEXT,
    platform_id  TEXT,
    thread_id    TEXT
);
"#;

/// Schema of `outbound.db` (container-written).
pub const OUTBOUND_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS messages_out (
    id            TEXT PRIMARY KEY,
    seq           INTEGER NOT NULL UNIQUE CHECK (seq > 0 AND seq % 2 = 1),
    in_reply_to   TEXT,
    timestamp     TEXT NOT NULL,
    deliver_after TEXT,
    recurrence    TEXT,
    kind          TEXT NOT NULL DEFAULT 'chat' CHECK (kind IN ('chat','system')),
    platform_id   TEXT,
    channel_type  TEXT,
    thread_id     TEXT,
    content       TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS processing_ack (
    message_id     TEXT PRIMARY KEY,
    status         TEXT NOT NULL DEFAULT 'processing' CHECK (status IN ('processing','completed','failed')),
    status_changed TEXT NOT NULL,
    generation     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS session_state (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS container_state (
    id                       INTEGER PRIMARY KEY CHECK (id = 1),
    generation               INTEGER NOT NULL DEFAULT 0,
    current_tool             TEXT,
    tool_declared_timeout_ms INTEGER,
    tool_started_at          TEXT,
    updated_at               TEXT NOT NULL
);
"#;

/// One row of `sqlite_schema`: a table, index, view or trigger of a DB.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchemaObject {
    /// `table`, `index`, `view` or `trigger`.
    pub kind: String,
    /// The object's name (`sqlite_autoindex_<table>_<n>` for the indexes of UNIQUE / PRIMARY KEY).
    pub name: String,
    /// The table it belongs to (its own name for a table).
    pub tbl_name: String,
    /// The `CREATE` statement as SQLite stores it; NULL (`None`) for automatic indexes.
    pub sql: Option<String>,
}

/// Every object an honest `outbound.db` holds, as `sqlite_schema` lists them: what
/// [`OUTBOUND_SCHEMA`] creates, read back from an in-memory DB so that the text is exactly what
/// SQLite stores. The host compares a container's `outbound.db` against this set before reading it
/// (any extra object, such as a view, trigger or virtual table, or any changed `CREATE` text, such
/// as a generated column or a different CHECK, is refused).
pub static OUTBOUND_OBJECTS: std::sync::LazyLock<Vec<SchemaObject>> = std::sync::LazyLock::new(|| {
    // Not a test of journal modes (what the ban guards): only the schema text SQLite stores.
    #[expect(clippy::disallowed_methods, reason = "reads back the schema text, no journal involved")]
    let conn = Connection::open_in_memory().expect("an in-memory DB opens");
    conn.execute_batch(OUTBOUND_SCHEMA).expect("OUTBOUND_SCHEMA is valid SQL");
    let mut st = conn
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")
        .expect("sqlite_schema is readable");
    st.query_map([], |r| {
        Ok(SchemaObject { kind: r.get(0)?, name: r.get(1)?, tbl_name: r.get(2)?, sql: r.get(3)? })
    })
    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
    .expect("sqlite_schema rows are text")
});

/// Errors opening or initialising a session DB.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// SQLite refused the open or a statement.
    #[error("{path}: {source}")]
    Sqlite {
        /// The DB file.
        path: String,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The DB was written by a newer schema than this build understands.
    #[error("{path}: schema version {found} is newer than supported version {SCHEMA_VERSION}")]
    TooNew {
        /// The DB file.
        path: String,
        /// The `user_version` found.
        found: i64,
    },
}

fn sqlite_err(path: &Path) -> impl FnOnce(rusqlite::Error) -> SchemaError + '_ {
    move |source| SchemaError::Sqlite { path: path.display().to_string(), source }
}

fn open(path: &Path, flags: OpenFlags) -> Result<Connection, SchemaError> {
    let conn = Connection::open_with_flags(
        path,
        flags | OpenFlags::SQLITE_OPEN_NOFOLLOW | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(path))?;
    conn.busy_handler(Some(busy_wait::<BUSY_TIMEOUT_MS>)).map_err(sqlite_err(path))?;
    // A cached page map could hide the other process's writes across a bind mount
    // (seed 002: "open inbound.db fresh per messages_in read").
    conn.pragma_update(None, "mmap_size", 0).map_err(sqlite_err(path))?;
    Ok(conn)
}

/// Opens (creating if needed) a session DB for writing and brings its schema up to date.
///
/// Commits use `journal_mode=TRUNCATE` and `synchronous=NORMAL`: two `fsync`s a commit (the
/// journal, then the DB) where `DELETE` with `FULL` made four (the journal, its directory after
/// creating it, the journal header, the DB) and an unlink. A commit survives a crash of the
/// process that made it (the kernel has the pages); after a power loss the file is whole on a
/// journaling file system but may lack its last commits — the promise the central DB makes
/// with WAL and `NORMAL`. Measured: 0.47 ms a commit instead of 0.65 ms on the machine of
/// BENCHMARKS.md, five commits in every turn. The journal stays as an empty file between
/// commits; a reader treats an empty journal as no journal, read-only as it is.
fn open_writer(path: &Path, schema: &str) -> Result<Connection, SchemaError> {
    let conn = open(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)?;
    let mode: String =
        conn.query_row("PRAGMA journal_mode=TRUNCATE", [], |r| r.get(0)).map_err(sqlite_err(path))?;
    debug_assert_eq!(mode.to_ascii_lowercase(), "truncate");
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sqlite_err(path))?;
    let version: i64 =
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sqlite_err(path))?;
    if version > SCHEMA_VERSION {
        return Err(SchemaError::TooNew { path: path.display().to_string(), found: version });
    }
    if version < SCHEMA_VERSION {
        conn.execute_batch(schema).map_err(sqlite_err(path))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sqlite_err(path))?;
    }
    Ok(conn)
}

/// Opens an existing session DB read-only; refuses a newer schema.
fn open_reader(path: &Path) -> Result<Connection, SchemaError> {
    let conn = open(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let version: i64 =
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sqlite_err(path))?;
    if version > SCHEMA_VERSION {
        return Err(SchemaError::TooNew { path: path.display().to_string(), found: version });
    }
    Ok(conn)
}

/// How long the host waits for a lock on `inbound.db`, in milliseconds. Only the container can
/// hold one (a read transaction through its read-only mount), and an honest runner holds it for
/// milliseconds; a longer wait means a stuck or hostile container, and waiting longer would hold
/// up the host.
pub const HOST_WRITE_BUSY_TIMEOUT_MS: u64 = 1000;

/// Host: opens `inbound.db` for writing, creating it and its tables if needed, with
/// [`HOST_WRITE_BUSY_TIMEOUT_MS`].
pub fn open_inbound_writer(path: &Path) -> Result<Connection, SchemaError> {
    let conn = open_writer(path, INBOUND_SCHEMA)?;
    conn.busy_handler(Some(busy_wait::<HOST_WRITE_BUSY_TIMEOUT_MS>)).map_err(sqlite_err(path))?;
    Ok(conn)
}

/// Container: opens `inbound.db` read-only. Use a fresh connection for every read.
pub fn open_inbound_reader(path: &Path) -> Result<Connection, SchemaError> {
    open_reader(path)
}

/// Container: opens `inbound.db` read-only for one read transaction begun with [`begin_read`],
/// which checks the schema version inside that transaction. Every lock a reader takes checks
/// for a journal beside the file by path, and in a container whose root is a FUSE file system
/// (Docker's `fuse-overlayfs` driver) each such look-up costs tens of microseconds: one lock per
/// read instead of two.
pub fn open_inbound_for_read(path: &Path) -> Result<Connection, SchemaError> {
    open(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
}

/// Begins a deferred read transaction on `conn` (opened by [`open_inbound_for_read`]) and
/// refuses, inside it, a file of a newer schema. Errors: SQLite's, naming `path`, or
/// [`SchemaError::TooNew`].
pub fn begin_read<'c>(
    conn: &'c mut Connection,
    path: &Path,
) -> Result<rusqlite::Transaction<'c>, SchemaError> {
    let tx =
        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred).map_err(sqlite_err(path))?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sqlite_err(path))?;
    if version > SCHEMA_VERSION {
        return Err(SchemaError::TooNew { path: path.display().to_string(), found: version });
    }
    Ok(tx)
}

/// Container: opens `outbound.db` for writing, creating it and its tables if needed.
pub fn open_outbound_writer(path: &Path) -> Result<Connection, SchemaError> {
    open_writer(path, OUTBOUND_SCHEMA)
}

/// Opens `outbound.db` read-only. The host never writes this file (DESIGN §5), and its service
/// never uses this plain reader on a container's file: it reads through
/// `nanoclaw_actors::container_files`, which checks files, schema, sizes and time first. This one
/// is for trusted files (tests, the runner's own).
pub fn open_outbound_reader(path: &Path) -> Result<Connection, SchemaError> {
    open_reader(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_create_schema_with_a_rollback_journal_and_readers_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let inbound = dir.path().join("inbound.db");
        let outbound = dir.path().join("outbound.db");
        {
            let w = open_inbound_writer(&inbound).unwrap();
            let mode: String = w.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
            assert_eq!(mode, "truncate");
            let sync: i64 = w.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
            assert_eq!(sync, 1, "synchronous=NORMAL");
            w.execute("INSERT INTO messages_in (id, seq, timestamp, content) VALUES ('a', 2, 't', '{}')", [])
                .unwrap();
            // Seq parity is a constraint, not only a convention.
            assert!(
                w.execute(
                    "INSERT INTO messages_in (id, seq, timestamp, content) VALUES ('b', 3, 't', '{}')",
                    []
                )
                .is_err()
            );
            assert!(w.execute("INSERT INTO messages_in (id, seq, timestamp, content, kind) VALUES ('c', 4, 't', '{}', 'bogus')", []).is_err());
            open_outbound_writer(&outbound).unwrap();
        }
        let r = open_inbound_reader(&inbound).unwrap();
        let n: i64 = r.query_row("SELECT count(*) FROM messages_in", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
        assert!(r.execute("DELETE FROM messages_in", []).is_err());
        let o = open_outbound_reader(&outbound).unwrap();
        assert!(o.execute("INSERT INTO session_state VALUES ('k','v','t')", []).is_err());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inbound.db");
        open_inbound_writer(&p).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(open_inbound_writer(&p), Err(SchemaError::TooNew { found: 99, .. })));
        assert!(matches!(open_inbound_reader(&p), Err(SchemaError::TooNew { .. })));
    }

    #[test]
    fn outbound_objects_are_the_four_tables_and_their_key_indexes() {
        let names: Vec<(&str, &str)> =
            OUTBOUND_OBJECTS.iter().map(|o| (o.kind.as_str(), o.name.as_str())).collect();
        assert_eq!(
            names,
            [
                ("index", "sqlite_autoindex_messages_out_1"),
                ("index", "sqlite_autoindex_messages_out_2"),
                ("index", "sqlite_autoindex_processing_ack_1"),
                ("index", "sqlite_autoindex_session_state_1"),
                ("table", "container_state"),
                ("table", "messages_out"),
                ("table", "processing_ack"),
                ("table", "session_state"),
            ]
        );
        assert!(OUTBOUND_OBJECTS.iter().all(|o| (o.kind == "index") == o.sql.is_none()));
    }

    #[test]
    fn symlinked_db_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"host file").unwrap();
        let link = dir.path().join("outbound.db");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_outbound_reader(&link).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"host file");
    }
}
