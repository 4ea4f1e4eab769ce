//! The host's one door to the files a container writes (STYLE rule 11, DESIGN §6).
//!
//! A container runs model-written commands, so every byte in its `workspace/` folder is hostile.
//! This module is the only place in the host that opens `outbound.db` (and its `-journal`,
//! `-wal`, `-shm`) or looks at `.heartbeat`. Nothing else may open them: callers get typed,
//! bounded values ([`OutboundSnapshot`]) or a typed [`ReadError`].
//!
//! Rules, each with the attack it stops (found by probes against issue 2's reader):
//!
//! 1. **File types before any open.** `outbound.db` is `lstat`ed, then opened by us with
//!    `O_RDONLY | O_NOFOLLOW | O_NONBLOCK` and `fstat`ed: it must be a regular file. Its
//!    `-journal`, `-wal` and `-shm` names must be absent or regular files. A FIFO named
//!    `outbound.db-journal` hangs SQLite's hot-journal check forever (it opens the journal with a
//!    blocking `open()`); a symlink could make the host read one of its own files; a device node
//!    would be opened on the host.
//! 2. **No WAL.** The header's file-format bytes (offsets 18, 19) must be 1 (rollback journal)
//!    and no `-wal` file may exist: SQLite switches to WAL mode whenever a `-wal` file exists,
//!    whatever the header says, and WAL mode maps the container-writable `-shm` into the host.
//!    The runner always uses a rollback journal (`journal_mode=TRUNCATE`), so neither is
//!    legitimate.
//! 3. **Size.** The DB and its journal are at most [`ReadLimits::max_file_bytes`]
//!    (`container.outbound_max_mb`, default 256): a 1 GB sparse file costs the container nothing
//!    and the host a full scan.
//! 4. **Header.** Magic `SQLite format 3\0` and UTF-8 text: anything else is not an honest DB.
//! 5. **Schema.** `sqlite_schema` must hold exactly [`OUTBOUND_OBJECTS`] (type, name, table and
//!    `CREATE` text): no views (a `messages_out` view over a recursive CTE never ends), no
//!    triggers, no virtual tables, no generated columns or changed CHECKs. `user_version` must be
//!    at most [`SCHEMA_VERSION`] (newer is refused; older is read, since the objects are checked
//!    exactly anyway); 0 means the runner has not finished
//!    creating the schema, which reads as "not present yet" as long as every object is expected.
//! 6. **SQLite hardening.** `trusted_schema` off, defensive mode, views and triggers disabled,
//!    `query_only`, no attached DBs, `SQLITE_LIMIT_LENGTH` of [`MAX_LOADED_VALUE_BYTES`] so no
//!    single value the schema parser or a statement loads can be large.
//! 7. **Every column capped.** Statements select `octet_length(col)` (answered from the record
//!    header, without reading the value) and the value only when it fits the column's cap
//!    ([`nanoclaw_protocol::validate`]), so a 64 MB `thread_id` is never loaded; the row is
//!    rejected naming the column.
//! 8. **Time.** A progress handler interrupts any statement after
//!    [`ReadLimits::statement_deadline`] (and the whole read after [`ReadLimits::read_deadline`]);
//!    the busy timeout is the statement deadline. The async [`read`] runs on the blocking pool
//!    under the read deadline, so a read blocked in a system call (a FIFO swapped in after the
//!    checks) never stops the session actor's Kill, stuck detection or shutdown; on timeout it
//!    opens every FIFO among the four names read-write and closes it, which releases a blocked
//!    `open()` on Linux.
//! 9. **One snapshot.** All reads of one pass run in one connection and one read transaction, so
//!    messages, acks, claims and state agree with each other.
//!
//! Files the agent sends (`send_file`) are read by [`read_outbox_file`]: the path must be exactly
//! `outbox/<row id>/<name>`; each component is opened with `openat(O_NOFOLLOW)` from the one
//! before (so no symlink anywhere on the way is followed and `..` or `/` never appear), the file
//! must be regular by `fstat` of the opened descriptor (`O_NONBLOCK`, so a FIFO never blocks the
//! open), at most [`MAX_OUTBOX_FILE_BYTES`], and the read runs on the blocking pool under a
//! deadline. Any broken rule fails that row only ([`OutboxFileError::Refused`]), not the session:
//! a model can be tricked into sending a link, and the host's files stay out of reach either way.
//!
//! The host never writes in `workspace/` (DESIGN §5), and the folder itself is created by the
//! host and is the container's mount point, so only the names inside it can be hostile.

use crate::session_files::SessionPaths;
use nanoclaw_protocol::layout;
use nanoclaw_protocol::schema::{self, OUTBOUND_OBJECTS, SCHEMA_VERSION, SchemaObject};
use nanoclaw_protocol::validate::{
    RawAckRow, RawContainerStateRow, RawOutboundRow, Rejected, SELECT_ACKS, SELECT_CLAIMS,
    SELECT_CONTAINER_STATE, SELECT_MESSAGES_OUT, ValidAck, ValidContainerState, ValidOutbound, check_ack,
    check_container_state, check_outbound,
};
use parking_lot::Mutex;
use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `SQLITE_LIMIT_LENGTH` of a connection to `outbound.db`, in bytes: the largest string or blob
/// SQLite will load. Above every column cap (the largest is `content`, 256 KiB) and far below
/// anything that could hurt the host; an attempt to load more fails the statement
/// (`SQLITE_TOOBIG`, a [`Violation::Unreadable`]).
pub const MAX_LOADED_VALUE_BYTES: i32 = 1024 * 1024;

