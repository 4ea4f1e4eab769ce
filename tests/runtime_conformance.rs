//! One conformance suite for every `ContainerRuntime` (STYLE rule 5): the in-memory fake, the
//! process runtime and Docker run the same checks, with the real agent runner as the workload.

mod common;

use common::*;
use nanoclaw::runtime::docker::{DockerRuntime, DockerSettings};
use nanoclaw::runtime::process::ProcessRuntime;
use nanoclaw_actors::ports::runtime::{ContainerRuntime, ContainerSpec};
use nanoclaw_actors::session_files::{self, SessionPaths};
use nanoclaw_actors::testing::FakeRuntime;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The container user and folder owner, as `nanoclaw::runtime::from_config` chooses them.
fn owner() -> (u32, u32) {
    let uid = nix::unistd::getuid().as_raw();
    if uid == 0 { (65534, 65534) } else { (uid, nix::unistd::getgid().as_raw()) }
}

fn spec(data: &Path, install: &str, session: &str, extra_env: &[(&str, &str)]) -> ContainerSpec {
    let paths = SessionPaths::new(data, "main", session);
    session_files::prepare(&paths, (nix::unistd::getuid().as_raw() == 0).then(owner)).unwrap();
    let mut env = vec![
        ("NANOCLAW_GENERATION".to_string(), "1".to_string()),
        ("NANOCLAW_SESSION_ID".to_string(), session.to_string()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ContainerSpec {
        name: format!("nanoclaw-{install}-{session}-1"),
        install_id: install.into(),
        session_id: session.into(),
        generation: 1,
        session_host_dir: paths.host_dir.clone(),
        session_workspace_dir: paths.workspace_dir.clone(),
        agent_group_dir: paths.agent_group_dir.clone(),
        skills_dir: None,
        env,
        image_tier: Default::default(),
        image: None,
    }
}

async fn conformance(runtime: Arc<dyn ContainerRuntime>) {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let install = format!("conf{}", std::process::id());
    runtime.prepare().await.unwrap();

    // A long-running workload: listed while it runs; a stop ends it gracefully (exit 0).
    let s = spec(&data, &install, "sess-long", &[]);
    let id = runtime.create(&s).await.unwrap();
    runtime.start(&id).await.unwrap();
    let listed = runtime.list_managed(&install).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, s.name);
    assert_eq!(listed[0].session_id.as_deref(), Some("sess-long"));
    assert!(runtime.list_managed("some-other-install").await.unwrap().iter().all(|c| c.name != s.name));
    // The runner is up once it has created its outbound.db.
    let outbound = s.session_workspace_dir.join("outbound.db");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !outbound.exists() {
        assert!(tokio::time::Instant::now() < deadline, "{}: the workload never started", runtime.name());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runtime.stop(&id, Duration::from_secs(5)).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), runtime.wait(&id))
        .await
        .expect("wait returns after stop")
        .unwrap();
    assert_eq!(status.code, Some(0), "{}: a stopped runner exits 0", runtime.name());
    runtime.stop(&id, Duration::from_secs(1)).await.expect("stopping a stopped container is not an error");
    runtime.remove(&id).await.unwrap();
    assert!(runtime.list_managed(&install).await.unwrap().is_empty());
    runtime.remove(&id).await.expect("removing a removed container is not an error");

    // A workload that ends by itself: its own exit code comes back (the runner exits 2 on a bad
    // configuration).
    let s = spec(&data, &install, "sess-exit", &[("NANOCLAW_POLL_MS", "0")]);
    let id = runtime.create(&s).await.unwrap();
    runtime.start(&id).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), runtime.wait(&id))
        .await
        .expect("wait returns on exit")
        .unwrap();
    assert_eq!(status.code, Some(2), "{}", runtime.name());
    assert!(!status.oom_killed);
    // Output is readable until removal where the runtime keeps it (Docker does).
    let tail = runtime.logs_tail(&id, 20).await.unwrap();
    if runtime.name() == "docker" {
        assert!(tail.contains("NANOCLAW_POLL_MS"), "the runner's error line: {tail:?}");
    }
    runtime.remove(&id).await.unwrap();
    assert!(runtime.list_managed(&install).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_runtime_conforms() {
    let fake = FakeRuntime::new(Arc::new(|spec: ContainerSpec, cancel| {
        Box::pin(async move {
            let mut env: std::collections::HashMap<String, String> = spec.env.iter().cloned().collect();
            env.insert("NANOCLAW_SESSION_DIR".into(), spec.session_host_dir.display().to_string());
            env.insert("NANOCLAW_WORKSPACE_DIR".into(), spec.session_workspace_dir.display().to_string());
            let Ok(config) = nanoclaw_agent::config::RunnerConfig::from_lookup(|k| env.get(k).cloned())
            else {
                return 2;
            };
            tokio::select! {
                r = nanoclaw_agent::runner::run(config) => r.map(i64::from).unwrap_or(1),
                _ = cancel.cancelled() => 0,
            }
        })
    }));
    conformance(Arc::new(fake)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_runtime_conforms() {
    conformance(Arc::new(ProcessRuntime::new(agent_bin()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_runtime_conforms() {
    if !docker_available() {
        return;
    }
    let settings = DockerSettings {
        image: "nanoclaw-agent".into(),
        agent_binary: agent_bin(),
        tag_cache: None,
        memory_bytes: 256 * 1024 * 1024,
        nano_cpus: 1_000_000_000,
        pids_limit: 64,
        user: owner(),
        nofile: 1024,
        standard: Default::default(),
    };
    conformance(Arc::new(DockerRuntime::connect(settings).await.unwrap())).await;
}

/// Containers cannot fill the host (issue part 11): every container Docker creates has size-capped
/// logs and a `nofile` limit, on top of the hardening — read back from the daemon, and the limit
/// as the kernel applies it to the running container's processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_containers_have_capped_logs_a_nofile_limit_and_the_hardening() {
    use nanoclaw::runtime::docker::{LOG_DRIVER, LOG_MAX_FILES, LOG_MAX_SIZE};
    if !docker_available() {
        return;
    }
    let settings = DockerSettings {
        image: "nanoclaw-agent".into(),
        agent_binary: agent_bin(),
        tag_cache: None,
        memory_bytes: 256 * 1024 * 1024,
        nano_cpus: 1_000_000_000,
        pids_limit: 64,
        user: owner(),
        nofile: 2048,
        standard: Default::default(),
    };
    let runtime = DockerRuntime::connect(settings).await.unwrap();
    runtime.prepare().await.unwrap();
    let dir = short_tempdir();
    let install = format!("limits{}", std::process::id());
    let s = spec(&dir.path().join("data"), &install, "sess-limits", &[]);
    let id = runtime.create(&s).await.unwrap();
    runtime.start(&id).await.unwrap();
    let info = runtime
        .client()
        .inspect_container(&id, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .unwrap();
    let host = info.host_config.clone().unwrap();
    let log = host.log_config.clone().unwrap();
    assert_eq!(log.typ.as_deref(), Some(LOG_DRIVER));
    let log_options = log.config.unwrap_or_default();
    assert_eq!(log_options.get("max-size").map(String::as_str), Some(LOG_MAX_SIZE), "{log_options:?}");
    assert_eq!(log_options.get("max-file").map(String::as_str), Some(LOG_MAX_FILES), "{log_options:?}");
    let ulimits = host.ulimits.clone().unwrap_or_default();
    let nofile = ulimits.iter().find(|u| u.name.as_deref() == Some("nofile")).expect("a nofile ulimit");
    assert_eq!((nofile.soft, nofile.hard), (Some(2048), Some(2048)));
    // The existing hardening stays.
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert!(host.security_opt.unwrap_or_default().iter().any(|o| o.starts_with("no-new-privileges")));
    assert_eq!(host.pids_limit, Some(64));
    assert_eq!(host.memory, Some(256 * 1024 * 1024));
    // What the kernel enforces on the container's first process.
    let pid = info.state.and_then(|st| st.pid).filter(|p| *p > 0).expect("a running container has a pid");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(open_files.split_whitespace().collect::<Vec<_>>()[3..5], ["2048", "2048"], "{open_files}");
    runtime.stop(&id, Duration::from_secs(5)).await.unwrap();
    runtime.remove(&id).await.unwrap();
}

/// The image tag is remembered in the data dir, so a start does not rebuild the context to learn
/// it: a remembered tag whose image exists is used as is (shown by pointing the cache at a second
/// name of the same image), and one whose image is gone is learned again and the cache repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_runtime_remembers_its_image_tag() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let cache = dir.path().join("image-tag.json");
    let settings = DockerSettings {
        image: "nanoclaw-agent".into(),
        agent_binary: agent_bin(),
        tag_cache: Some(cache.clone()),
        memory_bytes: 256 * 1024 * 1024,
        nano_cpus: 1_000_000_000,
        pids_limit: 64,
        user: owner(),
        nofile: 1024,
        standard: Default::default(),
    };
    let runtime = DockerRuntime::connect(settings).await.unwrap();
    let learned = runtime.ensure_image().await.unwrap();
    let tag = learned.rsplit_once(':').unwrap().1.to_string();
    let text = std::fs::read_to_string(&cache).expect("the tag is remembered");
    assert!(text.contains(&tag), "{text}");

    // A second name for the same image, only reachable through the cache.
    let alias_tag = format!("{:012x}", u64::from(std::process::id()) << 8);
    let alias = format!("nanoclaw-agent:{alias_tag}");
    let tag_options = bollard::query_parameters::TagImageOptionsBuilder::default()
        .repo("nanoclaw-agent")
        .tag(&alias_tag)
        .build();
    runtime.client().tag_image(&learned, Some(tag_options)).await.unwrap();
    std::fs::write(&cache, text.replace(&tag, &alias_tag)).unwrap();
    let remembered = runtime.ensure_image().await;
    let removed = runtime
        .client()
        .remove_image(&alias, None::<bollard::query_parameters::RemoveImageOptions>, None)
        .await;
    assert_eq!(remembered.unwrap(), alias, "a remembered tag whose image exists is used without a rebuild");
    removed.unwrap();

    // The alias is gone now: the cache names a missing image, so the tag is learned again.
    assert_eq!(runtime.ensure_image().await.unwrap(), learned);
    assert!(std::fs::read_to_string(&cache).unwrap().contains(&tag), "the cache is repaired");
}
