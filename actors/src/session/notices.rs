//! What a session tells people: replies and notes to its chat, progress notices, and the owner.
//!
//! Every send goes through the channel registry of the service; a channel that is not running
//! makes a note undeliverable (logged), never an error of the session. Host notes carry a
//! `host-…` key so idempotent channels can deduplicate them too: unique per note (a second
//! "queued" note of a later wait is a new note), or derived from the row it is about.

use crate::context::ServiceContext;
use crate::ports::channel::{DeliveryError, Notice, OutboundMessage};
use crate::ports::provider::ProxyEvent;
use crate::session_files::{self as files, SessionPaths};
use crate::store::{self, SessionHold, SessionInfo};
use nanoclaw_protocol::content::ChatContent;
use nanoclaw_protocol::settings::ImageTier;
use tracing::{info, warn};

/// Sends one message through the channel of `channel_type` (delivery timeout from the config).
/// Errors with a retryable `NotSent` when no such channel runs.
pub async fn send(
    ctx: &ServiceContext,
    channel_type: &str,
    message: OutboundMessage,
) -> Result<Option<String>, DeliveryError> {
    match ctx.channels.for_channel_type(channel_type) {
        Some(ch) => ch.deliver(message, ctx.config.delivery_timeout).await,
        None => Err(DeliveryError::transient(format!("channel {channel_type} is not running"))),
    }
}

/// Whether the channel of `channel_type` runs, and if so whether its sends are idempotent by key.
pub fn channel_state(ctx: &ServiceContext, channel_type: &str) -> Option<bool> {
    ctx.channels.for_channel_type(channel_type).map(|c| c.idempotent_sends())
}

/// Passes a progress notice to the channel of `channel_type`, if it runs.
pub fn notice(ctx: &ServiceContext, channel_type: &str, notice: Notice) {
    if let Some(ch) = ctx.channels.for_channel_type(channel_type) {
        ch.notice(notice);
    }
}

/// A host note to the session's own chat (best effort, logged when undeliverable).
pub async fn tell_chat(ctx: &ServiceContext, session: &SessionInfo, key: String, text: String) {
    let (Some(channel_type), Some(platform_id)) = (session.channel_type.clone(), session.platform_id.clone())
    else {
        return;
    };
    let message = OutboundMessage {
        platform_id,
        thread_id: session.thread_id.clone(),
        text,
        in_reply_to: None,
        message_out_id: key,
    };
    if let Err(e) = send(ctx, &channel_type, message).await {
        warn!(session = %session.id, error = %e, "note to the chat not delivered");
    }
}

/// Tells the session's chat that its message waits for a container slot.
pub async fn tell_queued(ctx: &ServiceContext, session: &SessionInfo, ahead: usize) {
    let cap = ctx.slots.cap();
    info!(session = %session.id, ahead, cap, "queued for a container slot");
    let text = format!(
        "Queued: all {cap} agent containers are busy; {ahead} conversation(s) ahead of yours. I will answer as soon as one is free."
    );
    tell_chat(ctx, session, store::new_id("host-queued"), text).await;
}

/// Tells the session's chat that its agent's image (`tier`) could not be prepared, why (the
/// runtime's one line, which names the fix: install debootstrap, run as root, a config key), and
/// when the host tries again. The message stays queued.
pub async fn tell_image_failed(
    ctx: &ServiceContext,
    session: &SessionInfo,
    tier: ImageTier,
    error: &str,
    retry_in: std::time::Duration,
) {
    let text = format!(
        "The agent's `{}` image could not be prepared: {error}. Your message is kept; I will try again in {} s.",
        tier.as_str(),
        retry_in.as_secs().max(1)
    );
    tell_chat(ctx, session, store::new_id("host-image"), text).await;
}

