//! Paths and environment variables that both sides of the boundary agree on.
//!
//! A session's files live in two sibling folders on the host:
//!
//! ```text
//! data/sessions/<agent_group>/<session>/
//!   host/        written only by the host; mounted read-only at /session
//!     inbound.db   wake.sock   proxy.sock   runner.json
//!   workspace/   written by the container; mounted read-write at /workspace
//!     outbound.db  .heartbeat  outbox/  transcripts/ …
//! ```
//!
//! DESIGN §5 puts both DBs in one session folder. They are split here because a container may
//! replace any file in a folder it can write with a symlink to a host path; if `inbound.db` (or its
//! `-journal`) lived there, the host would then write through that link. A read-only mount makes
//! the host-written files unreachable for writes from inside.

/// File name of the host-written session DB inside the host folder.
pub const INBOUND_DB: &str = "inbound.db";
/// File name of the container-written session DB inside the workspace folder.
pub const OUTBOUND_DB: &str = "outbound.db";
/// File name of the wake socket inside the host folder (the host listens, the runner connects).
pub const WAKE_SOCKET: &str = "wake.sock";
/// File name of the credential proxy's socket inside the host folder (the host listens, the
/// runner connects; see [`crate::proxy`]).
pub const PROXY_SOCKET: &str = "proxy.sock";
/// File name of the runner's settings inside the host folder ([`crate::settings`]).
pub const RUNNER_SETTINGS: &str = "runner.json";
/// Sub-folder of the workspace where the runner puts files it sends (`outbox/<row id>/<name>`).
pub const OUTBOX_DIR: &str = "outbox";
/// Sub-folder of the workspace holding each provider's conversation transcript.
pub const TRANSCRIPTS_DIR: &str = "transcripts";
/// File name of the agent group's memory inside the group folder (the agent may edit it).
pub const MEMORY_FILE: &str = "memory.md";
/// Where the skills shipped with nanoclaw are mounted read-only inside a container: the host's
/// whole skills folder (`<name>/SKILL.md` each); the runner puts only the skills `runner.json`
/// selects into the prompt.
pub const CONTAINER_SKILLS_DIR: &str = "/skills";
/// File name of a skill inside its folder.
pub const SKILL_FILE: &str = "SKILL.md";
/// File name of the heartbeat inside the workspace folder; its mtime is the heartbeat.
pub const HEARTBEAT: &str = ".heartbeat";
/// Sub-folder of a session folder written only by the host.
pub const HOST_DIR: &str = "host";
/// Sub-folder of a session folder written by the container.
pub const WORKSPACE_DIR: &str = "workspace";

/// Where the host folder is mounted inside a container.
pub const CONTAINER_SESSION_DIR: &str = "/session";
/// Where the workspace folder is mounted inside a container.
pub const CONTAINER_WORKSPACE_DIR: &str = "/workspace";
/// Where the agent group folder is mounted inside a container.
pub const CONTAINER_AGENT_DIR: &str = "/workspace/agent";

/// Environment variable: the folder holding `inbound.db` and `wake.sock` (default `/session`).
pub const ENV_SESSION_DIR: &str = "NANOCLAW_SESSION_DIR";
/// Environment variable: the folder holding `outbound.db` and `.heartbeat` (default `/workspace`).
pub const ENV_WORKSPACE_DIR: &str = "NANOCLAW_WORKSPACE_DIR";
/// Environment variable: the container generation, a per-session counter the host increments
/// for every container it starts. Claims carry it so the host can ignore a dead container's.
pub const ENV_GENERATION: &str = "NANOCLAW_GENERATION";
/// Environment variable: the folder holding the skills (default [`CONTAINER_SKILLS_DIR`]; the
/// process runtime points it at the host's skills folder).
pub const ENV_SKILLS_DIR: &str = "NANOCLAW_SKILLS_DIR";
/// Environment variable: how long a system-action tool waits for the host's wake byte before it
/// reads for its answer anyway, in milliseconds (default 1000, at most 3,600,000). Tests set it
/// long to show that the answer arrives on the wake byte.
pub const ENV_ANSWER_FALLBACK_MS: &str = "NANOCLAW_ANSWER_FALLBACK_MS";
/// Environment variable: the session id (for logs only).
pub const ENV_SESSION_ID: &str = "NANOCLAW_SESSION_ID";
/// Environment variable: the provider name (`echo`, …).
pub const ENV_PROVIDER: &str = "NANOCLAW_PROVIDER";
/// Environment variable: the agent's display name, used in the system prompt.
pub const ENV_ASSISTANT_NAME: &str = "NANOCLAW_ASSISTANT_NAME";
/// Environment variable: idle poll fallback of the runner in milliseconds (default and maximum 1000).
pub const ENV_POLL_MS: &str = "NANOCLAW_POLL_MS";
/// Environment variable: most messages the runner puts into one prompt (default 10).
pub const ENV_MAX_MESSAGES_PER_PROMPT: &str = "NANOCLAW_MAX_MESSAGES_PER_PROMPT";
/// Environment variable: seconds the runner keeps going after losing its wake connection to the
/// host without being able to reconnect, before it exits by itself (default 60; 0 = never).
pub const ENV_HOST_LOST_EXIT_SECS: &str = "NANOCLAW_HOST_LOST_EXIT_SECS";
