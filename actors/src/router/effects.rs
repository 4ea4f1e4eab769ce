//! The effects of deciding a pending sender request or channel registration. The approvals
//! issue puts cards and decisions (and the check of who may decide) in front of these; here they
//! are plain functions: each changes the central DB in one transaction, then replays the stored
//! event through the router where the decision lets it in.

use super::plan::Facts;
use super::{RouteError, Router, namespaced_sender};
use crate::ports::channel::{InboundAck, InboundEvent};
use crate::store::{
    self, EngageMode, IgnoredPolicy, NewWiring, SenderScope, SessionMode, SqlContext, StoreError, new_id,
};
use rusqlite::TransactionBehavior;
use tracing::info;

/// Why an effect did nothing. Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum EffectError {
    /// No pending request with that id (or for that chat).
    #[error("no pending request {0}")]
    NotFound(String),
    /// The request was decided already.
    #[error("request {0} is not pending")]
    NotPending(String),
    /// The central store failed, or refused a value (the error names the field).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored event could not be routed again.
    #[error(transparent)]
    Route(#[from] RouteError),
}

/// How an approver answers a channel registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelChoice {
    /// Wire the chat to an existing agent group (by id).
    Connect(String),
    /// Create a new agent group with this name and wire the chat to it.
    CreateAgent(String),
}

