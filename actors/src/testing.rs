//! In-memory fakes of the ports, for tests and examples (feature `testing`; STYLE rule 5).
//!
//! - [`FakeRuntime`]: a container is a tokio task running an entrypoint the test supplies (for
//!   example the real agent runner with host paths). It tracks, per session, how many containers
//!   were alive at once — the quantity DESIGN §5 invariant 4 bounds.
//! - [`MemoryChannel`]: records deliveries and notices, lets a test submit messages, and can be told
//!   to fail the next deliveries.

use crate::ports::channel::{
    ChannelAdapter, ChannelError, DeliveryError, InboundAck, InboundEvent, InboundSink, Notice,
    OutboundMessage, SubmitError,
};
use crate::ports::runtime::{ContainerRuntime, ContainerSpec, ExitStatus, ManagedContainer, RuntimeError};
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a fake container runs: gets the spec and a token cancelled on stop; returns the exit code.
pub type Entrypoint = Arc<dyn Fn(ContainerSpec, CancellationToken) -> BoxFuture<'static, i64> + Send + Sync>;

struct FakeContainer {
    spec: ContainerSpec,
    /// Cancelled by `stop`: the entrypoint should end and return its exit code (SIGTERM).
    cancel: CancellationToken,
    /// Cancelled by `crash`, `remove` or the end of a stop's grace: the entrypoint is abandoned
    /// (SIGKILL, exit 137 unless `crash` injected a code).
    kill: CancellationToken,
    exit: watch::Receiver<Option<i64>>,
    exit_tx: Option<watch::Sender<Option<i64>>>,
    started: bool,
}

#[derive(Default)]
struct FakeState {
    /// Exit codes injected by `crash`, by container name.
    injected: Arc<Mutex<HashMap<String, i64>>>,
    containers: HashMap<String, FakeContainer>,
    next_id: u64,
    running_per_session: HashMap<String, usize>,
    max_running_per_session: HashMap<String, usize>,
    max_running_total: usize,
    created: usize,
}

/// An in-memory [`ContainerRuntime`].
#[derive(Clone)]
pub struct FakeRuntime {
    entrypoint: Entrypoint,
    state: Arc<Mutex<FakeState>>,
}

impl FakeRuntime {
    /// A runtime whose containers run `entrypoint`.
    pub fn new(entrypoint: Entrypoint) -> Self {
        Self { entrypoint, state: Default::default() }
    }

    /// A runtime whose containers idle until stopped, then exit 0.
    pub fn idle() -> Self {
        Self::new(Arc::new(|_spec, cancel| {
            Box::pin(async move {
                cancel.cancelled().await;
                0
            })
        }))
    }

    /// The most containers of `session_id` that were running at the same time.
    pub fn max_concurrent(&self, session_id: &str) -> usize {
        self.state.lock().max_running_per_session.get(session_id).copied().unwrap_or(0)
    }

    /// The most containers of all sessions that were running at the same time.
    pub fn max_concurrent_total(&self) -> usize {
        self.state.lock().max_running_total
    }

    /// Containers created so far.
    pub fn created(&self) -> usize {
        self.state.lock().created
    }

    /// Containers currently running.
    pub fn running(&self) -> usize {
        self.state.lock().running_per_session.values().sum()
    }

    /// Makes a running container exit with `code` at once, as a crash would.
    pub fn crash(&self, session_id: &str, code: i64) -> bool {
        let st = self.state.lock();
        for c in st.containers.values() {
            if c.spec.session_id == session_id && c.started && c.exit.borrow().is_none() {
                st.injected.lock().insert(c.spec.name.clone(), code);
                c.kill.cancel();
                return true;
            }
        }
        false
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn prepare(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let mut st = self.state.lock();
        st.next_id += 1;
        st.created += 1;
        let id = format!("fake-{}", st.next_id);
        let (tx, rx) = watch::channel(None);
        st.containers.insert(
            id.clone(),
            FakeContainer {
                spec: spec.clone(),
                cancel: CancellationToken::new(),
                kill: CancellationToken::new(),
                exit: rx,
                exit_tx: Some(tx),
                started: false,
            },
        );
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let (spec, cancel, kill, tx) = {
            let mut st = self.state.lock();
            let c = st.containers.get_mut(id).ok_or_else(|| RuntimeError::Operation {
                op: "start",
                container: id.into(),
                message: "no such container".into(),
            })?;
            c.started = true;
            let out = (c.spec.clone(), c.cancel.clone(), c.kill.clone(), c.exit_tx.take());
            let session = out.0.session_id.clone();
            let n = st.running_per_session.entry(session.clone()).or_insert(0);
            *n += 1;
            let now = *n;
            let max = st.max_running_per_session.entry(session).or_insert(0);
            *max = (*max).max(now);
            let total: usize = st.running_per_session.values().sum();
            st.max_running_total = st.max_running_total.max(total);
            out
        };
        let fut = (self.entrypoint)(spec.clone(), cancel.clone());
        let state = self.state.clone();
        let injected = self.state.lock().injected.clone();
        tokio::spawn(async move {
            let code = tokio::select! {
                code = fut => code,
                _ = kill.cancelled() => 137,
            };
            // A code injected by `crash` wins over the abandoned entrypoint's.
            let code = injected.lock().remove(&spec.name).unwrap_or(code);
            if let Some(tx) = tx {
                tx.send_replace(Some(code));
            }
            let mut st = state.lock();
            if let Some(n) = st.running_per_session.get_mut(&spec.session_id) {
                *n = n.saturating_sub(1);
            }
        });
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        let mut rx = {
            let st = self.state.lock();
            st.containers.get(id).map(|c| c.exit.clone()).ok_or_else(|| RuntimeError::Operation {
                op: "wait",
                container: id.into(),
                message: "no such container".into(),
            })?
        };
        let code = rx.wait_for(|c| c.is_some()).await.map(|c| *c).unwrap_or(Some(137));
        Ok(ExitStatus { code, oom_killed: false })
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        if let Some(c) = self.state.lock().containers.get(id) {
            c.cancel.cancel();
            let kill = c.kill.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                kill.cancel();
            });
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(c) = self.state.lock().containers.remove(id) {
            c.kill.cancel();
        }
        Ok(())
    }

