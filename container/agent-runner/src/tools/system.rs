//! System-action tools: each writes a typed `system` row ([`SystemAction`]), commits it, tells
//! the host, and waits for the host's answer (a `note-<row id>` system row in `inbound.db`),
//! which becomes the tool result. The host decides (and may ask a human, DESIGN §10); until the
//! issues that build an action land, its answer is "not supported by this host yet".
//!
//! The wait is on the wake link: the host sends an `INPUT` byte after it writes the answer, and
//! the tool reads its row once per byte. A slow fallback read ([`ANSWER_FALLBACK`]) covers a lost
//! byte or a link that is down; so the reads are bounded by the bytes the host sends (which
//! coalesce) plus one per fallback interval, never a busy poll.

use super::{Tool, ToolContext, ToolError, ToolResult, TurnLedger, parse_args, schema_of};
use crate::model::ToolSpec;
use async_trait::async_trait;
use nanoclaw_protocol::content::{SystemAction, SystemNotice};
use nanoclaw_protocol::rows::{OutboundKind, OutboundRow};
use nanoclaw_protocol::time::now_ts;
use nanoclaw_protocol::validate::{
    DEFAULT_QUESTION_TIMEOUT_S, MAX_PACKAGES, MAX_QUESTION_OPTIONS, MAX_QUESTION_TIMEOUT_S,
    MIN_QUESTION_OPTIONS, debian_name_ok,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a system tool waits for the host's answer (except `ask_user_question`, which waits
/// its `timeout_s` plus this).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The slow fallback read while waiting for the host's answer: the answer is normally seen on
/// the host's wake byte; this only bounds the cost of a lost byte or a link that is down.
pub const ANSWER_FALLBACK: Duration = Duration::from_secs(1);

/// Builds the action from the tool's arguments.
type Build = fn(serde_json::Value, &mut TurnLedger) -> Result<SystemAction, ToolError>;

/// One system-action tool.
pub struct SystemTool {
    name: &'static str,
    description: &'static str,
    schema: fn() -> serde_json::Value,
    build: Build,
    /// Fallback read interval while waiting for the answer ([`ANSWER_FALLBACK`]).
    fallback: Duration,
}

impl SystemTool {
    /// This tool with another fallback read interval (tests set it very long to show that the
    /// answer is seen on the wake byte alone).
    pub fn with_answer_fallback(mut self, fallback: Duration) -> Self {
        self.fallback = fallback;
        self
    }

    /// The tool's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// How long the host may take to answer `args` (the question's own timeout for
/// `ask_user_question`).
fn answer_timeout(name: &str, args: &serde_json::Value) -> Duration {
    let question = match name {
        "ask_user_question" => args
            .get("timeout_s")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(u64::from(DEFAULT_QUESTION_TIMEOUT_S))
            .min(u64::from(MAX_QUESTION_TIMEOUT_S)),
        _ => 0,
    };
    ANSWER_TIMEOUT + Duration::from_secs(question)
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

/// Arguments of `list_tasks` (none).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListTasksArgs {}

/// Arguments of `update_task`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTaskArgs {
    /// The task id `schedule_task` returned.
    pub task_id: String,
    /// New prompt.
    #[serde(default)]
    pub prompt: Option<String>,
    /// New next run time, RFC 3339.
    #[serde(default)]
    pub process_after: Option<String>,
    /// New 5-field cron expression.
    #[serde(default)]
    pub recurrence: Option<String>,
    /// New IANA time zone of the recurrence.
    #[serde(default)]
    pub timezone: Option<String>,
}

/// Arguments of `pause_task` and `resume_task`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIdArgs {
    /// The task id `schedule_task` returned.
    pub task_id: String,
}

/// Arguments of `ask_user_question`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AskUserQuestionArgs {
    /// A short title.
    pub title: String,
    /// The question.
    pub question: String,
    /// The answers the user can pick, 2 to 10 short labels.
    #[schemars(length(min = 2, max = 10))]
    pub options: Vec<String>,
    /// Seconds to wait for the answer (default 300, at most 86,400: a day).
    #[serde(default = "default_question_timeout")]
    #[schemars(range(min = 1, max = 86_400))]
    pub timeout_s: u32,
}

