//! Turning a batch into a prompt, and the provider's output into `messages_out` rows.

use crate::db::Snapshot;
use nanoclaw_protocol::content::{ChatContent, OutboundContent, TaskContent};
use nanoclaw_protocol::layout::MEMORY_FILE;
use nanoclaw_protocol::output::{ParsedOutput, parse_output};
use nanoclaw_protocol::rows::{
    Destination, DestinationType, InboundKind, InboundRow, OutboundKind, OutboundRow,
};
use nanoclaw_protocol::settings::{ImageTier, RunnerSettings};
use nanoclaw_protocol::time::now_ts;
use std::io::Read;
use std::path::Path;

/// One message of a batch as the provider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptMessage {
    /// The `messages_in` id.
    pub id: String,
    /// The agent-visible id (even seq).
    pub seq: i64,
    /// Destination name of the chat it came from (`from="…"`), or `unknown:<type>:<id>`.
    pub from: String,
    /// Sender display name.
    pub sender: Option<String>,
    /// The text (a task's prompt for task rows).
    pub text: String,
    /// Whether this row asked for a reply (`trigger = 1`); others are context.
    pub trigger: bool,
    /// Chat message or task.
    pub kind: InboundKind,
}

/// Everything a provider gets for one turn.
#[derive(Debug, Clone)]
pub struct Turn {
    /// System context: who the agent is and where it can send (reference §5.4).
    pub system: String,
    /// The batch rendered as text, for model providers.
    pub prompt: String,
    /// Each message of the batch rendered on its own (`prompt` is them joined by newlines): one
    /// text block each in the conversation, so the `echo` model can read them back exactly.
    pub blocks: Vec<String>,
    /// The batch, structured, for providers that do not need a model (`echo`).
    pub messages: Vec<PromptMessage>,
    /// The provider's continuation from the previous turn, if any.
    pub continuation: Option<String>,
}

/// Whether destination `d` is the address (`channel_type`, `platform_id`): a chat, or another
/// agent (`agent`, its agent group id).
fn is_address(d: &Destination, channel_type: Option<&str>, platform_id: Option<&str>) -> bool {
    match d.kind {
        DestinationType::Channel => {
            d.channel_type.as_deref() == channel_type && d.platform_id.as_deref() == platform_id
        }
        DestinationType::Agent => channel_type == Some("agent") && d.agent_group_id.as_deref() == platform_id,
    }
}

/// Finds the destination name for an address (reverse lookup), or `unknown:<type>:<id>`.
fn destination_name(dests: &[Destination], channel_type: Option<&str>, platform_id: Option<&str>) -> String {
    dests
        .iter()
        .find(|d| is_address(d, channel_type, platform_id))
        .map(|d| d.name.clone())
        .unwrap_or_else(|| format!("unknown:{}:{}", channel_type.unwrap_or("-"), platform_id.unwrap_or("-")))
}

fn message_of(row: &InboundRow, dests: &[Destination]) -> PromptMessage {
    let (text, sender) = match row.kind {
        InboundKind::Task => match serde_json::from_str::<TaskContent>(&row.content) {
            Ok(t) => (t.prompt, None),
            Err(_) => (row.content.clone(), None),
        },
        // A host note that wakes the agent (an approval's outcome): its text, no sender.
        InboundKind::System => (crate::db::note_text(&row.content).unwrap_or_default(), None),
        _ => match serde_json::from_str::<ChatContent>(&row.content) {
            Ok(c) => (c.text, c.sender),
            // The host writes inbound.db, but a schema drift must not stop the agent.
            Err(_) => (row.content.clone(), None),
        },
    };
    PromptMessage {
        id: row.id.clone(),
        seq: row.seq,
        from: destination_name(dests, row.channel_type.as_deref(), row.platform_id.as_deref()),
        sender,
        text,
        trigger: row.trigger,
        kind: row.kind,
    }
}

