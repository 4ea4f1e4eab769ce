//! The offline default model: deterministic, no network (DESIGN §8, issue 6 part 8).
//!
//! It reads the batch back from the conversation (each inbound message is one text block, see
//! [`crate::prompt::Turn::blocks`]) and answers each triggering message with one block
//! `echo: <text>` addressed to the chat it came from (with `reply_to` naming it); a task gets
//! `echo: task: <prompt>`, a host note that woke it (an approval's outcome) `echo: system:
//! <note>`; context rows (`context="true"`) get nothing. It drives every tool
//! without a model:
//!
//! * a line `tool <name> <json args>` in a triggering message makes it call that tool (ids
//!   `echo-<seq>-<n>`); several lines make several calls, in order, in one reply;
//! * when the request ends in tool results it answers each with
//!   `<message to="<from>" reply_to="<seq>">tool <name>: <result></message>` (an error reads
//!   `tool <name>: error: <why>`);
//! * any other user message (the loop's nudge) gets its previous answer again, verbatim.
//!
//! Directives at the start of a message make every host flow testable:
//!
//! | directive | effect |
//! |---|---|
//! | `!sleep <ms> …` | works for `ms` (heartbeat kept fresh), then replies |
//! | `!hang <ms> …` | blocks for `ms` without any event (no heartbeat), then replies |
//! | `!exit <code>` | the runner exits at once with `code`, mid-turn, claims left behind |
//! | `!error <text>` | the call fails with a non-retryable error `text` |
//! | `!raw <text>` | `text` is the whole output, verbatim (tests the output syntax and the nudge) |
//! | `!notes` | replies `echo: notes=<texts>`, the host's `<system>` notes of this turn joined by ` / ` |
//! | `!turns` | replies `echo: turns=<n>`, the number of user turns in the conversation, which |
//! |  | survives container restarts through the transcript |
//! | `!rounds <n>` + `tool` lines | calls the same tools again after each result, `n` rounds in all |

use super::{
    Block, ChatMessage, Model, ModelError, ModelReply, ModelRequest, Role, StopReason, ToolCall, Usage,
};
use crate::provider::{EventSink, ProviderEvent};
use async_trait::async_trait;
use nanoclaw_protocol::output::message_block;
use std::collections::HashMap;
use std::time::Duration;

/// The echo model (see the module docs).
#[derive(Debug)]
pub struct EchoModel {
    name: String,
}

impl EchoModel {
    /// An echo model under the provider name `name` (the continuation key).
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string() }
    }
}

/// One inbound message as echo reads it back from its rendered block.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inbound {
    seq: i64,
    from: String,
    trigger: bool,
    task: bool,
    text: String,
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&")
}

fn attr(attrs: &str, name: &str) -> Option<String> {
    let start = attrs.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = attrs[start..].find('"')?;
    Some(unescape(&attrs[start..start + len]))
}

/// Parses `<message id=… from=…>text</message>` or `<task …>prompt</task>` as rendered by
/// [`crate::prompt::build_turn`]; the body is taken verbatim up to the final closing tag, so
/// any text (tags included) survives.
fn parse_inbound(block: &str) -> Option<Inbound> {
    let (tag, task) = if block.starts_with("<message ") {
        ("message", false)
    } else if block.starts_with("<task ") {
        ("task", true)
    } else if block.starts_with("<system ") {
        ("system", false)
    } else {
        return None;
    };
    let inner = block.strip_suffix(&format!("</{tag}>"))?;
    let open_end = inner.find('>')?;
    let attrs = &inner[1 + tag.len()..open_end];
    let body = &inner[open_end + 1..];
    Some(Inbound {
        seq: attr(attrs, "id")?.parse().ok()?,
        from: attr(attrs, "from")?,
        trigger: attr(attrs, "context").as_deref() != Some("true"),
        task,
        // A note that woke the agent reads `system: <note>` (its text is escaped like an attribute).
        text: if tag == "system" { format!("system: {}", unescape(body)) } else { body.to_string() },
    })
}

/// The host's `<system>` notes of a user message, joined by ` / `.
fn notes_of(message: Option<&ChatMessage>) -> String {
    let Some(m) = message else { return String::new() };
    m.content
        .iter()
        .filter_map(|b| match b {
            Block::Text { text } => text.strip_prefix("<system>")?.strip_suffix("</system>").map(unescape),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The inbound messages of a user message, when it is a batch.
fn batch_of(message: &ChatMessage) -> Option<Vec<Inbound>> {
    if message.role != Role::User {
        return None;
    }
    let parsed: Vec<Inbound> = message
        .content
        .iter()
        .filter_map(|b| match b {
            Block::Text { text } => parse_inbound(text),
            _ => None,
        })
        .collect();
    (!parsed.is_empty()).then_some(parsed)
}

/// `tool <name> <json>` lines of a text: (name, arguments). Arguments that are not JSON are
/// passed on as a JSON string, so the loop's argument checking answers them.
fn tool_lines(text: &str) -> Vec<(String, serde_json::Value)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("tool ")?;
            let (name, args) = rest.trim().split_once(char::is_whitespace).unwrap_or((rest.trim(), ""));
            let args = args.trim();
            let value = if args.is_empty() {
                serde_json::json!({})
            } else {
                serde_json::from_str(args).unwrap_or_else(|_| serde_json::Value::String(args.to_string()))
            };
            Some((name.to_string(), value))
        })
        .collect()
}

