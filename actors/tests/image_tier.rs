//! The session actor carries the agent group's `container_configs.image_tier` to the runtime: it
//! ensures the tier before a spawn (a failure is retried with the spawn backoff, no container is
//! created meanwhile) and puts it in the container spec. The ensure runs off the session actor's
//! mailbox: while a (minutes-long) build blocks, the actor answers Status, Kill, Enqueue and
//! shutdown.

use async_trait::async_trait;
use nanoclaw_actors::actors::session::Then;
use nanoclaw_actors::ports::runtime::{
    ContainerRuntime, ContainerSpec, ExitStatus, ManagedContainer, RuntimeError,
};
use nanoclaw_actors::testing::{FakeRuntime, MemoryChannel};
use nanoclaw_actors::{Service, ServiceConfig};
use nanoclaw_protocol::settings::ImageTier;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A fake runtime that records `ensure_tier` calls and fails the first `fail_first` of them.
/// With a `gate`, each ensure first waits for a permit of it (a build that takes until released);
/// `dropped` counts ensures abandoned before they finished (their future was dropped).
struct TierRuntime {
    inner: FakeRuntime,
    ensured: Mutex<Vec<ImageTier>>,
    fail_first: Mutex<usize>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    dropped: Arc<AtomicUsize>,
}

impl TierRuntime {
    fn new(inner: FakeRuntime, fail_first: usize, gate: Option<Arc<tokio::sync::Semaphore>>) -> Self {
        Self {
            inner,
            ensured: Mutex::default(),
            fail_first: Mutex::new(fail_first),
            gate,
            dropped: Arc::default(),
        }
    }
}

/// Counts a drop that happens before `finished` is set: the ensure was aborted.
struct CountAbort {
    dropped: Arc<AtomicUsize>,
    finished: bool,
}

impl Drop for CountAbort {
    fn drop(&mut self) {
        if !self.finished {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
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
        let mut guard = CountAbort { dropped: self.dropped.clone(), finished: false };
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        guard.finished = true;
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
    let (inner, specs) = recording_runtime();
    let runtime = Arc::new(TierRuntime::new(inner.clone(), 1, None));
    let service = start_standard(dir.path(), runtime.clone(), &channel).await;
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

/// A fake runtime whose containers run until stopped, recording each spec's tier.
fn recording_runtime() -> (FakeRuntime, Arc<Mutex<Vec<ImageTier>>>) {
    let specs: Arc<Mutex<Vec<ImageTier>>> = Arc::default();
    let seen = specs.clone();
    let inner = FakeRuntime::new(Arc::new(move |spec: ContainerSpec, cancel: CancellationToken| {
        seen.lock().push(spec.image_tier);
        Box::pin(async move {
            cancel.cancelled().await;
            0
        })
    }));
    (inner, specs)
}

/// Starts the service with the main group on the `standard` tier, wired to `channel`'s chat-1.
async fn start_standard(
    dir: &std::path::Path,
    runtime: Arc<TierRuntime>,
    channel: &MemoryChannel,
) -> Service {
    let service = Service::start(
        ServiceConfig::new(dir.join("data"), "test"),
        runtime,
        vec![Arc::new(channel.clone())],
    )
    .await
    .unwrap();
    service
        .store()
        .call(|c| {
            c.execute_batch(
                "UPDATE container_configs SET image_tier = 'standard' WHERE agent_group_id = 'ag-main';
                 INSERT INTO messaging_groups (id, channel_type, platform_id, name, unknown_sender_policy, created_at) VALUES ('mg-mem', 'mem', 'chat-1', 'mem', 'public', 't');
                 INSERT INTO messaging_group_agents (id, messaging_group_id, agent_group_id, engage_mode, engage_pattern, created_at)
                   VALUES ('w-mem', 'mg-mem', 'ag-main', 'pattern', '.', 't');
                 INSERT INTO agent_destinations (agent_group_id, local_name, target_type, target_id, created_at) VALUES ('ag-main', 'mem', 'channel', 'mg-mem', 't');",
            )
            .map_err(|e| nanoclaw_actors::store::StoreError::Invalid(e.to_string()))
        })
        .await
        .unwrap();
    service
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_tier_builds_the_session_answers_status_kill_and_enqueue_then_spawns() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let (inner, specs) = recording_runtime();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let runtime = Arc::new(TierRuntime::new(inner.clone(), 0, Some(gate.clone())));
    let service = start_standard(dir.path(), runtime.clone(), &channel).await;
    channel.submit("chat-1", "p-1", "hello").await.unwrap();
    eventually(Duration::from_secs(10), "the ensure", || !runtime.ensured.lock().is_empty()).await;

    // The build blocks; the actor still answers (Status has a 5 s timeout: a blocked mailbox
    // would make the list empty).
    let statuses = service.session_statuses().await;
    assert_eq!(statuses.len(), 1, "the session actor answers Status during the build");
    assert_eq!(statuses[0].container_generation, None);
    let sid = statuses[0].session_id.clone();
    // Enqueue through the router reaches it too: the second message is stored.
    channel.submit("chat-1", "p-2", "again").await.unwrap();
    let mut pending = 0;
    for _ in 0..250 {
        pending = service.session_statuses().await.first().map_or(-1, |s| s.pending);
        if pending == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pending, 2, "both messages are pending while the image builds");
    // A Kill with nothing running is accepted (and keeps the wanted spawn).
    service.kill_container(&sid, "test", Then::Respawn).await.unwrap();
    assert_eq!(inner.created(), 0, "no container before the image is ready");

    // Released: the spawn continues with the tier, once.
    gate.add_permits(1);
    eventually(Duration::from_secs(10), "a container", || !specs.lock().is_empty()).await;
    assert_eq!(*specs.lock(), vec![ImageTier::Standard]);
    assert_eq!(runtime.ensured.lock().len(), 1, "one ensure for one spawn");
    service.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_tier_build_is_prompt_and_abandons_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let channel = MemoryChannel::new("mem");
    let (inner, _specs) = recording_runtime();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let runtime = Arc::new(TierRuntime::new(inner.clone(), 0, Some(gate)));
    let service = start_standard(dir.path(), runtime.clone(), &channel).await;
    channel.submit("chat-1", "p-1", "hello").await.unwrap();
    eventually(Duration::from_secs(10), "the ensure", || !runtime.ensured.lock().is_empty()).await;

    let started = std::time::Instant::now();
    service.shutdown(Duration::from_secs(30)).await;
    let took = started.elapsed();
    // Blocked on the mailbox, the stop would wait the whole 30 s deadline.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_eq!(runtime.dropped.load(Ordering::SeqCst), 1, "the build's future was dropped");
    assert_eq!(inner.created(), 0);
}
