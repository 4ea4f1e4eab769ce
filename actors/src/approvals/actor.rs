//! `ApprovalActor`: one per open approval (DESIGN §4). It is driven by its row, so a restart —
//! of the actor after a crash, or of the host — picks up where the row says:
//!
//! - `pending`: arms its expiry as a ractor timer for the remaining lifetime (past it: at once);
//!   without a card, settles what the card shows (exact package versions) and delivers it to the
//!   approver (retried with backoff, then the next approver, then the request fails with the
//!   reason); no approver at all fails it at once with the grant command in the agent's note.
//! - `approved`: carries the decision out once ([`crate::store::begin_execution`] counts runs; a
//!   row found `approved` at start runs once more, a third time fails it), after checking the
//!   payload's hash against the card's (`payload_changed`).
//! - `denied` / `expired` not yet reported: applies the refusal's effects.
//!
//! Every ending edits the card and, for an agent's request, tells the agent with a note that
//! wakes it. The actor then stops. Decisions themselves never pass through this mailbox
//! ([`super::ApprovalsHandle::decide`] takes the row); it only hears that one was taken.

use super::ApprovalsConfig;
use super::actions::{self, Done};
use super::card;
use crate::context::ServiceContext;
use crate::ports::channel::{Delivery, EditRequest, OutboundMessage};
use crate::router::{ChannelChoice, Router};
use crate::session_files::NewInbound;
use crate::store::{self, Approval, ApprovalKind, ApprovalStatus, CardAddress, StoreError};
use nanoclaw_protocol::content::SystemNotice;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

/// What every approval actor needs.
pub struct ApprovalDeps {
    /// The service.
    pub ctx: Arc<ServiceContext>,
    /// The router, for the effects of sender and channel decisions.
    pub router: Router,
    /// Settings.
    pub config: ApprovalsConfig,
}

impl ApprovalDeps {
    /// Edits the card and tells the agent (best effort: the row already holds the outcome).
    pub async fn report(&self, a: &Approval) {
        self.edit_card(a).await;
        self.note_agent(a).await;
    }

    async fn edit_card(&self, a: &Approval) {
        let (Some(card), Some(message_id)) = (&a.card, &a.card_message_id) else { return };
        let Some(channel) = self.ctx.channels.for_channel_type(&card.channel_type) else { return };
        let edit = Delivery::Edit(EditRequest {
            platform_id: card.platform_id.clone(),
            platform_message_id: message_id.clone(),
            text: card::final_text(a),
            message_out_id: format!("card-{}-{}", a.id, a.status),
            in_reply_to: None,
        });
        if let Err(e) = channel.perform(edit, self.ctx.config.delivery_timeout).await {
            warn!(approval = %a.id, error = %e, "approval card not edited");
        }
    }

    /// The note for the requesting agent about the outcome (a row that wakes it; `on_wake` when
    /// its container restarts for it).
    fn agent_note(&self, a: &Approval, on_wake: bool) -> NewInbound {
        let by = a.decided_by.as_deref().unwrap_or("host");
        let result = a.result.as_deref().unwrap_or("");
        let text = match a.status {
            ApprovalStatus::Executed => {
                format!("Your {} request {} was approved by {by} and done: {result}", a.action, a.id)
            }
            ApprovalStatus::Denied => format!(
                "Your {} request {} was denied by {by}. Do not ask again on your own; tell the user what was \
                 denied.",
                a.action, a.id
            ),
            ApprovalStatus::Expired => format!(
                "Your {} request {} expired: nobody decided in time. Tell the user; ask again only if they want it.",
                a.action, a.id
            ),
            _ => format!("Your {} request {} failed: {result}", a.action, a.id),
        };
        let notice = SystemNotice::Note { text };
        NewInbound {
            trigger: true,
            on_wake,
            ..NewInbound::system_note(format!("appr-{}-{}", a.id, a.status), &notice)
        }
    }

