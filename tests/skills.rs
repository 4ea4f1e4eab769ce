//! Skills in a real container (issue 6 part 9): the host mounts its skills folder read-only at
//! `/skills` and writes the group's selection into `runner.json`; the runner puts only the
//! selected skills into the system prompt. The prompt is observed where it leaves the host: a
//! fake OpenAI-compatible upstream behind the credential proxy records the request body. Fails
//! when Docker is unreachable (`NANOCLAW_SKIP_DOCKER=1` skips it, loudly).

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// A skills folder with skills `x` and `y`, readable by the container's user.
fn skills_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("skills");
    for (name, text) in [("x", "SKILL-X-MARKER: count with wc -l."), ("y", "SKILL-Y-MARKER: never shown.")] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("SKILL.md"), text).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.join(name).join("SKILL.md"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn selected_skill_is_in_the_prompt_and_the_other_is_not() {
    if !docker_available() {
        return;
    }
    let setup = FakeProviderSetup::new();
    let (upstream, data) = (&setup.upstream, setup.data.clone());
    let skills = skills_dir(setup.dir.path());
    let server = Server::start(&data, &setup.args(), &[("NANOCLAW_SKILLS_DIR", skills.to_str().unwrap())]);
    let db = store_db(&data);
    let changed = db
        .execute(
            "UPDATE container_configs SET skills = '[\"x\"]', tools = '{\"only\":[]}', image_tier = 'minimal' \
             WHERE agent_group_id = 'ag-main'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let dest = main_destination(&data);
    // One answer per model call of the turn (a spare one in case the loop asks again).
    upstream.push(openai_answer(&format!("<message to=\"{dest}\">noted</message>")));
    upstream.push(openai_answer(&format!("<message to=\"{dest}\">noted</message>")));
    let mut c = server.client();
    c.send("m-0", "hello");
    let frames = c.until(Duration::from_secs(180), |f| f["type"] == "done" && f["id"] == "m-0");
    assert!(
        frames.iter().any(|f| f["type"] == "done" && f["id"] == "m-0"),
        "{frames:?}; log: {}",
        server.log()
    );
    let requests = upstream.requests();
    assert!(!requests.is_empty(), "no model request reached the upstream; log: {}", server.log());
    let body = String::from_utf8_lossy(&requests[0].body).into_owned();
    assert!(body.contains("## Skill: x") && body.contains("SKILL-X-MARKER"), "{body}");
    assert!(!body.contains("SKILL-Y-MARKER") && !body.contains("Skill: y"), "{body}");
    assert!(!body.contains("(The skill"), "the selected skill was readable: {body}");
    // The host wrote the selection into runner.json.
    let runner_json = session_dir(&data).join("host").join(nanoclaw_protocol::layout::RUNNER_SETTINGS);
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(runner_json).unwrap()).unwrap();
    assert_eq!(written["skills"], serde_json::json!(["x"]), "{written}");
    assert!(server.stop().success());
}

/// A skill name that could leave the skills folder stops the group's turns with a line naming
/// the column; it never reaches a container.
#[test]
fn skill_names_that_are_paths_are_refused_on_the_host() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runtime", "process"], &[]);
    let changed = store_db(&data)
        .execute("UPDATE container_configs SET skills = '[\"../etc\"]' WHERE agent_group_id = 'ag-main'", [])
        .unwrap();
    assert_eq!(changed, 1);
    let chat = ChatLog::connect(&data.join("cli.sock"));
    chat.send("m-0", "hello");
    let line = "container_configs.skills: \"../etc\" is not a skill folder name";
    chat.wait(Duration::from_secs(30), |f| f["text"].as_str().is_some_and(|t| t.contains(line)))
        .unwrap_or_else(|| panic!("no note naming {line:?}; frames: {:?}", chat.frames()));
    assert!(server.stop().success());
}
