//! The handle of a channel actor and its messages: what sessions and the registry of live
//! channels need to deliver, without depending on the channel actor's implementation (which
//! depends on the router, which depends on the sessions).

use crate::ports::channel::{ChannelAdapter, Delivery, DeliveryError, Notice, OutboundMessage};
use ractor::rpc::CallResult;
use ractor::{ActorRef, MessagingErr, RpcReplyPort};
use std::sync::Arc;
use std::time::Duration;

/// Messages of the channel actor (`crate::actors::channel::ChannelActor`).
pub enum ChannelMessage {
    /// Deliver one message, file, card, edit or reaction.
    Deliver {
        /// What to deliver.
        message: Delivery,
        /// The platform message id, or why not.
        reply: RpcReplyPort<Result<Option<String>, DeliveryError>>,
    },
    /// Pass a progress note to the adapter.
    Notice(Notice),
    /// The adapter lost its platform for good.
    AdapterFailed(String),
    /// Check the platform's sign of life against the adapter's liveness timeout.
    CheckLiveness,
}

/// A live channel: its actor and what a sender needs to know about it. Cheap to clone; this is
/// what [`crate::context::Channels`] holds.
#[derive(Debug, Clone)]
pub struct ChannelHandle {
    actor: ActorRef<ChannelMessage>,
    account: Arc<str>,
    channel_type: Arc<str>,
    idempotent_sends: bool,
}

impl ChannelHandle {
    /// A handle over a running channel actor of `adapter`.
    pub fn new(actor: ActorRef<ChannelMessage>, adapter: &dyn ChannelAdapter) -> Self {
        Self {
            actor,
            account: adapter.account().into(),
            channel_type: adapter.channel_type().into(),
            idempotent_sends: adapter.idempotent_sends(),
        }
    }

    /// The channel account ([`ChannelAdapter::account`]).
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The channel type.
    pub fn channel_type(&self) -> &str {
        &self.channel_type
    }

    /// The adapter's [`ChannelAdapter::idempotent_sends`]: the argument of
    /// [`DeliveryError::may_retry`].
    pub fn idempotent_sends(&self) -> bool {
        self.idempotent_sends
    }

    /// The actor.
    pub fn actor(&self) -> &ActorRef<ChannelMessage> {
        &self.actor
    }

    /// Delivers one message, waiting at most `timeout` for the adapter's answer. Returns the
    /// platform message id when the platform gives one.
    ///
    /// Errors, by what they say about the platform (DESIGN §5 invariant 3):
    /// - [`DeliveryError::NotSent`] `{retryable: true}`: the actor was not running (stopping or
    ///   restarting), so nothing was handed over; also the adapter's own `NotSent`;
    /// - [`DeliveryError::Timeout`]: no answer within `timeout`. If the actor had not begun the
    ///   send by then it skips it, but the caller cannot know which happened;
    /// - [`DeliveryError::OutcomeUnknown`]: the actor took the message and ended before answering
    ///   (it failed or panicked mid-send); also the adapter's own `OutcomeUnknown`.
    pub async fn deliver(
        &self,
        message: OutboundMessage,
        timeout: Duration,
    ) -> Result<Option<String>, DeliveryError> {
        self.perform(Delivery::Message(message), timeout).await
    }

    /// Delivers anything ([`Delivery`]): the same answers and errors as
    /// [`ChannelHandle::deliver`], whose general form it is.
    pub async fn perform(
        &self,
        message: Delivery,
        timeout: Duration,
    ) -> Result<Option<String>, DeliveryError> {
        match self.actor.call(|reply| ChannelMessage::Deliver { message, reply }, Some(timeout)).await {
            Ok(CallResult::Success(result)) => result,
            Ok(CallResult::Timeout) => Err(DeliveryError::Timeout),
            Ok(CallResult::SenderError) => Err(DeliveryError::OutcomeUnknown {
                message: format!("channel {} ended before confirming the send", self.account),
            }),
            Err(MessagingErr::SendErr(_) | MessagingErr::ChannelClosed) => {
                Err(DeliveryError::transient(format!("channel {} is not running", self.account)))
            }
            Err(MessagingErr::InvalidActorType) => {
                Err(DeliveryError::rejected(format!("channel {}: wrong actor type", self.account)))
            }
        }
    }

    /// Passes a progress note to the adapter; dropped when the channel is not running (notices
    /// are advisory: the replies themselves went through [`ChannelHandle::deliver`]).
    pub fn notice(&self, notice: Notice) {
        let _ = self.actor.cast(ChannelMessage::Notice(notice));
    }
}
