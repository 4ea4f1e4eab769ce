//! The tool loop's guards, driven by the echo model through the whole runner.

mod support;

use serde_json::json;
use support::{Session, texts};

#[tokio::test]
async fn repeat_guard_stops_the_fifth_identical_call() {
    let mut s = Session::new(None);
    s.start();
    // Key order does not make a call different.
    let a = r#"tool send_message {"text":"hi","to":"cli"}"#;
    let b = r#"tool send_message {"to":"cli","text":"hi"}"#;
    let r = texts(&s.turn(&[a, b, a, b, a, "tool list_files {}"].join("\n"), 20).await);
    assert_eq!(
        r,
        vec![
            "hi",
            "hi",
            "hi",
            "hi",
            "Stopped: send_message was called 5 times with the same arguments in this turn."
        ],
        "{r:#?}"
    );
    // The next turn works normally.
    assert_eq!(texts(&s.turn("after", 20).await), vec!["echo: after"]);
}

#[tokio::test]
async fn bad_arguments_come_back_naming_the_field() {
    let mut s = Session::new(Some(Session::settings(json!({"image_tier": "standard"}))));
    s.start();
    let r = texts(
        &s.turn(
            "tool read_file {\"pth\":\"x\"}\n\
             tool run_command {\"command\":\"true\",\"timeout_s\":\"soon\"}\n\
             tool run_command {\"command\":\"true\",\"timeout_s\":7200}\n\
             tool read_file not json\n\
             tool no_such_tool {}\n\
             tool send_message {\"text\":\"x\",\"to\":\"nobody\"}",
            20,
        )
        .await,
    );
    assert_eq!(r.len(), 6, "{r:#?}");
    assert!(
        r[0].starts_with("tool read_file: error: invalid arguments: pth: unknown field `pth`"),
        "{}",
        r[0]
    );
    assert!(
        r[1].starts_with("tool run_command: error: invalid arguments: timeout_s: invalid type"),
        "{}",
        r[1]
    );
    assert_eq!(r[2], "tool run_command: error: timeout_s: 7200 is not in 1..=3600");
    assert!(r[3].starts_with("tool read_file: error: invalid arguments: expected a JSON object"), "{}", r[3]);
    assert!(
        r[4].starts_with(
            "tool no_such_tool: error: unknown tool \"no_such_tool\" (available: add_mcp_server, add_reaction, ask_user_question, cancel_task,"
        ),
        "{}",
        r[4]
    );
    assert_eq!(r[5], "tool send_message: error: to: unknown destination \"nobody\" (known: cli)");
}