    async fn note_agent(&self, a: &Approval) {
        let Some(session) = a.session_id.clone() else { return };
        let row = match a.kind {
            ApprovalKind::Question => {
                let id = a.id.clone();
                let Ok(Some(q)) = self.ctx.store.call(move |c| store::question(c, &id)).await else {
                    return;
                };
                let (ok, message) = match a.status {
                    ApprovalStatus::Executed => (true, a.result.clone().unwrap_or_default()),
                    ApprovalStatus::Expired => {
                        (false, "the question timed out: nobody answered in time".to_string())
                    }
                    _ => (
                        false,
                        format!("the question could not be asked: {}", a.result.as_deref().unwrap_or("")),
                    ),
                };
                if self.asker_waits(&session, q.generation).await {
                    // The answer the waiting tool reads (`note-<row id>`), with the wake byte.
                    NewInbound::system_note(
                        format!("note-{}", q.message_out_id),
                        &SystemNotice::ActionResult {
                            message_out_id: q.message_out_id,
                            action: "ask_user_question".into(),
                            ok,
                            message,
                        },
                    )
                } else {
                    // The container that asked is gone (a restart): its tool waits no more, so
                    // the answer is a note that wakes the agent.
                    let text = if ok {
                        format!(
                            "You asked \"{}\" ({}) before your container restarted; the answer: {message}",
                            q.title, q.id
                        )
                    } else {
                        format!(
                            "You asked \"{}\" ({}) before your container restarted: {message}",
                            q.title, q.id
                        )
                    };
                    NewInbound {
                        trigger: true,
                        ..NewInbound::system_note(
                            format!("appr-{}-{}", a.id, a.status),
                            &SystemNotice::Note { text },
                        )
                    }
                }
            }
            ApprovalKind::Action => self.agent_note(a, false),
            _ => return,
        };
        if let Err(e) = self.tell_session(&session, vec![row], false).await {
            warn!(approval = %a.id, error = %e, "could not tell the agent");
        }
    }

    /// Whether the container of `generation` still runs in the session (its tool waits).
    async fn asker_waits(&self, session_id: &str, generation: i64) -> bool {
        let Ok(handle) = self.session(session_id).await else { return false };
        handle.status().await.is_ok_and(|s| s.container_generation == Some(generation))
    }

    /// The live actor of a session (spawned if needed).
    async fn session(&self, session_id: &str) -> Result<crate::actors::session::SessionHandle, String> {
        let sid = session_id.to_string();
        let info = self
            .ctx
            .store
            .call(move |c| store::session_info(c, &sid))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("session {session_id} is gone"))?;
        let sessions = self.ctx.sessions.get().ok_or("no session supervisor")?;
        sessions.get(info).await.map_err(|e| e.to_string())
    }

    /// Writes rows into a session (restarting its container after them when `restart`).
    async fn tell_session(
        &self,
        session_id: &str,
        rows: Vec<NewInbound>,
        restart: bool,
    ) -> Result<(), String> {
        let handle = self.session(session_id).await?;
        if restart {
            handle.restart_with(rows, "approved configuration change").await.map_err(|e| e.to_string())?;
        } else {
            handle.enqueue(rows).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ApprovalDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApprovalDeps")
    }
}

/// The approval actor (configuration only).
pub struct ApprovalActor;

/// Messages of [`ApprovalActor`].
#[derive(Debug)]
pub enum ApprovalMessage {
    /// Look at the row and do what it says (sent once at start).
    Step,
    /// A decision was taken ([`super::ApprovalsHandle::decide`]).
    Decided,
    /// Try to deliver the card again.
    RetryCard,
    /// The lifetime is over.
    Expire,
}

/// Private state.
pub struct ApprovalState {
    id: String,
    deps: Arc<ApprovalDeps>,
    /// The armed expiry; aborted when the state drops.
    expiry: Option<Timer>,
    /// A card retry is armed.
    retry: Option<Timer>,
    /// Why the last card delivery failed.
    last_card_error: Option<String>,
}

/// An armed ractor timer, cancelled when dropped.
type Timer = AbortOnDropHandle<Result<(), ractor::MessagingErr<ApprovalMessage>>>;

/// Arguments: the approval id and the shared dependencies.
pub type ApprovalArgs = (String, Arc<ApprovalDeps>);

impl Actor for ApprovalActor {
    type Msg = ApprovalMessage;
    type State = ApprovalState;
    type Arguments = ApprovalArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (id, deps): ApprovalArgs,
    ) -> Result<ApprovalState, ActorProcessingErr> {
        let _ = myself.cast(ApprovalMessage::Step);
        Ok(ApprovalState { id, deps, expiry: None, retry: None, last_card_error: None })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ApprovalMessage,
        state: &mut ApprovalState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ApprovalMessage::Step | ApprovalMessage::Decided => state.step(&myself).await?,
            ApprovalMessage::RetryCard => {
                state.retry = None;
                state.step(&myself).await?;
            }
            ApprovalMessage::Expire => {
                let id = state.id.clone();
                let expired = state
                    .deps
                    .ctx
                    .store
                    .call(move |c| store::finish_approval(c, &id, ApprovalStatus::Expired, None))
                    .await?;
                if expired {
                    info!(approval = %state.id, "approval expired");
                }
                // Decided meanwhile: its own message follows. Expired: report it.
                state.step(&myself).await?;
            }
        }
        Ok(())
    }
}

