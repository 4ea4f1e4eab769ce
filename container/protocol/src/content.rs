//! The JSON carried in the `content` columns of the session DBs.
//!
//! Inbound (host → container): [`ChatContent`], [`TaskContent`], [`SystemNotice`].
//! Outbound (container → host): [`OutboundContent`] for `chat` rows and [`SystemAction`] for
//! `system` rows. Every outbound shape is re-validated by the host ([`crate::validate`]);
//! `deny_unknown_fields` makes a smuggled field an error instead of silently ignored data
//! (an approval card must show everything that will run, DESIGN §10).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Content of an inbound `chat` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatContent {
    /// The message text.
    pub text: String,
    /// Display name of the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Namespaced user id of the sender (`cli:local`, `telegram:123`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<String>,
    /// The platform's id of this message (for replies, edits and reactions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_message_id: Option<String>,
    /// Trace id given by the router; logged by the runner and by delivery (DESIGN §13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Agent-to-agent messages only: how many agent-to-agent hops led to this message (1 for
    /// an agent's first message to another). The host stops a chain at `routing.max_agent_hops`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hops: Option<u32>,
}

/// Content of an inbound `task` row (a scheduled task that came due).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskContent {
    /// What the agent is asked to do.
    pub prompt: String,
    /// Optional pre-task script deciding whether to wake the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
}

/// Content of an inbound `system` row: the host's answer to a system action, or a note.
/// Never rendered into a prompt as a chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SystemNotice {
    /// The host's result for one system action row.
    ActionResult {
        /// The `messages_out` id of the action.
        message_out_id: String,
        /// The action name (`install_packages`, …).
        action: String,
        /// Whether the host applied it.
        ok: bool,
        /// Human-readable result or reason for refusal.
        message: String,
    },
    /// A `messages_out` row the host refused to deliver, with the reason.
    Rejected {
        /// The `messages_out` id.
        message_out_id: String,
        /// Why (names the field).
        reason: String,
    },
    /// A note from the host about something that concerns the agent but answers none of its
    /// rows (another agent's message stopped at the hop limit).
    Note {
        /// The note, one paragraph.
        text: String,
    },
}

/// Content of an outbound `chat` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutboundContent {
    /// Plain text for the target chat.
    Text {
        /// The text, at most [`crate::validate::MAX_TEXT_BYTES`] bytes.
        text: String,
    },
    /// Files the runner copied into the workspace's outbox, with an optional caption.
    File {
        /// Caption, at most [`crate::validate::MAX_TEXT_BYTES`] bytes.
        #[serde(default)]
        text: Option<String>,
        /// The files, 1 to [`crate::validate::MAX_FILES`].
        files: Vec<OutboundFileRef>,
    },
    /// A new text for a message the agent sent earlier.
    Edit {
        /// The `messages_out` id of that message (same session).
        target: String,
        /// The new text.
        text: String,
    },
    /// A reaction to a message of this session (received or sent).
    Reaction {
        /// The `messages_in` or `messages_out` id.
        target: String,
        /// The emoji, at most [`crate::validate::MAX_EMOJI_BYTES`] bytes.
        emoji: String,
    },
    /// A card: a title, a text and link buttons.
    Card {
        /// Title, at most [`crate::validate::MAX_TITLE_BYTES`] bytes.
        title: String,
        /// Body text.
        text: String,
        /// Link buttons, at most [`crate::validate::MAX_BUTTONS`].
        #[serde(default)]
        buttons: Vec<CardButton>,
    },
}

/// A link button of an [`OutboundContent::Card`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardButton {
    /// The label, at most [`crate::validate::MAX_TITLE_BYTES`] bytes.
    pub label: String,
    /// An `http` or `https` URL, at most [`crate::validate::MAX_URL_BYTES`] bytes.
    pub url: String,
}

/// One file of an [`OutboundContent::File`] row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundFileRef {
    /// The file name shown to the user (no `/`, not `.`/`..`, at most 255 bytes).
    pub name: String,
    /// Where it lies in the workspace: exactly `outbox/<row id>/<name>`, so a row can only
    /// point at its own folder (the host opens it without following links).
    pub path: String,
}

