//! The HTTP model providers (`openai`, `anthropic`) against a scripted fake proxy on a Unix
//! socket: recorded llama.cpp streams (`tests/fixtures/sse/*-stream.sse`) and hand-written ones
//! from each provider's documented format (parallel calls, error events, unknown events,
//! truncated JSON), plus the protocol corners (abort mid-body, 429 with retry-after under paused
//! time, proxy refusals, bodies over 8 MiB).

use fake_http::{FakeServer, Reply};
use nanoclaw_agent::model::anthropic::Anthropic;
use nanoclaw_agent::model::openai::OpenAi;
use nanoclaw_agent::model::{
    Block, ChatMessage, Model, ModelError, ModelReply, ModelRequest, Role, StopReason, ToolCall, ToolSpec,
    Usage,
};
use nanoclaw_agent::provider::{EventSink, ProviderEvent};
use nanoclaw_protocol::proxy::{HEADER_PROXY_ERROR, ProxyError, ProxyErrorKind};
use nanoclaw_protocol::settings::MaxTokensField;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;

const OPENAI_TEXT: &str = include_str!("fixtures/sse/openai-text-stream.sse");
const OPENAI_FEWSHOT: &str = include_str!("fixtures/sse/openai-fewshot-stream.sse");
const OPENAI_PARALLEL: &str = include_str!("fixtures/sse/openai-parallel.sse");
const OPENAI_TRUNCATED: &str = include_str!("fixtures/sse/openai-truncated-call.sse");
const OPENAI_ERROR_CHUNK: &str = include_str!("fixtures/sse/openai-error-chunk.sse");
const OPENAI_UNKNOWN: &str = include_str!("fixtures/sse/openai-unknown-chunks.sse");
const OPENAI_MALFORMED: &str = include_str!("fixtures/sse/openai-malformed.sse");
const OPENAI_CONTEXT: &str = include_str!("fixtures/sse/openai-context-exceeded.http");
const ANTHROPIC_TEXT: &str = include_str!("fixtures/sse/anthropic-text-stream.sse");
const ANTHROPIC_FEWSHOT: &str = include_str!("fixtures/sse/anthropic-fewshot-stream.sse");
const ANTHROPIC_PARALLEL: &str = include_str!("fixtures/sse/anthropic-parallel.sse");
const ANTHROPIC_OVERLOADED: &str = include_str!("fixtures/sse/anthropic-overloaded.sse");
const ANTHROPIC_INVALID: &str = include_str!("fixtures/sse/anthropic-invalid-request-event.sse");
const ANTHROPIC_TRUNCATED: &str = include_str!("fixtures/sse/anthropic-truncated-call.sse");
const ANTHROPIC_UNKNOWN: &str = include_str!("fixtures/sse/anthropic-unknown-events.sse");

const RECORDED_TEXT: &str = "Hello, I'm here to help with any creative endeavors.";

/// A fake proxy on `<tempdir>/proxy.sock`.
struct Proxy {
    server: FakeServer,
    socket: PathBuf,
    _dir: TempDir,
}

async fn proxy() -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let server = FakeServer::unix(&socket).await.unwrap();
    Proxy { server, socket, _dir: dir }
}

impl Proxy {
    fn openai(&self) -> OpenAi {
        OpenAi::new("local", "smollm2", &self.socket)
    }
    fn anthropic(&self) -> Anthropic {
        Anthropic::new("claude", "claude-sonnet-4-5", &self.socket)
    }
}

#[derive(Default)]
struct Events(Vec<ProviderEvent>);

impl EventSink for Events {
    fn event(&mut self, event: ProviderEvent) {
        self.0.push(event);
    }
}

fn user(text: &str) -> ChatMessage {
    ChatMessage { role: Role::User, content: vec![Block::Text { text: text.into() }] }
}

fn send_message_tool() -> ToolSpec {
    ToolSpec {
        name: "send_message".into(),
        description: "Send a message to the chat.".into(),
        input_schema: json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
    }
}

async fn call(
    model: &mut dyn Model,
    messages: &[ChatMessage],
    tools: &[ToolSpec],
) -> Result<ModelReply, ModelError> {
    let request = ModelRequest {
        system: "You are Andy.",
        messages,
        tools,
        max_output_tokens: 256,
        temperature: Some(0.7),
    };
    model.complete(&request, &mut Events::default()).await
}

