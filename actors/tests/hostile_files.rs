//! A container is an attacker (DESIGN §6): each test plants one hostile `workspace/` and checks
//! that the host's one door (`container_files`) answers with a typed violation or deadline,
//! quickly, without hanging the host or loading what it must not.

use nanoclaw_actors::container_files::{
    self, FileKind, OutboundRequest, OutboundSnapshot, OutboxFileError, ReadError, ReadLimits, Violation,
};
use nanoclaw_actors::session_files::SessionPaths;
use nanoclaw_protocol::schema::{OUTBOUND_OBJECTS, open_outbound_writer};
use nanoclaw_protocol::time::now_ts;
use rusqlite::Connection;
use std::path::PathBuf;
use std::time::Duration;

fn session() -> (tempfile::TempDir, SessionPaths) {
    let dir = tempfile::tempdir().unwrap();
    let paths = SessionPaths::new(dir.path(), "main", "sess-1");
    std::fs::create_dir_all(&paths.workspace_dir).unwrap();
    (dir, paths)
}

fn side(paths: &SessionPaths, suffix: &str) -> PathBuf {
    paths.workspace_dir.join(format!("outbound.db{suffix}"))
}

/// An honest `outbound.db` as the runner creates it, with CHECK constraints off afterwards (the
/// container can write anything).
fn honest(paths: &SessionPaths) -> Connection {
    let c = open_outbound_writer(&paths.outbound_db()).unwrap();
    c.pragma_update(None, "ignore_check_constraints", true).unwrap();
    c
}

fn chat_row(c: &Connection, id: &str, seq: i64) {
    c.execute(
        "INSERT INTO messages_out (id, seq, timestamp, kind, platform_id, channel_type, content)
         VALUES (?1, ?2, ?3, 'chat', 'local', 'cli', '{\"type\":\"text\",\"text\":\"hi\"}')",
        rusqlite::params![id, seq, now_ts()],
    )
    .unwrap();
}

fn everything() -> OutboundRequest {
    OutboundRequest {
        messages_from_rowid: Some(0),
        acks_from_rowid: Some(0),
        claims_of_generation: Some(1),
        claims_from_rowid: 0,
        container_state: true,
    }
}

/// Reads through the async door; a read that does not answer within 20 s is a hung host.
async fn read_with(paths: &SessionPaths, limits: ReadLimits) -> Result<OutboundSnapshot, ReadError> {
    tokio::time::timeout(Duration::from_secs(20), container_files::read(paths.clone(), limits, everything()))
        .await
        .expect("the host must not hang on a container's files")
}

