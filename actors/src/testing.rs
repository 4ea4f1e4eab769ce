//! In-memory fakes of the ports, for tests and examples (feature `testing`; STYLE rule 5).
//!
//! - [`FakeRuntime`]: a container is a tokio task running an entrypoint the test supplies (for
//!   example the real agent runner with host paths). It tracks, per session, how many containers
//!   were alive at once — the quantity DESIGN §5 invariant 4 bounds.
//! - [`MemoryChannel`]: records every send (with its key), the deliveries the user saw, the
//!   files, cards, edits and reactions (as [`Shown`] entries, with the platform ids it gave) and
//!   the notices; lets a test submit messages; can be told to fail, lose the answer of, delay or panic
//!   in the next deliveries; declares idempotent sends or not, as configured; holds an exclusive
//!   per-run resource (like a socket path) that its guard releases.
//! - [`Failable`]: wraps any adapter so a test can make its channel actor fail.

use crate::ports::channel::{
    AdapterGuard, ChannelAdapter, ChannelError, ChoiceCard, Click, DeliveryError, EditRequest, InboundAck,
    InboundEvent, InboundSink, Notice, OutboundCard, OutboundFile, OutboundMessage, ReactionRequest,
    SubmitError,
};
use crate::ports::runtime::{ContainerRuntime, ContainerSpec, ExitStatus, ManagedContainer, RuntimeError};
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
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

    /// What its containers run (to wrap it in another runtime's entrypoint).
    pub fn entrypoint(&self) -> Entrypoint {
        self.entrypoint.clone()
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

/// One call of [`ChannelAdapter::deliver`] on a [`MemoryChannel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendAttempt {
    /// The idempotency key ([`OutboundMessage::message_out_id`]).
    pub message_out_id: String,
    /// The user saw the message because of this call (false for an injected failure, and for a
    /// repeat an idempotent channel suppressed).
    pub shown: bool,
    /// What the call returned, when it failed.
    pub error: Option<DeliveryError>,
}

/// What the next delivery does instead of succeeding.
#[derive(Debug, Clone)]
enum Fault {
    /// Return the error; the platform did not show the message.
    Fail(DeliveryError),
    /// Show the message, then return the error (the platform's answer was lost).
    FailAfterShowing(DeliveryError),
    /// Show the message, then panic (the channel actor fails mid-send).
    PanicAfterShowing,
}

/// Something other than a text message a [`MemoryChannel`] showed, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// Files with their caption; `platform_message_id` is the id the channel gave them.
    Files {
        /// The caption, its key and chat.
        message: OutboundMessage,
        /// The files, bytes included.
        files: Vec<OutboundFile>,
        /// The platform id returned.
        platform_message_id: String,
    },
    /// A card.
    Card {
        /// Its key and chat.
        message: OutboundMessage,
        /// The card.
        card: OutboundCard,
        /// The platform id returned.
        platform_message_id: String,
    },
    /// A card asking for a decision.
    Choice {
        /// Its key and chat.
        message: OutboundMessage,
        /// The card.
        card: ChoiceCard,
        /// The platform id returned.
        platform_message_id: String,
    },
    /// An edit.
    Edit(EditRequest),
    /// A reaction.
    Reaction(ReactionRequest),
}

#[derive(Default)]
struct MemoryState {
    /// Files, cards, edits and reactions, in order.
    shown: Vec<Shown>,
    sink: Option<InboundSink>,
    /// Messages the user saw, in order.
    delivered: Vec<OutboundMessage>,
    /// Every deliver call.
    sends: Vec<SendAttempt>,
    notices: Vec<Notice>,
    faults: VecDeque<Fault>,
    delay: Option<Duration>,
    starts: usize,
    /// The current run's number; a guard of an older run does not touch a newer run's sink.
    run: u64,
    /// A run's guard is alive: the exclusive resource (think `cli.sock`) is taken.
    held: bool,
}

