//! Every built-in tool driven by an echo `tool` line, offline, through the whole runner.

mod support;

use serde_json::json;
use support::{Session, texts};

fn standard() -> serde_json::Value {
    Session::settings(json!({"image_tier": "standard"}))
}

#[tokio::test]
async fn every_tool_by_echo() {
    let mut s = Session::new(Some(standard()));
    s.start();
    let lines = [
        r#"tool write_file {"path":"notes/a.txt","content":"hello world\n"}"#,
        r#"tool read_file {"path":"notes/a.txt"}"#,
        r#"tool edit_file {"path":"notes/a.txt","old_text":"world","new_text":"there"}"#,
        r#"tool list_files {"path":"notes"}"#,
        r#"tool search_files {"pattern":"hel+o \\w+"}"#,
        r#"tool run_command {"command":"echo out; sleep 0.2; echo err >&2; sleep 0.2; cat notes/a.txt; pwd"}"#,
        r#"tool send_message {"text":"progress note"}"#,
    ];
    let id = format!("m{}:main", 2);
    let r = s.turn(&lines.join("\n"), 30).await;
    let t = texts(&r);
    assert_eq!(t.len(), 8, "{t:#?}");
    // send_message is committed mid-turn, before the final answer, and answers the batch.
    assert_eq!(t[0], "progress note");
    assert_eq!(r[0].in_reply_to.as_deref(), Some(id.as_str()));
    assert_eq!(t[1], "tool write_file: wrote notes/a.txt (12 bytes)");
    assert_eq!(t[2], "tool read_file: hello world");
    assert_eq!(t[3], "tool edit_file: edited notes/a.txt");
    assert_eq!(t[4], "tool list_files: a.txt (12 bytes)");
    assert_eq!(t[5], "tool search_files: notes/a.txt:1: hello there");
    let ws = s.workspace.canonicalize().unwrap();
    assert_eq!(
        t[6],
        format!("tool run_command: exit code 0\nout\nerr\nhello there\n{}", ws.display()).trim_end()
    );
    assert_eq!(t[7], "tool send_message: sent to cli");
    assert_eq!(std::fs::read_to_string(s.workspace.join("notes/a.txt")).unwrap(), "hello there\n");
    // Every final reply answers the message too.
    assert!(r.iter().all(|x| x.in_reply_to.as_deref() == Some(id.as_str())), "{r:?}");
}

/// `web_fetch` by echo through a fake proxy: the request goes to `/_egress` as the protocol's
/// JSON, the fetched status and body come back to the model; the host's refusal comes back with
/// its reason (naming the setting); a bad URL is refused naming the field, and nothing is sent.
#[tokio::test]
async fn web_fetch_goes_through_the_proxy() {
    use fake_http::{FakeServer, Reply};
    use nanoclaw_protocol::proxy::{EgressResponse, HEADER_PROXY_ERROR, ProxyError, ProxyErrorKind};
    let mut s = Session::new(None);
    let proxy = FakeServer::unix(&s.session.join("proxy.sock")).await.unwrap();
    let fetched = EgressResponse {
        status: 200,
        content_type: Some("text/plain".into()),
        body: "hi there".into(),
        truncated: false,
    };
    proxy.push(Reply::json(200, &serde_json::to_string(&fetched).unwrap()).header(HEADER_PROXY_ERROR, "1"));
    let refusal = ProxyError::new(
        ProxyErrorKind::EgressRefused,
        "web_fetch to example.org refused: it is not in container_configs.egress_allow",
    );
    proxy.push(Reply::json(403, &serde_json::to_string(&refusal).unwrap()).header(HEADER_PROXY_ERROR, "1"));
    s.start();
    let lines = [
        r#"tool web_fetch {"url":"http://127.0.0.1:9999/a","method":"POST","body":"{\"q\":1}"}"#,
        r#"tool web_fetch {"url":"https://example.org/"}"#,
        r#"tool web_fetch {"url":"file:///etc/passwd"}"#,
    ];
    let r = s.turn(&lines.join("\n"), 30).await;
    let t = texts(&r);
    assert_eq!(
        t,
        vec![
            "tool web_fetch: status 200 (text/plain):\nhi there",
            "tool web_fetch: error: not fetched: web_fetch to example.org refused: it is not in container_configs.egress_allow",
            "tool web_fetch: error: url: must start with http:// or https://",
        ]
    );
    let requests = proxy.requests();
    assert_eq!(requests.len(), 2, "the bad URL was not sent");
    assert_eq!((requests[0].method.as_str(), requests[0].path.as_str()), ("POST", "/_egress"));
    assert_eq!(
        requests[0].json(),
        json!({"url": "http://127.0.0.1:9999/a", "method": "POST", "body": "{\"q\":1}"})
    );
    assert_eq!(requests[1].json(), json!({"url": "https://example.org/", "method": "GET", "body": null}));
}