/// How many VM instructions run between two checks of the deadline (a few microseconds).
const PROGRESS_OPS: i32 = 1000;

/// Largest `sqlite_schema` text read (the honest `CREATE TABLE` statements are under 1 KiB).
const MAX_SCHEMA_SQL_BYTES: usize = 16 * 1024;

/// Most blocking reads that may be running at once, across all sessions. A read stuck in a
/// system call holds a blocking-pool thread until it is released; this bound keeps such threads
/// from piling up (tokio's pool has 512). Beyond it, [`read`] answers [`ReadError::Unavailable`].
pub const MAX_READS_IN_FLIGHT: usize = 64;

/// The bounds of one read of `outbound.db`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadLimits {
    /// Largest `outbound.db` (and `-journal`) accepted, in bytes. From the config key
    /// `container.outbound_max_mb` (default 256 MiB): generous for years of messages of one
    /// session, small enough that a scan is bounded.
    pub max_file_bytes: u64,
    /// Longest one SQLite statement may run (progress handler) or wait for the runner's lock
    /// (busy timeout). Default 2 s: honest reads take milliseconds; the runner holds its write
    /// lock only for a transaction.
    pub statement_deadline: Duration,
    /// Longest the whole read may take, checks and every statement included; [`read`] gives up
    /// on the blocking thread after it. Default 5 s, a little above two statement deadlines.
    pub read_deadline: Duration,
    /// Most rows one statement returns (one page of a cursor). Default 500: bounds memory per
    /// read (500 × 256 KiB content at worst) while draining a backlog in few passes.
    pub max_rows: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 256 * 1024 * 1024,
            statement_deadline: Duration::from_secs(2),
            read_deadline: Duration::from_secs(5),
            max_rows: 500,
        }
    }
}

/// What one read pass should return. Every part is optional; all run in one read transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundRequest {
    /// Read `messages_out` rows with `rowid >=` this (the caller's low-water mark).
    pub messages_from_rowid: Option<i64>,
    /// Read `processing_ack` rows (every status) with `rowid >=` this. The runner finishes a
    /// claim in place (`processing` → `completed` keeps the rowid; a re-claim gets a new one), so
    /// a caller's low-water mark must not move past a row still `processing`.
    pub acks_from_rowid: Option<i64>,
    /// Read the claims (`processing` acks) of this container generation…
    pub claims_of_generation: Option<i64>,
    /// …with `rowid >=` this: the caller's ack low-water mark, which no claim is below (0 reads
    /// them all).
    pub claims_from_rowid: i64,
    /// Read the `container_state` row.
    pub container_state: bool,
}

/// One consistent view of `outbound.db`. Lists are in rowid order and hold at most
/// [`ReadLimits::max_rows`] rows each; a full page means there may be more. A row that breaks the
/// rules is a [`Rejected`] naming its table and column (the caller logs it and moves past it by
/// its rowid); a rejected `messages_out` row carries its delivery-ledger key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundSnapshot {
    /// False when `outbound.db` does not exist, is empty, or its schema is not written yet
    /// (`user_version` 0): the runner has not started. Every list is then empty.
    pub present: bool,
    /// `messages_out` rows from [`OutboundRequest::messages_from_rowid`].
    pub messages: Vec<Result<ValidOutbound, Rejected>>,
    /// `processing_ack` rows from [`OutboundRequest::acks_from_rowid`].
    pub acks: Vec<Result<ValidAck, Rejected>>,
    /// Claims of [`OutboundRequest::claims_of_generation`]: acks with status `processing`. A row
    /// whose `status` or `generation` is oversize is never a claim (the ack cursor reports it).
    pub claims: Vec<Result<ValidAck, Rejected>>,
    /// The `container_state` row, when asked for and present.
    pub container_state: Option<Result<ValidContainerState, Rejected>>,
}

/// What a non-regular file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A directory.
    Directory,
    /// A Unix socket.
    Socket,
    /// A block device node.
    BlockDevice,
    /// A character device node.
    CharDevice,
    /// Anything else.
    Other,
}

impl FileKind {
    /// The kind of `t`, or `None` for a regular file.
    fn of(t: std::fs::FileType) -> Option<Self> {
        Some(if t.is_file() {
            return None;
        } else if t.is_symlink() {
            Self::Symlink
        } else if t.is_fifo() {
            Self::Fifo
        } else if t.is_dir() {
            Self::Directory
        } else if t.is_socket() {
            Self::Socket
        } else if t.is_block_device() {
            Self::BlockDevice
        } else if t.is_char_device() {
            Self::CharDevice
        } else {
            Self::Other
        })
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Symlink => "symlink",
            Self::Fifo => "fifo",
            Self::Directory => "directory",
            Self::Socket => "socket",
            Self::BlockDevice => "block device",
            Self::CharDevice => "character device",
            Self::Other => "unknown file type",
        })
    }
}

