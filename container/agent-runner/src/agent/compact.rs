//! Keeping the conversation within the model's context (issue 6 part 3).
//!
//! **Estimate.** Before each model call the request's prompt size is estimated. When the model
//! reported its prompt tokens for an earlier request of the same conversation ([`Usage`]), the
//! estimate is that count plus the messages added since; otherwise (first request after a
//! start, after a compaction, a model that reports nothing) it is the byte estimate of the whole
//! request. The byte estimate is `bytes / 4` over the system prompt, the messages as JSON and the
//! tool specs as JSON — the usual ratio of BPE tokenizers on English text and JSON, computed in
//! a pass over bytes already in memory; it is scaled by the ratio real/estimated of the last
//! reported request, so a conversation in a language or a format that takes more tokens per
//! byte is measured in its own terms.
//!
//! **Compaction.** A request estimated past [`THRESHOLD_PERCENT`] % of the provider's
//! `context_tokens` is compacted before it is sent (at most once per turn), and so is a request
//! the API refused as over the context (then retried once). The conversation is cut where a turn
//! starts (a user message other than the loop's nudge), so every tool call keeps its result: the
//! turns after the cut, and always the running turn, stay verbatim — as many recent turns as fit
//! in half the threshold (after a refusal, also at most half of what was refused). The turns
//! before the cut are replaced by a summary the same model writes (no tools, [`SUMMARY_SYSTEM`],
//! the older turns rendered as text): a user message starting with [`SUMMARY_MARKER`] and an
//! assistant message [`SUMMARY_ACK`], stored in the transcript like any other messages (so the
//! loader reads it unchanged and it survives restarts). A later compaction summarises the
//! summary with the turns after it. When the summary request fails or answers nothing, the older
//! turns are dropped instead, and the user is told once.

use super::{NUDGE, UNKNOWN_DESTINATION};
use crate::model::{Block, ChatMessage, Model, ModelRequest, Role, ToolSpec, Usage};
use crate::provider::EventSink;
use nanoclaw_protocol::settings::RunnerProvider;

/// Compaction starts when a request is estimated past this share of `context_tokens`.
pub const THRESHOLD_PERCENT: u64 = 80;

/// The system prompt of a summary request.
pub const SUMMARY_SYSTEM: &str = "You summarise a conversation between a user and an AI assistant so that the assistant can \
     continue it without the original. Keep: what the user asked for and still wants, decisions \
     and agreements, facts learned (names, numbers, paths, URLs), what was done with tools and \
     what came of it, and what is still open. Be concise and factual; plain text, no preamble.";

/// The first line of the user message that holds a summary in the transcript.
pub const SUMMARY_MARKER: &str =
    "[Summary of the earlier conversation, written when it grew too long for the model's context]";

/// The assistant message after a summary (the pair keeps user/assistant turns alternating).
pub const SUMMARY_ACK: &str = "Understood. I continue from this summary.";

/// The note told to the user when older turns were dropped without a summary.
pub const DROPPED_NOTE: &str = "The conversation was too long for the model: its oldest part was dropped.";

/// Longest tool result (and tool-call arguments) in the text of a summary request, in bytes.
const RENDER_ITEM_BYTES: usize = 2000;

/// `context_tokens` at [`THRESHOLD_PERCENT`].
pub fn threshold(context_tokens: u32) -> u64 {
    u64::from(context_tokens) * THRESHOLD_PERCENT / 100
}

/// Bytes of `messages` as JSON (what the byte estimate counts).
fn message_bytes(messages: &[ChatMessage]) -> u64 {
    messages.iter().map(|m| serde_json::to_vec(m).map_or(0, |v| v.len() as u64)).sum()
}

/// The byte estimate of a request, in tokens: `bytes / 4` over the system prompt, the messages
/// as JSON and the tool specs as JSON (see the module docs).
pub fn byte_estimate(system: &str, messages: &[ChatMessage], tools: &[ToolSpec]) -> u64 {
    let tools = serde_json::to_vec(tools).map_or(0, |v| v.len() as u64);
    (system.len() as u64 + message_bytes(messages) + tools).div_ceil(4)
}

/// What the agent knows about token counts of its conversation.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    /// Real prompt tokens per estimated token, from the last request the model reported on.
    ratio: f64,
    /// (messages in that request, its reported prompt tokens), while the conversation still
    /// starts with those messages.
    mark: Option<(usize, u64)>,
}

impl Default for Meter {
    fn default() -> Self {
        Self { ratio: 1.0, mark: None }
    }
}