#[tokio::test]
async fn max_tool_rounds_bounds_the_model_calls() {
    let mut s = Session::new(Some(Session::settings(json!({"max_tool_rounds": 3}))));
    s.start();
    let r = texts(&s.turn("!rounds 10\ntool list_files {}", 20).await);
    assert_eq!(r, vec!["Stopped: this turn reached max_tool_rounds (3) model calls."]);
    // Three model calls: three assistant messages in the transcript, each answered.
    let path = s.state("continuation:echo").unwrap();
    let transcript = std::fs::read_to_string(s.workspace.join(path)).unwrap();
    let roles: Vec<String> = transcript
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["role"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(roles, vec!["user", "assistant", "tool", "assistant", "tool", "assistant", "tool"]);
}

#[tokio::test]
async fn a_text_sent_by_a_tool_and_repeated_in_the_answer_is_sent_once() {
    let mut s = Session::new(None);
    s.start();
    // Echo's final answer is `tool send_message: sent to cli`: the tool sends that same text
    // first, so the answer repeats it to the same chat.
    let r = texts(&s.turn(r#"tool send_message {"text":"  tool send_message: sent to cli "}"#, 20).await);
    assert_eq!(r, vec!["tool send_message: sent to cli"]);
}

#[tokio::test]
async fn an_unaddressed_answer_is_nudged_once_then_sent_to_the_own_chat() {
    let mut s = Session::new(None);
    s.start();
    let r = s.turn("!raw just a plain answer", 20).await;
    assert_eq!(texts(&r), vec!["just a plain answer"]);
    let path = s.state("continuation:echo").unwrap();
    let transcript = std::fs::read_to_string(s.workspace.join(path)).unwrap();
    assert_eq!(transcript.matches("had no <message to").count(), 1, "{transcript}");
}

/// Broken `<message` tags are never delivered as tags: the answer counts as unaddressed, gets
/// the nudge once, and then goes to the own chat as text.
#[tokio::test]
async fn a_broken_message_tag_gets_the_nudge() {
    let mut s = Session::new(None);
    s.start();
    let r = s.turn(r#"!raw <message to="cli">never closed"#, 20).await;
    let t = texts(&r);
    let path = s.state("continuation:echo").unwrap();
    let transcript = std::fs::read_to_string(s.workspace.join(path)).unwrap();
    assert_eq!(transcript.matches("had no <message to").count(), 1, "{transcript}");
    assert_eq!(t.len(), 1, "{t:?}");
    assert!(!t[0].contains("<message"), "no tag reaches the chat: {t:?}");
    assert!(t[0].contains("never closed"), "{t:?}");
}

#[tokio::test]
async fn conversation_survives_a_restart_and_clear_resets_it() {
    let mut s = Session::new(None);
    s.start();
    assert_eq!(texts(&s.turn("one", 20).await), vec!["echo: one"]);
    assert_eq!(texts(&s.turn("!turns", 20).await), vec!["echo: turns=2"]);
    s.start(); // a new container
    assert_eq!(texts(&s.turn("!turns", 20).await), vec!["echo: turns=3"]);
    let before = s.state("continuation:echo").unwrap();
    assert_eq!(texts(&s.turn("/clear", 20).await), vec!["Session cleared."]);
    assert_ne!(s.state("continuation:echo").unwrap(), before);
    assert_eq!(texts(&s.turn("!turns", 20).await), vec!["echo: turns=1"]);
}

#[tokio::test]
async fn a_corrupt_transcript_is_reset_once_with_a_note() {
    let mut s = Session::new(None);
    s.start();
    assert_eq!(texts(&s.turn("one", 20).await), vec!["echo: one"]);
    s.stop();
    let path = s.state("continuation:echo").unwrap();
    std::fs::write(s.workspace.join(&path), "{not json\n").unwrap();
    s.start();
    assert_eq!(
        texts(&s.turn("!turns", 20).await),
        vec!["echo: turns=1", "Conversation memory was unreadable and was reset."]
    );
    assert_ne!(s.state("continuation:echo").unwrap(), path);
    s.start();
    assert_eq!(texts(&s.turn("!turns", 20).await), vec!["echo: turns=2"]);
}

/// A model that fails with a context-length error whenever it gets more than 3 messages;
/// summary requests are answered `SUMMARY` (or fail, when `summaries` is false).
struct SmallContext {
    summaries: bool,
}

#[async_trait::async_trait]
impl nanoclaw_agent::model::Model for SmallContext {
    fn name(&self) -> &str {
        "small"
    }

    async fn complete(
        &mut self,
        request: &nanoclaw_agent::model::ModelRequest<'_>,
        _events: &mut dyn nanoclaw_agent::provider::EventSink,
    ) -> Result<nanoclaw_agent::model::ModelReply, nanoclaw_agent::model::ModelError> {
        use nanoclaw_agent::model::{Block, ModelError, ModelReply, StopReason, Usage};
        let text = if request.system == nanoclaw_agent::agent::compact::SUMMARY_SYSTEM {
            if !self.summaries {
                return Err(ModelError::Retryable { message: "overloaded".into() });
            }
            "SUMMARY".to_string()
        } else if request.messages.len() > 3 {
            return Err(ModelError::ContextLength { message: "too many tokens".into() });
        } else {
            format!("<message to=\"cli\">seen {}</message>", request.messages.len())
        };
        Ok(ModelReply {
            blocks: vec![Block::Text { text }],
            stop: StopReason::EndTurn,
            usage: Usage::default(),
        })
    }
}

fn small_context(ws: &std::path::Path, summaries: bool) -> Box<nanoclaw_agent::agent::Agent> {
    let mut settings = nanoclaw_protocol::settings::RunnerSettings::echo_default("Andy");
    settings.provider.name = "small".into();
    Box::new(nanoclaw_agent::agent::Agent::new(
        Box::new(SmallContext { summaries }),
        settings,
        nanoclaw_agent::tools::ToolRegistry::default(),
        ws.to_path_buf(),
    ))
}

#[tokio::test]
async fn a_context_length_error_summarises_the_oldest_turns_and_retries_once() {
    let mut s = Session::new(None);
    s.start_with(Some(small_context(&s.workspace, true)));
    assert_eq!(texts(&s.turn("a", 20).await), vec!["seen 1"]);
    assert_eq!(texts(&s.turn("b", 20).await), vec!["seen 3"]);
    // 5 messages are refused: the earlier turns become the summary pair, the call is retried
    // with it and the running turn (3 messages), silently.
    assert_eq!(texts(&s.turn("c", 20).await), vec!["seen 3"]);
    let path = s.state("continuation:small").unwrap();
    let kept = std::fs::read_to_string(s.workspace.join(path)).unwrap();
    assert_eq!(kept.lines().count(), 4, "{kept}");
    assert!(kept.lines().next().unwrap().contains(nanoclaw_agent::agent::compact::SUMMARY_MARKER), "{kept}");
    assert!(
        !kept.contains(">a</message>") && !kept.contains(">b</message>") && kept.contains(">c</message>")
    );
}

#[tokio::test]
async fn a_context_length_error_drops_the_oldest_turns_when_the_summary_fails() {
    let mut s = Session::new(None);
    s.start_with(Some(small_context(&s.workspace, false)));
    assert_eq!(texts(&s.turn("a", 20).await), vec!["seen 1"]);
    assert_eq!(texts(&s.turn("b", 20).await), vec!["seen 3"]);
    // 5 messages are refused, the summary fails: the oldest turns are dropped until the rest is
    // at most half of the refused request, and the user is told once.
    assert_eq!(texts(&s.turn("c", 20).await), vec!["seen 1", nanoclaw_agent::agent::compact::DROPPED_NOTE]);
    let path = s.state("continuation:small").unwrap();
    let kept = std::fs::read_to_string(s.workspace.join(path)).unwrap();
    assert_eq!(kept.lines().count(), 2, "{kept}");
    assert!(
        !kept.contains(">a</message>") && !kept.contains(">b</message>") && kept.contains(">c</message>")
    );
    // The next turn goes on from there.
    assert_eq!(texts(&s.turn("d", 20).await), vec!["seen 3"]);
}

/// A model that answers nothing at all.
struct Silent;

#[async_trait::async_trait]
impl nanoclaw_agent::model::Model for Silent {
    fn name(&self) -> &str {
        "silent"
    }

    async fn complete(
        &mut self,
        _request: &nanoclaw_agent::model::ModelRequest<'_>,
        _events: &mut dyn nanoclaw_agent::provider::EventSink,
    ) -> Result<nanoclaw_agent::model::ModelReply, nanoclaw_agent::model::ModelError> {
        use nanoclaw_agent::model::{ModelReply, StopReason, Usage};
        Ok(ModelReply { blocks: vec![], stop: StopReason::EndTurn, usage: Usage::default() })
    }
}

#[tokio::test]
async fn an_empty_answer_is_told_not_silent() {
    let mut s = Session::new(None);
    let mut settings = nanoclaw_protocol::settings::RunnerSettings::echo_default("Andy");
    settings.provider.name = "silent".into();
    let agent = Box::new(nanoclaw_agent::agent::Agent::new(
        Box::new(Silent),
        settings,
        nanoclaw_agent::tools::ToolRegistry::default(),
        s.workspace.clone(),
    ));
    s.start_with(Some(agent));
    assert_eq!(texts(&s.turn("hello?", 20).await), vec![nanoclaw_agent::agent::EMPTY_ANSWER_NOTE]);
}

#[tokio::test]
async fn a_message_to_an_unknown_destination_is_corrected_once_then_sent_to_the_own_chat() {
    let mut s = Session::new(None);
    s.start();
    // Echo answers the correction with its previous answer, verbatim: it misses again.
    let r = s.turn(r#"!raw <message to="cli">one</message><message to="nobody">two</message>"#, 20).await;
    assert_eq!(texts(&r), vec!["one", "two"], "the known block once, the unknown one to the own chat");
    let path = s.state("continuation:echo").unwrap();
    let transcript = std::fs::read_to_string(s.workspace.join(path)).unwrap();
    assert_eq!(
        transcript.matches(nanoclaw_agent::agent::UNKNOWN_DESTINATION).count(),
        1,
        "one correction naming the destinations: {transcript}"
    );
    assert!(transcript.contains(r#"\"nobody\". Your destinations are: cli."#), "{transcript}");
}

#[tokio::test]
async fn an_answer_of_only_empty_blocks_is_told_not_silent() {
    let mut s = Session::new(None);
    s.start();
    let r = s.turn(r#"!raw <message to="cli">  </message>"#, 20).await;
    assert_eq!(texts(&r), vec![nanoclaw_agent::agent::EMPTY_ANSWER_NOTE]);
}

#[tokio::test]
async fn an_answer_of_only_internal_text_is_a_deliberate_silence() {
    let mut s = Session::new(None);
    s.start();
    let r = s.turn("!raw <internal>not for me</internal>", 20).await;
    assert_eq!(texts(&r), Vec::<String>::new());
    // The next turn is answered as usual.
    assert_eq!(texts(&s.turn("after", 20).await), vec!["echo: after"]);
}

/// A model that answers a plain text first, then nothing.
struct PlainThenSilent(u32);

#[async_trait::async_trait]
impl nanoclaw_agent::model::Model for PlainThenSilent {
    fn name(&self) -> &str {
        "plain"
    }

    async fn complete(
        &mut self,
        _request: &nanoclaw_agent::model::ModelRequest<'_>,
        _events: &mut dyn nanoclaw_agent::provider::EventSink,
    ) -> Result<nanoclaw_agent::model::ModelReply, nanoclaw_agent::model::ModelError> {
        use nanoclaw_agent::model::{Block, ModelReply, StopReason, Usage};
        self.0 += 1;
        let blocks = if self.0 == 1 { vec![Block::Text { text: "Paris.".into() }] } else { vec![] };
        Ok(ModelReply { blocks, stop: StopReason::EndTurn, usage: Usage::default() })
    }
}

#[tokio::test]
async fn an_empty_answer_to_the_nudge_sends_what_the_model_said_before() {
    let mut s = Session::new(None);
    let mut settings = nanoclaw_protocol::settings::RunnerSettings::echo_default("Andy");
    settings.provider.name = "plain".into();
    let agent = Box::new(nanoclaw_agent::agent::Agent::new(
        Box::new(PlainThenSilent(0)),
        settings,
        nanoclaw_agent::tools::ToolRegistry::default(),
        s.workspace.clone(),
    ));
    s.start_with(Some(agent));
    assert_eq!(texts(&s.turn("capital of France?", 20).await), vec!["Paris."]);
}
