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

/// `send_file {path, text?, filename?, to?}`: sends a workspace file. The file is copied to
/// `outbox/<row id>/<name>` (the only place the host reads files from, without following links)
/// and a `file` row names it.
#[derive(Debug)]
pub struct SendFile;

/// Arguments of `send_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendFileArgs {
    /// The file, relative to the workspace.
    pub path: String,
    /// A caption.
    #[serde(default)]
    pub text: Option<String>,
    /// The name the user sees (default: the file's own name).
    #[serde(default)]
    pub filename: Option<String>,
    /// Destination name; default: the chat of the message being answered.
    #[serde(default)]
    pub to: Option<String>,
}

/// Resolves `to` (or the default chat) to an address and a name for the answer.
type Address = (Option<String>, Option<String>);

fn address_of(snapshot: &crate::db::Snapshot, to: Option<String>) -> Result<(Address, String), ToolError> {
    let to = to.or_else(|| origin_destination(snapshot));
    let (address, name) = match &to {
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
            "this chat".into(),
        ),
    };
    if address.0.is_none() && address.1.is_none() {
        return Err(ToolError("to: this session has no chat; name a destination".into()));
    }
    Ok((address, name))
}

#[async_trait]
impl Tool for SendFile {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "send_file".into(),
            description:
                "Send a file from your workspace to a chat (at most 50 MiB), with an optional caption.".into(),
            input_schema: schema_of::<SendFileArgs>(),
        }
    }

    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult {
        use nanoclaw_protocol::content::OutboundFileRef;
        use nanoclaw_protocol::layout::OUTBOX_DIR;
        use nanoclaw_protocol::validate::{MAX_FILE_NAME_BYTES, MAX_SEND_FILE_BYTES};
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let a: SendFileArgs = parse_args(args)?;
        let source = super::workspace::confine(cx.workspace, "path", &a.path)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&source.path)
            .map_err(|e| ToolError(format!("path: {}: {e}", source.rel.display())))?;
        let meta = file.metadata().map_err(|e| ToolError(format!("path: {e}")))?;
        if !meta.is_file() {
            return Err(ToolError(format!("path: {} is not a regular file", source.rel.display())));
        }
        if meta.len() > MAX_SEND_FILE_BYTES {
            return Err(ToolError(format!("path: {} is larger than 50 MiB", source.rel.display())));
        }
        let name = match a.filename {
            Some(n) => n,
            None => source.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        if name.is_empty()
            || name.len() > MAX_FILE_NAME_BYTES
            || name == "."
            || name == ".."
            || name.contains(['/', '\0'])
        {
            return Err(ToolError(format!(
                "filename: {name:?} is not a plain file name of at most 255 bytes"
            )));
        }
        let caption = a.text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        let snapshot = cx.snapshot;
        let (address, to_name) = address_of(snapshot, a.to)?;
        let id = cx.ledger.next_id();
        let outbox = cx.workspace.join(OUTBOX_DIR);
        match std::fs::symlink_metadata(&outbox) {
            Ok(m) if !m.is_dir() => {
                return Err(ToolError(format!("{OUTBOX_DIR} in the workspace is not a folder; remove it")));
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir(&outbox).map_err(|e| ToolError(format!("{OUTBOX_DIR}: {e}")))?,
        }
        let folder = outbox.join(&id);
        std::fs::create_dir(&folder).map_err(|e| ToolError(format!("{OUTBOX_DIR}/{id}: {e}")))?;
        let mut copy = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(folder.join(&name))
            .map_err(|e| ToolError(format!("{OUTBOX_DIR}/{id}/{name}: {e}")))?;
        let copied = std::io::copy(&mut file.take(MAX_SEND_FILE_BYTES), &mut copy)
            .map_err(|e| ToolError(format!("copying {}: {e}", source.rel.display())))?;
        let content = OutboundContent::File {
            text: caption,
            files: vec![OutboundFileRef { name: name.clone(), path: format!("{OUTBOX_DIR}/{id}/{name}") }],
        };
        let row = row_to_chat(snapshot, address, None, &content, id);
        cx.db
            .commit_turn(vec![row], &[], None, snapshot.max_inbound_seq)
            .map_err(|e| ToolError(format!("not sent: {e}")))?;
        cx.link.output().await;
        Ok(format!("sent {name} ({copied} bytes) to {to_name}"))
    }
}

/// Commits one chat row and tells the host.
async fn commit_row(
    cx: &mut ToolContext<'_>,
    row: nanoclaw_protocol::rows::OutboundRow,
) -> Result<(), ToolError> {
    cx.db
        .commit_turn(vec![row], &[], None, cx.snapshot.max_inbound_seq)
        .map_err(|e| ToolError(format!("not sent: {e}")))?;
    cx.link.output().await;
    Ok(())
}

