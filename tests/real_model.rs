//! Real-model tests: a real llama.cpp server with a real small model (see `common::llm`), and
//! (for the end-to-end ones) the real `nanoclaw` binary with real Docker containers whose runner
//! reaches the model server only through the host's credential proxy.

mod common;

use common::llm::LlmServer;
use common::*;
use std::path::Path;
use std::time::Duration;

/// How long one model turn may take on a loaded machine (the first one also builds the minimal
/// image and starts the container).
const TURN: Duration = Duration::from_secs(300);

/// The pinned server with the project's chat template accepts tools: without a tool-capable
/// template llama.cpp silently drops `tools` from every request, and no tool test would mean
/// anything.
#[test]
fn the_local_model_server_offers_tools_with_the_projects_template() {
    let Some(server) = LlmServer::start() else { return };
    let (status, body) = server.get("/props").expect("GET /props");
    assert_eq!(status, 200, "{body}");
    let props: serde_json::Value = serde_json::from_str(&body).expect("props are JSON");
    assert_eq!(props["chat_template_caps"]["supports_tools"], true, "{props}");
    let (status, body) = server.get("/v1/models").expect("GET /v1/models");
    assert_eq!(status, 200);
    assert!(body.contains("smollm2"), "{body}");
}

/// Writes a config whose default agent uses provider `local` of `kind` at `base_url` (no
/// `api_key_env`: a local server needs no key), and returns its path.
fn local_config(dir: &Path, kind: &str, base_url: &str) -> std::path::PathBuf {
    config_file(
        dir,
        &format!(
            "[agent]\nprovider = \"local\"\n\n[providers.local]\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\n\
             model = \"smollm2\"\ntemperature = 0.0\ncontext_tokens = 8192\nmax_output_tokens = 256\n"
        ),
    )
}

