//! The central store: `data/nanoclaw.db`, one writer (DESIGN §5).
//!
//! A dedicated OS thread owns the only connection (WAL, `foreign_keys=ON`,
//! `synchronous=NORMAL`) and runs closures sent by [`Store::call`] one at a time, so no rusqlite
//! call ever runs on the async executor (STYLE rule 2) and `BEGIN IMMEDIATE` never contends inside
//! the process. Migrations from `migrations/` are embedded at compile time and applied at open.

/// Defines a string-valued enum column: `as_str`, `parse` (an error listing the allowed values),
/// `ALL`, and `Display`.
macro_rules! column_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored text.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the stored text. Errors with a line listing the allowed values.
            pub fn parse(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "{other:?} is not one of {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

mod approvals;
mod queries;
mod routing;

pub use approvals::*;
pub use queries::*;
pub use routing::*;

use rusqlite::{Connection, OptionalExtension};
use rusqlite_migration::{M, Migrations};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// The central-DB migrations, in order. Each file is `migrations/NNNN_name.sql`.
pub const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("../../../migrations/0001_initial.sql")),
    M::up(include_str!("../../../migrations/0002_session_holds.sql")),
    M::up(include_str!("../../../migrations/0003_providers.sql")),
    M::up(include_str!("../../../migrations/0004_routing.sql")),
    M::up(include_str!("../../../migrations/0005_host_outbox.sql")),
    M::up(include_str!("../../../migrations/0006_approvals.sql")),
];

/// Errors of the central store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed; `what` says which operation.
    #[error("{what}: {source}")]
    Sqlite {
        /// The operation.
        what: String,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Migrating the schema failed.
    #[error("migrating {path}: {source}")]
    Migration {
        /// The DB file.
        path: String,
        /// The migration error.
        #[source]
        source: rusqlite_migration::Error,
    },
    /// The writer thread is gone (the store was closed or panicked).
    #[error("central store is closed")]
    Closed,
    /// A row violated an invariant the code relies on.
    #[error("{0}")]
    Invalid(String),
}

