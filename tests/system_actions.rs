//! System actions through the real host (process runtime): the task and question tools reach the
//! host as typed rows and get its answer ("not supported by this host yet" until the issues that
//! carry them out land), and the answer reaches the waiting tool on the host's wake byte.

mod common;

use common::*;
use std::time::Duration;

/// The runner's tools wait an hour between fallback reads (`NANOCLAW_ANSWER_FALLBACK_MS`, which
/// the process runtime's runner inherits), and the question may wait an hour for its answer: the
/// tool can only return before the test gives up because the host sent a wake byte after writing
/// the answer. No timing is asserted.
#[test]
fn task_and_question_actions_get_the_hosts_answer_on_the_wake_byte() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server =
        Server::start(&data, &["--runtime", "process"], &[("NANOCLAW_ANSWER_FALLBACK_MS", "3600000")]);
    let chat = ChatLog::connect(&data.join("cli.sock"));
    let lines = [
        r#"tool ask_user_question {"title":"Lunch","question":"Which?","options":["pizza","salad"],"timeout_s":3600}"#,
        r#"tool list_tasks {}"#,
        r#"tool update_task {"task_id":"task-1","prompt":"water the plants"}"#,
        r#"tool pause_task {"task_id":"task-1"}"#,
        r#"tool resume_task {"task_id":"task-1"}"#,
        r#"tool create_agent {"name":"Bob"}"#,
    ];
    chat.send("m-0", &lines.join("\n"));
    let expected: Vec<String> =
        ["ask_user_question", "list_tasks", "update_task", "pause_task", "resume_task"]
            .iter()
            .map(|n| format!("tool {n}: error: system action {n} is not supported by this host yet"))
            .chain(std::iter::once(
                "tool create_agent: error: create_agent needs an admin's approval, which this host cannot ask for yet: \
                 refused, nothing was created"
                    .to_string(),
            ))
            .collect();
    for line in &expected {
        chat.wait(Duration::from_secs(120), |f| f["type"] == "reply" && f["text"] == line.as_str())
            .unwrap_or_else(|| {
                panic!("no reply {line:?}; frames: {:?}; log: {}", chat.frames(), server.log())
            });
    }
    assert!(server.stop().success());
}
