//! The process runtime: each "container" is a plain child process running the agent runner with
//! host paths. No isolation at all — for development and tests, chosen only by name
//! (`--runtime process`), never as a fallback (DESIGN §7). The one boundary it keeps is the
//! environment: the runner inherits only [`INHERITED_ENV`], so the providers' keys stay on the
//! host as they do with containers.
//!
//! Children are killed when the host exits normally (`kill_on_drop`); a host killed with SIGKILL
//! leaves them running until they notice their wake socket is gone... which they do not: unlike
//! containers they have no label to sweep. That is one more reason this runtime is not for use.

use async_trait::async_trait;
use nanoclaw_actors::ports::runtime::{
    ContainerRuntime, ContainerSpec, ExitStatus, ManagedContainer, RuntimeError,
};
use nanoclaw_protocol::layout;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The host variables a process-runtime runner inherits: what a shell needs to run commands, and
/// the runner's own tuning knobs (tests set them on the host). Everything else — API keys above
/// all — stays on the host; `HOME` is the session's workspace.
pub const INHERITED_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "NANOCLAW_AGENT_LOG",
    layout::ENV_ANSWER_FALLBACK_MS,
    layout::ENV_POLL_MS,
    layout::ENV_HOST_LOST_EXIT_SECS,
];

struct Proc {
    spec: ContainerSpec,
    pid: Option<u32>,
    exit: watch::Receiver<Option<ExitStatus>>,
    exit_tx: Option<watch::Sender<Option<ExitStatus>>>,
}

/// The process runtime.
pub struct ProcessRuntime {
    agent_binary: PathBuf,
    procs: Arc<Mutex<HashMap<String, Proc>>>,
}

impl ProcessRuntime {
    /// A runtime that runs `agent_binary`.
    pub fn new(agent_binary: PathBuf) -> Self {
        Self { agent_binary, procs: Default::default() }
    }

    fn signal(&self, id: &str, signal: Signal) {
        if let Some(pid) = self.procs.lock().get(id).and_then(|p| p.pid) {
            // The child may be gone already; nothing to do then.
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }
}

#[async_trait]
impl ContainerRuntime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn prepare(&self) -> Result<(), RuntimeError> {
        if self.agent_binary.is_file() {
            Ok(())
        } else {
            Err(RuntimeError::Image(format!("agent binary {} not found", self.agent_binary.display())))
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let (tx, rx) = watch::channel(None);
        self.procs
            .lock()
            .insert(spec.name.clone(), Proc { spec: spec.clone(), pid: None, exit: rx, exit_tx: Some(tx) });
        Ok(spec.name.clone())
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let (spec, tx) = {
            let mut procs = self.procs.lock();
            let p = procs.get_mut(id).ok_or_else(|| RuntimeError::Operation {
                op: "start",
                container: id.into(),
                message: "not created".into(),
            })?;
            (p.spec.clone(), p.exit_tx.take())
        };
        let mut cmd = tokio::process::Command::new(&self.agent_binary);
        // The host's environment holds the providers' keys: the runner gets none of it but
        // [`INHERITED_ENV`], as a container gets none of it at all.
        cmd.env_clear();
        for name in INHERITED_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.env("HOME", &spec.session_workspace_dir)
            .env(layout::ENV_SESSION_DIR, &spec.session_host_dir)
            .env(layout::ENV_WORKSPACE_DIR, &spec.session_workspace_dir)
            .envs(spec.env.iter().cloned())
            // Without a skills folder, a path that never exists: never the host's own /skills.
            .env(
                layout::ENV_SKILLS_DIR,
                spec.skills_dir.clone().unwrap_or_else(|| spec.session_host_dir.join("no-skills")),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| RuntimeError::Operation {
            op: "start",
            container: id.into(),
            message: e.to_string(),
        })?;
        if let Some(p) = self.procs.lock().get_mut(id) {
            p.pid = child.id();
        }
        tokio::spawn(async move {
            let status = child.wait().await;
            let exit = match status {
                Ok(s) => ExitStatus { code: s.code().map(i64::from), oom_killed: false },
                Err(_) => ExitStatus { code: None, oom_killed: false },
            };
            if let Some(tx) = tx {
                tx.send_replace(Some(exit));
            }
        });
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        let mut rx = self.procs.lock().get(id).map(|p| p.exit.clone()).ok_or_else(|| {
            RuntimeError::Operation { op: "wait", container: id.into(), message: "unknown".into() }
        })?;
        let status = rx
            .wait_for(|s| s.is_some())
            .await
            .map(|s| s.unwrap_or(ExitStatus { code: None, oom_killed: false }));
        Ok(status.unwrap_or(ExitStatus { code: None, oom_killed: false }))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.signal(id, Signal::SIGTERM);
        let procs = self.procs.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let pid = procs.lock().get(&id).filter(|p| p.exit.borrow().is_none()).and_then(|p| p.pid);
            if let Some(pid) = pid {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        });
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let running = self.procs.lock().get(id).is_some_and(|p| p.exit.borrow().is_none() && p.pid.is_some());
        if running {
            self.signal(id, Signal::SIGKILL);
        }
        self.procs.lock().remove(id);
        Ok(())
    }

    async fn list_managed(&self, install_id: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
        Ok(self
            .procs
            .lock()
            .iter()
            .filter(|(_, p)| p.spec.install_id == install_id)
            .map(|(id, p)| ManagedContainer {
                id: id.clone(),
                name: p.spec.name.clone(),
                session_id: Some(p.spec.session_id.clone()),
                running: p.exit.borrow().is_none(),
            })
            .collect())
    }
}