/// The container's files break a rule of this module: an honest runner never does this, so the
/// caller quarantines the session. Display is one line naming the file and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Not a regular file (rule 1).
    #[error("{file}: not a regular file ({kind})")]
    NotRegularFile {
        /// `outbound.db` or one of its side files.
        file: String,
        /// What it is instead.
        kind: FileKind,
    },
    /// Larger than [`ReadLimits::max_file_bytes`] (rule 3).
    #[error("{file}: {bytes} bytes exceeds the limit of {max_bytes}")]
    TooLarge {
        /// `outbound.db` or `outbound.db-journal`.
        file: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// The header is not an SQLite 3 header (rule 4).
    #[error("{file}: not an sqlite database")]
    NotSqlite {
        /// `outbound.db`.
        file: String,
    },
    /// The header's file-format bytes are not those of a rollback-journal DB (rule 2).
    #[error(
        "{file}: file format versions {write_version}/{read_version}, expected 1/1 (rollback journal; wal is refused)"
    )]
    NotRollbackJournal {
        /// `outbound.db`.
        file: String,
        /// Header byte 18.
        write_version: u8,
        /// Header byte 19.
        read_version: u8,
    },
    /// The DB's text encoding is not UTF-8 (rule 4).
    #[error("{file}: text encoding {encoding}, expected 1 (utf-8)")]
    NotUtf8 {
        /// `outbound.db`.
        file: String,
        /// Header bytes 56..60.
        encoding: u32,
    },
    /// A `-wal` file exists next to a rollback-journal DB (rule 2).
    #[error("{file}: present, but the database uses a rollback journal (wal is refused)")]
    WalPresent {
        /// `outbound.db-wal`.
        file: String,
    },
    /// `user_version` is negative or newer than [`SCHEMA_VERSION`] (rule 5).
    #[error("{file}: schema version {found}, expected at most {SCHEMA_VERSION}")]
    SchemaVersion {
        /// `outbound.db`.
        file: String,
        /// The `user_version` found.
        found: i64,
    },
    /// `sqlite_schema` holds an object the schema does not (rule 5).
    #[error("{file}: unexpected {kind} {name}")]
    UnexpectedObject {
        /// `outbound.db`.
        file: String,
        /// `table`, `index`, `view`, `trigger` (virtual tables are tables).
        kind: String,
        /// Its name, at most 64 characters.
        name: String,
    },
    /// An expected object has a different table or `CREATE` text (rule 5).
    #[error("{file}: {kind} {name} differs from the expected schema")]
    ChangedObject {
        /// `outbound.db`.
        file: String,
        /// `table` or `index`.
        kind: String,
        /// Its name.
        name: String,
    },
    /// An expected object is missing from a DB whose schema version says it is complete (rule 5).
    #[error("{file}: {kind} {name} is missing")]
    MissingObject {
        /// `outbound.db`.
        file: String,
        /// `table` or `index`.
        kind: String,
        /// Its name.
        name: String,
    },
    /// SQLite found the file corrupt, not a database, or holding a value above
    /// [`MAX_LOADED_VALUE_BYTES`] where no cap applies (the schema). The runner writes through
    /// SQLite with a rollback journal, so an honest file is never corrupt: this is treated as
    /// hostile rather than transient.
    #[error("{file}: unreadable database ({detail})")]
    Unreadable {
        /// `outbound.db`.
        file: String,
        /// SQLite's message.
        detail: String,
    },
}

/// Why a read of `outbound.db` returned nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The files break the rules: quarantine the session.
    #[error(transparent)]
    Violation(#[from] Violation),
    /// A statement or the whole read passed its deadline (a hostile query plan, a lock held too
    /// long, or a system call that blocked). The caller may retry later; repeated deadlines are
    /// the caller's call to make.
    #[error("{file}: {what} passed its deadline of {after:?}")]
    Deadline {
        /// `outbound.db`.
        file: String,
        /// The step: `checks`, `open`, `schema`, `messages_out`, `acks`, `claims`,
        /// `container_state`, or `read` for the whole read.
        what: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// Transient: the runner holds its lock, a hot journal waits for the runner's rollback, the
    /// file vanished mid-read, an I/O error, or too many reads in flight. Retry later.
    #[error("{file}: cannot read now: {reason}")]
    Unavailable {
        /// `outbound.db`.
        file: String,
        /// What happened.
        reason: String,
    },
}

fn db_name() -> String {
    layout::OUTBOUND_DB.to_string()
}

fn unavailable(reason: impl Into<String>) -> ReadError {
    ReadError::Unavailable { file: db_name(), reason: reason.into() }
}

/// The deadline clock shared with SQLite's progress handler.
#[derive(Clone)]
struct Clock(Arc<Mutex<ClockState>>);

struct ClockState {
    /// When the whole read must end.
    read_ends: Instant,
    /// When the current statement must end (never after `read_ends`).
    statement_ends: Instant,
    /// The current step, for [`ReadError::Deadline`].
    what: &'static str,
    /// The statement deadline.
    statement_deadline: Duration,
    /// The read deadline.
    read_deadline: Duration,
}

impl Clock {
    fn new(limits: &ReadLimits) -> Self {
        let now = Instant::now();
        Self(Arc::new(Mutex::new(ClockState {
            read_ends: now + limits.read_deadline,
            statement_ends: now + limits.statement_deadline.min(limits.read_deadline),
            what: "checks",
            statement_deadline: limits.statement_deadline,
            read_deadline: limits.read_deadline,
        })))
    }

    /// Starts step `what`: its statement deadline runs from now. Errors when the whole read is
    /// already past its deadline.
    fn step(&self, what: &'static str) -> Result<(), ReadError> {
        let mut s = self.0.lock();
        let now = Instant::now();
        s.what = what;
        s.statement_ends = (now + s.statement_deadline).min(s.read_ends);
        if now >= s.read_ends {
            return Err(ReadError::Deadline { file: db_name(), what: "read", after: s.read_deadline });
        }
        Ok(())
    }

    fn passed(&self) -> bool {
        Instant::now() >= self.0.lock().statement_ends
    }

    fn deadline_error(&self) -> ReadError {
        let s = self.0.lock();
        if Instant::now() >= s.read_ends {
            ReadError::Deadline { file: db_name(), what: "read", after: s.read_deadline }
        } else {
            ReadError::Deadline { file: db_name(), what: s.what, after: s.statement_deadline }
        }
    }

    /// Maps an SQLite error of the current step (see [`ReadError`] and [`Violation::Unreadable`]).
    fn sqlite_error(&self, e: rusqlite::Error) -> ReadError {
        let rusqlite::Error::SqliteFailure(f, _) = &e else {
            return unavailable(e.to_string());
        };
        match f.code {
            ErrorCode::OperationInterrupted => self.deadline_error(),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase | ErrorCode::TooBig => {
                Violation::Unreadable { file: db_name(), detail: e.to_string() }.into()
            }
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => unavailable("locked by the runner"),
            ErrorCode::ReadOnly if f.extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK => {
                unavailable("a hot journal waits for the runner's rollback")
            }
            _ => unavailable(e.to_string()),
        }
    }
}

/// The four names SQLite may open for `outbound.db`, with their display names.
fn sqlite_files(paths: &SessionPaths) -> [(PathBuf, String); 4] {
    let db = paths.outbound_db();
    let side = |suffix: &str| {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        (PathBuf::from(p), format!("{}{suffix}", layout::OUTBOUND_DB))
    };
    [(db.clone(), db_name()), side("-journal"), side("-wal"), side("-shm")]
}

/// What the file checks found.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// No `outbound.db`, or an empty one: the runner has not started.
    Nothing,
    /// A regular, rollback-journal SQLite file within the limits.
    Database,
}

