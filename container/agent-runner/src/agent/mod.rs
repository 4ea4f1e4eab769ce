//! The tool loop: [`Agent`] runs a turn over a [`Model`] (DESIGN §8, issue 6 part 2).
//!
//! A turn: the batch becomes one user message; the model is called; the tools it asks for run
//! in order, in this process, and their results go back as one tool message; the model is called
//! again, until it answers without tool calls — at most `max_tool_rounds` model calls. The same
//! call (name and canonical arguments) made 5 times in one turn ends the turn with a note: a
//! model stuck in a loop must not burn the budget. Unknown tools and bad arguments come back to
//! the model as tool errors naming the field. The conversation is kept per provider in a
//! transcript ([`transcript`]) and kept within the model's context by compaction ([`compact`]).
//!
//! A turn never ends in silence by accident: the final answer is checked before the turn ends.
//! - Text but no `<message>` block (and nothing sent through `send_message`, which makes the
//!   text a scratchpad): one nudge; if the next answer still has none, the text goes to the
//!   session's own chat — the first answer's text, which answered the user (the second one
//!   answered the nudge, and a small model merely repeats it), also when the second is empty.
//! - A block addressed to a name that is not a destination: one correction naming the
//!   destinations; if the next answer misses again, the first answer's misaddressed blocks go
//!   to the session's own chat.
//! - Nothing at all (empty text, or only empty blocks) with nothing sent: the user is told
//!   ([`EMPTY_ANSWER_NOTE`]).
//! - Only `<internal>` text: a deliberate silence (an agent in a busy group chat may choose not
//!   to speak); logged, nothing sent.

pub mod compact;
pub mod transcript;

use crate::db::Snapshot;
use crate::model::{Block, ChatMessage, Model, ModelError, ModelRequest, Role, ToolSpec};
use crate::prompt::{Turn, agent_context, resolve_destination, skills_section};
use crate::provider::{
    EventSink, ExitRequest, Provider, ProviderError, ProviderEvent, TurnFailure, TurnIo, TurnOutput, touch,
};
use crate::tools::{ToolContext, ToolError, ToolRegistry, TurnLedger};
use async_trait::async_trait;
use nanoclaw_protocol::output::{message_block, parse_output};
use nanoclaw_protocol::settings::RunnerSettings;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tracing::{debug, info, warn};
use transcript::{Opened, Transcript};

/// The same call this many times in one turn ends the turn.
pub const REPEAT_LIMIT: usize = 5;

/// How often the heartbeat is refreshed while a tool runs (the host's stuck detection reads it
/// together with the tool's declared timeout).
const TOOL_HEARTBEAT: Duration = Duration::from_secs(10);

/// The message that makes the model address its answer.
pub const NUDGE: &str = "Your answer had no <message to=\"NAME\">…</message> block, so nobody saw it. Send it again \
                         inside a block addressed to one of your destinations.";

/// The start of the correction sent when a block names an unknown destination (the names and
/// the list of destinations follow).
pub const UNKNOWN_DESTINATION: &str = "Not delivered: there is no destination named";

/// Told to the user when the model's final answer is empty and the turn sent nothing.
pub const EMPTY_ANSWER_NOTE: &str = "The model gave an empty answer; nothing was sent.";

/// The tool loop over one model (see the module docs).
pub struct Agent {
    model: Box<dyn Model>,
    settings: RunnerSettings,
    tools: ToolRegistry,
    workspace: PathBuf,
    skills_dir: PathBuf,
    /// The skills' part of the system prompt, read at the first turn.
    skills: Option<String>,
    transcript: Option<Transcript>,
    /// Extra lines for the system prompt's tools section (the MCP servers that failed).
    system_note: Option<String>,
    /// Token counts of the conversation, for compaction.
    meter: compact::Meter,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("model", &self.model.name()).field("tools", &self.tools).finish()
    }
}

