//! Routing and permissions through the real binary, with the CLI channel as a local chat
//! platform (`chat`, `thread`, `sender`, `mention`, `is_group` in a `message` frame, and
//! `nanoclaw chat --chat --as --thread --mention --group`). The process runtime runs the echo
//! agent: what matters here is who answers where, not the container.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

#[test]
fn threads_chats_and_senders_through_the_cli_simulator() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    wire_cli_team(&data, "strict");
    store_db(&data)
        .execute_batch(
            "INSERT INTO users (id, kind, created_at) VALUES ('cli:alice', 'cli', 't');
             INSERT INTO agent_group_members (user_id, agent_group_id, added_at) VALUES ('cli:alice', 'ag-main', 't');",
        )
        .unwrap();
    let mut c = server.client();
    // Two threads of the group chat: two sessions, each reply in its own thread and chat.
    for (id, thread) in [("t1-a", "T1"), ("t2-a", "T2")] {
        c.send_frame(
            &json!({"type": "message", "id": id, "text": format!("hi from {thread}"), "chat": "team",
                   "thread": thread, "sender": "alice", "is_group": true}),
        );
    }
    let replies = replies_until(&mut c, 2, &server);
    let mut got: Vec<(String, String, String)> = replies
        .iter()
        .map(|f| {
            (
                f["chat"].as_str().unwrap_or("").to_string(),
                f["thread"].as_str().unwrap_or("").to_string(),
                f["text"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("team".into(), "T1".into(), "echo: hi from T1".into()),
            ("team".into(), "T2".into(), "echo: hi from T2".into())
        ]
    );
    let sessions: i64 = store_db(&data)
        .query_row("SELECT count(*) FROM sessions WHERE messaging_group_id = 'mg-team'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sessions, 2, "one session per thread");

    // A stranger in the strict chat: refused, told why, counted once.
    c.send_frame(&json!({"type": "message", "id": "x1", "text": "hello?", "chat": "team", "sender": "mallory", "is_group": true}),
    );
    let frames = c.until(Duration::from_secs(30), |f| f["id"] == "x1");
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "failed", "{frames:?}");
    assert_eq!(last["reason"], "not delivered to any agent: unknown_sender_strict");
    let n: i64 = store_db(&data)
        .query_row(
            "SELECT message_count FROM unregistered_senders WHERE platform_id = 'team' AND user_id = 'cli:mallory'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);

    // A member's /clear is admin-only: the chat is told, the agent never sees it.
    c.send_frame(&json!({"type": "message", "id": "clr", "text": "/clear", "chat": "team", "sender": "alice", "is_group": true}),
    );
    let frames = c.until(Duration::from_secs(30), |f| {
        f["type"] == "reply" && f["chat"] == "team" && f["in_reply_to"] == "clr"
    });
    assert_eq!(frames.last().unwrap()["text"], "Permission denied: /clear requires admin access.");

    // An unknown chat without a mention is dropped as such; with one, it asks for registration.
    c.send_frame(&json!({"type": "message", "id": "u1", "text": "psst", "chat": "elsewhere", "sender": "zed", "is_group": true}),
    );
    let frames = c.until(Duration::from_secs(30), |f| f["id"] == "u1");
    assert_eq!(frames.last().unwrap()["reason"], "not delivered to any agent: unknown_chat");
    c.send_frame(&json!({"type": "message", "id": "u2", "text": "@bot hi", "chat": "elsewhere", "sender": "zed", "is_group": true, "mention": true}),
    );
    let frames = c.until(Duration::from_secs(30), |f| f["id"] == "u2");
    assert_eq!(frames.last().unwrap()["reason"], "not delivered to any agent: no_agent_wired");
    let pending: i64 = store_db(&data)
        .query_row("SELECT count(*) FROM pending_channel_approvals", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pending, 1);
}

/// Reads frames until `n` replies came (60 s at most; then fails with the service's log);
/// returns the replies.
fn replies_until(c: &mut Client, n: usize, server: &Server) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut replies = vec![];
    while replies.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} replies: {replies:?}\nlog: {}",
            replies.len(),
            server.log()
        );
        if let Some(f) = c.next(Duration::from_millis(500))
            && f["type"] == "reply"
        {
            replies.push(f);
        }
    }
    replies
}

