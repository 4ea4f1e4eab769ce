//! Agent-to-agent messages through the real binary (process runtime, echo agents): the answer
//! returns to the session that asked, an echo ping-pong stops at `routing.max_agent_hops` with
//! both agents told, and a target that is no destination (any more) fails at once, the agent
//! told on its next turn.

mod common;

use common::*;
use rusqlite::Connection;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// Agent group `bee` (echo), with the destinations `bee` (for main) and `parent` (for bee), and
/// chat `team` wired to main (public), named `team`.
fn setup(data: &Path) {
    add_echo_group(data, "bee", "Bee");
    wire_cli_team(data, "public");
    let now = nanoclaw_protocol::time::now_ts();
    store_db(data)
        .execute_batch(&format!(
            "INSERT INTO agent_destinations (agent_group_id, local_name, target_type, target_id, created_at)
               VALUES ('ag-main', 'bee', 'agent', 'ag-bee', '{now}'), ('ag-bee', 'parent', 'agent', 'ag-main', '{now}');"
        ))
        .unwrap();
}

/// The open session of main for platform chat `chat`.
fn session_of(data: &Path, chat: &str) -> String {
    store_db(data)
        .query_row(
            "SELECT s.id FROM sessions s JOIN messaging_groups mg ON mg.id = s.messaging_group_id
              WHERE s.agent_group_id = 'ag-main' AND mg.platform_id = ?1",
            [chat],
            |r| r.get(0),
        )
        .unwrap()
}

/// (id, kind, content) of every row of a session's inbound.db, in seq order.
fn inbound(data: &Path, folder: &str, session: &str) -> Vec<(String, String, String)> {
    let path = data.join(format!("sessions/{folder}/{session}/host/inbound.db"));
    if !path.exists() {
        return vec![];
    }
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.prepare("SELECT id, kind, content FROM messages_in ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn bee_session(data: &Path) -> Option<String> {
    store_db(data).query_row("SELECT id FROM sessions WHERE agent_group_id = 'ag-bee'", [], |r| r.get(0)).ok()
}

#[test]
fn an_answer_returns_to_the_asking_session_and_a_ping_pong_stops_at_the_hop_limit() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let config = config_file(dir.path(), "[routing]\nmax_agent_hops = 4\n");
    let server = Server::start(&data, &["--runtime", "process", "--config", config.to_str().unwrap()], &[]);
    setup(&data);
    let mut c = server.client();
    // Two sessions of main: the owner's DM (older) and the team chat (newer).
    c.send_frame(&json!({"type": "message", "id": "l1", "text": "hi", "chat": "local"}));
    c.until(Duration::from_secs(60), |f| f["type"] == "done" && f["id"] == "l1");
    c.send_frame(&json!({"type": "message", "id": "t1", "text": "hi", "chat": "team", "sender": "ann", "is_group": true}),
    );
    c.until(Duration::from_secs(60), |f| f["type"] == "done" && f["id"] == "t1");
    let (local, team) = (session_of(&data, "local"), session_of(&data, "team"));
    // The DM asks bee; bee's echo answers `parent`, which must land in the DM's session; the
    // DM's echo answers bee, and so on until the hop limit stops the exchange.
    c.send_frame(&json!({"type": "message", "id": "l2", "text": "!raw <message to=\"bee\">ping</message>", "chat": "local"}),
    );
    eventually(Duration::from_secs(120), "the exchange stopped", || {
        inbound(&data, "main", &local)
            .iter()
            .any(|(_, kind, content)| kind == "system" && content.contains("agent_hop_limit"))
            || bee_session(&data).is_some_and(|b| {
                inbound(&data, "bee", &b)
                    .iter()
                    .any(|(_, kind, content)| kind == "system" && content.contains("agent_hop_limit"))
            })
    });
    let bee = bee_session(&data).unwrap();
    let to_main: Vec<_> =
        inbound(&data, "main", &local).into_iter().filter(|(id, ..)| id.starts_with("a2a-")).collect();
    let to_bee: Vec<_> =
        inbound(&data, "bee", &bee).into_iter().filter(|(id, ..)| id.starts_with("a2a-")).collect();
    assert!(
        inbound(&data, "main", &team).iter().all(|(id, ..)| !id.starts_with("a2a-")),
        "nothing reached the newer team session"
    );
    // Hops 1..=4 delivered (bee, main, bee, main), the 5th stopped: the stopped side got its
    // refusal, the other a note.
    let delivered: Vec<_> = to_main.iter().chain(&to_bee).filter(|(_, kind, _)| kind == "chat").collect();
    assert_eq!(delivered.len(), 4, "main: {to_main:?}\nbee: {to_bee:?}");
    let stops: Vec<_> =
        to_main.iter().chain(&to_bee).filter(|(id, ..)| id.starts_with("a2a-stop-")).collect();
    assert_eq!(stops.len(), 1, "one side told with a note: {stops:?}");
    assert!(to_bee[0].2.contains("\"hops\":1") && to_bee[0].2.contains("\"sender\":\"Main\""), "{to_bee:?}");
    // The agent whose 5th message was stopped sees why on its next turn.
    c.send_frame(&json!({"type": "message", "id": "l3", "text": "!notes", "chat": "local"}));
    let frames = c.until(Duration::from_secs(60), |f| f["type"] == "reply" && f["in_reply_to"] == "l3");
    let text = frames.last().unwrap()["text"].as_str().unwrap().to_string();
    assert!(text.starts_with("echo: notes="), "{text}");
    assert!(text.contains("agent-to-agent messages in a row"), "main is told: {text}");
}