impl Meter {
    /// The estimated prompt tokens of `request` (see the module docs).
    pub fn estimate(&self, request: &ModelRequest<'_>) -> u64 {
        match self.mark {
            Some((n, tokens)) if n <= request.messages.len() => {
                tokens + self.scaled(message_bytes(&request.messages[n..]).div_ceil(4))
            }
            _ => self.scaled(byte_estimate(request.system, request.messages, request.tools)),
        }
    }

    /// A byte estimate (tokens) in the units of the model's reports.
    pub fn scaled(&self, tokens: u64) -> u64 {
        (tokens as f64 * self.ratio).ceil() as u64
    }

    /// Records the usage the model reported for `request` (nothing when it reported none).
    pub fn reported(&mut self, request: &ModelRequest<'_>, usage: Usage) {
        if usage.input_tokens == 0 {
            return;
        }
        let bytes = byte_estimate(request.system, request.messages, request.tools).max(1);
        // Clamped: one odd report (a server counting only uncached tokens) must not make the
        // estimate absurd.
        self.ratio = (usage.input_tokens as f64 / bytes as f64).clamp(0.25, 8.0);
        self.mark = Some((request.messages.len(), usage.input_tokens));
    }

    /// The conversation's earlier messages changed (compaction, `/clear`, a failed turn undone,
    /// a transcript loaded): the last report no longer describes a prefix of it.
    pub fn forget(&mut self) {
        self.mark = None;
    }
}

/// True for a user message that starts a turn (not the loop's nudge or destination correction).
pub fn starts_turn(m: &ChatMessage) -> bool {
    m.role == Role::User
        && !matches!(m.content.first(), Some(Block::Text { text })
            if text == NUDGE || text.starts_with(UNKNOWN_DESTINATION))
}

/// True for the user message of a stored summary.
pub fn is_summary(m: &ChatMessage) -> bool {
    m.role == Role::User
        && matches!(m.content.first(), Some(Block::Text { text }) if text.starts_with(SUMMARY_MARKER))
}