#[tokio::test]
async fn edit_file_needs_exactly_one_match() {
    let mut s = Session::new(None);
    std::fs::write(s.workspace.join("f.txt"), "a a b").unwrap();
    s.start();
    let r = s
        .turn(
            "tool edit_file {\"path\":\"f.txt\",\"old_text\":\"a\",\"new_text\":\"c\"}\n\
             tool edit_file {\"path\":\"f.txt\",\"old_text\":\"z\",\"new_text\":\"c\"}",
            20,
        )
        .await;
    let t = texts(&r);
    assert_eq!(
        t,
        vec![
            "tool edit_file: error: old_text: found 2 times in f.txt; include more context so it matches once",
            "tool edit_file: error: old_text: not found in f.txt",
        ]
    );
    assert_eq!(std::fs::read_to_string(s.workspace.join("f.txt")).unwrap(), "a a b");
}

#[tokio::test]
async fn workspace_escapes_are_refused() {
    let mut s = Session::new(Some(standard()));
    let outside = s.tmp.path().join("outside.txt");
    std::fs::write(&outside, "secret").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s.workspace.join("pw")).unwrap();
    std::os::unix::fs::symlink(&outside, s.workspace.join("out")).unwrap();
    std::os::unix::fs::symlink("/etc", s.workspace.join("etc")).unwrap();
    s.start();
    let cases = [
        (r#"tool read_file {"path":"pw"}"#, "path: pw is a symlink"),
        (r#"tool read_file {"path":"../outside.txt"}"#, "path: \"..\" is not allowed"),
        (r#"tool read_file {"path":"/etc/passwd"}"#, "path: /etc/passwd is outside the workspace"),
        (r#"tool read_file {"path":"etc/passwd"}"#, "path: etc is a symlink"),
        (r#"tool write_file {"path":"out","content":"pwned"}"#, "path: out is a symlink"),
        (r#"tool edit_file {"path":"out","old_text":"secret","new_text":"x"}"#, "path: out is a symlink"),
        (r#"tool list_files {"path":".."}"#, "path: \"..\" is not allowed"),
        (r#"tool search_files {"pattern":"root","path":"etc"}"#, "path: etc is a symlink"),
        (r#"tool run_command {"command":"true","cwd":"../"}"#, "cwd: \"..\" is not allowed"),
        (r#"tool write_file {"path":"outbound.db","content":"x"}"#, "belongs to the runner"),
    ];
    for (line, expected) in cases {
        let r = texts(&s.turn(line, 20).await);
        assert_eq!(r.len(), 1, "{line}: {r:?}");
        assert!(r[0].contains(": error: ") && r[0].contains(expected), "{line}: {r:?}");
    }
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret");
    // A search of the whole workspace does not follow the links either.
    let r = texts(&s.turn(r#"tool search_files {"pattern":"secret|root"}"#, 20).await);
    assert_eq!(r, vec!["tool search_files: no match for \"secret|root\""]);
}

#[tokio::test]
async fn run_command_is_refused_on_the_minimal_tier() {
    let mut s = Session::new(None);
    s.start();
    let r = texts(&s.turn(r#"tool run_command {"command":"touch x"}"#, 20).await);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].contains("error: run_command needs a shell") && r[0].contains("image_tier"), "{r:?}");
    assert!(!s.workspace.join("x").exists());
}

#[tokio::test]
async fn run_command_timeout_kills_the_process_group() {
    let mut s = Session::new(Some(standard()));
    s.start();
    let started = std::time::Instant::now();
    let r = texts(
        &s.turn(
            r#"tool run_command {"command":"sleep 600 & echo $! > child.pid; echo started; sleep 600","timeout_s":1}"#,
            20,
        )
        .await,
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].starts_with("tool run_command: error: killed after 1 s (timeout_s = 1)\nstarted"), "{r:?}");
    // The background child was in the group: it is gone (or a zombie waiting for its reaper).
    let pid = std::fs::read_to_string(s.workspace.join("child.pid")).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
    assert!(stat.as_deref().map_or(true, |st| st.contains(") Z ")), "sleep still runs: {stat:?}");
}

#[tokio::test]
async fn run_command_output_is_capped_with_the_cut_marked() {
    let mut s = Session::new(Some(standard()));
    s.start();
    let r = texts(
        &s.turn(
            r#"tool run_command {"command":"head -c 200000 /dev/zero | tr '\\0' a; echo; echo END"}"#,
            20,
        )
        .await,
    );
    assert_eq!(r.len(), 1);
    assert!(r[0].len() < 66 * 1024, "{}", r[0].len());
    assert!(r[0].contains("[… 134469 bytes cut …]"), "{}", &r[0][..200]);
    assert!(r[0].ends_with("END"), "{}", &r[0][r[0].len() - 50..]);
}

#[tokio::test]
async fn a_running_tool_is_recorded_with_its_declared_timeout() {
    let mut s = Session::new(Some(standard()));
    s.start();
    let id = s.send(r#"tool run_command {"command":"sleep 2","timeout_s":30}"#);
    let db = s.workspace.join("outbound.db");
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let Ok(c) = nanoclaw_protocol::schema::open_outbound_reader(&db)
                && let Ok(row) = c.query_row(
                    "SELECT current_tool, tool_declared_timeout_ms FROM container_state WHERE id = 1",
                    [],
                    |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<i64>>(1)?)),
                )
                && row.0.is_some()
            {
                return row;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("tool state recorded");
    assert_eq!(seen, (Some("run_command".to_string()), Some(40_000)));
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while s.ack(&id).is_none_or(|a| a == "processing") {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let c = nanoclaw_protocol::schema::open_outbound_reader(&db).unwrap();
    let tool: Option<String> =
        c.query_row("SELECT current_tool FROM container_state WHERE id = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(tool, None, "tool state cleared after the call");
}

/// The test answers system rows as the host does: `note-<row id>` system rows in `inbound.db`.
async fn answer_system_rows(session: std::path::PathBuf, workspace: std::path::PathBuf) {
    let mut answered = std::collections::HashSet::new();
    loop {
        let rows: Vec<(String, String)> =
            nanoclaw_protocol::schema::open_outbound_reader(&workspace.join("outbound.db"))
                .ok()
                .map(|c| {
                    let mut st =
                        c.prepare("SELECT id, content FROM messages_out WHERE kind = 'system'").unwrap();
                    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
                })
                .unwrap_or_default();
        for (id, content) in rows {
            if !answered.insert(id.clone()) {
                continue;
            }
            let action: serde_json::Value = serde_json::from_str(&content).unwrap();
            let name = action["action"].as_str().unwrap().to_string();
            let (ok, message) = if name == "request_rebuild" {
                (true, format!("rebuilt ({})", action["reason"].as_str().unwrap_or("-")))
            } else {
                (false, format!("system action {name} is not supported by this host yet"))
            };
            let notice = json!({"type": "action_result", "message_out_id": id, "action": name, "ok": ok, "message": message});
            nanoclaw_protocol::schema::open_inbound_writer(&session.join("inbound.db"))
                .unwrap()
                .execute(
                    "INSERT INTO messages_in (id, seq, kind, timestamp, trigger, content) VALUES (?1, (SELECT coalesce(max(seq), 0) + 2 FROM messages_in), 'system', ?2, 0, ?3)",
                    rusqlite::params![format!("note-{id}"), nanoclaw_protocol::time::now_ts(), notice.to_string()],
                )
                .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn system_tools_write_the_row_and_return_the_hosts_answer() {
    let mut s = Session::new(None);
    s.start();
    let host = tokio::spawn(answer_system_rows(s.session.clone(), s.workspace.clone()));
    let r = texts(
        &s.turn(
            "tool schedule_task {\"prompt\":\"water the plants\",\"process_after\":\"2026-07-01T09:00:00Z\"}\n\
             tool request_rebuild {\"reason\":\"new deps\"}\n\
             tool cancel_task {\"task_id\":\"t1\"}\n\
             tool install_packages {\"apt\":[\"jq\"]}\n\
             tool add_mcp_server {\"name\":\"x\",\"command\":\"/bin/x\"}\n\
             tool run_host_command {\"name\":\"backup\"}\n\
             tool create_agent {\"name\":\"Bob\"}\n\
             tool list_tasks {}\n\
             tool update_task {\"task_id\":\"task-1\",\"recurrence\":\"0 8 * * *\"}\n\
             tool pause_task {\"task_id\":\"task-1\"}\n\
             tool resume_task {\"task_id\":\"task-1\"}\n\
             tool ask_user_question {\"title\":\"Lunch\",\"question\":\"Which?\",\"options\":[\"pizza\",\"salad\"]}",
            30,
        )
        .await,
    );
    host.abort();
    let unsupported =
        |name: &str| format!("tool {name}: error: system action {name} is not supported by this host yet");
    assert_eq!(
        r,
        vec![
            unsupported("schedule_task"),
            "tool request_rebuild: rebuilt (new deps)".into(),
            unsupported("cancel_task"),
            unsupported("install_packages"),
            unsupported("add_mcp_server"),
            unsupported("run_host_command"),
            unsupported("create_agent"),
            unsupported("list_tasks"),
            unsupported("update_task"),
            unsupported("pause_task"),
            unsupported("resume_task"),
            unsupported("ask_user_question"),
        ]
    );
    // Each new action reached the host as its typed row (the question with its default timeout).
    let c = nanoclaw_protocol::schema::open_outbound_reader(&s.workspace.join("outbound.db")).unwrap();
    let mut st = c.prepare("SELECT content FROM messages_out WHERE kind = 'system' ORDER BY seq").unwrap();
    let actions: Vec<nanoclaw_protocol::content::SystemAction> = st
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|c| serde_json::from_str(&c.unwrap()).unwrap())
        .collect();
    use nanoclaw_protocol::content::SystemAction as A;
    assert_eq!(actions.len(), 12, "{actions:?}");
    assert_eq!(actions[7], A::ListTasks {});
    assert!(
        matches!(&actions[8], A::UpdateTask { task_id, recurrence: Some(r), prompt: None, .. } if task_id == "task-1" && r == "0 8 * * *"),
        "{:?}",
        actions[8]
    );
    assert_eq!(actions[9], A::PauseTask { task_id: "task-1".into() });
    assert_eq!(actions[10], A::ResumeTask { task_id: "task-1".into() });
    assert_eq!(
        actions[11],
        A::AskUserQuestion {
            title: "Lunch".into(),
            question: "Which?".into(),
            options: vec!["pizza".into(), "salad".into()],
            timeout_s: 300
        }
    );
    // The row is the typed action the host parses, answering the message.
    let c = nanoclaw_protocol::schema::open_outbound_reader(&s.workspace.join("outbound.db")).unwrap();
    let (content, in_reply_to): (String, Option<String>) = c
        .query_row(
            "SELECT content, in_reply_to FROM messages_out WHERE kind = 'system' ORDER BY seq LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let action: nanoclaw_protocol::content::SystemAction = serde_json::from_str(&content).unwrap();
    assert!(
        matches!(&action, nanoclaw_protocol::content::SystemAction::ScheduleTask { prompt, task_id, .. }
            if prompt == "water the plants" && task_id.starts_with("task-")),
        "{action:?}"
    );
    assert_eq!(in_reply_to.as_deref(), Some("m2:main"));
}

#[tokio::test]
async fn send_file_copies_into_its_own_outbox_folder() {
    let mut s = Session::new(None);
    std::fs::write(s.workspace.join("report.txt"), "data").unwrap();
    s.start();
    let r = texts(
        &s.turn(r#"tool send_file {"path":"report.txt","text":"here it is","filename":"r.txt"}"#, 20).await,
    );
    assert_eq!(r, vec!["here it is", "tool send_file: sent r.txt (4 bytes) to cli"]);
    let c = nanoclaw_protocol::schema::open_outbound_reader(&s.workspace.join("outbound.db")).unwrap();
    let (id, content, in_reply_to): (String, String, Option<String>) = c
        .query_row("SELECT id, content, in_reply_to FROM messages_out ORDER BY seq LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(in_reply_to.as_deref(), Some("m2:main"));
    let content: nanoclaw_protocol::content::OutboundContent = serde_json::from_str(&content).unwrap();
    let nanoclaw_protocol::content::OutboundContent::File { text, files } = content else {
        panic!("{content:?}")
    };
    assert_eq!(text.as_deref(), Some("here it is"));
    assert_eq!(files.len(), 1);
    assert_eq!((files[0].name.as_str(), files[0].path.clone()), ("r.txt", format!("outbox/{id}/r.txt")));
    assert_eq!(std::fs::read_to_string(s.workspace.join(&files[0].path)).unwrap(), "data");
}

#[tokio::test]
async fn send_file_refuses_escapes() {
    let mut s = Session::new(None);
    std::os::unix::fs::symlink("/etc/passwd", s.workspace.join("pw")).unwrap();
    std::fs::write(s.workspace.join("ok.txt"), "x").unwrap();
    s.start();
    let cases = [
        (r#"tool send_file {"path":"pw"}"#, "path: pw is a symlink"),
        (r#"tool send_file {"path":"../x"}"#, "path: \"..\" is not allowed"),
        (r#"tool send_file {"path":"/etc/passwd"}"#, "path: /etc/passwd is outside the workspace"),
        (
            r#"tool send_file {"path":"ok.txt","filename":"../evil"}"#,
            "filename: \"../evil\" is not a plain file name",
        ),
        (r#"tool send_file {"path":"."}"#, "path: . is not a regular file"),
    ];
    for (line, expected) in cases {
        let r = texts(&s.turn(line, 20).await);
        assert_eq!(r.len(), 1, "{line}: {r:?}");
        assert!(r[0].contains(": error: ") && r[0].contains(expected), "{line}: {r:?}");
    }
    assert!(!s.workspace.join("outbox").exists(), "nothing was copied");
}

#[tokio::test]
async fn edit_message_add_reaction_and_send_card_write_typed_rows() {
    use nanoclaw_protocol::content::{CardButton, OutboundContent};
    let mut s = Session::new(None);
    s.start();
    assert_eq!(texts(&s.turn("hello", 20).await), vec!["echo: hello"]);
    let c = nanoclaw_protocol::schema::open_outbound_reader(&s.workspace.join("outbound.db")).unwrap();
    let (first_id, first_seq): (String, i64) = c
        .query_row("SELECT id, seq FROM messages_out ORDER BY seq LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let lines = [
        format!(r#"tool edit_message {{"seq":{first_seq},"text":"fixed"}}"#),
        r#"tool add_reaction {"seq":2,"emoji":"👍"}"#.to_string(),
        r#"tool send_card {"title":"T","text":"body","buttons":[{"label":"docs","url":"https://example.org"}]}"#
            .to_string(),
        r#"tool edit_message {"seq":2,"text":"x"}"#.to_string(),
        r#"tool add_reaction {"seq":98,"emoji":"x"}"#.to_string(),
        r#"tool send_card {"title":"T","text":"b","buttons":[{"label":"x","url":"javascript:alert(1)"}]}"#.to_string(),
    ];
    let r = texts(&s.turn(&lines.join("\n"), 20).await);
    // The three typed rows first (the helper shows their `text`, if any), then one answer per call.
    let expected: Vec<String> = vec![
        "fixed".into(),
        "".into(),
        "body".into(),
        format!("tool edit_message: edited message {first_seq}"),
        "tool add_reaction: reacted 👍 to message 2".into(),
        "tool send_card: card sent to cli".into(),
        "tool edit_message: error: seq: 2 is a message you received; only your own can be edited".into(),
        "tool add_reaction: error: seq: no message with id 98 in this conversation".into(),
        "tool send_card: error: buttons[0].url: only http(s) URLs of at most 2048 bytes".into(),
    ];
    assert_eq!(r, expected);
    let mut st = c.prepare("SELECT content FROM messages_out WHERE seq > ?1 ORDER BY seq LIMIT 3").unwrap();
    let rows: Vec<OutboundContent> = st
        .query_map([first_seq], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|c| serde_json::from_str(&c.unwrap()).unwrap())
        .collect();
    assert_eq!(
        rows,
        vec![
            OutboundContent::Edit { target: first_id, text: "fixed".into() },
            OutboundContent::Reaction { target: "m2:main".into(), emoji: "👍".into() },
            OutboundContent::Card {
                title: "T".into(),
                text: "body".into(),
                buttons: vec![CardButton { label: "docs".into(), url: "https://example.org".into() }]
            },
        ]
    );
}

/// Bad arguments of the new system tools come back to the model naming the field, and no row
/// is written for them.
#[tokio::test]
async fn task_and_question_tools_name_the_bad_field() {
    let mut s = Session::new(None);
    s.start();
    let r = texts(
        &s.turn(
            "tool ask_user_question {\"title\":\"T\",\"question\":\"Q\",\"options\":[\"only\"]}\n\
             tool ask_user_question {\"title\":\"T\",\"question\":\"Q\",\"options\":[\"a\",\"b\"],\"timeout_s\":0}\n\
             tool ask_user_question {\"title\":\"T\",\"question\":\"Q\",\"options\":[\"a\",\"b\"],\"colour\":\"red\"}\n\
             tool update_task {\"task_id\":\"task-1\"}\n\
             tool pause_task {\"task\":\"task-1\"}\n\
             tool list_tasks {\"all\":true}",
            30,
        )
        .await,
    );
    assert_eq!(r.len(), 6, "{r:#?}");
    assert!(r[0].starts_with("tool ask_user_question: error: invalid arguments: options:"), "{}", r[0]);
    assert!(r[1].starts_with("tool ask_user_question: error: invalid arguments: timeout_s:"), "{}", r[1]);
    assert!(r[2].contains("unknown field `colour`"), "{}", r[2]);
    assert!(r[3].contains("invalid arguments: give at least one of prompt"), "{}", r[3]);
    assert!(r[4].contains("unknown field `task`"), "{}", r[4]);
    assert!(r[5].contains("unknown field `all`"), "{}", r[5]);
    let c = nanoclaw_protocol::schema::open_outbound_reader(&s.workspace.join("outbound.db")).unwrap();
    let rows: i64 =
        c.query_row("SELECT count(*) FROM messages_out WHERE kind = 'system'", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0);
}

/// A system tool sees the host's answer on the host's wake byte: with its fallback read set to
/// an hour and a question that may wait an hour, the only thing that can end its wait before
/// the test gives up is the `INPUT` byte a fake host sends after writing the answer (no timing is
/// asserted: the turn finishing at all is the evidence).
#[tokio::test]
async fn system_tool_wakes_on_the_hosts_input_byte() {
    use nanoclaw_agent::tools::{ToolRegistry, system};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = Session::new(None);
    let listener = tokio::net::UnixListener::bind(s.session.join("wake.sock")).unwrap();
    let settings = nanoclaw_protocol::settings::RunnerSettings::echo_default("Andy");
    let mut tools = ToolRegistry::builtin(&settings.tools, &s.session.join("proxy.sock"));
    for tool in system::all() {
        tools.register(Arc::new(tool.with_answer_fallback(std::time::Duration::from_secs(3600))));
    }
    let model =
        nanoclaw_agent::model::for_settings(&settings.provider, &s.session.join("proxy.sock")).unwrap();
    let agent = nanoclaw_agent::agent::Agent::new(model, settings, tools, s.workspace.clone());
    s.start_with(Some(Box::new(agent)));
    let (mut wake, _) = listener.accept().await.unwrap();
    let mut hello = [0u8; 3];
    wake.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"h1\n");
    let id = s.send(
        "tool ask_user_question {\"title\":\"Lunch\",\"question\":\"Which?\",\"options\":[\"pizza\",\"salad\"],\"timeout_s\":3600}",
    );
    // The runner waits for a byte while its link is up (its own fallback is 30 s): tell it.
    wake.write_all(b"i").await.unwrap();
    let (session, workspace) = (s.session.clone(), s.workspace.clone());
    let host = async move {
        // The fake host: answer the system row once it is there, then send one INPUT byte.
        loop {
            let row: Option<String> =
                nanoclaw_protocol::schema::open_outbound_reader(&workspace.join("outbound.db"))
                    .ok()
                    .and_then(|c| {
                        c.query_row("SELECT id FROM messages_out WHERE kind = 'system'", [], |r| r.get(0))
                            .ok()
                    });
            if let Some(row) = row {
                let notice = json!({"type": "action_result", "message_out_id": row, "action": "ask_user_question",
                    "ok": true, "message": "pizza"});
                nanoclaw_protocol::schema::open_inbound_writer(&session.join("inbound.db"))
                    .unwrap()
                    .execute(
                        "INSERT INTO messages_in (id, seq, kind, timestamp, trigger, content) VALUES (?1, 100, 'system', ?2, 0, ?3)",
                        rusqlite::params![format!("note-{row}"), nanoclaw_protocol::time::now_ts(), notice.to_string()],
                    )
                    .unwrap();
                wake.write_all(b"i").await.unwrap();
                return wake;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let _wake =
        tokio::time::timeout(std::time::Duration::from_secs(30), host).await.expect("no system row written");
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while s.ack(&id).is_none_or(|a| a == "processing") {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the tool did not see the answer on the wake byte");
    assert_eq!(texts(&s.replies()), vec!["tool ask_user_question: pizza"]);
}
