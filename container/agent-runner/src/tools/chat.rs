//! Chat tools: `send_message`.

use super::{Tool, ToolContext, ToolError, ToolResult, parse_args, schema_of};
use crate::model::ToolSpec;
use crate::prompt::{origin_destination, resolve_destination, row_to_chat};
use crate::provider::SentText;
use async_trait::async_trait;
use nanoclaw_protocol::content::OutboundContent;
use serde::Deserialize;

/// `send_message {text, to?}`: sends a message now, while the turn goes on (progress, or the
/// answer itself). The row is committed at once and the host told, so the user sees it before
/// the turn ends.
#[derive(Debug)]
pub struct SendMessage;

/// Arguments of `send_message`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageArgs {
    /// The text to send.
    pub text: String,
    /// Destination name (see the destinations in the system prompt); default: the chat of the
    /// message being answered.
    #[serde(default)]
    pub to: Option<String>,
}

#[async_trait]
impl Tool for SendMessage {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "send_message".into(),
            description: "Send a message to a chat now, while you keep working. Without `to` it goes to \
                          the chat you are answering."
                .into(),
            input_schema: schema_of::<SendMessageArgs>(),
        }
    }

    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult {
        let a: SendMessageArgs = parse_args(args)?;
        let text = a.text.trim();
        if text.is_empty() {
            return Err(ToolError("text: must not be empty".into()));
        }
        let snapshot = cx.snapshot;
        let to = a.to.or_else(|| origin_destination(snapshot));
        let (address, to_name) = match &to {
            Some(name) => match resolve_destination(snapshot, name) {
                Some(a) => (a, name.clone()),
                None => {
                    let known: Vec<&str> = snapshot.destinations.iter().map(|d| d.name.as_str()).collect();
                    return Err(ToolError(format!(
                        "to: unknown destination {name:?} (known: {})",
                        known.join(", ")
                    )));
                }
            },
            None => (
                (snapshot.routing.channel_type.clone(), snapshot.routing.platform_id.clone()),
                "this chat".to_string(),
            ),
        };
        if address.0.is_none() && address.1.is_none() {
            return Err(ToolError("to: this session has no chat; name a destination".into()));
        }
        let content = OutboundContent::Text { text: text.to_string() };
        let row = row_to_chat(snapshot, address.clone(), None, &content, cx.ledger.next_id());
        cx.db
            .commit_turn(vec![row], &[], None, snapshot.max_inbound_seq)
            .map_err(|e| ToolError(format!("not sent: {e}")))?;
        cx.link.output().await;
        cx.ledger.sent.push(SentText {
            channel_type: address.0,
            platform_id: address.1,
            text: text.to_string(),
        });
        Ok(format!("sent to {to_name}"))
    }
}
