//! The reply store of the CLI channel: `data/cli-replies.db`, beside `cli.sock`.
//!
//! The CLI is a platform of its own, so it keeps what it was given until a client confirms it
//! (the way a chat platform keeps a message on its servers once its API accepted it): a reply
//! is committed here before `deliver` of [`super::CliChannel`] returns `Ok` — and the outbox
//! records it `delivered`, final — and stays *waiting* until a client sends an `ack` for its
//! key. Every client that connects is sent every waiting reply, in `seq` order, then the new
//! ones as they are committed ([`ReplyStore::subscribe`]).
//!
//! One table, `replies(seq, message_out_id UNIQUE, chat, frame, acked, created_at)`:
//! - `seq` (AUTOINCREMENT, never reused) orders replies; clients are sent them in this order;
//! - `message_out_id` is the idempotency key: a key already stored is not stored (nor sent)
//!   again, across restarts too, as long as its row is kept;
//! - `frame` is the `reply` frame's JSON line, as sent;
//! - `acked`: [`WAITING`], [`ACKED`] (a client confirmed it), or [`DROPPED`] (over
//!   [`MAX_WAITING`]: no longer sent, logged).
//!
//! Bounds: at most [`MAX_WAITING`] waiting rows (the oldest are dropped first) and the newest
//! [`KEPT_DONE`] finished (acked or dropped) rows, kept only to recognise repeats of their keys.
//!
//! No migrations: the schema is created if absent and versioned by `PRAGMA user_version`
//! ([`SCHEMA_VERSION`]); a newer version is refused. Only the host opens the file: WAL, and
//! `synchronous=FULL` because a commit here is what lets the outbox call the reply delivered.
//!
//! One OS thread owns the only connection and runs the jobs of [`ReplyStore`] one at a time (no
//! rusqlite call on the async executor; `seq` and the head advance in commit order). It ends once
//! every handle is dropped.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

/// Schema version (`PRAGMA user_version`) this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;
/// Most replies waiting for an ack; beyond it the oldest waiting ones are dropped, with a warning.
pub const MAX_WAITING: usize = 10_000;
/// Finished (acked or dropped) rows kept, newest first, so repeats of their keys are recognised.
pub const KEPT_DONE: usize = 1_024;
/// `acked` of a reply no client has confirmed yet.
pub const WAITING: i64 = 0;
/// `acked` of a reply a client confirmed.
pub const ACKED: i64 = 1;
/// `acked` of a reply dropped unconfirmed because more than [`MAX_WAITING`] were waiting.
pub const DROPPED: i64 = 2;
/// Jobs queued for the store thread before callers wait.
const QUEUE: usize = 64;
/// Finished rows are pruned every this many acks (and at open), not on each.
const PRUNE_EVERY: u32 = 64;

/// Errors of the reply store.
#[derive(Debug, thiserror::Error)]
pub enum ReplyStoreError {
    /// SQLite failed on the file.
    #[error("{}: {what}: {source}", path.display())]
    Sqlite {
        /// The DB file.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file was written by a newer build.
    #[error("{}: schema version {found} is newer than this build's ({SCHEMA_VERSION})", path.display())]
    NewerSchema {
        /// The DB file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
    },
    /// The store thread could not start or is gone (it panicked).
    #[error("{}: the reply store thread is gone", path.display())]
    Closed {
        /// The DB file.
        path: PathBuf,
    },
}

/// What [`ReplyStore::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Stored as waiting, with this `seq`.
    New(u64),
    /// The key was stored before (a repeat); nothing changed.
    Known,
}

/// A waiting reply, as [`ReplyStore::waiting`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReply {
    /// Its order.
    pub seq: u64,
    /// Its key.
    pub message_out_id: String,
    /// The `reply` frame's JSON line.
    pub frame: String,
}

