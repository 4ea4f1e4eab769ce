//! The main job end to end against the real Docker daemon and the real binary
//! (issue 2, "Must hold"). They fail when Docker is unreachable (`NANOCLAW_SKIP_DOCKER=1` skips
//! them, loudly).

mod common;

use common::*;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn piped_chat_prints_exactly_one_reply_and_exits_0() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let mut child = nanoclaw(&data)
        .args(["chat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo: hello\n");
    // The in-process service stopped its container on exit.
    assert!(all_containers_of(&nanoclaw::daemon::install_id(&data)).is_empty());
}

#[test]
fn one_message_in_gives_exactly_one_reply_through_serve() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[], &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("cli.sock")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "cli.sock is for the owner only");
    let mut c = server.client();
    c.send("m-1", "hi there");
    let frames = c.until(Duration::from_secs(60), |f| f["type"] == "done" && f["id"] == "m-1");
    let mut frames = frames;
    frames.extend(c.drain(Duration::from_millis(1500)));
    assert_eq!(frames[0]["type"], "accepted");
    assert_eq!(replies_to(&frames, "m-1"), vec!["echo: hi there"]);
    // A resend of the same id is a duplicate and gets no second reply.
    c.send("m-1", "hi there");
    let again = c.drain(Duration::from_millis(1500));
    assert_eq!(again[0]["duplicate"], true, "{again:?}");
    assert!(replies_to(&again, "m-1").is_empty());
    assert!(server.stop().success());
    assert!(
        all_containers_of(&nanoclaw::daemon::install_id(&data)).is_empty(),
        "shutdown removes containers"
    );
}

#[test]
fn concurrent_messages_never_run_two_containers_for_one_session() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let _server = Server::start(&data, &[], &[]);
    let install = nanoclaw::daemon::install_id(&data);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let max_seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let (stop, max_seen, install) = (stop.clone(), max_seen.clone(), install.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n = containers_of(&install).len();
                max_seen.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let sock = data.join("cli.sock");
            std::thread::spawn(move || {
                let mut c = Client::connect(&sock);
                c.send(&format!("c-{i}"), &format!("msg {i}"));
                let id = format!("c-{i}");
                let frames =
                    c.until(Duration::from_secs(90), |f| f["type"] == "done" && f["id"] == id.as_str());
                replies_to(&frames, &id).into_iter().map(str::to_string).collect::<Vec<_>>()
            })
        })
        .collect();
    for (i, h) in clients.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), vec![format!("echo: msg {i}")]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    assert_eq!(max_seen.load(std::sync::atomic::Ordering::Relaxed), 1, "one session, one container");
}

#[test]
fn a_running_agent_container_has_every_hardening_setting() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[], &[]);
    let install = nanoclaw::daemon::install_id(&data);
    let mut c = server.client();
    c.send("h-1", "!sleep 4000 keep the container busy");
    eventually(Duration::from_secs(60), "a running container", || !containers_of(&install).is_empty());
    let id = containers_of(&install).remove(0);
    let json: serde_json::Value = serde_json::from_str(&docker(&["inspect", &id])).unwrap();
    let c0 = &json[0];
    let hc = &c0["HostConfig"];
    let user = c0["Config"]["User"].as_str().unwrap();
    assert!(
        !user.is_empty() && !user.starts_with("0") && !user.starts_with("root"),
        "non-root user, got {user:?}"
    );
    assert_eq!(hc["CapDrop"], serde_json::json!(["ALL"]));
    assert!(hc["SecurityOpt"].as_array().unwrap().iter().any(|s| s == "no-new-privileges"));
    assert_eq!(hc["ReadonlyRootfs"], true);
    assert!(hc["Tmpfs"]["/tmp"].as_str().unwrap().contains("mode=1777"));
    assert_eq!(hc["Memory"], 512 * 1024 * 1024);
    assert_eq!(hc["MemorySwap"], 512 * 1024 * 1024, "no swap");
    assert_eq!(hc["NanoCpus"], 1_000_000_000i64);
    assert_eq!(hc["PidsLimit"], 256);
    assert_eq!(hc["NetworkMode"], "none");
    assert_eq!(hc["Init"], true);
    assert_eq!(c0["Config"]["Labels"]["nanoclaw.install"], install.as_str());
    assert!(c0["Config"]["Labels"]["nanoclaw.session"].as_str().unwrap().starts_with("sess-"));
    let mounts = c0["Mounts"].as_array().unwrap();
    assert!(
        mounts.iter().all(|m| !m["Source"].as_str().unwrap_or("").contains("docker.sock")),
        "no Docker socket inside"
    );
    let by_target = |t: &str| {
        mounts.iter().find(|m| m["Destination"] == t).unwrap_or_else(|| panic!("mount {t}: {mounts:?}"))
    };
    assert_eq!(by_target("/session")["RW"], false, "host-written folder is read-only");
    assert_eq!(by_target("/workspace")["RW"], true);
    assert_eq!(by_target("/workspace/agent")["RW"], true);
    assert_eq!(by_target("/skills")["RW"], false, "the shipped skills are read-only");
    assert_eq!(mounts.len(), 4, "{mounts:?}");
    let frames = c.until(Duration::from_secs(60), |f| f["type"] == "done");
    assert_eq!(replies_to(&frames, "h-1").len(), 1);
}