/// An in-memory [`ChannelAdapter`] with channel type chosen at construction.
#[derive(Clone)]
pub struct MemoryChannel {
    channel_type: String,
    account: String,
    idempotent: bool,
    threads: bool,
    liveness: Option<Duration>,
    state: Arc<Mutex<MemoryState>>,
    changed: Arc<tokio::sync::Notify>,
}

/// The resources of one [`MemoryChannel`] run: dropping it disconnects the sink and frees the
/// exclusive resource.
struct MemoryRun {
    state: Arc<Mutex<MemoryState>>,
    run: u64,
}

impl Drop for MemoryRun {
    fn drop(&mut self) {
        let mut st = self.state.lock();
        if st.run == self.run {
            st.sink = None;
            st.held = false;
        }
    }
}

impl MemoryChannel {
    /// A channel of type (and account) `channel_type`, not idempotent.
    pub fn new(channel_type: &str) -> Self {
        Self {
            channel_type: channel_type.into(),
            account: channel_type.into(),
            idempotent: false,
            threads: false,
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

    /// The same channel under another account (`<channel_type>:<name>`).
    pub fn with_account(mut self, account: &str) -> Self {
        self.account = account.into();
        self
    }

    /// The same channel, declaring [`ChannelAdapter::idempotent_sends`] as given. When true it
    /// keeps the promise: a key it showed before is not shown again (the repeat returns the first
    /// platform id), across restarts too.
    pub fn with_idempotent_sends(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// The same channel, declaring [`ChannelAdapter::supports_threads`] as given (default false:
    /// the router strips thread ids).
    pub fn with_threads(mut self, threads: bool) -> Self {
        self.threads = threads;
        self
    }

    /// Submits `event` as the platform would (its channel type is set to this channel's).
    ///
    /// Errors when the channel is not started or routing failed.
    pub async fn submit_event(&self, mut event: InboundEvent) -> Result<InboundAck, SubmitError> {
        let sink = self.state.lock().sink.clone().ok_or(SubmitError::Closed)?;
        event.channel_type = self.channel_type.clone();
        sink.submit(event).await
    }

    /// Clicks a button as `user_id` would in `platform_id`: the answer the platform shows them.
    ///
    /// Errors when the channel is not started.
    pub async fn click(
        &self,
        platform_id: &str,
        user_id: &str,
        callback: &str,
    ) -> Result<String, SubmitError> {
        let sink = self.state.lock().sink.clone().ok_or(SubmitError::Closed)?;
        sink.click(Click {
            platform_id: platform_id.into(),
            user_id: user_id.into(),
            callback: callback.into(),
        })
        .await
    }

    /// The choice cards shown so far, in order: (chat, card, platform message id).
    pub fn choices(&self) -> Vec<(String, ChoiceCard, String)> {
        self.state
            .lock()
            .shown
            .iter()
            .filter_map(|s| match s {
                Shown::Choice { message, card, platform_message_id } => {
                    Some((message.platform_id.clone(), card.clone(), platform_message_id.clone()))
                }
                _ => None,
            })
            .collect()
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
            chat_name: None,
        })
        .await
    }

    /// Everything the user saw so far, in order.
    pub fn delivered(&self) -> Vec<OutboundMessage> {
        self.state.lock().delivered.clone()
    }

    /// Every deliver call so far, in order, failed ones included.
    pub fn sends(&self) -> Vec<SendAttempt> {
        self.state.lock().sends.clone()
    }

    /// How many deliver calls carried `message_out_id` ("never a second send" is `<= 1`).
    pub fn sends_of(&self, message_out_id: &str) -> usize {
        self.state.lock().sends.iter().filter(|s| s.message_out_id == message_out_id).count()
    }

    /// Every file, card, edit and reaction shown so far, in order.
    pub fn shown(&self) -> Vec<Shown> {
        self.state.lock().shown.clone()
    }

    /// Waits until `pred` holds over [`MemoryChannel::shown`], or `timeout` passes.
    pub async fn wait_for_shown(&self, timeout: Duration, pred: impl Fn(&[Shown]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if pred(&self.state.lock().shown) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.state.lock().shown);
            }
        }
    }

    /// Waits until `pred` holds over [`MemoryChannel::notices`], or `timeout` passes.
    pub async fn wait_for_notice(&self, timeout: Duration, pred: impl Fn(&[Notice]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if pred(&self.state.lock().notices) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.state.lock().notices);
            }
        }
    }

    /// Every notice so far.
    pub fn notices(&self) -> Vec<Notice> {
        self.state.lock().notices.clone()
    }

    /// How many times the adapter was started (restarts included).
    pub fn starts(&self) -> usize {
        self.state.lock().starts
    }

    /// Whether a run's guard is alive (its exclusive resource taken).
    pub fn is_held(&self) -> bool {
        self.state.lock().held
    }

    /// Fails the next deliveries with these errors, in order (after faults queued before); the
    /// user sees nothing.
    pub fn fail_next(&self, errors: Vec<DeliveryError>) {
        self.state.lock().faults.extend(errors.into_iter().map(Fault::Fail));
    }

    /// The next deliveries (after faults queued before) show their message, then return these
    /// errors, in order: the platform
    /// accepted the message but its answer was lost (use `OutcomeUnknown` or `Timeout`).
    pub fn fail_next_after_showing(&self, errors: Vec<DeliveryError>) {
        self.state.lock().faults.extend(errors.into_iter().map(Fault::FailAfterShowing));
    }

    /// The next delivery shows its message, then panics: the channel actor fails mid-send and the
    /// caller learns nothing of the outcome.
    pub fn panic_next_delivery(&self) {
        self.state.lock().faults.push_back(Fault::PanicAfterShowing);
    }

    /// Every delivery first waits `delay` (`None`: no wait), to provoke delivery timeouts.
    pub fn set_delivery_delay(&self, delay: Option<Duration>) {
        self.state.lock().delay = delay;
    }

    /// Reports a lost connection, as an adapter whose platform went away would: its channel
    /// actor's handler returns an error (the actor fails; ractor skips its `post_stop`).
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

    /// Shows `message` unless the channel is idempotent and showed its key already; returns the
    /// platform id and whether it was shown now.
    fn show(&self, st: &mut MemoryState, message: &OutboundMessage) -> (String, bool) {
        if self.idempotent
            && let Some(i) = st.delivered.iter().position(|m| m.message_out_id == message.message_out_id)
        {
            return (format!("mem-{}", i + 1), false);
        }
        st.delivered.push(message.clone());
        (format!("mem-{}", st.delivered.len()), true)
    }
}

