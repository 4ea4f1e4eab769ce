//! System actions through the real host (process runtime): the task tools reach the host as
//! typed rows and get its answer ("not supported by this host yet" until the scheduling issue
//! carries them out), `create_agent` is filed for an approval, and a question's answer reaches
//! the waiting tool on the host's wake byte.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// The runner's tools wait an hour between fallback reads (`NANOCLAW_ANSWER_FALLBACK_MS`, which
/// the process runtime's runner inherits), and the question may wait an hour for its answer: the
/// tool can only return before the test gives up because the host sent a wake byte after writing
/// the answer. No timing is asserted.
#[test]
fn system_actions_get_the_hosts_answer_on_the_wake_byte() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server =
        Server::start(&data, &["--runtime", "process"], &[("NANOCLAW_ANSWER_FALLBACK_MS", "3600000")]);
    let chat = ChatLog::connect(&data.join("cli.sock"));
    let lines = [
        r#"tool list_tasks {}"#,
        r#"tool update_task {"task_id":"task-1","prompt":"water the plants"}"#,
        r#"tool pause_task {"task_id":"task-1"}"#,
        r#"tool resume_task {"task_id":"task-1"}"#,
        r#"tool create_agent {"name":"Bob"}"#,
        r#"tool ask_user_question {"title":"Lunch","question":"Which?","options":["pizza","salad"],"timeout_s":3600}"#,
    ];
    chat.send("m-0", &lines.join("\n"));
    let wait = |what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        chat.wait(Duration::from_secs(120), pred)
            .unwrap_or_else(|| panic!("no {what}; frames: {:?}; log: {}", chat.frames(), server.log()))
    };
    // The question blocks the turn until it is answered: its card comes first.
    let card = wait("question card", &|f| f["type"] == "choice" && f["title"] == "Lunch");
    chat.send_frame(&json!({"type": "decision", "callback": card["options"][0]["callback"]}));
    for n in ["list_tasks", "update_task", "pause_task", "resume_task"] {
        let line = format!("tool {n}: error: system action {n} is not supported by this host yet");
        wait(&line, &|f| f["type"] == "reply" && f["text"] == line.as_str());
    }
    wait("create_agent's answer", &|f| {
        f["type"] == "reply"
            && f["text"].as_str().is_some_and(|t| t.starts_with("tool create_agent: approval requested (id "))
    });
    wait("the answer", &|f| f["type"] == "reply" && f["text"] == "tool ask_user_question: pizza");
    assert!(server.stop().success());
}
