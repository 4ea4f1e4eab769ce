//! `ApprovalSupervisor`: will own one approval actor per pending approval (DESIGN §4, §10).
//!
//! Approvals arrive in a later issue; today this supervisor has no children. It exists so the
//! tree has its final shape and stop order, and it handles supervision events explicitly (a
//! failed approval actor will be logged and restored from `pending_approvals`).

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::warn;

/// The approval supervisor (configuration only).
pub struct ApprovalSupervisor;

/// Messages of [`ApprovalSupervisor`] (none yet).
#[derive(Debug)]
pub enum ApprovalSupervisorMessage {}

impl Actor for ApprovalSupervisor {
    type Msg = ApprovalSupervisorMessage;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, _args: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = event {
            warn!(actor = %cell.get_id(), error = %err, "approval actor failed");
        }
        Ok(())
    }
}