/// Offers the main group's model only `send_message` (the full tool list is thousands of tokens,
/// more than a 135M model's context takes well), no skills (the same reason), and runs it on the
/// minimal image (the standard one takes minutes to build).
fn small_model_group(data: &Path, tools: &str) {
    let changed = store_db(data)
        .execute(
            "UPDATE container_configs SET tools = ?1, skills = '[]', image_tier = 'minimal' WHERE agent_group_id = 'ag-main'",
            [tools],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

/// Requests and tokens the proxy recorded for provider `local` in `token_usage`.
fn local_usage(data: &Path) -> (i64, i64, i64) {
    store_db(data)
        .query_row(
            "SELECT coalesce(sum(requests), 0), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0) \
             FROM token_usage WHERE provider = 'local' AND agent_group_id = 'ag-main'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

/// Every transcript the runner kept in the session's workspace (what the model said), for
/// failure messages.
fn transcripts(data: &Path) -> String {
    let dir = session_dir(data).join("workspace/transcripts");
    let mut out = String::new();
    for provider in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(provider.path()).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(file.path()).unwrap_or_default();
            out.push_str(&format!("\n--- {}\n{text}", file.path().display()));
        }
    }
    if out.is_empty() { format!("(no transcript under {})", dir.display()) } else { out }
}

/// One chat message through the real binary, a real container and the proxy to the real model
/// server speaking `kind`: a non-empty reply that is not an echo arrives, and the proxy counted
/// the request and its tokens.
fn local_server_replies(kind: &str, base_url: impl Fn(&LlmServer) -> String) {
    if !docker_available() {
        return;
    }
    let Some(llm) = LlmServer::start() else { return };
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let config = local_config(dir.path(), kind, &base_url(&llm));
    let server = Server::start(&data, &["--config", config.to_str().unwrap()], &[]);
    // No tools: with `send_message` offered, SmolLM2-135M calls it with the same (refused)
    // arguments until the runner's repeat guard stops the turn (seen on both APIs); the plain
    // answer goes to the chat after the runner's one nudge.
    small_model_group(&data, r#"{"only":[]}"#);
    let mut c = server.client();
    c.send("m-0", "What is the capital of France?");
    // A failed turn ends with `failed`: the assertions below then say why, without waiting TURN.
    let frames = c.until(TURN, |f| (f["type"] == "done" || f["type"] == "failed") && f["id"] == "m-0");
    // Every chat message of the turn: the final answer, and what the model sent via send_message.
    let replies: Vec<&str> =
        frames.iter().filter(|f| f["type"] == "reply").filter_map(|f| f["text"].as_str()).collect();
    eprintln!(
        "{kind} model, chat messages of the turn: {replies:?}\nwhat the model said: {}",
        transcripts(&data)
    );
    let written: Vec<&&str> = replies
        .iter()
        .filter(|t| !t.trim().is_empty() && !t.starts_with("echo:") && !t.starts_with("Stopped:"))
        .collect();
    assert!(
        !written.is_empty(),
        "no model-written message (only runner notes or echoes): {frames:?}; what the model said: {}; log: {}",
        transcripts(&data),
        server.log()
    );
    let (requests, input, output) = local_usage(&data);
    assert!(requests >= 1, "the proxy recorded no request to the model server; log: {}", server.log());
    assert!(input > 0 && output > 0, "no tokens recorded: in {input}, out {output}");
}

/// `kind = "openai"` against llama.cpp's `/v1/chat/completions`.
#[test]
fn openai_local_server_replies() {
    local_server_replies("openai", |llm| format!("{}/v1", llm.base_url()));
}

/// `kind = "anthropic"` against llama.cpp's `/v1/messages` (the base URL has no `/v1`).
#[test]
fn anthropic_local_server_replies() {
    local_server_replies("anthropic", LlmServer::base_url);
}

/// The few-shot history seeded as the transcript: three examples of a user request answered by
/// one `send_message` call, its result, and a closing "Done." (the shape of
/// `container/agent-runner`'s `ChatMessage` JSONL).
fn few_shot_transcript() -> String {
    let mut lines = vec![];
    for (i, (ask, say)) in [
        ("Say good morning.", "Good morning!"),
        ("Say thank you.", "Thank you!"),
        ("Say goodbye.", "Goodbye!"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("call_{i}");
        // The user's turn in the shape the runner gives it, so the example matches the real turn.
        let ask = format!(
            "<message id=\"{}\" from=\"cli\" sender=\"Local\" time=\"2026-12-01T09:0{i}:00.000Z\">{ask}</message>",
            2 * i + 2
        );
        lines.push(serde_json::json!({"role": "user", "content": [{"type": "text", "text": ask}]}));
        lines.push(serde_json::json!({"role": "assistant", "content": [
            {"type": "tool_call", "id": id, "name": "send_message", "arguments": {"text": say}}]}));
        lines.push(serde_json::json!({"role": "user", "content": [
            {"type": "tool_result", "call_id": id, "content": "sent", "is_error": false}]}));
        lines.push(serde_json::json!({"role": "assistant", "content": [{"type": "text", "text": "Done."}]}));
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// A real tool call from the real model: with a seeded few-shot transcript, "Say hello." makes
/// the model call `send_message`, and exactly one message (the text the model put in the call,
/// read back from the transcript the runner kept) reaches the chat; none more within 5 s.
#[test]
fn real_tool_call_sends_once() {
    if !docker_available() {
        return;
    }
    let Some(llm) = LlmServer::start() else { return };
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let config = local_config(dir.path(), "openai", &format!("{}/v1", llm.base_url()));
    let args = ["--config", config.to_str().unwrap()];
    // A first turn makes the runner create the session's transcript and its continuation.
    let server = Server::start(&data, &args, &[]);
    small_model_group(&data, r#"{"only":["send_message"]}"#);
    let mut c = server.client();
    c.send("m-0", "Hi.");
    c.until(TURN, |f| f["type"] == "done" && f["id"] == "m-0");
    drop(c);
    server.stop();

    // Replace that conversation by the few-shot history.
    let workspace = session_dir(&data).join("workspace");
    let rel: String = rusqlite::Connection::open(workspace.join("outbound.db"))
        .unwrap()
        .query_row("SELECT value FROM session_state WHERE key = 'continuation:local'", [], |r| r.get(0))
        .expect("the first turn stored continuation:local");
    assert!(rel.starts_with("transcripts/local/"), "{rel}");
    std::fs::write(workspace.join(&rel), few_shot_transcript()).unwrap();

    let server = Server::start(&data, &args, &[]);
    let mut c = server.client();
    c.send("m-1", "Say hello.");
    let mut frames = c.until(TURN, |f| f["type"] == "done" && f["id"] == "m-1");
    frames.extend(c.drain(Duration::from_secs(5)));
    let messages: Vec<&str> =
        frames.iter().filter(|f| f["type"] == "reply").filter_map(|f| f["text"].as_str()).collect();

    // What the model server returned, as the runner recorded it after the seeded history.
    let transcript = std::fs::read_to_string(workspace.join(&rel)).unwrap();
    let turn: Vec<serde_json::Value> =
        transcript.lines().skip(12).map(|l| serde_json::from_str(l).unwrap()).collect();
    let calls: Vec<&serde_json::Value> = turn
        .iter()
        .filter(|m| m["role"] == "assistant")
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|b| b["type"] == "tool_call")
        .collect();
    eprintln!("the model's turn: {turn:?}\nchat: {messages:?}");
    assert_eq!(calls.len(), 1, "the model did not make exactly one tool call; its turn: {turn:?}");
    assert_eq!(calls[0]["name"], "send_message", "{turn:?}");
    let said = calls[0]["arguments"]["text"].as_str().expect("a text argument");
    assert!(!said.trim().is_empty(), "{turn:?}");
    assert_eq!(messages, vec![said], "frames: {frames:?}; log: {}", server.log());
    let (requests, _, _) = local_usage(&data);
    assert!(requests >= 2, "the proxy recorded {requests} requests");
}
