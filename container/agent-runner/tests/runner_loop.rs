//! The runner against real session DBs in a temp dir, with a test acting as the host on the wake
//! socket.

use nanoclaw_agent::config::RunnerConfig;
use nanoclaw_protocol::schema::{open_inbound_writer, open_outbound_reader};
use nanoclaw_protocol::wake;
use rusqlite::params;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// A temp dir with a session's host and workspace folders (the dir lives as long as the guard).
fn session_dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (session, workspace) = (tmp.path().join("host"), tmp.path().join("workspace"));
    std::fs::create_dir_all(&session).unwrap();
    std::fs::create_dir_all(&workspace).unwrap();
    (tmp, session, workspace)
}

/// A runner configuration over a session's two folders.
fn runner_config(
    session: &Path,
    workspace: &Path,
    generation: i64,
    poll_ms: u64,
    host_lost_exit: Option<Duration>,
) -> RunnerConfig {
    RunnerConfig {
        session_dir: session.to_path_buf(),
        workspace_dir: workspace.to_path_buf(),
        skills_dir: workspace.join("no-skills"),
        generation,
        provider: "echo".into(),
        assistant_name: "Andy".into(),
        poll_ms,
        max_messages_per_prompt: 10,
        answer_fallback: nanoclaw_agent::tools::system::ANSWER_FALLBACK,
        host_lost_exit,
    }
}

fn host_write(dir: &Path, id: &str, seq: i64, text: &str, trigger: bool, on_wake: bool) {
    let c = open_inbound_writer(&dir.join("inbound.db")).unwrap();
    c.execute(
        "INSERT OR IGNORE INTO destinations (name, display_name, type, channel_type, platform_id) VALUES ('cli','Terminal','channel','cli','local')",
        [],
    )
    .unwrap();
    c.execute(
        "INSERT OR REPLACE INTO session_routing (id, channel_type, platform_id) VALUES (1,'cli','local')",
        [],
    )
    .unwrap();
    c.execute(
        "INSERT INTO messages_in (id, seq, kind, timestamp, trigger, on_wake, platform_id, channel_type, content)
         VALUES (?1, ?2, 'chat', ?3, ?4, ?5, 'local', 'cli', ?6)",
        params![id, seq, nanoclaw_protocol::time::now_ts(), trigger, on_wake, serde_json::json!({"text": text}).to_string()],
    )
    .unwrap();
}

fn replies(dir: &Path) -> Vec<(String, i64, Option<String>, String)> {
    let c = open_outbound_reader(&dir.join("outbound.db")).unwrap();
    let mut st = c.prepare("SELECT id, seq, in_reply_to, content FROM messages_out ORDER BY seq").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn ack(dir: &Path, id: &str) -> Option<String> {
    let c = open_outbound_reader(&dir.join("outbound.db")).unwrap();
    c.query_row("SELECT status FROM processing_ack WHERE message_id = ?1", [id], |r| r.get(0)).ok()
}

async fn read_until(stream: &mut tokio::net::UnixStream, byte: u8) {
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            stream.read_exact(&mut buf).await.unwrap();
            if buf[0] == byte {
                return;
            }
        }
    })
    .await
    .expect("byte from runner");
}

