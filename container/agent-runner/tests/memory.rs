//! Conversation memory per provider (issue 6 part 3), through the whole runner: compaction by a
//! summary past 80 % of the context (a scripted model), the conversation resumed by a new
//! container, and each provider's own thread kept across a switch (HTTP models against a fake
//! proxy on the session's `proxy.sock`, configured through `runner.json` as the host does).

mod support;

use fake_http::{FakeServer, Reply};
use nanoclaw_agent::agent::Agent;
use nanoclaw_agent::agent::compact::{DROPPED_NOTE, SUMMARY_ACK, SUMMARY_MARKER, SUMMARY_SYSTEM, threshold};
use nanoclaw_agent::model::{
    Block, ChatMessage, Model, ModelError, ModelReply, ModelRequest, StopReason, Usage,
};
use nanoclaw_agent::provider::EventSink;
use nanoclaw_agent::tools::ToolRegistry;
use nanoclaw_protocol::settings::RunnerSettings;
use serde_json::json;
use std::sync::{Arc, Mutex};
use support::{Session, texts};

// ---------------------------------------------------------------- a scripted model

/// One request the scripted model received.
#[derive(Debug, Clone)]
struct Seen {
    /// A summary request (its system prompt is the summariser's).
    summary: bool,
    messages: Vec<ChatMessage>,
    /// Offered tools.
    tools: usize,
    /// `bytes / 4` of the system prompt, the messages and the tools as JSON, computed here.
    tokens: u64,
}

impl Seen {
    /// All the text of the messages, for `contains` checks.
    fn text(&self) -> String {
        serde_json::to_string(&self.messages).unwrap()
    }