impl ApprovalState {
    async fn load(&self) -> Result<Option<Approval>, StoreError> {
        let id = self.id.clone();
        self.deps.ctx.store.call(move |c| store::approval(c, &id)).await
    }

    async fn step(&mut self, myself: &ActorRef<ApprovalMessage>) -> Result<(), ActorProcessingErr> {
        let Some(a) = self.load().await? else {
            myself.stop(None);
            return Ok(());
        };
        match a.status {
            ApprovalStatus::Pending => {
                // The lifetime runs from the request, card or not: one that never reaches an
                // approver in time expires like any other.
                self.arm_expiry(myself, &a);
                if a.card.is_some() || self.retry.is_some() || a.expires_at <= chrono::Utc::now() {
                    return Ok(());
                }
                // What the card shows is settled first (exact package versions).
                let Some(a) = self.settle_payload(a).await? else { return Ok(()) };
                self.deliver_card(myself, &a).await?;
            }
            ApprovalStatus::Approved => {
                self.execute(a).await?;
                myself.stop(None);
            }
            ApprovalStatus::Denied | ApprovalStatus::Expired if a.result.is_none() => {
                self.report_refusal(a).await?;
                myself.stop(None);
            }
            _ => myself.stop(None),
        }
        Ok(())
    }

    /// An `install_packages` request gets its exact versions before its card; unknown names fail
    /// it there. Returns the row as the card will show it, `None` when it ended.
    async fn settle_payload(&mut self, a: Approval) -> Result<Option<Approval>, ActorProcessingErr> {
        if a.kind != ApprovalKind::Action || a.action != "install_packages" {
            return Ok(Some(a));
        }
        let payload = a.payload_value()?;
        if !payload["pinned"].is_null() {
            return Ok(Some(a));
        }
        match actions::resolve(&self.deps, &a).await {
            Ok(payload) => {
                let id = a.id.clone();
                self.deps.ctx.store.call(move |c| store::set_approval_payload(c, &id, &payload)).await?;
                Ok(self.load().await?.filter(|a| a.status == ApprovalStatus::Pending))
            }
            Err(why) => {
                self.fail(a, format!("refused before any card: {why}")).await?;
                Ok(None)
            }
        }
    }

    fn arm_expiry(&mut self, myself: &ActorRef<ApprovalMessage>, a: &Approval) {
        if self.expiry.is_some() {
            return;
        }
        let left = (a.expires_at - chrono::Utc::now()).to_std().unwrap_or_default();
        self.expiry = Some(AbortOnDropHandle::new(myself.send_after(left, || ApprovalMessage::Expire)));
    }

    /// Who gets the card, in order: each approver with a live channel of their own type (those on
    /// the origin's platform first) in a DM, then the origin chat. A question goes to its chat.
    async fn candidates(&self, a: &Approval) -> Result<Vec<(Option<String>, CardAddress)>, StoreError> {
        if a.kind == ApprovalKind::Question {
            let id = a.id.clone();
            let q = self.deps.ctx.store.call(move |c| store::question(c, &id)).await?;
            return Ok(q.map(|q| vec![(None, q.card)]).unwrap_or_default());
        }
        let ag = a.agent_group_id.clone();
        let approvers = self.deps.ctx.store.call(move |c| store::approvers_of(c, ag.as_deref())).await?;
        // Channels the service runs (live or restarting): a card waits for a restarting one.
        let served: Vec<&str> = self.deps.ctx.adapters.iter().map(|a| a.channel_type()).collect();
        let mut dms: Vec<(Option<String>, CardAddress)> = approvers
            .iter()
            .filter_map(|u| {
                let (channel_type, handle) = u.split_once(':')?;
                served.contains(&channel_type).then_some(())?;
                Some((
                    Some(u.clone()),
                    CardAddress {
                        channel_type: channel_type.into(),
                        platform_id: handle.into(),
                        thread_id: None,
                    },
                ))
            })
            .collect();
        let origin = a.origin.channel_type.as_deref();
        dms.sort_by_key(|(_, c)| Some(c.channel_type.as_str()) != origin);
        if let (Some(first), Some(channel_type), Some(platform_id)) =
            (approvers.first(), a.origin.channel_type.clone(), a.origin.platform_id.clone())
        {
            let chat = CardAddress { channel_type, platform_id, thread_id: a.origin.thread_id.clone() };
            if !dms
                .iter()
                .any(|(_, c)| c.channel_type == chat.channel_type && c.platform_id == chat.platform_id)
            {
                dms.push((Some(first.clone()), chat));
            }
        }
        Ok(dms)
    }