/// The message with `seq`, or an error naming `seq`.
/// Commits `content` (an edit of, or a reaction to, the message `target`) to that message's chat.
async fn commit_about(
    cx: &mut ToolContext<'_>,
    target: crate::db::SeqTarget,
    content: &OutboundContent,
) -> Result<(), ToolError> {
    let row = row_to_chat(
        cx.snapshot,
        (target.channel_type, target.platform_id),
        None,
        content,
        cx.ledger.next_id(),
    );
    commit_row(cx, row).await
}

fn by_seq(cx: &ToolContext<'_>, seq: i64) -> Result<crate::db::SeqTarget, ToolError> {
    cx.db
        .message_by_seq(seq)
        .map_err(|e| ToolError(format!("seq: {e}")))?
        .ok_or_else(|| ToolError(format!("seq: no message with id {seq} in this conversation")))
}

/// `edit_message {seq, text}`: replaces the text of a message the agent sent.
#[derive(Debug)]
pub struct EditMessage;

/// Arguments of `edit_message`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessageArgs {
    /// The id of one of your own messages.
    pub seq: i64,
    /// Its new text.
    pub text: String,
}

#[async_trait]
impl Tool for EditMessage {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "edit_message".into(),
            description: "Replace the text of a message you sent earlier (by its id).".into(),
            input_schema: schema_of::<EditMessageArgs>(),
        }
    }

    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult {
        let a: EditMessageArgs = parse_args(args)?;
        let text = a.text.trim().to_string();
        if text.is_empty() {
            return Err(ToolError("text: must not be empty".into()));
        }
        let target = by_seq(cx, a.seq)?;
        if !target.sent {
            return Err(ToolError(format!(
                "seq: {} is a message you received; only your own can be edited",
                a.seq
            )));
        }
        let content = OutboundContent::Edit { target: target.id.clone(), text };
        commit_about(cx, target, &content).await?;
        Ok(format!("edited message {}", a.seq))
    }
}

/// `add_reaction {seq, emoji}`.
#[derive(Debug)]
pub struct AddReaction;

/// Arguments of `add_reaction`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddReactionArgs {
    /// The id of the message (received or sent).
    pub seq: i64,
    /// One emoji.
    pub emoji: String,
}

#[async_trait]
impl Tool for AddReaction {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "add_reaction".into(),
            description: "React to a message (by its id) with an emoji.".into(),
            input_schema: schema_of::<AddReactionArgs>(),
        }
    }

    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult {
        let a: AddReactionArgs = parse_args(args)?;
        let emoji = a.emoji.trim().to_string();
        if emoji.is_empty() || emoji.len() > nanoclaw_protocol::validate::MAX_EMOJI_BYTES {
            return Err(ToolError("emoji: one emoji, at most 64 bytes".into()));
        }
        let target = by_seq(cx, a.seq)?;
        let content = OutboundContent::Reaction { target: target.id.clone(), emoji: emoji.clone() };
        commit_about(cx, target, &content).await?;
        Ok(format!("reacted {emoji} to message {}", a.seq))
    }
}

/// `send_card {title, text, buttons?, to?}`.
#[derive(Debug)]
pub struct SendCard;

/// A link button of `send_card`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ButtonArg {
    /// The label.
    pub label: String,
    /// An http(s) URL.
    pub url: String,
}

/// Arguments of `send_card`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendCardArgs {
    /// Title.
    pub title: String,
    /// Body text.
    pub text: String,
    /// Link buttons (at most 10).
    #[serde(default)]
    pub buttons: Vec<ButtonArg>,
    /// Destination name; default: the chat of the message being answered.
    #[serde(default)]
    pub to: Option<String>,
}

#[async_trait]
impl Tool for SendCard {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "send_card".into(),
            description: "Send a card: a title, a text and up to 10 link buttons.".into(),
            input_schema: schema_of::<SendCardArgs>(),
        }
    }

    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult {
        use nanoclaw_protocol::content::CardButton;
        use nanoclaw_protocol::validate::{MAX_BUTTONS, MAX_URL_BYTES};
        let a: SendCardArgs = parse_args(args)?;
        if a.title.trim().is_empty() {
            return Err(ToolError("title: must not be empty".into()));
        }
        if a.buttons.len() > MAX_BUTTONS {
            return Err(ToolError(format!("buttons: {} buttons; at most {MAX_BUTTONS}", a.buttons.len())));
        }
        for (i, b) in a.buttons.iter().enumerate() {
            if !(b.url.starts_with("https://") || b.url.starts_with("http://")) || b.url.len() > MAX_URL_BYTES
            {
                return Err(ToolError(format!(
                    "buttons[{i}].url: only http(s) URLs of at most {MAX_URL_BYTES} bytes"
                )));
            }
        }
        let (address, to_name) = address_of(cx.snapshot, a.to)?;
        let content = OutboundContent::Card {
            title: a.title.trim().to_string(),
            text: a.text,
            buttons: a.buttons.into_iter().map(|b| CardButton { label: b.label, url: b.url }).collect(),
        };
        let row = row_to_chat(cx.snapshot, address, None, &content, cx.ledger.next_id());
        commit_row(cx, row).await?;
        Ok(format!("card sent to {to_name}"))
    }
}