/// `lstat`s `path`: `Ok(None)` when absent, a violation when not a regular file.
fn lstat_regular(path: &Path, file: &str) -> Result<Option<std::fs::Metadata>, ReadError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => match FileKind::of(meta.file_type()) {
            None => Ok(Some(meta)),
            Some(kind) => Err(Violation::NotRegularFile { file: file.to_string(), kind }.into()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(unavailable(format!("{file}: {e}"))),
    }
}

/// Rules 1 to 4: file types, sizes and the header, before SQLite opens anything.
fn check_files(paths: &SessionPaths, limits: &ReadLimits) -> Result<Found, ReadError> {
    let [(db, db_file), (journal, journal_file), (wal, wal_file), (shm, shm_file)] = sqlite_files(paths);
    if lstat_regular(&db, &db_file)?.is_none() {
        return Ok(Found::Nothing);
    }
    // Opened by us, not followed and not blocking: the lstat above and this fstat agree on a
    // regular file, and the header is read from the very file that was checked.
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&db)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Violation::NotRegularFile { file: db_file, kind: FileKind::Symlink }.into());
        }
        Err(e) => return Err(unavailable(format!("open: {e}"))),
    };
    let meta = file.metadata().map_err(|e| unavailable(format!("fstat: {e}")))?;
    if let Some(kind) = FileKind::of(meta.file_type()) {
        return Err(Violation::NotRegularFile { file: db_file, kind }.into());
    }
    if meta.len() > limits.max_file_bytes {
        return Err(Violation::TooLarge {
            file: db_file,
            bytes: meta.len(),
            max_bytes: limits.max_file_bytes,
        }
        .into());
    }
    if meta.len() == 0 {
        return Ok(Found::Nothing);
    }
    let mut header = [0u8; 100];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(Violation::NotSqlite { file: db_file }.into());
        }
        Err(e) => return Err(unavailable(format!("read header: {e}"))),
    }
    if &header[..16] != b"SQLite format 3\0" {
        return Err(Violation::NotSqlite { file: db_file }.into());
    }
    let (write_version, read_version) = (header[18], header[19]);
    if (write_version, read_version) != (1, 1) {
        return Err(Violation::NotRollbackJournal { file: db_file, write_version, read_version }.into());
    }
    // 0 is "not set yet", which SQLite reads as UTF-8 too.
    let encoding = u32::from_be_bytes([header[56], header[57], header[58], header[59]]);
    if encoding > 1 {
        return Err(Violation::NotUtf8 { file: db_file, encoding }.into());
    }
    drop(file);

    if let Some(meta) = lstat_regular(&journal, &journal_file)?
        && meta.len() > limits.max_file_bytes
    {
        return Err(Violation::TooLarge {
            file: journal_file,
            bytes: meta.len(),
            max_bytes: limits.max_file_bytes,
        }
        .into());
    }
    if lstat_regular(&wal, &wal_file)?.is_some() {
        return Err(Violation::WalPresent { file: wal_file }.into());
    }
    // A regular `-shm` is harmless: SQLite opens it only in WAL mode, refused above.
    lstat_regular(&shm, &shm_file)?;
    Ok(Found::Database)
}