#[test]
fn nanoclaw_chat_writes_as_another_user_in_another_chat_and_shows_that_chats_replies() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let _server = Server::start(&data, &["--runtime", "process"], &[]);
    wire_cli_team(&data, "public");
    let out = nanoclaw(&data)
        .args(["chat", "--chat", "team", "--as", "bob", "--group", "--thread", "T9", "-m", "hello team"])
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo: hello team\n");
    let (sender, thread): (String, Option<String>) = store_db(&data)
        .query_row(
            "SELECT sender_id, thread_id FROM inbound_ledger ORDER BY received_at DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((sender.as_str(), thread.as_deref()), ("cli:bob", Some("T9")));
}

#[test]
fn addressing_fields_that_break_the_rules_get_an_error_naming_the_field() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    for (field, value) in
        [("chat", "c".repeat(1000)), ("sender", "a\u{0}b".to_string()), ("thread", "t/../x".to_string())]
    {
        let mut c = server.client();
        let mut frame = json!({"type": "message", "id": "bad", "text": "hi"});
        frame[field] = Value::String(value);
        c.send_frame(&frame);
        let frames = c.until_closed(Duration::from_secs(10));
        let err =
            frames.iter().find(|f| f["type"] == "error").unwrap_or_else(|| panic!("{field}: {frames:?}"));
        let message = err["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("invalid frame: {field} ")), "{field}: {message}");
    }
    // The service keeps running: the owner's chat still works.
    let out = nanoclaw(&data).args(["chat", "-m", "still here"]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo: still here\n");
}

#[test]
fn a_message_killed_after_its_ledger_commit_and_delivered_three_times_is_answered_once_per_agent() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server =
        Server::start(&data, &["--runtime", "process"], &[("NANOCLAW_TEST_CRASH_AFTER_LEDGER", "1")]);
    wire_cli_team(&data, "public");
    add_echo_group(&data, "bee", "Bee");
    let now = nanoclaw_protocol::time::now_ts();
    store_db(&data)
        .execute_batch(&format!(
            "INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, engage_mode, engage_pattern, created_at)
               VALUES ('w-team-bee', 'mg-team', 'ag-bee', 'pattern', '.', '{now}');
             INSERT INTO agent_destinations (agent_group_id, local_name, target_type, target_id, created_at)
               VALUES ('ag-bee', 'team', 'channel', 'mg-team', '{now}');"
        ))
        .unwrap();
    let frame = json!({"type": "message", "id": "dup", "text": "hello", "chat": "team", "sender": "ann", "is_group": true});
    let mut c = server.client();
    c.send_frame(&frame);
    // The service dies between the ledger commit and the sessions (a SIGKILL at that instant).
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    drop(c);
    // The next start routes the committed entry; the platform delivers the message twice more
    // (after the recovery: one that races it is routed again idempotently, acked as new).
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    eventually(Duration::from_secs(30), "the entry routed at start", || {
        store_db(&data)
            .query_row("SELECT status FROM inbound_ledger WHERE platform_message_id = 'dup'", [], |r| {
                r.get::<_, String>(0)
            })
            .is_ok_and(|s| s == "routed")
    });
    let mut c = server.client();
    // Replies may come before the acks of the repeats (a new connection is sent the waiting
    // replies first): every frame read counts.
    let mut seen = vec![];
    for _ in 0..2 {
        c.send_frame(&frame);
        let frames = c.until(Duration::from_secs(30), |f| f["id"] == "dup" && f["type"] == "accepted");
        assert_eq!(frames.last().unwrap()["duplicate"], true);
        seen.extend(frames);
    }
    let early = seen.iter().filter(|f| f["type"] == "reply").count();
    let mut replies: Vec<Value> = seen.into_iter().filter(|f| f["type"] == "reply").collect();
    replies.extend(replies_until(&mut c, 2usize.saturating_sub(early), &server));
    let mut texts: Vec<&str> =
        replies.iter().filter(|f| f["in_reply_to"] == "dup").filter_map(|f| f["text"].as_str()).collect();
    texts.sort();
    assert_eq!(texts, vec!["echo: hello", "echo: hello"], "one reply from each agent: {replies:?}");
    let more = c.drain(Duration::from_secs(2));
    assert!(more.iter().all(|f| f["type"] != "reply"), "no third reply: {more:?}");
    let ledger: i64 = store_db(&data)
        .query_row("SELECT count(*) FROM inbound_ledger WHERE platform_message_id = 'dup'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ledger, 1);
    let senders: Vec<String> =
        replies.iter().filter_map(|f| f["message_out_id"].as_str().map(String::from)).collect();
    assert_eq!(senders.len(), 2);
    assert_ne!(senders[0], senders[1], "two agents, two replies");
}

/// The engagement table of `docs/routing.md`: the cells of each row.
fn engagement_table() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/routing.md")).unwrap();
    let start = doc.find("<!-- engagement-table -->").unwrap();
    let end = doc.find("<!-- /engagement-table -->").unwrap();
    doc[start..end]
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| engage"))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .collect()
}