async fn violation(paths: &SessionPaths) -> Violation {
    match read_with(paths, ReadLimits::default()).await {
        Err(ReadError::Violation(v)) => v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

fn mkfifo(path: &std::path::Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).unwrap();
}

fn not_regular(file: &str, kind: FileKind) -> Violation {
    Violation::NotRegularFile { file: file.into(), kind }
}

#[tokio::test]
async fn an_honest_db_reads_every_part_in_one_snapshot() {
    let (_d, paths) = session();
    let c = honest(&paths);
    chat_row(&c, "out-1", 1);
    c.execute(
        "INSERT INTO messages_out (id, seq, timestamp, kind, content) VALUES ('out-2', 3, ?1, 'exec', '{}')",
        [now_ts()],
    )
    .unwrap();
    for (id, status) in [("m1", "completed"), ("m2", "processing"), ("m3", "done")] {
        c.execute("INSERT INTO processing_ack VALUES (?1, ?2, ?3, 1)", [id, status, &now_ts()]).unwrap();
    }
    c.execute(
        "INSERT INTO container_state (id, generation, current_tool, tool_declared_timeout_ms, updated_at) VALUES (1, 1, 'bash', 90000, ?1)",
        [now_ts()],
    )
    .unwrap();

    let s = read_with(&paths, ReadLimits::default()).await.unwrap();
    assert!(s.present);
    assert_eq!(s.messages.len(), 2);
    assert_eq!(s.messages[0].as_ref().unwrap().id, "out-1");
    let rejected = s.messages[1].as_ref().unwrap_err();
    assert_eq!(
        (rejected.key.as_str(), rejected.error.to_string().as_str()),
        ("out-2", "messages_out.kind: unknown value \"exec\"")
    );
    let acks: Vec<Result<&str, String>> = s
        .acks
        .iter()
        .map(|a| a.as_ref().map(|a| a.message_id.as_str()).map_err(|r| r.error.field.clone()))
        .collect();
    assert_eq!(acks, vec![Ok("m1"), Ok("m2"), Err("status".to_string())]);
    assert_eq!(s.claims.len(), 1);
    assert_eq!(s.claims[0].as_ref().unwrap().message_id, "m2");
    let state = s.container_state.unwrap().unwrap();
    assert_eq!((state.generation, state.current_tool.as_deref()), (1, Some("bash")));
    assert_eq!(state.declared_timeout, Some(Duration::from_secs(90)));
}

#[tokio::test]
async fn absent_empty_and_unfinished_dbs_read_as_not_present() {
    let (_d, paths) = session();
    assert_eq!(read_with(&paths, ReadLimits::default()).await.unwrap(), OutboundSnapshot::default());
    std::fs::write(paths.outbound_db(), b"").unwrap();
    assert!(!read_with(&paths, ReadLimits::default()).await.unwrap().present);
    std::fs::remove_file(paths.outbound_db()).unwrap();
    // The runner creates the tables one by one before it sets user_version.
    let c = Connection::open(paths.outbound_db()).unwrap();
    let table = OUTBOUND_OBJECTS.iter().find(|o| o.name == "processing_ack").unwrap();
    c.execute_batch(table.sql.as_deref().unwrap()).unwrap();
    assert!(!read_with(&paths, ReadLimits::default()).await.unwrap().present);
    // But not an unexpected object, even then.
    c.execute_batch("CREATE VIEW v AS SELECT 1").unwrap();
    assert!(matches!(violation(&paths).await, Violation::UnexpectedObject { kind, .. } if kind == "view"));
}

#[tokio::test]
async fn a_fifo_journal_is_refused_without_hanging() {
    let (_d, paths) = session();
    chat_row(&honest(&paths), "out-1", 1);
    // The runner's journal stays as an empty file between commits: the container replaces it.
    std::fs::remove_file(side(&paths, "-journal")).unwrap();
    mkfifo(&side(&paths, "-journal"));
    let v = violation(&paths).await;
    assert_eq!(v, not_regular("outbound.db-journal", FileKind::Fifo));
    assert_eq!(v.to_string(), "outbound.db-journal: not a regular file (fifo)");
}

#[tokio::test]
async fn a_fifo_db_is_refused_without_hanging() {
    let (_d, paths) = session();
    mkfifo(&paths.outbound_db());
    assert_eq!(violation(&paths).await, not_regular("outbound.db", FileKind::Fifo));
}

#[tokio::test]
async fn symlinks_are_never_followed() {
    let (d, paths) = session();
    let elsewhere = SessionPaths::new(d.path(), "main", "other");
    std::fs::create_dir_all(&elsewhere.workspace_dir).unwrap();
    chat_row(&honest(&elsewhere), "out-1", 1);
    std::os::unix::fs::symlink(elsewhere.outbound_db(), paths.outbound_db()).unwrap();
    assert_eq!(violation(&paths).await, not_regular("outbound.db", FileKind::Symlink));

    let (_d2, paths) = session();
    chat_row(&honest(&paths), "out-1", 1);
    std::fs::remove_file(side(&paths, "-journal")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", side(&paths, "-journal")).unwrap();
    assert_eq!(violation(&paths).await, not_regular("outbound.db-journal", FileKind::Symlink));
}

#[tokio::test]
async fn side_files_must_be_absent_or_regular_and_wal_is_refused() {
    let (_d, paths) = session();
    chat_row(&honest(&paths), "out-1", 1);
    let journal = std::fs::metadata(side(&paths, "-journal")).unwrap();
    assert!(journal.is_file() && journal.len() == 0, "an honest runner leaves an empty journal");
    std::fs::remove_file(side(&paths, "-journal")).unwrap();
    std::fs::create_dir(side(&paths, "-journal")).unwrap();
    assert_eq!(violation(&paths).await, not_regular("outbound.db-journal", FileKind::Directory));
    std::fs::remove_dir(side(&paths, "-journal")).unwrap();

    let listener = std::os::unix::net::UnixListener::bind(side(&paths, "-shm")).unwrap();
    assert_eq!(violation(&paths).await, not_regular("outbound.db-shm", FileKind::Socket));
    drop(listener);
    std::fs::remove_file(side(&paths, "-shm")).unwrap();

    // SQLite would switch to WAL mode for any -wal file, whatever the header says.
    std::fs::write(side(&paths, "-wal"), b"").unwrap();
    assert_eq!(violation(&paths).await, Violation::WalPresent { file: "outbound.db-wal".into() });
    std::fs::remove_file(side(&paths, "-wal")).unwrap();

    // A stale -shm alone is harmless (never opened in rollback mode).
    std::fs::write(side(&paths, "-shm"), b"x").unwrap();
    assert!(read_with(&paths, ReadLimits::default()).await.unwrap().present);
}

#[tokio::test]
async fn a_view_over_a_recursive_cte_in_place_of_messages_out_is_refused() {
    let (_d, paths) = session();
    honest(&paths)
        .execute_batch(
            "DROP TABLE messages_out;
             CREATE VIEW messages_out AS
               WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r)
               SELECT 'x' || n AS id, 2 * n + 1 AS seq, NULL AS in_reply_to, n AS timestamp, NULL AS deliver_after,
                      'chat' AS kind, 'p' AS platform_id, 'cli' AS channel_type, NULL AS thread_id, n AS content FROM r;",
        )
        .unwrap();
    let v = violation(&paths).await;
    assert_eq!(
        v,
        Violation::UnexpectedObject {
            file: "outbound.db".into(),
            kind: "view".into(),
            name: "messages_out".into()
        }
    );
    assert_eq!(v.to_string(), "outbound.db: unexpected view messages_out");
}

#[tokio::test]
async fn triggers_virtual_tables_and_extra_indexes_are_refused() {
    for (sql, kind, name) in [
        (
            "CREATE TRIGGER evil AFTER INSERT ON processing_ack BEGIN DELETE FROM messages_out; END",
            "trigger",
            "evil",
        ),
        ("CREATE VIRTUAL TABLE notes USING fts5(body)", "", "notes"),
        ("CREATE VIRTUAL TABLE boxes USING rtree(id, x0, x1)", "", "boxes"),
        ("CREATE INDEX slow ON messages_out (content)", "index", "slow"),
        // Statistics steer the query planner.
        ("INSERT INTO processing_ack VALUES ('m', 'completed', 't', 1); ANALYZE", "table", "sqlite_stat"),
    ] {
        let (_d, paths) = session();
        honest(&paths).execute_batch(sql).unwrap();
        match violation(&paths).await {
            Violation::UnexpectedObject { kind: k, name: n, .. } => {
                assert!(kind.is_empty() || k == kind, "{sql}: kind {k}");
                assert!(n.starts_with(name), "{sql}: name {n}");
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_generated_column_or_changed_check_is_a_changed_table() {
    let expected = OUTBOUND_OBJECTS.iter().find(|o| o.name == "messages_out").unwrap().sql.clone().unwrap();
    let generated = format!(
        "{}, evil TEXT GENERATED ALWAYS AS (content || content) VIRTUAL)",
        expected.trim_end().strip_suffix(')').unwrap()
    );
    let loose_check = expected.replace("seq % 2 = 1", "seq % 2 = 0");
    assert_ne!(loose_check, expected);
    for sql in [generated, loose_check] {
        let (_d, paths) = session();
        honest(&paths).execute_batch(&format!("DROP TABLE messages_out; {sql};")).unwrap();
        assert_eq!(
            violation(&paths).await,
            Violation::ChangedObject {
                file: "outbound.db".into(),
                kind: "table".into(),
                name: "messages_out".into()
            }
        );
    }
}

#[tokio::test]
async fn a_newer_schema_version_is_refused() {
    let (_d, paths) = session();
    let newer = nanoclaw_protocol::schema::SCHEMA_VERSION + 1;
    honest(&paths).pragma_update(None, "user_version", newer).unwrap();
    assert_eq!(
        violation(&paths).await,
        Violation::SchemaVersion { file: "outbound.db".into(), found: newer }
    );
}

/// 64 MiB: far above `SQLITE_LIMIT_LENGTH` (1 MiB) of the door's connection, so a read that loaded
/// the value would fail with SQLITE_TOOBIG instead of returning a row rejected by name.
const BIG: &str = "CAST(zeroblob(67108864) AS TEXT)";

#[tokio::test]
async fn a_64_mib_value_in_any_column_is_never_loaded_and_rejects_its_row_by_name() {
    let (_d, paths) = session();
    let c = honest(&paths);
    c.pragma_update(None, "synchronous", "OFF").unwrap();
    chat_row(&c, "out-1", 1);
    c.execute("INSERT INTO processing_ack VALUES ('m1', 'processing', ?1, 1)", [now_ts()]).unwrap();
    c.execute(
        "INSERT INTO container_state (id, generation, current_tool, tool_declared_timeout_ms, tool_started_at, updated_at) VALUES (1, 1, 'bash', 5, ?1, ?1)",
        [now_ts()],
    )
    .unwrap();
    let columns = |table: &str| -> Vec<String> {
        c.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    for table in ["messages_out", "processing_ack", "container_state"] {
        for column in columns(table) {
            if column == "id" && table == "container_state" {
                continue; // INTEGER PRIMARY KEY: the rowid itself, cannot hold text.
            }
            let old: rusqlite::types::Value =
                c.query_row(&format!(r#"SELECT "{column}" FROM {table}"#), [], |r| r.get(0)).unwrap();
            c.execute(&format!(r#"UPDATE {table} SET "{column}" = {BIG}"#), []).unwrap();

            let s = read_with(&paths, ReadLimits::default())
                .await
                .unwrap_or_else(|e| panic!("{table}.{column}: {e}"));
            let (row, claim) = match table {
                "messages_out" => (s.messages[0].clone().map(|_| ()), None),
                "processing_ack" => {
                    (s.acks[0].clone().map(|_| ()), s.claims.first().cloned().map(|c| c.map(|_| ())))
                }
                _ => (s.container_state.clone().unwrap().map(|_| ()), None),
            };
            let read = [
                "id",
                "seq",
                "in_reply_to",
                "timestamp",
                "deliver_after",
                "kind",
                "platform_id",
                "channel_type",
                "thread_id",
                "content",
                "message_id",
                "status",
                "status_changed",
                "generation",
                "current_tool",
                "tool_declared_timeout_ms",
            ];
            if read.contains(&column.as_str()) {
                let e = row.unwrap_err().error;
                assert_eq!((e.table, e.field.as_str()), (table, column.as_str()));
                assert!(e.reason.starts_with("67108864 bytes exceeds the limit of"), "{e}");
            } else {
                // Columns the host does not read are never loaded and do not matter.
                assert_eq!(row, Ok(()), "{table}.{column}");
            }
            if let Some(claim) = claim {
                // A claim whose status or generation is oversize is not a claim at all.
                assert!(column != "status" && column != "generation");
                assert_eq!(claim.unwrap_err().error.field, column);
            }
            c.execute(&format!(r#"UPDATE {table} SET "{column}" = ?1"#), [old]).unwrap();
        }
    }
}

#[tokio::test]
async fn oversize_files_are_refused_before_sqlite_reads_them() {
    let (_d, paths) = session();
    chat_row(&honest(&paths), "out-1", 1);
    std::fs::OpenOptions::new().write(true).open(paths.outbound_db()).unwrap().set_len(1 << 30).unwrap();
    let v = violation(&paths).await;
    assert_eq!(v, Violation::TooLarge { file: "outbound.db".into(), bytes: 1 << 30, max_bytes: 256 << 20 });
    assert_eq!(v.to_string(), "outbound.db: 1073741824 bytes exceeds the limit of 268435456");

    let (_d, paths) = session();
    chat_row(&honest(&paths), "out-1", 1);
    std::fs::File::create(side(&paths, "-journal")).unwrap().set_len(1 << 30).unwrap();
    assert!(
        matches!(violation(&paths).await, Violation::TooLarge { file, .. } if file == "outbound.db-journal")
    );
}

#[tokio::test]
async fn wal_headers_and_non_sqlite_files_are_refused() {
    let (_d, paths) = session();
    let c = honest(&paths);
    chat_row(&c, "out-1", 1);
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    drop(c); // the last connection checkpoints and removes -wal and -shm
    assert!(!side(&paths, "-wal").exists());
    assert_eq!(
        violation(&paths).await,
        Violation::NotRollbackJournal { file: "outbound.db".into(), write_version: 2, read_version: 2 }
    );

    let (_d, paths) = session();
    let c = Connection::open(paths.outbound_db()).unwrap();
    c.execute_batch("PRAGMA encoding = 'UTF-16le'; CREATE TABLE t (x)").unwrap();
    assert_eq!(violation(&paths).await, Violation::NotUtf8 { file: "outbound.db".into(), encoding: 2 });

    for bytes in [&b"hello, host"[..], &[0u8; 4096][..]] {
        let (_d, paths) = session();
        std::fs::write(paths.outbound_db(), bytes).unwrap();
        assert_eq!(violation(&paths).await, Violation::NotSqlite { file: "outbound.db".into() });
    }
}

/// Fills `messages_out` with 10,000 honest chat rows (seqs 1, 3, 5, …) in one transaction.
fn ten_thousand_rows(paths: &SessionPaths) {
    let mut c = honest(paths);
    let tx = c.transaction().unwrap();
    for n in 0..10_000 {
        chat_row(&tx, &format!("out-{n}"), 2 * n + 1);
    }
    tx.commit().unwrap();
}

#[tokio::test]
async fn ten_thousand_rows_page_by_rowid_cursor() {
    let (_d, paths) = session();
    ten_thousand_rows(&paths);
    let limits = ReadLimits::default();
    let (mut from, mut seen, mut pages) = (0, Vec::new(), 0);
    loop {
        let req = OutboundRequest { messages_from_rowid: Some(from), ..OutboundRequest::default() };
        let page = container_files::read(paths.clone(), limits.clone(), req).await.unwrap().messages;
        assert!(page.len() <= limits.max_rows);
        let Some(last) = page.last() else { break };
        from = last.as_ref().unwrap().rowid + 1;
        seen.extend(page.into_iter().map(|m| m.unwrap().seq));
        pages += 1;
    }
    assert_eq!(pages, 10_000 / limits.max_rows);
    assert_eq!(seen, (0..10_000).map(|n| 2 * n + 1).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_statement_past_its_deadline_is_interrupted() {
    let (_d, paths) = session();
    ten_thousand_rows(&paths);
    let limits = ReadLimits {
        statement_deadline: Duration::from_millis(1),
        max_rows: 10_000,
        ..ReadLimits::default()
    };
    match read_with(&paths, limits).await {
        Err(ReadError::Deadline { after, .. }) => assert_eq!(after, Duration::from_millis(1)),
        other => panic!("expected a deadline, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lock_held_by_the_runner_is_transient() {
    let (_d, paths) = session();
    let c = honest(&paths);
    chat_row(&c, "out-1", 1);
    c.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let limits = ReadLimits { statement_deadline: Duration::from_millis(100), ..ReadLimits::default() };
    assert!(matches!(read_with(&paths, limits.clone()).await, Err(ReadError::Unavailable { .. })));
    c.execute_batch("COMMIT").unwrap();
    assert_eq!(read_with(&paths, limits).await.unwrap().messages.len(), 1);
}

#[tokio::test]
async fn a_hot_journal_waits_for_the_runner() {
    let (_d, paths) = session();
    let c = honest(&paths);
    chat_row(&c, "out-1", 1);
    // A journal left by a writer that died mid-transaction: copied while one is open.
    c.execute_batch("BEGIN; DELETE FROM messages_out;").unwrap();
    let mut journal = std::fs::read(side(&paths, "-journal")).unwrap();
    // SQLite writes the journal magic only when it syncs the journal at commit.
    journal[..8].copy_from_slice(&[0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7]);
    c.execute_batch("ROLLBACK").unwrap();
    drop(c);
    std::fs::write(side(&paths, "-journal"), journal).unwrap();
    match read_with(&paths, ReadLimits::default()).await {
        Err(e @ ReadError::Unavailable { .. }) => assert!(e.to_string().contains("hot journal"), "{e}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[test]
fn the_heartbeat_is_only_ever_lstat_ed() {
    let (_d, paths) = session();
    assert_eq!(container_files::heartbeat_age(&paths), None);
    mkfifo(&paths.heartbeat());
    assert_eq!(container_files::heartbeat_age(&paths), None);
    std::fs::remove_file(paths.heartbeat()).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", paths.heartbeat()).unwrap();
    assert_eq!(container_files::heartbeat_age(&paths), None);
    std::fs::remove_file(paths.heartbeat()).unwrap();
    std::fs::write(paths.heartbeat(), b"").unwrap();
    assert!(container_files::heartbeat_age(&paths).is_some_and(|age| age < Duration::from_secs(60)));
}

/// Reads `path` of row `row` from the outbox through the one door, with `max` bytes allowed.
async fn outbox_file(
    paths: &SessionPaths,
    row: &str,
    path: &str,
    max: u64,
) -> Result<Vec<u8>, OutboxFileError> {
    tokio::time::timeout(
        Duration::from_secs(20),
        container_files::read_outbox_file(paths.clone(), row, path, max, Duration::from_secs(5)),
    )
    .await
    .expect("the host must not hang on an outbox file")
}

/// The rule of a refusal (panics on any other answer).
fn refused(r: Result<Vec<u8>, OutboxFileError>) -> String {
    match r {
        Err(OutboxFileError::Refused { rule, .. }) => rule,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn outbox_folder(paths: &SessionPaths, row: &str) -> PathBuf {
    let dir = paths.workspace_dir.join("outbox").join(row);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn an_honest_outbox_file_is_read_whole() {
    let (_dir, paths) = session();
    std::fs::write(outbox_folder(&paths, "o1").join("r.txt"), b"report").unwrap();
    assert_eq!(outbox_file(&paths, "o1", "outbox/o1/r.txt", 1024).await.unwrap(), b"report");
}

#[tokio::test]
async fn an_outbox_symlink_to_etc_passwd_is_refused_at_any_depth() {
    let (_dir, paths) = session();
    let folder = outbox_folder(&paths, "o1");
    std::os::unix::fs::symlink("/etc/passwd", folder.join("passwd")).unwrap();
    let rule = refused(outbox_file(&paths, "o1", "outbox/o1/passwd", 1 << 20).await);
    assert!(rule.contains("symlink"), "{rule}");
    // The row's folder itself a link to /etc.
    std::os::unix::fs::symlink("/etc", paths.workspace_dir.join("outbox").join("o2")).unwrap();
    let rule = refused(outbox_file(&paths, "o2", "outbox/o2/passwd", 1 << 20).await);
    assert!(rule.contains("symlink"), "{rule}");
    // The outbox folder a link to a folder holding a passwd-like file of the host.
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(host.path().join("o3")).unwrap();
    std::fs::write(host.path().join("o3").join("secret"), b"host secret").unwrap();
    let (_dir2, other) = session();
    std::os::unix::fs::symlink(host.path(), other.workspace_dir.join("outbox")).unwrap();
    let rule = refused(outbox_file(&other, "o3", "outbox/o3/secret", 1 << 20).await);
    assert!(rule.contains("symlink"), "{rule}");
}

#[tokio::test]
async fn outbox_paths_other_than_the_rows_own_folder_are_refused() {
    let (_dir, paths) = session();
    outbox_folder(&paths, "o1");
    std::fs::write(paths.workspace_dir.join("x"), b"x").unwrap();
    for path in [
        "../x",
        "outbox/o1/../x",
        "outbox/o1/../../x",
        "/etc/passwd",
        "outbox/o2/x",
        "outbox/o1/",
        "outbox/o1/a/b",
    ] {
        let rule = refused(outbox_file(&paths, "o1", path, 1024).await);
        assert!(rule.contains("must be outbox/o1/<name>"), "{path}: {rule}");
    }
    let rule = refused(outbox_file(&paths, "o1", "outbox/o1/absent", 1024).await);
    assert!(rule.contains("does not exist"), "{rule}");
}

#[tokio::test]
async fn an_outbox_fifo_is_refused_without_hanging() {
    let (_dir, paths) = session();
    mkfifo(&outbox_folder(&paths, "o1").join("pipe"));
    let rule = refused(outbox_file(&paths, "o1", "outbox/o1/pipe", 1024).await);
    assert!(rule.contains("fifo"), "{rule}");
}

#[tokio::test]
async fn an_oversize_outbox_file_is_refused_before_it_is_read() {
    let (_dir, paths) = session();
    let folder = outbox_folder(&paths, "o1");
    // Sparse: costs the container nothing, and the host must not read it.
    let big = std::fs::File::create(folder.join("big")).unwrap();
    big.set_len(container_files::MAX_OUTBOX_FILE_BYTES + 1).unwrap();
    let rule = refused(outbox_file(&paths, "o1", "outbox/o1/big", u64::MAX).await);
    assert!(
        rule.contains(&format!("exceeds the limit of {}", container_files::MAX_OUTBOX_FILE_BYTES)),
        "{rule}"
    );
    std::fs::write(folder.join("small"), vec![0u8; 2048]).unwrap();
    let rule = refused(outbox_file(&paths, "o1", "outbox/o1/small", 1024).await);
    assert!(rule.contains("2048 bytes exceeds the limit of 1024"), "{rule}");
}