/// Rule 6: opens `outbound.db` read-only with every limit set before the first statement.
fn open(db: &Path, clock: &Clock) -> Result<Connection, ReadError> {
    clock.step("open")?;
    let e = |e| clock.sqlite_error(e);
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(e)?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_LOADED_VALUE_BYTES).map_err(e)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0).map_err(e)?;
    // `SQLITE_DBCONFIG_TRUSTED_SCHEMA` off is `PRAGMA trusted_schema=OFF`: no function with side
    // effects and no virtual table runs from the schema. Views and triggers are refused by the
    // schema check; disabling them is the second lock on that door.
    for (config, on) in [
        (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
        (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
    ] {
        conn.set_db_config(config, on).map_err(e)?;
    }
    let progress = clock.clone();
    conn.progress_handler(PROGRESS_OPS, Some(move || progress.passed())).map_err(e)?;
    // Fine steps, not SQLite's 1, 2, 5… ms sleeps: the runner holds its lock for one commit
    // (see `nanoclaw_protocol::schema::busy_wait`); the statement deadline still bounds the wait.
    conn.busy_handler(Some(busy_until_deadline)).map_err(e)?;
    conn.pragma_update(None, "query_only", true).map_err(e)?;
    // A mapped file changed by the container under the host's feet is not something to read
    // through; pages are copied into SQLite's (bounded) cache instead.
    conn.pragma_update(None, "mmap_size", 0).map_err(e)?;
    conn.pragma_update(None, "cell_size_check", true).map_err(e)?;
    Ok(conn)
}

/// Text of a `sqlite_schema` column read as a [`Value`]; the schema is SQLite's own table, but
/// its content comes from the container.
fn schema_text(v: Value) -> Option<String> {
    match v {
        Value::Text(s) => Some(s),
        _ => None,
    }
}

/// Rule 5: compares `sqlite_schema` with [`OUTBOUND_OBJECTS`]. With `complete` false (schema
/// version 0), missing objects are allowed. Errors on the first difference.
fn check_schema(conn: &Connection, clock: &Clock, complete: bool) -> Result<(), ReadError> {
    clock.step("schema")?;
    let expected: BTreeSet<&SchemaObject> = OUTBOUND_OBJECTS.iter().collect();
    // Every column is capped like the rows are: a name or `CREATE` text is never loaded when it
    // is longer than any honest one.
    let fits = format!(
        "octet_length(type) <= 16 AND octet_length(name) <= 128 AND octet_length(tbl_name) <= 128 \
         AND ifnull(octet_length(sql), 0) <= {MAX_SCHEMA_SQL_BYTES}"
    );
    let sql = format!(
        "SELECT CASE WHEN {fits} THEN type END, CASE WHEN {fits} THEN name END, \
         CASE WHEN {fits} THEN tbl_name END, CASE WHEN {fits} THEN sql END, {fits} \
         FROM sqlite_schema ORDER BY rowid LIMIT {}",
        expected.len() + 1
    );
    let mut st = conn.prepare(&sql).map_err(|e| clock.sqlite_error(e))?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, Value>(0)?,
                r.get::<_, Value>(1)?,
                r.get::<_, Value>(2)?,
                r.get::<_, Value>(3)?,
                r.get::<_, bool>(4)?,
            ))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| clock.sqlite_error(e))?;
    let file = db_name();
    let mut found = BTreeSet::new();
    for (kind, name, tbl_name, sql, fits) in rows {
        let (Some(kind), Some(name), Some(tbl_name)) =
            (schema_text(kind), schema_text(name), schema_text(tbl_name))
        else {
            let detail = if fits { "a schema row with a non-text name" } else { "an oversize schema row" };
            return Err(
                Violation::UnexpectedObject { file, kind: "object".into(), name: detail.into() }.into()
            );
        };
        found.insert(SchemaObject { kind, name, tbl_name, sql: schema_text(sql) });
    }
    if let Some(extra) = found.iter().find(|o| !expected.contains(o)) {
        let (kind, name) = (extra.kind.clone(), extra.name.chars().take(64).collect());
        return Err(if expected.iter().any(|e| e.kind == kind && e.name == name) {
            Violation::ChangedObject { file, kind, name }
        } else {
            Violation::UnexpectedObject { file, kind, name }
        }
        .into());
    }
    if complete && let Some(missing) = expected.iter().find(|o| !found.contains(**o)) {
        return Err(Violation::MissingObject {
            file,
            kind: missing.kind.clone(),
            name: missing.name.clone(),
        }
        .into());
    }
    Ok(())
}

/// Runs one capped SELECT of `nanoclaw_protocol::validate` and checks each row.
fn query<R, T>(
    conn: &Connection,
    clock: &Clock,
    what: &'static str,
    sql: &str,
    params: impl rusqlite::Params,
    from_row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
    check: fn(&R) -> Result<T, Rejected>,
) -> Result<Vec<Result<T, Rejected>>, ReadError> {
    clock.step(what)?;
    let mut st = conn.prepare(sql).map_err(|e| clock.sqlite_error(e))?;
    let rows = st
        .query_map(params, from_row)
        .and_then(|rows| rows.collect::<Result<Vec<R>, _>>())
        .map_err(|e| clock.sqlite_error(e))?;
    Ok(rows.iter().map(check).collect())
}

thread_local! {
    /// The clock of the read running on this thread, for [`busy_until_deadline`] (a busy handler
    /// is a plain function; SQLite calls it on the thread running the statement).
    static BUSY_CLOCK: std::cell::RefCell<Option<Clock>> = const { std::cell::RefCell::new(None) };
}

/// Busy handler of the host's reads: tries again every
/// [`nanoclaw_protocol::schema::BUSY_STEP`] (then every millisecond) until the statement's
/// deadline on this thread's [`BUSY_CLOCK`] passes.
fn busy_until_deadline(tries: i32) -> bool {
    if BUSY_CLOCK.with(|c| c.borrow().as_ref().is_none_or(Clock::passed)) {
        return false;
    }
    let fine = schema::BUSY_FINE.as_micros() / schema::BUSY_STEP.as_micros().max(1);
    // A busy handler runs inside a blocking SQLite call, which is what SQLite's own handler
    // does too: callers already keep these calls off async workers (or accept the wait).
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(if (tries as u128) < fine { schema::BUSY_STEP } else { Duration::from_millis(1) });
    true
}

/// Sets [`BUSY_CLOCK`] for the life of one read.
struct BusyClock;

impl BusyClock {
    fn set(clock: &Clock) -> Self {
        BUSY_CLOCK.with(|c| *c.borrow_mut() = Some(clock.clone()));
        BusyClock
    }
}

