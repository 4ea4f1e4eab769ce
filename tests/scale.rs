//! Sessions with a long history keep answering (issue 3): a session whose DBs hold 10,001
//! finished turns completes each further turn with its reply and its `done` frame. The host once
//! read the container's acks with `LIMIT 10000` in no particular order, so after 10,000 turns the
//! new ack was never among those read and the chat never got its `done` again.
//!
//! The history is cloned from one real turn (tests/fixtures/history.rs: the exact rows the service
//! and the runner wrote for it). The agents run with the process runtime: what is tested is the
//! host's reading of long histories, not container isolation. No timing is asserted here; the
//! timings are in benches/history.rs.

mod common;
#[path = "fixtures/history.rs"]
mod history;
#[path = "fixtures/sessions.rs"]
mod sessions;

use common::*;
use std::path::Path;
use std::time::Duration;

/// Sends one message and waits for its reply and its `done`, in either order (the order has a
/// test of its own below); returns the reply texts and the frames in the order they came.
fn turn_frames(c: &mut Client, id: &str, text: &str) -> (Vec<String>, Vec<serde_json::Value>) {
    c.send(id, text);
    let mut frames: Vec<serde_json::Value> = vec![];
    loop {
        let done = frames.iter().any(|f| f["type"] == "done" && f["id"] == id);
        if done && !replies_to(&frames, id).is_empty() {
            break;
        }
        frames.extend(c.until(Duration::from_secs(60), |f| {
            ((f["type"] == "done" || f["type"] == "failed") && f["id"] == id)
                || (f["type"] == "reply" && f["in_reply_to"] == id)
        }));
        assert!(!frames.iter().any(|f| f["type"] == "failed"), "turn {id} failed: {frames:?}");
    }
    (replies_to(&frames, id).into_iter().map(str::to_string).collect(), frames)
}

/// [`turn_frames`], the reply texts only.
fn turn(c: &mut Client, id: &str, text: &str) -> Vec<String> {
    turn_frames(c, id, text).0
}

/// A data dir whose main session holds one real finished turn (client message id
/// `tmpl-turn-0`), the service stopped. Returns the session folder and the template's inbound id.
fn one_real_turn(data: &Path) -> (std::path::PathBuf, String) {
    let server = Server::start(data, &["--runtime", "process"], &[]);
    let mut c = server.client();
    assert_eq!(turn(&mut c, "tmpl-turn-0", "ping"), vec!["echo: ping"]);
    drop(c);
    assert!(server.stop().success());
    let session = history::main_session_dir(data);
    let db = rusqlite::Connection::open(session.join("host/inbound.db")).unwrap();
    let id: String =
        db.query_row("SELECT id FROM messages_in WHERE kind = 'chat'", [], |r| r.get(0)).unwrap();
    (session, id)
}

/// Three further turns on a session with 10,001 finished turns (cursors as the host left them).
fn further_turns_complete(downgrade: bool) {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let (session, template) = one_real_turn(&data);
    let before = history::cursors(&session);
    // The service leaves its cursors one past the last final row of each table.
    assert_eq!(before, (2, 2), "cursors after one turn");
    let h = history::clone_turns(&data, &session, &template, 10_000);
    assert_eq!(h, history::History { turns: 10_001, replies: 10_001, acks: 10_001 });
    history::settle_idle(&data, &session);
    if downgrade {
        history::downgrade_to_v1(&session);
    }

    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let mut c = server.client();
    for i in 0..3 {
        let id = format!("after-{i}");
        assert_eq!(turn(&mut c, &id, &format!("more {i}")), vec![format!("echo: more {i}")]);
    }
    drop(c);
    assert!(server.stop().success());
    let after = history::history(&session);
    assert_eq!(after, history::History { turns: 10_004, replies: 10_004, acks: 10_004 });
    // Every reply is delivered exactly once and the cursors moved past the new rows only.
    let db = rusqlite::Connection::open(session.join("host/inbound.db")).unwrap();
    let delivered: i64 =
        db.query_row("SELECT count(*) FROM delivered WHERE status = 'delivered'", [], |r| r.get(0)).unwrap();
    assert_eq!(delivered, 10_004);
    assert_eq!(history::cursors(&session), (10_005, 10_005));
}

#[test]
fn a_session_with_10001_finished_turns_completes_each_further_turn() {
    further_turns_complete(false);
}

