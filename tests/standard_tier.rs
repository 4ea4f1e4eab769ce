//! The `standard` image tier (issue 6 part 5) on the real Docker daemon: built by the service
//! with debootstrap from Debian's mirror, reused by its input tag, and run with the same
//! hardening as `minimal` — with a shell and the tools `run_command` needs inside.
//!
//! The first run on a host builds the image (minutes; progress lines on stderr); later runs find
//! it. Needs root and `debootstrap` (`.ci/run`: `command -v debootstrap || apt-get install -y
//! debootstrap`) and the Debian mirror of the host's apt sources.

mod common;

use common::*;
use nanoclaw::runtime::docker::{DockerRuntime, DockerSettings};
use nanoclaw_actors::ports::runtime::{ContainerRuntime, ContainerSpec};
use nanoclaw_actors::session_files::{self, SessionPaths};
use nanoclaw_protocol::settings::ImageTier;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The container user, as `nanoclaw::runtime::from_config` chooses it.
fn owner() -> (u32, u32) {
    let uid = nix::unistd::getuid().as_raw();
    if uid == 0 { (65534, 65534) } else { (uid, nix::unistd::getgid().as_raw()) }
}

fn settings() -> DockerSettings {
    DockerSettings {
        image: "nanoclaw-agent".into(),
        agent_binary: agent_bin(),
        tag_cache: None,
        memory_bytes: 512 * 1024 * 1024,
        nano_cpus: 1_000_000_000,
        pids_limit: 128,
        user: owner(),
        nofile: 1024,
        standard: Default::default(),
    }
}

fn spec(data: &Path, install: &str, session: &str, tier: ImageTier) -> ContainerSpec {
    let paths = SessionPaths::new(data, "main", session);
    session_files::prepare(&paths, (nix::unistd::getuid().as_raw() == 0).then(owner)).unwrap();
    ContainerSpec {
        name: format!("nanoclaw-{install}-{session}-1"),
        install_id: install.into(),
        session_id: session.into(),
        generation: 1,
        session_host_dir: paths.host_dir.clone(),
        session_workspace_dir: paths.workspace_dir.clone(),
        agent_group_dir: paths.agent_group_dir.clone(),
        skills_dir: None,
        env: vec![
            ("NANOCLAW_GENERATION".to_string(), "1".to_string()),
            ("NANOCLAW_SESSION_ID".to_string(), session.to_string()),
        ],
        image_tier: tier,
        image: None,
    }
}

/// Image id and size of `image_ref`.
async fn image_id_and_size(rt: &DockerRuntime, image_ref: &str) -> (String, i64) {
    let info = rt.client().inspect_image(image_ref).await.unwrap();
    (info.id.unwrap(), info.size.unwrap_or(0))
}