fn default_question_timeout() -> u32 {
    DEFAULT_QUESTION_TIMEOUT_S
}

/// Every system-action tool.
pub fn all() -> Vec<SystemTool> {
    vec![
        SystemTool {
            fallback: ANSWER_FALLBACK,
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
            fallback: ANSWER_FALLBACK,
            name: "cancel_task",
            description: "Cancel a scheduled task (all its future runs).",
            schema: schema_of::<CancelTaskArgs>,
            build: |v, _| {
                let a: CancelTaskArgs = parse_args(v)?;
                Ok(SystemAction::CancelTask { task_id: a.task_id })
            },
        },
        SystemTool {
            fallback: ANSWER_FALLBACK,
            name: "install_packages",
            description: "Ask for packages to be added to your image (a person approves; the container is \
                          rebuilt).",
            schema: schema_of::<InstallPackagesArgs>,
            build: |v, _| {
                let a: InstallPackagesArgs = parse_args(v)?;
                // Checked here and again on the host: bare Debian names, 1 to 20.
                let n = a.apt.len() + a.npm.len();
                if !(1..=MAX_PACKAGES).contains(&n) {
                    return Err(ToolError(format!(
                        "invalid arguments: {n} packages; 1 to {MAX_PACKAGES} allowed"
                    )));
                }
                if let Some(bad) = a.apt.iter().find(|p| !debian_name_ok(p)) {
                    return Err(ToolError(format!(
                        "invalid arguments: apt: {bad:?} is not a Debian package name (lowercase letters, digits, \
                         + - .; no version)"
                    )));
                }
                Ok(SystemAction::InstallPackages { apt: a.apt, npm: a.npm, reason: a.reason })
            },
        },
        SystemTool {
            fallback: ANSWER_FALLBACK,
            name: "add_mcp_server",
            description: "Ask for an MCP server to be added to your configuration (a person approves).",
            schema: schema_of::<AddMcpServerArgs>,
            build: |v, _| {
                let a: AddMcpServerArgs = parse_args(v)?;
                Ok(SystemAction::AddMcpServer { name: a.name, command: a.command, args: a.args, env: a.env })
            },
        },
        SystemTool {
            fallback: ANSWER_FALLBACK,
            name: "request_rebuild",
            description: "Ask for your image to be rebuilt and your container restarted.",
            schema: schema_of::<RequestRebuildArgs>,
            build: |v, _| {
                let a: RequestRebuildArgs = parse_args(v)?;
                Ok(SystemAction::RequestRebuild { reason: a.reason })
            },
        },
        SystemTool {
            fallback: ANSWER_FALLBACK,
            name: "run_host_command",
            description: "Run a command from the host's allowlist by name.",
            schema: schema_of::<RunHostCommandArgs>,
            build: |v, _| {
                let a: RunHostCommandArgs = parse_args(v)?;
                Ok(SystemAction::RunHostCommand { name: a.name })
            },
        },
        SystemTool {
            fallback: ANSWER_FALLBACK,
            name: "create_agent",
            description: "Create a new agent (and a destination to reach it).",
            schema: schema_of::<CreateAgentArgs>,
            build: |v, _| {
                let a: CreateAgentArgs = parse_args(v)?;
                Ok(SystemAction::CreateAgent { name: a.name, instructions: a.instructions })
            },
        },
        SystemTool {
            fallback: ANSWER_FALLBACK,
            name: "list_tasks",
            description: "List your scheduled tasks (ids, prompts, next runs, paused or not).",
            schema: schema_of::<ListTasksArgs>,
            build: |v, _| {
                let ListTasksArgs {} = parse_args(v)?;
                Ok(SystemAction::ListTasks {})
            },
        },
        SystemTool {
            fallback: ANSWER_FALLBACK,
            name: "update_task",
            description: "Change a scheduled task: give its id and only the fields to change.",
            schema: schema_of::<UpdateTaskArgs>,
            build: |v, _| {
                let a: UpdateTaskArgs = parse_args(v)?;
                if a.prompt.is_none()
                    && a.process_after.is_none()
                    && a.recurrence.is_none()
                    && a.timezone.is_none()
                {
                    return Err(ToolError(
                        "invalid arguments: give at least one of prompt, process_after, recurrence, timezone"
                            .into(),
                    ));
                }
                Ok(SystemAction::UpdateTask {
                    task_id: a.task_id,
                    prompt: a.prompt,
                    process_after: a.process_after,
                    recurrence: a.recurrence,
                    timezone: a.timezone,
                })
            },
        },
        SystemTool {
            fallback: ANSWER_FALLBACK,
            name: "pause_task",
            description: "Pause a scheduled task (it does not run until resumed).",
            schema: schema_of::<TaskIdArgs>,
            build: |v, _| {
                let a: TaskIdArgs = parse_args(v)?;
                Ok(SystemAction::PauseTask { task_id: a.task_id })
            },
        },
        SystemTool {
            fallback: ANSWER_FALLBACK,
            name: "resume_task",
            description: "Resume a paused task.",
            schema: schema_of::<TaskIdArgs>,
            build: |v, _| {
                let a: TaskIdArgs = parse_args(v)?;
                Ok(SystemAction::ResumeTask { task_id: a.task_id })
            },
        },
        SystemTool {
            fallback: ANSWER_FALLBACK,
            name: "ask_user_question",
            description: "Ask the user a multiple-choice question and wait for the answer (the chosen \
                          option), at most `timeout_s` seconds.",
            schema: schema_of::<AskUserQuestionArgs>,
            build: |v, _| {
                let a: AskUserQuestionArgs = parse_args(v)?;
                if !(MIN_QUESTION_OPTIONS..=MAX_QUESTION_OPTIONS).contains(&a.options.len()) {
                    return Err(ToolError(format!(
                        "invalid arguments: options: {} given; {MIN_QUESTION_OPTIONS} to {MAX_QUESTION_OPTIONS} \
                         allowed",
                        a.options.len()
                    )));
                }
                if !(1..=MAX_QUESTION_TIMEOUT_S).contains(&a.timeout_s) {
                    return Err(ToolError(format!(
                        "invalid arguments: timeout_s: {} not in 1..={MAX_QUESTION_TIMEOUT_S}",
                        a.timeout_s
                    )));
                }
                Ok(SystemAction::AskUserQuestion {
                    title: a.title,
                    question: a.question,
                    options: a.options,
                    timeout_s: a.timeout_s,
                })
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

    fn declared_timeout(&self, args: &serde_json::Value) -> Duration {
        answer_timeout(self.name, args) + Duration::from_secs(10)
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
        let timeout = match &action {
            SystemAction::AskUserQuestion { timeout_s, .. } => {
                ANSWER_TIMEOUT + Duration::from_secs((*timeout_s).into())
            }
            _ => ANSWER_TIMEOUT,
        };
        let deadline = tokio::time::Instant::now() + timeout;
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
                // A note answers no action (`note-<row>` ids are the host's answers; a note
                // has its own id): keep waiting.
                Ok(Some(SystemNotice::Note { .. })) | Ok(None) => {}
                Err(e) => return Err(ToolError(format!("cannot read the host's answer: {e}"))),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ToolError(format!(
                    "no answer from the host within {} s; it may still act on it",
                    timeout.as_secs()
                )));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            cx.link.input(self.fallback.min(left)).await;
        }
    }
}
