//! System-action tools: each writes a typed `system` row ([`SystemAction`]), commits it, tells
//! the host, and waits for the host's answer (a `note-<row id>` system row in `inbound.db`),
//! which becomes the tool result. The host decides (and may ask a human, DESIGN §10); until the
//! issues that build an action land, its answer is "not supported by this host yet".

use super::{Tool, ToolContext, ToolError, ToolResult, TurnLedger, parse_args, schema_of};
use crate::model::ToolSpec;
use async_trait::async_trait;
use nanoclaw_protocol::content::{SystemAction, SystemNotice};
use nanoclaw_protocol::rows::{OutboundKind, OutboundRow};
use nanoclaw_protocol::time::now_ts;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a system tool waits for the host's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the answer is looked for. The host writes it into `inbound.db` without a wake byte
/// of its own for this purpose, so the tool reads; the reads are cheap (one indexed row).
const ANSWER_POLL: Duration = Duration::from_millis(100);

/// Builds the action from the tool's arguments.
type Build = fn(serde_json::Value, &mut TurnLedger) -> Result<SystemAction, ToolError>;

/// One system-action tool.
pub struct SystemTool {
    name: &'static str,
    description: &'static str,
    schema: fn() -> serde_json::Value,
    build: Build,
}

impl std::fmt::Debug for SystemTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemTool").field("name", &self.name).finish()
    }
}

/// Arguments of `schedule_task`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTaskArgs {
    /// What you will be asked to do when it is due.
    pub prompt: String,
    /// First run time, RFC 3339 (`2026-07-01T09:00:00+02:00`).
    pub process_after: String,
    /// A 5-field cron expression for a recurring task.
    #[serde(default)]
    pub recurrence: Option<String>,
    /// IANA time zone of the recurrence (default: the user's).
    #[serde(default)]
    pub timezone: Option<String>,
}

/// Arguments of `cancel_task`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelTaskArgs {
    /// The task id `schedule_task` returned.
    pub task_id: String,
}

/// Arguments of `install_packages`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallPackagesArgs {
    /// Debian package names.
    #[serde(default)]
    pub apt: Vec<String>,
    /// npm package names.
    #[serde(default)]
    pub npm: Vec<String>,
    /// Why you need them (shown to the person who approves).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Arguments of `add_mcp_server`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMcpServerArgs {
    /// Server name (its tools become `mcp__<name>__<tool>`).
    pub name: String,
    /// Program to run inside the container.
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Arguments of `request_rebuild`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestRebuildArgs {
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Arguments of `run_host_command`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunHostCommandArgs {
    /// The name of an entry of the host's command allowlist.
    pub name: String,
}

/// Arguments of `create_agent`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentArgs {
    /// The new agent's name.
    pub name: String,
    /// Its first instructions (its memory).
    #[serde(default)]
    pub instructions: Option<String>,
}