/// `docker exec` in the running container (same user, network and root fs as its process):
/// exit code and output.
fn exec(id: &str, script: &str) -> (i32, String) {
    let out = Command::new("docker").args(["exec", id, "bash", "-lc", script]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Built once, then reused: a second runtime (a restarted service) finds the image by its input
/// tag with no rebuild — the same image id, in well under the build's minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_image_builds_once_and_is_reused() {
    if !docker_available() {
        return;
    }
    let first = DockerRuntime::connect(settings()).await.unwrap();
    let t0 = Instant::now();
    first.ensure_tier(ImageTier::Standard).await.unwrap();
    let built_in = t0.elapsed();
    let image_ref = first.standard_image_ref().expect("ensured");
    assert!(image_ref.starts_with("nanoclaw-agent:std-"), "{image_ref}");
    let (id, size) = image_id_and_size(&first, &image_ref).await;
    eprintln!("standard image {image_ref}: ensured in {built_in:?}, {} MB", size >> 20);
    // The image carries the same entry point and user as `minimal`, and the tier label.
    let config = first.client().inspect_image(&image_ref).await.unwrap().config.unwrap();
    assert_eq!(config.user.as_deref(), Some("65534:65534"));
    assert_eq!(config.entrypoint, Some(vec!["/usr/local/bin/nanoclaw-agent".to_string()]));
    assert_eq!(config.labels.unwrap_or_default().get("nanoclaw.tier").map(String::as_str), Some("standard"));

    // Same runtime: remembered in memory.
    let t1 = Instant::now();
    first.ensure_tier(ImageTier::Standard).await.unwrap();
    assert!(t1.elapsed() < Duration::from_millis(100), "{:?}", t1.elapsed());

    // A new runtime: hashes its inputs, finds the tag, builds nothing.
    let second = DockerRuntime::connect(settings()).await.unwrap();
    let t2 = Instant::now();
    second.ensure_tier(ImageTier::Standard).await.unwrap();
    let reused_in = t2.elapsed();
    eprintln!("reused in {reused_in:?}");
    assert!(reused_in < Duration::from_secs(5), "no rebuild: {reused_in:?}");
    assert_eq!(second.standard_image_ref().as_deref(), Some(image_ref.as_str()));
    assert_eq!(image_id_and_size(&second, &image_ref).await.0, id, "the same image, not a rebuild");

    // `minimal` needs no build of its own through this path.
    second.ensure_tier(ImageTier::Minimal).await.unwrap();
}

/// A `standard` container: the runner runs in it, and it keeps every hardening of `minimal` —
/// no network, not root, read-only root fs — while bash, git, python3, ripgrep and jq work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_is_hardened_and_has_the_tools() {
    if !docker_available() {
        return;
    }
    let runtime = DockerRuntime::connect(settings()).await.unwrap();
    runtime.prepare().await.unwrap();
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let install = format!("std{}", std::process::id());

    // The default tier still picks the minimal image.
    let minimal = spec(&data, &install, "sess-min", ImageTier::default());
    let min_id = runtime.create(&minimal).await.unwrap();
    let min_info = runtime
        .client()
        .inspect_container(&min_id, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(min_info.config.unwrap().image, runtime.image_ref());
    runtime.remove(&min_id).await.unwrap();

    // `create` of a standard spec ensures the image itself (lazily).
    let s = spec(&data, &install, "sess-std", ImageTier::Standard);
    let id = runtime.create(&s).await.unwrap();
    runtime.start(&id).await.unwrap();
    let info = runtime
        .client()
        .inspect_container(&id, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(info.config.as_ref().unwrap().image, runtime.standard_image_ref());
    let (uid, gid) = owner();
    assert_eq!(info.config.as_ref().unwrap().user.as_deref(), Some(format!("{uid}:{gid}").as_str()));
    let host = info.host_config.unwrap();
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(host.security_opt.unwrap_or_default().iter().any(|o| o.starts_with("no-new-privileges")));

    // The runner runs there: it creates its outbound.db.
    let outbound = s.session_workspace_dir.join("outbound.db");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !outbound.exists() {
        let logs = runtime.logs_tail(&id, 20).await.unwrap_or_default();
        assert!(Instant::now() < deadline, "the runner never started in the standard image: {logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (code, out) = exec(&id, "git --version && python3 --version && rg --version && jq --version");
    assert_eq!(code, 0, "{out}");
    for tool in ["git version", "Python 3", "ripgrep", "jq-"] {
        assert!(out.contains(tool), "{tool}: {out}");
    }
    let (code, out) = exec(&id, "id -u");
    assert_eq!((code, out.trim()), (0, uid.to_string().as_str()), "not root");
    assert_ne!(uid, 0);
    let (code, out) = exec(&id, "touch /x");
    assert_ne!(code, 0, "the root fs is read-only: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let (code, out) = exec(&id, "curl -sS --max-time 5 http://deb.debian.org/ >/dev/null");
    assert_ne!(code, 0, "no network: {out}");
    // The writable places work: the workspace (git) and /tmp.
    let (code, out) = exec(
        &id,
        "cd /workspace && mkdir -p repo && cd repo && git init -q && git status && echo hi > /tmp/t && cat /tmp/t",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No commits yet") && out.contains("hi"), "{out}");

    runtime.stop(&id, Duration::from_secs(5)).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), runtime.wait(&id)).await.unwrap().unwrap();
    assert_eq!(status.code, Some(0), "the runner stops cleanly");
    runtime.remove(&id).await.unwrap();
}

/// Starts the real binary with the main group on the `standard` tier (set before the first
/// message: the host reads container_configs when it spawns the container).
fn standard_server(data: &Path) -> Server {
    let server = Server::start(data, &[], &[]);
    let changed = store_db(data)
        .execute("UPDATE container_configs SET image_tier = 'standard' WHERE agent_group_id = 'ag-main'", [])
        .unwrap();
    assert_eq!(changed, 1);
    server
}

/// What the host tells the chat when the agent's image cannot be prepared.
const IMAGE_FAILED: &str = "image could not be prepared";

/// Frames until `id` is done; panics at once (not after the whole budget) when the chat is told
/// the image could not be prepared, with that note: a host that cannot build the image (no
/// debootstrap, no mirror) fails these tests in seconds, naming why.
fn until_done(c: &mut Client, id: &str, budget: Duration) -> Vec<serde_json::Value> {
    let frames = c.until(budget, |f| {
        (f["type"] == "done" && f["id"] == id)
            || (f["type"] == "reply" && f["text"].as_str().is_some_and(|t| t.contains(IMAGE_FAILED)))
    });
    let last = frames.last().unwrap();
    assert_ne!(last["type"], "reply", "the standard image could not be built: {}", last["text"]);
    frames
}

/// An image that cannot be built (a Debian mirror that refuses connections) is told to the chat
/// once, naming the cause; the message is kept (not failed) while the host retries with backoff.
#[test]
fn an_image_that_cannot_be_built_is_told_once() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    // Port 9 (discard) on loopback: nothing listens, debootstrap fails in seconds. The mirror is
    // an input of the image tag, so this never touches the real standard image.
    let config = config_file(dir.path(), "[container]\ndebian_mirror = \"http://127.0.0.1:9/debian\"\n");
    let server = Server::start(&data, &["--config", config.to_str().unwrap()], &[]);
    let changed = store_db(&data)
        .execute("UPDATE container_configs SET image_tier = 'standard' WHERE agent_group_id = 'ag-main'", [])
        .unwrap();
    assert_eq!(changed, 1);
    let mut c = server.client();
    c.send("m-0", "hello");
    // Another test may hold the host-wide build lock for a real build (minutes).
    let frames = c.until(Duration::from_secs(600), |f| {
        f["type"] == "reply" && f["text"].as_str().is_some_and(|t| t.contains(IMAGE_FAILED))
    });
    let note = frames.last().unwrap()["text"].as_str().unwrap().to_string();
    assert!(note.contains("`standard`") && note.contains("debootstrap failed"), "{note}");
    assert!(note.contains("Your message is kept"), "{note}");
    // Retries (1 s, 2 s, 4 s … apart) fail again without a second note, and the message is not
    // failed: no "could not process" reply, no done for it. (A retry may wait minutes for the
    // build lock while another test builds the real image.)
    let mut later = vec![];
    let deadline = Instant::now() + Duration::from_secs(600);
    while server.log().matches("agent image unavailable").count() < 2 {
        assert!(Instant::now() < deadline, "never retried: {}", server.log());
        later.extend(c.drain(Duration::from_secs(1)));
    }
    later.extend(c.drain(Duration::from_secs(2)));
    let replies: Vec<&str> =
        later.iter().filter(|f| f["type"] == "reply").filter_map(|f| f["text"].as_str()).collect();
    assert!(replies.is_empty(), "{replies:?}");
    assert!(!later.iter().any(|f| f["type"] == "done" && f["id"] == "m-0"), "{later:?}");
    assert!(server.stop().success());
}

/// `run_command` through the real binary: the echo provider calls it from a `tool` line, and git
/// (in the `standard` image) answers in the reply. The first build takes minutes: 10 min budget.
#[test]
fn run_command_git() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = standard_server(&data);
    let mut c = server.client();
    c.send("m-0", r#"tool run_command {"command":"git init -q && git status"}"#);
    let frames = until_done(&mut c, "m-0", Duration::from_secs(600));
    let replies = replies_to(&frames, "m-0");
    assert_eq!(replies.len(), 1, "{frames:?}");
    assert!(replies[0].starts_with("tool run_command: exit code 0"), "{replies:?}");
    assert!(replies[0].contains("No commits yet") && replies[0].contains("On branch"), "{replies:?}");
    let install = nanoclaw::daemon::install_id(&data);
    assert!(server.stop().success());
    assert!(all_containers_of(&install).is_empty(), "shutdown removes containers");
}

/// A command past its `timeout_s` is killed with its whole process group: the reply comes within
/// seconds and says so, and no `sleep` is left in the container.
#[test]
fn run_command_timeout_kills_group() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = standard_server(&data);
    let mut c = server.client();
    // A first turn starts the container (and builds the image if needed) outside the clock.
    c.send("m-0", "hello");
    let frames = until_done(&mut c, "m-0", Duration::from_secs(600));
    assert_eq!(replies_to(&frames, "m-0"), vec!["echo: hello"], "{frames:?}");

    let started = Instant::now();
    c.send("m-1", r#"tool run_command {"command":"sleep 600 & sleep 600","timeout_s":2}"#);
    let frames = c.until(Duration::from_secs(15), |f| f["type"] == "done" && f["id"] == "m-1");
    let took = started.elapsed();
    let replies = replies_to(&frames, "m-1");
    assert_eq!(replies.len(), 1, "{frames:?}");
    assert!(
        replies[0].contains("error: killed after") && replies[0].contains("timeout_s = 2"),
        "{replies:?}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    let install = nanoclaw::daemon::install_id(&data);
    let containers = containers_of(&install);
    assert_eq!(containers.len(), 1, "{containers:?}");
    // Both sleeps (the background one too) were in the killed group.
    let top = docker(&["top", &containers[0]]);
    assert!(!top.contains("sleep"), "{top}");
    assert!(server.stop().success());
    assert!(all_containers_of(&install).is_empty(), "shutdown removes containers");
}