#[tokio::test]
async fn answers_over_the_wake_socket_and_honours_trigger_and_on_wake() {
    let (_tmp, session, workspace) = session_dirs();
    let listener = UnixListener::bind(session.join("wake.sock")).unwrap();
    // Context only (trigger=0): must not start a turn by itself.
    host_write(&session, "ctx:main", 2, "background", false, false);

    let config = runner_config(&session, &workspace, 7, 1000, None);
    let runner = tokio::spawn(nanoclaw_agent::runner::run(config));
    let (mut stream, _) =
        tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
    read_until(&mut stream, wake::HELLO).await;
    assert!(replies(&workspace).is_empty(), "context alone woke the agent");

    host_write(&session, "m1:main", 4, "hello", true, false);
    // An on_wake row is only for a fresh container's first read: this one has read already.
    host_write(&session, "w1:main", 6, "wake-only", true, true);
    stream.write_all(&[wake::INPUT]).await.unwrap();
    read_until(&mut stream, wake::CLAIMED).await;
    read_until(&mut stream, wake::OUTPUT).await; // commit

    let r = replies(&workspace);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].1 % 2, 1, "outbound seq must be odd");
    assert!(r[0].1 > 6);
    assert_eq!(r[0].2.as_deref(), Some("m1:main"));
    assert_eq!(r[0].3, r#"{"type":"text","text":"echo: hello"}"#);
    assert_eq!(ack(&workspace, "m1:main").as_deref(), Some("completed"));
    // Accumulated context was part of the batch and is acked with it.
    assert_eq!(ack(&workspace, "ctx:main").as_deref(), Some("completed"));
    assert_eq!(ack(&workspace, "w1:main"), None);
    let c = open_outbound_reader(&workspace.join("outbound.db")).unwrap();
    let cont: String = c
        .query_row("SELECT value FROM session_state WHERE key='continuation:echo'", [], |r| r.get(0))
        .unwrap();
    // The continuation names the provider's transcript in the workspace, which holds the turn.
    assert!(cont.starts_with("transcripts/echo/") && cont.ends_with(".jsonl"), "{cont}");
    let transcript = std::fs::read_to_string(workspace.join(&cont)).unwrap();
    assert_eq!(transcript.lines().count(), 2, "{transcript}");
    assert!(transcript.contains("echo: hello"), "{transcript}");
    let generation: i64 = c.query_row("SELECT generation FROM container_state", [], |r| r.get(0)).unwrap();
    assert_eq!(generation, 7);
    assert!(workspace.join(".heartbeat").exists());
    runner.abort();
}

