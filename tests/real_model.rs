//! Real-model tests: a real llama.cpp server with a real small model (see `common::llm`).

mod common;

use common::llm::LlmServer;

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