fn escape_text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Builds the turn for a snapshot.
pub fn build_turn(snapshot: &Snapshot, assistant_name: &str, continuation: Option<String>) -> Turn {
    let messages: Vec<PromptMessage> =
        snapshot.batch.iter().map(|r| message_of(r, &snapshot.destinations)).collect();
    let mut blocks = Vec::with_capacity(messages.len());
    for (m, row) in messages.iter().zip(&snapshot.batch) {
        // Rows that did not ask for a reply are marked, so the model (and echo) can tell the
        // accumulated context of a group chat from what is addressed to it.
        let context = if m.trigger { "" } else { " context=\"true\"" };
        blocks.push(match m.kind {
            // Answers to a woken note go to the session's own chat.
            InboundKind::System => format!(
                "<system id=\"{}\" from=\"{}\">{}</system>",
                m.seq,
                escape_attr(&destination_name(
                    &snapshot.destinations,
                    snapshot.routing.channel_type.as_deref(),
                    snapshot.routing.platform_id.as_deref()
                )),
                escape_text(&m.text)
            ),
            InboundKind::Task => format!(
                "<task id=\"{}\" from=\"{}\" time=\"{}\"{context}>{}</task>",
                m.seq,
                escape_attr(&m.from),
                row.timestamp,
                m.text
            ),
            _ => format!(
                "<message id=\"{}\" from=\"{}\" sender=\"{}\" time=\"{}\"{context}>{}</message>",
                m.seq,
                escape_attr(&m.from),
                escape_attr(m.sender.as_deref().unwrap_or("unknown")),
                row.timestamp,
                m.text
            ),
        });
    }
    // Host notes come first: what happened to the agent's earlier messages.
    let notes = snapshot.notes.iter().map(|(_, text)| format!("<system>{}</system>", escape_text(text)));
    let blocks: Vec<String> = notes.chain(blocks).collect();
    let prompt = blocks.iter().map(|b| format!("{b}\n")).collect::<String>();
    let mut system = format!("# You are {assistant_name}\n\n## Sending messages\n");
    system.push_str(
        "Your final answer reaches people only inside <message to=\"NAME\">…</message> blocks, one per \
         destination. Text outside blocks is a private scratchpad; <internal>…</internal> is always removed.\n\
         Messages marked context=\"true\" were not addressed to you; they are background.\n\
         Destinations:\n",
    );
    for d in &snapshot.destinations {
        system.push_str(&format!(
            "- {} ({})\n",
            d.name,
            d.display_name.as_deref().unwrap_or(d.kind.as_str())
        ));
    }
    Turn { system, prompt, blocks, messages, continuation }
}

/// Most bytes of the memory file and of each skill put into the prompt.
pub const MAX_PROMPT_FILE_BYTES: u64 = 32 * 1024;

/// Reads at most [`MAX_PROMPT_FILE_BYTES`] of a regular file (not through a symlink), marking a
/// cut; `None` when it is absent or unreadable.
fn prompt_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(MAX_PROMPT_FILE_BYTES + 1).read_to_end(&mut bytes).ok()?;
    let cut = bytes.len() as u64 > MAX_PROMPT_FILE_BYTES;
    bytes.truncate(MAX_PROMPT_FILE_BYTES as usize);
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if cut {
        text.push_str("\n[… cut: the file is longer …]");
    }
    Some(text)
}

/// The selected skills' part of the system prompt: each skill's `SKILL.md` from `skills_dir`
/// (the read-only skills mount; at most [`MAX_PROMPT_FILE_BYTES`] each), or a note that it is not
/// available. Read once per container: the mount is read-only and `runner.json`'s selection is
/// fixed for the container's life, so a turn need not open the files again.
pub fn skills_section(settings: &RunnerSettings, skills_dir: &Path) -> String {
    let mut s = String::new();
    for name in &settings.skills {
        // A skill is a folder name: never a path that leaves the skills mount.
        let safe = !name.is_empty() && !name.contains('/') && name != ".." && name != ".";
        match safe.then(|| prompt_file(&skills_dir.join(name).join("SKILL.md"))).flatten() {
            Some(text) => s.push_str(&format!("\n## Skill: {name}\n{}\n", text.trim())),
            None => s.push_str(&format!("\n(The skill {name:?} is not available.)\n")),
        }
    }
    s
}