#[tokio::test]
async fn a_new_generation_clears_stale_claims_and_takes_on_wake_rows_first() {
    let (_tmp, session, workspace) = session_dirs();
    host_write(&session, "m1:main", 2, "retry me", true, false);
    host_write(&session, "w1:main", 4, "after restart", true, true);
    {
        // A dead container of generation 1 had claimed m1.
        let mut db = nanoclaw_agent::db::SessionDb::open(
            &session.join("inbound.db"),
            &workspace.join("outbound.db"),
            1,
        )
        .unwrap();
        // An earlier turn, final on both sides: its ack is row 1 and the host's cursor is past it,
        // so the new runner's clean-up starts at row 2 — where the claim is.
        let w = rusqlite::Connection::open(workspace.join("outbound.db")).unwrap();
        w.execute(
            "INSERT INTO processing_ack (rowid, message_id, status, status_changed, generation) VALUES (1, 'old:main', 'completed', ?1, 1)",
            [nanoclaw_protocol::time::now_ts()],
        )
        .unwrap();
        db.claim(&["m1:main".to_string()]).unwrap();
        open_inbound_writer(&session.join("inbound.db"))
            .unwrap()
            .execute("INSERT INTO host_cursors (name, rowid) VALUES ('processing_ack', 2)", [])
            .unwrap();
    }
    let config = runner_config(&session, &workspace, 2, 50, None);
    // No wake socket at all: the poll fallback must carry the work.
    let runner = tokio::spawn(nanoclaw_agent::runner::run(config));
    tokio::time::timeout(Duration::from_secs(10), async {
        while replies(&workspace).len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both messages answered");
    let texts: Vec<String> = replies(&workspace).into_iter().map(|r| r.3).collect();
    assert!(texts[0].contains("echo: retry me") && texts[1].contains("echo: after restart"), "{texts:?}");
    runner.abort();
}

#[tokio::test]
async fn a_runner_whose_host_is_gone_exits_by_itself() {
    let (_tmp, session, workspace) = session_dirs();
    let listener = UnixListener::bind(session.join("wake.sock")).unwrap();
    let config = runner_config(&session, &workspace, 1, 50, Some(Duration::from_millis(500)));
    let runner = tokio::spawn(nanoclaw_agent::runner::run(config));
    let (mut stream, _) =
        tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
    read_until(&mut stream, wake::HELLO).await;
    // The host dies: its socket and listener vanish.
    drop(stream);
    drop(listener);
    std::fs::remove_file(session.join("wake.sock")).unwrap();
    let code =
        tokio::time::timeout(Duration::from_secs(10), runner).await.expect("runner exited").unwrap().unwrap();
    assert_eq!(code, 0);
}

/// With the wake link up the runner does not poll: a row that becomes due later (a retry backoff,
/// a scheduled message) is read at its `process_after` by a timer, with no wake byte — well
/// before the 30 s safety net.
#[tokio::test]
async fn a_row_due_later_is_read_when_due_without_a_wake_byte() {
    let (_tmp, session, workspace) = session_dirs();
    let listener = UnixListener::bind(session.join("wake.sock")).unwrap();
    host_write(&session, "ctx:main", 2, "background", false, false);
    let due = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let due_ts = nanoclaw_protocol::time::format_ts(due);
    open_inbound_writer(&session.join("inbound.db"))
        .unwrap()
        .execute(
            "INSERT INTO messages_in (id, seq, kind, timestamp, process_after, trigger, platform_id, channel_type, content)
             VALUES ('later:main', 4, 'chat', ?1, ?2, 1, 'local', 'cli', ?3)",
            params![nanoclaw_protocol::time::now_ts(), due_ts, serde_json::json!({"text": "later"}).to_string()],
        )
        .unwrap();
    let runner =
        tokio::spawn(nanoclaw_agent::runner::run(runner_config(&session, &workspace, 1, 1000, None)));
    let (mut stream, _) =
        tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
    read_until(&mut stream, wake::HELLO).await;
    // No byte is sent; the claim's byte comes when the row is due (read_until waits up to 10 s).
    read_until(&mut stream, wake::CLAIMED).await;
    assert!(chrono::Utc::now() >= due, "read before it was due");
    read_until(&mut stream, wake::OUTPUT).await;
    let r = replies(&workspace);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].3, r#"{"type":"text","text":"echo: later"}"#);
    runner.abort();
}

/// After a turn the runner reads again at once only when a wake byte came during it (the host
/// sends one for every write the runner must see): a message written with its byte while a turn
/// ran is answered next with no further byte, and one written without a byte after a quiet turn
/// waits for its byte rather than being found by a read beside the host's delivery.
#[tokio::test]
async fn after_a_turn_the_runner_reads_at_once_only_for_a_byte_that_came_during_it() {
    let (_tmp, session, workspace) = session_dirs();
    let listener = UnixListener::bind(session.join("wake.sock")).unwrap();
    let runner =
        tokio::spawn(nanoclaw_agent::runner::run(runner_config(&session, &workspace, 1, 1000, None)));
    let (mut stream, _) =
        tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
    read_until(&mut stream, wake::HELLO).await;
    host_write(&session, "slow:main", 2, "!sleep 800 slow", true, false);
    stream.write_all(&[wake::INPUT]).await.unwrap();
    read_until(&mut stream, wake::CLAIMED).await;
    host_write(&session, "next:main", 4, "next", true, false);
    stream.write_all(&[wake::INPUT]).await.unwrap();
    read_until(&mut stream, wake::OUTPUT).await;
    read_until(&mut stream, wake::CLAIMED).await;
    read_until(&mut stream, wake::OUTPUT).await;
    assert_eq!(replies(&workspace).len(), 2);
    // The byte of `next` may still be pending as a permit: let it be used up by a read first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    host_write(&session, "quiet:main", 6, "quiet", true, false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(replies(&workspace).len(), 2, "a row was read with no byte for it");
    stream.write_all(&[wake::INPUT]).await.unwrap();
    read_until(&mut stream, wake::CLAIMED).await;
    read_until(&mut stream, wake::OUTPUT).await;
    let texts: Vec<String> = replies(&workspace).into_iter().map(|r| r.3).collect();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(texts[1].contains("echo: next") && texts[2].contains("echo: quiet"), "{texts:?}");
    runner.abort();
}