async fn say_hello(model: &mut dyn Model) -> Result<ModelReply, ModelError> {
    call(model, &[user("Say hello in five words.")], &[]).await
}

fn text_of(reply: &ModelReply) -> String {
    reply
        .blocks
        .iter()
        .filter_map(|b| match b {
            Block::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn calls_of(reply: &ModelReply) -> Vec<(String, String, serde_json::Value)> {
    reply
        .blocks
        .iter()
        .filter_map(|b| match b {
            Block::ToolCall(c) => Some((c.id.clone(), c.name.clone(), c.arguments.clone())),
            _ => None,
        })
        .collect()
}

fn fatal(result: Result<ModelReply, ModelError>) -> String {
    match result {
        Err(ModelError::Fatal { message }) => message,
        other => panic!("expected Fatal, got {other:?}"),
    }
}

fn proxy_refusal(status: u16, kind: ProxyErrorKind, message: &str) -> Reply {
    Reply::json(status, &serde_json::to_string(&ProxyError::new(kind, message)).unwrap())
        .header(HEADER_PROXY_ERROR, "1")
}

/// The body of a recorded `HTTP/1.1 …` fixture (after the blank line).
fn http_body(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").or_else(|| raw.split_once("\n\n")).unwrap().1
}

// ---------------------------------------------------------------- text streaming

#[tokio::test]
async fn openai_text() {
    let p = proxy().await;
    p.server.push(Reply::sse(OPENAI_TEXT));
    let reply = say_hello(&mut p.openai()).await.unwrap();
    assert_eq!(reply.blocks, vec![Block::Text { text: RECORDED_TEXT.into() }]);
    assert_eq!(reply.stop, StopReason::EndTurn);
    assert_eq!(reply.usage, Usage { input_tokens: 24, output_tokens: 13 });

    let requests = p.server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/local/chat/completions"));
    assert_eq!(r.header("host"), Some("nanoclaw-proxy"));
    let body = r.json();
    assert_eq!(body["model"], "smollm2");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["max_tokens"], 256);
    assert_eq!(body["temperature"], json!(0.7));
    assert_eq!(
        body["messages"],
        json!([{"role": "system", "content": "You are Andy."}, {"role": "user", "content": "Say hello in five words."}])
    );
    assert!(body.get("tools").is_none(), "no tools offered: no tools key");
    assert!(body.get("max_completion_tokens").is_none(), "one limit field only");
}

/// A provider the host resolved to `max_completion_tokens` (OpenAI's own API) sends the limit
/// in that field only: OpenAI's reasoning models refuse a request that has `max_tokens`.
#[tokio::test]
async fn openai_max_completion_tokens_when_told() {
    let p = proxy().await;
    p.server.push(Reply::sse(OPENAI_TEXT));
    let mut model = p.openai().with_max_tokens_field(MaxTokensField::MaxCompletionTokens);
    say_hello(&mut model).await.unwrap();
    let body = p.server.requests()[0].json();
    assert_eq!(body["max_completion_tokens"], 256);
    assert!(body.get("max_tokens").is_none(), "{body}");
}

#[tokio::test]
async fn anthropic_text() {
    let p = proxy().await;
    p.server.push(Reply::sse(ANTHROPIC_TEXT));
    let mut events = Events::default();
    let messages = [user("Say hello in five words.")];
    let request = ModelRequest {
        system: "You are Andy.",
        messages: &messages,
        tools: &[],
        max_output_tokens: 64,
        temperature: None,
    };
    let reply = p.anthropic().complete(&request, &mut events).await.unwrap();
    assert_eq!(reply.blocks, vec![Block::Text { text: RECORDED_TEXT.into() }]);
    assert_eq!(reply.stop, StopReason::EndTurn);
    // input 1 + cache_read 23; output from message_delta.
    assert_eq!(reply.usage, Usage { input_tokens: 24, output_tokens: 13 });
    assert!(events.0.contains(&ProviderEvent::Activity), "a stream reports activity: {:?}", events.0);

    let r = &p.server.requests()[0];
    assert_eq!(r.path, "/claude/v1/messages");
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["system"], "You are Andy.");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 64);
    assert!(body.get("temperature").is_none());
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Say hello in five words."}]}])
    );
}

// ---------------------------------------------------------------- tool calls

