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
    let config = dir.join("nanoclaw.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nprovider = \"local\"\n\n[providers.local]\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\n\
             model = \"smollm2\"\ntemperature = 0.0\ncontext_tokens = 8192\nmax_output_tokens = 256\n"
        ),
    )
    .unwrap();
    config
}

/// Offers the main group's model only `send_message` (the full tool list is thousands of tokens,
/// more than a 135M model's context takes well) and runs it on the minimal image (the standard
/// one takes minutes to build).
fn small_model_group(data: &Path) {
    let changed = store_db(data)
        .execute(
            "UPDATE container_configs SET tools = '{\"only\":[\"send_message\"]}', image_tier = 'minimal' \
             WHERE agent_group_id = 'ag-main'",
            [],
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
    small_model_group(&data);
    let mut c = server.client();
    c.send("m-0", "What is the capital of France?");
    let frames = c.until(TURN, |f| f["type"] == "done" && f["id"] == "m-0");
    let replies = replies_to(&frames, "m-0");
    assert!(!replies.is_empty(), "no reply; frames: {frames:?}; log: {}", server.log());
    let text = replies.join("\n");
    eprintln!("{kind} model replied: {text:?}");
    assert!(!text.trim().is_empty(), "{frames:?}");
    assert!(!text.starts_with("echo:"), "an echo, not the model: {text:?}");
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