    fn first_text(&self) -> String {
        match self.messages[0].content.first() {
            Some(Block::Text { text }) => text.clone(),
            other => panic!("first block: {other:?}"),
        }
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Answers each request `<message to="cli">ok</message>` and each summary request
/// `SUMMARY-<n>` (or fails it), reporting no usage (so the byte estimate decides).
struct Scripted {
    log: Log,
    fail_summaries: bool,
}

#[async_trait::async_trait]
impl Model for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn complete(
        &mut self,
        request: &ModelRequest<'_>,
        _events: &mut dyn EventSink,
    ) -> Result<ModelReply, ModelError> {
        let bytes = request.system.len()
            + serde_json::to_vec(request.messages).unwrap().len()
            + serde_json::to_vec(request.tools).unwrap().len();
        let summary = request.system == SUMMARY_SYSTEM;
        let mut log = self.log.lock().unwrap();
        log.push(Seen {
            summary,
            messages: request.messages.to_vec(),
            tools: request.tools.len(),
            tokens: (bytes as u64).div_ceil(4),
        });
        let text = match (summary, self.fail_summaries) {
            (true, true) => return Err(ModelError::Fatal { message: "no summary today".into() }),
            (true, false) => format!("SUMMARY-{}", log.iter().filter(|s| s.summary).count()),
            (false, _) => "<message to=\"cli\">ok</message>".into(),
        };
        Ok(ModelReply {
            blocks: vec![Block::Text { text }],
            stop: StopReason::EndTurn,
            usage: Usage::default(),
        })
    }
}

/// Context of the scripted model, in tokens: the system prompt and a few turns of ~1 KB.
const CONTEXT: u32 = 4000;

fn scripted(s: &Session, log: &Log, fail_summaries: bool) -> Box<Agent> {
    let mut settings = RunnerSettings::echo_default("Andy");
    settings.provider.name = "scripted".into();
    settings.provider.context_tokens = CONTEXT;
    Box::new(Agent::new(
        Box::new(Scripted { log: log.clone(), fail_summaries }),
        settings,
        ToolRegistry::default(),
        s.workspace.clone(),
    ))
}

/// A turn's text: a tag naming it and 800 bytes.
fn long_turn(i: usize) -> String {
    format!("{} {}", tag(i), "words ".repeat(134))
}

fn tag(i: usize) -> String {
    format!("[turn-{i}]")
}

#[tokio::test]
async fn passing_80_percent_asks_for_one_summary_sent_with_the_recent_turns() {
    let log = Log::default();
    let mut s = Session::new(None);
    s.start_with(Some(scripted(&s, &log, false)));
    let mut at = None;
    for i in 1..=40 {
        assert_eq!(texts(&s.turn(&long_turn(i), 20).await), vec!["ok"], "a summary is silent");
        if log.lock().unwrap().iter().any(|r| r.summary) {
            at = Some(i);
            break;
        }
    }
    let at = at.expect("no summary within 40 turns of 1 KB in a 4000-token context");
    let seen = log.lock().unwrap().clone();
    let sums: Vec<usize> = (0..seen.len()).filter(|&i| seen[i].summary).collect();
    assert_eq!(sums.len(), 1, "exactly one summary request");
    let (summary, next) = (&seen[sums[0]], &seen[sums[0] + 1]);
    // The summary request: no tools, the older turns (as text), not the running turn.
    assert_eq!(summary.tools, 0);
    assert_eq!(summary.messages.len(), 1);
    assert!(summary.text().contains(&tag(1)) && !summary.text().contains(&tag(at)));
    // The next request: the summary pair, then the recent turns verbatim, the running one last.
    assert!(!next.summary);
    assert_eq!(next.first_text(), format!("{SUMMARY_MARKER}\nSUMMARY-1"));
    assert_eq!(next.messages[1].content, vec![Block::Text { text: SUMMARY_ACK.into() }]);
    assert!(next.text().contains(&tag(at)) && next.text().contains(&tag(at - 1)), "recent turns kept");
    assert!(!next.text().contains(&tag(1)), "the oldest turn is in the summary only");
    assert!(next.tokens < threshold(CONTEXT), "{} tokens after compaction", next.tokens);

    // A new container reads the summary back from the transcript.
    s.start_with(Some(scripted(&s, &log, false)));
    assert_eq!(texts(&s.turn("after the restart", 20).await), vec!["ok"]);
    let seen = log.lock().unwrap().clone();
    let last = seen.last().unwrap();
    assert!(!last.summary);
    assert_eq!(last.first_text(), format!("{SUMMARY_MARKER}\nSUMMARY-1"));
    assert!(last.text().contains(&tag(at)) && last.text().contains("after the restart"));
    assert_eq!(seen.iter().filter(|r| r.summary).count(), 1);
}

#[tokio::test]
async fn a_failed_summary_falls_back_to_dropping_the_oldest_turns_with_one_note() {
    let log = Log::default();
    let mut s = Session::new(None);
    s.start_with(Some(scripted(&s, &log, true)));
    let mut at = None;
    for i in 1..=40 {
        let replies = texts(&s.turn(&long_turn(i), 20).await);
        if log.lock().unwrap().iter().any(|r| r.summary) {
            assert_eq!(replies, vec!["ok".to_string(), DROPPED_NOTE.to_string()]);
            at = Some(i);
            break;
        }
        assert_eq!(replies, vec!["ok"]);
    }
    let at = at.expect("no compaction within 40 turns");
    let seen = log.lock().unwrap().clone();
    let sums: Vec<usize> = (0..seen.len()).filter(|&i| seen[i].summary).collect();
    assert_eq!(sums.len(), 1, "one summary attempt");
    let next = &seen[sums[0] + 1];
    assert!(!next.summary);
    assert!(!next.first_text().starts_with(SUMMARY_MARKER), "no summary was written");
    assert!(!next.text().contains(&tag(1)), "the oldest turn was dropped");
    assert!(next.text().contains(&tag(at)) && next.text().contains(&tag(at - 1)));
    assert!(next.tokens < threshold(CONTEXT));
}

#[tokio::test]
async fn the_prompt_stays_bounded_over_100_turns() {
    let log = Log::default();
    let mut s = Session::new(None);
    s.start_with(Some(scripted(&s, &log, false)));
    for i in 1..=100 {
        assert_eq!(texts(&s.turn(&long_turn(i), 20).await), vec!["ok"], "turn {i}");
    }
    let seen = log.lock().unwrap().clone();
    let requests: Vec<&Seen> = seen.iter().filter(|r| !r.summary).collect();
    assert_eq!(requests.len(), 100);
    let limit = threshold(CONTEXT);
    for (i, r) in requests.iter().enumerate() {
        assert!(r.tokens < limit, "turn {}: {} tokens, threshold {limit}", i + 1, r.tokens);
    }
    let last = requests[99];
    assert!(last.text().contains(&tag(100)) && last.first_text().starts_with(SUMMARY_MARKER));
    let summaries = seen.iter().filter(|r| r.summary).count();
    assert!(summaries > 1, "compacted again as the conversation grew ({summaries})");
    // Summaries of summaries: each summary request carries the previous summary.
    let last_summary = seen.iter().rev().find(|r| r.summary).unwrap();
    assert!(last_summary.text().contains(&format!("SUMMARY-{}", summaries - 1)));
}

// ---------------------------------------------------------------- HTTP models through runner.json

/// `runner.json` for an HTTP provider `name` of `kind`.
fn http_settings(name: &str, kind: &str, context_tokens: u32) -> serde_json::Value {
    Session::settings(json!({
        "provider": {
            "name": name,
            "kind": kind,
            "model": "test-model",
            "context_tokens": context_tokens,
            "max_output_tokens": 256,
        }
    }))
}

fn use_settings(s: &Session, settings: &serde_json::Value) {
    std::fs::write(s.session.join("runner.json"), settings.to_string()).unwrap();
}

/// A Chat Completions stream answering `text`, reporting `prompt_tokens`.
fn openai_stream(text: &str, prompt_tokens: u64) -> Reply {
    let chunks = [
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": null}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 5}}),
    ];
    let mut body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    Reply::sse(&body)
}

/// A Messages API stream answering `text`.
fn anthropic_stream(text: &str) -> Reply {
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                "content": [], "model": "test-model", "stop_reason": null, "usage": {"input_tokens": 50, "output_tokens": 0}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    Reply::sse(&events.iter().map(|(e, d)| format!("event: {e}\ndata: {d}\n\n")).collect::<String>())
}

async fn fake_proxy(s: &Session) -> FakeServer {
    FakeServer::unix(&s.session.join(nanoclaw_protocol::layout::PROXY_SOCKET)).await.unwrap()
}

#[tokio::test]
async fn host_restarted_mid_conversation_the_next_request_carries_the_earlier_turns() {
    let mut s = Session::new(Some(http_settings("local", "openai", 100_000)));
    let proxy = fake_proxy(&s).await;
    proxy.push(openai_stream("<message to=\"cli\">noted: pineapple</message>", 100));
    s.start();
    assert_eq!(texts(&s.turn("the secret word is pineapple", 20).await), vec!["noted: pineapple"]);
    // A new container (the host restarted): a new agent from the same workspace and the
    // continuation stored in the session DB.
    s.start();
    proxy.push(openai_stream("<message to=\"cli\">it was pineapple</message>", 100));
    assert_eq!(texts(&s.turn("what was the word?", 20).await), vec!["it was pineapple"]);
    let requests = proxy.requests();
    assert_eq!(requests.len(), 2);
    let roles_and_texts: Vec<(String, String)> = requests[1].json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].to_string()))
        .collect();
    let roles: Vec<&str> = roles_and_texts.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, vec!["system", "user", "assistant", "user"]);
    assert!(roles_and_texts[1].1.contains("the secret word is pineapple"));
    assert!(roles_and_texts[2].1.contains("noted: pineapple"));
    assert!(roles_and_texts[3].1.contains("what was the word?"));
}

