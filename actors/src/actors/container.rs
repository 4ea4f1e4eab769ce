//! `ContainerActor`: owns one container from create to removal.
//!
//! Spawned (linked) by its session actor, one at a time. `post_start` creates and starts the
//! container and arms a wait; when the container exits for any reason the actor removes it and
//! stops with the exit as its reason, so the session actor receives the exit as a supervision
//! event (DESIGN §4). [`ContainerMessage::Stop`] is the only way to end a container early: the
//! session actor sends it for `Kill { reason, then }` and spawns a replacement only after this
//! actor's termination event — after the old container is gone.
//!
//! The exit is typed: the actor's final state carries a [`ContainerExit`] (code, signal, OOM, and
//! who asked for the stop), which the session takes from the termination event.
//!
//! If this actor is killed without `post_stop` (its parent failed), its container outlives it: its
//! entry in the registry of live containers is a drop guard, so the sweeper may then remove the
//! container by label, and the replacement session actor removes it before starting another.

use crate::context::LiveContainers;
use crate::ports::runtime::{ContainerRuntime, ContainerSpec, ExitStatus, RuntimeError};
use crate::session::lifecycle::{ContainerExit, StopCause};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

/// The container actor (configuration only).
pub struct ContainerActor;

/// Arguments of [`ContainerActor`].
pub struct ContainerArgs {
    /// Runtime that runs the container.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// What to run.
    pub spec: ContainerSpec,
    /// SIGTERM → SIGKILL grace on stop.
    pub stop_grace: Duration,
    /// Registry of owned containers (spared by the sweep).
    pub live: LiveContainers,
}

/// The container's entry in the registry of live containers, removed however the actor ends.
struct LiveEntry {
    live: LiveContainers,
    name: String,
}

impl LiveEntry {
    fn new(live: LiveContainers, name: String) -> Self {
        live.lock().insert(name.clone());
        Self { live, name }
    }
}

impl Drop for LiveEntry {
    fn drop(&mut self) {
        self.live.lock().remove(&self.name);
    }
}

/// Private state.
pub struct ContainerState {
    runtime: Arc<dyn ContainerRuntime>,
    spec: ContainerSpec,
    stop_grace: Duration,
    live: LiveContainers,
    /// Registered before create so a concurrent sweep never removes a container being born;
    /// dropped (unregistered) once the container is removed or the actor ends.
    entry: Option<LiveEntry>,
    /// Runtime id once created.
    id: Option<String>,
    /// The wait task; aborted when the state drops.
    waiter: Option<AbortOnDropHandle<()>>,
    /// Set once the container is removed, so `post_stop` does not do it twice.
    removed: bool,
    /// A stop was requested (and why).
    stopping: Option<StopCause>,
    /// How the container ended; read by the session from the termination event.
    exit: Option<ContainerExit>,
}

impl ContainerState {
    /// How the container ended (set before the actor stops on an exit).
    pub fn exit(&self) -> Option<&ContainerExit> {
        self.exit.as_ref()
    }

    async fn remove(&mut self) {
        if self.removed {
            return;
        }
        if let Some(id) = &self.id
            && let Err(e) = self.runtime.remove(id).await
        {
            warn!(container = %self.spec.name, error = %e, "remove failed; the sweeper will retry");
        }
        self.removed = true;
        self.entry = None;
    }
}

/// Messages of [`ContainerActor`].
#[derive(Debug)]
pub enum ContainerMessage {
    /// The container's process exited (from the wait task), or the wait failed.
    Exited(Result<ExitStatus, RuntimeError>),
    /// Stop the container: SIGTERM, SIGKILL after the grace; the exit follows as `Exited`.
    Stop {
        /// Why (logged, and part of the typed exit).
        cause: StopCause,
    },
}

impl Actor for ContainerActor {
    type Msg = ContainerMessage;
    type State = ContainerState;
    type Arguments = ContainerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ContainerArgs,
    ) -> Result<ContainerState, ActorProcessingErr> {
        Ok(ContainerState {
            runtime: args.runtime,
            spec: args.spec,
            stop_grace: args.stop_grace,
            live: args.live,
            entry: None,
            id: None,
            waiter: None,
            removed: false,
            stopping: None,
            exit: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut ContainerState,
    ) -> Result<(), ActorProcessingErr> {
        state.entry = Some(LiveEntry::new(state.live.clone(), state.spec.name.clone()));
        let id = state.runtime.create(&state.spec).await?;
        state.id = Some(id.clone());
        if let Err(e) = state.runtime.start(&id).await {
            state.remove().await;
            return Err(e.into());
        }
        info!(container = %state.spec.name, session = %state.spec.session_id, generation = state.spec.generation, "container started");
        let runtime = state.runtime.clone();
        state.waiter = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let result = runtime.wait(&id).await;
            let _ = myself.cast(ContainerMessage::Exited(result));
        })));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ContainerMessage,
        state: &mut ContainerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ContainerMessage::Exited(result) => {
                if state.exit.is_some() {
                    return Ok(());
                }
                let exit = match &result {
                    Ok(s) => ContainerExit::ended(s.code, s.oom_killed, state.stopping.clone()),
                    Err(e) => ContainerExit::Lost(e.to_string()),
                };
                let unexpected =
                    state.stopping.is_none() && !matches!(&result, Ok(ExitStatus { code: Some(0), .. }));
                if unexpected {
                    // The container is removed next, and its log with it: keep its last words.
                    let tail = match &state.id {
                        Some(id) => state.runtime.logs_tail(id, 20).await.unwrap_or_default(),
                        None => String::new(),
                    };
                    warn!(container = %state.spec.name, session = %state.spec.session_id, %exit, log_tail = %tail.trim_end(), "container exited unexpectedly");
                } else {
                    debug!(container = %state.spec.name, %exit, "container exited");
                }
                state.remove().await;
                let reason = exit.to_string();
                state.exit = Some(exit);
                myself.stop(Some(reason));
            }
            ContainerMessage::Stop { cause } => {
                if state.stopping.is_some() {
                    return Ok(());
                }
                info!(container = %state.spec.name, %cause, "stopping container");
                state.stopping = Some(cause.clone());
                if let Some(id) = &state.id
                    && let Err(e) = state.runtime.stop(id, state.stop_grace).await
                {
                    warn!(container = %state.spec.name, error = %e, "stop failed; removing by force");
                    state.remove().await;
                    state.exit = Some(ContainerExit::ended(None, false, Some(cause)));
                    myself.stop(Some("stopped".into()));
                    return Ok(());
                }
                // Backstop: if the wait never reports, end anyway once the grace has surely passed.
                let backstop = state.stop_grace + Duration::from_secs(10);
                myself.send_after(backstop, move || {
                    ContainerMessage::Exited(Err(RuntimeError::Operation {
                        op: "wait",
                        container: String::new(),
                        message: "no exit reported after stop".into(),
                    }))
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ContainerState,
    ) -> Result<(), ActorProcessingErr> {
        state.waiter = None;
        if !state.removed {
            // Stopped by the parent (shutdown): the container must not outlive its actor.
            if let Some(id) = &state.id {
                let _ = state.runtime.stop(id, state.stop_grace).await;
                let _ =
                    tokio::time::timeout(state.stop_grace + Duration::from_secs(5), state.runtime.wait(id))
                        .await;
            }
            state.remove().await;
            state.exit = Some(ContainerExit::ended(None, false, Some(StopCause::Shutdown)));
        }
        Ok(())
    }
}