#[tokio::test]
async fn openai_tool_call_deltas() {
    let p = proxy().await;
    p.server.push(Reply::sse(OPENAI_FEWSHOT));
    let reply = call(&mut p.openai(), &[user("Say hello.")], &[send_message_tool()]).await.unwrap();
    assert_eq!(
        calls_of(&reply),
        vec![("79bTJNKN9drkiCMitV1hqGu5iQLkch4n".into(), "send_message".into(), json!({"text": "Hello!"}))]
    );
    assert_eq!(text_of(&reply), "", "content: null is no text");
    assert_eq!(reply.stop, StopReason::ToolUse);
    assert_eq!(reply.usage, Usage { input_tokens: 399, output_tokens: 31 });
    let body = p.server.requests()[0].json();
    assert_eq!(
        body["tools"],
        json!([{"type": "function", "function": {
            "name": "send_message",
            "description": "Send a message to the chat.",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        }}])
    );
}

#[tokio::test]
async fn anthropic_tool_call_deltas() {
    let p = proxy().await;
    p.server.push(Reply::sse(ANTHROPIC_FEWSHOT));
    // llama.cpp's content_block_start has no "input": the deltas alone make the arguments.
    assert!(!ANTHROPIC_FEWSHOT.contains("\"input\""));
    let reply = call(&mut p.anthropic(), &[user("Say hello.")], &[send_message_tool()]).await.unwrap();
    assert_eq!(
        calls_of(&reply),
        vec![("xQocd6b2XGMpEE1K83q5eO91akxEFxzr".into(), "send_message".into(), json!({"text": "Hello!"}))]
    );
    assert_eq!(reply.stop, StopReason::ToolUse);
    assert_eq!(reply.usage, Usage { input_tokens: 399, output_tokens: 31 });
    let body = p.server.requests()[0].json();
    assert_eq!(
        body["tools"],
        json!([{
            "name": "send_message",
            "description": "Send a message to the chat.",
            "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        }])
    );
}

#[tokio::test]
async fn openai_parallel_calls() {
    let p = proxy().await;
    p.server.push(Reply::sse(OPENAI_PARALLEL));
    let reply = call(&mut p.openai(), &[user("Look around.")], &[]).await.unwrap();
    assert_eq!(
        calls_of(&reply),
        vec![
            ("call_a".into(), "read_file".into(), json!({"path": "notes.md"})),
            ("call_b".into(), "list_files".into(), json!({"dir": "src"})),
        ]
    );
    assert_eq!(reply.stop, StopReason::ToolUse);
    // prompt_tokens already count the cached ones.
    assert_eq!(reply.usage, Usage { input_tokens: 120, output_tokens: 40 });
}

#[tokio::test]
async fn anthropic_parallel_calls() {
    let p = proxy().await;
    p.server.push(Reply::sse(ANTHROPIC_PARALLEL));
    let reply = call(&mut p.anthropic(), &[user("Look around.")], &[]).await.unwrap();
    assert_eq!(reply.blocks[0], Block::Text { text: "Reading both.".into() });
    assert_eq!(
        calls_of(&reply),
        vec![
            ("toolu_a".into(), "read_file".into(), json!({"path": "notes.md"})),
            ("toolu_b".into(), "list_files".into(), json!({"dir": "src"})),
        ]
    );
    assert_eq!(reply.stop, StopReason::ToolUse);
    // input 12 + cache creation 100 + cache read 2000.
    assert_eq!(reply.usage, Usage { input_tokens: 2112, output_tokens: 89 });
}

/// A conversation with parallel calls and their results, as both APIs must receive it.
fn conversation_with_results() -> Vec<ChatMessage> {
    vec![
        user("Look around."),
        ChatMessage {
            role: Role::Assistant,
            content: vec![
                Block::Text { text: "Reading both.".into() },
                Block::ToolCall(ToolCall {
                    id: "c1".into(),
                    name: "read_file".into(),
                    arguments: json!({"path": "a"}),
                }),
                Block::ToolCall(ToolCall {
                    id: "c2".into(),
                    name: "list_files".into(),
                    arguments: json!({}),
                }),
            ],
        },
        ChatMessage {
            role: Role::Tool,
            content: vec![Block::ToolResult {
                call_id: "c1".into(),
                content: "alpha".into(),
                is_error: false,
            }],
        },
        ChatMessage {
            role: Role::Tool,
            content: vec![Block::ToolResult {
                call_id: "c2".into(),
                content: "no such dir".into(),
                is_error: true,
            }],
        },
    ]
}

#[tokio::test]
async fn openai_translates_calls_and_results() {
    let p = proxy().await;
    p.server.push(Reply::sse(OPENAI_TEXT));
    call(&mut p.openai(), &conversation_with_results(), &[]).await.unwrap();
    let body = p.server.requests()[0].json();
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You are Andy."},
            {"role": "user", "content": "Look around."},
            {"role": "assistant", "content": "Reading both.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "list_files", "arguments": "{}"}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "alpha"},
            {"role": "tool", "tool_call_id": "c2", "content": "error: no such dir"},
        ])
    );
}

#[tokio::test]
async fn anthropic_puts_consecutive_results_in_one_user_message() {
    let p = proxy().await;
    p.server.push(Reply::sse(ANTHROPIC_TEXT));
    let mut conversation = conversation_with_results();
    conversation.push(user("And then?"));
    call(&mut p.anthropic(), &conversation, &[]).await.unwrap();
    let body = p.server.requests()[0].json();
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Look around."}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Reading both."},
                {"type": "tool_use", "id": "c1", "name": "read_file", "input": {"path": "a"}},
                {"type": "tool_use", "id": "c2", "name": "list_files", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "alpha", "is_error": false},
                {"type": "tool_result", "tool_use_id": "c2", "content": "no such dir", "is_error": true},
                {"type": "text", "text": "And then?"},
            ]},
        ])
    );
}