/// The agent's own part of the system prompt (issue 6 part 9): the group's memory file (read
/// every turn: the agent may edit it), the selected skills ([`skills_section`]), tool notes, and
/// — last, because it changes every turn and would otherwise spoil the providers' prompt caches
/// — the time zone and local time.
///
/// `workspace` is the session workspace (the group folder is mounted at `agent/` in it).
pub fn agent_context(
    settings: &RunnerSettings,
    workspace: &Path,
    skills: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let mut s = String::new();
    let memory = format!("agent/{MEMORY_FILE}");
    s.push_str(&format!(
        "\n## Memory\nYour memory file is {memory} (edit it with the file tools to remember things \
         across conversations).\n"
    ));
    if let Some(text) = prompt_file(&workspace.join(&memory)).filter(|t| !t.trim().is_empty()) {
        s.push_str(&format!("<memory>\n{}\n</memory>\n", text.trim()));
    }
    s.push_str(skills);
    s.push_str(&format!(
        "\n## Tools\nYour workspace is {} (file tools take paths relative to it). Image tier: {}.\n",
        workspace.display(),
        settings.image_tier.as_str()
    ));
    if settings.image_tier == ImageTier::Minimal {
        s.push_str("There is no shell in this image: run_command is not available.\n");
    }
    let (tz_name, local) = match settings.timezone.parse::<chrono_tz::Tz>() {
        Ok(tz) => {
            (settings.timezone.clone(), now.with_timezone(&tz).format("%A %Y-%m-%d %H:%M %Z").to_string())
        }
        Err(_) => (
            format!("UTC (the configured time zone {:?} is unknown)", settings.timezone),
            now.format("%A %Y-%m-%d %H:%M UTC").to_string(),
        ),
    };
    s.push_str(&format!("\n## Time\nTime zone: {tz_name}. Local time now: {local}.\n"));
    s
}

/// What became of a turn's output.
#[derive(Debug, Default)]
pub struct Replies {
    /// Rows to write, seqs still unassigned.
    pub rows: Vec<OutboundRow>,
    /// Blocks addressed to names that are not destinations (dropped; reported in logs).
    pub unknown_destinations: Vec<String>,
    /// The scratchpad text.
    pub scratchpad: String,
}

/// Where a destination name points: `(channel_type, platform_id)`, `None` for an unknown name.
pub fn resolve_destination(snapshot: &Snapshot, name: &str) -> Option<(Option<String>, Option<String>)> {
    let dest = snapshot.destinations.iter().find(|d| d.name == name)?;
    Some(match dest.kind {
        DestinationType::Channel => (dest.channel_type.clone(), dest.platform_id.clone()),
        DestinationType::Agent => (Some("agent".to_string()), dest.agent_group_id.clone()),
    })
}

/// The destination name of the chat of the batch's newest triggering row (where a reply goes by
/// default), or `None` when the batch has no such row or its chat has no name.
pub fn origin_destination(snapshot: &Snapshot) -> Option<String> {
    let origin = snapshot.batch.iter().rev().find(|r| r.trigger)?;
    snapshot
        .destinations
        .iter()
        .find(|d| is_address(d, origin.channel_type.as_deref(), origin.platform_id.as_deref()))
        .map(|d| d.name.clone())
}

/// A `messages_out` row for `content` to a chat (seq unassigned). Its thread is the session's
/// own thread when it goes to the session's chat, and `in_reply_to` is `reply_to` (a seq of the
/// batch) or else the newest triggering row of the batch from the same chat (reference §5.3):
/// stamped from the batch being processed, never guessed later.
pub fn row_to_chat(
    snapshot: &Snapshot,
    (channel_type, platform_id): (Option<String>, Option<String>),
    reply_to: Option<i64>,
    content: &OutboundContent,
    id: String,
) -> OutboundRow {
    let own_chat =
        channel_type == snapshot.routing.channel_type && platform_id == snapshot.routing.platform_id;
    let named = reply_to.and_then(|seq| snapshot.batch.iter().find(|r| r.seq == seq));
    let answered = named.or_else(|| {
        snapshot
            .batch
            .iter()
            .rev()
            .find(|r| r.trigger && r.channel_type == channel_type && r.platform_id == platform_id)
    });
    let in_reply_to = answered.map(|r| r.id.clone());
    // To its own chat a reply goes to the thread of the message it answers (a DM's sub-thread
    // too), else the session's own thread; to any other chat, to no thread.
    let thread_id = if own_chat {
        answered
            .filter(|r| r.channel_type == channel_type && r.platform_id == platform_id)
            .and_then(|r| r.thread_id.clone())
            .or_else(|| snapshot.routing.thread_id.clone())
    } else {
        None
    };
    OutboundRow {
        id,
        seq: 0,
        in_reply_to,
        timestamp: now_ts(),
        deliver_after: None,
        kind: OutboundKind::Chat,
        platform_id,
        channel_type,
        thread_id,
        content: serde_json::to_string(content).expect("outbound content serialises"),
    }
}