    /// Delivers the card. On failure a retry is armed, or the request fails.
    async fn deliver_card(
        &mut self,
        myself: &ActorRef<ApprovalMessage>,
        a: &Approval,
    ) -> Result<(), ActorProcessingErr> {
        let candidates = self.candidates(a).await?;
        if candidates.is_empty() {
            let reason = match (a.kind, &a.agent_group_id) {
                (ApprovalKind::Question, _) => "the question's chat is gone".to_string(),
                (_, Some(ag)) => format!(
                    "no owner or admin can approve it: grant one with `ncl roles grant --user <user id> --role admin \
                     --group {ag}` (or `--role owner` without --group), then ask again"
                ),
                (_, None) => {
                    "no owner or admin can approve it: grant one with `ncl roles grant --user <user id> \
                              --role owner`"
                        .to_string()
                }
            };
            self.fail(a.clone(), reason).await?;
            return Ok(());
        }
        let per = i64::from(self.deps.config.card_attempts.max(1));
        let index = usize::try_from(a.card_attempts / per).unwrap_or(usize::MAX);
        let Some((approver, address)) = candidates.get(index).cloned() else {
            let why = self.last_card_error.clone().unwrap_or_else(|| "no channel took it".into());
            self.fail(a.clone(), format!("the card could not be delivered to any approver: {why}")).await?;
            return Ok(());
        };
        let card = card::render(a, self.deps.config.card_text_chars);
        let message = OutboundMessage {
            platform_id: address.platform_id.clone(),
            thread_id: address.thread_id.clone(),
            text: String::new(),
            in_reply_to: None,
            message_out_id: format!("card-{}", a.id),
        };
        let Some(channel) = self.deps.ctx.channels.for_channel_type(&address.channel_type) else {
            // Not running yet (the host is starting) or restarting: look again shortly without
            // spending an attempt.
            self.retry = Some(AbortOnDropHandle::new(
                myself.send_after(std::time::Duration::from_millis(500), || ApprovalMessage::RetryCard),
            ));
            return Ok(());
        };
        let sent = channel
            .perform(
                Delivery::Choice { message, card: Box::new(card) },
                self.deps.ctx.config.delivery_timeout,
            )
            .await;
        let id = a.id.clone();
        match sent {
            Ok(message_id) => {
                self.deps
                    .ctx
                    .store
                    .call(move |c| {
                        store::record_card(c, &id, approver.as_deref(), &address, message_id.as_deref())
                    })
                    .await?;
                info!(approval = %a.id, action = %a.action, "approval card delivered");
                Ok(())
            }
            Err(e) => {
                warn!(approval = %a.id, chat = %address.platform_id, error = %e, "approval card not delivered; will retry");
                self.last_card_error = Some(e.to_string());
                let n = self.deps.ctx.store.call(move |c| store::count_card_attempt(c, &id)).await?;
                let backoff =
                    self.deps.config.card_retry * 2u32.saturating_pow(((n - 1) % per).clamp(0, 10) as u32);
                self.retry =
                    Some(AbortOnDropHandle::new(myself.send_after(backoff, || ApprovalMessage::RetryCard)));
                Ok(())
            }
        }
    }

    /// Fails an open request with `reason`, then reports it.
    async fn fail(&mut self, a: Approval, reason: String) -> Result<(), ActorProcessingErr> {
        warn!(approval = %a.id, action = %a.action, %reason, "approval failed");
        let (id, r) = (a.id.clone(), reason.clone());
        self.deps
            .ctx
            .store
            .call(move |c| store::finish_approval(c, &id, ApprovalStatus::Failed, Some(&r)))
            .await?;
        if let Some(a) = self.load().await? {
            self.clear_request(&a).await;
            self.deps.report(&a).await;
        }
        Ok(())
    }