#[test]
fn an_orphaned_labelled_container_is_removed_at_start() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    // First run builds the image and creates the data dir (so the install id is the real one).
    assert!(Server::start(&data, &[], &[]).stop().success());
    let install = nanoclaw::daemon::install_id(&data);
    let image = docker(&["images", "nanoclaw-agent", "--format", "{{.Repository}}:{{.Tag}}"])
        .lines()
        .next()
        .unwrap()
        .to_string();
    let orphan = docker(&[
        "create",
        "--label",
        &format!("nanoclaw.install={install}"),
        "--label",
        "nanoclaw.session=sess-orphan",
        "--network",
        "none",
        &image,
    ]);
    assert!(!orphan.is_empty());
    docker(&["start", &orphan]);
    assert_eq!(all_containers_of(&install).len(), 1);
    let server = Server::start(&data, &[], &[]);
    eventually(Duration::from_secs(30), "orphan removal", || all_containers_of(&install).is_empty());
    assert!(server.log().contains("orphan"), "{}", server.log());
    drop(server);
}

#[test]
fn host_killed_with_a_pending_message_answers_it_once_after_restart() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let env = [("NANOCLAW_RETRY_BACKOFF_MS", "200")];
    let server = Server::start(&data, &[], &env);
    let mut c = server.client();
    c.send("k-1", "!sleep 3000 survive the crash");
    c.until(Duration::from_secs(10), |f| f["type"] == "accepted");
    // Wait until the container claimed it, then kill the host without any cleanup.
    eventually(Duration::from_secs(60), "the claim", || processing_claims(&data) == 1);
    server.kill();
    let server = Server::start(&data, &[], &env);
    let mut c = server.client();
    let frames = c.until(Duration::from_secs(90), |f| f["type"] == "reply" && f["in_reply_to"] == "k-1");
    let mut all = frames;
    all.extend(c.drain(Duration::from_secs(4)));
    assert_eq!(
        replies_to(&all, "k-1"),
        vec!["echo: !sleep 3000 survive the crash"],
        "answered exactly once: {all:?}"
    );
    let inbound = session_dir(&data).join("host/inbound.db");
    let conn = rusqlite::Connection::open(inbound).unwrap();
    let delivered: i64 =
        conn.query_row("SELECT count(*) FROM delivered WHERE status='delivered'", [], |r| r.get(0)).unwrap();
    assert_eq!(delivered, 1);
}

#[test]
fn a_container_killed_mid_turn_is_retried_and_answered_once() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[], &[("NANOCLAW_RETRY_BACKOFF_MS", "200")]);
    let install = nanoclaw::daemon::install_id(&data);
    let mut c = server.client();
    c.send("x-1", "!sleep 2500 slow work");
    eventually(Duration::from_secs(60), "a running container", || !containers_of(&install).is_empty());
    let first = containers_of(&install).remove(0);
    eventually(Duration::from_secs(30), "the claim", || processing_claims(&data) == 1);
    docker(&["kill", &first]);
    let mut frames = c.until(Duration::from_secs(90), |f| f["type"] == "done" && f["id"] == "x-1");
    frames.extend(c.drain(Duration::from_secs(2)));
    assert_eq!(replies_to(&frames, "x-1"), vec!["echo: !sleep 2500 slow work"]);
    let inbound = session_dir(&data).join("host/inbound.db");
    let tries: i64 = rusqlite::Connection::open(inbound)
        .unwrap()
        .query_row("SELECT tries FROM messages_in WHERE id LIKE '%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tries, 1, "one try counted for the killed container");
}

#[test]
fn after_five_failed_tries_the_message_fails_and_the_user_is_told() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[], &[("NANOCLAW_RETRY_BACKOFF_MS", "50")]);
    let mut c = server.client();
    c.send("f-1", "!exit 3");
    let frames = c.until(Duration::from_secs(120), |f| f["type"] == "failed" && f["id"] == "f-1");
    let told: Vec<&str> =
        frames.iter().filter(|f| f["type"] == "reply").filter_map(|f| f["text"].as_str()).collect();
    assert_eq!(told.len(), 1, "{frames:?}");
    assert!(told[0].contains("failed 5 times"), "{told:?}");
    let inbound = session_dir(&data).join("host/inbound.db");
    let (status, tries): (String, i64) = rusqlite::Connection::open(inbound)
        .unwrap()
        .query_row("SELECT status, tries FROM messages_in", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!((status.as_str(), tries), ("failed", 5));
    // Each crash was logged with the runner's last lines (its container is gone now).
    let log = server.log();
    assert!(
        log.contains("container exited unexpectedly") && log.contains("exit requested mid-turn"),
        "{log}"
    );
    // The service keeps serving.
    c.send("f-2", "next");
    let frames = c.until(Duration::from_secs(60), |f| f["type"] == "done" && f["id"] == "f-2");
    assert_eq!(replies_to(&frames, "f-2"), vec!["echo: next"]);
}

#[test]
fn an_interrupted_chat_stops_its_in_process_service_and_its_containers() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let child = nanoclaw(&data)
        .args(["chat", "-m", "!hang 60000 never answered in time"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(60), "the data dir", || data.exists());
    let install = nanoclaw::daemon::install_id(&data);
    eventually(Duration::from_secs(60), "a running container", || !containers_of(&install).is_empty());
    std::process::Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(all_containers_of(&install).is_empty(), "the in-process service removed its container");
}
