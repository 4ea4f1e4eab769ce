//! The conversation survives a host restart (issue 6 part 3), through the real binary and a real
//! container: the runner keeps the provider's transcript in the session workspace, so the first
//! model request after `nanoclaw serve` starts again carries the earlier turn. The model is a fake
//! OpenAI-compatible server behind the credential proxy that records each request. Fails when
//! Docker is unreachable (`NANOCLAW_SKIP_DOCKER=1` skips it, loudly).

mod common;

use common::*;
use fake_http::FakeServer;
use std::time::Duration;

#[test]
fn a_host_restart_keeps_the_conversation() {
    if !docker_available() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(FakeServer::tcp()).unwrap();
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let config = config_file(
        dir.path(),
        &format!(
            "[agent]\nprovider = \"fake\"\n\n[providers.fake]\nkind = \"openai\"\nbase_url = \"{}/v1\"\n\
             model = \"m\"\ncontext_tokens = 8192\nmax_output_tokens = 256\n",
            upstream.base_url().unwrap()
        ),
    );
    let args = ["--config", config.to_str().unwrap()];
    let server = Server::start(&data, &args, &[]);
    let changed = store_db(&data)
        .execute(
            "UPDATE container_configs SET tools = '{\"only\":[]}', skills = '[]', image_tier = 'minimal' \
             WHERE agent_group_id = 'ag-main'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let dest = main_destination(&data);

    upstream.push(openai_answer(&format!("<message to=\"{dest}\">noted: pineapple</message>")));
    let mut c = server.client();
    c.send("m-0", "Remember the word pineapple.");
    let frames = c.until(Duration::from_secs(180), |f| f["type"] == "done" && f["id"] == "m-0");
    assert_eq!(replies_to(&frames, "m-0"), vec!["noted: pineapple"], "{frames:?}; log: {}", server.log());
    assert_eq!(upstream.requests().len(), 1);
    drop(c);
    let install = nanoclaw::daemon::install_id(&data);
    assert!(server.stop().success());
    assert!(all_containers_of(&install).is_empty(), "the restart starts a new container");

    let server = Server::start(&data, &args, &[]);
    upstream.push(openai_answer(&format!("<message to=\"{dest}\">it was pineapple</message>")));
    let mut c = server.client();
    c.send("m-1", "Which word was it?");
    let frames = c.until(Duration::from_secs(180), |f| f["type"] == "done" && f["id"] == "m-1");
    assert_eq!(replies_to(&frames, "m-1"), vec!["it was pineapple"], "{frames:?}; log: {}", server.log());
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2, "one model request per turn");
    let body = requests[1].json();
    let messages: Vec<String> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}: {}", m["role"].as_str().unwrap_or("?"), m["content"].as_str().unwrap_or("")))
        .collect();
    // The system prompt, the first turn (the user's message and the model's answer), the new one.
    let at = |needle: &str| messages.iter().position(|m| m.contains(needle));
    let (asked, answered, now) =
        (at("Remember the word pineapple."), at("noted: pineapple"), at("Which word was it?"));
    assert!(asked.is_some() && answered.is_some() && now.is_some(), "{messages:#?}");
    assert!(asked < answered && answered < now, "in order: {messages:#?}");
    assert!(messages[answered.unwrap()].starts_with("assistant: "), "{messages:#?}");
    assert!(server.stop().success());
}
