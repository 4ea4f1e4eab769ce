//! `Sweeper`: removes orphaned containers — labelled with this install, owned by no container
//! actor — once as soon as it starts and every [`SWEEP_INTERVAL`] after (DESIGN §7). It is the
//! backstop for container actors killed without `post_stop`, and it runs beside the rest of the
//! start rather than before it (one Docker round trip less before the service is ready): that is
//! safe because a container is entered in the registry of live containers before it is created,
//! and a session actor removes any container left with its label before it spawns one.

use crate::context::ServiceContext;
use crate::ports::runtime::RuntimeError;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

/// How often the periodic sweep runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// The sweeper (configuration only).
pub struct Sweeper;

/// Private state.
pub struct SweeperState {
    ctx: Arc<ServiceContext>,
    /// The periodic sweep's timer; ends with the state, however the sweeper ends.
    _interval: Option<AbortOnDropHandle<()>>,
}

/// Messages of [`Sweeper`].
#[derive(Debug)]
pub enum SweeperMessage {
    /// Sweep now; replies with how many containers were removed.
    Sweep(Option<RpcReplyPort<Result<usize, RuntimeError>>>),
}

/// Removes this install's containers not in the live set. Returns how many were removed.
///
/// Errors when the runtime cannot list containers; a container that cannot be removed is logged
/// and left for the next sweep.
pub async fn sweep(ctx: &ServiceContext) -> Result<usize, RuntimeError> {
    let found = ctx.runtime.list_managed(&ctx.config.install_id).await?;
    let mut removed = 0;
    for c in found {
        if ctx.live_containers.lock().contains(&c.name) {
            continue;
        }
        match ctx.runtime.remove(&c.id).await {
            Ok(()) => {
                info!(container = %c.id, session = ?c.session_id, "removed orphaned container");
                removed += 1;
            }
            Err(e) => warn!(container = %c.id, error = %e, "could not remove orphaned container"),
        }
    }
    Ok(removed)
}

impl Actor for Sweeper {
    type Msg = SweeperMessage;
    type State = SweeperState;
    type Arguments = Arc<ServiceContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Arc<ServiceContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SweeperState { ctx, _interval: None })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        myself.cast(SweeperMessage::Sweep(None))?;
        state._interval = Some(AbortOnDropHandle::new(
            myself.send_interval(SWEEP_INTERVAL, || SweeperMessage::Sweep(None)),
        ));
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SweeperMessage::Sweep(reply) => {
                let result = sweep(&state.ctx).await;
                if let Err(e) = &result {
                    warn!(error = %e, "sweep failed");
                }
                if let Some(r) = reply {
                    let _ = r.send(result);
                }
            }
        }
        Ok(())
    }
}