/// A typed system action (`messages_out.kind = 'system'`), tagged by `action`.
///
/// The host validates every field again and answers with a [`SystemNotice::ActionResult`]
/// (DESIGN §6). Which actions need a human approval is decided on the host (DESIGN §10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum SystemAction {
    /// Add Debian (and, where reachable, npm) packages to the agent group's image.
    InstallPackages {
        /// Debian package names.
        #[serde(default)]
        apt: Vec<String>,
        /// npm package names.
        #[serde(default)]
        npm: Vec<String>,
        /// Why the agent wants them (shown on the approval card).
        #[serde(default)]
        reason: Option<String>,
    },
    /// Add an MCP server to the agent group's container config.
    AddMcpServer {
        /// Server name.
        name: String,
        /// Executable.
        command: String,
        /// Arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Environment.
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// Rebuild the agent group's image, then respawn.
    RequestRebuild {
        /// Why.
        #[serde(default)]
        reason: Option<String>,
    },
    /// Run a named command from the host's allowlist (`host-commands.json`).
    RunHostCommand {
        /// The allowlist entry name.
        name: String,
    },
    /// Schedule a task.
    ScheduleTask {
        /// Task id chosen by the agent side.
        task_id: String,
        /// What to do when due.
        prompt: String,
        /// First run time (RFC 3339).
        process_after: String,
        /// Optional 5-field cron recurrence.
        #[serde(default)]
        recurrence: Option<String>,
        /// IANA time zone of the recurrence.
        #[serde(default)]
        timezone: Option<String>,
        /// Optional pre-task script.
        #[serde(default)]
        script: Option<String>,
    },
    /// Cancel a task series.
    CancelTask {
        /// The task (series) id.
        task_id: String,
    },
    /// List the session's agent group's scheduled tasks.
    ListTasks {},
    /// Change a scheduled task; fields left out keep their value (at least one is given).
    UpdateTask {
        /// The task (series) id.
        task_id: String,
        /// New prompt.
        #[serde(default)]
        prompt: Option<String>,
        /// New next run time (RFC 3339).
        #[serde(default)]
        process_after: Option<String>,
        /// New 5-field cron recurrence.
        #[serde(default)]
        recurrence: Option<String>,
        /// New IANA time zone of the recurrence.
        #[serde(default)]
        timezone: Option<String>,
    },
    /// Pause a task series (no runs until it is resumed).
    PauseTask {
        /// The task (series) id.
        task_id: String,
    },
    /// Resume a paused task series.
    ResumeTask {
        /// The task (series) id.
        task_id: String,
    },
    /// Ask the user a multiple-choice question; the answer is the chosen option.
    AskUserQuestion {
        /// Short title (a card's title), at most [`crate::validate::MAX_TITLE_BYTES`] bytes.
        title: String,
        /// The question, at most [`crate::validate::MAX_TEXT_BYTES`] bytes.
        question: String,
        /// The choices, [`crate::validate::MIN_QUESTION_OPTIONS`] to
        /// [`crate::validate::MAX_QUESTION_OPTIONS`], each a button label.
        options: Vec<String>,
        /// Seconds to wait for the answer, 1 to [`crate::validate::MAX_QUESTION_TIMEOUT_S`].
        timeout_s: u32,
    },
    /// Create a new agent group and destinations to it.
    CreateAgent {
        /// The new agent's name.
        name: String,
        /// Initial instructions (memory).
        #[serde(default)]
        instructions: Option<String>,
    },
    /// An `ncl` command issued from inside the container.
    CliRequest {
        /// Correlates the answer.
        request_id: String,
        /// The command (`groups-list`, …).
        command: String,
        /// Its arguments.
        #[serde(default)]
        args: BTreeMap<String, serde_json::Value>,
    },
}

impl SystemAction {
    /// The action's name as written in the `action` tag.
    pub fn name(&self) -> &'static str {
        match self {
            SystemAction::InstallPackages { .. } => "install_packages",
            SystemAction::AddMcpServer { .. } => "add_mcp_server",
            SystemAction::RequestRebuild { .. } => "request_rebuild",
            SystemAction::RunHostCommand { .. } => "run_host_command",
            SystemAction::ScheduleTask { .. } => "schedule_task",
            SystemAction::CancelTask { .. } => "cancel_task",
            SystemAction::ListTasks {} => "list_tasks",
            SystemAction::UpdateTask { .. } => "update_task",
            SystemAction::PauseTask { .. } => "pause_task",
            SystemAction::ResumeTask { .. } => "resume_task",
            SystemAction::AskUserQuestion { .. } => "ask_user_question",
            SystemAction::CreateAgent { .. } => "create_agent",
            SystemAction::CliRequest { .. } => "cli_request",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(v: T) {
        let json = serde_json::to_string(&v).unwrap();
        let back: T = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v, "{json}");
    }

