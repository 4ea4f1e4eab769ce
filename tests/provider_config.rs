//! An agent group whose provider cannot be used (not configured, key variable unset, base URL
//! that does not parse) gets one line naming the config key for each message; the other group
//! keeps answering. Real binary, process runtime.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn misconfigured_group_only() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let config = config_file(
        dir.path(),
        "[providers.nokey]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:9\"\napi_key_env = \"NANOCLAW_TEST_UNSET_KEY\"\n\
         [providers.badurl]\nkind = \"openai\"\nbase_url = \"::not a url\"\n",
    );
    let server = Server::start(
        &data,
        &["--runtime", "process", "--config", config.to_str().unwrap()],
        &[("NANOCLAW_TEST_UNSET_KEY", "")],
    );
    add_cli_agent_group(&data, "other", "^B:", "^A:");
    let chat = ChatLog::connect(&data.join("cli.sock"));
    for (i, (provider, line)) in [
        ("nope", "providers.nope: not configured"),
        ("nokey", "providers.nokey.api_key_env: NANOCLAW_TEST_UNSET_KEY is not set"),
        ("badurl", "providers.badurl.base_url: "),
    ]
    .into_iter()
    .enumerate()
    {
        store_db(&data)
            .execute(
                "UPDATE container_configs SET provider = ?1 WHERE agent_group_id = 'ag-other'",
                [provider],
            )
            .unwrap();
        chat.send(&format!("b-{i}"), &format!("B: hello {i}"));
        let note = chat
            .wait(Duration::from_secs(30), |f| f["text"].as_str().is_some_and(|t| t.contains(line)))
            .unwrap_or_else(|| panic!("no note naming {line:?}; frames: {:?}", chat.frames()));
        assert!(!note["text"].as_str().unwrap().contains('\n'), "{note}");
        // The main group (provider inherited: agent.provider = echo) still answers.
        chat.round_trip(&format!("a-{i}"), &format!("A: still here {i}"), Duration::from_secs(30)).unwrap();
    }
    assert!(server.log().contains("providers.nope: not configured"), "{}", server.log());
    // The main session's runner.json: the inherited provider, its tier, no secret.
    let (_, root) = session_of(&data, "main");
    let text =
        std::fs::read_to_string(root.join("host").join(nanoclaw_protocol::layout::RUNNER_SETTINGS)).unwrap();
    let settings: nanoclaw_protocol::settings::RunnerSettings = serde_json::from_str(&text).unwrap();
    assert_eq!(settings.provider.name, "echo");
    assert_eq!(settings.image_tier, nanoclaw_protocol::settings::ImageTier::Minimal);
    assert_eq!(settings.max_tool_rounds, 32);
}