impl Drop for BusyClock {
    fn drop(&mut self) {
        BUSY_CLOCK.with(|c| *c.borrow_mut() = None);
    }
}

/// Reads `outbound.db` under every rule of this module, on the calling thread. Blocks (file
/// system, SQLite): call it from a blocking thread; prefer [`read`], which adds the deadline that
/// also covers system calls. Errors: see [`ReadError`].
pub fn read_blocking(
    paths: &SessionPaths,
    limits: &ReadLimits,
    req: &OutboundRequest,
) -> Result<OutboundSnapshot, ReadError> {
    let clock = Clock::new(limits);
    let _busy = BusyClock::set(&clock);
    match check_files(paths, limits)? {
        Found::Nothing => Ok(OutboundSnapshot::default()),
        Found::Database => read_sqlite(paths, limits, req, &clock),
    }
}

/// Opens `outbound.db`, begins the read transaction and checks the schema version and objects.
/// `None` when the runner has not finished writing the schema (`user_version` 0).
fn begin(paths: &SessionPaths, clock: &Clock) -> Result<Option<Connection>, ReadError> {
    let conn = open(&paths.outbound_db(), clock)?;
    clock.step("schema")?;
    // One read transaction: every statement after this sees the same committed state (rule 9).
    conn.execute_batch("BEGIN").map_err(|e| clock.sqlite_error(e))?;
    let version: i64 =
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(|e| clock.sqlite_error(e))?;
    // Older versions are accepted: the outbound objects are checked exactly either way, and a
    // session written by an older runner must stay readable across a host upgrade.
    if !(0..=SCHEMA_VERSION).contains(&version) {
        return Err(Violation::SchemaVersion { file: db_name(), found: version }.into());
    }
    check_schema(&conn, clock, version != 0)?;
    Ok((version != 0).then_some(conn))
}

/// The SQLite half of [`read_blocking`], after the file checks.
fn read_sqlite(
    paths: &SessionPaths,
    limits: &ReadLimits,
    req: &OutboundRequest,
    clock: &Clock,
) -> Result<OutboundSnapshot, ReadError> {
    let Some(conn) = begin(paths, clock)? else { return Ok(OutboundSnapshot::default()) };
    let max_rows = i64::try_from(limits.max_rows).unwrap_or(i64::MAX);
    let mut snapshot = OutboundSnapshot { present: true, ..OutboundSnapshot::default() };
    if let Some(from) = req.messages_from_rowid {
        snapshot.messages = query(
            &conn,
            clock,
            "messages_out",
            &SELECT_MESSAGES_OUT,
            [from, max_rows],
            RawOutboundRow::from_row,
            check_outbound,
        )?;
    }
    if let Some(from) = req.acks_from_rowid {
        snapshot.acks =
            query(&conn, clock, "acks", &SELECT_ACKS, [from, max_rows], RawAckRow::from_row, check_ack)?;
    }
    if let Some(generation) = req.claims_of_generation {
        snapshot.claims = query(
            &conn,
            clock,
            "claims",
            &SELECT_CLAIMS,
            [generation, max_rows, req.claims_from_rowid],
            RawAckRow::from_row,
            check_ack,
        )?;
    }
    if req.container_state {
        snapshot.container_state = query(
            &conn,
            clock,
            "container_state",
            &SELECT_CONTAINER_STATE,
            [],
            RawContainerStateRow::from_row,
            check_container_state,
        )?
        .into_iter()
        .next();
    }
    conn.execute_batch("COMMIT").map_err(|e| clock.sqlite_error(e))?;
    Ok(snapshot)
}

/// Counts blocking reads in flight (see [`MAX_READS_IN_FLIGHT`]); released on drop, that is when
/// the blocking thread finishes, however late.
struct InFlight;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

impl InFlight {
    fn acquire() -> Result<Self, ReadError> {
        let taken = IN_FLIGHT.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_READS_IN_FLIGHT).then_some(n + 1)
        });
        match taken {
            Ok(_) => Ok(Self),
            Err(_) => Err(unavailable(format!("{MAX_READS_IN_FLIGHT} container reads still running"))),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Opens every FIFO among the four SQLite names read-write, non-blocking, and closes it: on Linux
/// this releases an `open()` blocked on the FIFO (the read end waits for any writer to appear).
/// SQLite then fails to read it (a FIFO cannot seek) and the blocked read ends with an error.
/// Returns how many FIFOs it opened. Never follows symlinks, never opens anything else.
fn release_fifos(paths: &SessionPaths) -> usize {
    sqlite_files(paths)
        .iter()
        .filter(|(path, _)| std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo()))
        .filter(|(path, _)| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
                .open(path)
                .is_ok()
        })
        .count()
}

/// Runs `f` on the blocking pool under `limits.read_deadline`, releasing FIFOs if it overruns.
async fn run_with_deadline<T: Send + 'static>(
    paths: SessionPaths,
    limits: ReadLimits,
    f: impl FnOnce(&SessionPaths, &ReadLimits) -> Result<T, ReadError> + Send + 'static,
) -> Result<T, ReadError> {
    let permit = InFlight::acquire()?;
    let (p, l) = (paths.clone(), limits.clone());
    let mut task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f(&p, &l)
    });
    match tokio::time::timeout(limits.read_deadline, &mut task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(unavailable(format!("read task failed: {join}"))),
        Err(_) => {
            // SQLite may be blocked in a system call no progress handler sees: a FIFO swapped in
            // after the checks. Release it; a few rounds cover SQLite moving on to the next name.
            for _ in 0..5 {
                let p = paths.clone();
                let _ = tokio::task::spawn_blocking(move || release_fifos(&p)).await;
                if tokio::time::timeout(Duration::from_millis(20), &mut task).await.is_ok() {
                    break;
                }
            }
            Err(ReadError::Deadline { file: db_name(), what: "read", after: limits.read_deadline })
        }
    }
}