/// The same session as a schema-1 service left it (no cursors): the first pass after the upgrade
/// walks the whole history once, and every further turn still gets its reply and its `done`.
///
/// Fails today: the outbox takes a `messages_out` page as full at `ReadLimits::max_rows` (500)
/// rows while the read returns at most 256 (`SELECT_PENDING_OUTBOUND`'s `LIMIT 256`), so it
/// never reads on at once; the 500-row ack pages drive 21 passes, the message cursor stops at
/// rowid 5,377, the `done` goes out without the reply, and the reply waits for ~19 more 30 s
/// fallback passes (~10 min). See BENCHMARKS.md, issue 3.
#[test]
fn a_session_with_10001_turns_and_no_cursors_completes_each_further_turn() {
    further_turns_complete(true);
}

/// Many turns in a row: each turn's reply reaches the chat before its `done` (a one-turn
/// `nanoclaw chat -m` exits at `done`, so a reply after it is never shown).
///
/// Fails today: the outbox reads `messages_out` and `processing_ack` through two separate
/// connections (actors/src/container_files.rs, messages first), so a turn the runner commits
/// between the two reads shows its ack without its reply; the `done` goes out in that pass and the
/// reply in the next. Measured: 16 of 300 turns, and 3 of 100 `nanoclaw chat -m` runs printed
/// nothing. See BENCHMARKS.md, issue 3.
#[test]
fn every_reply_reaches_the_chat_before_its_done() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let mut c = server.client();
    let mut early = vec![];
    for i in 0..200 {
        let id = format!("m-{i}");
        let (replies, frames) = turn_frames(&mut c, &id, "hi");
        assert_eq!(replies, vec!["echo: hi"]);
        let reply_at = frames.iter().position(|f| f["type"] == "reply").unwrap();
        let done_at = frames.iter().position(|f| f["type"] == "done").unwrap();
        if done_at < reply_at {
            early.push(id);
        }
    }
    assert!(early.is_empty(), "done before the reply in {} of 200 turns: {early:?}", early.len());
    drop(c);
    assert!(server.stop().success());
}

/// One chat wired to ten agent groups (fan-out): every message gets ten replies, each shown.
///
/// Fails today: reply ids are `out-<generation>-<unix ms>-<turn counter>`, unique per container
/// only, and the CLI channel (like `nanoclaw chat`) drops a reply whose id it has sent before —
/// so two sessions that answer in the same millisecond lose one reply. Seen in the idle bench
/// (two `delivered` rows `out-1-1796056131869-0-0` of two sessions, nine replies shown). See
/// BENCHMARKS.md, issue 3.
#[test]
fn a_message_fanned_out_to_ten_sessions_shows_ten_replies() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    assert!(server.stop().success());
    sessions::fan_out_cli(&data, 9);
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let mut c = server.client();
    let mut short = vec![];
    for i in 0..10 {
        let id = format!("fan-{i}");
        c.send(&id, "hi");
        let mut frames = vec![];
        while frames.iter().filter(|f: &&serde_json::Value| f["type"] == "done" && f["id"] == id).count() < 10
        {
            frames.extend(c.until(Duration::from_secs(60), |f| f["type"] == "done" && f["id"] == id));
        }
        frames.extend(c.drain(Duration::from_millis(300)));
        let replies = replies_to(&frames, &id).len();
        if replies != 10 {
            short.push((id, replies));
        }
    }
    drop(c);
    assert!(server.stop().success());
    // The reply ids delivered by more than one session (the cause when a reply is missing).
    let mut ids = std::collections::HashMap::<String, usize>::new();
    for group in std::fs::read_dir(data.join("sessions")).unwrap() {
        for session in std::fs::read_dir(group.unwrap().path()).unwrap() {
            let db = rusqlite::Connection::open(session.unwrap().path().join("host/inbound.db")).unwrap();
            let mut st = db.prepare("SELECT message_out_id FROM delivered").unwrap();
            for id in st.query_map([], |r| r.get::<_, String>(0)).unwrap() {
                *ids.entry(id.unwrap()).or_default() += 1;
            }
        }
    }
    let shared: Vec<_> = ids.into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(
        short.is_empty(),
        "messages with fewer than ten replies shown: {short:?}; reply ids delivered by several sessions: {shared:?}"
    );
}