/// What the store thread owns.
struct Db {
    conn: Connection,
    /// The highest committed `seq`; advanced only here, after the commit.
    head: watch::Sender<u64>,
    /// Acks since the last prune.
    acks_since_prune: u32,
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// Handle to the reply store; cheap to clone.
#[derive(Clone)]
pub struct ReplyStore {
    jobs: mpsc::Sender<Job>,
    head: watch::Receiver<u64>,
    path: PathBuf,
}

impl ReplyStore {
    /// Opens (creating) the store at `path` on a new thread.
    ///
    /// Errors: the file cannot be opened or is not SQLite ([`ReplyStoreError::Sqlite`]), was
    /// written by a newer build ([`ReplyStoreError::NewerSchema`]), or no thread could start.
    pub async fn open(path: PathBuf) -> Result<ReplyStore, ReplyStoreError> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE);
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("nanoclaw-cli-replies".into())
            .spawn(move || {
                let mut db = match open_db(&thread_path) {
                    Ok(db) => db,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(db.head.subscribe()));
                while let Some(job) = queue.blocking_recv() {
                    job(&mut db);
                }
                // Clean close: fold the WAL back into the main file (crates.md §3.3).
                let _ = db.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            })
            .map_err(|_| ReplyStoreError::Closed { path: path.clone() })?;
        let head = ready_rx.await.map_err(|_| ReplyStoreError::Closed { path: path.clone() })??;
        Ok(ReplyStore { jobs, head, path })
    }

    /// Runs `f` on the store thread; `what` names the operation in errors.
    async fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Db) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ReplyStoreError> {
        let (done_tx, done_rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let _ = done_tx.send(f(db));
        });
        let closed = || ReplyStoreError::Closed { path: self.path.clone() };
        self.jobs.send(job).await.map_err(|_| closed())?;
        done_rx.await.map_err(|_| closed())?.map_err(|source| ReplyStoreError::Sqlite {
            path: self.path.clone(),
            what,
            source,
        })
    }

    /// Stores a reply as waiting — committed when this returns — unless its key is stored
    /// already. A new row advances the head ([`ReplyStore::subscribe`]); when more than
    /// [`MAX_WAITING`] are then waiting, the oldest are dropped (logged).
    pub async fn put(
        &self,
        message_out_id: String,
        chat: String,
        frame: String,
    ) -> Result<Put, ReplyStoreError> {
        self.call("storing a reply", move |db| {
            let tx = db.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let inserted = tx.execute(
                "INSERT INTO replies (message_out_id, chat, frame, acked, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT(message_out_id) DO NOTHING",
                params![message_out_id, chat, frame, WAITING, created_at],
            )?;
            if inserted == 0 {
                return Ok(Put::Known);
            }
            let seq = u64::try_from(tx.last_insert_rowid()).unwrap_or(0);
            let dropped = tx.execute(
                "UPDATE replies SET acked = ?1 WHERE acked = ?2 AND seq <= \
                 (SELECT seq FROM replies WHERE acked = ?2 ORDER BY seq DESC LIMIT 1 OFFSET ?3)",
                params![DROPPED, WAITING, MAX_WAITING as i64],
            )?;
            tx.commit()?;
            db.head.send_replace(seq);
            if dropped > 0 {
                warn!(dropped, limit = MAX_WAITING, "cli replies: no client confirmed the oldest replies; dropped");
            }
            Ok(Put::New(seq))
        })
        .await
    }

    /// Marks the reply of `message_out_id` confirmed: it is not sent again. True when it was
    /// waiting (an unknown or finished key is not an error: acks may repeat).
    pub async fn ack(&self, message_out_id: String) -> Result<bool, ReplyStoreError> {
        self.call("acknowledging a reply", move |db| {
            let changed = db.conn.execute(
                "UPDATE replies SET acked = ?1 WHERE message_out_id = ?2 AND acked = ?3",
                params![ACKED, message_out_id, WAITING],
            )?;
            db.acks_since_prune += 1;
            if db.acks_since_prune >= PRUNE_EVERY {
                prune(&db.conn)?;
                db.acks_since_prune = 0;
            }
            Ok(changed > 0)
        })
        .await
    }

    /// Replies with `after < seq <= up_to`, in `seq` order, at most `limit`: those still waiting
    /// for an ack, and every one with `seq > live_from` whatever its state — a connection gets
    /// each reply committed while it is connected even when another client of the chat acked it
    /// first, and the backlog of before it connected only while unacked.
    pub async fn waiting(
        &self,
        after: u64,
        up_to: u64,
        live_from: u64,
        limit: usize,
    ) -> Result<Vec<StoredReply>, ReplyStoreError> {
        self.call("reading waiting replies", move |db| {
            let mut st = db.conn.prepare_cached(
                "SELECT seq, message_out_id, frame FROM replies \
                 WHERE (acked = ?1 OR seq > ?5) AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4",
            )?;
            let rows = st.query_map(
                params![WAITING, after as i64, up_to as i64, limit as i64, live_from as i64],
                |r| {
                    Ok(StoredReply {
                        seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        message_out_id: r.get(1)?,
                        frame: r.get(2)?,
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }

    /// The highest committed `seq` (0 when the store never held a reply).
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// A receiver of the head: it changes after each commit of a new reply, and errors once the
    /// store thread is gone.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }
}

fn open_db(path: &Path) -> Result<Db, ReplyStoreError> {
    let sql =
        |what: &'static str| move |source| ReplyStoreError::Sqlite { path: path.to_path_buf(), what, source };
    let conn = Connection::open(path).map_err(sql("opening"))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(sql("journal_mode=WAL"))?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(sql("synchronous=FULL"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql("busy_timeout"))?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql("user_version"))?;
    if found > SCHEMA_VERSION {
        return Err(ReplyStoreError::NewerSchema { path: path.to_path_buf(), found });
    }
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS replies (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            message_out_id TEXT NOT NULL UNIQUE,
            chat TEXT NOT NULL,
            frame TEXT NOT NULL,
            acked INTEGER NOT NULL DEFAULT {WAITING} CHECK (acked IN ({WAITING}, {ACKED}, {DROPPED})),
            created_at TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS replies_by_state ON replies (acked, seq);
        PRAGMA user_version = {SCHEMA_VERSION};"
    ))
    .map_err(sql("creating the schema"))?;
    prune(&conn).map_err(sql("pruning"))?;
    let head: Option<i64> = conn
        .query_row("SELECT max(seq) FROM replies", [], |r| r.get(0))
        .optional()
        .map_err(sql("reading the head"))?
        .flatten();
    let (head, _) = watch::channel(head.and_then(|h| u64::try_from(h).ok()).unwrap_or(0));
    Ok(Db { conn, head, acks_since_prune: 0 })
}

/// Deletes finished rows beyond the newest [`KEPT_DONE`].
fn prune(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM replies WHERE acked != ?1 AND seq < \
         (SELECT seq FROM replies WHERE acked != ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
        params![WAITING, KEPT_DONE as i64 - 1],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `live_from` past every seq: only waiting replies.
    const NONE_LIVE: u64 = u64::MAX >> 1;

    fn count(path: &Path, acked: i64) -> i64 {
        let c = Connection::open(path).unwrap();
        c.query_row("SELECT count(*) FROM replies WHERE acked = ?1", [acked], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn a_reply_waits_across_a_reopen_until_acked_and_its_key_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cli-replies.db");
        let store = ReplyStore::open(path.clone()).await.unwrap();
        assert_eq!(store.head(), 0);
        let head = store.subscribe();
        assert_eq!(store.put("k1".into(), "local".into(), "f1".into()).await.unwrap(), Put::New(1));
        assert!(head.has_changed().unwrap(), "a new reply advances the head");
        assert_eq!(store.put("k1".into(), "local".into(), "again".into()).await.unwrap(), Put::Known);
        assert_eq!(store.put("k2".into(), "local".into(), "f2".into()).await.unwrap(), Put::New(2));
        drop((store, head));
        // A new thread on the same file: the waiting replies are still there, in order.
        let store = ReplyStore::open(path.clone()).await.unwrap();
        assert_eq!(store.head(), 2);
        let frames: Vec<String> =
            store.waiting(0, 2, NONE_LIVE, 10).await.unwrap().into_iter().map(|r| r.frame).collect();
        assert_eq!(frames, vec!["f1", "f2"]);
        assert!(store.ack("k1".into()).await.unwrap());
        assert!(!store.ack("k1".into()).await.unwrap(), "a repeated ack changes nothing");
        assert!(!store.ack("nope".into()).await.unwrap(), "an unknown key is not an error");
        let keys: Vec<String> =
            store.waiting(0, 2, NONE_LIVE, 10).await.unwrap().into_iter().map(|r| r.message_out_id).collect();
        assert_eq!(keys, vec!["k2"]);
        assert_eq!(store.waiting(1, 1, NONE_LIVE, 10).await.unwrap(), vec![], "bounds are (after, up_to]");
        assert_eq!(
            store.put("k1".into(), "local".into(), "f1".into()).await.unwrap(),
            Put::Known,
            "an acked key is still recognised"
        );
    }

    #[tokio::test]
    async fn waiting_replies_are_capped_oldest_first_and_finished_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cli-replies.db");
        let store = ReplyStore::open(path.clone()).await.unwrap();
        let total = MAX_WAITING + 3;
        // One transaction for the bulk of them, on a connection of the test's own.
        {
            let mut c = Connection::open(&path).unwrap();
            let tx = c.transaction().unwrap();
            for i in 0..total - 1 {
                tx.execute(
                    "INSERT INTO replies (message_out_id, chat, frame, created_at) VALUES (?1, 'local', 'f', 'now')",
                    [format!("k{i}")],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        store.put(format!("k{}", total - 1), "local".into(), "f".into()).await.unwrap();
        assert_eq!(count(&path, WAITING), MAX_WAITING as i64);
        assert_eq!(count(&path, DROPPED), 3);
        let oldest = store.waiting(0, u64::MAX >> 1, NONE_LIVE, 1).await.unwrap();
        assert_eq!(oldest[0].message_out_id, "k3", "the three oldest were dropped");
        // Acks finish rows; a prune keeps the newest KEPT_DONE of them.
        for i in 3..(3 + KEPT_DONE + PRUNE_EVERY as usize) {
            store.ack(format!("k{i}")).await.unwrap();
        }
        let done = count(&path, ACKED) + count(&path, DROPPED);
        assert!(done <= (KEPT_DONE + PRUNE_EVERY as usize) as i64, "{done} finished rows kept");
        assert!(done >= KEPT_DONE as i64, "{done} finished rows kept");
        drop(store);
        let store = ReplyStore::open(path.clone()).await.unwrap();
        assert_eq!(count(&path, ACKED) + count(&path, DROPPED), KEPT_DONE as i64, "pruned at open");
        assert_eq!(store.head(), total as u64, "the head is the highest seq");
    }

    #[tokio::test]
    async fn a_store_of_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cli-replies.db");
        Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 9").unwrap();
        let err = ReplyStore::open(path).await.err().unwrap();
        assert!(matches!(err, ReplyStoreError::NewerSchema { found: 9, .. }), "{err}");
        assert!(err.to_string().contains("schema version 9"), "{err}");
    }
}