/// Reads `outbound.db` off the caller's task: [`read_blocking`] on tokio's blocking pool under
/// [`ReadLimits::read_deadline`]. A read that overruns returns [`ReadError::Deadline`] at once;
/// its thread is released (see the module doc, rule 8) and, if it still cannot finish, left to
/// end on its own, counted against [`MAX_READS_IN_FLIGHT`].
///
/// Under tokio's paused test clock the deadline cannot fire while the blocking read runs (tokio
/// stops auto-advancing time during `spawn_blocking`): tests of hostile files use real time.
pub async fn read(
    paths: SessionPaths,
    limits: ReadLimits,
    req: OutboundRequest,
) -> Result<OutboundSnapshot, ReadError> {
    run_with_deadline(paths, limits, move |p, l| read_blocking(p, l, &req)).await
}

/// The age of `.heartbeat` (its mtime), which the runner touches on every provider event.
/// `None` when it is absent, not a regular file (only `lstat` is used: a FIFO or symlink is never
/// opened or followed), or its mtime is in the future (which would otherwise read as "just now"
/// for as long as the container likes).
pub fn heartbeat_age(paths: &SessionPaths) -> Option<Duration> {
    let meta = std::fs::symlink_metadata(paths.heartbeat()).ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    meta.modified().ok()?.elapsed().ok()
}

/// Largest file the host reads from a container's outbox, in bytes (50 MiB): above the limits
/// of the chat platforms, small enough to hold in memory a few at a time.
pub const MAX_OUTBOX_FILE_BYTES: u64 = 50 * 1024 * 1024;

/// Why [`read_outbox_file`] returned no bytes. Display is one line naming the path and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxFileError {
    /// The path or the file breaks a rule (not `outbox/<row id>/<name>`, a symlink, not a
    /// regular file, too large, absent): the row fails, the session goes on.
    #[error("{path}: {rule}")]
    Refused {
        /// The path as the row gave it (at most 300 bytes shown).
        path: String,
        /// The rule it broke.
        rule: String,
    },
    /// The read passed its deadline (a file system that blocks); retry later, boundedly.
    #[error("{path}: reading passed its deadline of {after:?}")]
    Deadline {
        /// The path.
        path: String,
        /// The deadline.
        after: Duration,
    },
    /// Transient: an I/O error other than a rule, or too many reads in flight.
    #[error("{path}: cannot read now: {reason}")]
    Unavailable {
        /// The path.
        path: String,
        /// What happened.
        reason: String,
    },
}

