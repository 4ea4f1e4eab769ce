//! Approvals and questions through the real binary: the echo agent asks (`tool add_mcp_server
//! …`, `tool ask_user_question …`), the CLI channel shows the `choice` card, and the owner
//! decides by a reply `approve <id>` or by a `decision` frame (the CLI's button). The process
//! runtime runs the agent; what matters here is who is asked, what they see, and what the agent
//! learns.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// The `choice` frame of the card that came with `frames` (the last one).
fn choice_of(frames: &[Value]) -> Value {
    frames
        .iter()
        .rev()
        .find(|f| f["type"] == "choice")
        .cloned()
        .unwrap_or_else(|| panic!("no card in {frames:?}"))
}

fn approval_status(data: &std::path::Path, id: &str) -> String {
    store_db(data)
        .query_row("SELECT status FROM pending_approvals WHERE approval_id = ?1", [id], |r| r.get(0))
        .unwrap()
}

#[test]
fn add_mcp_server_shows_every_argument_and_once_approved_is_wired_at_the_next_start() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let mut c = server.client();
    let args = json!({"name": "files", "command": "/nonexistent/mcp-files", "args": ["--root", "/srv/a b"],
                      "env": {"TOKEN": "s3cret", "MODE": "ro"}});
    c.send("m1", &format!("tool add_mcp_server {args}"));
    let frames = c.until(WAIT, |f| is_reply(f, "tool add_mcp_server:"));
    let answer = frames.last().unwrap()["text"].as_str().unwrap().to_string();
    assert!(answer.starts_with("tool add_mcp_server: approval requested (id "), "{answer}");
    let frames = if frames.iter().any(|f| f["type"] == "choice") {
        frames
    } else {
        c.until(WAIT, |f| f["type"] == "choice")
    };
    let card = choice_of(&frames);
    let id = card["approval_id"].as_str().unwrap().to_string();
    assert!(answer.contains(&id));
    assert_eq!(card["chat"], "local", "the owner's DM on the CLI");
    let text = card["text"].as_str().unwrap();
    for shown in
        ["files", "/nonexistent/mcp-files", "--root", "/srv/a b", "TOKEN", "s3cret", "MODE", "\"ro\""]
    {
        assert!(text.contains(shown), "the card hides {shown:?}: {text}");
    }
    assert_eq!(card["options"][0]["label"], "Approve");
    assert!(card["reply_hint"].as_str().unwrap().contains(&format!("approve {id}")));
    // Nothing is wired before the decision.
    let servers: String = store_db(&data)
        .query_row("SELECT mcp_servers FROM container_configs WHERE agent_group_id = 'ag-main'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(servers, "{}");

    c.send("m2", &format!("APPROVE {id}"));
    let frames = c.until(WAIT, |f| is_reply(f, &format!("approved {id}")));
    assert_eq!(frames.last().unwrap()["text"], format!("approved {id}: add_mcp_server"));
    // The agent's container restarts with the note, which it reads once.
    let frames = c.until(WAIT, |f| is_reply(f, "echo: system: Your add_mcp_server request"));
    let note = frames.last().unwrap()["text"].as_str().unwrap().to_string();
    assert!(note.contains(&format!("request {id} was approved by cli:local and done")), "{note}");
    let servers: Value = serde_json::from_str(
        &store_db(&data)
            .query_row(
                "SELECT mcp_servers FROM container_configs WHERE agent_group_id = 'ag-main'",
                [],
                |r| r.get::<_, String>(0),
            )
            .unwrap(),
    )
    .unwrap();
    assert_eq!(servers["files"]["args"], json!(["--root", "/srv/a b"]));
    assert_eq!(servers["files"]["env"]["TOKEN"], "s3cret");
    let runner: Value =
        serde_json::from_str(&std::fs::read_to_string(session_dir(&data).join("host/runner.json")).unwrap())
            .unwrap();
    assert_eq!(runner["mcp_servers"]["files"]["command"], "/nonexistent/mcp-files", "wired at the new start");
    assert_eq!(approval_status(&data, &id), "executed");
    // Read once: the next message does not bring the note back.
    c.send("m3", "!notes");
    let frames = c.until(WAIT, |f| is_reply(f, "echo: notes="));
    assert_eq!(frames.last().unwrap()["text"], "echo: notes=");
    let again = c.drain(Duration::from_millis(500));
    assert!(!again.iter().any(|f| is_reply(f, "echo: system:")), "{again:?}");
}

