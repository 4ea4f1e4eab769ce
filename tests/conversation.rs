//! The conversation survives a host restart (issue 6 part 3), through the real binary and a real
//! container: the runner keeps the provider's transcript in the session workspace, so the first
//! model request after `nanoclaw serve` starts again carries the earlier turn. The model is a fake
//! OpenAI-compatible server behind the credential proxy that records each request. Fails when
//! Docker is unreachable (`NANOCLAW_SKIP_DOCKER=1` skips it, loudly).

mod common;

use common::*;
use std::time::Duration;

/// Offers the main group's model no tools and no skills, on the minimal image.
fn plain_group(data: &std::path::Path) {
    let changed = store_db(data)
        .execute(
            "UPDATE container_configs SET tools = '{\"only\":[]}', skills = '[]', image_tier = 'minimal' \
             WHERE agent_group_id = 'ag-main'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

/// Sends each of `ids` in turn; each turn must fail with exactly one reply containing `reason`.
/// Returns every frame seen, and those of 2 s more.
fn failing_turns(c: &mut Client, ids: &[&str], reason: &str) -> Vec<serde_json::Value> {
    let mut all = vec![];
    for id in ids {
        c.send(id, "hello");
        // A failed turn ends with `failed` (not `done`) after its reason.
        let frames = c.until(Duration::from_secs(180), |f| f["type"] == "failed" && f["id"] == *id);
        let replies = replies_to(&frames, id);
        assert_eq!(replies.len(), 1, "{frames:?}");
        assert!(replies[0].contains(reason), "{id}: the reason is told: {replies:?}");
        all.extend(frames);
    }
    all.extend(c.drain(Duration::from_secs(2)));
    all
}

#[test]
fn a_host_restart_keeps_the_conversation() {
    if !docker_available() {
        return;
    }
    let setup = FakeProviderSetup::new();
    let (upstream, data, args) = (&setup.upstream, &setup.data, setup.args());
    let server = Server::start(data, &args, &[]);
    plain_group(data);
    let dest = main_destination(data);

    upstream.push(openai_answer(&format!("<message to=\"{dest}\">noted: pineapple</message>")));
    let mut c = server.client();
    c.send("m-0", "Remember the word pineapple.");
    let frames = c.until(Duration::from_secs(180), |f| f["type"] == "done" && f["id"] == "m-0");
    assert_eq!(replies_to(&frames, "m-0"), vec!["noted: pineapple"], "{frames:?}; log: {}", server.log());
    assert_eq!(upstream.requests().len(), 1);
    drop(c);
    let install = nanoclaw::daemon::install_id(data);
    assert!(server.stop().success());
    assert!(all_containers_of(&install).is_empty(), "the restart starts a new container");

    let server = Server::start(data, &args, &[]);
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

/// Bad input from the provider (malformed event data, a body over 8 MiB) fails that turn with
/// the reason in the chat; the same container answers the next message.
#[test]
fn a_broken_model_answer_fails_the_turn_with_the_reason_and_the_container_keeps_serving() {
    if !docker_available() {
        return;
    }
    let setup = FakeProviderSetup::new();
    let (upstream, data) = (&setup.upstream, &setup.data);
    let server = Server::start(data, &setup.args(), &[]);
    plain_group(data);
    let dest = main_destination(data);
    let install = nanoclaw::daemon::install_id(data);
    let mut c = server.client();

    upstream.push(fake_http::Reply::sse(
        "data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"hal\n\n",
    ));
    let big = format!("data: {}\n\n", "x".repeat(9 * 1024 * 1024));
    upstream.push(fake_http::Reply::sse(&big));
    upstream.push(openai_answer(&format!("<message to=\"{dest}\">still here</message>")));
    let mut container = None;
    for (id, reason) in [("m-0", "malformed"), ("m-1", "over 8 MiB")] {
        c.send(id, "hello");
        // A failed turn ends with `failed` (not `done`) after its reason.
        let frames = c.until(Duration::from_secs(180), |f| f["type"] == "failed" && f["id"] == id);
        let replies = replies_to(&frames, id);
        assert_eq!(replies.len(), 1, "{frames:?}");
        assert!(replies[0].contains(reason), "{id}: the reason is told: {replies:?}");
        let now = containers_of(&install);
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(container.get_or_insert(now[0].clone()), &now[0], "the same container");
    }
    c.send("m-2", "hello again");
    let frames = c.until(Duration::from_secs(60), |f| f["type"] == "done" && f["id"] == "m-2");
    assert_eq!(replies_to(&frames, "m-2"), vec!["still here"], "{frames:?}");
    assert_eq!(containers_of(&install), vec![container.unwrap()], "the same container kept serving");
    assert_eq!(upstream.requests().len(), 3, "a fatal answer is not retried");
    assert!(server.stop().success());
}

/// A key the provider refuses (401) fails each turn with one plain line naming the variable —
/// never the provider's body, which may echo the key — and tells the owner once (not per turn).
#[test]
fn a_refused_key_fails_turns_plainly_and_tells_the_owner_once() {
    if !docker_available() {
        return;
    }
    let setup = FakeProviderSetup::with("", "api_key_env = \"NANOCLAW_TEST_FAKE_KEY\"");
    let data = &setup.data;
    let server = Server::start(data, &setup.args(), &[("NANOCLAW_TEST_FAKE_KEY", "sk-wrong-123")]);
    plain_group(data);
    for _ in 0..2 {
        setup.upstream.push(fake_http::Reply::json(
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-wrong-123"}}"#,
        ));
    }
    let mut c = server.client();
    let all = failing_turns(&mut c, &["m-0", "m-1"], "the API key in NANOCLAW_TEST_FAKE_KEY was refused");
    let texts: Vec<&str> =
        all.iter().filter(|f| f["type"] == "reply").filter_map(|f| f["text"].as_str()).collect();
    assert!(!texts.iter().any(|t| t.contains("sk-wrong")), "the key is never shown: {texts:?}");
    let owner_notes =
        texts.iter().filter(|t| t.contains("refused the key in NANOCLAW_TEST_FAKE_KEY")).count();
    assert_eq!(owner_notes, 1, "the owner is told once: {texts:?}");
    assert_eq!(setup.upstream.requests().len(), 2, "a refused key is not retried");
    assert!(server.stop().success());
}

/// Past `providers.daily_token_budget` the proxy refuses model calls: each later turn fails with
/// one line naming the setting (not retried, nothing reaches the provider) and the owner is told
/// once a day, not per turn.
#[test]
fn a_spent_budget_refuses_turns_and_tells_the_owner_once() {
    if !docker_available() {
        return;
    }
    let setup = FakeProviderSetup::with("daily_token_budget = 10", "");
    let data = &setup.data;
    let server = Server::start(data, &setup.args(), &[]);
    plain_group(data);
    let dest = main_destination(data);
    // 12 tokens (10 in, 2 out): past the budget of 10 after this turn.
    setup.upstream.push(openai_answer(&format!("<message to=\"{dest}\">first</message>")));
    let mut c = server.client();
    c.send("m-0", "hello");
    let frames = c.until(Duration::from_secs(180), |f| f["type"] == "done" && f["id"] == "m-0");
    assert_eq!(replies_to(&frames, "m-0"), vec!["first"], "{frames:?}");
    let all = failing_turns(&mut c, &["m-1", "m-2"], "providers.daily_token_budget = 10");
    let owner_notes = all
        .iter()
        .filter(|f| f["type"] == "reply")
        .filter_map(|f| f["text"].as_str())
        .filter(|t| t.contains("daily budget (providers.daily_token_budget) is 10"))
        .count();
    assert_eq!(owner_notes, 1, "the owner is told once: {all:?}");
    assert_eq!(setup.upstream.requests().len(), 1, "refused calls never reach the provider");
    assert!(server.stop().success());
}
