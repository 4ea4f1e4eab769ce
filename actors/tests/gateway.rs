//! The session actor and the `ProviderGateway` port: the proxy is opened for each container with
//! the session's scope, its events reach the owner's chat, and `runner.json` is written. In-memory
//! channels, the real runner in a fake runtime, real SQLite.

use async_trait::async_trait;
use nanoclaw_actors::ports::provider::{GatewayError, ProviderGateway, ProxyEvent, ProxyGuard, ProxyScope};
use nanoclaw_actors::ports::runtime::ContainerSpec;
use nanoclaw_actors::testing::{FakeRuntime, MemoryChannel};
use nanoclaw_actors::{Service, ServiceConfig, store};
use nanoclaw_agent::config::RunnerConfig;
use nanoclaw_protocol::settings::{ImageTier, RunnerProvider, RunnerSettings};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A gateway that records every scope it opens and reports a refused key at once.
#[derive(Debug, Default)]
struct Recording {
    opened: Mutex<Vec<(String, String, String, bool)>>,
}

#[async_trait]
impl ProviderGateway for Recording {
    fn default_provider(&self) -> &str {
        "echo"
    }

    fn resolve(&self, name: &str) -> Result<RunnerProvider, GatewayError> {
        match name {
            "echo" => Ok(RunnerProvider::echo()),
            _ => Err(GatewayError::UnknownProvider { name: name.into(), known: "echo".into() }),
        }
    }

    async fn open(&self, scope: ProxyScope) -> Result<ProxyGuard, GatewayError> {
        self.opened.lock().push((
            scope.session_id.clone(),
            scope.agent_group_id.clone(),
            scope.provider.clone(),
            scope.socket.ends_with("host/proxy.sock"),
        ));
        (scope.on_event)(ProxyEvent::KeyRefused {
            provider: "anth".into(),
            env: "TEST_ENV".into(),
            status: 401,
        });
        Ok(ProxyGuard::none())
    }
}

fn runner_runtime() -> FakeRuntime {
    FakeRuntime::new(Arc::new(|spec: ContainerSpec, cancel: CancellationToken| {
        Box::pin(async move {
            let config = RunnerConfig {
                session_dir: spec.session_host_dir.clone(),
                workspace_dir: spec.session_workspace_dir.clone(),
                skills_dir: spec.skills_dir.clone().unwrap_or_default(),
                generation: spec.generation,
                provider: "echo".into(),
                assistant_name: "Andy".into(),
                poll_ms: 1000,
                max_messages_per_prompt: 10,
                answer_fallback: nanoclaw_agent::tools::system::ANSWER_FALLBACK,
                host_lost_exit: None,
            };
            tokio::select! {
                r = nanoclaw_agent::runner::run(config) => r.map(|c| c as i64).unwrap_or(1),
                _ = cancel.cancelled() => 0,
            }
        })
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_opened_per_container_and_owner_told() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Arc::new(Recording::default());
    let mut config = ServiceConfig::new(dir.path().join("data"), "test");
    config.gateway = gateway.clone();
    config.max_tool_rounds = 7;
    config.timezone = "Europe/Berlin".into();
    let chat = MemoryChannel::new("mem");
    let owner = MemoryChannel::new("cli");
    let service = Service::start(
        config,
        Arc::new(runner_runtime()),
        vec![Arc::new(chat.clone()), Arc::new(owner.clone())],
    )
    .await
    .unwrap();
    service
        .store()
        .call(|c| {
            c.execute_batch(
                "INSERT INTO messaging_groups (id, channel_type, platform_id, name, unknown_sender_policy, created_at) VALUES ('mg-mem', 'mem', 'chat-1', 'mem', 'public', 't');
                 INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, engage_mode, engage_pattern, created_at)
                   VALUES ('w-mem', 'mg-mem', 'ag-main', 'pattern', '.', 't');
                 INSERT INTO agent_destinations (agent_group_id, local_name, target_type, target_id, created_at) VALUES ('ag-main', 'mem', 'channel', 'mg-mem', 't');",
            )
            .map_err(|e| store::StoreError::Invalid(e.to_string()))
        })
        .await
        .unwrap();
    chat.submit("chat-1", "p1", "hello").await.unwrap();
    let replied = chat.wait_for(Duration::from_secs(20), |d| d.iter().any(|m| m.text == "echo: hello")).await;
    assert!(replied, "{:?}", chat.delivered());
    let told = owner
        .wait_for(Duration::from_secs(20), |d| {
            d.iter().any(|m| {
                m.platform_id == store::CLI_PLATFORM_ID && m.text.contains("refused the key in TEST_ENV")
            })
        })
        .await;
    assert!(told, "owner not told: {:?}", owner.delivered());
    let opened = gateway.opened.lock().clone();
    assert_eq!(opened.len(), 1, "{opened:?}");
    let (session_id, group, provider, socket_ok) = opened[0].clone();
    assert_eq!((group.as_str(), provider.as_str(), socket_ok), ("ag-main", "echo", true));
    let info = service.store().call(move |c| store::session_info(c, &session_id)).await.unwrap().unwrap();
    let paths = nanoclaw_actors::session_files::SessionPaths::new(
        &dir.path().join("data"),
        &info.agent_group_folder,
        &info.id,
    );
    let file = paths.host_dir.join(nanoclaw_protocol::layout::RUNNER_SETTINGS);
    let settings: RunnerSettings = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(settings.provider, RunnerProvider::echo());
    assert_eq!(settings.image_tier, ImageTier::Minimal);
    assert_eq!((settings.max_tool_rounds, settings.timezone.as_str()), (7, "Europe/Berlin"));
    service.shutdown(Duration::from_secs(10)).await;
}