/// Maps the provider's final text to `messages_out` rows via the destinations table.
pub fn replies_for(text: &str, snapshot: &Snapshot, id_prefix: &str) -> Replies {
    let ParsedOutput { messages, scratchpad } = parse_output(text);
    let mut out = Replies { scratchpad, ..Default::default() };
    for (i, block) in messages.into_iter().enumerate() {
        let Some(address) = resolve_destination(snapshot, &block.to) else {
            out.unknown_destinations.push(block.to);
            continue;
        };
        let content = OutboundContent::Text { text: block.text };
        out.rows.push(row_to_chat(snapshot, address, block.reply_to, &content, format!("{id_prefix}-{i}")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nanoclaw_protocol::rows::{InboundStatus, SessionRouting};

    fn snapshot() -> Snapshot {
        Snapshot {
            batch: vec![InboundRow {
                id: "L1:main".into(),
                seq: 2,
                kind: InboundKind::Chat,
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                status: InboundStatus::Pending,
                process_after: None,
                recurrence: None,
                series_id: None,
                tries: 0,
                trigger: true,
                on_wake: false,
                platform_id: Some("local".into()),
                channel_type: Some("cli".into()),
                thread_id: None,
                content: r#"{"text":"hi","sender":"Local"}"#.into(),
                source_session_id: None,
            }],
            destinations: vec![Destination {
                name: "cli".into(),
                display_name: Some("Terminal".into()),
                kind: DestinationType::Channel,
                channel_type: Some("cli".into()),
                platform_id: Some("local".into()),
                agent_group_id: None,
            }],
            routing: SessionRouting {
                channel_type: Some("cli".into()),
                platform_id: Some("local".into()),
                thread_id: None,
            },
            max_inbound_seq: Some(2),
            next_due: None,
            notes: vec![],
        }
    }

    #[test]
    fn a_reply_to_the_own_chat_follows_the_answered_thread_and_elsewhere_has_none() {
        let mut s = snapshot();
        // A shared DM session whose message came in a sub-thread.
        s.batch[0].thread_id = Some("sub-1".into());
        let content = OutboundContent::Text { text: "hi".into() };
        let own = (Some("cli".to_string()), Some("local".to_string()));
        let row = row_to_chat(&s, own, None, &content, "o1".into());
        assert_eq!((row.thread_id.as_deref(), row.in_reply_to.as_deref()), (Some("sub-1"), Some("L1:main")));
        let other = (Some("cli".to_string()), Some("team".to_string()));
        let row = row_to_chat(&s, other, None, &content, "o2".into());
        assert_eq!(row.thread_id, None, "another chat gets no thread");
        // Without an answered row, the session's own thread.
        s.batch[0].trigger = false;
        s.routing.thread_id = Some("T".into());
        let own = (Some("cli".to_string()), Some("local".to_string()));
        assert_eq!(row_to_chat(&s, own, None, &content, "o3".into()).thread_id.as_deref(), Some("T"));
    }

    #[test]
    fn host_notes_open_the_prompt_and_agent_rows_are_named_by_their_destination() {
        let mut s = snapshot();
        s.notes = vec![(5, "Your message o1 was not delivered: destination_not_allowed: <x>".into())];
        s.destinations.push(Destination {
            name: "helper".into(),
            display_name: Some("Helper".into()),
            kind: DestinationType::Agent,
            channel_type: None,
            platform_id: None,
            agent_group_id: Some("ag-helper".into()),
        });
        s.batch[0].channel_type = Some("agent".into());
        s.batch[0].platform_id = Some("ag-helper".into());
        let t = build_turn(&s, "Andy", None);
        assert!(
            t.prompt.starts_with(
                "<system>Your message o1 was not delivered: destination_not_allowed: &lt;x&gt;</system>\n"
            ),
            "{}",
            t.prompt
        );
        assert!(t.prompt.contains("from=\"helper\""), "{}", t.prompt);
        assert_eq!(origin_destination(&s).as_deref(), Some("helper"));
    }

    #[test]
    fn agent_context_has_memory_skills_tools_and_local_time() {
        let tmp = tempfile::tempdir().unwrap();
        let (ws, skills) = (tmp.path().join("ws"), tmp.path().join("skills"));
        std::fs::create_dir_all(ws.join("agent")).unwrap();
        std::fs::create_dir_all(skills.join("git")).unwrap();
        std::fs::write(ws.join("agent/memory.md"), "the user likes tea").unwrap();
        std::fs::write(skills.join("git/SKILL.md"), "use git carefully").unwrap();
        let mut settings = RunnerSettings::echo_default("Andy");
        settings.timezone = "Europe/Berlin".into();
        settings.skills = vec!["git".into(), "../etc".into()];
        let now = chrono::DateTime::parse_from_rfc3339("2026-07-01T10:00:00Z").unwrap().to_utc();
        let s = agent_context(&settings, &ws, &skills_section(&settings, &skills), now);
        assert!(s.contains("<memory>\nthe user likes tea\n</memory>"), "{s}");
        assert!(s.contains("## Skill: git\nuse git carefully"), "{s}");
        assert!(s.contains("(The skill \"../etc\" is not available.)"), "{s}");
        assert!(s.contains("run_command is not available"), "{s}");
        assert!(
            s.ends_with("Time zone: Europe/Berlin. Local time now: Wednesday 2026-07-01 12:00 CEST.\n"),
            "{s}"
        );
        settings.timezone = "Mars/Base".into();
        assert!(
            agent_context(&settings, &ws, &skills_section(&settings, &skills), now)
                .contains("\"Mars/Base\" is unknown")
        );
    }

    #[test]
    fn skills_are_capped_and_not_read_through_links() {
        let tmp = tempfile::tempdir().unwrap();
        let (ws, skills) = (tmp.path().join("ws"), tmp.path().join("skills"));
        std::fs::create_dir_all(&ws).unwrap();
        for name in ["big", "link"] {
            std::fs::create_dir_all(skills.join(name)).unwrap();
        }
        std::fs::write(skills.join("big/SKILL.md"), "x".repeat(100 * 1024)).unwrap();
        std::fs::write(tmp.path().join("secret"), "SECRET").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), skills.join("link/SKILL.md")).unwrap();
        let mut settings = RunnerSettings::echo_default("Andy");
        settings.skills = vec!["big".into(), "link".into()];
        let now = chrono::Utc::now();
        let s = agent_context(&settings, &ws, &skills_section(&settings, &skills), now);
        assert!(s.contains("[… cut: the file is longer …]"), "the big skill is cut");
        assert!(s.len() < MAX_PROMPT_FILE_BYTES as usize + 4096, "{}", s.len());
        assert!(!s.contains("SECRET") && s.contains("(The skill \"link\" is not available.)"), "{s}");
    }

    #[test]
    fn prompt_names_the_sender_destination() {
        let t = build_turn(&snapshot(), "Andy", None);
        assert!(t.prompt.contains("from=\"cli\" sender=\"Local\""), "{}", t.prompt);
        assert!(t.system.contains("- cli (Terminal)"));
        assert_eq!(t.messages[0].text, "hi");
    }

    #[test]
    fn blocks_map_to_rows_and_unknown_names_are_dropped() {
        let r = replies_for(
            "<message to=\"cli\">yo</message><message to=\"nobody\">x</message>",
            &snapshot(),
            "o",
        );
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].in_reply_to.as_deref(), Some("L1:main"));
        assert_eq!(r.rows[0].channel_type.as_deref(), Some("cli"));
        assert_eq!(r.unknown_destinations, vec!["nobody".to_string()]);
    }
}