/// Adds context to rusqlite results.
pub trait SqlContext<T> {
    /// Names the operation that failed.
    fn sql(self, what: impl Into<String>) -> Result<T, StoreError>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn sql(self, what: impl Into<String>) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { what: what.into(), source })
    }
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Handle to the central store; cheap to clone. Dropping the last handle ends the writer thread
/// after it finished the queued jobs.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating) the DB at `path`, applies the pragmas and all pending migrations, and
    /// starts the writer thread.
    ///
    /// Errors when the file cannot be opened, is not a SQLite DB, or a migration fails.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let path = path.to_path_buf();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel::<Job>();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("nanoclaw-store".into())
            .spawn(move || {
                let mut conn = match open_connection(&thread_path) {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
                // Clean close: fold the WAL back into the main file (crates.md §3.3).
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            })
            .map_err(|e| StoreError::Invalid(format!("cannot start store thread: {e}")))?;
        ready_rx.await.map_err(|_| StoreError::Closed)??;
        Ok(Store { tx, path })
    }

    /// The DB file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the writer thread and returns its result.
    ///
    /// Errors with [`StoreError::Closed`] when the writer is gone, else whatever `f` returns.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply_tx.send(f(conn));
        });
        self.tx.send(job).map_err(|_| StoreError::Closed)?;
        reply_rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path).sql(format!("opening {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL").sql("journal_mode=WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL").sql("synchronous=NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).sql("busy_timeout")?;
    // Migrations that rebuild a table (SQLite cannot alter a CHECK) drop it; with foreign keys on,
    // that would cascade into every referencing row. So they run with foreign keys off (the pragma
    // is a no-op inside their transactions), and the references are checked before turning them on.
    conn.pragma_update(None, "foreign_keys", "OFF").sql("foreign_keys=OFF")?;
    Migrations::from_slice(MIGRATIONS)
        .to_latest(&mut conn)
        .map_err(|source| StoreError::Migration { path: path.display().to_string(), source })?;
    let broken: Option<String> =
        conn.query_row("PRAGMA foreign_key_check", [], |r| r.get(0)).optional().sql("foreign_key_check")?;
    if let Some(table) = broken {
        return Err(StoreError::Invalid(format!("{}: broken foreign key in table {table}", path.display())));
    }
    conn.pragma_update(None, "foreign_keys", "ON").sql("foreign_keys=ON")?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        Migrations::from_slice(MIGRATIONS).validate().unwrap();
    }

    #[tokio::test]
    async fn migration_0003_turns_bootstrap_defaults_into_inherit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nanoclaw.db");
        {
            // A data dir of before issue 6: bootstrapped with provider 'echo', tier 'minimal'.
            let mut conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "foreign_keys", "OFF").unwrap();
            Migrations::from_slice(&MIGRATIONS[..2]).to_latest(&mut conn).unwrap();
            conn.execute_batch(
                "INSERT INTO agent_groups (id, name, folder, created_at) VALUES ('ag-a', 'A', 'a', 'now'), ('ag-b', 'B', 'b', 'now');
                 INSERT INTO container_configs (agent_group_id, provider, cli_scope, updated_at) VALUES ('ag-a', 'echo', 'global', 'now');
                 INSERT INTO container_configs (agent_group_id, provider, image_tier, model, updated_at) VALUES ('ag-b', 'local', 'standard', 'm', 'now');",
            )
            .unwrap();
        }
        let store = Store::open(&path).await.unwrap();
        let rows = store
            .call(|c| {
                let mut st = c
                    .prepare("SELECT agent_group_id, provider, image_tier, model, cli_scope, egress_allow, tools FROM container_configs ORDER BY 1")
                    .sql("select")?;
                let rows = st
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, String>(5)?,
                            r.get::<_, String>(6)?,
                        ))
                    })
                    .sql("query")?
                    .collect::<Result<Vec<_>, _>>()
                    .sql("rows")?;
                Ok(rows)
            })
            .await
            .unwrap();
        let s = |v: &str| v.to_string();
        assert_eq!(
            rows,
            vec![
                (s("ag-a"), None, None, None, s("global"), s("[]"), s("\"all\"")),
                (
                    s("ag-b"),
                    Some(s("local")),
                    Some(s("standard")),
                    Some(s("m")),
                    s("group"),
                    s("[]"),
                    s("\"all\"")
                ),
            ]
        );
        // The new tables exist and take their rows.
        store.call(|c| queries::record_tokens(c, "ag-a", "2026-12-02", "local", 3, 4)).await.unwrap();
        store.call(|c| queries::record_tokens(c, "ag-a", "2026-12-02", "other", 1, 0)).await.unwrap();
        assert_eq!(store.call(|c| queries::tokens_on(c, "ag-a", "2026-12-02")).await.unwrap(), 8);
        let hour = std::time::Duration::from_secs(3600);
        assert!(store.call(move |c| queries::claim_owner_notice(c, "k", hour)).await.unwrap());
        assert!(!store.call(move |c| queries::claim_owner_notice(c, "k", hour)).await.unwrap());
    }

    #[tokio::test]
    async fn an_empty_db_migrates_to_every_table_in_wal_with_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nanoclaw.db")).await.unwrap();
        let (tables, mode, fk, version) = store
            .call(|c| {
                let mut st = c
                    .prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
                    .sql("list")?;
                let tables: Vec<String> =
                    st.query_map([], |r| r.get(0)).sql("list")?.collect::<Result<_, _>>().sql("list")?;
                let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).sql("mode")?;
                let fk: i64 = c.query_row("PRAGMA foreign_keys", [], |r| r.get(0)).sql("fk")?;
                let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).sql("v")?;
                Ok((tables, mode, fk, v))
            })
            .await
            .unwrap();
        for t in [
            "agent_groups",
            "container_configs",
            "messaging_groups",
            "messaging_group_agents",
            "users",
            "user_roles",
            "agent_group_members",
            "user_dms",
            "sessions",
            "agent_destinations",
            "pending_approvals",
            "pending_questions",
            "pending_sender_approvals",
            "pending_channel_approvals",
            "unregistered_senders",
            "inbound_ledger",
            "scheduled_tasks",
            "task_runs",
            "runtime_updates",
            "channel_state",
        ] {
            assert!(tables.iter().any(|x| x == t), "missing table {t}: {tables:?}");
        }
        assert_eq!(mode, "wal");
        assert_eq!(fk, 1);
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[tokio::test]
    async fn enum_columns_have_checks_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nanoclaw.db")).await.unwrap();
        store
            .call(|c| {
                c.execute("INSERT INTO agent_groups (id, name, folder, created_at) VALUES ('ag', 'A', 'a', 't')", []).sql("ag")?;
                c.execute("INSERT INTO messaging_groups (id, channel_type, platform_id, created_at) VALUES ('mg', 'cli', 'local', 't')", []).sql("mg")?;
                c.execute("INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, created_at) VALUES ('w', 'mg', 'ag', 't')", []).sql("w")?;
                let (mode, scope, policy, session_mode): (String, String, String, String) = c
                    .query_row("SELECT engage_mode, sender_scope, ignored_message_policy, session_mode FROM messaging_group_agents", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .sql("read")?;
                assert_eq!((mode.as_str(), scope.as_str(), policy.as_str(), session_mode.as_str()), ("mention", "all", "drop", "shared"));
                assert!(c.execute("UPDATE messaging_group_agents SET engage_mode = 'always'", []).is_err());
                assert!(c.execute("INSERT INTO sessions (id, agent_group_id, status, created_at) VALUES ('s', 'ag', 'zombie', 't')", []).is_err());
                // Foreign keys are enforced.
                assert!(c.execute("INSERT INTO sessions (id, agent_group_id, created_at) VALUES ('s', 'nope', 't')", []).is_err());
                // An owner is always global.
                c.execute("INSERT INTO users (id, kind, created_at) VALUES ('cli:local', 'cli', 't')", []).sql("u")?;
                assert!(c.execute("INSERT INTO user_roles (user_id, role, agent_group_id, granted_at) VALUES ('cli:local', 'owner', 'ag', 't')", []).is_err());
                assert!(c.execute("INSERT INTO agent_groups (id, name, folder, created_at) VALUES ('x', 'X', '../etc', 't')", []).is_err());
                Ok(())
            })
            .await
            .unwrap();
    }
}
