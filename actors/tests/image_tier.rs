//! The session actor carries the agent group's `container_configs.image_tier` to the runtime: it
//! ensures the tier before a spawn (a failure is retried with the spawn backoff, no container is
//! created meanwhile) and puts it in the container spec.

use async_trait::async_trait;
use nanoclaw_actors::ports::runtime::{
    ContainerRuntime, ContainerSpec, ExitStatus, ManagedContainer, RuntimeError,
};
use nanoclaw_actors::testing::{FakeRuntime, MemoryChannel};
use nanoclaw_actors::{Service, ServiceConfig};
use nanoclaw_protocol::settings::ImageTier;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A fake runtime that records `ensure_tier` calls and fails the first `fail_first` of them.
struct TierRuntime {
    inner: FakeRuntime,
    ensured: Mutex<Vec<ImageTier>>,
    fail_first: Mutex<usize>,
}

#[async_trait]
impl ContainerRuntime for TierRuntime {
    fn name(&self) -> &'static str {
        "tier-fake"
    }
    async fn prepare(&self) -> Result<(), RuntimeError> {
        self.inner.prepare().await
    }
    async fn ensure_tier(&self, tier: ImageTier) -> Result<(), RuntimeError> {
        self.ensured.lock().push(tier);
        let mut left = self.fail_first.lock();
        if *left > 0 {
            *left -= 1;
            return Err(RuntimeError::Image(
                "the standard image needs debootstrap: apt-get install debootstrap".into(),
            ));
        }
        Ok(())
    }
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.inner.create(spec).await
    }
    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.start(id).await
    }
    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        self.inner.wait(id).await
    }
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.inner.stop(id, grace).await
    }
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.remove(id).await
    }
    async fn list_managed(&self, install_id: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
        self.inner.list_managed(install_id).await
    }
}

async fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_tier_is_ensured_before_the_spawn_and_reaches_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let specs: Arc<Mutex<Vec<ImageTier>>> = Arc::default();
    let seen = specs.clone();
    let inner = FakeRuntime::new(Arc::new(move |spec: ContainerSpec, cancel: CancellationToken| {
        seen.lock().push(spec.image_tier);
        Box::pin(async move {
            cancel.cancelled().await;
            0
        })
    }));
    let runtime =
        Arc::new(TierRuntime { inner: inner.clone(), ensured: Mutex::default(), fail_first: Mutex::new(1) });
    let service = Service::start(
        ServiceConfig::new(dir.path().join("data"), "test"),
        runtime.clone(),
        vec![Arc::new(channel.clone())],
    )
    .await
    .unwrap();
    service
        .store()
        .call(|c| {
            c.execute_batch(
                "UPDATE container_configs SET image_tier = 'standard' WHERE agent_group_id = 'ag-main';
                 INSERT INTO messaging_groups (id, channel_type, platform_id, name, created_at) VALUES ('mg-mem', 'mem', 'chat-1', 'mem', 't');
                 INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, engage_mode, engage_pattern, created_at)
                   VALUES ('w-mem', 'mg-mem', 'ag-main', 'pattern', '.', 't');
                 INSERT INTO agent_destinations (agent_group_id, local_name, target_type, target_id, created_at) VALUES ('ag-main', 'mem', 'channel', 'mg-mem', 't');",
            )
            .map_err(|e| nanoclaw_actors::store::StoreError::Invalid(e.to_string()))
        })
        .await
        .unwrap();
    channel.submit("chat-1", "p-1", "hello").await.unwrap();

    // The first ensure fails: no container is created for it.
    eventually(Duration::from_secs(10), "the first ensure", || !runtime.ensured.lock().is_empty()).await;
    assert_eq!(inner.created(), 0, "no container while the image is unavailable");
    // The spawn backoff (1 s) retries; the second ensure succeeds and the container gets the tier.
    eventually(Duration::from_secs(10), "a container", || !specs.lock().is_empty()).await;
    assert_eq!(*specs.lock(), vec![ImageTier::Standard]);
    let ensured = runtime.ensured.lock().clone();
    assert!(ensured.len() >= 2 && ensured.iter().all(|t| *t == ImageTier::Standard), "{ensured:?}");
    service.shutdown(Duration::from_secs(20)).await;
}
