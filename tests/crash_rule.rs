//! The crash rule of delivery (DESIGN §5 invariant 3) against the real binary: the host dies
//! between a reply's reservation (`sending`, committed) and its send
//! (`NANOCLAW_TEST_CRASH_AFTER_RESERVE=1` aborts exactly there). After a restart:
//! - on a non-idempotent channel (`NANOCLAW_CLI_IDEMPOTENT=0`) the row is failed, never sent a
//!   second time, the chat is told once that a reply may not have arrived (quoting its first
//!   line), and the agent gets a note;
//! - on an idempotent channel the reply is sent again with the same key and shown once.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

const PROCESS: &[&str] = &["--runtime", "process"];
const CRASH_KNOB: (&str, &str) = ("NANOCLAW_TEST_CRASH_AFTER_RESERVE", "1");
const NON_IDEMPOTENT: (&str, &str) = ("NANOCLAW_CLI_IDEMPOTENT", "0");
const TIMEOUT: Duration = Duration::from_secs(30);

/// Reply frames among `frames`.
fn replies(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f["type"] == "reply").collect()
}

/// The frame that ends the turn of `id` (`done` or `failed`).
fn ends(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |f| (f["type"] == "done" || f["type"] == "failed") && f["id"] == id
}

/// Sends `id`, which the service answers with `echo: <text>`; runs until its turn ends and
/// returns the frames seen on the way.
fn turn(client: &mut Client, id: &str, text: &str) -> Vec<Value> {
    client.send(id, text);
    let frames = client.until(TIMEOUT, ends(id));
    assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");
    assert_eq!(replies_to(&frames, id), vec![format!("echo: {text}")], "{frames:?}");
    frames
}

/// Sends `id` with a service that aborts after the reservation of its reply: the service dies by
/// SIGABRT and the client saw no reply. Returns the key of the reply's reservation.
fn crash_after_reserve(server: Server, id: &str, text: &str) -> String {
    let data = server.data_dir.clone();
    let mut client = server.client();
    client.send(id, text);
    let status = server.wait_exit(Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGABRT), "the knob aborted the service: {status:?}");
    let frames = client.until_closed(TIMEOUT);
    assert!(frames.iter().any(|f| f["type"] == "accepted" && f["id"] == id), "{frames:?}");
    assert!(replies(&frames).is_empty(), "nothing was sent before the abort: {frames:?}");
    // The agent outlived the host (process runtime): it goes as a container would be reaped.
    kill_agents_of(&data);
    let rows = delivery_rows(&data);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, "sending", "the reservation was committed before the abort");
    rows[0].key.clone()
}

/// The `note-<key>` row the outbox writes to tell the agent about `key`, if any: its kind and
/// trigger.
fn agent_note(data: &Path, key: &str) -> Option<(String, i64)> {
    let db = rusqlite::Connection::open_with_flags(
        session_dir(data).join("host/inbound.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.query_row("SELECT kind, trigger FROM messages_in WHERE id = ?1", [format!("note-{key}")], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .ok()
}

#[test]
fn a_crash_between_reservation_and_send_on_a_non_idempotent_channel_fails_the_row_and_tells_the_chat_once() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, PROCESS, &[NON_IDEMPOTENT, CRASH_KNOB]);
    let key = crash_after_reserve(server, "m1", "first line\nsecond line");
    let note = "A reply may not have arrived (the service stopped while sending it): “echo: first line”";
    let is_note =
        |f: &&Value| f["text"].as_str().is_some_and(|t| t.starts_with("A reply may not have arrived"));
    let is_lost_reply = |f: &&Value| f["text"].as_str().is_some_and(|t| t.starts_with("echo: first line"));

    // Restarted without the knob, still non-idempotent. The first client after the restart is
    // told, without having to send anything.
    let server = Server::spawn(&data, PROCESS, &[NON_IDEMPOTENT]);
    let mut first = server.client_when_up();
    let mut frames = first.until(TIMEOUT, |f| f["type"] == "reply");
    assert_eq!(replies(&frames)[0]["text"], note, "{frames:?}");
    // A later turn: the outbox delivers in order, so a second send of the reply (or a second
    // note) would come before this turn's reply.
    frames.extend(turn(&mut first, "m2", "after the crash"));
    assert_eq!(replies(&frames).into_iter().filter(is_note).count(), 1, "one note: {frames:?}");
    assert_eq!(replies(&frames).into_iter().filter(is_lost_reply).count(), 0, "never re-sent: {frames:?}");
    let row = delivery_rows(&data).into_iter().find(|r| r.key == key).unwrap();
    assert_eq!(row.status, "failed", "{row:?}");
    assert!(row.error.as_deref().is_some_and(|e| e.starts_with("delivery outcome unknown")), "{row:?}");
    assert_eq!(agent_note(&data, &key), Some(("system".to_string(), 0)), "the agent got a note");

    // A client that reconnects is not told again, nor sent the reply.
    drop(first);
    let mut again = server.client();
    let frames = turn(&mut again, "m3", "reconnected");
    assert!(!replies(&frames).iter().any(|f| is_note(f) || is_lost_reply(f)), "{frames:?}");

    // Nor after another restart: the row is final.
    drop(again);
    assert!(server.stop().success());
    let server = Server::spawn(&data, PROCESS, &[NON_IDEMPOTENT]);
    let mut after = server.client_when_up();
    let frames = turn(&mut after, "m4", "restarted again");
    assert!(!replies(&frames).iter().any(|f| is_note(f) || is_lost_reply(f)), "{frames:?}");
    assert_eq!(delivery_rows(&data).into_iter().find(|r| r.key == key).unwrap().status, "failed");
}

#[test]
fn a_crash_between_reservation_and_send_on_an_idempotent_channel_sends_the_reply_once_after_the_restart() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, PROCESS, &[CRASH_KNOB]);
    let key = crash_after_reserve(server, "m1", "hello twin");

    // Restarted without the knob: the reservation is re-sent with the same key, unasked.
    let server = Server::spawn(&data, PROCESS, &[]);
    let mut first = server.client_when_up();
    let mut frames = first.until(TIMEOUT, |f| f["type"] == "reply");
    let reply = replies(&frames)[0].clone();
    assert_eq!(reply["text"], "echo: hello twin", "{frames:?}");
    assert_eq!(reply["in_reply_to"], "m1", "{frames:?}");
    assert!(is_key_of(&reply, &key), "the same key as the reservation: {frames:?}");
    // A later turn flushes anything the outbox would still send before it.
    frames.extend(turn(&mut first, "m2", "after the crash"));
    let sends = replies(&frames).into_iter().filter(|f| is_key_of(f, &key)).count();
    assert_eq!(sends, 1, "sent once: {frames:?}");
    assert!(
        !replies(&frames)
            .iter()
            .any(|f| f["text"].as_str().is_some_and(|t| t.starts_with("A reply may not"))),
        "no may-not-have-arrived note on an idempotent channel: {frames:?}"
    );
    let row = delivery_rows(&data).into_iter().find(|r| r.key == key).unwrap();
    assert_eq!(row.status, "delivered", "{row:?}");

    // A client that reconnects is not sent it again.
    drop(first);
    let mut again = server.client();
    let frames = turn(&mut again, "m3", "reconnected");
    assert!(!replies(&frames).iter().any(|f| f["in_reply_to"] == "m1"), "{frames:?}");
}