/// A name usable as one path component: non-empty, no `/` or NUL, not `.` or `..`.
fn plain_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)`: one component, never following a link.
fn open_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &str,
    flags: nix::fcntl::OFlag,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::OFlag;
    nix::fcntl::openat(dir, name, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .map_err(std::io::Error::from)
}

/// What a failed `openat` of `name` under `dir` means: a rule when it met a symlink (`ELOOP`), a
/// non-directory on the way (`ENOTDIR`) or nothing (`ENOENT`); the kind is named by an `lstat`
/// of `shown` (informational only: the open itself is what refused it).
fn open_error(e: std::io::Error, path: &str, shown: &Path, what: &str) -> OutboxFileError {
    let refused = |rule: String| OutboxFileError::Refused { path: path.to_string(), rule };
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
            let kind = std::fs::symlink_metadata(shown)
                .ok()
                .and_then(|m| FileKind::of(m.file_type()))
                .map_or("not a plain directory or file".to_string(), |k| k.to_string());
            refused(format!("{what} is a {kind}; links are never followed"))
        }
        Some(libc::ENOENT) => refused(format!("{what} does not exist")),
        _ => OutboxFileError::Unavailable { path: path.to_string(), reason: format!("{what}: {e}") },
    }
}

/// [`read_outbox_file`] on the calling (blocking) thread.
fn read_outbox_file_blocking(
    paths: &SessionPaths,
    row_id: &str,
    path: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, OutboxFileError> {
    use std::os::fd::AsFd;
    let shown: String = path.chars().take(300).collect();
    let refused = |rule: String| OutboxFileError::Refused { path: shown.clone(), rule };
    // Rule: exactly `outbox/<row id>/<name>`, three plain components (no `..`, no absolute path).
    let parts: Vec<&str> = path.split('/').collect();
    let [dir, row, name] = parts.as_slice() else {
        return Err(refused(format!("must be {}/{row_id}/<name>", layout::OUTBOX_DIR)));
    };
    if *dir != layout::OUTBOX_DIR || *row != row_id || !plain_component(row) || !plain_component(name) {
        return Err(refused(format!("must be {}/{row_id}/<name> with a plain name", layout::OUTBOX_DIR)));
    }
    let workspace = std::fs::File::open(&paths.workspace_dir).map_err(|e| OutboxFileError::Unavailable {
        path: shown.clone(),
        reason: format!("workspace: {e}"),
    })?;
    let dir_flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY;
    let outbox = open_at(workspace.as_fd(), dir, dir_flags)
        .map_err(|e| open_error(e, &shown, &paths.workspace_dir.join(dir), dir))?;
    let folder = open_at(outbox.as_fd(), row, dir_flags).map_err(|e| {
        open_error(e, &shown, &paths.workspace_dir.join(dir).join(row), &format!("{dir}/{row}"))
    })?;
    let file = open_at(folder.as_fd(), name, nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(|e| open_error(e, &shown, &paths.workspace_dir.join(path), "the file"))?;
    let mut file = std::fs::File::from(file);
    let meta = file
        .metadata()
        .map_err(|e| OutboxFileError::Unavailable { path: shown.clone(), reason: format!("fstat: {e}") })?;
    if let Some(kind) = FileKind::of(meta.file_type()) {
        return Err(refused(format!("not a regular file ({kind})")));
    }
    let too_large = |bytes: u64| refused(format!("{bytes} bytes exceeds the limit of {max_bytes}"));
    if meta.len() > max_bytes {
        return Err(too_large(meta.len()));
    }
    // Bounded even if the file grows after the fstat.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    (&mut file)
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| OutboxFileError::Unavailable { path: shown.clone(), reason: format!("read: {e}") })?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads `path` (from an outbound `file` row whose id is `row_id`) from the container's
/// workspace under the rules in the module doc: exactly `outbox/<row_id>/<name>`, no link
/// followed, a regular file of at most `max_bytes` (capped at [`MAX_OUTBOX_FILE_BYTES`]), on
/// the blocking pool under `deadline`. Errors: see [`OutboxFileError`].
pub async fn read_outbox_file(
    paths: SessionPaths,
    row_id: &str,
    path: &str,
    max_bytes: u64,
    deadline: Duration,
) -> Result<Vec<u8>, OutboxFileError> {
    let shown: String = path.chars().take(300).collect();
    let Ok(permit) = InFlight::acquire() else {
        return Err(OutboxFileError::Unavailable {
            path: shown,
            reason: format!("{MAX_READS_IN_FLIGHT} container reads still running"),
        });
    };
    let (row_id, path) = (row_id.to_string(), path.to_string());
    let max = max_bytes.min(MAX_OUTBOX_FILE_BYTES);
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        read_outbox_file_blocking(&paths, &row_id, &path, max)
    });
    match tokio::time::timeout(deadline, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => {
            Err(OutboxFileError::Unavailable { path: shown, reason: format!("read task failed: {join}") })
        }
        Err(_) => Err(OutboxFileError::Deadline { path: shown, after: deadline }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nanoclaw_protocol::schema::open_outbound_writer;

    fn session() -> (tempfile::TempDir, SessionPaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = SessionPaths::new(dir.path(), "main", "sess-1");
        std::fs::create_dir_all(&paths.workspace_dir).unwrap();
        let c = open_outbound_writer(&paths.outbound_db()).unwrap();
        c.execute(
            "INSERT INTO messages_out (id, seq, timestamp, kind, platform_id, channel_type, thread_id, content)
             VALUES ('out-1', 1, ?1, 'chat', 'local', 'cli', NULL, '{}')",
            [nanoclaw_protocol::time::now_ts()],
        )
        .unwrap();
        (dir, paths)
    }

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    }

    #[test]
    fn an_oversize_value_comes_back_as_null_with_its_length() {
        let (_d, paths) = session();
        let c = open_outbound_writer(&paths.outbound_db()).unwrap();
        c.execute("UPDATE messages_out SET thread_id = CAST(zeroblob(67108864) AS TEXT)", []).unwrap();
        let req = OutboundRequest { messages_from_rowid: Some(0), ..Default::default() };
        let snapshot = read_blocking(&paths, &ReadLimits::default(), &req).unwrap();
        let rejected = snapshot.messages[0].as_ref().unwrap_err();
        assert_eq!(rejected.key, "out-1");
        assert!(rejected.error.to_string().contains("thread_id"), "{}", rejected.error);
    }

    /// The checks cannot stop a FIFO planted between them and SQLite's own `open()` (a race the
    /// container can try forever). Skipping the checks stands in for losing that race: SQLite
    /// blocks in `open()` on the FIFO, the read deadline fires, and releasing the FIFO lets the
    /// blocked thread finish.
    #[tokio::test]
    async fn a_fifo_planted_after_the_checks_is_released_at_the_deadline() {
        for name in ["outbound.db-journal", "outbound.db"] {
            let (_d, paths) = session();
            let path = paths.workspace_dir.join(name);
            std::fs::remove_file(&path).ok();
            mkfifo(&path);
            let limits = ReadLimits { read_deadline: Duration::from_millis(300), ..ReadLimits::default() };
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let result = run_with_deadline(paths.clone(), limits, move |p, l| {
                let r = read_sqlite(p, l, &OutboundRequest::default(), &Clock::new(l));
                done_tx.send(()).unwrap();
                r
            })
            .await;
            assert!(
                matches!(result, Err(ReadError::Deadline { what: "read", .. })),
                "{name}: expected a deadline, got {result:?}"
            );
            // The blocked thread was released and finished (with an error nobody waits for).
            if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                // Unblock it by hand so that the runtime can shut down and the test fails, not hangs.
                let _ = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path);
                panic!("{name}: the read thread is still blocked after the deadline");
            }
        }
    }

    #[test]
    fn releasing_opens_only_fifos() {
        let (_d, paths) = session();
        assert_eq!(release_fifos(&paths), 0);
        mkfifo(&paths.workspace_dir.join("outbound.db-wal"));
        std::os::unix::fs::symlink(
            paths.workspace_dir.join("outbound.db-wal"),
            paths.workspace_dir.join("outbound.db-shm"),
        )
        .unwrap();
        assert_eq!(release_fifos(&paths), 1, "a symlink to a FIFO is not followed");
    }
}