fn directive(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix('!')?;
    let (word, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    Some((word, args.trim()))
}

fn leading_num(args: &str) -> u64 {
    args.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn reply(blocks: Vec<Block>) -> ModelReply {
    let stop = if blocks.iter().any(|b| matches!(b, Block::ToolCall(_))) {
        StopReason::ToolUse
    } else {
        StopReason::EndTurn
    };
    ModelReply { blocks, stop, usage: Usage::default() }
}

fn text_of(message: &ChatMessage) -> String {
    message
        .content
        .iter()
        .filter_map(|b| match b {
            Block::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// The calls echo makes for one message in round `round` (0-based): ids stay unique per turn.
fn calls_for(m: &Inbound, round: usize) -> Vec<Block> {
    let lines = tool_lines(&m.text);
    let width = lines.len();
    lines
        .into_iter()
        .enumerate()
        .map(|(i, (name, arguments))| {
            Block::ToolCall(ToolCall {
                id: format!("echo-{}-{}", m.seq, round * width + i + 1),
                name,
                arguments,
            })
        })
        .collect()
}

impl EchoModel {
    async fn answer_batch(
        &self,
        batch: &[Inbound],
        turns: usize,
        notes: &str,
        events: &mut dyn EventSink,
    ) -> Result<ModelReply, ModelError> {
        let mut out = String::new();
        let mut calls = Vec::new();
        for m in batch.iter().filter(|m| m.trigger) {
            let mine = calls_for(m, 0);
            if !mine.is_empty() {
                calls.extend(mine);
                continue;
            }
            let text = if m.task { format!("task: {}", m.text) } else { m.text.clone() };
            match directive(&text) {
                Some(("sleep", args)) => {
                    let mut left = leading_num(args).min(3_600_000);
                    while left > 0 {
                        let step = left.min(200);
                        tokio::time::sleep(Duration::from_millis(step)).await;
                        left -= step;
                        events.event(ProviderEvent::Activity);
                    }
                }
                Some(("hang", args)) => {
                    tokio::time::sleep(Duration::from_millis(leading_num(args).min(3_600_000))).await
                }
                Some(("exit", args)) => {
                    let code = args.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(1);
                    return Err(ModelError::Exit(code));
                }
                Some(("error", args)) => {
                    return Err(ModelError::Fatal {
                        message: if args.is_empty() { "echo error".into() } else { args.to_string() },
                    });
                }
                Some(("raw", args)) => {
                    out.push_str(args);
                    continue;
                }
                Some(("notes", _)) => {
                    out.push_str(&message_block(&m.from, Some(m.seq), &format!("echo: notes={notes}")));
                    continue;
                }
                Some(("turns", _)) => {
                    out.push_str(&message_block(&m.from, Some(m.seq), &format!("echo: turns={turns}")));
                    continue;
                }
                _ => {}
            }
            out.push_str(&message_block(&m.from, Some(m.seq), &format!("echo: {text}")));
        }
        let mut blocks = Vec::new();
        if !out.is_empty() {
            blocks.push(Block::Text { text: out });
        }
        blocks.extend(calls);
        Ok(reply(blocks))
    }

    /// The answer to tool results: each result as text, or the next round of `!rounds`.
    fn answer_results(&self, messages: &[ChatMessage]) -> ModelReply {
        let Some(batch_at) = messages.iter().rposition(|m| batch_of(m).is_some()) else {
            return reply(vec![]);
        };
        let batch = batch_of(&messages[batch_at]).unwrap_or_default();
        let since = &messages[batch_at + 1..];
        let rounds_done = since.iter().filter(|m| m.role == Role::Tool).count();
        let mut calls = Vec::new();
        for m in batch.iter().filter(|m| m.trigger) {
            if let Some(("rounds", args)) = directive(&m.text)
                && (rounds_done as u64) < leading_num(args)
            {
                calls.extend(calls_for(m, rounds_done));
            }
        }
        if !calls.is_empty() {
            return reply(calls);
        }
        let names: HashMap<&str, &str> = since
            .iter()
            .flat_map(|m| &m.content)
            .filter_map(|b| match b {
                Block::ToolCall(c) => Some((c.id.as_str(), c.name.as_str())),
                _ => None,
            })
            .collect();
        let mut out = String::new();
        for b in messages.last().map(|m| m.content.as_slice()).unwrap_or_default() {
            let Block::ToolResult { call_id, content, is_error } = b else { continue };
            let seq: Option<i64> =
                call_id.strip_prefix("echo-").and_then(|r| r.split('-').next()?.parse().ok());
            let origin =
                batch.iter().find(|m| Some(m.seq) == seq).or_else(|| batch.iter().rfind(|m| m.trigger));
            let Some(origin) = origin else { continue };
            let name = names.get(call_id.as_str()).copied().unwrap_or("?");
            let result = if *is_error { format!("error: {content}") } else { content.clone() };
            out.push_str(&message_block(&origin.from, Some(origin.seq), &format!("tool {name}: {result}")));
        }
        reply(if out.is_empty() { vec![] } else { vec![Block::Text { text: out }] })
    }
}

#[async_trait]
impl Model for EchoModel {
    fn name(&self) -> &str {
        &self.name
    }

    async fn complete(
        &mut self,
        request: &ModelRequest<'_>,
        events: &mut dyn EventSink,
    ) -> Result<ModelReply, ModelError> {
        let Some(last) = request.messages.last() else { return Ok(reply(vec![])) };
        if last.role == Role::Tool {
            return Ok(self.answer_results(request.messages));
        }
        if let Some(batch) = batch_of(last) {
            let turns = request
                .messages
                .iter()
                .filter(|m| batch_of(m).is_some_and(|b| b.iter().any(|i| i.trigger)))
                .count();
            return self.answer_batch(&batch, turns, &notes_of(Some(last)), events).await;
        }
        // A nudge (or any note): say the same again.
        let previous = request.messages.iter().rev().find(|m| m.role == Role::Assistant).map(text_of);
        Ok(reply(
            previous.filter(|t| !t.is_empty()).map(|text| vec![Block::Text { text }]).unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ignore;
    impl EventSink for Ignore {
        fn event(&mut self, _: ProviderEvent) {}
    }

    fn user(blocks: &[&str]) -> ChatMessage {
        ChatMessage {
            role: Role::User,
            content: blocks.iter().map(|b| Block::Text { text: b.to_string() }).collect(),
        }
    }

    async fn ask(messages: &[ChatMessage]) -> Result<ModelReply, ModelError> {
        let req =
            ModelRequest { system: "", messages, tools: &[], max_output_tokens: 100, temperature: None };
        EchoModel::new("echo").complete(&req, &mut Ignore).await
    }

    #[tokio::test]
    async fn echoes_triggering_messages_and_skips_context() {
        let m = user(&[
            r#"<message id="2" from="cli" sender="x" time="t" context="true">bg</message>"#,
            r#"<message id="4" from="cli" sender="a &gt; b" time="t">hi <b>there</b></message>"#,
        ]);
        let r = ask(&[m]).await.unwrap();
        assert_eq!(
            r.blocks,
            vec![Block::Text { text: message_block("cli", Some(4), "echo: hi <b>there</b>") }]
        );
        assert_eq!(r.stop, StopReason::EndTurn);
    }

    #[tokio::test]
    async fn tool_lines_become_calls_and_results_become_text() {
        let m = user(&[
            "<message id=\"4\" from=\"cli\" sender=\"x\" time=\"t\">tool a {\"x\":1}\ntool b</message>",
        ]);
        let r = ask(std::slice::from_ref(&m)).await.unwrap();
        assert_eq!(r.stop, StopReason::ToolUse);
        let ids: Vec<_> = r
            .blocks
            .iter()
            .map(|b| match b {
                Block::ToolCall(c) => (c.id.clone(), c.name.clone(), c.arguments.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ids,
            vec![
                ("echo-4-1".into(), "a".into(), serde_json::json!({"x": 1})),
                ("echo-4-2".into(), "b".into(), serde_json::json!({}))
            ]
        );
        let results = ChatMessage {
            role: Role::Tool,
            content: vec![
                Block::ToolResult { call_id: "echo-4-1".into(), content: "ok".into(), is_error: false },
                Block::ToolResult { call_id: "echo-4-2".into(), content: "bad".into(), is_error: true },
            ],
        };
        let convo = [m, ChatMessage { role: Role::Assistant, content: r.blocks }, results];
        let r = ask(&convo).await.unwrap();
        assert_eq!(
            r.blocks,
            vec![Block::Text {
                text: format!(
                    "{}{}",
                    message_block("cli", Some(4), "tool a: ok"),
                    message_block("cli", Some(4), "tool b: error: bad")
                )
            }]
        );
    }

    #[tokio::test]
    async fn directives_fail_exit_and_count_turns() {
        let b = |t: &str| {
            user(&[&format!("<message id=\"2\" from=\"cli\" sender=\"x\" time=\"t\">{t}</message>")])
        };
        assert_eq!(ask(&[b("!error boom")]).await.unwrap_err(), ModelError::Fatal { message: "boom".into() });
        assert_eq!(ask(&[b("!exit 3")]).await.unwrap_err(), ModelError::Exit(3));
        let r = ask(&[b("one"), b("two"), b("!turns")]).await.unwrap();
        assert_eq!(r.blocks, vec![Block::Text { text: message_block("cli", Some(2), "echo: turns=3") }]);
    }
}