// ---------------------------------------------------------------- failures mid-stream

#[tokio::test]
async fn error_mid_stream_fails_with_reason() {
    // The connection drops halfway through the body: no retry (the turn fails with the reason).
    for kind in ["openai", "anthropic"] {
        let p = proxy().await;
        let stream = if kind == "openai" { OPENAI_TEXT } else { ANTHROPIC_TEXT };
        let half = &stream[..stream.len() / 2];
        let half = &half[..half.rfind("\n\n").unwrap() + 2];
        p.server.push(Reply::sse(half).abort());
        let result = if kind == "openai" {
            say_hello(&mut p.openai()).await
        } else {
            say_hello(&mut p.anthropic()).await
        };
        let message = fatal(result);
        assert!(message.contains("broke off") && !message.contains("after 0 bytes"), "{kind}: {message}");
        assert_eq!(p.server.requests().len(), 1, "{kind}: not retried");
    }

    // A non-retryable `error` event inside the 200 stream.
    let p = proxy().await;
    p.server.push(Reply::sse(ANTHROPIC_INVALID));
    let message = fatal(say_hello(&mut p.anthropic()).await);
    assert!(message.contains("invalid_request_error") && message.contains("tools.0.name"), "{message}");
    assert_eq!(p.server.requests().len(), 1);
}