impl Router {
    /// Approves a pending sender request: the sender becomes a member of the agent group, and the
    /// stored event is routed again (answered once: the row ids are the ledger id's).
    ///
    /// Errors: [`EffectError::NotFound`], [`EffectError::NotPending`] (denied), store and routing
    /// failures.
    pub async fn approve_sender(&self, request_id: &str, approver: &str) -> Result<InboundAck, EffectError> {
        let (id, by) = (request_id.to_string(), approver.to_string());
        let request = self
            .store
            .call(move |c| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .sql("begin approve sender")?;
                let Some(r) = store::sender_approval(&tx, &id)? else {
                    return Ok(Err(EffectError::NotFound(id)));
                };
                if r.status != "pending" {
                    return Ok(Err(EffectError::NotPending(id)));
                }
                // Adding the member removes the request.
                store::add_member(&tx, &r.sender_identity, &r.agent_group_id, &by)?;
                tx.commit().sql("commit approve sender")?;
                Ok(Ok(r))
            })
            .await??;
        info!(sender = %request.sender_identity, agent_group = %request.agent_group_id, %approver, "sender approved");
        self.replay(&request.ledger_id, &request.original_message).await
    }

    /// Denies a pending sender request. The row stays `denied`: that sender's later messages in
    /// the chat are recorded `sender_denied` and ask nobody, until an admin adds the sender.
    pub async fn deny_sender(&self, request_id: &str, approver: &str) -> Result<(), EffectError> {
        let (id, by) = (request_id.to_string(), approver.to_string());
        let denied = self.store.call(move |c| store::deny_sender_request(c, &id, &by)).await?;
        if !denied {
            let id = request_id.to_string();
            return Err(match self.store.call(move |c| store::sender_approval(c, &id)).await? {
                Some(_) => EffectError::NotPending(request_id.to_string()),
                None => EffectError::NotFound(request_id.to_string()),
            });
        }
        info!(request = %request_id, %approver, "sender denied");
        Ok(())
    }

    /// Connects a chat waiting for registration: wires it (a DM: `pattern .`; a threaded group:
    /// `mention-sticky`; else `mention`; `sender_scope = known`, `accumulate`), to an existing
    /// agent group or to a new one named by the approver, makes the sender who mentioned the
    /// bot a member, and routes the stored message again. Returns the replay's ack.
    ///
    /// Errors: [`EffectError::NotFound`] when no registration is pending for the chat; a bad
    /// name or unknown agent group as a store error naming the field.
    pub async fn connect_channel(
        &self,
        messaging_group_id: &str,
        choice: ChannelChoice,
        approver: &str,
    ) -> Result<InboundAck, EffectError> {
        let (mg_id, by) = (messaging_group_id.to_string(), approver.to_string());
        let (request, agent_group) = self
            .store
            .call(move |c| {
                let Some(request) = store::channel_approval(c, &mg_id)? else {
                    return Ok(Err(EffectError::NotFound(mg_id)));
                };
                let event: InboundEvent = serde_json::from_str(&request.original_message)
                    .map_err(|e| StoreError::Invalid(format!("original_message: {e}")))?;
                let wiring = |ag: &str| NewWiring {
                    messaging_group_id: mg_id.clone(),
                    agent_group_id: ag.to_string(),
                    session_mode: SessionMode::Shared,
                    engage_mode: if !event.is_group {
                        EngageMode::Pattern
                    } else if event.thread_id.is_some() {
                        EngageMode::MentionSticky
                    } else {
                        EngageMode::Mention
                    },
                    engage_pattern: (!event.is_group).then(|| ".".to_string()),
                    sender_scope: SenderScope::Known,
                    ignored_message_policy: IgnoredPolicy::Accumulate,
                    priority: 0,
                };
                // Wiring, agent group, member and the end of the request: one transaction.
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .sql("begin connect channel")?;
                let ag = match &choice {
                    ChannelChoice::Connect(ag) => ag.clone(),
                    ChannelChoice::CreateAgent(name) => store::create_agent_group_in(&tx, name)?.0,
                };
                let w = wiring(&ag);
                store::check_wiring(&w)?;
                store::create_wiring_in(&tx, &w)?;
                if let Some(sender) = &request.sender_identity {
                    store::add_member(&tx, sender, &ag, &by)?;
                }
                store::clear_channel_approval(&tx, &mg_id)?;
                tx.commit().sql("commit connect channel")?;
                Ok(Ok((request, ag)))
            })
            .await??;
        info!(chat = %messaging_group_id, %agent_group, %approver, "chat connected");
        self.refresh_destinations(&agent_group).await;
        self.replay(&request.ledger_id, &request.original_message).await
    }

    /// The approver chose "connect a new agent": the registration waits for the name as a row
    /// (`awaiting_name`), so a restart in between loses nothing.
    pub async fn await_agent_name(
        &self,
        messaging_group_id: &str,
        approver: &str,
    ) -> Result<(), EffectError> {
        let (mg, by) = (messaging_group_id.to_string(), approver.to_string());
        if self.store.call(move |c| store::await_agent_name(c, &mg, &by)).await? {
            Ok(())
        } else {
            Err(EffectError::NotFound(messaging_group_id.to_string()))
        }
    }

    /// Rejects a chat: `denied_at` is set, the registration removed; later messages there are
    /// recorded `channel_denied` until an explicit wiring.
    pub async fn reject_channel(&self, messaging_group_id: &str, approver: &str) -> Result<(), EffectError> {
        let mg = messaging_group_id.to_string();
        let found = self
            .store
            .call(move |c| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .sql("begin reject channel")?;
                if store::channel_approval(&tx, &mg)?.is_none() {
                    return Ok(false);
                }
                store::deny_messaging_group(&tx, &mg)?;
                store::clear_channel_approval(&tx, &mg)?;
                tx.commit().sql("commit reject channel")?;
                Ok(true)
            })
            .await?;
        if !found {
            return Err(EffectError::NotFound(messaging_group_id.to_string()));
        }
        info!(chat = %messaging_group_id, %approver, "chat rejected");
        Ok(())
    }

    /// Routes a stored event again under its ledger id.
    async fn replay(&self, ledger_id: &str, event_json: &str) -> Result<InboundAck, EffectError> {
        let event: InboundEvent = serde_json::from_str(event_json)
            .map_err(|e| StoreError::Invalid(format!("original_message: {e}")))?;
        let facts = Facts {
            ledger_id: ledger_id.to_string(),
            sender: namespaced_sender(&event),
            event_json: event_json.to_string(),
            event,
        };
        Ok(self.route_entry(facts, &new_id("tr")).await?)
    }

    /// Re-projects an agent group's destinations into the `inbound.db` of each of its sessions
    /// that has a live actor (the others read them at their next container start). Best effort:
    /// a session that cannot take them now gets them at its next start.
    pub async fn refresh_destinations(&self, agent_group_id: &str) {
        let Ok(sessions) = self.sessions.list().await else { return };
        for s in sessions {
            if let Ok(status) = s.status().await
                && status.agent_group_id == agent_group_id
            {
                s.refresh_destinations();
            }
        }
    }
}