#[test]
fn a_target_that_is_no_destination_fails_at_once_and_the_agent_is_told_its_names() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    setup(&data);
    let mut c = server.client();
    c.send_frame(&json!({"type": "message", "id": "m1", "text": "hi", "chat": "local"}));
    c.until(Duration::from_secs(60), |f| f["type"] == "done" && f["id"] == "m1");
    // The destination goes from the central DB while the container still has it projected.
    store_db(&data).execute("DELETE FROM agent_destinations WHERE local_name = 'bee'", []).unwrap();
    c.send_frame(&json!({"type": "message", "id": "m2", "text": "!raw <message to=\"bee\">hello?</message>", "chat": "local"}),
    );
    c.until(Duration::from_secs(60), |f| f["type"] == "done" && f["id"] == "m2");
    let local = session_of(&data, "local");
    eventually(Duration::from_secs(30), "the refusal noted", || {
        inbound(&data, "main", &local)
            .iter()
            .any(|(_, kind, content)| kind == "system" && content.contains("destination_not_allowed"))
    });
    assert!(bee_session(&data).is_none(), "nothing reached bee");
    c.send_frame(&json!({"type": "message", "id": "m3", "text": "!notes", "chat": "local"}));
    let frames = c.until(Duration::from_secs(60), |f| f["type"] == "reply" && f["in_reply_to"] == "m3");
    let text = frames.last().unwrap()["text"].as_str().unwrap();
    assert!(
        text.contains("destination_not_allowed") && text.contains("its destinations: cli, team"),
        "{text}"
    );
    // Shown once: the next turn has no notes.
    c.send_frame(&json!({"type": "message", "id": "m4", "text": "!notes", "chat": "local"}));
    let frames = c.until(Duration::from_secs(60), |f| f["type"] == "reply" && f["in_reply_to"] == "m4");
    assert_eq!(frames.last().unwrap()["text"], "echo: notes=");
}

#[test]
fn a_file_sent_to_another_agent_lands_in_its_inbox() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let config = config_file(dir.path(), "[routing]\nmax_agent_hops = 1\n");
    let server = Server::start(&data, &["--runtime", "process", "--config", config.to_str().unwrap()], &[]);
    setup(&data);
    let mut c = server.client();
    let text = "tool write_file {\"path\":\"notes.txt\",\"content\":\"hello bee\"}\n\
                tool send_file {\"path\":\"notes.txt\",\"to\":\"bee\",\"text\":\"see attached\"}";
    c.send_frame(&json!({"type": "message", "id": "f1", "text": text, "chat": "local"}));
    eventually(Duration::from_secs(60), "bee got the file", || {
        bee_session(&data)
            .is_some_and(|b| inbound(&data, "bee", &b).iter().any(|(id, ..)| id.starts_with("a2a-")))
    });
    let bee = bee_session(&data).unwrap();
    let (id, _, content) =
        inbound(&data, "bee", &bee).into_iter().find(|(id, ..)| id.starts_with("a2a-")).unwrap();
    let content: Value = serde_json::from_str(&content).unwrap();
    assert_eq!(content["text"], format!("see attached\n[file /session/inbox/{id}/notes.txt (9 bytes)]"));
    let kept =
        std::fs::read_to_string(data.join(format!("sessions/bee/{bee}/host/inbox/{id}/notes.txt"))).unwrap();
    assert_eq!(kept, "hello bee");
}
