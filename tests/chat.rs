//! `nanoclaw chat` against a service that is already running: it connects instead of starting
//! its own (which would fail on the taken socket), and its exit code follows the turn.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn chat_connects_to_a_running_service() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let out = nanoclaw(&data).args(["chat", "-m", "via the running service"]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo: via the running service\n");
    // The running service answered (chat started none of its own): the ledger is the service's.
    let db = rusqlite::Connection::open_with_flags(
        data.join("nanoclaw.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM inbound_ledger WHERE status = 'routed'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    assert!(server.log().contains("delivered"), "{}", server.log());
}

#[test]
fn a_one_turn_chat_that_gets_no_answer_in_time_exits_1() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let _server = Server::start(&data, &["--runtime", "process"], &[]);
    let out = nanoclaw(&data).args(["chat", "--timeout", "1", "-m", "!hang 5000 too slow"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no answer within 1s"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_one_turn_chat_leaves_replies_to_other_messages_for_the_next_client() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    // A reply delivered while no client is connected waits in the CLI channel.
    let mut away = server.client();
    away.send("away-1", "!sleep 300 for later");
    away.until(Duration::from_secs(30), |f| f["type"] == "accepted" && f["id"] == "away-1");
    drop(away);
    eventually(Duration::from_secs(30), "the reply recorded delivered", || {
        delivery_rows(&data).iter().any(|r| r.status == "delivered")
    });
    // A one-turn chat is sent it too, but shows and acks only the reply to its own message.
    let out = nanoclaw(&data).args(["chat", "-m", "meanwhile"]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo: meanwhile\n");
    // The next client gets the waiting reply, and not the one the chat acked: the channel sends
    // waiting replies before anything newer, so both would come before this turn's reply.
    let mut back = server.client();
    back.send("back-1", "back again");
    let frames = back.until(Duration::from_secs(30), |f| f["type"] == "done" && f["id"] == "back-1");
    assert_eq!(replies_to(&frames, "away-1"), vec!["echo: !sleep 300 for later"], "{frames:?}");
    assert!(
        !frames.iter().any(|f| f["type"] == "reply" && f["text"] == "echo: meanwhile"),
        "the one-turn chat acked its reply: {frames:?}"
    );
    assert_eq!(replies_to(&frames, "back-1"), vec!["echo: back again"], "{frames:?}");
}

#[test]
fn a_one_turn_chat_shows_files_cards_edits_and_reactions() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let _server = Server::start(&data, &["--runtime", "process"], &[]);
    let out =
        nanoclaw(&data).args(["chat", "-m", r#"tool send_message {"text":"version one"}"#]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("version one\n"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The agent-visible seq of that message, and the key the CLI channel named it by.
    let outbound = rusqlite::Connection::open_with_flags(
        session_dir(&data).join("workspace/outbound.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let (seq, row): (i64, String) = outbound
        .query_row(
            "SELECT seq, id FROM messages_out WHERE json_extract(content, '$.text') = 'version one'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let session = session_dir(&data).file_name().unwrap().to_string_lossy().to_string();
    let original = format!("cli-out-{session}:{row}");
    let turn = format!(
        "tool edit_message {{\"seq\":{seq},\"text\":\"version two\"}}\n\
         tool add_reaction {{\"seq\":{seq},\"emoji\":\"👍\"}}\n\
         tool write_file {{\"path\":\"notes.txt\",\"content\":\"twelve bytes\"}}\n\
         tool send_file {{\"path\":\"notes.txt\"}}\n\
         tool send_card {{\"title\":\"Docs\",\"text\":\"read these\",\"buttons\":[{{\"label\":\"site\",\"url\":\"https://example.org/\"}}]}}"
    );
    let out = nanoclaw(&data).args(["chat", "-m", &turn]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    for want in [
        format!("[edited {original}] version two"),
        format!("[reaction 👍 on {original}]"),
        "[file notes.txt (12 bytes)]".to_string(),
        "[card] Docs / read these / site: https://example.org/".to_string(),
    ] {
        assert!(lines.contains(&want.as_str()), "missing {want:?} in:\n{stdout}");
    }
}

/// A turn that works without any tool says so once, in words (`[working…]`), never as a bare
/// `[working]` line.
#[test]
fn a_turn_without_a_tool_says_working_once() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let _server = Server::start(&data, &["--runtime", "process"], &[]);
    // Long enough for the service to see the claim and send its `working` frame.
    let out = nanoclaw(&data).args(["chat", "-m", "!sleep 3000 thinking"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo: !sleep 3000 thinking\n");
    let working: Vec<&str> = stderr.lines().filter(|l| l.starts_with("[working")).collect();
    assert_eq!(working, vec!["[working…]"], "{stderr}");
}