/// Tells the chat and the owner (once, by the caller) that the session is held, and how to
/// release it.
pub async fn tell_held(ctx: &ServiceContext, session: &SessionInfo, hold: &SessionHold) {
    let what = match hold {
        SessionHold::Quarantined(_) => "quarantined: its container broke the host's rules for its files",
        SessionHold::Paused(_) => "paused: its workspace is over its size limit",
    };
    let text = format!(
        "This conversation's agent is {what} ({}). Your messages are kept and will be answered after an operator runs `nanoclaw sessions release {}`.",
        hold.reason(),
        session.id
    );
    tell_chat(ctx, session, store::new_id("host-held"), text.clone()).await;
    // The owner's chat is the local CLI chat; tell it too unless it is the same chat.
    let own = session.channel_type.as_deref() == Some("cli")
        && session.platform_id.as_deref() == Some(store::CLI_PLATFORM_ID);
    if !own {
        let message = OutboundMessage {
            platform_id: store::CLI_PLATFORM_ID.to_string(),
            thread_id: None,
            text: format!(
                "Session {} ({}) is {what}: {}",
                session.id,
                session.agent_group_name,
                hold.reason()
            ),
            in_reply_to: None,
            message_out_id: store::new_id("host-held-owner"),
        };
        if let Err(e) = send(ctx, "cli", message).await {
            warn!(session = %session.id, error = %e, "note to the owner not delivered");
        }
    }
}

/// Tells the owner (the local CLI chat) `text` about `session` (best effort, logged when
/// undeliverable). Rate limits are the caller's (see [`crate::store::claim_owner_notice`]).
pub async fn tell_owner(ctx: &ServiceContext, session: &SessionInfo, text: String) {
    info!(session = %session.id, "note to the owner: {text}");
    let message = OutboundMessage {
        platform_id: store::CLI_PLATFORM_ID.to_string(),
        thread_id: None,
        text,
        in_reply_to: None,
        message_out_id: store::new_id("host-owner"),
    };
    if let Err(e) = send(ctx, "cli", message).await {
        warn!(session = %session.id, error = %e, "note to the owner not delivered");
    }
}

/// Tells the owner what the credential proxy met (the proxy already limited how often).
pub async fn tell_owner_proxy(ctx: &ServiceContext, session: &SessionInfo, event: &ProxyEvent) {
    let text = match event {
        ProxyEvent::BudgetExceeded { used, budget } => format!(
            "Agent group {} has used {used} tokens today, its daily budget (providers.daily_token_budget) is {budget}: model calls are refused until tomorrow (UTC).",
            session.agent_group_name
        ),
        ProxyEvent::KeyRefused { provider, env, status } => format!(
            "The {provider} API refused the key in {env} (HTTP {status}); agent group {}'s turns fail until it is fixed.",
            session.agent_group_name
        ),
        ProxyEvent::Refused { .. } => return,
    };
    tell_owner(ctx, session, text).await;
}

/// The content of an inbound chat row (its platform message id and trace id), if any.
pub async fn chat_content(paths: &SessionPaths, message_id: &str) -> Option<ChatContent> {
    let (paths, id) = (paths.clone(), message_id.to_string());
    tokio::task::spawn_blocking(move || files::chat_content(&paths, &id).ok().flatten()).await.ok().flatten()
}

/// Tells the user a message will not be answered, and marks it failed on the channel.
pub async fn tell_failed(
    ctx: &ServiceContext,
    session: &SessionInfo,
    paths: &SessionPaths,
    message_id: &str,
    channel_type: Option<String>,
    platform_id: Option<String>,
    text: String,
) {
    let (Some(channel_type), Some(platform_id)) = (channel_type, platform_id) else { return };
    let message = OutboundMessage {
        platform_id: platform_id.clone(),
        thread_id: session.thread_id.clone(),
        text: text.clone(),
        in_reply_to: None,
        message_out_id: format!("host-failed-{message_id}"),
    };
    if let Err(e) = send(ctx, &channel_type, message).await {
        warn!(session = %session.id, error = %e, "failure note not delivered");
    }
    if let Some(pmid) = chat_content(paths, message_id).await.and_then(|c| c.platform_message_id) {
        notice(ctx, &channel_type, Notice::Failed { platform_id, platform_message_id: pmid, reason: text });
    }
}