    /// Carries an approved request out (once per approval id; see the module docs).
    async fn execute(&mut self, a: Approval) -> Result<(), ActorProcessingErr> {
        let id = a.id.clone();
        let Some(run) = self.deps.ctx.store.call(move |c| store::begin_execution(c, &id)).await? else {
            return Ok(());
        };
        if run > 2 {
            return self
                .fail(a, "the host stopped twice while carrying it out; not tried again".into())
                .await;
        }
        if !a.payload_intact() {
            return self
                .fail(
                    a.clone(),
                    format!(
                        "payload_changed: the stored request no longer matches the card (hash {}); nothing was done",
                        a.hash_prefix()
                    ),
                )
                .await;
        }
        let outcome = self.carry_out(&a).await;
        let (status, text) = match &outcome {
            Ok(done) => (ApprovalStatus::Executed, done.message.clone()),
            Err(why) => (ApprovalStatus::Failed, why.clone()),
        };
        let (id, t) = (a.id.clone(), text.clone());
        self.deps.ctx.store.call(move |c| store::finish_approval(c, &id, status, Some(&t))).await?;
        info!(approval = %a.id, action = %a.action, status = %status, result = %text, "approval carried out");
        let Some(done_row) = self.load().await? else { return Ok(()) };
        if status == ApprovalStatus::Failed {
            self.clear_request(&done_row).await;
        }
        self.deps.edit_card(&done_row).await;
        match (&outcome, done_row.session_id.clone()) {
            (Ok(done), Some(session)) if done.restart => {
                let row = self.deps.agent_note(&done_row, true);
                if let Err(e) = self.deps.tell_session(&session, vec![row], true).await {
                    warn!(approval = %a.id, error = %e, "could not restart the agent with the note");
                }
            }
            _ => self.deps.note_agent(&done_row).await,
        }
        Ok(())
    }

    /// Does what the approved request asks. Errors: the reason, for people.
    async fn carry_out(&self, a: &Approval) -> Result<Done, String> {
        let payload = a.payload_value().map_err(|e| e.to_string())?;
        let by = a.decided_by.clone().unwrap_or_else(|| "host".into());
        let router = &self.deps.router;
        match a.kind {
            ApprovalKind::Sender => {
                let ack = router.approve_sender(&a.request_id, &by).await.map_err(|e| e.to_string())?;
                Ok(Done {
                    message: format!("sender allowed; their message was routed ({})", ack.ledger_id),
                    restart: false,
                })
            }
            ApprovalKind::Channel => {
                let choice = match a.choice.as_deref() {
                    Some(c) if c.starts_with("connect:") => {
                        ChannelChoice::Connect(c["connect:".len()..].to_string())
                    }
                    Some(c) if c.starts_with("new:") => {
                        ChannelChoice::CreateAgent(c["new:".len()..].to_string())
                    }
                    other => return Err(format!("choice: {other:?} is not an option of the card")),
                };
                let what = match &choice {
                    ChannelChoice::Connect(ag) => format!("chat connected to agent group {ag}"),
                    ChannelChoice::CreateAgent(name) => format!("agent {name:?} created and connected"),
                };
                router.connect_channel(&a.request_id, choice, &by).await.map_err(|e| e.to_string())?;
                Ok(Done { message: what, restart: false })
            }
            ApprovalKind::Question => {
                let answer = a.choice.clone().unwrap_or_default();
                Ok(Done { message: answer, restart: false })
            }
            ApprovalKind::Action => actions::carry_out(&self.deps, a, &payload).await,
        }
    }

    /// A denial or expiry: its effects, the card, the agent's note; then `result` marks it done.
    async fn report_refusal(&mut self, a: Approval) -> Result<(), ActorProcessingErr> {
        let by = a.decided_by.clone().unwrap_or_else(|| "host".into());
        match (a.kind, a.status) {
            (ApprovalKind::Sender, ApprovalStatus::Denied) => {
                if let Err(e) = self.deps.router.deny_sender(&a.request_id, &by).await {
                    warn!(approval = %a.id, error = %e, "sender denial not applied");
                }
            }
            (ApprovalKind::Channel, ApprovalStatus::Denied) => {
                if let Err(e) = self.deps.router.reject_channel(&a.request_id, &by).await {
                    warn!(approval = %a.id, error = %e, "chat rejection not applied");
                }
            }
            _ => self.clear_request(&a).await,
        }
        let result = match a.status {
            ApprovalStatus::Denied => format!("denied by {by}"),
            _ => "expired: nobody decided in time".to_string(),
        };
        let (id, r) = (a.id.clone(), result.clone());
        self.deps.ctx.store.call(move |c| store::note_refusal_applied(c, &id, &r)).await?;
        let a = Approval { result: Some(result), ..a };
        self.deps.report(&a).await;
        Ok(())
    }

    /// A request that ended without approval frees its routing request, so the sender's (or
    /// chat's) next message asks again.
    async fn clear_request(&self, a: &Approval) {
        let (kind, request) = (a.kind, a.request_id.clone());
        let cleared = self
            .deps
            .ctx
            .store
            .call(move |c| {
                match kind {
                    ApprovalKind::Sender => store::drop_sender_request(c, &request)?,
                    ApprovalKind::Channel => store::clear_channel_approval(c, &request)?,
                    _ => {}
                }
                Ok(())
            })
            .await;
        if let Err(e) = cleared {
            warn!(approval = %a.id, error = %e, "request not cleared");
        }
    }
}