    #[test]
    fn inbound_content_round_trips() {
        round_trip(ChatContent {
            text: "hi".into(),
            sender: Some("Local".into()),
            sender_id: Some("cli:local".into()),
            platform_message_id: Some("p1".into()),
            trace_id: Some("tr-1".into()),
            hops: Some(2),
        });
        round_trip(SystemNotice::Note { text: "stopped".into() });
        round_trip(TaskContent { prompt: "water plants".into(), script: None });
        round_trip(SystemNotice::ActionResult {
            message_out_id: "o1".into(),
            action: "install_packages".into(),
            ok: false,
            message: "denied".into(),
        });
        round_trip(SystemNotice::Rejected {
            message_out_id: "o2".into(),
            reason: "content.text: too long".into(),
        });
    }

    #[test]
    fn outbound_content_round_trips_and_is_tagged() {
        let c = OutboundContent::Text { text: "echo: hi".into() };
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"type":"text","text":"echo: hi"}"#);
        round_trip(c);
        round_trip(OutboundContent::File {
            text: Some("the report".into()),
            files: vec![OutboundFileRef { name: "r.pdf".into(), path: "outbox/o1/r.pdf".into() }],
        });
        round_trip(OutboundContent::Edit { target: "o1".into(), text: "fixed".into() });
        round_trip(OutboundContent::Reaction { target: "m1".into(), emoji: "👍".into() });
        round_trip(OutboundContent::Card {
            title: "t".into(),
            text: "x".into(),
            buttons: vec![CardButton { label: "docs".into(), url: "https://example.org".into() }],
        });
        let smuggled = r#"{"type":"file","files":[{"name":"a","path":"outbox/o/a","mode":"0777"}]}"#;
        assert!(serde_json::from_str::<OutboundContent>(smuggled).unwrap_err().to_string().contains("mode"));
    }

    #[test]
    fn every_system_action_round_trips() {
        let actions = vec![
            SystemAction::InstallPackages {
                apt: vec!["ripgrep".into()],
                npm: vec![],
                reason: Some("search".into()),
            },
            SystemAction::AddMcpServer {
                name: "fs".into(),
                command: "mcp-fs".into(),
                args: vec!["--root".into(), "/workspace".into()],
                env: BTreeMap::from([("A".into(), "b".into())]),
            },
            SystemAction::RequestRebuild { reason: None },
            SystemAction::RunHostCommand { name: "deploy".into() },
            SystemAction::ScheduleTask {
                task_id: "t1".into(),
                prompt: "p".into(),
                process_after: "2026-01-01T09:00:00.000Z".into(),
                recurrence: Some("0 9 * * 1".into()),
                timezone: Some("Europe/Berlin".into()),
                script: None,
            },
            SystemAction::CancelTask { task_id: "t1".into() },
            SystemAction::ListTasks {},
            SystemAction::UpdateTask {
                task_id: "t1".into(),
                prompt: Some("q".into()),
                process_after: None,
                recurrence: Some("0 8 * * *".into()),
                timezone: None,
            },
            SystemAction::PauseTask { task_id: "t1".into() },
            SystemAction::ResumeTask { task_id: "t1".into() },
            SystemAction::AskUserQuestion {
                title: "Lunch".into(),
                question: "Which one?".into(),
                options: vec!["pizza".into(), "salad".into()],
                timeout_s: 300,
            },
            SystemAction::CreateAgent { name: "helper".into(), instructions: None },
            SystemAction::CliRequest {
                request_id: "r1".into(),
                command: "groups-list".into(),
                args: BTreeMap::from([("limit".into(), serde_json::json!(5))]),
            },
        ];
        for a in actions {
            let json = serde_json::to_value(&a).unwrap();
            assert_eq!(json["action"], a.name());
            round_trip(a);
        }
    }

    #[test]
    fn smuggled_fields_are_rejected() {
        let err = serde_json::from_str::<SystemAction>(
            r#"{"action":"add_mcp_server","name":"x","command":"y","hidden":"rm -rf /"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("hidden"), "{err}");
        assert!(serde_json::from_str::<OutboundContent>(r#"{"type":"text","text":"a","extra":1}"#).is_err());
    }
}