#[async_trait]
impl ChannelAdapter for MemoryChannel {
    fn channel_type(&self) -> &str {
        &self.channel_type
    }

    fn account(&self) -> &str {
        &self.account
    }

    fn supports_threads(&self) -> bool {
        self.threads
    }

    fn idempotent_sends(&self) -> bool {
        self.idempotent
    }

    async fn start(&self, inbound: InboundSink) -> Result<AdapterGuard, ChannelError> {
        let mut st = self.state.lock();
        if st.held {
            return Err(ChannelError(format!(
                "memory channel {}: still held by a previous run that was never released",
                self.account
            )));
        }
        st.sink = Some(inbound);
        st.starts += 1;
        st.run += 1;
        st.held = true;
        Ok(AdapterGuard::new(MemoryRun { state: self.state.clone(), run: st.run }))
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Option<String>, DeliveryError> {
        let delay = self.state.lock().delay;
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let result = {
            let mut st = self.state.lock();
            let fault = st.faults.pop_front();
            let key = message.message_out_id.clone();
            let (result, shown) = match fault {
                None => {
                    let (id, shown) = self.show(&mut st, message);
                    (Ok(Some(id)), shown)
                }
                Some(Fault::Fail(e)) => (Err(e), false),
                Some(Fault::FailAfterShowing(e)) => {
                    let (_, shown) = self.show(&mut st, message);
                    (Err(e), shown)
                }
                Some(Fault::PanicAfterShowing) => {
                    let (_, shown) = self.show(&mut st, message);
                    st.sends.push(SendAttempt { message_out_id: key, shown, error: None });
                    drop(st);
                    self.changed.notify_waiters();
                    panic!("memory channel {}: injected panic mid-send", self.account);
                }
            };
            st.sends.push(SendAttempt { message_out_id: key, shown, error: result.clone().err() });
            result
        };
        self.changed.notify_waiters();
        result
    }

    async fn notice(&self, notice: &Notice) {
        self.state.lock().notices.push(notice.clone());
        self.changed.notify_waiters();
    }

    /// Shows the files (no faults injected: those exercise [`ChannelAdapter::deliver`]); the
    /// platform id is `mem-other-<n>`. The key is deduplicated when idempotent.
    async fn deliver_files(
        &self,
        message: &OutboundMessage,
        files: &[OutboundFile],
    ) -> Result<Option<String>, DeliveryError> {
        let id = self.show_other(message, |platform_message_id| Shown::Files {
            message: message.clone(),
            files: files.to_vec(),
            platform_message_id,
        });
        Ok(Some(id))
    }

    /// Shows the card; the platform id is `mem-other-<n>`.
    async fn deliver_card(
        &self,
        message: &OutboundMessage,
        card: &OutboundCard,
    ) -> Result<Option<String>, DeliveryError> {
        let id = self.show_other(message, |platform_message_id| Shown::Card {
            message: message.clone(),
            card: card.clone(),
            platform_message_id,
        });
        Ok(Some(id))
    }

    /// Its cards have buttons: [`MemoryChannel::click`] clicks them.
    fn supports_buttons(&self) -> bool {
        true
    }

    /// Shows the card; the platform id is `mem-other-<n>`. A fault queued with
    /// [`MemoryChannel::fail_next`] fails it instead (the card is not shown).
    async fn deliver_choice(
        &self,
        message: &OutboundMessage,
        card: &ChoiceCard,
    ) -> Result<Option<String>, DeliveryError> {
        let fault = self.state.lock().faults.pop_front();
        if let Some(Fault::Fail(e) | Fault::FailAfterShowing(e)) = fault {
            self.state.lock().sends.push(SendAttempt {
                message_out_id: message.message_out_id.clone(),
                shown: false,
                error: Some(e.clone()),
            });
            return Err(e);
        }
        let id = self.show_other(message, |platform_message_id| Shown::Choice {
            message: message.clone(),
            card: card.clone(),
            platform_message_id,
        });
        Ok(Some(id))
    }

    /// Records the edit; an id this channel never gave is refused, as a platform would.
    async fn edit(&self, edit: &EditRequest) -> Result<(), DeliveryError> {
        {
            let mut st = self.state.lock();
            let known = (1..=st.delivered.len()).any(|i| format!("mem-{i}") == edit.platform_message_id)
                || st.shown.iter().any(|s| {
                    matches!(s, Shown::Files { platform_message_id, .. } | Shown::Card { platform_message_id, .. }
                        | Shown::Choice { platform_message_id, .. }
                        if *platform_message_id == edit.platform_message_id)
                });
            if !known {
                return Err(DeliveryError::rejected(format!("no message {}", edit.platform_message_id)));
            }
            st.shown.push(Shown::Edit(edit.clone()));
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Records the reaction.
    async fn react(&self, reaction: &ReactionRequest) -> Result<(), DeliveryError> {
        self.state.lock().shown.push(Shown::Reaction(reaction.clone()));
        self.changed.notify_waiters();
        Ok(())
    }

    fn liveness_timeout(&self) -> Option<Duration> {
        self.liveness
    }
}

impl MemoryChannel {
    /// Shows a file or card delivery under its key (once when idempotent); returns its id.
    fn show_other(&self, message: &OutboundMessage, make: impl FnOnce(String) -> Shown) -> String {
        let id = {
            let mut st = self.state.lock();
            let key = message.message_out_id.clone();
            let before = st.shown.iter().find_map(|s| match s {
                Shown::Files { message, platform_message_id, .. }
                | Shown::Card { message, platform_message_id, .. }
                | Shown::Choice { message, platform_message_id, .. }
                    if message.message_out_id == key =>
                {
                    Some(platform_message_id.clone())
                }
                _ => None,
            });
            match before {
                Some(id) if self.idempotent => {
                    st.sends.push(SendAttempt { message_out_id: key, shown: false, error: None });
                    id
                }
                _ => {
                    let id = format!("mem-other-{}", st.shown.len() + 1);
                    st.shown.push(make(id.clone()));
                    st.sends.push(SendAttempt { message_out_id: key, shown: true, error: None });
                    id
                }
            }
        };
        self.changed.notify_waiters();
        id
    }
}

/// Wraps any adapter so a test can make its channel actor fail ([`Failable::fail`]) as a lost
/// connection would — for adapters, like the CLI's, that have no failure of their own to inject.
#[derive(Clone)]
pub struct Failable<A> {
    inner: A,
    sink: Arc<Mutex<Option<InboundSink>>>,
}

impl<A: ChannelAdapter> Failable<A> {
    /// Wraps `inner`.
    pub fn new(inner: A) -> Self {
        Self { inner, sink: Default::default() }
    }

    /// The wrapped adapter.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// Makes the current run's channel actor fail with `reason` (a handler returns an error).
    /// Returns false when the adapter was never started.
    pub fn fail(&self, reason: &str) -> bool {
        match &*self.sink.lock() {
            Some(s) => {
                s.fail(reason);
                true
            }
            None => false,
        }
    }
}

#[async_trait]
impl<A: ChannelAdapter> ChannelAdapter for Failable<A> {
    fn channel_type(&self) -> &str {
        self.inner.channel_type()
    }

    fn account(&self) -> &str {
        self.inner.account()
    }

    fn supports_threads(&self) -> bool {
        self.inner.supports_threads()
    }

    fn idempotent_sends(&self) -> bool {
        self.inner.idempotent_sends()
    }

    async fn start(&self, inbound: InboundSink) -> Result<AdapterGuard, ChannelError> {
        *self.sink.lock() = Some(inbound.clone());
        self.inner.start(inbound).await
    }

    async fn stop(&self) {
        self.inner.stop().await
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Option<String>, DeliveryError> {
        self.inner.deliver(message).await
    }

    async fn notice(&self, notice: &Notice) {
        self.inner.notice(notice).await
    }

    async fn deliver_files(
        &self,
        message: &OutboundMessage,
        files: &[OutboundFile],
    ) -> Result<Option<String>, DeliveryError> {
        self.inner.deliver_files(message, files).await
    }

    async fn deliver_card(
        &self,
        message: &OutboundMessage,
        card: &OutboundCard,
    ) -> Result<Option<String>, DeliveryError> {
        self.inner.deliver_card(message, card).await
    }

    fn supports_buttons(&self) -> bool {
        self.inner.supports_buttons()
    }

    async fn deliver_choice(
        &self,
        message: &OutboundMessage,
        card: &ChoiceCard,
    ) -> Result<Option<String>, DeliveryError> {
        self.inner.deliver_choice(message, card).await
    }

    async fn edit(&self, edit: &EditRequest) -> Result<(), DeliveryError> {
        self.inner.edit(edit).await
    }

    async fn react(&self, reaction: &ReactionRequest) -> Result<(), DeliveryError> {
        self.inner.react(reaction).await
    }

    fn liveness_timeout(&self) -> Option<Duration> {
        self.inner.liveness_timeout()
    }
}