/// `trigger` of the row the message `id` left in any session of main, if any.
fn stored_trigger(data: &Path, id: &str) -> Option<i64> {
    let db = store_db(data);
    let ledger: String = db
        .query_row("SELECT id FROM inbound_ledger WHERE platform_message_id = ?1", [id], |r| r.get(0))
        .ok()?;
    let sessions: Vec<String> = db
        .prepare("SELECT id FROM sessions WHERE agent_group_id = 'ag-main'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    sessions.iter().find_map(|s| {
        let path = data.join(format!("sessions/main/{s}/host/inbound.db"));
        let c =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        c.query_row("SELECT trigger FROM messages_in WHERE id = ?1", [format!("{ledger}:ag-main")], |r| {
            r.get(0)
        })
        .ok()
    })
}

#[test]
fn every_row_of_the_engagement_table_holds_through_the_binary() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    store_db(&data)
        .execute_batch(
            "INSERT INTO users (id, kind, created_at) VALUES ('cli:member', 'cli', 't');
             INSERT INTO agent_group_members (user_id, agent_group_id, added_at) VALUES ('cli:member', 'ag-main', 't');",
        )
        .unwrap();
    let mut c = server.client();
    let mut failures = vec![];
    for (i, row) in engagement_table().iter().enumerate() {
        let (engage, pattern) = match row[0].split_once(' ') {
            Some((m, p)) => (m.to_string(), Some(p.trim_matches('`').to_string())),
            None => (row[0].clone(), None),
        };
        let (message, session, ignored, scope, policy, sender) =
            (&row[1], &row[2], &row[3], &row[4], &row[5], &row[6]);
        let is_group = message != "dm";
        let chat = format!("row-{i}");
        let now = nanoclaw_protocol::time::now_ts();
        let db = store_db(&data);
        db.execute(
            "INSERT INTO messaging_groups (id, channel_type, platform_id, name, is_group, unknown_sender_policy, created_at)
             VALUES (?1, 'cli', ?2, ?2, ?3, ?4, ?5)",
            rusqlite::params![format!("mg-{chat}"), chat, is_group, policy, now],
        )
        .unwrap();
        db.execute(
            "INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, engage_mode, engage_pattern, sender_scope,
               ignored_message_policy, created_at) VALUES (?1, ?2, 'ag-main', ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![format!("w-{chat}"), format!("mg-{chat}"), engage, pattern, scope, ignored, now],
        )
        .unwrap();
        let thread = (message == "thread").then_some("t1");
        let existing = match session.as_str() {
            "same" => Some(thread),
            "other-thread" => Some(Some("t2")),
            _ => None,
        };
        if let Some(t) = existing {
            db.execute(
                "INSERT INTO sessions (id, agent_group_id, messaging_group_id, thread_id, session_mode, created_at)
                 VALUES (?1, 'ag-main', ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    format!("sess-{chat}"),
                    format!("mg-{chat}"),
                    t,
                    if t.is_some() { "per-thread" } else { "shared" },
                    now
                ],
            )
            .unwrap();
        }
        let id = format!("m-{i}");
        let handle = if sender == "member" { "member".to_string() } else { format!("stranger-{i}") };
        let mut frame = json!({"type": "message", "id": id, "text": "hello there", "chat": chat, "sender": handle,
                               "is_group": is_group, "mention": message == "mention"});
        if let Some(t) = thread {
            frame["thread"] = json!(t);
        }
        c.send_frame(&frame);
        let frames = c.until(Duration::from_secs(30), |f| {
            f["id"] == id && (f["type"] == "accepted" || f["type"] == "failed")
        });
        let last = frames.last().unwrap();
        let reason =
            last["reason"].as_str().map(|r| r.trim_start_matches("not delivered to any agent: ").to_string());
        let trigger = stored_trigger(&data, &id);
        let got = (trigger.is_some(), trigger, reason);
        let want = (row[7] == "yes", row[8].parse::<i64>().ok(), (row[9] != "-").then(|| row[9].clone()));
        if got != want {
            failures.push(format!("row {}: {row:?}: got {got:?}", i + 1));
        }
    }
    assert!(failures.is_empty(), "rows that do not hold:\n{}", failures.join("\n"));
}