/// Arguments in a canonical form (object keys sorted), for the repeat guard.
fn canonical(v: &serde_json::Value) -> String {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let sorted: std::collections::BTreeMap<&String, serde_json::Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::to_value(sorted).unwrap_or(serde_json::Value::Null)
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

fn text_of(blocks: &[Block]) -> String {
    blocks
        .iter()
        .filter_map(|b| match b {
            Block::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn failure(e: ModelError) -> TurnFailure {
    match e {
        ModelError::Exit(code) => TurnFailure::Exit(ExitRequest(code)),
        ModelError::Retryable { message } => {
            TurnFailure::Error(ProviderError { message, retryable: true, session_invalid: false })
        }
        ModelError::Auth { message } | ModelError::Fatal { message } => {
            TurnFailure::Error(ProviderError { message, retryable: false, session_invalid: false })
        }
        ModelError::ContextLength { message } => TurnFailure::Error(ProviderError {
            message: format!("the conversation is longer than the model's context: {message}"),
            retryable: false,
            session_invalid: false,
        }),
    }
}

/// What a final answer (one without tool calls) calls for.
#[derive(Debug, PartialEq, Eq)]
enum Final {
    /// Deliverable as it is (or the turn already sent through a tool).
    Done,
    /// Nothing to deliver on purpose: only `<internal>` text.
    Silent,
    /// Nothing at all: empty text or only empty blocks.
    Empty,
    /// Not deliverable as written: tell the model `say`; if it fails again, `unaddressed` goes
    /// to the session's own chat.
    Retry { say: String, unaddressed: String },
}

/// Checks a final answer against the destinations of `snapshot` (see the module docs).
/// `sent` says whether the turn already sent a message through a tool.
fn final_answer(text: &str, snapshot: &Snapshot, sent: bool) -> Final {
    let parsed = parse_output(text);
    let unknown: Vec<_> =
        parsed.messages.iter().filter(|m| resolve_destination(snapshot, &m.to).is_none()).collect();
    if !unknown.is_empty() {
        let mut names: Vec<&str> = unknown.iter().map(|m| m.to.as_str()).collect();
        names.dedup();
        let known: Vec<&str> = snapshot.destinations.iter().map(|d| d.name.as_str()).collect();
        return Final::Retry {
            say: format!(
                "{UNKNOWN_DESTINATION} {}. Your destinations are: {}. Send those messages again, each inside \
                 <message to=\"NAME\">…</message> with NAME one of them.",
                names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "),
                if known.is_empty() { "(none)".to_string() } else { known.join(", ") }
            ),
            unaddressed: unknown.iter().map(|m| m.text.as_str()).collect::<Vec<_>>().join("\n\n"),
        };
    }
    if !parsed.messages.is_empty() || sent {
        return Final::Done;
    }
    if !parsed.scratchpad.is_empty() {
        return Final::Retry { say: NUDGE.into(), unaddressed: parsed.scratchpad };
    }
    if text.contains("<internal>") && !nanoclaw_protocol::output::strip_internal(text).contains("<message") {
        return Final::Silent;
    }
    Final::Empty
}

impl Agent {
    /// An agent over `model` with `tools`, working in `workspace`.
    pub fn new(
        model: Box<dyn Model>,
        settings: RunnerSettings,
        tools: ToolRegistry,
        workspace: PathBuf,
    ) -> Self {
        let skills_dir = PathBuf::from(nanoclaw_protocol::layout::CONTAINER_SKILLS_DIR);
        Self {
            model,
            settings,
            tools,
            workspace,
            skills_dir,
            skills: None,
            transcript: None,
            system_note: None,
            meter: compact::Meter::default(),
        }
    }

    /// Reads skills from `dir` instead of the container's skills mount (tests, embedders).
    pub fn with_skills_dir(mut self, dir: PathBuf) -> Self {
        self.skills_dir = dir;
        self.skills = None;
        self
    }

    /// Adds `note` (when there is one) to the system prompt's tools section: what the model
    /// should know about its tools that the specs cannot say (MCP servers that failed to start).
    pub fn with_system_note(mut self, note: Option<String>) -> Self {
        self.system_note = note;
        self
    }

    /// Loads the conversation on the first turn (or after `/clear`). A reset is announced in
    /// `notes` once; the new transcript's path is stored at once through `Init`.
    fn conversation(
        &mut self,
        continuation: Option<&str>,
        io: &mut TurnIo<'_>,
        notes: &mut Vec<String>,
    ) -> Result<(), TurnFailure> {
        if self.transcript.is_some() {
            return Ok(());
        }
        let opened = Transcript::open(&self.workspace, self.model.name(), continuation).map_err(|e| {
            TurnFailure::Error(ProviderError {
                message: format!("cannot create the conversation transcript: {e}"),
                retryable: false,
                session_invalid: false,
            })
        })?;
        let t = match opened {
            Opened::Resumed(t) => t,
            Opened::Fresh(t) => {
                io.event(ProviderEvent::Init { continuation: t.rel.clone() });
                t
            }
            Opened::Reset(t, why) => {
                warn!(%why, "transcript unreadable; reset");
                notes.push("Conversation memory was unreadable and was reset.".into());
                io.event(ProviderEvent::Init { continuation: t.rel.clone() });
                t
            }
        };
        self.meter.forget();
        self.transcript = Some(t);
        Ok(())
    }

    /// Compacts the turns before the running one (which starts at `base`; see [`compact`]):
    /// `refused` is the estimate of a request the API refused as over the context (`None` when
    /// the threshold was passed). Returns false when there was nothing to compact. The
    /// transcript file is rewritten and `base` moved; a drop without summary adds the note once.
    async fn compact(
        &mut self,
        transcript: &mut Transcript,
        base: &mut usize,
        (system, specs): (&str, &[ToolSpec]),
        refused: Option<u64>,
        io: &mut TurnIo<'_>,
        notes: &mut Vec<String>,
    ) -> bool {
        let limit = compact::threshold(self.settings.provider.context_tokens);
        let fixed = self.meter.scaled(compact::byte_estimate(system, &[], specs));
        let keep = refused.map_or(limit / 2, |r| (limit / 2).min(r / 2));
        let Some(cut) = compact::choose_cut(&self.meter, &transcript.messages, *base, fixed, keep) else {
            return false;
        };
        // Only a summary before the running turn: summarising it again gains nothing unless the
        // API refused the request.
        if refused.is_none() && cut == 2 && compact::is_summary(&transcript.messages[0]) {
            return false;
        }
        let older = &transcript.messages[..cut];
        match compact::summarise(self.model.as_mut(), older, &self.settings.provider, &mut *io).await {
            Ok(summary) => {
                info!(compacted = cut, summary_bytes = summary.len(), ?refused, "older turns summarised");
                transcript.messages.splice(..cut, compact::summary_pair(&summary));
                *base = *base - cut + 2;
            }
            Err(why) => {
                warn!(%why, dropped = cut, ?refused, "summary failed; dropping the oldest turns");
                transcript.messages.drain(..cut);
                *base -= cut;
                if !notes.iter().any(|n| n == compact::DROPPED_NOTE) {
                    notes.push(compact::DROPPED_NOTE.into());
                }
            }
        }
        self.meter.forget();
        if let Err(e) = transcript.rewrite(*base) {
            warn!(error = %e, "compacted transcript not written");
        }
        true
    }
}

/// Runs one tool call, refreshing the heartbeat while it runs. (A free function: the agent's
/// model is not `Sync`, so the turn's future may not hold `&Agent` across an await.)
async fn run_tool(
    (tools, settings, workspace): (&ToolRegistry, &RunnerSettings, &std::path::Path),
    name: &str,
    args: serde_json::Value,
    io: &mut TurnIo<'_>,
    ledger: &mut TurnLedger,
) -> Result<String, ToolError> {
    {
        let Some(tool) = tools.get(name) else {
            return Err(ToolError(format!("unknown tool {name:?} (available: {})", tools.names())));
        };
        let declared = tool.declared_timeout(&args);
        io.event(ProviderEvent::ToolStarted {
            name: name.to_string(),
            declared_timeout_ms: Some(i64::try_from(declared.as_millis()).unwrap_or(i64::MAX)),
        });
        // The host shows the tool being run in the chat ("working"): tell it the state changed
        // rather than leaving it to the host's next pass (the poke is coalesced there).
        io.link.output().await;
        let heartbeat = io.heartbeat.to_path_buf();
        let result = {
            let mut cx = ToolContext {
                db: &mut *io.db,
                snapshot: io.snapshot,
                settings,
                workspace,
                link: &mut *io.link,
                ledger,
            };
            let call = tool.call(args, &mut cx);
            tokio::pin!(call);
            let mut beat = tokio::time::interval(TOOL_HEARTBEAT);
            beat.tick().await;
            loop {
                tokio::select! {
                    r = &mut call => break r,
                    _ = beat.tick() => touch(&heartbeat),
                }
            }
        };
        io.event(ProviderEvent::ToolFinished);
        result
    }
}

#[async_trait]
impl Provider for Agent {
    fn name(&self) -> &str {
        self.model.name()
    }

    async fn run_turn(&mut self, turn: &Turn, io: &mut TurnIo<'_>) -> Result<TurnOutput, TurnFailure> {
        let mut out = TurnOutput::default();
        // `/clear` from the chat: a new, empty conversation.
        if let Some(m) = turn.messages.iter().rev().find(|m| m.trigger && m.text.trim() == "/clear") {
            let t = Transcript::create(&self.workspace, self.model.name()).map_err(|e| {
                TurnFailure::Error(ProviderError {
                    message: format!("cannot create the conversation transcript: {e}"),
                    retryable: false,
                    session_invalid: false,
                })
            })?;
            io.event(ProviderEvent::Init { continuation: t.rel.clone() });
            out.continuation = Some(t.rel.clone());
            self.meter.forget();
            self.transcript = Some(t);
            out.text = message_block(&m.from, Some(m.seq), "Session cleared.");
            return Ok(out);
        }
        self.conversation(turn.continuation.as_deref(), io, &mut out.notes)?;
        let skills = self.skills.get_or_insert_with(|| skills_section(&self.settings, &self.skills_dir));
        let system = format!(
            "{}{}{}",
            turn.system,
            agent_context(&self.settings, &self.workspace, skills, chrono::Utc::now()),
            self.system_note.as_deref().map(|n| format!("\n{n}\n")).unwrap_or_default()
        );
        let specs = self.tools.specs();
        debug!("hop: system prompt built");
        let mut transcript = self.transcript.take().expect("conversation loaded above");
        let mut base = transcript.messages.len();
        // Compaction at most once per turn for the threshold, once for a refusal.
        let (mut compacted, mut refused_once) = (false, false);
        let limit = compact::threshold(self.settings.provider.context_tokens);
        transcript.messages.push(ChatMessage {
            role: Role::User,
            content: turn.blocks.iter().map(|b| Block::Text { text: b.clone() }).collect(),
        });
        let mut ledger = TurnLedger::new(io.id_prefix);
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        let mut texts = Vec::new();
        // One nudge or correction per turn; `earlier` keeps what the corrected answer said.
        let mut corrected = false;
        let mut earlier: Option<String> = None;
        let mut calls_made = 0u32;
        let result: Result<(), TurnFailure> = 'turn: loop {
            if calls_made >= self.settings.max_tool_rounds {
                out.notes.push(format!(
                    "Stopped: this turn reached max_tool_rounds ({}) model calls.",
                    self.settings.max_tool_rounds
                ));
                break Ok(());
            }
            calls_made += 1;
            let request = ModelRequest {
                system: &system,
                messages: &transcript.messages,
                tools: &specs,
                max_output_tokens: self.settings.provider.max_output_tokens,
                temperature: self.settings.provider.temperature,
            };
            let estimate = self.meter.estimate(&request);
            if !compacted && estimate > limit {
                compacted = true;
                debug!(estimate, limit, "over the compaction threshold");
                self.compact(&mut transcript, &mut base, (&system, &specs), None, io, &mut out.notes).await;
            }
            let request = ModelRequest {
                system: &system,
                messages: &transcript.messages,
                tools: &specs,
                max_output_tokens: self.settings.provider.max_output_tokens,
                temperature: self.settings.provider.temperature,
            };
            let reply = match self.model.complete(&request, io).await {
                Ok(r) => {
                    self.meter.reported(&request, r.usage);
                    r
                }
                Err(ModelError::ContextLength { message }) if !refused_once => {
                    refused_once = true;
                    let refused = self.meter.estimate(&request);
                    warn!(%message, refused, "over the context");
                    if !self
                        .compact(
                            &mut transcript,
                            &mut base,
                            (&system, &specs),
                            Some(refused),
                            io,
                            &mut out.notes,
                        )
                        .await
                    {
                        break Err(failure(ModelError::ContextLength { message }));
                    }
                    calls_made -= 1;
                    continue;
                }
                Err(e) => break Err(failure(e)),
            };
            let calls: Vec<_> = reply
                .blocks
                .iter()
                .filter_map(|b| match b {
                    Block::ToolCall(c) => Some(c.clone()),
                    _ => None,
                })
                .collect();
            let text = text_of(&reply.blocks);
            transcript.messages.push(ChatMessage { role: Role::Assistant, content: reply.blocks });
            if calls.is_empty() {
                match final_answer(&text, io.snapshot, !ledger.sent.is_empty()) {
                    Final::Done => texts.push(text),
                    Final::Silent => {
                        info!("the agent chose not to reply (only <internal> text)");
                        texts.push(text);
                    }
                    Final::Empty => match earlier.take() {
                        // The answer to a nudge or correction is empty: what the model said
                        // before is not lost.
                        Some(before) => out.unaddressed = Some(before),
                        None => out.notes.push(EMPTY_ANSWER_NOTE.into()),
                    },
                    Final::Retry { say, unaddressed } if !corrected => {
                        // Blocks to known destinations in this answer are delivered as they are.
                        texts.push(text);
                        corrected = true;
                        earlier = Some(unaddressed);
                        transcript
                            .messages
                            .push(ChatMessage { role: Role::User, content: vec![Block::Text { text: say }] });
                        continue;
                    }
                    Final::Retry { unaddressed, .. } => {
                        // The deliverable blocks of this answer still go where they point. Of the
                        // rest, the first answer goes to the own chat: it answered the user, while
                        // the second one answered the correction (a small model repeats it).
                        texts.push(text);
                        out.unaddressed =
                            Some(earlier.take().filter(|e| !e.trim().is_empty()).unwrap_or(unaddressed));
                    }
                }
                break Ok(());
            }
            texts.push(text);
            // Every call gets a result, run or not, so the conversation stays well-formed for
            // the next request (APIs refuse a tool call without its result).
            let mut results = Vec::with_capacity(calls.len());
            let mut stop: Option<String> = None;
            for call in calls {
                if let Some(why) = &stop {
                    results.push(Block::ToolResult {
                        call_id: call.id,
                        content: why.clone(),
                        is_error: true,
                    });
                    continue;
                }
                let count = seen.entry((call.name.clone(), canonical(&call.arguments))).or_default();
                *count += 1;
                if *count >= REPEAT_LIMIT {
                    let note = format!(
                        "Stopped: {} was called {REPEAT_LIMIT} times with the same arguments in this turn.",
                        call.name
                    );
                    out.notes.push(note.clone());
                    stop = Some(format!("not run: {note}"));
                    results.push(Block::ToolResult { call_id: call.id, content: note, is_error: true });
                    continue;
                }
                debug!(tool = %call.name, id = %call.id, "tool call");
                let r = run_tool(
                    (&self.tools, &self.settings, &self.workspace),
                    &call.name,
                    call.arguments,
                    io,
                    &mut ledger,
                )
                .await;
                results.push(match r {
                    Ok(content) => Block::ToolResult { call_id: call.id, content, is_error: false },
                    Err(e) => Block::ToolResult { call_id: call.id, content: e.0, is_error: true },
                });
            }
            transcript.messages.push(ChatMessage { role: Role::Tool, content: results });
            if stop.is_some() {
                break 'turn Ok(());
            }
            if calls_made >= self.settings.max_tool_rounds {
                out.notes.push(format!(
                    "Stopped: this turn reached max_tool_rounds ({}) model calls.",
                    self.settings.max_tool_rounds
                ));
                break Ok(());
            }
        };
        match result {
            Ok(()) => {
                if let Err(e) = transcript.persist(base) {
                    warn!(error = %e, "transcript not written");
                }
                out.continuation = Some(transcript.rel.clone());
                self.transcript = Some(transcript);
                out.text = texts.join("\n");
                out.sent = ledger.sent;
                Ok(out)
            }
            Err(e) => {
                // The failed turn is not remembered: the next attempt starts from the same point.
                transcript.messages.truncate(base);
                self.meter.forget();
                self.transcript = Some(transcript);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys() {
        let a = serde_json::json!({"b": 1, "a": {"d": 2, "c": [3, {"f": 4, "e": 5}]}});
        let b = serde_json::json!({"a": {"c": [3, {"e": 5, "f": 4}], "d": 2}, "b": 1});
        assert_eq!(canonical(&a), canonical(&b));
    }
}