#[tokio::test]
async fn stream_ending_early_is_fatal() {
    let p = proxy().await;
    // Text deltas, then the body ends normally without finish_reason or [DONE].
    let cut = &OPENAI_TEXT[..OPENAI_TEXT.find("\"finish_reason\":\"stop\"").unwrap()];
    let cut = &cut[..cut.rfind("\n\n").unwrap() + 2];
    p.server.push(Reply::sse(cut));
    let message = fatal(say_hello(&mut p.openai()).await);
    assert!(message.contains("ended before the answer was complete"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn overloaded_event_is_retried() {
    let p = proxy().await;
    p.server.push(Reply::sse(ANTHROPIC_OVERLOADED));
    p.server.push(Reply::sse(ANTHROPIC_TEXT));
    let reply = say_hello(&mut p.anthropic()).await.unwrap();
    assert_eq!(text_of(&reply), RECORDED_TEXT);
    let requests = p.server.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].at - requests[0].at >= Duration::from_secs(1), "backoff waits at least 1 s");

    // OpenAI's error chunk inside a 200 stream: same.
    let p = proxy().await;
    p.server.push(Reply::sse(OPENAI_ERROR_CHUNK));
    p.server.push(Reply::sse(OPENAI_TEXT));
    let reply = say_hello(&mut p.openai()).await.unwrap();
    assert_eq!(
        reply.blocks,
        vec![Block::Text { text: RECORDED_TEXT.into() }],
        "nothing of the failed attempt is kept"
    );
    assert_eq!(p.server.requests().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_retries_honour_retry_after() {
    let p = proxy().await;
    let limited = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#;
    for _ in 0..3 {
        p.server.push(Reply::json(429, limited).header("retry-after", "7"));
    }
    p.server.push(Reply::sse(ANTHROPIC_TEXT));
    let reply = say_hello(&mut p.anthropic()).await.unwrap();
    assert_eq!(text_of(&reply), RECORDED_TEXT);
    let requests = p.server.requests();
    assert_eq!(requests.len(), 4, "3 retries after the first try");
    for pair in requests.windows(2) {
        let gap = pair[1].at - pair[0].at;
        // retry-after replaces the (jittered, shorter) computed delay.
        assert!(gap >= Duration::from_secs(7) && gap < Duration::from_millis(7_500), "gap {gap:?}");
    }
    assert!(requests.iter().all(|r| r.body == requests[0].body), "each retry resends the same request");

    // Once more than 3 times: the call gives up with the reason.
    let p = proxy().await;
    for _ in 0..4 {
        p.server.push(Reply::json(429, limited).header("retry-after", "1"));
    }
    match say_hello(&mut p.anthropic()).await {
        Err(ModelError::Retryable { message }) => {
            assert!(message.contains("429") && message.contains("rate limit"), "{message}")
        }
        other => panic!("expected Retryable, got {other:?}"),
    }
    assert_eq!(p.server.requests().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_within_a_minute() {
    let p = proxy().await;
    // A retry-after past the 60 s budget ends the retries at once.
    p.server.push(Reply::json(503, r#"{"error":{"message":"down"}}"#).header("retry-after", "120"));
    match say_hello(&mut p.openai()).await {
        Err(ModelError::Retryable { message }) => {
            assert!(message.contains("503") && message.contains("down"), "{message}")
        }
        other => panic!("expected Retryable, got {other:?}"),
    }
    assert_eq!(p.server.requests().len(), 1);

    let p = proxy().await;
    p.server.push(Reply::json(
        529,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ));
    p.server.push(Reply::json(502, "bad gateway"));
    p.server.push(Reply::sse(OPENAI_TEXT));
    assert_eq!(text_of(&say_hello(&mut p.openai()).await.unwrap()), RECORDED_TEXT);
    assert_eq!(p.server.requests().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn connection_reset_before_answer_is_retried() {
    let p = proxy().await;
    p.server.push(Reply::hang_up());
    p.server.push(Reply::sse(ANTHROPIC_TEXT));
    assert_eq!(text_of(&say_hello(&mut p.anthropic()).await.unwrap()), RECORDED_TEXT);
    assert_eq!(p.server.requests().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn unreachable_proxy_is_retried_then_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = OpenAi::new("local", "smollm2", &dir.path().join("proxy.sock"));
    match say_hello(&mut model).await {
        Err(ModelError::Retryable { message }) => {
            assert!(
                message.contains("cannot reach the credential proxy") && message.contains("proxy.sock"),
                "{message}"
            )
        }
        other => panic!("expected Retryable, got {other:?}"),
    }
}

// ---------------------------------------------------------------- refusals

#[tokio::test]
async fn unauthorized_is_plain() {
    // Through the proxy: its own message, which names the variable.
    let p = proxy().await;
    p.server.push(proxy_refusal(
        401,
        ProxyErrorKind::KeyRefused,
        "the API key in ANTHROPIC_API_KEY was refused",
    ));
    assert_eq!(
        say_hello(&mut p.anthropic()).await,
        Err(ModelError::Auth { message: "the API key in ANTHROPIC_API_KEY was refused".into() })
    );
    assert_eq!(p.server.requests().len(), 1, "never retried");

    // Without the proxy's header (the provider's own body): a plain line, the body not echoed.
    let p = proxy().await;
    p.server.push(Reply::json(403, r#"{"error":{"message":"Incorrect API key provided: sk-abc***xyz"}}"#));
    assert_eq!(
        say_hello(&mut p.openai()).await,
        Err(ModelError::Auth { message: "the provider refused the API key (HTTP 403)".into() })
    );
}

#[tokio::test]
async fn proxy_refusals_are_fatal_and_not_retried() {
    let p = proxy().await;
    p.server.push(proxy_refusal(
        429,
        ProxyErrorKind::BudgetExceeded,
        "the daily token budget of 1000 is spent",
    ));
    assert_eq!(
        say_hello(&mut p.openai()).await,
        Err(ModelError::Fatal { message: "the daily token budget of 1000 is spent".into() })
    );
    assert_eq!(p.server.requests().len(), 1);

    let p = proxy().await;
    p.server.push(proxy_refusal(403, ProxyErrorKind::PathNotAllowed, "path not allowed"));
    assert_eq!(
        say_hello(&mut p.anthropic()).await,
        Err(ModelError::Fatal { message: "path not allowed".into() })
    );
}

/// A provider the proxy could not reach (a reset connection, a blip) is tried again like a 5xx,
/// not failed at once: seen in CI as a turn lost to one "error sending request".
#[tokio::test]
async fn an_unreachable_provider_is_retried() {
    let p = proxy().await;
    p.server.push(proxy_refusal(
        502,
        ProxyErrorKind::UpstreamUnreachable,
        "provider local could not be reached: error sending request",
    ));
    p.server.push(Reply::sse(OPENAI_TEXT));
    let reply = say_hello(&mut p.openai()).await.unwrap();
    assert_eq!(reply.blocks, vec![Block::Text { text: RECORDED_TEXT.into() }]);
    assert_eq!(p.server.requests().len(), 2, "one retry");
}

#[tokio::test]
async fn context_length_is_reported() {
    // Recorded from llama.cpp (both endpoints answer the same).
    let p = proxy().await;
    p.server.push(Reply::json(400, http_body(OPENAI_CONTEXT)));
    match say_hello(&mut p.openai()).await {
        Err(ModelError::ContextLength { message }) => {
            assert!(message.contains("exceeds the available context size"), "{message}")
        }
        other => panic!("expected ContextLength, got {other:?}"),
    }
    // Anthropic's wording.
    let p = proxy().await;
    p.server.push(Reply::json(
        400,
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#,
    ));
    assert!(matches!(say_hello(&mut p.anthropic()).await, Err(ModelError::ContextLength { .. })));
    // OpenAI's code.
    let p = proxy().await;
    p.server.push(Reply::json(
        400,
        r#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
    ));
    assert!(matches!(say_hello(&mut p.openai()).await, Err(ModelError::ContextLength { .. })));
    // Another 400 is fatal with the server's message.
    let p = proxy().await;
    p.server.push(Reply::json(
        400,
        r#"{"error":{"message":"tools[0]: bad schema","type":"invalid_request_error"}}"#,
    ));
    assert_eq!(
        say_hello(&mut p.openai()).await,
        Err(ModelError::Fatal { message: "the provider answered HTTP 400: tools[0]: bad schema".into() })
    );
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
async fn bad_input_unknown_events_are_skipped() {
    let p = proxy().await;
    p.server.push(Reply::sse(ANTHROPIC_UNKNOWN));
    let reply = say_hello(&mut p.anthropic()).await.unwrap();
    assert_eq!(reply.blocks, vec![Block::Text { text: "Still here.".into() }], "thinking block skipped");
    assert_eq!(reply.stop, StopReason::EndTurn);

    let p = proxy().await;
    p.server.push(Reply::sse(OPENAI_UNKNOWN));
    let reply = say_hello(&mut p.openai()).await.unwrap();
    assert_eq!(reply.blocks, vec![Block::Text { text: "Still here.".into() }]);
    assert_eq!(reply.usage, Usage { input_tokens: 10, output_tokens: 2 });
}

#[tokio::test]
async fn bad_input_truncated_tool_call_json() {
    let p = proxy().await;
    p.server.push(Reply::sse(OPENAI_TRUNCATED));
    let message = fatal(say_hello(&mut p.openai()).await);
    assert!(
        message.contains("tool call 0 (send_message)") && message.contains("not complete JSON"),
        "{message}"
    );

    let p = proxy().await;
    p.server.push(Reply::sse(ANTHROPIC_TRUNCATED));
    let message = fatal(say_hello(&mut p.anthropic()).await);
    assert!(
        message.contains("tool call 0 (send_message)") && message.contains("not complete JSON"),
        "{message}"
    );
}

#[tokio::test]
async fn bad_input_malformed_sse() {
    let p = proxy().await;
    p.server.push(Reply::sse(OPENAI_MALFORMED));
    let message = fatal(say_hello(&mut p.openai()).await);
    assert!(message.starts_with("malformed event from the provider"), "{message}");

    let p = proxy().await;
    p.server
        .push(Reply::new(200).header("content-type", "text/event-stream").body(&b"data: \xff\xfe\n\n"[..]));
    let message = fatal(say_hello(&mut p.anthropic()).await);
    assert!(message.contains("malformed") && message.contains("UTF-8"), "{message}");
}

#[tokio::test]
async fn bad_input_body_over_8_mib() {
    let p = proxy().await;
    // Valid text deltas, 1 MiB each, nine of them: the cap, not the parser, stops it.
    let piece = "x".repeat(1024 * 1024);
    let chunk = format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{piece}\"}}}}]}}\n\n");
    let mut reply = Reply::new(200).header("content-type", "text/event-stream");
    for _ in 0..9 {
        reply = reply.chunk(chunk.clone());
    }
    p.server.push(reply.chunk("data: [DONE]\n\n"));
    let message = fatal(say_hello(&mut p.openai()).await);
    assert_eq!(message, "the provider's answer is over 8 MiB");
    assert_eq!(p.server.requests().len(), 1);
}

#[tokio::test]
async fn the_model_keeps_serving_after_a_failure() {
    let p = proxy().await;
    let mut model = p.openai();
    p.server.push(Reply::sse(OPENAI_MALFORMED));
    p.server.push(Reply::sse(OPENAI_TEXT));
    assert!(matches!(say_hello(&mut model).await, Err(ModelError::Fatal { .. })));
    assert_eq!(text_of(&say_hello(&mut model).await.unwrap()), RECORDED_TEXT);
}

#[tokio::test]
async fn request_over_8_mib_is_not_sent() {
    let p = proxy().await;
    let huge = user(&"y".repeat(8 * 1024 * 1024));
    let message = fatal(call(&mut p.openai(), &[huge], &[]).await);
    assert!(message.contains("over the proxy's limit of 8 MiB"), "{message}");
    assert!(p.server.requests().is_empty());
}

// ---------------------------------------------------------------- command (JSON lines)

use nanoclaw_agent::model::command::CommandModel;
use nanoclaw_agent::model::retry::RetryPolicy;
use nanoclaw_protocol::settings::{ProviderKind, RunnerProvider};

/// `sh -c script fake-cli <arg>`.
fn sh(script: &str, arg: &std::path::Path) -> Vec<String> {
    ["sh", "-c", script, "fake-cli"]
        .iter()
        .map(|s| s.to_string())
        .chain([arg.display().to_string()])
        .collect()
}

const FAST_RETRIES: RetryPolicy = RetryPolicy {
    min_delay: Duration::from_millis(10),
    max_delay: Duration::from_millis(20),
    max_retries: 3,
    total: Duration::from_secs(1),
};

#[tokio::test]
async fn command_speaks_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let request_file = dir.path().join("request.json");
    let script = r#"IFS= read -r line; printf '%s\n' "$line" > "$1"
printf '%s\n' '{"type":"text","text":"Hel"}' '{"type":"progress"}' '' '{"type":"text","text":"lo"}' \
  '{"type":"tool_call","id":"t1","name":"send_message","arguments":{"text":"hi"}}' '{"type":"future"}' \
  '{"type":"result","stop":"tool_use","usage":{"input_tokens":5,"output_tokens":2},"continuation":"conv-1"}'"#;
    let mut model = CommandModel::new("cli", sh(script, &request_file));
    let tools = [send_message_tool()];
    let reply = call(&mut model, &[user("Say hello.")], &tools).await.unwrap();
    assert_eq!(
        reply.blocks,
        vec![
            Block::Text { text: "Hello".into() },
            Block::ToolCall(ToolCall {
                id: "t1".into(),
                name: "send_message".into(),
                arguments: json!({"text": "hi"})
            }),
        ]
    );
    assert_eq!(reply.stop, StopReason::ToolUse);
    assert_eq!(reply.usage, Usage { input_tokens: 5, output_tokens: 2 });
    let request: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&request_file).unwrap()).unwrap();
    assert_eq!(request["type"], "request");
    assert_eq!(request["system"], "You are Andy.");
    assert_eq!(
        request["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}])
    );
    assert_eq!(request["tools"][0]["name"], "send_message");
    assert_eq!(request["temperature"], json!(0.7));
    assert_eq!(request["continuation"], serde_json::Value::Null);

    // The next call hands back the continuation.
    call(&mut model, &[user("Again.")], &tools).await.unwrap();
    let request: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&request_file).unwrap()).unwrap();
    assert_eq!(request["continuation"], "conv-1");
}

#[tokio::test]
async fn command_failures_name_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("unused");
    let cases = [
        (
            "echo 'model crashed' >&2; exit 3",
            "ended before its result (exit status: 3): stderr: model crashed",
        ),
        ("printf 'hello there\\n'", "not JSON"),
        ("head -c 1100000 /dev/zero | tr '\\0' x; echo", "over 1024 KiB"),
        (
            r#"printf '%s\n' '{"type":"error","message":"no credits left","retryable":false}'"#,
            "the command failed: no credits left",
        ),
        (r#"printf '%s\n' '{"type":"tool_call","id":"t","name":"x","arguments":[1]}'"#, "not a JSON object"),
    ];
    for (script, expected) in cases {
        let mut model = CommandModel::with_policy("cli", sh(script, &unused), FAST_RETRIES);
        let message = fatal(say_hello(&mut model).await);
        assert!(message.contains(expected), "{script}: {message}");
    }
    let mut model = CommandModel::new("cli", vec!["/nonexistent/agent-cli".into()]);
    assert!(fatal(say_hello(&mut model).await).contains("cannot start the command"));
}

#[tokio::test]
async fn command_retryable_error_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("tried");
    let script = r#"if [ -e "$1" ]; then printf '%s\n' '{"type":"text","text":"ok"}' '{"type":"result"}'
else : > "$1"; printf '%s\n' '{"type":"error","message":"busy","retryable":true}'; fi"#;
    let mut model = CommandModel::with_policy("cli", sh(script, &marker), FAST_RETRIES);
    let reply = say_hello(&mut model).await.unwrap();
    assert_eq!((text_of(&reply), reply.stop), ("ok".to_owned(), StopReason::EndTurn));

    // Always busy: the retries end with the reason.
    let script = r#"printf '%s\n' '{"type":"error","message":"busy","retryable":true}'"#;
    let mut model = CommandModel::with_policy("cli", sh(script, &marker), FAST_RETRIES);
    assert_eq!(
        say_hello(&mut model).await,
        Err(ModelError::Retryable { message: "the command failed: busy".into() })
    );
}

#[test]
fn for_settings_names_the_missing_setting() {
    let socket = std::path::Path::new("/session/proxy.sock");
    let mut provider = RunnerProvider::echo();
    provider.name = "local".into();
    provider.kind = ProviderKind::Openai;
    assert_eq!(
        nanoclaw_agent::model::for_settings(&provider, socket).err().unwrap(),
        "providers.local.model is not set"
    );
    provider.model = Some("smollm2".into());
    assert_eq!(nanoclaw_agent::model::for_settings(&provider, socket).unwrap().name(), "local");
    provider.kind = ProviderKind::Anthropic;
    assert_eq!(nanoclaw_agent::model::for_settings(&provider, socket).unwrap().name(), "local");
    provider.kind = ProviderKind::Command;
    assert_eq!(
        nanoclaw_agent::model::for_settings(&provider, socket).err().unwrap(),
        "providers.local.command is empty"
    );
    provider.command = vec!["agent-cli".into()];
    assert_eq!(nanoclaw_agent::model::for_settings(&provider, socket).unwrap().name(), "local");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_fails_after_the_idle_deadline() {
    let p = proxy().await;
    let head = &OPENAI_TEXT[..OPENAI_TEXT.find("\n\n").unwrap() + 2];
    p.server.push(Reply::sse(head).chunk_after(Duration::from_secs(121), "data: [DONE]\n\n"));
    let started = tokio::time::Instant::now();
    let messages = [user("Say hello in five words.")];
    let request = ModelRequest {
        system: "",
        messages: &messages,
        tools: &[],
        max_output_tokens: 64,
        temperature: None,
    };
    let mut events = Events::default();
    match p.openai().complete(&request, &mut events).await {
        Err(ModelError::Retryable { message }) => {
            assert_eq!(message, "the provider's answer stalled for 120 s")
        }
        other => panic!("expected Retryable, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(120));
    // The host deems a claim silent for 60 s stuck: the wait reports activity every 15 s.
    let beats = events.0.iter().filter(|e| **e == ProviderEvent::Activity).count();
    assert!(beats >= 8, "{beats} activity events in 120 s");
    assert_eq!(p.server.requests().len(), 1);
}
