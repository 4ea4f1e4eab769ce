//! Runner configuration, read from the environment the host sets ([`nanoclaw_protocol::layout`]).

use nanoclaw_protocol::layout as l;
use std::path::PathBuf;

/// Everything the runner needs to know, fixed at start.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Folder with `inbound.db` and `wake.sock` (read-only for the runner).
    pub session_dir: PathBuf,
    /// Folder with `outbound.db` and `.heartbeat` (written by the runner).
    pub workspace_dir: PathBuf,
    /// The read-only skills folder (`<name>/SKILL.md`); only the skills `runner.json` selects
    /// are read from it.
    pub skills_dir: PathBuf,
    /// This container's generation; stamped on every claim.
    pub generation: i64,
    /// Provider name (`echo`).
    pub provider: String,
    /// The agent's display name for the system prompt.
    pub assistant_name: String,
    /// Poll interval while the wake link is down, in ms (at most 1000, DESIGN §6); with the link
    /// up the runner waits for wake bytes and due rows instead.
    pub poll_ms: u64,
    /// Most messages in one prompt.
    pub max_messages_per_prompt: usize,
    /// Fallback read interval of system-action tools waiting for the host's answer (they wake
    /// on the host's `INPUT` byte first).
    pub answer_fallback: std::time::Duration,
    /// Exit after the host has been unreachable this long, once it had been connected
    /// (`None` = never). A host killed outright cannot stop its containers; they stop themselves.
    pub host_lost_exit: Option<std::time::Duration>,
}

/// A variable that is set but unusable. Displays as one line naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl RunnerConfig {
    /// Reads the configuration from a variable lookup (the process environment in `main`).
    ///
    /// Errors name the variable: a non-numeric generation, a poll interval outside 1..=1000 ms.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        fn num<T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<String>,
            var: &'static str,
            default: T,
        ) -> Result<T, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| ConfigError { var, problem: format!("{v:?} is not a number") }),
            }
        }
        let poll_ms = num(&get, l::ENV_POLL_MS, nanoclaw_protocol::wake::MAX_POLL_MS)?;
        if poll_ms == 0 || poll_ms > nanoclaw_protocol::wake::MAX_POLL_MS {
            return Err(ConfigError { var: l::ENV_POLL_MS, problem: format!("{poll_ms} not in 1..=1000") });
        }
        let max_messages_per_prompt = num(&get, l::ENV_MAX_MESSAGES_PER_PROMPT, 10usize)?;
        if !(1..=100).contains(&max_messages_per_prompt) {
            return Err(ConfigError {
                var: l::ENV_MAX_MESSAGES_PER_PROMPT,
                problem: format!("{max_messages_per_prompt} not in 1..=100"),
            });
        }
        let answer_fallback_ms = num(&get, l::ENV_ANSWER_FALLBACK_MS, 1000u64)?;
        if !(1..=3_600_000).contains(&answer_fallback_ms) {
            return Err(ConfigError {
                var: l::ENV_ANSWER_FALLBACK_MS,
                problem: format!("{answer_fallback_ms} not in 1..=3600000"),
            });
        }
        Ok(Self {
            answer_fallback: std::time::Duration::from_millis(answer_fallback_ms),
            session_dir: get(l::ENV_SESSION_DIR).unwrap_or_else(|| l::CONTAINER_SESSION_DIR.into()).into(),
            workspace_dir: get(l::ENV_WORKSPACE_DIR)
                .unwrap_or_else(|| l::CONTAINER_WORKSPACE_DIR.into())
                .into(),
            skills_dir: get(l::ENV_SKILLS_DIR).unwrap_or_else(|| l::CONTAINER_SKILLS_DIR.into()).into(),
            generation: num(&get, l::ENV_GENERATION, 0i64)?,
            provider: get(l::ENV_PROVIDER).unwrap_or_else(|| "echo".into()),
            assistant_name: get(l::ENV_ASSISTANT_NAME).unwrap_or_else(|| "Andy".into()),
            poll_ms,
            max_messages_per_prompt,
            host_lost_exit: match num(&get, l::ENV_HOST_LOST_EXIT_SECS, 60u64)? {
                0 => None,
                secs => Some(std::time::Duration::from_secs(secs)),
            },
        })
    }

    /// Path of `inbound.db`.
    pub fn inbound_db(&self) -> PathBuf {
        self.session_dir.join(l::INBOUND_DB)
    }

    /// Path of `outbound.db`.
    pub fn outbound_db(&self) -> PathBuf {
        self.workspace_dir.join(l::OUTBOUND_DB)
    }

    /// Path of the wake socket.
    pub fn wake_socket(&self) -> PathBuf {
        self.session_dir.join(l::WAKE_SOCKET)
    }

    /// Path of the heartbeat file.
    pub fn heartbeat(&self) -> PathBuf {
        self.workspace_dir.join(l::HEARTBEAT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<RunnerConfig, ConfigError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RunnerConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_are_container_paths() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.inbound_db(), PathBuf::from("/session/inbound.db"));
        assert_eq!(c.outbound_db(), PathBuf::from("/workspace/outbound.db"));
        assert_eq!(c.skills_dir, PathBuf::from("/skills"));
        assert_eq!(c.poll_ms, 1000);
        assert_eq!(c.provider, "echo");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = cfg(&[(l::ENV_GENERATION, "x")]).unwrap_err();
        assert_eq!(e.var, l::ENV_GENERATION);
        let e = cfg(&[(l::ENV_POLL_MS, "5000")]).unwrap_err();
        assert_eq!(e.var, l::ENV_POLL_MS);
        assert!(e.to_string().starts_with("NANOCLAW_POLL_MS: "));
    }
}