    async fn list_managed(&self, install_id: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let st = self.state.lock();
        Ok(st
            .containers
            .iter()
            .filter(|(_, c)| c.spec.install_id == install_id)
            .map(|(id, c)| ManagedContainer {
                id: id.clone(),
                name: c.spec.name.clone(),
                session_id: Some(c.spec.session_id.clone()),
                running: c.started && c.exit.borrow().is_none(),
            })
            .collect())
    }
}

#[derive(Default)]
struct MemoryState {
    sink: Option<InboundSink>,
    delivered: Vec<OutboundMessage>,
    notices: Vec<Notice>,
    fail_next: Vec<DeliveryError>,
    starts: usize,
}

/// An in-memory [`ChannelAdapter`] with channel type chosen at construction.
#[derive(Clone)]
pub struct MemoryChannel {
    channel_type: String,
    liveness: Option<Duration>,
    state: Arc<Mutex<MemoryState>>,
    changed: Arc<tokio::sync::Notify>,
}

impl MemoryChannel {
    /// A channel of type `channel_type`.
    pub fn new(channel_type: &str) -> Self {
        Self {
            channel_type: channel_type.into(),
            liveness: None,
            state: Default::default(),
            changed: Default::default(),
        }
    }

    /// The same channel, presumed dead after `timeout` without events or keepalives.
    pub fn with_liveness_timeout(mut self, timeout: Duration) -> Self {
        self.liveness = Some(timeout);
        self
    }

    /// A platform keepalive (a sign of life without a message).
    pub fn keepalive(&self) {
        if let Some(s) = &self.state.lock().sink {
            s.alive();
        }
    }

    /// Submits a text message from `platform_id` as the platform would.
    ///
    /// Errors when the channel is not started or routing failed.
    pub async fn submit(
        &self,
        platform_id: &str,
        platform_message_id: &str,
        text: &str,
    ) -> Result<InboundAck, SubmitError> {
        let sink = self.state.lock().sink.clone().ok_or(SubmitError::Closed)?;
        sink.submit(InboundEvent {
            channel_type: self.channel_type.clone(),
            platform_id: platform_id.into(),
            thread_id: None,
            platform_message_id: platform_message_id.into(),
            sender_id: Some("tester".into()),
            sender_name: Some("Tester".into()),
            text: text.into(),
            is_mention: true,
            is_group: false,
        })
        .await
    }

    /// Everything delivered so far.
    pub fn delivered(&self) -> Vec<OutboundMessage> {
        self.state.lock().delivered.clone()
    }

    /// Every notice so far.
    pub fn notices(&self) -> Vec<Notice> {
        self.state.lock().notices.clone()
    }

    /// How many times the adapter was started (restarts included).
    pub fn starts(&self) -> usize {
        self.state.lock().starts
    }

    /// Fails the next deliveries with these errors, in order.
    pub fn fail_next(&self, errors: Vec<DeliveryError>) {
        self.state.lock().fail_next = errors;
    }

    /// Reports a lost connection, as an adapter whose platform went away would.
    pub fn lose_connection(&self, reason: &str) {
        if let Some(s) = &self.state.lock().sink {
            s.fail(reason);
        }
    }

    /// Waits until `pred` holds over the deliveries, or `timeout` passes.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[OutboundMessage]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if pred(&self.state.lock().delivered) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.state.lock().delivered);
            }
        }
    }
}

#[async_trait]
impl ChannelAdapter for MemoryChannel {
    fn channel_type(&self) -> &str {
        &self.channel_type
    }

    fn supports_threads(&self) -> bool {
        false
    }

    async fn start(&self, inbound: InboundSink) -> Result<(), ChannelError> {
        let mut st = self.state.lock();
        st.sink = Some(inbound);
        st.starts += 1;
        Ok(())
    }

    async fn stop(&self) {
        self.state.lock().sink = None;
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Option<String>, DeliveryError> {
        let result = {
            let mut st = self.state.lock();
            if st.fail_next.is_empty() {
                st.delivered.push(message.clone());
                Ok(Some(format!("mem-{}", st.delivered.len())))
            } else {
                Err(st.fail_next.remove(0))
            }
        };
        self.changed.notify_waiters();
        result
    }

    async fn notice(&self, notice: &Notice) {
        self.state.lock().notices.push(notice.clone());
        self.changed.notify_waiters();
    }

    fn liveness_timeout(&self) -> Option<Duration> {
        self.liveness
    }
}