#[test]
fn questions_are_answered_by_button_by_number_and_by_text_and_one_times_out() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let mut c = server.client();
    let ask = |timeout: u32| {
        format!(
            "tool ask_user_question {}",
            json!({"title": "Lunch", "question": "Which one?", "options": ["pizza", "sushi"], "timeout_s": timeout})
        )
    };
    // By button.
    c.send("q1", &ask(60));
    let card = choice_of(&c.until(WAIT, |f| f["type"] == "choice"));
    assert_eq!(card["title"], "Lunch");
    assert_eq!(card["text"], "Which one?");
    let callback = card["options"][0]["callback"].as_str().unwrap().to_string();
    c.send_frame(&json!({"type": "decision", "callback": callback}));
    let decided = c.until(WAIT, |f| f["type"] == "decided");
    let id = card["approval_id"].as_str().unwrap();
    assert_eq!(decided.last().unwrap()["text"], format!("answered {id}: \"pizza\""));
    c.until(WAIT, |f| is_reply(f, "tool ask_user_question: pizza"));
    // By number, then by text (any case); neither reaches the agent as a message.
    for (n, answer, expect) in [("q2", "2", "sushi"), ("q3", "Pizza", "pizza")] {
        c.send(n, &ask(60));
        c.until(WAIT, |f| f["type"] == "choice");
        c.send(&format!("{n}-a"), answer);
        let frames = c.until(WAIT, |f| is_reply(f, "tool ask_user_question:"));
        assert_eq!(frames.last().unwrap()["text"], format!("tool ask_user_question: {expect}"));
        assert!(!frames.iter().any(|f| is_reply(f, &format!("echo: {answer}"))), "{frames:?}");
    }
    // Nobody answers: the tool returns an error and the card says so.
    c.send("q4", &ask(1));
    let card = choice_of(&c.until(WAIT, |f| f["type"] == "choice"));
    let mut frames = c.until(WAIT, |f| is_reply(f, "tool ask_user_question:"));
    assert_eq!(
        frames.last().unwrap()["text"],
        "tool ask_user_question: error: the question timed out: nobody answered in time"
    );
    let id = card["approval_id"].as_str().unwrap().to_string();
    assert_eq!(approval_status(&data, &id), "expired");
    let edited = |f: &Value| f["type"] == "edit" && f["text"].as_str().is_some_and(|t| t.contains("Expired"));
    if !frames.iter().any(edited) {
        frames = c.until(WAIT, edited);
    }
    assert!(frames.iter().any(edited));
    // A late answer is not the agent's business either.
    c.send_frame(&json!({"type": "decision", "callback": card["options"][1]["callback"]}));
    let late = c.until(WAIT, |f| f["type"] == "decided");
    assert_eq!(late.last().unwrap()["text"], format!("approval {id} expired"));
}

#[test]
fn a_question_survives_a_restart_and_its_answer_reaches_the_agent_as_a_note() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let mut c = server.client();
    c.send(
        "q1",
        &format!(
            "tool ask_user_question {}",
            json!({"title": "Deploy", "question": "Ship it?", "options": ["yes", "no"], "timeout_s": 600})
        ),
    );
    let card = choice_of(&c.until(WAIT, |f| f["type"] == "choice"));
    let id = card["approval_id"].as_str().unwrap().to_string();
    server.stop();
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let mut c = server.client();
    // The interrupted turn runs again and asks again: a second card, while the first stays open.
    let again = choice_of(&c.until(WAIT, |f| f["type"] == "choice" && f["approval_id"] != id.as_str()));
    assert_eq!(approval_status(&data, &id), "pending");
    c.send_frame(&json!({"type": "decision", "callback": card["options"][0]["callback"]}));
    let decided = c.until(WAIT, |f| f["type"] == "decided");
    assert_eq!(decided.last().unwrap()["text"], format!("answered {id}: \"yes\""));
    // The new question's tool gets its own answer; then the first answer reaches the agent as a
    // note (its asking container is gone) and wakes it.
    c.send_frame(&json!({"type": "decision", "callback": again["options"][1]["callback"]}));
    c.until(WAIT, |f| is_reply(f, "tool ask_user_question: no"));
    let frames = c.until(WAIT, |f| is_reply(f, &format!("echo: system: You asked \"Deploy\" ({id})")));
    assert!(frames.last().unwrap()["text"].as_str().unwrap().ends_with("the answer: yes"));
    assert_eq!(approval_status(&data, &id), "executed");
}

