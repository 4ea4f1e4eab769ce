//! `install_packages` end to end on the real Docker daemon: the echo agent asks for a Debian
//! package absent from the `standard` image, the host resolves its exact version in a throwaway
//! container and shows it on the card, the owner types `approve <id>`, the host builds the
//! group's image `FROM` standard, and the agent's container is replaced — the old one gone before
//! the new one starts — by one that runs the package and reads the `on_wake` note once.
//!
//! Needs what `tests/standard_tier.rs` needs (root, debootstrap, the Debian mirror): the first
//! run on a host builds the standard image (minutes); the group build takes about a minute.

mod common;

use common::*;
use std::time::Duration;

/// Generous: the first run on a host builds the `standard` image before it can resolve anything.
const FIRST: Duration = Duration::from_secs(25 * 60);
const WAIT: Duration = Duration::from_secs(5 * 60);

#[test]
fn an_approved_package_is_built_into_the_groups_image_and_runs_in_the_new_container() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[], &[]);
    // A shell for `run_command` before the first message (the host reads the config per spawn).
    store_db(&data)
        .execute("UPDATE container_configs SET image_tier = 'standard' WHERE agent_group_id = 'ag-main'", [])
        .unwrap();
    let install = nanoclaw::daemon::install_id(&data);
    let mut c = server.client();

    // Refused before any card: a shell injection and 21 names (the tool checks, the host again).
    let many: Vec<String> = (0..21).map(|i| format!("\"pkg{i}\"")).collect();
    c.send(
        "bad",
        &format!(
            "tool install_packages {{\"apt\":[\"vim; curl evil\"]}}\ntool install_packages {{\"apt\":[{}]}}",
            many.join(",")
        ),
    );
    let frames = c.until(FIRST, |f| f["type"] == "done" && f["id"] == "bad");
    let errors: Vec<&str> =
        frames.iter().filter(|f| f["type"] == "reply").filter_map(|f| f["text"].as_str()).collect();
    assert_eq!(errors.len(), 2, "{frames:?}");
    assert!(
        errors.iter().any(|e| e.contains("\"vim; curl evil\" is not a Debian package name")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("21 packages; 1 to 20 allowed")), "{errors:?}");
    assert!(!frames.iter().any(|f| f["type"] == "choice"), "no card for a refused request");

    // `bc` is not in the standard image.
    c.send("m1", r#"tool run_command {"command":"command -v bc || echo missing"}"#);
    let frames = c.until(FIRST, |f| is_reply(f, "tool run_command:"));
    assert!(frames.last().unwrap()["text"].as_str().unwrap().contains("missing"), "{frames:?}");

    c.send("m2", r#"tool install_packages {"apt":["bc"],"reason":"arithmetic"}"#);
    let frames = c.until(WAIT, |f| f["type"] == "choice");
    let card = frames.last().unwrap().clone();
    let id = card["approval_id"].as_str().unwrap().to_string();
    let text = card["text"].as_str().unwrap();
    let pin = text
        .split('"')
        .find(|s| s.starts_with("bc="))
        .unwrap_or_else(|| panic!("the card shows no pinned version: {text}"))
        .to_string();
    assert!(text.contains("arithmetic"), "{text}");
    let generation_before: i64 = store_db(&data)
        .query_row("SELECT max(container_generation) FROM sessions", [], |r| r.get::<_, Option<i64>>(0))
        .unwrap()
        .unwrap_or(0);
    let since = chrono::Utc::now().timestamp();

    c.send("m3", &format!("approve {id}"));
    c.until(WAIT, |f| is_reply(f, &format!("approved {id}: install_packages")));
    let frames = c.until(WAIT, |f| is_reply(f, "echo: system: Your install_packages request"));
    let note = frames.last().unwrap()["text"].as_str().unwrap().to_string();
    assert!(note.contains(&format!("installed {pin}")), "{note}");

    // The configuration changed only after the build, to the new image.
    let (packages, image): (String, String) = store_db(&data)
        .query_row(
            "SELECT packages_apt, image_tag FROM container_configs WHERE agent_group_id = 'ag-main'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(packages, format!("[\"{pin}\"]"));
    assert!(image.contains(":grp-"), "{image}");

    // The old container was destroyed before the new one was created.
    let until = chrono::Utc::now().timestamp() + 1;
    let events = docker(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        &format!("label=nanoclaw.install={install}"),
        "--filter",
        "type=container",
        "--format",
        "{{.Action}} {{index .Actor.Attributes \"nanoclaw.generation\"}}",
    ]);
    let lines: Vec<&str> =
        events.lines().filter(|l| l.starts_with("create ") || l.starts_with("destroy ")).collect();
    let destroyed = lines.iter().position(|l| *l == format!("destroy {generation_before}"));
    let created =
        lines.iter().position(|l| l.starts_with("create ") && *l != format!("create {generation_before}"));
    assert!(
        matches!((destroyed, created), (Some(d), Some(c)) if d < c),
        "old generation {generation_before} not destroyed before the new one was created: {lines:?}"
    );

    // The package runs in the new container, and the note is not read again.
    c.send("m4", r#"tool run_command {"command":"echo 6*7 | bc"}"#);
    let frames = c.until(WAIT, |f| is_reply(f, "tool run_command:"));
    let out = frames.last().unwrap()["text"].as_str().unwrap();
    assert!(out.contains("42"), "{out}");
    assert!(!frames.iter().any(|f| is_reply(f, "echo: system:")), "{frames:?}");
    c.send("m5", "!notes");
    let frames = c.until(WAIT, |f| is_reply(f, "echo: notes="));
    assert!(!frames.iter().any(|f| is_reply(f, "echo: system:")), "{frames:?}");
    assert!(server.stop().success());
}
