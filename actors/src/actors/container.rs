//! `ContainerActor`: owns one container from create to removal.
//!
//! Spawned (linked) by its session actor, one at a time. `post_start` creates and starts the
//! container and arms a wait; when the container exits for any reason the actor removes it and
//! stops with the exit as its reason, so the session actor receives the exit as a supervision
//! event (DESIGN §4). [`ContainerMessage::Stop`] is the only way to end a container early: the
//! session actor sends it for `Kill { reason, then }` and spawns a replacement only after this
//! actor's termination event — after the old container is gone.
//!
//! If this actor is killed without `post_stop` (its parent failed), its container outlives it; the
//! replacement session actor and the sweeper remove it by label.

use crate::context::LiveContainers;
use crate::ports::runtime::{ContainerRuntime, ContainerSpec, ExitStatus, RuntimeError};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::Duration;
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

/// Private state.
pub struct ContainerState {
    runtime: Arc<dyn ContainerRuntime>,
    spec: ContainerSpec,
    stop_grace: Duration,
    live: LiveContainers,
    /// Runtime id once created.
    id: Option<String>,
    /// The wait task; aborted when the actor stops.
    waiter: Option<tokio::task::JoinHandle<()>>,
    /// Set once the container is removed, so `post_stop` does not do it twice.
    removed: bool,
    /// A stop was requested (and why).
    stopping: Option<String>,
}

/// Messages of [`ContainerActor`].
#[derive(Debug)]
pub enum ContainerMessage {
    /// The container's process exited (from the wait task), or the wait failed.
    Exited(Result<ExitStatus, RuntimeError>),
    /// Stop the container: SIGTERM, SIGKILL after the grace; the exit follows as `Exited`.
    Stop {
        /// Why (logged, and the actor's stop reason).
        reason: String,
    },
}

impl ContainerState {
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
        self.live.lock().remove(&self.spec.name);
    }
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
            id: None,
            waiter: None,
            removed: false,
            stopping: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut ContainerState,
    ) -> Result<(), ActorProcessingErr> {
        // Registered before create so a concurrent sweep never removes a container being born.
        state.live.lock().insert(state.spec.name.clone());
        let id = match state.runtime.create(&state.spec).await {
            Ok(id) => id,
            Err(e) => {
                state.live.lock().remove(&state.spec.name);
                return Err(e.into());
            }
        };
        state.id = Some(id.clone());
        if let Err(e) = state.runtime.start(&id).await {
            state.remove().await;
            return Err(e.into());
        }
        info!(container = %state.spec.name, session = %state.spec.session_id, generation = state.spec.generation, "container started");
        let runtime = state.runtime.clone();
        state.waiter = Some(tokio::spawn(async move {
            let result = runtime.wait(&id).await;
            let _ = myself.cast(ContainerMessage::Exited(result));
        }));
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
                let reason = match (&result, &state.stopping) {
                    (_, Some(why)) => format!("stopped: {why}"),
                    (Ok(s), None) if s.oom_killed => "exited: killed by the OOM killer".to_string(),
                    (Ok(ExitStatus { code: Some(c), .. }), None) => format!("exited: code {c}"),
                    (Ok(_), None) => "exited".to_string(),
                    (Err(e), None) => format!("exited: wait failed: {e}"),
                };
                let unexpected =
                    state.stopping.is_none() && !matches!(&result, Ok(ExitStatus { code: Some(0), .. }));
                if unexpected {
                    // The container is removed next, and its log with it: keep its last words.
                    let tail = match &state.id {
                        Some(id) => state.runtime.logs_tail(id, 20).await.unwrap_or_default(),
                        None => String::new(),
                    };
                    warn!(container = %state.spec.name, session = %state.spec.session_id, %reason, log_tail = %tail.trim_end(), "container exited unexpectedly");
                } else {
                    debug!(container = %state.spec.name, %reason, "container exited");
                }
                state.remove().await;
                myself.stop(Some(reason));
            }
            ContainerMessage::Stop { reason } => {
                if state.stopping.is_some() {
                    return Ok(());
                }
                state.stopping = Some(reason.clone());
                info!(container = %state.spec.name, %reason, "stopping container");
                if let Some(id) = &state.id
                    && let Err(e) = state.runtime.stop(id, state.stop_grace).await
                {
                    warn!(container = %state.spec.name, error = %e, "stop failed; removing by force");
                    state.remove().await;
                    myself.stop(Some(format!("stopped: {reason}")));
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
        if let Some(w) = state.waiter.take() {
            w.abort();
        }
        if !state.removed {
            // Stopped by the parent (shutdown): the container must not outlive its actor.
            if let Some(id) = &state.id {
                let _ = state.runtime.stop(id, state.stop_grace).await;
                let _ =
                    tokio::time::timeout(state.stop_grace + Duration::from_secs(5), state.runtime.wait(id))
                        .await;
            }
            state.remove().await;
        }
        Ok(())
    }
}