#[tokio::test]
async fn openai_then_anthropic_then_openai_resumes_the_first_thread() {
    let openai = http_settings("local", "openai", 100_000);
    let anthropic = http_settings("claude", "anthropic", 100_000);
    let mut s = Session::new(Some(openai.clone()));
    let proxy = fake_proxy(&s).await;

    proxy.push(openai_stream("<message to=\"cli\">first thread</message>", 100));
    s.start();
    assert_eq!(texts(&s.turn("alpha on openai", 20).await), vec!["first thread"]);

    // The provider is switched: the host writes a new runner.json and starts a new container.
    use_settings(&s, &anthropic);
    s.start();
    proxy.push(anthropic_stream("<message to=\"cli\">second thread</message>"));
    assert_eq!(texts(&s.turn("beta on anthropic", 20).await), vec!["second thread"]);

    use_settings(&s, &openai);
    s.start();
    proxy.push(openai_stream("<message to=\"cli\">first thread again</message>", 100));
    assert_eq!(texts(&s.turn("gamma on openai", 20).await), vec!["first thread again"]);

    let requests = proxy.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, vec!["/local/chat/completions", "/claude/v1/messages", "/local/chat/completions"]);
    let anthropic_body = requests[1].json()["messages"].to_string();
    assert!(anthropic_body.contains("beta on anthropic") && !anthropic_body.contains("alpha"));
    let third = requests[2].json()["messages"].to_string();
    assert!(third.contains("alpha on openai") && third.contains("first thread"), "{third}");
    assert!(third.contains("gamma on openai"));
    assert!(!third.contains("beta on anthropic") && !third.contains("second thread"), "{third}");
    // Each provider keeps its own transcript.
    assert_ne!(s.state("continuation:local"), s.state("continuation:claude"));
}

#[tokio::test]
async fn reported_prompt_tokens_past_80_percent_compact_an_http_conversation() {
    let mut s = Session::new(Some(http_settings("local", "openai", 100_000)));
    let proxy = fake_proxy(&s).await;
    // The model reports 90 000 prompt tokens for a request of a few KB: its count is preferred
    // over the byte estimate, so the next request is over 80 %.
    proxy.push(openai_stream("<message to=\"cli\">one</message>", 90_000));
    s.start();
    assert_eq!(texts(&s.turn("first question", 20).await), vec!["one"]);
    proxy.push(openai_stream("SUMMARY: the user asked something and got one answer", 300));
    proxy.push(openai_stream("<message to=\"cli\">two</message>", 3_000));
    assert_eq!(texts(&s.turn("second question", 20).await), vec!["two"]);
    let requests = proxy.requests();
    assert_eq!(requests.len(), 3);
    let summary = requests[1].json();
    assert!(summary.get("tools").is_none(), "a summary request offers no tools");
    assert_eq!(summary["messages"][0], json!({"role": "system", "content": SUMMARY_SYSTEM}));
    let asked = summary["messages"][1]["content"].to_string();
    assert!(asked.contains("first question") && !asked.contains("second question"), "{asked}");
    let next = requests[2].json();
    let messages = next["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "system, the summary pair, the running turn: {messages:#?}");
    assert_eq!(
        messages[1]["content"].as_str().unwrap(),
        format!("{SUMMARY_MARKER}\nSUMMARY: the user asked something and got one answer")
    );
    assert_eq!(messages[2], json!({"role": "assistant", "content": SUMMARY_ACK}));
    assert!(messages[3]["content"].to_string().contains("second question"));
    assert!(!next["messages"].to_string().contains("first question"));
}