/// Every system-action tool.
pub fn all() -> Vec<SystemTool> {
    vec![
        SystemTool {
            name: "schedule_task",
            description: "Schedule a task: at `process_after` (and then per `recurrence`) you get `prompt` as a \
                          message. Answers with the task id.",
            schema: schema_of::<ScheduleTaskArgs>,
            build: |v, ledger| {
                let a: ScheduleTaskArgs = parse_args(v)?;
                Ok(SystemAction::ScheduleTask {
                    task_id: format!("task-{}", ledger.next_id()),
                    prompt: a.prompt,
                    process_after: a.process_after,
                    recurrence: a.recurrence,
                    timezone: a.timezone,
                    script: None,
                })
            },
        },
        SystemTool {
            name: "cancel_task",
            description: "Cancel a scheduled task (all its future runs).",
            schema: schema_of::<CancelTaskArgs>,
            build: |v, _| {
                let a: CancelTaskArgs = parse_args(v)?;
                Ok(SystemAction::CancelTask { task_id: a.task_id })
            },
        },
        SystemTool {
            name: "install_packages",
            description: "Ask for packages to be added to your image (a person approves; the container is \
                          rebuilt).",
            schema: schema_of::<InstallPackagesArgs>,
            build: |v, _| {
                let a: InstallPackagesArgs = parse_args(v)?;
                Ok(SystemAction::InstallPackages { apt: a.apt, npm: a.npm, reason: a.reason })
            },
        },
        SystemTool {
            name: "add_mcp_server",
            description: "Ask for an MCP server to be added to your configuration (a person approves).",
            schema: schema_of::<AddMcpServerArgs>,
            build: |v, _| {
                let a: AddMcpServerArgs = parse_args(v)?;
                Ok(SystemAction::AddMcpServer { name: a.name, command: a.command, args: a.args, env: a.env })
            },
        },
        SystemTool {
            name: "request_rebuild",
            description: "Ask for your image to be rebuilt and your container restarted.",
            schema: schema_of::<RequestRebuildArgs>,
            build: |v, _| {
                let a: RequestRebuildArgs = parse_args(v)?;
                Ok(SystemAction::RequestRebuild { reason: a.reason })
            },
        },
        SystemTool {
            name: "run_host_command",
            description: "Run a command from the host's allowlist by name.",
            schema: schema_of::<RunHostCommandArgs>,
            build: |v, _| {
                let a: RunHostCommandArgs = parse_args(v)?;
                Ok(SystemAction::RunHostCommand { name: a.name })
            },
        },
        SystemTool {
            name: "create_agent",
            description: "Create a new agent (and a destination to reach it).",
            schema: schema_of::<CreateAgentArgs>,
            build: |v, _| {
                let a: CreateAgentArgs = parse_args(v)?;
                Ok(SystemAction::CreateAgent { name: a.name, instructions: a.instructions })
            },
        },
    ]
}

#[async_trait]
impl Tool for SystemTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.into(),
            description: self.description.into(),
            input_schema: (self.schema)(),
        }
    }

    fn declared_timeout(&self, _args: &serde_json::Value) -> Duration {
        ANSWER_TIMEOUT + Duration::from_secs(10)
    }

    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult {
        let action = (self.build)(args, cx.ledger)?;
        let id = cx.ledger.next_id();
        let origin = cx.snapshot.batch.iter().rev().find(|r| r.trigger);
        let row = OutboundRow {
            id: id.clone(),
            seq: 0,
            in_reply_to: origin.map(|r| r.id.clone()),
            timestamp: now_ts(),
            deliver_after: None,
            kind: OutboundKind::System,
            platform_id: None,
            channel_type: None,
            thread_id: None,
            content: serde_json::to_string(&action).map_err(|e| ToolError(format!("not sent: {e}")))?,
        };
        cx.db
            .commit_turn(vec![row], &[], None, cx.snapshot.max_inbound_seq)
            .map_err(|e| ToolError(format!("not sent: {e}")))?;
        cx.link.output().await;
        let task_id = match &action {
            SystemAction::ScheduleTask { task_id, .. } => Some(task_id.clone()),
            _ => None,
        };
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            match cx.db.action_result(&id) {
                Ok(Some(SystemNotice::ActionResult { ok: true, message, .. })) => {
                    return Ok(match task_id {
                        Some(t) => format!("{message} (task id {t})"),
                        None => message,
                    });
                }
                Ok(Some(SystemNotice::ActionResult { ok: false, message, .. })) => {
                    return Err(ToolError(message));
                }
                Ok(Some(SystemNotice::Rejected { reason, .. })) => {
                    return Err(ToolError(format!("refused: {reason}")));
                }
                Ok(None) => {}
                Err(e) => return Err(ToolError(format!("cannot read the host's answer: {e}"))),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ToolError(format!(
                    "no answer from the host within {} s; it may still act on it",
                    ANSWER_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(ANSWER_POLL).await;
        }
    }
}
