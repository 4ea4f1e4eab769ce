//! `run_command`: a shell command in the workspace (the `standard` image tier only).

use super::workspace::confine;
use super::{Tool, ToolContext, ToolError, ToolResult, parse_args, schema_of};
use crate::model::ToolSpec;
use async_trait::async_trait;
use nanoclaw_protocol::settings::ImageTier;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Default `timeout_s`.
pub const DEFAULT_TIMEOUT_S: u64 = 120;
/// Largest `timeout_s` (the host's heartbeat ceiling is above it).
pub const MAX_TIMEOUT_S: u64 = 3600;
/// Most output bytes returned (stdout and stderr together); the middle is cut.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// `run_command {command, timeout_s?, cwd?}`: `bash -lc <command>` in its own process group,
/// the whole group killed at the timeout (and when the command ends, so nothing it started in
/// the background outlives the call).
#[derive(Debug)]
pub struct RunCommand;

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_S
}

/// Arguments of `run_command`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommandArgs {
    /// The command, run by `bash -lc`.
    pub command: String,
    /// Seconds before the command and everything it started are killed (1 to 3600, default 120).
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Working folder, relative to the workspace; default: the workspace.
    #[serde(default)]
    pub cwd: Option<String>,
}

/// Kills a process group when dropped: a turn cancelled at SIGTERM (its future dropped) must not
/// leave the command running.
struct GroupGuard(Pid);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

/// The first and last halves of the output; what lies between is counted, not kept.
#[derive(Default)]
struct Capped {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    cut: u64,
}

impl Capped {
    fn push(&mut self, mut bytes: &[u8]) {
        let half = MAX_OUTPUT_BYTES / 2;
        if self.head.len() < half {
            let n = bytes.len().min(half - self.head.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        self.tail.extend(bytes);
        if self.tail.len() > half {
            let drop = self.tail.len() - half;
            self.tail.drain(..drop);
            self.cut += drop as u64;
        }
    }

    fn finish(self) -> String {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if self.cut > 0 {
            out.push_str(&format!("\n[… {} bytes cut …]\n", self.cut));
        }
        out.push_str(&String::from_utf8_lossy(&self.tail.into_iter().collect::<Vec<u8>>()));
        out
    }
}

#[async_trait]
impl Tool for RunCommand {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "run_command".into(),
            description: format!(
                "Run a shell command (bash -lc) in your workspace. stdout and stderr come back together, at \
                 most {MAX_OUTPUT_BYTES} bytes (the middle is cut). Killed with everything it started after \
                 timeout_s seconds."
            ),
            input_schema: schema_of::<RunCommandArgs>(),
        }
    }

    fn declared_timeout(&self, args: &serde_json::Value) -> Duration {
        let secs = args
            .get("timeout_s")
            .and_then(|v| v.as_u64())
            .unwrap_or(DEFAULT_TIMEOUT_S)
            .clamp(1, MAX_TIMEOUT_S);
        // A little over the kill: reaping and reading the rest of the output take a moment.
        Duration::from_secs(secs + 10)
    }

    async fn call(&self, args: serde_json::Value, cx: &mut ToolContext<'_>) -> ToolResult {
        let a: RunCommandArgs = parse_args(args)?;
        if cx.settings.image_tier == ImageTier::Minimal {
            return Err(ToolError(
                "run_command needs a shell, and this agent runs the minimal image; set image_tier = \"standard\" \
                 in its container config"
                    .into(),
            ));
        }
        if !(1..=MAX_TIMEOUT_S).contains(&a.timeout_s) {
            return Err(ToolError(format!("timeout_s: {} is not in 1..={MAX_TIMEOUT_S}", a.timeout_s)));
        }
        let cwd = confine(cx.workspace, "cwd", a.cwd.as_deref().unwrap_or("."))?;
        if !cwd.path.is_dir() {
            return Err(ToolError(format!("cwd: {} is not a folder", cwd.rel.display())));
        }
        let mut child = tokio::process::Command::new("bash")
            .arg("-lc")
            .arg(&a.command)
            .current_dir(&cwd.path)
            .env("HOME", cx.workspace)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ToolError(format!("command: cannot start bash: {e}")))?;
        let pid = child.id().map(|p| Pid::from_raw(p as i32));
        let _guard = pid.map(GroupGuard);
        let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ToolError("command: no output pipes".into()));
        };
        let mut capped = Capped::default();
        let started = std::time::Instant::now();
        let run = async {
            let (mut out_done, mut err_done, mut status) = (false, false, None);
            let (mut b1, mut b2) = ([0u8; 8192], [0u8; 8192]);
            while !(out_done && err_done && status.is_some()) {
                tokio::select! {
                    r = out.read(&mut b1), if !out_done => match r {
                        Ok(0) | Err(_) => out_done = true,
                        Ok(n) => capped.push(&b1[..n]),
                    },
                    r = err.read(&mut b2), if !err_done => match r {
                        Ok(0) | Err(_) => err_done = true,
                        Ok(n) => capped.push(&b2[..n]),
                    },
                    s = child.wait(), if status.is_none() => {
                        status = Some(s);
                        // The shell is done: whatever it left in the background goes too, and
                        // the pipes it held close.
                        if let Some(pid) = pid {
                            let _ = killpg(pid, Signal::SIGKILL);
                        }
                    }
                }
            }
            status
        };
        let outcome = tokio::time::timeout(Duration::from_secs(a.timeout_s), run).await;
        match outcome {
            Ok(Some(Ok(status))) => {
                let text = capped.finish();
                Ok(match status.code() {
                    Some(code) => format!("exit code {code}\n{text}"),
                    None => format!("killed by a signal\n{text}"),
                })
            }
            Ok(_) => Err(ToolError(format!("command: waiting for it failed\n{}", capped.finish()))),
            Err(_) => {
                if let Some(pid) = pid {
                    let _ = killpg(pid, Signal::SIGKILL);
                }
                let _ = child.wait().await;
                Err(ToolError(format!(
                    "killed after {} s (timeout_s = {})\n{}",
                    started.elapsed().as_secs(),
                    a.timeout_s,
                    capped.finish()
                )))
            }
        }
    }
}