#[test]
fn create_agent_waits_for_the_owner_and_an_agent_cannot_approve_its_own_request() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let mut c = server.client();
    c.send("m1", r#"tool create_agent {"name": "Helper", "instructions": "Be brief."}"#);
    let card = choice_of(&c.until(WAIT, |f| f["type"] == "choice"));
    let id = card["approval_id"].as_str().unwrap().to_string();
    c.until(WAIT, |f| is_reply(f, "tool create_agent: approval requested"));
    // The agent writes the decision itself: it reaches the chat as text, nothing is decided.
    c.send("m2", &format!("!raw approve {id}"));
    c.until(WAIT, |f| f["type"] == "done" && f["id"] == "m2");
    assert_eq!(approval_status(&data, &id), "pending");
    let groups: i64 = store_db(&data)
        .query_row("SELECT count(*) FROM agent_groups WHERE name = 'Helper'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(groups, 0);
    // A stranger's button click in the owner's chat is refused.
    c.send_frame(
        &json!({"type": "decision", "callback": card["options"][0]["callback"], "sender": "mallory"}),
    );
    let refused = c.until(WAIT, |f| f["type"] == "decided");
    assert!(refused.last().unwrap()["text"].as_str().unwrap().starts_with("not allowed"));
    // The owner's click creates it.
    c.send_frame(&json!({"type": "decision", "callback": card["options"][0]["callback"]}));
    let decided = c.until(WAIT, |f| f["type"] == "decided");
    assert_eq!(decided.last().unwrap()["text"], format!("approved {id}: create_agent"));
    let frames = c.until(WAIT, |f| is_reply(f, "echo: system: Your create_agent request"));
    assert!(frames.last().unwrap()["text"].as_str().unwrap().contains("<message to=\"helper\">"));
    let folder: String = store_db(&data)
        .query_row("SELECT folder FROM agent_groups WHERE name = 'Helper'", [], |r| r.get(0))
        .unwrap();
    let memory = std::fs::read_to_string(data.join("groups").join(folder).join("memory.md")).unwrap();
    assert_eq!(memory, "Be brief.");
}

#[test]
fn unknown_senders_and_new_chats_ask_the_owner_and_a_decision_lets_their_message_in() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    wire_cli_team(&data, "request_approval");
    let mut owner = server.client();
    let mut guest = server.client();
    guest.send_frame(
        &json!({"type": "message", "id": "g1", "text": "let me in", "chat": "team", "sender": "mallory",
                             "sender_name": "Mallory", "is_group": true}),
    );
    let card = choice_of(&owner.until(WAIT, |f| f["type"] == "choice"));
    assert_eq!(card["title"], "New sender");
    assert!(card["text"].as_str().unwrap().contains("Mallory (cli:mallory)"));
    owner.send_frame(&json!({"type": "decision", "callback": card["options"][0]["callback"]}));
    owner.until(WAIT, |f| f["type"] == "decided");
    // The stored message is answered, in its chat.
    let frames = guest.until(WAIT, |f| is_reply(f, "echo: let me in"));
    assert_eq!(frames.last().unwrap()["chat"], "team");

    // A mention in a chat nobody wired: the owner picks an agent by number.
    guest.send_frame(
        &json!({"type": "message", "id": "o1", "text": "anyone here?", "chat": "ops", "sender": "alice",
                             "mention": true, "is_group": true}),
    );
    let card = choice_of(
        &owner.until(WAIT, |f| f["type"] == "choice" && f["title"] == "Bot mentioned in a new chat"),
    );
    let labels: Vec<&str> =
        card["options"].as_array().unwrap().iter().map(|o| o["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["Connect to Main", "Create a new agent", "Reject this chat"]);
    let id = card["approval_id"].as_str().unwrap();
    owner.send("d1", &format!("approve {id} 1"));
    owner.until(WAIT, |f| is_reply(f, &format!("approved {id}")));
    let frames = guest.until(WAIT, |f| is_reply(f, "echo: anyone here?"));
    assert_eq!(frames.last().unwrap()["chat"], "ops");

    // Another new chat: the "new agent" button asks for a name, which a reply gives.
    guest.send_frame(
        &json!({"type": "message", "id": "n1", "text": "hello bots", "chat": "lab", "sender": "alice",
                             "mention": true, "is_group": true}),
    );
    let card = choice_of(
        &owner.until(WAIT, |f| f["type"] == "choice" && f["title"] == "Bot mentioned in a new chat"),
    );
    let id = card["approval_id"].as_str().unwrap().to_string();
    owner.send_frame(&json!({"type": "decision", "callback": card["options"][1]["callback"]}));
    let asked = owner.until(WAIT, |f| f["type"] == "decided");
    assert_eq!(
        asked.last().unwrap()["text"],
        format!("reply `approve {id} new <name>` with the name of the new agent")
    );
    owner.send("d2", &format!("approve {id} new Lab Bot"));
    owner.until(WAIT, |f| is_reply(f, &format!("approved {id}: create agent \"Lab Bot\"")));
    let frames = guest.until(WAIT, |f| is_reply(f, "echo: hello bots"));
    assert_eq!(frames.last().unwrap()["chat"], "lab");
    let wired: String = store_db(&data)
        .query_row(
            "SELECT ag.name FROM messaging_group_agents w JOIN agent_groups ag ON ag.id = w.agent_group_id
               JOIN messaging_groups mg ON mg.id = w.messaging_group_id WHERE mg.platform_id = 'lab'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(wired, "Lab Bot");
}

#[test]
fn request_rebuild_without_approved_packages_restarts_on_the_standard_image_after_a_yes() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let mut c = server.client();
    c.send("m1", r#"tool request_rebuild {"reason": "my tools look broken"}"#);
    let card = choice_of(&c.until(WAIT, |f| f["type"] == "choice"));
    assert!(card["text"].as_str().unwrap().contains("my tools look broken"));
    let id = card["approval_id"].as_str().unwrap().to_string();
    c.send("m2", &format!("deny {id}"));
    c.until(WAIT, |f| is_reply(f, &format!("denied {id}")));
    let frames = c.until(WAIT, |f| is_reply(f, "echo: system: Your request_rebuild request"));
    assert!(
        frames.last().unwrap()["text"]
            .as_str()
            .unwrap()
            .contains("was denied by cli:local. Do not ask again")
    );
    c.send("m3", r#"tool request_rebuild {"reason": "please"}"#);
    let card = choice_of(&c.until(WAIT, |f| f["type"] == "choice"));
    let id = card["approval_id"].as_str().unwrap().to_string();
    c.send("m4", &format!("approve {id}"));
    let frames = c.until(WAIT, |f| is_reply(f, "echo: system: Your request_rebuild request"));
    assert!(
        frames.last().unwrap()["text"].as_str().unwrap().contains("no packages were approved"),
        "{frames:?}"
    );
    assert_eq!(approval_status(&data, &id), "executed");
}

/// System actions written straight into `outbound.db` (as a hostile container could): each bad
/// one is refused before any card with a line naming the field, and the service keeps serving.
#[test]
fn bad_system_actions_are_refused_before_any_card_naming_the_field() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let mut c = server.client();
    c.send("m1", "first");
    c.until(WAIT, |f| f["type"] == "done" && f["id"] == "m1");
    let session = session_dir(&data);
    let outbound = rusqlite::Connection::open(session.join("workspace/outbound.db")).unwrap();
    let ts = nanoclaw_protocol::time::now_ts();
    let many: Vec<String> = (0..21).map(|i| format!("pkg{i}")).collect();
    let big = "x".repeat(3000);
    let rows: Vec<(&str, String, &str)> = vec![
        ("bad-action", json!({"action": "format_disk"}).to_string(), "messages_out.content"),
        (
            "bad-env",
            json!({"action": "add_mcp_server", "name": "x", "command": "c", "env": {"TOKEN": 1}}).to_string(),
            "messages_out.content.env.TOKEN",
        ),
        (
            "bad-many",
            json!({"action": "install_packages", "apt": many}).to_string(),
            "content.apt: 21 packages",
        ),
        (
            "bad-version",
            json!({"action": "install_packages", "apt": ["jq=1.6"]}).to_string(),
            "content.apt[0]",
        ),
        (
            "bad-semicolon",
            json!({"action": "install_packages", "apt": ["vim; curl evil"]}).to_string(),
            "content.apt[0]",
        ),
        ("bad-npm", json!({"action": "install_packages", "npm": ["left-pad"]}).to_string(), "content.npm"),
        (
            "bad-slash",
            json!({"action": "add_mcp_server", "name": "a/b", "command": "c"}).to_string(),
            "content.name",
        ),
        (
            "bad-huge",
            json!({"action": "add_mcp_server", "name": "big", "command": "c", "args": vec![big; 30]})
                .to_string(),
            // Over 64 KiB: refused by the row's size cap or by the request's, both naming it.
            "content",
        ),
    ];
    for (i, (id, content, _)) in rows.iter().enumerate() {
        outbound
            .execute(
                "INSERT INTO messages_out (id, seq, timestamp, kind, content) VALUES (?1, ?2, ?3, 'system', ?4)",
                rusqlite::params![id, 200_001 + 2 * i as i64, ts, content],
            )
            .unwrap();
    }
    drop(outbound);
    c.send("poke", "second");
    c.until(WAIT, |f| f["type"] == "done" && f["id"] == "poke");
    let inbound = session.join("host/inbound.db");
    let answer = |id: &str| -> Option<String> {
        rusqlite::Connection::open(&inbound)
            .ok()?
            .query_row("SELECT content FROM messages_in WHERE id = ?1", [format!("note-{id}")], |r| r.get(0))
            .ok()
    };
    eventually(WAIT, "every bad action answered", || rows.iter().all(|(id, ..)| answer(id).is_some()));
    for (id, _, field) in &rows {
        let note = answer(id).unwrap();
        assert!(note.contains(field), "{id}: {note}");
        assert!(!note.contains("\"ok\":true"), "{id}: {note}");
    }
    let approvals: i64 =
        store_db(&data).query_row("SELECT count(*) FROM pending_approvals", [], |r| r.get(0)).unwrap();
    assert_eq!(approvals, 0, "no request was stored, no card sent");
    assert!(!c.drain(Duration::from_millis(300)).iter().any(|f| f["type"] == "choice"));
    c.send("m3", "still here?");
    let frames = c.until(WAIT, |f| f["type"] == "done" && f["id"] == "m3");
    assert_eq!(replies_to(&frames, "m3"), vec!["echo: still here?"]);
}

/// The owner's one-turn `nanoclaw chat`: the card of the agent's request shows with the turn, and
/// `approve <id>` is answered and ends (the host's answer finishes the message: no agent took it).
#[test]
fn one_turn_chats_show_the_card_and_take_the_decision() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let _server = Server::start(&data, &["--runtime", "process"], &[]);
    let out = nanoclaw(&data)
        .args(["chat", "-m", r#"tool add_mcp_server {"name":"files","command":"/usr/bin/mcp-files"}"#])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("tool add_mcp_server: approval requested (id "), "{stdout}");
    let id: String =
        store_db(&data).query_row("SELECT approval_id FROM pending_approvals", [], |r| r.get(0)).unwrap();
    // The card may come with the turn or just after it: a second chat shows it otherwise.
    let mut shown = stdout.contains(&format!("[{id}] Approval needed: add_mcp_server"));
    let out = nanoclaw(&data).args(["chat", "-m", &format!("approve {id}")]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    shown |= stdout.contains(&format!("[{id}] Approval needed: add_mcp_server"));
    assert!(shown, "the card was never shown: {stdout}");
    assert!(stdout.contains(&format!("approved {id}: add_mcp_server")), "{stdout}");
}

/// An agent's request nobody decides: the card says it expired and the agent is told (a note that
/// wakes it), with the instruction to tell the user.
#[test]
fn an_expired_request_edits_the_card_and_wakes_the_agent_with_a_note() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let config = config_file(dir.path(), "[approvals.ttl_seconds_by_action]\ncreate_agent = 1\n");
    let server = Server::start(&data, &["--runtime", "process", "--config", config.to_str().unwrap()], &[]);
    let mut c = server.client();
    c.send("m1", r#"tool create_agent {"name": "Helper"}"#);
    let card = choice_of(&c.until(WAIT, |f| f["type"] == "choice"));
    let id = card["approval_id"].as_str().unwrap().to_string();
    let frames = c.until(WAIT, |f| is_reply(f, "echo: system: Your create_agent request"));
    let note = frames.last().unwrap()["text"].as_str().unwrap();
    assert!(note.contains(&format!("{id} expired: nobody decided in time. Tell the user")), "{note}");
    assert_eq!(approval_status(&data, &id), "expired");
    let edited = |f: &Value| f["type"] == "edit" && f["text"].as_str().is_some_and(|t| t.contains("Expired"));
    if !frames.iter().any(edited) {
        c.until(WAIT, edited);
    }
    c.send("m2", &format!("approve {id}"));
    c.until(WAIT, |f| is_reply(f, &format!("approval {id} expired")));
}