/// Where to cut `messages` (everything before the index is compacted), or `None` when there is
/// nothing before the running turn (which starts at `base`). The cut is the earliest turn start
/// in `1..=base` whose tail (`fixed` tokens for the system prompt and tools, plus the messages
/// from the cut) fits `keep` tokens; else `base` itself (at least the running turn is kept).
pub fn choose_cut(
    meter: &Meter,
    messages: &[ChatMessage],
    base: usize,
    fixed: u64,
    keep: u64,
) -> Option<usize> {
    let base = base.min(messages.len());
    if base == 0 {
        return None;
    }
    let starts: Vec<usize> = (1..=base).filter(|&i| i == base || starts_turn(&messages[i])).collect();
    // Tail sizes from the back, so the whole pass is linear.
    let mut tail = 0u64;
    let mut fits = None;
    let mut next = messages.len();
    for &cut in starts.iter().rev() {
        tail += message_bytes(&messages[cut..next]);
        next = cut;
        if fixed + meter.scaled(tail.div_ceil(4)) <= keep {
            fits = Some(cut);
        } else {
            break;
        }
    }
    fits.or(starts.last().copied())
}

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The older turns as plain text for a summary request (tool calls and results as lines, each
/// at most 2000 bytes; no tool blocks, so the request needs no tools), at most `max_bytes`: when
/// longer, the start is left out (the most recent of the older turns matter most).
pub fn render(messages: &[ChatMessage], max_bytes: usize) -> String {
    let mut lines = Vec::new();
    for m in messages {
        for b in &m.content {
            let line = match (m.role, b) {
                (Role::User, Block::Text { text }) if text.starts_with(SUMMARY_MARKER) => {
                    format!("Summary of what came before:\n{}", text[SUMMARY_MARKER.len()..].trim())
                }
                (Role::User, Block::Text { text }) => format!("User: {text}"),
                (_, Block::Text { text }) => format!("Assistant: {text}"),
                (_, Block::ToolCall(c)) => format!(
                    "Assistant called {} {}",
                    c.name,
                    clip(&c.arguments.to_string(), RENDER_ITEM_BYTES)
                ),
                (_, Block::ToolResult { content, is_error, .. }) => format!(
                    "{}: {}",
                    if *is_error { "Tool error" } else { "Tool result" },
                    clip(content, RENDER_ITEM_BYTES)
                ),
            };
            lines.push(line);
        }
    }
    let text = lines.join("\n\n");
    if text.len() <= max_bytes {
        return text;
    }
    let mut start = text.len() - max_bytes;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[the start of the conversation is left out]\n…{}", &text[start..])
}

/// Asks `model` for a summary of `older` (see the module docs). Errors: the model call failed
/// or its answer had no text (the reason, for the log).
pub async fn summarise(
    model: &mut dyn Model,
    older: &[ChatMessage],
    provider: &RunnerProvider,
    events: &mut dyn EventSink,
) -> Result<String, String> {
    // The summary request must fit the context itself: 60 % of it for the older turns (by the
    // byte estimate), the rest for the prompt and the answer.
    let max_bytes = usize::try_from(u64::from(provider.context_tokens) * 4 * 60 / 100).unwrap_or(usize::MAX);
    let text = format!(
        "<conversation>\n{}\n</conversation>\n\nSummarise the conversation above.",
        render(older, max_bytes)
    );
    let messages = [ChatMessage { role: Role::User, content: vec![Block::Text { text }] }];
    let request = ModelRequest {
        system: SUMMARY_SYSTEM,
        messages: &messages,
        tools: &[],
        max_output_tokens: provider.max_output_tokens.min((provider.context_tokens / 8).max(256)),
        temperature: provider.temperature,
    };
    let reply = model.complete(&request, events).await.map_err(|e| e.to_string())?;
    let summary = super::text_of(&reply.blocks);
    if summary.trim().is_empty() {
        return Err("the summary answer had no text".into());
    }
    Ok(summary.trim().to_string())
}

/// The two messages that stand for the older turns in the transcript.
pub fn summary_pair(summary: &str) -> [ChatMessage; 2] {
    [
        ChatMessage {
            role: Role::User,
            content: vec![Block::Text { text: format!("{SUMMARY_MARKER}\n{summary}") }],
        },
        ChatMessage { role: Role::Assistant, content: vec![Block::Text { text: SUMMARY_ACK.into() }] },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ToolCall;

    fn text(role: Role, t: &str) -> ChatMessage {
        ChatMessage { role, content: vec![Block::Text { text: t.into() }] }
    }

    fn conversation() -> Vec<ChatMessage> {
        vec![
            text(Role::User, &"a".repeat(400)),
            ChatMessage {
                role: Role::Assistant,
                content: vec![Block::ToolCall(ToolCall {
                    id: "1".into(),
                    name: "list_files".into(),
                    arguments: serde_json::json!({}),
                })],
            },
            ChatMessage {
                role: Role::Tool,
                content: vec![Block::ToolResult {
                    call_id: "1".into(),
                    content: "x".repeat(400),
                    is_error: false,
                }],
            },
            text(Role::Assistant, "done"),
            text(Role::User, NUDGE),
            text(Role::Assistant, "again"),
            text(Role::User, &"b".repeat(400)),
            text(Role::Assistant, "ok"),
            text(Role::User, &"c".repeat(400)),
        ]
    }

    #[test]
    fn cuts_only_at_turn_starts_never_inside_the_running_turn() {
        let m = conversation();
        let meter = Meter::default();
        // Room for everything: the earliest start after 0 (the nudge is not a turn start).
        assert_eq!(choose_cut(&meter, &m, 8, 0, 10_000), Some(6));
        // Room for nothing: the running turn is kept anyway.
        assert_eq!(choose_cut(&meter, &m, 8, 0, 0), Some(8));
        // Nothing before the running turn.
        assert_eq!(choose_cut(&meter, &m[..1], 0, 0, 0), None);
    }

    #[test]
    fn the_estimate_prefers_the_reported_usage() {
        let m = conversation();
        let mut meter = Meter::default();
        let request = ModelRequest {
            system: "",
            messages: &m[..7],
            tools: &[],
            max_output_tokens: 10,
            temperature: None,
        };
        let bytes = byte_estimate("", &m[..7], &[]);
        assert_eq!(meter.estimate(&request), bytes);
        meter.reported(&request, Usage { input_tokens: bytes * 2, output_tokens: 1 });
        let longer = ModelRequest { messages: &m, ..request };
        let added = message_bytes(&m[7..]).div_ceil(4);
        assert_eq!(meter.estimate(&longer), bytes * 2 + added * 2);
        meter.forget();
        assert_eq!(meter.estimate(&longer), byte_estimate("", &m, &[]) * 2);
    }

    #[test]
    fn render_is_text_and_bounded() {
        let m = conversation();
        let r = render(&m, 1 << 20);
        assert!(r.contains("Assistant called list_files {}") && r.contains("Tool result: xxx"), "{r}");
        let short = render(&m, 100);
        assert!(short.len() < 200 && short.ends_with(&"c".repeat(50)), "{short}");
        let pair = summary_pair("we spoke of cats");
        assert!(is_summary(&pair[0]) && !is_summary(&m[0]));
        assert!(render(&pair, 1000).starts_with("Summary of what came before:\nwe spoke of cats"));
    }
}
